"""The EFI machine: the Python DXE core (firmware/dxe/core.py) bound to a CPU backend that runs real PE32+
binaries.

It is the backend's client: a call into a service thunk is decoded by the Microsoft x64 ABI and dispatched into
the core; CPUID leaf 0x21, TDCALL and every touch of guest memory go to the TDX module; the first block outside
the images after ExitBootServices is the jump into the kernel. Guest memory is the backend's own (EmulatedBacking).
"""

from __future__ import annotations

from collections.abc import Callable

from lazyaccept import progress
from lazyaccept.cpu.backend import ARG_REGS, CpuBackend
from lazyaccept.cpu.memory import EmulatedBacking
from lazyaccept.errors import InputError
from lazyaccept.firmware.drivers.platform import PlatformProtocols, install_platform_protocols
from lazyaccept.firmware.dxe.core import UefiCore
from lazyaccept.firmware.dxe.event import IDLE_SERVICES
from lazyaccept.firmware.dxe.exit import BootServicesExited, DxeCore
from lazyaccept.firmware.dxe.service_base import MachineConfig, Resumed, ServiceStop
from lazyaccept.records import StopKind, StopReason
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.tdx.module import TdTerminated, TdxModule

TDX_CPUID_LEAF = 0x21
TDX_SIGNATURE = b"IntelTDX    "  # EBX, EDX, ECX
U64 = (1 << 64) - 1
TSC_HZ = 2_000_000_000  # the virtual TSC's nominal rate (a loader calibrates it against Stall)


class EfiMachine(UefiCore):
    protocols: PlatformProtocols
    backend: CpuBackend

    def __init__(
        self, tdx: TdxModule, dxe: DxeCore, config: MachineConfig | None = None, backend_factory: Callable | None = None
    ):
        from lazyaccept.cpu.unicorn.backend import UnicornBackend

        backend = (backend_factory or UnicornBackend)(self)
        # Guest memory lives in the backend from now on; what was written before (SEC's HOBs) moves with it.
        self.backing = EmulatedBacking(backend, tdx, prior=tdx.memory.backing)  # type: ignore[arg-type]
        tdx.memory.backing = self.backing
        super().__init__(tdx, dxe, config, backend, install_platform_protocols)
        if self.config.virtual_tsc or self.config.port_io:
            self.backend.route_io(virtual_tsc=self.config.virtual_tsc, port_io=self.config.port_io)

    def install_fast_paths(self, functions: dict[str, int]) -> list[str]:
        from lazyaccept.cpu.fastpaths import install_fast_paths

        return install_fast_paths(self.backend, self.read, self.write, functions)

    def on_service(self, index: int) -> None:
        name, fn, nargs = self._services[index]
        args = [self.backend.reg(r) for r in ARG_REGS[: min(nargs, 4)]]
        if nargs > 4:
            rsp = self.backend.reg("rsp")
            stack = self.backend.read(rsp + 0x28, 8 * (nargs - 4))
            args += [int.from_bytes(stack[i : i + 8], "little") for i in range(0, len(stack), 8)]
        self.call_counts[name] = self.call_counts.get(name, 0) + 1
        self.tdx.charge(0, self.tdx.profile.boot_service_call_ns)
        if self.frames:
            self._code_actor = self.placed_image_at(self.r64(self.backend.reg("rsp")))
        if name not in IDLE_SERVICES:
            self.idle_streak = 0
            self.last_activity_ns = self.tdx.clock_ns(0)
        self._call_args = tuple(args)
        try:
            status = fn(*args)
        except Resumed:
            return
        except ServiceStop as stop:
            self.backend.stop(stop.reason)
            return
        except TdTerminated as exc:
            self.log(name, "TD terminated", None)
            self.backend.stop(StopReason(StopKind.TERMINATED, str(exc.termination), self.backend.reg("rip")))
            return
        except BootServicesExited:
            status = S.UNSUPPORTED
            self.log(name, "called after ExitBootServices", status)
        except InputError as exc:
            status = S.INVALID_PARAMETER
            self.log(name, f"bad argument: {exc}", status)
        finally:
            self._call_args = ()
        rax = S.SUCCESS if status is None else int(status)
        progress.call(name, args, rax, self.tdx.clock_ns(0))  # the --log trace (nothing without one)
        self.backend.set_reg("rax", rax)

    def on_unmapped(self, gpa: int, size: int, access: str) -> bool:
        if self.backing.map_on_touch(gpa, size):
            return True
        rip = self.backend.reg("rip")
        try:
            self.tdx.check_access(gpa, size, access, actor=self.actor, rip=rip)
        except TdTerminated as exc:
            self.backend.stop(StopReason(StopKind.TERMINATED, str(exc.termination), rip))
            return False
        # Accepted after all (e.g. beyond what map_on_touch widened): map and retry.
        return self.backing.map_on_touch(gpa, size)

    def on_cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int] | None:
        if leaf == TDX_CPUID_LEAF:
            sig = TDX_SIGNATURE
            return (
                0,
                int.from_bytes(sig[0:4], "little"),
                int.from_bytes(sig[8:12], "little"),
                int.from_bytes(sig[4:8], "little"),
            )
        return None

    def on_tdcall(self) -> None:
        if self.frames:
            self._code_actor = self.placed_image_at(self.backend.reg("rip"))
        leaf = self.backend.reg("rax")
        try:
            out = self.tdx.tdcall(leaf, self.backend.reg("rcx"), vcpu=0, actor=self.actor)
        except TdTerminated as exc:
            self.backend.stop(StopReason(StopKind.TERMINATED, str(exc.termination), self.backend.reg("rip")))
            return
        for reg, value in out.items():
            self.backend.set_reg(reg, value)
        self.call_counts["TDCALL"] = self.call_counts.get("TDCALL", 0) + 1

    def on_block_outside(self, rip: int) -> bool:
        if not self.dxe.exited:
            return False
        self.kernel_entry = (rip, self.backend.reg("rsi"))
        return True

    def on_rdtsc(self) -> int:
        """RDTSC from the virtual clock; each read is a poll that lets a little virtual time pass."""
        value = self.tdx.clock_ns(0) * TSC_HZ // 1_000_000_000
        self.idle()
        return value & U64

    def on_port_in(self, port: int, size: int) -> int:
        """No legacy device answers: the bus floats high. GRUB's PIT probe then fails and it calibrates its TSC
        with Stall (grub-core/kern/i386/tsc_pit.c, efi/tsc.c)."""
        return (1 << (8 * size)) - 1

    def on_port_out(self, port: int, size: int, value: int) -> None:
        return None

    def _varargs(self, first: int) -> list[int]:
        """GUID/interface pairs of a variadic call, ending at a NULL GUID."""
        regs = [self.backend.reg(r) for r in ARG_REGS]
        rsp = self.backend.reg("rsp")
        values: list[int] = []
        i = first
        while i < 64:
            v = regs[i] if i < 4 else int.from_bytes(self.backend.read(rsp + 8 + 8 * i, 8), "little")
            if (i - first) % 2 == 0 and v == 0:
                break
            values.append(v)
            i += 1
        return values
