"""QEMU's ACPI builder for a q35 TD and its linker/loader script (vmm/acpi.py), run as edk2's QemuFwCfgAcpi.c runs
it; the AML and table readers of spec/acpi.py; the fw_cfg files on the platform, rebuilt at first selection."""

from __future__ import annotations

import pytest

from lazyaccept.errors import ConfigError, InputError
from lazyaccept.spec.acpi import (
    FADT,
    HEADER_SIZE,
    LOADER_ENTRY_SIZE,
    RSDP,
    LoaderCommand,
    MadtType,
    aml_device,
    aml_int,
    aml_named_packages,
    aml_names,
    aml_pkg_length,
    aml_resource_template,
    aml_scope,
    checksum8,
    eisa_id,
    eisa_id_text,
    madt_entries,
    pack_loader_entry,
    parse_resources,
    res_io,
    res_irq_no_flags,
    unpack_fadt,
    unpack_loader,
)
from lazyaccept.units import GiB, MiB
from lazyaccept.vmm.acpi import (
    ACPI_BUILD_TABLE_SIZE,
    LOADER_FILE,
    RSDP_FILE,
    TABLES_FILE,
    AcpiMachine,
    build_acpi,
    dsdt_aml,
    run_loader,
)
from lazyaccept.vmm.devices.fw_cfg import FwCfgKey
from lazyaccept.vmm.platform import Q35Platform

ECAM = (0xE0000000, 256 * MiB)
TABLES_AT, RSDP_AT = 0x7F000000, 0x7E000000


def place(build, addresses=None):
    addresses = addresses or {TABLES_FILE: TABLES_AT, RSDP_FILE: RSDP_AT}
    asked = []

    def allocate(name: str, size: int, below_4g: bool) -> int:
        asked.append((name, size, below_4g))
        return addresses[name]

    return run_loader(build.loader, build.files(), allocate), asked


def test_tables_as_qemu_lays_them_out():
    b = build_acpi(AcpiMachine(vcpus=4, pm_base=0x600, mcfg=ECAM))
    assert list(b.offsets) == ["FACS", "DSDT", "FACP", "APIC", "MCFG", "WAET", "RSDT"]
    assert b.offsets["FACS"] == (0, 64)  # first: 64-byte aligned in a 64-byte aligned blob
    assert len(b.tables) == ACPI_BUILD_TABLE_SIZE and len(b.rsdp) == 20 and len(b.loader) == 4096
    assert b.offsets["FACP"][1] == 244  # revision 3 ends after X_GPE1_BLK
    for sig in ("DSDT", "FACP", "APIC", "MCFG", "WAET", "RSDT"):
        table = b.table(sig)
        assert table[:4] == sig.encode() and int.from_bytes(table[4:8], "little") == len(table)
        assert table[9] == 0  # checksum left to the loader, as QEMU leaves it
    assert b.rsdp[:8] == b"RSD PTR " and b.rsdp[15] == 0 and b.rsdp[8] == 0  # revision 0, RSDT only


def test_loader_places_patches_and_checksums():
    b = build_acpi(AcpiMachine(vcpus=2, pm_base=0x600, mcfg=ECAM))
    run, asked = place(b)
    # etc/acpi/tables is the pointee of 4-byte pointers: edk2 keeps it below 4 GiB; the RSDP is nobody's pointee
    assert asked == [(TABLES_FILE, ACPI_BUILD_TABLE_SIZE, True), (RSDP_FILE, 20, False)]
    installed = [(hex(a), t[:4].decode()) for a, t in run.tables]
    # second pass order: FADT's FACS, DSDT (X_DSDT is the same address), then the RSDT's entries; RSDT itself skipped
    assert [s for _, s in installed] == ["FACS", "DSDT", "FACP", "APIC", "MCFG", "WAET"]
    for _address, table in run.tables:
        if table[:4] != b"FACS":
            assert checksum8(table) == 0
    fadt = unpack_fadt(dict((t[:4], t) for _, t in run.tables)[b"FACP"])
    assert fadt["FIRMWARE_CTRL"] == TABLES_AT and fadt["DSDT"] == fadt["X_DSDT"] == TABLES_AT + 64
    rsdp = run.blobs[RSDP_FILE].data
    assert checksum8(rsdp[:20]) == 0
    rsdt = TABLES_AT + b.offsets["RSDT"][0]
    assert RSDP.unpack(bytes(rsdp).ljust(RSDP.size, b"\0"))["RsdtAddress"] == rsdt
    rsdt_bytes = run.blobs[TABLES_FILE].data[b.offsets["RSDT"][0] : b.offsets["RSDT"][0] + b.offsets["RSDT"][1]]
    assert checksum8(rsdt_bytes) == 0
    entries = [int.from_bytes(rsdt_bytes[i : i + 4], "little") for i in range(HEADER_SIZE, len(rsdt_bytes), 4)]
    assert entries == [TABLES_AT + b.offsets[s][0] for s in ("FACP", "APIC", "MCFG", "WAET")]
    assert all(blob.only_tables for blob in run.blobs.values())  # both freed after the install, as edk2 does


