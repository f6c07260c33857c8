"""The ACPI tables a firmware handed over, read from guest memory as Linux finds them (the EFI configuration table
under the ACPI 2.0 GUID -> RSDP -> XSDT -> each table; the FADT's DSDT and FACS), and checked for what Linux in a
TD needs from them: sound checksums and lengths, a DSDT with \\_S5 and a FADT with a PM1a control block to power
off through, an MADT with one enabled processor structure per vCPU and the multiprocessor wakeup structure whose
mailbox the OS may use (Linux 6.12 arch/x86/kernel/acpi/madt_wakeup.c acpi_parse_mp_wake: 16 bytes or more, the
mailbox's physical address), and tables in memory the OS keeps (ACPI reclaim or NVS in the UEFI memory map; the
FACS and the mailbox in NVS, as edk2's AcpiTableDxe and TdxDxe allocate them).

The same code reads the real OVMF's tables and the Python firmware's, so both are judged alike, and
`acpi_differences` says where two handoffs' tables differ in what the OS acts on.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from lazyaccept.errors import InputError
from lazyaccept.spec import guids
from lazyaccept.spec.acpi import (
    FACS,
    FADT,
    HEADER_SIZE,
    MP_WAKEUP_MAILBOX,
    MP_WAKEUP_MAILBOX_SIZE,
    RSDP,
    RSDP_SIGNATURE,
    RSDP_V1_SIZE,
    FadtFlag,
    MadtType,
    Table,
    aml_named_packages,
    checksum8,
    madt_entries,
    table_length,
    unpack_fadt,
)
from lazyaccept.spec.efi import EfiMemoryType as M
from lazyaccept.spec.efi import MemoryDescriptor, memory_type_name

Reader = Callable[[int, int], bytes]
MAX_TABLE_BYTES = 1 << 20  # a TD's DSDT is a few KiB; QEMU keeps all of them within 128 KiB
MAX_XSDT_ENTRIES = 256
TABLE_MEMORY = (M.EfiACPIReclaimMemory, M.EfiACPIMemoryNVS)
# FADT fields the OS acts on; addresses the firmware patched in (FACS, DSDT) are left out of comparisons.
FADT_COMPARED = ("INT_MODEL", "SCI_INT", "SMI_CMD", "ACPI_ENABLE", "ACPI_DISABLE", "PM1A_EVT_BLK", "PM1A_CNT_BLK",
                 "PM_TMR_BLK", "GPE0_BLK", "PM1_EVT_LEN", "PM1_CNT_LEN", "PM_TMR_LEN", "GPE0_BLK_LEN", "CENTURY",
                 "IAPC_BOOT_ARCH", "Flags", "RESET_REG", "RESET_VALUE", "X_PM1A_EVT_BLK", "X_PM1A_CNT_BLK",
                 "X_PM_TMR_BLK", "X_GPE0_BLK", "SLEEP_CONTROL_REG", "SLEEP_STATUS_REG")


@dataclass
class AcpiView:
    """What the firmware installed, as read back."""

    rsdp_address: int
    rsdp: dict
    xsdt: Table
    tables: list[Table]  # the XSDT's entries, in order
    dsdt: Table | None = None
    facs: Table | None = None
    rsdp1_address: int | None = None  # under the ACPI 1.0 GUID
    rsdp1: dict | None = None
    problems: list[str] = field(default_factory=list)

    def find(self, signature: str) -> Table | None:
        return next((t for t in self.tables if t.signature == signature), None)

    def fadt(self) -> dict | None:
        t = self.find("FACP")
        return unpack_fadt(t.data) if t is not None else None

    def madt(self) -> list[dict]:
        t = self.find("APIC")
        return madt_entries(t.data) if t is not None else []

    def wakeup(self) -> dict | None:
        return next((e for e in self.madt() if e["Type"] == MadtType.MULTIPROCESSOR_WAKEUP), None)

    def all_tables(self) -> list[Table]:
        return [self.xsdt, *self.tables, *(t for t in (self.dsdt, self.facs) if t is not None)]


def _table(read: Reader, address: int, where: str) -> Table:
    if not address:
        raise InputError(f"{where} is a null pointer", field=where)
    length = table_length(read(address, HEADER_SIZE), where=f"{where} at {address:#x}")
    if length > MAX_TABLE_BYTES:
        raise InputError(f"{where} at {address:#x}: length {length} is implausible", field="Length")
    return Table(address, read(address, length))


def _rsdp(read: Reader, address: int, where: str) -> dict:
    raw = read(address, RSDP_V1_SIZE)
    if raw[:8] != RSDP_SIGNATURE:
        raise InputError(f"{where} at {address:#x} has signature {raw[:8]!r}, not 'RSD PTR '", field="Signature")
    if raw[15] >= 2:
        raw = read(address, RSDP.size)
    fields = RSDP.unpack(raw.ljust(RSDP.size, b"\0"))
    fields["checksum_ok"] = checksum8(raw[:RSDP_V1_SIZE]) == 0
    fields["extended_checksum_ok"] = fields["Revision"] < 2 or (
        fields["Length"] == RSDP.size and checksum8(raw[: RSDP.size]) == 0)
    return fields


def read_acpi(read: Reader, config_tables: Iterable[tuple[uuid.UUID, int]]) -> AcpiView | None:
    """The tables under the ACPI 2.0 configuration table entry (None: there is none). An unreadable structure is an
    InputError naming it."""
    entries = dict(config_tables)
    rsdp_address = entries.get(guids.ACPI_20_TABLE)
    if rsdp_address is None:
        return None
    rsdp = _rsdp(read, rsdp_address, "RSDP")
    if rsdp["Revision"] < 2:
        raise InputError(f"the ACPI 2.0 RSDP at {rsdp_address:#x} has revision {rsdp['Revision']}", field="Revision")
    xsdt = _table(read, rsdp["XsdtAddress"], "XSDT")
    if xsdt.signature != "XSDT":
        raise InputError(f"RSDP.XsdtAddress points at {xsdt.signature!r}, not an XSDT", field="XsdtAddress")
    count = (len(xsdt.data) - HEADER_SIZE) // 8
    if count > MAX_XSDT_ENTRIES:
        raise InputError(f"an XSDT of {count} entries is implausible", field="Length")
    addresses = [int.from_bytes(xsdt.data[HEADER_SIZE + 8 * i : HEADER_SIZE + 8 * i + 8], "little")
                 for i in range(count)]
    # ACPICA's acpi_tb_parse_root_table skips null entries (edk2 keeps entry 0 for the FADT until one is installed)
    view = AcpiView(rsdp_address, rsdp, xsdt,
                    [_table(read, a, f"XSDT entry {i}") for i, a in enumerate(addresses) if a])
    fadt = view.fadt()
    if fadt is not None:
        dsdt = fadt.get("X_DSDT") or fadt["DSDT"]
        view.dsdt = _table(read, dsdt, "FADT.X_DSDT") if dsdt else None
        facs = fadt.get("X_FIRMWARE_CTRL") or fadt["FIRMWARE_CTRL"]
        if facs:
            header = FACS.unpack(read(facs, FACS.size), what="FACS")
            view.facs = Table(facs, read(facs, max(FACS.size, min(header["Length"], MAX_TABLE_BYTES))))
    view.madt()  # a malformed MADT or FADT is an error of the reading, not of each later look
    rsdp1 = entries.get(guids.ACPI_10_TABLE)
    if rsdp1 is not None:
        view.rsdp1_address, view.rsdp1 = rsdp1, _rsdp(read, rsdp1, "ACPI 1.0 RSDP")
    return view


def _memory_type(memory_map: list[MemoryDescriptor], start: int, size: int) -> int | None:
    """The memory type of [start, start+size) if one descriptor holds it all, else None."""
    for d in memory_map:
        if d.physical_start <= start and start + size <= d.end:
            return d.type
    return None


def check_acpi(view: AcpiView | None, memory_map: list[MemoryDescriptor], vcpus: int | None,
               read: Reader | None = None) -> list[str]:
    """What is wrong with the tables for a Linux TD guest (empty: nothing)."""
    if view is None:
        return ["no ACPI tables: the configuration table has no ACPI 2.0 entry (Linux in a TD needs the MADT)"]
    problems = list(view.problems)
    r = view.rsdp
    if not r["checksum_ok"] or not r["extended_checksum_ok"]:
        problems.append(f"RSDP at {view.rsdp_address:#x}: bad checksum")
    if view.rsdp1 is not None and not view.rsdp1["checksum_ok"]:
        problems.append(f"ACPI 1.0 RSDP at {view.rsdp1_address:#x}: bad checksum")
    for t in view.all_tables():
        if t.signature != "FACS" and not t.checksum_ok:
            problems.append(f"{t.signature} at {t.address:#x}: bad checksum")
        if memory_map:
            kind = _memory_type(memory_map, t.address, len(t.data))
            wanted = (M.EfiACPIMemoryNVS,) if t.signature == "FACS" else TABLE_MEMORY
            if kind not in wanted:
                name = "a mix of types" if kind is None else memory_type_name(kind)
                problems.append(f"{t.signature} at {t.address:#x} lies in {name}, which the OS may reuse")
    signatures = [t.signature for t in view.tables]
    for needed in ("FACP", "APIC"):
        if needed not in signatures:
            problems.append(f"the XSDT lists no {needed}")
    fadt = view.fadt()
    if fadt is not None:
        if view.dsdt is None or view.dsdt.signature != "DSDT":
            problems.append("the FADT points at no DSDT")
        else:
            try:
                s5 = aml_named_packages(view.dsdt.data[HEADER_SIZE:], view.dsdt.address + HEADER_SIZE).get("_S5_")
            except InputError as exc:
                s5 = None
                problems.append(f"DSDT: {exc}")
            if not s5:
                problems.append("the DSDT has no \\_S5 package: Linux cannot power off")
        reduced = fadt["Flags"] & (1 << FadtFlag.HW_REDUCED_ACPI)
        if reduced and not fadt.get("SLEEP_CONTROL_REG", {}).get("Address"):
            problems.append("a hardware-reduced FADT without SLEEP_CONTROL_REG: no way to power off")
        if not reduced and not (fadt["PM1A_CNT_BLK"] or fadt.get("X_PM1A_CNT_BLK", {}).get("Address")):
            problems.append("the FADT has no PM1a control block: no way to power off")
        if view.facs is None and not reduced:
            problems.append("the FADT points at no FACS")
        elif view.facs is not None and (view.facs.data[:4] != b"FACS" or view.facs.address % 64):
            problems.append(f"FACS at {view.facs.address:#x}: bad signature or not 64-byte aligned")
    madt = view.madt()
    processors = [e for e in madt if e["Type"] in (MadtType.LOCAL_APIC, MadtType.LOCAL_X2APIC) and e["Flags"] & 1]
    if vcpus is not None and len(processors) != vcpus:
        problems.append(f"the MADT has {len(processors)} enabled processors for {vcpus} vCPUs")
    wakeup = view.wakeup()
    if "APIC" in signatures:
        if wakeup is None:
            problems.append("the MADT has no multiprocessor wakeup structure: Linux in a TD cannot start the APs")
        else:
            mailbox = wakeup["MailBoxAddress"]
            if not mailbox or mailbox % MP_WAKEUP_MAILBOX_SIZE:
                problems.append(f"MADT wakeup mailbox at {mailbox:#x}: not a 4 KiB aligned address")
            elif memory_map and _memory_type(memory_map, mailbox, MP_WAKEUP_MAILBOX_SIZE) != M.EfiACPIMemoryNVS:
                problems.append(f"MADT wakeup mailbox at {mailbox:#x} is not in ACPI NVS memory")
            elif read is not None:
                try:
                    box = MP_WAKEUP_MAILBOX.unpack(read(mailbox, MP_WAKEUP_MAILBOX.size))
                except InputError as exc:
                    problems.append(f"MADT wakeup mailbox unreadable: {exc}")
                    box = {"Command": 0}
                if box["Command"]:
                    problems.append(f"MADT wakeup mailbox at {mailbox:#x} holds command {box['Command']}, not Noop")
    return problems


def acpi_summary(view: AcpiView | None, memory_map: list[MemoryDescriptor]) -> dict | None:
    """The report's `acpi` object: RSDP, each table with its address, length, revision, checksum and memory type,
    the MADT's structures and the FADT fields the OS acts on."""
    if view is None:
        return None

    def kind(t: Table) -> str | None:
        k = _memory_type(memory_map, t.address, len(t.data)) if memory_map else None
        return memory_type_name(k) if k is not None else None

    wakeup = view.wakeup()
    fadt = view.fadt() or {}
    return {
        "rsdp": {"address": view.rsdp_address, "revision": view.rsdp["Revision"],
                 "oem_id": view.rsdp["OemId"].decode("latin-1"), "xsdt": view.rsdp["XsdtAddress"],
                 "checksum_ok": view.rsdp["checksum_ok"] and view.rsdp["extended_checksum_ok"],
                 "acpi10_rsdp": view.rsdp1_address},
        "tables": [{"signature": t.signature, "address": t.address, "length": len(t.data),
                    "revision": t.data[8], "checksum_ok": t.signature == "FACS" or t.checksum_ok,
                    "memory_type": kind(t)} for t in view.all_tables()],
        "madt": [{k: v for k, v in e.items() if k not in ("Length", "Reserved")} for e in view.madt()],
        "wakeup_mailbox": None if wakeup is None else wakeup["MailBoxAddress"],
        "fadt": {k: fadt[k] for k in FADT_COMPARED if k in fadt},
    }


