"""The TDCALL dispatcher at register level: each leaf's output registers and statuses, as in intel/tdx-module
TDX_1.5.01, the VMCALL round trip through a VMM handler, and the counts per vCPU."""

from __future__ import annotations

import hashlib

import pytest

from lazyaccept.spec.tdx import OperandId, TdcallLeaf, TdvmcallSubfunction, TdxStatus
from lazyaccept.tdx.module import TdTerminated, TdxError, TdxModule
from lazyaccept.tdx.tdcall import TdcallDispatcher, VeInfo
from lazyaccept.units import MiB

K4, M2 = 4096, 2 * MiB
GPR_SELECT_EDK2 = 0xFFEC  # edk2 TdVmCall: RDX, RBX, RBP, RSI, RDI, R8..R15


class DictVmm:
    """A VMM answering TDVMCALLs from a table: sub-function -> (R10 status, outputs); records each call."""

    def __init__(self, answers: dict[int, tuple[int, dict[str, int]]]):
        self.answers = answers
        self.calls: list[tuple[int, int, int, int, int, int]] = []

    def tdvmcall(
        self, vcpu: int, subfunction: int, r12: int, r13: int, r14: int, r15: int
    ) -> tuple[int, dict[str, int]]:
        self.calls.append((vcpu, subfunction, r12, r13, r14, r15))
        return self.answers.get(subfunction, (0x8000000000000000, {}))


def setup(
    vcpus: int = 2, answers: dict[int, tuple[int, dict[str, int]]] | None = None
) -> tuple[TdxModule, TdcallDispatcher, DictVmm]:
    tdx = TdxModule("kvm-2m", num_vcpus=vcpus, gpa_width=48)
    tdx.add_ram(0, 64 * MiB)
    vmm = DictVmm(answers or {})
    return tdx, TdcallDispatcher(tdx, vmm), vmm


def test_vp_info_writes_rcx_rdx_r8_to_r11() -> None:
    tdx, d, _ = setup(vcpus=4)
    out = d.dispatch(3, {"rax": TdcallLeaf.VP_INFO})
    assert out == {"rax": 0, "rcx": 48, "rdx": tdx.attributes, "r8": 4 | 4 << 32, "r9": 3, "r10": 1, "r11": 0}
    assert tdx.clock_ns(3) == tdx.profile.tdcall_ns and tdx.clock_ns(0) == 0


def test_unknown_leaf_reserved_bits_and_versions_are_invalid_rax_logged() -> None:
    tdx, d, _ = setup()
    for rax in (99, TdcallLeaf.VP_INFO | 1 << 32, TdcallLeaf.VP_INFO | 1 << 16, TdcallLeaf.MR_REPORT):
        assert d.dispatch(0, {"rax": rax}, rip=0x1234) == {"rax": TdxStatus.OPERAND_INVALID | OperandId.RAX}
    assert [u.rax for u in d.unknown] == [99, 1 | 1 << 32, 1 | 1 << 16, 4]
    assert d.unknown[0].rip == 0x1234 and tdx.clock_ns(0) == 4 * tdx.profile.tdcall_ns


# Linux 6.12's field IDs (arch/x86/include/asm/shared/tdx.h): NOTIFY_ENABLES with context code and element size 0.
NOTIFY_ENABLES, CONFIG_FLAGS, TD_CTLS = 0x9100000000000010, 0x1110000300000016, 0x1110000300000017


