"""Ctrl-C while a guest runs.

Python runs a signal handler between bytecodes of whatever Python code runs, and under unicorn that is a hook
callback called from C: a KeyboardInterrupt raised there leaves through ctypes (a memory hook that raises answers
"unmapped", UC_ERR_MAP; a raw callback prints "Exception ignored on calling ctypes callback function"). So
`handler` takes Ctrl-C (the CLI installs it; `stoppable` puts it in place of Python's default one for a script using
the API): while a CPU runs guest code (inside `stoppable`), Ctrl-C only records the request and stops the CPU
(emu_stop); the run loop raises KeyboardInterrupt once emu_start has returned (`check`). Outside guest code it
raises KeyboardInterrupt at once, as Python's own handler does.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_stoppers: list[Callable[[], None]] = []
_requested = False


def handler(_signum: int, _frame: object) -> None:
    global _requested
    if not _stoppers:
        raise KeyboardInterrupt
    _requested = True
    for stop in list(_stoppers):
        try:
            stop()
        except Exception:  # noqa: BLE001 - a CPU that cannot stop now stops at its next check
            pass


def install() -> Callable[[], None]:
    """Ctrl-C goes through `handler` (Python delivers signals to the main thread only); returns what undoes it.

    Python runs the handler only between bytecodes, and a guest spinning in unicorn without a hook runs none: the C
    handler's byte on the wakeup fd wakes a watcher thread, which stops the CPU (emu_stop, which unicorn's own
    timeout calls from its timer thread too), so that emu_start returns and the handler runs."""
    if not _main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGINT, handler)
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # the C handler must never block on it
    try:
        previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # not the main interpreter
        previous_fd = -1
    watcher = threading.Thread(target=_watch, args=(read_fd,), name="lazyaccept-sigint", daemon=True)
    watcher.start()

    def restore() -> None:
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGINT, previous)
        os.close(write_fd)  # the watcher's read ends
        watcher.join(timeout=1)
        os.close(read_fd)

    return restore


def _watch(read_fd: int) -> None:
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        if signal.SIGINT in data:
            for stop in list(_stoppers):
                try:
                    stop()
                except Exception:  # noqa: BLE001 - the handler tries again on the main thread
                    pass


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def requested() -> bool:
    return _requested


def check() -> None:
    """Raise KeyboardInterrupt when Ctrl-C came while guest code ran (the run loop calls this after each slice)."""
    global _requested
    if _requested:
        _requested = False
        raise KeyboardInterrupt


def reraise_from_hook(uc: object) -> None:
    """After emu_start raised UcError: a KeyboardInterrupt that a hook raised (Python's own handler, a library user
    without `install`) is what happened; unicorn only answered the hook's failure with an error (UC_ERR_MAP)."""
    raised = getattr(uc, "_hook_exception", None)  # where the binding's callbacks (and td_vcpu's raw ones) keep it
    if isinstance(raised, KeyboardInterrupt):
        raise KeyboardInterrupt from None


@contextmanager
def stoppable(stop: Callable[[], None]) -> Iterator[None]:
    """Guest code runs inside: Ctrl-C calls `stop` (e.g. the Uc's emu_stop) rather than raising in a hook; on leaving
    (after the CPU returned), a request made meanwhile is raised as KeyboardInterrupt."""
    check()  # a request made just before: the slice would not see its stop
    borrowed = signal.getsignal(signal.SIGINT) is signal.default_int_handler and _main_thread()
    if borrowed:
        # A script calling the API without install(): the same behaviour outside guest code, this one inside; given
        # back on leaving, so that the script's Ctrl-C is Python's own again.
        signal.signal(signal.SIGINT, handler)
    _stoppers.append(stop)
    try:
        yield
    finally:
        _stoppers.remove(stop)
        if borrowed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    check()
