"""The real Debian binaries lazyaccept boots and reads: obtained, verified, extracted and cached.

Unmodified Debian packages from trixie (13), forky (14) and bookworm (12), pinned by name, version, suite and
SHA256 (the value in Debian's package index); PACKAGES lists them with the files used from each. They come
from, in this order:
  1. a folder of .deb files (with a SHA256SUMS file): `lazyaccept --debs DIR` or $LAZYACCEPT_DEBS (such a
     folder must hold every package not marked apt_only), else, only when running from a source checkout,
     ../shared/debs next to the checkout. An installed lazyaccept never looks at a path of the machine it
     was built on;
  2. a .deb this module downloaded before, kept in the cache;
  3. `apt-get download NAME=VERSION` through a private apt configuration that reuses the Debian mirror this
     machine is configured with, with the package's own suite (works on a Debian 12 machine too).
Packages marked apt_only are not part of the shared folder: they come from the cache or apt (a folder that
happens to hold one is still used). Every .deb is checked against its pinned SHA256 before use, whatever its
source. Extracted trees are cached under $LAZYACCEPT_CACHE/binaries (default <checkout>/.cache/binaries in a
source checkout, else ~/.cache/lazyaccept/binaries), one directory per package SHA256, so a second call does no
work.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lazyaccept import progress
from lazyaccept.errors import LazyAcceptError


class BinaryError(LazyAcceptError):
    """A pinned Debian package that cannot be found, does not match its checksum, or cannot be extracted."""


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    arch: str
    sha256: str
    suite: str = "trixie"
    members: tuple[str, ...] = ()  # the files lazyaccept uses, relative to the package root
    apt_only: bool = False  # not in the shared folder of .deb files: obtained through apt (and cached)

    @property
    def filename(self) -> str:
        """The name Debian's pool gives the file: the version without its epoch (busybox-static has one)."""
        return f"{self.name}_{self.version.split(':', 1)[-1]}_{self.arch}.deb"

    @property
    def spec(self) -> str:
        return f"{self.name}={self.version}"


OVMF_FD = "usr/share/ovmf/OVMF.fd"
OVMF_CODE_4M_FD = "usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_INTELTDX_FD = "usr/share/ovmf/OVMF.inteltdx.ms.fd"
LINUX_RELEASE = "6.12.117+deb13-cloud-amd64"
LINUX_VMLINUZ = f"boot/vmlinuz-{LINUX_RELEASE}"
LINUX_CONFIG = f"boot/config-{LINUX_RELEASE}"
LINUX72_RELEASE = "7.2.12+deb14-cloud-amd64"
LINUX72_VMLINUZ = f"usr/lib/modules/{LINUX72_RELEASE}/vmlinuz"
LINUX61_RELEASE = "6.1.0-50-cloud-amd64"
LINUX61_VMLINUZ = f"boot/vmlinuz-{LINUX61_RELEASE}"
LINUX61_CONFIG = f"boot/config-{LINUX61_RELEASE}"
GRUB_EFI = "usr/lib/grub/x86_64-efi/monolithic/grubx64.efi"
SYSTEMD_BOOT_EFI = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
SYSTEMD_STUB = "usr/lib/systemd/boot/efi/linuxx64.efi.stub"
SHIM_EFI = "usr/lib/shim/shimx64.efi"
SHIM_SIGNED_EFI = "usr/lib/shim/shimx64.efi.signed"
LINUX_SIGNED_VMLINUZ = f"boot/vmlinuz-{LINUX_RELEASE}"
BUSYBOX = "usr/bin/busybox"