def test_loader_script_commands():
    b = build_acpi(AcpiMachine(vcpus=1, pm_base=0x600, mcfg=None))
    commands = [c for c, _ in unpack_loader(b.loader) if c]
    assert commands[0] == LoaderCommand.ALLOCATE and commands.count(LoaderCommand.ALLOCATE) == 2
    # DSDT, FADT, MADT, WAET, RSDT and the RSDP each get one checksum; no MCFG without MMCONFIG
    assert commands.count(LoaderCommand.ADD_CHECKSUM) == 6
    # FADT: FIRMWARE_CTRL, DSDT, X_DSDT; RSDT: 3 entries; RSDP: the RSDT
    assert commands.count(LoaderCommand.ADD_POINTER) == 7
    assert "MCFG" not in b.offsets


def test_fadt_is_ich9_fixed_hardware_at_pmbase():
    b = build_acpi(AcpiMachine(vcpus=16, pm_base=0xB000, mcfg=ECAM))
    f = unpack_fadt(b.table("FACP"))
    assert (f["PM1A_EVT_BLK"], f["PM1A_CNT_BLK"], f["PM_TMR_BLK"], f["GPE0_BLK"]) == (0xB000, 0xB004, 0xB008, 0xB020)
    assert (f["PM1_EVT_LEN"], f["PM1_CNT_LEN"], f["PM_TMR_LEN"], f["GPE0_BLK_LEN"]) == (4, 2, 4, 16)
    assert f["X_PM1A_CNT_BLK"] == {"AddressSpaceId": 1, "RegisterBitWidth": 16, "RegisterBitOffset": 0,
                                   "AccessSize": 0, "Address": 0xB004}
    assert not f["Flags"] & (1 << 20)  # not hardware-reduced
    assert f["Flags"] & (1 << 18)  # more than 8 vCPUs: cluster APIC model
    assert f["SMI_CMD"] == 0 and f["SCI_INT"] == 9 and f["RESET_REG"]["Address"] == 0xCF9 and f["RESET_VALUE"] == 15
    assert "SLEEP_CONTROL_REG" not in f  # a revision-3 FADT has none
    assert FADT.offset_of("X_GPE1_BLK") + 12 == 244


@pytest.mark.parametrize("vcpus", [1, 4, 254, 255, 300])
def test_madt_one_processor_structure_per_vcpu(vcpus):
    madt = build_acpi(AcpiMachine(vcpus=vcpus, pm_base=0x600)).table("APIC")
    assert madt[8] == 3 and int.from_bytes(madt[40:44], "little") == 0  # revision 3; PCAT_COMPAT clear: no PIC
    assert int.from_bytes(madt[36:40], "little") == 0xFEE00000
    entries = madt_entries(madt)
    lapic = [e for e in entries if e["Type"] == MadtType.LOCAL_APIC]
    x2apic = [e for e in entries if e["Type"] == MadtType.LOCAL_X2APIC]
    assert len(lapic) + len(x2apic) == vcpus
    assert len(lapic) == min(vcpus, 255) and all(e["X2ApicId"] >= 255 for e in x2apic)
    assert sorted(e.get("ApicId", e.get("X2ApicId")) for e in lapic + x2apic) == list(range(vcpus))
    assert all(e["Flags"] == 1 for e in lapic + x2apic)
    io = [e for e in entries if e["Type"] == MadtType.IO_APIC]
    assert [(e["IoApicAddress"], e["GlobalSystemInterruptBase"]) for e in io] == [(0xFEC00000, 0)]
    overrides = [(e["Source"], e["GlobalSystemInterrupt"], e["Flags"]) for e in entries if e["Type"] == 2]
    assert overrides == [(0, 2, 0), (5, 5, 0xD), (9, 9, 0xD), (10, 10, 0xD), (11, 11, 0xD)]
    nmi = MadtType.LOCAL_X2APIC_NMI if vcpus > 255 else MadtType.LOCAL_APIC_NMI
    assert [e["Type"] for e in entries][-1] == nmi
    assert not any(e["Type"] == MadtType.MULTIPROCESSOR_WAKEUP for e in entries)  # TdxDxe adds it, not QEMU


