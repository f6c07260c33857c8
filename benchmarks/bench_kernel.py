"""The real Debian kernel after the real OVMF on lazyaccept's TD (tdvf --run-kernel) to the busybox /init, which
prints /proc/meminfo and powers off: one line per (kernel, firmware, RAM) with the outcome, the wall time, the
virtual time at which the kernel ran /init (its own printk clock, on the TD's virtual TSC), the bytes the kernel
accepted itself, MemTotal and Unaccepted before/after /init's fill, and the RTC line (rtc_cmos on the DSDT's
PNP0B00). The default sweep is issue 16's: 6.12 on 2025.02 at 1G, 2G, 4G, 8G, 16G, 7.2 on 2026.08 and 2025.02 at
4G, and 6.12 at 67000M (the size at which the Linux model says reserve_unaccepted oopses). Each run takes minutes
on a shared 2-core machine, so pick with --only.

    python -m benchmarks kernel [--only 6.12/2025.02/4G 6.12/2025.02/4G/smp2 ...] [--max-wall S]
                                [--append CMDLINE] [--save-console]

Measured 2026-12-07 (1 vCPU, shared 2-core host at load 4-9, so wall times are loose; all powered off from /init;
virtual = the TD's clock at the end, /init = the kernel's printk time of "Run /init"; Unaccepted the same before
and after /init's 64 MiB fill in every run):
    kernel/firmware/RAM   wall   kernel  virtual  /init    kernel accepted   MemTotal kB  Unaccepted kB
    6.12/2025.02/1G       175 s  162 s   1.45 s   1.18 s      0 MiB             921076            0
    6.12/2025.02/2G       190 s  156 s   1.47 s   1.19 s      0 MiB            1885432            0
    6.12/2025.02/4G       254 s  231 s   1.91 s   1.63 s    586 MiB            3814124      1499136
    6.12/2025.02/8G       187 s  165 s   2.11 s   1.80 s    766 MiB (383)      7671532      5509120
    6.12/2025.02/16G      203 s  178 s   2.50 s   2.13 s   1110 MiB (555)     15386320     13545472
    6.12/2025.02/67000M   362 s  344 s   4.63 s   4.13 s   3286 MiB (1643)    66332128     63148032
    7.2/2026.08/4G        523 s  471 s   2.18 s   1.84 s    638 MiB (319)      3809856      1445888
    7.2/2025.02/4G        432 s  396 s   2.19 s   1.85 s    638 MiB (319)      3810432      1445888
More vCPUs (the APs through the MP wakeup mailbox; measured later the same day with `lazyaccept tdvf -smp N`, after
the hook speed-up, so the walls are not comparable with those above): 6.12/2025.02/4G/smp2 powered off, 140.5 s
wall (kernel 112.9 s), /init at 1.95 s, 610 MiB accepted by the kernel (305 TDCALLs: 538 MiB on vCPU 0, 72 MiB on
vCPU 1); 6.12/2025.02/4G/smp4 powered off, 186.6 s wall (kernel 143.4 s), 658 MiB (329: 396 MiB on vCPU 0, 262 MiB
on vCPU 2), Unaccepted 1425408 kB.
At 67000M OVMF 2025.02 puts the 4076-byte unaccepted table at 0x7f774018 (EfiACPIReclaimMemory, e820 ACPI), so it
ends 4 bytes into its second page; Debian's 6.12.117 (built 2026-11-12) memblock_add()s and reserves both pages
(memblock=debug: "memblock_reserve: [0x7f774000-0x7f775fff] efi_config_parse_tables+0x2db"), i.e. it carries
0862438c9048's end-aligned reservation (a stable backport), and boots to /init."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

# Lines of interest in the kernel's console, printed under each run.
WATCH = ("rtc_cmos", "setting system clock", "reserve_unaccepted", "unaccepted", "Oops", "BUG:", "Kernel panic",
         "Memory:")
_STAMP = re.compile(r"^\[\s*(\d+\.\d+)\]")


@dataclass(frozen=True)
class Case:
    kernel: str  # "6.12" or "7.2"
    release: str  # a RELEASES name
    ram: str  # as -m takes it
    vcpus: int = 1  # more than 1: the APs come up through the MP wakeup mailbox

    @property
    def name(self) -> str:
        return f"{self.kernel}/{self.release}/{self.ram}" + (f"/smp{self.vcpus}" if self.vcpus > 1 else "")

    @classmethod
    def parse(cls, name: str) -> Case:
        """KERNEL/RELEASE/RAM[/smpN]"""
        kernel, release, ram, *rest = name.split("/")
        return cls(kernel, release, ram, int(rest[0].removeprefix("smp")) if rest else 1)


SWEEP = (
    *(Case("6.12", "2025.02", ram) for ram in ("1G", "2G", "4G", "8G", "16G")),
    Case("7.2", "2026.08", "4G"),
    Case("7.2", "2025.02", "4G"),
    Case("6.12", "2025.02", "67000M"),
    Case("6.12", "2025.02", "4G", 2),
    Case("6.12", "2025.02", "4G", 4),
)


def printk_seconds(console: str, text: str) -> float | None:
    """The printk timestamp of the first console line holding `text`."""
    for line in console.splitlines():
        if text in line:
            found = _STAMP.match(line.strip())
            return float(found[1]) if found else None
    return None


def run_case(case: Case, initrd: Path, max_wall_s: float, append: str = "", save: Path | None = None) -> list[str]:
    from lazyaccept.binaries import BinaryStore
    from lazyaccept.cli import size_arg
    from lazyaccept.commands.tdvf import RELEASES
    from lazyaccept.guest.initramfs import parse_meminfo_blocks
    from lazyaccept.tdvf_run import TdvfOutcome, TdvfRun, run_tdvf

    store = BinaryStore()
    kernel = {"6.12": store.linux_vmlinuz, "7.2": store.linux72_vmlinuz}[case.kernel]()
    load = os.getloadavg()[0]
    start = time.monotonic()
    run = TdvfRun(RELEASES[case.release](store), ram=size_arg(case.ram), vcpus=case.vcpus, kernel=kernel,
                  initrd=initrd, run_kernel=True, max_wall_s=max_wall_s)
    if append:
        run = dataclasses.replace(run, cmdline=f"{run.cmdline} {append}")
    rep = run_tdvf(run)
    wall = time.monotonic() - start
    k = rep.kernel_run
    if k is None:
        return [f"{case.name}: {rep.outcome} before the kernel ran ({rep.detail}); {wall:.0f} s wall, load {load:.1f}"]
    if save is not None:
        (save / f"console-{case.name.replace('/', '-')}.txt").write_text(k.console)
    m = parse_meminfo_blocks(k.console)
    init_s = printk_seconds(k.console, "Run /init as init process")
    kb = [f"{m.before.get(key, '?')}->{m.after.get(key, '?')} kB" for key in ("MemTotal", "Unaccepted")]
    lines = [
        f"{case.name}: {rep.outcome}, {wall:.0f} s wall (load {load:.1f}), kernel {k.wall_s:.0f} s, virtual "
        f"{k.virtual_ns / 1e9:.2f} s (/init at {init_s if init_s is not None else '-'} s printk); kernel accepted "
        f"{k.accepted_bytes >> 20} MiB in {len(k.accepts)} ACCEPTs; MemTotal {kb[0]}, Unaccepted {kb[1]}",
    ]
    handoff = rep.kernel.handoff if rep.kernel is not None else None
    if handoff is not None and handoff.table is not None and handoff.table_address is not None:
        # struct efi_unaccepted_memory: a 16-byte header, then the bitmap; pages it spans, as 6.12 and 7.x reserve
        at, size = handoff.table_address, 16 + handoff.table.bitmap_bytes
        lines.append(f"    unaccepted table at {at:#x}, {size} bytes: ends {at + size:#x}, pages "
                     f"{at >> 12:#x}-{(at + size - 1) >> 12:#x}; size-aligned reservation ends "
                     f"{(at & ~0xFFF) + ((size + 0xFFF) & ~0xFFF):#x}")
        from lazyaccept.spec.efi import EfiMemoryType

        for page in sorted({at & ~0xFFF, (at + size - 1) & ~0xFFF}):
            kinds = [EfiMemoryType(d.type).name for d in handoff.memory_map if d.physical_start <= page < d.end]
            e820 = [e.type for e in handoff.e820 if e.start <= page < e.start + e.size]
            lines.append(f"      page {page:#x}: EFI {kinds or 'not in the map'}, e820 type {e820 or 'none'}")
    lines += [f"    {line.strip()[:150]}" for line in k.console.splitlines() if any(w in line for w in WATCH)][:40]
    if rep.outcome != TdvfOutcome.POWERED_OFF:
        lines += ["    last console lines:", *(f"    | {t[:150]}" for t in k.console.splitlines()[-15:])]
    return lines


def main() -> None:
    from lazyaccept.binaries import BinaryStore
    from lazyaccept.guest.initramfs import write_initramfs

    parser = argparse.ArgumentParser(prog="bench_kernel")
    parser.add_argument("--only", nargs="*", default=None, metavar="KERNEL/RELEASE/RAM[/smpN]",
                        help="cases to run, e.g. 7.2/2026.08/4G (default: the whole sweep)")
    parser.add_argument("--max-wall", type=float, default=900.0, help="wall budget of each run (s)")
    parser.add_argument("--append", default="", help="more kernel command line (e.g. memblock=debug)")
    parser.add_argument("--save-console", action="store_true", help="write each kernel console into --work")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lazyaccept-bench-kernel"))
    args = parser.parse_args()
    cases = list(SWEEP)
    if args.only is not None:
        known = {c.name: c for c in SWEEP}
        cases = [known.get(n) or Case.parse(n) for n in args.only]
    args.work.mkdir(parents=True, exist_ok=True)
    initrd = write_initramfs(args.work / "initramfs.cpio.gz", BinaryStore().busybox(), compress=True).path
    for case in cases:
        for line in run_case(case, initrd, args.max_wall, args.append, args.work if args.save_console else None):
            print(line, flush=True)


if __name__ == "__main__":
    main()
