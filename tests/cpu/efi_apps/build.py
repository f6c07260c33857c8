"""Build an EFI test application (C, Debian's mingw-w64) that QEMU's -kernel also takes: after the link, a minimal
Linux setup header is written into the PE file, as a bzImage carries one next to its PE header.

Real OVMF starts a payload only through QEMU's direct boot: QEMU's x86_load_linux (hw/i386/x86-common.c, QEMU 9.2)
wants "HdrS" at 0x202 and, for the protected-mode path fw_cfg.py models, boot protocol 2.02 or later with
LOADED_HIGH; it splits the file into setup ((setup_sects + 1) * 512 bytes, patching cmd_line_ptr, type_of_loader,
loadflags, heap_end_ptr and the ramdisk fields in it) and kernel. OVMF's QemuKernelLoaderFsDxe joins the two again
as the "kernel" file and X86QemuLoadImageLib LoadImage()s it as a PE image.

So the setup header (0x1F1..0x26C, Documentation/arch/x86/boot.rst) must hold no PE bytes: the linker is asked for
4 KiB file alignment, which makes SizeOfHeaders 0x1000, and the PE headers move from the DOS stub's e_lfanew to
PE_HEADER_AT, past the setup header. The setup part QEMU cuts off is exactly those 4 KiB of headers.

    python tests/cpu/efi_apps/build.py SOURCE.c OUT.efi
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

from lazyaccept.spec.linux_boot import SETUP_HEADER_MAGIC, SETUP_HEADER_OFFSET, field_offset, read_setup_header

CC = "x86_64-w64-mingw32-gcc"
CFLAGS = ["-O2", "-ffreestanding", "-fno-stack-protector", "-fno-stack-check", "-mno-red-zone", "-nostdlib",
          "-shared", "-Wl,--subsystem,10", "-e", "efi_main", "-s",
          "-Wl,--file-alignment,0x1000", "-Wl,--section-alignment,0x1000"]
PE_HEADER_AT = 0x280  # 8-aligned, past the setup header's end (0x26C)
SETUP_END = 0x26C
SECTOR = 512
BOOT_PROTOCOL = 0x20F  # 2.15, as Linux 6.x declares; QEMU needs >= 2.02 for its high-load path
LOADED_HIGH = 0x01  # loadflags: the protected-mode part goes at 1 MiB (QEMU's prot_addr 0x100000)
BOOT_FLAG = 0xAA55
PE_SIGNATURE = b"PE\0\0"
COFF = struct.Struct("<HHIIIHH")  # Machine, NumberOfSections, ..., SizeOfOptionalHeader, Characteristics
SIZE_OF_HEADERS_AT = 60  # in the optional header (PE32+)
SECTION_HEADER_SIZE = 40


class BuildError(Exception):
    pass


def _u32(data: bytes | bytearray, at: int) -> int:
    return int(struct.unpack_from("<I", data, at)[0])


def add_linux_setup_header(pe: bytes) -> bytes:
    """The PE image with its headers moved to PE_HEADER_AT and a setup header at 0x1F1 QEMU accepts."""
    if pe[:2] != b"MZ":
        raise BuildError("not a PE image (no MZ)")
    lfanew = _u32(pe, 0x3C)
    if pe[lfanew : lfanew + 4] != PE_SIGNATURE:
        raise BuildError(f"no PE signature at e_lfanew {lfanew:#x}")
    _machine, sections, *_rest, optional_size, _chars = COFF.unpack_from(pe, lfanew + 4)
    optional = lfanew + 4 + COFF.size
    headers_len = 4 + COFF.size + optional_size + sections * SECTION_HEADER_SIZE
    size_of_headers = _u32(pe, optional + SIZE_OF_HEADERS_AT)
    first_raw = min(
        (_u32(pe, optional + optional_size + i * SECTION_HEADER_SIZE + 20) for i in range(sections)), default=len(pe)
    )
    if PE_HEADER_AT + headers_len > min(size_of_headers, first_raw or len(pe)):
        raise BuildError(f"PE headers ({headers_len} bytes) do not fit between {PE_HEADER_AT:#x} and "
                         f"SizeOfHeaders {size_of_headers:#x}: link with a larger file alignment")
    if size_of_headers % SECTOR or size_of_headers < 2 * SECTOR:
        raise BuildError(f"SizeOfHeaders {size_of_headers:#x} is not whole setup sectors")
    out = bytearray(pe)
    moved = bytes(pe[lfanew : lfanew + headers_len])
    out[0x40:size_of_headers] = bytes(size_of_headers - 0x40)  # the DOS stub and the old headers go
    out[PE_HEADER_AT : PE_HEADER_AT + headers_len] = moved
    struct.pack_into("<I", out, 0x3C, PE_HEADER_AT)

    def put(name: str, fmt: str, value: int | bytes) -> None:
        struct.pack_into("<" + fmt, out, field_offset(name), value)

    setup_sects = size_of_headers // SECTOR - 1  # the setup part is the PE headers, the kernel part the sections
    put("setup_sects", "B", setup_sects)
    put("syssize", "I", (len(out) - size_of_headers + 15) // 16)
    put("boot_flag", "H", BOOT_FLAG)
    put("header", "4s", SETUP_HEADER_MAGIC)
    put("version", "H", BOOT_PROTOCOL)
    put("loadflags", "B", LOADED_HIGH)
    put("initrd_addr_max", "I", 0x7FFFFFFF)
    put("cmdline_size", "I", 0x7FF)
    assert SETUP_HEADER_OFFSET < SETUP_END <= PE_HEADER_AT
    return bytes(out)


def check_pe(pe: bytes) -> None:
    """What OVMF's PE loader and QEMU's x86_load_linux read: e_lfanew's PE header, sections past SizeOfHeaders,
    the setup header with its protocol, and a setup part shorter than the file."""
    lfanew = _u32(pe, 0x3C)
    if pe[lfanew : lfanew + 4] != PE_SIGNATURE:
        raise BuildError("PE signature lost")
    _machine, sections, *_rest, optional_size, _chars = COFF.unpack_from(pe, lfanew + 4)
    optional = lfanew + 4 + COFF.size
    size_of_headers = _u32(pe, optional + SIZE_OF_HEADERS_AT)
    if lfanew < SETUP_END:
        raise BuildError(f"PE header at {lfanew:#x} overlaps the setup header")
    for i in range(sections):
        raw = _u32(pe, optional + optional_size + i * SECTION_HEADER_SIZE + 20)
        if raw and raw < size_of_headers:
            raise BuildError(f"section {i} starts at file offset {raw:#x}, inside the headers")
    header = read_setup_header(pe)
    if header is None or header["version"] < 0x202 or not header["loadflags"] & LOADED_HIGH:
        raise BuildError("no setup header QEMU's high-load path takes")
    if (header["setup_sects"] + 1) * SECTOR >= len(pe):
        raise BuildError("the setup part covers the whole file")


def build(source: Path, out: Path, *defines: str, compiler: str | None = None) -> Path:
    """Compile source to out (a PE32+ EFI application with a Linux setup header)."""
    cc = compiler or shutil.which(CC)
    if not cc:
        raise BuildError(f"{CC} is missing: install Debian's gcc-mingw-w64-x86-64-win32 (make tools does)")
    linked = out.with_suffix(".pe")
    subprocess.run([cc, *CFLAGS, *(f"-D{d}" for d in defines), "-o", str(linked), str(source)], check=True)
    image = add_linux_setup_header(linked.read_bytes())
    check_pe(image)
    out.write_bytes(image)
    linked.unlink()
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: build.py SOURCE.c OUT.efi", file=sys.stderr)
        return 2
    try:
        build(Path(argv[0]), Path(argv[1]))
    except (BuildError, subprocess.CalledProcessError, OSError) as exc:
        print(f"build.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
