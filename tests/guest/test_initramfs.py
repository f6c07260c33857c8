"""The initramfs lazyaccept builds for runs of the real kernel (guest/initramfs.py): the newc archive read back by an
independent reader written here from Documentation/driver-api/early-userspace/buffer-format.rst, the image's
content with Debian's busybox, /init run on this machine by that busybox against a fake /proc, and the console
parser."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazyaccept.binaries import LINUX72_RELEASE, LINUX_RELEASE, BinaryStore
from lazyaccept.cli import main
from lazyaccept.errors import InputError
from lazyaccept.guest.initramfs import (
    APPLETS,
    DEFAULT_KEYS,
    FILL_PARAM,
    CpioWriter,
    InitOptions,
    check_busybox,
    init_script,
    kernel_config_problems,
    parse_fill_mib,
    parse_meminfo_blocks,
    write_initramfs,
)

# ---- an independent newc reader ---------------------------------------------------------------------------------

FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor", "rdevmajor",
          "rdevminor", "namesize", "check")  # fmt: skip


@dataclass
class Member:
    name: str
    header: dict[str, int]
    data: bytes
    offset: int  # of the header in the archive

    @property
    def mode(self) -> int:
        return self.header["mode"]


def read_newc(blob: bytes) -> list[Member]:
    """Every member up to and including TRAILER!!!, checking the format document's rules on the way: magic
    070701, fields of 8 upper- or lower-case hex digits, the name's NUL counted in namesize, each header and each
    data field starting on a 4-byte boundary, zero padding, nothing but zero bytes after the trailer."""
    members: list[Member] = []
    pos = 0
    while True:
        assert pos % 4 == 0, f"header at {pos} is not 4-byte aligned"
        head = blob[pos : pos + 110]
        assert len(head) == 110, f"archive ends inside a header at {pos}"
        assert head[:6] == b"070701", f"bad magic {head[:6]!r} at {pos}"
        values = {}
        for i, name in enumerate(FIELDS):
            text = head[6 + 8 * i : 14 + 8 * i].decode("ascii")
            assert re.fullmatch(r"[0-9A-Fa-f]{8}", text), f"field {name} {text!r} at {pos}"
            values[name] = int(text, 16)
        name_end = pos + 110 + values["namesize"]
        raw_name = blob[pos + 110 : name_end]
        assert raw_name.endswith(b"\0") and b"\0" not in raw_name[:-1], f"name at {pos} not NUL-terminated"
        data_at = name_end + (-name_end % 4)
        assert blob[name_end:data_at] == b"\0" * (data_at - name_end), "name padding is not zero"
        data = blob[data_at : data_at + values["filesize"]]
        assert len(data) == values["filesize"], "archive ends inside a file's data"
        member = Member(raw_name[:-1].decode(), values, data, pos)
        members.append(member)
        end = data_at + values["filesize"]
        pos = end + (-end % 4)
        assert blob[end:pos] == b"\0" * (pos - end), "data padding is not zero"
        if member.name == "TRAILER!!!":
            assert values["filesize"] == 0
            assert blob[pos:].strip(b"\0") == b"", "bytes after the trailer"
            return members


def by_name(members: list[Member]) -> dict[str, Member]:
    return {m.name: m for m in members}


# ---- the writer ------------------------------------------------------------------------------------------------


def test_writer_round_trips_every_kind_and_every_padding(tmp_path: Path) -> None:
    sink = io.BytesIO()
    w = CpioWriter(sink, mtime=1_700_000_000)
    w.directory("a")
    w.directory("a/bc", 0o700)
    contents = {f"a/f{'x' * n}": bytes(range(n)) * 3 for n in range(8)}  # names and sizes at every alignment
    for name, data in contents.items():
        w.data_file(name, data, 0o640)
    source = tmp_path / "big"
    source.write_bytes(os.urandom((3 << 20) + 5))  # more than one copy chunk, odd length
    w.copy_file("a/bc/big", source, 0o755)
    w.symlink("a/link", "bc/big")
    w.device("a/console", "c", 5, 1)
    w.device("a/sda", "b", 8, 0x12345, 0o660)
    w.trailer()
    blob = sink.getvalue()
    assert w.offset == len(blob) and len(blob) % 4 == 0

    members = read_newc(blob)
    assert [m.name for m in members] == [e.name for e in w.entries] + ["TRAILER!!!"]
    got = by_name(members)
    for name, data in contents.items():
        assert got[name].data == data and got[name].mode == stat.S_IFREG | 0o640
    assert got["a/bc/big"].data == source.read_bytes() and got["a/bc/big"].mode == stat.S_IFREG | 0o755
    assert got["a/bc"].mode == stat.S_IFDIR | 0o700 and got["a/bc"].header["nlink"] == 2
    assert got["a/link"].mode == stat.S_IFLNK | 0o777 and got["a/link"].data == b"bc/big"
    console = got["a/console"]
    assert stat.S_ISCHR(console.mode) and (console.header["rdevmajor"], console.header["rdevminor"]) == (5, 1)
    assert console.header["filesize"] == 0
    sda = got["a/sda"]
    assert stat.S_ISBLK(sda.mode) and (sda.header["rdevmajor"], sda.header["rdevminor"]) == (8, 0x12345)
    inodes = [m.header["ino"] for m in members[:-1]]
    assert inodes == list(range(1, len(inodes) + 1))  # deterministic: counted in writing order
    assert {m.header["mtime"] for m in members[:-1]} == {1_700_000_000}
    assert {(m.header["uid"], m.header["gid"], m.header["check"]) for m in members} == {(0, 0, 0)}


@pytest.mark.parametrize(
    ("action", "needle"),
    [
        (lambda w: w.data_file("/init", b""), "relative path"),
        (lambda w: w.data_file("a/../b", b""), "relative path"),
        (lambda w: w.data_file("a//b", b""), "relative path"),
        (lambda w: w.data_file("", b""), "relative path"),
        (lambda w: w.data_file("nodir/file", b""), "before its directory 'nodir'"),
        (lambda w: w.directory("d") or w.directory("d"), "written twice"),
        (lambda w: w.data_file("x" * 4096, b""), "PATH_MAX"),
        (lambda w: w.symlink("l", ""), "target must be"),
        (lambda w: w.device("d0", "p", 1, 1), "neither 'c' nor 'b'"),
        (lambda w: w.device("d0", "c", 4096, 0), "12-bit major"),
        (lambda w: w.trailer() or w.directory("late"), "after the trailer"),
        (lambda w: w.trailer() or w.trailer(), "trailer written twice"),
    ],
)
def test_writer_refuses_what_the_kernel_would_not_unpack(action, needle: str) -> None:
    with pytest.raises(InputError, match=re.escape(needle)):
        action(CpioWriter(io.BytesIO()))


# ---- busybox ------------------------------------------------------------------------------------------------------


def elf(*, cls: int = 2, machine: int = 62, e_type: int = 2, interp: bool = False) -> bytes:
    phdrs = struct.pack("<IIQQQQQQ", 3 if interp else 1, 0, 0, 0, 0, 0, 0, 0)
    ident = b"\x7fELF" + bytes([cls, 1, 1]) + bytes(9)
    header = struct.pack("<16sHHIQQQIHHHHHH", ident, e_type, machine, 1, 0, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    return header + phdrs


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"#!/bin/sh\n", "not an ELF file"),
        (b"\x7fELF", "not an ELF file"),
        (elf(cls=1), "not a 64-bit little-endian ELF"),
        (elf(machine=183), "ELF machine 183, not x86-64"),
        (elf(e_type=1), "ELF type 1 is not an executable"),
        (elf(interp=True), "dynamically linked"),
        (elf()[:-8], "program headers run past the end"),
    ],
)
def test_busybox_must_be_a_static_x86_64_elf(tmp_path: Path, data: bytes, needle: str) -> None:
    path = tmp_path / "busybox"
    path.write_bytes(data)
    with pytest.raises(InputError, match=needle):
        check_busybox(path)
    with pytest.raises(InputError, match=needle):
        write_initramfs(tmp_path / "out.cpio", path)
    assert not list(tmp_path.glob("*out.cpio*"))  # nothing left behind


def test_a_static_elf_passes_and_a_missing_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "ok").write_bytes(elf())
    check_busybox(tmp_path / "ok")
    (tmp_path / "pie").write_bytes(elf(e_type=3))
    check_busybox(tmp_path / "pie")  # static-pie
    with pytest.raises(InputError, match="No such file"):
        check_busybox(tmp_path / "missing")


@pytest.mark.parametrize("bad", [-1, 1_000_000_000, True, 1.5])
def test_fill_must_be_a_whole_number_of_mib(bad: object) -> None:
    with pytest.raises(InputError, match="fill"):
        InitOptions(fill_mib=bad)  # type: ignore[arg-type]
    for text in ("-3", "1.5", "", "12M", "1e3"):
        with pytest.raises(InputError, match="whole number"):
            parse_fill_mib(text)
    assert parse_fill_mib("0") == 0 and parse_fill_mib("4096") == 4096
    with pytest.raises(InputError, match="marker"):
        InitOptions(marker="a/b")
    with pytest.raises(InputError, match="keys"):
        InitOptions(keys=("Active(anon)",))


# ---- the image with Debian's busybox -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def busybox() -> Path:
    return BinaryStore().busybox()


@pytest.mark.real_binary
def test_image_holds_busybox_its_applets_the_console_and_init(tmp_path: Path, busybox: Path) -> None:
    options = InitOptions(fill_mib=96)
    image = write_initramfs(tmp_path / "initramfs.cpio", busybox, options)
    blob = image.path.read_bytes()
    assert image.size == len(blob) and image.sha256 == hashlib.sha256(blob).hexdigest()
    assert (image.cpio_size, image.cpio_sha256, image.compression) == (image.size, image.sha256, "none")
    got = by_name(read_newc(blob))

    bb = got["bin/busybox"]
    assert bb.data == busybox.read_bytes() and bb.mode == stat.S_IFREG | 0o755
    ident, e_type, machine = struct.unpack_from("<16sHH", bb.data)
    assert ident[:4] == b"\x7fELF" and ident[4] == 2 and machine == 62 and e_type in (2, 3)
    for applet in APPLETS:
        assert got[f"bin/{applet}"].mode == stat.S_IFLNK | 0o777 and got[f"bin/{applet}"].data == b"busybox"
    console = got["dev/console"]
    assert stat.S_ISCHR(console.mode) and (console.header["rdevmajor"], console.header["rdevminor"]) == (5, 1)
    assert stat.S_ISCHR(got["dev/zero"].mode) and got["dev/zero"].header["rdevminor"] == 5
    init = got["init"]
    assert init.mode == stat.S_IFREG | 0o755 and init.data.startswith(b"#!/bin/busybox sh\n")
    assert init.data.decode() == init_script(options) and "FILL_MIB='96'" in init.data.decode()
    for directory in ("bin", "dev", "proc", "run"):
        assert stat.S_ISDIR(got[directory].mode)
    # Parents before children, as the kernel creates them in order.
    seen: set[str] = set()
    for name in got:
        parent = name.rpartition("/")[0]
        assert not parent or parent in seen, name
        seen.add(name)


@pytest.mark.real_binary
def test_image_is_reproducible_and_gzip_holds_the_same_archive(tmp_path: Path, busybox: Path) -> None:
    first = write_initramfs(tmp_path / "a.cpio", busybox)
    second = write_initramfs(tmp_path / "b.cpio", busybox)
    assert first.sha256 == second.sha256 and first.path.read_bytes() == second.path.read_bytes()
    assert write_initramfs(tmp_path / "c.cpio", busybox, InitOptions(fill_mib=1)).sha256 != first.sha256
    packed = write_initramfs(tmp_path / "a.cpio.gz", busybox, compress=True)
    raw = packed.path.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and packed.size == len(raw) < first.size
    assert raw[3] & 0x08 == 0 and raw[4:8] == b"\0\0\0\0"  # no FNAME, MTIME 0 (RFC 1952)
    assert gzip.decompress(raw) == first.path.read_bytes()
    assert (packed.cpio_size, packed.cpio_sha256) == (first.size, first.sha256)
    assert write_initramfs(tmp_path / "b.cpio.gz", busybox, compress=True).sha256 == packed.sha256


@pytest.mark.real_binary
def test_cpio_tools_list_the_image(tmp_path: Path, busybox: Path) -> None:
    """busybox's own cpio applet is an independent reader; GNU cpio too when this machine has it."""
    image = write_initramfs(tmp_path / "i.cpio", busybox)
    expected = [e.name for e in image.entries]
    listers = [[str(busybox), "cpio", "-t"]]
    if shutil.which("cpio"):
        listers.append(["cpio", "-t", "--quiet"])
    for lister in listers:
        with open(image.path, "rb") as f:
            out = subprocess.run(lister, stdin=f, capture_output=True, text=True, timeout=60, check=True)
        assert out.stdout.split() == expected, lister


