"""One cell of the matrix: the task an executor runs (CellTask, its binaries by content as FileRefs), its result
(CellResult), and run_cell, which runs it as `lazyaccept run` does, in a child process.

Executors code against these names; keep them stable. The command builds the Dask one with
`lazyaccept.matrix.dask_executor.make_executor(workers=N | None, scheduler=ADDRESS | None)`, or, when the module has
no such function, `DaskExecutor(workers=..., scheduler=...)` (None workers: one per core); it may be a context manager
(entered before its `dashboard` is read) or have close(), which the command calls at the end. SerialExecutor (here) runs
the cells one after the other in this process's own children.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lazyaccept.exitcodes import EXIT_BAD_INPUT, EXIT_BOOTED, EXIT_FAILED, EXIT_MEMORY_LOST, EXIT_TERMINATED

FILE_REF_PREFIX = "@sha256:"  # a user file's path in CellTask.scenario: the file by content, resolved by run_cell
STATUSES = ("done", "timeout", "crash", "error")
LOG_TAIL_CHARS = 4000  # of a failed child's stderr: where a traceback or a fatal error shows
# `lazyaccept run`'s codes that end a run with an outcome (README, "Exit codes"); 2 (bad input) and 130 (Ctrl-C)
# end it without one; anything else, or a signal, is the child dying.
OUTCOME_EXIT_CODES = (EXIT_BOOTED, EXIT_FAILED, EXIT_MEMORY_LOST, EXIT_TERMINATED)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class FileRef:
    """A file a cell needs, travelling by content."""

    sha256: str  # hex
    name: str  # file name to materialise it under (a .deb keeps its Debian file name)
    size: int
    path: str  # where it is on the submitting host
    role: str  # "deb" (goes in the folder given as LAZYACCEPT_DEBS) or "file" (a user file)


@dataclass(frozen=True)
class CellTask:
    key: str  # cache key: sha256 hex of (every FileRef sha256, the canonical scenario, lazyaccept version)
    label: str  # short human name, e.g. "grub/linux-6.12/64G/upfront=256M/allocator"
    axes: dict  # axis name -> value (JSON-able), as the matrix file spelled it
    scenario: dict  # input of scenario_from_dict; a user file's path is "@sha256:<hex>", resolved by run_cell
    files: tuple[FileRef, ...]
    budget_s: float  # wall-time budget of the cell


@dataclass
class CellResult:
    key: str
    status: str  # "done" (the run finished with an outcome, booting or not), "timeout", "crash", "error"
    attempts: int
    wall_s: float
    worker: str  # "local" or the Dask worker address
    record: dict | None  # exactly what `lazyaccept run FILE --json` prints (parsed), when status == "done"
    log: str  # stderr tail (crash/timeout/error), else ""


class Executor(Protocol):
    dashboard: str | None

    def run(self, tasks: list[CellTask], on_result: Callable[[CellResult], None]) -> None:
        """Calls on_result exactly once per task, in completion order, from the calling thread."""
        ...


class SerialExecutor:
    """`--workers 0`: the cells one after the other, each in a child of this process, files where they are."""

    dashboard: str | None = None

    def run(self, tasks: list[CellTask], on_result: Callable[[CellResult], None]) -> None:
        for task in tasks:
            on_result(run_cell(task, {f.sha256: Path(f.path) for f in task.files}))


def classify(returncode: int, stdout: str) -> tuple[str, dict[str, Any] | None]:
    """(status, record) of a finished child: "done" with the parsed record for an exit code that carries an outcome
    and a `run` record on stdout; "error" for bad input or Ctrl-C (running it again changes nothing); "crash" for a
    signal, an undocumented code, or an outcome code without its record (the child died while writing it)."""
    if returncode in OUTCOME_EXIT_CODES:
        try:
            record = json.loads(stdout)
        except ValueError:
            return "crash", None
        if isinstance(record, dict) and record.get("command") == "run" and record.get("exit_code") == returncode:
            return "done", record
        return "crash", None
    if returncode in (EXIT_BAD_INPUT, 130):
        return "error", None
    return "crash", None


def _death_signal() -> Callable[[], None] | None:
    """preexec_fn for the child, before exec: SIGKILL when the thread that started it dies (a killed Dask worker
    leaves no boot running on; run_cell's thread waits for its child, so it outlives it). prctl(2), Linux only.
    libc is looked up here, in the parent: between fork and exec a threaded worker's child may only make the call."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _resolve(value: Any, paths: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _resolve(v, paths) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, paths) for v in value]
    if isinstance(value, str) and value.startswith(FILE_REF_PREFIX):
        return paths[value[len(FILE_REF_PREFIX) :]]
    return value


def _materialise(task: CellTask, files: dict[str, Path], folder: Path) -> dict[str, str]:
    """Symlinks under folder: debs/<Debian file name> for the .debs (LAZYACCEPT_DEBS), files/<hash>/<name> for user
    files (so that a report names the kernel by its own name). Returns sha256 -> the user file's path."""
    debs = folder / "debs"
    debs.mkdir()
    paths: dict[str, str] = {}
    for ref in task.files:
        source = Path(files[ref.sha256]).resolve()
        if ref.role == "deb":
            (debs / ref.name).symlink_to(source)
        else:
            link = folder / "files" / ref.sha256[:16] / ref.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(source)
            paths[ref.sha256] = str(link)
    return paths


def _tail(text: str) -> str:
    return text[-LOG_TAIL_CHARS:]


def run_cell(task: CellTask, files: dict[str, Path], worker: str = "local") -> CellResult:
    """Run one cell as `lazyaccept run` does, in a child process (`python -m lazyaccept run CELL.json --json`) with
    LAZYACCEPT_DEBS a folder of the cell's .debs. files: sha256 -> a local, verified copy of each FileRef. A child
    that dies (a signal, an undocumented exit code) is a "crash", run once more; one past budget_s is killed:
    "timeout"."""
    t0 = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="lazyaccept-cell-"))
    attempts = 0
    try:
        paths = _materialise(task, files, folder)
        scenario = folder / "cell.json"
        scenario.write_text(json.dumps(_resolve(task.scenario, paths)))
        env = {**os.environ, "LAZYACCEPT_DEBS": str(folder / "debs")}
        argv = [sys.executable, "-m", "lazyaccept", "run", str(scenario), "--json"]
        while True:
            attempts += 1
            status, record, log = _attempt(argv, env, task.budget_s)
            if status != "crash" or attempts == 2:
                break
        return CellResult(task.key, status, attempts, round(time.perf_counter() - t0, 3), worker, record,
                          "" if status == "done" else log)
    except (OSError, KeyError) as exc:  # a folder that cannot be written, a file the executor did not bring
        what = f"no local copy of {exc}" if isinstance(exc, KeyError) else str(exc)
        return CellResult(task.key, "error", max(attempts, 1), round(time.perf_counter() - t0, 3), worker, None,
                          f"cannot prepare the cell: {what}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _attempt(argv: list[str], env: dict[str, str], budget_s: float) -> tuple[str, dict | None, str]:
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env, text=True, preexec_fn=_death_signal())
    try:
        out, err = child.communicate(timeout=budget_s)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
        return "timeout", None, _tail(err) + f"\nkilled after its budget of {budget_s:g} s"
    except BaseException:  # Ctrl-C or the worker going away: never leave the child running
        child.kill()
        child.wait()
        raise
    status, record = classify(child.returncode, out)
    if status == "done":
        return status, record, ""
    how = f"killed by signal {-child.returncode}" if child.returncode < 0 else f"exit code {child.returncode}"
    return status, None, _tail(err) + f"\n{how}"
