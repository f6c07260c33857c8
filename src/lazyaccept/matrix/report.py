"""The matrix page (matrix.html): the JSON Lines records of a `lazyaccept matrix` sweep as one HTML page.

A summary computed from the cells; the matrix itself (a row per combination of the axes other than TD size, a
column per TD size) with each cell coloured by its outcome, its virtual time and accepted bytes, the hint in a
title; checkboxes per axis that hide rows and columns; plots against TD size; the failures grouped by reason, the
harness's crash and timeout logs; and the provenance. It reads without JavaScript (every row shown, the filters
inert); the small inline script only hides what is unchecked. A URL fragment pre-selects values the same way:
`matrix.html#loader=grub&ram=4G,64G` shows only those (values as the matrix file spelled them).

Shared pieces (style, escaping, SVG figures) are lazyaccept.report_html's, as compare's report.html uses them.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazyaccept._version import __version__
from lazyaccept.errors import InputError
from lazyaccept.report_html import (
    CSS,
    count,
    definition_list,
    document,
    esc,
    inline_svg,
    join_words,
    mpl,
    save_figure,
    seconds,
)
from lazyaccept.units import GiB, SizeError, human_size, parse_size

STATUSES = ("done", "timeout", "crash", "error")
# The run record's outcomes (docs/JSON.md, `boot` and `run`; lazyaccept.boot_report.Outcome's values).
OUTCOMES = ("kernel-entry", "memory-lost", "loader-failed", "stub-exited", "app-exited", "waiting-for-input",
            "terminated", "budget", "error")
# A matrix line's keys and their types (the brief's record: lazyaccept.matrix.output writes them).
LINE_KEYS: dict[str, type | tuple[type, ...]] = {
    "schema": int, "lazyaccept": str, "command": str, "key": str, "label": str, "axes": dict, "status": str,
    "attempts": int, "wall_s": (int, float), "worker": str, "cached": bool, "log": str,
}
RUN_KEYS: dict[str, type | tuple[type, ...]] = {"outcome": str, "phases": list, "accepted_by_actor": dict}
SIZE_AXES = ("ram", "initrd_size")  # sorted by size, not as first seen
COLUMN_AXIS = "ram"  # the TD size


@dataclass(frozen=True)
class Category:
    name: str  # CSS class and data attribute
    label: str
    colour: str
    meaning: str


CATEGORIES = {
    c.name: c
    for c in (
        Category("boots", "boots", "#c9ebc1", "the kernel was entered with a sound handoff (a ready userspace when "
                 "the OS model ran to it)"),
        Category("fails", "fails", "#fdd9b0", "the boot stopped before the kernel: the loader, the stub or the "
                 "firmware failed (the cell says where)"),
        Category("memory-lost", "memory lost", "#fff09a", "the kernel was entered but RAM of the TD is lost to "
                 "the OS (unaccepted, left out of e820)"),
        Category("terminated", "TD terminated", "#f3a5a5", "the TDX module terminated the TD"),
        Category("harness", "crash / timeout / error", "#d4d4d4", "the harness, not the guest: the cell's process "
                 "crashed, ran out of its wall-time budget or could not run"),
    )
}
OUTCOME_WORDS = {
    "loader-failed": "loader failed",
    "stub-exited": "stub failed",
    "app-exited": "EFI app returned",
    "waiting-for-input": "waits for input",
    "budget": "budget ran out",
    "error": "guest error",
}


def _bad(line: int, message: str, field: str) -> InputError:
    return InputError(f"matrix line {line}: {message}", field=field)


def _check(record: Mapping[str, Any], keys: Mapping[str, type | tuple[type, ...]], line: int, prefix: str) -> None:
    for name, kind in keys.items():
        if name not in record:
            raise _bad(line, "missing key", prefix + name)
        value = record[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            want = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise _bad(line, f"expected {want}, got {type(value).__name__} {json.dumps(value)[:40]}", prefix + name)


def validate(lines: Sequence[object]) -> None:
    """One InputError naming the line (1-based, as in the .jsonl file) and the field, for the first bad line."""
    for i, raw in enumerate(lines, 1):
        if not isinstance(raw, dict):
            raise InputError(f"matrix line {i}: expected a JSON object, got {type(raw).__name__}")
        _check(raw, LINE_KEYS, i, "")
        if raw["command"] != "matrix-cell":
            raise _bad(i, f"expected 'matrix-cell', got {raw['command']!r}", "command")
        if raw["status"] not in STATUSES:
            raise _bad(i, f"unknown status {raw['status']!r} (one of {', '.join(STATUSES)})", "status")
        run = raw.get("run", "missing")
        if raw["status"] == "done":
            if not isinstance(run, dict):
                raise _bad(i, "a done cell carries its run record (what `lazyaccept run --json` prints)", "run")
            _check(run, RUN_KEYS, i, "run.")
            if run["outcome"] not in OUTCOMES:
                raise _bad(i, f"unknown outcome {run['outcome']!r}", "run.outcome")
            for n, phase in enumerate(run["phases"]):
                if not (isinstance(phase, dict) and isinstance(phase.get("virtual_ns"), int)
                        and isinstance(phase.get("accepted_bytes"), int)):
                    raise _bad(i, "a phase needs integer virtual_ns and accepted_bytes", f"run.phases[{n}]")
        elif run is not None:
            raise _bad(i, f"a {raw['status']} cell has no run record (null)", "run")


# ----------------------------------------------------------------------------- one cell


def value_text(value: object) -> str:
    """An axis value as the page shows it: a list of options joined by '+' ('none' when empty)."""
    if isinstance(value, list):
        return "+".join(map(value_text, value)) if value else "none"
    if value is None:
        return "default"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _short_phase(name: str) -> str:
    return re.sub(r"\s*\(.*\)$", "", name)


@dataclass(frozen=True)
class MatrixCell:
    line: dict
    category: Category
    where: str  # short: what stopped the boot and in which phase ("boots" cells: "ready" or "kernel entry")
    time_ns: int | None  # virtual time to ready, or to where it stopped (None: the harness)
    accepted_bytes: int | None
    reason: str  # the model's message (the run's reason), or the harness's status
    hint: str

    @property
    def key(self) -> str:
        return str(self.line["key"])

    @property
    def label(self) -> str:
        return str(self.line["label"])

    def axis(self, name: str) -> str:
        return value_text(self.line["axes"].get(name, "-"))

    @property
    def title(self) -> str:
        """The cell's tooltip: its label, key, the model's message and the hint."""
        parts = [self.label, f"key {self.key}", self.reason, self.hint and f"hint: {self.hint}"]
        return "\n".join(p for p in parts if p)


def _failed_allocation(run: dict) -> dict | None:
    for chain in ("systemd_boot", "grub"):
        allocations = (run.get(chain) or {}).get("failed_allocations") or []
        if allocations:
            return allocations[-1]
    return None


def classify(line: dict) -> MatrixCell:
    """A validated line's category, short text, time and accepted bytes."""
    run = line.get("run")
    if line["status"] != "done" or run is None:
        log = line["log"].strip().splitlines()
        return MatrixCell(line, CATEGORIES["harness"], f"{line['status']} ({line['attempts']} attempts)"
                          if line["attempts"] > 1 else line["status"], None, None,
                          f"{line['status']}: {log[-1] if log else 'no log'}", "")
    outcome = run["outcome"]
    time_ns = sum(p["virtual_ns"] for p in run["phases"])
    accepted = sum(v for v in run["accepted_by_actor"].values() if isinstance(v, int))
    last = _short_phase(run["phases"][-1]["name"]) if run["phases"] else "before the firmware"
    reason = str(run.get("reason") or "")
    # what to change, then why it failed (boot's `hint:` and `why:` lines)
    hint = "; ".join(x for x in (str(run.get("hint") or ""), run.get("explanation") and f"why: {run['explanation']}")
                     if x)
    os_outcome = str(run.get("os_outcome") or "")
    if outcome == "kernel-entry":
        where = "ready" if os_outcome == "ready" else "kernel entry" + (f"; OS {os_outcome}" if os_outcome else "")
        return MatrixCell(line, CATEGORIES["boots"], where, time_ns, accepted, reason, hint)
    if outcome == "memory-lost":
        lost = (run.get("handoff") or {}).get("lost_ram_bytes")
        where = f"{human_size(lost)} lost" if isinstance(lost, int) else "memory lost"
        return MatrixCell(line, CATEGORIES["memory-lost"], where, time_ns, accepted, reason, hint)
    if outcome == "terminated" or run.get("termination"):
        m = re.match(r"(?:terminated )?in ([^:]+):", reason)  # "in PEI: EPT violation ..."
        where = f"terminated in {m.group(1) if m else last}"
        reason = str(run.get("termination") or reason)  # who wrote where: "write of GPA ... by PeiCore (vCPU 0)"
        return MatrixCell(line, CATEGORIES["terminated"], where, time_ns, accepted, reason, hint)
    word = OUTCOME_WORDS.get(outcome, outcome)
    where = word if last.lower() in word else f"{word} in {last}"
    status = re.search(r"exited with ([A-Z_]+)", reason)  # the stub's EFI status
    if status:
        where += f": {status.group(1)}"
    failed = _failed_allocation(run)
    if failed and isinstance(failed.get("size_bytes"), int):
        where += f": {failed.get('owner', '?')}'s {human_size(failed['size_bytes'])} allocation"
    return MatrixCell(line, CATEGORIES["fails"], where, time_ns, accepted, reason, hint)


