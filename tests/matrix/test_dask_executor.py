"""The matrix on Dask: real cells (a 4 GiB direct boot of Debian's 6.12 stub with the model OS, about a second
each) on a 2-worker LocalCluster: files by content (verified on the workers, not sent twice), a worker killed
mid-sweep, a cell that kills its workers, a file whose bytes do not match its hash or that cannot be read, the
outer guard, a scheduler that cannot be reached, Ctrl-C."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from lazyaccept import binaries
from lazyaccept.errors import InputError
from lazyaccept.matrix.cell import CellResult, CellTask, FileRef
from lazyaccept.matrix.dask_executor import FILES_DIR, DaskExecutor

pytestmark = pytest.mark.real_binary


@pytest.fixture(scope="module")
def kernel_deb() -> FileRef:
    path = binaries.BinaryStore(allow_download=False).deb(binaries.LINUX)
    return FileRef(binaries.LINUX.sha256, path.name, path.stat().st_size, str(path), "deb")


def cells(kernel: FileRef, n: int, *, tag: str = "") -> list[CellTask]:
    """n distinct 4G direct boots (vCPUs 1..n): distinct scenarios, so distinct keys."""
    out = []
    for i in range(n):
        scenario = {"td": {"ram": "4G", "vcpus": i + 1}, "payload": {"kernel": "debian:linux-6.12"}}
        key = hashlib.sha256(f"{tag}{scenario}{kernel.sha256}".encode()).hexdigest()
        out.append(CellTask(key, f"4G/vcpus={i + 1}{tag}", {"vcpus": i + 1}, scenario, (kernel,), 120.0))
    return out


def sweep(executor: DaskExecutor, tasks: list[CellTask]) -> list[CellResult]:
    results: list[CellResult] = []
    executor.run(tasks, results.append)
    return results


def files_on_workers(dask_worker, ref: FileRef) -> str | None:
    path = Path(dask_worker.local_directory) / FILES_DIR / ref.sha256 / ref.name
    return binaries.sha256_of(path) if path.is_file() else None


def test_four_cells_on_two_workers_each_once_with_verified_files(kernel_deb):
    tasks = cells(kernel_deb, 4)
    with DaskExecutor(workers=2) as executor:
        assert len(executor.client.scheduler_info()["workers"]) == 2
        results = sweep(executor, tasks)
        on_disk = executor.client.run(files_on_workers, ref=kernel_deb)
    assert sorted(r.key for r in results) == sorted(t.key for t in tasks)
    for r in results:
        assert r.status == "done", r.log
        assert r.attempts == 1
        assert r.record is not None and r.record["outcome"] == "kernel-entry"
    vcpus = sorted(r.record["scenario"]["vcpus"] for r in results if r.record)
    assert vcpus == [1, 2, 3, 4]
    # every worker that ran a cell holds the package under its own directory, with the right content
    for worker in {r.worker for r in results}:
        assert on_disk[worker] == kernel_deb.sha256
    assert executor.client is None and executor.cluster is None  # closed on leaving the block


def test_a_worker_killed_mid_sweep_loses_and_duplicates_nothing(kernel_deb):
    tasks = cells(kernel_deb, 6, tag="/loss")
    results: list[CellResult] = []
    killed: list[str] = []
    with DaskExecutor(workers=2) as executor:
        client = executor.client
        pids = client.run(os.getpid)

        def on_result(result: CellResult) -> None:
            results.append(result)
            if killed:
                return
            # kill a worker process in the middle of a cell (the nanny starts a new one): the one that reported,
            # which has just started its next cell, so that the cell cannot end between the look and the kill
            busy = [w for w, keys in client.processing().items() if keys]
            for worker in sorted(busy, key=lambda w: w != result.worker):
                os.kill(pids[worker], signal.SIGKILL)
                killed.append(worker)
                return

        executor.run(tasks, on_result)
    assert killed
    assert sorted(r.key for r in results) == sorted(t.key for t in tasks)
    assert all(r.status == "done" for r in results), [r.log for r in results]
    assert any(r.attempts == 2 for r in results)  # the cell on the killed worker ran again elsewhere


def test_a_cell_that_keeps_killing_its_worker_is_a_crash_and_the_sweep_goes_on(kernel_deb):
    tasks = cells(kernel_deb, 3, tag="/crash")
    target = tasks[0]
    results: list[CellResult] = []
    with DaskExecutor(workers=2) as executor:
        client = executor.client
        stop = threading.Event()

        def killer() -> None:
            # kill whichever worker runs the target cell, until Dask gives up on it (allowed_failures=1: twice)
            while not stop.is_set():
                for worker, keys in client.processing().items():
                    if any(target.key in str(k) for k in keys):
                        try:
                            pid = client.run(os.getpid, workers=[worker])[worker]
                            os.kill(pid, signal.SIGKILL)
                        except Exception:  # noqa: BLE001 - the worker went away between the two looks
                            pass
                time.sleep(0.2)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        try:
            executor.run(tasks, results.append)
        finally:
            stop.set()
            thread.join()
    by_key = {r.key: r for r in results}
    assert len(results) == len(by_key) == 3
    crash = by_key[target.key]
    assert crash.status == "crash" and crash.attempts == 2
    assert target.label in crash.log and "workers died" in crash.log
    assert all(by_key[t.key].status == "done" for t in tasks[1:])


def test_a_file_whose_bytes_do_not_match_its_hash_is_an_error_naming_it(kernel_deb, tmp_path):
    wrong = hashlib.sha256(b"not the kernel package").hexdigest()
    bad_ref = FileRef(wrong, kernel_deb.name, kernel_deb.size, kernel_deb.path, "deb")
    gone_ref = FileRef("1" * 64, "gone.deb", 1, str(tmp_path / "gone.deb"), "deb")
    [good] = cells(kernel_deb, 1, tag="/good")
    bad = CellTask("bad" + wrong[:8], "4G/corrupt", {}, good.scenario, (bad_ref,), 120.0)
    gone = CellTask("gone", "4G/gone", {}, good.scenario, (kernel_deb, gone_ref), 120.0)
    with DaskExecutor(workers=2) as executor:
        results = {r.key: r for r in sweep(executor, [bad, good, gone])}
        on_disk = executor.client.run(files_on_workers, ref=bad_ref)
    assert results[bad.key].status == "error"
    assert kernel_deb.name in results[bad.key].log and wrong in results[bad.key].log
    assert results[good.key].status == "done"
    assert set(on_disk.values()) == {None}  # nothing written under the wrong hash
    # a file the client cannot read is an error of the cells that need it
    assert results[gone.key].status == "error"
    assert results[gone.key].log == f"4G/gone: cannot read gone.deb ({gone_ref.path}): No such file or directory"


def test_a_scheduler_that_cannot_be_reached_is_one_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    executor = DaskExecutor(scheduler=f"tcp://127.0.0.1:{port}", connect_timeout_s=1)
    with pytest.raises(InputError, match=rf"^cannot reach the Dask scheduler tcp://127.0.0.1:{port}: .*--scheduler\)$"):
        executor.run([], lambda r: None)
    assert executor.client is None
    with pytest.raises(InputError, match=r"^not a Dask scheduler address: missing port .*\(field --scheduler\)$"):
        DaskExecutor(scheduler="scheduler-host").run([], lambda r: None)


def test_ctrl_c_cancels_the_rest_and_closes_the_cluster(kernel_deb):
    tasks = cells(kernel_deb, 4, tag="/ctrl-c")
    results: list[CellResult] = []

    def on_result(result: CellResult) -> None:
        results.append(result)
        raise KeyboardInterrupt

    executor = DaskExecutor(workers=2)
    with pytest.raises(KeyboardInterrupt):
        executor.run(tasks, on_result)
    assert len(results) == 1 and results[0].status == "done"
    assert executor.client is None and executor.cluster is None


def test_the_outer_guard_reports_a_cell_past_it_as_a_timeout_and_restarts_its_worker(kernel_deb, monkeypatch):
    """run_cell keeps the budget itself; the guard is for a run_cell that does not return. Shrunk here to 0.3 s
    past first sight (checked every 0.2 s) so that a real cell of seconds (64 GiB, a 1 GiB initrd) outlives it."""
    from lazyaccept.matrix import dask_executor

    monkeypatch.setattr(dask_executor, "GUARD_FACTOR", 0.0)
    monkeypatch.setattr(dask_executor, "GUARD_SLACK_S", 0.3)
    monkeypatch.setattr(dask_executor, "POLL_S", 0.2)
    scenario = {
        "td": {"ram": "64G", "vcpus": 2},
        "firmware": {"upfront": "256M", "on_demand": [1]},
        "payload": {"kernel": "debian:linux-6.12", "initrd_size": "1G"},
    }
    slow = CellTask("guard" + "0" * 59, "64G/1G-initrd", {}, scenario, (kernel_deb,), 120.0)
    with DaskExecutor(workers=1) as executor:
        before = set(executor.client.scheduler_info()["workers"])
        results = sweep(executor, [slow])
        after = set(executor.client.scheduler_info()["workers"])
    [result] = results
    assert result.status == "timeout" and "(outer guard)" in result.log and result.worker in before
    assert result.worker not in after  # the worker was restarted: its thread could not be stopped otherwise


def test_a_second_sweep_sends_only_what_a_worker_lacks(kernel_deb, monkeypatch):
    from lazyaccept.matrix import dask_executor

    sent: list[list[str]] = []
    scatter = dask_executor._Sweep.scatter

    def spy(self, shas):
        shas = list(shas)
        sent.append(shas)
        return scatter(self, shas)

    def forget(dask_worker, ref):
        (Path(dask_worker.local_directory) / FILES_DIR / ref.sha256 / ref.name).unlink()

    monkeypatch.setattr(dask_executor._Sweep, "scatter", spy)
    results = []
    with DaskExecutor(workers=2) as executor:
        client = executor.client
        results += sweep(executor, cells(kernel_deb, 4, tag="/first"))
        assert sent == [[kernel_deb.sha256]]
        assert set(client.run(files_on_workers, ref=kernel_deb).values()) == {kernel_deb.sha256}  # on both
        results += sweep(executor, cells(kernel_deb, 4, tag="/second"))
        assert sent[1] == []  # both workers hold it: nothing sent
        client.run(forget, ref=kernel_deb, workers=[sorted(client.scheduler_info()["workers"])[0]])
        results += sweep(executor, cells(kernel_deb, 4, tag="/third"))
        assert sent[2] == [kernel_deb.sha256]  # one worker lacks it: sent
        # workers that lack it although the client believes them to hold it (as one that joined since would):
        # their cells answer FilesMissing, the client sends the file once and submits them again
        client.run(forget, ref=kernel_deb)
        monkeypatch.setattr(dask_executor._Sweep, "everywhere", lambda self: set(self.refs))
        results += sweep(executor, cells(kernel_deb, 4, tag="/fourth"))
        assert sent[3] == [] and [s for s in sent[4:] if s] == [[kernel_deb.sha256]]  # sent once
    assert len(results) == 16 and all(r.status == "done" and r.attempts == 1 for r in results), results
