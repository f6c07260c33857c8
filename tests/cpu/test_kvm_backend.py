"""The KVM CPU backend: its parts without /dev/kvm (decoder, page tables, backend choice), the CpuBackend contract
on small hand-assembled programs under both backends, and the real Linux 6.12 EFI stub booted under unicorn and
under KVM with an identical handoff.

Tests that need KVM skip where /dev/kvm is absent, unless the machine is supposed to have it
(LAZYACCEPT_REQUIRE_KVM=1): then they fail, as they do when /dev/kvm exists but does not work. Every test that
runs guest code records the backend it ran on (the junit property cpu_backend).
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from lazyaccept.cpu.kvm.decoder import decode
from lazyaccept.cpu.kvm.ioctl import HostMemory
from lazyaccept.cpu.kvm.paging import NX, PAGE, PAGE_2M, PageTables
from lazyaccept.cpu.select import (
    CHOICE_REASONS,
    BackendChoice,
    KvmInfo,
    RunNeeds,
    choose_backend,
    detect_kvm,
    host_has_la57,
    kvm_expected,
    kvm_kind,
)
from lazyaccept.errors import ConfigError
from lazyaccept.guest.unaccepted import stub_accepted_ranges
from lazyaccept.rangemap import RangeMap
from lazyaccept.records import StopKind, StopReason
from lazyaccept.units import GiB, MiB, TiB

KVM_USABLE = KvmInfo(True, "kvm-pvm", "/dev/kvm: kvm-pvm", routes_cpuid=False, expected=True)
KVM_ROUTED = KvmInfo(True, "hardware", "/dev/kvm: hardware", routes_cpuid=True, expected=True)
NO_KVM = KvmInfo(False, "none", "no /dev/kvm", expected=False)
KVM_NO_XMM = KvmInfo(True, "kvm-pvm", "/dev/kvm: kvm-pvm", routes_rdtsc=True, expected=True, xmm_state_ok=False)
KVM_NATIVE_LA57 = KvmInfo(True, "kvm-pvm", "/dev/kvm: kvm-pvm", routes_rdtsc=True, expected=True, native_la57=True)


# ================================================================================================ decoding
@pytest.mark.parametrize(
    ("code", "kind", "length", "extra"),
    [
        ("0f20e0", "mov_from_cr", 3, {"cr": 4, "gpr": "rax"}),
        ("0f20da", "mov_from_cr", 3, {"cr": 3, "gpr": "rdx"}),
        ("440f20c1", "mov_from_cr", 4, {"cr": 8, "gpr": "rcx"}),
        ("410f22d8", "mov_to_cr", 4, {"cr": 3, "gpr": "r8"}),
        ("0f32", "rdmsr", 2, {}),
        ("0f30", "wrmsr", 2, {}),
        ("0fa2", "cpuid", 2, {}),
        ("0f31", "rdtsc", 2, {}),
        ("0f01f9", "rdtscp", 3, {}),
        ("fa", "cli", 1, {}),
        ("fb", "sti", 1, {}),
        ("f4", "hlt", 1, {}),
        ("e461", "in", 2, {"size": 1, "port": 0x61}),
        ("66ed", "in", 2, {"size": 2, "port": None}),
        ("e780", "out", 2, {"size": 4, "port": 0x80}),
        ("0f0138", "invlpg", 3, {}),  # invlpg [rax]
        ("0f01bc2410000000", "invlpg", 8, {}),  # invlpg [rsp+0x10]: SIB and disp32
        ("0f013d00100000", "invlpg", 7, {}),  # invlpg [rip+0x1000]
    ],
)
def test_decode_the_instructions_the_backend_emulates(code: str, kind: str, length: int, extra: dict) -> None:
    insn = decode(bytes.fromhex(code) + b"\x90" * 8)
    assert insn is not None and insn.kind == kind and insn.length == length
    for name, value in extra.items():
        assert getattr(insn, name) == value


@pytest.mark.parametrize("code", ["90", "0f0b", "c3", "0f01", ""])
def test_decode_refuses_everything_else(code: str) -> None:
    assert decode(bytes.fromhex(code)) is None


# ================================================================================================ page tables
@pytest.fixture
def tables() -> Iterator[PageTables]:
    memory = HostMemory(4 << 20, hugepages=False)
    yield PageTables(memory, 1 << 40)
    memory.close()


def _apply(tables: PageTables, mapped: RangeMap[bool], executable: RangeMap[bool], start: int, end: int) -> None:
    for base in range(start - start % PAGE_2M, end, PAGE_2M):
        tables.apply_region(base, mapped, executable)


def test_page_tables_map_whole_2m_pages_and_split_them_for_code(tables: PageTables) -> None:
    mapped, executable = RangeMap(False, 1 << 48), RangeMap(False, 1 << 48)
    mapped.set(0x200000, 0x600000, True)
    _apply(tables, mapped, executable, 0x200000, 0x600000)
    assert tables.entry(2, 0x200000) & 0x80 and tables.entry(2, 0x200000) & NX  # a 2 MiB page, not executable
    assert tables.translate(0x3FF000) == (True, False)
    assert tables.translate(0x600000) == (False, False)
    tables.seal()  # the CPU may now have walked them
    root = tables.root
    executable.set(0x401000, 0x403000, True)
    _apply(tables, mapped, executable, 0x401000, 0x403000)
    assert tables.translate(0x401000) == (True, True) and tables.translate(0x403000) == (True, False)
    assert tables.root != root  # a 2 MiB page split into a table: the path to the root was copied
    assert tables.translate(0x200000) == (True, False)


def test_page_tables_change_in_place_only_for_upgrades(tables: PageTables) -> None:
    mapped, executable = RangeMap(False, 1 << 48), RangeMap(False, 1 << 48)
    mapped.set(0x1000, 0x3000, True)
    _apply(tables, mapped, executable, 0, PAGE_2M)
    tables.seal()
    root, copies = tables.root, tables.copies
    mapped.set(0x5000, 0x6000, True)  # not present -> present
    executable.set(0x1000, 0x2000, True)  # NX -> executable
    _apply(tables, mapped, executable, 0, PAGE_2M)
    assert (tables.root, tables.copies) == (root, copies)
    assert tables.translate(0x5000) == (True, False) and tables.translate(0x1000) == (True, True)
    mapped.set(0x2000, 0x3000, False)  # present -> not present: never in place
    _apply(tables, mapped, executable, 0, PAGE_2M)
    assert tables.root != root and tables.copies == copies + 4  # PT, PD, PDPT and PML4 copied
    assert tables.translate(0x2000) == (False, False) and tables.translate(0x1000) == (True, True)
    tables.seal()
    executable.set(0x1000, 0x2000, False)  # executable -> NX: never in place either
    root = tables.root
    _apply(tables, mapped, executable, 0, PAGE_2M)
    assert tables.root != root and tables.translate(0x1000) == (True, False)


def test_page_tables_never_reuse_a_retired_page(tables: PageTables) -> None:
    # A shadow MMU may still hold a shadow of a retired table: its guest-physical page must stay unused.
    mapped, executable = RangeMap(False, 1 << 48), RangeMap(False, 1 << 48)
    roots = []
    for _ in range(4):
        mapped.set(0, PAGE * 4, True)
        _apply(tables, mapped, executable, 0, PAGE_2M)
        tables.seal()
        mapped.set(0, PAGE * 4, False)
        _apply(tables, mapped, executable, 0, PAGE_2M)
        tables.seal()
        roots.append(tables.root)
    assert roots == sorted(set(roots))


# ================================================================================================ XMM state layout
def test_xsave_state_writes_the_fxsave_region_and_names_the_components_in_xstate_bv() -> None:
    # struct kvm_xsave (asm/kvm.h) in the XSAVE standard format: FCW at 0, MXCSR at 24, XMM0 at 160, XSTATE_BV
    # at 512. A component whose XSTATE_BV bit is clear is loaded as its init value, so every write sets it.
    from lazyaccept.cpu.kvm.xmm import XSTATE_SSE, XSTATE_X87, XsaveState

    state = XsaveState(None, 4096)  # type: ignore[arg-type]  # no vCPU: only the buffer is used here
    value = (0xFEDC << 112) | 0x0102_0304_0506_0708
    state.set_xmm(3, value)
    assert bytes(state.buffer[160 + 48 : 160 + 64]) == value.to_bytes(16, "little") and state.xmm(3) == value
    assert state.xmm(2) == 0 and state.xmm(4) == 0
    assert struct.unpack_from("<Q", state.buffer, 512)[0] == XSTATE_SSE
    state.set_control(0x27F, 0x1FA0)
    assert struct.unpack_from("<H", state.buffer, 0)[0] == 0x27F
    assert struct.unpack_from("<I", state.buffer, 24)[0] == 0x1FA0
    assert struct.unpack_from("<Q", state.buffer, 512)[0] == XSTATE_SSE | XSTATE_X87
    assert len(XsaveState(None, 8192, xsave2=True).buffer) == 8192  # type: ignore[arg-type]


# ================================================================================================ choosing a backend
def test_auto_takes_kvm_when_usable_and_says_why() -> None:
    choice = choose_backend("auto", RunNeeds(), KVM_USABLE)
    assert choice.name == "kvm" and choice.why.startswith("cpu: kvm (auto") and not choice.fidelity
    assert choice.reason == "kvm-available"  # --json's cpu.reason: the code beside the sentence


@pytest.mark.parametrize(
    ("needs", "info", "reason", "code"),
    [
        (RunNeeds(), NO_KVM, "no /dev/kvm", "kvm-unavailable"),
        (RunNeeds(instruction_budget=True), KVM_USABLE, "bounded by instructions", "needs-instruction-count"),
        (RunNeeds(tdx_cpuid_in_boot_services=True), KVM_USABLE, "CPUID leaf 0x21", "needs-tdx-cpuid"),
        (RunNeeds(virtual_tsc=True), KVM_USABLE, "virtual TSC", "needs-virtual-tsc"),
        (RunNeeds(), KVM_NO_XMM, "XMM registers", "needs-xmm-state"),
        (RunNeeds(), KVM_NATIVE_LA57, "5-level paging", "host-la57"),
    ],
)
def test_auto_falls_back_to_unicorn_in_one_line(needs: RunNeeds, info: KvmInfo, reason: str, code: str) -> None:
    choice = choose_backend("auto", needs, info)
    assert choice.name == "unicorn" and reason in choice.why and "\n" not in choice.why
    assert choice.reason == code and code in CHOICE_REASONS


def test_auto_keeps_kvm_when_it_routes_cpuid() -> None:
    assert choose_backend("auto", RunNeeds(tdx_cpuid_in_boot_services=True), KVM_ROUTED).name == "kvm"


def test_explicit_choices() -> None:
    assert choose_backend("unicorn", RunNeeds(), KVM_USABLE).name == "unicorn"
    forced = choose_backend("kvm", RunNeeds(tdx_cpuid_in_boot_services=True), KVM_USABLE)
    assert forced.name == "kvm" and "fidelity limit" in forced.fidelity  # honoured, never silently
    assert forced.reason == choose_backend("unicorn", RunNeeds(), KVM_USABLE).reason == "requested"
    with pytest.raises(ConfigError, match="no /dev/kvm"):
        choose_backend("kvm", RunNeeds(), NO_KVM)
    with pytest.raises(ConfigError, match="instruction"):
        choose_backend("kvm", RunNeeds(instruction_budget=True), KVM_USABLE)
    with pytest.raises(ConfigError, match="auto, unicorn, kvm"):
        choose_backend("qemu", RunNeeds(), KVM_USABLE)
    forced = choose_backend("kvm", RunNeeds(), KVM_NO_XMM)
    assert forced.name == "kvm" and "fidelity limit" in forced.fidelity and "XMM" in forced.fidelity
    assert choose_backend("auto", RunNeeds(xmm_state=False), KVM_NO_XMM).name == "kvm"  # a run that needs none
    forced = choose_backend("kvm", RunNeeds(), KVM_NATIVE_LA57)
    assert forced.name == "kvm" and "LA57" in forced.fidelity


def test_host_la57_is_read_from_the_flags(tmp_path: Any) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu vme la57 pku\n")
    assert host_has_la57(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu vme la57x\n")
    assert not host_has_la57(cpuinfo) and not host_has_la57(tmp_path / "missing")


def test_detection_without_the_device(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAZYACCEPT_REQUIRE_KVM", raising=False)
    info = detect_kvm(str(tmp_path / "kvm"))
    assert not info.usable and info.kind == "none" and "no " in info.detail
    assert choose_backend("auto", RunNeeds(), info).name == "unicorn"
    (tmp_path / "kvm_pvm").mkdir()
    assert kvm_kind(tmp_path) == "kvm-pvm" and not kvm_expected(str(tmp_path / "kvm"))
    (tmp_path / "kvm").touch()
    assert kvm_expected(str(tmp_path / "kvm"))  # a device that exists must work
    monkeypatch.setenv("LAZYACCEPT_REQUIRE_KVM", "1")
    assert kvm_expected(str(tmp_path / "nothing"))
    assert detect_kvm(str(tmp_path / "nothing")).expected


@pytest.mark.parametrize(
    ("ranges", "accepts"),
    [
        ([(4 * GiB, 64 * GiB)], False),
        ([(0x52000000, 0x80000000), (4 * GiB, 64 * GiB)], False),
        ([(2049 * MiB + 4096, 2052 * MiB)], True),  # unaligned and shorter than two units
        ([(4 * GiB, 4 * GiB + 3 * MiB)], True),  # aligned start but shorter than two units
        ([(4 * GiB + 4096, 8 * GiB)], True),  # an unaligned head
        ([], False),
    ],
)
def test_when_the_stub_accepts_memory_itself(ranges: list[tuple[int, int]], accepts: bool) -> None:
    assert bool(stub_accepted_ranges(ranges)) == accepts


# ================================================================================================ the backend contract
CODE, THUNKS, STACK_TOP, DATA, PENDING = 0x100000, 0x200000, 0x380000, 0x400000, 0x800000
ACCEPTED_END = 0x800000  # [0, 8 MiB) is accepted, pending above


class FakeClient:
    """The EFI machine's side of the seam, reduced to what the contract tests observe."""

    def __init__(self) -> None:
        self.backend: Any = None
        self.services: list[tuple[int, int, int]] = []
        self.unmapped: list[tuple[int, str]] = []
        self.outside: list[int] = []
        self.tdcalls: list[int] = []
        self.cpuid: list[tuple[int, int]] = []
        self.exited = False
        self.ports: list[tuple[str, int, int]] = []
        self.tsc = 1000

    def on_service(self, index: int) -> None:
        b = self.backend
        self.services.append((index, b.reg("rcx"), b.reg("rdx")))
        if index == 9:
            b.stop(StopReason(StopKind.EXIT, "service 9 ends the run"))
        else:
            b.set_reg("rax", b.reg("rcx") * 2 + b.reg("rdx"))

    def on_unmapped(self, gpa: int, size: int, access: str) -> bool:
        self.unmapped.append((gpa, access))
        if gpa >= ACCEPTED_END:
            self.backend.stop(StopReason(StopKind.TERMINATED, f"{access} of pending {gpa:#x}"))
            return False
        self.backend.map(gpa - gpa % PAGE, PAGE)
        return True

    def on_cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int] | None:
        self.cpuid.append((leaf, subleaf))
        return (0, 0x65746E49, 0x20202020, 0x5844546C) if leaf == 0x21 else None

    def on_tdcall(self) -> None:
        self.tdcalls.append(self.backend.reg("rax"))
        self.backend.set_reg("rax", 0)
        self.backend.set_reg("r10", 0x1234)

    def on_block_outside(self, rip: int) -> bool:
        self.outside.append(rip)
        return self.exited

    def on_port_in(self, port: int, size: int) -> int:
        self.ports.append(("in", port, size))
        return 0xFFFFFFFF

    def on_port_out(self, port: int, size: int, value: int) -> None:
        self.ports.append(("out", port, value))

    def on_rdtsc(self) -> int:
        self.tsc += 1000
        return self.tsc


