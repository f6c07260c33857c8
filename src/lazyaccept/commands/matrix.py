"""`lazyaccept matrix [FILE.toml] --out DIR`: the compatibility matrix, firmware x loader x kernel x TD size x
policy, each cell a real boot as `lazyaccept run` does it, on a Dask cluster or one after the other; results cached
by content, written as JSON Lines, Parquet (and the HTML page when lazyaccept.matrix.report is there)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from lazyaccept import cli, junit, progress
from lazyaccept.errors import ConfigError
from lazyaccept.exitcodes import EXIT_BOOTED, EXIT_FAILED
from lazyaccept.matrix.cache import ResultCache
from lazyaccept.matrix.cell import CellResult, CellTask, Executor, SerialExecutor
from lazyaccept.matrix.output import JsonLines, cell_line, write_parquet
from lazyaccept.matrix.spec import AXES, LOADERS, OS_CHOICES, Cell, MatrixSpec, check_axis, expand, load_matrix
from lazyaccept.scenario import ScenarioError
from lazyaccept.units import format_size

NAME = "matrix"
JSONL, PARQUET, HTML = "matrix.jsonl", "matrix.parquet", "matrix.html"


def register(subparsers: Any) -> str:
    p = subparsers.add_parser(
        NAME,
        help="the compatibility matrix: firmware x loader x kernel x TD size x policy as real boots, on Dask",
        description="Run every cell of a matrix (a base scenario and axes: lazyaccept.matrix.spec) as `lazyaccept "
        "run` runs one scenario, each in a child process with a wall-time budget, on a Dask cluster (one worker per "
        "core by default) or one after the other (--workers 0). Results are cached by the hash of the cell's "
        "binaries, scenario and lazyaccept version: a rerun runs only what is missing. Writes matrix.jsonl (one "
        "record a cell), matrix.parquet and, when available, matrix.html under --out; prints a summary. Axis flags "
        "make a matrix without a file (or replace the file's axis): comma-separated values.",
    )
    p.add_argument("file", nargs="?", metavar="FILE.toml", help="the matrix file (optional with axis flags)")
    axes = p.add_argument_group("axes (comma-separated values; each replaces the file's axis)")
    axes.add_argument("--firmware", metavar="LIST",
                      help="python, a Python firmware profile (ovmf-x64-2026.08), or a real image run from its reset "
                      "vector (debian:ovmf, debian:ovmf-2026, debian:ovmf-inteltdx, a path)")
    axes.add_argument("--loader", metavar="LIST", help=", ".join(LOADERS))
    axes.add_argument("--kernel", metavar="LIST",
                      help="debian:linux-6.12, debian:linux-7.2, debian:linux-6.1 or a path")
    axes.add_argument("--ram", "-m", metavar="LIST", help="TD sizes: 4G,64G (a bare number is MiB, as -m)")
    axes.add_argument("--vcpus", "-smp", metavar="LIST", help="vCPU counts: 1,8")
    axes.add_argument("--upfront", metavar="LIST", help="below-4g, all or a size (256M; bare: MiB)")
    axes.add_argument("--on-demand", metavar="LIST",
                      help="on-demand option sets: none, allocator, allocator+loader (names or 1, 2, 3)")
    axes.add_argument("--initrd-size", metavar="LIST", help="synthetic initrd sizes: 64M,1G (bare: MiB)")
    axes.add_argument("--os", metavar="LIST", help=f"{' or '.join(OS_CHOICES)}: the Linux model, or the real kernel "
                      "running on from the handoff")
    axes.add_argument("--host-profile", metavar="LIST", help="host cost profiles: kvm-2m, kvm-4k or .toml files")
    run = p.add_argument_group("running")
    run.add_argument("--out", metavar="DIR", help="write matrix.jsonl, matrix.parquet (and matrix.html) here")
    run.add_argument("--workers", type=functools.partial(cli.positive_int_arg, low=0), metavar="N",
                     help="Dask worker processes on this machine (default: one per core); 0: one cell after the "
                     "other in this process, no Dask")
    run.add_argument("--scheduler", metavar="ADDRESS",
                     help="run on an existing Dask cluster (tcp://host:8786) instead of a local one")
    run.add_argument("--budget", type=cli.positive_float_arg, metavar="SECONDS",
                     help="each cell's wall-time budget, then it is killed and recorded as a timeout (default: the "
                     "file's budget_s, else the scenario's run.timeout_s + 60)")
    run.add_argument("--cache", metavar="DIR", help="the result cache (default: DIR/cache under --out)")
    run.add_argument("--dry-run", action="store_true", help="list the cells (and what is cached) and run nothing")
    cli.add_json_flag(p)
    junit.add_flag(p)
    return NAME


# -- the matrix from the file and the flags ------------------------------------------------------------------------

def _flag_values(axis: str, text: str) -> list[Any]:
    """A flag's comma-separated values as the file would spell them (sizes: a bare number is MiB, as -m)."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ConfigError(f"--{axis.replace('_', '-')} {text!r}: no value")
    try:
        if axis in ("ram", "initrd_size"):
            return [format_size(cli.size_arg(x)) for x in items]
        if axis == "upfront":
            return [cli.upfront_arg(x) for x in items]
        if axis == "vcpus":
            return [cli.positive_int_arg(x) for x in items]
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"--{axis.replace('_', '-')}: {exc}") from None
    if axis == "on_demand":
        return [[] if x == "none" else [o.strip() for o in x.split("+")] for x in items]
    return items