OVMF = DebPackage(
    "ovmf", "2025.02-8+deb13u1", "all",
    "78e0d54df11fc77406cb7a0bc9a39e5bca6d1cbe06556b91d9a73491c52decdf",
    "trixie", (OVMF_FD, OVMF_CODE_4M_FD),
)
OVMF_GENERIC = DebPackage(
    "ovmf-generic", "2026.08+ds-2", "all",
    "05c1593998ba58700ff86c062bde306321af1f5a2943ea9ceef6c2332f3f3374",
    "forky", (OVMF_FD,),
)
OVMF_INTELTDX = DebPackage(
    "ovmf-inteltdx", "2026.08+ds-2", "all",
    "87123a9bf4dc1af7bbc48257a9b3db5933ff695167476d4fa48b705da1011fb1",
    "forky", (OVMF_INTELTDX_FD,),
)
LINUX = DebPackage(
    "linux-image-6.12.117+deb13-cloud-amd64-unsigned", "6.12.117-1", "amd64",
    "4113a615a1f1535ed4356ca03d428c74536b00f6ccb58e049a2ffd6a1cb3f1ad",
    "trixie", (LINUX_VMLINUZ, LINUX_CONFIG),
)
LINUX72 = DebPackage(
    "linux-binary-7.2.12+deb14-cloud-amd64", "7.2.12-1", "amd64",
    "43451b88872589d518acba127482df16fab53e2a51e92811cbd6221ca92cb6bf",
    "forky", (LINUX72_VMLINUZ,),
)
# Linux 6.1 (Debian 12) has no unaccepted-memory support (CONFIG_UNACCEPTED_MEMORY came with 6.5); its cloud
# config also leaves CONFIG_INTEL_TDX_GUEST unset. It is not in the shared folder: apt fetches it from bookworm
# and the download cache keeps it.
LINUX61 = DebPackage(
    "linux-image-6.1.0-50-cloud-amd64-unsigned", "6.1.176-1", "amd64",
    "4f217f710203cdfedde21f836bc66a0a4d773752d7fe8e5e13f701f891788945",
    "bookworm", (LINUX61_VMLINUZ, LINUX61_CONFIG), apt_only=True,
)
GRUB = DebPackage(
    "grub-efi-amd64-unsigned", "2.12-9+deb13u4", "amd64",
    "191c9f9d3470c01097cdd2ed8e1f46a42bcec6594961c1193299f88631139a80",
    "trixie", (GRUB_EFI,),
)
GRUB214 = DebPackage(
    "grub-efi-amd64-unsigned", "2.14-4", "amd64",
    "6541bddbc2792b516035a6e0974a40fe2783d6bf1e12986aab67847eec71e717",
    "forky", (GRUB_EFI,),
)
SYSTEMD_BOOT = DebPackage(
    "systemd-boot-efi", "262-1", "amd64",
    "315ae06945f96544d07e5a68cfd5827f6ab452edf80e81cce2309c6e3452c1af",
    "forky", (SYSTEMD_BOOT_EFI, SYSTEMD_STUB),
)
SHIM = DebPackage(
    "shim-unsigned", "16.1-2~deb13u1", "amd64",
    "4e9a0742fef5419879ccef6b612bfffd0e92bf7047bf23a51f04106d33628f35",
    "trixie", (SHIM_EFI,),
)
# The Secure Boot chain (apt_only: not in the shared folder, fetched through apt and cached): shim 16.1 as
# Microsoft signed it (source shim-signed) with Debian's CA built in, and the same 6.12.117 cloud kernel as
# LINUX, signed by Debian's key (source linux-signed-amd64), which that CA verifies.
SHIM_SIGNED = DebPackage(
    "shim-signed", "1.51~1+deb13u1+16.1-2~deb13u1", "amd64",
    "3c802fa303c0e6bf126adee74028d1042e3120360d159c2c05181dc9b2f61005",
    "trixie", (SHIM_SIGNED_EFI,), apt_only=True,
)
LINUX_SIGNED = DebPackage(
    f"linux-image-{LINUX_RELEASE}", "6.12.117-1", "amd64",
    "e9893e5295d0549b8852611f12a4b8b5f6cc4b8128dcc2086b9847793b904ab7",
    "trixie", (LINUX_SIGNED_VMLINUZ,), apt_only=True,
)
BUSYBOX_STATIC = DebPackage(
    "busybox-static", "1:1.37.0-6+b9", "amd64",
    "598a3fd92bdafc34cd81196b2952ad36e910e47a4ecf162f8ce5e8e262598e53",
    "trixie", (BUSYBOX,),
)
PACKAGES: tuple[DebPackage, ...] = (
    BUSYBOX_STATIC, GRUB, GRUB214, LINUX72, LINUX, LINUX61, LINUX_SIGNED, OVMF_GENERIC, OVMF_INTELTDX, OVMF, SHIM,
    SHIM_SIGNED, SYSTEMD_BOOT,
)
# What the shared folder of .deb files (../shared/debs, $LAZYACCEPT_DEBS, --debs) holds.
FOLDER_PACKAGES: tuple[DebPackage, ...] = tuple(p for p in PACKAGES if not p.apt_only)