# ----------------------------------------------------------------------------- the layout


def _order(name: str, values: list[str]) -> list[str]:
    if name in SIZE_AXES:
        try:
            return sorted(values, key=lambda v: parse_size(v))
        except SizeError:
            pass
    return values


@dataclass
class Layout:
    axes: dict[str, list[str]]  # every axis and its values, in order
    column: str | None  # the axis across (the TD size; or the axis with the most values when one size)
    rows: list[str]  # the axes down, the ones that vary
    fixed: dict[str, str]  # axes with one value: said once, above the table

    @property
    def varying(self) -> list[str]:
        return [a for a, vs in self.axes.items() if len(vs) > 1]


def layout(cells: Sequence[MatrixCell]) -> Layout:
    seen: dict[str, dict[str, None]] = {}
    for c in cells:
        for name in c.line["axes"]:
            seen.setdefault(name, {})
    for c in cells:  # a cell without an axis shows '-' there
        for name in seen:
            seen[name][c.axis(name)] = None
    axes = {name: _order(name, list(vs)) for name, vs in seen.items()}
    varying = [a for a, vs in axes.items() if len(vs) > 1]
    column = COLUMN_AXIS if COLUMN_AXIS in varying else max(varying, key=lambda a: len(axes[a]), default=None)
    rows = [a for a in varying if a != column]
    fixed = {a: vs[0] for a, vs in axes.items() if len(vs) == 1}
    return Layout(axes, column, rows, fixed)


