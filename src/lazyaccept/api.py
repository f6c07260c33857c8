"""The Python API: what the `lazyaccept` command does, callable from a script or a test.

    from lazyaccept.api import Outcome, boot

    result = boot(ram="4G", smp=1, upfront="below-4g")
    assert result.outcome is Outcome.KERNEL_ENTRY, result

Keyword arguments are named as the command's long options (`--initrd-size` is `initrd_size`, `-m` is `ram`,
`-smp` is `smp`, `--option 1 --option 2` is `option=[1, 2]`) and every argument left out takes the command's own
default: the API hands its arguments to the same parser and the same scenario builder as `lazyaccept boot`, so the
two cannot drift apart (BootScenario in boot_report.py holds the defaults both read). Sizes are whole numbers of
bytes or strings such as "8G", "67000M" (lazyaccept.units.parse_size).

Errors are exceptions from lazyaccept.errors, never a SystemExit: ConfigError for an impossible or malformed
setting (the message names the argument, as the command's one-line error does), InputError for a file that cannot
be read or fails its checks (a kernel, a firmware image, a scenario file), both LazyAcceptError. A boot that runs
and fails (a loader error, a terminated TD, a budget) is no exception: its result says how it ended.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lazyaccept.boot_report import BootReport, BootScenario, Outcome
from lazyaccept.errors import ConfigError, InputError, LazyAcceptError
from lazyaccept.scenario import Expect
from lazyaccept.units import format_size

__all__ = [
    "AdviceResult",
    "BootReport",
    "BootResult",
    "BootScenario",
    "CompareResult",
    "ConfigError",
    "InputError",
    "LazyAcceptError",
    "MatrixResult",
    "Outcome",
    "SecRun",
    "advise",
    "boot",
    "boot_scenario",
    "compare",
    "matrix",
    "run_scenario",
    "sec",
]

if TYPE_CHECKING:
    from lazyaccept.advise import AdviceReport
    from lazyaccept.compare import Cell, Comparison
    from lazyaccept.firmware.sec import SecResult
    from lazyaccept.vmm.td import Td

Size = int | str  # bytes, or "8G", "67000M", "0x1000"


@dataclass(frozen=True, repr=False)
class BootResult:
    """How a boot ended: `outcome`, `exit_code` (the command's), `reason`, `hint`, accepted bytes by actor, and the
    whole BootReport as `report` (its other fields are readable here too: `result.phases`, `result.console`).
    `to_json()` is the document `lazyaccept boot --json` (or `run --json`) prints."""

    report: BootReport
    command: str = "boot"  # "run" for run_scenario: its JSON carries the scenario file's expectation
    expect: Expect | None = None  # run_scenario: the file's [expect], if it has one

    @property
    def outcome(self) -> Outcome:
        return Outcome(self.report.outcome)

    @property
    def exit_code(self) -> int:
        """The exit code `lazyaccept boot` ends with for this run (README, "Exit codes")."""
        from lazyaccept.commands.boot import exit_code

        return exit_code(self.report)

    @property
    def ok(self) -> bool:
        """The boot did what it was asked (exit code 0) and, for run_scenario, met the file's [expect]."""
        return self.exit_code == 0 if self.expect is None else self.expect_mismatch is None

    @property
    def reason(self) -> str:
        return self.report.reason

    @property
    def hint(self) -> str:
        return self.report.hint

    @property
    def accepted_by_actor(self) -> dict[str, int]:
        """Bytes the TDX module saw accepted, by who accepted them (vmm, SEC, the firmware, the stub, Linux)."""
        return {str(actor): n for actor, n in self.report.accepted_by_actor.items()}

    @property
    def accepted_bytes(self) -> int:
        return sum(self.report.accepted_by_actor.values())

    @property
    def expect_mismatch(self) -> str | None:
        """run_scenario: None when the run is what the file's [expect] says (or it says nothing), else one line."""
        if self.expect is None:
            return None
        return self.expect.mismatch(self.report.outcome, self.exit_code)

    def to_json(self) -> dict[str, Any]:
        """The JSON document of `lazyaccept boot --json` for this run (`run --json` for run_scenario), as a dict."""
        from lazyaccept.commands.boot import report_dict

        data = report_dict(self.report)
        if self.command == "run" and self.expect is not None:
            data["expect"] = {**self.expect.as_dict(), "met": self.expect_mismatch is None}
        return _json(self.command, data)

    def summary(self) -> str:
        """One line: outcome, exit code, reason and hint (what an assertion message shows)."""
        line = f"{self.outcome.upper()} (exit code {self.exit_code}): {self.reason}"
        if self.hint:
            line += f"; hint: {self.hint}"
        mismatch = self.expect_mismatch
        return f"{line}; {mismatch}" if mismatch else line

    def __repr__(self) -> str:
        return f"<BootResult {self.summary()}>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "report":  # no report yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.report, name)  # the report's other fields: phases, console, kernel_entry, ...


class _RaisingParser(argparse.ArgumentParser):
    """The `boot` parser for the API: a bad value raises ConfigError (argparse's own one line) instead of exiting."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise ConfigError(message)


def _parser(command: str) -> argparse.ArgumentParser:
    """The parser of `lazyaccept COMMAND`, as the command registers it."""
    import importlib

    module = importlib.import_module(f"lazyaccept.commands.{command}")
    top = argparse.ArgumentParser(prog="lazyaccept")
    sub = top.add_subparsers(dest="command", parser_class=_RaisingParser)
    module.register(sub)
    return sub.choices[module.NAME]


def _parse(command: str, options: Mapping[str, Any]) -> argparse.Namespace:
    """`lazyaccept COMMAND` with these keyword arguments as its options (None: left out, the command's default)."""
    options = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in options.items() if v is not None}
    return _parser(command).parse_args(_argv(options))


# Keyword arguments whose option is not --NAME.
_SHORT = {"ram": "-m", "smp": "-smp", "type": "--type", "accel": "-accel"}
_SIZES = ("ram", "initrd_size", "kernel_init_size", "resident")


def _argv(options: Mapping[str, Any]) -> list[str]:
    argv: list[str] = []
    for name, value in options.items():
        flag = _SHORT.get(name, "--" + name.replace("_", "-"))
        if isinstance(value, bool):
            argv += [flag] if value else []  # store_true options: False is their default
            continue
        if name in _SIZES + ("upfront",) and isinstance(value, int):
            value = format_size(value)  # an int is bytes: "4K", "3B", whatever a bare number means to the command
        for v in value if isinstance(value, list) else [value]:
            argv.append(f"{flag}={v}")  # one token, so that a value starting with "-" stays a value
    return argv


def boot_scenario(**options: Any) -> BootScenario:
    """The BootScenario `lazyaccept boot` would run with these options (boot()'s keyword arguments, without
    `debs`): the options checked and resolved without booting."""
    from lazyaccept.commands.boot import scenario_from_args

    # The parser records which options were given (scenario.track_given_flags), so that with `scenario` only those
    # replace what the file says, as on the command line.
    return scenario_from_args(_parse("boot", options))


def boot(
    *,
    scenario: str | os.PathLike[str] | None = None,
    ram: Size | None = None,
    smp: int | None = None,
    profile: str | None = None,
    firmware: str | os.PathLike[str] | None = None,
    firmware_exec: bool | None = None,
    shim: str | os.PathLike[str] | None = None,
    edk2_profile: str | None = None,
    upfront: Size | None = None,
    option: Iterable[int] | None = None,
    on_demand: str | Iterable[str] | None = None,
    accept_all_at_exit: bool | None = None,
    allow_unaccepted_protocol: bool | None = None,
    no_cc_measurement: bool | None = None,
    kernel: str | os.PathLike[str] | None = None,
    efi_app: str | os.PathLike[str] | None = None,
    uki: bool | None = None,
    initrd: str | os.PathLike[str] | None = None,
    initrd_size: Size | None = None,
    append: str | None = None,
    stream_initrd: bool | None = None,
    grub: bool | None = None,
    systemd_boot: bool | None = None,
    disk_from: str | os.PathLike[str] | None = None,
    disk: str | os.PathLike[str] | None = None,
    write_disk_dir: str | os.PathLike[str] | None = None,
    grub_efi: str | os.PathLike[str] | None = None,
    grub_timeout: int | None = None,
    type: Iterable[str] | None = None,  # noqa: A002 -- `--type`, as the command spells it
    type_at_prompt: Iterable[str] | None = None,
    interactive: bool | None = None,
    tcg2: bool | None = None,
    fat: int | None = None,
    cpu: str | None = None,
    accel: str | None = None,
    rng_seed: int | None = None,
    no_log: bool | None = None,
    timeout: float | None = None,
    run_kernel: bool | None = None,
    debs: str | os.PathLike[str] | None = None,
) -> BootResult:
    """Boot as `lazyaccept boot` does with the same options, and return how it ended.

    Each argument is the `boot` option of the same name (`-m` is `ram`, `-smp` is `smp`; repeatable options take
    a list); None, the default, leaves the option out, so it takes the command's default (64G, 8 vCPUs, kvm-2m,
    below-4g, Debian's 6.12 kernel, ...). `scenario` is `--scenario FILE`: the file, with the options given here
    replacing what it says. `debs` is `lazyaccept --debs DIR`: the folder of the pinned .deb files, for this call
    only (default: $LAZYACCEPT_DEBS, then the usual places).

    Raises ConfigError (a bad value; the message names it) or InputError (a file that cannot be read or fails its
    checks). A boot that fails is a result, not an exception: see `outcome`, `exit_code`, `reason`, `hint`.
    """
    from lazyaccept.boot import run_boot

    options = {k: v for k, v in locals().items() if k not in ("debs", "run_boot")}
    for name in ("option", "type", "type_at_prompt"):
        if options[name] is not None:
            if isinstance(options[name], str | bytes):
                raise ConfigError(f"{name}: expected a list, got {options[name]!r}")
            options[name] = list(options[name])
    if options["on_demand"] is not None and not isinstance(options["on_demand"], str):
        options["on_demand"] = ",".join(str(n) for n in options["on_demand"])  # ["allocator", "loader"]
    with _debs(debs):
        return BootResult(run_boot(boot_scenario(**options)))


def run_scenario(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    folder: str | os.PathLike[str] | None = None,
    debs: str | os.PathLike[str] | None = None,
) -> BootResult:
    """Run a scenario as `lazyaccept run FILE.toml` does: `source` is the file's path, its TOML text (a str
    holding a newline or an '='), or the parsed table. Relative paths in it resolve against the file's folder, or
    `folder` (default: the current directory) for text and tables.

    The result carries the file's [expect]: `result.ok` is whether it was met (`expect_mismatch` says how not),
    as `run` exits 1 when it is not. Raises InputError/ScenarioError (a ConfigError naming the key, such as
    `td.ram: invalid size ...`) for a bad file.
    """
    from lazyaccept.boot import run_boot
    from lazyaccept.scenario import load_scenario, scenario_from_dict

    base = Path(folder) if folder is not None else Path.cwd()
    if isinstance(source, Mapping):
        sf = scenario_from_dict(dict(source), base)
    elif isinstance(source, str) and ("\n" in source or "=" in source):
        try:
            data = tomllib.loads(source)
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"scenario text: invalid TOML: {exc}") from None
        sf = scenario_from_dict(data, base)
    else:
        sf = load_scenario(Path(source))
    with _debs(debs):
        return BootResult(run_boot(sf.prepared()), command="run", expect=sf.expect)


