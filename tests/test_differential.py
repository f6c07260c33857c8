"""The differential test harness (differential.py): its comparison on hand-made facts, and the Python firmware
held to edk2's own TDVF (Debian's OVMF.fd 2025.02) at 4 GiB with 1 vCPU."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from lazyaccept.cli import main
from lazyaccept.differential import BOUNDS, Facts, compare, run_differential
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