# ----------------------------------------------------------------------------- the summary


def summary(cells: Sequence[MatrixCell]) -> list[str]:
    """What the sweep shows, in sentences computed from the cells."""
    by = {name: [c for c in cells if c.category.name == name] for name in CATEGORIES}
    lay = layout(cells)
    shape = "over " + ", ".join(f"{a} ({len(lay.axes[a])})" for a in lay.varying) if lay.varying else \
        "one combination"
    cached = sum(1 for c in cells if c.line["cached"])
    out = [f"{count(len(cells), 'cell')} ({shape}); {cached} from the cache, {len(cells) - cached} run."]
    parts = [f"{len(by['boots'])} boot{'s' if len(by['boots']) == 1 else ''}"]
    ready = sum(1 for c in by["boots"] if c.where == "ready")
    if by["boots"]:
        parts[0] += f" ({ready} to a ready userspace)"
    if by["fails"]:
        wheres: dict[str, int] = {}
        for c in by["fails"]:
            w = c.where.split(":")[0]
            wheres[w] = wheres.get(w, 0) + 1
        parts.append(f"{len(by['fails'])} fail" + f"{'s' if len(by['fails']) == 1 else ''} ("
                     + ", ".join(f"{n} {w}" for w, n in sorted(wheres.items(), key=lambda kv: -kv[1])) + ")")
    if by["memory-lost"]:
        parts.append(f"{len(by['memory-lost'])} lose{'s' if len(by['memory-lost']) == 1 else ''} memory to the OS")
    if by["terminated"]:
        parts.append(f"{len(by['terminated'])} end{'s' if len(by['terminated']) == 1 else ''} with the TD "
                     "terminated")
    harness = by["harness"]
    if harness:
        kinds = {s: sum(1 for c in harness if c.line["status"] == s) for s in ("crash", "timeout", "error")}
        parts.append(f"{len(harness)} did not finish in the harness ("
                     + join_words([f"{n} {'crashed' if s == 'crash' else 'timed out' if s == 'timeout' else 'errors'}"
                                   for s, n in kinds.items() if n]) + ")")
    else:
        parts.append("none crashed or timed out")
    out.append(join_words(parts) + ".")
    booted = [c for c in by["boots"] if c.where == "ready" and c.time_ns is not None]
    if booted:
        fast = min(booted, key=lambda c: c.time_ns or 0)
        slow = max(booted, key=lambda c: c.time_ns or 0)
        out.append(f"Fastest to a ready userspace: {fast.label} ({seconds(fast.time_ns or 0)} virtual); the slowest "
                   f"{slow.label} ({seconds(slow.time_ns or 0)}).")
    walls = [c.line["wall_s"] for c in cells if not c.line["cached"]]
    workers = sorted({c.line["worker"] for c in cells})
    if walls:
        out.append(f"Wall time of the cells run: {sum(walls):.1f} s in all, median {statistics.median(walls):.1f} s "
                   f"a cell, on {count(len(workers), 'worker')}.")
    return out


