"""Random operation sequences on a small TD: the range-map model and the naive per-page model agree exactly."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazyaccept.tdx.costs import PROFILES
from lazyaccept.tdx.module import PageState, TdTerminated, TdxError, TdxModule

from .naive import K4, M2, Naive, NaiveTerminated

SPAN = 24 * M2  # the small TD's address space: RAM with holes inside it
RAM_PIECES = [(0, 10 * M2), (10 * M2 + 5 * K4, 3 * M2), (16 * M2, 8 * M2 - 3 * K4)]

addr4k = st.integers(0, SPAN // K4 - 1).map(lambda n: n * K4)
addr2m = st.integers(0, SPAN // M2 - 1).map(lambda n: n * M2)
size4k = st.integers(1, 3 * 512 + 7).map(lambda n: n * K4)

ops = st.one_of(
    st.tuples(st.just("aug4k"), addr4k, st.integers(1, 700).map(lambda n: n * K4)),
    st.tuples(st.just("aug2m"), addr2m, st.integers(1, 3).map(lambda n: n * M2)),
    st.tuples(st.just("remove"), addr4k, size4k),
    st.tuples(st.just("demote"), addr2m, st.just(0)),
    st.tuples(st.just("busy"), st.integers(1, 5), st.just(0)),
    st.tuples(st.just("tdcall"), st.one_of(addr4k, addr2m, st.integers(0, SPAN)), st.integers(0, 2)),
    st.tuples(st.just("range"), addr4k, size4k),
    st.tuples(st.just("range_unaligned"), st.integers(0, SPAN), st.integers(0, 4 * M2)),
    st.tuples(st.just("pages2m"), addr2m, st.integers(1, 4)),
    st.tuples(st.just("pages4k"), addr4k, st.integers(1, 1100)),
)


def build(profile_name: str) -> tuple[TdxModule, Naive]:
    profile = PROFILES[profile_name]
    tdx = TdxModule(profile, num_vcpus=1, gpa_width=48)
    naive = Naive(profile, limit=tdx.private_limit)
    for start, size in RAM_PIECES:
        tdx.add_ram(start, size)
        naive.add_ram(start, size)
    tdx.add(8 * M2 + 3 * K4, 5 * K4)  # like QEMU's TD_HOB/TEMP_MEM sections: ADDed 4K pages
    naive.add(8 * M2 + 3 * K4, 5 * K4)
    return tdx, naive


def expand(tdx: TdxModule) -> dict[int, tuple]:
    out = {}
    for s, e, p in tdx.pages.runs(0, SPAN):
        for g in range(s, e, K4):
            out[g // K4] = (int(p.state), p.level if p.state != PageState.NOT_PRESENT else 0, p.actor, p.reaugd)
    return out


def naive_pages(naive: Naive) -> dict[int, tuple]:
    out = {}
    for n in range(SPAN // K4):
        p = naive.pages.get(n)
        out[n] = (p.state, p.level, p.actor, p.reaugd) if p else (0, 0, "", False)
    return out


def compare(tdx: TdxModule, naive: Naive) -> None:
    assert expand(tdx) == naive_pages(naive)
    stats = tdx.stats.as_dict()
    stats.pop("accepted_bytes")
    assert stats == vars(naive.c)
    assert tdx.clocks_ns[0] == naive.c.cost_ns
    assert [[i.kind, i.start, i.end, i.actor] for i in tdx.incidents] == naive.incidents
    assert tdx.accepted_by_actor == naive.by_actor


def run_both(tdx: TdxModule, naive: Naive, op: tuple) -> bool:
    """Apply op to both; returns False once the TD is terminated."""
    kind, a, b = op
    vmm = {
        "aug4k": lambda: tdx.aug(a, b, 0),
        "aug2m": lambda: tdx.aug(a, b, 1),
        "remove": lambda: tdx.remove(a, b),
        "demote": lambda: tdx.demote(a),
    }
    if kind in vmm:
        try:
            vmm[kind]()
        except TdxError:
            return True  # the module refused a VMM operation: nothing changed, nothing to mirror
        {
            "aug4k": lambda: naive.aug(a, b, 0),
            "aug2m": lambda: naive.aug(a, b, 1),
            "remove": lambda: naive.remove(a, b),
            "demote": lambda: naive.demote(a),
        }[kind]()
        return True
    if kind == "busy":
        tdx.inject_busy(a)
        naive.busy_pending += a
        return True
    got = want = None
    try:
        if kind == "tdcall":
            got = ("status", tdx.accept_page(a & ~7, b, actor="g") if b < 3 else None)
        elif kind in ("range", "range_unaligned"):
            r = tdx.accept_range(a, b, actor="g")
            got = ("range", r.status if not r.ok else 0, r.failed_gpa)
        elif kind == "pages2m":
            r = tdx.accept_pages(a, b, M2, actor="g")
            got = ("range", r.status if not r.ok else 0, r.failed_gpa)
        else:
            r = tdx.accept_pages(a, b, K4, actor="g")
            got = ("range", r.status if not r.ok else 0, r.failed_gpa)
    except TdTerminated as exc:
        got = ("terminated", exc.termination.gpa)
    try:
        if kind == "tdcall":
            want = ("status", naive.tdcall_accept((a & ~7) | b, "g"))
        elif kind in ("range", "range_unaligned"):
            want = ("range", *naive.accept_range(a, b, "g"))
        elif kind == "pages2m":
            want = ("range", *naive.td_accept_pages(a, b, M2, "g"))
        else:
            want = ("range", *naive.td_accept_pages(a, b, K4, "g"))
    except NaiveTerminated as exc:
        want = ("terminated", exc.gpa)
    assert got == want, op
    return got[0] != "terminated"


@pytest.mark.parametrize("profile_name", ["kvm-2m", "kvm-4k"])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=st.lists(ops, min_size=1, max_size=12))
def test_range_model_equals_naive_model(profile_name: str, sequence: list[tuple]) -> None:
    tdx, naive = build(profile_name)
    for op in sequence:
        alive = run_both(tdx, naive, op)
        compare(tdx, naive)
        if not alive:
            break


@pytest.mark.parametrize("profile_name", ["kvm-2m", "kvm-4k"])
def test_whole_ram_accept_equals_naive(profile_name: str) -> None:
    """A deterministic long case: everything, in one TdxDxe call over the whole span (terminates at a hole)."""
    tdx, naive = build(profile_name)
    tdx.aug(2 * M2, M2, 1)
    naive.aug(2 * M2, M2, 1)
    for op in [
        ("range", 0, 10 * M2),
        ("range", 10 * M2 + 5 * K4, 3 * M2),
        ("range", 16 * M2, 4 * M2),
        ("range", 0, SPAN),
    ]:
        run_both(tdx, naive, op)
        compare(tdx, naive)
