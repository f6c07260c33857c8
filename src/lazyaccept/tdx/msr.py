"""What the TDX module does with a TD's RDMSR/WRMSR: run it natively, virtualise it, #VE or #GP.

From intel/tdx-module tag TDX_1.5.01: include/auto_gen/msr_config_lookup.c (per MSR range, for reads and writes,
whether the MSR bitmap exits, fixed or by TD configuration, and the action on an exit) and
src/td_dispatcher/vm_exits/td_msr_access.c (rd_wr_msr_generic_case: an MSR outside the table exits with #VE, the
"non-architectural exception"; GP_OR_VE is #VE where the TD has the feature, #GP where not; OTHER is handled by the
module itself). Bitmap bits fixed to 0 never exit: the CPU runs the access natively, and for the x2APIC registers
kept there (TPR, PPR, EOI, ISR, TMR, IRR, SELF_IPI) that is the TD's virtual APIC.

The TD configuration this assumes is QEMU's default TD: no PERFMON attribute (the performance-monitoring MSRs
exit and #GP), XFAM without PT, CET, ULI or LBR, no TSX, UMWAIT, PKS or XFD exposure (their MSRs #GP), TSC deadline
supported (IA32_TSC_DEADLINE #VEs to the VMM), no DCA, TME or MKTME (#GP).
"""

from __future__ import annotations

from enum import StrEnum


class MsrAction(StrEnum):
    NATIVE = "native"  # no exit: the CPU's own MSR
    VIRTUAL_APIC = "virtual-apic"  # no exit: an x2APIC register of the TD's virtual APIC page
    MODULE = "module"  # the TDX module answers it itself (MSR_ACTION_OTHER)
    VE = "ve"  # #VE to the guest, which asks the VMM through TDG.VP.VMCALL
    GP = "gp"  # #GP(0) to the guest


