"""Which Linux a bzImage is, and which acceptance behaviour follows from it.

The release comes from the image itself: the x86 boot protocol's setup header points at a NUL-terminated version
string (`kernel_version`, offset 0x20E, relative to 0x200; Documentation/arch/x86/boot.rst, protocol 2.00+). The
build configuration comes from the `config-RELEASE` file Debian installs beside it (`/boot/config-*`) when one is
there; otherwise it stays unknown and the run's own evidence decides (the stub installs the unaccepted-memory
table only when built with CONFIG_UNACCEPTED_MEMORY).

`kernel_profile` maps a release to the LinuxConfig of guest/linux.py. Each switch names the commit it follows:
- unaccepted memory at all: dcdfdd40fa82 "mm: Add support for unaccepted memory", v6.5; before it the stub
  leaves EFI type 15 out of e820 (setup_e820's default case) and that RAM is lost.
- 800f1059c99e (v6.14, "mm/page_alloc: fix memory accept before watermarks gets initialized"): with watermarks
  still zero, accept one MAX_PAGE_ORDER block per allocation. Backported to 6.12.y in March 2025; the first
  6.12.y carrying it is taken as 6.12.18 from that date (unverified); Debian's 6.12.117 has it.
- 0862438c9048 (2026-02, in 7.0): reserve_unaccepted covers the table's last page (TDs over 64 GiB whose size
  is not a multiple of 1 GiB no longer oops). Backported to 6.12.y: Debian's 6.12.117 has it (measured: on a
  67000M TD booted by OVMF 2025.02 with `memblock=debug` it adds and reserves both pages the table spans,
  0x7f774000-0x7f775fff, and runs to /init). The first 6.12.y carrying it is taken as 6.12.75, the first 6.12.y
  released after 6.18.14 (2026-02-26) which carries it (unverified).

What the stub allocates for the decompressed kernel is no kernel_profile switch: 6.12 and 7.2 compute it alike
(libstub x86-stub.c efi_decompress_kernel: ALIGN(max(output_len, kernel_total_size), CONFIG_PHYSICAL_ALIGN)),
but it is not the header's init_size, which also covers the legacy decompressor's in-place needs. Debian's 6.12
asks 56 MiB (its init_size rounded up, by coincidence); its 7.2 asks 60 MiB where init_size rounds to 62 MiB.
`stub_kernel_alloc` reads it from the image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from lazyaccept.errors import InputError
from lazyaccept.firmware.dxe.pe import parse_pe
from lazyaccept.firmware.loaders.services import KernelSizes, parse_setup_header
from lazyaccept.guest.linux import LinuxConfig
from lazyaccept.spec.linux_boot import read_setup_header
from lazyaccept.units import align_up

UNACCEPTED_MEMORY_SINCE = (6, 5)
WATERMARK_FIX_SINCE = (6, 14)
WATERMARK_FIX_6_12_STABLE = (6, 12, 18)  # assumed from the backport's date (see the module doc)
TABLE_RESERVATION_FIX_SINCE = (7, 0)
TABLE_RESERVATION_FIX_6_12_STABLE = (6, 12, 75)  # assumed from the backport's date (see the module doc)
_RELEASE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")
_DEBIAN_VERSION = re.compile(r" Debian (\d+)\.(\d+)\.(\d+)")  # Debian's ABI release "6.1.0-50" hides the sublevel


@dataclass(frozen=True)
class KernelImage:
    release: str  # "6.12.117+deb13-cloud-amd64"; "" when the image carries no version string
    banner: str  # the whole version string ("... (debian-kernel@lists.debian.org) #1 SMP ...")
    config: dict[str, str] | None = None  # CONFIG_* values from the config file beside the image
    config_source: str = ""  # where config came from

    @property
    def version(self) -> tuple[int, int, int] | None:
        m = _DEBIAN_VERSION.search(self.banner) or _RELEASE.match(self.release)
        return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else None

    def option(self, name: str) -> str | None:
        """A config option's value ("y", "m", a string), "n" when the config is known and lacks it, else None."""
        if self.config is None:
            return None
        return self.config.get(name, "n")


def read_release(data: bytes) -> tuple[str, str]:
    """(release, banner) from a bzImage's setup header; ("", "") when it has none."""
    header = read_setup_header(data)
    pointer = header["kernel_version"] if header else 0
    if not pointer:
        return "", ""
    start = 0x200 + pointer
    end = data.find(b"\0", start, start + 512)
    if start >= len(data) or end < 0:
        return "", ""
    banner = data[start:end].decode("ascii", "replace")
    return (banner.split()[0] if banner.split() else ""), banner


