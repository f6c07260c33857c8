"""The CPUID leaves the VMM answers a TD: the hypervisor leaves, and the topology each vCPU's APIC ID is read from."""

from __future__ import annotations

from lazyaccept.units import GiB
from lazyaccept.vmm.devices.cpuid import KVM_SIGNATURE, cpuid, topology
from lazyaccept.vmm.platform import Q35Platform


def test_hypervisor_leaves_and_unknown_leaves() -> None:
    assert cpuid(0x40000000, 0) == ((0x40000001, *KVM_SIGNATURE), True)
    assert cpuid(0x12345, 0) == ((0, 0, 0, 0), False)


def test_topology_names_each_vcpu() -> None:
    assert topology(0, 1, 2) == (0, 1, 0x100, 1)  # SMT level: one thread per core
    assert topology(1, 1, 2) == (1, 2, 0x201, 1)  # core level: two cores, one APIC ID bit
    assert topology(1, 0, 5) == (3, 5, 0x201, 0)
    assert topology(2, 3, 4) == (0, 0, 2, 3)  # no further level


def test_the_vmm_answers_leaf_0xb_with_the_callers_apic_id() -> None:
    platform = Q35Platform(1 * GiB, 2, lambda: 0)
    status, out = platform.tdvmcall(1, 10, 0xB, 0, 0, 0)  # EXIT_REASON_CPUID
    assert status == 0 and out == {"r12": 0, "r13": 1, "r14": 0x100, "r15": 1}
