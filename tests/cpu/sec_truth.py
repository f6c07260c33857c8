"""Running edk2's own SEC to the end of its accepts and holding the Python SEC model to the TDX module's truth
(shared by the TD vCPU, SMP and regression tests)."""

from __future__ import annotations

from collections.abc import Mapping

from lazyaccept.cpu.unicorn.td_machine import TdMachine
from lazyaccept.cpu.unicorn.td_vcpu import TdRunResult
from lazyaccept.firmware.profiles import Edk2Profile
from lazyaccept.firmware.sec.policy import UpfrontPolicy
from lazyaccept.firmware.sec.sec import SecResult, run_sec, verify_against_truth
from lazyaccept.records import StopKind
from lazyaccept.spec.tdx import TdcallLeaf
from lazyaccept.tdx.module import PageState, TdxModule
from lazyaccept.vmm.td import Td, TdConfig, build_td


def accepted(tdx: TdxModule) -> list[tuple[int, int]]:
    return [(s, e) for s, e, state in tdx.state_ranges() if state == PageState.ACCEPTED]


def stop_after_sec_accepts(machine: TdMachine) -> None:
    """Stop at vCPU 0's first TDCALL after its accepts that is neither an accept nor TDG.VP.INFO (which SEC's
    MpSerializeStart and the APs' return to the mailbox issue): SEC's accept phase, with its rendezvous, is over."""
    seen = False

    def until(leaf: int, _regs: Mapping[str, int]) -> str | None:
        nonlocal seen
        if machine.current != 0:
            return None
        if leaf == TdcallLeaf.MEM_PAGE_ACCEPT:
            seen = True
            return None
        if seen and leaf != TdcallLeaf.VP_INFO:
            return f"vCPU 0's first {TdcallLeaf(leaf).name} after SEC's accepts"
        return None

    machine.until = until


def run_real_sec(config: TdConfig, max_wall_s: float = 60) -> tuple[Td, TdMachine, TdRunResult]:
    """edk2's own SEC on a TD built from `config`, stopped when its accepts are done."""
    td = build_td(config)
    machine = TdMachine(td)
    stop_after_sec_accepts(machine)
    result = machine.run(max_wall_s=max_wall_s)
    assert result.stop.kind == StopKind.REQUESTED and result.vcpu == 0, (result.stop, result.module)
    assert result.module == "SecMain" and td.tdx.termination is None
    return td, machine, result


def assert_sec_model_agrees(td: Td, config: TdConfig, profile: Edk2Profile | None = None) -> tuple[Td, SecResult]:
    """The Python SEC on the same TD accepts exactly what the real one did, with the same 2M/4K accept counts."""
    model = build_td(config)
    sec = run_sec(model, UpfrontPolicy("below-4g"), profile)
    assert accepted(td.tdx) == accepted(model.tdx)
    assert verify_against_truth(td, sec) == []
    real, modelled = td.tdx.stats, model.tdx.stats
    assert (real.accepted_2m, real.accepted_4k) == (modelled.accepted_2m, modelled.accepted_4k)
    return model, sec
