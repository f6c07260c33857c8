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
    """Run one cell as `lazyaccept run` does, in a subprocess (see module doc)."""
    raise NotImplementedError  # filled in next commit
