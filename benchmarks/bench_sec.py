"""VMM + SEC for a 4 TiB TD with 64 vCPUs under each up-front policy (goal, issue 3: < 0.5 s and < 100 MB)."""

from __future__ import annotations

from benchmarks.measure import measure
from lazyaccept.firmware.sec import parse_policy, run_sec
from lazyaccept.units import TiB, format_ns, human_size
from lazyaccept.vmm.td import TdConfig, build_td


def vmm_and_sec(policy: str, profile: str):
    td = build_td(TdConfig(4 * TiB, 64, profile=profile))
    return run_sec(td, parse_policy(policy))


def main() -> None:
    for profile in ("kvm-2m", "kvm-4k"):
        for policy in ("below-4g", "512M", "256M", "all"):
            wall, peak, sec = measure(lambda p=policy, pr=profile: vmm_and_sec(p, pr))
            print(
                f"4 TiB TD, 64 vCPUs, {profile:6} {policy:8}: wall {wall * 1e3:6.1f} ms, peak {peak:5.2f} MB; "
                f"accepted {human_size(sec.accepted_bytes)}, SEC virtual time {format_ns(sec.phase_ns)}"
            )


if __name__ == "__main__":
    main()
