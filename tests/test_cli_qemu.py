"""QEMU's spelling where the concept is QEMU's: sizes as -m reads them, -smp/-bios/-accel/-kernel/-initrd/-append
on every command that builds a TD."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from lazyaccept.cli import build_parser
from lazyaccept.units import GiB, MiB

PARSER = build_parser()[0]
TD_COMMANDS = ["boot", "sec", "advise", "workload", "differential", "tdvf"]


def parse(*args: str) -> argparse.Namespace:
    return PARSER.parse_args(list(args))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lazyaccept", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", TD_COMMANDS)
def test_m_reads_a_bare_number_as_mib_on_every_command(command: str) -> None:
    assert parse(command, "-m", "4096").ram == 4 * GiB
    assert parse(command, "-m", "4G").ram == 4 * GiB
    assert parse(command, "-m", "8388608B").ram == 8 * MiB


@pytest.mark.parametrize(
    ("args", "attr", "value"),
    [
        (["boot", "--initrd-size", "1024"], "initrd_size", GiB),
        (["boot", "--initrd-size", "4096b"], "initrd_size", 4096),
        (["advise", "--kernel-init-size", "57208K"], "kernel_init_size", 0x37DE000),
        (["workload", "--fill", "512"], "fill", 512 * MiB),
        (["workload", "--resident", "256"], "resident", 256 * MiB),
        (["compare", "--resident", "256"], "resident", 256 * MiB),
        (["differential", "--initrd-size", "16"], "initrd_size", 16 * MiB),
        (["boot", "--upfront", "256"], "upfront", "256M"),
        (["sec", "--upfront", "4096B"], "upfront", "4K"),
        (["workload", "--upfront", "below-4g"], "upfront", "below-4g"),
    ],
)
def test_every_cli_size_follows_the_same_rule(args: list[str], attr: str, value: object) -> None:
    assert getattr(parse(*args), attr) == value


def test_sec_m_4096_is_4_gib_end_to_end(capsys) -> None:
    from lazyaccept.cli import main

    assert main(["sec", "-m", "4096", "-smp", "1", "--json"]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["td"]["ram_bytes"] == 4 * GiB


def test_bare_hex_size_on_the_cli_exits_2_naming_it() -> None:
    out = run("sec", "-m", "0x100000000")
    assert out.returncode == 2
    assert "invalid size '0x100000000'" in out.stderr and "4G or 4294967296B" in out.stderr
    assert "Traceback" not in out.stderr


def test_scenario_sizes_stay_bytes(tmp_path) -> None:
    from lazyaccept.scenario import load_scenario

    f = tmp_path / "td.toml"
    f.write_text('[td]\nram = "4G"\n[payload]\ninitrd_size = "4096"\n')
    assert load_scenario(f).scenario.initrd_size == 4096


@pytest.mark.parametrize("command", TD_COMMANDS)
def test_smp_and_bios_spellings_on_every_command(command: str) -> None:
    dest = "vcpus" if command == "tdvf" else "smp"
    for spelling in (["-smp", "3"], ["-smp", "cpus=3"], ["--smp", "3"], ["-smp", "3,cpus=3"]):
        assert getattr(parse(command, *spelling), dest) == 3
    if command != "workload":  # the workload model has no firmware image
        ns = parse(command, "-bios", "OVMF.fd")
        assert (ns.bios if command == "tdvf" else ns.firmware) == "OVMF.fd"


@pytest.mark.parametrize(
    ("value", "needle"),
    [("8,sockets=1", "'sockets' is not offered"), ("cores=2", "'cores' is not offered"),
     ("0", "invalid count '0'"), ("4,cpus=8", "4 and cpus=8 disagree")],
)
def test_smp_topology_keys_are_refused_by_name(value: str, needle: str) -> None:
    out = run("sec", "-smp", value)
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr


def test_qemu_payload_spellings() -> None:
    ns = parse("boot", "-kernel", "vmlinuz", "-initrd", "initrd.img", "-append", "console=hvc0")
    assert (ns.kernel, ns.initrd, ns.append) == ("vmlinuz", "initrd.img", "console=hvc0")
    ns = parse("tdvf", "-kernel", "vmlinuz", "-initrd", "initrd.img", "-append", "quiet")
    assert (ns.kernel, ns.initrd, ns.append) == ("vmlinuz", "initrd.img", "quiet")
    assert parse("advise", "-kernel", "vmlinuz").kernel == "vmlinuz"
    assert parse("differential", "-kernel", "vmlinuz").kernel == "vmlinuz"


def test_accel_is_cpu_in_qemu_words() -> None:
    assert parse("boot").cpu == "auto"
    assert parse("boot", "-accel", "kvm").cpu == "kvm"
    assert parse("boot", "-accel", "tcg").cpu == "unicorn"
    assert parse("boot", "--cpu", "unicorn").cpu == "unicorn"
    out = run("boot", "-accel", "hvf")
    assert out.returncode == 2 and "invalid -accel 'hvf': choose kvm or tcg" in out.stderr


def test_qemu_spellings_count_as_given_flags_with_a_scenario() -> None:
    from lazyaccept.scenario import given_flags

    ns = parse("boot", "-smp", "cpus=2", "-accel", "tcg", "-bios", "x.fd", "-append", "quiet", "--on-demand", "loader")
    assert {"smp", "cpu", "firmware", "append", "options"} <= given_flags(ns)


def test_tdvf_bios_and_image_are_one_choice() -> None:
    out = run("tdvf", "a.fd", "-bios", "b.fd")
    assert out.returncode == 2 and "not allowed with" in out.stderr


def test_boot_help_says_what_is_modelled_and_what_is_real() -> None:
    from pathlib import Path

    from lazyaccept.commands.boot import MODELLED_AND_REAL

    out = run("boot", "--help")
    assert out.returncode == 0
    assert MODELLED_AND_REAL in out.stdout  # verbatim: the help keeps its lines
    for needle in ("modelled in Python:", "the TDX module", "real binaries, run on unicorn or KVM:", "Linux EFI stub",
                   "GRUB (--grub)", "--firmware-exec", "--run-kernel"):
        assert needle in MODELLED_AND_REAL
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "\n".join("    " + line for line in MODELLED_AND_REAL.splitlines()) in readme


@pytest.mark.real_binary
def test_qemu_spellings_over_a_scenario_file_end_to_end(capsys) -> None:
    import json
    from pathlib import Path

    from lazyaccept.cli import main

    example = Path(__file__).parents[1] / "examples" / "below-4g-4g.toml"
    code = main(["boot", "--scenario", str(example), "-m", "4096", "-smp", "cpus=1", "--on-demand", "allocator",
                 "-append", "console=ttyS0 quiet", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["outcome"] == "kernel-entry"
    sc = data["scenario"]
    assert (sc["ram_bytes"], sc["vcpus"], sc["cmdline"]) == (4 * GiB, 1, "console=ttyS0 quiet")
    assert "option1" in str(sc["options"]) or "allocator" in str(sc["options"])  # a string today, maybe a list