# ----------------------------------------------------------------------------- the matrix table


def _cell_html(c: MatrixCell) -> str:
    time = "" if c.time_ns is None else (f"{'ready in ' if c.where == 'ready' else ''}{seconds(c.time_ns)}")
    accepted = "" if c.accepted_bytes is None else human_size(c.accepted_bytes)
    detail = "<br>".join(esc(x) for x in (time, accepted) if x)
    return (f"<div class='cell {c.category.name}' data-key='{esc(c.key)}' data-category='{c.category.name}' "
            f"title='{esc(c.title)}'><b>{esc(c.where)}</b>" + (f"<br><span class='small'>{detail}</span>"
                                                               if detail else "") + "</div>")


def _matrix_html(cells: Sequence[MatrixCell], lay: Layout) -> str:
    cols = lay.axes[lay.column] if lay.column else [""]
    prefix = f"{lay.column} " if lay.column and lay.column != COLUMN_AXIS else ""  # sizes speak for themselves
    grid: dict[tuple[tuple[str, ...], str], list[MatrixCell]] = {}
    for c in cells:
        grid.setdefault((tuple(c.axis(a) for a in lay.rows), c.axis(lay.column) if lay.column else ""), []).append(c)
    combos = sorted({row for row, _ in grid},
                    key=lambda r: tuple(lay.axes[a].index(v) for a, v in zip(lay.rows, r, strict=True)))
    head = "".join(f"<th class='name'>{esc(a)}</th>" for a in lay.rows)
    head += "".join(f"<th data-col='{esc(v)}'>{esc(prefix + v) or 'cell'}</th>" for v in cols)
    body = []
    for row in combos:
        attrs = "".join(f" data-{_attr(a)}='{esc(v)}'" for a, v in zip(lay.rows, row, strict=True))
        tds = "".join(f"<td class='name'>{esc(v)}</td>" for v in row)
        for v in cols:
            inner = "".join(map(_cell_html, grid.get((row, v), [])))
            tds += f"<td data-col='{esc(v)}' class='m'>{inner or NOT_IN_SWEEP}</td>"
        body.append(f"<tr class='row'{attrs}>{tds}</tr>")
    fixed = "; ".join(f"{a} {v}" for a, v in lay.fixed.items())
    caption = ("each cell: where the boot ended (bold), the virtual time to a ready userspace or to where it "
               "stopped, and the bytes accepted; hover for the label, the key and the hint"
               + (f"; a row per combination of {join_words(lay.rows)}" if lay.rows else "")
               + (f", a column per {lay.column}" if lay.column else "") + (f". Every cell: {fixed}" if fixed else ""))
    return (f"<table id='matrix' data-column='{esc(lay.column or '')}'><caption class='small'>{esc(caption)}"
            f"</caption><tr>{head}</tr>" + "".join(body) + "</table>")


