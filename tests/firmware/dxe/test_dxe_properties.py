"""Random sequences of allocations, frees and accepts, per on-demand policy, checked after every operation:
records and the TDX module's truth agree, nothing allocatable is unaccepted, nothing is accepted twice, the
memory map covers RAM without overlap or gap, and ExitBootServices (with one retry) always ends the run."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazyaccept.firmware.dxe.accept import OnDemandConfig, Placement
from lazyaccept.firmware.dxe.exit import DxeCore, DxePolicy
from lazyaccept.firmware.dxe.invariants import check_core
from lazyaccept.spec.efi import MAX_UINT64, EfiAllocateType, EfiMemoryType, EfiStatus
from lazyaccept.units import GiB, MiB

from .conftest import make_core

S = EfiStatus
M = EfiMemoryType
PAGE = 0x1000

POLICIES = {
    "upstream": DxePolicy(),
    "option1-lowest": DxePolicy(option1=True),
    "option1-first-fit-2m": DxePolicy(
        option1=True, on_demand=OnDemandConfig(chunk_bytes=2 * MiB, placement=Placement.FIRST_FIT)
    ),
    "option3": DxePolicy(option3=True),
    "option1+3+accept-all": DxePolicy(option1=True, option3=True, accept_all_at_exit=True),
}

VALID_TYPES = [M.EfiLoaderData, M.EfiLoaderCode, M.EfiBootServicesData, M.EfiACPIReclaimMemory]
TYPES = st.one_of(
    st.sampled_from(VALID_TYPES),
    st.sampled_from(VALID_TYPES),
    st.sampled_from([M.EfiRuntimeServicesData, M.EfiConventionalMemory, M.EfiUnacceptedMemoryType, 0x70000000]),
)
ALLOC_TYPES = st.sampled_from([0, 0, 1, 1, 2, 2, 2, 3])
# Addresses near the edges that matter: accepted/unaccepted boundary, the hole, the high region.
PAGE_ADDRESSES = st.one_of(
    st.sampled_from([0, 0x1000, 16 * MiB, 64 * MiB - PAGE, 64 * MiB, 255 * MiB, 256 * MiB, 4 * GiB]),
    st.integers(0, (4 * GiB + 256 * MiB) >> 12).map(lambda p: p << 12),
    st.integers(0, 260 * MiB >> 12).map(lambda p: p << 12),
)
ADDRESSES = st.one_of(PAGE_ADDRESSES, PAGE_ADDRESSES, st.integers(0, 5 * GiB))
SIZES = st.one_of(st.integers(0, (32 * MiB) >> 12).map(lambda p: p << 12), st.integers(0, 32 * MiB))
PAGES = st.one_of(st.integers(0, 16), st.integers(1, (64 * MiB) >> 12))

OPS = st.one_of(
    st.tuples(st.just("pages"), ALLOC_TYPES, TYPES, PAGES, ADDRESSES),
    st.tuples(st.just("free_pages"), st.integers(0, 1000), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("pool"), TYPES, st.one_of(st.integers(0, 5000), st.integers(0, 48 * MiB))),
    st.tuples(st.just("free_pool"), st.integers(0, 1000), st.booleans()),
    st.tuples(st.just("accept"), ADDRESSES, SIZES),
    st.tuples(st.just("loader_accept"), st.integers(1, 32 * MiB)),
)


def run_ops(core: DxeCore, ops: list[tuple]) -> None:
    pages: list[tuple[int, int]] = []
    pools: list[int] = []
    for op in ops:
        kind = op[0]
        if kind == "pages":
            _, alloc_type, memory_type, n, addr = op
            status, base = core.allocate_pages(alloc_type, memory_type, n, addr)
            if status == S.SUCCESS:
                pages.append((base, n))
        elif kind == "free_pages":
            _, i, extra, misalign = op
            if pages:
                base, n = pages.pop(i % len(pages))
                after = core.pages.entry_at(base + (n << 12))
                if after is None or after.type != M.EfiConventionalMemory:
                    extra = 0  # an overlong free would free a neighbour's pages (edk2 lets it: a caller bug)
                status = core.free_pages(base + (0x800 if misalign else 0), n + extra)
                assert status in (S.SUCCESS, S.NOT_FOUND, S.INVALID_PARAMETER)
                if status != S.SUCCESS or extra:
                    # A failed or overlong free may have freed some of it (edk2 does too): make sure it is gone.
                    core.free_pages(base, n)
            else:
                assert core.free_pages(0x3000, 1) in (S.NOT_FOUND, S.SUCCESS)
        elif kind == "pool":
            _, memory_type, size = op
            status, buf = core.allocate_pool(memory_type, size)
            if status == S.SUCCESS:
                pools.append(buf)
        elif kind == "free_pool":
            _, i, twice = op
            if pools:
                buf = pools.pop(i % len(pools))
                assert core.free_pool(buf) == S.SUCCESS
                if twice:
                    assert core.free_pool(buf) == S.INVALID_PARAMETER
            else:
                assert core.free_pool(None) == S.INVALID_PARAMETER
        elif kind == "accept":
            _, start, size = op
            status = core.accept_memory(start, size)
            assert status in (S.SUCCESS, S.INVALID_PARAMETER, S.NOT_FOUND, S.UNSUPPORTED)
        else:
            core.acceptor.accept_for_loader(op[1])
        check_core(core)


def finish(core: DxeCore) -> None:
    probe = core.get_memory_map(0)
    key = core.get_memory_map(probe.memory_map_size).map_key
    status = core.exit_boot_services(1, key)
    if status == S.INVALID_PARAMETER:
        retry = core.get_memory_map(probe.memory_map_size + 32 * 48)
        assert retry.status == S.SUCCESS
        status = core.exit_boot_services(1, retry.map_key)
    assert status == S.SUCCESS
    check_core(core)


@pytest.mark.parametrize("policy_name", list(POLICIES))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=1, max_size=40))
def test_random_operations_keep_invariants(policy_name: str, ops: list[tuple]) -> None:
    core = make_core(POLICIES[policy_name], low=256 * MiB, high=256 * MiB, upfront=64 * MiB)
    run_ops(core, ops)
    finish(core)


@settings(max_examples=60, deadline=None)
@given(
    requests=st.lists(
        st.tuples(st.sampled_from(list(EfiAllocateType)[:3]), st.integers(1, (48 * MiB) >> 12), ADDRESSES),
        min_size=1,
        max_size=25,
    )
)
def test_option1_never_does_worse_than_upstream(requests: list[tuple[int, int, int]]) -> None:
    """Same requests, two firmwares: whatever upstream satisfies, option 1 satisfies too (it only adds memory)."""
    up = make_core(DxePolicy(), low=256 * MiB, high=256 * MiB, upfront=64 * MiB)
    on = make_core(DxePolicy(option1=True), low=256 * MiB, high=256 * MiB, upfront=64 * MiB)
    for alloc_type, n, addr in requests:
        s_up, _ = up.allocate_pages(alloc_type, M.EfiLoaderData, n, addr)
        s_on, _ = on.allocate_pages(alloc_type, M.EfiLoaderData, n, addr)
        if s_up == S.SUCCESS and alloc_type != EfiAllocateType.AllocateAddress:
            assert s_on == S.SUCCESS
    check_core(on)
    assert on.allocate_pages(EfiAllocateType.AllocateMaxAddress, M.EfiLoaderData, 1, MAX_UINT64)[0] == S.SUCCESS
