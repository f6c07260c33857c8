"""Obtaining, verifying, extracting and caching the pinned Debian packages."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from lazyaccept import binaries, progress
from lazyaccept.binaries import (
    ACCESSORS,
    BUSYBOX_STATIC,
    FOLDER_PACKAGES,
    LINUX61,
    LINUX_SIGNED,
    OVMF,
    PACKAGES,
    SHIM,
    SHIM_SIGNED,
    AptSource,
    BinaryError,
    BinaryStore,
    DebPackage,
)
from lazyaccept.spec.pe_signing import certificate_table, has_sbat_section

# ---------------------------------------------------------------------------------------------------------
# A tiny .deb built here, so that most tests need no real package


def _tar_xz(entries: list[tuple[str, bytes | str]]) -> bytes:
    """entries: (name, bytes for a file | 'link:TARGET' for a symlink)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content.removeprefix("link:")
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def make_deb(entries: list[tuple[str, bytes | str]]) -> bytes:
    control = _tar_xz([("./control", b"Package: hello\nVersion: 1.0-1\nArchitecture: all\nMaintainer: x <x@x>\n"
                                       b"Description: test\n")])
    return _ar([("debian-binary", b"2.0\n"), ("control.tar.xz", control), ("data.tar.xz", _tar_xz(entries))])


HELLO_ENTRIES: list[tuple[str, bytes | str]] = [
    ("./usr/share/hello/hello.txt", b"hello, world\n"),
    ("./usr/share/hello/link.txt", "link:hello.txt"),
]


@pytest.fixture
def hello(tmp_path) -> tuple[DebPackage, Path]:
    """A folder holding hello_1.0-1_all.deb and its SHA256SUMS, and the package pinned to it."""
    data = make_deb(HELLO_ENTRIES)
    package = DebPackage("hello", "1.0-1", "all", hashlib.sha256(data).hexdigest())
    folder = tmp_path / "debs"
    folder.mkdir()
    (folder / package.filename).write_bytes(data)
    (folder / "SHA256SUMS").write_text(f"{package.sha256}  {package.filename}\n")
    return package, folder


def test_verified_package_is_extracted_and_cached(hello, tmp_path):
    package, folder = hello
    store = BinaryStore(folder, tmp_path / "cache", allow_download=False)
    path = store.file(package, "usr/share/hello/hello.txt")
    assert path.read_bytes() == b"hello, world\n"
    assert path.is_relative_to(tmp_path / "cache" / f"hello_{package.sha256}")
    assert (path.parent / "link.txt").is_symlink()
    # The cache is keyed by the checksum: the second call reads neither the .deb nor its hash.
    (folder / package.filename).unlink()
    assert store.file(package, "usr/share/hello/hello.txt") == path


@pytest.mark.parametrize("use_dpkg", [False, pytest.param(True, marks=pytest.mark.skipif(
    shutil.which("dpkg-deb") is None, reason="no dpkg-deb"))])
def test_both_extractors_give_the_same_tree(hello, tmp_path, use_dpkg):
    package, folder = hello
    store = BinaryStore(folder, tmp_path / f"cache-{use_dpkg}", allow_download=False, use_dpkg=use_dpkg)
    root = store.extracted(package)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())
    assert files == ["usr/share/hello/hello.txt", "usr/share/hello/link.txt"]


