"""A misspelt flag gets its subcommand's usage and the closest of its options; files that are not what their flag
says (a non-PE --efi-app, a non-kernel --kernel) are bad input named in one line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lazyaccept.spec.pe import is_pe


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lazyaccept", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "usage", "hint"),
    [
        (["boot", "--upfornt", "256M"], "usage: lazyaccept boot", "(did you mean --upfront?)"),
        (["compare", "--polices", "eager"], "usage: lazyaccept compare", "(did you mean --policies?)"),
        (["sec", "-smpp", "2"], "usage: lazyaccept sec", "(did you mean -smp?)"),
        (["tdvf", "--max-wll=3"], "usage: lazyaccept tdvf", "(did you mean --max-wall?)"),
        (["advise", "--intrd-size", "1G"], "usage: lazyaccept advise", "(did you mean --initrd-size?)"),
    ],
)
def test_unknown_flag_gets_the_subcommands_usage_and_a_suggestion(args: list[str], usage: str, hint: str) -> None:
    out = run(*args)
    assert out.returncode == 2
    assert out.stderr.startswith(usage)
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"lazyaccept {args[0]}: error: unrecognized arguments: {args[1]}") and last.endswith(hint)
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("args", "tail"),
    [(["bot"], "(did you mean boot?)"), (["boot", "--cpu", "unicron"], "(did you mean unicorn?)"),
     (["tdvf", "--release", "2025.2"], "(did you mean 2025.02?)")],
)
def test_a_misspelt_choice_names_the_closest(args: list[str], tail: str) -> None:
    out = run(*args)
    assert out.returncode == 2 and out.stderr.rstrip().endswith(tail) and "invalid choice" in out.stderr


def test_nothing_close_gets_no_suggestion() -> None:
    out = run("sec", "--zzzzzzzz")
    assert out.returncode == 2 and out.stderr.startswith("usage: lazyaccept sec")
    assert "did you mean" not in out.stderr


def test_is_pe() -> None:
    pe = bytearray(0x100)
    pe[:2] = b"MZ"
    pe[0x3C:0x40] = (0x80).to_bytes(4, "little")
    pe[0x80:0x84] = b"PE\0\0"
    assert is_pe(bytes(pe))
    assert not is_pe(bytes(pe[:0x82]))  # e_lfanew past the end
    assert not is_pe(b"MZ" + bytes(0x100))
    assert not is_pe(b"\x7fELF" + bytes(0x100))


@pytest.fixture
def junk(tmp_path: Path) -> Path:
    f = tmp_path / "notes.txt"
    f.write_bytes(b"not a binary\n" * 10000)
    return f


def test_non_pe_efi_app_is_bad_input_naming_the_file(junk: Path) -> None:
    out = run("boot", "-m", "4G", "-smp", "1", "--efi-app", str(junk))
    assert out.returncode == 2
    assert out.stderr == f"lazyaccept boot: error: --efi-app {junk}: not an EFI application (no PE image: no MZ " \
        "header pointing at a PE signature)\n"


def test_non_kernel_is_bad_input_naming_the_file(junk: Path) -> None:
    out = run("boot", "-m", "4G", "-smp", "1", "--kernel", str(junk))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"lazyaccept boot: error: --kernel {junk}: not a Linux kernel (no x86 boot protocol setup header, 'HdrS' at "
        "0x202)"
    ]
    out = run("advise", "-kernel", str(junk))
    assert out.returncode == 2 and f"--kernel {junk}: not a Linux kernel" in out.stderr


@pytest.mark.real_binary
def test_an_efi_application_as_kernel_hints_at_efi_app() -> None:
    from lazyaccept.binaries import BinaryStore

    app = BinaryStore().systemd_boot_efi()
    out = run("boot", "-m", "4G", "-smp", "1", "--kernel", str(app))
    assert out.returncode == 2
    assert out.stderr.rstrip().endswith(
        "it is a PE image without a Linux setup header: an EFI application? run it with --efi-app"
    )
    assert str(app) in out.stderr and len(out.stderr.strip().splitlines()) == 1
