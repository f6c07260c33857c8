"""An initramfs for runs of the real Linux kernel: busybox, an /init that measures `Unaccepted:`, and its parser.

The archive is what the kernel's populate_rootfs unpacks into its rootfs: a cpio in the "newc" format
(Documentation/driver-api/early-userspace/buffer-format.rst, read against init/initramfs.c of Linux 6.12):
a 110-byte header of the magic "070701" and 13 eight-digit hexadecimal fields, the NUL-terminated name, zero
bytes to a 4-byte boundary, the data, zero bytes to a 4-byte boundary; the entry named "TRAILER!!!" ends it.
Names are relative (the kernel creates them from "/"), parents before children. Optionally gzip-compressed
(the Debian cloud kernels are built with CONFIG_RD_GZIP=y; `kernel_config_problems` checks a config).

The image is deterministic: inode numbers count up from 1 in the order entries are written, every mtime, uid
and gid is 0, the gzip header carries no name and mtime 0. The same busybox, parameters and Python give the same
bytes, so its SHA256 identifies it (the uncompressed archive's SHA256 does not depend on the zlib build).

Its content: /bin/busybox (Debian's static busybox) with a symlink per applet /init uses, /dev/console (c 5 1:
the kernel opens it for init's stdin/stdout/stderr before any devtmpfs exists, init/main.c console_on_rootfs),
/dev/null and /dev/zero, empty /proc and /run, and /init, a busybox shell script (INIT_TEMPLATE) that
  1. mounts proc on /proc (only when it is PID 1, i.e. the kernel's init);
  2. reads the fill size from the kernel command line, `lazyaccept.fill_mib=N` in /proc/cmdline, so one image
     serves every size (the size baked in at build time is the default when the parameter is absent). A dotted
     parameter is taken for a module's: the kernel passes it neither to init's argv nor its environment
     (init/main.c unknown_bootoption) and does not complain, but it stays in /proc/cmdline;
  3. prints the MemTotal, MemFree, Shmem and Unaccepted lines of /proc/meminfo, each prefixed with the marker
     and "before", e.g. `lazyaccept-meminfo before Unaccepted:  3932160 kB`;
  4. mounts a tmpfs on /run sized fill + 1 MiB and writes N MiB of zeros to /run/lazyaccept/fill with dd: tmpfs
     pages come from the page allocator, the path on which Linux accepts unaccepted memory, and stay allocated
     (Shmem grows by the fill) while the second reading is taken;
  5. prints the same lines prefixed "after", then `<marker> end`;
  6. prints `<marker> poweroff` and runs `poweroff -f`, i.e. reboot(LINUX_REBOOT_CMD_POWER_OFF). With the ACPI
     S5 object in the firmware's tables the kernel prints `reboot: Power down` and the VMM stops the guest;
     without any power-off handler the kernel itself turns the call into a halt (kernel/reboot.c, the reboot
     syscall, 6.12 and 7.2) and prints `reboot: System halted`: the VMM must then stop on a timeout. Should the
     call return (refused), /init prints `<marker> poweroff failed` and runs `halt -f`, then sleeps forever
     (PID 1 must not exit: the kernel panics when init dies).
Run as any process other than PID 1 (the tests run it on the host with the real busybox), it mounts nothing,
never powers off, and reads LAZYACCEPT_PROC (default /proc) and writes under LAZYACCEPT_FILL_DIR (default
/run/lazyaccept); LAZYACCEPT_POWEROFF is the command run in place of `poweroff -f` (default `exit 0`).

`parse_meminfo_blocks` reads those lines back out of a serial console log in which kernel messages interleave.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import stat
import struct
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lazyaccept.errors import InputError
from lazyaccept.guest.kernel_image import parse_config

# Documentation/driver-api/early-userspace/buffer-format.rst (Linux 6.12): the "newc" magic; "070702" ("crc")
# would add a byte-sum checksum.
NEWC_MAGIC = b"070701"
NEWC_HEADER_SIZE = 110  # 6 bytes of magic + 13 fields of 8 hexadecimal digits
TRAILER_NAME = "TRAILER!!!"
# init/initramfs.c (6.12) skips an entry whose name, with its NUL, is longer than PATH_MAX, and a symlink whose
# target is; include/uapi/linux/limits.h: PATH_MAX 4096.
PATH_MAX = 4096
_FIELD_MAX = 0xFFFFFFFF  # every header field is 8 hexadecimal digits
_CHUNK = 1 << 20

DEFAULT_FILL_MIB = 64
DEFAULT_MARKER = "lazyaccept-meminfo"
DEFAULT_KEYS = ("MemTotal", "MemFree", "Shmem", "Unaccepted")
FILL_PARAM = "lazyaccept.fill_mib"  # the kernel command-line parameter /init reads the fill size from
FILL_MIB_MAX = 999_999_999  # /init accepts at most 9 digits (its shell arithmetic is 64-bit: no overflow)
# Every command /init runs: each becomes a symlink to busybox in /bin (Debian's build also runs applets without
# them, FEATURE_SH_STANDALONE, but an image should not depend on how busybox was configured).
APPLETS = ("cat", "dd", "echo", "halt", "mkdir", "mount", "poweroff", "sed", "sh", "sleep", "stat", "sync")

_MARKER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


class _HashingSink:
    """Writes through to a file, counting the bytes and hashing them on the way (the image is read only once)."""

    def __init__(self, out: _Sink):
        self.out = out
        self.size = 0
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes, /) -> int:
        self.out.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        flush = getattr(self.out, "flush", None)
        if flush is not None:
            flush()


@dataclass(frozen=True)
class CpioEntry:
    name: str
    mode: int  # st_mode: file type and permissions
    ino: int
    size: int  # c_filesize
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node
    target: str = ""  # a symlink's


class CpioWriter:
    """Writes a newc archive to sink entry by entry; regular files are copied from disk in 1 MiB chunks.

    Deterministic: inodes count from first_inode in writing order; mtime, uid and gid are the same for all.
    """

    def __init__(self, sink: _Sink, *, mtime: int = 0, first_inode: int = 1):
        if not 0 <= mtime <= _FIELD_MAX:
            raise InputError(f"cpio mtime {mtime} does not fit the 8-digit field")
        self.sink = sink
        self.mtime = mtime
        self.offset = 0
        self.entries: list[CpioEntry] = []
        self._next_ino = first_inode
        self._dirs: set[str] = set()
        self._names: set[str] = set()
        self._closed = False

    def _write(self, data: bytes) -> None:
        if data:
            self.sink.write(data)
            self.offset += len(data)

    def _align(self) -> None:
        # buffer-format.rst: ALGN(4) before every header and after the name; the data's tail is padded by the
        # next header's ALGN(4) (or the trailer's).
        self._write(b"\0" * (-self.offset % 4))

    def _check_name(self, name: str) -> bytes:
        if self._closed:
            raise InputError(f"cpio entry {name!r} after the trailer")
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise InputError(f"cpio entry name {name!r}: expected a relative path without '.', '..' or '//'")
        if "\0" in name:
            raise InputError(f"cpio entry name {name!r} contains a NUL byte")
        encoded = name.encode()
        if len(encoded) + 1 > PATH_MAX:
            raise InputError(f"cpio entry name of {len(encoded)} bytes: the kernel skips names over PATH_MAX")
        if name in self._names:
            raise InputError(f"cpio entry {name!r} written twice")
        parent = name.rpartition("/")[0]
        if parent and parent not in self._dirs:
            # init/initramfs.c creates each entry with mkdir/open/mknod at its path: the parent must exist.
            raise InputError(f"cpio entry {name!r} before its directory {parent!r}")
        return encoded

    def _header(self, encoded_name: bytes, mode: int, size: int, nlink: int, rdev: tuple[int, int]) -> int:
        if size > _FIELD_MAX:
            raise InputError(f"cpio entry of {size} bytes: newc's c_filesize holds at most {_FIELD_MAX}")
        ino = self._next_ino
        self._next_ino += 1
        # c_ino c_mode c_uid c_gid c_nlink c_mtime c_filesize c_maj c_min c_rmaj c_rmin c_namesize c_chksum;
        # c_maj/c_min (the device holding the file) stay 0: with nlink 1 no hard-link lookup uses them.
        fields = (ino, mode, 0, 0, nlink, self.mtime, size, 0, 0, rdev[0], rdev[1], len(encoded_name) + 1, 0)
        self._align()
        self._write(NEWC_MAGIC + b"".join(b"%08X" % v for v in fields))
        self._write(encoded_name + b"\0")
        self._align()
        return ino

    def directory(self, name: str, mode: int = 0o755) -> None:
        encoded = self._check_name(name)
        ino = self._header(encoded, stat.S_IFDIR | (mode & 0o7777), 0, 2, (0, 0))
        self._dirs.add(name)
        self._names.add(name)
        self.entries.append(CpioEntry(name, stat.S_IFDIR | (mode & 0o7777), ino, 0))

    def data_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        encoded = self._check_name(name)
        full_mode = stat.S_IFREG | (mode & 0o7777)
        ino = self._header(encoded, full_mode, len(data), 1, (0, 0))
        self._write(data)
        self._names.add(name)
        self.entries.append(CpioEntry(name, full_mode, ino, len(data)))

    def copy_file(self, name: str, source: Path, mode: int = 0o644) -> None:
        """A regular file with source's bytes, streamed; its size must not change while it is copied."""
        encoded = self._check_name(name)
        full_mode = stat.S_IFREG | (mode & 0o7777)
        with open(source, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            ino = self._header(encoded, full_mode, size, 1, (0, 0))
            copied = 0
            while chunk := f.read(min(_CHUNK, size - copied)):
                self._write(chunk)
                copied += len(chunk)
                if copied == size:
                    break
        if copied != size:
            raise InputError(f"{source}: {copied} bytes read of the {size} announced (file changed while copied)")
        self._names.add(name)
        self.entries.append(CpioEntry(name, full_mode, ino, size))

    def symlink(self, name: str, target: str) -> None:
        # buffer-format.rst: the data of a symlink is its target (c_filesize must not be 0), without a NUL.
        encoded = self._check_name(name)
        data = target.encode()
        if not data or b"\0" in data or len(data) > PATH_MAX:
            raise InputError(f"symlink {name!r} -> {target!r}: the target must be 1 to {PATH_MAX} bytes, no NUL")
        mode = stat.S_IFLNK | 0o777
        ino = self._header(encoded, mode, len(data), 1, (0, 0))
        self._write(data)
        self._names.add(name)
        self.entries.append(CpioEntry(name, mode, ino, len(data), target=target))

    def device(self, name: str, kind: str, major: int, minor: int, mode: int = 0o600) -> None:
        """A character ("c") or block ("b") device node; the kernel mknods it with (c_rmaj, c_rmin)."""
        if kind not in ("c", "b"):
            raise InputError(f"device node {name!r}: kind {kind!r} is neither 'c' nor 'b'")
        # new_encode_dev (include/linux/kdev_t.h): 12 bits of major, 20 of minor.
        if not (0 <= major < 1 << 12 and 0 <= minor < 1 << 20):
            raise InputError(f"device node {name!r}: {major}:{minor} is outside Linux's 12-bit major, 20-bit minor")
        encoded = self._check_name(name)
        full_mode = (stat.S_IFCHR if kind == "c" else stat.S_IFBLK) | (mode & 0o7777)
        ino = self._header(encoded, full_mode, 0, 1, (major, minor))
        self._names.add(name)
        self.entries.append(CpioEntry(name, full_mode, ino, 0, rdev=(major, minor)))

    def trailer(self) -> None:
        """The end-of-archive entry "TRAILER!!!" (all fields 0 but c_nlink 1 and c_namesize); nothing follows."""
        if self._closed:
            raise InputError("cpio trailer written twice")
        encoded = TRAILER_NAME.encode()
        self._align()
        fields = (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(encoded) + 1, 0)
        self._write(NEWC_MAGIC + b"".join(b"%08X" % v for v in fields))
        self._write(encoded + b"\0")
        self._align()
        self._closed = True


# ---- busybox ----------------------------------------------------------------------------------------------------

_ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr (include/uapi/linux/elf.h)
_ELF_PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr
_EM_X86_64 = 62
_PT_INTERP = 3


def check_busybox(path: Path) -> None:
    """Raise InputError unless path is a static x86-64 ELF executable (nothing else can run as the first process
    in a root holding no libraries)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_ELF_HEADER.size)
            if len(head) < _ELF_HEADER.size or head[:4] != b"\x7fELF":
                raise InputError(f"busybox {path}: not an ELF file (no \\x7fELF magic)")
            ident, e_type, machine, _, _, phoff, _, _, _, phentsize, phnum, _, _, _ = _ELF_HEADER.unpack(head)
            if ident[4] != 2 or ident[5] != 1:
                raise InputError(f"busybox {path}: not a 64-bit little-endian ELF (EI_CLASS {ident[4]}, "
                                 f"EI_DATA {ident[5]})")  # fmt: skip
            if machine != _EM_X86_64:
                raise InputError(f"busybox {path}: ELF machine {machine}, not x86-64 ({_EM_X86_64})")
            if e_type not in (2, 3):
                raise InputError(f"busybox {path}: ELF type {e_type} is not an executable (ET_EXEC or ET_DYN)")
            if phentsize < _ELF_PHDR.size or phnum == 0:
                raise InputError(f"busybox {path}: no program headers")
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            if len(table) < phentsize * phnum:
                raise InputError(f"busybox {path}: program headers run past the end of the file")
            for i in range(phnum):
                if _ELF_PHDR.unpack_from(table, i * phentsize)[0] == _PT_INTERP:
                    raise InputError(f"busybox {path}: dynamically linked (PT_INTERP); the initramfs holds no "
                                     "libraries, use busybox-static")  # fmt: skip
    except OSError as exc:
        raise InputError(f"busybox {path}: {exc.strerror or exc}") from None


# ---- /init ------------------------------------------------------------------------------------------------------

INIT_TEMPLATE = r"""#!/bin/busybox sh
# /init of a lazyaccept initramfs (lazyaccept.guest.initramfs writes it; rebuild it rather than edit it).
# As PID 1 it mounts /proc and a tmpfs on /run and powers off at the end. Run as any other process (a test) it
# mounts nothing, never powers off, reads $LAZYACCEPT_PROC and writes under $LAZYACCEPT_FILL_DIR instead.
export PATH="${LAZYACCEPT_PATH:-/bin}"
M='@MARKER@'
PROC="${LAZYACCEPT_PROC:-/proc}"
FILL_DIR="${LAZYACCEPT_FILL_DIR:-/run/lazyaccept}"
FILL_MIB='@FILL_MIB@'
KEYS='@KEYS@'
set -f  # the command line is split into words below, never globbed

[ "$$" = 1 ] && mount -t proc proc /proc
for word in $(cat "$PROC/cmdline"); do
    case "$word" in
        @FILL_PARAM@=*) FILL_MIB="${word#*=}" ;;
    esac