@dataclass(frozen=True, repr=False)
class AdviceResult:
    """What `lazyaccept advise` answers: per on-demand option (`none`, `option1`, `option2`, `option3`), the
    smallest up-front accept that boots and what limits it. `report` is the advise.AdviceReport; `to_json()` the
    document `advise --json` prints."""

    report: AdviceReport

    @property
    def min_upfront_bytes(self) -> dict[str, int | None]:
        """Option -> the smallest up-front size that boots (None: none boots, not even everything accepted)."""
        return {a.option: a.min_upfront_bytes for a in self.report.advice}

    def to_json(self) -> dict[str, Any]:
        from lazyaccept.commands.advise import report_dict

        return _json("advise", report_dict(self.report))

    def __repr__(self) -> str:
        rows = ", ".join(f"{k} {format_size(v) if v else 'never'}" for k, v in self.min_upfront_bytes.items())
        return f"<AdviceResult {format_size(self.report.ram)} {self.report.smp} vCPUs: {rows}>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "report":
            raise AttributeError(name)
        return getattr(self.report, name)  # advice, payload, real_check, edk2_profile, ...


def advise(
    *,
    ram: Size | None = None,
    smp: int | None = None,
    profile: str | None = None,
    firmware: str | os.PathLike[str] | None = None,
    edk2_profile: str | None = None,
    kernel: str | os.PathLike[str] | None = None,
    kernel_init_size: Size | None = None,
    initrd_size: Size | None = None,
    check_real: bool | None = None,
    chain: str | None = None,
    debs: str | os.PathLike[str] | None = None,
) -> AdviceResult:
    """Search the smallest up-front accept that boots under each on-demand option, as `lazyaccept advise` does
    with the same options (None: the command's default; `-m` is `ram`, `-smp` is `smp`). `check_real` then boots
    the firmware image itself to check the model's answer for its own policy (`result.real_check.agrees`).
    `chain` (grub, shim-grub, systemd-boot, uki) searches with real boots of that chain instead of the model.
    Raises ConfigError or InputError as boot() does."""
    from lazyaccept.advise import check_with_real_firmware
    from lazyaccept.commands.advise import payload_from_args, search

    options = {k: v for k, v in locals().items() if k not in ("debs", "check_with_real_firmware", "search",
                                                                "payload_from_args")}
    args = _parse("advise", options)
    with _debs(debs):
        rep = search(args, payload_from_args(args))
        if args.check_real:
            check_with_real_firmware(rep, args.kernel, profile=args.profile, firmware=args.firmware)
    return AdviceResult(rep)


