"""The differential test harness (differential.py): its comparison on hand-made facts, and the Python firmware
held to edk2's own TDVF: Debian's OVMF.fd 2025.02 at 4 GiB with 1 vCPU and at 2815M with 4 vCPUs (both firmwares end
the TD in PEI), OVMF.fd 2026.08 at 64 GiB."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from lazyaccept.binaries import BinaryStore, ovmf_2026_fd
from lazyaccept.cli import main
from lazyaccept.differential import BOUNDS, Facts, compare, payload, run_differential
from lazyaccept.exitcodes import EXIT_BAD_INPUT
from lazyaccept.spec.efi import EfiMemoryType as M
from lazyaccept.spec.efi import MemoryDescriptor
from lazyaccept.units import GiB, MiB

LOW = 2 * GiB


def facts(**changes: object) -> Facts:
    """A 4 GiB TD's handoff: SEC accepted low RAM, the kernel at 0x1800000, firmware pool at the top."""
    mm = [
        MemoryDescriptor(M.EfiConventionalMemory, 0, 0x1800),
        MemoryDescriptor(M.EfiLoaderCode, 0x1800000, 0x3800),
        MemoryDescriptor(M.EfiConventionalMemory, 0x5000000, 0x77000),
        MemoryDescriptor(M.EfiLoaderData, 0x7C000000, 0x1000),  # the initrd
        MemoryDescriptor(M.EfiBootServicesData, 0x7D000000, 0x3000),
        MemoryDescriptor(M.EfiUnacceptedMemoryType, 4 * GiB, 0x80000),
    ]
    base = Facts(
        outcome="kernel-entry",
        sec_accepted=[(0, LOW)],
        sec_tdcalls=[1580],
        later_accepted=[],
        memory_map=mm,
        low_ram_end=LOW,
        kernel=0x1800000,
        initrd=(0x7C000000, 16 * MiB),
        table_address=0x7FF7FF18,
        table_bytes=b"\x01" + bytes(23) + b"\xff" * 128,
        handoff_ok=True,
        handoff_problems=[],
        lost_bytes=0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_identical_facts_are_equal_in_every_field() -> None:
    d = compare(facts(), facts())
    assert d.ok and not d.differences()
    assert {"sec.accepted_ranges", "map.unaccepted", "kernel.address", "unaccepted_table.bytes"} <= {
        f.name for f in d.fields
    }


def test_a_difference_outside_its_bound_is_reported() -> None:
    far = 0x7C000000 - BOUNDS["initrd.address"].max_bytes - 0x1000
    d = compare(facts(), facts(initrd=(far, 16 * MiB)))
    diff = d.get("initrd.address")
    assert not diff.ok and "OUTSIDE" in diff.verdict and diff.delta == 0x7C000000 - far
    assert (diff.python, diff.real) == ("0x7c000000", hex(far))
    assert not d.ok


def test_a_difference_within_its_bound_passes_and_is_still_listed() -> None:
    d = compare(facts(), facts(initrd=(0x7C000000 - 2 * MiB, 16 * MiB)))
    assert d.ok and [f.name for f in d.differences()] == ["initrd.address"]
    assert d.get("initrd.address").verdict.startswith("within bound")


def test_an_exact_field_has_no_bound() -> None:
    d = compare(facts(), facts(sec_accepted=[(0, LOW - 2 * MiB)], sec_tdcalls=[1579], kernel=0x1000000))
    for name in ("sec.accepted_ranges", "sec.accept_tdcalls_per_vcpu", "kernel.address"):
        assert d.get(name).verdict == "DIFFERENT"
    assert not d.ok
    table = compare(facts(), facts(table_bytes=b"\x01" + bytes(23) + b"\xff" * 127 + b"\x7f"))
    assert table.get("unaccepted_table.bytes").verdict == "DIFFERENT"


def test_without_a_handoff_only_what_precedes_the_payload_is_compared() -> None:
    refused = facts(outcome="loader-failed", memory_map=[], kernel=None, initrd=(0, 0), table_address=None,
                    table_bytes=b"", handoff_ok=False, reason="shim refused the kernel")
    d = compare(facts(), refused)
    assert [f.name for f in d.fields] == ["outcome", "sec.accepted_ranges", "sec.accept_tdcalls_per_vcpu",
                                          "accepted_after_sec.new", "accepted_after_sec.reaccepted",
                                          "map.low_ram_end"]
    assert not d.ok and [f.name for f in d.differences()] == ["outcome"]
    assert d.notes == ["the real firmware did not reach the kernel (loader-failed: shim refused the kernel); only "
                       "what precedes the payload is compared"]


def test_an_image_without_secure_boot_keeps_the_payload_it_is_given() -> None:
    assert payload(None, None, None) == (None, None, [])  # the built-in OVMF.fd 2025.02 layout
    assert payload(None, "vmlinuz", "shim.efi") == ("vmlinuz", "shim.efi", [])


def test_a_missing_kernel_or_shim_is_one_line_of_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("--kernel", "--shim", "-shim"):
        assert main(["differential", flag, "/nonexistent/file"]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no such file" in err[0], err


def test_bad_size_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["differential", "-m", "4X"])
    assert exc.value.code == EXIT_BAD_INPUT
    assert "-m" in capsys.readouterr().err


@pytest.mark.real_binary
def test_python_firmware_agrees_with_ovmf_2025_02_at_4g_1_vcpu() -> None:
    d = run_differential(4 * GiB, 1)
    assert d.edk2_profile == "ovmf-x64-2025.02"
    failing = [(f.name, f.python, f.real, f.verdict) for f in d.fields if not f.ok]
    assert d.ok, failing
    exact = {f.name for f in d.fields if f.equal}
    assert {"outcome", "sec.accepted_ranges", "sec.accept_tdcalls_per_vcpu", "accepted_after_sec.new",
            "map.unaccepted", "kernel.address", "initrd.size", "unaccepted_table.bytes", "handoff.verdict",
            "acpi.tables", f"pool.{M.EfiACPIMemoryNVS.name}"} <= exact
    # both install QEMU's tables; the real firmware's CCEL and the stub's longer map copy are the difference
    reclaim = d.get(f"pool.{M.EfiACPIReclaimMemory.name}")
    assert reclaim.ok and (reclaim.delta or 0) <= 16 * 1024
    assert d.get("kernel.address").python == "0x1800000"
    # every difference is a bounded field, with its reason
    assert all(f.bound is not None and f.bound.reason for f in d.differences())
    assert json.dumps([f.as_dict() for f in d.fields])


@pytest.mark.real_binary
def test_python_firmware_agrees_with_ovmf_2026_08_at_64g_1_vcpu() -> None:
    d = run_differential(64 * GiB, 1, str(ovmf_2026_fd()))
    assert d.edk2_profile == "ovmf-x64-2026.08"
    assert d.ok, [(f.name, f.python, f.real, f.verdict) for f in d.fields if not f.ok]
    # d419725b23's bin typing: the runtime code bin is typed alike (bounded on 2025.02, where it merges)
    assert d.get(f"pool.{M.EfiRuntimeServicesCode.name}").equal
    assert d.get("unaccepted_table.bytes").equal and d.get("kernel.address").python == "0x1800000"


@pytest.mark.real_binary
def test_both_firmwares_end_in_pei_on_2815m_with_4_vcpus_before_b15f98e68f() -> None:
    d = run_differential(2815 * MiB, 4)
    assert d.ok and d.get("outcome").python == "terminated", [(f.name, f.python, f.real) for f in d.fields]
    assert d.get("sec.accepted_ranges").equal and d.get("sec.accept_tdcalls_per_vcpu").equal


@pytest.mark.real_binary
def test_an_image_with_secure_boot_gets_debians_signed_chain_or_a_warning() -> None:
    store = BinaryStore()
    image = str(store.ovmf_inteltdx_fd())
    kernel, shim, notes = payload(image, None, None)
    assert (kernel, shim) == (str(store.linux_signed_vmlinuz()), str(store.shim_signed_efi()))
    assert "through shim" in notes[0]
    unsigned = str(store.linux_vmlinuz())
    assert payload(image, unsigned, None)[:2] == (unsigned, None)
    assert payload(image, unsigned, None)[2][0].startswith("WARNING: this image has Secure Boot on")


@pytest.mark.real_binary
def test_inteltdx_through_shim_agrees_with_the_python_firmware_up_to_shims_refusal_at_4g_1_vcpu() -> None:
    # The real side boots as QEMU 10 with -shim (Debian's Microsoft-signed shim, its Debian-signed 6.12 kernel),
    # the Python side that kernel directly. Shim refuses the kernel (no .sbat section), so only what precedes the
    # payload is compared: SEC's accepts and TDCALLs, what was accepted after SEC, low RAM; all exact and equal.
    store = BinaryStore()
    d = run_differential(4 * GiB, 1, str(store.ovmf_inteltdx_fd()))
    assert d.edk2_profile == "inteltdx-2026.08"
    assert (d.kernel, d.shim) == (str(store.linux_signed_vmlinuz()), str(store.shim_signed_efi()))
    assert [f.name for f in d.fields] == ["outcome", "sec.accepted_ranges", "sec.accept_tdcalls_per_vcpu",
                                          "accepted_after_sec.new", "accepted_after_sec.reaccepted",
                                          "map.low_ram_end"]
    assert [(f.python, f.real) for f in d.differences()] == [("kernel-entry", "loader-failed")]
    assert all(f.bound is None for f in d.fields if f.name != "accepted_after_sec.reaccepted")
    assert not d.ok and "shim refused the kernel" in d.notes[-1] and "no .sbat section" in d.notes[-1]
