"""The result cache: only finished runs are kept, each file whole or absent, a bad file ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazyaccept.matrix import cache as cache_module
from lazyaccept.matrix.cache import ResultCache
from lazyaccept.matrix.cell import CellResult

KEY = "ab" + "0" * 62


def result(status: str = "done", key: str = KEY) -> CellResult:
    record = {"command": "run", "outcome": "kernel-entry", "exit_code": 0} if status == "done" else None
    return CellResult(key, status, 1, 1.5, "local", record, "" if status == "done" else "killed by signal 9")


def test_a_done_result_round_trips(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    assert cache.get(KEY) is None
    assert cache.put(result()) is True
    assert cache.get(KEY) == result()
    assert [p.name for p in tmp_path.rglob("*")] == ["ab", f"{KEY}.json"]  # no temporary file left


@pytest.mark.parametrize("status", ["timeout", "crash", "error"])
def test_only_done_results_are_kept(tmp_path: Path, status: str) -> None:
    cache = ResultCache(tmp_path)
    assert cache.put(result(status)) is False
    assert cache.get(KEY) is None and not any(tmp_path.iterdir())


def test_a_write_that_fails_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ResultCache(tmp_path)

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt  # Ctrl-C after the data is written, before the rename

    monkeypatch.setattr(cache_module.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.put(result())
    assert list((tmp_path / "ab").iterdir()) == []
    assert cache.get(KEY) is None


def test_a_damaged_or_foreign_file_is_a_miss(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    cache.put(result())
    path = cache.path(KEY)
    path.write_text(path.read_text()[:20])  # truncated
    assert cache.get(KEY) is None
    other = "ab" + "1" * 62
    path.write_text(json.dumps({**result().__dict__, "key": other}))  # another cell's result under this name
    assert cache.get(KEY) is None
    path.write_text(json.dumps({**result().__dict__, "status": "crash"}))
    assert cache.get(KEY) is None