class _SweepRecord:
    """What compare's and matrix's results share: their --json record, and from it the cells that do not boot (exit
    code 1, compare's convention) and the files written."""

    record: dict[str, Any]

    @property
    def failed_cell_count(self) -> int:
        return int(self.record["failed_cell_count"])

    @property
    def exit_code(self) -> int:
        from lazyaccept.exitcodes import EXIT_BOOTED, EXIT_FAILED

        return EXIT_FAILED if self.failed_cell_count else EXIT_BOOTED

    @property
    def written(self) -> list[Path]:
        return [Path(p) for p in self.record["written"]]

    def to_json(self) -> dict[str, Any]:
        return dict(self.record)


@dataclass(frozen=True, repr=False)
class CompareResult(_SweepRecord):
    """What `lazyaccept compare` computes: every cell of the matrix (`cells`, compare.Cell: policy, ram, vcpus,
    profile, boots, firmware_ns, os_ns, ...), `failed_cell_count`, the files written with `out`, and `to_json()`, the
    document `compare --json` prints (and comparison.json holds)."""

    comparison: Comparison
    record: dict[str, Any]

    @property
    def cells(self) -> list[Cell]:
        return self.comparison.cells

    def __repr__(self) -> str:
        return f"<CompareResult {len(self.cells)} cells, {self.failed_cell_count} do not boot>"


