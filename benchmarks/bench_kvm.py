"""The Linux 6.12 EFI stub from image start to kernel entry under KVM and under unicorn, in one process:
4 GiB TD, below-4g up front, 64 MiB initrd (goal: KVM at least 20x faster). Wall time of the stub's run only
(StartImage to the jump into the kernel); the firmware's Python setup before it is the same for both."""

from __future__ import annotations

import time
from typing import Any

from lazyaccept.cpu.select import detect_kvm, kvm_factory, unicorn_factory
from lazyaccept.units import GiB, MiB


def timed_stub(factory: Any) -> tuple[float, str, Any]:
    """(seconds from image start to kernel entry, outcome, backend) of one boot on the backend `factory` makes."""
    import lazyaccept.boot as boot
    from lazyaccept.boot import BootScenario, run_boot
    from lazyaccept.cpu.machine import EfiMachine
    from lazyaccept.cpu.select import prepare_machine

    spans: dict[str, Any] = {}

    class Machine(EfiMachine):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["backend_factory"] = factory
            super().__init__(*args, **kwargs)
            prepare_machine(self)
            spans["backend"] = self.backend

        def start_image(self, handle: int) -> Any:
            t0 = time.perf_counter()
            try:
                return super().start_image(handle)
            finally:
                spans["run_s"] = time.perf_counter() - t0

    original = boot.EfiMachine
    boot.EfiMachine = Machine  # type: ignore[misc]
    try:
        rep = run_boot(
            BootScenario(ram=4 * GiB, smp=4, upfront="below-4g", initrd_size=64 * MiB, log_calls=False, rng_seed=1)
        )
    finally:
        boot.EfiMachine = original  # type: ignore[misc]
    return spans["run_s"], rep.outcome, spans["backend"]


def main() -> None:
    info = detect_kvm()
    print(f"KVM: {info.detail}")
    if not info.usable:
        print("no usable KVM: nothing to compare")
        return
    timed_stub(kvm_factory)  # warm up: imports, the kernel's page cache, THP
    kvm_s, kvm_outcome, backend = min((timed_stub(kvm_factory) for _ in range(3)), key=lambda r: r[0])
    unicorn_s, unicorn_outcome, _ = timed_stub(unicorn_factory)
    stats = backend.stats
    print(
        f"4 GiB TD, below-4g, 64 MiB initrd: image start -> kernel entry: KVM {kvm_s:.3f} s ({kvm_outcome}), "
        f"unicorn {unicorn_s:.2f} s ({unicorn_outcome}); KVM is {unicorn_s / kvm_s:.0f}x faster (goal 20x)"
    )
    print(
        f"  KVM: {stats.exits} exits ({stats.services} services, {sum(stats.exceptions.values())} exceptions), "
        f"{stats.kvm_run_s:.3f} s inside KVM_RUN, {stats.root_switches} page-table root switches"
    )


if __name__ == "__main__":
    main()
