"""Each boot chain under each on-demand option at the shape where the up-front size decides (64 GiB, 256M up front,
a 1 GiB initrd; examples/systemd-boot-64g-1g-initrd.toml): the run reaches the kernel entry or fails where the
real firmware and loaders would, and the report names the failing allocation, who made it and its size
(advise.failed_allocation reads it from the chain's part of the report). The combinations tested elsewhere are
left out: direct + allocator (test_boot_text), grub + none/allocator (test_grub), systemd-boot + none/allocator
(test_systemd_boot), uki + every option and systemd-boot's UKI + none (guest/test_uki)."""

from __future__ import annotations

import pytest

from lazyaccept.advise import chain_scenario, failed_allocation
from lazyaccept.binaries import BinaryStore
from lazyaccept.boot import BootScenario, Outcome, run_boot
from lazyaccept.units import GiB

pytestmark = pytest.mark.real_binary
OPTIONS = {"none": {}, "allocator": dict(option1=True), "loader": dict(option2=True),
           "accept-service": dict(option3=True)}  # fmt: skip
INITRD = 1 * GiB
# (chain, option) -> None for the kernel entry, else (owner, what the allocation was, its size: the initrd's, or
# "uki" for the whole UKI file). Option 2 acts in QEMU's direct-boot loader and option 3 needs a caller of
# AcceptMemory: no chain but direct boot goes through the first, no loader here calls the second.
STUB_INITRD = ("stub", "linux EFI stub (started by grubx64.efi itself): AllocatePages(MaxAddress", INITRD)
CASES = {
    ("direct", "none"): ("firmware", "QemuKernelLoaderFsDxe: AllocatePool for the initrd blob", INITRD),
    ("direct", "loader"): None,  # QEMU's loader accepts ahead of its copies
    ("direct", "accept-service"): ("firmware", "QemuKernelLoaderFsDxe: AllocatePool for the initrd blob", INITRD),
    ("grub", "loader"): STUB_INITRD,  # GRUB streams the initrd: it is the stub's buffer that fails
    ("grub", "accept-service"): STUB_INITRD,
    ("shim-grub", "none"): STUB_INITRD,
    ("shim-grub", "allocator"): None,
    ("shim-grub", "loader"): STUB_INITRD,
    ("shim-grub", "accept-service"): STUB_INITRD,
    ("systemd-boot", "loader"): ("loader", "systemd-bootx64.efi: AllocatePages(AnyPages", INITRD),
    ("systemd-boot", "accept-service"): ("loader", "systemd-bootx64.efi: AllocatePages(AnyPages", INITRD),
    ("systemd-boot-uki", "allocator"): None,
    ("systemd-boot-uki", "loader"): ("loader", "systemd-bootx64.efi: AllocatePool(type 2", "uki"),
    ("systemd-boot-uki", "accept-service"): ("loader", "systemd-bootx64.efi: AllocatePool(type 2", "uki"),
}


def chain_fields(chain: str) -> dict:
    if chain == "direct":
        return {}
    if chain == "systemd-boot-uki":
        return dict(systemd_boot=True, uki=True)
    return chain_scenario(chain, str(BinaryStore().shim_efi()))


@pytest.mark.parametrize(("chain", "option"), list(CASES), ids=[f"{c}-{o}" for c, o in CASES])
def test_a_chain_reaches_the_kernel_or_names_the_failing_allocation(chain: str, option: str) -> None:
    rep = run_boot(BootScenario(ram=64 * GiB, smp=2, upfront="256M", initrd_size=INITRD, os_ready_bytes=0,
                                timeout_s=300, **chain_fields(chain), **OPTIONS[option]))  # fmt: skip
    expected = CASES[chain, option]
    if expected is None:
        assert rep.outcome == Outcome.KERNEL_ENTRY, (rep.reason, rep.explanation)
        assert rep.handoff_ok, rep.handoff_problems
        return
    owner, what, size = expected
    assert rep.outcome == Outcome.LOADER_FAILED, (rep.reason, rep.console[-1500:])
    failed = failed_allocation(rep)
    assert failed is not None, rep.reason
    assert (failed["owner"], failed["what"][: len(what)]) == (owner, what)
    if size == "uki":  # systemd-boot's buffer of the whole UKI file (AllocatePool: its size, as systemd-boot asks)
        assert rep.uki is not None and failed["size_bytes"] >= rep.uki["file_bytes"] > INITRD
    else:
        assert failed["size_bytes"] == size
