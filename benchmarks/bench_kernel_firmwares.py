"""The real kernel after each firmware on the same TD (issue 16): Debian's 6.12 with lazyaccept's initramfs and
`console=ttyS0 nokaslr` on 4 GiB, 1 vCPU, once after the Python firmware (`boot --run-kernel`, profile 2025.02) and
once after edk2's own TDVF 2025.02 (`tdvf --run-kernel`). Printed side by side: the outcome, wall time (the whole
run and the kernel's part), what the kernel accepted and in how many TDCALLs, the stub's unaccepted table, and
/proc/meminfo's Unaccepted before and after /init's fill, with the difference between the two firmwares.
Each run takes minutes; nothing is asserted.

    python -m benchmarks kernel_firmwares"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from lazyaccept.binaries import BinaryStore
from lazyaccept.boot import BootScenario, run_boot
from lazyaccept.guest.initramfs import parse_meminfo_blocks, write_initramfs
from lazyaccept.tdvf_run import TdvfRun, run_tdvf
from lazyaccept.units import GiB, human_size

CMDLINE = "console=ttyS0 nokaslr"
MAX_WALL_S = 1200.0


def _row(name: str, outcome: str, wall: float, kernel_wall: float, accepted: int, tdcalls: int, table: int,
         console: str) -> dict[str, int]:
    meminfo = parse_meminfo_blocks(console)
    before, after = meminfo.before.get("Unaccepted"), meminfo.after.get("Unaccepted")
    print(f"{name:<16} {outcome:<13} {wall:>7.1f} s {kernel_wall:>7.1f} s  kernel accepted {human_size(accepted)} in "
          f"{tdcalls} TDCALLs; table {human_size(table)}; Unaccepted {before} kB before, {after} kB after the fill; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    return dict(meminfo.before)


def main() -> None:
    store = BinaryStore()
    with tempfile.TemporaryDirectory() as folder:
        initrd = write_initramfs(Path(folder) / "initramfs.cpio.gz", store.busybox(), compress=True).path
        started = time.monotonic()
        rep = run_boot(BootScenario(ram=4 * GiB, smp=1, initrd=str(initrd), cmdline=CMDLINE, run_kernel=True,
                                    timeout_s=MAX_WALL_S))
        k = rep.kernel
        if k is None:
            print(f"Python firmware: no kernel run ({rep.outcome}: {rep.reason})")
            return
        table = (rep.unaccepted_table or {}).get("set_bytes", 0)
        python = _row("Python firmware", str(k.outcome), time.monotonic() - started, k.run.wall_s,
                      k.run.accepted_bytes, k.run.accept_tdcalls, table, k.console)
        started = time.monotonic()
        real = run_tdvf(TdvfRun(store.ovmf_fd(), ram=4 * GiB, kernel=store.linux_vmlinuz(), initrd=initrd,
                                cmdline=CMDLINE, run_kernel=True, max_wall_s=MAX_WALL_S))
        if real.kernel_run is None:
            print(f"edk2's TDVF: no kernel run ({real.outcome}: {real.detail})")
            return
        handoff = real.kernel.handoff if real.kernel is not None else None
        table = handoff.table.set_bytes() if handoff is not None and handoff.table is not None else 0
        tdvf = _row("edk2's TDVF", str(real.outcome), time.monotonic() - started, real.kernel_run.wall_s,
                    real.kernel_run.accepted_bytes, real.kernel_run.accept_tdcalls, table, real.console)
    for field in ("MemTotal", "Unaccepted"):
        if field in python and field in tdvf:
            print(f"{field} before the fill: Python firmware - TDVF = {python[field] - tdvf[field]} kB")


if __name__ == "__main__":
    main()
