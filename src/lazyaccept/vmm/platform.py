"""The q35 machine a TD guest sees from the VMM side: the devices, port I/O, MMIO and MSR dispatch, and the
answers to TDG.VP.VMCALL as the TDX GHCI 1.5 specifies them.

Addresses. MMIO addresses and MapGPA operands may carry the TD's shared bit (bit GPAW-1); Q35Platform strips it
before decoding, so a caller may pass either form. DMA addresses (fw_cfg) are GPAs as QEMU sees them; the shared
bit is cleared there too. Everything here costs O(1) per access; the state lives in small dicts, ints and a
RangeMap, never in per-page loops.

The vCPU dispatcher calls exactly `tdvmcall(vcpu, subfunction, r12, r13, r14, r15)` and puts the returned status
in R10 and each returned register (lowercase name) in place. Operand checks and statuses follow GHCI 1.5 and
Linux 6.16's KVM (arch/x86/kvm/vmx/tdx.c); a guest operand the VMM cannot take is TDVMCALL_STATUS_INVALID_OPERAND
with a line in the event log, never an exception.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lazyaccept.errors import ConfigError, LazyAcceptError
from lazyaccept.rangemap import RangeMap
from lazyaccept.spec.tdx import TdvmcallStatus
from lazyaccept.spec.tdx import TdvmcallSubfunction as Sub
from lazyaccept.tdx.module import PageState, TdxModule
from lazyaccept.units import PAGE_4K
from lazyaccept.vmm.acpi import AcpiMachine
from lazyaccept.vmm.devices.acpi_pm import PM_SIZE, AcpiPm
from lazyaccept.vmm.devices.apic import (
    ICR,
    ICR_DELIVERY_MASK,
    ICR_FIXED,
    ICR_LOWEST_PRIORITY,
    TDX_APIC_BUS_CYCLE_NS,
    X2Apic,
    ipi_targets,
)
from lazyaccept.vmm.devices.base import EventLog, GuestInputError, GuestMemory, check_size, ones
from lazyaccept.vmm.devices.cmos import CMOS_DATA, CMOS_INDEX, DEFAULT_EPOCH, Cmos
from lazyaccept.vmm.devices.cpuid import TOPOLOGY_LEAF, cpuid, topology
from lazyaccept.vmm.devices.fw_cfg import FW_CFG_DMA_IO_BASE, FW_CFG_IO_BASE, AcpiFiles, FwCfgPayload, q35_fw_cfg
from lazyaccept.vmm.devices.ioapic import IOAPIC_BASE, IOAPIC_SIZE, IoApic
from lazyaccept.vmm.devices.kvm_msr import KvmMsrs
from lazyaccept.vmm.devices.pci import CONFIG_ADDRESS, CONFIG_DATA, PciHost
from lazyaccept.vmm.devices.uart import COM1, Uart16550
from lazyaccept.vmm.layout import q35_split
from lazyaccept.vmm.td import Td

UART_IRQ = 4  # COM1's ISA IRQ: I/O APIC pin 4 (no override in the MADT)
TPM_TIS_BASE = 0xFED40000  # TPM TIS window (localities 0-4); no TPM here, so it reads all ones as OVMF expects
TPM_TIS_SIZE = 0x5000
PRIVATE, SHARED = "private", "shared"
MASK64 = (1 << 64) - 1
MIN_EVENT_NOTIFY_VECTOR = 32

Handler = Callable[["Q35Platform", int, int, int, int, int], tuple[int, dict[str, int]]]


class SharedMemory:
    """The TD's shared memory as a DMA-capable device sees it (vmm.devices.base.GuestMemory): GPAs without the
    shared bit, read and written on the TDX module's guest-memory backing, only where the guest converted the
    range to shared. QEMU would let DMA hit the shared backing of a private GPA too, bytes the TD never sees; here
    that is a DMA error, so a guest that forgot to share its buffer shows up."""

    def __init__(self, tdx: TdxModule, sharing: RangeMap[str]):
        self.tdx = tdx
        self.sharing = sharing

    def _check(self, gpa: int, size: int) -> None:
        end = gpa + size
        if gpa < 0 or end > self.sharing.limit or not self.sharing.all_equal(gpa, end, lambda v: v == SHARED):
            raise GuestInputError(f"DMA to [{gpa:#x}, {end:#x}) which the TD has not shared", field="DMA address")
        if self.tdx.ram.total(gpa, end, lambda r: not r):
            raise GuestInputError(f"DMA to [{gpa:#x}, {end:#x}) outside RAM", field="DMA address")

    def read(self, gpa: int, size: int) -> bytes:
        self._check(gpa, size)
        return self.tdx.memory.backing.read(gpa, size)

    def write(self, gpa: int, data: bytes) -> None:
        self._check(gpa, len(data))
        self.tdx.memory.backing.write(gpa, data)


@dataclass(frozen=True)
class FatalReport:
    """What TDG.VP.VMCALL<ReportFatalError> carried: R12 bits 31:0 the error code, bit 63 set when R13 holds
    the GPA of more data; R14/R15 the first 16 message bytes (GHCI puts more in RBX, RSI, RDI, R8-R9, RDX,
    which this contract does not pass)."""

    vcpu: int
    error_code: int
    data_gpa: int | None
    message: bytes


class Q35Platform:
    """One TD's q35 machine: RAM size, vCPU count, fw_cfg payload, a virtual clock."""

    def __init__(
        self,
        ram_size: int,
        vcpus: int,
        now_ns: Callable[[], int],
        *,
        payload: FwCfgPayload | None = None,
        memory: GuestMemory | None = None,
        gpaw: int = 52,
        rtc_epoch: dt.datetime = DEFAULT_EPOCH,
        mapgpa_chunk: int | None = None,
        apic_bus_cycle_ns: int = TDX_APIC_BUS_CYCLE_NS,
        tdx: TdxModule | None = None,
        shared_dma: bool = False,
    ):
        if vcpus < 1:
            raise ConfigError(f"vCPU count {vcpus} must be at least 1")
        if gpaw not in (48, 52):
            raise ConfigError(f"GPAW {gpaw} must be 48 or 52 (TDX)")
        if mapgpa_chunk is not None and (mapgpa_chunk <= 0 or mapgpa_chunk % PAGE_4K):
            raise ConfigError(f"MapGPA chunk {mapgpa_chunk:#x} must be a positive multiple of 4 KiB")
        split = q35_split(ram_size)
        self.ram_size = ram_size
        self.vcpus = vcpus
        self.now_ns = now_ns
        self.shared_bit = 1 << (gpaw - 1)
        self.mapgpa_chunk = mapgpa_chunk  # None: convert in one go; else RETRY after each chunk (GHCI)
        self.events = EventLog()
        self.tdx = tdx  # when given, MapGPA to shared removes the private pages (TDH.MEM.PAGE.REMOVE), as KVM does
        self.sharing: RangeMap[str] = RangeMap(PRIVATE, limit=self.shared_bit)  # MapGPA's record, by GPA
        if shared_dma:
            if tdx is None or memory is not None:
                raise ConfigError("shared_dma needs the TDX module and no other DMA memory")
            memory = SharedMemory(tdx, self.sharing)
        self.fw_cfg = q35_fw_cfg(
            ram_size=ram_size,
            vcpus=vcpus,
            e820_ram=split.e820_ram(),
            below_4g=split.below_4g,
            payload=payload,
            memory=memory,
            events=self.events,
        )
        self.fw_cfg.dma_address_mask = MASK64 & ~self.shared_bit
        self.pci = PciHost(self.events)
        self.acpi_files = AcpiFiles(self.fw_cfg, self.acpi_machine)
        self.cmos = Cmos(now_ns, ram_below_4g=split.below_4g, ram_above_4g=split.above_4g, vcpus=vcpus, epoch=rtc_epoch,
                         events=self.events)
        self.pm = AcpiPm(now_ns, self.events)
        self.uart = Uart16550(COM1)
        self.kvm_msrs = [KvmMsrs() for _ in range(vcpus)]  # the MSRs KVM emulates beyond the x2APIC
        self.apics = [X2Apic(i, bsp=i == 0, bus_cycle_ns=apic_bus_cycle_ns, events=self.events) for i in range(vcpus)]
        self._wire_ioapic()
        self.halted_irq_blocked: dict[int, bool] = {}
        self.event_notify_vector: dict[int, int] = {}
        self.fatal: FatalReport | None = None
        self.failed = False
        ports: dict[int, tuple[str, Callable[[int, int], int], Callable[[int, int, int], None]]] = {}
        for port in range(FW_CFG_IO_BASE, FW_CFG_IO_BASE + 2):
            ports[port] = ("fw_cfg", self.fw_cfg.io_read, self.fw_cfg.io_write)
        for port in range(FW_CFG_DMA_IO_BASE, FW_CFG_DMA_IO_BASE + 8):
            ports[port] = ("fw_cfg.dma", self.fw_cfg.io_read, self.fw_cfg.io_write)
        for port in (CMOS_INDEX, CMOS_DATA):
            ports[port] = ("cmos", self.cmos.io_read, self.cmos.io_write)
        for port in range(COM1, COM1 + 8):
            ports[port] = ("uart", self.uart.io_read, self.uart.io_write)
        for port in range(CONFIG_ADDRESS, CONFIG_DATA + 4):
            ports[port] = ("pci", self.pci.io_read, self.pci.io_write)
        self._ports = ports

    def _wire_ioapic(self) -> None:
        """The I/O APIC, the UART's IRQ 4 into its pin 4 (ISA IRQs are pins 0-15, with 0 on pin 2 as the MADT's
        override says), and the local APICs' EOI broadcast back to it."""
        self.ioapic = IoApic(self._deliver_to_apic, self.events)
        self.uart.irq = self._uart_irq  # a bound method, not a lambda: snapshots pickle the platform
        for apic in self.apics:
            apic.on_level_eoi = self.ioapic.eoi

    def _uart_irq(self, level: bool) -> None:
        self.ioapic.set_irq(UART_IRQ, level)

    def _deliver_to_apic(self, apic_id: int, vector: int, level: bool) -> bool:
        for apic in self.apics:
            if apic.apic_id == apic_id:
                apic.raise_vector(vector, level)
                return True
        return False

    def _ioapic_now(self) -> IoApic:
        if getattr(self, "ioapic", None) is None:  # a snapshot's platform may predate it
            self._wire_ioapic()
        return self.ioapic

    @classmethod
    def for_td(cls, td: Td, *, dma: bool = True, **kwargs: Any) -> Q35Platform:
        """The q35 machine of a TD run: MapGPA removes private pages, fw_cfg DMA (unless `dma` is False) works on
        the shared memory, the clock is vCPU 0's."""
        config = td.config
        return cls(
            config.ram_size,
            config.vcpus,
            lambda: td.tdx.clock_ns(0),
            gpaw=td.tdx.gpa_width,
            tdx=td.tdx,
            shared_dma=dma,
            **kwargs,
        )

    def acpi_machine(self) -> AcpiMachine:
        """What QEMU's ACPI builder reads from the machine now: vCPUs, PMBASE (0 while ACPI is off in the LPC
        bridge), the MMCONFIG window (none while PCIEXBAR is off)."""
        return AcpiMachine(self.vcpus, self.pci.lpc.pm_base or 0, self.pci.ecam_window())

    # --- port I/O ------------------------------------------------------------------------------------

    def _port(self, port: int, size: int) -> None:
        check_size(size, (1, 2, 4), "port I/O size")
        if not 0 <= port <= 0xFFFF:
            raise GuestInputError(f"port {port:#x} beyond 0xffff", field="port")

    def io_read(self, port: int, size: int) -> int:
        """An IN of `size` bytes; an unclaimed port reads all ones (QEMU's unassigned_io_read)."""
        self._port(port, size)
        pm_base = self.pci.lpc.pm_base
        if pm_base is not None and pm_base <= port < pm_base + PM_SIZE:
            self.events.count("io.in acpi_pm")
            return self.pm.read(port - pm_base, size)
        entry = self._ports.get(port)
        if entry is None:
            self.events.count("io.in unassigned")
            return ones(size)
        self.events.count(f"io.in {entry[0]}")
        return entry[1](port, size) & ones(size)

    def io_write(self, port: int, size: int, value: int) -> None:
        self._port(port, size)
        value &= ones(size)
        pm_base = self.pci.lpc.pm_base
        if pm_base is not None and pm_base <= port < pm_base + PM_SIZE:
            self.events.count("io.out acpi_pm")
            self.pm.write(port - pm_base, size, value)
            return
        entry = self._ports.get(port)
        if entry is None:
            self.events.count("io.out unassigned")
            return
        self.events.count(f"io.out {entry[0]}")
        entry[2](port, size, value)

    # --- MMIO ------------------------------------------------------------------------------------------

    def _mmio_target(self, address: int, size: int) -> tuple[str, int]:
        check_size(size, (1, 2, 4, 8), "MMIO size")
        address &= ~self.shared_bit & MASK64
        window = self.pci.ecam_window()
        if window is not None and window[0] <= address < window[0] + window[1]:
            return "ecam", address - window[0]
        if TPM_TIS_BASE <= address < TPM_TIS_BASE + TPM_TIS_SIZE:
            return "tpm", address - TPM_TIS_BASE
        if IOAPIC_BASE <= address < IOAPIC_BASE + IOAPIC_SIZE:
            return "ioapic", address - IOAPIC_BASE
        return "unassigned", address

    def mmio_read(self, address: int, size: int) -> int:
        """A read at a GPA (shared bit optional); unclaimed MMIO reads all ones, like a PCI master abort."""
        region, offset = self._mmio_target(address, size)
        self.events.count(f"mmio.read {region}")
        if region == "ecam":
            return self.pci.ecam_read(offset, size)
        if region == "ioapic":
            return self._ioapic_now().mmio_read(offset, size) & ones(size)
        return ones(size)

    def mmio_write(self, address: int, size: int, value: int) -> None:
        region, offset = self._mmio_target(address, size)
        self.events.count(f"mmio.write {region}")
        if region == "ecam":
            self.pci.ecam_write(offset, size, value & ones(size))
        elif region == "ioapic":
            self._ioapic_now().mmio_write(offset, size, value & ones(size))

    # --- MSRs ------------------------------------------------------------------------------------------

    def _apic(self, vcpu: int) -> X2Apic:
        if not 0 <= vcpu < self.vcpus:
            raise GuestInputError(f"vCPU {vcpu} not in 0..{self.vcpus - 1}", field="vcpu")
        return self.apics[vcpu]

    def _kvm_msrs(self, vcpu: int) -> KvmMsrs:
        msrs = getattr(self, "kvm_msrs", None)  # a snapshot's platform may predate them
        if msrs is None:
            msrs = self.kvm_msrs = [KvmMsrs() for _ in range(self.vcpus)]
        return msrs[vcpu]

    def rdmsr(self, vcpu: int, index: int) -> int | None:
        """The MSR's value, or None where the VMM has no such MSR (the guest gets an error, KVM's #GP)."""
        apic = self._apic(vcpu)
        self.events.count("msr.read")
        if apic.handles(index):
            return apic.rdmsr(index, self.vcpu_now_ns(vcpu))
        kvm = self._kvm_msrs(vcpu)
        return kvm.rdmsr(index) if kvm.handles(index) else None

    def wrmsr(self, vcpu: int, index: int, value: int) -> bool:
        apic = self._apic(vcpu)
        self.events.count("msr.write")
        if apic.handles(index):
            done = apic.wrmsr(index, value & MASK64, self.vcpu_now_ns(vcpu))
            if index == ICR and done:
                self._route_ipis(vcpu, apic)
            return done
        kvm = self._kvm_msrs(vcpu)
        return kvm.handles(index) and kvm.wrmsr(index, value & MASK64)

    # --- interrupts and idle -------------------------------------------------------------------------

    def vcpu_now_ns(self, vcpu: int) -> int:
        """The virtual time of `vcpu`'s x2APIC: its own clock in the TDX module (each vCPU keeps one), vCPU 0's
        where the platform has no module or one vCPU (the platform's clock)."""
        if self.tdx is None or self.vcpus == 1:
            return self.now_ns()
        return self.tdx.clock_ns(vcpu)

    def pending_interrupt(self, vcpu: int) -> int | None:
        return self._apic(vcpu).pending_interrupt(self.vcpu_now_ns(vcpu))

    def next_deadline(self, vcpu: int | None = None) -> int | None:
        """The earliest virtual time any vCPU's timer (or `vcpu`'s) fires: where an idle HLT can jump to."""
        apics = self.apics if vcpu is None else [self._apic(vcpu)]
        deadlines = [d for a in apics if (d := a.next_deadline()) is not None]
        return min(deadlines) if deadlines else None

    def _route_ipis(self, vcpu: int, source: X2Apic) -> None:
        """The IPIs `source` sent to other vCPUs (fixed and lowest-priority delivery, physical or x2APIC cluster
        destinations, shorthands: SDM vol. 3A 11.6.1, 11.12.10), raised in their IRRs. The receiver's clock moves
        up to the sender's: it cannot take the interrupt before it was sent (as td_machine's watched writes)."""
        while source.ipis:
            icr, dest = source.ipis.pop(0)
            mode = icr & ICR_DELIVERY_MASK
            if mode not in (ICR_FIXED, ICR_LOWEST_PRIORITY):
                self.events.note("apic.ipi", f"vCPU {vcpu}: ICR {icr:#x} (delivery mode {mode >> 8}) not delivered")
                continue
            for target in ipi_targets(icr, dest, source.apic_id, [a.apic_id for a in self.apics]):
                self.apics[target].raise_vector(icr & 0xFF)
                self.events.count("apic.ipi delivered")
                if self.tdx is not None and target != vcpu:
                    lag = self.tdx.clock_ns(vcpu) - self.tdx.clock_ns(target)
                    if lag > 0:
                        self.tdx.charge(target, lag)

    # --- TDG.VP.VMCALL ---------------------------------------------------------------------------------

    def tdvmcall(
        self, vcpu: int, subfunction: int, r12: int, r13: int, r14: int, r15: int
    ) -> tuple[int, dict[str, int]]:
        """Answer one TDG.VP.VMCALL (R10 = 0, R11 = subfunction): (status for R10, output registers)."""
        try:
            name = Sub(subfunction).name.lower()
        except ValueError:
            name = None
        kind = f"tdvmcall.{name or 'unknown'}"
        self.events.count(kind)
        handler = self._handlers.get(subfunction)
        if handler is None:
            self.events.note("tdvmcall.rejected", f"vCPU {vcpu}: sub-function {subfunction:#x} not supported")
            return TdvmcallStatus.INVALID_OPERAND, {}
        try:
            self._apic(vcpu)
            return handler(self, vcpu, r12 & MASK64, r13 & MASK64, r14 & MASK64, r15 & MASK64)
        except LazyAcceptError as exc:
            self.events.note("tdvmcall.rejected", f"vCPU {vcpu} {kind}: {exc}")
            return TdvmcallStatus.INVALID_OPERAND, {}

    def _reject(
        self, vcpu: int, what: str, status: int = TdvmcallStatus.INVALID_OPERAND, out: dict[str, int] | None = None
    ) -> tuple[int, dict[str, int]]:
        self.events.note("tdvmcall.rejected", f"vCPU {vcpu}: {what}")
        return status, out or {}

    def _io(self, vcpu: int, size: int, direction: int, port: int, value: int) -> tuple[int, dict[str, int]]:
        if direction not in (0, 1):
            return self._reject(vcpu, f"IO direction {direction} not 0 (in) or 1 (out)")
        if direction == 0:
            return TdvmcallStatus.SUCCESS, {"r11": self.io_read(port, size)}
        self.io_write(port, size, value)
        return TdvmcallStatus.SUCCESS, {}

    def _rdmsr(self, vcpu: int, index: int, _r13: int, _r14: int, _r15: int) -> tuple[int, dict[str, int]]:
        value = self.rdmsr(vcpu, index)
        if value is None:
            return self._reject(vcpu, f"RDMSR {index:#x}: no such MSR")
        return TdvmcallStatus.SUCCESS, {"r11": value}

    def _wrmsr(self, vcpu: int, index: int, value: int, _r14: int, _r15: int) -> tuple[int, dict[str, int]]:
        if not self.wrmsr(vcpu, index, value):
            return self._reject(vcpu, f"WRMSR {index:#x} = {value:#x}: no such writable MSR")
        return TdvmcallStatus.SUCCESS, {}

    def _cpuid(self, vcpu: int, leaf: int, subleaf: int, _r14: int, _r15: int) -> tuple[int, dict[str, int]]:
        if leaf & 0xFFFFFFFF == TOPOLOGY_LEAF:
            eax, ebx, ecx, edx = topology(subleaf & 0xFFFFFFFF, self._apic(vcpu).apic_id, self.vcpus)
            return TdvmcallStatus.SUCCESS, {"r12": eax, "r13": ebx, "r14": ecx, "r15": edx}
        (eax, ebx, ecx, edx), known = cpuid(leaf & 0xFFFFFFFF, subleaf & 0xFFFFFFFF)
        if not known:
            self.events.note("cpuid.unknown leaf", f"vCPU {vcpu}: leaf {leaf:#x}/{subleaf:#x} answered zeros")
        return TdvmcallStatus.SUCCESS, {"r12": eax, "r13": ebx, "r14": ecx, "r15": edx}

    def _hlt(self, vcpu: int, irq_blocked: int, _r13: int, _r14: int, _r15: int) -> tuple[int, dict[str, int]]:
        self.halted_irq_blocked[vcpu] = bool(irq_blocked)  # the vCPU side waits (next_deadline)
        return TdvmcallStatus.SUCCESS, {}

    def _wbinvd(self, vcpu: int, _r12: int, _r13: int, _r14: int, _r15: int) -> tuple[int, dict[str, int]]:
        return TdvmcallStatus.SUCCESS, {}

    def _mmio(self, vcpu: int, size: int, direction: int, address: int, value: int) -> tuple[int, dict[str, int]]:
        if direction not in (0, 1):
            return self._reject(vcpu, f"MMIO direction {direction} not 0 (read) or 1 (write)")
        check_size(size, (1, 2, 4, 8), "MMIO size")
        if (address ^ (address + size - 1)) & ~(PAGE_4K - 1):
            return self._reject(vcpu, f"MMIO at {address:#x}/{size} crosses a page")  # as KVM refuses it
        if direction == 0:
            return TdvmcallStatus.SUCCESS, {"r11": self.mmio_read(address, size)}
        self.mmio_write(address, size, value)
        return TdvmcallStatus.SUCCESS, {}

    def _map_gpa(self, vcpu: int, gpa: int, size: int, _r14: int, _r15: int) -> tuple[int, dict[str, int]]:
        # KVM's tdx_map_gpa order: range and mixed-shared checks first (INVALID_OPERAND), then alignment
        # (ALIGN_ERROR); on any error R11 names the GPA. GHCI 1.5 MapGPA: RETRY with R11 = where to resume.
        end = gpa + size
        limit = self.shared_bit << 1  # 2**GPAW
        if not size or end > limit or (gpa & self.shared_bit) != ((end - 1) & self.shared_bit):
            return self._reject(
                vcpu, f"MapGPA {gpa:#x}+{size:#x}: outside the GPA space or mixing shared and private", out={"r11": gpa}
            )
        if gpa % PAGE_4K or size % PAGE_4K:
            return self._reject(
                vcpu, f"MapGPA {gpa:#x}+{size:#x}: not 4K aligned", TdvmcallStatus.ALIGN_ERROR, out={"r11": gpa}
            )
        shared = bool(gpa & self.shared_bit)
        start = gpa & ~self.shared_bit
        n = size if self.mapgpa_chunk is None else min(size, self.mapgpa_chunk)
        self.sharing.set(start, start + n, SHARED if shared else PRIVATE)
        if shared and self.tdx is not None:
            self._remove_private(start, start + n)
        self.events.count("mapgpa.to shared" if shared else "mapgpa.to private")
        if n < size:
            return TdvmcallStatus.RETRY, {"r11": gpa + n}
        return TdvmcallStatus.SUCCESS, {}

    def _remove_private(self, start: int, end: int) -> None:
        """KVM on a conversion to shared: the private pages are zapped (TDH.MEM.PAGE.REMOVE) and guest_memfd
        discards them; a later conversion back is a fresh AUG and ACCEPT."""
        assert self.tdx is not None
        present = (PageState.PENDING, PageState.ACCEPTED)
        end = min(end, self.tdx.private_limit)
        for s, e in [(s, e) for s, e, state in self.tdx.state_ranges(start, end) if state in present]:
            self.tdx.remove(s, e - s, converted=True)
            self.events.count("mapgpa.removed 4K pages", (e - s) // PAGE_4K)

    def _get_info(self, vcpu: int, leaf: int, _r13: int, _r14: int, _r15: int) -> tuple[int, dict[str, int]]:
        if leaf:
            return self._reject(vcpu, f"GetTdVmCallInfo leaf {leaf:#x}: only 0 is defined here")
        return TdvmcallStatus.SUCCESS, {"r11": 0, "r12": 0, "r13": 0, "r14": 0}

    def _fatal(self, vcpu: int, code: int, gpa: int, msg0: int, msg1: int) -> tuple[int, dict[str, int]]:
        message = (msg0.to_bytes(8, "little") + msg1.to_bytes(8, "little")).split(b"\0", 1)[0]
        self.fatal = FatalReport(vcpu, code & 0xFFFFFFFF, gpa if code >> 63 else None, message)
        self.failed = True
        self.events.note("td.fatal", f"vCPU {vcpu}: error code {code & 0xFFFFFFFF:#x} {message!r}")
        return TdvmcallStatus.SUCCESS, {}

    def _event_notify(self, vcpu: int, vector: int, _r13: int, _r14: int, _r15: int) -> tuple[int, dict[str, int]]:
        if not MIN_EVENT_NOTIFY_VECTOR <= vector <= 255:
            return self._reject(vcpu, f"SetupEventNotifyInterrupt vector {vector:#x} not in 32..255")
        self.event_notify_vector[vcpu] = vector
        return TdvmcallStatus.SUCCESS, {}

    _handlers: dict[int, Handler] = {
        Sub.EXIT_REASON_IO_INSTRUCTION: _io,
        Sub.EXIT_REASON_MSR_READ: _rdmsr,
        Sub.EXIT_REASON_MSR_WRITE: _wrmsr,
        Sub.EXIT_REASON_CPUID: _cpuid,
        Sub.EXIT_REASON_HLT: _hlt,
        Sub.EXIT_REASON_WBINVD: _wbinvd,
        Sub.EXIT_REASON_EPT_VIOLATION: _mmio,
        Sub.MAP_GPA: _map_gpa,
        Sub.GET_TD_VM_CALL_INFO: _get_info,
        Sub.REPORT_FATAL_ERROR: _fatal,
        Sub.SETUP_EVENT_NOTIFY_INTERRUPT: _event_notify,
    }

    # --- report ----------------------------------------------------------------------------------------

    def shared_ranges(self) -> list[tuple[int, int]]:
        """GPA ranges (without the shared bit) the guest converted to shared and has not converted back."""
        return [(s, e) for s, e, v in self.sharing.runs() if v == SHARED]

    def report(self) -> dict:
        return {
            "events": dict(self.events.summary()),
            "notes": list(self.events.lines),
            "console": self.uart.text(),
            "shared_bytes": sum(e - s for s, e in self.shared_ranges()),
            "failed": self.failed,
            "fatal": None
            if self.fatal is None
            else {
                "vcpu": self.fatal.vcpu,
                "error_code": self.fatal.error_code,
                "data_gpa": self.fatal.data_gpa,
                "message": self.fatal.message.decode("latin-1"),
            },
            "reset_requests": self.pci.reset_requests,
            "poweroff_requests": self.pm.poweroff_requests,
        }
