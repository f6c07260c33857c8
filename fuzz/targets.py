"""Fuzz targets: one per reader of untrusted input, each a function of bytes.

A target returns normally when the input was accepted or rejected the way lazyaccept promises (an InputError
naming the field, and the offset where the input has one; a ConfigError for impossible settings; exit code 2
on the command line), and raises anything else: that is a crash. The same functions serve atheris
(fuzz/run.py), the plain mutation loop (fuzz/run.py --no-atheris) and the tests in tests/hostile/.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from lazyaccept.errors import ConfigError, InputError, LazyAcceptError
from lazyaccept.firmware.dxe import pe
from lazyaccept.firmware.pi import hob as H
from lazyaccept.firmware.sec import parse_policy, run_sec, verify_against_truth
from lazyaccept.guest import boot_params as bp
from lazyaccept.guest import kallsyms
from lazyaccept.guest.handoff_check import check_stub_handoff
from lazyaccept.spec import guids
from lazyaccept.spec.efi import EFI_MEMORY_DESCRIPTOR_SIZE, EfiMemoryType, MemoryDescriptor, pack_memory_map
from lazyaccept.spec.efi_tables import EFI_CONFIGURATION_TABLE, EFI_SYSTEM_TABLE, SYSTEM_TABLE_SIGNATURE
from lazyaccept.spec.linux_boot import EFI_INFO, field_offset
from lazyaccept.spec.linux_efi import UNACCEPTED_TABLE_HEADER
from lazyaccept.tdx.costs import load_profile
from lazyaccept.tdx.module import TdTerminated, TdxModule
from lazyaccept.units import GiB, MiB
from lazyaccept.vmm import tdvf
from lazyaccept.vmm.layout import RamEntry
from lazyaccept.vmm.td import HobConvention, TdConfig, build_td, td_hob_resources

TD_HOB_BASE = 0x809000  # where OVMF's metadata puts the TD HOB
BOOT_PARAMS_GPA = 0x100000
BOOT_MEMORY_BYTES = 1 * MiB


class BadRejection(AssertionError):
    """An error was raised, but not the clear one promised (no field, no offset)."""


def expect_input_error(exc: InputError, *, offset: bool = True, whole_file_fields: tuple[str, ...] = ()) -> None:
    """An InputError must name its field, and its offset unless the field describes the whole input."""
    if not exc.field:
        raise BadRejection(f"InputError without a field: {exc}") from exc
    if offset and exc.offset is None and exc.field not in whole_file_fields:
        raise BadRejection(f"InputError without an offset: {exc}") from exc
    if "\n" in str(exc):
        raise BadRejection(f"InputError message is not one line: {exc!r}") from exc


# ------------------------------------------------------------------------------------------------- TD HOB


def td_hob(data: bytes) -> None:
    """parse_hob_list as SEC calls it (edk2-strict), or with the defaults, on a hostile buffer."""
    if not data:
        return
    mode, buf = data[0], data[1:]
    strict = dict(
        allowed_types=H.EDK2_TD_HOB_TYPES,
        allowed_attributes=H.EDK2_TD_HOB_ATTRIBUTES,
        range_alignment=4096,
        max_address=H.TDX_GPA_LIMIT,
    )
    try:
        parsed = H.parse_hob_list(buf, base_address=TD_HOB_BASE, **(strict if mode & 1 else {}))
    except InputError as exc:
        expect_input_error(exc)
        return
    assert 0 < parsed.size_bytes <= len(buf)
    assert isinstance(parsed.phit, H.PhitHob)
    memory = [r for r in parsed.resources() if r.is_memory]
    for a, b in zip(memory, memory[1:], strict=False):
        assert a.end <= b.start, "the parser let overlapping memory descriptors through"


def td_hob_seeds() -> list[bytes]:
    resources = td_hob_resources(_entries(64 * GiB), HobConvention.QEMU)
    qemu: list[H.Hob] = [H.PhitHob()]
    qemu += [H.ResourceHob(kind, H.TDVF_RAM_ATTRIBUTES, start, size) for kind, start, size in resources]
    raw = H.encode_hob_list(qemu, base_address=TD_HOB_BASE, end_pointer="qemu")
    rich = [
        *qemu[:3],
        H.GuidHob(guids.LINUX_UNACCEPTED_MEM_TABLE, b"guid data"),
        H.CpuHob(48, 16),
        H.FvHob(0xFFC84000, 0x37C000),
        H.MemoryAllocationHob(0x800000, 0x1000, 4),
    ]
    return [b"\x01" + raw, b"\x00" + raw, b"\x00" + H.encode_hob_list(rich, base_address=TD_HOB_BASE)]


def _entries(ram: int) -> list[RamEntry]:
    from lazyaccept.vmm.layout import q35_split, td_ram_entries

    return td_ram_entries(q35_split(ram), tdvf.builtin_ovmf_metadata())


# ------------------------------------------------------------------------------------------------- TD HOB into SEC

_SEC_POLICIES = ("below-4g", "all", "256M", "64M")


def sec_hob(data: bytes) -> None:
    """A hostile VMM writes these bytes as the TD HOB of a 4 GiB TD; SEC reads it and accepts memory.

    SEC must reject the HOB with an InputError, or the TD must be terminated by an accept the VMM cannot back,
    or SEC's record of accepted memory must equal the TDX module's truth with no double accept."""
    if len(data) < 2:
        return
    td = build_td(TdConfig(ram_size=4 * GiB, vcpus=1 + data[0] % 4))
    policy = parse_policy(_SEC_POLICIES[data[0] >> 4 & 3])
    section = td.firmware.td_hob
    td.tdx.memory.vmm_write(section.memory_base, data[1 : 1 + section.memory_size].ljust(section.memory_size, b"\0"))
    try:
        sec = run_sec(td, policy)
    except InputError as exc:
        # Whole-HOB findings (no RAM below 4 GiB for DXE) have no one field; the message must still be one line.
        assert "\n" not in str(exc), repr(exc)
        return
    except ConfigError:
        return
    except TdTerminated:
        assert td.tdx.termination is not None
        return
    problems = verify_against_truth(td, sec)
    assert not problems, f"SEC's record disagrees with the TDX module: {problems}"
    assert not td.tdx.incidents, f"SEC accepted memory twice: {td.tdx.incidents}"


def sec_hob_seeds() -> list[bytes]:
    td = build_td(TdConfig(ram_size=4 * GiB, vcpus=2))
    return [bytes([0x01]) + td.hob_bytes, bytes([0x23]) + td.hob_bytes]


# ------------------------------------------------------------------------------------------------- TDVF metadata


def tdvf_image(data: bytes) -> None:
    """parse_tdvf_metadata on an image whose tail is the input (zeros in front, so that QEMU's 64 KiB size rule
    holds), or on the input as it is; a metadata that parses is then used to build a TD and run SEC."""
    if not data:
        return
    raw = data[0] & 1
    body = data[1:]
    image = body if raw else bytes(-len(body) % tdvf.BIOS_SIZE_GRANULE) + body
    try:
        meta = tdvf.parse_tdvf_metadata(image)
    except InputError as exc:
        expect_input_error(exc, whole_file_fields=("image size",))
        return
    sections = sorted(meta.sections, key=lambda s: s.memory_base)
    for a, b in zip(sections, sections[1:], strict=False):
        assert a.memory_end <= b.memory_base, "overlapping TDVF sections were accepted"
    assert len(meta.of_type(tdvf.TdvfSectionType.TD_HOB)) == 1
    for s in meta.sections:
        if s.from_image:
            assert s.raw_offset + s.memory_size <= len(image)
    try:
        td = build_td(TdConfig(ram_size=4 * GiB, vcpus=2), firmware=meta, image=image)
        run_sec(td, parse_policy("below-4g"))
    except LazyAcceptError:
        return


def tdvf_seeds() -> list[bytes]:
    image = tdvf.synthesize_image(tdvf.builtin_ovmf_metadata().sections, tdvf.OVMF_FD_SIZE)
    tail = image[-0x1000:]
    small = [
        tdvf.TdvfSection(0, tdvf.TdvfSectionType.BFV, tdvf.TdvfAttributes.MR_EXTEND, 0, 0x10000, 0xFFFF0000, 0x10000),
        tdvf.TdvfSection(1, tdvf.TdvfSectionType.TD_HOB, tdvf.TdvfAttributes(0), 0, 0, 0x809000, 0x2000),
        tdvf.TdvfSection(2, tdvf.TdvfSectionType.TEMP_MEM, tdvf.TdvfAttributes(0), 0, 0, 0x800000, 0x6000),
    ]
    return [b"\x00" + tail, b"\x01" + tdvf.synthesize_image(small, 0x10000)]


# ------------------------------------------------------------------------------------------------- PE images


def pe_image(data: bytes) -> None:
    """parse_pe, then the loader's layout and relocation of what it accepted."""
    try:
        image = pe.parse_pe(data)
    except InputError as exc:
        expect_input_error(exc)
        return
    assert image.entry_rva < image.size_of_image
    for s in image.sections:
        assert s.virtual_address + max(s.virtual_size, s.raw_size) <= image.size_of_image
    if image.size_of_image <= 16 * MiB:
        laid = image.layout(0x7F000000)
        assert len(laid) == image.size_of_image
    for rva, piece in image.pieces():  # how images over LAYOUT_MAX are loaded: views of the file, inside the image
        assert rva + len(piece) <= image.size_of_image and len(piece) <= len(data)


