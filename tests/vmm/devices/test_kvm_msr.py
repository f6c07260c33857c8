"""The MSRs KVM emulates beyond the x2APIC (vmm/devices/kvm_msr.py): the machine-check MSRs as KVM's
get_msr_mce/set_msr_mce answer them with QEMU's default capabilities (10 banks, MCG_CTL_P | MCG_SER_P)."""

from __future__ import annotations

from lazyaccept.vmm.devices.kvm_msr import ALL_ONES, MCG_CAP_VALUE, KvmMsrs


def test_machine_check_msrs_as_kvm_sets_them_up() -> None:
    m = KvmMsrs()
    assert m.rdmsr(0x179) == MCG_CAP_VALUE == 0x100010A and not m.wrmsr(0x179, 0)
    assert m.rdmsr(0x17A) == 0 and m.rdmsr(0x17B) == ALL_ONES
    assert m.rdmsr(0x400) == ALL_ONES and m.rdmsr(0x401) == 0  # MC0_CTL all ones, MC0_STATUS clear
    assert m.rdmsr(0x400 + 4 * 9 + 3) == 0  # MC9_MISC: the tenth bank is the last
    assert m.handles(0x400 + 4 * 10) and m.rdmsr(0x400 + 4 * 10) is None  # beyond the banks: KVM's #GP
    assert m.handles(0x280) and m.rdmsr(0x280) is None  # MC0_CTL2 without MCG_CMCI_P


def test_machine_check_writes_follow_set_msr_mce() -> None:
    m = KvmMsrs()
    assert m.wrmsr(0x17B, 0) and not m.wrmsr(0x17B, 5)
    assert m.wrmsr(0x400, ALL_ONES & ~(1 << 10)) and not m.wrmsr(0x400, 0x1234)
    assert m.wrmsr(0x401, 0) and not m.wrmsr(0x401, 1)  # a guest may only clear MCi_STATUS
    assert m.wrmsr(0x17A, 4) and m.rdmsr(0x17A) == 4
    assert not m.wrmsr(0x400 + 4 * 10, 0)
