"""`--junit FILE`: a command's result as JUnit XML, the report format CI systems (GitLab, Jenkins, GitHub's test
reporters) read. One writer; each command turns its result into test cases here:

    boot, run       one case: the boot (failed unless its exit code is 0; for run, unless [expect] is met)
    compare         one case per matrix cell (failed when the cell's firmware phase fails)
    matrix          one case per cell (failed when it does not boot, errored when its run crashed or timed out,
                    skipped when a filter or a refused combination skipped it)
    advise          one case per on-demand option tried (failed when no up-front size boots), and --check-real's
    differential    one case per compared field (failed when outside its bound)

A failed case's <failure> has the outcome or verdict as its type and the reason (and hint) as its message; a boot's
console goes to <system-out>. The file is written also when the run fails; a path that cannot be written is bad
input (exit code 2, one line).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lazyaccept._version import __version__
from lazyaccept.errors import InputError
from lazyaccept.units import format_ns, format_size, human_size

if TYPE_CHECKING:
    from lazyaccept.advise import AdviceReport
    from lazyaccept.boot_report import BootReport
    from lazyaccept.compare import Comparison
    from lazyaccept.differential import FieldDiff
    from lazyaccept.scenario import Expect

CONSOLE_LINES = 200  # of a boot's console in <system-out>: the tail, where a failure shows
# XML 1.0 cannot carry these code points at all (a console holds ANSI escapes, a binary may print anything).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass
class Case:
    """One <testcase>: `failure` (the message) makes it failed, `error` errored (the run could not say)."""

    classname: str
    name: str
    time_s: float = 0.0
    failure: str | None = None
    failure_type: str = "failure"
    details: str = ""  # the <failure>'s text
    error: str | None = None
    skipped: str | None = None  # the reason it did not run
    system_out: str = ""
    properties: dict[str, Any] = field(default_factory=dict)


def add_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--junit", metavar="FILE", type=path_arg,
        help="also write the result as JUnit XML (one test case per boot, matrix cell, option or field), also when "
        "the run fails",
    )  # fmt: skip


def path_arg(text: str) -> str:
    """argparse type: a file that can be created, checked before the run (a long matrix) rather than after it."""
    p = Path(text).expanduser()
    if not text or p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, not a file" if text else "empty path")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: no such folder {str(parent)!r}")
    return text


def _clean(text: str) -> str:
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else "\ufffd", text)


def write(path: str | os.PathLike[str], suite: str, cases: Iterable[Case], *, time_s: float,
          properties: dict[str, Any] | None = None) -> None:
    """Write `cases` as one <testsuite> named `suite` in a <testsuites> document; InputError when `path` cannot be
    written."""
    cases = list(cases)
    counts = {
        "tests": str(len(cases)),
        "failures": str(sum(c.failure is not None and c.error is None for c in cases)),
        "errors": str(sum(c.error is not None for c in cases)),
        "skipped": str(sum(c.skipped is not None for c in cases)),
        "time": f"{time_s:.3f}",
    }
    root = ET.Element("testsuites", {"name": "lazyaccept", **{k: v for k, v in counts.items() if k != "skipped"}})
    ts = ET.SubElement(root, "testsuite", {
        "name": suite, **counts, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), "hostname": socket.gethostname(),
    })  # fmt: skip
    props = ET.SubElement(ts, "properties")
    for k, v in {"lazyaccept": __version__, **(properties or {})}.items():
        ET.SubElement(props, "property", {"name": k, "value": _clean(str(v))})
    for c in cases:
        attrs = {"classname": c.classname, "name": _clean(c.name), "time": f"{c.time_s:.3f}"}
        tc = ET.SubElement(ts, "testcase", attrs)
        given = {k: v for k, v in c.properties.items() if v is not None}
        if given:
            props = ET.SubElement(tc, "properties")
            for k, v in given.items():
                ET.SubElement(props, "property", {"name": k, "value": _clean(str(v))})
        if c.skipped is not None:
            ET.SubElement(tc, "skipped", {"message": _clean(c.skipped)})
        elif c.error is not None:
            ET.SubElement(tc, "error", {"message": _clean(c.error), "type": c.failure_type}).text = _clean(c.details)
        elif c.failure is not None:
            ET.SubElement(tc, "failure", {"message": _clean(c.failure), "type": c.failure_type}).text = _clean(
                c.details
            )
        if c.system_out:
            ET.SubElement(tc, "system-out").text = _clean(c.system_out)
    ET.indent(root)
    data = ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
    p = Path(path).expanduser()
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:  # whole or not at all: a CI job must never read half a report
        tmp.write_bytes(data)
        os.replace(tmp, p)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"--junit {os.fspath(path)!r}: cannot write: {exc.strerror or exc}") from None


# -- the commands' results as cases --------------------------------------------------------------------------------


def boot_case(rep: BootReport, exit_code: int, *, command: str = "boot", name: str = "",
              expect: Expect | None = None) -> Case:
    """A boot (`boot`, `run`): failed unless `exit_code` is 0, or, for a scenario with an [expect], unless the run
    is what it expects (a scenario may expect a failure: `examples/direct-boot-64g-upstream.toml`)."""
    mismatch = expect.mismatch(rep.outcome, exit_code) if expect is not None else None
    sc = rep.scenario
    name = name or (
        f"{format_size(sc.ram)} {sc.smp} vCPU{'s' if sc.smp > 1 else ''} "
        + ("firmware-exec" if sc.firmware_exec else f"upfront {sc.upfront} on-demand {sc.options_name}")
        + (f" initrd {format_size(sc.initrd_size)}" if sc.initrd_size else "")
        + (" grub" if sc.grub else "")
    )
    case = Case(f"lazyaccept.{command}", name, rep.wall_s, properties={
        "outcome": str(rep.outcome), "exit_code": exit_code, "cpu": rep.cpu,
        "accepted_bytes": sum(rep.accepted_by_actor.values()),
        **({"expect": expect.describe()} if expect is not None else {}),
    })  # fmt: skip
    console = [line for line in rep.console.splitlines() if line.strip()]
    out = [f"outcome: {str(rep.outcome).upper()}: {rep.reason}"] + ([f"hint: {rep.hint}"] if rep.hint else [])
    out += [f"phase {p.name}: {format_ns(p.virtual_ns)}, accepted {human_size(p.accepted_bytes)}" for p in rep.phases]
    if console:
        out += [f"console (last {min(len(console), CONSOLE_LINES)} of {len(console)} lines):",
                *console[-CONSOLE_LINES:]]
    case.system_out = "\n".join(out) + "\n"
    if mismatch or (expect is None and exit_code != 0):
        case.failure = mismatch or f"{rep.outcome}: {rep.reason}" + (f"; hint: {rep.hint}" if rep.hint else "")
        case.failure_type = str(rep.outcome)
        case.details = "\n".join(
            [f"exit code {exit_code}", f"reason: {rep.reason}"]
            + ([f"why: {rep.explanation}"] if rep.explanation else [])
            + ([f"hint: {rep.hint}"] if rep.hint else [])
            + [f"handoff problem: {p}" for p in rep.handoff_problems]
            + ([rep.termination] if rep.termination else [])
        )
    return case


def compare_cases(result: Comparison) -> list[Case]:
    """One case per cell, named policy and TD size under profile and vCPU count."""
    cases = []
    for c in result.cells:
        case = Case(f"lazyaccept.compare.{c.profile}.{c.vcpus}vcpu", f"{c.policy} on {format_size(c.ram)}",
                    properties={"firmware_ns": c.firmware_ns, "total_ns": c.total_ns,
                                "firmware_accepted_bytes": c.firmware_accepted})
        if c.boots:
            os_time = format_ns(c.os_ns) if c.os_ns is not None else "-"
            case.system_out = f"firmware {format_ns(c.firmware_ns)}, OS to ready {os_time}\n"
        else:
            case.failure, case.failure_type = f"does not boot: {c.failed_step}", "cell-failed"
            case.details = (f"{c.policy} on a {format_size(c.ram)} TD, {c.vcpus} vCPUs, {c.profile}: the firmware "
                            f"phase failed at {c.failed_step}")
        cases.append(case)
    return cases


def matrix_cases(lines: Iterable[dict[str, Any]]) -> list[Case]:
    """One case per cell of `lazyaccept matrix`, from its JSON Lines records, named by the cell's label."""
    cases = []
    for line in lines:
        run = line["run"]
        case = Case("lazyaccept.matrix", line["label"], line["wall_s"], properties={
            "key": line["key"], "status": line["status"], "cached": line["cached"], "worker": line["worker"],
            "outcome": run and run["outcome"], "exit_code": run and run["exit_code"],
        })  # fmt: skip
        if line["status"] == "skipped":
            case.skipped = line["log"]
        elif run is None:
            case.error, case.failure_type, case.details = line["status"], line["status"], line["log"]
        elif run["exit_code"] != 0:
            case.failure = f"{run['outcome']}: {run['reason']}" + (f"; hint: {run['hint']}" if run["hint"] else "")
            case.failure_type = run["outcome"]
        if run is not None:
            case.system_out = f"outcome: {run['outcome'].upper()}: {run['reason']}\n"
        cases.append(case)
    return cases


