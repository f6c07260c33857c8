"""The Linux 6.12 EFI stub model on a 64 GiB TD, per firmware policy (REFERENCE.md s4 and s6).

The headline scenario: 256 MiB accepted up front and a 1 GiB initrd. Upstream edk2 cannot place the initrd;
option 1 (accept in the allocator) and option 3 (an AcceptMemory boot service the loader calls) can. With so
little accepted up front that no 56 MiB kernel slot exists above 16 MiB, every option fails, and says why.
"""

from __future__ import annotations

import pytest

from lazyaccept.firmware.dxe.accept import OnDemandConfig, Placement
from lazyaccept.firmware.dxe.exit import DxeCore, DxePolicy
from lazyaccept.firmware.dxe.gcd import Resource
from lazyaccept.firmware.dxe.invariants import check_core
from lazyaccept.firmware.loaders.direct_boot import DirectBootConfig, InitrdSource, QemuDirectBoot
from lazyaccept.firmware.loaders.services import KernelSizes
from lazyaccept.firmware.profiles import OVMF_X64_2025_02, OVMF_X64_2026_08
from lazyaccept.guest.model_services import ModelLoaderServices
from lazyaccept.guest.stub_model import StubConfig, StubResult, run_stub
from lazyaccept.spec.efi import EfiMemoryType, EfiStatus
from lazyaccept.spec.pi_hob import ResourceType
from lazyaccept.tdx.module import PageState
from lazyaccept.units import GiB, MiB, format_ns, human_size

from .conftest import make_tdx, td_layout

S = EfiStatus
M = EfiMemoryType
INITRD = 1 * GiB


def td64(policy: DxePolicy, upfront: int = 256 * MiB, profile: str = "kvm-2m") -> DxeCore:
    """64 GiB as QEMU lays it out: 2 GiB below 4 GiB, 62 GiB above; `upfront` accepted by SEC."""
    tdx = make_tdx(2 * GiB, 62 * GiB, upfront, profile)
    return DxeCore(td_layout(2 * GiB, 62 * GiB, upfront), tdx=tdx, policy=policy)


def boot(
    policy: DxePolicy, config: StubConfig, upfront: int = 256 * MiB, profile: str = "kvm-2m"
) -> tuple[DxeCore, StubResult]:
    core = td64(policy, upfront, profile)
    result = run_stub(core, config)
    check_core(core)
    return core, result


def summary(name: str, r: StubResult) -> str:
    return (
        f"{name:<34} {'ok  ' if r.ok else 'FAIL'} accepted {human_size(r.accepted_bytes):>11} "
        f"{dict((k, human_size(v)) for k, v in r.accepted_by_actor.items())} virtual {format_ns(r.clock_ns)}"
    )


def assert_booted(core: DxeCore, r: StubResult) -> None:
    assert r.ok, r.message
    assert core.exited
    assert r.kernel is not None and r.kernel[0] >= 16 * MiB and r.kernel[0] % (2 * MiB) == 0
    tdx = core.tdx
    assert tdx is not None
    assert tdx.is_accepted(r.kernel[0], r.kernel[1] - r.kernel[0])
    if r.initrd:
        assert tdx.is_accepted(r.initrd[0], r.initrd[1] - r.initrd[0])


def test_upstream_cannot_place_a_1g_initrd() -> None:
    core, r = boot(DxePolicy(), StubConfig(initrd_bytes=INITRD))
    assert not r.ok and r.status == S.OUT_OF_RESOURCES
    assert r.message.startswith("Failed to load initrd")
    assert r.kernel is not None  # the kernel fitted; the stub leaks it and exits
    assert r.accepted_bytes == 0 and not core.exited


def test_option1_places_the_initrd() -> None:
    core, r = boot(DxePolicy(option1=True), StubConfig(initrd_bytes=INITRD))
    assert_booted(core, r)
    assert r.accepted_by_actor == {"dxe-option1": INITRD}  # 1 GiB is a multiple of 32 MiB
    assert r.exit_attempts == 1
    table = r.unaccepted_table
    assert table is not None
    assert table.phys_base == 256 * MiB + INITRD  # what stayed unaccepted starts above the initrd
    assert all(s % (2 * MiB) == 0 and e % (2 * MiB) == 0 for s, e in table.set_ranges())
    assert sum(e - s for s, e in table.set_ranges()) == 64 * GiB - 256 * MiB - INITRD
    assert r.stub_accepted_bytes == 0


def test_option3_places_the_initrd_when_the_loader_asks() -> None:
    core, r = boot(DxePolicy(option3=True), StubConfig(initrd_bytes=INITRD, accept_for_initrd=True))
    assert_booted(core, r)
    assert r.accepted_by_actor == {"loader-option3": INITRD}
    assert any(line.startswith("AcceptMemory(") for line in r.log)


