"""The CPUID leaves a TD asks the VMM about (TDG.VP.VMCALL<Instruction.CPUID>), as QEMU/KVM answer them.

The TDX module answers most leaves itself (fixed or configured at TDH.MNG.INIT); it raises #VE only for leaves it
does not virtualize, chiefly the hypervisor range 0x40000000+, which the guest then forwards here. The table is
kept small and says where each value comes from; any other leaf reads as zeros, as KVM answers a leaf it has no
entry for (arch/x86/kvm/cpuid.c).
"""

from __future__ import annotations

CpuidRegs = tuple[int, int, int, int]  # eax, ebx, ecx, edx

KVM_SIGNATURE = (0x4B4D564B, 0x564B4D56, 0x0000004D)  # "KVMKVMKVM\0\0\0" in ebx, ecx, edx

CPUID_TABLE: dict[tuple[int, int | None], CpuidRegs] = {
    # KVM's hypervisor leaf: max hypervisor leaf 0x40000001 and the signature (QEMU target/i386/kvm/kvm.c).
    (0x40000000, None): (0x40000001, *KVM_SIGNATURE),
    # KVM paravirt features: none offered to a TD here (kvmclock and friends are not trusted in a TD; Linux's
    # TDX guest does not use them), so eax = 0.
    (0x40000001, None): (0, 0, 0, 0),
}


def cpuid(leaf: int, subleaf: int) -> tuple[CpuidRegs, bool]:
    """(eax, ebx, ecx, edx) and whether the table knew the leaf."""
    regs = CPUID_TABLE.get((leaf, subleaf)) or CPUID_TABLE.get((leaf, None))
    if regs is None:
        return (0, 0, 0, 0), False
    return regs, True


TOPOLOGY_LEAF = 0xB  # extended topology (SDM vol. 2A, CPUID leaf 0BH)
TOPOLOGY_LEAVES = (TOPOLOGY_LEAF, 0x1F)  # V2 extended topology: the same levels here (Linux reads 0x1F first)
LEVEL_SMT, LEVEL_CORE = 1, 2


def topology(subleaf: int, vcpu: int, vcpus: int) -> CpuidRegs:
    """Leaf 0xB of vCPU `vcpu` of `vcpus` as QEMU answers it for `-smp N` (one socket of N one-thread cores, the
    default of its machines since 6.2; target/i386/cpu.c cpu_x86_cpuid): EDX is the vCPU's x2APIC ID, which is
    how TDVF's relocated AP loop (OvmfPkg/TdxDxe/X64/ApRunLoop.nasm) tells the mailbox's commands for it."""
    if subleaf == 0:
        return 0, 1, (LEVEL_SMT << 8) | subleaf, vcpu
    if subleaf == 1:
        return (vcpus - 1).bit_length(), vcpus, (LEVEL_CORE << 8) | subleaf, vcpu
    return 0, 0, subleaf & 0xFF, vcpu