def minimal_pe(*, relocations: bool = True) -> bytes:
    """A valid two-section PE32+ EFI application (ret; a DIR64 pointer and its relocation), built from the
    parser's own layouts."""
    n_dirs = 16
    opt_size = pe.IMAGE_OPTIONAL_HEADER64.size + 8 * n_dirs
    lfanew = 0x40
    head = bytearray(0x200)
    head[0:64] = pe.IMAGE_DOS_HEADER.pack(e_magic=pe.MZ, e_lfanew=lfanew)
    head[lfanew : lfanew + pe.IMAGE_FILE_HEADER.size] = pe.IMAGE_FILE_HEADER.pack(
        Signature=pe.PE_SIGNATURE, Machine=pe.MACHINE_X64, NumberOfSections=2, SizeOfOptionalHeader=opt_size,
        Characteristics=0x22,
    )
    oh_at = lfanew + pe.IMAGE_FILE_HEADER.size
    head[oh_at : oh_at + pe.IMAGE_OPTIONAL_HEADER64.size] = pe.IMAGE_OPTIONAL_HEADER64.pack(
        Magic=pe.PE32PLUS_MAGIC, AddressOfEntryPoint=0x1000, BaseOfCode=0x1000, ImageBase=0x140000000,
        SectionAlignment=0x1000, FileAlignment=0x200, SizeOfImage=0x3000, SizeOfHeaders=0x200, Subsystem=10,
        NumberOfRvaAndSizes=n_dirs,
    )
    dirs_at = oh_at + pe.IMAGE_OPTIONAL_HEADER64.size
    if relocations:
        at = dirs_at + 8 * pe.DIRECTORY_BASERELOC
        head[at : at + 8] = pe.IMAGE_DATA_DIRECTORY.pack(VirtualAddress=0x2000, Size=12)
    sec_at = oh_at + opt_size
    for i, (name, va, vsize, raw) in enumerate(((b".text", 0x1000, 0x10, 0x200), (b".reloc", 0x2000, 12, 0x400))):
        at = sec_at + i * pe.IMAGE_SECTION_HEADER.size
        head[at : at + pe.IMAGE_SECTION_HEADER.size] = pe.IMAGE_SECTION_HEADER.pack(
            Name=name, VirtualSize=vsize, VirtualAddress=va, SizeOfRawData=0x200, PointerToRawData=raw,
            Characteristics=0x60000020,
        )
    text = bytearray(0x200)
    text[0] = 0xC3
    text[8:16] = (0x140001000).to_bytes(8, "little")
    reloc = bytearray(0x200)
    reloc[0:12] = pe.IMAGE_BASE_RELOCATION.pack(VirtualAddress=0x1000, SizeOfBlock=12) + struct.pack(
        "<HH", pe.REL_DIR64 << 12 | 8, 0
    )
    return bytes(head + text + reloc)


