"""The Python firmware as one edk2 build and release at a time: a named profile per build and release.

Every behaviour that differs between edk2 builds or releases reads its profile instead of a constant of its own:
the memory type information bins (DXE), GetMemoryMap's size probe (DXE), SEC's sub-2 MiB tail, the memory SEC and
PEI reserve for DXE (allocation HOBs), and QEMU direct boot's command line. Each field names the edk2 file and
tag (or commit) it comes from; "master c5aa7e7d" is edk2 of 2026-08-06, what Debian's 2026.08 packages build.

The profile of an image is read from the image (`detect`): its build from its firmware volumes (OvmfPkgX64 has
a PEIFV, the PEI-less IntelTdxX64 a non-CC FV instead), its release from the firmware version string
(PcdFirmwareVersionString, UTF-16 in UiApp and SmbiosPlatformDxe); an image whose volumes cannot be read is
matched by its TDVF metadata (each build's SEC/PEI temporary RAM is a TEMP_MEM section at its own address).
"""

from __future__ import annotations

import functools
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from lazyaccept.errors import ConfigError, InputError
from lazyaccept.spec.efi import EfiMemoryType as M
from lazyaccept.vmm.tdvf import TdvfMetadata, TdvfSectionType

MEMFD_BASE = 0x800000  # OvmfPkg/Include/Fdf/OvmfPkgDefines.fdf.inc MEMFD_BASE_ADDRESS (all releases here)


@dataclass(frozen=True)
class Reservation:
    """One memory allocation HOB the firmware builds before DXE, with where edk2 builds it."""

    what: str
    base: int
    size: int
    memory_type: int
    source: str

    @property
    def end(self) -> int:
        return self.base + self.size


@dataclass(frozen=True)
class Edk2Profile:
    name: str
    build: str  # "OvmfPkgX64" (PlatformPei) or "IntelTdxX64" (PEI-less)
    release: str  # "2025.02": the Debian package version's edk2 release
    edk2: str  # the edk2 tag or commit the fields below are read from
    # The memory type information HOB, in table order, in pages.
    memory_type_information: tuple[tuple[int, int], ...]
    memory_type_information_source: str
    # CoreGetMemoryMap's size probe counts GCD unaccepted entries: f80a406aa9 (first in edk2-stable202511).
    probe_counts_unaccepted: bool
    # CoreGetMemoryMap splits free memory at the edges of the special memory type bins, and its size probe counts
    # two more descriptors per bin for that: d419725b23 (first in edk2-stable202602). Before it a free entry took
    # its bin's type only when the whole entry lay inside the bin (edk2-stable202502..202511 Page.c).
    splits_free_bins: bool
    # BspApAcceptMemoryResourceRange has CPU 0 accept the sub-2 MiB tail: b15f98e68f (first in edk2-stable202511).
    sec_accepts_tail: bool
    # Allocation HOBs before DXE at fixed addresses (PlatformTdxPublishRamRegions, PeiFvInitialization).
    reservations: tuple[Reservation, ...]
    # PcdOvmfSecPeiTempRamBase/Size: a TEMP_MEM section of the image's TDVF metadata (the metadata-shape match).
    sec_pei_temp_ram: tuple[int, int]
    # PEI-less builds decompress DXEFV (and NCCFV) into pages allocated from the HOB list's free memory
    # (PeilessStartupLib/DxeLoad.c -> PrePiLib FwVol.c FfsProcessFvFile: AllocatePages(DstBufferSize) + 1 page).
    phit_fv_buffer: int = 0
    # X86QemuLoadImageLib QemuLoadKernelImage: " initrd=initrd" appended (edk2-stable202502) or "initrd=initrd "
    # prefixed (a2ac0fea49, first in edk2-stable202508).
    initrd_option_prefixed: bool = True
    # UEFI Secure Boot is on from the first boot: the image's built-in variable store has Microsoft's keys enrolled
    # (Debian's OVMF.inteltdx.ms.fd), so LoadImage refuses an image db does not vouch for. The Python firmware
    # models no Secure Boot: with this profile it boots unsigned images the real image refuses.
    secure_boot: bool = False
    # TdxDxe's MADT multiprocessor wakeup structure: version 0, 16 bytes (ACPI 6.4) up to edk2-stable202505; version
    # 1, 24 bytes with the relocated AP loop's reset vector (ACPI 6.6) from 406f42cb74 (first in edk2-stable202508).
    madt_wakeup_version: int = 0

    def load_options(self, cmdline: str, has_initrd: bool) -> str:
        """The kernel's LoadOptions as QEMU direct boot sets them."""
        if not has_initrd:
            return cmdline
        return "initrd=initrd " + cmdline if self.initrd_option_prefixed else cmdline + " initrd=initrd"

    def reservation(self, what: str) -> Reservation | None:
        return next((r for r in self.reservations if r.what == what), None)


