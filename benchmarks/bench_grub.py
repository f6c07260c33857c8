"""The whole chain under unicorn: Boot Manager -> Debian's GRUB 2.12 from a GPT disk -> the Linux 6.12 EFI stub
-> kernel entry. Wall time and peak host memory (RSS: unicorn's guest memory is not Python memory) of each
scenario, each run in a fresh process, with the virtual time of the GRUB and stub phases."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASES = [
    ("64G, 256M up front, 1 GiB initrd, option 1", dict(ram="64G", upfront="256M", initrd="1G", option1=True)),
    ("64G, 256M up front, 1 GiB initrd, no option (fails)", dict(ram="64G", upfront="256M", initrd="1G")),
    ("4G, below-4g, 64 MiB initrd", dict(ram="4G", upfront="below-4g", initrd="64M")),
    ("64G, below-4g, 64 MiB initrd", dict(ram="64G", upfront="below-4g", initrd="64M")),
]
SLOW_CASE = (
    "4G, below-4g, 64 MiB initrd, GRUB's memmove emulated",
    dict(ram="4G", upfront="below-4g", initrd="64M", fast_paths=False),
)

CHILD = """
import json, resource, sys, time
from lazyaccept.boot import BootScenario, run_boot
from lazyaccept.units import parse_size
a = json.loads(sys.argv[1])
t0 = time.perf_counter()
rep = run_boot(BootScenario(ram=parse_size(a["ram"]), smp=8, upfront=a["upfront"], initrd_size=parse_size(a["initrd"]),
    option1=a.get("option1", False), grub=True, rng_seed=1, os_ready_bytes=0, log_calls=True,
    grub_fast_paths=a.get("fast_paths", True)))
wall = time.perf_counter() - t0
phases = {p.name: p.virtual_ns for p in rep.phases}
print(json.dumps(dict(wall=wall, rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    outcome=rep.outcome, phases=phases, reads=rep.grub["esp"]["devices"][0]["reads"])))
"""


def run_case(args: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--with-emulated-memmove", action="store_true", help="also run GRUB without its fast paths")
    opts = parser.parse_args()
    cases = CASES + ([SLOW_CASE] if opts.with_emulated_memmove else [])
    print(
        f"{'scenario':56} {'outcome':15} {'wall':>7} {'peak RSS':>9} {'disk reads':>10} {'GRUB (virt)':>11} "
        f"{'stub (virt)':>11}"
    )
    for name, args in cases:
        r = run_case(args)
        grub = sum(v for k, v in r["phases"].items() if k.startswith(("Boot Manager", "GRUB")))
        stub = sum(v for k, v in r["phases"].items() if k.startswith("stub"))
        print(
            f"{name:56} {r['outcome']:15} {r['wall']:6.1f}s {r['rss_mb']:7.0f}MB {r['reads']:>10} "
            f"{grub / 1e9:10.3f}s {stub / 1e9:10.2f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
