"""Build lazyaccept's wheel and run it from a fresh venv outside the checkout (part of `make test`).

    python tools/wheel_check.py [--debs DIR] [--keep]

Steps, all in a new temporary directory: copy the checkout's files (git's view: tracked and untracked but not
ignored) so the build writes nothing into the checkout; `pip wheel --no-deps`; check the wheel holds every file
of src/lazyaccept and declares the dependencies of pyproject.toml; make a venv and `pip install` the wheel with
its dependencies (constrained to requirements.txt's pins, so pip's cache serves them), with the man page and
shell completions under the venv's share/; then, from an empty
working directory with LAZYACCEPT_CACHE in the temporary directory and without LAZYACCEPT_DEBS or PYTHONPATH,
run the installed `lazyaccept`: every module imports, no path of the checkout is looked at, `firmware-info
--builtin --json` and `[--debs DIR] boot -m 4G --json` (once with --cpu auto, once with unicorn) succeed.
Without --debs the boot gets the packages through apt. Exit 0 when all pass, 1 (with the reason) when not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import importlib, json, os, pkgutil, sys
import lazyaccept
from lazyaccept import binaries
# The pytest plugin is loaded by pytest, which brings pytest: here only its pytest11 entry point is checked.
skip = {"lazyaccept.__main__", "lazyaccept.pytest_plugin"}
modules = [m.name for m in pkgutil.walk_packages(lazyaccept.__path__, "lazyaccept.") if m.name not in skip]
for name in modules:
    importlib.import_module(name)
from importlib.metadata import entry_points
assert [e.value for e in entry_points(group="pytest11") if e.name == "lazyaccept"] == ["lazyaccept.pytest_plugin"]
import unicorn
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot
print(json.dumps({
    "file": lazyaccept.__file__, "modules": len(modules), "repo_root": str(binaries.repo_root()),
    "debs_without_env": str(binaries.find_debs_dir({})[0]), "cache": str(binaries.default_cache_dir()),
}))
"""


class CheckFailed(Exception):
    pass


def run(cmd: list[str], *, what: str, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise CheckFailed(f"{what}: exit {proc.returncode}: {' '.join(cmd)}\n{tail}")
    return proc


def source_files(root: Path) -> list[str]:
    """The checkout's files as git sees them (tracked, and untracked but not ignored)."""
    proc = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=False,
    )
    if proc.returncode != 0:
        raise CheckFailed(f"git ls-files in {root} failed: {proc.stderr.decode(errors='replace').strip()}")
    return sorted({n for n in proc.stdout.decode().split("\0") if n and (root / n).is_file()})


def _req(text: str) -> tuple[str, str, str]:
    req = Requirement(text)
    return canonicalize_name(req.name), str(SpecifierSet(str(req.specifier))), str(req.marker or "")


