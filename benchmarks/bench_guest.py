"""Guest OS model on a 4 TiB TD: VMM + SEC + stub + Linux 6.12 lazy boot, then a fill of 3 TiB on 64 vCPUs.

Prints wall time and peak traced memory; the work must grow with runs, not with the TD's million 4 MiB chunks.
"""

from __future__ import annotations

from benchmarks.measure import measure
from lazyaccept.guest.linux import LinuxConfig
from lazyaccept.guest.workload import boot_to_ready, fill_memory
from lazyaccept.units import TiB, format_ns, human_size


def boot_and_fill(profile: str, mode: str):
    result, run = boot_to_ready(4 * TiB, 64, profile=profile, kernel=LinuxConfig(accept_memory=mode))
    fill = fill_memory(run.linux, 3 * TiB, workers=64) if mode == "lazy" else None
    return result, fill, run


def main() -> None:
    for profile in ("kvm-2m", "kvm-4k"):
        for mode in ("lazy", "eager"):
            wall, peak, (boot, fill, run) = measure(lambda p=profile, m=mode: boot_and_fill(p, m))
            line = (
                f"4 TiB TD, 64 vCPUs, {profile:6} {mode:5}: wall {wall * 1e3:6.1f} ms, peak {peak:5.2f} MB; "
                f"boot {format_ns(boot.ns)}"
            )
            if fill is not None:
                line += (
                    f", fill 3 TiB {format_ns(fill.ns)} ({human_size(fill.accepted_bytes)} accepted, "
                    f"{run.linux.counters.chunks_accepted} chunks)"
                )
            print(line)


if __name__ == "__main__":
    main()
