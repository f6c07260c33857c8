"""The KVM backend must never endanger the host process.

On kvm-pvm a virtual TSC needs the host thread's TSC disabled during KVM_RUN; any RDTSC the process makes
meanwhile (the vDSO clock read by a profiler, by the GIL's timed wait, by a signal handler) kills it with SIGSEGV.
The backend does it only inside a machine-code trampoline with signals blocked (kvm.tsc_guarded_run). These tests
run what used to crash: guest runs with a Python signal handler reading the clock every millisecond, and a GRUB
boot under cProfile and under that handler, each with the same handoff as a plain run. What could kill the process
runs in a child process, so that a regression is a failed test with the child's signal, not a dead test run.

Tests that need KVM skip where /dev/kvm is absent, unless the machine is supposed to have it (then they fail).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import lazyaccept
import lazyaccept.cpu.kvm.ioctl as kvm_module
from lazyaccept.cpu.kvm.ioctl import PR_TSC_ENABLE, KvmError, host_tsc_mode, thread_signal_mask, tsc_guarded_run
from lazyaccept.cpu.select import KvmInfo, RunNeeds, choose_backend, detect_kvm
from lazyaccept.units import GiB
from tests.cpu.test_kvm_backend import CALL_EXIT, CODE, FakeClient, _backend, _call_thunk, _run

ROOT = Path(__file__).resolve().parents[2]
SPIN = b"\xeb\xfe"  # jmp $: a guest that never exits by itself


def in_child(function: str, *args: Any) -> dict[str, Any]:
    """Run `function(*args)` of this module in a fresh interpreter; its JSON result, or a failure naming the
    signal that killed the child."""
    code = (
        "import faulthandler, json, sys; faulthandler.enable()\n"
        "import tests.cpu.test_kvm_host_safety as t\n"
        f"print('RESULT ' + json.dumps(getattr(t, {function!r})(*{list(args)!r})))\n"
    )
    src = str(Path(lazyaccept.__file__).resolve().parents[1])  # the same lazyaccept as this process
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, str(ROOT), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if child.returncode < 0:
        pytest.fail(f"the child died of {signal.Signals(-child.returncode).name}:\n{child.stderr[-3000:]}")
    assert child.returncode == 0, child.stderr[-3000:]
    lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, child.stdout[-2000:]
    return json.loads(lines[-1][len("RESULT ") :])


# ================================================================================================ the trampoline
def test_the_trampoline_returns_with_the_tsc_enabled_and_the_signal_mask_restored() -> None:
    function, why = tsc_guarded_run()
    if function is None:  # a host that refuses executable anonymous memory: said so (the backend then never uses it)
        assert why and "\n" not in why
        return
    masks = (ctypes.c_uint64 * 2)((1 << 64) - 1, 0)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        before = thread_signal_mask()
        assert before & (1 << (signal.SIGUSR1 - 1))
        result = function(-1, ctypes.addressof(masks))  # type: ignore[operator]  # KVM_RUN on no fd: EBADF
        assert result == -errno.EBADF
        assert host_tsc_mode() == PR_TSC_ENABLE
        assert thread_signal_mask() == before and masks[1] == before  # what it saved is what it put back
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def test_a_host_that_refuses_an_executable_page_gets_no_trampoline(monkeypatch: pytest.MonkeyPatch) -> None:
    real = kvm_module._libc

    class RefusingExec:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def mprotect(self, *args: Any) -> int:
            ctypes.set_errno(errno.EACCES)
            return -1

    monkeypatch.setattr(kvm_module, "_libc", RefusingExec())
    function, why = kvm_module._make_tsc_guard()
    assert function is None and "refused" in why and os.strerror(errno.EACCES) in why


@pytest.mark.parametrize("refused", ["trampoline", "KVM_SET_SIGNAL_MASK"])
def test_without_the_trampoline_or_the_signal_mask_the_host_tsc_is_never_touched(
    refused: str, kvm: KvmInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lazyaccept.cpu.kvm.backend as kb

    def never(self: Any) -> int:
        raise AssertionError("KVM_RUN with the host TSC disabled, though its safeguards were refused")

    def refuse_mask(self: Any, blocked: int | None) -> None:
        raise KvmError(errno.EINVAL, "KVM ioctl KVM_SET_SIGNAL_MASK: refused by the test")

    monkeypatch.setattr(kb.Vcpu, "run_tsc_guarded", never)
    if refused == "trampoline":
        monkeypatch.setattr(kb, "tsc_guarded_run", lambda: (None, "refused by the test"))
    else:
        monkeypatch.setattr(kb.Vcpu, "set_signal_mask", refuse_mask)
    client = FakeClient()
    with _backend("kvm", client) as b:
        routed = b.route_io(virtual_tsc=True)
        assert not b._host_tsc_fault
        if "rdtsc" not in routed:  # kvm-pvm: RDTSC needs the host's TSC disabled, so it is not routable
            assert "refused by the test" in b.rdtsc_problem
        code = b"\x0f\x31" + b"\x48\x89\xc2" + _call_thunk(3) + CALL_EXIT  # rdtsc; mov rdx, rax
        assert _run(b, code).kind == "exit"
        assert host_tsc_mode() == PR_TSC_ENABLE
    info = detect_kvm()
    if not info.routes_rdtsc:
        assert "refused by the test" in info.detail
        assert choose_backend("auto", RunNeeds(virtual_tsc=True), info).name == "unicorn"


# ================================================================================================ guest runs
def spin_with_a_virtual_tsc(handler_period_s: float) -> dict[str, Any]:
    """(In a child.) A guest spinning with RDTSC routed for 0.3 s of time budget, with a Python SIGALRM handler
    reading the clock every handler_period_s (0: none, the backend's own alarm then ends the spin)."""
    import time

    seen: list[int] = []

    def on_alarm(_signum: int, _frame: object) -> None:
        time.monotonic()  # the vDSO clock: RDTSC, fatal while the thread's TSC is disabled
        seen.append(host_tsc_mode())

    client = FakeClient()
    with _backend("kvm", client) as b:
        routed = b.route_io(virtual_tsc=True)
        if handler_period_s:
            signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, handler_period_s, handler_period_s)
        try:
            stop = _run(b, SPIN, timeout_s=0.3)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        return dict(
            stop=[stop.kind, stop.rip],
            routed=routed,
            guarded=b._host_tsc_fault,
            interrupts=b.stats.interrupts,
            handler_calls=len(seen),
            handler_tsc_modes=sorted(set(seen)),
            tsc_mode_after=host_tsc_mode(),
        )