def test_option3_is_useless_to_the_real_stub() -> None:
    _, r = boot(DxePolicy(option3=True), StubConfig(initrd_bytes=INITRD))
    assert not r.ok and r.message.startswith("Failed to load initrd")


@pytest.mark.parametrize(
    ("policy", "config"),
    [
        (DxePolicy(), StubConfig(initrd_bytes=INITRD)),
        (DxePolicy(option1=True), StubConfig(initrd_bytes=INITRD)),
        (DxePolicy(option3=True), StubConfig(initrd_bytes=INITRD, accept_for_initrd=True)),
        (DxePolicy(option1=True, option3=True, accept_all_at_exit=True), StubConfig(initrd_bytes=INITRD)),
    ],
    ids=["upstream", "option1", "option3", "all"],
)
def test_no_kernel_slot_fails_under_every_option(policy: DxePolicy, config: StubConfig) -> None:
    core, r = boot(policy, config, upfront=64 * MiB)
    assert not r.ok and r.status == S.OUT_OF_RESOURCES
    assert "no 2M-aligned slot of 56M in EfiConventionalMemory at or above 16M" in r.message
    assert "the up-front accept must leave room for the kernel" in r.message
    assert not any("LoaderCode, kernel" in line for line in r.log)  # AllocatePages was never called
    assert r.accepted_bytes == 0


def test_a_loader_accepting_for_the_kernel_would_rescue_it_only_where_free_bins_are_split() -> None:
    config = StubConfig(initrd_bytes=INITRD, accept_for_initrd=True, accept_for_kernel=True)
    # master c5aa7e7d (d419725b23): the free bins at the top of the first 64 MiB are typed as bins, so the stub's
    # slot, after the loader accepted 56M at 64 MiB, starts above them.
    core, r = boot(DxePolicy(option3=True, edk2_profile=OVMF_X64_2026_08), config, upfront=64 * MiB)
    assert_booted(core, r)
    assert r.kernel is not None and r.kernel[0] >= 64 * MiB
    # edk2-stable202502: the free bins merge with the free memory on both sides into one EfiConventionalMemory
    # descriptor, so efi_random_alloc's lowest slot (nokaslr) starts inside them, where AllocateAddress refuses
    # another type (Page.c CoreInternalAllocatePages' bin check): the stub gives up with EFI_NOT_FOUND.
    core, r = boot(DxePolicy(option3=True, edk2_profile=OVMF_X64_2025_02), config, upfront=64 * MiB)
    bins = core.pages._special_bins()
    assert not r.ok and r.status == S.NOT_FOUND
    assert "AllocatePages(AllocateAddress 0x3e00000, 56M) returned EFI_NOT_FOUND" in r.message
    assert bins[0][0] < 0x3E00000 < bins[-1][1] == 64 * MiB
    assert any(line.startswith("AcceptMemory(0x4000000, 56M)") for line in r.log)


def test_accept_all_at_exit_without_opt_in() -> None:
    core, r = boot(DxePolicy(accept_all_at_exit=True), StubConfig())
    assert_booted(core, r)
    assert r.exit_attempts == 2  # the accept-all changed the map key under the first ExitBootServices
    assert r.accepted_by_actor == {"exit-accept-all": 64 * GiB - 256 * MiB}
    assert all(d.type != M.EfiUnacceptedMemoryType for d in r.memory_map)
    assert r.unaccepted_table is not None and r.unaccepted_table.set_ranges() == []  # allocated before, now empty
    assert core.tdx is not None and core.tdx.bytes_in_state(PageState.ACCEPTED) == 64 * GiB


def test_accept_all_at_exit_with_opt_in() -> None:
    policy = DxePolicy(accept_all_at_exit=True, memory_acceptance_protocol=True)
    core, r = boot(policy, StubConfig())
    assert_booted(core, r)
    assert r.exit_attempts == 1 and r.accepted_bytes == 0
    assert any("AllowUnacceptedMemory() = EFI_SUCCESS" in line for line in r.log)


def direct_boot(
    policy: DxePolicy, config: StubConfig, *, option2: bool = False
) -> tuple[DxeCore, str, StubResult | None]:
    """QEMU direct boot of a 1 GiB initrd through the same loader as real runs, on the model's services: the
    core, the loader step that failed ("" if none), the stub's result (None if it never started)."""
    core = td64(policy)
    services = ModelLoaderServices(core, config)
    kernel = KernelSizes(11_735_552, 0x37DE000, 0xB97000)  # Debian's 6.12.117 cloud vmlinuz
    loaded = QemuDirectBoot(services, DirectBootConfig(kernel, initrd=InitrdSource(INITRD), option2=option2)).run()
    check_core(core)
    return core, loaded.failed_step, services.stub


