"""linux_differential.py without a real run: the comparison of two sides' facts, and `differential --linux`'s
refusals (the real comparison is tests/test_boot_run_kernel.py's, on its 4 GiB run)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lazyaccept.cli import main
from lazyaccept.exitcodes import EXIT_BAD_INPUT
from lazyaccept.linux_differential import BOUNDS, LinuxDifferential, LinuxFacts, compare, format_table
from lazyaccept.units import KiB, MiB

TABLE = {"address": 0x7FF7BB18, "version": 1, "unit_size": 2 * MiB, "phys_base": 1 << 32, "bitmap_bytes": 128,
         "set_bytes": 2048 * MiB}
# The 4 GiB figures of Debian's 6.12.117 after the Python firmware (LinuxConfig's comment says how measured).
REAL = LinuxFacts(
    reached_init="yes",
    phases={"accepted.early": 74 * MiB, "accepted.mm_init": 134 * MiB, "accepted.initcalls": 378 * MiB},
    memmap=64 * MiB,
    swiotlb=(0x6C000000, 0x7C000000),
    shared=[(0x6C000000, 0x7C000000)],
    unaccepted=1_499_136 * KiB,
    table=TABLE,
)


def test_equal_facts_pass_field_by_field() -> None:
    d = compare(REAL, REAL)
    assert d.ok and all(f.equal for f in d.fields)
    assert [f.name for f in d.fields] == [
        "reached_init", "handoff.unaccepted_table", "accepted.early", "accepted.mm_init", "accepted.initcalls",
        "accepted.by_init", "memmap", "swiotlb.size", "swiotlb.start", "swiotlb.shared", "shared.other",
        "unaccepted_at_init"]  # fmt: skip
    assert d.get("accepted.by_init").real == "586.00 MiB"
    assert d.get("unaccepted_at_init").real == "1,499,136 kB (1.43 GiB)"
    row = d.as_dict()["fields"][-1]
    assert row["model"] == row["real"] == "1,499,136 kB (1.43 GiB)" and "python" not in row


def test_a_lumped_field_passes_within_its_bound_and_fails_beyond_it() -> None:
    bound = BOUNDS["accepted.initcalls"].max_bytes
    for extra, ok in ((bound, True), (bound + 4 * MiB, False)):
        model = replace(REAL, phases={**REAL.phases, "accepted.initcalls": REAL.phases["accepted.initcalls"] + extra})
        d = compare(model, REAL)
        f = d.get("accepted.initcalls")
        assert not f.equal and f.ok is ok and d.ok is (ok and d.get("accepted.by_init").ok)
        assert ("within" if ok else "OUTSIDE") in f.verdict
    assert "FAIL" in format_table(d) and BOUNDS["accepted.initcalls"].reason in format_table(d)


def test_exact_fields_and_a_missing_reading_fail() -> None:
    model = replace(REAL, memmap=66 * MiB, swiotlb=(0x6ED6B000, 0x7E316000), shared=[(0x6ED6B000, 0x7E316000)],
                    table={**TABLE, "set_bytes": 0})
    d = compare(model, replace(REAL, unaccepted=None))
    assert [f.name for f in d.fields if not f.ok] == ["handoff.unaccepted_table", "memmap", "swiotlb.size",
                                                      "swiotlb.start", "swiotlb.shared", "unaccepted_at_init"]
    assert d.get("unaccepted_at_init").real == "none"


def test_the_bounce_buffer_must_be_shared_whole_and_other_conversions_are_bounded() -> None:
    half = replace(REAL, shared=[(0x6C000000, 0x74000000)])
    assert not compare(REAL, half).get("swiotlb.shared").ok
    pools = [(0x7C200000, 0x7C380000)]  # an atomic DMA pool beside the buffer: within the bound
    d = compare(REAL, replace(REAL, shared=REAL.shared + pools))
    assert d.get("swiotlb.shared").equal and d.get("shared.other").ok and not d.get("shared.other").equal
    far = [(0x10000000, 0x10000000 + BOUNDS["shared.other"].max_bytes + 4096)]
    assert not compare(REAL, replace(REAL, shared=far + REAL.shared)).get("shared.other").ok


@pytest.mark.parametrize("argv, message", [
    (["-smp", "2"], "needs 1 vCPU, not 2"),
    (["--kernel", "/nonexistent"], "--kernel is not for it"),
    (["--initrd", "/nonexistent"], "--initrd '/nonexistent': no such file"),
])  # fmt: skip
def test_linux_flag_refusals(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["differential", "--linux", *argv]) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err


def test_initrd_is_only_for_linux(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["differential", "--initrd", "x"]) == EXIT_BAD_INPUT
    assert "--initrd is for --linux" in capsys.readouterr().err


def test_the_cli_builds_the_initramfs_and_prints_the_table(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The wiring only (the real run is test_boot_run_kernel's): --linux builds lazyaccept's initramfs when none is
    given and hands it, the TD size and the budget to run_linux_differential; JSON carries every field."""
    import json
    from pathlib import Path

    from lazyaccept.commands import differential as command
    from lazyaccept.exitcodes import EXIT_BOOTED

    seen: dict[str, object] = {}

    def fake(ram: int, initrd: str, timeout_s: float) -> LinuxDifferential:
        seen.update(ram=ram, initrd_is_cpio=Path(initrd).read_bytes()[:2] == b"\x1f\x8b", timeout_s=timeout_s)
        d = compare(REAL, REAL)
        d.ram, d.edk2_profile = ram, "ovmf-x64-2025.02"
        return d

    monkeypatch.setattr(command, "run_linux_differential", fake)
    assert main(["differential", "--linux", "-m", "4G"]) == EXIT_BOOTED
    assert seen == {"ram": 4 << 30, "initrd_is_cpio": True, "timeout_s": 900.0}
    text = capsys.readouterr().out
    assert "the Linux model vs the real kernel" in text and "PASS" in text
    assert main(["differential", "--linux", "--json"]) == EXIT_BOOTED
    out = json.loads(capsys.readouterr().out)
    assert out["linux"] is True and out["ok"] is True and len(out["fields"]) == 12
