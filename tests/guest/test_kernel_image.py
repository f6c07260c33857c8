"""Which Linux a kernel image is, and the OS model that follows: version from the setup header, config from the file
beside it, and the profile per release (guest/kernel_image.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazyaccept.binaries import BinaryStore
from lazyaccept.guest.kernel_image import KernelImage, kernel_profile, parse_config, read_kernel_image, read_release


def bzimage(banner: bytes, pointer_at: int = 0x3000) -> bytes:
    data = bytearray(0x4000)
    data[0x202:0x206] = b"HdrS"
    data[0x20E:0x210] = (pointer_at - 0x200).to_bytes(2, "little")
    data[pointer_at : pointer_at + len(banner) + 1] = banner + b"\0"
    return bytes(data)


def test_release_comes_from_the_setup_header() -> None:
    release, banner = read_release(bzimage(b"6.12.117+deb13-cloud-amd64 (x@y) #1 SMP Debian 6.12.117-1 (2026-11-12)"))
    assert release == "6.12.117+deb13-cloud-amd64" and banner.endswith("(2026-11-12)")
    assert read_release(b"\0" * 0x1000) == ("", "")  # no setup header
    no_pointer = bytearray(bzimage(b"x"))
    no_pointer[0x20E:0x210] = b"\0\0"
    assert read_release(bytes(no_pointer)) == ("", "")
    assert read_release(bzimage(b"6.1", pointer_at=0x3FFF)[:0x3FFF]) == ("", "")  # string cut off by the end


def test_debian_abi_release_keeps_the_real_sublevel_from_the_banner() -> None:
    image = KernelImage("6.1.0-50-cloud-amd64", "6.1.0-50-cloud-amd64 (d@l) #1 SMP PREEMPT_DYNAMIC Debian 6.1.176-1")
    assert image.version == (6, 1, 176)
    assert KernelImage("7.2.12+deb14-cloud-amd64", "7.2.12+deb14-cloud-amd64").version == (7, 2, 12)
    assert KernelImage("", "").version is None


def test_config_file_beside_the_image(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz-6.12.9-test"
    kernel.write_bytes(bzimage(b"6.12.9-test (a@b) #1"))
    assert read_kernel_image(kernel.read_bytes(), kernel).config is None
    (tmp_path / "config-6.12.9-test").write_text("CONFIG_X=y\n# CONFIG_UNACCEPTED_MEMORY is not set\nCONFIG_S=\"a\"\n")
    image = read_kernel_image(kernel.read_bytes(), kernel)
    assert image.config_source.endswith("config-6.12.9-test")
    assert image.option("CONFIG_UNACCEPTED_MEMORY") == "n" and image.option("CONFIG_S") == "a"
    profile = kernel_profile(image, table_installed=None)
    assert profile.unaccepted_support is False and not profile.config.unaccepted_memory
    assert parse_config("junk\nCONFIG_A=m") == {"CONFIG_A": "m"}


@pytest.mark.parametrize(
    ("release", "support", "watermark_fix", "table_fix"),
    [
        ("6.1.0", False, None, None),
        ("6.4.16", False, None, None),
        ("6.5.0", None, False, False),
        ("6.12.0", None, False, False),
        ("6.12.74", None, True, False),
        ("6.12.117", None, True, True),
        ("6.14.0", None, True, False),
        ("7.2.12", None, True, True),
    ],
)
def test_profile_per_release(release: str, support: bool | None, watermark_fix, table_fix) -> None:
    profile = kernel_profile(KernelImage(release, release))
    assert profile.unaccepted_support is support
    assert profile.name == "linux-" + ".".join(release.split(".")[:2])
    if support is False:
        assert not profile.config.unaccepted_memory and "without unaccepted-memory support" in profile.summary
    else:
        assert profile.config.watermark_zero_fix is watermark_fix
        assert profile.config.table_reservation_fix is table_fix


def test_the_runs_evidence_decides_when_config_is_unknown() -> None:
    image = KernelImage("6.12.117", "6.12.117")
    assert kernel_profile(image, table_installed=True).unaccepted_support is True
    no_table = kernel_profile(image, table_installed=False)
    assert no_table.unaccepted_support is False and not no_table.config.unaccepted_memory
    # An old kernel stays without support whatever else is seen.
    assert kernel_profile(KernelImage("6.1.0", "6.1.0"), table_installed=True).unaccepted_support is False


@pytest.mark.real_binary
def test_real_debian_kernels() -> None:
    store = BinaryStore()
    k612 = read_kernel_image(store.linux_vmlinuz().read_bytes(), store.linux_vmlinuz())
    assert k612.release == "6.12.117+deb13-cloud-amd64" and k612.version == (6, 12, 117)
    assert k612.option("CONFIG_UNACCEPTED_MEMORY") == "y" and k612.option("CONFIG_INTEL_TDX_GUEST") == "y"
    k72 = read_kernel_image(store.linux72_vmlinuz().read_bytes(), store.linux72_vmlinuz())
    assert k72.version == (7, 2, 12) and k72.config is None  # the package ships no config
    k61 = read_kernel_image(store.linux61_vmlinuz().read_bytes(), store.linux61_vmlinuz())
    assert k61.version[:2] == (6, 1) and k61.option("CONFIG_UNACCEPTED_MEMORY") == "n"
    assert kernel_profile(k61).unaccepted_support is False
    assert any("CONFIG_INTEL_TDX_GUEST is not set" in why for why in kernel_profile(k61).why)
    assert not any("TDX_GUEST" in why for why in kernel_profile(k612).why)


@pytest.mark.real_binary
def test_a_kernel_without_tdx_guest_support_is_named_when_it_stops() -> None:
    """Debian 12's 6.1 has no #VE handler: a run of it as a TD stops at its first port I/O, and the report's detail
    says why from its config; a kernel that detected the TD, or one built with the support, gets no such hint."""
    from types import SimpleNamespace
    from typing import Any, cast

    from lazyaccept.tdvf_run import _no_tdx_guest_hint

    store = BinaryStore()
    stopped: Any = SimpleNamespace(tdx_guest_detected=False)
    hint = _no_tdx_guest_hint(cast(Any, stopped), store.linux61_vmlinuz())
    assert "6.1.0-50-cloud-amd64 is built without CONFIG_INTEL_TDX_GUEST" in hint and "no #VE handler" in hint
    assert _no_tdx_guest_hint(cast(Any, stopped), store.linux_vmlinuz()) == ""
    assert _no_tdx_guest_hint(cast(Any, SimpleNamespace(tdx_guest_detected=True)), store.linux61_vmlinuz()) == ""


def test_stub_kernel_alloc_without_a_readable_payload_is_init_size_rounded_up() -> None:
    from lazyaccept.guest.kernel_image import stub_kernel_alloc

    assert stub_kernel_alloc(b"", 0x37DE000) == 56 << 20  # no setup header at all
    assert stub_kernel_alloc(bytes(0x1000), (60 << 20) + 1) == 62 << 20
