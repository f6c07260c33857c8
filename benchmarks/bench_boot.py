"""Real boot of the Linux 6.12 EFI stub under unicorn: wall time from image start to kernel entry (goal: under
10 s), and what the Python firmware services cost, as the ratio of a run with call logging to one without and
as the time spent inside the services."""

from __future__ import annotations

import time

from lazyaccept.boot import BootScenario, run_boot
from lazyaccept.cpu.machine import EfiMachine
from lazyaccept.units import GiB, MiB


def timed_boot(log_calls: bool) -> tuple[float, float, int, str]:
    spans = {"start": 0.0, "services": 0.0, "calls": 0}
    original_start, original_service = EfiMachine.start_image, EfiMachine.on_service

    def start_image(self: EfiMachine, handle: int):
        t0 = time.perf_counter()
        try:
            return original_start(self, handle)
        finally:
            spans["start"] = time.perf_counter() - t0

    def on_service(self: EfiMachine, index: int) -> None:
        t0 = time.perf_counter()
        try:
            original_service(self, index)
        finally:
            spans["services"] += time.perf_counter() - t0
            spans["calls"] += 1

    EfiMachine.start_image, EfiMachine.on_service = start_image, on_service  # type: ignore[method-assign]
    try:
        rep = run_boot(
            BootScenario(
                ram=4 * GiB,
                smp=4,
                upfront="below-4g",
                initrd_size=64 * MiB,
                log_calls=log_calls,
                rng_seed=1,
                cpu="unicorn",
            )
        )
    finally:
        EfiMachine.start_image, EfiMachine.on_service = original_start, original_service  # type: ignore
    return spans["start"], spans["services"], int(spans["calls"]), rep.outcome


def main() -> None:
    on = timed_boot(True)
    off = timed_boot(False)
    print(
        f"4 GiB TD, below-4g, 64 MiB initrd, unicorn: image start -> kernel entry {on[0]:.2f} s with call "
        f"logging, {off[0]:.2f} s without (ratio {on[0] / off[0]:.3f}); outcome {on[3]}"
    )
    print(
        f"  {on[2]} service calls, {on[1]:.2f} s inside Python services ({100 * on[1] / on[0]:.1f}% of the run; "
        f"the rest is the stub's own code under unicorn)"
    )


if __name__ == "__main__":
    main()
