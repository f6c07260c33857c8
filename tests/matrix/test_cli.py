"""`lazyaccept matrix` end to end, serial (--workers 0) on real cells: the JSON Lines against the schema, Parquet
read back, JUnit, the rerun served from the cache, Ctrl-C leaving a cache a rerun resumes from, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

import lazyaccept.matrix
from lazyaccept.cli import main
from lazyaccept.exitcodes import EXIT_BAD_INPUT, EXIT_BOOTED, EXIT_FAILED
from tests.test_json_schema import errors

# 4 real cells (one does not boot: 256M up front cannot hold the stub's 64M initrd on direct boot without the
# allocator's option) and 4 skipped by the boot's own refusal (the real kernel after the Python firmware, 2 vCPUs).
AXES = ["--loader", "direct,grub", "--on-demand", "none,allocator", "--os", "model,real", "--ram", "4G",
        "--vcpus", "2", "--upfront", "256M", "--initrd-size", "64M", "--workers", "0"]


def run_matrix(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    code = main(["matrix", *argv, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.real_binary
def test_a_matrix_runs_writes_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, report = tmp_path / "out", tmp_path / "junit.xml"
    code, summary, err = run_matrix([*AXES, "--out", str(out), "--junit", str(report)], capsys)
    assert "8 cells: 0 cached, 4 to run, 4 skipped" in err
    assert errors(summary) == []
    lines = read_lines(out / "matrix.jsonl")  # the cells that ran; the skipped ones are the summary's
    assert len(lines) == 4 and all(errors(line) == [] for line in lines)
    done = [line for line in lines if line["status"] == "done"]
    skipped = [c for c in summary["cells"] if c["status"] == "skipped"]
    assert len(done) == 4 and len(skipped) == 4 and len(summary["cells"]) == 8
    assert all(c["label"].endswith("/os=real") and c["key"] is None for c in skipped)
    assert all(c["reason"].startswith("--run-kernel after the Python firmware needs 1 vCPU") for c in skipped)
    for line in done:  # each run record is the cell's own scenario
        scenario = line["run"]["scenario"]
        assert scenario["ram_bytes"] == 4 << 30 and scenario["initrd_size_bytes"] == 64 << 20
        assert scenario["loader"] == {"direct": "qemu-direct-boot", "grub": "grub"}[line["axes"]["loader"]]
        assert scenario["options"] == (["option1"] if line["axes"]["on_demand"] == ["allocator"] else [])
        assert line["worker"] == "local" and line["cached"] is False and line["attempts"] == 1
    not_booting = sorted(line["label"] for line in done if line["run"]["exit_code"] != 0)
    assert not_booting == ["direct/4G/vcpus=2/upfront=256M/none/initrd=64M/os=model"]
    assert summary["failed_cell_count"] == 1 and code == EXIT_FAILED  # compare's convention: a cell that does not boot
    assert summary["outcome_counts"] == {"kernel-entry": 3, "stub-exited": 1, "skipped": 4}

    import pyarrow.parquet as pq

    rows = pq.read_table(out / "matrix.parquet").to_pylist()
    assert [r["label"] for r in rows] == [c["label"] for c in summary["cells"] if c["status"] != "skipped"]
    by_label = {line["label"]: line for line in lines}
    for r in rows:
        line = by_label[r["label"]]
        assert r["axis_loader"] == line["axes"]["loader"] and r["status"] == line["status"]
        assert (r["outcome"], r["exit_code"]) == (line["run"]["outcome"], line["run"]["exit_code"])
        assert r["accepted_bytes"] == line["run"]["tdx_stats"]["accepted_bytes"] > 0
        assert r["total_ns"] == sum(p["virtual_ns"] for p in line["run"]["phases"]) == r["firmware_ns"] + r["os_ns"]

    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("8", "1", "4")

    # The rerun: everything from the cache, the same results.
    code2, summary2, err2 = run_matrix([*AXES, "--out", str(out)], capsys)
    assert "8 cells: 4 cached, 0 to run, 4 skipped" in err2
    assert code2 == code and summary2["cached_count"] == 4 and summary2["ran_count"] == 0
    again = {line["label"]: line for line in read_lines(out / "matrix.jsonl")}
    assert again.keys() == by_label.keys()
    for label, line in by_label.items():
        assert again[label]["run"] == line["run"] and again[label]["cached"] is True


@pytest.mark.real_binary
def test_ctrl_c_leaves_a_cache_the_rerun_resumes_from(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "lazyaccept", "matrix", *AXES, "--out", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")})
    jsonl = out / "matrix.jsonl"
    deadline = time.monotonic() + 120
    while not (jsonl.is_file() and any(line["status"] == "done" for line in read_lines(jsonl))):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.rstrip().endswith("lazyaccept: interrupted"), err
    finished = [line for line in read_lines(jsonl) if line["status"] == "done"]
    assert 1 <= len(finished) < 4  # stopped midway, every line whole
    assert not [p for p in (out / "cache").rglob("*") if p.is_file() and p.suffix != ".json"]  # no half-written file

    code, plan, err = run_matrix([*AXES, "--out", str(out), "--dry-run"], capsys)
    assert code == EXIT_BOOTED and errors(plan) == []
    states = {c["label"]: c["state"] for c in plan["cells"]}
    assert {label for label, s in states.items() if s == "cached"} == {line["label"] for line in finished}
    assert f"8 cells: {len(finished)} cached, {4 - len(finished)} to run, 4 skipped" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ram", "4G,sixty", "--out", "x"], "--ram: invalid size 'sixty'"),
        (["--loader", "grub,lilo", "--out", "x"], "--loader: unknown value 'lilo'"),
        (["--on-demand", "none,teleport", "--out", "x"], "--on-demand: unknown on-demand option 'teleport'"),
        (["--out", "x"], "no matrix: give FILE.toml or at least one axis flag"),
        (["--ram", "4G"], "--out DIR"),
        (["no-such-matrix.toml", "--out", "x"], "matrix file 'no-such-matrix.toml' not found"),
    ],
)
def test_bad_input_is_one_line_naming_it(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["matrix", *argv]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lazyaccept matrix: error: ") and message in err[0], err


def test_workers_without_the_dask_executor_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lazyaccept.matrix.dask_executor", None)  # as on a branch without it
    monkeypatch.delattr(lazyaccept.matrix, "dask_executor", raising=False)  # imported already by its own tests
    base = ["matrix", "--ram", "4G", "--out", str(tmp_path), "--workers"]
    assert main([*base, "2"]) == EXIT_BAD_INPUT
    assert "--workers: the Dask executor is not available" in capsys.readouterr().err
    assert main(["matrix", "--ram", "4G", "--out", str(tmp_path), "--scheduler", "tcp://127.0.0.1:8786"]) == 2
    assert "--scheduler: the Dask executor is not available" in capsys.readouterr().err


def test_crashes_and_a_lost_cell_are_recorded_not_fatal(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's side of an executor (the Dask one is tested in its own file): its dashboard is shown, a crash
    is a line with its log, a cell it never reports is an error line, nothing of either is cached."""
    from lazyaccept.commands import matrix as command
    from lazyaccept.matrix.cell import CellResult

    class Lossy:
        dashboard = "http://127.0.0.1:8787/status"

        def run(self, tasks: list, on_result: Any) -> None:
            for t in tasks[1:]:
                on_result(CellResult(t.key, "crash", 2, 0.5, "tcp://10.0.0.2:4000", None, "killed by signal 9"))
                on_result(CellResult(t.key, "done", 1, 0.5, "tcp://10.0.0.2:4000", None, ""))  # twice: ignored

    monkeypatch.setattr(command, "make_executor", lambda args: Lossy())
    code, summary, err = run_matrix(["--ram", "4G,8G,16G", "--out", str(tmp_path), "--workers", "2"], capsys)
    assert "lazyaccept matrix: Dask dashboard http://127.0.0.1:8787/status" in err
    lines = read_lines(tmp_path / "matrix.jsonl")
    assert all(errors(line) == [] for line in lines) and errors(summary) == []
    assert [(line["label"], line["status"], line["log"]) for line in lines] == [
        ("8G", "crash", "killed by signal 9"), ("16G", "crash", "killed by signal 9"),
        ("4G", "error", "the executor returned no result for this cell")]
    assert code == EXIT_FAILED and summary["failed_cell_count"] == 3
    assert summary["status_counts"] == {"crash": 2, "error": 1}
    assert not list((tmp_path / "cache").rglob("*.json"))  # nothing kept: a rerun runs all three again