def advise_cases(rep: AdviceReport) -> list[Case]:
    """One case per on-demand option tried (failed when no up-front size boots), and one for --check-real."""
    cases = []
    for a in rep.advice:
        case = Case("lazyaccept.advise", a.option, properties={"min_upfront_bytes": a.min_upfront_bytes,
                                                               "limited_by": a.limited_by, "probes": a.probes})
        if a.min_upfront_bytes is None:
            case.failure, case.failure_type = f"never boots: {a.limited_by}", "never-boots"
            case.details = a.detail
        else:
            case.system_out = (f"smallest up-front {human_size(a.min_upfront_bytes)}, limited by {a.limited_by}"
                               + (f"; just below: {a.detail}" if a.detail else "") + "\n")
        cases.append(case)
    c = rep.real_check
    if c is not None:
        case = Case("lazyaccept.advise", "check-real", c.wall_s, system_out=f"{c.real_outcome}: {c.real_reason}\n")
        if not c.agrees:
            model = "boots" if c.model_boots else f"does not boot ({c.model_detail})"
            case.failure, case.failure_type = f"the model {model}, the real firmware {c.real_outcome}", "disagrees"
            case.details = c.real_reason
        cases.append(case)
    return cases


def differential_cases(fields: Iterable[FieldDiff], *, classname: str, left: str = "python") -> list[Case]:
    """One case per compared field: failed when it differs beyond its bound (or has none)."""
    cases = []
    for f in fields:
        case = Case(classname, f.name, system_out=f"{f.verdict}\n{left}: {f.python}\nreal: {f.real}\n")
        if not f.ok:
            case.failure, case.failure_type = f"{f.name}: {f.verdict}", "different"
            case.details = f"{left}: {f.python}\nreal: {f.real}" + (
                f"\nbound {human_size(f.bound.max_bytes)}: {f.bound.reason}" if f.bound else ""
            )
        cases.append(case)
    return cases