def pe_seeds() -> list[bytes]:
    return [minimal_pe(), minimal_pe(relocations=False)]


# ------------------------------------------------------------------------------------------------- boot_params


def boot_params(data: bytes) -> None:
    """What a stub hands the kernel, read back as Linux reads it: boot_params (E820, command line, initrd, the
    setup_data chain, efi_info), the EFI system table it names, its configuration tables, the unaccepted-memory
    table among them and the UEFI memory map, from 1 MiB of accepted guest memory holding the input at 1 MiB."""
    raw = data[:BOOT_MEMORY_BYTES].ljust(bp.BOOT_PARAMS_SIZE, b"\0")
    try:
        bp.parse_boot_params(raw, BOOT_PARAMS_GPA)
    except InputError as exc:
        expect_input_error(exc)
    tdx = TdxModule(num_vcpus=1)
    tdx.add_ram(0, 4 * GiB)
    tdx.add(BOOT_PARAMS_GPA, BOOT_MEMORY_BYTES, data=raw)
    _handoff, _params, check = check_stub_handoff(tdx, BOOT_PARAMS_GPA)
    assert all(isinstance(p, str) and "\n" not in p for p in check.problems), check.problems


def boot_params_seeds() -> list[bytes]:
    page = bytearray(bp.BOOT_PARAMS_SIZE)
    e820 = [(0, 0x9F000, 1), (0x100000, 0x7FF00000, 1), (0xB0000000, 0x10000000, 2), (0x100000000, 1 << 33, 1)]
    page[bp.E820_ENTRIES_OFFSET] = len(e820)
    for i, (addr, size, kind) in enumerate(e820):
        at = bp.E820_TABLE_OFFSET + i * bp.BOOT_E820_ENTRY.size
        page[at : at + bp.BOOT_E820_ENTRY.size] = bp.BOOT_E820_ENTRY.pack(addr=addr, size=size, type=kind)
    systab_at, config_at, memmap_at = BOOT_PARAMS_GPA + 0x2800, BOOT_PARAMS_GPA + 0x2900, BOOT_PARAMS_GPA + 0x2A00
    memory_map = pack_memory_map(
        [MemoryDescriptor(EfiMemoryType.EfiConventionalMemory, 0, 0x9F),
         MemoryDescriptor(EfiMemoryType.EfiUnacceptedMemoryType, 0x100000000, 0x200000)]
    )
    page[bp.EFI_INFO_OFFSET : bp.EFI_INFO_OFFSET + EFI_INFO.size] = EFI_INFO.pack(
        efi_loader_signature=0x34364C45, efi_systab=systab_at, efi_memdesc_size=EFI_MEMORY_DESCRIPTOR_SIZE,
        efi_memdesc_version=1, efi_memmap=memmap_at, efi_memmap_size=len(memory_map),
    )
    cmdline_at = BOOT_PARAMS_GPA + 0x1800
    cmdline_ptr = field_offset("cmd_line_ptr")
    page[cmdline_ptr : cmdline_ptr + 4] = cmdline_at.to_bytes(4, "little")
    setup_at = BOOT_PARAMS_GPA + 0x1900
    setup_data = field_offset("setup_data")
    page[setup_data : setup_data + 8] = setup_at.to_bytes(8, "little")
    table_at = BOOT_PARAMS_GPA + 0x2000
    memory = bytearray(0x3000)
    memory[: len(page)] = page
    memory[0x1800:0x1818] = b"console=ttyS0 nokaslr\0\0\0"
    memory[0x1900 : 0x1900 + bp.SETUP_DATA.size] = bp.SETUP_DATA.pack(next=0, type=9, len=32)
    header = UNACCEPTED_TABLE_HEADER.pack(version=1, unit_size=2 * MiB, phys_base=0x100000000, size=16)
    memory[0x2000 : 0x2000 + len(header) + 16] = header + b"\xff" * 15 + b"\x0f"
    signature = SYSTEM_TABLE_SIGNATURE.to_bytes(8, "little") + bytes(16)
    system_table = EFI_SYSTEM_TABLE.pack(Hdr=signature, NumberOfTableEntries=1, ConfigurationTable=config_at)
    memory[0x2800 : 0x2800 + len(system_table)] = system_table
    entry = EFI_CONFIGURATION_TABLE.pack(VendorGuid=guids.LINUX_UNACCEPTED_MEM_TABLE.bytes_le, VendorTable=table_at)
    memory[0x2900 : 0x2900 + len(entry)] = entry
    memory[0x2A00 : 0x2A00 + len(memory_map)] = memory_map
    return [bytes(memory)]