def compare(
    *,
    sizes: Iterable[Size] | None = None,
    vcpus: Iterable[int] | None = None,
    profiles: Iterable[str | os.PathLike[str]] | None = None,
    policies: Iterable[str] | None = None,
    initrd_size: Size | None = None,
    resident: Size | None = None,
    out: str | os.PathLike[str] | None = None,
    debs: str | os.PathLike[str] | None = None,
) -> CompareResult:
    """Run the policy matrix as `lazyaccept compare` does with the same options (None: the command's default):
    lists as lists (`sizes=["4G", 64 << 30]`, `policies=["below-4g", "256M+allocator"]`), `out` a folder for the
    plots, report.html and comparison.json. Raises ConfigError or InputError as the command exits 2."""
    from lazyaccept.commands.compare import run_matrix

    options = {"sizes": _joined(sizes, size=True), "vcpus": _joined(vcpus), "profiles": _joined(profiles),
               "policies": _joined(policies), "initrd_size": initrd_size, "resident": resident, "out": out}
    args = _parse("compare", options)
    with _debs(debs):
        comparison, record, _profiles, _vcpus = run_matrix(args)
    return CompareResult(comparison, record)


def _joined(values: Iterable[Any] | None, size: bool = False) -> str | None:
    """A list as the comma-separated value the command's flag takes (an int size is bytes)."""
    if values is None:
        return None
    if isinstance(values, str | bytes):
        raise ConfigError(f"expected a list, got {values!r}")
    return ",".join(format_size(v) if size and isinstance(v, int) else os.fspath(v) if isinstance(
        v, os.PathLike) else str(v) for v in values)


