"""A Linux x86-64 kernel's own symbol table (kallsyms), read from its decompressed image.

Debian's packages ship a placeholder System.map, but every kernel built with CONFIG_KALLSYMS carries its symbols in
.rodata, as scripts/kallsyms.c (Linux 6.12) writes them: each table behind a label aligned to 8 bytes,

    kallsyms_num_syms    u32 N (not read: see below)
    kallsyms_names       N entries: a ULEB128 length (1 or 2 bytes), then that many token codes; the first
                         expanded character is the symbol's type (T, t, D, ...)
    kallsyms_markers     u32 per 256 symbols: the offset in kallsyms_names of symbol 256*k
    kallsyms_token_table 256 NUL-terminated strings; code c expands to string c (a code that occurs as itself in
                         some name is its own single-character token)
    kallsyms_token_index 256 u16: the offset of each string in the token table
    kallsyms_offsets     N s32, in address order, then kallsyms_relative_base (u64)
    (kallsyms_seqs_of_names, the name-sorted order since 6.2, is not read)

Addresses follow kernel/kallsyms.c kallsyms_sym_address: in 6.12 on x86-64 (CONFIG_KALLSYMS_ABSOLUTE_PERCPU) a
non-negative offset is an absolute (per-CPU) value and a negative one is relative_base - 1 - offset; without
absolute per-CPU symbols it is relative_base + (u32)offset; Debian's 7.2 image stores place-relative offsets
(address = &kallsyms_offsets[i] + offset: seen in that image, the only reading under which its offsets ascend)
and keeps kallsyms_num_syms away from the names, so N comes from walking the names up to the markers. Before 6.4
the offsets came first (2023's "scripts/kallsyms: change the output order" moved them): that layout is tried
too.

The tables are found by their structure, not by a symbol (there is no symbol table to look them up in), and
checked before use: a token index of 256 ascending offsets whose strings end exactly where the next begins,
single-character tokens for every lower-case letter and '_', markers that match the walk of the names, offsets
that decode to addresses in ascending order with _text and start_kernel in kernel text."""

from __future__ import annotations

import bisect
import bz2
import gzip
import lzma
import re
import struct
from dataclasses import dataclass, field

from lazyaccept.errors import InputError
from lazyaccept.spec.linux_boot import read_setup_header

KERNEL_SPACE = 0xFFFF_8000_0000_0000  # the upper half: where every relocatable kernel symbol lies
TEXT_TYPES = frozenset("tTwW")
_OWN_TOKENS = "_abcdefghijklmnopqrstuvwxyz"  # every x86-64 kernel has names using each of these
_INDEX_START = re.compile(rb"\x00\x00[\x01-\x40]\x00", re.DOTALL)  # token_index[0] = 0, [1] = len(token 0) + 1
_MIN_SYMS = 1000


@dataclass(frozen=True)
class KernelSymbols:
    """The table in address order: addresses[i] is names[i]'s (types[i] its nm type)."""

    addresses: tuple[int, ...]
    names: tuple[str, ...]
    types: str
    layout: str  # how kallsyms_offsets decode: "absolute-percpu", "base-relative" or "place-relative"
    table_offset: int  # where kallsyms_token_table is in the image (for messages)
    _by_name: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    _text: tuple[list[int], list[int]] = field(default_factory=lambda: ([], []), repr=False, compare=False)

    def __post_init__(self) -> None:
        for i, name in enumerate(self.names):
            self._by_name.setdefault(name, i)
        # Functions only for lookups of code addresses: data symbols (KALLSYMS_ALL) would split a function.
        text = [i for i, t in enumerate(self.types) if t in TEXT_TYPES]
        self._text[0].extend(self.addresses[i] for i in text)
        self._text[1].extend(text)

    def __len__(self) -> int:
        return len(self.names)

    def address(self, name: str) -> int | None:
        i = self._by_name.get(name)
        return None if i is None else self.addresses[i]

    def function_at(self, address: int) -> tuple[str, int] | None:
        """(function, offset into it) for an address in the kernel's text or init text, else None."""
        if not self.in_text(address):
            return None
        addrs, index = self._text
        at = bisect.bisect_right(addrs, address) - 1
        if at < 0:
            return None
        i = index[at]
        return self.names[i], address - self.addresses[i]

    def in_text(self, address: int) -> bool:
        start, end = self.address("_stext") or self.address("_text"), self.address("_etext")
        init_start, init_end = self.address("_sinittext"), self.address("_einittext")
        return bool((start is not None and end is not None and start <= address < end)
                    or (init_start is not None and init_end is not None and init_start <= address < init_end))