# ------------------------------------------------------------------------------------------------- kallsyms


def kallsyms_image(data: bytes) -> None:
    """The kallsyms reader on a hostile decompressed kernel image (a raw image loaded at the kernel's link
    address): a table it returns is sorted and its lookups answer."""
    try:
        table = kallsyms.read_kallsyms(data, load_vaddr=KALLSYMS_BASE)
    except InputError as exc:
        expect_input_error(exc, whole_file_fields=("kallsyms_token_table", "e_ident"))
        return
    assert list(table.addresses) == sorted(table.addresses)
    start = table.address("start_kernel")
    assert start is not None
    table.function_at(start)


KALLSYMS_BASE = 0xFFFF_FFFF_8100_0000


def synthetic_kallsyms(names: list[tuple[str, str, int]], base: int = KALLSYMS_BASE) -> bytes:
    """A kallsyms table laid out as Linux 6.12's scripts/kallsyms.c writes it (num_syms, names, markers,
    token table and index, base-relative offsets, relative base), for (type, name, address) in address order.
    Every code that appears in a name is its own token; the others expand to two letters ("qq")."""

    def align(out: bytearray) -> None:
        out.extend(bytes(-len(out) % 8))

    used = {ord(c) for _, name, _ in names for c in "T" + name} | {ord(c) for c in "_abcdefghijklmnopqrstuvwxyz"}
    tokens = [bytes([c]) if c in used else b"qq" for c in range(256)]
    out = bytearray(struct.pack("<I", len(names)))
    align(out)
    names_at, markers = len(out), []
    for i, (kind, name, _) in enumerate(names):
        if i % 256 == 0:
            markers.append(len(out) - names_at)
        code = (kind + name).encode("latin-1")
        out += bytes([len(code)]) + code
    align(out)
    out += struct.pack(f"<{len(markers)}I", *markers)
    align(out)
    index, table = [], bytearray()
    for token in tokens:
        index.append(len(table))
        table += token + b"\0"
    out += table
    align(out)
    out += struct.pack("<256H", *index)
    align(out)
    out += struct.pack(f"<{len(names)}I", *(address - base for _, _, address in names))
    align(out)
    out += struct.pack("<Q", base)
    return bytes(out)


