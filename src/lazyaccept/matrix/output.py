"""The matrix's outputs: JSON Lines (one `matrix-cell` record a cell, written and flushed as each result arrives),
and Parquet (one row a cell: the axes and the key figures) for analysis."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from lazyaccept import cli
from lazyaccept.files import atomic_open
from lazyaccept.matrix.cell import CellResult
from lazyaccept.matrix.spec import Cell

OS_PHASE = "OS: "  # boot_report names the Linux model's phases so; the ones before are firmware and loader


def cell_line(cell: Cell, result: CellResult | None, *, cached: bool = False) -> dict[str, Any]:
    """A cell's JSON Lines record. A skipped cell (no result) gets one with status "skipped" and the reason as its
    log, for the summary and JUnit only: matrix.jsonl holds the cells that ran (statuses done, timeout, crash,
    error), as the schema's matrix-cell says."""
    if result is None:
        return cli.json_record("matrix-cell", {
            "key": None, "label": cell.label, "axes": cell.axes, "status": "skipped", "attempts": 0, "wall_s": 0.0,
            "worker": None, "cached": False, "log": cell.skipped or "", "run": None,
        })  # fmt: skip
    return cli.json_record("matrix-cell", {
        "key": result.key, "label": cell.label, "axes": cell.axes, "status": result.status,
        "attempts": result.attempts, "wall_s": result.wall_s, "worker": result.worker, "cached": cached,
        "log": result.log, "run": result.record,
    })  # fmt: skip


class JsonLines:
    """matrix.jsonl, one line a cell as it comes (flushed: a reader, or a sweep stopped midway, sees whole lines)."""

    def __init__(self, path: Path):
        self.path = path
        self.lines: list[dict[str, Any]] = []
        self._file: TextIO = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, line: dict[str, Any]) -> None:
        self.lines.append(line)
        self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def figures(run: dict[str, Any] | None) -> dict[str, Any]:
    """The key figures of a run record (None for a cell that has none)."""
    if run is None:
        return dict.fromkeys(("outcome", "exit_code", "accepted_bytes", "firmware_ns", "os_ns", "total_ns",
                              "ram_bytes", "vcpus", "os_outcome", "run_wall_s"))
    phases = run.get("phases") or []
    firmware = sum(p["virtual_ns"] for p in phases if not p["name"].startswith(OS_PHASE))
    os_ns = sum(p["virtual_ns"] for p in phases if p["name"].startswith(OS_PHASE))
    return {
        "outcome": run["outcome"], "exit_code": run["exit_code"],
        "accepted_bytes": (run.get("tdx_stats") or {}).get("accepted_bytes"),
        "firmware_ns": firmware, "os_ns": os_ns, "total_ns": firmware + os_ns,
        "ram_bytes": run["scenario"]["ram_bytes"], "vcpus": run["scenario"]["vcpus"],
        "os_outcome": run.get("os_outcome"), "run_wall_s": run.get("wall_s"),
    }  # fmt: skip


def axis_text(value: Any) -> str:
    """An axis value as one string column: lists joined with + (none for empty), the rest as spelled."""
    if isinstance(value, list):
        return "+".join(map(str, value)) or "none"
    return str(value)


def rows(lines: list[dict[str, Any]], axes: list[str]) -> list[dict[str, Any]]:
    return [
        {"key": line["key"], "label": line["label"], **{f"axis_{a}": axis_text(line["axes"].get(a)) for a in axes},
         "status": line["status"], "cached": line["cached"], "attempts": line["attempts"], "wall_s": line["wall_s"],
         "worker": line["worker"], **figures(line["run"])}
        for line in lines
    ]


def write_parquet(path: Path, lines: list[dict[str, Any]], axes: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    int64, string, double = pa.int64(), pa.string(), pa.float64()
    schema = pa.schema([
        ("key", string), ("label", string), *[(f"axis_{a}", string) for a in axes], ("status", string),
        ("cached", pa.bool_()), ("attempts", int64), ("wall_s", double), ("worker", string), ("outcome", string),
        ("exit_code", int64), ("accepted_bytes", int64), ("firmware_ns", int64), ("os_ns", int64),
        ("total_ns", int64), ("ram_bytes", int64), ("vcpus", int64), ("os_outcome", string), ("run_wall_s", double),
    ])  # fmt: skip
    with atomic_open(path) as f:
        pq.write_table(pa.Table.from_pylist(rows(lines, axes), schema=schema), f)
