"""PI Hand-Off Blocks (HOBs): records, a HOB list writer and a validating parser.

The values and layouts (PI Volume 3, edk2 PiHob.h) are declared in lazyaccept.spec.pi_hob.

Three producers and consumers shaped the writer and the parser:
- QEMU hw/i386/tdvf-hob.c writes the TD HOB: a PHIT with EfiMemory* left zero, one resource descriptor per RAM
  entry, END_OF_HOB_LIST; running out of the TD_HOB section is fatal ("TD_HOB overrun").
- edk2 OvmfPkg/IntelTdx/TdxHelperLib/SecTdxHelper.c ValidateHobList checks the TD HOB before SEC accepts memory.
- td-shim td-uefi-pi/src/hob.rs check_hob_integrity does the same for td-shim.
The parser makes the checks those two validators make (exactly edk2's with allowed_types=EDK2_TD_HOB_TYPES and
allowed_attributes=EDK2_TD_HOB_ATTRIBUTES) and the ones they miss (buffer bounds, HobLength alignment,
END_OF_HOB_LIST presence, EfiEndOfHobList, empty, wrapping and overlapping ranges), because the TD HOB is written
by the untrusted VMM.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeVar

from lazyaccept.binlayout import Layout
from lazyaccept.errors import ConfigError, InputError

# The architectural values and structures, declared once in the spec layer.
from lazyaccept.spec.pi_hob import (
    EFI_HOB_CPU,
    EFI_HOB_FIRMWARE_VOLUME,
    EFI_HOB_FIRMWARE_VOLUME2,
    EFI_HOB_FIRMWARE_VOLUME3,
    EFI_HOB_GENERIC_HEADER,
    EFI_HOB_GUID_TYPE,
    EFI_HOB_HANDOFF_INFO_TABLE,
    EFI_HOB_HANDOFF_TABLE_VERSION,
    EFI_HOB_MEMORY_ALLOCATION,
    EFI_HOB_MEMORY_ALLOCATION_HEADER,
    EFI_HOB_RESOURCE_DESCRIPTOR,
    EFI_HOB_UEFI_CAPSULE,
    EFI_MAX_MEMORY_TYPE,
    EFI_OEM_MEMORY_TYPE_FIRST,
    EFI_RESOURCE_MAX_MEMORY_TYPE,
    END_OF_HOB_LIST,
    HOB_ALIGNMENT,
    IO_RESOURCE_TYPES,
    MAX_HOB_LENGTH,
    MEMORY_RESOURCE_TYPES,
    RESOURCE_ATTRIBUTE_ALL,
    TDVF_RAM_ATTRIBUTES,
    BootMode,
    HobType,
    ResourceAttribute,
    ResourceType,
    hob_header,
)

__all__ = [
    "EFI_HOB_CPU",
    "EFI_HOB_FIRMWARE_VOLUME",
    "EFI_HOB_FIRMWARE_VOLUME2",
    "EFI_HOB_FIRMWARE_VOLUME3",
    "EFI_HOB_GENERIC_HEADER",
    "EFI_HOB_GUID_TYPE",
    "EFI_HOB_HANDOFF_INFO_TABLE",
    "EFI_HOB_HANDOFF_TABLE_VERSION",
    "EFI_HOB_MEMORY_ALLOCATION",
    "EFI_HOB_MEMORY_ALLOCATION_HEADER",
    "EFI_HOB_RESOURCE_DESCRIPTOR",
    "EFI_HOB_UEFI_CAPSULE",
    "EFI_MAX_MEMORY_TYPE",
    "EFI_OEM_MEMORY_TYPE_FIRST",
    "EFI_RESOURCE_MAX_MEMORY_TYPE",
    "END_OF_HOB_LIST",
    "HOB_ALIGNMENT",
    "IO_RESOURCE_TYPES",
    "MAX_HOB_LENGTH",
    "MEMORY_RESOURCE_TYPES",
    "RESOURCE_ATTRIBUTE_ALL",
    "TDVF_RAM_ATTRIBUTES",
    "BootMode",
    "HobType",
    "ResourceAttribute",
    "ResourceType",
]

# ---------------------------------------------------------------------------------------------------------------
# Parser options
# ---------------------------------------------------------------------------------------------------------------

# edk2 declares version 9, the PI 1.9 text 0xA: the parser accepts both.
PHIT_VERSIONS_ACCEPTED = frozenset({EFI_HOB_HANDOFF_TABLE_VERSION, 0x000A})

# TDG.MEM.PAGE.ACCEPT takes a GPA whose bits 63:52 are clear; a parser option, not a PI rule.
TDX_GPA_LIMIT = 1 << 52
PAGE_SIZE_4K = 0x1000

# Bounds the parser's work on a large buffer; QEMU's 8 KiB TD HOB holds at most 169 resource descriptors.
DEFAULT_MAX_HOBS = 4096

# The HOB types edk2's TD HOB validator (SecTdxHelper.c ValidateHobList) lets through; pass as allowed_types
# to mirror it. It rejects everything else, MEMORY_ALLOCATION included, although TransferTdxHobList copies them.
EDK2_TD_HOB_TYPES = frozenset(
    {
        HobType.HANDOFF,
        HobType.RESOURCE_DESCRIPTOR,
        HobType.GUID_EXTENSION,
        HobType.FV,
        HobType.FV2,
        HobType.FV3,
        HobType.CPU,
    }
)

# The attribute bits edk2's TD HOB validator accepts: all of PiHob.h except HOT_PLUGGABLE, which it does not list.
EDK2_TD_HOB_ATTRIBUTES = RESOURCE_ATTRIBUTE_ALL & ~int(ResourceAttribute.HOT_PLUGGABLE)

ZERO_GUID = uuid.UUID(int=0)

# Types whose HobLength must equal the structure size: edk2's ValidateHobList and td-shim both insist on it.
_FIXED_SIZE: dict[int, Layout] = {
    HobType.HANDOFF: EFI_HOB_HANDOFF_INFO_TABLE,
    HobType.RESOURCE_DESCRIPTOR: EFI_HOB_RESOURCE_DESCRIPTOR,
    HobType.FV: EFI_HOB_FIRMWARE_VOLUME,
    HobType.FV2: EFI_HOB_FIRMWARE_VOLUME2,
    HobType.FV3: EFI_HOB_FIRMWARE_VOLUME3,
    HobType.CPU: EFI_HOB_CPU,
    HobType.UEFI_CAPSULE: EFI_HOB_UEFI_CAPSULE,
}
# Types that may carry data after the structure (a GUID HOB's payload, EFI_HOB_MEMORY_ALLOCATION_MODULE's tail).
_MINIMUM_SIZE: dict[int, Layout] = {
    HobType.MEMORY_ALLOCATION: EFI_HOB_MEMORY_ALLOCATION,
    HobType.GUID_EXTENSION: EFI_HOB_GUID_TYPE,
}

# ---------------------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhitHob:
    """EFI_HOB_HANDOFF_INFO_TABLE. end_of_hob_list is computed by the writer and recorded by the parser."""

    hob_type: ClassVar[HobType] = HobType.HANDOFF
    version: int = EFI_HOB_HANDOFF_TABLE_VERSION
    boot_mode: int = BootMode.BOOT_WITH_FULL_CONFIGURATION
    memory_top: int = 0
    memory_bottom: int = 0
    free_memory_top: int = 0
    free_memory_bottom: int = 0
    end_of_hob_list: int = field(default=0, compare=False)


@dataclass(frozen=True)
class MemoryAllocationHob:
    """EFI_HOB_MEMORY_ALLOCATION; data is whatever follows the header (e.g. the MODULE variant's tail)."""

    hob_type: ClassVar[HobType] = HobType.MEMORY_ALLOCATION
    base: int
    length: int
    memory_type: int
    name: uuid.UUID = ZERO_GUID
    data: bytes = b""

    @property
    def end(self) -> int:
        return self.base + self.length


@dataclass(frozen=True)
class ResourceHob:
    """EFI_HOB_RESOURCE_DESCRIPTOR: the range [start, start + length) of one resource type."""

    hob_type: ClassVar[HobType] = HobType.RESOURCE_DESCRIPTOR
    resource_type: ResourceType
    attributes: ResourceAttribute
    start: int
    length: int
    owner: uuid.UUID = ZERO_GUID

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def is_memory(self) -> bool:
        return self.resource_type in MEMORY_RESOURCE_TYPES


@dataclass(frozen=True)
class GuidHob:
    """EFI_HOB_GUID_TYPE. The parser returns data padded to 8 bytes, as edk2's GET_GUID_HOB_DATA_SIZE counts it."""

    hob_type: ClassVar[HobType] = HobType.GUID_EXTENSION
    name: uuid.UUID
    data: bytes = b""


@dataclass(frozen=True)
class FvHob:
    """EFI_HOB_FIRMWARE_VOLUME."""

    hob_type: ClassVar[HobType] = HobType.FV
    base: int
    length: int


@dataclass(frozen=True)
class Fv2Hob:
    """EFI_HOB_FIRMWARE_VOLUME2."""

    hob_type: ClassVar[HobType] = HobType.FV2
    base: int
    length: int
    fv_name: uuid.UUID = ZERO_GUID
    file_name: uuid.UUID = ZERO_GUID


@dataclass(frozen=True)
class Fv3Hob:
    """EFI_HOB_FIRMWARE_VOLUME3."""

    hob_type: ClassVar[HobType] = HobType.FV3
    base: int
    length: int
    authentication_status: int = 0
    extracted_fv: bool = False
    fv_name: uuid.UUID = ZERO_GUID
    file_name: uuid.UUID = ZERO_GUID


@dataclass(frozen=True)
class CpuHob:
    """EFI_HOB_CPU: address widths in bits."""

    hob_type: ClassVar[HobType] = HobType.CPU
    size_of_memory_space: int
    size_of_io_space: int


@dataclass(frozen=True)
class RawHob:
    """A HOB this module does not decode (MEMORY_POOL, UEFI_CAPSULE, UNUSED, or an unknown type): kept verbatim."""

    hob_type: int
    data: bytes = b""


Hob = PhitHob | MemoryAllocationHob | ResourceHob | GuidHob | FvHob | Fv2Hob | Fv3Hob | CpuHob | RawHob
_HobT = TypeVar("_HobT")

EndPointer = Literal["edk2", "qemu"]
# Where PHIT.EfiEndOfHobList points: edk2 (PEI core, PrePiHobLib) at the END_OF_HOB_LIST HOB itself; QEMU's
# tdvf-hob.c just past it, and td-shim's check_hob_length expects QEMU's form.
_END_POINTER_SLACK: dict[EndPointer, int] = {"edk2": 0, "qemu": END_OF_HOB_LIST.size}


def iter_resources_sorted(
    hobs: Iterable[Hob], *, types: Collection[ResourceType] | None = None
) -> Iterator[ResourceHob]:
    """Resource descriptors by address (then length), optionally only some types."""
    selected = [h for h in hobs if isinstance(h, ResourceHob) and (types is None or h.resource_type in types)]
    return iter(sorted(selected, key=lambda r: (r.start, r.length, r.resource_type)))


def total_bytes_by_resource_type(hobs: Iterable[Hob]) -> dict[ResourceType, int]:
    """Bytes described per resource type, e.g. how much RAM the VMM left unaccepted."""
    totals: dict[ResourceType, int] = defaultdict(int)
    for h in hobs:
        if isinstance(h, ResourceHob):
            totals[h.resource_type] += h.length
    return dict(totals)


@dataclass
class HobList:
    """An ordered HOB list, PHIT first, without the END_OF_HOB_LIST HOB (the writer adds it).

    Equality compares the records only; where the list sat and how it was terminated are kept for reference.
    """

    hobs: list[Hob]
    base_address: int = field(default=0, compare=False)
    size_bytes: int = field(default=0, compare=False)  # from the PHIT through the END_OF_HOB_LIST HOB
    end_pointer: EndPointer = field(default="edk2", compare=False)

    def __iter__(self) -> Iterator[Hob]:
        return iter(self.hobs)

    def __len__(self) -> int:
        return len(self.hobs)

    def __getitem__(self, index: int) -> Hob:
        return self.hobs[index]

    @property
    def phit(self) -> PhitHob:
        first = self.hobs[0] if self.hobs else None
        if not isinstance(first, PhitHob):
            raise ValueError("HOB list does not start with a PHIT")
        return first

    def of_type(self, cls: type[_HobT]) -> list[_HobT]:
        return [h for h in self.hobs if isinstance(h, cls)]

    def resources(self, *, types: Collection[ResourceType] | None = None) -> list[ResourceHob]:
        """Resource descriptors sorted by address, as SEC and the DXE GCD walk them."""
        return list(iter_resources_sorted(self.hobs, types=types))

    def bytes_by_resource_type(self) -> dict[ResourceType, int]:
        return total_bytes_by_resource_type(self.hobs)


# ---------------------------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------------------------


class HobOverrunError(ConfigError):
    """The HOB list does not fit its area; QEMU exits with "TD_HOB overrun" in the same case."""

    def __init__(self, message: str, *, needed_bytes: int, capacity_bytes: int):
        self.needed_bytes = needed_bytes
        self.capacity_bytes = capacity_bytes
        super().__init__(message)


def _pad8(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % HOB_ALIGNMENT)


def _encode_phit(phit: PhitHob, end_of_hob_list: int) -> bytes:
    layout = EFI_HOB_HANDOFF_INFO_TABLE
    return layout.pack(
        hob_header(HobType.HANDOFF, layout.size),
        Version=phit.version,
        BootMode=phit.boot_mode,
        EfiMemoryTop=phit.memory_top,
        EfiMemoryBottom=phit.memory_bottom,
        EfiFreeMemoryTop=phit.free_memory_top,
        EfiFreeMemoryBottom=phit.free_memory_bottom,
        EfiEndOfHobList=end_of_hob_list,
    )


def _encode_hob(hob: Hob) -> bytes:
    """One HOB other than the PHIT, its HobLength rounded up to 8 as PeiCreateHob does."""
    if isinstance(hob, ResourceHob):
        layout = EFI_HOB_RESOURCE_DESCRIPTOR
        return layout.pack(
            hob_header(HobType.RESOURCE_DESCRIPTOR, layout.size),
            Owner=hob.owner,
            ResourceType=int(hob.resource_type),
            ResourceAttribute=int(hob.attributes),
            PhysicalStart=hob.start,
            ResourceLength=hob.length,
        )
    if isinstance(hob, MemoryAllocationHob):
        layout = EFI_HOB_MEMORY_ALLOCATION
        data = _pad8(hob.data)
        return (
            layout.pack(
                {
                    **hob_header(HobType.MEMORY_ALLOCATION, layout.size + len(data)),
                    "AllocDescriptor.Name": hob.name,
                    "AllocDescriptor.MemoryBaseAddress": hob.base,
                    "AllocDescriptor.MemoryLength": hob.length,
                    "AllocDescriptor.MemoryType": hob.memory_type,
                },
            )
            + data
        )
    if isinstance(hob, GuidHob):
        data = _pad8(hob.data)
        return (
            EFI_HOB_GUID_TYPE.pack(
                hob_header(HobType.GUID_EXTENSION, EFI_HOB_GUID_TYPE.size + len(data)), Name=hob.name
            )
            + data
        )
    if isinstance(hob, FvHob):
        layout = EFI_HOB_FIRMWARE_VOLUME
        return layout.pack(hob_header(HobType.FV, layout.size), BaseAddress=hob.base, Length=hob.length)
    if isinstance(hob, Fv2Hob):
        layout = EFI_HOB_FIRMWARE_VOLUME2
        return layout.pack(
            hob_header(HobType.FV2, layout.size),
            BaseAddress=hob.base,
            Length=hob.length,
            FvName=hob.fv_name,
            FileName=hob.file_name,
        )
    if isinstance(hob, Fv3Hob):
        layout = EFI_HOB_FIRMWARE_VOLUME3
        return layout.pack(
            hob_header(HobType.FV3, layout.size),
            BaseAddress=hob.base,
            Length=hob.length,
            AuthenticationStatus=hob.authentication_status,
            ExtractedFv=int(hob.extracted_fv),
            FvName=hob.fv_name,
            FileName=hob.file_name,
        )
    if isinstance(hob, CpuHob):
        layout = EFI_HOB_CPU
        return layout.pack(
            hob_header(HobType.CPU, layout.size),
            SizeOfMemorySpace=hob.size_of_memory_space,
            SizeOfIoSpace=hob.size_of_io_space,
        )
    if isinstance(hob, RawHob):
        if hob.hob_type in (0, HobType.HANDOFF, HobType.END_OF_HOB_LIST):
            raise ValueError(f"a RawHob cannot carry type {hob.hob_type:#06x}: 0 is invalid, PHIT and END are placed")
        data = _pad8(hob.data)
        return (
            EFI_HOB_GENERIC_HEADER.pack(HobType=hob.hob_type, HobLength=EFI_HOB_GENERIC_HEADER.size + len(data)) + data
        )
    if isinstance(hob, PhitHob):
        raise ValueError("a PHIT may only be the first HOB of a list")
    raise TypeError(f"not a HOB record: {hob!r}")


def encode_hob_list(
    hobs: HobList | Iterable[Hob],
    *,
    base_address: int,
    end_pointer: EndPointer = "edk2",
    capacity: int | None = None,
) -> bytes:
    """The bytes of a HOB list placed at base_address: PHIT, the HOBs in order, END_OF_HOB_LIST.

    A default PHIT is put first when the records do not start with one. PHIT.EfiEndOfHobList points at the END
    HOB ("edk2") or just past it ("qemu", what tdvf-hob.c writes). With capacity, a list that does not fit raises
    HobOverrunError, QEMU's "TD_HOB overrun".
    """
    records = list(hobs.hobs if isinstance(hobs, HobList) else hobs)
    if base_address < 0 or base_address % HOB_ALIGNMENT:
        raise ValueError(f"HOB list base address {base_address:#x} must be a non-negative multiple of 8")
    if end_pointer not in _END_POINTER_SLACK:
        raise ValueError(f"end_pointer must be 'edk2' or 'qemu', not {end_pointer!r}")
    first = records.pop(0) if records and isinstance(records[0], PhitHob) else None
    phit = first if isinstance(first, PhitHob) else PhitHob()
    body = b"".join(_encode_hob(h) for h in records)
    end_offset = EFI_HOB_HANDOFF_INFO_TABLE.size + len(body)
    total = end_offset + END_OF_HOB_LIST.size
    if capacity is not None and total > capacity:
        raise HobOverrunError(
            f"TD_HOB overrun: the HOB list ({len(records) + 2} HOBs) needs {total:#x} bytes "
            f"but the area at {base_address:#x} holds {capacity:#x}",
            needed_bytes=total,
            capacity_bytes=capacity,
        )
    if base_address + total > 1 << 64:
        raise ValueError(f"a HOB list of {total:#x} bytes at {base_address:#x} runs past the 64-bit address space")
    end_of_hob_list = base_address + end_offset + _END_POINTER_SLACK[end_pointer]
    end_hob = END_OF_HOB_LIST.pack(HobType=HobType.END_OF_HOB_LIST, HobLength=END_OF_HOB_LIST.size)
    return _encode_phit(phit, end_of_hob_list) + body + end_hob


def write_hob_list_into(
    target: bytearray | memoryview,
    hobs: HobList | Iterable[Hob],
    *,
    base_address: int,
    offset: int = 0,
    capacity: int | None = None,
    end_pointer: EndPointer = "edk2",
) -> int:
    """Write the HOB list into target[offset:], which must hold it within capacity bytes; returns bytes written.

    capacity defaults to the room left in target: a list that does not fit raises HobOverrunError before
    anything is written (QEMU fills the TD_HOB section the same way and exits on "TD_HOB overrun").
    """
    room = len(target) - offset
    if offset < 0 or room < 0:
        raise ValueError(f"offset {offset:#x} lies outside the {len(target):#x}-byte target")
    cap = room if capacity is None else min(capacity, room)
    data = encode_hob_list(hobs, base_address=base_address, end_pointer=end_pointer, capacity=cap)
    target[offset : offset + len(data)] = data
    return len(data)


# ---------------------------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------------------------


def _field_error(message: str, index: int, hob_offset: int, layout: Layout, name: str) -> InputError:
    """An InputError naming HOB[index].<name> and that field's offset in the buffer."""
    return InputError(message, field=f"HOB[{index}].{name}", offset=hob_offset + layout.offset_of(name))


def _header_error(message: str, index: int, hob_offset: int, name: str) -> InputError:
    """An InputError naming HOB[index].Header.<name>, the generic header as every HOB embeds it."""
    field_offset = hob_offset + EFI_HOB_GENERIC_HEADER.offset_of(name)
    return InputError(message, field=f"HOB[{index}].Header.{name}", offset=field_offset)


def _check_range(
    start: int,
    length: int,
    *,
    index: int,
    hob_offset: int,
    layout: Layout,
    start_field: str,
    length_field: str,
    what: str,
    alignment: int | None = None,
    max_address: int | None = None,
) -> None:
    err = _field_error
    # edk2 computes PhysicalStart + ResourceLength in UINT64: an end of exactly 2^64 already wraps to 0.
    if start + length >= 1 << 64:
        raise err(
            f"{what} [{start:#x}, +{length:#x}) wraps past the end of the 64-bit address space",
            index,
            hob_offset,
            layout,
            length_field,
        )
    if alignment is not None:
        if start % alignment:
            raise err(f"{what} start {start:#x} is not {alignment:#x}-aligned", index, hob_offset, layout, start_field)
        if length % alignment:
            raise err(
                f"{what} length {length:#x} is not a multiple of {alignment:#x}",
                index,
                hob_offset,
                layout,
                length_field,
            )
    if max_address is not None and start + length > max_address:
        raise err(
            f"{what} [{start:#x}, {start + length:#x}) ends above the address limit {max_address:#x}",
            index,
            hob_offset,
            layout,
            length_field,
        )


def _parse_phit(view: memoryview, offset: int) -> PhitHob:
    layout = EFI_HOB_HANDOFF_INFO_TABLE
    v = layout.unpack(view, offset)
    err = _field_error
    if v["Version"] not in PHIT_VERSIONS_ACCEPTED:
        raise err(
            f"PHIT Version {v['Version']:#x} is not a known EFI_HOB_HANDOFF_TABLE_VERSION (9, or 0xA from PI 1.9)",
            0,
            offset,
            layout,
            "Version",
        )
    if v["BootMode"] not in BootMode._value2member_map_:
        raise err(f"PHIT BootMode {v['BootMode']:#x} is not a defined EFI_BOOT_MODE", 0, offset, layout, "BootMode")
    # PI requires EfiMemoryTop 4 KiB aligned (td-shim checks it); edk2's TD HOB check tests EfiFreeMemoryTop.
    for name in ("EfiMemoryTop", "EfiFreeMemoryTop"):
        if v[name] % PAGE_SIZE_4K:
            raise err(f"PHIT {name} {v[name]:#x} is not 4 KiB aligned", 0, offset, layout, name)
    top, bottom = v["EfiMemoryTop"], v["EfiMemoryBottom"]
    free_top, free_bottom = v["EfiFreeMemoryTop"], v["EfiFreeMemoryBottom"]
    if bottom > top:
        raise err(
            f"PHIT EfiMemoryBottom {bottom:#x} lies above EfiMemoryTop {top:#x}", 0, offset, layout, "EfiMemoryBottom"
        )
    if free_bottom > free_top:
        raise err(
            f"PHIT EfiFreeMemoryBottom {free_bottom:#x} lies above EfiFreeMemoryTop {free_top:#x}",
            0,
            offset,
            layout,
            "EfiFreeMemoryBottom",
        )
    # QEMU leaves all four zero; a producer that fills them keeps the free range inside the HOB memory.
    if top and (free_bottom or free_top) and not (bottom <= free_bottom and free_top <= top):
        raise err(
            f"PHIT free memory [{free_bottom:#x}, {free_top:#x}) lies outside [{bottom:#x}, {top:#x})",
            0,
            offset,
            layout,
            "EfiFreeMemoryBottom",
        )
    return PhitHob(
        version=v["Version"],
        boot_mode=v["BootMode"],
        memory_top=top,
        memory_bottom=bottom,
        free_memory_top=free_top,
        free_memory_bottom=free_bottom,
        end_of_hob_list=v["EfiEndOfHobList"],
    )


def parse_hob_list(
    buf: bytes | bytearray | memoryview,
    *,
    base_address: int,
    limit: int | None = None,
    max_hobs: int = DEFAULT_MAX_HOBS,
    allowed_types: Collection[int] | None = None,
    allowed_attributes: int = RESOURCE_ATTRIBUTE_ALL,
    range_alignment: int | None = None,
    max_address: int | None = None,
) -> HobList:
    """Parse and validate a HOB list that may be hostile (the TD HOB the VMM wrote).

    buf holds the list from its first byte, which sits at guest-physical base_address; the list must end within
    limit bytes (default: all of buf). Anything after the END_OF_HOB_LIST HOB is ignored, as edk2 does.

    Checks: PHIT first and only first, with a known version and boot mode and sane memory fields; each HOB's
    HobLength at least a header, a multiple of 8, inside the buffer, Reserved zero; exact sizes for fixed-size
    types and minimum sizes for GUID and memory-allocation HOBs; END_OF_HOB_LIST present and PHIT.EfiEndOfHobList
    pointing at it (edk2) or just past it (QEMU); resource descriptors of a known type, non-empty, not wrapping,
    with attribute bits within allowed_attributes (default: every bit PiHob.h defines), not overlapping another
    of the same address space (memory or I/O); at most max_hobs HOBs. Optional: every range aligned to
    range_alignment (4096 for TDX), ending at or below max_address (TDX_GPA_LIMIT), and only allowed_types.
    EDK2_TD_HOB_TYPES and EDK2_TD_HOB_ATTRIBUTES make the parser as strict as edk2's TD HOB check.

    Types this module does not decode are kept as RawHob and otherwise skipped, as edk2's HobLib walkers skip
    them; type 0 is defined nowhere (it is what zeroed memory reads as) and is always rejected.
    Every rejection is an InputError naming the field (e.g. "HOB[3].ResourceLength") and its offset in buf.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must not be negative, not {limit}")
    if max_hobs < 1:
        raise ValueError(f"max_hobs must be at least 1, not {max_hobs}")
    if range_alignment is not None and (range_alignment <= 0 or range_alignment & (range_alignment - 1)):
        raise ValueError(f"range_alignment must be a power of two, not {range_alignment}")
    if base_address < 0 or base_address >= 1 << 64:
        raise ValueError(f"base_address {base_address:#x} is not a 64-bit physical address")
    view = memoryview(buf).cast("B")
    if limit is not None:
        view = view[:limit]
    size = len(view)
    if base_address % HOB_ALIGNMENT:
        raise InputError(f"HOB list base address {base_address:#x} is not 8-byte aligned", field="HOB[0]", offset=0)

    gh = EFI_HOB_GENERIC_HEADER
    hobs: list[Hob] = []
    phit: PhitHob | None = None
    # (start, end, index, offset of that HOB) per address space, for the overlap check at the END HOB.
    ranges: dict[str, list[tuple[int, int, int, int]]] = {"memory": [], "I/O": []}
    offset = 0
    index = 0
    while True:
        if index >= max_hobs:
            raise _header_error(f"more than {max_hobs} HOBs before END_OF_HOB_LIST", index, offset, "HobType")
        if offset + gh.size > size:
            stray = f" ({size - offset} stray bytes left)" if offset < size else ""
            raise _header_error(
                f"the HOB list ends at byte {size:#x} without an END_OF_HOB_LIST HOB{stray}", index, offset, "HobType"
            )
        header = gh.unpack(view, offset)
        hob_type, hob_length = header["HobType"], header["HobLength"]
        _check_header(hob_type, hob_length, header["Reserved"], index, offset, size, allowed_types)

        if hob_type == HobType.END_OF_HOB_LIST:
            assert phit is not None  # index 0 is the PHIT, checked above
            _check_overlaps(ranges)
            expected: dict[EndPointer, int] = {
                style: base_address + offset + slack for style, slack in _END_POINTER_SLACK.items()
            }
            style = next((s for s, address in expected.items() if address == phit.end_of_hob_list), None)
            if style is None:
                raise _field_error(
                    f"PHIT EfiEndOfHobList {phit.end_of_hob_list:#x} points neither at the END_OF_HOB_LIST HOB at "
                    f"{expected['edk2']:#x} (edk2) nor just past it at {expected['qemu']:#x} (QEMU)",
                    0,
                    0,
                    EFI_HOB_HANDOFF_INFO_TABLE,
                    "EfiEndOfHobList",
                )
            return HobList(hobs, base_address=base_address, size_bytes=offset + hob_length, end_pointer=style)

        record: Hob
        if hob_type == HobType.HANDOFF:
            record = phit = _parse_phit(view, offset)
        elif hob_type == HobType.RESOURCE_DESCRIPTOR:
            record = _parse_resource(view, offset, index, allowed_attributes, range_alignment, max_address)
            space = "memory" if record.is_memory else "I/O"
            ranges[space].append((record.start, record.end, index, offset))
        elif hob_type == HobType.MEMORY_ALLOCATION:
            record = _parse_memory_allocation(view, offset, index, hob_length, range_alignment)
        elif hob_type == HobType.GUID_EXTENSION:
            v = EFI_HOB_GUID_TYPE.unpack(view, offset)
            data = bytes(view[offset + EFI_HOB_GUID_TYPE.size : offset + hob_length])
            record = GuidHob(name=uuid.UUID(bytes_le=v["Name"]), data=data)
        elif hob_type in (HobType.FV, HobType.FV2, HobType.FV3):
            record = _parse_fv(view, offset, index, hob_type)
        elif hob_type == HobType.CPU:
            v = EFI_HOB_CPU.unpack(view, offset)
            if any(v["Reserved"]):
                raise _field_error("CPU HOB Reserved bytes must be zero", index, offset, EFI_HOB_CPU, "Reserved")
            record = CpuHob(size_of_memory_space=v["SizeOfMemorySpace"], size_of_io_space=v["SizeOfIoSpace"])
        else:
            record = RawHob(hob_type=hob_type, data=bytes(view[offset + gh.size : offset + hob_length]))
        hobs.append(record)
        offset += hob_length
        index += 1


def _check_header(
    hob_type: int,
    hob_length: int,
    reserved: int,
    index: int,
    offset: int,
    size: int,
    allowed_types: Collection[int] | None,
) -> None:
    """The generic-header rules every HOB obeys, then the size its type demands."""
    if hob_type == 0:
        raise _header_error("HobType 0 is not a HOB type (zeroed memory?)", index, offset, "HobType")
    if hob_length < EFI_HOB_GENERIC_HEADER.size:
        raise _header_error(
            f"HobLength {hob_length} is shorter than the 8-byte generic header", index, offset, "HobLength"
        )
    # edk2 steps by the raw HobLength, td-shim rounds it up to 8: an unaligned length means two readings.
    if hob_length % HOB_ALIGNMENT:
        raise _header_error(f"HobLength {hob_length} is not a multiple of 8", index, offset, "HobLength")
    if offset + hob_length > size:
        overrun = offset + hob_length - size
        raise _header_error(
            f"HobLength {hob_length} runs {overrun} bytes past the end of the HOB area", index, offset, "HobLength"
        )
    if reserved:
        raise _header_error(f"Reserved is {reserved:#x}, must be zero", index, offset, "Reserved")
    if (index == 0) != (hob_type == HobType.HANDOFF):
        what = f"the first HOB has type {hob_type:#06x}, not the PHIT" if index == 0 else "a second PHIT"
        raise _header_error(f"{what}: the PHIT must be the first HOB and only the first", index, offset, "HobType")
    framing = (HobType.HANDOFF, HobType.END_OF_HOB_LIST)
    if allowed_types is not None and hob_type not in framing and hob_type not in allowed_types:
        raise _header_error(f"HobType {hob_type:#06x} is not allowed in this HOB list", index, offset, "HobType")
    fixed = _FIXED_SIZE.get(hob_type)
    if fixed is not None and hob_length != fixed.size:
        name = HobType(hob_type).name
        raise _header_error(
            f"HobLength {hob_length} of a {name} HOB is not sizeof({fixed.c_name}) = {fixed.size}",
            index,
            offset,
            "HobLength",
        )
    minimum = _MINIMUM_SIZE.get(hob_type)
    if minimum is not None and hob_length < minimum.size:
        raise _header_error(
            f"HobLength {hob_length} is shorter than sizeof({minimum.c_name}) = {minimum.size}",
            index,
            offset,
            "HobLength",
        )


def _parse_resource(
    view: memoryview, offset: int, index: int, allowed_attributes: int, alignment: int | None, max_address: int | None
) -> ResourceHob:
    layout = EFI_HOB_RESOURCE_DESCRIPTOR
    v = layout.unpack(view, offset)
    err = _field_error
    rtype, attributes = v["ResourceType"], v["ResourceAttribute"]
    start, length = v["PhysicalStart"], v["ResourceLength"]
    if rtype not in ResourceType._value2member_map_:
        raise err(f"ResourceType {rtype:#x} is not a defined EFI_RESOURCE_TYPE", index, offset, layout, "ResourceType")
    if attributes & ~allowed_attributes:
        kind = "undefined" if attributes & ~RESOURCE_ATTRIBUTE_ALL else "disallowed"
        raise err(
            f"ResourceAttribute {attributes:#x} has {kind} bits {attributes & ~allowed_attributes:#x}",
            index,
            offset,
            layout,
            "ResourceAttribute",
        )
    if length == 0:
        raise err("ResourceLength is 0: an empty resource range", index, offset, layout, "ResourceLength")
    _check_range(
        start,
        length,
        index=index,
        hob_offset=offset,
        layout=layout,
        start_field="PhysicalStart",
        length_field="ResourceLength",
        what=f"{ResourceType(rtype).name} resource",
        alignment=alignment,
        max_address=max_address,
    )
    return ResourceHob(
        resource_type=ResourceType(rtype),
        attributes=ResourceAttribute(attributes),
        start=start,
        length=length,
        owner=uuid.UUID(bytes_le=v["Owner"]),
    )


def _parse_memory_allocation(
    view: memoryview, offset: int, index: int, hob_length: int, alignment: int | None
) -> MemoryAllocationHob:
    layout = EFI_HOB_MEMORY_ALLOCATION
    v = layout.unpack(view, offset)
    memory_type = v["AllocDescriptor.MemoryType"]
    if EFI_MAX_MEMORY_TYPE <= memory_type < EFI_OEM_MEMORY_TYPE_FIRST:
        raise _field_error(
            f"MemoryType {memory_type:#x} lies in the reserved EFI_MEMORY_TYPE range",
            index,
            offset,
            layout,
            "AllocDescriptor.MemoryType",
        )
    base, length = v["AllocDescriptor.MemoryBaseAddress"], v["AllocDescriptor.MemoryLength"]
    _check_range(
        base,
        length,
        index=index,
        hob_offset=offset,
        layout=layout,
        start_field="AllocDescriptor.MemoryBaseAddress",
        length_field="AllocDescriptor.MemoryLength",
        what="memory allocation",
        alignment=alignment,
    )
    return MemoryAllocationHob(
        base=base,
        length=length,
        memory_type=memory_type,
        name=uuid.UUID(bytes_le=v["AllocDescriptor.Name"]),
        data=bytes(view[offset + layout.size : offset + hob_length]),
    )


def _parse_fv(view: memoryview, offset: int, index: int, hob_type: int) -> FvHob | Fv2Hob | Fv3Hob:
    layout = {HobType.FV: EFI_HOB_FIRMWARE_VOLUME, HobType.FV2: EFI_HOB_FIRMWARE_VOLUME2}.get(
        HobType(hob_type), EFI_HOB_FIRMWARE_VOLUME3
    )
    v = layout.unpack(view, offset)
    base, length = v["BaseAddress"], v["Length"]
    _check_range(
        base,
        length,
        index=index,
        hob_offset=offset,
        layout=layout,
        start_field="BaseAddress",
        length_field="Length",
        what="firmware volume",
    )
    if hob_type == HobType.FV:
        return FvHob(base=base, length=length)
    names = {"fv_name": uuid.UUID(bytes_le=v["FvName"]), "file_name": uuid.UUID(bytes_le=v["FileName"])}
    if hob_type == HobType.FV2:
        return Fv2Hob(base=base, length=length, **names)
    return Fv3Hob(
        base=base,
        length=length,
        authentication_status=v["AuthenticationStatus"],
        extracted_fv=bool(v["ExtractedFv"]),
        **names,
    )


def _check_overlaps(ranges: dict[str, list[tuple[int, int, int, int]]]) -> None:
    """Two descriptors claiming the same address: e.g. RAM both added and unaccepted, a double-accept bait."""
    layout = EFI_HOB_RESOURCE_DESCRIPTOR
    for space, entries in ranges.items():
        widest: tuple[int, int, int, int] | None = None  # the earlier range reaching furthest
        for entry in sorted(entries):
            if widest is not None and entry[0] < widest[1]:
                first, second = sorted((widest, entry), key=lambda e: e[2])
                raise _field_error(
                    f"{space} range [{second[0]:#x}, {second[1]:#x}) of HOB[{second[2]}] overlaps "
                    f"[{first[0]:#x}, {first[1]:#x}) of HOB[{first[2]}]",
                    second[2],
                    second[3],
                    layout,
                    "PhysicalStart",
                )
            if widest is None or entry[1] > widest[1]:
                widest = entry