def kallsyms_seeds() -> list[bytes]:
    functions = [("T", "_text", KALLSYMS_BASE), ("T", "start_kernel", KALLSYMS_BASE + 0x100)]
    functions += [("t", f"f{i:04x}", KALLSYMS_BASE + 0x200 + 0x10 * i) for i in range(1100)]
    functions += [("T", "_etext", KALLSYMS_BASE + 0x20000)]
    return [synthetic_kallsyms(functions)]


# ------------------------------------------------------------------------------------------------- command line

CLI_COMMANDS = ("sec", "firmware-info")


def cli(data: bytes) -> None:
    """`lazyaccept COMMAND ARGS...` with arguments from the input (NUL-separated, decoded as argv is):
    exit code 0 or 2, never a traceback."""
    from lazyaccept.cli import main

    if not data:
        return
    argv = [CLI_COMMANDS[data[0] % len(CLI_COMMANDS)]]
    argv += [os.fsdecode(a) for a in data[1:].split(b"\0") if a] if len(data) > 1 else []
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: --help is 0, a bad argument 2
            code = exc.code if isinstance(exc.code, int) else 2
    assert code in (0, 2), f"exit code {code} for {argv}"
    if code == 2:
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        assert lines and "Traceback" not in err.getvalue(), f"no one-line message for {argv}: {err.getvalue()!r}"


def cli_seeds() -> list[bytes]:
    def argv(*args: str) -> bytes:
        return b"\0".join(a.encode() for a in args)

    return [
        b"\x00" + argv("-m", "4G", "-smp", "2", "--upfront", "256M"),
        b"\x00" + argv("-m", "67000M", "-smp", "8", "--upfront", "below-4g", "--profile", "kvm-4k", "--json"),
        b"\x00" + argv("-m", "1T", "-smp", "64", "--upfront", "all", "--hob-convention", "cloud-hypervisor"),
        b"\x01" + argv("--builtin", "--json"),
    ]


