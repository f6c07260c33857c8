"""ExitBootServices: the map key, the event groups, accept-all unless the OS opts in, the end of boot services."""

from __future__ import annotations

import pytest

from lazyaccept.firmware.dxe.exit import BootServicesExited, DxeCore, DxePolicy
from lazyaccept.firmware.dxe.invariants import check_core
from lazyaccept.spec.efi import (
    OVMF_SEV_MEMORY_ACCEPTANCE_PROTOCOL_GUID,
    EfiAllocateType,
    EfiMemoryType,
    EfiStatus,
)
from lazyaccept.tdx.module import PageState
from lazyaccept.units import GiB

from .conftest import make_core

S = EfiStatus
M = EfiMemoryType


def fresh_key(core: DxeCore) -> int:
    probe = core.get_memory_map(0)
    return core.get_memory_map(probe.memory_map_size).map_key


def test_stale_key_fails_and_boot_services_stay(core: DxeCore) -> None:
    failed: list[int] = []
    before: list[int] = []
    core.on_exit_failed.append(lambda: failed.append(1))
    core.before_exit.append(lambda: before.append(1))
    key = fresh_key(core)
    core.allocate_pages(EfiAllocateType.AllocateAnyPages, M.EfiLoaderData, 1)
    assert core.exit_boot_services(1, key) == S.INVALID_PARAMETER
    assert failed == [1] and not core.exited
    # Per UEFI only GetMemoryMap and ExitBootServices may follow; edk2 allows more, the model records it.
    core.allocate_pool(M.EfiLoaderData, 16)
    assert any("AllocatePool" in w for w in core.warnings)
    assert core.exit_boot_services(1, fresh_key(core)) == S.SUCCESS
    assert before == [1]  # the before-exit group is signalled on the first call only


def test_boot_services_are_gone_after_exit(core: DxeCore) -> None:
    exited: list[int] = []
    core.on_exit.append(lambda: exited.append(1))
    assert core.exit_boot_services(1, fresh_key(core)) == S.SUCCESS
    assert exited == [1] and core.exited
    for call in (
        lambda: core.allocate_pages(EfiAllocateType.AllocateAnyPages, M.EfiLoaderData, 1),
        lambda: core.free_pages(0x100000, 1),
        lambda: core.get_memory_map(0),
        lambda: core.allocate_pool(M.EfiLoaderData, 8),
        lambda: core.free_pool(None),
        lambda: core.exit_boot_services(1, 0),
        lambda: core.get_memory_space_descriptor(0),
        lambda: core.accept_memory(0, 4096),
    ):
        with pytest.raises(BootServicesExited, match="after ExitBootServices"):
            call()


def test_accept_all_at_exit_changes_the_key_then_the_retry_succeeds() -> None:
    core = make_core(DxePolicy(accept_all_at_exit=True))
    assert core.locate_protocol(OVMF_SEV_MEMORY_ACCEPTANCE_PROTOCOL_GUID) is None
    key = fresh_key(core)
    assert core.exit_boot_services(1, key) == S.INVALID_PARAMETER
    result = core.get_memory_map(1 << 20)
    assert result.status == S.SUCCESS
    assert all(d.type != M.EfiUnacceptedMemoryType for d in result.descriptors)
    assert core.exit_boot_services(1, result.map_key) == S.SUCCESS
    assert core.exit_attempts == 2
    assert core.acceptor.accepted_bytes("exit-accept-all") == 896 * 2**20 + GiB
    assert core.tdx is not None
    assert core.tdx.bytes_in_state(PageState.ACCEPTED) == 2 * GiB
    check_core(core)


def test_os_opt_in_skips_accept_all() -> None:
    core = make_core(DxePolicy(accept_all_at_exit=True, memory_acceptance_protocol=True))
    proto = core.locate_protocol(OVMF_SEV_MEMORY_ACCEPTANCE_PROTOCOL_GUID)
    assert proto is not None
    assert proto.allow_unaccepted_memory() == S.SUCCESS  # type: ignore[attr-defined]
    assert core.exit_boot_services(1, fresh_key(core)) == S.SUCCESS
    assert core.accepted_bytes() == 0


def test_protocol_present_but_unused_still_accepts_all() -> None:
    core = make_core(DxePolicy(accept_all_at_exit=True, memory_acceptance_protocol=True))
    assert core.exit_boot_services(1, fresh_key(core)) == S.INVALID_PARAMETER
    assert core.acceptor.unaccepted_bytes() == 0


def test_opt_in_without_handler_is_harmless() -> None:
    core = make_core(DxePolicy(memory_acceptance_protocol=True))
    proto = core.locate_protocol(OVMF_SEV_MEMORY_ACCEPTANCE_PROTOCOL_GUID)
    assert proto is not None and proto.allow_unaccepted_memory() == S.SUCCESS  # type: ignore[attr-defined]
    assert core.exit_boot_services(1, fresh_key(core)) == S.SUCCESS
    assert core.acceptor.unaccepted_bytes() == 896 * 2**20 + GiB


def test_policy_names() -> None:
    assert DxePolicy().name == "upstream"
    assert DxePolicy(option1=True, option3=True).name == "option1+option3"
    assert DxePolicy(accept_all_at_exit=True, memory_acceptance_protocol=True).name == "accept-all-at-exit+opt-in"
