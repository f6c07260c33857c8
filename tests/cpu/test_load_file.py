"""LoadImage from a device path no Simple File System serves, as edk2's DxeCore falls back (CoreLoadImageCommon ->
GetFileBufferByFilePath: LoadFile2 when BootPolicy is FALSE, then LoadFile, EFI_NOT_FOUND when neither gives the
file), and the name an image loaded from a buffer gets in the call log. A real EFI application compiled from C
(tests/cpu/efi_apps/load_file_app.c, Debian's mingw-w64) installs both protocols with functions of its own, which the
firmware calls back on the one CPU."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lazyaccept.boot import BootScenario, run_boot
from lazyaccept.units import GiB

pytestmark = pytest.mark.real_binary
SOURCE = Path(__file__).parent / "efi_apps" / "load_file_app.c"
CC = "x86_64-w64-mingw32-gcc"
NOT_FOUND = "0x800000000000000e"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which(CC)
    assert compiler, f"{CC} is missing: install Debian's gcc-mingw-w64-x86-64-win32 (.ci/run does)"
    out = tmp_path_factory.mktemp("efi") / "load_file_app.efi"
    subprocess.run(
        [compiler, "-O2", "-ffreestanding", "-fno-stack-protector", "-fno-stack-check", "-mno-red-zone",
         "-nostdlib", "-shared", "-Wl,--subsystem,10", "-e", "efi_main", "-Wl,--build-id",
         "-Wl,--pdb=load_file_app", "-o", str(out), str(SOURCE)],
        check=True,
    )
    return out


@pytest.mark.parametrize("cpu", ["auto", "unicorn"])
def test_load_image_falls_back_to_load_file2_then_load_file(app: Path, cpu: str) -> None:
    rep = run_boot(BootScenario(ram=4 * GiB, smp=1, efi_app=str(app), cpu=cpu))
    assert (rep.outcome, rep.reason) == ("app-exited", "load_file_app.efi exited with SUCCESS"), rep.console
    lines = {line[0]: line[2:] for line in rep.console.splitlines() if line[1:2] == " "}
    assert lines["A"] == "status=0x0 calls=0x0 policy=0x0"  # from its buffer
    assert lines["B"] == "status=0x0 calls=0x2 policy=0x0"  # LoadFile2: the size, then the bytes
    assert lines["C"] == f"status={NOT_FOUND} calls=0x0 policy=0x0"  # BootPolicy TRUE: LoadFile2 is not asked
    assert lines["D"] == "status=0x0 calls=0x2 policy=0x1"  # LoadFile, BootPolicy passed on
    assert lines["E"] == f"status={NOT_FOUND} calls=0x0 policy=0x0"  # nothing matches
    loads = [(c["detail"].split(",")[0], c["status"]) for c in rep.calls if c["name"] == "LoadImage"]
    assert loads.pop(0) == ("load_file_app.efi", "SUCCESS")  # the Boot Manager's, of the app itself
    assert loads[0] == ("load_file_app", "SUCCESS")  # the buffer's image named by its CodeView record
    assert ("lf2.efi", "SUCCESS") in loads  # the file the device path names
    served = [c["name"] for c in rep.calls if c["name"] in ("LOAD_FILE2", "LOAD_FILE")]
    assert served == ["LOAD_FILE2", "LOAD_FILE"]