# ------------------------------------------------------------------------------------------------- host profile

_PROFILE_DIR = tempfile.mkdtemp(prefix="lazyaccept-fuzz-")


def profile_toml(data: bytes) -> None:
    """A host-profile TOML file (`--profile FILE.toml`): loaded, or an InputError/ConfigError naming the key."""
    path = os.path.join(_PROFILE_DIR, "profile.toml")
    with open(path, "wb") as f:
        f.write(data)
    try:
        profile = load_profile(path)
    except InputError as exc:
        if exc.field is None and "TOML" not in str(exc):
            raise BadRejection(f"profile error without a key: {exc}") from exc
        return
    except ConfigError:
        return
    # Every rate is used as a divisor: a loaded profile must be usable.
    for name in ("clear_bytes_per_s", "copy_bytes_per_s", "hash_bytes_per_s", "decompress_bytes_per_s"):
        profile.bytes_ns(4096, getattr(profile, name))
    profile.clear_ns(4096, 4)


def profile_seeds() -> list[bytes]:
    return [b'base = "kvm-4k"\nexit_ns = 6000\nclear_bytes_per_s = 1610612736\n', b'name = "x"\ndescription = "d"\n']


# ------------------------------------------------------------------------------------------------- disks


def _volume_reader(data: bytes, pad: bool):  # noqa: ANN202 - read(offset, length) over the input
    def read(offset: int, length: int) -> bytes:
        chunk = data[offset : offset + length] if offset >= 0 else b""
        return chunk + bytes(length - len(chunk)) if pad else chunk

    return read


def fat_volume(data: bytes) -> None:
    """The firmware's FAT reader (vmm/fat_reader.py) on a hostile volume: the first byte picks whether reads
    past the input are zeros (a sparse image) or short (a truncated one)."""
    if not data:
        return
    from lazyaccept.vmm.fat_reader import FatReader

    try:
        fat = FatReader(_volume_reader(data[1:], bool(data[0] & 1)), size=None if data[0] & 2 else len(data) - 1)
        for path, _first, size in fat.walk()[:64]:
            entry = fat.lookup(path)  # two entries may share a name: read_file reads the first, as lookup finds it
            if size <= 1 * MiB and entry is not None and entry.size <= 1 * MiB:
                got = fat.read_file(path)
                assert got is None or len(got) == entry.size, f"{path}: {len(got)} bytes read of {entry.size}"
        fat.list_dir("EFI/BOOT")
    except InputError as exc:
        expect_input_error(exc)


def _fat16_volume() -> bytes:
    from lazyaccept.vmm.disk import BytesSource, FatVolume

    files = {"EFI/BOOT/BOOTX64.EFI": BytesSource(b"MZ" + bytes(1500)), "a long file name.txt": BytesSource(b"x" * 700)}
    volume = FatVolume(dict(files), fat_bits=16, cluster_bytes=512, free_bytes=0)
    return volume.read(0, (volume.data_start + 8) * 512)


def _fat12_volume() -> bytes:
    """A whole 32 KiB FAT12 volume (64 sectors, one per cluster): /EFI/BOOT/BOOTX64.EFI of 600 bytes in two clusters."""
    from lazyaccept.spec.fat import ATTR_ARCHIVE, ATTR_DIRECTORY, DIR_ENTRY, FAT16_BOOT_SECTOR

    boot = bytearray(FAT16_BOOT_SECTOR.pack(
        BS_jmpBoot=b"\xeb\x3c\x90", BS_OEMName=b"LAZYACPT", BPB_BytsPerSec=512, BPB_SecPerClus=1, BPB_RsvdSecCnt=1,
        BPB_NumFATs=2, BPB_RootEntCnt=16, BPB_TotSec16=64, BPB_Media=0xF8, BPB_FATSz16=1, BS_BootSig=0x29,
        BS_VolLab=b"ESP        ", BS_FilSysType=b"FAT12   ",
    ).ljust(512, b"\0"))
    boot[510:512] = b"\x55\xaa"
    chain = [0xFF8, 0xFFF, 0xFFF, 0xFFF, 5, 0xFFF]  # clusters 2 (EFI), 3 (BOOT), 4-5 (the file)
    chain += [0] * (len(chain) % 2)
    fat = b"".join((a | b << 12).to_bytes(3, "little") for a, b in zip(chain[::2], chain[1::2], strict=True))
    fat = fat.ljust(512, b"\0")

    def entry(name: bytes, attr: int, cluster: int, size: int = 0) -> bytes:
        return DIR_ENTRY.pack(DIR_Name=name, DIR_Attr=attr, DIR_FstClusLO=cluster, DIR_FileSize=size)

    root = entry(b"EFI        ", ATTR_DIRECTORY, 2).ljust(512, b"\0")
    efi = (entry(b".          ", ATTR_DIRECTORY, 2) + entry(b"..         ", ATTR_DIRECTORY, 0)
           + entry(b"BOOT       ", ATTR_DIRECTORY, 3)).ljust(512, b"\0")
    boot_dir = (entry(b".          ", ATTR_DIRECTORY, 3) + entry(b"..         ", ATTR_DIRECTORY, 2)
                + entry(b"BOOTX64 EFI", ATTR_ARCHIVE, 4, 600)).ljust(512, b"\0")
    data = efi + boot_dir + (b"MZ" + bytes(598)).ljust(1024, b"\0")
    return (bytes(boot) + fat + fat + root + data).ljust(64 * 512, b"\0")


