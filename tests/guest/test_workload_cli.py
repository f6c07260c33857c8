"""`lazyaccept workload`: boot to ready and fill memory on the model, from the command line."""

from __future__ import annotations

import json

from lazyaccept.cli import main


def test_fill_reports_time_and_newly_accepted_memory(capsys) -> None:
    assert main(["workload", "-m", "64G", "-smp", "8", "--fill", "8G", "--workers", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["outcome"] == "ok" and out["fill"]["size_bytes"] == 8 << 30
    assert 7 << 30 <= out["fill"]["accepted_bytes"] <= 8 << 30  # chunks accepted on demand while filling
    assert [p["name"] for p in out["phases"]][-1] == "linux-ready"


def test_kernel_without_support_loses_type15_memory(capsys) -> None:
    assert main(["workload", "-m", "64G", "--no-unaccepted-support", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lost_bytes"] == 62 << 30