@pytest.mark.real_binary
def test_debian_612_cloud_kernel_can_unpack_and_run_it(busybox: Path) -> None:
    config = BinaryStore().linux_config().read_text()
    assert kernel_config_problems(config) == []
    assert kernel_config_problems(config, compress=True) == []  # CONFIG_RD_GZIP=y
    assert re.search(r"^CONFIG_UNACCEPTED_MEMORY=y$", config, re.M)
    without_gzip = config.replace("CONFIG_RD_GZIP=y", "# CONFIG_RD_GZIP is not set")
    assert kernel_config_problems(without_gzip) == []
    assert kernel_config_problems(without_gzip, compress=True) == [
        "CONFIG_RD_GZIP=n, needs y: it decompresses a gzip initramfs"
    ]
    modular = config.replace("CONFIG_BINFMT_SCRIPT=y", "CONFIG_BINFMT_SCRIPT=m")
    assert kernel_config_problems(modular) == ["CONFIG_BINFMT_SCRIPT=m, needs y: it runs /init, a #! script"]


@pytest.mark.real_binary
def test_every_command_init_runs_is_an_applet_it_gets(busybox: Path) -> None:
    listed = set(subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split())
    assert set(APPLETS) <= listed
    shell_words = {"export", "for", "in", "do", "done", "case", "esac", "if", "then", "else", "fi", "while", "set",
                   "eval", "exit", "meminfo", "[", "]", ":", "{", "}"}  # fmt: skip
    used = set()
    for line in init_script().splitlines()[1:]:
        code = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
        # A command starts a line, follows ; | && || $( or a case pattern's ).
        for piece in re.split(r"\|\||&&|[;|]|\$\(|\)\s", code):
            words = piece.split()
            if words and re.fullmatch(r"[a-z][a-z0-9_-]*", words[0]) and "=" not in words[0]:
                used.add(words[0])
    assert used - shell_words <= set(APPLETS), used - shell_words - set(APPLETS)
    assert {"dd", "mount", "poweroff", "sed", "halt"} <= used