@pytest.mark.parametrize("handler_period_s", [0, 0.001], ids=["backend-alarm", "handler-every-1ms"])
def test_signals_interrupt_a_guest_run_and_their_handlers_see_the_tsc_enabled(
    handler_period_s: float, kvm: KvmInfo, record_property: Any
) -> None:
    result = in_child("spin_with_a_virtual_tsc", handler_period_s)
    record_property("cpu_backend", f"kvm ({kvm.detail}); host TSC guarded: {result['guarded']}")
    assert result["stop"] == ["budget", CODE]  # the spin ended by the time budget, through EINTR of KVM_RUN
    assert result["interrupts"] >= 1 and result["tsc_mode_after"] == PR_TSC_ENABLE
    assert ("rdtsc" in result["routed"]) == kvm.routes_rdtsc
    if handler_period_s:
        assert result["handler_calls"] >= 1 and result["handler_tsc_modes"] == [PR_TSC_ENABLE]


# ================================================================================================ a GRUB boot
def grub_boot(mode: str = "plain") -> dict[str, Any]:
    """A 4 GiB GRUB boot on `--cpu kvm` (GRUB asks for a virtual TSC) run plainly, under cProfile ("profile") or
    with a Python SIGALRM handler reading the clock every millisecond ("alarm-1ms"): its handoff, and what the
    backend saw."""
    import cProfile
    import time

    import lazyaccept.boot as boot

    made: list[Any] = []
    calls = [0]

    class Machine(boot.EfiMachine):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    def on_alarm(_signum: int, _frame: object) -> None:
        time.monotonic()
        calls[0] += 1

    scenario = boot.BootScenario(ram=4 * GiB, grub=True, cpu="kvm", smp=2, rng_seed=7, os_ready_bytes=0)
    original = boot.EfiMachine
    boot.EfiMachine = Machine  # type: ignore[misc]
    try:
        if mode == "profile":
            report = cProfile.Profile().runcall(boot.run_boot, scenario)
        elif mode == "alarm-1ms":
            signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)  # the backend's own alarm then stays off
            try:
                report = boot.run_boot(scenario)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
        else:
            report = boot.run_boot(scenario)
    finally:
        boot.EfiMachine = original  # type: ignore[misc]
    machine = made[-1]
    handoff: dict[str, Any] = dict(
        outcome=report.outcome,
        reason=report.reason,
        kernel_entry=report.kernel_entry,
        console=report.console,
        call_counts=report.call_counts,
        handoff_ok=report.handoff_ok,
        handoff_problems=report.handoff_problems,
        timeline=[[p.name, p.virtual_ns, p.accepted_bytes] for p in report.phases],
    )
    if machine.kernel_entry is not None:
        handoff["boot_params_sha256"] = hashlib.sha256(machine.backing.read(machine.kernel_entry[1], 4096)).hexdigest()
    return dict(
        handoff=handoff,
        cpu=report.cpu,
        cpu_notes=report.cpu_notes,
        guarded=machine.backend._host_tsc_fault,
        interrupts=machine.backend.stats.interrupts,
        handler_calls=calls[0],
    )


@pytest.fixture(scope="module")
def plain_grub_boot(kvm: KvmInfo) -> dict[str, Any]:
    return grub_boot()


@pytest.mark.real_binary
@pytest.mark.parametrize("mode", ["profile", "alarm-1ms"])
def test_a_grub_boot_hands_off_the_same_under_cprofile_and_a_busy_signal_handler(
    mode: str, plain_grub_boot: dict[str, Any], kvm: KvmInfo, record_property: Any
) -> None:
    result = in_child("grub_boot", mode)
    record_property("cpu_backend", f"kvm ({kvm.detail}); host TSC guarded: {result['guarded']}")
    assert result["cpu"] == plain_grub_boot["cpu"] == "kvm"
    assert plain_grub_boot["handoff"]["outcome"] == "kernel-entry", plain_grub_boot["handoff"]["reason"]
    assert "boot_params_sha256" in result["handoff"]
    for key, value in plain_grub_boot["handoff"].items():
        assert result["handoff"][key] == value, f"{key} differs from the plain run"
    assert result["guarded"] == plain_grub_boot["guarded"]
    if mode == "alarm-1ms":
        assert result["handler_calls"] >= 1
        assert result["interrupts"] >= 1  # KVM_RUN was interrupted by the handler's signal, and resumed