def matrix_spec(args: argparse.Namespace) -> MatrixSpec:
    spec = load_matrix(args.file) if args.file else MatrixSpec({}, Path.cwd().resolve(), {})
    for axis in AXES:
        text = getattr(args, axis)
        if text is None:
            continue
        values = _flag_values(axis, text)
        try:
            spec.axes[axis] = check_axis(axis, values, Path.cwd().resolve())
        except ScenarioError as exc:  # "axes.ram[1]: ..." -> "--ram: ..."
            flag = f"--{axis.replace('_', '-')}"
            raise ConfigError(flag + str(exc).split("]", 1)[-1]) from None
    if not spec.axes:
        raise ConfigError("no matrix: give FILE.toml or at least one axis flag (e.g. --ram 4G,64G --loader "
                          "direct,grub)")
    return spec


# -- running -------------------------------------------------------------------------------------------------------

def make_executor(args: argparse.Namespace) -> Executor:
    """--workers 0: SerialExecutor. Otherwise the Dask executor, when lazyaccept.matrix.dask_executor and Dask are
    there; without them the default falls back to serial (with a note), an explicit --workers/--scheduler is an
    error."""
    if args.workers == 0 and args.scheduler is None:
        return SerialExecutor()
    try:
        from lazyaccept.matrix import dask_executor  # type: ignore[attr-defined]
    except ImportError as exc:
        if args.workers is None and args.scheduler is None:
            print(f"lazyaccept matrix: the Dask executor is not available ({exc}): running the cells one after the "
                  "other (--workers 0)", file=sys.stderr)
            return SerialExecutor()
        flag = "--scheduler" if args.scheduler is not None else "--workers"
        raise ConfigError(f"{flag}: the Dask executor is not available ({exc}); --workers 0 runs the cells here, "
                          "one after the other") from None
    # The module's make_executor when it has one, else its DaskExecutor class (lazyaccept.matrix.cell's docstring).
    factory = getattr(dask_executor, "make_executor", None) or dask_executor.DaskExecutor
    executor: Executor = factory(workers=args.workers, scheduler=args.scheduler)
    return executor


def _eta(started: float, done: int, total: int) -> str:
    if not done or done >= total:
        return ""
    left = (time.monotonic() - started) / done * (total - done)
    return f", ETA {int(left // 60)}m{int(left % 60):02d}s"


def run(args: argparse.Namespace) -> int:
    swept = run_sweep(args)
    if isinstance(swept, int):  # --dry-run printed its list
        return swept
    record, lines = swept
    if args.json:
        sys.stdout.write(cli.json_text(record))
    else:
        print(format_summary(lines, list(record["axes"])))
        print("wrote " + ", ".join(record["written"]))
    return EXIT_FAILED if record["failed_cell_count"] else EXIT_BOOTED


