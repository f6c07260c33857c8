"""QueryVariableInfo: the store the attributes pick, what is left of it, the largest variable; edk2's checks.
shim 16.1 asks it before mirroring MokList into MokListRT (without it: "Could not get variable storage info")."""

from __future__ import annotations

import pytest

from lazyaccept.cpu.machine import EfiMachine, MachineConfig
from lazyaccept.firmware.dxe.runtime import (
    BS_RT,
    MAX_VARIABLE_SIZE,
    NV_BS_RT,
    NV_STORE_BYTES,
    VAR_AUTHENTICATED_WRITE_ACCESS,
    VAR_BOOTSERVICE_ACCESS,
    VAR_RUNTIME_ACCESS,
    VARIABLE_HEADER_BYTES,
    VOLATILE_STORE_BYTES,
)
from lazyaccept.firmware.platform import start_dxe
from lazyaccept.firmware.sec import parse_policy, run_sec
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.units import GiB
from lazyaccept.vmm.td import TdConfig, build_td
from tests.firmware.drivers.test_variables import LOADER, Vars


@pytest.fixture
def m() -> EfiMachine:
    td = build_td(TdConfig(ram_size=1 * GiB, vcpus=1))
    return EfiMachine(td.tdx, start_dxe(td, run_sec(td, parse_policy("256M"))), MachineConfig())


def query(m: EfiMachine, buf: int, attributes: int) -> tuple[int, int, int, int]:
    for i in range(3):
        m.w64(buf + 8 * i, 0xDEAD)
    status = m.rt_QueryVariableInfo(attributes, buf, buf + 8, buf + 16)
    return status, m.r64(buf), m.r64(buf + 8), m.r64(buf + 16)


def test_volatile_and_non_volatile_stores_are_counted_apart(m: EfiMachine) -> None:
    v = Vars(m)
    buf = v.buf + 0x8000
    status, store, left, largest = query(m, buf, BS_RT)
    assert status == S.SUCCESS and store == VOLATILE_STORE_BYTES
    assert largest == MAX_VARIABLE_SIZE - VARIABLE_HEADER_BYTES
    assert v.set("MokListRT", LOADER, BS_RT, bytes(974)) == S.SUCCESS
    after = query(m, buf, BS_RT)
    assert left - after[2] == VARIABLE_HEADER_BYTES + 2 * len("MokListRT\0") + 974
    nv = query(m, buf, NV_BS_RT)
    assert nv[:2] == (S.SUCCESS, NV_STORE_BYTES)
    assert v.set("Saved", LOADER, NV_BS_RT, b"x") == S.SUCCESS
    assert query(m, buf, BS_RT)[2] == after[2] and query(m, buf, NV_BS_RT)[2] < nv[2]  # each store its own


def test_edk2s_checks(m: EfiMachine) -> None:
    buf = Vars(m).buf + 0x8000
    assert m.rt_QueryVariableInfo(BS_RT, 0, buf + 8, buf + 16) == S.INVALID_PARAMETER
    assert query(m, buf, 0)[0] == S.INVALID_PARAMETER
    assert query(m, buf, VAR_RUNTIME_ACCESS)[0] == S.INVALID_PARAMETER  # runtime without boot-service access
    assert query(m, buf, BS_RT | VAR_AUTHENTICATED_WRITE_ACCESS)[0] == S.UNSUPPORTED
    assert query(m, buf, 0x100 | BS_RT)[0] == S.UNSUPPORTED
    assert query(m, buf, VAR_BOOTSERVICE_ACCESS)[0] == S.SUCCESS
    assert [c.name for c in m.calls][-1] == "QueryVariableInfo"
    m.dxe.exited = True
    assert query(m, buf, VAR_BOOTSERVICE_ACCESS)[0] == S.INVALID_PARAMETER  # only runtime stores after exit
    assert query(m, buf, BS_RT)[0] == S.SUCCESS