def test_the_dask_executor_is_built_entered_and_closed(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The wiring to lazyaccept.matrix.dask_executor (a stand-in module here): its make_executor gets --workers and
    --scheduler, the executor is entered before its dashboard is read and left at the end."""
    import types

    from lazyaccept.matrix.cell import CellResult

    calls: list[Any] = []

    class Executor:
        dashboard: str | None = None

        def __enter__(self) -> Executor:
            calls.append("enter")
            self.dashboard = "http://127.0.0.1:8787/status"
            return self

        def __exit__(self, *exc: object) -> None:
            calls.append("exit")

        def run(self, tasks: list, on_result: Any) -> None:
            for t in tasks:
                on_result(CellResult(t.key, "timeout", 1, 9.0, "tcp://10.0.0.3:4000", None, "killed after 9 s"))

    module = types.ModuleType("lazyaccept.matrix.dask_executor")
    module.make_executor = lambda workers, scheduler: calls.append((workers, scheduler)) or Executor()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lazyaccept.matrix.dask_executor", module)
    monkeypatch.setattr(lazyaccept.matrix, "dask_executor", module, raising=False)  # `from ... import` looks here
    code, summary, err = run_matrix(["--ram", "4G", "--out", str(tmp_path), "--scheduler", "tcp://h:8786"], capsys)
    assert calls == [(None, "tcp://h:8786"), "enter", "exit"]
    assert summary["dashboard"] == "http://127.0.0.1:8787/status" and summary["status_counts"] == {"timeout": 1}
    assert code == EXIT_FAILED


@pytest.mark.real_binary
def test_a_small_matrix_on_a_two_worker_local_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's `make test` matrix: 4 real cells on a LocalCluster of 2 worker processes, through the command, each
    reported once with the worker that ran it; the serial run's results are the same cells' (a second sweep, from the
    same cache, runs nothing)."""
    out = tmp_path / "out"
    argv = ["--ram", "4G,8G", "--on-demand", "none,allocator", "--vcpus", "2", "--upfront", "256M",
            "--initrd-size", "64M", "--workers", "2", "--out", str(out)]
    code, summary, err = run_matrix(argv, capsys)
    assert "4 cells: 0 cached, 4 to run, 0 skipped" in err
    assert "Dask dashboard http://" in err  # bokeh is a dependency: the address is printed while it runs
    lines = read_lines(out / "matrix.jsonl")
    assert sorted(line["label"] for line in lines) == sorted(c["label"] for c in summary["cells"])
    assert len({line["key"] for line in lines}) == 4 and all(errors(line) == [] for line in lines)
    assert all(line["status"] == "done" and line["worker"].startswith("tcp://") for line in lines)
    booting = {line["axes"]["on_demand"] == ["allocator"]: line["run"]["outcome"] for line in lines}
    assert booting == {True: "kernel-entry", False: "stub-exited"}  # 256M cannot hold the 64M initrd without it
    assert code == EXIT_FAILED and summary["outcome_counts"] == {"kernel-entry": 2, "stub-exited": 2}
    code2, summary2, err2 = run_matrix([*argv[:-4], "--workers", "0", "--out", str(out)], capsys)
    assert "4 cells: 4 cached, 0 to run" in err2 and summary2["ran_count"] == 0 and code2 == code