# PlatformInitLib/Platform.c PlatformMemMapInitialization marks Q35's MMCONFIG (PcdPciExpressBaseAddress, 256 MiB)
# as an uncacheable EFI_RESOURCE_MEMORY_RESERVED HOB plus an EfiReservedMemoryType allocation HOB, "Linux insists
# that the MMCONFIG area be marked ... as reserved memory". Both builds run it (PlatformPei, PeilessStartup), the
# same in edk2-stable202502 and master c5aa7e7d, whenever the host bridge is Q35's (always, for a QEMU TD).
PCIE_MMCONFIG = Reservation(
    "Q35 MMCONFIG",
    0xE0000000,
    256 << 20,
    M.EfiReservedMemoryType,
    "OvmfPkg/Library/PlatformInitLib/Platform.c PlatformMemMapInitialization (edk2-stable202502, c5aa7e7d)",
)


def _memfd(offset: int) -> int:
    return MEMFD_BASE + offset


# OvmfPkg/PlatformPei/MemTypeInfo.c mMemoryTypeInformation (NVS, reclaim, reserved, RT code, RT data) with the
# PcdMemoryTypeEfi* values of OvmfPkg/OvmfPkgX64.dsc: the same in edk2-stable202502 and master c5aa7e7d.
_OVMF_X64_BINS = (
    (M.EfiACPIMemoryNVS, 0x80),
    (M.EfiACPIReclaimMemory, 0x12),
    (M.EfiReservedMemoryType, 0x80),
    (M.EfiRuntimeServicesCode, 0x100),
    (M.EfiRuntimeServicesData, 0x100),
)
# OvmfPkg/Library/PeilessStartupLib/PeilessStartup.c mDefaultMemoryTypeInformation (unchanged 202502..c5aa7e7d).
_PEILESS_BINS = (
    (M.EfiACPIMemoryNVS, 0x004),
    (M.EfiACPIReclaimMemory, 0x008),
    (M.EfiReservedMemoryType, 0x004),
    (M.EfiRuntimeServicesData, 0x024),
    (M.EfiRuntimeServicesCode, 0x030),
    (M.EfiBootServicesCode, 0x180),
    (M.EfiBootServicesData, 0xF00),
)

_PUBLISH = "OvmfPkg/Library/PlatformInitLib/IntelTdx.c PlatformTdxPublishRamRegions"
_PEI_FV = "OvmfPkg/PlatformPei/Fv.c PeiFvInitialization"


def _tdx_regions(tag: str, fdf: str, work_area_type: int) -> tuple[Reservation, ...]:
    """The reset vector's page tables (PcdOvmfSecPageTables), the AP mailbox (PcdOvmfSecGhcbBackup) and the TDX
    work area (PcdOvmfWorkArea): MEMFD offsets 0x0+0x6000, 0xC000+0x1000, 0xB000+0x1000 in every fdf here."""
    return (
        Reservation("SEC page tables", _memfd(0x0), 0x6000, M.EfiACPIMemoryNVS, f"{_PUBLISH}, {fdf} ({tag})"),
        Reservation("AP mailbox", _memfd(0xC000), 0x1000, M.EfiACPIMemoryNVS, f"{_PUBLISH}, {fdf} ({tag})"),
        # EfiBootServicesData up to edk2-stable202505; ACPI NVS from 406f42cb74 (edk2-stable202508).
        Reservation("TDX work area", _memfd(0xB000), 0x1000, work_area_type, f"{_PUBLISH}, {fdf} ({tag})"),
    )


def _fv_regions(tag: str, fdf: str, pei: tuple[int, int], dxe: tuple[int, int]) -> tuple[Reservation, ...]:
    # S3 is off in a TD, so both are EfiBootServicesData (PcdOvmfPeiMemFvBase/Size, PcdOvmfDxeMemFvBase/Size).
    return (
        Reservation("PEIFV", _memfd(pei[0]), pei[1], M.EfiBootServicesData, f"{_PEI_FV}, {fdf} ({tag})"),
        Reservation("DXEFV", _memfd(dxe[0]), dxe[1], M.EfiBootServicesData, f"{_PEI_FV}, {fdf} ({tag})"),
    )