# ---- /init on this machine -----------------------------------------------------------------------------------------


@dataclass
class FakeKernel:
    """A fake /proc whose meminfo is a FIFO: each time /init reads it, it gets numbers computed from what the
    fill directory holds at that moment (Shmem grows by the fill, MemFree and Unaccepted shrink)."""

    root: Path
    fill_dir: Path
    total_kb: int = 4 * 1024 * 1024
    unaccepted_kb: int = 3 * 1024 * 1024
    reads: int = 0

    def meminfo(self) -> str:
        fill_kb = sum(p.stat().st_size for p in self.fill_dir.glob("*")) // 1024 if self.fill_dir.is_dir() else 0
        free = self.total_kb - self.unaccepted_kb - 65536 - fill_kb
        # A kernel accepting on the page-allocator path keeps free memory up by accepting 2x what was taken.
        unaccepted = max(self.unaccepted_kb - 2 * fill_kb, 0)
        return (f"MemTotal:       {self.total_kb:8d} kB\nMemFree:        {free:8d} kB\n"
                f"MemAvailable:   {free:8d} kB\nShmem:          {fill_kb + 4:8d} kB\n"
                f"ShmemHugePages:        0 kB\nUnaccepted:     {unaccepted:8d} kB\n"
                "HugePages_Total:       0\n")  # fmt: skip

    def serve(self, stop: threading.Event) -> None:
        """One reading per reader process. A write-side open succeeds as soon as any reader has the FIFO open,
        and an exiting reader still counts as one after its fds have left /proc (the kernel releases the pipe
        later, in exit_task_work); so a reading is written only once a process not yet served holds the FIFO,
        and the writer reopens only after the last reader has gone (reopening while it drains would withhold
        its EOF)."""
        fifo = self.root / "proc" / "meminfo"
        served: set[int] = set()
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until some reader opens it
            except OSError:
                time.sleep(0.002)
                continue
            try:
                readers: set[int] = set()
                while not readers and not stop.is_set():
                    readers = fifo_holders(fifo) - served
                    if not readers:
                        time.sleep(0.002)
                if not readers:
                    return
                os.set_blocking(fd, True)
                try:
                    os.write(fd, self.meminfo().encode())
                except BrokenPipeError:
                    pass
            finally:
                os.close(fd)
            served |= readers
            self.reads += 1
            while served & fifo_holders(fifo) and not stop.is_set():
                time.sleep(0.002)


