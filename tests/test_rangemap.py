"""RangeMap against a per-address dict."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lazyaccept.rangemap import RangeMap

LIMIT = 64

ops = st.lists(
    st.tuples(st.sampled_from(["set", "update"]), st.integers(0, LIMIT), st.integers(0, LIMIT), st.integers(0, 3)),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_rangemap_matches_dict(sequence: list) -> None:
    m: RangeMap[int] = RangeMap(0, limit=LIMIT)
    ref = dict.fromkeys(range(LIMIT), 0)
    for op, a, b, v in sequence:
        s, e = min(a, b), max(a, b)
        if op == "set":
            m.set(s, e, v)
            for x in range(s, e):
                ref[x] = v
        else:
            m.update(s, e, lambda old, v=v: (old + v) % 4)
            for x in range(s, e):
                ref[x] = (ref[x] + v) % 4
        got = {x: val for rs, re_, val in m.runs() for x in range(rs, re_)}
        assert got == ref
        runs = list(m.runs())
        assert all(runs[i][2] != runs[i + 1][2] for i in range(len(runs) - 1))  # always merged
        assert m.total(0, LIMIT, lambda val: val == 1) == sum(1 for x in ref.values() if x == 1)