OVMF_X64_2025_02 = Edk2Profile(
    name="ovmf-x64-2025.02",
    build="OvmfPkgX64",
    release="2025.02",
    edk2="edk2-stable202502",
    memory_type_information=_OVMF_X64_BINS,
    memory_type_information_source="OvmfPkg/PlatformPei/MemTypeInfo.c, OvmfPkg/OvmfPkgX64.dsc (edk2-stable202502)",
    probe_counts_unaccepted=False,
    splits_free_bins=False,
    sec_accepts_tail=False,
    reservations=_tdx_regions("edk2-stable202502", "OvmfPkg/OvmfPkgX64.fdf", M.EfiBootServicesData)
    + _fv_regions("edk2-stable202502", "OvmfPkg/OvmfPkgX64.fdf", (0x20000, 0xE0000), (0x100000, 0xE80000)),
    sec_pei_temp_ram=(_memfd(0x11000), 0xF000),
    initrd_option_prefixed=False,
)
OVMF_X64_2026_08 = Edk2Profile(
    name="ovmf-x64-2026.08",
    build="OvmfPkgX64",
    release="2026.08",
    edk2="master c5aa7e7d",
    memory_type_information=_OVMF_X64_BINS,
    memory_type_information_source="OvmfPkg/PlatformPei/MemTypeInfo.c, OvmfPkg/OvmfPkgX64.dsc (c5aa7e7d)",
    probe_counts_unaccepted=True,
    splits_free_bins=True,
    sec_accepts_tail=True,
    reservations=_tdx_regions("c5aa7e7d", "OvmfPkg/Include/Fdf/MemFd.fdf.inc", M.EfiACPIMemoryNVS)
    # PEIFV moved above the early debug log by a04994ff64 (edk2-stable202511).
    + _fv_regions("c5aa7e7d", "OvmfPkg/Include/Fdf/MemFd.fdf.inc", (0x30000, 0xD0000), (0x100000, 0xE80000)),
    sec_pei_temp_ram=(_memfd(0x14000), 0xC000),
    madt_wakeup_version=1,
)
INTELTDX_2026_08 = Edk2Profile(
    name="inteltdx-2026.08",
    build="IntelTdxX64",
    release="2026.08",
    edk2="master c5aa7e7d",
    memory_type_information=_PEILESS_BINS,
    memory_type_information_source="OvmfPkg/Library/PeilessStartupLib/PeilessStartup.c (c5aa7e7d)",
    probe_counts_unaccepted=True,
    splits_free_bins=True,
    sec_accepts_tail=True,
    # PeilessStartup -> InitializePlatform -> PlatformTdxPublishRamRegions; no PEIFV, and DXEFV is not put at
    # PcdOvmfDxeMemFvBase but into HOB pages (phit_fv_buffer).
    reservations=_tdx_regions("c5aa7e7d", "OvmfPkg/IntelTdx/IntelTdxX64.fdf", M.EfiACPIMemoryNVS),
    sec_pei_temp_ram=(_memfd(0x10000), 0x10000),
    # The decompressed FVMAIN_COMPACT section: DXEFV 0x700000 + NCCFV 0x500000 (IntelTdxX64.fdf PcdOvmfDxeMemFvSize,
    # PcdOvmfDxeNonCcFvSize) plus FfsProcessFvFile's extra page; the FV image section headers are not counted.
    phit_fv_buffer=0x700000 + 0x500000 + 0x1000,
    secure_boot=True,
    madt_wakeup_version=1,
)

PROFILES: dict[str, Edk2Profile] = {p.name: p for p in (OVMF_X64_2025_02, OVMF_X64_2026_08, INTELTDX_2026_08)}
PROFILE_NAMES = tuple(PROFILES)
DEFAULT_PROFILE = OVMF_X64_2025_02  # the built-in layout is Debian's OVMF.fd 2025.02


def get_profile(name: str) -> Edk2Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown edk2 profile {name!r}: choose one of {', '.join(PROFILE_NAMES)}") from None


@dataclass(frozen=True)
class ProfileChoice:
    profile: Edk2Profile
    why: str