NOT_IN_SWEEP = "<span class='small' title='not in the sweep'>-</span>"


def _attr(axis: str) -> str:
    """A data attribute's name for an axis (lower case, letters, digits and dashes)."""
    return "axis-" + re.sub(r"[^a-z0-9-]", "-", axis.lower())


def _filters_html(lay: Layout) -> str:
    sets = []
    for a in lay.varying:
        boxes = "".join(f"<label><input type='checkbox' checked data-axis='{esc(a)}' value='{esc(v)}'> {esc(v)}"
                        "</label> " for v in lay.axes[a])
        sets.append(f"<fieldset><legend>{esc(a)}</legend>{boxes}</fieldset>")
    legend = "".join(f"<span class='cell {c.name} key'>{esc(c.label)}</span> <span class='small'>{esc(c.meaning)}"
                     "</span><br>" for c in CATEGORIES.values())
    return ("<div id='filters'>" + "".join(sets) + "<p class='small' id='shown'>Every row and column shown"
            + (" (the checkboxes hide rows and columns when scripts run)." if sets else ".") + "</p></div>"
            + f"<p>{legend}</p>")


SCRIPT = """
(function(){
  const boxes=[...document.querySelectorAll('#filters input[data-axis]')];
  const attr=a=>'data-axis-'+a.toLowerCase().replace(/[^a-z0-9-]/g,'-');  // as _attr in matrix/report.py
  const column=document.getElementById('matrix').dataset.column||'';
  function chosen(){const s={};for(const b of boxes){(s[b.dataset.axis]=s[b.dataset.axis]||[]);
    if(b.checked)s[b.dataset.axis].push(b.value);}return s;}
  function apply(){
    const s=chosen();let rows=0,shown=0,cols=0;
    for(const tr of document.querySelectorAll('#matrix tr.row')){rows++;
      let ok=true;for(const a in s){if(a===column)continue;const v=tr.getAttribute(attr(a));
        if(v!==null&&!s[a].includes(v))ok=false;}
      tr.hidden=!ok;if(ok)shown++;}
    for(const el of document.querySelectorAll('#matrix [data-col]')){
      el.hidden=column!==''&&!s[column].includes(el.dataset.col);}
    if(column)cols=s[column].length;
    document.getElementById('shown').textContent='Showing '+shown+' of '+rows+' rows'+
      (column?', '+cols+' of '+(boxes.filter(b=>b.dataset.axis===column).length)+' '+column+' columns':'')+'.';
  }
  const want=new URLSearchParams(location.hash.slice(1));
  for(const b of boxes){if(want.has(b.dataset.axis))b.checked=want.get(b.dataset.axis).split(',').includes(b.value);}
  for(const b of boxes)b.addEventListener('change',()=>{apply();
    const s=chosen(),p=new URLSearchParams();
    for(const a in s){if(s[a].length<boxes.filter(b=>b.dataset.axis===a).length)p.set(a,s[a].join(','));}
    const h=p.toString().replace(/%2C/g,',');history.replaceState(null,'',h?'#'+h:location.pathname);});
  apply();
})();
"""

MATRIX_CSS = CSS + """
td.m{padding:0;text-align:left}div.cell{padding:.25em .5em;min-width:9em}div.cell+div.cell{border-top:1px solid #fff}
span.key{display:inline-block;padding:.1em .5em;margin:.15em 0;min-width:11em}
""" + "".join(f"div.{c.name},span.{c.name}{{background:{c.colour}}}" for c in CATEGORIES.values()) + """
fieldset{display:inline-block;margin:.3em .5em .3em 0;border:1px solid #ccc}legend{font-weight:bold}
[hidden]{display:none!important}details pre{white-space:pre-wrap;font-size:.85em;background:#f6f6f6;padding:.5em}
"""


