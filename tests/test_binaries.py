"""Obtaining, verifying, extracting and caching the pinned Debian packages."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import pytest

from lazyaccept import binaries
from lazyaccept.binaries import (
    OVMF,
    PACKAGES,
    AptSource,
    BinaryError,
    BinaryStore,
    DebPackage,
)

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


def test_package_filenames():
    assert OVMF.filename == "ovmf_2025.02-8+deb13u1_all.deb"
    assert [p.spec for p in PACKAGES] == [
        "grub-efi-amd64-unsigned=2.12-9+deb13u4",
        "linux-image-6.12.117+deb13-cloud-amd64-unsigned=6.12.117-1",
        "ovmf=2025.02-8+deb13u1",
    ]


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
    assert {p.filename: p.sha256 for p in PACKAGES} == sums


@pytest.mark.real_binary
def test_real_files():
    assert binaries.ovmf_fd().stat().st_size == 0x400000
    assert binaries.ovmf_code_4m_fd().stat().st_size == 0x37C000
    assert binaries.linux_vmlinuz().read_bytes()[:2] == b"MZ"
    assert binaries.grub_efi().read_bytes()[:2] == b"MZ"
    config = binaries.linux_config().read_text()
    assert "CONFIG_UNACCEPTED_MEMORY=y" in config and "CONFIG_INTEL_TDX_GUEST=y" in config


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