def test_vm_rd_wr_as_linux_tdx_setup_issues_them() -> None:
    _, d, _ = setup()
    # tdx_setup: NOTIFY_ENABLES := 0 with mask -1 (the bits outside the guest mask keep their value: accepted).
    assert d.dispatch(0, {"rax": TdcallLeaf.VM_WR, "rdx": NOTIFY_ENABLES, "r8": 0, "r9": (1 << 64) - 1}) == {
        "rax": TdxStatus.SUCCESS, "r8": 0}
    # CONFIG_FLAGS: GPAW 0 on this 48-bit TD, no flexible PENDING_VE; read-only to the guest.
    assert d.dispatch(0, {"rax": TdcallLeaf.VM_RD, "rdx": CONFIG_FLAGS}) == {"rax": 0, "r8": 0}
    assert d.dispatch(0, {"rax": TdcallLeaf.VM_WR, "rdx": CONFIG_FLAGS, "r8": 2, "r9": 2})["rax"] == (
        TdxStatus.METADATA_FIELD_NOT_WRITABLE)
    # TD_CTLS.PENDING_VE_DISABLE is guest-writable; the old value comes back in R8.
    assert d.dispatch(1, {"rax": TdcallLeaf.VM_WR, "rdx": TD_CTLS, "r8": 1, "r9": 1}) == {"rax": 0, "r8": 0}
    assert d.dispatch(0, {"rax": TdcallLeaf.VM_RD, "rdx": TD_CTLS}) == {"rax": 0, "r8": 1}
    assert d.dispatch(0, {"rax": TdcallLeaf.VM_WR, "rdx": TD_CTLS, "r8": 4, "r9": 5})["rax"] == (
        TdxStatus.METADATA_FIELD_VALUE_NOT_VALID)


def test_vm_rd_wr_bad_operands() -> None:
    _, d, _ = setup()
    assert d.dispatch(0, {"rax": TdcallLeaf.VM_RD, "rdx": 0x1110000300000099}) == {
        "rax": TdxStatus.METADATA_FIELD_ID_INCORRECT, "r8": 0}
    assert d.dispatch(0, {"rax": TdcallLeaf.VM_RD, "rdx": CONFIG_FLAGS | 1 << 34})["rax"] == (
        TdxStatus.METADATA_FIELD_ID_INCORRECT)  # not a single element
    assert d.dispatch(0, {"rax": TdcallLeaf.VM_RD, "rdx": CONFIG_FLAGS, "rcx": 1})["rax"] == (
        TdxStatus.OPERAND_INVALID | OperandId.RCX)
    assert d.dispatch(0, {"rax": TdcallLeaf.VM_RD | 1 << 16, "rdx": CONFIG_FLAGS})["rax"] == (
        TdxStatus.OPERAND_INVALID | OperandId.RAX)  # version 1: not modelled


def test_accept_through_the_dispatcher_equals_accept_rcx() -> None:
    a, d, _ = setup()
    b, _, _ = setup()
    for rcx in (0x10000, 0x10000, M2 | 1, 0x10001 << 3, 0x200000 | 2, 4 * M2 + K4 | 1):
        assert d.dispatch(1, {"rax": TdcallLeaf.MEM_PAGE_ACCEPT, "rcx": rcx}) == {"rax": b.accept_rcx(rcx, vcpu=1)}
    assert a.clock_ns(1) == b.clock_ns(1) and a.stats == b.stats
    assert list(a.state_ranges()) == list(b.state_ranges())
    assert d.tdcall_counts()[1] == {"MEM_PAGE_ACCEPT": 6}


def put_digest(tdx: TdxModule, gpa: int, digest: bytes) -> None:
    tdx.accept_page(gpa & ~0xFFF)
    tdx.memory.write(gpa, digest, actor="test")


def test_rtmr_extend_chain() -> None:
    tdx, d, _ = setup()
    d1, d2 = hashlib.sha384(b"one").digest(), hashlib.sha384(b"two").digest()
    put_digest(tdx, 0x5040, d1)
    put_digest(tdx, 0x6000, d2)
    assert d.dispatch(0, {"rax": TdcallLeaf.MR_RTMR_EXTEND, "rcx": 0x5040, "rdx": 1}) == {"rax": 0}
    assert d.dispatch(0, {"rax": TdcallLeaf.MR_RTMR_EXTEND, "rcx": 0x6000, "rdx": 1}) == {"rax": 0}
    first = hashlib.sha384(bytes(48) + d1).digest()
    assert tdx.measurement.rtmr[1] == hashlib.sha384(first + d2).digest()
    assert tdx.measurement.rtmr[0] == tdx.measurement.rtmr[2] == tdx.measurement.rtmr[3] == bytes(48)


