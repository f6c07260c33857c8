"""Option 3 shown by a real EFI application compiled from C (tests/cpu/efi_apps/accept_memory_app.c) with
Debian's mingw-w64 cross compiler: it succeeds with the AcceptMemory boot service and fails without it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lazyaccept.boot import BootScenario, run_boot
from lazyaccept.units import GiB

pytestmark = pytest.mark.real_binary
SOURCE = Path(__file__).parent / "efi_apps" / "accept_memory_app.c"
CC = "x86_64-w64-mingw32-gcc"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which(CC)
    assert compiler, f"{CC} is missing: install Debian's gcc-mingw-w64-x86-64-win32 (.ci/run does)"
    out = tmp_path_factory.mktemp("efi") / "accept_memory_app.efi"
    subprocess.run(
        [compiler, "-O2", "-ffreestanding", "-fno-stack-protector", "-fno-stack-check", "-mno-red-zone",
         "-nostdlib", "-shared", "-Wl,--subsystem,10", "-e", "efi_main", "-o", str(out), str(SOURCE)],
        check=True,
    )
    return out


def test_app_succeeds_with_the_accept_memory_boot_service(app: Path) -> None:
    rep = run_boot(BootScenario(ram=64 * GiB, smp=4, upfront="256M", option3=True, efi_app=str(app)))
    assert rep.outcome == "app-exited" and rep.reason.endswith("SUCCESS"), rep.reason
    assert "allocation after AcceptMemory succeeded" in rep.console
    assert rep.accepted_by_actor["loader-option3"] == 512 << 20
    assert any(c["name"] == "AcceptMemory" and c["status"] == "SUCCESS" for c in rep.calls)


def test_app_fails_without_it(app: Path) -> None:
    rep = run_boot(BootScenario(ram=64 * GiB, smp=4, upfront="256M", efi_app=str(app)))
    assert rep.outcome == "app-exited" and rep.reason.endswith("UNSUPPORTED"), rep.reason
    assert "offers no AcceptMemory boot service" in rep.console
    assert "loader-option3" not in rep.accepted_by_actor