@dataclass(frozen=True, repr=False)
class MatrixResult(_SweepRecord):
    """What `lazyaccept matrix` computes: `lines`, every cell's record in the matrix's order (the matrix-cell lines of
    matrix.jsonl, plus the skipped cells), `failed_cell_count`, the files written, and `to_json()`, the document
    `matrix --json` prints."""

    record: dict[str, Any]
    lines: list[dict[str, Any]]

    def __repr__(self) -> str:
        return f"<MatrixResult {len(self.lines)} cells, {self.failed_cell_count} do not boot>"


_MATRIX_SIZES = ("ram", "initrd_size")


def matrix(
    file: str | os.PathLike[str] | None = None,
    *,
    out: str | os.PathLike[str],
    workers: int | None = None,
    scheduler: str | None = None,
    budget: float | None = None,
    cache: str | os.PathLike[str] | None = None,
    debs: str | os.PathLike[str] | None = None,
    **axes: Iterable[Any],
) -> MatrixResult:
    """Run a compatibility matrix as `lazyaccept matrix [FILE] --out OUT` does: each axis a list replacing the file's
    (`ram=["4G", 64 << 30]`, `loader=["direct", "grub"]`, `on_demand=["none", "allocator"]`), `workers=0` one cell
    after the other here, else Dask (a LocalCluster, or `scheduler`). Raises ConfigError or InputError as the command
    exits 2."""
    from lazyaccept.commands.matrix import run_sweep

    options: dict[str, Any] = {name: _joined(values, size=name in _MATRIX_SIZES) for name, values in axes.items()}
    options.update(out=out, workers=workers, scheduler=scheduler, budget=budget, cache=cache)
    parser = _parser("matrix")
    known = {a.dest for a in parser._actions}
    unknown = sorted(set(axes) - known)
    if unknown:
        raise ConfigError(f"matrix(): unknown axis {unknown[0]!r}")
    args = _parse("matrix", options)
    args.file = os.fspath(file) if file is not None else None
    with _debs(debs):
        swept = run_sweep(args)
    assert not isinstance(swept, int)  # no dry run here
    record, lines = swept
    return MatrixResult(record, lines)