def test_dsdt_s5_parses():
    b = build_acpi(AcpiMachine(vcpus=1, pm_base=0x600))
    dsdt = b.table("DSDT")
    assert dsdt[HEADER_SIZE:] == dsdt_aml()
    assert dsdt_aml().startswith(bytes.fromhex("08") + b"_S5_" + bytes.fromhex("12060400000000"))
    assert aml_named_packages(dsdt[HEADER_SIZE:]) == {"_S5_": [0, 0, 0, 0]}


def test_dsdt_rtc_device_as_qemu_rtc_build_aml():
    """Device (RTC) {_HID PNP0B00, _CRS {IO (Decode16, 0x70, 0x70, 1, 8), IRQNoFlags () {8}}} in \\_SB, byte by
    byte as QEMU's aml-build writes it, and read back by the reader acpi_check uses."""
    dsdt = build_acpi(AcpiMachine(vcpus=1, pm_base=0x600)).table("DSDT")
    body = dsdt[HEADER_SIZE:]
    crs = bytes.fromhex("47 01 7000 7000 01 08  22 0001  79 00")
    device = (bytes.fromhex("5b82 25") + b"RTC_" + bytes.fromhex("08") + b"_HID" + bytes.fromhex("0c 41d00b00")
              + bytes.fromhex("08") + b"_CRS" + bytes.fromhex("11 10 0a 0d") + crs)
    assert body.endswith(bytes.fromhex("10 2c") + b"_SB_" + device)
    names = aml_names(body)
    assert names == {"\\_S5_": [0, 0, 0, 0], "\\_SB_.RTC_._HID": eisa_id("PNP0B00"), "\\_SB_.RTC_._CRS": crs}
    assert eisa_id_text(names["\\_SB_.RTC_._HID"]) == "PNP0B00" and eisa_id("PNP0A08") == 0x080AD041
    assert parse_resources(crs) == [
        {"type": "io", "decode16": True, "min": 0x70, "max": 0x70, "align": 1, "length": 8},
        {"type": "irq", "irqs": [8], "flags": None},
    ]
    assert aml_named_packages(body) == {"_S5_": [0, 0, 0, 0]}  # the \\_S5 lookup steps over the scope


def test_aml_names_and_resources_reject_what_they_do_not_model():
    with pytest.raises(InputError, match="opcode 0x70"):
        aml_names(aml_scope("_SB", bytes([0x70, 0, 0])))
    with pytest.raises(InputError, match="runs past"):
        aml_names(aml_scope("_SB", b"")[:-1])
    with pytest.raises(InputError, match="End Tag"):
        parse_resources(res_io(0x70, 8))
    with pytest.raises(InputError, match="large resource"):
        parse_resources(bytes([0x86, 9, 0]))
    assert aml_int(0) == b"\0" and aml_int(0x1234) == b"\x0b\x34\x12"
    assert aml_resource_template(b"") == bytes.fromhex("11 05 0a 02 79 00")  # PkgLength counts itself
    assert aml_device("PCI0", b"") == bytes.fromhex("5b82 05") + b"PCI0"
    assert res_irq_no_flags(4) == bytes.fromhex("22 1000")


def test_aml_reader():
    assert aml_pkg_length(5) == b"\x06"
    assert aml_pkg_length(62) == b"\x3f"
    two = aml_pkg_length(100)
    assert len(two) == 2 and (two[0] >> 6) == 1
    # Name(\_S3_, Package(2){One, 0x05}) after a Scope that is stepped over
    scope = bytes([0x10]) + aml_pkg_length(4) + b"_SB_"  # Scope (_SB) {}
    s3 = bytes([0x08, 0x5C]) + b"_S3_" + bytes([0x12]) + aml_pkg_length(4) + bytes([2, 0x01, 0x0A, 0x05])
    assert aml_named_packages(scope + s3) == {"_S3_": [1, 5]}
    with pytest.raises(InputError, match="opcode 0x70"):
        aml_named_packages(bytes([0x70, 0, 0]))
    with pytest.raises(InputError, match="runs past"):
        aml_named_packages(bytes([0x08]) + b"_S5_" + bytes([0x12, 0x20, 4, 0]))