def vmlinux_from_bzimage(data: bytes) -> bytes:
    """The kernel ELF inside a bzImage: the setup header's payload, decompressed (the build appends the
    decompressed size as a u32 to every payload: scripts/Makefile.lib size_append)."""
    header = read_setup_header(data)
    if not header or not header.get("payload_length"):
        raise InputError("not a bzImage with a compressed payload (boot protocol 2.08+)", field="payload_length")
    start = ((header["setup_sects"] or 4) + 1) * 512 + header["payload_offset"]
    blob = data[start : start + header["payload_length"]]
    if len(blob) != header["payload_length"] or len(blob) < 8:
        raise InputError("the bzImage's payload runs past the end of the file", field="payload_length", offset=start)
    size = int.from_bytes(blob[-4:], "little")
    body = blob[:-4]
    try:
        if body.startswith(b"\x28\xb5\x2f\xfd"):
            import zstandard  # only the zstd-compressed images (Debian's since 6.x) need it

            out = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        elif body.startswith(b"\x1f\x8b"):
            out = gzip.decompress(body)
        elif body.startswith(b"\xfd7zXZ\x00"):
            out = lzma.decompress(body, format=lzma.FORMAT_XZ)
        elif body.startswith(b"\x5d\x00"):
            out = lzma.decompress(body, format=lzma.FORMAT_ALONE)
        elif body.startswith(b"BZh"):
            out = bz2.decompress(body)
        else:
            raise InputError(f"unsupported kernel payload compression (magic {body[:4].hex()})",
                             field="payload_offset", offset=start)
    except (OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        raise InputError(f"cannot decompress the kernel payload: {exc}", field="payload_offset",
                         offset=start) from None
    except Exception as exc:  # zstandard.ZstdError has no common base with the stdlib's errors
        raise InputError(f"cannot decompress the kernel payload: {exc}", field="payload_offset",
                         offset=start) from None
    if len(out) != size:
        raise InputError(f"the kernel payload decompressed to {len(out)} bytes, its trailer says {size}",
                         field="payload_length", offset=start)
    return out


def read_kallsyms(image: bytes, *, load_vaddr: int | None = None) -> KernelSymbols:
    """The kallsyms table of a decompressed kernel: an ELF vmlinux (addresses from its program headers) or a
    raw image loaded at load_vaddr. One InputError line when there is none."""
    vaddr = _vaddr_map(image, load_vaddr)
    view = memoryview(image)
    for m in _INDEX_START.finditer(image):
        index_at = m.start()
        if index_at % 8:
            continue
        found = _tables_at(image, view, index_at, vaddr)
        if found is not None:
            return found
    raise InputError("no kallsyms table in the kernel image (built without CONFIG_KALLSYMS, or not a "
                     "decompressed x86-64 kernel)", field="kallsyms_token_table")


def read_bzimage_kallsyms(data: bytes) -> KernelSymbols:
    return read_kallsyms(vmlinux_from_bzimage(data))


def loaded_image(elf: bytes) -> bytes:
    """The kernel ELF laid out in memory as the decompressor's parse_elf does (arch/x86/boot/compressed/misc.c,
    6.12): each PT_LOAD at its p_paddr from the first one's; what a run reads from guest memory at _text."""
    segments = [s for s in _program_headers(elf) if s[0] == 1]
    if not segments:
        raise InputError("the kernel ELF has no loadable segment", field="e_phoff")
    base = min(s[4] for s in segments)
    out = bytearray(max(s[4] - base + s[5] for s in segments))
    for _, offset, _, filesz, paddr, _ in segments:
        out[paddr - base : paddr - base + filesz] = elf[offset : offset + filesz]
    return bytes(out)


# ------------------------------------------------------------------------------------------------- internals
def _vaddr_map(image: bytes, load_vaddr: int | None) -> list[tuple[int, int, int]]:
    """(file offset, size, virtual address) of each loaded piece of the image."""
    if image[:4] != b"\x7fELF":
        return [(0, len(image), load_vaddr)] if load_vaddr is not None else []
    return [(offset, filesz, vaddr) for kind, offset, vaddr, filesz, _, _ in _program_headers(image) if kind == 1]


def _program_headers(image: bytes) -> list[tuple[int, int, int, int, int, int]]:
    """(p_type, p_offset, p_vaddr, p_filesz, p_paddr, p_memsz) of each program header of an ELF64."""
    if len(image) < 64 or image[:4] != b"\x7fELF" or image[4] != 2 or image[5] != 1:
        raise InputError("the kernel image is not a little-endian ELF64", field="e_ident")
    phoff, = struct.unpack_from("<Q", image, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", image, 0x36)
    if phentsize < 56 or phoff + phnum * phentsize > len(image):
        raise InputError("the kernel ELF's program headers run past its end", field="e_phoff", offset=phoff)
    out = []
    for i in range(phnum):
        kind, _, offset, vaddr, paddr, filesz, memsz = struct.unpack_from("<IIQQQQQ", image, phoff + i * phentsize)
        if offset + filesz > len(image):
            raise InputError("a kernel ELF segment runs past its end", field="p_filesz", offset=phoff + i * phentsize)
        out.append((kind, offset, vaddr, filesz, paddr, memsz))
    return out


def _vaddr_of(vaddr: list[tuple[int, int, int]], offset: int) -> int | None:
    for start, size, va in vaddr:
        if start <= offset < start + size:
            return va + offset - start
    return None


def _token_table(image: bytes, index_at: int) -> tuple[int, list[str]] | None:
    if index_at + 512 > len(image):
        return None
    index = struct.unpack_from("<256H", image, index_at)
    if any(b <= a for a, b in zip(index, index[1:], strict=False)):
        return None
    # The table ends with the last token's NUL, then zero padding (0-7 bytes) up to the index's label.
    for pad in range(8):
        end = index_at - pad
        if end < 1 or image[end - 1] != 0:
            break
        last = image.rfind(b"\x00", 0, end - 1)
        start = last + 1 - index[255]
        if start < 0 or start % 8 or last + 1 >= end - 1:
            continue
        raw = image[start:end]
        tokens = []
        for i in range(256):
            lo, hi = index[i], (index[i + 1] - 1 if i < 255 else len(raw) - 1)
            token = raw[lo:hi]
            if not token or raw[hi] != 0 or b"\x00" in token:
                break
            tokens.append(token.decode("latin-1"))
        else:
            if all(tokens[ord(c)] == c for c in _OWN_TOKENS):
                return start, tokens
    return None


def _walk_names(view: memoryview, start: int, limit: int, count: int | None = None) -> tuple[list[int], int] | None:
    """The offset of each name from start up to limit (or of count names): then where the last ends. A zero
    length ends the walk (no name is empty: it is the padding after the table); None when one runs past limit."""
    starts: list[int] = []
    pos = start
    while pos < limit and (count is None or len(starts) < count):
        n = view[pos]
        if n & 0x80:  # ULEB128, at most two bytes (scripts/kallsyms.c refuses longer names)
            n = (n & 0x7F) | (view[pos + 1] << 7)
            if n == 0:
                return None
            starts.append(pos)
            pos += 1
        elif n == 0:
            break
        else:
            starts.append(pos)
        pos += 1 + n
    return (starts, pos) if pos <= limit else None


def _markers_before(image: bytes, table_at: int) -> tuple[int, list[int]] | None:
    """kallsyms_markers ends where the token table's label begins (after 0 or 4 bytes of padding): walk back
    through its descending values to its 0."""
    pos = table_at - 4
    if pos >= 4 and struct.unpack_from("<I", image, pos)[0] == 0 and struct.unpack_from("<I", image, pos - 4)[0]:
        pos -= 4  # padding
    values: list[int] = []
    while pos >= 0:
        v = struct.unpack_from("<I", image, pos)[0]
        if values and v >= values[-1]:
            return None
        values.append(v)
        if v == 0:
            break
        pos -= 4
    if not values or values[-1] != 0 or len(values) < 2 or pos % 8:
        return None
    return pos, values[::-1]


def _names(view: memoryview, markers_at: int, markers: list[int]) -> tuple[int, list[int]] | None:
    """(where kallsyms_names starts, each name's offset): the names end just before the markers (up to 7 bytes
    of padding), start at an 8-byte boundary, and symbol 256*k starts at markers[k]. kallsyms_num_syms is not
    needed (6.12 puts it just before the names; Debian's 7.2 elsewhere): the walk counts them."""
    last = markers[-1]
    # Nearest first: the last block holds at most 256 names of at most 2 + 0x3FFF bytes.
    for names_at in range((markers_at - last - 2) & ~7, max(markers_at - last - 256 * 0x4001, 0) - 1, -8):
        if len(markers) > 1:
            block = _walk_names(view, names_at, markers_at, 256)
            if block is None or block[1] != names_at + markers[1]:
                continue
        walked = _walk_names(view, names_at, markers_at)
        if walked is None or markers_at - walked[1] >= 8 or any(view[walked[1] : markers_at]):
            continue
        starts = walked[0]
        if (len(starts) + 255) // 256 == len(markers) and len(starts) >= _MIN_SYMS and all(
                starts[k * 256] - names_at == m for k, m in enumerate(markers)):
            return names_at, starts
    return None


def _decode(view: memoryview, starts: list[int], tokens: list[str]) -> list[str]:
    out = []
    for pos in starts:
        n = view[pos]
        if n & 0x80:
            n = (n & 0x7F) | (view[pos + 1] << 7)
            pos += 1
        out.append("".join(tokens[b] for b in view[pos + 1 : pos + 1 + n]))
    return out


def _addresses(image: bytes, offsets_at: int, n: int, base_at: int | None, layout: str,
               vaddr: list[tuple[int, int, int]]) -> list[int] | None:
    if offsets_at < 0 or offsets_at + 4 * n > len(image):
        return None
    raw = struct.unpack_from(f"<{n}i", image, offsets_at)
    if layout == "place-relative":
        at = _vaddr_of(vaddr, offsets_at)
        if at is None or _vaddr_of(vaddr, offsets_at + 4 * n - 1) != at + 4 * n - 1:
            return None
        return [(at + 4 * i + o) & (2**64 - 1) for i, o in enumerate(raw)]
    if base_at is None or base_at + 8 > len(image):
        return None
    base = struct.unpack_from("<Q", image, base_at)[0]
    if base < KERNEL_SPACE:
        return None
    if layout == "absolute-percpu":
        return [o if o >= 0 else (base - 1 - o) & (2**64 - 1) for o in raw]
    return [base + (o & 0xFFFFFFFF) for o in raw]


def _tables_at(image: bytes, view: memoryview, index_at: int, vaddr: list[tuple[int, int, int]]
               ) -> KernelSymbols | None:
    found = _token_table(image, index_at)
    if found is None:
        return None
    table_at, tokens = found
    markers = _markers_before(image, table_at)
    if markers is None:
        return None
    names = _names(view, *markers)
    if names is None:
        return None
    names_at, starts = names
    n = len(starts)
    num_at = names_at - 8
    full = _decode(view, starts, tokens)
    after = (index_at + 512 + 7) & ~7  # 6.4+: the offsets follow the token index
    size = (4 * n + 7) & ~7
    before = num_at - 8 - size  # before 6.4: offsets, relative_base, num_syms
    tries = [(after, after + size, "absolute-percpu"), (after, after + size, "base-relative"),
             (after, None, "place-relative"), (before, num_at - 8, "absolute-percpu"),
             (before, num_at - 8, "base-relative")]
    for offsets_at, base_at, layout in tries:
        addrs = _addresses(image, offsets_at, n, base_at, layout, vaddr)
        if addrs is None or any(b < a for a, b in zip(addrs, addrs[1:], strict=False)):
            continue
        symbols = KernelSymbols(tuple(addrs), tuple(s[1:] for s in full), "".join(s[:1] for s in full), layout,
                                table_at)
        text, start = symbols.address("_text"), symbols.address("start_kernel")
        if text is not None and start is not None and KERNEL_SPACE <= text < start:
            return symbols
    return None
