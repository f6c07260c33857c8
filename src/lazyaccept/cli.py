"""The `lazyaccept` command. Each subcommand lives in lazyaccept.commands.<name> with register() and run()."""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from lazyaccept import interrupt, progress
from lazyaccept._version import __version__
from lazyaccept.errors import LazyAcceptError
from lazyaccept.units import MiB, SizeError, format_size, parse_size

# Subcommand modules, in the order `--help` lists them.
COMMAND_MODULES: list[str] = [
    "advise",
    "boot",
    "compare",
    "demo",
    "differential",
    "disk",
    "firmware_info",
    "initramfs",
    "matrix",
    "run",
    "sec",
    "tdvf",
    "uki",
    "workload",
]


# One rule for every size on the command line: QEMU's -m. QEMU 8.x-10.x (system/vl.c, parse_memory_options) appends
# "M" to a -m value ending in a digit, then reads it with qemu_strtosz (util/cutils.c, do_strtosz), which is what
# qemu_strtosz_MiB does too: a number without a suffix is MiB, B is bytes, K/M/G/T scale by 1024, and a hex number
# followed by a unit (what "0x1000" becomes) is refused. So `-m 4096` is 4 GiB and `--initrd-size 4096B` is 4 KiB.
# Scenario files and the Python API keep bytes (units.parse_size's default).
CLI_BARE_UNIT = MiB


def size_arg(text: str) -> int:
    """argparse type for sizes (a bare number is MiB, as QEMU's -m): a malformed value exits with code 2 and a
    message naming it."""
    try:
        return parse_size(text, bare_unit=CLI_BARE_UNIT)
    except SizeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def upfront_arg(text: str) -> str:
    """--upfront below-4g | all | SIZE: a SIZE follows size_arg's rule and is passed on in its exact spelling (so
    `--upfront 256` is 256M); anything else goes on unchanged for the firmware's policy parser to judge."""
    try:
        return format_size(parse_size(text, bare_unit=CLI_BARE_UNIT))
    except SizeError:
        return text


def positive_int_arg(text: str, *, low: int = 1) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected a whole number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: must be at least {low}")
    return value


def positive_float_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be a positive number of seconds")
    return value


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="write the result as JSON on stdout")


def add_edk2_profile_flag(parser: Any) -> None:
    """--edk2-profile NAME: which edk2 build and release the Python firmware behaves as (firmware/profiles.py)."""
    from lazyaccept.firmware.profiles import PROFILE_NAMES

    parser.add_argument(
        "--edk2-profile", choices=PROFILE_NAMES, metavar="NAME",
        help=f"the edk2 build and release the Python firmware behaves as: {', '.join(PROFILE_NAMES)} (default: read "
        "from the --firmware image; without one ovmf-x64-2025.02)",
    )  # fmt: skip


# Every command's JSON starts with these keys (docs/JSON.md); the version grows when a key changes meaning or goes.
# 2: sec's upstream_dropped_tail_bytes became dropped_tail_bytes (per edk2 profile).
# 3: one vocabulary, checked by src/lazyaccept/schema/lazyaccept.schema.json: every size key ends in _bytes and
#    every time in _ns/_s (compare's cells, tdvf's ram, workload's phases and fill, sizes in sec, firmware-info,
#    initramfs, advise's payload, boot's e820/loader events/measurements/ACPI tables/unaccepted table), counters in
#    _count (tdx_stats); boot's scenario.options is a list, cpu.why became cpu.reason (a code) + cpu.explanation;
#    sec's tdcalls became tdx_stats; workload's crash is outcome "crash" + detail; compare --json prints the record
#    comparison.json holds.
JSON_SCHEMA_VERSION = 3


def json_record(command: str, data: dict[str, Any]) -> dict[str, Any]:
    """A command's JSON: the three header keys, then its own."""
    return {"schema": JSON_SCHEMA_VERSION, "lazyaccept": __version__, "command": command, **data}


def json_text(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=2, sort_keys=False) + "\n"


def print_json(command: str, data: dict[str, Any]) -> None:
    sys.stdout.write(json_text(json_record(command, data)))


class _ArgumentParser(argparse.ArgumentParser):
    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        # The subcommands are parsers of this class too: a flag the subcommand does not know is reported here, with
        # its usage and the closest of its own options, rather than by the top level with the top-level usage.
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}" + self._did_you_mean(extras))
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        # argparse's "invalid choice: 'bot' (choose from 'advise', 'boot', ...)": name the closest choice too.
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if m:
            close = difflib.get_close_matches(m[1], re.findall(r"'([^']*)'", m[2]), n=1, cutoff=0.6)
            if close:
                message += f" (did you mean {close[0]}?)"
        super().error(message)

    def _did_you_mean(self, extras: list[str]) -> str:
        known = list(self._option_string_actions)
        for arg in extras:
            if arg.startswith("-") and len(arg) > 1:
                close = difflib.get_close_matches(arg.split("=", 1)[0], known, n=1, cutoff=0.6)
                if close:
                    return f" (did you mean {close[0]}?)"
        return ""

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        # CPython drops a lone "--" value, so "-m--" handed -m an empty list that no type= function had checked.
        if action.nargs is None and action.option_strings and arg_strings == ["--"]:
            self.error(f"argument {'/'.join(action.option_strings)}: expected one argument")
        return super()._get_values(action, arg_strings)