def fifo_holders(fifo: Path) -> set[int]:
    """The processes other than this one with fifo open (a process whose fd table is gone holds nothing)."""
    out = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == str(fifo):
                    out.add(int(fd_dir.parent.name))
                    break
            except OSError:
                continue  # closed since the listing; the others still count
    return out - {os.getpid()}


def run_init(
    tmp_path: Path, busybox: Path, cmdline: str, options: InitOptions | None = None, **env: str
) -> tuple[subprocess.CompletedProcess[str], FakeKernel]:
    root = tmp_path / "root"
    (root / "proc" / "sys" / "kernel").mkdir(parents=True)
    (root / "bin").mkdir()
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to(busybox)
    (root / "proc" / "cmdline").write_text(cmdline + "\n")
    (root / "proc" / "sys" / "kernel" / "osrelease").write_text("6.12.117+deb13-cloud-amd64\n")
    os.mkfifo(root / "proc" / "meminfo")
    (root / f"{FILL_PARAM}=1").write_text("")  # what an unquoted * in /proc/cmdline would glob to, were it globbed
    (root / "init").write_text(init_script(options or InitOptions()))
    kernel = FakeKernel(root, Path(env.get("LAZYACCEPT_FILL_DIR", root / "run" / "lazyaccept")))
    environ = {"LAZYACCEPT_PATH": str(root / "bin"), "LAZYACCEPT_PROC": str(root / "proc"),
               "LAZYACCEPT_FILL_DIR": str(kernel.fill_dir), **env}  # fmt: skip
    stop = threading.Event()
    server = threading.Thread(target=kernel.serve, args=(stop,), daemon=True)
    server.start()
    try:
        # Not PID 1: /init mounts nothing and never powers off (busybox is the shell: "#!/bin/busybox" is the
        # image's path, not this machine's).
        out = subprocess.run([str(busybox), "sh", str(root / "init")], env=environ, capture_output=True, text=True,
                             timeout=60, cwd=root)  # fmt: skip
    finally:
        stop.set()
        server.join(timeout=5)
    return out, kernel


