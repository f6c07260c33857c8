"""The memory-accept protocol and the on-demand options 1-3."""

from __future__ import annotations

import pytest

from lazyaccept.errors import ConfigError
from lazyaccept.firmware.dxe.accept import OnDemandConfig, Placement
from lazyaccept.firmware.dxe.exit import DxeCore, DxePolicy
from lazyaccept.firmware.dxe.gcd import Resource
from lazyaccept.firmware.dxe.invariants import check_core
from lazyaccept.spec.efi import (
    EDKII_MEMORY_ACCEPT_PROTOCOL_GUID,
    MAX_UINT64,
    EfiAllocateType,
    EfiGcdMemoryType,
    EfiMemoryType,
    EfiStatus,
)
from lazyaccept.spec.pi_hob import ResourceType
from lazyaccept.tdx.costs import profile_by_name
from lazyaccept.tdx.module import PageState, TdxModule
from lazyaccept.units import GiB, MiB

from .conftest import make_core

S = EfiStatus
M = EfiMemoryType
A = EfiAllocateType
UNACCEPTED = EfiGcdMemoryType.EfiGcdMemoryTypeUnaccepted


def option1(placement: Placement = Placement.LOWEST, chunk: int = 32 * MiB) -> DxePolicy:
    return DxePolicy(option1=True, on_demand=OnDemandConfig(chunk_bytes=chunk, placement=placement))


# ----------------------------------------------------------------- the protocol and the bookkeeping


def test_protocol_only_issues_tdcalls(core: DxeCore) -> None:
    proto = core.locate_protocol(EDKII_MEMORY_ACCEPT_PROTOCOL_GUID)
    assert proto is core.protocol and proto is not None
    assert proto.accept_memory(512 * MiB, 0) == S.SUCCESS and proto.calls == []
    key = core.pages.map_key
    assert proto.accept_memory(512 * MiB, 4 * MiB) == S.SUCCESS
    assert core.tdx is not None and core.tdx.is_accepted(512 * MiB, 4 * MiB)
    # The protocol leaves GCD and memory map alone: the record now lags the truth (callers must update it).
    assert core.pages.map_key == key
    assert core.gcd.map.get(512 * MiB).gcd_type == UNACCEPTED


def test_protocol_failure_is_invalid_parameter(core: DxeCore) -> None:
    assert core.tdx is not None and core.protocol is not None
    core.tdx.inject_busy(4)  # OPERAND_BUSY past TdAcceptPages' three retries
    assert core.protocol.accept_memory(512 * MiB, 4 * MiB) == S.INVALID_PARAMETER


def test_accept_records_system_memory(core: DxeCore) -> None:
    key = core.pages.map_key
    assert core.acceptor.accept(500 * MiB, 600 * MiB, actor="test") == S.SUCCESS
    assert core.gcd.ranges_of_type(UNACCEPTED) == [(128 * MiB, 500 * MiB), (600 * MiB, GiB), (4 * GiB, 5 * GiB)]
    entry = core.pages.entry_at(550 * MiB)
    assert entry is not None and entry.type == M.EfiConventionalMemory and entry.attribute == 0
    assert core.pages.map_key != key
    # Accepting an overlapping range touches only what is still unaccepted: no double accept.
    assert core.acceptor.accept(450 * MiB, 650 * MiB, actor="test") == S.SUCCESS
    assert core.acceptor.accepted_bytes("test") == 200 * MiB
    check_core(core)


def test_failed_accept_records_nothing(core: DxeCore) -> None:
    assert core.tdx is not None
    core.tdx.inject_busy(4)
    assert core.acceptor.accept(512 * MiB, 520 * MiB, actor="test") == S.INVALID_PARAMETER
    assert core.gcd.map.get(512 * MiB).gcd_type == UNACCEPTED
    check_core(core)


