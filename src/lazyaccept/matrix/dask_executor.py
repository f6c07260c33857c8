"""Run the matrix's cells on Dask distributed: a LocalCluster with one worker process per core, or an existing
cluster named by its scheduler's address (`dask scheduler` / `dask worker`, or any Dask deployer).

Binaries travel by content: each distinct file is read once on the client and scattered once to every worker
(hash=False: Dask does not hash the bytes again; broadcast: peers copy it from each other). The cell's task
depends on its scattered files, so Dask hands it the bytes from the worker's own replica (the LocalCluster this
starts runs without the active memory manager, which would drop replicas). The worker writes the bytes under its
local directory as lazyaccept-files/<sha256>/<name> (temporary name, then rename) once their SHA-256 matches, and
reuses that file for every later cell. A scattered file whose holders all die is lost (Dask forgets data it
cannot recompute, and cancels the cells waiting on it): the client scatters it again and resubmits those cells.
A file every worker holds already (an earlier sweep on the same cluster) is not sent again; a worker that lacks
it all the same (one that joined since) answers FilesMissing, and the client sends it then and resubmits.

A worker that dies mid-cell: the scheduler runs the cell again on another worker (distributed 2026.11.0,
Scheduler.remove_worker counts the death against the task); after `allowed_failures` + 1 deaths the cell is
reported as a crash (KilledWorker). Every cell is reported once (results are keyed by the cell key).
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin

from lazyaccept.binaries import sha256_of
from lazyaccept.errors import InputError
from lazyaccept.files import atomic_open
from lazyaccept.matrix.cell import CellResult, CellTask, FileRef, run_cell

FILES_DIR = "lazyaccept-files"
RESUBMITS = 3  # times a cell cancelled by a lost file is resubmitted before it is an error
GUARD_FACTOR = 2.0  # the outer guard: a cell running longer than this x its budget + GUARD_SLACK_S is a timeout
GUARD_SLACK_S = 60.0
POLL_S = 2.0  # how often the client looks for a cell past its outer guard


class FileMismatch(Exception):
    """Bytes that do not hash to the FileRef's SHA-256."""


class FilesMissing(Exception):
    """A worker lacks files the client did not send, believing every worker had them (args[0]: their sha256s)."""

    @property
    def shas(self) -> list[str]:
        return list(self.args[0])

    def __str__(self) -> str:
        return "files neither on this worker nor sent to it: " + ", ".join(self.shas)


# Per worker process: files already hashed, by (path, size, mtime_ns, inode), so that a reused file is verified
# once per process and not before every cell (hashing a 35 MB kernel package costs ~0.1 s, 4 % of a 4G boot).
_verified: set[tuple[str, int, int, int]] = set()
_verified_lock = threading.Lock()


def _stamp(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ino)


def _mismatch(ref: FileRef, actual: str, size: int) -> FileMismatch:
    return FileMismatch(
        f"{ref.name}: the bytes received hash to sha256 {actual} ({size} bytes), not the expected {ref.sha256} "
        f"({ref.size} bytes) of {ref.path}"
    )


def _present(ref: FileRef, store: Path) -> Path | None:
    """The materialised file of ref when it is there and verified (in this process), else None."""
    path = store / ref.sha256 / ref.name
    try:
        stamp = _stamp(path)
    except FileNotFoundError:
        return None
    with _verified_lock:
        if stamp in _verified:
            return path
    if stamp[1] == ref.size and sha256_of(path) == ref.sha256:
        with _verified_lock:
            _verified.add(stamp)
        return path
    path.unlink(missing_ok=True)  # a damaged copy: fetch it again
    return None


def _write(ref: FileRef, data: bytes, store: Path) -> Path:
    actual = hashlib.sha256(data).hexdigest()
    if actual != ref.sha256 or len(data) != ref.size:
        raise _mismatch(ref, actual, len(data))
    folder = store / ref.sha256
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ref.name
    with atomic_open(path) as f:  # a concurrent cell sees no file or the whole verified one
        f.write(data)
    with _verified_lock:
        _verified.add(_stamp(path))
    return path


def materialise(refs: Iterable[FileRef], blobs: dict[str, bytes], store: Path) -> dict[str, Path]:
    """sha256 -> verified local path of every ref under store, written from blobs (sha256 -> bytes) if missing;
    FilesMissing names those neither there nor sent."""
    out: dict[str, Path] = {}
    missing = []
    for ref in refs:
        path = _present(ref, store)
        if path is None and ref.sha256 in blobs:
            path = _write(ref, blobs[ref.sha256], store)
        if path is None:
            missing.append(ref.sha256)
        else:
            out.setdefault(ref.sha256, path)
    if missing:
        raise FilesMissing(missing)
    return out


