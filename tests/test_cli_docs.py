"""The man page and the shell completions are generated from the parser (tools/gen_cli_docs.py) and committed: a
parser change without a regeneration fails here. The wheel installs them (pyproject.toml data-files)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _gen():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "tools" / "gen_cli_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _gen()


@pytest.mark.skipif(sys.version_info[:2] != GEN.PYTHON, reason="argparse's layout differs on this Python")
def test_committed_files_are_what_the_parser_gives_now() -> None:
    fresh = GEN.render()
    for kind, path in GEN.OUTPUTS.items():
        assert path.read_text() == fresh[kind], f"{path.relative_to(ROOT)} is stale: run python tools/gen_cli_docs.py"
    assert GEN.main(["--check"]) == 0


def test_check_fails_on_a_stale_file(tmp_path, monkeypatch, capsys) -> None:
    stale = {kind: tmp_path / path.name for kind, path in GEN.OUTPUTS.items()}
    for kind, path in stale.items():
        path.write_text(GEN.OUTPUTS[kind].read_text())
    stale["man"].write_text(stale["man"].read_text().replace(r"\-\-on\-demand", r"\-\-on\-demnd", 1))
    monkeypatch.setattr(GEN, "OUTPUTS", stale)
    monkeypatch.setattr(GEN, "ROOT", tmp_path)
    assert GEN.main(["--check"]) == 1
    assert "stale: lazyaccept.1" in capsys.readouterr().err


def test_the_man_page_documents_every_command_and_the_qemu_spellings() -> None:
    from lazyaccept.cli import COMMAND_MODULES

    man = GEN.OUTPUTS["man"].read_text()
    assert man.startswith('.TH LAZYACCEPT "1" "')
    for name in COMMAND_MODULES:
        escaped = name.replace("_", "\\-")  # roff's hyphen
        assert f".SH COMMAND \\fI\\,'lazyaccept {escaped}'" in man
    for flag in (r"\-smp", r"\-bios", r"\-accel", r"\-\-on\-demand", r"\-kernel"):
        assert flag in man
    # boot's modelled/real list and the usage lines are kept as laid out (no filling)
    assert ".nf\nmodelled in Python:\n" in man and ".nf\nusage: lazyaccept boot [\\-h]" in man


def test_bash_completion_completes_subcommand_flags() -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    script = GEN.OUTPUTS["bash"]
    probe = (f"source {script}; COMP_WORDS=(lazyaccept boot --on); COMP_CWORD=2; "
             "COMP_LINE='lazyaccept boot --on'; COMP_POINT=${#COMP_LINE}; _shtab_lazyaccept; echo ${COMPREPLY[@]}")
    out = subprocess.run([bash, "-c", probe], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.split() == ["--on-demand"]
    probe = probe.replace("boot --on", "sec -sm")
    assert subprocess.run([bash, "-c", probe], capture_output=True, text=True, timeout=30).stdout.split() == ["-smp"]


def test_zsh_completion_is_valid_zsh() -> None:
    zsh = shutil.which("zsh")
    assert zsh, "zsh is missing: `make tools` installs Debian's zsh"
    assert subprocess.run([zsh, "-n", str(GEN.OUTPUTS["zsh"])], capture_output=True, timeout=30).returncode == 0


def test_the_wheel_installs_them_where_man_and_the_shells_look() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    data_files = setuptools["data-files"]
    installed = {f"{folder}/{Path(f).name}": f for folder, files in data_files.items() for f in files}
    assert installed == {
        "share/man/man1/lazyaccept.1": "src/lazyaccept/share/man/man1/lazyaccept.1",
        "share/bash-completion/completions/lazyaccept": "src/lazyaccept/share/bash-completion/completions/lazyaccept",
        "share/zsh/site-functions/_lazyaccept": "src/lazyaccept/share/zsh/site-functions/_lazyaccept",
    }
    assert {str(p.relative_to(ROOT)) for p in GEN.OUTPUTS.values()} == set(installed.values())


@pytest.mark.skipif(sys.version_info[:2] != GEN.PYTHON, reason="argparse's layout differs on this Python")
def test_generator_runs_as_a_script() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_cli_docs.py"), "--check"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