def fat_seeds() -> list[bytes]:
    from lazyaccept.vmm.disk import BytesSource, FatVolume

    fat32 = FatVolume({"EFI/BOOT/BOOTX64.EFI": BytesSource(b"MZ")}, fat_bits=32, cluster_bytes=512, free_bytes=0)
    return [b"\x00" + _fat16_volume(), b"\x03" + _fat16_volume(), b"\x01" + fat32.read(0, 8 * 512),
            b"\x02" + _fat12_volume()]


def partition_table(data: bytes) -> None:
    """A raw disk image as `boot --disk` opens it (vmm/disk_image.py: the partition table, the ESP's FAT and its
    cluster chains), and the firmware's PartitionDxe on the same bytes, which never raises (a bad table is none)."""
    from lazyaccept.firmware.drivers.partition import read_gpt, read_mbr
    from lazyaccept.vmm.disk_image import DiskImage

    read = _volume_reader(data, False)
    last = max(0, len(data) // 512 - 1)
    read_gpt(read, 512, last)
    read_mbr(read, last)
    path = os.path.join(_PROFILE_DIR, "disk.img")
    with open(path, "wb") as f:
        f.write(data)
    try:
        DiskImage(path).close()
    except InputError as exc:
        expect_input_error(exc)


def _tiny_gpt(volume: bytes) -> bytes:
    """Protective MBR, GPT header, 4 entries in one sector, the volume, the backup entries and header."""
    import uuid
    import zlib

    from lazyaccept.spec.gpt import EFI_PARTITION_ENTRY, EFI_PARTITION_TABLE_HEADER, GPT_REVISION, GPT_SIGNATURE
    from lazyaccept.spec.guids import PART_TYPE_SYSTEM_PART

    sectors = -(-len(volume) // 512)
    first, last_lba = 3, 3 + sectors + 1  # partition at LBA 3; backup entries, then the backup header
    entries = EFI_PARTITION_ENTRY.pack(PartitionTypeGUID=PART_TYPE_SYSTEM_PART, UniquePartitionGUID=uuid.UUID(int=1),
                                       StartingLBA=first, EndingLBA=first + sectors - 1).ljust(512, b"\0")

    def header(my: int, alt: int, entries_lba: int) -> bytes:
        fields = dict(Signature=GPT_SIGNATURE, Revision=GPT_REVISION, HeaderSize=92, MyLBA=my, AlternateLBA=alt,
                      FirstUsableLBA=first, LastUsableLBA=first + sectors - 1, DiskGUID=uuid.UUID(int=2),
                      PartitionEntryLBA=entries_lba, NumberOfPartitionEntries=4, SizeOfPartitionEntry=128,
                      PartitionEntryArrayCRC32=zlib.crc32(entries))
        crc = zlib.crc32(EFI_PARTITION_TABLE_HEADER.pack(fields))
        return EFI_PARTITION_TABLE_HEADER.pack(fields, HeaderCRC32=crc).ljust(512, b"\0")

    mbr = bytearray(512)
    protective = bytes([0, 0, 2, 0, 0xEE, 0xFF, 0xFF, 0xFF]) + (1).to_bytes(4, "little")
    mbr[446:462] = protective + last_lba.to_bytes(4, "little")
    mbr[510:512] = b"\x55\xaa"
    body = volume.ljust(sectors * 512, b"\0")
    return bytes(mbr) + header(1, last_lba, 2) + entries + body + entries + header(last_lba, 1, last_lba - 1)


def partition_seeds() -> list[bytes]:
    volume = _fat12_volume()
    mbr = bytearray(512)
    mbr[446:462] = bytes([0x80, 0, 0, 0, 0xEF, 0, 0, 0]) + (1).to_bytes(4, "little") + \
        (-(-len(volume) // 512)).to_bytes(4, "little")
    mbr[510:512] = b"\x55\xaa"
    return [_tiny_gpt(volume), bytes(mbr) + volume]


def device_path(data: bytes) -> None:
    """The device path parser (spec/device_path.py) and what reads paths through it: the lenient node split the
    firmware walks and the text form reports print."""
    from lazyaccept.spec import device_path as dp

    nodes = dp.split_nodes(data)
    assert b"".join(nodes) == data[: sum(len(n) for n in nodes)], "split_nodes lost or reordered bytes"
    dp.device_path_text(data)
    try:
        parsed = dp.parse_device_path(data)
    except InputError as exc:
        expect_input_error(exc)
        return
    if not any(n.type == dp.END_TYPE for n in parsed):
        assert [n.raw for n in parsed] == nodes, "the strict and the lenient parser disagree"


def device_path_seeds() -> list[bytes]:
    import uuid

    from lazyaccept.firmware.drivers.blockio import (
        acpi_pci_root,
        file_path_node,
        hard_drive_node,
        mbr_hard_drive_node,
        pci_node,
    )

    end = bytes([0x7F, 0xFF, 4, 0])
    disk = acpi_pci_root() + pci_node(4)
    memmap = bytes([1, 3, 24, 0]) + (11).to_bytes(4, "little") + (0x1000).to_bytes(8, "little") + \
        (0x1FFF).to_bytes(8, "little")
    return [
        disk + hard_drive_node(1, 2048, 4096, uuid.UUID(int=5)) + file_path_node("\\EFI\\BOOT\\BOOTX64.EFI") + end,
        disk + mbr_hard_drive_node(1, 2048, 4096, 0x1A2B3C4D) + end,
        memmap + bytes([4, 3, 20, 0]) + uuid.UUID(int=9).bytes_le + bytes([0x7F, 0x01, 4, 0]) + end,
    ]


# ------------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    max_len: int
    description: str


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("td_hob", td_hob, td_hob_seeds, 8192, "PI HOB list parser on a TD HOB (firmware/pi/hob.py)"),
        Target("sec_hob", sec_hob, sec_hob_seeds, 8192, "a hostile TD HOB read and used by SEC (firmware/sec)"),
        Target("tdvf", tdvf_image, tdvf_seeds, 8192, "TDVF metadata of a firmware image (vmm/tdvf.py)"),
        Target("pe", pe_image, pe_seeds, 8192, "PE32+ parser, layout and relocation (cpu/pe.py)"),
        Target("boot_params", boot_params, boot_params_seeds, 16384,
               "boot_params and the unaccepted-memory table read back (guest/)"),
        Target("kallsyms", kallsyms_image, kallsyms_seeds, 20000,
               "a kernel's kallsyms table found by its structure (guest/kallsyms.py)"),
        Target("cli", cli, cli_seeds, 512, "the sec and firmware-info command lines (cli, commands/)"),
        Target("profile", profile_toml, profile_seeds, 1024, "host-profile TOML files (tdx/costs.py)"),
        Target("fat", fat_volume, fat_seeds, 65536, "the firmware's FAT reader (vmm/fat_reader.py)"),
        Target("partition_table", partition_table, partition_seeds, 65536,
               "a boot --disk image: GPT/MBR, the ESP's FAT (vmm/disk_image.py) and PartitionDxe (partition.py)"),
        Target("device_path", device_path, device_path_seeds, 512, "device paths (spec/device_path.py)"),
    )
}