@pytest.mark.real_binary
def test_init_measures_around_the_fill_from_the_command_line(tmp_path: Path, busybox: Path) -> None:
    out, kernel = run_init(tmp_path, busybox, f"console=ttyS0 {FILL_PARAM}=3 quiet", InitOptions(fill_mib=50))
    assert out.returncode == 0, out.stderr
    assert (kernel.fill_dir / "fill").stat().st_size == 3 << 20
    assert kernel.reads == 2
    report = parse_meminfo_blocks(out.stdout)
    assert report.started and report.runs == 1 and report.kernel_release == "6.12.117+deb13-cloud-amd64"
    assert report.fill_mib == 3 and report.fill_started and report.fill_done and report.fill_bytes == 3 << 20
    assert report.fill_errors == [] and report.missing() == []
    assert set(report.before) == set(DEFAULT_KEYS)  # MemAvailable and ShmemHugePages are not asked for
    assert report.change("Shmem") == 3 * 1024 and report.change("MemFree") == -3 * 1024
    assert report.change("Unaccepted") == -6 * 1024 and report.change("MemTotal") == 0
    assert report.end_seen and report.poweroff_seen and not report.poweroff_failed


@pytest.mark.real_binary
def test_init_uses_its_default_fill_and_a_custom_marker(tmp_path: Path, busybox: Path) -> None:
    options = InitOptions(fill_mib=2, marker="LA-7")
    out, kernel = run_init(tmp_path, busybox, "console=ttyS0 lazyaccept.fill_mibs=9", options)
    assert out.returncode == 0, out.stderr
    assert (kernel.fill_dir / "fill").stat().st_size == 2 << 20
    assert parse_meminfo_blocks(out.stdout).started is False  # another marker
    report = parse_meminfo_blocks(out.stdout, marker="LA-7")
    assert report.fill_mib == 2 and report.fill_done and report.change("Shmem") == 2048