def run_sweep(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]] | int:
    """The sweep the command runs (the CLI's and the API's one place): its `--json` record and every cell's line in
    the matrix's order (the skipped ones too); with --dry-run, the listing printed and its exit code."""
    t0 = time.perf_counter()
    if not args.dry_run and not args.out:
        raise ConfigError("--out DIR: where to write matrix.jsonl and matrix.parquet (or --dry-run to list cells)")
    spec = matrix_spec(args)
    cells = expand(spec, args.budget)
    out = Path(args.out) if args.out else None
    cache = ResultCache(Path(args.cache) if args.cache else (out or Path(".")) / "cache")
    cached: dict[str, CellResult] = {}
    for c in cells:
        if c.task is not None and c.task.key not in cached:
            hit = cache.get(c.task.key)
            if hit is not None:
                cached[c.task.key] = hit
    # One task per key: two cells that are the same run (the same binaries and scenario) run once.
    tasks = list({c.task.key: c.task for c in cells if c.task is not None and c.task.key not in cached}.values())
    skipped = sum(c.task is None for c in cells)
    print(f"lazyaccept matrix: {len(cells)} cells: {len(cached)} cached, {len(tasks)} to run, {skipped} skipped",
          file=sys.stderr)
    if args.dry_run:
        return _dry_run(args, cells, cached)
    assert out is not None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {args.out!r}: cannot create it: {exc.strerror or exc}") from None
    by_key: dict[str, list[Cell]] = {}
    for c in cells:
        if c.task is not None:
            by_key.setdefault(c.task.key, []).append(c)
    jsonl = JsonLines(out / JSONL)
    dashboard = None
    try:
        for c in cells:  # what is known already: the cached cells, in the matrix's order
            if c.task is not None and c.task.key in cached:
                jsonl.write(cell_line(c, cached[c.task.key], cached=True))
        if tasks:
            dashboard = _run_tasks(args, tasks, by_key, cache, jsonl)
    finally:
        jsonl.close()  # Ctrl-C: the lines so far are whole, the cache holds every finished cell
    # The files hold the cells that ran (or came from the cache); the summary, JUnit and --json the skipped too.
    ran = _ordered_lines(cells, jsonl.lines)
    lines = _ordered_lines(cells, ran + [cell_line(c, None) for c in cells if c.task is None])
    written = [out / JSONL, out / PARQUET]
    write_parquet(out / PARQUET, ran, list(spec.axes))
    if ran and _write_html(out / HTML, ran):
        written.append(out / HTML)
    if args.junit:
        junit.write(args.junit, "lazyaccept matrix", junit.matrix_cases(lines), time_s=time.perf_counter() - t0)
    return summary_record(args, spec, lines, written, dashboard, time.perf_counter() - t0), lines


def _run_tasks(args: argparse.Namespace, tasks: list[CellTask], by_key: dict[str, list[Cell]], cache: ResultCache,
               jsonl: JsonLines) -> str | None:
    executor = make_executor(args)
    with contextlib.ExitStack() as stack:
        if hasattr(executor, "__enter__"):
            executor = stack.enter_context(executor)  # type: ignore[arg-type]
        elif hasattr(executor, "close"):
            stack.callback(executor.close)
        dashboard = executor.dashboard
        if dashboard:
            print(f"lazyaccept matrix: Dask dashboard {dashboard}", file=sys.stderr)
        started = time.monotonic()
        pending = {t.key for t in tasks}
        with progress.task("matrix", len(tasks), "cells") as bar:

            def on_result(result: CellResult) -> None:
                if result.key not in pending:  # a result twice would be a line twice: the first one counts
                    return
                pending.discard(result.key)
                cache.put(result)  # first: a line in the file means the cell is kept
                for c in by_key[result.key]:
                    jsonl.write(cell_line(c, result))
                done = len(tasks) - len(pending)
                bar.update(done, description=f"matrix: {result.status} {by_key[result.key][0].label}"
                           f"{_eta(started, done, len(tasks))}")

            executor.run(tasks, on_result)
            for key in sorted(pending):  # an executor that lost a cell: recorded, never silently missing
                on_result(CellResult(key, "error", 0, 0.0, "", None, "the executor returned no result for this cell"))
    return dashboard


