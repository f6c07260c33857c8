"""Q35Platform: dispatch by port, MMIO address and MSR, and every TDG.VP.VMCALL sub-function."""

from __future__ import annotations

import pytest

from lazyaccept.errors import ConfigError
from lazyaccept.spec.tdx import TdvmcallStatus as St
from lazyaccept.spec.tdx import TdvmcallSubfunction as Sub
from lazyaccept.units import GiB
from lazyaccept.vmm.devices.fw_cfg import FwCfgPayload
from lazyaccept.vmm.platform import Q35Platform

from .conftest import BytesMemory, Clock

SHARED = 1 << 51


@pytest.fixture
def td(clock: Clock, memory: BytesMemory) -> Q35Platform:
    return Q35Platform(4 * GiB, 2, clock, memory=memory, payload=FwCfgPayload(files={"opt/a": b"xyz"}))


def io(td: Q35Platform, port: int, size: int, value: int | None = None) -> int | None:
    if value is None:
        status, out = td.tdvmcall(0, Sub.EXIT_REASON_IO_INSTRUCTION, size, 0, port, 0)
        assert status == St.SUCCESS
        return out["r11"]
    assert td.tdvmcall(0, Sub.EXIT_REASON_IO_INSTRUCTION, size, 1, port, value) == (St.SUCCESS, {})
    return None


def test_io_through_tdvmcall(td: Q35Platform, clock: Clock) -> None:
    io(td, 0x510, 2, 0)
    assert bytes(io(td, 0x511, 1) or 0 for _ in range(4)) == b"QEMU"
    io(td, 0xCF8, 4, 0x80000000)
    assert io(td, 0xCFC, 4) == 0x29C08086
    assert io(td, 0x2FF, 1) == 0xFF  # no COM2: unassigned reads all ones
    io(td, 0x3F8, 1, ord("A"))
    assert td.uart.text() == "A"
    # OVMF's PM timer set-up: PMBASE 0x600, ACPI_EN, then the timer at 0x608
    io(td, 0xCF8, 4, 0x8000F840)
    io(td, 0xCFC, 4, 0x600)
    io(td, 0xCF8, 4, 0x8000F844)
    io(td, 0xCFC, 1, 0x80)
    clock.ns = 10**9
    assert io(td, 0x608, 4) == 3_579_545
    io(td, 0x70, 1, 0x5F)
    assert io(td, 0x71, 1) == 1  # vCPUs - 1
    assert td.events.counts["tdvmcall.exit_reason_io_instruction"] >= 10
    assert td.events.counts["io.in unassigned"] == 1


def test_io_bad_operands(td: Q35Platform) -> None:
    assert td.tdvmcall(0, Sub.EXIT_REASON_IO_INSTRUCTION, 3, 0, 0x80, 0) == (St.INVALID_OPERAND, {})
    assert td.tdvmcall(0, Sub.EXIT_REASON_IO_INSTRUCTION, 1, 2, 0x80, 0) == (St.INVALID_OPERAND, {})
    assert td.tdvmcall(0, Sub.EXIT_REASON_IO_INSTRUCTION, 1, 0, 0x10000, 0) == (St.INVALID_OPERAND, {})
    assert any("port I/O size" in line for line in td.events.lines)


def test_msrs(td: Q35Platform) -> None:
    assert td.tdvmcall(0, Sub.EXIT_REASON_MSR_READ, 0x1B, 0, 0, 0) == (St.SUCCESS, {"r11": 0xFEE00D00})
    assert td.tdvmcall(1, Sub.EXIT_REASON_MSR_READ, 0x802, 0, 0, 0) == (St.SUCCESS, {"r11": 1})
    assert td.tdvmcall(0, Sub.EXIT_REASON_MSR_WRITE, 0x80F, 0x1FF, 0, 0) == (St.SUCCESS, {})
    assert td.rdmsr(0, 0x80F) == 0x1FF and td.rdmsr(1, 0x80F) == 0xFF  # per vCPU
    assert td.tdvmcall(0, Sub.EXIT_REASON_MSR_READ, 0x10, 0, 0, 0)[0] == St.INVALID_OPERAND
    assert td.tdvmcall(0, Sub.EXIT_REASON_MSR_WRITE, 0x839, 1, 0, 0)[0] == St.INVALID_OPERAND  # read-only
    assert td.tdvmcall(2, Sub.EXIT_REASON_MSR_READ, 0x1B, 0, 0, 0)[0] == St.INVALID_OPERAND  # no vCPU 2