def format_acpi(summary: dict | None) -> list[str]:
    """A few report lines from acpi_summary's object."""
    if summary is None:
        return ["  ACPI:    no tables installed"]
    r = summary["rsdp"]
    tables = summary["tables"]
    listed = " ".join(t["signature"] for t in tables[1:])
    lines = [f"  ACPI:    RSDP rev {r['revision']} {r['oem_id']!r} at {r['address']:#x}"
             + (f" (1.0 RSDP at {r['acpi10_rsdp']:#x})" if r["acpi10_rsdp"] is not None else "")
             + f"; tables: {listed}"]
    bad = [t["signature"] for t in tables if not t["checksum_ok"]]
    kinds = sorted({str(t["memory_type"]) for t in tables})
    lines.append(f"           checksums {'bad: ' + ' '.join(bad) if bad else 'ok'}; in {', '.join(kinds)}")
    madt = summary["madt"]
    cpus = sum(1 for e in madt if e["Type"] in (MadtType.LOCAL_APIC, MadtType.LOCAL_X2APIC))
    others = sorted({MadtType(e["Type"]).name for e in madt if e["Type"] in set(MadtType)} - {
        "LOCAL_APIC", "LOCAL_X2APIC"})
    mailbox = summary["wakeup_mailbox"]
    lines.append(f"           MADT: {cpus} processor{'' if cpus == 1 else 's'}, {', '.join(others)}"
                 + (f"; wakeup mailbox at {mailbox:#x}" if mailbox is not None else "; no wakeup structure"))
    f = summary["fadt"]
    if f:
        lines.append(f"           FADT: PM1a_CNT {f['PM1A_CNT_BLK']:#x}, PM timer {f['PM_TMR_BLK']:#x}, SCI "
                     f"{f['SCI_INT']}, reset {f['RESET_REG']['Address']:#x}={f['RESET_VALUE']:#x}"
                     + (", hardware-reduced" if f["Flags"] & (1 << FadtFlag.HW_REDUCED_ACPI) else ""))
    return lines