def version_text() -> str:
    """`lazyaccept X.Y.Z`, then the pinned Debian packages (binaries.py) that `boot` runs with no flags, and GRUB's
    with --grub: one `name version (suite): role` a line."""
    from lazyaccept import binaries

    defaults = [
        (binaries.OVMF, "OVMF.fd: the built-in TDVF layout, and the image --firmware-exec runs"),
        (binaries.LINUX, "the kernel and its EFI stub"),
        (binaries.GRUB, "GRUB, with --grub"),
    ]
    lines = [f"{p.name} {p.version} ({p.suite}): {role}" for p, role in defaults]
    return "\n".join([f"lazyaccept {__version__}", *lines])


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Any]]:
    parser = _ArgumentParser(
        prog="lazyaccept",
        description="TDVF lazy memory acceptance for Intel TDX guests: model, firmware and real-binary boots.",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # so that --version keeps its lines
    )
    parser.add_argument(
        "--version", action="version", version=version_text(),
        help="show the version and the pinned Debian packages a boot uses by default, then exit",
    )  # fmt: skip
    parser.add_argument(
        "--debs", metavar="DIR",
        help="folder of the pinned Debian .deb files and their SHA256SUMS (sets LAZYACCEPT_DEBS for this run)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    runners: dict[str, Any] = {}
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"lazyaccept.commands.{name}")
        command = module.register(sub)
        runners[command] = module.run
    add_signs_of_life_flags(parser, sub)
    return parser, runners


def add_signs_of_life_flags(parser: argparse.ArgumentParser, sub: Any) -> None:
    """-v/-q/--log, before the command (`lazyaccept -v boot`) or after it (`lazyaccept boot -v`)."""
    for p, default in [(parser, None)] + [(cmd, argparse.SUPPRESS) for cmd in sub.choices.values()]:
        # After the command the defaults are SUPPRESS, so that they never undo a flag given before it.
        group = p.add_argument_group("signs of life (stderr)")
        # After the command -v counts in its own dest (argparse copies a subcommand's namespace over the top one,
        # so a shared count would restart): _signs_of_life adds the two, `lazyaccept -v boot -v` is -vv.
        group.add_argument(
            "-v", "--verbose", action="count", default=0 if default is None else default,
            dest="verbose" if default is None else "verbose_after_command",
            help="progress on stderr even when it is no terminal or with --json (plain lines there); -vv adds "
            "every firmware service call",
        )
        group.add_argument("-q", "--quiet", action="store_true", default=False if default is None else default,
                           help="no progress on stderr, even on a terminal")
        group.add_argument(
            "--log", metavar="FILE", default=default,
            help="write the trace to FILE: phases, the guest's console lines and each firmware service call with "
            "its arguments and status, on the virtual clock (written even when the run fails)",
        )  # fmt: skip


def _signs_of_life(args: argparse.Namespace) -> progress.Reporter:
    """The reporter the flags and stderr ask for (progress.reporter_for); raises OSError for an unwritable --log."""
    log = open(args.log, "w", encoding="utf-8") if args.log else None  # noqa: SIM115 - closed by main()
    # --interactive: the terminal is the guest's console already (firmware/drivers/terminal.py), keep off it.
    quiet = args.quiet or bool(getattr(args, "interactive", False))
    verbose = args.verbose + getattr(args, "verbose_after_command", 0)
    return progress.reporter_for(sys.stderr, verbose=verbose, quiet=quiet, hints=not args.quiet,
                                 json_mode=bool(getattr(args, "json", False)), log=log)


def main(argv: list[str] | None = None) -> int:
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    if args.debs is not None:
        debs = Path(args.debs).expanduser()
        if not args.debs or not debs.is_dir():
            print(f"lazyaccept: error: --debs {args.debs!r}: not a directory", file=sys.stderr)
            return 2
        os.environ["LAZYACCEPT_DEBS"] = str(debs.resolve())
    if not args.command:
        parser.print_help()
        return 2
    try:
        reporter = _signs_of_life(args)
    except OSError as exc:
        print(f"lazyaccept: error: --log {args.log}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    previous = progress.install(reporter)
    restore_sigint = interrupt.install()
    stdout = sys.stdout
    sys.stdout = progress.guard_stdout(stdout, reporter)
    try:
        return int(runners[args.command](args) or 0)
    except LazyAcceptError as exc:
        reporter.close()
        print(f"lazyaccept {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        reporter.close()  # the progress display first, so that the last line on the terminal is this one
        print("lazyaccept: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout = stdout
        reporter.close()
        if reporter.log is not None:
            reporter.log.close()
        progress.install(previous)
        restore_sigint()
