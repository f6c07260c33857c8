"""run_cell: a real cell run as `lazyaccept run` runs it, in a child; a budget that kills it; the exit-code
classification and the retry of a crash; no child left behind when its parent dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lazyaccept.matrix import cell as cell_module
from lazyaccept.matrix.cell import CellTask, SerialExecutor, classify, run_cell
from lazyaccept.matrix.spec import expand, matrix_from_dict


def small_task(budget_s: float = 120, **axes: list) -> CellTask:
    spec = matrix_from_dict({"base": {"td": {"vcpus": 2}}, "axes": {"ram": ["4G"], **axes}}, Path(".").resolve())
    (cell,) = expand(spec, budget_s)
    assert cell.task is not None
    return cell.task


def local_files(task: CellTask) -> dict[str, Path]:
    return {f.sha256: Path(f.path) for f in task.files}


@pytest.mark.real_binary
def test_a_real_cell_runs_as_run_does() -> None:
    task = small_task(loader=["qemu-direct-boot"], upfront=["256M"])
    result = run_cell(task, local_files(task))
    assert (result.status, result.attempts, result.worker, result.log) == ("done", 1, "local", "")
    record = result.record
    assert record is not None and record["command"] == "run"
    assert (record["outcome"], record["exit_code"]) == ("kernel-entry", 0)
    assert record["scenario"]["ram_bytes"] == 4 << 30 and record["scenario"]["upfront"] == "256M"


@pytest.mark.real_binary
def test_a_cell_past_its_budget_is_killed() -> None:
    task = small_task(budget_s=0.2)
    result = run_cell(task, local_files(task))
    assert (result.status, result.attempts, result.record) == ("timeout", 1, None)
    assert result.log.endswith("killed after its budget of 0.2 s")


def test_exit_codes_classify() -> None:
    run = '{"command": "run", "exit_code": %d}'
    assert classify(0, run % 0) == ("done", {"command": "run", "exit_code": 0})
    assert classify(3, run % 3)[0] == "done"  # memory lost: an outcome, not a crash
    assert classify(4, run % 4)[0] == "done"  # the TD terminated
    assert classify(1, run % 1)[0] == "done"
    assert classify(1, "")[0] == "crash"  # an outcome code but no record: the child died writing it
    assert classify(0, run % 1)[0] == "crash"  # a record that disagrees with the code
    assert classify(2, "") == ("error", None)  # bad input: running it again changes nothing
    assert classify(130, "") == ("error", None)
    assert classify(-signal.SIGKILL, "") == ("crash", None)
    assert classify(-signal.SIGSEGV, run % 0) == ("crash", None)
    assert classify(5, "")[0] == "crash"  # no documented code


def test_a_crash_runs_once_more(monkeypatch: pytest.MonkeyPatch) -> None:
    outcomes = [("crash", None, "Fatal Python error: Segmentation fault\nkilled by signal 11"),
                ("done", {"command": "run"}, "")]
    monkeypatch.setattr(cell_module, "_attempt", lambda argv, env, budget: outcomes.pop(0))
    task = CellTask("k", "x", {}, {"td": {"ram": "4G"}}, (), 10)
    result = run_cell(task, {})
    assert (result.status, result.attempts, result.record, result.log) == ("done", 2, {"command": "run"}, "")
    outcomes[:] = [("crash", None, "first"), ("crash", None, "second: killed by signal 9")]
    result = run_cell(task, {})
    assert (result.status, result.attempts, result.log) == ("crash", 2, "second: killed by signal 9")


def test_the_serial_executor_reports_every_task_once(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr(cell_module, "run_cell", lambda task, files, worker="local": cell_module.CellResult(
        task.key, "done", 1, 0.0, worker, {}, ""))
    tasks = [CellTask(k, k, {}, {}, (), 1) for k in "abc"]
    SerialExecutor().run(tasks, lambda r: seen.append(r.key))
    assert seen == ["a", "b", "c"]


def _children_running(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.real_binary
@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_parent_leaves_no_child(tmp_path: Path) -> None:
    """A Dask worker killed mid-cell: its boot must not run on as an orphan."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import tempfile, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        f"tempfile.tempdir = {str(tmp_path)!r}\n"  # the child's scenario path carries this folder: the marker
        "from pathlib import Path\n"
        "from tests.matrix.test_cell import small_task, local_files\n"
        "from lazyaccept.matrix.cell import run_cell\n"
        "task = small_task(vcpus=[1], os=['real'])\n"  # the real kernel runs on for minutes
        "run_cell(task, local_files(task))\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.monotonic() + 60
        while not (children := _children_running(f"{tmp_path}/lazyaccept-cell-")):
            assert parent.poll() is None and time.monotonic() < deadline, "the cell's child never started"
            time.sleep(0.01)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20  # a liveness bound: without PDEATHSIG the child runs on for minutes
        while _children_running(f"{tmp_path}/lazyaccept-cell-"):
            assert time.monotonic() < deadline, f"child {children} outlived its parent"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in _children_running(f"{tmp_path}/lazyaccept-cell-"):  # only when the test failed: ours, by pid
            os.kill(pid, signal.SIGKILL)


def test_a_file_the_executor_did_not_bring_is_an_error_of_the_cell() -> None:
    ref = cell_module.FileRef("f" * 64, "vmlinuz", 1, "/nowhere/vmlinuz", "file")
    result = run_cell(CellTask("k", "x", {}, {"payload": {"kernel": "@sha256:" + "f" * 64}}, (ref,), 10), {})
    assert (result.status, result.record) == ("error", None)
    assert result.log == f"cannot prepare the cell: no local copy of '{'f' * 64}'"
