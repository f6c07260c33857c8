"""A kernel that cannot use unaccepted memory is a failed boot for its user: Debian 12's real Linux 6.1 stub
(no CONFIG_UNACCEPTED_MEMORY, older than 6.5) leaves EFI type 15 out of e820, so a TD that asked for 8 GiB gets 2.
Its own outcome (MEMORY-LOST), exit code 3, JSON fields and a hint; the OS model that follows is 6.1's, and the
kernels' releases select their profiles (7.2 carries the table-reservation fix that 6.12 lacks)."""

from __future__ import annotations

import json

import pytest

from lazyaccept.binaries import BinaryStore
from lazyaccept.boot import MEMORY_LOST_HINT, BootScenario, run_boot
from lazyaccept.cli import main
from lazyaccept.exitcodes import EXIT_MEMORY_LOST
from lazyaccept.units import GiB

pytestmark = pytest.mark.real_binary


@pytest.fixture(scope="module")
def linux61() -> str:
    return str(BinaryStore().linux61_vmlinuz())


def test_a_kernel_without_support_loses_memory_and_the_run_says_so(linux61: str, capsys) -> None:
    code = main(["boot", "-m", "8G", "--kernel", linux61, "--upfront", "below-4g", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == EXIT_MEMORY_LOST == out["exit_code"] == 3
    assert out["outcome"] == "memory-lost" and out["hint"] == MEMORY_LOST_HINT
    assert out["handoff"]["lost_ram_bytes"] == 6 * GiB and out["handoff"]["unaccepted_table"] is None
    assert out["kernel"]["profile"] == "linux-6.1 without unaccepted-memory support"
    assert not [e for e in out["handoff"]["e820"] if e["start"] >= 4 * GiB]  # nothing above 4 GiB reached e820
    assert out["os_outcome"] == "ready"  # the 6.1 model: no unaccepted memory, nothing for Linux to accept
    assert not [a for a in out["accepted_by_actor"] if a.startswith("linux")]


def test_accept_all_at_exit_rescues_it(linux61: str) -> None:
    rep = run_boot(BootScenario(ram=8 * GiB, kernel=linux61, accept_all_at_exit=True))
    assert rep.outcome == "kernel-entry" and rep.exit_code == 0 and rep.lost_ram_bytes == 0, rep.reason
    assert sum(rep.accepted_by_actor.values()) >= 8 * GiB - (1 << 30)  # all RAM; the hole is not RAM


def test_kernel_releases_select_their_profiles() -> None:
    """67000M (over 64 GiB, not 1 GiB aligned): a 6.12 before the 0862438c9048 backport maps one page too few in
    reserve_unaccepted and the model oopses (tests/guest/test_handoff.py); Debian's 6.12.117 carries the backport
    (the real kernel reserves both pages the table spans and runs to /init: benchmarks/bench_kernel.py) and 7.2
    has it from 7.0. Both profiles come from the real images' version strings."""
    store = BinaryStore()
    old = run_boot(BootScenario(ram=67000 << 20))
    new = run_boot(BootScenario(ram=67000 << 20, kernel=str(store.linux72_vmlinuz())))
    assert old.kernel_profile == "linux-6.12" and new.kernel_profile == "linux-7.2"
    assert old.outcome == new.outcome == "kernel-entry"
    assert old.os_outcome == new.os_outcome == "ready", (old.os_outcome, new.os_outcome)
