"""`--junit FILE` on boot, run, compare, advise and differential: JUnit XML read back (the shape CI systems read:
<testsuites>/<testsuite tests failures errors time>/<testcase classname name time> with <failure message type>),
written also when the run fails; a path that cannot be written is exit code 2 with one line."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lazyaccept import junit
from lazyaccept.cli import build_parser, main
from lazyaccept.differential import Bound, Differential, FieldDiff
from lazyaccept.errors import InputError

JUNIT_COMMANDS = ("boot", "run", "compare", "advise", "differential")


def read(path: Path) -> tuple[ET.Element, list[ET.Element]]:
    """The <testsuite> (its counts checked against its cases) and its <testcase>s."""
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert int(suite.get("tests", "-1")) == len(cases) == int(root.get("tests", "-1"))
    assert int(suite.get("failures", "-1")) == sum(c.find("failure") is not None for c in cases)
    assert int(suite.get("errors", "-1")) == sum(c.find("error") is not None for c in cases)
    assert float(suite.get("time", "-1")) >= 0 and suite.get("timestamp")
    for c in cases:
        assert c.get("classname", "").startswith("lazyaccept.") and c.get("name") and float(c.get("time", "-1")) >= 0
    return suite, cases


def test_writer_shape_and_text_xml_cannot_hold(tmp_path: Path) -> None:
    out = tmp_path / "r.xml"
    junit.write(out, "suite", [
        junit.Case("lazyaccept.x", "passes", 1.5, system_out="console \x1b[0mcolour\x00 and \ud800\n"),
        junit.Case("lazyaccept.x", "fails", failure="it <failed> & \"why\"", failure_type="loader-failed",
                   details="detail", properties={"outcome": "loader-failed", "none": None}),
        junit.Case("lazyaccept.x", "errs", error="could not tell"),
    ], time_s=2.25, properties={"command": "x"})  # fmt: skip
    suite, cases = read(out)
    counts = [suite.get(k) for k in ("name", "tests", "failures", "errors", "time")]
    assert counts == ["suite", "3", "1", "1", "2.250"]
    props = {p.get("name"): p.get("value") for p in suite.findall("properties/property")}
    assert props["command"] == "x" and props["lazyaccept"]
    assert cases[0].findtext("system-out") == "console \\x1b[0mcolour\\x00 and \ufffd\n"
    failure = cases[1].find("failure")
    assert failure is not None and failure.get("message") == 'it <failed> & "why"'
    assert (failure.get("type"), failure.text) == ("loader-failed", "detail")
    assert [p.get("name") for p in cases[1].iter("property")] == ["outcome"]  # None values are left out
    error = cases[2].find("error")
    assert error is not None and error.get("message") == "could not tell"
    assert not list(tmp_path.glob(".*tmp"))  # written whole, through a temporary file


def test_writer_unwritable_path_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"--junit '.*/no/r.xml': cannot write: No such file or directory"):
        junit.write(tmp_path / "no" / "r.xml", "suite", [], time_s=0)


def test_every_command_has_the_flag() -> None:
    parser, _ = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for name in JUNIT_COMMANDS:
        assert any(a.dest == "junit" for a in sub[name]._actions), f"{name} has no --junit"


@pytest.mark.parametrize(
    ("where", "needle"),
    [
        ("no/such/dir/r.xml", "argument --junit: cannot write '{tmp}/no/such/dir/r.xml': no such folder"),
        ("", "argument --junit: '{tmp}' is a directory, not a file"),
    ],
)
def test_bad_path_is_refused_before_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str,
                                             needle: str) -> None:
    target = str(tmp_path / where) if where else str(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--sizes", "4G", "--vcpus", "1", "--policies", "eager", "--junit", target])
    assert exc.value.code == 2
    assert needle.format(tmp=tmp_path) in capsys.readouterr().err


def test_write_failure_after_the_run_is_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # /proc exists, but nobody (root included) can create a file in it.
    assert main(["compare", "--sizes", "4G", "--vcpus", "1", "--policies", "eager", "--junit", "/proc/r.xml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lazyaccept compare: error: --junit '/proc/r.xml': cannot write:")


def test_compare_one_case_per_cell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c.xml"
    args = ["compare", "--sizes", "4G,64G", "--vcpus", "1,8", "--policies", "256M,256M+option1", "--junit", str(out)]
    main(args)
    suite, cases = read(out)
    assert len(cases) == 8 and suite.get("failures") == "4"  # 256M with no on-demand option never boots
    by_name = {(c.get("classname"), c.get("name")): c for c in cases}
    failed = by_name[("lazyaccept.compare.kvm-2m.8vcpu", "256M on 64G")].find("failure")
    assert failed is not None and failed.get("type") == "cell-failed"
    assert failed.get("message", "").startswith("does not boot: ")
    ok = by_name[("lazyaccept.compare.kvm-2m.1vcpu", "256M+option1 on 4G")]
    assert ok.find("failure") is None and ok.findtext("system-out", "").startswith("firmware ")


def test_advise_one_case_per_option(tmp_path: Path) -> None:
    out = tmp_path / "a.xml"
    assert main(["advise", "-m", "4G", "-smp", "1", "--initrd-size", "64M", "--junit", str(out)]) == 0
    suite, cases = read(out)
    assert [c.get("name") for c in cases] == ["none", "option1", "option2", "option3"]
    assert suite.get("failures") == "0"
    assert all("smallest up-front" in c.findtext("system-out", "") for c in cases)


def test_differential_one_case_per_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real differential boots edk2's firmware for minutes: its result is stood in for, the wiring is real.
    fields = [
        FieldDiff("sec_accepted", "2.00 GiB", "2.00 GiB", True),
        FieldDiff("memory_map", "a", "b", False, Bound(4096, "page tables"), delta=2048),
        FieldDiff("unaccepted_table", "x", "y", False),
    ]
    d = Differential(4 << 30, 1, "ovmf-x64-2025.02", fields, {"python": 1.0, "real": 2.5})
    monkeypatch.setattr("lazyaccept.commands.differential.run_differential", lambda *a, **k: d)
    out = tmp_path / "d.xml"
    assert main(["differential", "--junit", str(out)]) == 1
    suite, cases = read(out)
    assert [c.get("name") for c in cases] == ["sec_accepted", "memory_map", "unaccepted_table"]
    assert suite.get("failures") == "1" and suite.get("time") == "3.500"
    failure = cases[2].find("failure")
    assert failure is not None and failure.get("message") == "unaccepted_table: DIFFERENT"
    assert failure.text == "python: x\nreal: y"
    assert "within bound" in cases[1].findtext("system-out", "")


@pytest.mark.real_binary
def test_boot_writes_its_case_also_when_it_fails(tmp_path: Path) -> None:
    out = tmp_path / "b.xml"
    assert main(["boot", "-m", "4G", "-smp", "1", "--upfront", "256M", "--initrd-size", "1G", "--no-log",
                 "--junit", str(out)]) == 1  # fmt: skip
    suite, (case,) = read(out)
    assert suite.get("name") == "lazyaccept boot" and case.get("classname") == "lazyaccept.boot"
    assert case.get("name") == "4G 1 vCPU upfront 256M on-demand none initrd 1G"
    failure = case.find("failure")
    assert failure is not None and failure.get("type") == "loader-failed"
    assert failure.get("message", "").startswith("loader-failed: QemuKernelLoaderFsDxe: AllocatePool of 0x40000000")
    assert "exit code 1" in (failure.text or "")
    assert main(["boot", "-m", "4G", "-smp", "1", "--initrd-size", "16M", "--no-log", "--junit", str(out)]) == 0
    suite, (case,) = read(out)
    assert suite.get("failures") == "0" and case.find("failure") is None
    assert "EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path" in case.findtext("system-out", "")


@pytest.mark.real_binary
def test_run_passes_when_the_expected_failure_happens(tmp_path: Path) -> None:
    scenario = tmp_path / "upstream.toml"
    scenario.write_text('[td]\nram = "4G"\nvcpus = 1\n[firmware]\nupfront = "256M"\n[payload]\ninitrd_size = "1G"\n'
                        '[expect]\noutcome = "loader-failed"\n')
    out = tmp_path / "r.xml"
    assert main(["run", str(scenario), "--junit", str(out)]) == 1  # run's exit code is the boot's
    suite, (case,) = read(out)
    assert case.get("classname") == "lazyaccept.run" and case.get("name") == str(scenario)
    assert suite.get("failures") == "0"  # the scenario expects this failure: the case passes
    scenario.write_text(scenario.read_text().replace("loader-failed", "kernel-entry"))
    assert main(["run", str(scenario), "--junit", str(out)]) == 1
    suite, (case,) = read(out)
    failure = case.find("failure")
    assert failure is not None
    assert failure.get("message") == "expected outcome kernel-entry; got outcome loader-failed, exit code 1"
