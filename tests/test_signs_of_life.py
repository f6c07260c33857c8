"""Signs of life (issue 17): progress on a terminal's stderr (phases, the guest's console, bars), -v/-q/--log, and
Ctrl-C ending a run with one line and exit code 130 on both CPU backends, leaving no half-written file behind."""

from __future__ import annotations

import io
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lazyaccept import interrupt, progress
from lazyaccept.files import atomic_open

ROOT = Path(__file__).resolve().parents[1]
RUNAWAY_APP = ROOT / "tests" / "hostile" / "efi_apps" / "runaway_app.c"
CC = "x86_64-w64-mingw32-gcc"
CFLAGS = ["-O2", "-ffreestanding", "-fno-stack-protector", "-fno-stack-check", "-mno-red-zone", "-nostdlib",
          "-shared", "-Wl,--subsystem,10", "-e", "efi_main"]


def _env() -> dict[str, str]:
    env = dict(os.environ, COLUMNS="120", TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lazyaccept", *args]


# ---------------------------------------------------------------------------------------------------------------
# The reporter itself


def test_console_lines_are_assembled_cleaned_and_logged() -> None:
    shown, log = io.StringIO(), io.StringIO()
    reporter = progress.CliReporter(progress.Display(shown), log)
    reporter.phase("SEC", 1_500_000_000)
    reporter.console("EFI stub: ")
    reporter.console("Loaded initrd\r\n\x1b[0m\x1b[37m\x1b[40m")
    for byte in b"[    0.000000] Linux version 6.12\r\nprogress 10%\rprogress 100%\n\x1b[2J\n":
        reporter.serial(byte)
    reporter.serial(ord("$"))  # a prompt: shown at the end, not lost
    reporter.call("BS.AllocatePages", (1, 2, 0x10), 0, 2_000_001_000)
    reporter.close()
    assert shown.getvalue().splitlines() == [
        "lazyaccept: SEC", "EFI stub: Loaded initrd", "[    0.000000] Linux version 6.12", "progress 100%", "$",
    ]  # the call goes to the log only (-vv shows it too)
    assert log.getvalue().splitlines() == [
        "[    1.500000] phase SEC",
        "[    1.500000] console EFI stub: Loaded initrd",
        "[    1.500000] console [    0.000000] Linux version 6.12",
        "[    1.500000] console progress 100%",
        "[    2.000001] call BS.AllocatePages(0x1, 0x2, 0x10) = SUCCESS",
        "[    2.000001] console $",
    ]


def test_a_console_that_never_ends_its_line_is_shown_in_pieces() -> None:
    shown = io.StringIO()
    reporter = progress.CliReporter(progress.Display(shown))
    reporter.console("x" * (progress.LONGEST_LINE + 10))
    for _ in range(progress.LONGEST_LINE + 1):
        reporter.serial(ord("y"))
    lines = shown.getvalue().splitlines()
    assert [len(line) for line in lines] == [progress.LONGEST_LINE + 10, progress.LONGEST_LINE]


class _Stream(io.StringIO):
    def __init__(self, terminal: bool):
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


@pytest.mark.parametrize(
    ("terminal", "verbose", "quiet", "json_mode", "display"),
    [
        (True, 0, False, False, progress.RichDisplay),  # a terminal: the rich display
        (True, 0, False, True, None),  # --json: nothing
        (True, 1, False, True, progress.RichDisplay),  # unless -v asks
        (True, 1, True, False, None),  # -q wins
        (False, 0, False, False, None),  # no terminal: nothing
        (False, 1, False, False, progress.Display),  # -v: plain lines
    ],
)
def test_the_cli_chooses_its_display(terminal, verbose, quiet, json_mode, display) -> None:
    reporter = progress.reporter_for(_Stream(terminal), verbose=verbose, quiet=quiet, json_mode=json_mode, log=None)
    if display is None:
        assert type(reporter) is progress.Reporter and not reporter.tracing
    else:
        assert isinstance(reporter, progress.CliReporter) and type(reporter.display) is display
        assert not reporter.tracing  # the calls only with --log or -vv
    log = io.StringIO()
    traced = progress.reporter_for(_Stream(terminal), verbose=verbose, quiet=quiet, json_mode=json_mode, log=log)
    assert isinstance(traced, progress.CliReporter) and traced.tracing and traced.log is log


def test_plain_tasks_count_cells_and_sum_up_downloads() -> None:
    shown = io.StringIO()
    reporter = progress.CliReporter(progress.Display(shown))
    with reporter.task("compare", 3, "cells") as cells:
        for done in (1, 2, 3):
            cells.update(done)
    with reporter.task("apt-get download ovmf", 5_000_000, "bytes") as download:
        download.update(1_000_000)  # no line per update of bytes
        download.update(5_000_000)
    lines = shown.getvalue().splitlines()
    assert lines[:4] == ["lazyaccept: compare ...", "lazyaccept: compare: 1/3 cells", "lazyaccept: compare: 2/3 cells",
                         "lazyaccept: compare: 3/3 cells"]
    assert lines[4].startswith("lazyaccept: compare: done, 3/3 cells in ")
    assert lines[5:7] == ["lazyaccept: apt-get download ovmf ..."] + [lines[6]]
    assert lines[6].startswith("lazyaccept: apt-get download ovmf: done, 5.0 MB of 5.0 MB in ") and len(lines) == 7


def test_the_default_reporter_does_nothing() -> None:
    assert type(progress.current()) is progress.Reporter and not progress.tracing()
    progress.phase("SEC")
    progress.console("text\n")
    with progress.task("x", 2, "cells") as task:
        task.update(1)


# ---------------------------------------------------------------------------------------------------------------
# Ctrl-C inside guest code, and files a later run trusts


def test_ctrl_c_while_guest_code_runs_stops_the_cpu_and_raises_after_it() -> None:
    stops: list[str] = []
    restore = interrupt.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupt.stoppable(lambda: stops.append("emu_stop")):
                interrupt.handler(signal.SIGINT, None)  # as Python runs it inside a hook: no raise there
                assert stops == ["emu_stop"] and interrupt.requested()
                stops.append("hook returned")
        assert not interrupt.requested()
        with pytest.raises(KeyboardInterrupt):
            interrupt.handler(signal.SIGINT, None)  # outside guest code: at once, as Python's own handler
    finally:
        restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_watcher_stops_a_cpu_that_runs_no_python() -> None:
    """A guest spinning in C runs no Python, so no Python-level handler: the watcher thread, woken by the C handler's
    byte on the wakeup fd, stops the CPU."""
    import threading

    stopped = threading.Event()
    restore = interrupt.install()
    try:
        signal.signal(signal.SIGINT, lambda *_: None)  # the Python-level handler out of the way: only the watcher
        with interrupt.stoppable(stopped.set):
            os.kill(os.getpid(), signal.SIGINT)
            assert stopped.wait(5)
    finally:
        restore()


def test_atomic_open_leaves_the_old_file_or_the_whole_new_one(tmp_path: Path) -> None:
    target = tmp_path / "snapshot.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_open(target) as f:
        f.write(b"half of the new")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["snapshot.bin"]
    with atomic_open(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_interrupted_snapshot_is_never_a_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TdvfSnapshot.save writes through atomic_open: Ctrl-C in the middle of the pickle leaves no file that a later
    --from-snapshot would load."""
    from lazyaccept.cpu.unicorn import td_snapshot

    identity = td_snapshot.SnapshotIdentity("0" * 64, 1 << 30, 1, 52, "kvm-2m", 0)
    snap = td_snapshot.TdvfSnapshot(identity, "test", 1 << 30, [(0, b"x" * 4096)], [b""], b"state")
    snap.save(tmp_path / "good.snap")
    assert td_snapshot.TdvfSnapshot.load(tmp_path / "good.snap").pages == snap.pages

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(td_snapshot.pickle, "dump", interrupted)
    with pytest.raises(KeyboardInterrupt):
        snap.save(tmp_path / "good.snap")  # over the good one: that one stays
        snap.save(tmp_path / "fw.snap")
    assert [p.name for p in tmp_path.iterdir()] == ["good.snap"]
    with pytest.raises(KeyboardInterrupt):
        snap.save(tmp_path / "fw.snap")
    assert [p.name for p in tmp_path.iterdir()] == ["good.snap"]


# ---------------------------------------------------------------------------------------------------------------
# The CLI, as a user runs it


@pytest.fixture(scope="module")
def runaway_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/hostile/efi_apps/runaway_app.c: prints "runaway app: spinning", then loops with no service call."""
    compiler = shutil.which(CC)
    assert compiler, f"{CC} is missing: install Debian's gcc-mingw-w64-x86-64-win32 (make tools does)"
    out = tmp_path_factory.mktemp("sol") / "runaway.efi"
    subprocess.run([compiler, *CFLAGS, "-I", str(RUNAWAY_APP.parent), "-o", str(out), str(RUNAWAY_APP)], check=True)
    return out


def _interrupt_when(args: list[str], wait_for: str, delay: float = 0.5) -> tuple[int, str, float]:
    """Run the CLI with -v, send SIGINT once stderr showed `wait_for` (and `delay` s more); (exit code, stderr,
    seconds from the signal to the exit)."""
    proc = subprocess.Popen(_cli("-v", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if wait_for in line:
            break
    else:
        proc.wait()
        pytest.fail(f"never saw {wait_for!r}: {''.join(seen)}")
    time.sleep(delay)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    code = proc.wait(timeout=60)
    return code, "".join(seen) + rest, time.monotonic() - sent


def _assert_interrupted(code: int, stderr: str, after_s: float) -> None:
    assert code == 130, stderr
    assert stderr.rstrip().splitlines()[-1] == "lazyaccept: interrupted"
    assert "Traceback" not in stderr and "UC_ERR" not in stderr and "Exception ignored" not in stderr, stderr
    assert after_s < 10  # not the run's own budget (60 s)


@pytest.mark.real_binary
@pytest.mark.parametrize("cpu", ["unicorn", "kvm"])
def test_ctrl_c_in_a_guest_spinning_without_exits(cpu: str, runaway_app: Path, request: pytest.FixtureRequest) -> None:
    if cpu == "kvm":
        request.getfixturevalue("kvm")  # skips without a usable /dev/kvm (tests/cpu/conftest.py's rule)
    code, stderr, after = _interrupt_when(
        ["boot", "-m", "4G", "--efi-app", str(runaway_app), "--cpu", cpu, "--timeout", "60"], "runaway app: spinning"
    )
    _assert_interrupted(code, stderr, after)
    assert "lazyaccept: EFI application" in stderr  # the phase, then the application's own console line


@pytest.fixture
def kvm():  # noqa: ANN201 - tests/cpu/conftest.py's fixture, for this directory
    from lazyaccept.cpu.select import detect_kvm

    info = detect_kvm()
    if not info.usable:
        if info.expected:
            pytest.fail(f"this machine should offer KVM but: {info.detail}")
        pytest.skip(f"{info.detail}: the KVM path is tested on machines with KVM")
    return info


@pytest.mark.real_binary
def test_ctrl_c_in_the_issue_s_boot_under_unicorn(tmp_path: Path) -> None:
    """The issue's case: `boot -m 64G --initrd-size 1G --upfront 256M --option 1 --cpu unicorn`, interrupted in the
    stub (it reported UC_ERR_MAP and a ctypes traceback, exit 1); the --log trace is there up to the interrupt."""
    log = tmp_path / "trace.log"
    args = ["boot", "-m", "64G", "--initrd-size", "1G", "--upfront", "256M", "--option", "1", "--cpu", "unicorn",
            "--log", str(log)]
    code, stderr, after = _interrupt_when(args, "lazyaccept: the kernel's EFI stub", 0.3)
    _assert_interrupted(code, stderr, after)
    trace = log.read_text()
    assert "] phase the kernel's EFI stub\n" in trace and "] call BS.AllocatePages(" in trace
    assert trace.endswith("\n") and "phase stub after ExitBootServices" not in trace


@pytest.mark.real_binary
def test_compare_cells_and_advise_probes_with_v(tmp_path: Path) -> None:
    cells = subprocess.run(_cli("compare", "--sizes", "4G,8G", "--vcpus", "1", "--policies", "below-4g,512M", "-v"),
                           capture_output=True, text=True, env=_env())
    assert cells.returncode == 0, cells.stderr
    assert cells.stderr.splitlines()[:3] == ["lazyaccept: compare ...", "lazyaccept: compare: 1/4 cells",
                                             "lazyaccept: compare: 2/4 cells"]
    assert "4 runs in " in cells.stdout and "cells" not in cells.stdout
    quiet = subprocess.run(_cli("compare", "--sizes", "4G", "--vcpus", "1", "--policies", "below-4g"),
                           capture_output=True, text=True, env=_env())
    assert quiet.returncode == 0 and quiet.stderr == ""  # it printed "1/1 runs" there even off a terminal
    probes = subprocess.run(_cli("-v", "advise", "-m", "8G", "-smp", "1"), capture_output=True, text=True, env=_env())
    assert probes.returncode == 0, probes.stderr
    assert "lazyaccept: advise: option1: does 8G up front boot? (probe 1)" in probes.stderr.splitlines()


@pytest.mark.real_binary
def test_ctrl_c_in_edk2_s_own_tdvf() -> None:
    code, stderr, after = _interrupt_when(["tdvf", "--release", "2025.02", "-m", "4G"], "lazyaccept: edk2 TDVF: DXE",
                                          0.2)
    _assert_interrupted(code, stderr, after)


def _on_a_terminal(args: list[str], timeout: float = 120, *, stdout_too: bool = False) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (stdout a pipe, or the same terminal); (exit code, what the
    terminal got, stdout)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(_cli(*args), stdout=slave if stdout_too else subprocess.PIPE, stderr=slave, env=_env())
    os.close(slave)
    got = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            got += data
        elif proc.poll() is not None:
            break
    os.close(master)
    out = proc.stdout.read().decode() if proc.stdout is not None else ""
    return proc.wait(timeout=10), got.decode("utf-8", "replace"), out


@pytest.mark.real_binary
def test_a_terminal_sees_the_phases_and_the_guest_s_console(runaway_app: Path) -> None:
    code, terminal, out = _on_a_terminal(["boot", "-m", "4G", "--efi-app", str(runaway_app), "--timeout", "3"])
    assert code == 1  # the budget
    for phase in ("VMM build", "SEC (Python firmware)", "DXE core and platform protocols", "Boot Manager",
                  "EFI application"):
        assert f"▸ {phase}" in terminal
    assert "runaway app: spinning" in terminal  # ConOut as it arrives
    assert "\x1b[" in terminal  # rich's colours and redraws: it is a terminal
    assert "▸" not in out and "\x1b[" not in out  # the report on stdout is as without a terminal
    _, _, quiet_out = _on_a_terminal(["-q", "boot", "-m", "4G", "--efi-app", str(runaway_app), "--timeout", "3"])
    _, quiet, _ = _on_a_terminal(["boot", "-m", "4G", "--efi-app", str(runaway_app), "--timeout", "3", "-q"])
    assert quiet == "" and quiet_out.splitlines()[0] == out.splitlines()[0]


@pytest.mark.real_binary
def test_the_real_firmware_s_phases_and_serial_console_on_a_terminal() -> None:
    code, terminal, _ = _on_a_terminal(["tdvf", "--release", "2025.02", "-m", "2G"])
    assert code == 0
    for phase in ("VMM build", "edk2 TDVF: SEC", "edk2 TDVF: PEI", "edk2 TDVF: DXE", "edk2 TDVF: BDS"):
        assert f"▸ {phase}" in terminal
    assert 'BdsDxe: starting Boot0001 "EFI Internal Shell"' in terminal  # the serial console, escapes stripped


@pytest.mark.real_binary
def test_json_and_a_stderr_that_is_no_terminal_get_nothing_added() -> None:
    plain = subprocess.run(_cli("boot", "-m", "4G"), capture_output=True, text=True, env=_env())
    assert plain.returncode == 0 and plain.stderr == ""
    code, terminal, out = _on_a_terminal(["boot", "-m", "4G", "--json"])
    assert code == 0 and terminal == "" and out.lstrip().startswith("{")
    verbose = subprocess.run(_cli("boot", "-m", "4G", "-v"), capture_output=True, text=True, env=_env())
    def report(out: str) -> list[str]:
        return [line for line in out.splitlines() if "wall time" not in line]

    assert report(verbose.stdout) == report(plain.stdout)
    assert verbose.stderr.splitlines()[:3] == [
        "lazyaccept: VMM build (TD, TD HOB)", "lazyaccept: SEC (Python firmware)",
        "lazyaccept: DXE core and platform protocols",
    ]
    assert "\x1b" not in verbose.stderr  # no escape codes off a terminal


@pytest.mark.real_binary
def test_log_traces_every_service_call_and_is_written_when_the_run_fails(tmp_path: Path, runaway_app: Path) -> None:
    log = tmp_path / "trace.log"
    done = subprocess.run(
        _cli("boot", "-m", "4G", "--efi-app", str(runaway_app), "--timeout", "2", "--log", str(log)),
        capture_output=True, text=True, env=_env(),
    )  # fmt: skip
    assert done.returncode == 1 and done.stderr == ""  # the budget; no display off a terminal
    lines = log.read_text().splitlines()
    assert lines[0] == "[    0.000000] phase VMM build (TD, TD HOB)"
    calls = [line for line in lines if " call " in line]
    assert any("call ConOut.OutputString(" in line and line.endswith(") = SUCCESS") for line in calls), calls
    printed = next(i for i, line in enumerate(lines) if line.endswith("] console runaway app: spinning"))
    assert "call ConOut.OutputString(" in lines[printed + 1]  # the call returns after its text is out
    stamps = [float(line[1:13]) for line in lines]
    assert stamps == sorted(stamps) and stamps[-1] > 0.5  # the virtual clock: SEC's accepts took time
    bad = subprocess.run(_cli("--log", str(tmp_path / "no" / "such" / "dir.log"), "boot", "-m", "4G"),
                         capture_output=True, text=True, env=_env())
    assert bad.returncode == 2 and bad.stderr.startswith("lazyaccept: error: --log ") and "Traceback" not in bad.stderr


@pytest.mark.real_binary
def test_q_silences_the_hint_of_a_text_report_but_not_of_json() -> None:
    from lazyaccept.binaries import BinaryStore

    kernel = str(BinaryStore().linux61_vmlinuz())  # no unaccepted-memory support: MEMORY-LOST, with a hint
    loud = subprocess.run(_cli("boot", "-m", "8G", "--kernel", kernel), capture_output=True, text=True, env=_env())
    quiet = subprocess.run(_cli("boot", "-m", "8G", "--kernel", kernel, "-q"), capture_output=True, text=True,
                           env=_env())
    assert loud.returncode == quiet.returncode == 3
    assert [line for line in loud.stdout.splitlines() if line.startswith("hint: accept all memory")]
    assert "hint:" not in quiet.stdout
    data = subprocess.run(_cli("-q", "boot", "-m", "8G", "--kernel", kernel, "--json"), capture_output=True,
                          text=True, env=_env())
    assert '"hint": "accept all memory at ExitBootServices' in data.stdout


def test_an_interactive_boot_keeps_the_display_off_its_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """--interactive makes the terminal the guest's console: no spinner or copied lines on it (the log stays)."""
    from lazyaccept.cli import _signs_of_life, build_parser

    monkeypatch.setattr(sys, "stderr", _Stream(terminal=True))
    parser, _ = build_parser()
    on_terminal = _signs_of_life(parser.parse_args(["boot", "--grub"]))
    assert isinstance(on_terminal, progress.CliReporter) and isinstance(on_terminal.display, progress.RichDisplay)
    args = parser.parse_args(["boot", "--grub", "--interactive"])
    assert type(_signs_of_life(args)) is progress.Reporter
    args = parser.parse_args(["boot", "-q"])
    reporter = _signs_of_life(args)
    assert type(reporter) is progress.Reporter and not reporter.hints


@pytest.mark.real_binary
def test_ctrl_c_through_the_python_api_is_a_keyboard_interrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the CLI's handler (a script calling run_boot), Python raises KeyboardInterrupt inside a unicorn hook;
    unicorn answered that with UC_ERR_MAP and the run ended as an 'error' report. It is a KeyboardInterrupt."""
    import threading

    from lazyaccept.boot import BootScenario, run_boot
    from lazyaccept.units import GiB

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))  # in the stub's 15 s of service calls
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            run_boot(BootScenario(ram=64 * GiB, initrd_size=1 * GiB, upfront="256M", option1=True, cpu="unicorn",
                                  log_calls=False))
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)


@pytest.mark.real_binary
def test_on_one_terminal_the_display_steps_aside_before_the_report(runaway_app: Path) -> None:
    """stdout on the same terminal: once the report starts, no redraw or erase (cursor up, clear line) may touch it."""
    code, terminal, _ = _on_a_terminal(["boot", "-m", "4G", "--efi-app", str(runaway_app), "--timeout", "2"],
                                       stdout_too=True)
    assert code == 1
    report = terminal.index("TD 4G, 8 vCPUs")
    assert "\x1b[2K" in terminal[:report]  # the spinner was live before
    assert "\x1b[1A" not in terminal[report:] and "\x1b[2K" not in terminal[report:]
    assert "outcome: BUDGET" in terminal[report:]


def test_the_display_pauses_at_stdout_s_first_write() -> None:
    stderr, stdout = _Stream(terminal=True), io.StringIO()
    reporter = progress.reporter_for(stderr, verbose=0, quiet=False, json_mode=False, log=None)
    assert isinstance(reporter, progress.CliReporter) and isinstance(reporter.display, progress.RichDisplay)
    guarded = progress.guard_stdout(stdout, reporter)
    reporter.phase("SEC")
    assert reporter.display.started
    guarded.write("report\n")
    assert reporter.display.paused and not reporter.display.started and stdout.getvalue() == "report\n"
    reporter.phase("later")  # still shown, as a line; no live region again
    assert not reporter.display.started and "later" in stderr.getvalue()
    assert progress.guard_stdout(stdout, progress.Reporter()) is stdout


def test_a_terminal_shows_a_download_as_bytes_of_the_total_and_cells_as_a_count() -> None:
    stream = _Stream(terminal=True)
    display = progress.RichDisplay(stream)
    with display.task("apt-get download ovmf", 5_400_000, "bytes") as download:
        download.update(1_200_000)
        with display.task("compare", 12, "cells") as cells:
            cells.update(3)
            display.progress.refresh()
    shown = stream.getvalue()
    assert "apt-get download ovmf" in shown and "1.2 MB of 5.4 MB" in shown
    assert "compare" in shown and "3/12 cells" in shown and "━" in shown  # the bars
    display.close()
    assert display.progress.task_ids == []  # both gone when they ended


def test_a_run_without_install_gives_python_its_own_ctrl_c_back() -> None:
    """The API's runs borrow SIGINT only while guest code runs (a script's Ctrl-C is Python's own afterwards)."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with interrupt.stoppable(lambda: None):
        assert signal.getsignal(signal.SIGINT) is interrupt.handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_v_before_and_after_the_command_add_up() -> None:
    from lazyaccept.cli import _signs_of_life, build_parser

    parser, _ = build_parser()
    for argv, level in ((["-v", "sec", "-v"], 2), (["sec", "-vv"], 2), (["-v", "sec"], 1), (["sec"], 0)):
        args = parser.parse_args(argv)
        assert args.verbose + getattr(args, "verbose_after_command", 0) == level, argv
    reporter = _signs_of_life(parser.parse_args(["-v", "sec", "-v"]))
    assert reporter.tracing  # -vv: every service call
