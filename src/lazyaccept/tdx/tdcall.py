"""The TDX module's side of a TDCALL at register level: the guest's GPRs in, the GPRs the module writes back out.

Checked against intel/tdx-module tag TDX_1.5.01: the leaf decode in src/td_dispatcher/tdx_td_dispatcher.c
(tdx_td_dispatcher), each leaf in src/td_dispatcher/vm_exits/tdg_*.c, the #VE information in
src/td_dispatcher/vm_exits/td_other_exits.c (tdx_inject_ve), the TDG.VP.VMCALL round trip in
src/td_dispatcher/vm_exits/tdg_vp_vmcall.c and src/td_transitions/tdh_vp_enter.c (save_regs_after_tdvmcall).

TDG.VM.RD/WR (version 0) answer from tdx/metadata.py: the Linux TD guest's tdx_setup issues them after the
handoff. Leaves neither edk2's TDVF nor that kernel issues (TDG.MR.REPORT, TDG.SYS.RD, ...: no call in
edk2-stable202502 nor in master at c5aa7e7d94, past 202605) are not modelled: they answer as an unknown leaf does
(TDX_OPERAND_INVALID on RAX) and are recorded as such, so a run shows if a guest needs one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

from lazyaccept.spec.tdx import (
    NUM_RTMRS,
    RTMR_EXTEND_ALIGN,
    SHA384_SIZE,
    TDCALL_LEAF_MASK,
    TDCALL_RAX_RESERVED_MASK,
    TDCALL_VERSION_MASK,
    TDCALL_VERSION_SHIFT,
    TDVMCALL_STATUS_INVALID_OPERAND,
    VMCALL_GPR_FORBIDDEN,
    VMCALL_GPR_ORDER,
    VMCALL_RCX_RESERVED_MASK,
    OperandId,
    TdcallLeaf,
    TdvmcallSubfunction,
    TdxStatus,
)
from lazyaccept.tdx.metadata import TdMetadata
from lazyaccept.tdx.module import TdTerminated, TdxError, TdxModule

U64 = (1 << 64) - 1
VECTOR_VE = 20
VECTOR_DF = 8


class VmcallHandler(Protocol):
    """What the TDX module needs of the VMM: the answer to a GHCI TDG.VP.VMCALL (R10 = 0).

    Returns (the status the VMM puts in R10, its other outputs by lowercase register name, e.g. {"r11": value},
    or CPUID's {"r12", "r13", "r14", "r15"})."""

    def tdvmcall(
        self, vcpu: int, subfunction: int, r12: int, r13: int, r14: int, r15: int
    ) -> tuple[int, dict[str, int]]: ...


@dataclass(frozen=True)
class VeInfo:
    """TDVPS.VE_INFO (src/common/data_structures/tdx_tdvps.h, tdvps_ve_info_t) as the vCPU stores it."""

    exit_reason: int
    exit_qualification: int = 0
    gla: int = 0
    gpa: int = 0
    instruction_length: int = 0
    instruction_info: int = 0


@dataclass(frozen=True)
class UnknownTdcall:
    """A TDCALL the model does not answer: its RAX, where, and by whom."""

    vcpu: int
    rax: int
    rip: int | None
    actor: str


def leaf_name(leaf: int) -> str:
    try:
        return TdcallLeaf(leaf).name
    except ValueError:
        return f"leaf {leaf:#x}"


class TdcallDispatcher:
    """TDCALLs of a TD's vCPUs answered by its TDX module, with the VMM behind TDG.VP.VMCALL."""

    def __init__(self, module: TdxModule, vmm: VmcallHandler):
        self.module = module
        self.vmm = vmm
        n = module.num_vcpus
        self.ve_info: list[VeInfo | None] = [None] * n
        self.counts: list[Counter[str]] = [Counter() for _ in range(n)]  # per vCPU, by leaf name
        self.vmcall_counts: list[Counter[str]] = [Counter() for _ in range(n)]  # per vCPU, by sub-function
        self.unknown: list[UnknownTdcall] = []
        self._metadata: TdMetadata | None = None

    @property
    def metadata(self) -> TdMetadata:
        """The TD-scope fields, made at the first TDG.VM.RD/WR (a snapshot's dispatcher may predate them)."""
        if getattr(self, "_metadata", None) is None:
            self._metadata = TdMetadata(self.module.gpa_width)
        assert self._metadata is not None
        return self._metadata

    # ------------------------------------------------------------------ the vCPU's side

    def inject_ve(self, vcpu: int, info: VeInfo) -> int:
        """The vCPU converts an exit into a #VE: the module stores VE_INFO if none is pending and the vector
        to deliver is #VE; with information still unread it delivers #DF instead (tdx_inject_ve)."""
        if self.ve_info[vcpu] is not None:
            return VECTOR_DF
        self.ve_info[vcpu] = info
        return VECTOR_VE

    def dispatch(
        self, vcpu: int, regs: Mapping[str, int], *, rip: int | None = None, actor: str = "guest"
    ) -> dict[str, int]:
        """One TDCALL from `vcpu` with its GPRs (lowercase names, absent = 0); returns the registers the
        module writes back, RAX (the status) always. A TD terminated by it raises TdTerminated."""
        module = self.module
        rax = regs.get("rax", 0) & U64
        leaf = rax & TDCALL_LEAF_MASK
        version = (rax >> TDCALL_VERSION_SHIFT) & TDCALL_VERSION_MASK
        # Reserved bits, or a version on a leaf that has only version 0 (TDG.VM.RD alone has more).
        if rax & TDCALL_RAX_RESERVED_MASK or (version and leaf != TdcallLeaf.VM_RD):
            return self._unknown(vcpu, rax, rip, actor)
        if leaf == TdcallLeaf.MEM_PAGE_ACCEPT:
            # accept_rcx charges the clock itself (the TDCALL plus any exit it causes).
            self.counts[vcpu][TdcallLeaf.MEM_PAGE_ACCEPT.name] += 1
            return {"rax": module.accept_rcx(regs.get("rcx", 0) & U64, vcpu=vcpu, actor=actor)}
        handler = self._LEAVES.get(leaf)
        if handler is None:
            return self._unknown(vcpu, rax, rip, actor)
        self._require_alive()
        self.counts[vcpu][TdcallLeaf(leaf).name] += 1
        module.charge_tdcall(vcpu)
        return handler(self, vcpu, regs, rip, actor)

    # ------------------------------------------------------------------ leaves

    def _vp_info(self, vcpu: int, regs: Mapping[str, int], rip: int | None, actor: str) -> dict[str, int]:
        return {"rax": TdxStatus.SUCCESS, **self.module.vp_info(vcpu)}

    def _rtmr_extend(self, vcpu: int, regs: Mapping[str, int], rip: int | None, actor: str) -> dict[str, int]:
        """tdg_mr_rtmr_extend.c: alignment of RCX, then the walk to the digest, then the index in RDX; only
        RAX is written."""
        gpa, index = regs.get("rcx", 0) & U64, regs.get("rdx", 0) & U64
        module = self.module
        if gpa % RTMR_EXTEND_ALIGN or gpa + SHA384_SIZE > module.private_limit:
            # Misaligned, or not a private GPA (shared bit set or beyond the GPA width): PRIVATE_ONLY walk fails.
            return {"rax": TdxStatus.OPERAND_INVALID | OperandId.RCX}
        # The walk to a page not accepted is an EPT violation: with SEPT_VE_DISABLE the TD is terminated.
        module.check_access(gpa, SHA384_SIZE, "read", actor=actor, vcpu=vcpu, rip=rip)
        digest = module.memory.read(gpa, SHA384_SIZE, actor=actor, vcpu=vcpu)
        if index >= NUM_RTMRS:
            return {"rax": TdxStatus.OPERAND_INVALID | OperandId.RDX}
        module.measurement.extend_rtmr(index, digest)
        return {"rax": TdxStatus.SUCCESS}

    def _veinfo_get(self, vcpu: int, regs: Mapping[str, int], rip: int | None, actor: str) -> dict[str, int]:
        """tdg_vp_veinfo_get.c: RCX, RDX, R8, R9, R10 are written always (zero without valid information);
        a successful get frees VE_INFO."""
        info = self.ve_info[vcpu]
        if info is None:
            return {"rax": TdxStatus.NO_VALID_VE_INFO, "rcx": 0, "rdx": 0, "r8": 0, "r9": 0, "r10": 0}
        self.ve_info[vcpu] = None
        return {
            "rax": TdxStatus.SUCCESS,
            "rcx": info.exit_reason & 0xFFFFFFFF,
            "rdx": info.exit_qualification & U64,
            "r8": info.gla & U64,
            "r9": info.gpa & U64,
            # inst_len_and_info: the length in the low dword, the information in the high one.
            "r10": (info.instruction_length & 0xFFFFFFFF) | (info.instruction_info & 0xFFFFFFFF) << 32,
        }

    def _vp_vmcall(self, vcpu: int, regs: Mapping[str, int], rip: int | None, actor: str) -> dict[str, int]:
        """tdg_vp_vmcall.c and tdh_vp_enter.c: RCX selects the GPRs passed; the VMM sees the selected ones and
        zeros for the rest; on resume the module writes RAX = SUCCESS, RCX = the guest's RCX, and every
        selected GPR from the VMM's copy (so a register the VMM did not change comes back as it went)."""
        control = regs.get("rcx", 0) & U64
        select = control & 0xFFFF
        if select & VMCALL_GPR_FORBIDDEN or control & VMCALL_RCX_RESERVED_MASK:
            return {"rax": TdxStatus.OPERAND_INVALID | OperandId.RCX}
        passed = [name for i, name in enumerate(VMCALL_GPR_ORDER) if select >> i & 1]
        vmm_regs = {name: regs.get(name, 0) & U64 if name in passed else 0 for name in VMCALL_GPR_ORDER[2:]}
        self.module.charge(vcpu, self.module.profile.exit_ns)  # the TD exit to the VMM and back
        if vmm_regs["r10"]:
            # Not a GHCI standard call: the contract with the VMM has none other; answered as unsupported.
            self.vmcall_counts[vcpu][f"r10={vmm_regs['r10']:#x}"] += 1
            vmm_regs["r10"] = TDVMCALL_STATUS_INVALID_OPERAND
        else:
            sub = vmm_regs["r11"]
            self.vmcall_counts[vcpu][_subfunction_name(sub)] += 1
            status, outputs = self.vmm.tdvmcall(
                vcpu, sub, vmm_regs["r12"], vmm_regs["r13"], vmm_regs["r14"], vmm_regs["r15"]
            )
            bad = set(outputs) - set(VMCALL_GPR_ORDER[2:]) | ({"r10", "rsp"} & set(outputs))
            if bad:
                raise TdxError(f"TDG.VP.VMCALL {_subfunction_name(sub)}: the VMM answered registers {sorted(bad)}")
            vmm_regs.update({name: value & U64 for name, value in outputs.items()})
            vmm_regs["r10"] = status & U64
        out = {"rax": TdxStatus.SUCCESS, "rcx": control}
        out.update({name: vmm_regs[name] for name in passed})
        return out

    def _vm_rd(self, vcpu: int, regs: Mapping[str, int], rip: int | None, actor: str) -> dict[str, int]:
        """tdg_vm_rd_wr.c, version 0 (the dispatcher refuses versions above 1; version 1's next-field walk is not
        modelled and answers as the dispatcher's unknown leaf): RDX the field ID, RCX the VM (0: the TD itself);
        R8 written always."""
        if (regs.get("rax", 0) >> TDCALL_VERSION_SHIFT) & TDCALL_VERSION_MASK:
            return {"rax": TdxStatus.OPERAND_INVALID | OperandId.RAX}
        status, value = self.metadata.read(regs.get("rdx", 0), regs.get("rcx", 0) & U64)
        return {"rax": status, "r8": value}

    def _vm_wr(self, vcpu: int, regs: Mapping[str, int], rip: int | None, actor: str) -> dict[str, int]:
        """tdg_vm_rd_wr.c: RDX the field ID, R8 the value, R9 the write mask; R8 returns the old value."""
        status, old = self.metadata.write(
            regs.get("rdx", 0), regs.get("rcx", 0) & U64, regs.get("r8", 0) & U64, regs.get("r9", 0) & U64
        )
        return {"rax": status, "r8": old}

    def _unknown(self, vcpu: int, rax: int, rip: int | None, actor: str) -> dict[str, int]:
        """tdx_td_dispatcher's default case: an invalid RAX operand, nothing else written."""
        self._require_alive()
        self.counts[vcpu][leaf_name(rax & TDCALL_LEAF_MASK)] += 1
        self.unknown.append(UnknownTdcall(vcpu, rax, rip, actor))
        self.module.charge_tdcall(vcpu)
        return {"rax": TdxStatus.OPERAND_INVALID | OperandId.RAX}

    def _require_alive(self) -> None:
        if self.module.termination is not None:
            raise TdTerminated(self.module.termination)

    _LEAVES: ClassVar[dict[int, Callable[[TdcallDispatcher, int, Mapping[str, int], int | None, str], dict[str, int]]]]
    _LEAVES = {
        TdcallLeaf.VP_INFO: _vp_info,
        TdcallLeaf.MR_RTMR_EXTEND: _rtmr_extend,
        TdcallLeaf.VP_VEINFO_GET: _veinfo_get,
        TdcallLeaf.VP_VMCALL: _vp_vmcall,
        TdcallLeaf.VM_RD: _vm_rd,
        TdcallLeaf.VM_WR: _vm_wr,
    }

    # ------------------------------------------------------------------ for the report

    def tdcall_counts(self) -> list[dict[str, int]]:
        """TDCALLs per vCPU, by leaf name (TDG.VP.VMCALL as VP_VMCALL; its sub-functions in vmcall_counts)."""
        return [dict(c) for c in self.counts]


def _subfunction_name(sub: int) -> str:
    try:
        return TdvmcallSubfunction(sub).name
    except ValueError:
        return f"exit reason {sub}" if sub < 0x10000 else f"{sub:#x}"