def _ordered_lines(cells: list[Cell], lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lines in the matrix's order (the file has them in completion order)."""
    order = {c.label: i for i, c in enumerate(cells)}
    return sorted(lines, key=lambda line: order.get(line["label"], len(order)))


def _write_html(path: Path, lines: list[dict[str, Any]]) -> bool:
    try:
        from lazyaccept.matrix import report  # type: ignore[attr-defined]
    except ImportError:
        return False
    report.write_html(path, lines)
    return True


def _dry_run(args: argparse.Namespace, cells: list[Cell], cached: dict[str, CellResult]) -> int:
    rows: list[dict[str, Any]] = [
        {"label": c.label, "key": c.task.key if c.task else None,
         "state": "skipped" if c.task is None else "cached" if c.task.key in cached else "to-run",
         "reason": c.skipped}
        for c in cells
    ]  # fmt: skip
    if args.json:
        sys.stdout.write(cli.json_text(cli.json_record(NAME, {"dry_run": True, "cells": rows})))
        return EXIT_BOOTED
    width = max(len(str(r["label"])) for r in rows)
    for r in rows:
        extra = f"skipped: {r['reason']}" if r["state"] == "skipped" else f"{r['state']:7} {str(r['key'])[:16]}"
        print(f"{r['label']:{width}}  {extra}")
    return EXIT_BOOTED


# -- the summary ---------------------------------------------------------------------------------------------------

def cell_outcome(line: dict[str, Any]) -> str:
    """What a cell came to: the run's outcome, or the status of a cell without one (crash, timeout, skipped)."""
    return line["run"]["outcome"] if line["run"] is not None else line["status"]


def failed(line: dict[str, Any]) -> bool:
    """A cell that did not boot (compare's convention: exit code 1 for the matrix), crashed, timed out or erred."""
    return line["status"] != "skipped" and (line["run"] is None or line["run"]["exit_code"] != 0)


def summary_record(args: argparse.Namespace, spec: MatrixSpec, lines: list[dict[str, Any]], written: list[Path],
                   dashboard: str | None, wall_s: float) -> dict[str, Any]:
    statuses = Counter(line["status"] for line in lines)
    return cli.json_record(NAME, {
        "dry_run": False,
        "file": args.file,
        "axes": spec.axes,
        "cell_count": len(lines),
        "ran_count": sum(1 for line in lines if line["status"] != "skipped" and not line["cached"]),
        "cached_count": sum(1 for line in lines if line["cached"]),
        "skipped_count": statuses["skipped"],
        "status_counts": dict(statuses),
        "outcome_counts": dict(Counter(cell_outcome(line) for line in lines)),
        "failed_cell_count": sum(map(failed, lines)),
        "cells": [{"label": line["label"], "key": line["key"], "status": line["status"], "cached": line["cached"],
                   "outcome": line["run"] and line["run"]["outcome"],
                   "exit_code": line["run"] and line["run"]["exit_code"],
                   "reason": line["log"] if line["status"] == "skipped" else None} for line in lines],
        "dashboard": dashboard,
        "written": [str(p) for p in written],
        "wall_s": round(wall_s, 2),
    })  # fmt: skip


def format_summary(lines: list[dict[str, Any]], axes: list[str]) -> str:
    """Cells by outcome, then one compact table per axis: its values x the outcomes, and the reasons of skips."""
    from lazyaccept.matrix.output import axis_text

    outcomes = Counter(cell_outcome(line) for line in lines)
    columns = sorted(outcomes, key=lambda o: (-outcomes[o], o))
    out = [f"{len(lines)} cells: " + ", ".join(f"{outcomes[o]} {o}" for o in columns)]
    for axis in axes:
        values = list(dict.fromkeys(axis_text(line["axes"][axis]) for line in lines))
        if len(values) < 2:
            continue
        first = max(len(axis), *(len(v) for v in values))
        widths = [max(len(o), 3) for o in columns]
        out.append("")
        out.append(f"{axis:{first}}  " + "  ".join(f"{o:>{w}}" for o, w in zip(columns, widths, strict=True)))
        for v in values:
            counts = Counter(cell_outcome(line) for line in lines if axis_text(line["axes"][axis]) == v)
            out.append(f"{v:{first}}  " + "  ".join(f"{counts[o] or '.':>{w}}" for o, w in zip(columns, widths,
                                                                                                 strict=True)))
    reasons = Counter(line["log"] for line in lines if line["status"] == "skipped")
    if reasons:
        out.append("")
        out += [f"skipped: {reason} ({n} cell{'s' if n > 1 else ''})" for reason, n in reasons.most_common()]
    for line in lines:
        if line["status"] in ("crash", "timeout", "error"):
            last = (line["log"].strip().splitlines() or [""])[-1]
            out.append(f"{line['status']}: {line['label']} after {line['attempts']} attempt(s): {last}")
    return "\n".join(out)