def test_corrupted_package_is_rejected_naming_it(hello, tmp_path):
    package, folder = hello
    deb = folder / package.filename
    data = bytearray(deb.read_bytes())
    data[-10] ^= 0xFF
    deb.write_bytes(bytes(data))
    store = BinaryStore(folder, tmp_path / "cache", allow_download=False)
    with pytest.raises(BinaryError, match=r"hello=1\.0-1: .* has SHA256 .*expected") as info:
        store.extracted(package)
    assert package.filename in str(info.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_sha256sums_disagreeing_with_the_pin_is_rejected(hello, tmp_path):
    package, folder = hello
    (folder / "SHA256SUMS").write_text(f"{'0' * 64}  {package.filename}\n")
    with pytest.raises(BinaryError, match=r"hello=1\.0-1: SHA256SUMS .* lists 0+, but lazyaccept pins"):
        BinaryStore(folder, tmp_path / "cache", allow_download=False).deb(package)


def test_sha256sums_without_the_package_is_rejected(hello, tmp_path):
    package, folder = hello
    (folder / "SHA256SUMS").write_text("")
    with pytest.raises(BinaryError, match="has no line for hello_1.0-1_all.deb"):
        BinaryStore(folder, tmp_path / "cache", allow_download=False).deb(package)


def test_missing_package_in_a_named_folder(hello, tmp_path):
    package, folder = hello
    (folder / package.filename).unlink()
    with pytest.raises(BinaryError, match=r"hello=1\.0-1: hello_1\.0-1_all\.deb is not in"):
        BinaryStore(folder, tmp_path / "cache").deb(package)


def test_no_folder_and_no_download(hello, tmp_path, monkeypatch):
    package, _ = hello
    monkeypatch.setattr(binaries, "find_debs_dir", lambda: (None, False))
    with pytest.raises(BinaryError, match=r"hello=1\.0-1: no package folder found"):
        BinaryStore(None, tmp_path / "cache", allow_download=False).deb(package)


def test_downloaded_package_is_verified_and_kept(hello, tmp_path, monkeypatch):
    package, folder = hello
    good = (folder / package.filename).read_bytes()
    calls = []

    def fake_download(packages, workdir):
        calls.append([p.spec for p in packages])
        out = workdir / "download" / package.filename
        out.parent.mkdir(parents=True)
        out.write_bytes(good)
        return {package.name: out}

    monkeypatch.setattr(binaries, "find_debs_dir", lambda: (None, False))
    monkeypatch.setattr(binaries, "apt_download", fake_download)
    store = BinaryStore(None, tmp_path / "cache")
    deb = store.deb(package)
    assert deb == tmp_path / "cache" / "debs" / package.filename
    assert store.deb(package) == deb  # from the download cache, no second download
    assert calls == [["hello=1.0-1"]]


def test_downloaded_package_with_wrong_checksum_is_rejected(hello, tmp_path, monkeypatch):
    package, _ = hello

    def fake_download(packages, workdir):
        out = workdir / package.filename
        out.write_bytes(b"not the package")
        return {package.name: out}

    monkeypatch.setattr(binaries, "find_debs_dir", lambda: (None, False))
    monkeypatch.setattr(binaries, "apt_download", fake_download)
    with pytest.raises(BinaryError, match=r"hello=1\.0-1: .* has SHA256"):
        BinaryStore(None, tmp_path / "cache").deb(package)
    assert not (tmp_path / "cache" / "debs" / package.filename).exists()


def test_hostile_archive_member_is_refused(tmp_path):
    data = make_deb([("../escape.txt", b"x")])
    deb = tmp_path / "evil.deb"
    deb.write_bytes(data)
    with pytest.raises(BinaryError, match="cannot extract"):
        binaries.extract_deb_python(deb, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_not_a_deb(tmp_path):
    path = tmp_path / "x.deb"
    path.write_bytes(b"PK\x03\x04 not an ar archive")
    with pytest.raises(BinaryError, match="not a Debian package"):
        binaries.extract_deb_python(path, tmp_path / "out")
    path.write_bytes(b"!<arch>\n" + b"debian-binary   0 garbage")
    with pytest.raises(BinaryError, match="corrupt ar member header"):
        list(binaries.ar_members(path))


def test_find_debs_dir_and_cache_dir_from_the_environment(tmp_path):
    assert binaries.find_debs_dir({"LAZYACCEPT_DEBS": str(tmp_path)}) == (tmp_path, True)
    with pytest.raises(BinaryError, match="LAZYACCEPT_DEBS=.* is not a directory"):
        binaries.find_debs_dir({"LAZYACCEPT_DEBS": str(tmp_path / "nope")})
    assert binaries.default_cache_dir({"LAZYACCEPT_CACHE": str(tmp_path)}) == tmp_path / "binaries"
    root = binaries.repo_root()
    assert root is not None and binaries.default_cache_dir({}) == root / ".cache" / "binaries"


def _fake_module_at(monkeypatch, path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("")
    monkeypatch.setattr(binaries, "__file__", str(path))


def test_a_source_checkout_finds_the_folder_beside_it(tmp_path, monkeypatch):
    (tmp_path / "shared" / "debs").mkdir(parents=True)
    (tmp_path / "clone").mkdir()
    (tmp_path / "clone" / "pyproject.toml").write_text("")
    _fake_module_at(monkeypatch, tmp_path / "clone" / "src" / "lazyaccept" / "binaries.py")
    assert binaries.repo_root() == tmp_path / "clone"
    assert binaries.find_debs_dir({}) == (tmp_path / "shared" / "debs", False)
    assert binaries.default_cache_dir({}) == tmp_path / "clone" / ".cache" / "binaries"


def test_an_installed_package_looks_at_no_path_of_the_build_machine(tmp_path, monkeypatch):
    # site-packages/lazyaccept/binaries.py, even with a pyproject.toml and a shared/debs where a checkout has them
    lib = tmp_path / "venv" / "lib"
    (lib / "pyproject.toml").parent.mkdir(parents=True)
    (lib / "pyproject.toml").write_text("")
    (tmp_path / "venv" / "shared" / "debs").mkdir(parents=True)
    _fake_module_at(monkeypatch, lib / "site-packages" / "lazyaccept" / "binaries.py")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert binaries.repo_root() is None
    assert binaries.find_debs_dir({}) == (None, False)
    assert binaries.find_debs_dir({"LAZYACCEPT_DEBS": str(tmp_path)}) == (tmp_path, True)
    assert binaries.default_cache_dir({}) == tmp_path / "home" / ".cache" / "lazyaccept" / "binaries"


def test_no_machine_path_is_written_into_the_module():
    text = Path(binaries.__file__).read_text()
    assert "/work" not in text and "DEFAULT_DEBS_DIR" not in text


def test_package_filenames():
    assert OVMF.filename == "ovmf_2025.02-8+deb13u1_all.deb"
    # The pool's file name drops the epoch; apt-get is asked for the full version.
    assert BUSYBOX_STATIC.filename == "busybox-static_1.37.0-6+b9_amd64.deb"
    assert BUSYBOX_STATIC.spec == "busybox-static=1:1.37.0-6+b9"
    assert [(p.spec, p.suite) for p in PACKAGES] == [
        ("busybox-static=1:1.37.0-6+b9", "trixie"),
        ("grub-efi-amd64-unsigned=2.12-9+deb13u4", "trixie"),
        ("grub-efi-amd64-unsigned=2.14-4", "forky"),
        ("linux-binary-7.2.12+deb14-cloud-amd64=7.2.12-1", "forky"),
        ("linux-image-6.12.117+deb13-cloud-amd64-unsigned=6.12.117-1", "trixie"),
        ("linux-image-6.1.0-50-cloud-amd64-unsigned=6.1.176-1", "bookworm"),
        ("linux-image-6.12.117+deb13-cloud-amd64=6.12.117-1", "trixie"),
        ("ovmf-generic=2026.08+ds-2", "forky"),
        ("ovmf-inteltdx=2026.08+ds-2", "forky"),
        ("ovmf=2025.02-8+deb13u1", "trixie"),
        ("shim-unsigned=16.1-2~deb13u1", "trixie"),
        ("shim-signed=1.51~1+deb13u1+16.1-2~deb13u1", "trixie"),
        ("systemd-boot-efi=262-1", "forky"),
    ]
    assert [p for p in PACKAGES if p.apt_only] == [LINUX61, LINUX_SIGNED, SHIM_SIGNED]
    assert len({p.filename for p in PACKAGES}) == len(PACKAGES)
    assert all(p.members and len(p.sha256) == 64 for p in PACKAGES)


def test_every_member_has_an_accessor():
    store = BinaryStore(Path("unused"), Path("unused"), allow_download=False)
    seen = []
    store.file = lambda package, member: seen.append((package, member))  # type: ignore[method-assign]
    for name in ACCESSORS:
        getattr(store, name)()
        getattr(binaries, name)  # and the module-level function of the same name
    assert sorted(seen, key=str) == sorted(((p, m) for p in PACKAGES for m in p.members), key=str)


def test_apt_only_package_is_not_required_in_a_named_folder(hello, tmp_path, monkeypatch):
    package, folder = hello
    apt_only = DebPackage("absent", "1.0-1", "all", package.sha256, "bookworm", ("x",), apt_only=True)
    good = (folder / package.filename).read_bytes()

    def fake_download(packages, workdir):
        out = workdir / apt_only.filename
        out.write_bytes(good)
        return {apt_only.name: out}

    monkeypatch.setattr(binaries, "apt_download", fake_download)
    assert BinaryStore(folder, tmp_path / "cache").deb(apt_only) == tmp_path / "cache" / "debs" / apt_only.filename
    with pytest.raises(BinaryError, match="is not in"):
        BinaryStore(folder, tmp_path / "cache").deb(DebPackage("absent", "1.0-1", "all", package.sha256))


# ---------------------------------------------------------------------------------------------------------
# apt fallback: the private configuration (the download itself is not run in tests)

ONE_LINE = """\
# a comment
deb http://mirror.invalid/debian bookworm main contrib non-free-firmware
deb-src http://mirror.invalid/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://mirror.invalid/debian-security bookworm-security main
deb https://vendor.invalid/apt cloud-sdk main   # trailing comment
deb http://ports.invalid/ubuntu jammy main
"""

DEB822 = """\
Types: deb deb-src
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

# a vendor repository
Types: deb
URIs: https://vendor.invalid/node
Suites: nodistro
Components: main

Types: deb
Enabled: no
URIs: http://disabled.invalid/debian
Suites: trixie
Components: main

Types: deb
URIs: http://inline.invalid/debian
Suites: sid
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 AAAA
 -----END PGP PUBLIC KEY BLOCK-----
"""


def test_parse_one_line_sources():
    sources = binaries.parse_sources_list(ONE_LINE)
    assert sources == [
        AptSource("http://mirror.invalid/debian", "bookworm", ("main", "contrib", "non-free-firmware")),
        AptSource("http://mirror.invalid/debian-security", "bookworm-security", ("main",), "/usr/share/keyrings/k.gpg"),
        AptSource("https://vendor.invalid/apt", "cloud-sdk", ("main",)),
        AptSource("http://ports.invalid/ubuntu", "jammy", ("main",)),
    ]
    archive, security = binaries.debian_mirrors(sources)
    assert archive is not None and archive.uri == "http://mirror.invalid/debian"
    assert security is not None and security.uri == "http://mirror.invalid/debian-security"


def test_parse_deb822_sources():
    sources = binaries.parse_deb822_sources(DEB822)
    assert [(s.uri, s.suite) for s in sources] == [
        ("http://mirror.invalid/debian", "bookworm"),
        ("http://mirror.invalid/debian", "bookworm-updates"),
        ("https://vendor.invalid/node", "nodistro"),
        ("http://inline.invalid/debian", "sid"),
    ]
    assert sources[0].signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"
    assert sources[3].signed_by is not None and sources[3].signed_by.splitlines()[1:3] == [
        "-----BEGIN PGP PUBLIC KEY BLOCK-----", "."
    ]
    archive, security = binaries.debian_mirrors(sources)
    assert archive == sources[0] and security is None


def test_private_sources_reuse_the_mirror_with_trixie():
    archive, security = binaries.debian_mirrors(binaries.parse_sources_list(ONE_LINE))
    text = binaries.private_sources(archive, security)
    paragraphs = [dict(line.split(": ", 1) for line in par.splitlines()) for par in text.strip().split("\n\n")]
    assert paragraphs == [
        {"Types": "deb", "URIs": "http://mirror.invalid/debian", "Suites": "trixie trixie-updates",
         "Components": "main"},
        {"Types": "deb", "URIs": "http://mirror.invalid/debian-security", "Suites": "trixie-security",
         "Components": "main", "Signed-By": "/usr/share/keyrings/k.gpg"},
    ]
    # An inline key keeps its continuation lines, so apt can still read it.
    inline = binaries.parse_deb822_sources(DEB822)[3]
    text = binaries.private_sources(inline, None)
    assert "Signed-By: \n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n AAAA\n" in text
    assert binaries.parse_deb822_sources(text)[0].signed_by == inline.signed_by


def test_private_sources_for_several_suites():
    archive, security = binaries.debian_mirrors(binaries.parse_sources_list(ONE_LINE))
    text = binaries.private_sources(archive, security, ["bookworm", "forky", "bookworm"])
    suites = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("Suites:")]
    assert suites == ["bookworm bookworm-updates forky forky-updates", "bookworm-security forky-security"]


# A stand-in for apt-get on PATH: it logs its arguments, answers --print-uris with the sizes, and "downloads" the
# files named in $FAKE_APT_FILES (name=size, comma separated) a chunk at a time.
FAKE_APT_GET = """\
import json, os, sys, time
args = sys.argv[1:]
with open(os.environ["FAKE_APT_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
files = [f.split("=") for f in os.environ.get("FAKE_APT_FILES", "").split(",") if f]
if "download" in args and "--print-uris" in args:
    for name, size in files:
        print(f"'http://mirror.invalid/pool/{name}' {name} {size} SHA256:00")
elif "download" in args:
    for name, size in files:
        with open(name, "wb") as out:
            for _ in range(4):
                out.write(b"x" * (int(size) // 4))
                out.flush()
                time.sleep(float(os.environ.get("FAKE_APT_DELAY", "0")))
"""


@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    """An apt-get of our own first on PATH (see FAKE_APT_GET); returns the list of its argument lists."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "apt-get"
    script.write_text(f"#!{sys.executable}\n" + FAKE_APT_GET)
    script.chmod(0o755)
    log = tmp_path / "apt.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_APT_LOG", str(log))

    def commands() -> list[list[str]]:
        return [json.loads(line) for line in log.read_text().splitlines()]

    return commands


def test_apt_download_asks_for_each_package_in_its_suite(tmp_path, monkeypatch, fake_apt):
    etc = tmp_path / "apt"
    etc.mkdir()
    (etc / "sources.list").write_text(ONE_LINE)
    # (the same two files whatever was asked for; apt-get keeps the epoch in the name, %-escaped)
    monkeypatch.setenv("FAKE_APT_FILES",
                       "busybox-static_1%3a1.37.0-6+b9_amd64.deb=4,shim-unsigned_16.1-2~deb13u1_amd64.deb=4")
    found = binaries.apt_download([BUSYBOX_STATIC, SHIM], tmp_path / "work", etc)
    assert found == {
        "busybox-static": tmp_path / "work" / "download" / "busybox-static_1%3a1.37.0-6+b9_amd64.deb",
        "shim-unsigned": tmp_path / "work" / "download" / "shim-unsigned_16.1-2~deb13u1_amd64.deb",
    }
    commands = fake_apt()
    assert commands[0][-1] == "update"
    specs = ["busybox-static=1:1.37.0-6+b9", "shim-unsigned=16.1-2~deb13u1"]
    assert commands[1][-4:] == ["download", "--print-uris", *specs]
    assert commands[2][-3:] == ["download", *specs]
    sources = (tmp_path / "work" / "sources.list.d" / "lazyaccept.sources").read_text()
    assert "Suites: trixie trixie-updates\n" in sources and "http://mirror.invalid/debian\n" in sources
    monkeypatch.setenv("FAKE_APT_FILES", "")
    with pytest.raises(BinaryError, match="did not produce linux-image-6.1.0-50-cloud-amd64-unsigned_6.1.176-1"):
        binaries.apt_download([LINUX61], tmp_path / "w61", etc)
    sources = (tmp_path / "w61" / "sources.list.d" / "lazyaccept.sources").read_text()
    assert "Suites: bookworm bookworm-updates\n" in sources and "Suites: bookworm-security\n" in sources


class _Recorder(progress.Reporter):
    """Every task and its updates, as (description, total, unit, [completed...])."""

    def __init__(self):
        self.tasks: list[tuple[str, float | None, str, list[float]]] = []

    def task(self, description, total=None, unit=""):
        seen: list[float] = []
        self.tasks.append((description, total, unit, seen))

        class Recorded(progress.Task):
            def update(self, completed=None, *, total=None, description=None):
                seen.append(completed)

            def close(self):
                seen.append(-1.0)  # closed

        return Recorded()


def test_apt_download_shows_the_package_and_its_bytes(tmp_path, monkeypatch, fake_apt):
    etc = tmp_path / "apt"
    etc.mkdir()
    (etc / "sources.list").write_text(ONE_LINE)
    monkeypatch.setenv("FAKE_APT_FILES", "ovmf_2025.02-8+deb13u1_all.deb=4000")
    monkeypatch.setenv("FAKE_APT_DELAY", "0.25")
    recorder = _Recorder()
    previous = progress.install(recorder)
    try:
        binaries.apt_download([OVMF], tmp_path / "work", etc)
    finally:
        progress.install(previous)
    update, download = recorder.tasks
    assert update[0] == "apt-get update (trixie)" and update[3] == [-1.0]
    description, total, unit, seen = download
    assert (description, total, unit) == ("apt-get download ovmf", 4000, "bytes")
    assert seen[-1] == -1.0
    sizes = seen[:-1]
    assert sizes == sorted(sizes) and 0 < sizes[0] < 4000  # seen growing while apt wrote it


def test_interrupted_download_leaves_nothing_a_later_run_uses(hello, tmp_path, monkeypatch):
    package, folder = hello
    good = (folder / package.filename).read_bytes()

    def interrupted(packages, workdir):
        (workdir / "download").mkdir(parents=True)
        (workdir / "download" / package.filename).write_bytes(good[: len(good) // 2])  # half a file, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(binaries, "find_debs_dir", lambda: (None, False))
    monkeypatch.setattr(binaries, "apt_download", interrupted)
    store = BinaryStore(None, tmp_path / "cache")
    with pytest.raises(KeyboardInterrupt):
        store.deb(package)
    assert list((tmp_path / "cache" / "debs").iterdir()) == []  # no half file, no apt work folder

    def completes(packages, workdir):
        out = workdir / package.filename
        out.write_bytes(good)
        return {package.name: out}

    monkeypatch.setattr(binaries, "apt_download", completes)
    assert store.deb(package).read_bytes() == good  # the next run downloads again (and verifies)


def test_interrupted_extraction_leaves_no_tree_a_later_run_trusts(hello, tmp_path, monkeypatch):
    package, folder = hello
    store = BinaryStore(folder, tmp_path / "cache")
    real_extract = binaries.extract_deb

    def interrupted(deb, dest, use_dpkg=None):
        (dest / "usr").mkdir(parents=True)
        (dest / "usr" / "partial").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(binaries, "extract_deb", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.extracted(package)
    assert list((tmp_path / "cache").iterdir()) == []  # neither the tree nor its temporary folder
    monkeypatch.setattr(binaries, "extract_deb", real_extract)
    root = store.extracted(package)
    assert root.name == f"{package.name}_{package.sha256}" and not (root / "usr" / "partial").exists()


def test_system_sources_read_like_apt(tmp_path):
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text("deb http://mirror.invalid/debian bookworm main\n")
    (etc / "sources.list.d" / "debian.sources").write_text(DEB822)
    (etc / "sources.list.d" / "old.list.disabled").write_text("deb http://off.invalid/debian trixie main\n")
    uris = {s.uri for s in binaries.system_apt_sources(etc)}
    assert uris == {"http://mirror.invalid/debian", "https://vendor.invalid/node", "http://inline.invalid/debian"}
    assert binaries.system_apt_sources(tmp_path / "none") == []


def test_no_debian_mirror_is_a_clear_error(tmp_path, monkeypatch):
    etc = tmp_path / "apt"
    etc.mkdir()
    (etc / "sources.list").write_text("deb https://vendor.invalid/apt cloud-sdk main\n")
    monkeypatch.setattr(binaries.shutil, "which", lambda name: "/usr/bin/" + name)
    with pytest.raises(BinaryError, match=r"cannot obtain ovmf=2025\.02-8\+deb13u1: .*no Debian mirror"):
        binaries.apt_download([OVMF], tmp_path / "work", etc)


def test_apt_is_confined_to_its_own_directories(tmp_path):
    opts = binaries.apt_options(tmp_path)
    pairs = dict(opt.split("=", 1) for opt in opts[1::2])
    assert opts[::2] == ["-o"] * len(pairs)
    for key in ("Dir::Etc::SourceList", "Dir::Etc::SourceParts", "Dir::State::Lists", "Dir::Cache"):
        assert Path(pairs[key]).is_relative_to(tmp_path), key
    binaries.prepare_apt_dir(tmp_path, "Types: deb\n")
    assert (tmp_path / "sources.list").read_text() == ""
    assert (tmp_path / "sources.list.d" / "lazyaccept.sources").read_text() == "Types: deb\n"
    assert (tmp_path / "lists" / "partial").is_dir() and (tmp_path / "cache" / "archives" / "partial").is_dir()


def test_no_archive_host_is_written_into_the_module():
    text = Path(binaries.__file__).read_text()
    for host in ("debian.org", "deb.debian", "snapshot.debian", "ftp."):
        assert host not in text


# ---------------------------------------------------------------------------------------------------------
# The real packages


@pytest.mark.real_binary
def test_pinned_checksums_match_the_folder():
    folder, _ = binaries.find_debs_dir()
    assert folder is not None
    sums = binaries.read_sha256sums(folder / "SHA256SUMS")
    for package in FOLDER_PACKAGES:
        assert sums.get(package.filename) == package.sha256, package.spec
        assert (folder / package.filename).is_file(), package.filename
    # The folder may hold more one day; today it holds exactly the pinned packages, apt-only ones aside.
    assert sorted(sums) == sorted(p.filename for p in FOLDER_PACKAGES)
    assert LINUX61.filename not in sums


APT_ONLY_ACCESSORS = ("linux61_vmlinuz", "linux61_config", "shim_signed_efi", "linux_signed_vmlinuz")
MAGIC = {".efi": b"MZ", ".stub": b"MZ", "vmlinuz": b"MZ", "busybox": b"\x7fELF"}


@pytest.mark.real_binary
@pytest.mark.parametrize("accessor", [a for a in ACCESSORS if a not in APT_ONLY_ACCESSORS])
def test_real_accessor_gives_a_file_from_the_folder(accessor):
    folder, _ = binaries.find_debs_dir()
    assert folder is not None
    store = BinaryStore(folder)
    path = getattr(store, accessor)()
    assert path.is_file() and path.stat().st_size > 0
    top, *rest = path.relative_to(store.cache_dir).parts
    package = next(p for p in FOLDER_PACKAGES if top == f"{p.name}_{p.sha256}")
    assert "/".join(rest) in package.members
    assert store.deb(package) == folder / package.filename
    head = path.read_bytes()[:4]
    for suffix, magic in MAGIC.items():
        if path.name.endswith(suffix):
            assert head.startswith(magic), path
    if path.name.endswith(".fd"):
        assert path.stat().st_size % 0x1000 == 0


@pytest.mark.real_binary
def test_real_files():
    assert binaries.ovmf_fd().stat().st_size == 0x400000
    assert binaries.ovmf_code_4m_fd().stat().st_size == 0x37C000
    assert binaries.linux_vmlinuz().read_bytes()[:2] == b"MZ"
    assert binaries.grub_efi().read_bytes()[:2] == b"MZ"
    assert binaries.grub214_efi().read_bytes() != binaries.grub_efi().read_bytes()
    config = binaries.linux_config().read_text()
    assert "CONFIG_UNACCEPTED_MEMORY=y" in config and "CONFIG_INTEL_TDX_GUEST=y" in config


@pytest.mark.real_binary
def test_real_linux61_comes_through_apt():
    """Debian 12's 6.1 kernel is not in the folder: apt fetches it from bookworm (once; the cache keeps it)."""
    store = BinaryStore()
    vmlinuz = store.linux61_vmlinuz()
    assert vmlinuz.read_bytes()[:2] == b"MZ"
    assert store.deb(LINUX61) == store.cache_dir / "debs" / LINUX61.filename
    config = store.linux61_config().read_text()
    assert "CONFIG_EFI_STUB=y" in config and "CONFIG_UNACCEPTED_MEMORY" not in config


@pytest.mark.real_binary
def test_real_corrupted_copy_is_rejected(tmp_path):
    folder, _ = binaries.find_debs_dir()
    assert folder is not None
    copy = tmp_path / "debs"
    copy.mkdir()
    shutil.copy(folder / "SHA256SUMS", copy)
    data = bytearray((folder / OVMF.filename).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / OVMF.filename).write_bytes(bytes(data))
    with pytest.raises(BinaryError, match=r"^ovmf=2025\.02-8\+deb13u1: .*ovmf_2025\.02-8\+deb13u1_all\.deb has SHA256"):
        BinaryStore(copy, tmp_path / "cache", allow_download=False).ovmf_fd()


@pytest.mark.real_binary
def test_real_python_extractor_matches_dpkg(tmp_path):
    folder, _ = binaries.find_debs_dir()
    assert folder is not None
    python_root = BinaryStore(folder, tmp_path / "py", use_dpkg=False).extracted(OVMF)
    names = sorted(str(p.relative_to(python_root)) for p in python_root.rglob("*") if not p.is_dir())
    assert "usr/share/ovmf/OVMF.fd" in names and "usr/share/OVMF/OVMF_CODE_4M.fd" in names
    assert (python_root / "usr/share/OVMF/OVMF_CODE_4M.ms.fd").is_symlink()
    if shutil.which("dpkg-deb"):
        dpkg_root = BinaryStore(folder, tmp_path / "dpkg", use_dpkg=True).extracted(OVMF)
        assert names == sorted(str(p.relative_to(dpkg_root)) for p in dpkg_root.rglob("*") if not p.is_dir())
        for name in ("usr/share/ovmf/OVMF.fd", "usr/share/OVMF/OVMF_CODE_4M.fd"):
            assert (python_root / name).read_bytes() == (dpkg_root / name).read_bytes()


@pytest.mark.real_binary
def test_real_second_call_is_instant(tmp_path, monkeypatch):
    folder, _ = binaries.find_debs_dir()
    store = BinaryStore(folder, tmp_path / "cache")
    first = store.ovmf_fd()

    def boom(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(binaries, "extract_deb", boom)
    monkeypatch.setattr(binaries, "sha256_of", boom)
    # Neither the .deb nor its checksum is touched again: the checksum-named directory is the proof.
    assert store.ovmf_fd() == first


@pytest.mark.real_binary
def test_signed_shim_and_kernel_come_through_apt_and_carry_signatures():
    # Not in the shared folder: the store fetches them through apt (then its cache). Where that is impossible the
    # store's error says why (no Debian mirror configured, apt-get failing): the test fails with it, never skips.
    store = BinaryStore()
    shim, kernel = store.shim_signed_efi(), store.linux_signed_vmlinuz()
    for package, path in ((SHIM_SIGNED, shim), (LINUX_SIGNED, kernel)):
        assert store.deb(package).name == package.filename
        offset, size = certificate_table(path)
        assert size > 0 and offset + size <= path.stat().st_size, path  # a WIN_CERTIFICATE (PKCS#7) is there
    unsigned = store.linux_vmlinuz()
    assert certificate_table(unsigned)[1] == 0
    assert kernel.read_bytes()[0x200:0x1000] == unsigned.read_bytes()[0x200:0x1000]  # the same build's header
    # shim carries SBAT metadata; Debian's 6.12 kernel has none, so shim 16.1 will not load it itself.
    assert has_sbat_section(shim) and not has_sbat_section(kernel)
