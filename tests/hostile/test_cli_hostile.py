"""Bad command-line and scenario input: exit code 2 and one line naming the value, never a traceback
(tests/test_cli.py has the basic cases; these are the hostile ones)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lazyaccept.cli import main

from .conftest import AppBuilder


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, efi_app: AppBuilder) -> dict[str, str]:
    d = tmp_path_factory.mktemp("cli")
    out = {"dir": str(d), "app": str(efi_app("misuse_app")), "missing": str(d / "no-such-file")}
    for name, text in {
        "inf.toml": "clear_bytes_per_s = inf\n",
        "nan.toml": "exit_ns = nan\n",
        "zero-copy.toml": "copy_bytes_per_s = 0\n",
        "unknown-key.toml": "warp_speed = 9\n",
        "bad-base.toml": 'base = "kvm-9m"\n',
        "broken.toml": "exit_ns = = 3\n",
    }.items():
        (d / name).write_text(text)
        out[name.removesuffix(".toml")] = str(d / name)
    (d / "garbage.fd").write_bytes(b"\x5a" * 0x10000)
    (d / "empty.fd").write_bytes(b"")
    out["garbage"], out["empty"] = str(d / "garbage.fd"), str(d / "empty.fd")
    return out


# (argv with {placeholders} for files, text the message must contain)
CASES = [
    (["sec", "--upfront", "most"], "unknown up-front policy 'most'"),
    (["sec", "--upfront", "0"], "must be larger than zero"),
    (["sec", "-m", "4G", "--upfront", "5G"], "larger than the TD's 4G of RAM"),
    (["sec", "-m", "0"], "RAM size 0 must be a positive multiple of 4 KiB"),
    (["sec", "-m", "6K"], "must be a positive multiple of 4 KiB"),
    (["sec", "-m", "100T"], "beyond what lazyaccept models"),
    (["sec", "-m", "-4G"], "argument -m: expected one argument"),
    (["sec", "-smp", "0"], "invalid count '0'"),
    (["sec", "-smp", "-3"], "invalid count '-3'"),
    (["sec", "-smp", "5000"], "invalid vCPU count 5000"),
    (["sec", "-m--"], "argument -m: expected one argument"),
    (["sec", "--profile", "{missing}.toml"], "not found"),
    (["sec", "--profile", "{dir}"], "cannot read host profile file"),
    (["sec", "--profile", "{inf}"], "must be a non-negative number"),
    (["sec", "--profile", "{nan}"], "must be a non-negative number"),
    (["sec", "--profile", "{zero-copy}"], "copy_bytes_per_s must be positive"),
    (["sec", "--profile", "{unknown-key}"], "unknown host profile key 'warp_speed'"),
    (["sec", "--profile", "{bad-base}"], "unknown host profile 'kvm-9m'"),
    (["sec", "--profile", "{broken}"], "is not valid TOML"),
    (["sec", "--firmware", "{missing}"], "cannot read firmware image"),
    (["sec", "--firmware", "{dir}"], "not a regular file"),
    (["sec", "--firmware", "{garbage}"], "no OVMF table footer GUID"),
    (["sec", "--hob-convention", "xen"], "invalid choice: 'xen'"),
    (["firmware-info", "{empty}"], "too short for the OVMF table footer"),
    (["firmware-info", "{missing}"], "cannot read firmware image"),
    (["boot", "--efi-app", "{missing}"], "cannot read"),
    (["boot", "--efi-app", "{app}", "--upfront", "sometimes"], "unknown up-front policy"),
    (["boot", "--efi-app", "{app}", "-m", "4G", "--upfront", "5G"], "larger than"),
    (["boot", "--efi-app", "{app}", "-smp", "0"], "invalid count '0'"),
    (["boot", "--efi-app", "{app}", "-m", "0"], "RAM size 0"),
    (["boot", "--efi-app", "{app}", "--option", "4"], "invalid choice: 4"),
    (["boot", "--efi-app", "{app}", "--initrd", "{missing}"], "cannot read initrd"),
    (["boot", "--efi-app", "{app}", "--initrd", "{missing}", "--initrd-size", "1M"], "not allowed with"),
    (["boot", "--efi-app", "{app}", "--profile", "{inf}"], "must be a non-negative number"),
]


def _argv(template: list[str], files: dict[str, str]) -> list[str]:
    return [a.format(**files) for a in template]


@pytest.mark.parametrize(("template", "needle"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_exits_2_with_one_line(
    template: list[str], needle: str, files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _argv(template, files)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors: usage, then one "error:" line
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert "error:" in last and needle in last, err
    if "usage:" not in err:
        assert err.strip().count("\n") == 0, f"more than one line: {err!r}"


def test_bad_input_through_the_installed_command(files: dict[str, str]) -> None:
    # The real process: exit status, stderr, no traceback.
    out = subprocess.run(
        [sys.executable, "-m", "lazyaccept", "sec", "--profile", files["nan"]],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr and out.stderr.count("\n") == 1


@pytest.mark.real_binary
def test_ovmf_code_4m_is_refused_naming_field_and_offset(capsys: pytest.CaptureFixture[str]) -> None:
    # The real-world case: OVMF_CODE_4M.fd carries TDVF metadata whose BFV points past the end of the file.
    from lazyaccept.binaries import ovmf_code_4m_fd

    assert main(["firmware-info", str(ovmf_code_4m_fd())]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("runs past the end of the 0x37c000-byte image (field TDVF_SECTION[0].RawDataSize, "
                        "offset 0x37b654)"), err
    assert "\n" not in err


@pytest.mark.real_binary
def test_append_that_is_not_unicode_is_refused() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lazyaccept", "boot", "-m", "4G", "-smp", "1", "--append", "console=\udcff"],
        capture_output=True, text=True, timeout=300, errors="surrogateescape",
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-500:]


def test_negative_timeout_is_refused(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["boot", "--efi-app", files["app"], "-m", "4G", "-smp", "1", "--timeout", "-1"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2


def test_scenario_with_impossible_sizes_is_a_config_error(files: dict[str, str]) -> None:
    # The same checks through the Python API that the CLI drives (what a scenario file will go through).
    from lazyaccept.boot import BootScenario, run_boot
    from lazyaccept.errors import ConfigError

    with pytest.raises(ConfigError, match="invalid vCPU count 0"):
        run_boot(BootScenario(ram=4 << 30, smp=0, efi_app=files["app"]))
    with pytest.raises(ConfigError, match="larger than"):
        run_boot(BootScenario(ram=4 << 30, smp=1, upfront="8G", efi_app=files["app"]))
    assert Path(files["app"]).exists()
