"""The matrix's result cache: one JSON file per finished cell, named by the cell's key (the hash of its binaries,
its scenario and lazyaccept's version), so that a rerun or a resumed sweep runs only what is missing.

Only "done" results are kept (a timeout or a crash runs again). A file is written whole or not at all (a temporary
file, fsync, rename, fsync of the folder), so a sweep stopped at any instant (Ctrl-C, a killed machine) leaves
every file either absent or complete; a file that does not read back as its key's result is ignored.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from lazyaccept.files import atomic_open
from lazyaccept.matrix.cell import CellResult


class ResultCache:
    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> CellResult | None:
        try:
            data = json.loads(self.path(key).read_text())
            result = CellResult(**data)
        except (OSError, ValueError, TypeError):
            return None
        if result.key != key or result.status != "done" or not isinstance(result.record, dict):
            return None
        return result

    def put(self, result: CellResult) -> bool:
        """Keep a "done" result (True); any other is not kept (False)."""
        if result.status != "done":
            return False
        target = self.path(result.key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(target) as f:  # temp + rename: whole or absent
            f.write(json.dumps(asdict(result)).encode())
            f.flush()
            os.fsync(f.fileno())  # the data before the rename, so that a crash of the machine cannot keep a torn file
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a crash of the machine
        finally:
            os.close(folder)
        return True