N, A, M, V, G = MsrAction.NATIVE, MsrAction.VIRTUAL_APIC, MsrAction.MODULE, MsrAction.VE, MsrAction.GP
# (first, last, on read, on write), in the order of msr_config_lookup.c; what is not here #VEs.
_TABLE: tuple[tuple[int, int, MsrAction, MsrAction], ...] = (
    (0x10, 0x10, N, V),  # IA32_TIME_STAMP_COUNTER
    (0x48, 0x49, N, N),  # IA32_SPEC_CTRL, IA32_PRED_CMD
    (0x87, 0x87, G, G),  # IA32_MKTME_PARTITIONING (no MKTME in the TD)
    (0x8C, 0x8F, G, G),  # IA32_SGXLEPUBKEYHASHx
    (0x98, 0x9B, G, G),  # WBINVDP, WBNOINVDP, INTR_PENDING, IA32_SMM_MONITOR_CTL
    (0x9E, 0x9E, G, G),  # IA32_SMBASE
    (0xBC, 0xBC, N, V),  # IA32_MISC_PACKAGE_CTLS
    (0xBD, 0xBD, M, N),  # IA32_XAPIC_DISABLE_STATUS
    (0xC1, 0xC8, G, G),  # IA32_PMCx (PERFMON)
    (0xE1, 0xE1, G, G),  # IA32_UMWAIT_CONTROL
    (0x10A, 0x10A, M, N),  # IA32_ARCH_CAPABILITIES
    (0x10B, 0x10B, N, N),  # IA32_FLUSH_CMD
    (0x122, 0x122, G, G),  # IA32_TSX_CTRL
    (0x174, 0x176, N, N),  # IA32_SYSENTER_CS/ESP/EIP
    (0x186, 0x18D, G, G),  # IA32_PERFEVTSELx (PERFMON)
    (0x195, 0x195, G, G),  # IA32_OVERCLOCKING_STATUS
    (0x1A0, 0x1A0, M, V),  # IA32_MISC_ENABLE
    (0x1A6, 0x1A7, G, G),  # MSR_OFFCORE_RSPx (PERFMON)
    (0x1C4, 0x1C5, G, G),  # IA32_XFD, IA32_XFD_ERR
    (0x1D9, 0x1D9, M, M),  # IA32_DEBUGCTL
    (0x1F8, 0x1FA, G, G),  # DCA capabilities (no DCA)
    (0x276, 0x276, G, G),  # MSR_SLAM_ENABLE
    (0x277, 0x277, N, N),  # IA32_PAT
    (0x309, 0x310, G, G),  # IA32_FIXED_CTRx (PERFMON)
    (0x329, 0x329, G, G),  # IA32_PERF_METRICS
    (0x345, 0x345, M, G),  # IA32_PERF_CAPABILITIES
    (0x38D, 0x392, G, G),  # fixed-counter control, global status/control (PERFMON)
    (0x3F1, 0x3F2, G, G),  # PEBS (PERFMON)
    (0x3F6, 0x3F7, G, G),  # PEBS (PERFMON)
    (0x480, 0x480, M, G),  # IA32_VMX_BASIC
    (0x481, 0x484, V, G),  # IA32_VMX_{PINBASED,PROCBASED,EXIT,ENTRY}_CTLS
    (0x485, 0x489, M, G),  # IA32_VMX_MISC, CR0/CR4 fixed
    (0x48A, 0x48A, V, G),  # IA32_VMX_VMCS_ENUM
    (0x48B, 0x492, M, G),  # the other VMX capability MSRs
    (0x4C1, 0x4C8, G, G),  # IA32_A_PMCx (PERFMON)
    (0x500, 0x500, G, G),  # IA32_SGX_SVN_STATUS
    (0x560, 0x561, G, G),  # RTIT (XFAM PT)
    (0x570, 0x572, G, G),  # RTIT (XFAM PT)
    (0x580, 0x587, G, G),  # RTIT address ranges (XFAM PT)
    (0x600, 0x600, N, N),  # IA32_DS_AREA
    (0x6A0, 0x6A0, G, G),  # IA32_U_CET (XFAM CET)
    (0x6A2, 0x6A8, G, G),  # IA32_S_CET, PLx_SSP, INTERRUPT_SSP_TABLE_ADDR (XFAM CET)
    (0x6E0, 0x6E0, V, V),  # IA32_TSC_DEADLINE (GP_OR_VE: the TD has TSC deadline)
    (0x6E1, 0x6E1, G, G),  # IA32_PKRS
    (0x808, 0x808, A, A),  # IA32_X2APIC_TPR
    (0x80A, 0x80B, A, A),  # IA32_X2APIC_PPR, IA32_X2APIC_EOI
    (0x810, 0x827, A, A),  # IA32_X2APIC_ISRx, TMRx, IRRx
    (0x83F, 0x83F, A, A),  # IA32_X2APIC_SELF_IPI
    (0x981, 0x984, G, G),  # TME (no TME)
    (0x985, 0x98A, G, G),  # UINTR (XFAM ULI)
    (0xC80, 0xC80, N, V),  # IA32_DEBUG_INTERFACE
    (0xD90, 0xD90, G, G),  # IA32_BNDCFGS
    (0xD93, 0xD93, G, G),  # IA32_PASID
    (0xDA0, 0xDA0, N, M),  # IA32_XSS
    (0x1200, 0x12FF, G, G),  # IA32_LBR_INFO (XFAM LBR)
    (0x14CE, 0x14CF, G, G),  # IA32_LBR_CTL, IA32_LBR_DEPTH (XFAM LBR)
    (0x1500, 0x16FF, G, G),  # IA32_LBR_x_FROM_IP, IA32_LBR_x_TO_IP (XFAM LBR)
    (0x1B01, 0x1B01, N, N),  # IA32_UARCH_MISC_CTL
    (0xC0000080, 0xC0000080, N, M),  # IA32_EFER
    (0xC0000081, 0xC0000082, N, N),  # IA32_STAR, IA32_LSTAR
    (0xC0000084, 0xC0000084, N, N),  # IA32_FMASK
    (0xC0000100, 0xC0000103, N, N),  # IA32_FSBASE, GSBASE, KERNEL_GS_BASE, TSC_AUX
)


def msr_action(index: int, write: bool) -> MsrAction:
    """The TDX module's handling of RDMSR (write False) or WRMSR of MSR `index` in a TD."""
    for first, last, on_read, on_write in _TABLE:
        if first <= index <= last:
            return on_write if write else on_read
    return MsrAction.VE