def parse_config(text: str) -> dict[str, str]:
    """A kernel .config: CONFIG_X=value lines; '# CONFIG_X is not set' and everything else ignored."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            name, _, value = line.partition("=")
            out[name] = value.strip().strip('"')
    return out


def config_candidates(path: Path, release: str) -> list[Path]:
    """Where a distribution puts the config of the kernel at path: beside it as config-RELEASE (/boot), or in its
    modules tree as `config` (usr/lib/modules/RELEASE/)."""
    if not release:
        return []
    return [path.parent / f"config-{release}", path.parent / "config"]


def read_kernel_image(data: bytes, path: Path | None = None) -> KernelImage:
    release, banner = read_release(data)
    if path is not None:
        for candidate in config_candidates(path, release):
            try:
                text = candidate.read_text(errors="replace")
            except OSError:
                continue
            return KernelImage(release, banner, parse_config(text), str(candidate))
    return KernelImage(release, banner)


@dataclass
class KernelProfile:
    name: str  # "linux-6.12", "linux-7.2", ...
    config: LinuxConfig
    unaccepted_support: bool | None  # None: neither the version nor the config decides
    why: list[str] = field(default_factory=list)  # one line per choice, with its source

    @property
    def summary(self) -> str:
        """"linux-6.1 without unaccepted-memory support" and the like, for reports."""
        return self.name + (" without unaccepted-memory support" if self.unaccepted_support is False else "")


def kernel_profile(image: KernelImage, *, table_installed: bool | None = None) -> KernelProfile:
    """The acceptance behaviour of this kernel. `table_installed` is the run's evidence: whether the stub installed
    LINUX_EFI_UNACCEPTED_MEM_TABLE (None: the run had no type-15 memory to show it)."""
    v = image.version
    why: list[str] = []
    support: bool | None = None
    if v is not None and v[:2] < UNACCEPTED_MEMORY_SINCE:
        support = False
        why.append(f"Linux {'.'.join(map(str, v))} predates unaccepted-memory support (v6.5, dcdfdd40fa82)")
    elif image.option("CONFIG_UNACCEPTED_MEMORY") is not None:
        support = image.option("CONFIG_UNACCEPTED_MEMORY") == "y"
        why.append(f"CONFIG_UNACCEPTED_MEMORY={image.option('CONFIG_UNACCEPTED_MEMORY')} ({image.config_source})")
    if table_installed is not None and support is not False:
        if support is None:
            why.append("the stub " + ("installed" if table_installed else "did not install")
                       + " the unaccepted-memory table")
        support = support if support is not None else table_installed
    if image.option("CONFIG_INTEL_TDX_GUEST") == "n":
        why.append("CONFIG_INTEL_TDX_GUEST is not set: this kernel has no #VE handler, so on a real TD the first "
                   "port I/O, MMIO or #VE-raising CPUID/MSR access is fatal; only its memory handling is modelled")
    if v is None:
        name = "linux (version unknown)"
        why.append("the image carries no version string: the newest behaviour is assumed")
        v = (99, 0, 0)
    else:
        name = f"linux-{v[0]}.{v[1]}"
    watermark_fix = v[:2] >= WATERMARK_FIX_SINCE or (v[:2] == (6, 12) and v >= WATERMARK_FIX_6_12_STABLE)
    table_fix = v[:2] >= TABLE_RESERVATION_FIX_SINCE or (v[:2] == (6, 12) and v >= TABLE_RESERVATION_FIX_6_12_STABLE)
    if support is not False:
        why.append(("with" if watermark_fix else "without") + " the pre-watermark accept (800f1059c99e)")
        why.append(("with" if table_fix else "without") + " the table-reservation fix (0862438c9048)")
    config = LinuxConfig(
        unaccepted_memory=support is not False,
        watermark_zero_fix=watermark_fix,
        table_reservation_fix=table_fix,
        deferred_struct_page_init=image.option("CONFIG_DEFERRED_STRUCT_PAGE_INIT") != "n",
    )
    return KernelProfile(name, config, support, why)


def stub_kernel_alloc(data: bytes, init_size: int) -> int:
    """The bytes the EFI stub allocates for the decompressed kernel: max(output_len, kernel_total_size) rounded up to
    the header's kernel_alignment. output_len is the u32 the build appends to the payload (the decompressed size);
    kernel_total_size (VO__end - VO__text) is at most init_size (header.S takes the larger of the two), so only when
    output_len rounds below init_size does it need reading, from the decompressed kernel's _text and _end. Without
    a readable payload: init_size rounded up, the old estimate."""
    header = read_setup_header(data) or {}
    align = header.get("kernel_alignment") or (2 << 20)
    fallback = align_up(init_size, align)
    start = ((header.get("setup_sects") or 4) + 1) * 512 + header.get("payload_offset", 0)
    length = header.get("payload_length", 0)
    if length < 8 or start + length > len(data):
        return fallback
    output_len = int.from_bytes(data[start + length - 4 : start + length], "little")
    if align_up(output_len, align) >= init_size:
        return align_up(output_len, align)
    from lazyaccept.guest.kallsyms import read_kallsyms, vmlinux_from_bzimage

    try:
        symbols = read_kallsyms(vmlinux_from_bzimage(data))
    except InputError:
        return fallback
    text, end = symbols.address("_text"), symbols.address("_end")
    if text is None or end is None or end <= text:
        return fallback
    return align_up(max(output_len, end - text), align)


def kernel_sizes(data: bytes, source: str = "") -> KernelSizes:
    """The sizes a loader and the stub work with, from a bzImage's bytes (InputError when it has no setup header or
    is no PE image): the file, init_size, LoadImage's SizeOfImage, and the stub's own allocation for the
    decompressed kernel (stub_kernel_alloc)."""
    init_size = parse_setup_header(data).init_size
    pe = parse_pe(data, source)
    return KernelSizes(len(data), init_size, pe.size_of_image, pe.section_alignment, stub_kernel_alloc(data, init_size))