def check_wheel(wheel: Path, files: list[str], pyproject: dict) -> int:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta_name = next((n for n in names if n.endswith(".dist-info/METADATA")), None)
        if meta_name is None:
            raise CheckFailed(f"{wheel.name} has no METADATA")
        meta = zf.read(meta_name).decode()
        for name in names:
            if name.endswith(".py") and str(ROOT).encode() in zf.read(name):
                raise CheckFailed(f"{wheel.name}: {name} names the checkout's path {ROOT}")
    wanted = [f.removeprefix("src/") for f in files if f.startswith("src/lazyaccept/") and "__pycache__" not in f]
    missing = [f for f in wanted if f not in names]
    if missing:
        raise CheckFailed(f"{wheel.name} lacks {len(missing)} file(s) of src/lazyaccept: {', '.join(missing[:10])}")
    requires = {_req(line.split(":", 1)[1]) for line in meta.splitlines() if line.startswith("Requires-Dist:")}
    requires = {r for r in requires if "extra" not in r[2]}
    declared = {_req(d) for d in pyproject["project"]["dependencies"]}
    if not declared or requires != declared:
        raise CheckFailed(f"{wheel.name} requires {sorted(requires)}, pyproject.toml declares {sorted(declared)}")
    return len(wanted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wheel_check", description=__doc__.splitlines()[0])
    parser.add_argument("--debs", metavar="DIR", help="folder of the pinned .deb files, passed as lazyaccept --debs")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.debs is not None and not Path(args.debs).is_dir():
        print(f"wheel check: error: --debs {args.debs!r}: not a directory", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="lazyaccept-wheel-")).resolve()
    started = time.monotonic()
    try:
        if tmp.is_relative_to(ROOT):
            raise CheckFailed(f"the temporary directory {tmp} is inside the checkout (set TMPDIR elsewhere)")
        pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
        files = source_files(ROOT)
        src = tmp / "src"
        for name in files:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"), str(src)],
            what="building the wheel")
        wheels = sorted((tmp / "dist").glob("lazyaccept-*.whl"))
        if len(wheels) != 1:
            raise CheckFailed(f"pip wheel produced {[w.name for w in (tmp / 'dist').iterdir()]}")
        wheel = wheels[0]
        shipped = check_wheel(wheel, files, pyproject)
        print(f"wheel check: built {wheel.name}, {shipped} files of src/lazyaccept in it "
              f"({time.monotonic() - started:.0f} s)")

        run([sys.executable, "-m", "venv", str(tmp / "venv")], what="creating the venv")
        py = tmp / "venv" / "bin" / "python"
        run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             "-c", str(ROOT / "requirements.txt"), str(wheel)], what="installing the wheel")
        print(f"wheel check: installed it with its dependencies into {tmp / 'venv'} "
              f"({time.monotonic() - started:.0f} s)")
        docs = [tmp / "venv" / "share" / d for d in ("man/man1/lazyaccept.1", "bash-completion/completions/lazyaccept",
                                                      "zsh/site-functions/_lazyaccept")]
        missing_docs = [str(d.relative_to(tmp / "venv")) for d in docs if not d.is_file()]
        if missing_docs:
            raise CheckFailed(f"the wheel did not install {', '.join(missing_docs)} under the venv's prefix")
        print("wheel check: the man page and the bash and zsh completions are installed under share/")

        workdir = tmp / "run"
        workdir.mkdir()
        env = {k: v for k, v in os.environ.items()
               if k not in ("LAZYACCEPT_DEBS", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
        env["LAZYACCEPT_CACHE"] = str(tmp / "cache")
        env["PATH"] = f"{py.parent}{os.pathsep}{env.get('PATH', '')}"
        env["MPLCONFIGDIR"] = str(tmp / "mpl")
        kw = {"cwd": workdir, "env": env, "timeout": 600}

        probe = json.loads(run([str(py), "-c", PROBE], what="importing the installed package", **kw).stdout)
        if not Path(probe["file"]).is_relative_to(tmp / "venv"):
            raise CheckFailed(f"lazyaccept was imported from {probe['file']}, not from the fresh venv")
        if probe["repo_root"] != "None" or probe["debs_without_env"] != "None":
            raise CheckFailed(f"the installed package looks at the checkout: {probe}")
        if not Path(probe["cache"]).is_relative_to(tmp / "cache"):
            raise CheckFailed(f"the installed package caches in {probe['cache']}, not in $LAZYACCEPT_CACHE")
        print(f"wheel check: {probe['modules']} modules import from the venv; no source checkout in sight")

        lazyaccept = str(py.parent / "lazyaccept")
        info = run([lazyaccept, "firmware-info", "--builtin", "--json"], what="firmware-info --builtin", **kw)
        if json.loads(info.stdout).get("source") != "builtin":
            raise CheckFailed("firmware-info --builtin --json did not describe the built-in layout")
        print("wheel check: lazyaccept firmware-info --builtin --json: ok")

        debs = ["--debs", str(Path(args.debs).resolve())] if args.debs else []
        for extra in ([], ["--cpu", "unicorn"]):
            cmd = [lazyaccept, *debs, "boot", "-m", "4G", "--json", *extra]
            out = json.loads(run(cmd, what=" ".join(cmd[1:]), **kw).stdout)
            if out.get("outcome") != "kernel-entry":
                raise CheckFailed(f"{' '.join(cmd[1:])}: outcome {out.get('outcome')!r}, expected 'kernel-entry'")
            print(f"wheel check: lazyaccept {' '.join(cmd[1:])}: kernel-entry (cpu {out['cpu']['backend']})")
        if not any((tmp / "cache" / "binaries").glob("linux-image-*")):
            raise CheckFailed(f"the boot did not extract the kernel into $LAZYACCEPT_CACHE ({tmp / 'cache'})")
        print(f"wheel check: PASS ({time.monotonic() - started:.0f} s)")
        return 0
    except (CheckFailed, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        print(f"wheel check: FAIL: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"wheel check: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
