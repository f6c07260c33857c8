"""Packaging: declared dependencies cover the imports, the pins lie in the ranges, and `lazyaccept --debs DIR`.

The wheel itself is built, installed into a fresh venv and run by tools/wheel_check.py (the last step of
`make test`).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from lazyaccept import binaries, cli
from lazyaccept.binaries import LINUX

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Import name -> distribution name, where they differ.
DISTRIBUTIONS: dict[str, str] = {"PIL": "pillow"}


def _requirements(specs: list[str]) -> dict[str, Requirement]:
    reqs = [Requirement(s) for s in specs]
    return {canonicalize_name(r.name): r for r in reqs}


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


# Runs inside pytest only (the pytest11 entry point): pytest is its host, not a dependency of the package.
PYTEST_PLUGIN = ROOT / "src" / "lazyaccept" / "pytest_plugin.py"


def _third_party_imports(folder: Path) -> set[str]:
    """What the .py files under `folder` (or the file `folder`) import from outside the stdlib; the pytest plugin
    only when named itself."""
    names = set()
    for path in [folder] if folder.is_file() else folder.rglob("*.py"):
        if path == PYTEST_PLUGIN and folder != PYTEST_PLUGIN:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "lazyaccept"}


# Declared but never imported by lazyaccept: distributed serves the Dask dashboard with bokeh when it is installed.
LOADED_BY_A_DEPENDENCY = {"bokeh"}


def test_runtime_dependencies_cover_every_import_of_the_package():
    declared = _requirements(PYPROJECT["project"]["dependencies"])
    imported = {canonicalize_name(DISTRIBUTIONS.get(n, n)) for n in _third_party_imports(ROOT / "src" / "lazyaccept")}
    assert imported | LOADED_BY_A_DEPENDENCY == set(declared), (
        "pyproject.toml [project] dependencies must match what src/lazyaccept imports")
    assert all(str(r.specifier) for r in declared.values()), "dependencies are ranges, not bare names"
    plugin = _third_party_imports(PYTEST_PLUGIN) - {"pytest"}
    assert {canonicalize_name(n) for n in plugin} <= imported, "the pytest plugin imports pytest, else the package's"


def test_dev_extra_covers_the_imports_of_tests_fuzzers_and_tools():
    runtime = set(_requirements(PYPROJECT["project"]["dependencies"]))
    dev = set(_requirements(PYPROJECT["project"]["optional-dependencies"]["dev"]))
    imported = set()
    for folder in ("tests", "fuzz", "benchmarks", "tools"):
        imported |= {canonicalize_name(DISTRIBUTIONS.get(n, n)) for n in _third_party_imports(ROOT / folder)}
    imported -= {"tests", "fuzz", "benchmarks"}
    assert imported <= runtime | dev, f"missing from the dev extra: {sorted(imported - runtime - dev)}"
    assert "ruff" in dev  # run as a tool, not imported


def test_requirements_pin_every_declared_dependency_inside_its_range():
    pins = _pins()
    declared = {**_requirements(PYPROJECT["project"]["dependencies"]),
                **_requirements(PYPROJECT["project"]["optional-dependencies"]["dev"])}
    assert set(declared) == set(pins)
    for name, req in declared.items():
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req}"


def test_build_system_and_entry_point():
    assert PYPROJECT["project"]["scripts"] == {"lazyaccept": "lazyaccept.cli:main"}
    assert any(r.startswith("setuptools") for r in PYPROJECT["build-system"]["requires"])


# ---------------------------------------------------------------------------------------------------------
# lazyaccept --debs DIR


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lazyaccept", *args], capture_output=True, text=True, timeout=300,
                          env=env)


@pytest.mark.parametrize("value", ["/no/such/debs", "", "FILE"])
def test_debs_that_is_not_a_directory_exits_2_with_one_line(value, tmp_path):
    if value == "FILE":
        value = str(tmp_path / "a-file")
        Path(value).write_text("")
    out = _run("--debs", value, "boot", "-m", "4G")
    assert out.returncode == 2
    assert out.stderr.splitlines() == [f"lazyaccept: error: --debs {value!r}: not a directory"]
    assert out.stdout == ""


def test_debs_sets_the_folder_for_the_run(tmp_path, monkeypatch, capsys):
    # main() sets LAZYACCEPT_DEBS in os.environ: setenv first, so that monkeypatch restores the variable.
    monkeypatch.setenv("LAZYACCEPT_DEBS", "unset-by-the-test")
    monkeypatch.delenv("LAZYACCEPT_DEBS")
    monkeypatch.setenv("LAZYACCEPT_CACHE", str(tmp_path / "cache"))
    empty = tmp_path / "debs"
    empty.mkdir()
    assert cli.main(["--debs", str(empty), "boot", "-m", "4G"]) == 2
    assert os.environ["LAZYACCEPT_DEBS"] == str(empty.resolve())
    err = capsys.readouterr().err
    assert err.splitlines() == [f"lazyaccept boot: error: {LINUX.spec}: {LINUX.filename} is not in {empty}"]


@pytest.mark.real_binary
def test_debs_folder_given_on_the_command_line_is_read(tmp_path):
    folder, _ = binaries.find_debs_dir()
    assert folder is not None
    mine = tmp_path / "debs"
    mine.mkdir()
    (mine / LINUX.filename).symlink_to(folder / LINUX.filename)
    (mine / "SHA256SUMS").write_text(f"{LINUX.sha256}  {LINUX.filename}\n")
    env = {k: v for k, v in os.environ.items() if k != "LAZYACCEPT_DEBS"}
    env["LAZYACCEPT_CACHE"] = str(tmp_path / "cache")
    out = _run("--debs", str(mine), "boot", "-m", "4G", "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert '"outcome": "kernel-entry"' in out.stdout
    assert (tmp_path / "cache" / "binaries" / f"{LINUX.name}_{LINUX.sha256}").is_dir()
