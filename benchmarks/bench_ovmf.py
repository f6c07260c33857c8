"""edk2's own TDVF from the reset vector on lazyaccept's TDX module (unicorn TD vCPU) against its peer, QEMU's own
TCG boot of the same OVMF.fd without TDX (QEMU's TDX needs KVM on TDX hardware), side by side in one run:
- wall time to the UEFI shell's banner on the serial console, for both;
- QEMU direct boot of Debian's 6.12 kernel: lazyaccept from the reset vector to the kernel's first instruction
  (by phase: to the firmware's first look at the payload, the snapshot taken there, on to the kernel), then from
  that snapshot to the kernel again; QEMU TCG to the kernel's first console line (issue 14's goals: <= 1.5x QEMU
  TCG; from a snapshot < 2 s).
Each figure is printed with the host's 1-minute load average when it was measured (the machine may be shared).
Debian's qemu-system-x86 is installed through apt when it is missing and we are root.

    python -m benchmarks ovmf"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

QEMU = "qemu-system-x86_64"
FIRST_KERNEL_LINE = b"Linux version"
SHELL_BANNER = b"UEFI Interactive Shell"


@dataclass
class TcgBoot:
    seconds: float | None  # to the first kernel line; None: not reached within the limit
    console_tail: str
    qemu_version: str


def ensure_qemu() -> str | None:
    """The path of qemu-system-x86_64, installing Debian's package when missing; None (and why, printed) if not."""
    found = shutil.which(QEMU)
    if found:
        return found
    if os.geteuid() != 0:
        print(f"no {QEMU} and not root: install Debian's qemu-system-x86 to compare with QEMU TCG")
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "qemu-system-x86"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    found = shutil.which(QEMU)
    if not found:
        print(f"could not install qemu-system-x86: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
    return found


def qemu_version(qemu: str) -> str:
    out = subprocess.run([qemu, "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else "unknown"


def tcg_boot(
    qemu: str,
    firmware: Path,
    kernel: Path | None,
    *,
    until: bytes,
    memory: str = "2G",
    smp: int = 1,
    limit_s: float = 300.0,
) -> TcgBoot:
    """One QEMU TCG boot of `firmware` (with `kernel` through QEMU's direct boot) until `until` on the console."""
    cmd = [
        qemu, "-machine", "q35", "-accel", "tcg", "-m", memory, "-smp", str(smp), "-bios", str(firmware),
        "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot", "-net", "none",
    ]  # fmt: skip
    if kernel is not None:
        cmd += ["-kernel", str(kernel), "-append", "console=ttyS0 earlyprintk=serial,ttyS0 nokaslr"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    seen = b""
    reached = None
    try:
        while time.monotonic() - start < limit_s:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            seen = (seen + chunk)[-1 << 16 :]
            if until in seen:
                reached = time.monotonic() - start
                break
    finally:
        proc.kill()
        proc.wait()
    tail = seen.decode("utf-8", "replace").splitlines()
    return TcgBoot(reached, tail[-1] if tail else "", qemu_version(qemu))


def lazyaccept_to_shell(firmware: Path, ram: int, limit_s: float = 300.0) -> tuple[float | None, dict[str, int]]:
    """Wall seconds from the reset vector to the shell's banner on lazyaccept's TD vCPU, and its TDCALL counts."""
    from collections.abc import Mapping

    from lazyaccept.cpu.unicorn.td_machine import TdMachine
    from lazyaccept.records import StopKind
    from lazyaccept.vmm.platform import Q35Platform
    from lazyaccept.vmm.td import TdConfig, build_td

    td = build_td(TdConfig(ram_size=ram, vcpus=1, firmware_path=str(firmware)))
    platform = Q35Platform.for_td(td)  # fw_cfg DMA through the TD's shared memory, as QEMU offers it

    def at_shell(_leaf: int, _regs: Mapping[str, int]) -> str | None:
        return "shell" if SHELL_BANNER.decode() in platform.uart.text() else None

    start = time.monotonic()
    result = TdMachine(td, platform=platform, until=at_shell).run(max_wall_s=limit_s)
    took = time.monotonic() - start
    counts = dict(result.progress.tdcalls)
    return (took if result.stop.kind == StopKind.REQUESTED else None), counts


def lazyaccept_to_kernel(firmware: Path, kernel: Path, ram: int, limit_s: float = 600.0) -> None:
    """Reset vector -> kernel entry on lazyaccept's TD vCPU, taking a snapshot on the way, then the snapshot ->
    kernel entry; each printed with its phases."""
    from lazyaccept.tdvf_run import TdvfOutcome, TdvfRun, run_tdvf

    fresh = run_tdvf(TdvfRun(firmware, ram=ram, kernel=kernel, max_wall_s=limit_s, take_snapshot=True))
    load = _load()
    if fresh.outcome != TdvfOutcome.KERNEL or fresh.snapshot is None or fresh.snapshot_wall_s is None:
        print(f"  lazyaccept to the kernel: {fresh.outcome}: {fresh.detail} ({fresh.wall_s:.1f} s, {load})")
        return
    to_point, taking = fresh.snapshot_wall_s
    print(f"  lazyaccept reset vector -> kernel entry: {fresh.wall_s:.2f} s ({load}): to the payload's first look "
          f"{to_point:.2f} s, snapshot {taking:.2f} s, on to the kernel {fresh.wall_s - to_point - taking:.2f} s")
    for phase in fresh.phases:
        n = phase["instructions"]
        print(f"    {phase['name']:<14} {phase['wall_s']:7.2f} s wall, {phase['virtual_ns'] / 1e6:8.1f} ms virtual"
              + (f", {n / 1e6:7.1f} M instructions" if fresh.instructions is not None else ""))
    again = run_tdvf(TdvfRun(firmware, ram=ram, kernel=kernel, max_wall_s=limit_s, snapshot=fresh.snapshot))
    load = _load()
    same = again.outcome == TdvfOutcome.KERNEL and again.accepted_ranges == fresh.accepted_ranges
    restore = next((n for n in again.notes if "to restore" in n), "")
    print(f"  lazyaccept snapshot -> kernel entry: {again.wall_s:.2f} s ({load}; {restore.split('(')[-1].rstrip(')')}"
          f"{'' if same else '; NOT the fresh boot: ' + again.detail})")


def _load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def main() -> None:
    from lazyaccept.binaries import BinaryStore
    from lazyaccept.units import GiB

    store = BinaryStore()
    firmware, kernel = store.ovmf_fd(), store.linux_vmlinuz()
    ours, counts = lazyaccept_to_shell(firmware, 2 * GiB)
    shown = f"{ours:.1f} s" if ours is not None else "not reached"
    print(f"OVMF.fd 2025.02, 2 GiB, 1 vCPU: reset vector -> UEFI shell banner: lazyaccept (unicorn TD vCPU) {shown}"
          f" ({_load()})")
    print("  TDCALLs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"QEMU direct boot of {kernel.name}, 2 GiB, 1 vCPU:")
    lazyaccept_to_kernel(firmware, kernel, 2 * GiB)
    qemu = ensure_qemu()
    if qemu is None:
        return
    shell = tcg_boot(qemu, firmware, None, until=SHELL_BANNER)
    shell_load = _load()
    first = tcg_boot(qemu, firmware, kernel, until=FIRST_KERNEL_LINE)
    print(f"  QEMU TCG ({shell.qemu_version}), no TDX: UEFI shell banner {_s(shell.seconds)} ({shell_load})")
    if ours is not None and shell.seconds:
        print(f"  ratio lazyaccept / QEMU TCG to the shell: {ours / shell.seconds:.1f}x")
    print(f"  QEMU TCG direct boot to the kernel's first console line: {_s(first.seconds)} ({_load()})")


def _s(seconds: float | None) -> str:
    return f"{seconds:.2f} s" if seconds is not None else "not reached"


if __name__ == "__main__":
    main()