done
echo "$M start fill_mib=$FILL_MIB kernel=$(cat "$PROC/sys/kernel/osrelease")"

meminfo() {
    echo "$M $1"
    sed -n -E "s/^(($KEYS):.*)\$/$M $1 \\1/p" "$PROC/meminfo"
}

meminfo before
case "$FILL_MIB" in
    '' | *[!0-9]* | 0?* | ??????????*)
        echo "$M fill error: @FILL_PARAM@=$FILL_MIB is not a whole number of MiB (at most 9 digits)"
        FILL_MIB=0 ;;
esac
if [ "$FILL_MIB" -gt 0 ]; then
    echo "$M fill $FILL_MIB MiB"
    # tmpfs pages are page-allocator pages; size=0 would mean unlimited, hence the extra MiB.
    [ "$$" = 1 ] && mount -t tmpfs -o "size=$((FILL_MIB + 1))m,mode=0755" tmpfs /run
    mkdir -p "$FILL_DIR"
    err=$(dd if=/dev/zero of="$FILL_DIR/fill" bs=1048576 count="$FILL_MIB" 2>&1 >/dev/null)
    rc=$?
    bytes=$(stat -c %s "$FILL_DIR/fill" 2>/dev/null) || bytes=0
    if [ "$rc" = 0 ] && [ "$bytes" = "$((FILL_MIB * 1048576))" ]; then
        echo "$M fill done $bytes bytes"
    else
        echo "$err" | sed "s/^/$M fill error: /"
        echo "$M fill failed dd-status=$rc $bytes bytes"
    fi
