"""`lazyaccept tdvf`: edk2's own TDVF (Debian's OVMF.fd 2025.02) from the reset vector on the TDX module, through
the command a user runs: its JSON, its outcome and exit code, and bad input refused before anything runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lazyaccept import __version__
from lazyaccept.cli import JSON_SCHEMA_VERSION, main
from lazyaccept.exitcodes import EXIT_BAD_INPUT, EXIT_BOOTED
from lazyaccept.firmware.sec.policy import UpfrontPolicy
from lazyaccept.firmware.sec.sec import run_sec
from lazyaccept.rangemap import RangeMap
from lazyaccept.tdx.module import PageState
from lazyaccept.units import GiB
from lazyaccept.vmm.td import TdConfig, build_td

pytestmark = pytest.mark.real_binary


@pytest.fixture(scope="module")
def shell_run() -> tuple[int, dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "lazyaccept", "tdvf", "--json", "--max-wall", "200"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    return out.returncode, json.loads(out.stdout)


def test_ovmf_reaches_the_shell_and_says_so(shell_run: tuple[int, dict[str, Any]]) -> None:
    code, data = shell_run
    assert list(data)[:3] == ["schema", "lazyaccept", "command"]
    assert (data["schema"], data["lazyaccept"], data["command"]) == (JSON_SCHEMA_VERSION, __version__, "tdvf")
    assert code == data["exit_code"] == EXIT_BOOTED and data["outcome"] == "shell", data["detail"]
    assert "UEFI Interactive Shell" in data["console"] and "BdsDxe" in data["console"]
    assert data["tdcalls"]["MEM_PAGE_ACCEPT"] == 1510 and data["tdvmcalls"]["MAP_GPA"] > 0
    assert len(data["measurement"]["mrtd"]) == 96 and data["fw_cfg_dma"] is True


def test_the_run_has_the_boot_phases_in_order_with_the_firmwares_own_work(
    shell_run: tuple[int, dict[str, Any]],
) -> None:
    _, data = shell_run
    if data["instructions"] is None:
        pytest.skip(data["notes"][0])
    phases = [p["name"] for p in data["phases"]]
    assert phases == ["reset vector", "SEC", "PEI", "DXE", "BDS"]
    assert all(p["instructions"] > 0 for p in data["phases"])
    assert sum(p["instructions"] for p in data["phases"]) == data["instructions"]
    assert sum(p["virtual_ns"] for p in data["phases"]) == data["virtual_ns"]
    # SEC accepts all RAM below 4 GiB (less the VMM's ADDed pages); the accepting module is SecMain
    sec = data["phases"][phases.index("SEC")]
    assert sec["accepted_bytes"] == data["accepted_by_actor"]["SecMain"] > 0
    assert set(data["accepted_by_actor"]) == {"SecMain", "vmm"}
    assert data["instructions_by_module"]["DxeCore"] > 0 and "BdsDxe" in data["instructions_by_module"]


def test_what_the_real_firmware_accepted_is_what_the_python_sec_accepts(
    shell_run: tuple[int, dict[str, Any]], tmp_path: Path
) -> None:
    _, data = shell_run
    model = build_td(TdConfig(ram_size=2 * GiB, vcpus=1, firmware_path=data["firmware"]))
    run_sec(model, UpfrontPolicy("below-4g"))
    # SEC's accepts, less what OVMF later shared with the VMM (MapGPA: the private pages were removed).
    shared = RangeMap(False, limit=model.tdx.private_limit)
    for s, e in data["shared_ranges"]:
        shared.set(s, e, True)
    accepted = [(s, e) for s, e, state in model.tdx.state_ranges() if state == PageState.ACCEPTED]
    expected = [[s, e] for a, b in accepted for s, e, is_shared in shared.runs(a, b) if not is_shared]
    assert data["accepted_ranges"] == expected
    assert data["accepted_bytes"] == sum(e - s for s, e in expected)


def test_an_image_that_fails_qemus_checks_is_refused_before_it_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "OVMF.fd"
    broken.write_bytes(b"\xff" * 0x1000)
    assert main(["tdvf", str(broken)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tdvf: error:" in err[0]
    assert main(["tdvf", str(tmp_path / "missing.fd")]) == EXIT_BAD_INPUT


def test_a_shim_without_its_kernel_or_a_snapshot_with_a_shim_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shim = tmp_path / "shimx64.efi"
    shim.write_bytes(b"MZ")
    cases = (
        (["tdvf", "--shim", str(shim)], "--shim needs --kernel"),
        (["tdvf", "-shim", str(tmp_path / "missing.efi"), "--kernel", str(shim)], "--shim"),
        (["tdvf", "--shim", str(shim), "--kernel", str(shim), "--snapshot-save", str(tmp_path / "s")],
         "starts from the reset vector"),
    )
    for argv, message in cases:
        assert main(argv) == EXIT_BAD_INPUT
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