def acpi_differences(a: AcpiView | None, b: AcpiView | None, ignore: Iterable[str] = ()) -> list[str]:
    """Where two handoffs' tables differ in what the OS acts on: the tables listed (signatures in `ignore` aside),
    the MADT's structures (the wakeup mailbox's address aside: each firmware allocates it), the FADT's fields (its
    patched pointers aside) and the DSDT's \\_S5."""
    if a is None or b is None:
        return [] if a is b else ["only one handoff has ACPI tables"]
    out = []
    skip = set(ignore)
    sa, sb = ([t.signature for t in v.tables if t.signature not in skip] for v in (a, b))
    if sa != sb:
        out.append(f"XSDT lists {sa} vs {sb}")

    def madt(view: AcpiView) -> list[dict]:
        return [{k: v for k, v in e.items() if k != "MailBoxAddress"} for e in view.madt()]

    if madt(a) != madt(b):
        out.append(f"MADT structures differ: {madt(a)} vs {madt(b)}")
    fa, fb = a.fadt() or {}, b.fadt() or {}
    for name in FADT_COMPARED:
        if fa.get(name) != fb.get(name):
            out.append(f"FADT.{name}: {fa.get(name)} vs {fb.get(name)}")
    if (a.fadt() and b.fadt()) and len(a.find("FACP").data) != len(b.find("FACP").data):  # type: ignore[union-attr]
        out.append("FADT lengths differ")

    def s5(view: AcpiView) -> list[int] | str | None:
        if view.dsdt is None:
            return None
        try:
            return aml_named_packages(view.dsdt.data[HEADER_SIZE:]).get("_S5_")
        except InputError as exc:
            return f"unreadable ({exc})"

    if s5(a) != s5(b):
        out.append(f"DSDT \\_S5: {s5(a)} vs {s5(b)}")
    return out


__all__ = ["FADT", "AcpiView", "acpi_differences", "acpi_summary", "check_acpi", "format_acpi", "read_acpi"]