def test_direct_boot_firmware_copy_needs_the_memory_twice() -> None:
    _, failed, r = direct_boot(DxePolicy(), StubConfig())
    assert failed == "initrd blob" and r is None  # QemuKernelLoaderFsDxe's copy fails: the stub never starts
    core, _, r = direct_boot(DxePolicy(option1=True), StubConfig())
    assert r is not None
    assert_booted(core, r)
    assert r.accepted_by_actor["dxe-option1"] >= INITRD  # the stub's buffer; the firmware's copy came before
    assert core.acceptor.accepted_bytes("dxe-option1") >= 2 * INITRD
    # Option 3 helps the stub but not the firmware's own copy...
    _, failed, r = direct_boot(DxePolicy(option3=True), StubConfig(accept_for_initrd=True))
    assert failed == "initrd blob" and r is None
    # ...unless the loader uses option 2, whose accept-ahead on LoadFile2's probe then serves the stub as well.
    core, _, r = direct_boot(DxePolicy(option3=True), StubConfig(accept_for_initrd=True), option2=True)
    assert r is not None
    assert_booted(core, r)
    assert set(r.accepted_by_actor) == {"loader-option2"}


def test_kaslr_seed_picks_the_slot() -> None:
    _, low = boot(DxePolicy(option1=True), StubConfig(initrd_bytes=INITRD))
    _, high = boot(DxePolicy(option1=True), StubConfig(initrd_bytes=INITRD, kaslr_seed=0xFFFFFFFF))
    assert low.kernel is not None and high.kernel is not None
    assert low.kernel[0] == 16 * MiB  # seed 0: the lowest slot at LOAD_PHYSICAL_ADDR
    assert high.kernel[0] > low.kernel[0] and high.kernel[1] <= 256 * MiB


def test_stub_accepts_unaligned_heads_itself() -> None:
    core, r = boot(DxePolicy(), StubConfig(), upfront=256 * MiB + 4096)
    assert_booted(core, r)
    assert r.stub_accepted_bytes == 2 * MiB - 4096  # process_unaccepted_memory: the head below 2 MiB
    table = r.unaccepted_table
    assert table is not None and table.set_ranges()[0][0] == 258 * MiB
    assert table.phys_base == 256 * MiB and table.bitmap_bytes == -(-(66 * GiB - 256 * MiB) // (16 * MiB))


def test_stub_hits_the_f80a406aa9_overflow() -> None:
    """Before edk2 f80a406aa9 the probe ignored type-15 entries: more of them than the stub's 32 slack
    descriptors and GetMemoryMap writes past the stub's buffer."""
    resources = [Resource(0, 512 * MiB)]
    base = 4 * GiB
    for _ in range(48):
        resources += [
            Resource(base, 64 * MiB, ResourceType.MEMORY_UNACCEPTED),
            Resource(base + 64 * MiB, 2 * MiB, ResourceType.MEMORY_RESERVED),
        ]
        base += 128 * MiB
    buggy = DxeCore(resources, policy=DxePolicy(edk2_profile=OVMF_X64_2025_02))
    r = run_stub(buggy, StubConfig())
    assert not r.ok and "f80a406aa9" in r.message
    fixed = DxeCore(resources, policy=DxePolicy(edk2_profile=OVMF_X64_2026_08))
    assert run_stub(fixed, StubConfig()).ok


def test_report_accepted_bytes_and_virtual_time(capsys: pytest.CaptureFixture[str]) -> None:
    one_g = StubConfig(initrd_bytes=INITRD)
    rows = [
        ("upstream, 1G initrd", DxePolicy(), one_g, "kvm-2m"),
        ("option1, 1G initrd", DxePolicy(option1=True), one_g, "kvm-2m"),
        ("option1, 1G initrd, 4K host", DxePolicy(option1=True), one_g, "kvm-4k"),
        ("option1 first-fit, 1G initrd", DxePolicy(option1=True, on_demand=_first_fit()), one_g, "kvm-2m"),
        ("option3 loader, 1G initrd", DxePolicy(option3=True), _option3_loader(), "kvm-2m"),
        ("accept-all at exit, no opt-in", DxePolicy(accept_all_at_exit=True), StubConfig(), "kvm-2m"),
        ("accept-all at exit, 4K host", DxePolicy(accept_all_at_exit=True), StubConfig(), "kvm-4k"),
        (
            "accept-all at exit, 6.12 opts in",
            DxePolicy(accept_all_at_exit=True, memory_acceptance_protocol=True),
            StubConfig(),
            "kvm-2m",
        ),
    ]
    lines = []
    for name, policy, config, profile in rows:
        _, r = boot(policy, config, profile=profile)
        lines.append(summary(name, r))
        assert r.ok == (name != "upstream, 1G initrd")
    with capsys.disabled():
        print("\n64 GiB TD, 256 MiB accepted up front (DXE + stub, boot vCPU virtual time):")
        for line in lines:
            print("  " + line)


def _first_fit() -> OnDemandConfig:
    return OnDemandConfig(placement=Placement.FIRST_FIT)


def _option3_loader() -> StubConfig:
    return StubConfig(initrd_bytes=INITRD, accept_for_initrd=True)