def files_here(dask_worker: Any, refs: list[tuple[str, str, int]]) -> list[str]:
    """On a worker: the sha256s of refs (sha256, name, size) already under its directory (checked at use)."""
    store = Path(dask_worker.local_directory) / FILES_DIR
    here = []
    for sha, name, size in refs:
        try:
            if (store / sha / name).stat().st_size == size:
                here.append(sha)
        except OSError:
            pass
    return here


def cell_on_worker(task: CellTask, blobs: dict[str, bytes]) -> CellResult:
    """The Dask task of one cell: materialise its files on this worker, then run it (run_cell)."""
    from distributed import get_worker

    worker = get_worker()
    t0 = time.monotonic()
    try:
        files = materialise(task.files, blobs, Path(worker.local_directory) / FILES_DIR)
    except FileMismatch as exc:
        return CellResult(task.key, "error", 1, time.monotonic() - t0, worker.address, None, str(exc))
    return run_cell(task, files, worker=worker.address)


def _suspicious(dask_scheduler: Any, keys: list[str]) -> dict[str, int]:
    """On the scheduler: how many workers died running each key (Scheduler.remove_worker's count)."""
    return {k: dask_scheduler.tasks[k].suspicious for k in keys if k in dask_scheduler.tasks}


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


class _IgnoreCtrlC(WorkerPlugin):
    """In the worker processes of the LocalCluster: Ctrl-C on a terminal reaches the whole process group, but the
    client stops the sweep and closes the cluster itself; a worker taking it would print its own traceback."""

    def setup(self, worker: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)