def _mov_rcx(value: int) -> bytes:
    return b"\x48\xb9" + value.to_bytes(8, "little")


def _mov_rdx(value: int) -> bytes:
    return b"\x48\xba" + value.to_bytes(8, "little")


def _mov_rax(value: int) -> bytes:
    return b"\x48\xb8" + value.to_bytes(8, "little")


def _call_thunk(index: int) -> bytes:
    return _mov_rax(THUNKS + 4 * index) + b"\xff\xd0"  # call rax


CALL_EXIT = _call_thunk(9)
INT3 = b"\xcc"


@contextmanager
def _backend(name: str, client: FakeClient) -> Iterator[Any]:
    if name == "kvm":
        from lazyaccept.cpu.kvm.backend import KvmBackend

        backend: Any = KvmBackend(client)
    else:
        from lazyaccept.cpu.unicorn.backend import UnicornBackend

        backend = UnicornBackend(client)
    client.backend = backend
    backend.map(THUNKS, PAGE)
    backend.write(THUNKS, backend.thunk_code() * (PAGE // 4))
    backend.set_thunk_range(THUNKS, THUNKS + PAGE)
    backend.map(CODE, PAGE)
    backend.set_code_ranges([(CODE, CODE + PAGE)])
    backend.map(STACK_TOP - 2 * PAGE, 2 * PAGE)
    backend.set_reg("rsp", STACK_TOP - 0x100)
    try:
        yield backend
    finally:
        if hasattr(backend, "close"):
            backend.close()


def _run(backend: Any, code: bytes, timeout_s: float = 10.0, **kw: Any) -> StopReason:
    backend.write(CODE, code)
    return backend.run(CODE, timeout_s=timeout_s, **kw)


@pytest.fixture(params=["unicorn", "kvm"])
def backend_name(request: pytest.FixtureRequest, record_property: Any) -> str:
    if request.param == "kvm":
        request.getfixturevalue("kvm")
    record_property("cpu_backend", request.param)
    return request.param


def test_service_thunks_see_arguments_and_return(backend_name: str) -> None:
    client = FakeClient()
    with _backend(backend_name, client) as b:
        code = _mov_rcx(20) + _mov_rdx(2) + _call_thunk(3) + b"\x48\x89\xc1" + _call_thunk(3) + CALL_EXIT
        stop = _run(b, code)  # mov rcx, rax between the calls
        assert stop.kind == "exit", stop
        assert client.services == [(3, 20, 2), (3, 42, 2), (9, 42, 2)]  # rcx = 20*2+2 for the second call


def test_untouched_memory_is_mapped_on_first_touch_and_pending_memory_stops_the_run(backend_name: str) -> None:
    client = FakeClient()
    with _backend(backend_name, client) as b:
        code = (
            _mov_rcx(DATA + 0x10) + b"\x48\x89\x09" + b"\x48\x8b\x01" + _call_thunk(3)
        )  # mov [rcx], rcx; mov rax,[rcx]
        code += _mov_rcx(PENDING) + b"\x48\x8b\x01" + CALL_EXIT
        stop = _run(b, code)
        assert stop.kind == "terminated" and hex(PENDING) in stop.detail
        assert client.unmapped == [(DATA + 0x10, "write"), (PENDING, "read")]
        assert client.services[0][1] == DATA + 0x10  # the value read back
        assert int.from_bytes(b.read(DATA + 0x10, 8), "little") == DATA + 0x10


def test_a_jump_outside_code_is_asked_about_and_stops_once_the_firmware_is_gone(backend_name: str) -> None:
    client = FakeClient()
    with _backend(backend_name, client) as b:
        b.map(DATA, PAGE)
        b.write(DATA, b"\xc3")  # ret: code outside the registered ranges, returning to the caller
        code = _mov_rax(DATA) + b"\xff\xd0" + _mov_rax(DATA + 0x800) + b"\xff\xe0"  # call DATA, then jmp DATA+0x800
        client.exited = False
        b.write(DATA + 0x800, CALL_EXIT)
        stop = _run(b, code)
        assert stop.kind == "exit" and client.outside[0] == DATA
        client.exited, client.outside = True, []
        b.map(DATA + PAGE, PAGE)
        b.write(CODE + 0x800, _mov_rax(DATA + PAGE) + b"\xff\xe0")  # new code at a new address: unicorn caches
        stop = b.run(CODE + 0x800, timeout_s=10)
        assert (stop.kind, stop.rip, client.outside) == ("kernel", DATA + PAGE, [DATA + PAGE])


def test_tdcall_cpuid_int3_and_privileged_instructions(backend_name: str) -> None:
    client = FakeClient()
    with _backend(backend_name, client) as b:
        code = _mov_rax(0x10) + _mov_rcx(0x2000) + b"\x66\x0f\x01\xcc"  # TDCALL leaf 0x10
        code += b"\x4c\x89\xd1" + _call_thunk(4)  # mov rcx, r10: what on_tdcall answered
        code += b"\x0f\x20\xe0" + b"\xfa" + b"\xfb" + b"\xe4\x61" + INT3  # mov rax, cr4; cli; sti; in al, 0x61
        stop = _run(b, code)
        assert client.tdcalls == [0x10] and client.services[0][1] == 0x1234
        assert (stop.kind, stop.detail) == ("exception", "CPU exception 3 #BP (int3)")
        assert b.reg("rax") & 0xFF == 0  # no device behind port 0x61
        assert b.reg("eflags") & 0x200  # sti
        assert b.reg("cr4") & (1 << 9)  # OSFXSR, whatever else each CPU shows


def test_time_budget_stops_a_guest_that_never_exits(backend_name: str) -> None:
    client = FakeClient()
    with _backend(backend_name, client) as b:
        stop = _run(b, b"\xeb\xfe", timeout_s=0.3)  # jmp $
        assert (stop.kind, stop.rip) == ("budget", CODE)


def test_a_call_through_null_is_reported(backend_name: str) -> None:
    client = FakeClient()
    with _backend(backend_name, client) as b:
        b.map(0, PAGE)
        stop = _run(b, b"\x31\xc0\xff\xd0")  # xor eax, eax; call rax
        assert (stop.kind, stop.rip) == ("exception", 0) and "NULL" in stop.detail


# ------------------------------------------------------------------------------------------------ KVM only
def test_unmapped_memory_faults_again_and_reads_zero(kvm: KvmInfo) -> None:
    client = FakeClient()
    with _backend("kvm", client) as b:
        load = _mov_rcx(DATA) + b"\x48\x8b\x09" + _call_thunk(3)  # mov rcx, [rcx]
        b.map(DATA, PAGE_2M)
        b.write(DATA, b"\x11" * 8)
        assert _run(b, load + CALL_EXIT).kind == "exit" and client.services[0][1] == 0x1111111111111111
        assert client.unmapped == []
        b.unmap(DATA, PAGE_2M)  # present -> not present: the tables are copied, the old root is never reused
        client.services = []
        b.write(CODE + 0x800, load + CALL_EXIT)
        assert b.run(CODE + 0x800, timeout_s=10).kind == "exit"
        assert client.unmapped == [(DATA, "read")] and client.services[0][1] == 0
        assert b.stats.root_switches >= 1


def test_registers_beyond_the_general_ones(kvm: KvmInfo) -> None:
    client = FakeClient()
    with _backend("kvm", client) as b:
        assert b.xmm_state_ok == kvm.xmm_state_ok
        if not b.xmm_state_ok:  # a KVM whose XMM state cannot be reached: said so, and auto does not take it
            assert b.xmm_state_problem.startswith("XMM state cannot be set") and "\n" not in b.xmm_state_problem
            assert b.xmm_state_problem in kvm.detail
            assert "XMM" in choose_backend("auto", RunNeeds(), kvm).why
            return
        assert b.xmm_interface in kvm.detail
        b.set_reg("xmm7", (1 << 127) | 0x55)
        code = b"\x66\x48\x0f\x7e\xf9" + _call_thunk(3)  # movq rcx, xmm7
        b.set_reg("rdx", 0)
        assert _run(b, code + CALL_EXIT).kind == "exit"
        assert client.services[0][1] == 0x55 and b.reg("xmm7") == (1 << 127) | 0x55
        with pytest.raises(KeyError):
            b.set_reg("cr3", 0)


def test_xmm_registers_reach_the_guest_while_sse_is_in_its_init_state(kvm: KvmInfo) -> None:
    # XSTATE_BV without SSE's bit (how an AMD host's XSAVES records untouched XMM registers): XRSTOR then loads
    # zeros, whatever KVM_SET_FPU wrote into the XMM bytes. The backend's writes must still arrive.
    from lazyaccept.cpu.kvm.ioctl import KVM_CAP_XSAVE, XSAVE_XSTATE_BV
    from lazyaccept.cpu.kvm.xmm import XSTATE_SSE, XsaveState

    client = FakeClient()
    with _backend("kvm", client) as b:
        if not b._res.kvm.check_extension(KVM_CAP_XSAVE):
            assert not isinstance(b._xmm, XsaveState)  # no XSAVE state on this KVM: no XSTATE_BV either
            return
        raw = XsaveState(b.vcpu)
        raw.load()
        bv = struct.unpack_from("<Q", raw.buffer, XSAVE_XSTATE_BV)[0]
        struct.pack_into("<Q", raw.buffer, XSAVE_XSTATE_BV, bv & ~XSTATE_SSE)
        raw.store()
        if not b.xmm_state_ok:
            return  # reported (test_registers_beyond_the_general_ones checks how)
        b.set_reg("xmm9", 0x1234_5678_9ABC_DEF0 | (3 << 100))
        code = b"\x66\x4c\x0f\x7e\xc9" + _call_thunk(3) + CALL_EXIT  # movq rcx, xmm9
        assert _run(b, code).kind == "exit"
        assert client.services[0][1] == 0x1234_5678_9ABC_DEF0 and b.reg("xmm9") == 0x1234_5678_9ABC_DEF0 | (3 << 100)


def test_a_kvm_whose_xmm_writes_never_arrive_is_reported_and_not_chosen(
    kvm: KvmInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lazyaccept.cpu.kvm.backend as kb
    from lazyaccept.cpu.kvm.xmm import FpuState

    class Dropping(FpuState):
        name = "a KVM_SET_FPU that drops its XMM bytes"

        def store(self) -> None:
            pass

    monkeypatch.setattr(kb, "xmm_state_candidates", lambda kvm_, vm, vcpu: [Dropping(vcpu)])
    client = FakeClient()
    with _backend("kvm", client) as b:
        assert not b.xmm_state_ok and b.xmm_interface == Dropping.name
        assert "reads 0x0 in the guest" in b.xmm_state_problem and Dropping.name in b.xmm_state_problem
    info = detect_kvm()
    assert info.usable and not info.xmm_state_ok and "XMM state cannot be set" in info.detail
    auto = choose_backend("auto", RunNeeds(), info)
    assert auto.name == "unicorn" and "XMM" in auto.why and "\n" not in auto.why
    forced = choose_backend("kvm", RunNeeds(), info)
    assert forced.name == "kvm" and "XMM" in forced.fidelity


def test_port_io_and_rdtsc_go_to_the_client_when_routed(backend_name: str) -> None:
    client = FakeClient()
    with _backend(backend_name, client) as b:
        routed = b.route_io(port_io=True, virtual_tsc=True)
        assert b.routes_rdtsc == ("rdtsc" in routed) and b.routes_port_io
        code = b"\xe4\x61" + b"\x48\x89\xc1" + b"\xb0\x42\xe6\x80"  # in al, 0x61; mov rcx, rax; mov al, 0x42; out
        code += b"\x0f\x31" + b"\x48\x89\xc2" + _call_thunk(3) + CALL_EXIT  # rdtsc; mov rdx, rax
        assert _run(b, code).kind == "exit"
        assert client.ports == [("in", 0x61, 1), ("out", 0x80, 0x42)]
        assert client.services[0][1] & 0xFF == 0xFF
        if "rdtsc" in routed:
            assert client.services[0][2] == 2000
        else:  # pragma: no cover - a KVM that cannot fault RDTSC says so
            assert routed == ["in", "out"]


def test_backends_declare_their_capabilities() -> None:
    from lazyaccept.cpu.backend import CpuBackend
    from lazyaccept.cpu.kvm.backend import KvmBackend
    from lazyaccept.cpu.unicorn.backend import UnicornBackend

    with pytest.raises(TypeError):
        CpuBackend()  # type: ignore[abstract]
    u = UnicornBackend
    assert u.counts_instructions and u.routes_cpuid and u.routes_rdtsc and u.routes_port_io and u.hooks_code
    assert u.xmm_state_ok and not u.enters_supervisor
    k = KvmBackend  # routes_cpuid, routes_rdtsc and xmm_state_ok are the instance's, after its self-tests
    assert not k.counts_instructions and k.routes_port_io and k.enters_supervisor and k.hooks_code
    with _backend("unicorn", FakeClient()) as b:
        with pytest.raises(NotImplementedError):
            b.enter_supervisor()


def test_instruction_and_exit_budgets(kvm: KvmInfo) -> None:
    client = FakeClient()
    with _backend("kvm", client) as b:
        stop = _run(b, b"\xeb\xfe", max_instructions=1000)
        assert stop.kind == "error" and "cannot count instructions" in stop.detail
        b.max_exits = 5
        stop = _run(b, _call_thunk(3) + b"\xeb\xf2")  # call the thunk forever (jmp back to CODE)
        assert stop.kind == "budget" and "exit budget" in stop.detail


def test_cpuid_leaf_0x21_reaches_the_client_at_cpl3_or_after_enter_supervisor(kvm: KvmInfo) -> None:
    client = FakeClient()
    with _backend("kvm", client) as b:
        code = b"\xb8\x21\x00\x00\x00\x31\xc9\x0f\xa2" + b"\x48\x89\xd9" + _call_thunk(3)  # cpuid; mov rcx, rbx
        if not b.routes_cpuid:  # kvm-pvm: CPUID at CPL3 is the host's; at CPL0 it is KVM's table
            b.enter_supervisor()
        assert _run(b, code + CALL_EXIT).kind == "exit"
        assert client.services[0][1] == 0x65746E49  # "Inte"
        assert b.privilege == (3 if b.routes_cpuid else 0)


def test_the_guest_cannot_reach_the_backends_own_pages(kvm: KvmInfo) -> None:
    from lazyaccept.cpu.kvm.backend import CONTROL_VA, GDT_OFF, STUBS_OFF

    client = FakeClient()
    with _backend("kvm", client) as b:
        read_gdt = _mov_rcx(CONTROL_VA + GDT_OFF) + b"\x48\x8b\x09"  # supervisor-only: #PF
        stop = _run(b, read_gdt + CALL_EXIT)
        assert stop.kind == "exception" and "#PF" in stop.detail and client.unmapped == []
        write_stub = _mov_rcx(CONTROL_VA + STUBS_OFF) + b"\x48\x89\x09"  # read-only: #PF
        assert "#PF" in _run(b, write_stub + CALL_EXIT).detail
        # Jumping into an exception stub with the guest's own stack is port I/O, not a forged exception.
        fake = _mov_rax(CONTROL_VA + STUBS_OFF + 8 * 14) + b"\xff\xe0"
        stop = _run(b, fake, timeout_s=2)
        assert stop.kind != "kernel" and b.stats.emulated.get("out", 0) >= 1
        stop = _run(b, b"\x0f\x05")  # SYSCALL: #UD on hardware (EFER.SCE clear), kvm-pvm delivers it anyway
        assert stop.kind == "exception" and stop.rip == CODE and ("0f05" in stop.detail or "syscall" in stop.detail)
        assert _run(b, CALL_EXIT).kind == "exit"  # and the backend still runs guest code afterwards


def test_a_code_hook_replaces_a_function_without_showing_in_memory(kvm: KvmInfo) -> None:
    client = FakeClient()
    with _backend("kvm", client) as b:
        function = CODE + 0x800
        b.write(function, b"\x48\x31\xc0\xc3")  # xor rax, rax; ret: never runs while hooked

        def hooked() -> None:  # return 0x77 to the caller
            rsp = b.reg("rsp")
            b.set_reg("rax", 0x77)
            b.set_reg("rip", int.from_bytes(b.read(rsp, 8), "little"))
            b.set_reg("rsp", rsp + 8)

        b.add_code_hook(function, hooked)
        assert b.read(function, 4) == b"\x48\x31\xc0\xc3"
        code = _mov_rax(function) + b"\xff\xd0" + b"\x48\x89\xc1" + _call_thunk(3) + CALL_EXIT
        assert _run(b, code).kind == "exit" and client.services[0][1] == 0x77


def test_the_machine_routes_io_for_its_config_and_prepare_machine_adds_the_cpl0_step(kvm: KvmInfo) -> None:
    from lazyaccept.cpu.machine import EfiMachine, MachineConfig
    from lazyaccept.cpu.select import kvm_factory, prepare_machine
    from lazyaccept.firmware.platform import start_dxe
    from lazyaccept.firmware.sec import parse_policy, run_sec
    from lazyaccept.vmm.td import TdConfig, build_td

    td = build_td(TdConfig(ram_size=4 * GiB, vcpus=1))
    dxe = start_dxe(td, run_sec(td, parse_policy("256M")))
    machine = EfiMachine(td.tdx, dxe, MachineConfig(port_io=True, virtual_tsc=False), backend_factory=kvm_factory)
    b = machine.backend
    try:
        hooks = len(machine.on_after_exit)
        notes = prepare_machine(machine, lambda: False)
        assert b.port_io and not b.virtual_tsc and notes == []
        assert len(machine.on_after_exit) - hooks == (0 if b.routes_cpuid else 1)
    finally:
        b.close()


# ================================================================================================ the real stub
SCENARIOS = {
    "64G-256M-1G-initrd-option1": dict(ram=64 * GiB, upfront="256M", initrd_size=1 * GiB, option1=True),
    "4G-below-4g-64M-initrd": dict(ram=4 * GiB, upfront="below-4g", initrd_size=64 * MiB),
    "1T-below-4g-64M-initrd": dict(ram=1 * TiB, upfront="below-4g", initrd_size=64 * MiB),
    # Unaligned and short: the stub accepts it itself after ExitBootServices, after checking CPUID leaf 0x21.
    "2052M-stub-accepts-itself": dict(ram=2052 * MiB, upfront=f"{2049 * 1024 + 4}K", initrd_size=16 * MiB),
    # Debian's GRUB from a disk, then the stub: port I/O (its PIT probe) and a virtual TSC on both backends.
    "4G-grub-64M-initrd": dict(ram=4 * GiB, upfront="below-4g", initrd_size=64 * MiB, grub=True),
}


@contextmanager
def _machines_on(backend: str) -> Iterator[list[Any]]:
    """run_boot with its EfiMachine on `backend`, prepared as select.prepare_machine prepares it."""
    import lazyaccept.boot as boot
    from lazyaccept.cpu.machine import EfiMachine
    from lazyaccept.cpu.select import kvm_factory, prepare_machine, unicorn_factory

    made: list[Any] = []
    factory = kvm_factory if backend == "kvm" else unicorn_factory

    class Machine(EfiMachine):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["backend_factory"] = factory
            super().__init__(*args, **kwargs)
            self.cpu_notes = prepare_machine(self, boot.stub_accepts_itself_after_exit(self))
            made.append(self)

    original = boot.EfiMachine
    boot.EfiMachine = Machine  # type: ignore[misc]
    try:
        yield made
    finally:
        boot.EfiMachine = original  # type: ignore[misc]


def boot_on(backend: str, **kw: Any) -> tuple[Any, Any]:
    from lazyaccept.boot import BootScenario, run_boot

    kw.setdefault("smp", 8)
    kw.setdefault("rng_seed", 7)
    with _machines_on(backend) as made:
        report = run_boot(BootScenario(**kw))
    machine = made[-1]
    assert machine.backend.name == backend
    return report, machine


def kernel_slot(report: Any) -> tuple[int, int]:
    """The stub's allocation the kernel entry lies in: (base, size), from the service-call log."""
    for call in report.calls:
        m = re.search(r"(0x[0-9a-f]+) pages, .* -> (0x[0-9a-f]+)$", call["detail"])
        if call["name"] == "AllocatePages" and m:
            pages, base = int(m.group(1), 16), int(m.group(2), 16)
            if base <= report.kernel_entry < base + pages * PAGE:
                return base, pages * PAGE
    raise AssertionError("no allocation holds the kernel entry")


def handoff_fingerprint(report: Any, machine: Any) -> dict[str, Any]:
    """Everything the kernel is handed and everything the run measured, backend-independent."""
    read = machine.backing.read
    out: dict[str, Any] = dict(
        outcome=report.outcome,
        reason=report.reason,
        kernel_entry=report.kernel_entry,
        console=report.console,
        calls=report.calls,
        call_counts=report.call_counts,
        loader_events=report.loader_events,
        accepted_by_actor=report.accepted_by_actor,
        timeline=[(p.name, p.virtual_ns, p.accepted_bytes) for p in report.phases],
        boot_params=report.boot_params,
        unaccepted_table=report.unaccepted_table,
        handoff_problems=report.handoff_problems,
        tdcalls_by_stub=report.tdcalls_by_stub,
        measurements=report.measurements,
        truth=list(machine.tdx.state_ranges()),
    )
    if machine.kernel_entry is not None:
        rsi = machine.kernel_entry[1]
        out["boot_params_bytes"] = hashlib.sha256(read(rsi, 4096)).hexdigest()
        base, size = kernel_slot(report)
        out["kernel_slot"] = (base, size, hashlib.sha256(read(base, size)).hexdigest())
    if report.unaccepted_table is not None:
        address = report.unaccepted_table["address"]
        version, unit, phys_base, size = struct.unpack("<IIQQ", read(address, 24))
        out["unaccepted_table_bytes"] = hashlib.sha256(read(address, 24 + size)).hexdigest()
    return out


@pytest.mark.real_binary
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_stub_hands_the_kernel_the_same_under_kvm_and_unicorn(
    scenario: str, kvm: KvmInfo, record_property: Any
) -> None:
    from lazyaccept.boot import BootScenario

    kw = SCENARIOS[scenario]
    if not set(kw) <= set(BootScenario.__dataclass_fields__):
        pytest.skip(f"this tree's BootScenario has no {sorted(set(kw) - set(BootScenario.__dataclass_fields__))}")
    rep_kvm, m_kvm = boot_on("kvm", **kw)
    rep_uc, m_uc = boot_on("unicorn", **kw)
    record_property("cpu_backend", f"kvm ({kvm.detail}) and unicorn")
    assert rep_kvm.outcome == "kernel-entry", rep_kvm.reason
    assert rep_kvm.handoff_ok, rep_kvm.handoff_problems
    fp_kvm, fp_uc = handoff_fingerprint(rep_kvm, m_kvm), handoff_fingerprint(rep_uc, m_uc)
    assert "kernel_slot" in fp_kvm and fp_kvm["kernel_slot"][1] > 32 * MiB
    for key in fp_uc:
        assert fp_kvm[key] == fp_uc[key], f"{key} differs between KVM and unicorn"
    assert fp_kvm == fp_uc
    if scenario == "2052M-stub-accepts-itself":
        assert rep_kvm.tdcalls_by_stub > 0
        assert m_kvm.backend.privilege == 0 or m_kvm.backend.routes_cpuid
        assert any("CPL0" in note for note in m_kvm.cpu_notes) or m_kvm.backend.routes_cpuid
    else:
        assert m_kvm.backend.privilege == 3 and m_kvm.cpu_notes == []


def test_choice_is_recorded_with_its_reason(kvm: KvmInfo) -> None:
    choice: BackendChoice = choose_backend("auto", RunNeeds(), kvm)
    assert choice.name == "kvm" and kvm.kind in choice.why
