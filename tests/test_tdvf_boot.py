"""`lazyaccept boot --firmware-exec`: QEMU direct boot of Debian's 6.12 stub and an initrd under edk2's own TDVF
(Debian's OVMF.fd 2025.02) from the reset vector, reported as `boot` reports the Python firmware's boot: the stub's
handoff read back from guest memory (boot_params, e820, the unaccepted table, the UEFI memory map it exited with)
and checked against the TDX module, then the Linux model from that handoff."""

from __future__ import annotations

import json

import pytest

from lazyaccept.boot import BootReport, BootScenario, Outcome, run_boot
from lazyaccept.cli import main
from lazyaccept.commands.boot import format_report, report_dict
from lazyaccept.exitcodes import EXIT_BAD_INPUT, EXIT_BOOTED
from lazyaccept.spec.efi import EfiMemoryType
from lazyaccept.units import GiB, MiB

pytestmark = pytest.mark.real_binary
INITRD_BYTES = 3 * MiB + 4321  # not a page multiple: the stub's LoadFile2 sizes it, not a page count


@pytest.fixture(scope="module")
def real_boot(tmp_path_factory: pytest.TempPathFactory) -> BootReport:
    initrd = tmp_path_factory.mktemp("payload") / "initrd.img"
    initrd.write_bytes(bytes(range(256)) * (INITRD_BYTES // 256) + b"\x5a" * (INITRD_BYTES % 256))
    return run_boot(BootScenario(ram=4 * GiB, smp=2, firmware_exec=True, initrd=str(initrd), timeout_s=600))


def test_the_real_firmware_boots_the_stub_and_its_handoff_is_sound(real_boot: BootReport) -> None:
    rep = real_boot
    assert rep.outcome == Outcome.KERNEL_ENTRY and rep.exit_code == EXIT_BOOTED, (rep.reason, rep.console[-800:])
    assert rep.handoff_ok, rep.handoff_problems
    # nokaslr: the stub decompresses the kernel at LOAD_PHYSICAL_ADDR when that slot is free
    assert rep.kernel_entry is not None and rep.kernel_entry % (2 * MiB) == 0 and rep.kernel_entry >= 16 * MiB
    bp = rep.boot_params
    # OVMF 2025.02's QEMU loader appends " initrd=initrd" when fw_cfg holds an initrd; from edk2-stable202508 it
    # prefixes "initrd=initrd " (OvmfPkg/Library/X86QemuLoadImageLib/X86QemuLoadImageLib.c QemuLoadKernelImage)
    assert bp is not None and bp.cmdline == BootScenario.cmdline + " initrd=initrd"
    assert bp.ramdisk_size == INITRD_BYTES
    # upstream TDVF accepts all RAM below 4 GiB; above it (q35: 2 GiB at 4 GiB) stays unaccepted, in the table
    assert rep.unaccepted_table is not None and rep.unaccepted_table["set_bytes"] == 2 * GiB
    assert rep.os_outcome == "ready" and rep.accepted_by_actor["linux-memmap"] > 0
    # both vCPUs took their share of SEC's parallel accept; the guest's conversions back to private are no incident
    assert rep.accepted_by_actor["SecMain vCPU 0"] > 0 and rep.accepted_by_actor["SecMain vCPU 1"] > 0
    assert rep.incidents == []
    names = [ph.name for ph in rep.phases]
    assert names[:5] == [f"edk2 TDVF: {n}" for n in ("reset vector", "SEC", "PEI", "DXE", "BDS")], names


def test_the_memory_map_at_exit_boot_services_is_the_real_firmwares(real_boot: BootReport) -> None:
    by_type: dict[int, int] = {}
    for d in real_boot.memory_map:
        by_type[d.type] = by_type.get(d.type, 0) + d.size
    assert by_type[EfiMemoryType.EfiUnacceptedMemoryType] == 2 * GiB
    unaccepted = [d for d in real_boot.memory_map if d.type == EfiMemoryType.EfiUnacceptedMemoryType]
    assert [(d.physical_start, d.end) for d in unaccepted] == [(4 * GiB, 6 * GiB)]
    bp = real_boot.boot_params
    assert bp is not None
    loader_data = [d for d in real_boot.memory_map if d.type == EfiMemoryType.EfiLoaderData]
    assert any(d.physical_start <= bp.ramdisk_image and bp.ramdisk_image + bp.ramdisk_size <= d.end
               for d in loader_data), "the initrd lies in LoaderData"
    assert by_type[EfiMemoryType.EfiConventionalMemory] > GiB


def test_the_report_reads_as_boots_does(real_boot: BootReport) -> None:
    data = json.loads(json.dumps(report_dict(real_boot)))
    assert data["scenario"]["firmware_exec"] is True and data["outcome"] == "kernel-entry"
    assert data["handoff"]["ok"] and data["handoff"]["memory_map"][0]["type"].startswith("Efi")
    assert data["cpu"]["backend"] == "unicorn" and data["call_counts"]["TDCALL MEM_PAGE_ACCEPT"] >= 1510
    text = format_report(real_boot)
    assert "edk2's own TDVF" in text and "handoff check: PASS" in text and "UEFI memory map at ExitBootServices" in text


def test_python_firmware_choices_are_refused_with_the_real_one(capsys: pytest.CaptureFixture[str]) -> None:
    for flags in (["--option", "1"], ["--upfront", "256M"], ["--cpu", "kvm"], ["--grub"]):
        assert main(["boot", "--firmware-exec", "-smp", "1", *flags]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error:" in err[0], err
