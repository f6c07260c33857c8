"""The command line: --help and --version, exit code 2 with one line on bad input, JSON output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lazyaccept import __version__
from lazyaccept.cli import COMMAND_MODULES, main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lazyaccept", *args], capture_output=True, text=True, timeout=120)


def test_version_and_help() -> None:
    out = run("--version")
    assert out.returncode == 0 and __version__ in out.stdout
    assert run("--help").returncode == 0
    for name in COMMAND_MODULES:
        assert run(name.replace("_", "-"), "--help").returncode == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["sec", "-m", "64Q"], "invalid size '64Q'"),
        (["sec", "-smp", "0"], "invalid count '0'"),
        (["sec", "--upfront", "sometimes"], "unknown up-front policy"),
        (["sec", "-m", "4G", "--upfront", "5G"], "larger than"),
        (["sec", "--profile", "kvm-9m"], "unknown host profile"),
        (["sec", "--firmware", "/no/such/OVMF.fd"], "cannot read firmware image"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], needle: str) -> None:
    out = run(*args)
    assert out.returncode == 2
    assert needle in out.stderr
    assert "Traceback" not in out.stderr


def test_sec_json(capsys) -> None:
    assert main(["sec", "-m", "67000M", "-smp", "4", "--upfront", "512M", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sec"]["accepted_bytes"] == 512 << 20
    assert data["truth_check"] == []
    resources = data["dxe_hob_list"]["resources"]
    assert sum(r["length_bytes"] for r in resources if r["type"] != "MEMORY_RESERVED") == 67000 << 20
    assert [r["length_bytes"] for r in resources if r["type"] == "MEMORY_RESERVED"] == [256 << 20]  # Q35 MMCONFIG


@pytest.mark.real_binary
def test_demo_runs_on_real_ovmf(capsys) -> None:
    assert main(["demo", "--json"]) == 0  # includes a real boot of the Linux stub
    data = json.loads(capsys.readouterr().out)
    assert data["td"]["firmware"].endswith("OVMF.fd")
    assert all(r["truth_check"] == [] for r in data["runs"])  # no problem: the books agree
    eager = [r for r in data["runs"] if r["policy"] == "all" and r["profile"] == "kvm-2m"][0]
    lazy = [r for r in data["runs"] if r["policy"] == "256M" and r["profile"] == "kvm-2m"][0]
    assert eager["sec_phase_ns"] > 100 * lazy["sec_phase_ns"]
    assert data["boot"]["outcome"] == "kernel-entry" and data["boot"]["handoff"]["ok"]


def test_version_lists_the_pinned_packages_a_boot_uses() -> None:
    from lazyaccept import binaries

    lines = run("--version").stdout.splitlines()
    assert lines[0] == f"lazyaccept {__version__}"
    assert [line.split()[:2] for line in lines[1:]] == [
        [p.name, p.version] for p in (binaries.OVMF, binaries.LINUX, binaries.GRUB)
    ]
    assert lines[2].startswith("linux-image-6.12.117+deb13-cloud-amd64-unsigned 6.12.117-1 (trixie)")