def test_kvm_emulated_msrs(td: Q35Platform) -> None:
    # A Linux TD guest's #VE handler forwards these (arch/x86/kvm/vmx/tdx.c tdx_has_emulated_msr).
    assert td.rdmsr(0, 0x8B) == 0x100000000 and td.wrmsr(0, 0x8B, 0) and td.rdmsr(0, 0x8B) == 0x100000000
    assert td.rdmsr(0, 0xFE) == 0x508 and not td.wrmsr(0, 0xFE, 0)
    assert td.wrmsr(1, 0x2FF, 0xC06) and td.rdmsr(1, 0x2FF) == 0xC06 and td.rdmsr(0, 0x2FF) == 0
    assert td.rdmsr(0, 0x1A0) is None and not td.wrmsr(0, 0x12345, 1)  # not KVM's to answer: #GP in the guest


def test_timer_deadline_across_vcpus(td: Q35Platform, clock: Clock) -> None:
    assert td.next_deadline() is None
    td.wrmsr(1, 0x80F, 0x100)
    td.wrmsr(1, 0x832, 0x22)
    td.wrmsr(1, 0x83E, 0xB)
    td.wrmsr(1, 0x838, 25)  # 25 ticks at 25 MHz: 1 us
    assert td.next_deadline() == 1000
    clock.ns = 1000
    assert td.pending_interrupt(1) == 0x22 and td.pending_interrupt(0) is None


def test_cpuid(td: Q35Platform) -> None:
    status, out = td.tdvmcall(0, Sub.EXIT_REASON_CPUID, 0x40000000, 0, 0, 0)
    assert status == St.SUCCESS
    sig = b"".join(out[r].to_bytes(4, "little") for r in ("r13", "r14", "r15"))
    assert sig == b"KVMKVMKVM\0\0\0" and out["r12"] == 0x40000001
    assert td.tdvmcall(0, Sub.EXIT_REASON_CPUID, 0x4FFFFFFF, 0, 0, 0) == (
        St.SUCCESS,
        {"r12": 0, "r13": 0, "r14": 0, "r15": 0},
    )
    assert td.events.counts["cpuid.unknown leaf"] == 1


def test_hlt_wbinvd_info(td: Q35Platform) -> None:
    assert td.tdvmcall(1, Sub.EXIT_REASON_HLT, 1, 0, 0, 0) == (St.SUCCESS, {})
    assert td.halted_irq_blocked == {1: True}
    assert td.tdvmcall(0, Sub.EXIT_REASON_WBINVD, 0, 0, 0, 0) == (St.SUCCESS, {})
    assert td.tdvmcall(0, Sub.GET_TD_VM_CALL_INFO, 0, 0, 0, 0) == (
        St.SUCCESS,
        {"r11": 0, "r12": 0, "r13": 0, "r14": 0},
    )
    assert td.tdvmcall(0, Sub.GET_TD_VM_CALL_INFO, 1, 0, 0, 0) == (St.INVALID_OPERAND, {})


def test_mmio(td: Q35Platform) -> None:
    mmio = Sub.EXIT_REASON_EPT_VIOLATION
    assert td.tdvmcall(0, mmio, 1, 0, SHARED | 0xFED40000, 0) == (St.SUCCESS, {"r11": 0xFF})  # no TPM
    assert td.tdvmcall(0, mmio, 4, 0, SHARED | 0xE0000000, 0) == (St.SUCCESS, {"r11": 0xFFFFFFFF})  # ECAM off
    td.pci.mch.write(0x60, 4, 0xE0000001)
    assert td.tdvmcall(0, mmio, 4, 0, SHARED | 0xE0000000, 0) == (St.SUCCESS, {"r11": 0x29C08086})
    assert td.tdvmcall(0, mmio, 2, 0, 0xE00F8002, 0) == (St.SUCCESS, {"r11": 0x2918})  # without the shared bit
    assert td.tdvmcall(0, mmio, 4, 1, SHARED | 0xE00F8040, 0x681) == (St.SUCCESS, {})
    assert td.pci.lpc.get(0x40, 4) == 0x681
    assert td.tdvmcall(0, mmio, 3, 0, 0xE0000000, 0)[0] == St.INVALID_OPERAND
    assert td.tdvmcall(0, mmio, 4, 0, 0xE0000FFE, 0)[0] == St.INVALID_OPERAND  # crosses a page
    assert td.tdvmcall(0, mmio, 4, 7, 0xE0000000, 0)[0] == St.INVALID_OPERAND


