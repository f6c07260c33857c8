"""The MSRs KVM emulates for a TD guest beyond the x2APIC (which devices/apic.py is): what a Linux TD guest's #VE
handler reaches through TDG.VP.VMCALL<Instruction.RDMSR/WRMSR>.

KVM's list is arch/x86/kvm/vmx/tdx.c tdx_has_emulated_msr (Linux 6.16 and later); the values are KVM's common MSR
code's (arch/x86/kvm/x86.c kvm_get_msr_common, arch/x86/kvm/mtrr.c) with QEMU's defaults. Only the ones a 6.12
guest reaches on the way to its first ACPI table are here: the microcode revision (guest writes are ignored, QEMU
sets 0x100000000 for an Intel vCPU), the MTRRs (KVM keeps the values and virtualises no memory types; MTRRcap
0x500 | 8 variable ranges), MISC_FEATURES_ENABLES and PLATFORM_INFO (0 unless QEMU sets them). Any other MSR is
refused, which the guest sees as #GP.
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


class KvmMsrs:
    """One vCPU's KVM-emulated MSRs."""

    def __init__(self) -> None:
        self.values: dict[int, int] = {PLATFORM_INFO: 0, MISC_FEATURES_ENABLES: 0, MTRR_DEF_TYPE: 0}
        self.values.update(dict.fromkeys(range(MTRR_PHYS_FIRST, MTRR_PHYS_LAST + 1), 0))
        self.values.update(dict.fromkeys(MTRR_FIX, 0))

    def handles(self, index: int) -> bool:
        return index in (UCODE_REV, MTRR_CAP) or index in self.values

    def rdmsr(self, index: int) -> int | None:
        if index == UCODE_REV:
            return QEMU_INTEL_UCODE_REV
        if index == MTRR_CAP:
            return MTRR_CAP_VALUE
        return self.values.get(index)

    def wrmsr(self, index: int, value: int) -> bool:
        if index == UCODE_REV:
            return True  # kvm_set_msr_common: only the host sets it; the guest's write is dropped
        if index in (MTRR_CAP, PLATFORM_INFO):
            return False  # read-only
        if index not in self.values:
            return False
        self.values[index] = value
        return True
