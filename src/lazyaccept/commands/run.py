"""`lazyaccept run FILE.toml`: a boot scenario from a TOML file (lazyaccept.scenario), run and reported as `boot`
runs and reports it, then checked against the file's [expect] section."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lazyaccept import cli, junit
from lazyaccept.boot import run_boot
from lazyaccept.commands import boot
from lazyaccept.exitcodes import EXIT_FAILED
from lazyaccept.scenario import load_scenario

NAME = "run"


def register(subparsers: Any) -> str:
    p = subparsers.add_parser(
        NAME,
        help="run a boot scenario from a TOML file (the flags of `boot` as sections) and check its [expect]",
        description="Load a scenario file (sections [td] [firmware] [loader] [payload] [cpu] [os] [run] [expect]; "
        "see lazyaccept.scenario), boot it as `lazyaccept boot` would with the equivalent flags, print the same "
        "report and exit with the same code; if the file's [expect] differs from the run, exit 1.",
    )
    p.add_argument("file", metavar="FILE.toml", help="the scenario (a .json file holding the same tables is read too)")
    p.add_argument("--calls", action="store_true", help="print the service-call sequence")
    cli.add_json_flag(p)
    junit.add_flag(p)
    return NAME


def run(args: argparse.Namespace) -> int:
    sf = load_scenario(args.file)
    rep = run_boot(sf.prepared())
    code = boot.exit_code(rep)
    mismatch = sf.expect.mismatch(rep.outcome, code) if sf.expect else None
    if args.json:
        data = boot.report_dict(rep)
        if sf.expect:
            data["expect"] = {**sf.expect.as_dict(), "met": mismatch is None}
        cli.print_json("run", data)
    else:
        print(boot.format_report(rep, args.calls))
        if sf.expect:
            print(f"expect: {'met' if mismatch is None else 'NOT MET'} ({sf.expect.describe()})")
    sys.stdout.flush()
    if args.junit:
        case = junit.boot_case(rep, code, command="run", name=args.file, expect=sf.expect)
        junit.write(args.junit, "lazyaccept run", [case], time_s=rep.wall_s)
    if mismatch:
        print(f"lazyaccept run: {args.file}: {mismatch}", file=sys.stderr)
        return EXIT_FAILED
    return code