def test_bad_scripts_are_one_clear_error():
    b = build_acpi(AcpiMachine(vcpus=1, pm_base=0x600))
    files = b.files()

    def run(script: bytes, files=files):
        return run_loader(script, files, lambda name, size, low: TABLES_AT)

    with pytest.raises(InputError, match="whole number of 128-byte"):
        run(b.loader[:100])
    unknown = pack_loader_entry(LoaderCommand.ALLOCATE, File=b"etc/nothing", Alignment=16, Zone=1)
    with pytest.raises(InputError, match="does not exist"):
        run(unknown)
    pointer = pack_loader_entry(LoaderCommand.ADD_POINTER, PointerFile=TABLES_FILE.encode(),
                                PointeeFile=TABLES_FILE.encode(), PointerOffset=0, PointerSize=4)
    with pytest.raises(InputError, match="no ALLOCATE placed"):
        run(pointer)
    big = pack_loader_entry(LoaderCommand.ALLOCATE, File=TABLES_FILE.encode(), Alignment=0x2000, Zone=1)
    with pytest.raises(InputError, match="alignment"):
        run(big)
    unterminated = bytearray(pack_loader_entry(LoaderCommand.ALLOCATE, File=b"x" * 56, Alignment=16, Zone=1))
    with pytest.raises(InputError, match="NUL-terminated"):
        run(bytes(unterminated))
    alloc = pack_loader_entry(LoaderCommand.ALLOCATE, File=TABLES_FILE.encode(), Alignment=64, Zone=1)
    beyond = pack_loader_entry(LoaderCommand.ADD_POINTER, PointerFile=TABLES_FILE.encode(),
                               PointeeFile=TABLES_FILE.encode(), PointerOffset=ACPI_BUILD_TABLE_SIZE - 2,
                               PointerSize=4)
    with pytest.raises(InputError, match="does not fit"):
        run(alloc + beyond)
    assert len(alloc) == LOADER_ENTRY_SIZE
    with pytest.raises(InputError, match="does not fit 4 bytes"):
        run_loader(alloc + pack_loader_entry(LoaderCommand.ADD_POINTER, PointerFile=TABLES_FILE.encode(),
                                             PointeeFile=TABLES_FILE.encode(), PointerSize=4,
                                             PointerOffset=b.offsets["FACP"][0] + FADT.offset_of("FIRMWARE_CTRL")),
                   files, lambda name, size, low: 0x1_0000_0000)


def test_builder_rejects_impossible_machines():
    with pytest.raises(ConfigError, match="vCPUs"):
        build_acpi(AcpiMachine(vcpus=0, pm_base=0x600))
    with pytest.raises(ConfigError, match="PMBASE"):
        build_acpi(AcpiMachine(vcpus=1, pm_base=0x601))
    with pytest.raises(ConfigError, match="MMCONFIG"):
        build_acpi(AcpiMachine(vcpus=1, pm_base=0x600, mcfg=(0xE0000000, 1000)))


def _read_file(platform: Q35Platform, name: str) -> bytes:
    fw = platform.fw_cfg
    key = fw.file_keys[name]
    platform.io_write(0x510, 2, key)
    return bytes(platform.io_read(0x511, 1) for _ in range(len(fw.files[name].data)))


def test_platform_builds_at_first_selection_with_what_the_firmware_programmed():
    p = Q35Platform(2 * GiB, 2, lambda: 0)
    assert {TABLES_FILE, RSDP_FILE, LOADER_FILE} <= set(p.fw_cfg.files)
    sizes = {n: len(p.fw_cfg.files[n].data) for n in (TABLES_FILE, RSDP_FILE, LOADER_FILE)}
    # the firmware programs PMBASE 0x600 with ACPI_EN, and PCIEXBAR at 0xE0000000 (256 MiB, enabled)
    p.pci.config_write(0, 0x1F, 0, 0x40, 4, 0x601)
    p.pci.config_write(0, 0x1F, 0, 0x44, 1, 0x80)
    p.pci.config_write(0, 0, 0, 0x60, 4, 0xE0000001)
    loader = _read_file(p, LOADER_FILE)
    tables = _read_file(p, TABLES_FILE)
    assert {n: len(p.fw_cfg.files[n].data) for n in sizes} == sizes  # the directory's sizes stay
    b = build_acpi(AcpiMachine(vcpus=2, pm_base=0x600, mcfg=ECAM))
    assert tables == b.tables and loader == b.loader
    p.pci.config_write(0, 0x1F, 0, 0x40, 4, 0xB001)  # a later change does not rebuild (QEMU patches once)
    assert _read_file(p, TABLES_FILE) == b.tables
    assert p.fw_cfg.file_keys[LOADER_FILE] >= FwCfgKey.FILE_FIRST
