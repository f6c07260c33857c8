"""Guest RAM as QEMU's q35 machine lays it out for a TD, and the TD's RAM entries around the TDVF sections.

Sources (read, not copied):
- hw/i386/pc_q35.c pc_q35_init: with 2.75 GiB (0xb0000000) of RAM or more, 2 GiB lies below 4 GiB and the rest
  starts at 4 GiB; less RAM lies entirely below 4 GiB; `max-ram-below-4g` can only lower the split.
- hw/i386/pc.c pc_memory_init: one E820 RAM entry [0, below_4g) and one [4 GiB, 4 GiB + above_4g).
- target/i386/kvm/tdx.c tdx_init_ram_entries / tdx_accept_ram_range: every E820 RAM entry starts unaccepted;
  each TD_HOB and TEMP_MEM section splits its containing entry into head (unaccepted), the section (added)
  and tail (unaccepted); adjacent added pieces are not merged; entries are kept sorted by address; a section
  outside RAM is fatal ("Failed to accept memory for TDVF section").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from lazyaccept.errors import ConfigError
from lazyaccept.units import PAGE_4K, GiB, format_size
from lazyaccept.vmm.tdvf import TdvfMetadata, TdvfSection

FOUR_GIB = 4 * GiB
Q35_LOWMEM_LARGE = 0x80000000  # 2 GiB below 4 GiB once RAM reaches 0xb0000000
Q35_LOWMEM_THRESHOLD = 0xB0000000  # 2.75 GiB; also where MMCONFIG starts
IOAPIC_BASE = 0xFEC00000  # the 32-bit PCI hole runs from the end of low RAM up to here
MAX_TD_RAM = 64 * (1 << 40)  # 64 TiB: well above any TD lazyaccept is asked about, below a 48-bit GPA space


class RamKind(Enum):
    UNACCEPTED = "unaccepted"  # QEMU's TDX_RAM_UNACCEPTED: pending, to be accepted by the guest
    ADDED = "added"  # QEMU's TDX_RAM_ADDED: TDH.MEM.PAGE.ADD before the TD runs


@dataclass(frozen=True)
class RamEntry:
    start: int
    size: int
    kind: RamKind

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class Q35Split:
    below_4g: int
    above_4g: int

    def e820_ram(self) -> list[tuple[int, int]]:
        """The E820 RAM entries QEMU reports: (start, size)."""
        entries = [(0, self.below_4g)]
        if self.above_4g:
            entries.append((FOUR_GIB, self.above_4g))
        return entries


def q35_split(ram_size: int, max_ram_below_4g: int | None = None) -> Q35Split:
    """pc_q35_init's split of RAM around the 32-bit PCI hole."""
    if ram_size <= 0 or ram_size % PAGE_4K:
        raise ConfigError(f"RAM size {ram_size} must be a positive multiple of 4 KiB")
    if ram_size > MAX_TD_RAM:
        raise ConfigError(f"RAM size {format_size(ram_size)} is beyond what lazyaccept models (64T)")
    lowmem = Q35_LOWMEM_LARGE if ram_size >= Q35_LOWMEM_THRESHOLD else Q35_LOWMEM_THRESHOLD
    if max_ram_below_4g is not None:
        if max_ram_below_4g <= 0 or max_ram_below_4g % PAGE_4K:
            raise ConfigError(f"max-ram-below-4g {max_ram_below_4g:#x} must be a positive multiple of 4 KiB")
        lowmem = min(lowmem, max_ram_below_4g)  # it can only lower the split
    if ram_size >= lowmem:
        return Q35Split(lowmem, ram_size - lowmem)
    return Q35Split(ram_size, 0)


def td_ram_entries(split: Q35Split, firmware: TdvfMetadata) -> list[RamEntry]:
    """tdx.c's RAM entries: E820 RAM split around the TD_HOB and TEMP_MEM sections, sorted by address."""
    entries = [RamEntry(s, n, RamKind.UNACCEPTED) for s, n in split.e820_ram()]
    for section in firmware.ram_sections:
        entries = _accept_section(entries, section)
    return sorted(entries, key=lambda e: e.start)


def _accept_section(entries: list[RamEntry], section: TdvfSection) -> list[RamEntry]:
    start, end = section.memory_base, section.memory_end
    for i, e in enumerate(entries):
        if e.kind == RamKind.UNACCEPTED and e.start <= start and end <= e.end:
            pieces = [
                RamEntry(e.start, start - e.start, RamKind.UNACCEPTED),
                RamEntry(start, end - start, RamKind.ADDED),
                RamEntry(end, e.end - end, RamKind.UNACCEPTED),
            ]
            return entries[:i] + [p for p in pieces if p.size] + entries[i + 1 :]
    raise ConfigError(
        f"Failed to accept memory for TDVF section {section.index} ({section.type.name} at "
        f"{start:#x}+{section.memory_size:#x}): it does not lie inside unaccepted guest RAM"
    )


def describe_split(split: Q35Split) -> str:
    parts = [f"{format_size(split.below_4g)} below 4G"]
    if split.above_4g:
        parts.append(f"{format_size(split.above_4g)} from 4G")
    return ", ".join(parts)
