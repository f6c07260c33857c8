"""Shared fixtures: a bytearray-backed guest memory and a settable virtual clock."""

from __future__ import annotations

import pytest

from lazyaccept.vmm.devices.base import GuestInputError


class BytesMemory:
    """Guest memory for DMA: a bytearray from GPA 0."""

    def __init__(self, size: int = 1 << 20):
        self.data = bytearray(size)

    def read(self, gpa: int, size: int) -> bytes:
        if gpa + size > len(self.data):
            raise GuestInputError(f"read beyond memory at {gpa:#x}", field="gpa")
        return bytes(self.data[gpa : gpa + size])

    def write(self, gpa: int, data: bytes) -> None:
        if gpa + len(data) > len(self.data):
            raise GuestInputError(f"write beyond memory at {gpa:#x}", field="gpa")
        self.data[gpa : gpa + len(data)] = data


class Clock:
    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


@pytest.fixture
def memory() -> BytesMemory:
    return BytesMemory()


@pytest.fixture
def clock() -> Clock:
    return Clock()
