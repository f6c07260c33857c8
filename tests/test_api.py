"""The Python API (lazyaccept.api): the command's defaults and checks, sizes as strings, typed results, the README's
example run as written."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lazyaccept
from lazyaccept import api
from lazyaccept.boot_report import BootScenario, Outcome
from lazyaccept.cli import build_parser, main
from lazyaccept.commands.boot import scenario_from_args
from lazyaccept.errors import ConfigError, InputError, LazyAcceptError
from lazyaccept.scenario import NOT_SCENARIO_FLAGS, ScenarioError

README = Path(__file__).resolve().parent.parent / "README.md"


def cli_scenario(*argv: str) -> BootScenario:
    parser, _ = build_parser()
    return scenario_from_args(parser.parse_args(["boot", *argv]))


def test_boot_scenario_takes_sizes_as_strings_or_bytes() -> None:
    assert BootScenario(ram="8G") == BootScenario(ram=8 << 30)  # type: ignore[arg-type]
    sc = BootScenario(ram="67000M", initrd_size="1G", os_ready_bytes="0x1000", upfront=256 << 20)  # type: ignore[arg-type]
    assert (sc.ram, sc.initrd_size, sc.os_ready_bytes, sc.upfront) == (67000 << 20, 1 << 30, 4096, "256M")
    with pytest.raises(ConfigError, match="invalid ram 'eight'"):
        BootScenario(ram="eight")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="initrd_size: expected a size"):
        BootScenario(initrd_size=1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="upfront: size -1"):
        BootScenario(upfront=-1)  # type: ignore[arg-type]


def test_defaults_are_the_commands_in_one_place() -> None:
    # `lazyaccept boot` with no flags, BootScenario() and the API with no arguments are one scenario.
    assert cli_scenario() == BootScenario() == api.boot_scenario()
    assert (BootScenario().ram, BootScenario().smp) == (64 << 30, 8)


def test_options_are_the_commands_long_options() -> None:
    got = api.boot_scenario(
        ram="4G", smp=2, upfront=256 << 20, option=[1, 3], initrd_size=64 << 20, append="-quiet console=ttyS0",
        cpu="unicorn", no_cc_measurement=True, rng_seed=5, timeout=30,
    )  # fmt: skip
    want = cli_scenario(
        "-m", "4G", "-smp", "2", "--upfront", "256M", "--option", "1", "--option", "3", "--initrd-size", "64M",
        "--append=-quiet console=ttyS0", "--cpu", "unicorn", "--no-cc-measurement", "--rng-seed", "5",
        "--timeout", "30",
    )  # fmt: skip
    assert got == want
    assert api.boot_scenario(ram=4096).ram == 4096  # an int is bytes


def test_every_boot_option_is_an_argument() -> None:
    parser, _ = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["boot"]
    params = set(api.boot.__code__.co_varnames[: api.boot.__code__.co_kwonlyargcount])
    for action in sub._actions:
        if action.dest in NOT_SCENARIO_FLAGS - {"scenario"}:
            continue  # output (--json, --junit, --calls), not the boot
        longest = max(action.option_strings, key=len)
        name = {flag: arg for arg, flag in api._SHORT.items()}.get(longest, longest.lstrip("-").replace("-", "_"))
        assert name in params, f"boot's {action.option_strings} has no api.boot() argument"


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"ram": "64Q"}, "argument -m: invalid size '64Q'"),
        ({"smp": 0}, "argument -smp/--smp: invalid count '0'"),
        ({"option": [4]}, "argument --option: invalid choice: 4"),
        ({"option": "1"}, "option: expected a list"),
        ({"cpu": "qemu"}, "argument --cpu: invalid choice: 'qemu'"),
        ({"append": "\udcff"}, "--append '\\udcff' is not valid Unicode text"),
    ],
)
def test_bad_values_raise_config_error_naming_them(options: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        api.boot(**options)
    assert needle in str(exc.value)


def test_errors_are_lazyaccept_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        api.run_scenario(tmp_path / "missing.toml")
    with pytest.raises(InputError, match="invalid TOML"):
        api.run_scenario("[td\nram = 1")
    with pytest.raises(ScenarioError, match="td.ram: invalid size 'sixty'"):
        api.run_scenario({"td": {"ram": "sixty"}})
    with pytest.raises(ScenarioError, match=f"payload.kernel: no such file '{tmp_path}/vmlinuz'"):
        api.run_scenario('[payload]\nkernel = "vmlinuz"\n', folder=tmp_path)  # relative paths: against `folder`
    with pytest.raises(ConfigError, match="debs '/no/such': not a directory"):
        api.boot(debs="/no/such")
    assert issubclass(ConfigError, LazyAcceptError) and issubclass(InputError, LazyAcceptError)


def test_package_root_reexports_lazily() -> None:
    code = "import sys, lazyaccept; print(sorted(m for m in sys.modules if m.startswith('lazyaccept')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['lazyaccept', 'lazyaccept._version']"  # `import lazyaccept` loads none of the model
    assert lazyaccept.run_scenario is api.run_scenario and lazyaccept.Outcome is Outcome
    assert set(api.__all__) - {"boot", "compare", "matrix"} <= set(lazyaccept.__all__)  # modules at the root
    with pytest.raises(AttributeError):
        lazyaccept.no_such_name  # noqa: B018


@pytest.mark.real_binary
def test_boot_result_is_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    result = api.boot(ram="4G", smp=1, initrd_size="16M", no_log=True)
    assert result.outcome is Outcome.KERNEL_ENTRY and result.exit_code == 0 and result.ok
    assert isinstance(result.report, api.BootReport) and result.phases == result.report.phases
    assert result.accepted_by_actor["sec"] > 0 and result.accepted_bytes == sum(result.accepted_by_actor.values())
    assert repr(result).startswith("<BootResult KERNEL-ENTRY (exit code 0): the stub jumped into the kernel")
    assert main(["boot", "-m", "4G", "-smp", "1", "--initrd-size", "16M", "--no-log", "--json"]) == 0
    cli_doc = json.loads(capsys.readouterr().out)
    doc = result.to_json()
    assert doc["command"] == "boot" and doc["outcome"] == "kernel-entry"
    for d in (doc, cli_doc):
        d.pop("wall_s")
        d["cpu"].pop("explanation")  # the KVM probe's timing may differ
    assert doc == cli_doc


@pytest.mark.real_binary
def test_run_scenario_checks_expect(tmp_path: Path) -> None:
    text = '[td]\nram = "4G"\nvcpus = 1\n[firmware]\nupfront = "256M"\n[payload]\ninitrd_size = "1G"\n'
    failed = api.run_scenario(text + '[expect]\noutcome = "kernel-entry"\n')
    assert failed.outcome is Outcome.LOADER_FAILED and failed.exit_code == 1
    assert not failed.ok and failed.expect_mismatch == (
        "expected outcome kernel-entry; got outcome loader-failed, exit code 1"
    )
    assert "initrd" in failed.summary() and "expected outcome kernel-entry" in repr(failed)
    doc = failed.to_json()
    assert doc["command"] == "run" and doc["expect"] == {"outcome": "kernel-entry", "exit_code": None, "met": False}
    path = tmp_path / "td.toml"
    path.write_text(text + '[expect]\noutcome = "loader-failed"\nexit_code = 1\n')
    assert api.run_scenario(path).ok
    # --scenario FILE with options over it, as on the command line: the option wins.
    assert api.boot(scenario=str(path), option=[1], no_log=True).outcome is Outcome.KERNEL_ENTRY


def test_advise_is_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    result = api.advise(ram="4G", smp=1, initrd_size=64 << 20)
    assert set(result.min_upfront_bytes) == {"none", "option1", "option2", "option3"}
    assert all(n is not None and n <= 4 << 30 for n in result.min_upfront_bytes.values())
    assert result.advice is result.report.advice and repr(result).startswith("<AdviceResult 4G 1 vCPUs: none ")
    assert main(["advise", "-m", "4G", "-smp", "1", "--initrd-size", "64M", "--json"]) == 0
    assert result.to_json() == json.loads(capsys.readouterr().out)
    assert api.advise(kernel_init_size=0x37DE000).payload.init_size == 0x37DE000
    with pytest.raises(ConfigError, match="argument --kernel-init-size: not allowed with argument --kernel"):
        api.advise(kernel="vmlinuz", kernel_init_size="64M")


def test_sec_is_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    run = api.sec(ram="67000M", smp=4, upfront="512M")
    assert run.exit_code == 0 and run.accepted_bytes == 512 << 20 and run.phase_ns > 0
    assert repr(run).startswith("<SecRun 67000M 4 vCPUs: 512M accepted, ")
    assert main(["sec", "-m", "67000M", "-smp", "4", "--upfront", "512M", "--json"]) == 0
    assert run.to_json() == json.loads(capsys.readouterr().out)
    assert api.sec().td.ram_size == 64 << 30 and api.sec().td.config.vcpus == 8  # the command's defaults
    with pytest.raises(ConfigError, match="unknown up-front policy"):
        api.sec(upfront="sometimes")


def test_sec_termination_is_a_result(monkeypatch: pytest.MonkeyPatch) -> None:
    from lazyaccept.tdx.module import TdTerminated, Termination

    def terminate(*args: object, **kwargs: object) -> None:
        raise TdTerminated(Termination(0x1000, "accept", "sec", None, "accept of a page the VMM never added"))

    monkeypatch.setattr("lazyaccept.firmware.sec.run_sec", terminate)
    run = api.sec(ram="4G", smp=1)
    assert run.exit_code == 4 and run.sec is None and run.accepted_bytes == 0
    assert run.termination == "TD terminated: accept of GPA 0x1000 by sec (vCPU unassigned): accept of a page the " \
        "VMM never added"
    assert "terminated" in repr(run)
    with pytest.raises(ConfigError, match="prints no document"):
        run.to_json()


def readme_example() -> tuple[str, str]:
    """The README's "Python API" section: its fenced Python block and the output shown after it."""
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```python\n(.*?)```\n\n((?:    .*\n)+)", section, re.S)
    assert m, "README's Python API section has no ```python block followed by its output"
    return m.group(1), "".join(line[4:] + "\n" for line in m.group(2).splitlines())


