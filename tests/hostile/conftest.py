"""Shared helpers for the hostile tests: the EFI test applications (C, compiled with Debian's mingw-w64 as
tests/cpu/test_option3_app.py does) and hooks that let a test act as a hostile VMM during a real run."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lazyaccept import boot as boot_module
from lazyaccept.cpu.machine import EfiMachine
from lazyaccept.tdx.module import TdxModule
from lazyaccept.vmm.td import Td

APPS = Path(__file__).parent / "efi_apps"
CC = "x86_64-w64-mingw32-gcc"
CFLAGS = ["-O2", "-ffreestanding", "-fno-stack-protector", "-fno-stack-check", "-mno-red-zone", "-nostdlib",
          "-shared", "-Wl,--subsystem,10", "-e", "efi_main"]
_CASE = re.compile(r"^(\w+)=0x([0-9a-f]{16})$", re.MULTILINE)

AppBuilder = Callable[..., Path]


@pytest.fixture(scope="session")
def efi_app(tmp_path_factory: pytest.TempPathFactory) -> AppBuilder:
    """build(stem or path, *defines) -> the .efi file of efi_apps/<stem>.c (or of the C file at path), compiled
    once per session and variant."""
    compiler = shutil.which(CC)
    assert compiler, f"{CC} is missing: install Debian's gcc-mingw-w64-x86-64-win32 (make tools does)"
    out_dir = tmp_path_factory.mktemp("hostile-efi")
    built: dict[tuple[str, ...], Path] = {}

    def build(source: str | Path, *defines: str) -> Path:
        path = source if isinstance(source, Path) else APPS / f"{source}.c"
        key = (str(path), *defines)
        if key not in built:
            out = out_dir / ("-".join([path.stem, *(d.lower() for d in defines)]) + ".efi")
            subprocess.run(
                [compiler, *CFLAGS, *(f"-D{d}" for d in defines), "-I", str(APPS), "-o", str(out), str(path)],
                check=True,
            )
            built[key] = out
        return built[key]

    return build


def cases(console: str) -> dict[str, int]:
    """The "name=0x..." lines an application printed."""
    return {m.group(1): int(m.group(2), 16) for m in _CASE.finditer(console.replace("\r", ""))}


class Captured:
    """What a hooked run_boot built, for checks the BootReport does not carry."""

    td: Td | None = None
    machine: EfiMachine | None = None


@contextmanager
def hostile_boot(
    monkeypatch: pytest.MonkeyPatch,
    machine_class: type[EfiMachine] | None = None,
    on_td: Callable[[Td], object] | None = None,
) -> Iterator[Captured]:
    """Run run_boot with the VMM's hands on the TD: `on_td(td)` after the VMM built it (before SEC), and
    `machine_class` (an EfiMachine subclass whose services act between calls) instead of EfiMachine."""
    captured = Captured()
    real_build = boot_module.build_td

    def build_td(*args: object, **kwargs: object) -> Td:
        td = real_build(*args, **kwargs)
        captured.td = td
        if on_td is not None:
            on_td(td)
        return td

    cls = machine_class or EfiMachine

    def make_machine(*args: object, **kwargs: object) -> EfiMachine:
        captured.machine = cls(*args, **kwargs)
        return captured.machine

    with monkeypatch.context() as m:
        m.setattr(boot_module, "build_td", build_td)
        m.setattr(boot_module, "EfiMachine", make_machine)
        yield captured


class RandomBusy:
    """A host whose Secure-EPT lock is contended at random (seeded): before each firmware accept sequence (edk2
    TdAcceptPages, TdxDxe AcceptMemory), and with calls including "accept_rcx" each single TDCALL of emulated
    code, a burst of 1..max_burst OPERAND_BUSY is injected with probability `rate`. edk2 retries a busy TDCALL
    3 times, so bursts of up to 3 are absorbed there; Linux's try_accept_one does not retry at all."""

    def __init__(
        self, tdx: TdxModule, seed: int, *, rate: float = 0.5, max_burst: int = 3,
        calls: tuple[str, ...] = ("accept_pages", "accept_range"),
    ):
        self.tdx = tdx
        self.rng = random.Random(seed)
        self.rate = rate
        self.max_burst = max_burst
        self.injected = 0
        self.bursts: list[int] = []
        for name in calls:
            setattr(tdx, name, self._wrap(getattr(tdx, name)))

    def _wrap(self, fn: Callable[..., object]) -> Callable[..., object]:
        def call(*args: object, **kwargs: object) -> object:
            if self.rng.random() < self.rate:
                burst = self.rng.randint(1, self.max_burst)
                self.tdx.inject_busy(burst)
                self.injected += burst
                self.bursts.append(burst)
            return fn(*args, **kwargs)

        return call
