"""Signs of life: what a run is doing while it runs, on stderr, and the service-call trace of `--log FILE`.

The runners call the module functions below at a few points (a phase starts, the guest writes console text, a
firmware service returns, a download or a matrix makes progress). They go to one process-wide Reporter, which does
nothing unless the CLI installed another (cli.py: a rich display when stderr is a terminal, plain lines with -v,
the trace file with --log). Nothing here ever writes to stdout.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

# The guest's terminal control (CSI and two-byte escapes: colours, cursor moves, clears): not text to show.
_ESCAPES = re.compile(r"\x1b(?:\[[0-9;=?]*[ -/]*[@-~]|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
LONGEST_LINE = 4096  # a console that never ends its line is shown in pieces this long


class Task:
    """One long piece of work (a download, a matrix): `update` as it goes, `close` (or leave the `with`) at its end."""

    def update(self, completed: float | None = None, *, total: float | None = None,
               description: str | None = None) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class Reporter:
    """The default: no signs of life at all (library use, tests, --json, -q, a stderr that is no terminal)."""

    tracing = False  # whether call() wants every firmware service call (the callers skip the work otherwise)
    hints = True  # whether a text report shows its "hint:" line (-q: no)
    log: TextIO | None = None  # the --log file, if any

    def phase(self, name: str, virtual_ns: int | None = None) -> None:
        return None

    def console(self, text: str) -> None:
        return None

    def serial(self, byte: int) -> None:
        return None

    def call(self, name: str, args: Sequence[int], status: int | None, virtual_ns: int) -> None:
        return None

    def task(self, description: str, total: float | None = None, unit: str = "") -> Task:
        return Task()

    def status(self, text: str) -> None:
        return None

    def close(self) -> None:
        return None


_reporter: Reporter = Reporter()


def install(reporter: Reporter) -> Reporter:
    """Make `reporter` the process-wide one; returns the one it replaces."""
    global _reporter
    previous, _reporter = _reporter, reporter
    return previous


def current() -> Reporter:
    return _reporter


# The calls the runners make (one line each at their hook points).
def phase(name: str, virtual_ns: int | None = None) -> None:
    """A boot phase starts (VMM build, SEC, DXE, the loader, the stub, the real firmware's phases, the kernel)."""
    _reporter.phase(name, virtual_ns)


def console(text: str) -> None:
    """Text the firmware wrote to its console (ConOut)."""
    _reporter.console(text)


def serial(byte: int) -> None:
    """A byte the guest wrote to the serial port (the real firmware's and the kernel's console)."""
    _reporter.serial(byte)


def tracing() -> bool:
    return _reporter.tracing


def hints() -> bool:
    """Whether a text report shows its hints (-q silences them; --json keeps them: they are data there)."""
    return _reporter.hints


def call(name: str, args: Sequence[int], status: int | None, virtual_ns: int) -> None:
    """A firmware service call returned (only when tracing(): the trace of --log)."""
    _reporter.call(name, args, status, virtual_ns)


def task(description: str, total: float | None = None, unit: str = "") -> Task:
    """A long piece of work: unit "bytes" shows sizes, another unit counts (cells), no total is a spinner."""
    return _reporter.task(description, total, unit)


def status(text: str) -> None:
    """What a long search is doing now (advise's probes)."""
    _reporter.status(text)


# ---------------------------------------------------------------------------------------------------------------
# The CLI's reporter


def clean_line(text: str) -> str:
    """A console line as a terminal would leave it: escapes dropped, a carriage return starts the line over."""
    text = _ESCAPES.sub("", text).rstrip("\r")
    return _CONTROL.sub("", text.rsplit("\r", 1)[-1]).rstrip()


def _status_name(status: int | None) -> str:
    if status is None:
        return "-"
    from lazyaccept.spec.efi import EfiStatus

    try:
        return EfiStatus(status).name
    except ValueError:
        return f"{status:#x}"


class Display:
    """Plain lines on a stream that is no terminal (-v): no escape codes, nothing redrawn."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def phase(self, name: str) -> None:
        self.line(f"lazyaccept: {name}")

    def console(self, text: str) -> None:
        self.line(text)

    def trace(self, text: str) -> None:
        self.line(text)

    def task(self, description: str, total: float | None, unit: str) -> Task:
        return _PlainTask(self, description, total, unit)

    def status(self, text: str) -> None:
        self.line(f"lazyaccept: {text}")

    def close(self) -> None:
        return None


def _amount(completed: float, total: float | None, unit: str) -> str:
    if unit == "bytes":
        from rich.filesize import decimal

        return decimal(int(completed)) + (f" of {decimal(int(total))}" if total else "")
    if total:
        return f"{completed:.0f}/{total:.0f} {unit}".rstrip()
    return f"{completed:.0f} {unit}".rstrip() if completed else ""


class _PlainTask(Task):
    def __init__(self, display: Display, description: str, total: float | None, unit: str):
        self.display, self.description, self.total, self.unit = display, description, total, unit
        self.completed = 0.0
        self.started = time.monotonic()
        self.shown = ""
        display.line(f"lazyaccept: {description} ...")

    def update(self, completed: float | None = None, *, total: float | None = None,
               description: str | None = None) -> None:
        self.completed = self.completed if completed is None else completed
        self.total = self.total if total is None else total
        self.description = description or self.description
        if self.unit != "bytes":  # counts (cells) one line each; byte counts only at the end
            self._show()

    def _show(self) -> None:
        text = f"lazyaccept: {self.description}: {_amount(self.completed, self.total, self.unit)}".rstrip(": ")
        if text != self.shown:
            self.shown = text
            self.display.line(text)

    def close(self) -> None:
        self.display.line(f"lazyaccept: {self.description}: done, {_amount(self.completed, self.total, self.unit)} "
                          f"in {time.monotonic() - self.started:.1f} s".replace(",  in", " in"))


class RichDisplay(Display):
    """A terminal: phase lines and the guest's console scroll by, a spinner (the phase now, elapsed time) and the
    bars of downloads and matrices stay at the bottom and vanish at the end."""

    def __init__(self, stream: TextIO):
        super().__init__(stream)
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.text import Text

        class Bar(BarColumn):  # only for work with a total: a spinner says enough for the rest
            def render(self, task: Any) -> Any:
                return super().render(task) if task.total is not None else Text("")

        self.rich = Console(file=stream, highlight=False, markup=False, emoji=False, soft_wrap=True)
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}", markup=False), Bar(bar_width=30),
            TextColumn("{task.fields[amount]}", markup=False), TimeElapsedColumn(),
            console=self.rich, transient=True, redirect_stdout=False, redirect_stderr=False,
            refresh_per_second=8,
        )  # fmt: skip
        self.started = False
        self.paused = False  # stdout has begun: no live region any more (its redraws would cross stdout's lines)
        self.activity: Any = None  # the spinner's task: the phase (or search step) now

    def _start(self) -> None:
        if not self.started and not self.paused:
            self.started = True
            self.progress.start()

    def pause(self) -> None:
        """Before stdout's first write: the spinner and bars go (phase and console lines still scroll by)."""
        self.paused = True
        self.close()

    def line(self, text: str, style: str | None = None) -> None:
        from rich.text import Text

        self.progress.console.print(Text(text, style=style or ""), soft_wrap=True)

    def phase(self, name: str) -> None:
        self.line(f"▸ {name}", "bold cyan")
        self._activity(name)

    def _activity(self, text: str) -> None:
        self._start()
        if self.activity is not None:
            self.progress.remove_task(self.activity)
        self.activity = self.progress.add_task(text, total=None, amount="")

    def trace(self, text: str) -> None:
        self.line(text, "dim")

    def task(self, description: str, total: float | None, unit: str) -> Task:
        self._start()
        return _RichTask(self, description, total, unit)

    def status(self, text: str) -> None:
        self._activity(text)

    def close(self) -> None:
        if self.started:
            self.progress.stop()
            self.started = False


class _RichTask(Task):
    def __init__(self, display: RichDisplay, description: str, total: float | None, unit: str):
        self.display, self.unit, self.total, self.completed = display, unit, total, 0.0
        self.id = display.progress.add_task(description, total=total, amount=_amount(0, total, unit))

    def update(self, completed: float | None = None, *, total: float | None = None,
               description: str | None = None) -> None:
        self.completed = self.completed if completed is None else completed
        self.total = self.total if total is None else total
        fields: dict[str, Any] = {"amount": _amount(self.completed, self.total, self.unit)}
        if description is not None:
            fields["description"] = description
        self.display.progress.update(self.id, completed=self.completed, total=self.total, **fields)

    def close(self) -> None:
        if self.id in self.display.progress.task_ids:
            self.display.progress.remove_task(self.id)


class CliReporter(Reporter):
    """Phases, the guest's console lines, tasks to a Display; phases, console lines and every firmware service call
    with a virtual timestamp to the --log file. `trace_display`: the calls go to the display too (-vv)."""

    def __init__(self, display: Display | None = None, log: TextIO | None = None, *, trace_display: bool = False):
        self.display, self.log = display, log
        self.trace_display = trace_display and display is not None
        self.tracing = log is not None or self.trace_display
        self._text = ""
        self._serial = bytearray()
        self._ns = 0  # the last virtual time seen (console lines carry it in the log)

    def _trace(self, text: str, virtual_ns: int | None = None) -> None:
        if virtual_ns is not None:
            self._ns = virtual_ns
        line = f"[{self._ns // 1_000_000_000:5d}.{self._ns % 1_000_000_000 // 1000:06d}] {text}"
        if self.log is not None:
            self.log.write(line + "\n")
        if self.trace_display and self.display is not None:
            self.display.trace(line)

    def phase(self, name: str, virtual_ns: int | None = None) -> None:
        self._flush()
        if virtual_ns is not None:
            self._ns = virtual_ns
        if self.display is not None:
            self.display.phase(name)
        if self.log is not None:
            self._trace(f"phase {name}")

    def console(self, text: str) -> None:
        self._text += text
        while "\n" in self._text:
            line, self._text = self._text.split("\n", 1)
            self._line(line)
        if len(self._text) > LONGEST_LINE:
            self._line(self._text)
            self._text = ""

    def serial(self, byte: int) -> None:
        if byte == 0x0A or len(self._serial) >= LONGEST_LINE:
            self._line(self._serial.decode("utf-8", "replace"))
            self._serial.clear()
        else:
            self._serial.append(byte)

    def _line(self, raw: str) -> None:
        line = clean_line(raw)
        if not line:
            return
        if self.display is not None:
            self.display.console(line)
        if self.log is not None:
            self._trace(f"console {line}")

    def _flush(self) -> None:
        """What the guest wrote without ending its line yet (a prompt), before a phase line or the end."""
        if self._text:
            text, self._text = self._text, ""
            self._line(text)
        if self._serial:
            self._line(self._serial.decode("utf-8", "replace"))
            self._serial.clear()

    def call(self, name: str, args: Sequence[int], status: int | None, virtual_ns: int) -> None:
        self._trace(f"call {name}({', '.join(f'{a:#x}' for a in args)}) = {_status_name(status)}", virtual_ns)

    def task(self, description: str, total: float | None = None, unit: str = "") -> Task:
        if self.display is None:
            return Task()
        return self.display.task(description, total, unit)

    def status(self, text: str) -> None:
        if self.display is not None:
            self.display.status(text)

    def close(self) -> None:
        self._flush()
        if self.display is not None:
            self.display.close()
        if self.log is not None:
            self.log.flush()


class _StdoutAfterDisplay:
    """sys.stdout while a live display is on stderr: the display steps aside before the first write (on one terminal,
    its redraw and its erasing at the end would otherwise overwrite the report's lines)."""

    def __init__(self, stream: TextIO, display: RichDisplay):
        self._stream, self._display = stream, display

    def write(self, text: str) -> int:
        if not self._display.paused:
            self._display.pause()
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guard_stdout(stdout: TextIO, reporter: Reporter) -> TextIO:
    """stdout as the CLI should use it while `reporter` shows progress (unchanged without a live display)."""
    display = getattr(reporter, "display", None)
    return _StdoutAfterDisplay(stdout, display) if isinstance(display, RichDisplay) else stdout  # type: ignore[return-value]


def reporter_for(stream: TextIO | None, *, verbose: int, quiet: bool, json_mode: bool,
                 log: TextIO | None, hints: bool = True) -> Reporter:
    """The CLI's choice: a rich display on a terminal, plain lines when -v asks for them elsewhere, none with -q, in
    --json mode (unless -v) or on a stream that is no terminal (unless -v); the trace file with --log."""
    stream = stream if stream is not None else sys.stderr
    display: Display | None = None
    terminal = stream.isatty()
    if not quiet and (verbose or (terminal and not json_mode)):
        display = RichDisplay(stream) if terminal else Display(stream)
    reporter = Reporter() if display is None and log is None else CliReporter(
        display, log, trace_display=verbose >= 2 and not quiet)
    reporter.hints = hints
    return reporter