def test_rtmr_extend_statuses() -> None:
    tdx, d, _ = setup()
    put_digest(tdx, 0x5000, bytes(48))
    leaf = TdcallLeaf.MR_RTMR_EXTEND
    bad_rcx, bad_rdx = TdxStatus.OPERAND_INVALID | OperandId.RCX, TdxStatus.OPERAND_INVALID | OperandId.RDX
    assert d.dispatch(0, {"rax": leaf, "rcx": 0x5020, "rdx": 0}) == {"rax": bad_rcx}  # not 64-byte aligned
    assert d.dispatch(0, {"rax": leaf, "rcx": 0x5000 | 1 << 47, "rdx": 0}) == {"rax": bad_rcx}  # shared GPA
    assert d.dispatch(0, {"rax": leaf, "rcx": 0x5000, "rdx": 4}) == {"rax": bad_rdx}
    assert d.dispatch(0, {"rax": leaf, "rcx": 0x5021, "rdx": 4}) == {"rax": bad_rcx}  # RCX is checked first
    assert tdx.measurement.rtmr == [bytes(48)] * 4


def test_rtmr_extend_of_a_pending_page_terminates() -> None:
    tdx, d, _ = setup()
    tdx.aug(0x7000, K4)
    with pytest.raises(TdTerminated):
        d.dispatch(1, {"rax": TdcallLeaf.MR_RTMR_EXTEND, "rcx": 0x7000, "rdx": 9}, rip=0xFFF0)
    assert tdx.termination is not None and tdx.termination.gpa == 0x7000 and tdx.termination.rip == 0xFFF0
    with pytest.raises(TdTerminated):  # a dead TD issues no more TDCALLs
        d.dispatch(0, {"rax": TdcallLeaf.VP_INFO})


def test_veinfo_get_with_and_without_pending_info() -> None:
    _, d, _ = setup()
    zeros = {"rcx": 0, "rdx": 0, "r8": 0, "r9": 0, "r10": 0}
    assert d.dispatch(0, {"rax": TdcallLeaf.VP_VEINFO_GET}) == {"rax": TdxStatus.NO_VALID_VE_INFO, **zeros}
    info = VeInfo(exit_reason=30, exit_qualification=0x3F80008, gla=0x1000, gpa=0x2000, instruction_length=1)
    assert d.inject_ve(1, info) == 20
    assert d.inject_ve(1, VeInfo(exit_reason=12)) == 8  # information not read yet: #DF
    out = d.dispatch(1, {"rax": TdcallLeaf.VP_VEINFO_GET})
    assert out == {"rax": 0, "rcx": 30, "rdx": 0x3F80008, "r8": 0x1000, "r9": 0x2000, "r10": 1}
    assert d.dispatch(1, {"rax": TdcallLeaf.VP_VEINFO_GET}) == {"rax": TdxStatus.NO_VALID_VE_INFO, **zeros}
    assert d.inject_ve(1, VeInfo(exit_reason=10, instruction_length=2, instruction_info=5)) == 20
    assert d.dispatch(1, {"rax": TdcallLeaf.VP_VEINFO_GET})["r10"] == 2 | 5 << 32