def test_accept_without_protocol_is_unsupported() -> None:
    core = make_core(with_tdx=False)
    assert core.acceptor.accept(512 * MiB, 520 * MiB, actor="test") == S.UNSUPPORTED


# ----------------------------------------------------------------- option 1


def test_upstream_fails_beyond_accepted_memory(core: DxeCore) -> None:
    assert core.allocate_pages(A.AllocateAnyPages, M.EfiLoaderData, (512 * MiB) >> 12) == (S.OUT_OF_RESOURCES, 0)
    assert core.allocate_pool(M.EfiBootServicesData, 512 * MiB) == (S.OUT_OF_RESOURCES, 0)
    assert core.allocate_pages(A.AllocateAddress, M.EfiLoaderData, 1, 512 * MiB)[0] == S.NOT_FOUND
    assert core.accepted_bytes() == 0


def test_option1_any_pages_accepts_32m_chunks_and_retries() -> None:
    core = make_core(option1())
    status, addr = core.allocate_pages(A.AllocateAnyPages, M.EfiLoaderData, (200 * MiB) >> 12)
    assert status == S.SUCCESS
    assert core.acceptor.accepted_bytes("dxe-option1") == 224 * MiB  # rounded up to 32 MiB multiples
    (ev,) = core.acceptor.events
    assert (ev.start, ev.end) == (128 * MiB, 352 * MiB)  # lowest 2 MiB-aligned range
    assert "OUT_OF_RESOURCES" in ev.reason
    assert core.tdx is not None and core.tdx.is_accepted(addr, 200 * MiB)
    check_core(core)


def test_option1_max_address_is_honoured() -> None:
    core = make_core(option1(), high=8 * GiB)
    status, addr = core.allocate_pages(A.AllocateMaxAddress, M.EfiLoaderData, (600 * MiB) >> 12, 4 * GiB - 1)
    assert status == S.SUCCESS and addr + 600 * MiB <= 4 * GiB
    # Nothing unaccepted below 1 GiB is big enough for another 900 MiB: the allocation fails, nothing is accepted.
    before = core.accepted_bytes()
    status, _ = core.allocate_pages(A.AllocateMaxAddress, M.EfiLoaderData, (900 * MiB) >> 12, GiB - 1)
    assert status == S.OUT_OF_RESOURCES and core.accepted_bytes() == before
    # Without a limit the same request is served from high memory.
    status, addr = core.allocate_pages(A.AllocateMaxAddress, M.EfiLoaderData, (900 * MiB) >> 12, MAX_UINT64)
    assert status == S.SUCCESS and addr >= 4 * GiB
    check_core(core)


def test_option1_pool() -> None:
    core = make_core(option1())
    status, buf = core.allocate_pool(M.EfiBootServicesData, 512 * MiB)
    assert status == S.SUCCESS
    assert core.acceptor.accepted_bytes("dxe-option1") == 544 * MiB  # 512 MiB + head/tail, in 32 MiB chunks
    assert core.free_pool(buf) == S.SUCCESS
    check_core(core)


def test_option1_allocate_address_over_unaccepted() -> None:
    core = make_core(option1())
    # Inside unaccepted memory: the request, widened to 2 MiB, is accepted and the allocation retried.
    status, addr = core.allocate_pages(A.AllocateAddress, M.EfiLoaderCode, 16, 512 * MiB + 4096)
    assert (status, addr) == (S.SUCCESS, 512 * MiB + 4096)
    assert core.acceptor.accepted_bytes("dxe-option1") == 2 * MiB
    (ev,) = core.acceptor.events
    assert "NOT_FOUND" in ev.reason  # the trigger the dropped patch never had
    # Straddling free and unaccepted memory: only the unaccepted part (widened to 2 MiB) is accepted.
    status, addr = core.allocate_pages(A.AllocateAddress, M.EfiLoaderCode, (3 * MiB) >> 12, 513 * MiB)
    assert (status, addr) == (S.SUCCESS, 513 * MiB)
    assert core.acceptor.accepted_bytes("dxe-option1") == 4 * MiB
    check_core(core)