def test_map_gpa(td: Q35Platform) -> None:
    m = Sub.MAP_GPA
    assert td.tdvmcall(0, m, SHARED | 0x80000000, 0x200000, 0, 0) == (St.SUCCESS, {})
    assert td.shared_ranges() == [(0x80000000, 0x80200000)]
    assert td.tdvmcall(0, m, 0x80100000, 0x1000, 0, 0) == (St.SUCCESS, {})  # back to private
    assert td.shared_ranges() == [(0x80000000, 0x80100000), (0x80101000, 0x80200000)]
    assert td.tdvmcall(0, m, SHARED | 0x1001, 0x1000, 0, 0) == (St.ALIGN_ERROR, {"r11": SHARED | 0x1001})
    assert td.tdvmcall(0, m, SHARED - 0x1000, 0x2000, 0, 0) == (St.INVALID_OPERAND, {"r11": SHARED - 0x1000})
    assert td.tdvmcall(0, m, 0x1000, 0, 0, 0)[0] == St.INVALID_OPERAND
    assert td.tdvmcall(0, m, (1 << 52) - 0x1000, 0x2000, 0, 0)[0] == St.INVALID_OPERAND
    assert td.report()["shared_bytes"] == 0x1FF000


def test_map_gpa_retry(clock: Clock) -> None:
    td = Q35Platform(1 * GiB, 1, clock, mapgpa_chunk=0x200000)
    gpa = SHARED | 0x10000000
    assert td.tdvmcall(0, Sub.MAP_GPA, gpa, 0x500000, 0, 0) == (St.RETRY, {"r11": gpa + 0x200000})
    assert td.tdvmcall(0, Sub.MAP_GPA, gpa + 0x200000, 0x300000, 0, 0) == (St.RETRY, {"r11": gpa + 0x400000})
    assert td.tdvmcall(0, Sub.MAP_GPA, gpa + 0x400000, 0x100000, 0, 0) == (St.SUCCESS, {})
    assert td.shared_ranges() == [(0x10000000, 0x10500000)]


def test_fatal_error_and_event_notify(td: Q35Platform) -> None:
    msg = int.from_bytes(b"SEC fail", "little")
    assert td.tdvmcall(1, Sub.REPORT_FATAL_ERROR, (1 << 63) | 0x42, 0x5000, msg, 0) == (St.SUCCESS, {})
    assert td.failed and td.fatal is not None
    assert (td.fatal.vcpu, td.fatal.error_code, td.fatal.data_gpa, td.fatal.message) == (1, 0x42, 0x5000, b"SEC fail")
    assert td.report()["fatal"]["message"] == "SEC fail"
    assert td.tdvmcall(0, Sub.SETUP_EVENT_NOTIFY_INTERRUPT, 0xEC, 0, 0, 0) == (St.SUCCESS, {})
    assert td.event_notify_vector == {0: 0xEC}
    assert td.tdvmcall(0, Sub.SETUP_EVENT_NOTIFY_INTERRUPT, 0x10, 0, 0, 0) == (St.INVALID_OPERAND, {})


def test_unknown_subfunctions_are_logged_not_raised(td: Q35Platform) -> None:
    assert td.tdvmcall(0, 0xDEAD, 0, 0, 0, 0) == (St.INVALID_OPERAND, {})
    assert td.tdvmcall(0, Sub.GET_QUOTE, 0, 0, 0, 0) == (St.INVALID_OPERAND, {})
    assert td.events.counts["tdvmcall.unknown"] == 1 and td.events.counts["tdvmcall.get_quote"] == 1
    assert any("0xdead not supported" in line for line in td.events.lines)
    assert int(St.INVALID_OPERAND) == 0x8000000000000000 and int(St.ALIGN_ERROR) == 0x8000000000000002


def test_fw_cfg_dma_through_ports_with_shared_address(td: Q35Platform, memory: BytesMemory) -> None:
    memory.write(0x1000, (0x000A).to_bytes(4, "big") + (4).to_bytes(4, "big") + (SHARED | 0x2000).to_bytes(8, "big"))
    io(td, 0x514, 4, int.from_bytes(((SHARED | 0x1000) >> 32).to_bytes(4, "big"), "little"))  # SwapBytes32
    io(td, 0x518, 4, int.from_bytes((0x1000).to_bytes(4, "big"), "little"))
    assert memory.read(0x1000, 4) == bytes(4) and memory.read(0x2000, 4) == b"QEMU"


def test_bad_configuration(clock: Clock) -> None:
    with pytest.raises(ConfigError, match="vCPU count"):
        Q35Platform(GiB, 0, clock)
    with pytest.raises(ConfigError, match="GPAW"):
        Q35Platform(GiB, 1, clock, gpaw=40)