@pytest.mark.real_binary
def test_readme_example_runs_and_prints_what_it_shows() -> None:
    code, shown = readme_example()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md (Python API)", "exec"), {"__name__": "readme_example"})
    assert out.getvalue() == shown



def test_on_demand_by_name_and_accel_as_qemu_spells_them() -> None:
    sc = api.boot_scenario(on_demand=["allocator", "accept-service"], accel="tcg")
    assert (sc.option1, sc.option2, sc.option3) == (True, False, True)
    assert api.boot_scenario(on_demand="loader").option2 and api.boot_scenario(accel="tcg").cpu == "unicorn"


def test_compare_is_the_commands_matrix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = api.compare(sizes=["4G", 64 << 30], vcpus=[2], policies=["below-4g", "256M", "256M+allocator"],
                         out=tmp_path / "out")
    assert len(result.cells) == 6 and result.failed_cell_count == 2 and result.exit_code == 1  # 256M alone fails
    assert {c.ram for c in result.cells} == {4 << 30, 64 << 30}
    assert (tmp_path / "out" / "report.html").is_file() and result.written[-1].name == "comparison.json"
    assert main(["compare", "--sizes", "4G,64G", "--vcpus", "2", "--policies", "below-4g,256M,256M+allocator",
                 "--json"]) == 1
    cli_doc = json.loads(capsys.readouterr().out)
    doc = result.to_json()
    for d in (doc, cli_doc):
        d.pop("wall_s"), d.pop("written")
    assert doc == cli_doc
    with pytest.raises(ConfigError, match="expected a list"):
        api.compare(sizes="4G")