fi
meminfo after
echo "$M end"

echo "$M poweroff"
if [ "$$" = 1 ]; then
    sync
    poweroff -f
else
    eval "${LAZYACCEPT_POWEROFF:-exit 0}"
fi
# Reached only when power-off returned (no ACPI S5 in the firmware's tables, or not permitted).
echo "$M poweroff failed"
[ "$$" = 1 ] || exit 1
halt -f
while :; do sleep 3600; done
"""


@dataclass(frozen=True)
class InitOptions:
    """What /init is built with: the default fill (the kernel's `lazyaccept.fill_mib=N` overrides it), the
    marker that starts every line it prints, and the /proc/meminfo fields it reports (kB lines only)."""

    fill_mib: int = DEFAULT_FILL_MIB
    marker: str = DEFAULT_MARKER
    keys: tuple[str, ...] = DEFAULT_KEYS

    def __post_init__(self) -> None:
        if isinstance(self.fill_mib, bool) or not isinstance(self.fill_mib, int):
            raise InputError(f"fill {self.fill_mib!r}: expected a whole number of MiB")
        if not 0 <= self.fill_mib <= FILL_MIB_MAX:
            raise InputError(f"fill {self.fill_mib} MiB: must be 0 to {FILL_MIB_MAX}")
        if not _MARKER_RE.fullmatch(self.marker):
            raise InputError(f"marker {self.marker!r}: use letters, digits, '.', '_' and '-' (not first)")
        if not self.keys or any(not _KEY_RE.fullmatch(k) for k in self.keys):
            raise InputError(f"meminfo keys {self.keys!r}: expected field names such as MemFree")


def parse_fill_mib(text: str) -> int:
    """A fill size in MiB from the command line: a whole number, 0 to FILL_MIB_MAX."""
    if not re.fullmatch(r"[0-9]+", text.strip()):
        raise InputError(f"fill {text!r}: expected a whole number of MiB (0 or more)")
    value = int(text)
    InitOptions(fill_mib=value)  # range check
    return value


def init_script(options: InitOptions = InitOptions()) -> str:
    return (
        INIT_TEMPLATE.replace("@MARKER@", options.marker)
        .replace("@FILL_MIB@", str(options.fill_mib))
        .replace("@KEYS@", "|".join(options.keys))
        .replace("@FILL_PARAM@", FILL_PARAM)
    )


# ---- the image --------------------------------------------------------------------------------------------------

# (name, kind, major, minor, mode): Documentation/admin-guide/devices.txt. console is the one the kernel needs.
DEVICE_NODES = (("dev/console", "c", 5, 1, 0o600), ("dev/null", "c", 1, 3, 0o666), ("dev/zero", "c", 1, 5, 0o666))


@dataclass(frozen=True)
class InitramfsImage:
    path: Path
    size: int  # bytes of the file written
    sha256: str  # of the file written
    cpio_size: int  # bytes of the archive before compression
    cpio_sha256: str  # of the uncompressed archive (independent of the zlib build)
    compression: str  # "none" or "gzip"
    entries: tuple[CpioEntry, ...]
    options: InitOptions
    busybox: Path


def write_archive(sink: _Sink, busybox: Path, options: InitOptions) -> CpioWriter:
    """The archive's entries into sink (parents first), ending with the trailer."""
    w = CpioWriter(sink)
    for d in ("bin", "dev", "proc", "run"):
        w.directory(d)
    w.copy_file("bin/busybox", busybox, 0o755)
    for applet in APPLETS:
        w.symlink(f"bin/{applet}", "busybox")
    for name, kind, major, minor, mode in DEVICE_NODES:
        w.device(name, kind, major, minor, mode)
    w.data_file("init", init_script(options).encode(), 0o755)
    w.trailer()
    return w


def write_initramfs(
    out: Path | str, busybox: Path | str, options: InitOptions = InitOptions(), *, compress: bool = False
) -> InitramfsImage:
    """Write the initramfs to out (atomically: a temporary file renamed into place) and describe it."""
    out, busybox = Path(out), Path(busybox)
    check_busybox(busybox)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}-")
    try:
        with os.fdopen(fd, "wb") as raw:
            image = _HashingSink(raw)
            if compress:
                # No name and mtime 0 in the gzip header (RFC 1952): the same archive gives the same bytes.
                with gzip.GzipFile(filename="", mode="wb", fileobj=image, mtime=0, compresslevel=9) as gz:
                    cpio = _HashingSink(gz)
                    writer = write_archive(cpio, busybox, options)
            else:
                cpio = image
                writer = write_archive(cpio, busybox, options)
            cpio_size, cpio_sha256 = cpio.size, cpio.sha256.hexdigest()
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return InitramfsImage(
        out, image.size, image.sha256.hexdigest(), cpio_size, cpio_sha256, "gzip" if compress else "none",
        tuple(writer.entries), options, busybox,
    )  # fmt: skip