def test_option1_first_fit_follows_the_dropped_patch() -> None:
    core = make_core(option1(Placement.FIRST_FIT), upfront=128 * MiB + 4096)
    status, _ = core.allocate_pages(A.AllocateAnyPages, M.EfiLoaderData, (200 * MiB) >> 12)
    assert status == S.SUCCESS
    (ev,) = core.acceptor.events
    assert ev.start == 128 * MiB + 4096  # from the entry's base, unaligned: a 4K head of TDCALLs
    lowest = make_core(option1(), upfront=128 * MiB + 4096)
    lowest.allocate_pages(A.AllocateAnyPages, M.EfiLoaderData, (200 * MiB) >> 12)
    (ev2,) = lowest.acceptor.events
    assert ev2.start == 130 * MiB
    assert core.protocol is not None and lowest.protocol is not None
    assert lowest.protocol.calls[0].tdcalls < core.protocol.calls[0].tdcalls
    # The patch only accepts inside one entry holding the whole AllocateAddress request.
    start = 128 * MiB - 4096 * 16
    assert core.allocate_pages(A.AllocateAddress, M.EfiLoaderCode, 64, start)[0] == S.NOT_FOUND
    check_core(core)
    check_core(lowest)


def test_option1_leaves_non_ram_alone() -> None:
    core = make_core(option1())
    assert core.allocate_pages(A.AllocateAddress, M.EfiLoaderData, 16, 2 * GiB)[0] == S.NOT_FOUND
    assert core.allocate_pages(A.AllocateAddress, M.EfiLoaderData, 16, 4 * GiB - 8 * 4096)[0] == S.NOT_FOUND
    assert core.accepted_bytes() == 0
    assert core.allocate_pages(A.AllocateAnyPages, M.EfiLoaderData, (4 * GiB) >> 12)[0] == S.OUT_OF_RESOURCES
    assert core.accepted_bytes() == 0
    check_core(core)


def test_option1_without_tdx_changes_nothing() -> None:
    core = make_core(option1(), with_tdx=False)
    assert core.allocate_pages(A.AllocateAnyPages, M.EfiLoaderData, (512 * MiB) >> 12)[0] == S.OUT_OF_RESOURCES


def test_on_demand_config_validation() -> None:
    with pytest.raises(ConfigError, match="chunk"):
        OnDemandConfig(chunk_bytes=1000)
    with pytest.raises(ConfigError, match="alignment"):
        OnDemandConfig(align_bytes=3 * MiB)
    assert OnDemandConfig(placement="first-fit").placement is Placement.FIRST_FIT  # type: ignore[arg-type]


# ----------------------------------------------------------------- option 2


def test_option2_accept_ahead_and_retry(core: DxeCore) -> None:
    out = core.acceptor.accept_for_loader(300 * MiB)
    assert out.status == S.SUCCESS and (out.start, out.end) == (128 * MiB, 448 * MiB)
    assert out.accepted_bytes == 320 * MiB
    out = core.acceptor.accept_for_loader(1 * MiB, start=4 * GiB + 4096)
    assert out.status == S.SUCCESS and out.accepted_bytes == 1 * MiB
    assert core.acceptor.accept_for_loader(1 * MiB, start=2 * GiB).status == S.NOT_FOUND

    def attempt() -> tuple[EfiStatus, int]:
        return core.allocate_pages(A.AllocateAnyPages, M.EfiLoaderData, (700 * MiB) >> 12)

    status, addr = core.acceptor.accept_and_retry(attempt, 700 * MiB)
    assert status == S.SUCCESS and addr
    assert core.acceptor.accepted_bytes("loader-option2") >= 1 * MiB + 320 * MiB + 700 * MiB
    check_core(core)


# ----------------------------------------------------------------- option 3


@pytest.fixture
def core3() -> DxeCore:
    return make_core(DxePolicy(option3=True))


