"""GRUB 2.14 beside 2.12 and Linux 7.2 beside 6.12, picked by their pinned names (`--kernel debian:linux-7.2`,
`--grub-efi debian:grub-2.14`, as scenario files name them), in QEMU direct boot and in GRUB from a GPT disk; and
where they differ under a small up-front accept: 7.2's stub needs a 60 MiB kernel slot where 6.12's needs 56 MiB,
so on a 4G TD with 1 vCPU 6.12 boots from 136M up front and 7.2 only from 144M, and advise now says so."""

from __future__ import annotations

import json

import pytest

from lazyaccept.api import advise, boot, boot_scenario
from lazyaccept.binaries import LINUX72_RELEASE, LINUX_RELEASE, BinaryStore
from lazyaccept.boot_text import format_report
from lazyaccept.cli import main
from lazyaccept.errors import ConfigError
from lazyaccept.guest.kernel_image import stub_kernel_alloc
from lazyaccept.spec.linux_boot import read_setup_header
from lazyaccept.units import MiB

pytestmark = pytest.mark.real_binary

SMALL = ["-m", "4G", "-smp", "1", "--no-log"]


@pytest.mark.parametrize(("kernel", "release"), [("debian:linux-6.12", LINUX_RELEASE),
                                                 ("debian:linux-7.2", LINUX72_RELEASE)])
def test_grub_2_14_boots_both_kernels(kernel: str, release: str, capsys) -> None:
    code = main(["boot", *SMALL, "--grub", "--grub-efi", "debian:grub-2.14", "--kernel", kernel, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["outcome"] == "kernel-entry", out["reason"]
    assert out["grub"]["image"] == "grub2 2.14-4"  # from grubx64.efi's own SBAT record, not its file name
    assert out["kernel"]["release"] == release and out["handoff"]["ok"]
    assert out["kernel"]["profile"] == "linux-" + ".".join(release.split(".")[:2])


def test_the_default_grub_is_2_12_and_the_text_report_names_it() -> None:
    result = boot(ram="4G", smp=1, no_log=True, grub=True)
    assert result.outcome == "kernel-entry" and result.report.grub is not None
    assert result.report.grub["image"] == "grub2 2.12-9+deb13u4"
    assert "loader: grub2 2.12-9+deb13u4 from a GPT disk" in format_report(result.report)


def test_direct_boot_of_linux_7_2_reports_its_release_and_profile() -> None:
    result = boot(ram="4G", smp=1, no_log=True, kernel="debian:linux-7.2")
    rep = result.report
    assert result.outcome == "kernel-entry" and rep.handoff_ok, rep.reason
    assert rep.kernel_release == LINUX72_RELEASE and rep.kernel_profile == "linux-7.2"
    assert "with the table-reservation fix (0862438c9048)" in rep.kernel_profile_why
    text = format_report(rep)
    assert f"kernel {LINUX72_RELEASE}: linux-7.2" in text
    assert "payload: Debian's linux-binary-7.2.12+deb14-cloud-amd64 7.2.12-1," in text  # not the cache path


def test_pinned_names_resolve_to_the_store_and_unknown_ones_are_bad_input(capsys) -> None:
    store = BinaryStore()
    sc = boot_scenario(kernel="debian:linux-7.2", grub_efi="debian:grub-2.14", grub=True)
    assert sc.kernel == str(store.linux72_vmlinuz()) and sc.grub_efi == str(store.grub214_efi())
    assert boot_scenario(kernel="debian:linux-6.12").kernel is None  # the default kernel itself
    with pytest.raises(ConfigError, match=r"--grub-efi: unknown Debian binary 'debian:grub-2\.16'"):
        boot_scenario(grub_efi="debian:grub-2.16")
    assert main(["boot", "--kernel", "debian:linux-9.9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--kernel: unknown Debian binary 'debian:linux-9.9': choose one of" in err[0]


def test_the_stub_allocates_output_len_not_init_size() -> None:
    """init_size also covers the legacy decompressor's in-place needs; the stub allocates max(output_len,
    kernel_total_size) rounded up to 2 MiB. For 6.12 both round to 56 MiB; for 7.2 init_size rounds to 62 MiB
    and the stub asks 60 (measured: AllocatePages(Address, type 1, 0x3c00 pages))."""
    store = BinaryStore()
    sizes = {}
    for name, path in (("6.12", store.linux_vmlinuz()), ("7.2", store.linux72_vmlinuz())):
        data = path.read_bytes()
        init_size = read_setup_header(data)["init_size"]
        sizes[name] = (init_size, stub_kernel_alloc(data, init_size))
    assert sizes["6.12"][1] == 56 * MiB and sizes["7.2"][1] == 60 * MiB
    assert sizes["7.2"][0] > 60 * MiB  # init_size would have asked for 62 MiB
    calls = boot(ram="4G", smp=1, kernel="debian:linux-7.2", upfront="144M").report.calls
    slot = [c for c in calls if c["name"] == "AllocatePages" and c["args"][:2] == ["0x2", "0x1"]]
    assert slot and int(slot[0]["args"][2], 16) == 60 * MiB // 4096, slot  # (type, memory type, pages, address)


def test_a_small_upfront_where_the_kernels_differ() -> None:
    """140M up front on 4G: 6.12's 56 MiB slot fits above 16 MiB, 7.2's 60 MiB does not; from 144M both boot."""
    old = boot(ram="4G", smp=1, no_log=True, upfront="140M")
    new = boot(ram="4G", smp=1, no_log=True, upfront="140M", kernel="debian:linux-7.2")
    assert old.outcome == "kernel-entry", old.reason
    assert new.outcome == "stub-exited" and "OUT_OF_RESOURCES" in new.reason
    assert "Failed to decompress kernel" in new.report.console
    assert boot(ram="4G", smp=1, no_log=True, upfront="144M", kernel="debian:linux-7.2").outcome == "kernel-entry"
    # advise's model asks the same slot the real stub does (it used to take init_size and answer 148M)
    assert set(advise(ram="4G", smp=1).min_upfront_bytes.values()) == {136 * MiB}
    assert set(advise(ram="4G", smp=1, kernel="debian:linux-7.2").min_upfront_bytes.values()) == {144 * MiB}


def test_the_grubs_need_the_same_upfront_but_report_the_stub_failing_differently() -> None:
    """Both Debian GRUBs start the stub with their own PE loader (peimage) and both need 176M up front on 4G
    (their 32 MiB heap at 64 MiB comes first); below it 2.12 says "image not loaded", 2.14 says which status
    start_image() returned (EFI_OUT_OF_RESOURCES)."""
    r212 = boot(ram="4G", smp=1, no_log=True, grub=True, upfront="174M")
    r214 = boot(ram="4G", smp=1, no_log=True, grub=True, upfront="174M", grub_efi="debian:grub-2.14")
    assert r212.outcome == r214.outcome == "loader-failed"
    assert "image not loaded" in r212.reason
    assert "start_image() returned 0x8000000000000009" in r214.reason
    for grub_efi in (None, "debian:grub-2.14"):
        result = boot(ram="4G", smp=1, no_log=True, grub=True, upfront="176M", grub_efi=grub_efi)
        assert result.outcome == "kernel-entry", result.reason