class DaskExecutor:
    """Executor (lazyaccept.matrix.cell) on Dask distributed.

    workers: worker processes of the LocalCluster it starts (default one per core), ignored with scheduler.
    scheduler: address of an existing cluster's scheduler (tcp://HOST:PORT); None starts a LocalCluster.
    allowed_failures: worker deaths a cell may cause and still be run again (on a cluster this starts).
    connect_timeout_s: how long to try to reach the scheduler.

    Use as a context manager to start the cluster before run() (then `dashboard` is known early) and close it at
    the end; run() alone starts what it needs and closes it before returning.
    """

    def __init__(
        self,
        workers: int | None = None,
        scheduler: str | None = None,
        *,
        allowed_failures: int = 1,
        connect_timeout_s: float = 10.0,
    ):
        if workers is not None and workers < 1:
            raise InputError(f"workers: need at least 1, got {workers}", field="--workers")
        self.workers = workers or _default_workers()
        self.scheduler = scheduler
        self.allowed_failures = allowed_failures
        self.connect_timeout_s = connect_timeout_s
        self.dashboard: str | None = None
        self.client: Any = None
        self.cluster: Any = None

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the LocalCluster or connect to the scheduler (idempotent)."""
        if self.client is not None:
            return
        import dask
        from distributed import Client

        if self.scheduler is not None:
            from distributed.comm.addressing import get_address_host_port, parse_address
            from distributed.comm.registry import get_backend

            try:  # before Client(): a client that failed on a malformed address hangs 20 s closing at exit
                get_backend(parse_address(self.scheduler)[0])
                get_address_host_port(self.scheduler)
            except ValueError as exc:
                raise InputError(f"not a Dask scheduler address: {exc}", field="--scheduler") from None
            try:
                self.client = Client(self.scheduler, timeout=self.connect_timeout_s, set_as_default=False)
            except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, ValueError for a malformed address
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                what = f"{self.scheduler}: {reason}" if self.scheduler in reason else reason
                raise InputError(f"cannot reach the Dask scheduler {what}", field="--scheduler") from None
        else:
            from distributed import LocalCluster

            try:
                with dask.config.set({"distributed.scheduler.active-memory-manager.start": False}):
                    self.cluster = LocalCluster(
                        n_workers=self.workers,
                        threads_per_worker=1,
                        processes=True,
                        dashboard_address=":0",  # the HTTP server starts anyway: a free port, not 8787
                        silence_logs=logging.CRITICAL,  # a killed worker is reported as the cell's crash, not logged
                        scheduler_kwargs={"allowed_failures": self.allowed_failures},
                    )
                self.client = Client(self.cluster, set_as_default=False)
                self.client.register_plugin(_IgnoreCtrlC(), name="lazyaccept-ignore-ctrl-c")  # workers to come too
            except BaseException:
                self.close()
                raise
        # the scheduler's HTTP server always runs; it serves a dashboard only where bokeh is installed
        services = self.client.scheduler_info().get("services", {})
        try:
            has_bokeh = "dashboard" in services and self.client.run_on_scheduler(_has_bokeh)
        except Exception:  # noqa: BLE001 - a scheduler without lazyaccept or that runs no functions: say nothing
            has_bokeh = False
        self.dashboard = self.client.dashboard_link if has_bokeh else None

    def close(self) -> None:
        """Close the client and the cluster this started (an external cluster keeps running)."""
        client, cluster = self.client, self.cluster
        self.client = self.cluster = None
        for thing in (client, cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001 - closing after a failure: nothing more to do
                    pass

    def __enter__(self) -> DaskExecutor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the sweep --------------------------------------------------------------------------------------------

    def run(self, tasks: list[CellTask], on_result: Callable[[CellResult], None]) -> None:
        """Run every task; on_result once per distinct cell key, in completion order, from this thread."""
        owned = self.client is None
        self.start()
        try:
            _Sweep(self.client, tasks, on_result).run()
        finally:
            if owned:
                self.close()


class _Sweep:
    """One run(): the scattered files, the futures in flight, and what has been reported."""

    def __init__(self, client: Any, tasks: list[CellTask], on_result: Callable[[CellResult], None]):
        self.client = client
        self.on_result = on_result
        self.tasks: dict[str, CellTask] = {}
        for task in tasks:
            self.tasks.setdefault(task.key, task)  # the same key is the same cell by content: run and report once
        self.refs: dict[str, FileRef] = {}
        for task in self.tasks.values():
            for ref in task.files:
                self.refs.setdefault(ref.sha256, ref)
        self.file_futures: dict[str, Any] = {}
        self.unreadable: dict[str, str] = {}  # sha256 -> why the client could not read the file
        self.pending: dict[Any, str] = {}  # future -> cell key
        self.resubmits: dict[str, int] = {}  # cell key -> times submitted again (a lost or a missing file)
        self.started: dict[str, tuple[str, float]] = {}  # cell key -> (worker, first seen running there)
        self.reported: set[str] = set()
        self.token = uuid.uuid4().hex[:8]

    def scatter(self, shas: Iterable[str]) -> None:
        """Read each file once and scatter it to every worker: with the file on one worker only, Dask would keep
        the cells on that worker rather than move tens of MB (decide_worker weighs the transfer), and a worker
        that joins later fetches it from a peer for its first cell."""
        for sha in shas:
            ref = self.refs[sha]
            try:
                data = Path(ref.path).read_bytes()
            except OSError as exc:  # an error of the cells that need it, not of the sweep
                self.unreadable[sha] = f"cannot read {ref.name} ({ref.path}): {exc.strerror or exc}"
                continue
            [future] = self.client.scatter([data], hash=False, broadcast=True)
            self.file_futures[sha] = future

    def everywhere(self) -> set[str]:
        """The files every worker holds already (from an earlier sweep): not sent again. A worker that joins
        later and lacks one reports FilesMissing, and the client sends it then."""
        refs = [(r.sha256, r.name, r.size) for r in self.refs.values()]
        try:
            have = self.client.run(files_here, refs=refs)
        except Exception:  # noqa: BLE001 - workers without lazyaccept's module fail later, naming it
            return set()
        return set.intersection(*map(set, have.values())) if have else set()

    def dask_key(self, cell_key: str) -> str:
        n = self.resubmits.get(cell_key, 0)
        return f"lazyaccept-cell-{cell_key}" + (f"-resubmit{n}-{self.token}" if n else "")

    def submit(self, task: CellTask) -> None:
        missing = [self.unreadable[r.sha256] for r in task.files if r.sha256 in self.unreadable]
        if missing:
            self.report(CellResult(task.key, "error", 1, 0.0, "", None, f"{task.label}: {'; '.join(missing)}"))
            return
        # dependencies: Dask hands the task the bytes (from the worker's own replica) of the files it sent
        blobs = {r.sha256: self.file_futures[r.sha256] for r in task.files if r.sha256 in self.file_futures}
        future = self.client.submit(cell_on_worker, task, blobs, key=self.dask_key(task.key), pure=False)
        self.pending[future] = task.key

    def report(self, result: CellResult) -> None:
        if result.key in self.reported:
            return
        self.reported.add(result.key)
        self.on_result(result)

    def run(self) -> None:
        with self.client.as_current():  # distributed.wait finds its client there
            self._run()

    def _run(self) -> None:
        from distributed import wait
        from distributed.client import FuturesCancelledError

        try:
            everywhere = self.everywhere()
            self.scatter(sha for sha in self.refs if sha not in everywhere)
            for task in self.tasks.values():
                self.submit(task)
            last_guard = time.monotonic()
            while self.pending:
                try:
                    done, _ = wait(list(self.pending), timeout=POLL_S, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    done = set()
                except FuturesCancelledError:  # wait() raises for a cancelled one; collect() handles them
                    done = {f for f in self.pending if f.status != "pending"}
                if done:
                    self.collect(done)
                if time.monotonic() - last_guard >= POLL_S:
                    self.guard()
                    last_guard = time.monotonic()
        except BaseException:  # Ctrl-C or a failure: what was reported stays the caller's; stop the rest
            try:
                self.client.cancel(list(self.pending) + list(self.file_futures.values()), force=True)
            except Exception:  # noqa: BLE001 - the cluster may be the thing that failed
                pass
            raise
        finally:
            self.pending.clear()
            self.file_futures.clear()

    def collect(self, done: Iterable[Any]) -> None:
        from distributed import KilledWorker

        done = [f for f in done if f in self.pending]
        try:
            deaths = self.client.run_on_scheduler(_suspicious, keys=[f.key for f in done])
        except Exception:  # noqa: BLE001 - a scheduler that runs no functions: count no deaths
            deaths = {}
        for future in done:
            key = self.pending.pop(future)
            task = self.tasks[key]
            self.started.pop(key, None)
            extra = deaths.get(future.key, 0)
            if future.status == "finished":
                result = future.result()
                result.attempts += extra  # the runs a worker's death cut short (a resubmission never ran)
                self.report(result)
                continue
            if future.status == "cancelled":  # every worker holding one of its files died: send it again
                if self.resubmits.get(key, 0) < RESUBMITS:
                    self.resubmits[key] = self.resubmits.get(key, 0) + 1
                    lost = {r.sha256 for r in task.files if r.sha256 in self.file_futures}
                    self.scatter(sha for sha in lost if self.file_futures[sha].status != "finished")
                    self.submit(task)
                else:
                    log = f"{task.label}: cancelled by the cluster {RESUBMITS + 1} times (its files kept being lost)"
                    self.report(CellResult(key, "error", 1 + extra, 0.0, "", None, log))
                continue
            exc = future.exception()
            if isinstance(exc, FilesMissing) and self.resubmits.get(key, 0) < RESUBMITS:
                self.resubmits[key] = self.resubmits.get(key, 0) + 1
                self.scatter(sha for sha in exc.shas if sha not in self.file_futures)
                self.submit(task)
                continue
            if isinstance(exc, KilledWorker):
                worker = getattr(exc.last_worker, "address", "")
                log = f"{task.label}: {exc}"
                self.report(CellResult(key, "crash", exc.allowed_failures + 1, 0.0, worker, None, log))
                continue
            tb = "".join(traceback.format_exception(type(exc), exc, future.traceback()))
            self.report(CellResult(key, "error", 1 + extra, 0.0, "", None, tb[-4000:]))

    def guard(self) -> None:
        """The outer guard: a cell running past GUARD_FACTOR x its budget + GUARD_SLACK_S is a timeout, and its
        worker is restarted (a Python thread cannot be stopped; run_cell enforces the budget itself first)."""
        try:
            processing = self.client.processing()
        except Exception:  # noqa: BLE001 - look again at the next poll
            return
        now = time.monotonic()
        by_dask_key = {f.key: f for f in self.pending}
        for worker, keys in processing.items():
            for dkey in keys:
                future = by_dask_key.get(dkey)
                if future is None:
                    continue
                key = self.pending[future]
                seen = self.started.get(key)
                if seen is None or seen[0] != worker:
                    self.started[key] = (worker, now)
                    continue
                limit = GUARD_FACTOR * self.tasks[key].budget_s + GUARD_SLACK_S
                if now - seen[1] <= limit:
                    continue
                del self.pending[future]
                self.started.pop(key, None)
                self.client.cancel([future], force=True)
                try:
                    self.client.restart_workers([worker])
                except Exception:  # noqa: BLE001 - a worker without a nanny cannot be restarted: it stays busy
                    pass
                log = f"{self.tasks[key].label}: no result after {now - seen[1]:.0f} s on {worker} (outer guard)"
                self.report(CellResult(key, "timeout", 1, now - seen[1], worker, None, log))