# FV names of OvmfPkgX64.fdf / IntelTdxX64.fdf ([FV.PEIFV] FvNameGuid, [FV.NCCFV] FvNameGuid).
PEIFV_NAME = uuid.UUID("6938079b-b503-4e3d-9d24-b28337a25806")
NCCFV_NAME = uuid.UUID("ae047c6d-bce9-426c-ae03-a68e3b8a0488")
_VERSION_RE = re.compile(rb"2\x000\x00(\d\x00\d\x00)\.\x00(\d\x00\d\x00)")  # UTF-16 "20YY.MM"
_VERSION_FILES = ("UiApp", "SmbiosPlatformDxe")


@dataclass(frozen=True)
class ImageFacts:
    build: str | None
    version: str | None  # "2025.02"
    peifv_size: int | None


def image_facts(data: bytes) -> ImageFacts:
    """The build and the release an image's firmware volumes say; InputError if it has none."""
    from lazyaccept.firmware.pi.fv import volumes_in_image

    volumes = volumes_in_image(data)
    names = {v.name: v for v in volumes if v.name is not None}
    build = "OvmfPkgX64" if PEIFV_NAME in names else "IntelTdxX64" if NCCFV_NAME in names else None
    version = None
    for v in volumes:
        for f in v.files:
            if f.ui_name not in _VERSION_FILES:
                continue
            for _, image in f.images:
                m = _VERSION_RE.search(image)
                if m:
                    version = "20" + m.group(1).decode("utf-16-le") + "." + m.group(2).decode("utf-16-le")
                    break
            if version:
                break
        if version:
            break
    peifv = names.get(PEIFV_NAME)
    return ImageFacts(build, version, peifv.length if peifv else None)


@functools.lru_cache(maxsize=8)
def _facts_of(path: str, _mtime_ns: int, _size: int) -> ImageFacts | None:
    try:
        return image_facts(Path(path).read_bytes())
    except (InputError, OSError):
        return None


def _by_metadata(metadata: TdvfMetadata) -> Edk2Profile | None:
    temp = {(s.memory_base, s.memory_size) for s in metadata.of_type(TdvfSectionType.TEMP_MEM)}
    return next((p for p in PROFILES.values() if p.sec_pei_temp_ram in temp), None)


def detect(metadata: TdvfMetadata) -> ProfileChoice:
    """The profile of the image the metadata came from (see the module docstring)."""
    if metadata.source in ("", "builtin"):
        return ProfileChoice(DEFAULT_PROFILE, "the built-in layout is Debian's OVMF.fd 2025.02")
    facts = None
    try:
        st = os.stat(metadata.source)
        facts = _facts_of(metadata.source, st.st_mtime_ns, st.st_size)
    except OSError:
        pass
    if facts is not None and facts.build is not None:
        candidates = sorted((p for p in PROFILES.values() if p.build == facts.build), key=lambda p: p.release)
        if facts.version is not None:
            older = [p for p in candidates if p.release <= facts.version]
            chosen = older[-1] if older else candidates[0]
            exact = "" if chosen.release == facts.version else f", nearest profile to {facts.version}"
            return ProfileChoice(chosen, f"{facts.build} {facts.version} from the image's firmware version{exact}")
        sized = [p for p in candidates if (r := p.reservation("PEIFV")) is not None and r.size == facts.peifv_size]
        if sized:
            why = f"{facts.build} with a {facts.peifv_size:#x}-byte PEIFV (no version string)"
            return ProfileChoice(sized[-1], why)
        if candidates:
            return ProfileChoice(candidates[-1], f"{facts.build} (no version string): its newest profile")
    shaped = _by_metadata(metadata)
    if shaped is not None:
        return ProfileChoice(
            shaped, f"TDVF metadata: SEC temporary RAM at {shaped.sec_pei_temp_ram[0]:#x} as in {shaped.build} "
            f"{shaped.release}"
        )
    return ProfileChoice(DEFAULT_PROFILE, "neither the image's volumes nor its TDVF metadata name a release: default")


def resolve(name: str | None, metadata: TdvfMetadata) -> ProfileChoice:
    """The profile the user named, else the image's."""
    if name is None:
        return detect(metadata)
    profile = get_profile(name)
    seen = detect(metadata).profile
    other = "" if seen == profile else f" (the image reads as {seen.name})"
    return ProfileChoice(profile, f"named by the user{other}")
