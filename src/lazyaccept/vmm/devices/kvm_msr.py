"""The MSRs KVM emulates for a TD guest beyond the x2APIC (which devices/apic.py is): what a Linux TD guest's #VE
handler reaches through TDG.VP.VMCALL<Instruction.RDMSR/WRMSR>.

KVM's list is arch/x86/kvm/vmx/tdx.c tdx_has_emulated_msr (Linux 6.16 and later); the values are KVM's common MSR
code's (arch/x86/kvm/x86.c kvm_get_msr_common, arch/x86/kvm/mtrr.c) with QEMU's defaults. Only the ones a 6.12
guest reaches on the way to its first ACPI table are here: the microcode revision (guest writes are ignored, QEMU
sets 0x100000000 for an Intel vCPU), the MTRRs (KVM keeps the values and virtualises no memory types; MTRRcap
0x500 | 8 variable ranges), MISC_FEATURES_ENABLES and PLATFORM_INFO (0 unless QEMU sets them), and the machine-check
MSRs a guest's mcheck_cpu_init reads and writes (x86.c get_msr_mce/set_msr_mce, with the capabilities QEMU's
mce_init asks for: target/i386/cpu.h MCE_CAP_DEF | MCE_BANKS_DEF, 10 banks, no CMCI or LMCE; kvm_vcpu_ioctl_x86_
setup_mce starts MCG_CTL and each MCi_CTL all ones). Any other MSR is refused, which the guest sees as #GP.
"""

from __future__ import annotations

UCODE_REV = 0x8B
QEMU_INTEL_UCODE_REV = 0x100000000  # target/i386/cpu.c: the default ucode-rev of an Intel CPU model
PLATFORM_INFO = 0xCE
MTRR_CAP = 0xFE
MISC_FEATURES_ENABLES = 0x140
MTRR_PHYS_FIRST, MTRR_PHYS_LAST = 0x200, 0x20F  # 8 variable ranges: base/mask pairs
MTRR_FIX = frozenset({0x250, 0x258, 0x259, *range(0x268, 0x270)})
MTRR_DEF_TYPE = 0x2FF
KVM_NR_VAR_MTRR = 8
MTRR_CAP_VALUE = 0x500 | KVM_NR_VAR_MTRR  # arch/x86/kvm/mtrr.c: fixed ranges and write-combining supported
MCG_CAP, MCG_STATUS, MCG_CTL = 0x179, 0x17A, 0x17B
MC0_CTL = 0x400  # MCi_CTL, MCi_STATUS, MCi_ADDR, MCi_MISC at 0x400 + 4i ..
MC0_CTL2, KVM_MAX_MCE_BANKS = 0x280, 32
MCG_CTL_P, MCG_SER_P = 1 << 8, 1 << 24
MCE_BANKS = 10  # QEMU's MCE_BANKS_DEF
MCG_CAP_VALUE = MCG_CTL_P | MCG_SER_P | MCE_BANKS  # QEMU's MCE_CAP_DEF | MCE_BANKS_DEF, within KVM_MCE_CAP_SUPPORTED
ALL_ONES = (1 << 64) - 1


class KvmMsrs:
    """One vCPU's KVM-emulated MSRs."""

    def __init__(self) -> None:
        self.values: dict[int, int] = {PLATFORM_INFO: 0, MISC_FEATURES_ENABLES: 0, MTRR_DEF_TYPE: 0}
        self.values.update(dict.fromkeys(range(MTRR_PHYS_FIRST, MTRR_PHYS_LAST + 1), 0))
        self.values.update(dict.fromkeys(MTRR_FIX, 0))
        # kvm_vcpu_ioctl_x86_setup_mce: MCG_CTL and every MCi_CTL all ones, STATUS/ADDR/MISC zero.
        self.mce: dict[int, int] = {MCG_STATUS: 0, MCG_CTL: ALL_ONES}
        for bank in range(MCE_BANKS):
            self.mce.update({MC0_CTL + 4 * bank: ALL_ONES, MC0_CTL + 4 * bank + 1: 0})
            self.mce.update({MC0_CTL + 4 * bank + 2: 0, MC0_CTL + 4 * bank + 3: 0})

    def handles(self, index: int) -> bool:
        # tdx_has_emulated_msr: the whole MCx_CTL and MCx_CTL2 ranges reach KVM; beyond the banks it refuses them.
        in_mce = MC0_CTL <= index < MC0_CTL + 4 * KVM_MAX_MCE_BANKS or MC0_CTL2 <= index < MC0_CTL2 + KVM_MAX_MCE_BANKS
        return index in (UCODE_REV, MTRR_CAP, MCG_CAP) or index in self.values or index in self.mce or in_mce

    def rdmsr(self, index: int) -> int | None:
        if index == UCODE_REV:
            return QEMU_INTEL_UCODE_REV
        if index == MTRR_CAP:
            return MTRR_CAP_VALUE
        if index == MCG_CAP:
            return MCG_CAP_VALUE
        if index in self.mce:
            return self.mce[index]
        return self.values.get(index)  # MCi_CTL2 (no CMCI) and banks beyond the tenth: None, KVM's #GP

    def wrmsr(self, index: int, value: int) -> bool:
        if index == UCODE_REV:
            return True  # kvm_set_msr_common: only the host sets it; the guest's write is dropped
        if index in (MTRR_CAP, PLATFORM_INFO, MCG_CAP):
            return False  # read-only
        if index in self.mce:
            return self._set_mce(index, value)
        if index not in self.values:
            return False
        self.values[index] = value
        return True

    def _set_mce(self, index: int, value: int) -> bool:
        """set_msr_mce: MCG_CTL 0 or all ones; MCi_CTL 0 or all ones (bits 10 and 0 may be clear); MCi_STATUS
        only 0 from the guest (an Intel vCPU); MCG_STATUS, MCi_ADDR and MCi_MISC as written."""
        if index == MCG_CTL and value not in (0, ALL_ONES):
            return False
        if index >= MC0_CTL:
            kind = (index - MC0_CTL) % 4
            if kind == 0 and value != 0 and (value | (1 << 10) | 1) != ALL_ONES:
                return False
            if kind == 1 and value != 0:
                return False
        self.mce[index] = value
        return True
