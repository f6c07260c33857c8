"""The Boot Manager's load of a boot option, on a real EFI application (tests/cpu/efi_apps/accept_memory_app.c,
Debian's mingw-w64): as edk2's EfiBootManagerBoot (UefiBootManagerLib BmBoot.c, edk2-stable202502) it reads the
file whole into a pool buffer of EfiBootServicesData, LoadImage()s from that buffer, then frees it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazyaccept.boot import BootScenario, run_boot
from lazyaccept.spec.efi import EfiMemoryType as M
from tests.cpu.efi_apps.build import build

pytestmark = pytest.mark.real_binary
SOURCE = Path(__file__).parent / "efi_apps" / "accept_memory_app.c"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(SOURCE, tmp_path_factory.mktemp("efi") / "accept_memory_app.efi")


def test_the_file_is_read_into_a_pool_buffer_that_load_image_gets_and_that_is_freed_before_the_app_runs(
    app: Path,
) -> None:
    rep = run_boot(BootScenario(ram="4G", smp=1, efi_app=str(app)))
    assert rep.outcome == "app-exited", rep.reason
    size = app.stat().st_size
    ours = [(i, c) for i, c in enumerate(rep.calls) if c["image"] == "Boot Manager"]
    assert [c["name"] for _, c in ours] == ["AllocatePool", "LoadImage", "FreePool"]
    (_, pool), (_, load), (freed_at, free) = ours
    assert pool["detail"].startswith(f"type {int(M.EfiBootServicesData)}, {size:#x} bytes")
    assert pool["status"] == load["status"] == free["status"] == "SUCCESS"
    buffer = pool["detail"].rsplit("-> ", 1)[1]
    assert load["detail"].endswith(f"{size:#x} bytes from the buffer at {buffer}")
    assert free["detail"] == buffer
    # the app's own calls all come after the buffer is gone
    first_of_app = next(i for i, c in enumerate(rep.calls) if c["image"] == "accept_memory_app.efi")
    assert freed_at < first_of_app
