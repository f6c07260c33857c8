"""The pytest plugin (entry point pytest11 `lazyaccept`), as a kernel project would use it: pytester runs generated
test files with the installed plugin loaded from its entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

DEBS = os.environ.get("LAZYACCEPT_DEBS", str(Path(__file__).resolve().parents[2] / "shared" / "debs"))

SCENARIO = """
[td]
ram = "4G"
vcpus = 1
[firmware]
upfront = "256M"
[payload]
initrd_size = "{initrd}"
"""


def test_registered_as_a_pytest11_entry_point() -> None:
    (ep,) = [ep for ep in entry_points(group="pytest11") if ep.name == "lazyaccept"]
    assert ep.value == "lazyaccept.pytest_plugin"


def test_pytest_start_up_imports_nothing_heavy(pytester: pytest.Pytester) -> None:
    # A project that has lazyaccept installed but does not use it: pytest starts and runs, loading only the plugin.
    pytester.makepyfile(
        """
        import sys

        def test_untouched():
            loaded = sorted(m for m in sys.modules if m.startswith("lazyaccept"))
            assert loaded == ["lazyaccept", "lazyaccept._version", "lazyaccept.pytest_plugin"], loaded
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_help_lists_the_option(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--lazyaccept-debs=DIR*", "*lazyaccept_debs (string)*"])


def test_bad_debs_folder_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--lazyaccept-debs", "no/such/dir")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--lazyaccept-debs no/such/dir: not a directory*"])


@pytest.mark.real_binary
def test_a_scenario_boots_and_passes(pytester: pytest.Pytester) -> None:
    sub = pytester.mkdir("kernel_tests")
    (sub / "td.toml").write_text(SCENARIO.format(initrd="16M"))
    (sub / "test_boot.py").write_text(
        "from lazyaccept.api import Outcome\n\n"
        "def test_boots(lazyaccept_boot, lazyaccept_debs):\n"
        f"    assert str(lazyaccept_debs) == {str(Path(DEBS).resolve())!r}\n"
        "    result = lazyaccept_boot('td.toml')  # beside this file, not in the rootdir\n"
        "    assert result.outcome is Outcome.KERNEL_ENTRY and result.exit_code == 0\n"
        "    assert result.accepted_by_actor['sec'] > 0\n\n"
        "def test_options(lazyaccept_boot):\n"
        "    assert lazyaccept_boot(ram='4G', smp=1, initrd_size='16M', no_log=True).ok\n"
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--lazyaccept-debs", DEBS, "--junitxml=report.xml")
    result.assert_outcomes(passed=2)
    xml = (pytester.path / "report.xml").read_text()
    assert xml.count('<property name="lazyaccept_outcome" value="kernel-entry" />') == 2


@pytest.mark.real_binary
def test_a_failing_expectation_says_why(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", td=SCENARIO.format(initrd="1G"))  # 1 GiB initrd over 256M and no on-demand option
    pytester.makefile(".toml", expects=SCENARIO.format(initrd="1G") + '[expect]\noutcome = "kernel-entry"\n')
    pytester.makepyfile(
        """
        from lazyaccept.api import Outcome

        def test_assert(lazyaccept_boot):
            assert lazyaccept_boot("td.toml").outcome is Outcome.KERNEL_ENTRY

        def test_expect(lazyaccept_boot):
            lazyaccept_boot("expects.toml")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    # The assertion shows the result's repr: outcome, exit code and the reason.
    assert "<BootResult LOADER-FAILED (exit code 1): QemuKernelLoaderFsDxe: AllocatePool of 0x40000000" in out
    # The file's [expect] fails the test with run's own line, no traceback.
    result.stdout.fnmatch_lines([
        "*lazyaccept: */expects.toml: expected outcome kernel-entry; got outcome loader-failed, exit code 1*",
        "*Captured lazyaccept call*",
        "LOADER-FAILED (exit code 1): *",
    ])  # fmt: skip
    assert "def boot(" not in out  # pytrace=False: the plugin's own frames stay out


def test_a_bad_scenario_file_is_one_clear_line(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", bad='[td]\nram = "sixty"\n')
    pytester.makepyfile(
        """
        def test_bad(lazyaccept_boot):
            lazyaccept_boot("bad.toml")

        def test_missing(lazyaccept_boot):
            lazyaccept_boot("missing.toml")

        def test_bad_option(lazyaccept_boot):
            lazyaccept_boot(ram="64Q")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines([
        "*lazyaccept: td.ram: invalid size 'sixty'*",
        "*lazyaccept: scenario file 'missing.toml' not found (looked at */missing.toml, */missing.toml)*",
        "*lazyaccept: argument -m: invalid size '64Q'*",
    ])  # fmt: skip
    assert "Traceback" not in result.stdout.str()


def test_without_the_entry_point_nothing_changes(tmp_path: Path) -> None:
    # -p no:lazyaccept turns it off like any plugin; the fixture is then unknown, nothing else breaks.
    (tmp_path / "test_x.py").write_text("def test_x(): pass\n")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:lazyaccept", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