DEBIAN_SUITE = "trixie"
_HASH_CHUNK = 1 << 20


def repo_root() -> Path | None:
    """The source checkout this module runs from, if it runs from one (<root>/src/lazyaccept/binaries.py).

    An installed lazyaccept (site-packages/lazyaccept/binaries.py) has none; an editable install does.
    """
    here = Path(__file__).resolve()
    root = here.parents[2]
    if here.parents[1].name == "src" and (root / "pyproject.toml").is_file():
        return root
    return None


def find_debs_dir(environ: Mapping[str, str] | None = None) -> tuple[Path | None, bool]:
    """(folder of .deb files or None, whether the user named it explicitly).

    $LAZYACCEPT_DEBS (which `lazyaccept --debs DIR` sets), else ../shared/debs beside a source checkout.
    """
    env = os.environ if environ is None else environ
    named = env.get("LAZYACCEPT_DEBS")
    if named:
        path = Path(named).expanduser()
        if not path.is_dir():
            raise BinaryError(f"LAZYACCEPT_DEBS={named} is not a directory")
        return path, True
    root = repo_root()
    if root is not None and (root.parent / "shared" / "debs").is_dir():
        return root.parent / "shared" / "debs", False
    return None, False


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$LAZYACCEPT_CACHE/binaries, else <repo>/.cache/binaries (git-ignored), else ~/.cache/lazyaccept/binaries."""
    env = os.environ if environ is None else environ
    if env.get("LAZYACCEPT_CACHE"):
        return Path(env["LAZYACCEPT_CACHE"]).expanduser() / "binaries"
    root = repo_root()
    return (root / ".cache" if root else Path.home() / ".cache" / "lazyaccept") / "binaries"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_sha256sums(path: Path) -> dict[str, str]:
    """filename -> sha256 from a sha256sum-style file ('HASH  NAME' or 'HASH *NAME')."""
    sums: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([0-9a-fA-F]{64}) [ *](.+)$", line.strip())
        if m:
            sums[m.group(2)] = m.group(1).lower()
    return sums


def verify_deb(path: Path, package: DebPackage, listed: str | None = None) -> None:
    """The file must hash to the pinned SHA256; a SHA256SUMS entry, when given, must agree with the pin."""
    if listed is not None and listed != package.sha256:
        raise BinaryError(
            f"{package.spec}: SHA256SUMS next to {path} lists {listed}, but lazyaccept pins {package.sha256}"
        )
    actual = sha256_of(path)
    if actual != package.sha256:
        raise BinaryError(
            f"{package.spec}: {path} has SHA256 {actual}, expected {package.sha256} (corrupt or a different build)"
        )


# ---------------------------------------------------------------------------------------------------------
# apt fallback: a private configuration that touches nothing of the system's.


@dataclass(frozen=True)
class AptSource:
    uri: str
    suite: str
    components: tuple[str, ...]
    signed_by: str | None = None


_DEBIAN_CODENAMES = frozenset(
    {"buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
     "oldoldstable", "oldstable", "stable", "testing", "unstable"}
)
_SUITE_SUFFIXES = ("-security", "-updates", "-backports", "-proposed-updates", "-backports-sloppy")


def _suite_base(suite: str) -> str:
    suite = suite.split("/")[0]
    for suffix in _SUITE_SUFFIXES:
        if suite.endswith(suffix):
            return suite[: -len(suffix)]
    return suite


def parse_sources_list(text: str) -> list[AptSource]:
    """Binary ('deb') entries of a one-line-style sources.list."""
    sources = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^(\S+)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
        if not m or m.group(1) != "deb":
            continue
        options = dict(opt.split("=", 1) for opt in (m.group(2) or "").split() if "=" in opt)
        sources.append(AptSource(m.group(3), m.group(4), tuple(m.group(5).split()), options.get("signed-by")))
    return sources


def _deb822_paragraphs(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    key = None
    for raw in text.splitlines() + [""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                yield fields
            fields, key = {}, None
        elif raw[0] in " \t" and key:
            fields[key] += "\n" + raw.strip()
        elif ":" in raw:
            key, value = raw.split(":", 1)
            key = key.strip().lower()
            fields[key] = value.strip()


def parse_deb822_sources(text: str) -> list[AptSource]:
    """Binary ('deb') entries of a deb822-style .sources file, one per URI and suite."""
    sources = []
    for par in _deb822_paragraphs(text):
        if "deb" not in par.get("types", "").split() or par.get("enabled", "yes").lower() == "no":
            continue
        signed_by = par.get("signed-by") or None
        for uri in par.get("uris", "").split():
            for suite in par.get("suites", "").split():
                sources.append(AptSource(uri, suite, tuple(par.get("components", "").split()), signed_by))
    return sources


def system_apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    """What apt on this machine reads: sources.list, sources.list.d/*.list and *.sources (other names are off)."""
    sources: list[AptSource] = []
    main = etc_apt / "sources.list"
    if main.is_file():
        sources += parse_sources_list(main.read_text(errors="replace"))
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        for part in sorted(parts.iterdir()):
            if part.suffix == ".list" and part.is_file():
                sources += parse_sources_list(part.read_text(errors="replace"))
            elif part.suffix == ".sources" and part.is_file():
                sources += parse_deb822_sources(part.read_text(errors="replace"))
    return sources


def debian_mirrors(sources: Iterable[AptSource]) -> tuple[AptSource | None, AptSource | None]:
    """(the Debian archive mirror, the Debian security mirror) among the configured sources, if any.

    A source counts as Debian when its suite is a Debian codename or alias (with an optional -updates,
    -security... suffix) and it carries 'main'; other vendors' repositories use other suite names.
    """
    archive = security = None
    for src in sources:
        if "main" not in src.components or _suite_base(src.suite) not in _DEBIAN_CODENAMES:
            continue
        if not re.match(r"^(https?|file|mirror(\+\w+)?):", src.uri):
            continue
        if src.suite.endswith("-security"):
            security = security or src
        elif archive is None:
            archive = src
    return archive, security


def private_sources(
    archive: AptSource, security: AptSource | None, suite: str | Iterable[str] = DEBIAN_SUITE
) -> str:
    """A deb822 .sources text for SUITE, SUITE-updates and SUITE-security (each suite) on the machine's mirrors."""
    suites = [suite] if isinstance(suite, str) else list(dict.fromkeys(suite))

    def paragraph(uri: str, names: list[str], signed_by: str | None) -> str:
        lines = ["Types: deb", f"URIs: {uri}", f"Suites: {' '.join(names)}", "Components: main"]
        if signed_by:
            # A multi-line inline key keeps its continuation lines indented.
            lines.append("Signed-By: " + signed_by.replace("\n", "\n "))
        return "\n".join(lines) + "\n"

    text = paragraph(archive.uri, [n for s in suites for n in (s, f"{s}-updates")], archive.signed_by)
    if security is not None:
        text += "\n" + paragraph(security.uri, [f"{s}-security" for s in suites], security.signed_by)
    return text


def apt_options(workdir: Path) -> list[str]:
    """apt-get options that confine apt to workdir: own sources, lists and cache; amd64 indexes."""
    opts = {
        "Dir::Etc::SourceList": str(workdir / "sources.list"),
        "Dir::Etc::SourceParts": str(workdir / "sources.list.d"),
        "Dir::State::Lists": str(workdir / "lists"),
        "Dir::Cache": str(workdir / "cache"),
        "APT::Architecture": "amd64",
        "APT::Architectures": "amd64",
        "Acquire::Languages": "none",
    }
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # As root apt hands downloads to the _apt user, who cannot write into our directories.
        opts["APT::Sandbox::User"] = "root"
    args = []
    for key, value in opts.items():
        args += ["-o", f"{key}={value}"]
    return args


def prepare_apt_dir(workdir: Path, sources_text: str) -> None:
    for sub in ("sources.list.d", "lists/partial", "cache/archives/partial", "download"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    (workdir / "sources.list").write_text("")
    (workdir / "sources.list.d" / "lazyaccept.sources").write_text(sources_text)


def apt_download(packages: Iterable[DebPackage], workdir: Path, etc_apt: Path = Path("/etc/apt")) -> dict[str, Path]:
    """Download packages by name=version from their suites through a private apt configuration.

    Returns name -> downloaded .deb.
    """
    packages = list(packages)
    names = ", ".join(p.spec for p in packages)
    if shutil.which("apt-get") is None:
        raise BinaryError(f"cannot obtain {names}: no package folder found and apt-get is not available")
    archive, security = debian_mirrors(system_apt_sources(etc_apt))
    if archive is None:
        raise BinaryError(f"cannot obtain {names}: no package folder found and no Debian mirror in {etc_apt}")
    prepare_apt_dir(workdir, private_sources(archive, security, sorted({p.suite for p in packages})))
    base = ["apt-get", "-q", *apt_options(workdir)]
    download = workdir / "download"
    specs = [p.spec for p in packages]
    with progress.task(f"apt-get update ({', '.join(sorted({p.suite for p in packages}))})"):
        _apt(base + ["update"], download, names, "update")
    # The sizes first (a local answer once the lists are in), so that the bar has a total.
    try:
        uris = _apt(base + ["download", "--print-uris", *specs], download, names, "download --print-uris")
    except BinaryError:
        uris = ""  # no total then: the download below says what is wrong
    total = sum(int(m.group(1)) for m in re.finditer(r"^'[^']*' \S+ (\d+) ", uris, re.M)) or None
    with progress.task(f"apt-get download {', '.join(p.name for p in packages)}", total, "bytes") as task:
        _apt(base + ["download", *specs], download, names, "download",
             lambda: task.update(_bytes_under(download, workdir / "cache" / "archives")))
    found = {}
    for package in packages:
        matches = sorted(download.glob(f"{package.name}_*.deb"))
        # apt-get download keeps the epoch in the file name, %-escaped (1%3a1.37.0-6+b9).
        wanted = {package.filename, f"{package.name}_{package.version}_{package.arch}.deb"}
        exact = [m for m in matches if urllib.parse.unquote(m.name) in wanted]
        if not exact and len(matches) != 1:
            raise BinaryError(f"apt-get download did not produce {package.filename}")
        found[package.name] = (exact or matches)[0]
    return found


def _bytes_under(*folders: Path) -> int:
    """What apt has written so far (its partial files included)."""
    total = 0
    for folder in folders:
        for path in folder.rglob("*"):
            try:
                total += path.stat().st_size if path.is_file() else 0
            except OSError:  # renamed meanwhile
                pass
    return total


def _apt(cmd: list[str], cwd: Path, names: str, step: str, poll: Callable[[], None] | None = None) -> str:
    """Run apt-get (its output kept aside, `poll` called a few times a second); its stdout. Ctrl-C ends it too."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, text=True)
        try:
            while True:
                try:
                    proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    if poll is not None:
                        poll()
        finally:
            if proc.returncode is None:  # interrupted: apt must not go on writing into our folders
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        detail = (stderr or stdout).strip().splitlines()
        raise BinaryError(f"apt-get {step} for {names} failed ({detail[-1] if detail else f'exit {proc.returncode}'})")
    return stdout


# ---------------------------------------------------------------------------------------------------------
# Extraction: dpkg-deb when the machine has it, else a reader of the ar archive and its data.tar.


def ar_members(path: Path) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of each member of a Unix ar archive (a .deb)."""
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise BinaryError(f"{path} is not a Debian package (no ar archive magic)")
        pos = 8
        while True:
            header = f.read(60)
            if not header:
                return
            if len(header) < 60 or header[58:60] != b"`\n":
                raise BinaryError(f"{path}: corrupt ar member header at offset {pos:#x}")
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            try:
                size = int(header[48:58].decode("ascii").strip())
            except ValueError:
                raise BinaryError(f"{path}: corrupt ar member size at offset {pos + 48:#x}") from None
            yield name, pos + 60, size
            pos += 60 + size + (size & 1)
            f.seek(pos)


def _decompressor(name: str, blob: bytes, deb: Path) -> IO[bytes]:
    if name == "data.tar":
        return io.BytesIO(blob)
    if name.endswith((".xz", ".lzma")):
        return lzma.LZMAFile(io.BytesIO(blob))
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=io.BytesIO(blob))  # type: ignore[return-value]  # a binary IO in all but name
    if name.endswith(".bz2"):
        return bz2.BZ2File(io.BytesIO(blob))
    if name.endswith(".zst"):
        # Python 3.11 has no zstd; the zstd tool does it (none of the pinned packages uses zstd today).
        if shutil.which("zstd") is None:
            raise BinaryError(f"{deb}: {name} needs dpkg-deb or the zstd tool")
        proc = subprocess.run(["zstd", "-dc"], input=blob, capture_output=True, check=False)
        if proc.returncode != 0:
            raise BinaryError(f"{deb}: cannot decompress {name}: {proc.stderr.decode(errors='replace').strip()}")
        return io.BytesIO(proc.stdout)
    raise BinaryError(f"{deb}: unknown data member {name}")


def extract_deb_python(deb: Path, dest: Path) -> None:
    """What `dpkg-deb -x DEB DEST` does, in Python: unpack data.tar.* into dest."""
    if not hasattr(tarfile, "data_filter"):
        raise BinaryError("extracting .deb files without dpkg-deb needs Python 3.11.4 or later (tarfile filters)")
    data = [(n, off, size) for n, off, size in ar_members(deb) if n.startswith("data.tar")]
    if not data:
        raise BinaryError(f"{deb} has no data.tar member")
    name, offset, size = data[0]
    with open(deb, "rb") as f:
        f.seek(offset)
        blob = f.read(size)
    if len(blob) != size:
        raise BinaryError(f"{deb}: {name} is truncated")
    try:
        with _decompressor(name, blob, deb) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            # The "data" filter refuses absolute names, '..' and links that leave dest.
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError) as exc:
        raise BinaryError(f"{deb}: cannot extract {name}: {exc}") from None


def extract_deb(deb: Path, dest: Path, *, use_dpkg: bool | None = None) -> None:
    if use_dpkg is None:
        use_dpkg = shutil.which("dpkg-deb") is not None
    if not use_dpkg:
        extract_deb_python(deb, dest)
        return
    proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BinaryError(f"dpkg-deb -x {deb} failed: {proc.stderr.strip() or f'exit {proc.returncode}'}")


# ---------------------------------------------------------------------------------------------------------
# The store


class BinaryStore:
    """Where the pinned packages come from and where their extracted files are cached.

    debs_dir: a folder of .deb files; None looks it up (find_debs_dir). cache_dir: None is the default.
    allow_download: whether apt may be used when no folder holds a package. use_dpkg: None picks dpkg-deb
    when present, False forces the Python extractor.
    """

    def __init__(
        self,
        debs_dir: Path | str | None = None,
        cache_dir: Path | str | None = None,
        *,
        allow_download: bool = True,
        use_dpkg: bool | None = None,
    ):
        if debs_dir is not None:
            self.debs_dir: Path | None = Path(debs_dir)
            self.debs_named = True
        else:
            self.debs_dir, self.debs_named = find_debs_dir()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.allow_download = allow_download
        self.use_dpkg = use_dpkg

    def _from_folder(self, package: DebPackage) -> Path | None:
        if self.debs_dir is None:
            return None
        path = self.debs_dir / package.filename
        if not path.is_file():
            if self.debs_named and not package.apt_only:
                raise BinaryError(f"{package.spec}: {package.filename} is not in {self.debs_dir}")
            return None
        sums = self.debs_dir / "SHA256SUMS"
        listed = None
        if sums.is_file():
            listed = read_sha256sums(sums).get(package.filename)
            if listed is None:
                raise BinaryError(f"{package.spec}: {sums} has no line for {package.filename}")
        verify_deb(path, package, listed)
        return path

    def deb(self, package: DebPackage) -> Path:
        """The verified .deb of package: from the folder, the download cache, or apt."""
        found = self._from_folder(package)
        if found is not None:
            return found
        cached = self.cache_dir / "debs" / package.filename
        if cached.is_file():
            try:
                verify_deb(cached, package)
                return cached
            except BinaryError:
                cached.unlink()
        where = f"no {package.filename} in {self.debs_dir}" if self.debs_dir else "no package folder found"
        if not self.allow_download:
            raise BinaryError(
                f"{package.spec}: {where} (name a folder of the .deb files with --debs DIR or LAZYACCEPT_DEBS)"
            )
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cached.parent, prefix="apt-") as tmp:
            downloaded = apt_download([package], Path(tmp))[package.name]
            verify_deb(downloaded, package)
            os.replace(downloaded, cached)
        return cached

    def extracted(self, package: DebPackage) -> Path:
        """The root of package's extracted tree, extracting it on first use."""
        root = self.cache_dir / f"{package.name}_{package.sha256}"
        if root.is_dir():
            return root
        deb = self.deb(package)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.cache_dir, prefix=f".{package.name}-"))
        try:
            with progress.task(f"extracting {package.filename}"):
                extract_deb(deb, tmp, use_dpkg=self.use_dpkg)
            try:
                # Atomic: a directory named after the checksum is always a complete extraction.
                os.rename(tmp, root)
            except OSError:
                if not root.is_dir():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return root

    def file(self, package: DebPackage, member: str) -> Path:
        """A file of package (member relative to the package root, e.g. 'usr/share/ovmf/OVMF.fd')."""
        path = self.extracted(package) / member
        if not path.is_file():
            raise BinaryError(f"{package.spec} has no file {member}")
        return path

    def ovmf_fd(self) -> Path:
        return self.file(OVMF, OVMF_FD)

    def ovmf_code_4m_fd(self) -> Path:
        return self.file(OVMF, OVMF_CODE_4M_FD)

    def ovmf_2026_fd(self) -> Path:
        return self.file(OVMF_GENERIC, OVMF_FD)

    def ovmf_inteltdx_fd(self) -> Path:
        return self.file(OVMF_INTELTDX, OVMF_INTELTDX_FD)

    def linux_vmlinuz(self) -> Path:
        return self.file(LINUX, LINUX_VMLINUZ)

    def linux_config(self) -> Path:
        return self.file(LINUX, LINUX_CONFIG)

    def linux72_vmlinuz(self) -> Path:
        return self.file(LINUX72, LINUX72_VMLINUZ)

    def linux61_vmlinuz(self) -> Path:
        return self.file(LINUX61, LINUX61_VMLINUZ)

    def linux61_config(self) -> Path:
        return self.file(LINUX61, LINUX61_CONFIG)

    def grub_efi(self) -> Path:
        return self.file(GRUB, GRUB_EFI)

    def grub214_efi(self) -> Path:
        return self.file(GRUB214, GRUB_EFI)

    def systemd_boot_efi(self) -> Path:
        return self.file(SYSTEMD_BOOT, SYSTEMD_BOOT_EFI)

    def systemd_stub(self) -> Path:
        return self.file(SYSTEMD_BOOT, SYSTEMD_STUB)

    def shim_efi(self) -> Path:
        return self.file(SHIM, SHIM_EFI)

    def shim_signed_efi(self) -> Path:
        return self.file(SHIM_SIGNED, SHIM_SIGNED_EFI)

    def linux_signed_vmlinuz(self) -> Path:
        return self.file(LINUX_SIGNED, LINUX_SIGNED_VMLINUZ)

    def busybox(self) -> Path:
        return self.file(BUSYBOX_STATIC, BUSYBOX)


def pinned_package(path: str | Path) -> DebPackage | None:
    """The pinned package a file was extracted from (its cache folder is named after the package and checksum),
    so a report can say "Debian's linux-binary-7.2.12+deb14-cloud-amd64 7.2.12-1" rather than a cache path."""
    parts = set(Path(path).parts)
    return next((p for p in PACKAGES if f"{p.name}_{p.sha256}" in parts), None)


# The accessors above, for callers and tests that go over all of them.
ACCESSORS: tuple[str, ...] = (
    "ovmf_fd", "ovmf_code_4m_fd", "ovmf_2026_fd", "ovmf_inteltdx_fd", "linux_vmlinuz", "linux_config",
    "linux72_vmlinuz", "linux61_vmlinuz", "linux61_config", "grub_efi", "grub214_efi", "systemd_boot_efi",
    "systemd_stub", "shim_efi", "shim_signed_efi", "linux_signed_vmlinuz", "busybox",
)


def ovmf_fd() -> Path:
    """Debian 13's unified OVMF.fd (the TD firmware image)."""
    return BinaryStore().ovmf_fd()


def ovmf_code_4m_fd() -> Path:
    """Debian's OVMF_CODE_4M.fd (code half of the split image: carries TDVF metadata, not a valid TD image)."""
    return BinaryStore().ovmf_code_4m_fd()


def ovmf_2026_fd() -> Path:
    """OVMF.fd of edk2 2026.08 (ovmf-generic, forky): OvmfPkgX64 with 7 TDVF sections."""
    return BinaryStore().ovmf_2026_fd()


def ovmf_inteltdx_fd() -> Path:
    """OVMF.inteltdx.ms.fd (ovmf-inteltdx 2026.08, forky): the PEI-less IntelTdxX64 TDVF build."""
    return BinaryStore().ovmf_inteltdx_fd()


def linux_vmlinuz() -> Path:
    """The 6.12 cloud kernel with its EFI stub."""
    return BinaryStore().linux_vmlinuz()


def linux_config() -> Path:
    return BinaryStore().linux_config()


def linux72_vmlinuz() -> Path:
    """The Linux 7.2 cloud kernel (forky), the newest unaccepted-memory code."""
    return BinaryStore().linux72_vmlinuz()


def linux61_vmlinuz() -> Path:
    """The Debian 12 Linux 6.1 cloud kernel: no unaccepted-memory support (fetched through apt, then cached)."""
    return BinaryStore().linux61_vmlinuz()


def linux61_config() -> Path:
    return BinaryStore().linux61_config()


def grub_efi() -> Path:
    """GRUB 2.12's monolithic grubx64.efi."""
    return BinaryStore().grub_efi()


def grub214_efi() -> Path:
    """GRUB 2.14's monolithic grubx64.efi (forky)."""
    return BinaryStore().grub214_efi()


def systemd_boot_efi() -> Path:
    """systemd-boot 262's boot manager, systemd-bootx64.efi."""
    return BinaryStore().systemd_boot_efi()


def systemd_stub() -> Path:
    """systemd-stub 262 (linuxx64.efi.stub), the EFI stub of unified kernel images."""
    return BinaryStore().systemd_stub()


def shim_efi() -> Path:
    """shim 16.1's shimx64.efi (unsigned), the first-stage loader of Secure Boot chains."""
    return BinaryStore().shim_efi()


def shim_signed_efi() -> Path:
    """shim 16.1 signed by Microsoft's UEFI CA (shimx64.efi.signed), with Debian's CA as its vendor certificate."""
    return BinaryStore().shim_signed_efi()


def linux_signed_vmlinuz() -> Path:
    """The 6.12 cloud kernel of linux_vmlinuz, signed for Secure Boot by Debian (verified by shim's vendor CA)."""
    return BinaryStore().linux_signed_vmlinuz()


def busybox() -> Path:
    """The static busybox 1.37 binary (an initramfs /init for runs of the real kernel)."""
    return BinaryStore().busybox()
