"""The coverage-guided fuzzers (fuzz/run.py, `make fuzz`) run briefly inside the test suite, and the inputs
they found crashing lazyaccept are kept as regression cases."""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from fuzz import targets
from fuzz.run import run_mutations

ROOT = Path(__file__).resolve().parents[2]
SMOKE_SECONDS = 3
HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_seeds_pass(name: str) -> None:
    target = targets.TARGETS[name]
    for seed in target.seeds():
        target.run(seed)


@pytest.mark.skipif(not HAVE_ATHERIS, reason="atheris is not installed (requirements.txt pins atheris==3.0.0)")
def test_every_target_fuzzes_for_a_few_seconds_without_a_crash(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fuzz" / "run.py"),
            "--seconds",
            str(SMOKE_SECONDS),
            "--jobs",
            "2",
            "--json",
            "--artifacts",
            str(tmp_path / "artifacts"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    outcomes = {o["target"]: o for o in json.loads(out.stdout)}
    assert set(outcomes) == set(targets.TARGETS)
    for name, o in outcomes.items():
        assert o["crashes"] == 0, f"{name}: {o['detail']}\nreproducers: {o['artifacts']}"
        assert o["engine"] == "atheris" and o["runs"] >= 100, o
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_mutation_loop_without_atheris(name: str, tmp_path: Path) -> None:
    # The same targets under fuzz/run.py --no-atheris: runs everywhere, even where atheris has no wheel.
    outcome = run_mutations(name, 0.5, seed=8, artifacts=tmp_path)
    assert outcome.crashes == 0, outcome.detail
    assert outcome.runs > 0


# Inputs the fuzzers found crashing lazyaccept (each fixed; see the report of issue 8).
INLINE = {
    "cli-dash-dash-value": ("cli", base64.b64decode("AC1tADJHAC1zbXAAMgAALW0tLQ==")),
    "profile-inf": ("profile", b"clear_bytes_per_s = inf\n"),  # OverflowError: float infinity to integer
    "profile-nan": ("profile", b"tdcall_ns = nan\n"),  # ValueError: float NaN to integer
    "profile-zero-rate": ("profile", b"decompress_bytes_per_s = 0\n"),  # ZeroDivisionError mid-boot
    "profile-directory": ("cli", b"\x00--profile\x00/"),  # IsADirectoryError
    # An END_OF_HOB_LIST HOB longer than 8 bytes tripped a self-check of SEC's new TD HOB check (in this fix).
    "sec_hob-long-end-hob": (
        "sec_hob",
        base64.b64decode(
            "IwEAOAAAAAAACQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAPCRgAAAAAAAAwAwAAAAAAAAAAAAAAAAAAAA"
            "AAAAAAAABwAAAAAAAAAAAAABAAAAAAAAgAAAAAAAAwAwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAcAAAAAAIAAAAAAAABgAAAA"
            "AAAAAwAwAAAAAAAAAAAAAAAAAAAAAAAAAAAABwAAAAcAAAAAYAAAAIAAAAAwAAAAAAAAAwAwAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
            "AAAAAAcAAAAAkIAAAAAAAAAgAAAAAAAAAwAwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAcAAAAAsIAAAAAAAAAgAAAAAAAAAwAw"
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAABwAAAAcAAAAA0IAAAAAAAABAAAAAAAAAAwAwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAcA"
            "AAAAEIEAAAAAAADwAAAAAAAAAwAwAAAAAAAAAAAAAAAAAAAAAAAAAAAABwAAAAcAAAAAAIJ+AAAAAAAAfn8AAAAAAwAwAAAAAAAA"
            "AAAAAAAAAAAAAAAAAAAABwAAAAcAAAAAAAAAAQAAAAAAAIAAAAAA///gCAAAAAAA"
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(INLINE))
def test_found_crashes_stay_fixed(case: str) -> None:
    name, data = INLINE[case]
    targets.TARGETS[name].run(data)


def test_found_sec_hob_crash_stays_fixed() -> None:
    # A QEMU TD HOB for 4 GiB whose RAM above 4 GiB is declared SYSTEM_MEMORY (the fuzzer's find, rebuilt).
    from lazyaccept.firmware.pi.hob import Hob, PhitHob, ResourceHob, encode_hob_list
    from lazyaccept.spec.pi_hob import TDVF_RAM_ATTRIBUTES, ResourceType
    from lazyaccept.vmm.td import HobConvention, TdConfig, build_td, td_hob_resources

    td = build_td(TdConfig(ram_size=8 << 30, vcpus=2))
    resources = td_hob_resources(td.ram_entries, HobConvention.QEMU)
    records: list[Hob] = [PhitHob()] + [ResourceHob(k, TDVF_RAM_ATTRIBUTES, s, n) for k, s, n in resources]
    _, start, length = resources[-1]
    records[-1] = ResourceHob(ResourceType.SYSTEM_MEMORY, TDVF_RAM_ATTRIBUTES, start, length)
    raw = encode_hob_list(records, base_address=td.hob_base, end_pointer="qemu")
    targets.sec_hob(b"\x01" + raw)