@pytest.mark.parametrize(
    ("start", "size"),
    [
        (512 * MiB + 1, 4096),  # misaligned start
        (512 * MiB, 4095),  # misaligned size
        (512 * MiB, 0),  # empty
        (MAX_UINT64 - 0xFFF, 0x2000),  # wraps past 2^64
    ],
)
def test_option3_invalid_parameter(core3: DxeCore, start: int, size: int) -> None:
    assert core3.accept_memory(start, size) == S.INVALID_PARAMETER
    assert core3.accepted_bytes() == 0


@pytest.mark.parametrize(
    ("start", "size"),
    [
        (2 * GiB, 4096),  # hole below 4 GiB
        (GiB - 4096, 8192),  # runs off the end of RAM
        (1 << 48, 4096),  # beyond the GCD
        (4 * GiB - 2 * MiB, 4 * MiB),  # starts in the hole
    ],
)
def test_option3_not_ram_is_not_found(core3: DxeCore, start: int, size: int) -> None:
    assert core3.accept_memory(start, size) == S.NOT_FOUND
    assert core3.accepted_bytes() == 0


def test_option3_already_accepted_issues_nothing(core3: DxeCore) -> None:
    assert core3.protocol is not None
    key = core3.pages.map_key
    assert core3.accept_memory(16 * MiB, 16 * MiB) == S.SUCCESS
    assert core3.protocol.calls == [] and core3.pages.map_key == key


def test_option3_partial_overlap_accepts_only_the_unaccepted_part(core3: DxeCore) -> None:
    assert core3.tdx is not None
    key = core3.pages.map_key
    assert core3.accept_memory(100 * MiB, 50 * MiB) == S.SUCCESS
    assert core3.acceptor.accepted_bytes("loader-option3") == 22 * MiB
    assert core3.tdx.is_accepted(100 * MiB, 50 * MiB)
    assert core3.pages.map_key != key
    assert core3.tdx.incidents == []
    check_core(core3)


def test_option3_tdcall_failure_is_device_error(core3: DxeCore) -> None:
    assert core3.tdx is not None
    core3.tdx.inject_busy(4)
    assert core3.accept_memory(512 * MiB, 4 * MiB) == S.DEVICE_ERROR
    check_core(core3)


def test_option3_absent_without_policy(core: DxeCore) -> None:
    assert core.accept_memory(512 * MiB, 4 * MiB) == S.UNSUPPORTED


def test_partial_tdx_failure_keeps_records_and_truth_in_step() -> None:
    """An accept that fails half way (here: RAM declared past the TD's private GPA limit) is recorded exactly
    as far as the TDCALLs went, so GCD and the TDX module still agree."""
    limit = 1 << 47
    tdx = TdxModule(profile=profile_by_name("kvm-2m"), gpa_width=48)
    tdx.add_ram(0, 256 * MiB)
    tdx.add_ram(limit - 64 * MiB, 64 * MiB)
    tdx.accept_range(0, 256 * MiB, actor="sec")
    core = DxeCore(
        [Resource(0, 256 * MiB), Resource(limit - 64 * MiB, 128 * MiB, ResourceType.MEMORY_UNACCEPTED)],
        tdx=tdx,
        policy=DxePolicy(option3=True),
    )
    assert core.accept_memory(limit - 64 * MiB, 128 * MiB) == S.DEVICE_ERROR
    accepted = [(s, e) for s, e, st in tdx.state_ranges(limit - 64 * MiB, limit) if st == PageState.ACCEPTED]
    assert accepted == [(limit - 64 * MiB, limit)]
    assert core.gcd.ranges_of_type(EfiGcdMemoryType.EfiGcdMemoryTypeSystemMemory, limit - 64 * MiB) == accepted
    assert core.gcd.ranges_of_type(UNACCEPTED) == [(limit, limit + 64 * MiB)]
    check_core(core)
