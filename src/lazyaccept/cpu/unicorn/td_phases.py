"""The firmware's own work on the virtual clock, and the boot phases of a real-firmware run.

At each synchronous point of a TD vCPU (a TDCALL, a HLT, the end of the run) `FirmwareClock.sync`:
- charges the guest instructions executed since the last point (icount.InstructionCounter) to the vCPU's clock
  at the host profile's rate (HostProfile.guest_instruction_ps), so decompressing volumes and hashing for the
  RTMRs take virtual time, not only the TDCALLs;
- names the image executing there by its firmware file (td_state.ImageLocator), which is the TDCALL's actor;
- moves the phase forward by that file's FFS type: reset vector (no image: the VTF's raw code), SEC
  (SECURITY_CORE), PEI (PEI_CORE, PEIM), DXE (DXE_CORE, DRIVER...), BDS (BdsDxe), loader (an APPLICATION of
  the firmware's volumes, e.g. the Shell), stub (an image from outside them: the kernel's EFI stub). Phases only
  move forward: a DXE driver called during BDS works for BDS. The last phase, linux, starts when the run goes on
  past the stub's jump (`enter_kernel`): from then on no image is looked for (the kernel is no PE image) and every
  instruction is the kernel's.
The instructions between two points are booked by the 4 KiB page they ran in (icount.c) to the module there and
its phase; what the TDX module charged for a TDCALL (its cost, an idle jump, the bytes it accepted) to the phase
that issued it. The reset vector issues no TDCALL: its phase has only the instructions of its pages (no image).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from lazyaccept import progress
from lazyaccept.cpu.unicorn.icount import InstructionCounter
from lazyaccept.cpu.unicorn.td_state import ImageHit, ImageLocator
from lazyaccept.firmware.pi.fv import Reader
from lazyaccept.spec.fv import FileType
from lazyaccept.tdx.module import VMM_ACTOR, TdxModule

PHASES = ("reset vector", "SEC", "PEI", "DXE", "BDS", "loader", "stub", "linux")
RESET_VECTOR, SEC, PEI, DXE, BDS, LOADER, STUB, LINUX = range(len(PHASES))
KERNEL_IMAGE = "vmlinux"  # the module name of the kernel's own instructions (phase linux)
BDS_MODULE = "BdsDxe"  # MdeModulePkg/Universal/BdsDxe: the BDS architectural protocol's driver
_PHASE_OF_TYPE: dict[int, int] = {
    FileType.SECURITY_CORE: SEC,
    FileType.PEI_CORE: PEI,
    FileType.PEIM: PEI,
    FileType.COMBINED_PEIM_DRIVER: PEI,
    FileType.DXE_CORE: DXE,
    FileType.DRIVER: DXE,
    FileType.COMBINED_MM_DXE: DXE,
    FileType.APPLICATION: LOADER,
}


@dataclass
class Phase:
    name: str
    virtual_ns: int = 0
    instructions: int = 0
    accepted_bytes: int = 0
    wall_s: float = 0.0
    sync_points: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "virtual_ns": self.virtual_ns,
            "instructions": self.instructions,
            "accepted_bytes": self.accepted_bytes,
            "wall_s": round(self.wall_s, 3),
        }


def phase_of(hit: ImageHit | None, current: int) -> int:
    if hit is None:
        return current
    if hit.module is None:
        return STUB if current >= BDS else current  # an image BDS loaded from outside the volumes
    if hit.module.name == BDS_MODULE:
        return BDS
    return _PHASE_OF_TYPE.get(hit.module.file_type, current)


class FirmwareClock:
    def __init__(
        self,
        tdx: TdxModule,
        vcpu: int,
        counter: InstructionCounter | None,
        locator: ImageLocator,
        read: Reader,
    ):
        self.tdx, self.vcpu, self.counter, self.locator, self.read = tdx, vcpu, counter, locator, read
        self.phases = [Phase(name) for name in PHASES]
        self.current = RESET_VECTOR
        self._clock = tdx.clocks_ns[vcpu]
        self._accepted = self._guest_accepted()
        self._instructions = 0
        self.by_module: dict[str, int] = {}  # instructions by the module that executed them
        self._wall = time.monotonic()

    @property
    def instructions(self) -> int | None:
        return self._instructions if self.counter is not None else None

    def sync(self, rip: int) -> ImageHit | None:
        """Book what happened since the last point, charge the instructions; the image at `rip`."""
        self.locator.new_epoch()
        before = self.current
        phase = self.phases[before]
        clock = self.tdx.clocks_ns[self.vcpu]
        accepted = self._guest_accepted()
        phase.virtual_ns += clock - self._clock
        phase.accepted_bytes += accepted - self._accepted
        self._accepted = accepted
        hit = self.locator.locate(self.read, rip) if before != LINUX else None
        self.current = max(before, phase_of(hit, before))
        if self.current != before:
            self.locator.forget_empty()  # the new phase's code may sit where none was
            if self.vcpu == 0:  # the BSP's phases are the boot's
                progress.phase(f"edk2 TDVF: {PHASES[self.current]}", clock)
        phase = self.phases[self.current]
        now = time.monotonic()
        phase.wall_s += now - self._wall
        phase.sync_points += 1
        self._wall = now
        if self.counter is not None:
            self._charge(before)
        self._clock = self.tdx.clocks_ns[self.vcpu]
        return hit

    def _charge(self, before: int) -> None:
        """The instructions since the last point, page by page to the module there and to its phase, clamped
        between the phase before this point and the phase now (a SEC routine called from PEI works for PEI)."""
        total = self.counter.instructions if self.counter is not None else 0
        pages = self.counter.drain() if self.counter is not None else []
        booked = self._instructions
        if before == LINUX:
            pages = []
            self._book(LINUX, KERNEL_IMAGE, booked, total - booked)
            booked = total
        for address, n in pages:
            hit = self.locator.locate(self.read, address)
            index = min(max(before, phase_of(hit, before)), self.current)
            self._book(index, hit.name if hit is not None else None, booked, n)
            booked += n
        if total > booked:  # blocks unicorn gave no page for (icount.c: out of memory)
            self._book(self.current, None, booked, total - booked)
        self._instructions = total

    def _book(self, index: int, module: str | None, before: int, n: int) -> None:
        ns = self.tdx.profile.instructions_ns(before + n) - self.tdx.profile.instructions_ns(before)
        self.tdx.charge(self.vcpu, ns)
        phase = self.phases[index]
        phase.instructions += n
        phase.virtual_ns += ns
        key = module or "(no image)"
        self.by_module[key] = self.by_module.get(key, 0) + n

    def enter_kernel(self) -> None:
        """The run goes on in the kernel: what follows is phase linux."""
        self.phases += [Phase(name) for name in PHASES[len(self.phases) :]]  # a snapshot's clock may predate it
        self.current = LINUX
        if self.vcpu == 0:
            progress.phase("the real kernel (linux)", self.tdx.clocks_ns[self.vcpu])

    def reached(self) -> list[Phase]:
        """The phases the run went through, in order."""
        return [p for p in self.phases if p.sync_points or p.instructions or p.virtual_ns]

    def _guest_accepted(self) -> int:
        return sum(n for actor, n in self.tdx.accepted_by_actor.items() if actor != VMM_ACTOR)
