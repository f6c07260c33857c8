"""Debian's 6.12 kernel after edk2's own TDVF (tdvf --run-kernel): wall time of the kernel's run, from the
handoff to /init's power-off, on lazyaccept's TD vCPU with its busybox initramfs (default: 4 GiB, 1 vCPU, a 64 MiB
tmpfs fill), with the guest instructions per second and where the host's Python time goes (the hooks' counts).
The console's SHA-256 shows that a run repeats: virtual time (the TSC, the console timestamps) follows the guest's
instructions only. Printed with the host's 1-minute load average (the machine may be shared).

    python -m benchmarks kernel_speed [--ram-gib N] [--fill-mib N]"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench_kernel_speed")
    parser.add_argument("--ram-gib", type=int, default=4)
    parser.add_argument("--fill-mib", type=int, default=64)
    args = parser.parse_args()

    from lazyaccept.binaries import BinaryStore
    from lazyaccept.guest.initramfs import write_initramfs
    from lazyaccept.tdvf_run import TdvfRun, run_tdvf
    from lazyaccept.units import GiB

    store = BinaryStore()
    with tempfile.TemporaryDirectory() as tmp:
        initrd = write_initramfs(Path(tmp) / "initramfs.cpio.gz", store.busybox(), compress=True)
        rep = run_tdvf(TdvfRun(store.ovmf_fd(), ram=args.ram_gib * GiB, kernel=store.linux_vmlinuz(),
                               initrd=initrd.path, run_kernel=True, max_wall_s=1200,
                               cmdline=f"console=ttyS0 nokaslr lazyaccept.fill_mib={args.fill_mib}"))
    load = f"load {os.getloadavg()[0]:.1f}"
    k = rep.kernel_run
    if k is None:
        print(f"the kernel did not run: {rep.outcome}: {rep.detail} ({rep.wall_s:.1f} s, {load})")
        return
    rate = f", {k.instructions / k.wall_s / 1e6:.1f} M guest instructions/s" if k.instructions else ""
    print(f"{args.ram_gib} GiB, 1 vCPU, fill {args.fill_mib} MiB: {rep.outcome} after {rep.wall_s:.1f} s wall "
          f"({load}); the kernel {k.wall_s:.1f} s{rate}")
    print(f"  {k.instructions or 0:,} guest instructions, {k.virtual_ns / 1e6:.3f} ms virtual; console "
          f"{len(k.console):,} characters, SHA-256 {hashlib.sha256(k.console.encode()).hexdigest()[:16]}")
    print(f"  TDCALLs {sum(k.tdcalls.values()):,}, #VE {sum(k.ve.values()):,}, accepted by the kernel "
          f"{k.accepted_bytes >> 20} MiB ({k.fill_accepted_bytes or 0} bytes during the fill)")


if __name__ == "__main__":
    main()
