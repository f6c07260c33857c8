"""A TD machine frozen at a payload-independent point, so later runs of the same firmware and TD start there.

What a snapshot holds, and why that is the whole machine:
- guest memory: the non-zero pages of the TD's host memory (td_memory.HostRam), found through mincore(2) and a
  zero test; every other page reads as zero, as in a fresh reservation (accepted-but-untouched pages included,
  since an accept zeroes by giving pages back to the kernel);
- each vCPU's unicorn context (uc_context_save: the CPUX86State up to its TLB, so GPRs, segments, CR0-4, the
  FPU/SSE state and the MSRs unicorn keeps there: EFER, STAR/LSTAR, FS/GS/KERNEL_GS base, PAT); the x2APIC is the
  platform's (vmm/devices/apic.py), so MSR 0x1b and the timer are in the Python state below;
- the Python state, pickled as one object graph so what it shares stays shared: the Td (its TDX module: page
  states, clocks, measurement, statistics), the q35 platform (every device, the MapGPA record, the console), the
  TDCALL dispatcher (pending #VE information, counts), the machine's scheduler state (td_machine.TdMachine) and
  each vCPU's progress. The TD's host memory is referred to by a persistent id (its bytes are the page runs), and
  the platform's clock, vCPU 0's clock of that TDX module, is pickled as such.

The point it is taken at is the firmware's first selection of a fw_cfg direct-boot item (vmm/devices/fw_cfg.py
DIRECT_BOOT_KEYS), before that TDVMCALL reaches the VMM: until then nothing the guest saw depends on the payload,
and the items themselves are left out and put back from the restoring run's payload.

Unicorn's translation cache and TLB are not state: a restored vCPU starts with both empty, as after a flush. The
file is a pickle: load only snapshots this tool wrote.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import pickle
import zlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn.unicorn import UcContext

from lazyaccept.cpu.unicorn.td_machine import TdMachine
from lazyaccept.cpu.unicorn.td_memory import HostRam
from lazyaccept.cpu.unicorn.td_phases import FirmwareClock
from lazyaccept.errors import ConfigError, InputError
from lazyaccept.files import atomic_open
from lazyaccept.spec.tdx import TdcallLeaf
from lazyaccept.spec.tdx import TdvmcallSubfunction as Sub
from lazyaccept.tdx.module import TdxModule
from lazyaccept.tdx.tdcall import TdcallDispatcher
from lazyaccept.units import format_size
from lazyaccept.vmm.devices.fw_cfg import DIRECT_BOOT_KEYS, DirectBoot, direct_boot_items
from lazyaccept.vmm.platform import Q35Platform
from lazyaccept.vmm.td import Td, TdConfig

MAGIC = b"lazyaccept TD snapshot\n"
FORMAT = 1
RUN_BYTES = 16 << 20  # page runs are cut to this size before compression (bounded memory per piece)
# The scheduler state of td_machine.TdMachine (everything else of it is rebuilt from the TD and the platform).
_MACHINE_FIELDS = ("current", "switches", "spins", "_waiting", "_last_read", "_writes", "_generation", "_mailboxes",
                   "_halted")


IO_OUT = 1  # TDG.VP.VMCALL<Instruction.IO> R13: the direction


def payload_look(platform: Q35Platform, leaf: int, regs: Mapping[str, int]) -> int | None:
    """The fw_cfg direct-boot key this TDCALL would select (a TDVMCALL<Instruction.IO> OUT to fw_cfg's selector or
    DMA trigger, asked before the VMM sees it), else None: the snapshot point (GHCI 1.5: R12 size, R13 direction,
    R14 port, R15 value)."""
    if leaf != TdcallLeaf.VP_VMCALL or regs.get("r10", 0) or regs.get("r11") != Sub.EXIT_REASON_IO_INSTRUCTION:
        return None
    if regs.get("r13") != IO_OUT:
        return None
    key = platform.fw_cfg.selection_by(regs.get("r14", 0), regs.get("r12", 0), regs.get("r15", 0))
    return key if key in DIRECT_BOOT_KEYS else None


@dataclass(frozen=True)
class SnapshotIdentity:
    """What a snapshot is only valid for: a run with another image, RAM size or vCPU count is refused."""

    firmware_sha256: str
    ram_size: int
    vcpus: int
    gpa_width: int
    profile: str
    context_size: int  # unicorn's context blob: another libunicorn build lays CPUX86State out differently

    @classmethod
    def of(cls, config: TdConfig, context_size: int) -> SnapshotIdentity:
        path = config.firmware_path
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else "built-in"
        profile = config.profile if isinstance(config.profile, str) else config.profile.name
        return cls(digest, config.ram_size, config.vcpus, config.gpa_width, profile, context_size)

    def mismatch(self, other: SnapshotIdentity) -> str | None:
        """One line saying how `other` (the run) differs from this (the snapshot), or None."""
        names = {"firmware_sha256": "firmware image", "ram_size": "RAM size", "vcpus": "vCPU count",
                 "gpa_width": "GPA width", "profile": "host profile", "context_size": "unicorn build"}  # fmt: skip
        mine, theirs = asdict(self), asdict(other)
        for key, name in names.items():
            if mine[key] != theirs[key]:
                there, here = (format_size(v) if key == "ram_size" else str(v)[:16] for v in (mine[key], theirs[key]))
                return f"snapshot was made with another {name} ({there} there, {here} here)"
        return None


class _Pickler(pickle.Pickler):
    """The machine's Python state, with the host memory by reference and the platform's clock as the TDX
    module's vCPU 0 clock (Q35Platform.for_td's clock; a lambda cannot be pickled)."""

    def __init__(self, file: io.BytesIO, ram: HostRam, clock: Callable[[], int], tdx: TdxModule):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.ram, self.clock, self.tdx = ram, clock, tdx

    def persistent_id(self, obj: Any) -> str | None:
        return "ram" if obj is self.ram else None

    def reducer_override(self, obj: Any) -> Any:
        if obj is self.clock:
            return functools.partial, (TdxModule.clock_ns, self.tdx, 0)
        return NotImplemented


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, ram: HostRam):
        super().__init__(file)
        self.ram = ram

    def persistent_load(self, pid: Any) -> Any:
        if pid != "ram":
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        return self.ram


def _clock_state(clock: FirmwareClock) -> dict[str, Any]:
    """A vCPU's firmware clock (td_phases): its phases and what it booked, and the instruction counter's total
    (instructions counted but not yet booked are booked at the next sync point, as in the run that goes on)."""
    return {
        "phases": clock.phases, "current": clock.current, "accepted": clock._accepted,
        "instructions": clock._instructions, "by_module": clock.by_module,
        "counted": clock.counter.instructions if clock.counter is not None else None,
    }  # fmt: skip


def _set_clock_state(clock: FirmwareClock, state: Mapping[str, Any]) -> None:
    clock.phases, clock.current, clock._accepted = state["phases"], state["current"], state["accepted"]
    clock._instructions, clock.by_module = state["instructions"], state["by_module"]
    if clock.counter is not None and state["counted"] is not None:
        clock.counter.restart_at(state["counted"])


@dataclass
class TdvfSnapshot:
    identity: SnapshotIdentity
    where: str  # the point it was taken at, in words
    ram_size: int  # of the host reservation
    pages: list[tuple[int, bytes]]  # (GPA, zlib-compressed bytes) of the non-zero page runs
    contexts: list[bytes]  # each vCPU's unicorn context blob
    state: bytes  # the pickled Python state

    # ----------------------------------------------------------------- taking
    @classmethod
    def take(cls, machine: TdMachine, where: str) -> TdvfSnapshot:
        """The machine as it stands between two runs (machine.run returned)."""
        platform = machine.platform
        if platform is None:
            raise ConfigError("a TD machine without a platform cannot be snapshotted")
        ram = machine.ram
        pages = []
        for start, end in ram.nonzero_runs():
            for at in range(start, end, RUN_BYTES):
                pages.append((at, zlib.compress(ram.view[at : min(end, at + RUN_BYTES)], 1)))
        contexts = [bytes(v.uc.context_save()) for v in machine.vcpus]
        payload = platform.fw_cfg.set_direct_boot({})  # payload-independent: the restoring run brings its own
        try:
            state = {
                "td": machine.td,
                "platform": platform,
                "dispatcher": machine.dispatcher,
                "machine": {name: getattr(machine, name) for name in _MACHINE_FIELDS},
                "watched": sorted(set(machine._watched) | set(machine._to_watch)),
                "vcpus": [(v.progress, v.walker.fills) for v in machine.vcpus],
                "clocks": [_clock_state(v.clock) for v in machine.vcpus],
            }
            buffer = io.BytesIO()
            _Pickler(buffer, ram, platform.now_ns, machine.tdx).dump(state)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise ConfigError(f"the machine's state cannot be snapshotted: {exc}") from exc
        finally:
            platform.fw_cfg.set_direct_boot(payload)
        identity = SnapshotIdentity.of(machine.td.config, len(contexts[0]))
        return cls(identity, where, ram.size, pages, contexts, buffer.getvalue())

    # ----------------------------------------------------------------- the file
    def save(self, path: Path) -> None:
        header = json.dumps({"format": FORMAT, "identity": asdict(self.identity), "where": self.where}).encode()
        with atomic_open(path) as f:  # a later --from-snapshot trusts it: never half a file
            f.write(MAGIC + header + b"\n")
            pickle.dump((self.ram_size, self.pages, self.contexts, self.state), f, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def load(cls, path: Path) -> TdvfSnapshot:
        try:
            with path.open("rb") as f:
                if f.read(len(MAGIC)) != MAGIC:
                    raise InputError(f"{path}: not a lazyaccept TD snapshot")
                header = json.loads(f.readline())
                if header.get("format") != FORMAT:
                    raise InputError(f"{path}: snapshot format {header.get('format')} (this build reads {FORMAT})")
                ram_size, pages, contexts, state = pickle.load(f)
        except OSError as exc:
            raise InputError(f"{path}: {exc.strerror or exc}") from exc
        except (ValueError, EOFError, pickle.UnpicklingError, TypeError) as exc:
            raise InputError(f"{path}: a damaged snapshot ({type(exc).__name__}: {exc})") from exc
        return cls(SnapshotIdentity(**header["identity"]), header["where"], ram_size, pages, contexts, state)

    # ----------------------------------------------------------------- restoring
    def check(self, config: TdConfig) -> None:
        """Refuse a snapshot of another firmware image, RAM size or vCPU count than the TD `config` builds."""
        context_size = Uc(UC_ARCH_X86, UC_MODE_64).context_save().size
        problem = self.identity.mismatch(SnapshotIdentity.of(config, context_size))
        if problem is not None:
            raise ConfigError(problem)

    def restore(
        self,
        direct_boot: DirectBoot | None,
        *,
        until: Callable[[int, Mapping[str, int]], str | None] | None = None,
        stop_in_kernel: bool = False,
    ) -> TdMachine:
        """A TD machine as it was at the snapshot, fw_cfg holding `direct_boot` (QEMU's -kernel/-initrd/-append)
        as the payload; its run() goes on from there."""
        ram = HostRam(self.ram_size)
        for gpa, data in self.pages:
            chunk = zlib.decompress(data)
            ram.view[gpa : gpa + len(chunk)] = chunk
        state = _Unpickler(io.BytesIO(self.state), ram).load()
        td: Td = state["td"]
        platform: Q35Platform = state["platform"]
        if direct_boot is not None:
            platform.fw_cfg.set_direct_boot(direct_boot_items(direct_boot, td.split.below_4g))
        machine = TdMachine(td, platform=platform, until=until, stop_in_kernel=stop_in_kernel)
        if machine.ram is not ram:
            raise ConfigError("the snapshot's host memory does not fit its TD")  # HostRam.for_td sized it otherwise
        dispatcher: TdcallDispatcher = state["dispatcher"]
        machine.dispatcher = dispatcher
        for name, value in state["machine"].items():
            setattr(machine, name, value)
        machine._to_watch += state["watched"]
        machine.mapping.sync_shared(platform.shared_ranges(), 0, ram.size)
        if len(self.contexts) != len(machine.vcpus):
            raise ConfigError(f"snapshot has {len(self.contexts)} vCPU contexts for {len(machine.vcpus)} vCPUs")
        for vcpu, blob, (progress, fills) in zip(machine.vcpus, self.contexts, state["vcpus"], strict=True):
            context = UcContext.__new__(UcContext)
            context.__setstate__((blob, len(blob), UC_ARCH_X86, UC_MODE_64))
            vcpu.uc.context_restore(context)
            vcpu.dispatcher = dispatcher
            vcpu.progress = progress
            vcpu.walker.fills = fills
        for vcpu, clock in zip(machine.vcpus, state["clocks"], strict=True):
            _set_clock_state(vcpu.clock, clock)
        machine.mapping.flush_tlb()
        return machine