# ----------------------------------------------------------------------------- plots


LEGEND_MAX = 15  # more lines than this are left unnamed: the table names them


def _series(cells: Sequence[MatrixCell], lay: Layout) -> dict[str, list[MatrixCell]]:
    """The cells of each row of the matrix, by row name."""
    out: dict[str, list[MatrixCell]] = {}
    for c in cells:
        out.setdefault(" ".join(c.axis(a) for a in lay.rows) or "every cell", []).append(c)
    return out


def _figure(cells: Sequence[MatrixCell], lay: Layout, metric: str) -> bytes:
    """Time to ready (or accepted bytes) against TD size, a line per row of the matrix; only cells that boot to a
    ready userspace are plotted (_plots_html names the others)."""
    plt = mpl()
    fig, ax = plt.subplots(figsize=(9, 5))
    for name, group in _series(cells, lay).items():
        ok = sorted((c for c in group if c.where == "ready"), key=lambda c: parse_size(c.axis(COLUMN_AXIS)))
        if ok:
            xs = [parse_size(c.axis(COLUMN_AXIS)) / GiB for c in ok]
            ys = [(c.time_ns or 0) / 1e9 if metric == "time" else (c.accepted_bytes or 0) / GiB for c in ok]
            ax.plot(xs, ys, marker="o", label=name)
    ax.set_xscale("log", base=2)
    values = [float(y) for line in ax.lines for y in line.get_ydata()]
    if values and min(values) > 0 and max(values) / min(values) > 20:  # eager accept grows x1000 over sizes
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    sizes = lay.axes[COLUMN_AXIS]
    ax.set_xticks([parse_size(s) / GiB for s in sizes], sizes)
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xlabel("TD memory size")
    ax.set_ylabel("virtual time to a ready userspace (s)" if metric == "time" else "accepted memory (GiB)")
    ax.set_title(("Time to a ready userspace" if metric == "time" else "Accepted memory at ready") + " against TD size")
    ax.grid(True, which="major", alpha=0.3)
    if ax.lines and len(ax.lines) <= LEGEND_MAX:
        ax.legend(title=" ".join(lay.rows) or None, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                  title_fontsize=9)
    return save_figure(fig, "svg")


def _plots_html(cells: Sequence[MatrixCell], lay: Layout) -> str:
    if lay.column != COLUMN_AXIS:
        return "<p>One TD size: nothing to plot against size.</p>"
    try:
        for s in lay.axes[COLUMN_AXIS]:
            parse_size(s)
    except SizeError as exc:
        return f"<p>No plots: a TD size is not a size ({esc(exc)}).</p>"
    series = _series(cells, lay)
    missing = [f"{name} ({', '.join(c.axis(COLUMN_AXIS) for c in group if c.where != 'ready')})"
               for name, group in series.items() if any(c.where != "ready" for c in group)]
    shown = sum(1 for group in series.values() if any(c.where == "ready" for c in group))
    notes = [f"A line per row of the matrix ({' '.join(lay.rows) or 'every cell'})"
             + (f"; {shown} lines, too many to name: the table names them" if shown > LEGEND_MAX else "") + "."]
    if missing:
        more = f" and {len(missing) - LEGEND_MAX} more" if len(missing) > LEGEND_MAX else ""
        notes.append("Not plotted, not ready at: " + "; ".join(missing[:LEGEND_MAX]) + more + ".")
    caption = f"<figcaption class='small'>{esc(' '.join(notes))}</figcaption>"
    return "".join(f"<figure>{inline_svg(_figure(cells, lay, m))}{caption}</figure>" for m in ("time", "accepted"))


# ----------------------------------------------------------------------------- failures