# What the kernel needs built in (=y: no module can load before /init runs) to unpack and run this image.
REQUIRED_CONFIG = (
    ("CONFIG_BLK_DEV_INITRD", "unpacks an initramfs handed over by the loader"),
    ("CONFIG_BINFMT_ELF", "runs busybox"),
    ("CONFIG_BINFMT_SCRIPT", "runs /init, a #! script"),
    ("CONFIG_PROC_FS", "/proc/meminfo and /proc/cmdline"),
    ("CONFIG_TMPFS", "the fill's tmpfs on /run"),
)


def kernel_config_problems(config_text: str, *, compress: bool = False) -> list[str]:
    """What a kernel .config lacks to boot this initramfs (empty when nothing): one sentence per option."""
    config = parse_config(config_text)
    needed = list(REQUIRED_CONFIG)
    if compress:
        needed.append(("CONFIG_RD_GZIP", "decompresses a gzip initramfs"))
    return [
        f"{name}={config.get(name, 'n')}, needs y: it {why}" for name, why in needed if config.get(name) != "y"
    ]


# ---- the console ------------------------------------------------------------------------------------------------


@dataclass
class MeminfoReport:
    """What /init printed, read back from a console log. before/after: meminfo field -> kB."""

    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    started: bool = False
    fill_mib: int | None = None  # the size /init used (from the command line or its default); None: not seen
    kernel_release: str = ""
    fill_started: bool = False  # "<marker> fill N MiB"
    fill_done: bool = False
    fill_bytes: int | None = None  # bytes the fill file held (done or failed)
    fill_errors: list[str] = field(default_factory=list)
    end_seen: bool = False
    poweroff_seen: bool = False  # /init was about to run poweroff -f
    poweroff_failed: bool = False  # poweroff -f returned
    kernel_power_down: bool = False  # kernel/reboot.c: "reboot: Power down"
    # kernel/reboot.c: "reboot: System halted", or in 6.12 and later "reboot: Power off not available: System
    # halted instead" (no power-off handler: no ACPI S5); the VMM has to stop the guest itself.
    kernel_halted: bool = False
    runs: int = 0  # how many "<marker> start" lines: the report is the last run's

    def missing(self, keys: Iterable[str] = DEFAULT_KEYS) -> list[str]:
        """The "before KEY"/"after KEY" readings absent (not printed, or cut by a kernel message)."""
        return [f"{when} {k}" for when, got in (("before", self.before), ("after", self.after)) for k in keys
                if k not in got]  # fmt: skip

    def change(self, key: str) -> int | None:
        """after - before in kB, None unless both were read."""
        if key in self.before and key in self.after:
            return self.after[key] - self.before[key]
        return None


