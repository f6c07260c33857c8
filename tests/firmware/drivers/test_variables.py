"""The volatile variable store: the checks of edk2's variable driver, the read-only globals, GetNextVariableName."""

from __future__ import annotations

import uuid

import pytest

from lazyaccept.cpu.machine import EfiMachine, MachineConfig
from lazyaccept.firmware.drivers.base import FW
from lazyaccept.firmware.dxe.runtime import BS_RT, NV_BS_RT, VAR_APPEND_WRITE, VAR_RUNTIME_ACCESS
from lazyaccept.firmware.platform import start_dxe
from lazyaccept.firmware.sec import parse_policy, run_sec
from lazyaccept.spec import guids
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.units import GiB
from lazyaccept.vmm.td import TdConfig, build_td

LOADER = uuid.UUID("4a67b082-0a4c-41cf-b6c7-440b29bb8c4f")  # systemd's loader vendor GUID


@pytest.fixture
def m() -> EfiMachine:
    td = build_td(TdConfig(ram_size=1 * GiB, vcpus=1))
    return EfiMachine(td.tdx, start_dxe(td, run_sec(td, parse_policy("256M"))), MachineConfig())


class Vars:
    def __init__(self, m: EfiMachine):
        self.m = m
        self.buf = m.fw_alloc(0x10000)

    def _name(self, name: str, guid: uuid.UUID) -> tuple[int, int]:
        self.m.mem.write(self.buf, (name + "\0").encode("utf-16-le"), actor=FW)
        self.m.mem.write(self.buf + 0x1000, guid.bytes_le, actor=FW)
        return self.buf, self.buf + 0x1000

    def set(self, name: str, guid: uuid.UUID, attributes: int, data: bytes) -> int:
        n, g = self._name(name, guid)
        self.m.mem.write(self.buf + 0x2000, data, actor=FW)
        return self.m.rt_SetVariable(n, g, attributes, len(data), self.buf + 0x2000)

    def get(self, name: str, guid: uuid.UUID, size: int = 0x1000) -> tuple[int, int, int, bytes]:
        n, g = self._name(name, guid)
        self.m.w64(self.buf + 0x3000, size)
        self.m.w32(self.buf + 0x3008, 0)
        status = self.m.rt_GetVariable(n, g, self.buf + 0x3008, self.buf + 0x3000, self.buf + 0x4000)
        got = self.m.r64(self.buf + 0x3000)
        attr = int.from_bytes(self.m.mem.read(self.buf + 0x3008, 4, actor=FW), "little")
        return status, attr, got, self.m.mem.read(self.buf + 0x4000, got, actor=FW) if status == S.SUCCESS else b""

    def names(self) -> list[tuple[str, uuid.UUID]]:
        out: list[tuple[str, uuid.UUID]] = []
        self.m.mem.write(self.buf, b"\0\0", actor=FW)
        while True:
            self.m.w64(self.buf + 0x3000, 0x1000)
            status = self.m.rt_GetNextVariableName(self.buf + 0x3000, self.buf, self.buf + 0x1000)
            if status == S.NOT_FOUND:
                return out
            assert status == S.SUCCESS
            out.append((self.m.read_str16(self.buf), self.m.read_guid(self.buf + 0x1000)))


def test_globals_a_boot_manager_expects(m: EfiMachine) -> None:
    v = Vars(m)
    assert v.get("SecureBoot", guids.GLOBAL_VARIABLE) == (S.SUCCESS, BS_RT, 1, b"\0")
    assert v.get("SetupMode", guids.GLOBAL_VARIABLE)[3] == b"\1"
    assert v.get("OsIndicationsSupported", guids.GLOBAL_VARIABLE)[2] == 8
    assert v.set("SecureBoot", guids.GLOBAL_VARIABLE, BS_RT, b"\1") == S.WRITE_PROTECTED
    assert v.get("SecureBoot", guids.GLOBAL_VARIABLE, 0)[:3] == (S.BUFFER_TOO_SMALL, BS_RT, 1)  # attributes too
    assert v.get("Nothing", guids.GLOBAL_VARIABLE)[0] == S.NOT_FOUND


def test_set_get_append_delete_and_attribute_checks(m: EfiMachine) -> None:
    v = Vars(m)
    value = "6.12.0\0".encode("utf-16-le")
    assert v.set("LoaderTimeInitUSec", LOADER, BS_RT, value) == S.SUCCESS
    assert v.get("LoaderTimeInitUSec", LOADER) == (S.SUCCESS, BS_RT, len(value), value)
    assert v.set("LoaderTimeInitUSec", LOADER, NV_BS_RT, value) == S.INVALID_PARAMETER  # attributes stay
    assert v.set("LoaderTimeInitUSec", LOADER, BS_RT | VAR_APPEND_WRITE, b"ab") == S.SUCCESS
    assert v.get("LoaderTimeInitUSec", LOADER)[3] == value + b"ab"
    assert v.set("X", LOADER, VAR_RUNTIME_ACCESS, b"1") == S.INVALID_PARAMETER  # runtime needs boot-service access
    assert v.set("X", LOADER, BS_RT | 0x10, b"1") == S.UNSUPPORTED  # the deprecated authenticated write
    assert v.set("X", LOADER, BS_RT | 0x100, b"1") == S.INVALID_PARAMETER
    assert v.set("", LOADER, BS_RT, b"1") == S.INVALID_PARAMETER
    assert v.set("LoaderTimeInitUSec", LOADER, 0, b"") == S.SUCCESS  # deleted
    assert v.get("LoaderTimeInitUSec", LOADER)[0] == S.NOT_FOUND
    assert v.set("LoaderTimeInitUSec", LOADER, 0, b"") == S.NOT_FOUND
    assert m.variables_set == [("LoaderTimeInitUSec", LOADER)] * 3


def test_get_next_variable_name_walks_every_variable_once(m: EfiMachine) -> None:
    v = Vars(m)
    v.set("LoaderEntries", LOADER, BS_RT, b"a\0b\0")
    names = v.names()
    assert ("LoaderEntries", LOADER) in names and ("SecureBoot", guids.GLOBAL_VARIABLE) in names
    assert len(names) == len(set(names)) == len(m.config.variables)
    m.mem.write(v.buf, "NoSuchName\0".encode("utf-16-le"), actor=FW)
    m.w64(v.buf + 0x3000, 0x1000)
    assert m.rt_GetNextVariableName(v.buf + 0x3000, v.buf, v.buf + 0x1000) == S.INVALID_PARAMETER
    m.mem.write(v.buf, b"\0\0", actor=FW)
    m.w64(v.buf + 0x3000, 2)
    assert m.rt_GetNextVariableName(v.buf + 0x3000, v.buf, v.buf + 0x1000) == S.BUFFER_TOO_SMALL
    assert m.r64(v.buf + 0x3000) == 2 * (len(names[0][0]) + 1)