def test_vmcall_forwarded_to_the_vmm_and_selected_registers_written_back() -> None:
    cpuid = (0, {"r12": 1, "r13": 2, "r14": 3, "r15": 4})
    tdx, d, vmm = setup(answers={10: cpuid, 30: (0, {"r11": 0xAB})})
    regs = {"rax": 0, "rcx": GPR_SELECT_EDK2, "r10": 0, "r11": 10, "r12": 0x21, "r13": 0, "rdx": 7, "rbx": 8}
    out = d.dispatch(1, regs)
    assert vmm.calls == [(1, 10, 0x21, 0, 0, 0)]
    # Every selected GPR comes back: the VMM's outputs, R10 its status, the others as they went.
    assert out == {
        "rax": 0, "rcx": GPR_SELECT_EDK2, "rdx": 7, "rbx": 8, "rbp": 0, "rsi": 0, "rdi": 0, "r8": 0, "r9": 0,
        "r10": 0, "r11": 10, "r12": 1, "r13": 2, "r14": 3, "r15": 4,
    }  # fmt: skip
    assert tdx.clock_ns(1) == tdx.profile.tdcall_ns + tdx.profile.exit_ns


def test_vmcall_passes_only_selected_registers() -> None:
    _, d, vmm = setup(answers={30: (0, {"r11": 0xAB, "r12": 5})})
    # R10, R11, R12 selected: the VMM sees R13 as 0 and R12's output comes back, R13's value is not written.
    select = 1 << 10 | 1 << 11 | 1 << 12
    out = d.dispatch(0, {"rax": 0, "rcx": select, "r11": 30, "r12": 0x60, "r13": 0x99})
    assert vmm.calls == [(0, 30, 0x60, 0, 0, 0)]
    assert out == {"rax": 0, "rcx": select, "r10": 0, "r11": 0xAB, "r12": 5}
    assert d.vmcall_counts[0] == {"EXIT_REASON_IO_INSTRUCTION": 1}


def test_vmcall_status_and_invalid_controls() -> None:
    _, d, vmm = setup(answers={TdvmcallSubfunction.MAP_GPA: (1, {"r11": 0x1000})})
    regs = {"rax": 0, "rcx": GPR_SELECT_EDK2, "r11": TdvmcallSubfunction.MAP_GPA, "r12": 0x1000, "r13": K4}
    out = d.dispatch(0, regs)
    assert (out["r10"], out["r11"]) == (1, 0x1000) and d.vmcall_counts[0] == {"MAP_GPA": 1}
    bad = TdxStatus.OPERAND_INVALID | OperandId.RCX
    for rcx in (GPR_SELECT_EDK2 | 1, GPR_SELECT_EDK2 | 2, GPR_SELECT_EDK2 | 16, GPR_SELECT_EDK2 | 1 << 32):
        assert d.dispatch(0, {**regs, "rcx": rcx}) == {"rax": bad}
    assert len(vmm.calls) == 1
    # R10 != 0 is not a GHCI standard call: the VMM is not asked, R10 says invalid operand.
    out = d.dispatch(0, {**regs, "r10": 0x4C})
    assert out["r10"] == 0x8000000000000000 and len(vmm.calls) == 1


def test_vmcall_outputs_outside_the_contract_are_refused() -> None:
    _, d, _ = setup(answers={1: (0, {"rax": 5})})
    with pytest.raises(TdxError, match="rax"):
        d.dispatch(0, {"rax": 0, "rcx": GPR_SELECT_EDK2, "r11": 1})


def test_counts_per_vcpu_and_leaf() -> None:
    tdx, d, _ = setup()
    d.dispatch(0, {"rax": TdcallLeaf.VP_INFO})
    d.dispatch(0, {"rax": TdcallLeaf.VP_INFO})
    d.dispatch(1, {"rax": TdcallLeaf.VP_VEINFO_GET})
    d.dispatch(1, {"rax": 0, "rcx": GPR_SELECT_EDK2, "r11": 12})
    d.dispatch(1, {"rax": 0x42})
    assert d.tdcall_counts() == [{"VP_INFO": 2}, {"VP_VEINFO_GET": 1, "VP_VMCALL": 1, "leaf 0x42": 1}]
    assert d.vmcall_counts[1] == {"EXIT_REASON_HLT": 1}