@pytest.mark.real_binary
def test_matrix_is_the_commands_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """api.matrix runs the sweep `lazyaccept matrix` runs (commands.matrix.run_sweep): the same cells, outcomes and
    --json record; the command's rerun on the same cache runs nothing."""
    result = api.matrix(ram=["4G", 8 << 30], on_demand=["none", "allocator"], vcpus=[2], upfront=["256M"],
                        initrd_size=[64 << 20], workers=0, out=tmp_path / "out")
    assert len(result.lines) == 4 and result.exit_code == 1 and result.failed_cell_count == 2
    outcomes = {(line["axes"]["ram"], tuple(line["axes"]["on_demand"])): line["run"]["outcome"]
                for line in result.lines}
    assert outcomes == {("4G", ()): "stub-exited", ("4G", ("allocator",)): "kernel-entry",
                        ("8G", ()): "stub-exited", ("8G", ("allocator",)): "kernel-entry"}
    assert result.written[0] == tmp_path / "out" / "matrix.jsonl" and result.to_json()["command"] == "matrix"
    code = main(["matrix", "--ram", "4G,8G", "--on-demand", "none,allocator", "--vcpus", "2", "--upfront", "256M",
                 "--initrd-size", "64M", "--workers", "0", "--out", str(tmp_path / "out"), "--json"])
    record = json.loads(capsys.readouterr().out)
    assert code == result.exit_code and record["cached_count"] == 4 and record["ran_count"] == 0
    assert [c["outcome"] for c in record["cells"]] == [c["outcome"] for c in result.to_json()["cells"]]
    with pytest.raises(ConfigError, match="unknown axis 'size'"):
        api.matrix(size=["4G"], out=tmp_path / "x")