# ECMA-48 escape sequences: CSI (ESC [ parameters intermediates final) and the two-byte ones (ESC c resets).
_ESCAPE_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[ -/]*[0-~]")


def parse_meminfo_blocks(console: str, marker: str = DEFAULT_MARKER) -> MeminfoReport:
    """Read /init's lines out of a console log.

    Every line /init prints starts with the marker, so each is understood on its own wherever kernel messages
    fall between them; terminal escape sequences (firmware and BIOS clear the screen) are dropped, and text before
    the marker on the same line (a timestamp, an unterminated kernel message) is skipped. A value is taken only
    from a whole line (`KEY: digits kB` to the end): a line a kernel message cut in two yields nothing rather than
    a wrong number, and shows up in missing(). A "start" line begins a new run (a log of two boots reports the
    last).
    """
    if not _MARKER_RE.fullmatch(marker):
        raise InputError(f"marker {marker!r}: use letters, digits, '.', '_' and '-' (not first)")
    m = re.escape(marker)
    line_re = re.compile(rf"{m} (.*?)\s*$")
    value_re = re.compile(r"(before|after) ([A-Za-z][A-Za-z0-9_]*):\s+(\d+) kB")
    report = MeminfoReport()
    for raw in console.splitlines():
        line = _ESCAPE_RE.sub("", raw).replace("\0", "")
        if "reboot: Power down" in line:
            report.kernel_power_down = True
        if re.search(r"reboot: .*System halted", line):
            report.kernel_halted = True
        found = line_re.search(line)
        if not found:
            continue
        rest = found[1]
        if start := re.fullmatch(r"start fill_mib=(\S*) kernel=(\S*)", rest):
            runs = report.runs + 1
            report = MeminfoReport(started=True, runs=runs, kernel_release=start[2])
            report.fill_mib = int(start[1]) if start[1].isdigit() else None
        elif value := value_re.fullmatch(rest):
            (report.before if value[1] == "before" else report.after)[value[2]] = int(value[3])
        elif fill := re.fullmatch(r"fill (\d+) MiB", rest):
            report.fill_started = True
            report.fill_mib = int(fill[1])
        elif done := re.fullmatch(r"fill done (\d+) bytes", rest):
            report.fill_done = True
            report.fill_bytes = int(done[1])
        elif failed := re.fullmatch(r"fill failed dd-status=(\d+) (\d+) bytes", rest):
            report.fill_bytes = int(failed[2])
            report.fill_errors.append(f"dd exited with status {failed[1]}")
        elif rest.startswith("fill error: "):
            report.fill_errors.append(rest[len("fill error: "):])
        elif rest == "end":
            report.end_seen = True
        elif rest == "poweroff":
            report.poweroff_seen = True
        elif rest == "poweroff failed":
            report.poweroff_failed = True
    return report