@pytest.mark.real_binary
@pytest.mark.parametrize("value", ["12abc", "-1", "007", "1234567890", ""])
def test_init_refuses_a_bad_fill_and_still_measures(tmp_path: Path, busybox: Path, value: str) -> None:
    out, kernel = run_init(tmp_path, busybox, f"{FILL_PARAM}={value} *")  # "*": the line is never globbed
    assert out.returncode == 0, out.stderr
    assert not (kernel.fill_dir / "fill").exists()
    report = parse_meminfo_blocks(out.stdout)
    assert report.fill_errors == [f"{FILL_PARAM}={value} is not a whole number of MiB (at most 9 digits)"]
    assert not report.fill_started and report.missing() == [] and report.change("Shmem") == 0
    assert report.end_seen and report.poweroff_seen


@pytest.mark.real_binary
def test_init_reports_a_failed_fill_and_a_failed_poweroff(tmp_path: Path, busybox: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    out, _ = run_init(tmp_path, busybox, f"{FILL_PARAM}=1", LAZYACCEPT_FILL_DIR=str(blocker / "run"),
                      LAZYACCEPT_POWEROFF="false")  # fmt: skip
    assert out.returncode == 1
    report = parse_meminfo_blocks(out.stdout)
    assert report.fill_started and not report.fill_done and report.fill_bytes == 0
    assert report.fill_errors[-1] == "dd exited with status 1" and len(report.fill_errors) >= 2
    assert report.end_seen and report.poweroff_seen and report.poweroff_failed
    assert report.missing() == []


# ---- the console parser --------------------------------------------------------------------------------------------

CONSOLE = """\
[    0.000000] Linux version 6.12.117+deb13-cloud-amd64 (debian-kernel@lists.debian.org)\r
[    0.000000] Command line: console=ttyS0 lazyaccept.fill_mib=64\r
[    1.234567] Run /init as init process\r
lazyaccept-meminfo start fill_mib=64 kernel=6.12.117+deb13-cloud-amd64\r
lazyaccept-meminfo before\r
lazyaccept-meminfo before MemTotal:        4012344 kB\r
[    1.300000] random: crng init done\r
lazyaccept-meminfo before MemFree:          700000 kB\r
lazyaccept-meminfo before Shmem:               120 kB\r
[    1.310000] tsc: Refined TSC clocksource calibration: 2100.000 MHz\r
lazyaccept-meminfo before Unaccepted:      3145728 kB\r
lazyaccept-meminfo fill 64 MiB\r
lazyaccept-meminfo fill done 67108864 bytes\r
lazyaccept-meminfo after\r
lazyaccept-meminfo after MemTotal:        4012344 kB\r
lazyaccept-meminfo after MemFree:         [    2.000001] clocksource: Switched to clocksource tsc\r
 700000 kB\r
[    2.1] a message without its newline lazyaccept-meminfo after Shmem:             65656 kB\r
lazyaccept-meminfo after Unaccepted:      3014656 kB\r
lazyaccept-meminfo end\r
lazyaccept-meminfo poweroff\r
[    2.500000] ACPI: PM: Preparing to enter system sleep state S5\r
[    2.510000] reboot: Power down\r
"""


def test_parser_reads_through_interleaved_kernel_messages() -> None:
    report = parse_meminfo_blocks(CONSOLE)
    assert report.before == {"MemTotal": 4012344, "MemFree": 700000, "Shmem": 120, "Unaccepted": 3145728}
    # The MemFree line a kernel message cut in two gives no value (rather than a wrong one).
    assert report.after == {"MemTotal": 4012344, "Shmem": 65656, "Unaccepted": 3014656}
    assert report.missing() == ["after MemFree"] and report.change("MemFree") is None
    assert report.change("Unaccepted") == -131072 and report.change("Shmem") == 65536
    assert report.fill_mib == 64 and report.fill_done and report.fill_bytes == 64 << 20
    assert report.end_seen and report.poweroff_seen and report.kernel_power_down and not report.kernel_halted
    assert not report.poweroff_failed


def test_parser_keeps_the_last_run_and_sees_a_halt() -> None:
    second = CONSOLE.replace("fill_mib=64 kernel", "fill_mib=8 kernel").replace("reboot: Power down",
                                                                              "reboot: System halted")  # fmt: skip
    second = second.replace("lazyaccept-meminfo poweroff\r", "lazyaccept-meminfo poweroff\rlazyaccept-meminfo "
                            "poweroff failed\r")  # fmt: skip
    report = parse_meminfo_blocks(CONSOLE + second)
    assert report.runs == 2 and report.fill_mib == 64  # the "fill 64 MiB" line of the second run's log
    assert report.poweroff_failed and report.kernel_halted and not report.kernel_power_down
    assert parse_meminfo_blocks("") == parse_meminfo_blocks("no marker here\n")

    with pytest.raises(InputError, match="marker"):
        parse_meminfo_blocks(CONSOLE, marker="a b")


def test_parser_drops_terminal_escapes_and_sees_the_halt_of_a_kernel_without_s5() -> None:
    # As the Linux 7.2 console printed it after SeaBIOS (ESC c, ESC [?7l, ESC [2J glued to /init's first line);
    # "Power off not available" is 6.12's line when no power-off handler (ACPI S5) exists.
    console = ("\x1bc\x1b[?7l\x1b[2Jlazyaccept-meminfo start fill_mib=4 kernel=7.2.12+deb14-cloud-amd64\n"
               "lazyaccept-meminfo before Unac\x1b[0mcepted:   0 kB\nlazyaccept-meminfo poweroff\n"
               "[    5.212212] reboot: Power off not available: System halted instead\n")  # fmt: skip
    report = parse_meminfo_blocks(console)
    assert report.kernel_release == "7.2.12+deb14-cloud-amd64" and report.before == {"Unaccepted": 0}
    assert report.poweroff_seen and report.kernel_halted and not report.kernel_power_down


# ---- under the real kernel ---------------------------------------------------------------------------------------

QEMU = shutil.which("qemu-system-x86_64")


@pytest.mark.real_binary
@pytest.mark.parametrize(
    ("kernel", "release"), [("linux_vmlinuz", LINUX_RELEASE), ("linux72_vmlinuz", LINUX72_RELEASE)]
)
def test_real_kernel_runs_init_to_power_off(tmp_path: Path, busybox: Path, kernel: str, release: str) -> None:
    """Debian's 6.12 and 7.2 cloud kernels unpack the image, run /init and power off, on a plain q35 VM (TCG:
    not a TD, so Unaccepted stays 0; the fill, the readings and the ACPI S5 power-off are the real ones)."""
    assert QEMU is not None, "qemu-system-x86_64 is not installed: `make tools` installs Debian's qemu-system-x86"
    image = write_initramfs(tmp_path / "initramfs.cpio.gz", busybox, InitOptions(fill_mib=1), compress=True)
    vmlinuz = getattr(BinaryStore(), kernel)()
    log = tmp_path / "console.log"
    command = [QEMU, "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", "384M", "-smp", "1", "-display",
               "none", "-monitor", "none", "-serial", f"file:{log}", "-nic", "none", "-no-reboot",
               "-kernel", str(vmlinuz), "-initrd", str(image.path),
               "-append", f"console=ttyS0 {FILL_PARAM}=24 panic=-1"]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    console = log.read_text(errors="replace")
    assert out.returncode == 0, out.stderr + console[-3000:]
    report = parse_meminfo_blocks(console)
    assert report.missing() == [], console[-3000:]
    assert report.kernel_release == release
    assert report.fill_mib == 24 and report.fill_done and report.fill_bytes == 24 << 20  # the command line's
    assert report.before["Unaccepted"] == report.after["Unaccepted"] == 0
    assert abs(report.change("Shmem") - 24 * 1024) < 1024  # type: ignore[operator]
    assert report.change("MemFree") < -16 * 1024  # type: ignore[operator]
    assert report.end_seen and report.poweroff_seen and report.kernel_power_down and not report.poweroff_failed


# ---- the command ---------------------------------------------------------------------------------------------------


@pytest.mark.real_binary
def test_command_writes_the_image_and_prints_size_and_hash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "initramfs.cpio.gz"
    config = BinaryStore().linux_config()
    assert main(["initramfs", "--out", str(out), "--fill-mib", "256", "--gzip", "--kernel-config", str(config)]) == 0
    text = capsys.readouterr().out
    blob = out.read_bytes()
    assert f"size:      {len(blob)} bytes" in text and hashlib.sha256(blob).hexdigest() in text
    assert "fills 256 MiB unless the kernel command line has lazyaccept.fill_mib=N" in text
    assert main(["initramfs", "--out", str(tmp_path / "i.cpio"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data)[:3] == ["schema", "lazyaccept", "command"] and data["command"] == "initramfs"
    assert data["compression"] == "none" and data["fill_mib"] == 64
    assert data["sha256"] == hashlib.sha256((tmp_path / "i.cpio").read_bytes()).hexdigest()
    assert {"init", "bin/busybox", "dev/console"} <= set(data["entries"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--fill-mib", "-3"], "fill '-3': expected a whole number of MiB"),
        (["--fill-mib", "lots"], "fill 'lots'"),
        (["--busybox", "/dev/null"], "not an ELF file"),
        (["--busybox", "/no/such/busybox"], "No such file"),
        (["--marker", "two words"], "marker 'two words'"),
        (["--kernel-config", "/no/such/config"], "--kernel-config /no/such/config"),
    ],
)
def test_command_bad_input_is_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    out = subprocess.run([sys.executable, "-m", "lazyaccept", "initramfs", "--out", str(tmp_path / "x"), *args],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2 and needle in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "x").exists()


# ---- properties -----------------------------------------------------------------------------------------------------

KERNEL_LINE = st.builds(
    "[{:12.6f}] {}".format, st.floats(0, 9999), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
)


@settings(max_examples=100, deadline=None)
@given(
    before=st.fixed_dictionaries({k: st.integers(0, 1 << 40) for k in DEFAULT_KEYS}),
    after=st.fixed_dictionaries({k: st.integers(0, 1 << 40) for k in DEFAULT_KEYS}),
    noise=st.lists(st.lists(KERNEL_LINE, max_size=3), min_size=15, max_size=15),
    newline=st.sampled_from(["\n", "\r\n"]),
)
def test_parser_gets_every_value_whatever_kernel_lines_fall_between(
    before: dict[str, int], after: dict[str, int], noise: list[list[str]], newline: str
) -> None:
    m = "lazyaccept-meminfo"
    lines = [f"{m} start fill_mib=5 kernel=7.2.12+deb14-cloud-amd64", f"{m} before"]
    lines += [f"{m} before {k}: {v:>12} kB" for k, v in before.items()]
    lines += [f"{m} fill 5 MiB", f"{m} fill done 5242880 bytes", f"{m} after"]
    lines += [f"{m} after {k}: {v:>12} kB" for k, v in after.items()]
    lines += [f"{m} end", f"{m} poweroff"]
    text = "".join(newline.join([*extra, line]) + newline for extra, line in zip(noise, lines, strict=True))
    report = parse_meminfo_blocks(text)
    assert (report.before, report.after) == (before, after)
    assert report.kernel_release == "7.2.12+deb14-cloud-amd64" and report.fill_bytes == 5 << 20
    assert report.end_seen and report.poweroff_seen and report.missing() == []


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_parser_takes_any_text(text: str) -> None:
    report = parse_meminfo_blocks(text)
    assert all(v >= 0 for v in [*report.before.values(), *report.after.values()])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text("ab_.-", min_size=1, max_size=9), st.binary(max_size=11)), max_size=12,
                unique_by=lambda e: e[0]))
def test_writer_round_trips_any_names_and_contents(files: list[tuple[str, bytes]]) -> None:
    sink = io.BytesIO()
    w = CpioWriter(sink)
    w.directory("d")
    for name, data in files:
        if name in (".", ".."):
            continue
        w.data_file(f"d/{name}", data)
    w.trailer()
    got = {m.name: m.data for m in read_newc(sink.getvalue())}
    assert got == {"d": b"", **{f"d/{n}": d for n, d in files if n not in (".", "..")}, "TRAILER!!!": b""}