@dataclass(frozen=True, repr=False)
class SecRun:
    """What `lazyaccept sec` shows: the TD as the VMM built it (`td`) and SEC's up-front accept on it (`sec`, a
    firmware.sec.SecResult), or, when the TDX module terminated the TD in SEC, `termination` (exit code 4)."""

    td: Td
    sec: SecResult | None
    termination: str | None = None

    @property
    def exit_code(self) -> int:
        from lazyaccept.exitcodes import EXIT_BOOTED, EXIT_TERMINATED

        return EXIT_TERMINATED if self.termination else EXIT_BOOTED

    @property
    def accepted_bytes(self) -> int:
        """Accepted when SEC hands over to DXE, counting what the VMM added."""
        return self.sec.accepted_bytes if self.sec else 0

    @property
    def phase_ns(self) -> int:
        """SEC's virtual time: its slowest vCPU."""
        return self.sec.phase_ns if self.sec else 0

    def to_json(self) -> dict[str, Any]:
        """The document `sec --json` prints (a terminated TD prints none: ConfigError)."""
        from lazyaccept.commands.sec import result_dict

        if self.sec is None:
            raise ConfigError(f"the TD was terminated in SEC ({self.termination}): `sec --json` prints no document")
        return _json("sec", result_dict(self.td, self.sec))

    def __repr__(self) -> str:
        what = f"terminated: {self.termination}" if self.termination else (
            f"{format_size(self.accepted_bytes)} accepted, {self.phase_ns / 1e9:.3f} s")
        return f"<SecRun {format_size(self.td.ram_size)} {self.td.config.vcpus} vCPUs: {what}>"


def sec(
    *,
    ram: Size | None = None,
    smp: int | None = None,
    firmware: str | os.PathLike[str] | None = None,
    profile: str | None = None,
    hob_convention: str | None = None,
    upfront: Size | None = None,
    edk2_profile: str | None = None,
) -> SecRun:
    """Build a TD as QEMU does and run TDVF SEC's up-front accept on it, as `lazyaccept sec` does with the same
    options (None: the command's default, 64G and 8 vCPUs). Raises ConfigError or InputError as boot() does."""
    from lazyaccept.commands.common import td_config
    from lazyaccept.firmware.profiles import resolve
    from lazyaccept.firmware.sec import parse_policy, run_sec
    from lazyaccept.tdx.module import TdTerminated
    from lazyaccept.vmm.td import build_td

    args = _parse("sec", {k: v for k, v in locals().items() if k in _SEC_OPTIONS})
    policy = parse_policy(args.upfront)
    td = build_td(td_config(args))
    try:
        return SecRun(td, run_sec(td, policy, resolve(args.edk2_profile, td.firmware)))
    except TdTerminated as exc:
        return SecRun(td, None, str(exc.termination))


_SEC_OPTIONS = ("ram", "smp", "firmware", "profile", "hob_convention", "upfront", "edk2_profile")


def _json(command: str, data: dict[str, Any]) -> dict[str, Any]:
    """The document `lazyaccept COMMAND --json` prints for `data`: the command's own writer, so that the header and
    the encoding are its."""
    from lazyaccept import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli.print_json(command, data)
    return json.loads(out.getvalue())


@contextlib.contextmanager
def _debs(debs: str | os.PathLike[str] | None) -> Iterator[None]:
    """`lazyaccept --debs DIR` for one call: $LAZYACCEPT_DEBS while it runs, restored after."""
    if debs is None:
        yield
        return
    path = Path(debs).expanduser()
    if not path.is_dir():
        raise ConfigError(f"debs {os.fspath(debs)!r}: not a directory")
    old = os.environ.get("LAZYACCEPT_DEBS")
    os.environ["LAZYACCEPT_DEBS"] = str(path.resolve())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LAZYACCEPT_DEBS", None)
        else:
            os.environ["LAZYACCEPT_DEBS"] = old
