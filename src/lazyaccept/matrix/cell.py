"""One cell of the matrix: the task an executor runs (CellTask, its binaries by content as FileRefs) and its
result (CellResult). Executors (serial here, Dask in dask_executor) code against these names; keep them stable."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


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


def run_cell(task: CellTask, files: dict[str, Path], worker: str = "local") -> CellResult:
    """Run one cell as `lazyaccept run` does, in a subprocess (helper 41's stand-in until helper 40's lands)."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    import time

    def value(v: object) -> str:
        return json.dumps(v)  # a JSON string, number, bool or list of them is also TOML

    def resolve(v: object) -> object:
        if isinstance(v, str) and v.startswith("@sha256:"):
            return str(files[v.removeprefix("@sha256:")])
        return v

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lazyaccept-cell-") as tmp:
        debs = Path(tmp, "debs")
        debs.mkdir()
        for ref in task.files:
            if ref.role == "deb":
                (debs / ref.name).symlink_to(files[ref.sha256])
        lines = []
        for section, table in task.scenario.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {value(resolve(v))}" for k, v in table.items()]
        toml = Path(tmp, "cell.toml")
        toml.write_text("\n".join(lines) + "\n")
        env = {**os.environ, "LAZYACCEPT_DEBS": str(debs)}
        cmd = [sys.executable, "-m", "lazyaccept", "run", str(toml), "--json", "-q"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=task.budget_s)
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            return CellResult(task.key, "timeout", 1, time.monotonic() - t0, worker, None, err[-4000:])
    wall = time.monotonic() - t0
    if proc.returncode in (0, 1, 3, 4):
        return CellResult(task.key, "done", 1, wall, worker, json.loads(proc.stdout), "")
    status = "error" if proc.returncode == 2 else "crash"
    return CellResult(task.key, status, 1, wall, worker, None, proc.stderr[-4000:])
