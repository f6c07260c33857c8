"""Build a TD as QEMU does: RAM, the TDVF sections ADDed, and the TD HOB written into the TD_HOB section.

Sources: target/i386/kvm/tdx.c (tdx_finalize_vm: sections ADDed through KVM_TDX_INIT_MEM_REGION, measured only
with MR_EXTEND), hw/i386/tdvf-hob.c (tdvf_hob_create: PHIT with its EfiMemory* fields zero, one resource
descriptor per RAM entry in address order, END_OF_HOB_LIST; overflowing the section is fatal, "TD_HOB
overrun"), hw/i386/tdvf.c (the image is mapped at 4 GiB minus its size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from lazyaccept.errors import ConfigError
from lazyaccept.spec.pi_hob import (
    EFI_HOB_HANDOFF_INFO_TABLE,
    EFI_HOB_HANDOFF_TABLE_VERSION,
    EFI_HOB_RESOURCE_DESCRIPTOR,
    END_OF_HOB_LIST,
    TDVF_RAM_ATTRIBUTES,
    BootMode,
    HobType,
    ResourceType,
    hob_header,
)
from lazyaccept.tdx.costs import HostProfile, resolve_profile
from lazyaccept.tdx.module import TdxModule
from lazyaccept.units import format_size
from lazyaccept.vmm.layout import Q35Split, RamEntry, RamKind, q35_split, td_ram_entries
from lazyaccept.vmm.tdvf import TdvfMetadata, load_firmware

MAX_VCPUS = 4096


class HobConvention(Enum):
    """How the VMM describes pending RAM in the TD HOB."""

    QEMU = "qemu"  # pending RAM as EFI_RESOURCE_MEMORY_UNACCEPTED (type 7), added pieces as SYSTEM_MEMORY
    # The older convention Cloud Hypervisor still writes: all RAM as SYSTEM_MEMORY, no type 7; the firmware must
    # know from its own metadata which pieces were added (td-shim does this). lazyaccept keeps q35's memory
    # layout for it so that the two conventions can be compared on the same TD.
    CLOUD_HYPERVISOR = "cloud-hypervisor"


@dataclass(frozen=True)
class TdConfig:
    ram_size: int
    vcpus: int = 1
    firmware_path: str | None = None  # None: the built-in copy of Debian OVMF.fd's metadata
    profile: HostProfile | str = "kvm-2m"
    hob_convention: HobConvention = HobConvention.QEMU
    max_ram_below_4g: int | None = None
    gpa_width: int = 52

    def validate(self) -> None:
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise ConfigError(f"invalid vCPU count {self.vcpus}: must be between 1 and {MAX_VCPUS}")


@dataclass
class Td:
    """A built TD: the TDX module holding its pages, what the VMM laid out, and the TD HOB it wrote."""

    config: TdConfig
    tdx: TdxModule
    firmware: TdvfMetadata
    split: Q35Split
    ram_entries: list[RamEntry]
    hob_base: int
    hob_bytes: bytes
    notes: list[str] = field(default_factory=list)

    @property
    def ram_size(self) -> int:
        return self.config.ram_size

    @property
    def vmm_build_ns(self) -> int:
        return self.tdx.vmm.build_ns


def td_hob_resources(entries: list[RamEntry], convention: HobConvention) -> list[tuple[ResourceType, int, int]]:
    """tdvf_hob_create's resource descriptors, one per RAM entry: (type, start, length)."""
    out = []
    for e in entries:
        pending = e.kind == RamKind.UNACCEPTED and convention == HobConvention.QEMU
        out.append((ResourceType.MEMORY_UNACCEPTED if pending else ResourceType.SYSTEM_MEMORY, e.start, e.size))
    return out


def encode_td_hob(resources: list[tuple[ResourceType, int, int]], *, base_address: int, capacity: int) -> bytes:
    """The TD HOB as tdvf-hob.c writes it: PHIT (EfiMemory* zero, EfiEndOfHobList just past the END HOB), the
    resource descriptors with TDVF_RAM_ATTRIBUTES, END_OF_HOB_LIST. Too big for the section: QEMU's fatal error."""
    phit, desc, end = EFI_HOB_HANDOFF_INFO_TABLE, EFI_HOB_RESOURCE_DESCRIPTOR, END_OF_HOB_LIST
    total = phit.size + len(resources) * desc.size + end.size
    if total > capacity:
        raise ConfigError(
            f"TD_HOB overrun: the HOB list ({len(resources) + 2} HOBs) needs {total:#x} bytes "
            f"but the area at {base_address:#x} holds {capacity:#x}"
        )
    out = [
        phit.pack(
            hob_header(HobType.HANDOFF, phit.size),
            Version=EFI_HOB_HANDOFF_TABLE_VERSION,
            BootMode=BootMode.BOOT_WITH_FULL_CONFIGURATION,
            EfiEndOfHobList=base_address + total,
        )
    ]
    for kind, start, length in resources:
        out.append(
            desc.pack(
                hob_header(HobType.RESOURCE_DESCRIPTOR, desc.size),
                ResourceType=kind,
                ResourceAttribute=TDVF_RAM_ATTRIBUTES,
                PhysicalStart=start,
                ResourceLength=length,
            )
        )
    out.append(end.pack(HobType=HobType.END_OF_HOB_LIST, HobLength=end.size))
    return b"".join(out)


def build_td(config: TdConfig, firmware: TdvfMetadata | None = None, image: bytes | None = None) -> Td:
    """Lay out and build the TD; the returned TD's pages are the TDX module's truth before the guest runs."""
    config.validate()
    if firmware is None:
        firmware = load_firmware(config.firmware_path)
        if config.firmware_path is not None and image is None:
            image = Path(config.firmware_path).read_bytes()
    profile = resolve_profile(config.profile) if isinstance(config.profile, str) else config.profile
    split = q35_split(config.ram_size, config.max_ram_below_4g)
    entries = td_ram_entries(split, firmware)
    tdx = TdxModule(profile, num_vcpus=config.vcpus, gpa_width=config.gpa_width)
    if split.below_4g + split.above_4g > tdx.private_limit:
        raise ConfigError(f"{format_size(config.ram_size)} of RAM does not fit a {config.gpa_width}-bit GPA space")
    for start, size in split.e820_ram():
        tdx.add_ram(start, size)

    hob_section = firmware.td_hob
    hob_bytes = encode_td_hob(
        td_hob_resources(entries, config.hob_convention),
        base_address=hob_section.memory_base,
        capacity=hob_section.memory_size,
    )

    # tdx_finalize_vm: every section is ADDed (BFV/CFV with the image's bytes at the ROM address), TD_HOB with
    # the HOB list QEMU wrote into it; TDH.MR.EXTEND only for MR_EXTEND sections.
    for section in firmware.sections:
        data = b""
        if section is hob_section:
            data = hob_bytes
        elif section.from_image and image is not None:
            data = bytes(image[section.raw_offset : section.raw_offset + section.raw_size])
        tdx.add(section.memory_base, section.memory_size, data=data, measured=section.measured)
    tdx.finalize()  # tdx_finalize_vm's KVM_TDX_FINALIZE_VM: TDH.MR.FINALIZE
    return Td(config, tdx, firmware, split, entries, hob_section.memory_base, hob_bytes)
