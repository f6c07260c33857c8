"""The stub model's allocations equal the real Linux 6.12 stub's on the same TD: every AllocatePages,
AllocatePool and FreePool it makes, in order, with memory type and size, read from the real run's service-call
log (BootReport.calls) of Debian's stub on lazyaccept's firmware.

Memory-map buffers are sized from the firmware's map (efi_get_memory_map: the probe + 32 spare descriptors), and
the firmware the real stub runs on (EfiMachine) has a few descriptors more than the model's bare DxeCore (its
images and tables, the ACPI tables): for those the test checks the shape and bounds the difference instead of
the size."""

from __future__ import annotations

import re

import pytest

from lazyaccept.binaries import linux_vmlinuz
from lazyaccept.boot import BootScenario, run_boot
from lazyaccept.firmware.loaders.direct_boot import DirectBootConfig, InitrdSource, QemuDirectBoot
from lazyaccept.firmware.platform import start_dxe
from lazyaccept.firmware.sec import parse_policy, run_sec
from lazyaccept.guest.kernel_image import kernel_sizes
from lazyaccept.guest.model_services import ModelLoaderServices
from lazyaccept.guest.stub_model import StubResult
from lazyaccept.units import GiB, MiB
from lazyaccept.vmm.td import TdConfig, build_td

CMDLINE = BootScenario().cmdline
DESCRIPTOR_SIZE = 48  # edk2's EFI_MEMORY_DESCRIPTOR stride
# descriptors the two firmwares' maps may differ by: 4 measured on 4 GiB, below-4g, before the firmware installed
# QEMU's ACPI tables; their pages (RSDPs, RSDT/XSDT, each table, FACS, TdxDxe's mailbox, the freed MADT and blobs)
# add 6 more, which the model's bare DxeCore does not allocate
MAP_SLACK = 12

_PAGES = re.compile(r"type (\d+), (0x[0-9a-f]+) pages")
_POOL = re.compile(r"type (\d+), (0x[0-9a-f]+) bytes")


def real_allocations(calls: list[dict], stub: str) -> list[tuple[str, int | None, int]]:
    """The stub's own memory-service calls from a real run's log, as the model records them."""
    out: list[tuple[str, int | None, int]] = []
    for c in calls:
        if c.get("image") != stub:
            continue
        if c["name"] == "AllocatePages":
            m = _PAGES.search(c["detail"])
            assert m, c
            out.append(("AllocatePages", int(m[1]), int(m[2], 16)))
        elif c["name"] == "AllocatePool":
            m = _POOL.search(c["detail"])
            assert m, c
            out.append(("AllocatePool", int(m[1]), int(m[2], 16)))
        elif c["name"] == "FreePool":
            out.append(("FreePool(NULL)" if int(c["detail"], 16) == 0 else "FreePool", None, 0))
    return out


def model_run(ram: int, upfront: str, initrd: int) -> StubResult:
    """QEMU direct boot on the model's boot services with the real run's command line, then the stub model."""
    td = build_td(TdConfig(ram, 4))
    services = ModelLoaderServices(start_dxe(td, run_sec(td, parse_policy(upfront))))
    kernel = kernel_sizes(linux_vmlinuz().read_bytes())
    source = InitrdSource(initrd) if initrd else None
    QemuDirectBoot(services, DirectBootConfig(kernel, initrd=source, cmdline=CMDLINE)).run()
    assert services.stub is not None
    return services.stub


@pytest.mark.real_binary
@pytest.mark.parametrize(("ram", "upfront", "initrd"), [(4 * GiB, "below-4g", 16 * MiB), (8 * GiB, "all", 0)])
def test_model_allocates_what_the_real_stub_allocates(ram: int, upfront: str, initrd: int) -> None:
    model = model_run(ram, upfront, initrd)
    real = run_boot(BootScenario(ram=ram, smp=4, upfront=upfront, initrd_size=initrd or None, cmdline=CMDLINE))
    assert model.ok and real.reached_kernel, (model.message, real.reason)
    got = real_allocations(real.calls, linux_vmlinuz().name)
    assert len(got) > 10 and len(model.memory_map_pools) == 3  # kernel slot, allocate_e820, exit_boot
    want = list(model.allocations)
    for i in model.memory_map_pools:
        (service, kind, size), (_, _, real_size) = want[i], got[i]
        assert (real_size - size) % DESCRIPTOR_SIZE == 0 and abs(real_size - size) <= MAP_SLACK * DESCRIPTOR_SIZE
        want[i] = (service, kind, real_size)
    assert want == got


@pytest.mark.real_binary
def test_without_an_initrd_or_unaccepted_memory_nothing_is_allocated_for_them() -> None:
    model = model_run(8 * GiB, "all", 0)
    assert "LINUX_EFI_INITRD_MEDIA" not in model.tables and "LINUX_EFI_UNACCEPTED_MEM_TABLE" not in model.tables
    assert set(model.tables) == {"LINUX_EFI_RANDOM_SEED", "LINUX_EFI_BOOT_MEMMAP"}
