"""Device paths (UEFI 2.10 chapter 10): a packed list of nodes, each a 4-byte header {Type, SubType, Length} and
Length - 4 bytes of data, ended by the End Entire node (0x7F, 0xFF). One parser for every place lazyaccept reads
a path: the firmware's LoadImage and partition matching, the Boot Manager's option, the reports' text form."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from lazyaccept.errors import InputError

END_TYPE = 0x7F
END_ENTIRE, END_INSTANCE = 0xFF, 0x01
HEADER = 4
HARDWARE, ACPI, MESSAGING, MEDIA, BBS = 1, 2, 3, 4, 5
HW_PCI, HW_MEMMAP, ACPI_DP, MEDIA_HARDDRIVE, MEDIA_VENDOR, MEDIA_FILEPATH = 1, 3, 1, 1, 3, 4
MAX_DEVICE_PATH = 64 * 1024  # longer than any real path; a hostile one never ends the walk otherwise


@dataclass(frozen=True)
class Node:
    type: int
    subtype: int
    data: bytes  # after the 4-byte header
    offset: int  # of the node in the path

    @property
    def raw(self) -> bytes:
        return bytes([self.type, self.subtype]) + (HEADER + len(self.data)).to_bytes(2, "little") + self.data

    @property
    def is_end(self) -> bool:
        return self.type == END_TYPE and self.subtype == END_ENTIRE


def node_length(header: bytes, offset: int) -> int:
    """The Length of the node whose header is `header` (at `offset`, for the message); below 4 is refused."""
    if len(header) < HEADER:
        raise InputError(f"truncated device path node: {len(header)} of {HEADER} header bytes", field="Length",
                         offset=offset)
    length = int.from_bytes(header[2:4], "little")
    if length < HEADER:
        raise InputError(f"device path node has length {length}, less than its {HEADER}-byte header",
                         field="Length", offset=offset)
    return length


def parse_device_path(data: bytes, *, need_end: bool = True, limit: int = MAX_DEVICE_PATH) -> list[Node]:
    """The nodes of a path up to its End Entire node (not included; End Instance nodes are kept). A node that does
    not fit, a length below 4, or (with need_end) no End node is an InputError naming the field and offset."""
    out: list[Node] = []
    pos = 0
    while pos < len(data):
        if pos >= limit:
            raise InputError(f"device path longer than {limit} bytes", field="End", offset=pos)
        length = node_length(data[pos : pos + HEADER], pos)
        if pos + length > len(data):
            raise InputError(f"device path node of {length} bytes runs past the path's {len(data)} bytes",
                             field="Length", offset=pos)
        node = Node(data[pos], data[pos + 1], bytes(data[pos + HEADER : pos + length]), pos)
        if node.is_end:
            return out
        out.append(node)
        pos += length
    if need_end:
        raise InputError("device path has no End node (type 0x7F, subtype 0xFF)", field="End", offset=pos)
    return out


def split_nodes(path: bytes) -> list[bytes]:
    """The nodes of a path as bytes, without its End node, as far as they are well formed (a firmware walking a
    path stops at the first bad node rather than failing the whole request)."""
    out: list[bytes] = []
    pos = 0
    while pos + HEADER <= len(path):
        length = int.from_bytes(path[pos + 2 : pos + 4], "little")
        if path[pos] == END_TYPE or length < HEADER or pos + length > len(path):
            break
        out.append(bytes(path[pos : pos + length]))
        pos += length
    return out


def file_name(path: bytes) -> str | None:
    """The file a path names: the last component of its File() nodes (a path may split folders and name over
    several), or None when it has no File() node (a MemoryMapped() or vendor path)."""
    parts = [n[4:].decode("utf-16-le", "replace").split("\0")[0] for n in split_nodes(path)
             if n[0] == MEDIA and n[1] == MEDIA_FILEPATH]
    last = "\\".join(parts).replace("/", "\\").rstrip("\\").rsplit("\\", 1)[-1]
    return last or None

def _int(data: bytes, lo: int, hi: int) -> int:
    return int.from_bytes(data[lo:hi], "little")


def node_text(node: Node) -> str:
    """One node in the UEFI text form (10.6.1), for the node types lazyaccept meets; Path(type,subtype) else."""
    t, st, d = node.type, node.subtype, node.data
    if (t, st) == (ACPI, ACPI_DP) and len(d) >= 8:
        return f"PciRoot({_int(d, 4, 8):#x})"
    if (t, st) == (HARDWARE, HW_PCI) and len(d) >= 2:
        return f"Pci({d[1]:#x},{d[0]:#x})"
    if (t, st) == (MEDIA, MEDIA_HARDDRIVE) and len(d) >= 38:
        num, start, size = _int(d, 0, 4), _int(d, 4, 12), _int(d, 12, 20)
        if d[36] == 2 and d[37] == 2:
            return f"HD({num},GPT,{str(uuid.UUID(bytes_le=d[20:36])).upper()},{start:#x},{size:#x})"
        return f"HD({num},MBR,{_int(d, 20, 24):#010x},{start:#x},{size:#x})"
    if (t, st) == (MEDIA, MEDIA_FILEPATH):
        return d.decode("utf-16-le", "replace").split("\0")[0]
    if (t, st) == (MEDIA, MEDIA_VENDOR) and len(d) >= 16:
        return f"VenMedia({uuid.UUID(bytes_le=d[:16])})"
    if (t, st) == (HARDWARE, HW_MEMMAP) and len(d) >= 20:
        return f"MemoryMapped({_int(d, 0, 4):#x},{_int(d, 4, 12):#x},{_int(d, 12, 20):#x})"
    return f"Path({t},{st})"


def device_path_text(path: bytes) -> str:
    """A path in the text form, as far as it is well formed."""
    nodes = [Node(n[0], n[1], n[4:], 0) for n in split_nodes(path)]
    return "/".join(node_text(n) for n in nodes)
