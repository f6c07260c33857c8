"""Ctrl-C while a guest runs.

Python runs a signal handler between bytecodes of whatever Python code runs, and under unicorn that is a hook
callback called from C: a KeyboardInterrupt raised there leaves through ctypes (a memory hook that raises answers
"unmapped", UC_ERR_MAP; a raw callback prints "Exception ignored on calling ctypes callback function"). So the CLI
installs `handler`: while a CPU runs guest code (inside `stoppable`), Ctrl-C only records the request and stops the
CPU (emu_stop); the run loop raises KeyboardInterrupt once emu_start has returned (`check`). Outside guest code it
raises KeyboardInterrupt at once, as Python's own handler does.
"""

from __future__ import annotations

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


def install() -> Callable | int | None:
    """Ctrl-C goes through `handler` (the main thread only, where Python delivers signals); the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, handler)


def requested() -> bool:
    return _requested


def check() -> None:
    """Raise KeyboardInterrupt when Ctrl-C came while guest code ran (the run loop calls this after each slice)."""
    global _requested
    if _requested:
        _requested = False
        raise KeyboardInterrupt


@contextmanager
def stoppable(stop: Callable[[], None]) -> Iterator[None]:
    """Guest code runs inside: Ctrl-C calls `stop` (e.g. the Uc's emu_stop) rather than raising in a hook; on leaving
    (after the CPU returned), a request made meanwhile is raised as KeyboardInterrupt."""
    check()  # a request made just before: the slice would not see its stop
    _stoppers.append(stop)
    try:
        yield
    finally:
        _stoppers.remove(stop)
    check()
