"""A pytest plugin (the `pytest11` entry point `lazyaccept`): boot a TD from a test of a kernel or bootloader project.

    from lazyaccept.api import Outcome

    def test_boots(lazyaccept_boot):
        assert lazyaccept_boot("td.toml").outcome is Outcome.KERNEL_ENTRY

    def test_boots_my_kernel(lazyaccept_boot):
        result = lazyaccept_boot(ram="4G", smp=1, kernel="build/vmlinuz", initrd_size="64M")
        assert result.exit_code == 0, result

`lazyaccept_boot(path)` runs a scenario file as `lazyaccept run` does (a relative path is looked up beside the test
file, then under pytest's rootdir); when the file has an [expect] that the run does not meet, the test fails with
the one line `run` prints. `lazyaccept_boot(**options)` boots as lazyaccept.api.boot() does, with the options of
`lazyaccept boot`; both together are `boot --scenario FILE` with options over the file. Either returns the
api.BootResult, whose repr carries the outcome, exit code, reason and hint, so a failed assertion says why; a
failed test that booted also shows a "lazyaccept" section with each boot's summary and the console's last lines,
and pytest's --junitxml records each boot's outcome and exit code as properties of the test.

`--lazyaccept-debs DIR` (or the ini option `lazyaccept_debs`, or $LAZYACCEPT_DEBS) names the folder of the pinned
Debian packages. Nothing of lazyaccept but this module is imported until a test uses the fixture, so projects that
have lazyaccept installed and do not use it pay nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from lazyaccept.api import BootResult

CONSOLE_LINES = 20  # of each boot's console in a failed test's report


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lazyaccept", "lazyaccept (TDX lazy-accept boots: the lazyaccept_boot fixture)")
    group.addoption(
        "--lazyaccept-debs", metavar="DIR", default=None,
        help="folder of the pinned Debian .deb files lazyaccept boots (default: the ini option lazyaccept_debs, "
        "then $LAZYACCEPT_DEBS)",
    )  # fmt: skip
    parser.addini("lazyaccept_debs", "folder of the pinned Debian .deb files lazyaccept boots (relative: to rootdir)")


def _debs(config: pytest.Config) -> Path | None:
    given = config.getoption("lazyaccept_debs")
    base = config.invocation_params.dir
    if not given:
        given, base = config.getini("lazyaccept_debs"), config.rootpath
    if not given:
        return None
    path = (base / Path(given).expanduser()).resolve()
    if not path.is_dir():
        raise pytest.UsageError(f"--lazyaccept-debs {given}: not a directory")
    return path


def pytest_configure(config: pytest.Config) -> None:
    _debs(config)  # a bad folder is a usage error when pytest starts, not in every test


@pytest.fixture
def lazyaccept_debs(pytestconfig: pytest.Config) -> Path | None:
    """The folder of .deb files given by --lazyaccept-debs or the ini option (None: $LAZYACCEPT_DEBS or the
    usual places)."""
    return _debs(pytestconfig)


@pytest.fixture
def lazyaccept_boot(request: pytest.FixtureRequest, lazyaccept_debs: Path | None) -> Callable[..., BootResult]:
    """Boot a scenario file, or `lazyaccept boot`'s options as keyword arguments; returns api.BootResult."""
    test_dir = Path(request.path).parent
    rootdir = request.config.rootpath

    def boot(scenario: str | os.PathLike[str] | None = None, /, **options: Any) -> BootResult:
        import importlib

        # import_module, not `from lazyaccept import api`: it gives sys.modules' copy, whose error classes are the
        # ones raised even where a harness (pytester) dropped and re-imported lazyaccept's modules.
        api = importlib.import_module("lazyaccept.api")

        path = None if scenario is None else _find(Path(scenario), test_dir, rootdir)
        try:
            if path is not None and not options:
                result = api.run_scenario(path, debs=lazyaccept_debs)
            else:
                result = api.boot(scenario=path, debs=lazyaccept_debs, **options)
        except api.LazyAcceptError as exc:  # bad input: one line, as the command prints it, not a traceback
            pytest.fail(f"lazyaccept: {exc}", pytrace=False)
        request.node.add_report_section("call", "lazyaccept", _section(result))
        # pytest's own --junitxml carries them as <property> of the test case
        request.node.user_properties += [("lazyaccept_outcome", str(result.outcome)),
                                         ("lazyaccept_exit_code", result.exit_code)]
        if result.expect_mismatch:
            pytest.fail(f"lazyaccept: {path}: {result.expect_mismatch} ({result.summary()})", pytrace=False)
        return result

    boot.__qualname__ = boot.__name__ = "lazyaccept_boot"  # what an assertion's explanation shows
    return boot


def _find(scenario: Path, test_dir: Path, rootdir: Path) -> str:
    scenario = scenario.expanduser()
    tried = [scenario] if scenario.is_absolute() else [test_dir / scenario, rootdir / scenario]
    for p in tried:
        if p.is_file():
            return str(p)
    pytest.fail(f"lazyaccept: scenario file {str(scenario)!r} not found (looked at {', '.join(map(str, tried))})",
                pytrace=False)


def _section(result: BootResult) -> str:
    lines = [result.summary()]
    console = [line for line in result.report.console.splitlines() if line.strip()]
    if console:
        lines.append(f"console (last {min(len(console), CONSOLE_LINES)} of {len(console)} lines):")
        lines += [f"  {line}" for line in console[-CONSOLE_LINES:]]
    return "\n".join(lines) + "\n"
