"""The ACPI tables at the kernel's entry: edk2's own TDVF (Debian's OVMF.fd 2025.02) installs QEMU's tables from
fw_cfg (vmm/acpi.py) and its TdxDxe adds the MADT's multiprocessor wakeup structure; the Python firmware installs
the same tables the same way (firmware/drivers/acpi.py); both are read back from guest memory as Linux finds them
(boot_params.efi_info -> configuration table -> RSDP -> XSDT) and hold the same MADT structures and FADT fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazyaccept.binaries import BinaryStore, linux_vmlinuz
from lazyaccept.boot import BootReport, BootScenario, Outcome, run_boot
from lazyaccept.commands.tdvf import RELEASES, format_handoff, handoff_dict
from lazyaccept.guest.acpi_check import acpi_differences, check_acpi
from lazyaccept.guest.handoff_check import configuration_tables, side_effect_free_reader
from lazyaccept.spec import guids
from lazyaccept.spec.acpi import (
    HEADER_SIZE,
    MadtType,
    aml_named_packages,
    aml_names,
    checksum8,
    eisa_id_text,
    parse_resources,
)
from lazyaccept.spec.efi import EfiMemoryType as M
from lazyaccept.tdvf_run import TdvfOutcome, TdvfReport, TdvfRun, run_tdvf
from lazyaccept.units import GiB

pytestmark = pytest.mark.real_binary
VCPUS = 2


@pytest.fixture(scope="module")
def real() -> TdvfReport:
    firmware = RELEASES["2025.02"](BinaryStore())
    rep = run_tdvf(TdvfRun(firmware, ram=4 * GiB, vcpus=VCPUS, kernel=Path(linux_vmlinuz()),
                           cmdline="console=ttyS0 nokaslr", max_wall_s=600))
    assert rep.outcome == TdvfOutcome.KERNEL and rep.kernel is not None, (rep.detail, rep.console[-500:])
    return rep


@pytest.fixture(scope="module")
def python() -> BootReport:
    rep = run_boot(BootScenario(ram=4 * GiB, smp=VCPUS, os_ready_bytes=0, log_calls=False))
    assert rep.outcome == Outcome.KERNEL_ENTRY, rep.reason
    return rep


def test_the_real_ovmf_installs_qemus_tables_and_the_wakeup_structure(real: TdvfReport) -> None:
    k = real.kernel
    assert k is not None and k.handoff is not None and k.boot_params is not None
    assert k.check.problems == []
    view = k.handoff.acpi
    assert view is not None, k.handoff.acpi_error
    read = side_effect_free_reader(real.td.tdx)  # type: ignore[union-attr]
    # AcpiTableDxe's RSDP (revision 2, its extended checksum) under the 2.0 GUID, the 1.0 one beside it
    entries = dict(configuration_tables(read, k.boot_params.efi_systab))
    assert entries[guids.ACPI_20_TABLE] == view.rsdp_address == entries[guids.ACPI_10_TABLE] + 20
    raw = read(view.rsdp_address, 36)
    assert raw[15] == 2 and checksum8(raw[:20]) == 0 and checksum8(raw) == 0
    assert view.rsdp["OemId"] == b"BOCHS "  # the FADT's, lent by AcpiTableDxe
    # the XSDT: the FADT first, TdTcg2Dxe's CCEL, QEMU's MCFG and WAET, then the MADT TdxDxe installed again
    assert [t.signature for t in view.tables] == ["FACP", "CCEL", "MCFG", "WAET", "APIC"]
    assert all(t.checksum_ok for t in view.all_tables() if t.signature != "FACS")
    processors = [e for e in view.madt() if e["Type"] == MadtType.LOCAL_APIC]
    assert [(e["ApicId"], e["Flags"]) for e in processors] == [(i, 1) for i in range(VCPUS)]
    wakeup = view.wakeup()
    assert wakeup is not None and wakeup["Length"] == 16 and wakeup["MailBoxVersion"] == 0
    mailbox = wakeup["MailBoxAddress"]
    assert mailbox % 4096 == 0
    assert [d.type for d in k.handoff.memory_map if d.physical_start <= mailbox < d.end] == [M.EfiACPIMemoryNVS]
    assert read(mailbox, 2) == b"\0\0"  # Noop: the APs wait in TdxDxe's relocated loop
    fadt = view.fadt()
    assert fadt is not None and fadt["PM1A_CNT_BLK"] == 0x604 and fadt["SMI_CMD"] == 0  # OVMF's PMBASE 0x600
    assert view.dsdt is not None and aml_named_packages(view.dsdt.data[HEADER_SIZE:]) == {"_S5_": [0, 0, 0, 0]}
    names = aml_names(view.dsdt.data[HEADER_SIZE:])  # the RTC Linux's rtc_cmos binds to, as the VMM built it
    assert eisa_id_text(names["\\_SB_.RTC_._HID"]) == "PNP0B00"
    assert [r.get("min", r.get("irqs")) for r in parse_resources(names["\\_SB_.RTC_._CRS"])] == [0x70, [8]]
    assert view.facs is not None and fadt["FIRMWARE_CTRL"] == view.facs.address
    assert check_acpi(view, k.handoff.memory_map, VCPUS, read) == []
    # in the report
    out = handoff_dict(k)
    assert json.dumps(out) and out["acpi"]["wakeup_mailbox"] == mailbox
    text = "\n".join(format_handoff(k))
    assert "tables: FACP CCEL MCFG WAET APIC" in text and f"wakeup mailbox at {mailbox:#x}" in text


def test_both_firmwares_hand_over_equivalent_tables(real: TdvfReport, python: BootReport) -> None:
    assert real.kernel is not None and real.kernel.handoff is not None
    assert python.handoff_ok, python.handoff_problems
    py, ovmf = python.acpi_view, real.kernel.handoff.acpi
    assert py is not None and ovmf is not None
    # the same MADT (processors, IOAPIC, overrides, NMI, the wakeup structure; mailbox addresses aside), the same
    # FADT fields and \_S5; CCEL is TdTcg2Dxe's, which the Python firmware does not install
    assert acpi_differences(py, ovmf, ignore=("CCEL",)) == []
    assert [e["Type"] for e in py.madt()] == [e["Type"] for e in ovmf.madt()]
    assert python.acpi is not None and python.acpi["fadt"] == {
        k: v for k, v in (ovmf.fadt() or {}).items() if k in python.acpi["fadt"]}