def _failures_html(cells: Sequence[MatrixCell]) -> str:
    """Per reason, the cells that stopped there with the model's message and hint; the harness's cells with their
    logs folded."""
    groups: dict[tuple[str, str], list[MatrixCell]] = {}
    for c in cells:
        if c.category.name not in ("boots", "harness"):
            groups.setdefault((c.category.name, c.reason), []).append(c)
    parts = []
    if groups:
        rows = []
        for (cat, reason), group in groups.items():
            labels = "<br>".join(esc(c.label) for c in group)
            rows.append(f"<tr><td class='name'><span class='cell {cat} key'>{esc(CATEGORIES[cat].label)}</span><br>"
                        f"{esc(group[0].where)}</td><td class='text'>{labels}</td><td class='text'>"
                        f"{esc(reason or '(no message)')}</td><td class='text'>{esc(group[0].hint or '-')}</td></tr>")
        parts.append("<table id='failures'><tr><th class='name'>outcome</th><th class='name'>cells</th>"
                     "<th class='name'>the model's message</th><th class='name'>hint</th></tr>" + "".join(rows)
                     + "</table>")
    else:
        parts.append("<p>Every cell that ran boots.</p>")
    harness = [c for c in cells if c.category.name == "harness"]
    for c in harness:
        log = c.line["log"] or "(no log)"
        parts.append(f"<details><summary>{esc(c.line['status'])}: {esc(c.label)} (after "
                     f"{count(c.line['attempts'], 'attempt')}, {c.line['wall_s']:.1f} s on {esc(c.line['worker'])})"
                     f"</summary><pre>{esc(log)}</pre></details>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- provenance


def _provenance_html(cells: Sequence[MatrixCell], command_line: str) -> str:
    def distinct(get) -> list[str]:
        return list(dict.fromkeys(str(v) for v in map(get, cells) if v))

    runs = [c.line.get("run") or {} for c in cells]
    items = [
        ("page written by", f"lazyaccept {esc(__version__)}"),
        ("command line", f"<code>{esc(command_line)}</code>"),
        ("cells run by", esc(join_words(distinct(lambda c: f"lazyaccept {c.line['lazyaccept']} (schema "
                                                           f"{c.line['schema']})")))),
        ("workers", esc(", ".join(distinct(lambda c: c.line["worker"])))),
    ]
    for what, get in (
        ("firmware (edk2 profile)", lambda r: (r.get("edk2_profile") or {}).get("name")),
        ("kernels", lambda r: (r.get("kernel") or {}).get("release")),
        ("GRUB", lambda r: (r.get("grub") or {}).get("image")),
        ("shim", lambda r: (r.get("grub") or {}).get("shim")),
        ("CPU backends", lambda r: (r.get("cpu") or {}).get("backend")),
        ("host profiles", lambda r: (r.get("scenario") or {}).get("profile")),
    ):
        values = list(dict.fromkeys(str(v) for v in map(get, runs) if v))
        if values:
            items.append((what, esc(", ".join(values))))
    return definition_list(items)


# ----------------------------------------------------------------------------- the page


def write_html(path: Path, lines: list[dict], *, command_line: str = "lazyaccept matrix") -> None:
    """The matrix page for the sweep's JSON Lines records (one dict per cell, in the file's order: a bad line is
    named by its number)."""
    validate(lines)
    cells = [classify(line) for line in lines]
    if not cells:
        raise InputError("no matrix cells: the JSON Lines file is empty")
    lay = layout(cells)
    body = [
        "<h1>Compatibility matrix: which firmware, loader and kernel boot which TD</h1>",
        "<p class='summary'>" + esc(" ".join(summary(cells))) + "</p>",
        "<p class='small'>Each cell is one real boot, the run <code>lazyaccept run</code> does for its scenario. "
        "Times are virtual (the host profile's cost table) from the TD's build to a ready userspace, or to where "
        "the boot stopped; accepted bytes are every actor's (VMM, SEC, on-demand accept, the stub, Linux).</p>",
        "<h2>Filters and colours</h2>", _filters_html(lay),
        "<h2>The matrix</h2>", _matrix_html(cells, lay),
        "<h2>Against TD size</h2>", _plots_html(cells, lay),
        "<h2>Cells that do not boot</h2>", _failures_html(cells),
        "<h2>Provenance</h2>", _provenance_html(cells, command_line),
    ]
    path.write_text(document("lazyaccept matrix: real boots by firmware, loader, kernel and TD size", body,
                             css=MATRIX_CSS, script=SCRIPT))
