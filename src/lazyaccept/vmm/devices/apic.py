"""One vCPU's local APIC in x2APIC mode, as a TD reaches it through RDMSR/WRMSR (0x1B and 0x800-0x8FF).

A TD is always in x2APIC mode (the TDX module fixes it). Behaviour mirrored (Linux 6.12+ arch/x86/kvm/lapic.c,
QEMU 9.2 / 10.x target/i386/kvm/tdx.c): version 0x14 with 6 LVT entries; SVR resets to 0xFF with the APIC
software-disabled; LVTs reset masked; the timer counts at the APIC bus rate, which QEMU fixes at 25 MHz for a TD
(TDX_APIC_BUS_CYCLES_NS = 40), divided by the divide configuration; one-shot and periodic modes; EOI clears the
highest in-service vector; IRR/ISR/TPR decide what is deliverable as the SDM's PPR rule says.
Time is the TD's virtual clock: the timer is evaluated when asked (pending_interrupt, next_deadline), never by a
thread, so an idle HLT can jump straight to next_deadline().
Left out: TSC-deadline mode (accepted, logged, never fires), IPIs to other vCPUs (recorded only), LINT0/1 and
error interrupts, the logical destination modes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lazyaccept.vmm.devices.base import EventLog

MSR_APIC_BASE = 0x1B
APIC_BASE_ADDRESS = 0xFEE00000
APIC_BASE_BSP = 1 << 8
APIC_BASE_EXTD = 1 << 10  # x2APIC mode
APIC_BASE_EN = 1 << 11

X2APIC_FIRST, X2APIC_LAST = 0x800, 0x8FF
ID, VERSION, TPR, PPR, EOI, LDR, SVR = 0x802, 0x803, 0x808, 0x80A, 0x80B, 0x80D, 0x80F
ISR0, TMR0, IRR0, ESR = 0x810, 0x818, 0x820, 0x828
LVT_CMCI, ICR = 0x82F, 0x830
LVT_TIMER, LVT_THERMAL, LVT_PMI, LVT_LINT0, LVT_LINT1, LVT_ERROR = 0x832, 0x833, 0x834, 0x835, 0x836, 0x837
TIMER_INITIAL, TIMER_CURRENT, TIMER_DIVIDE, SELF_IPI = 0x838, 0x839, 0x83E, 0x83F
LVTS = (LVT_CMCI, LVT_TIMER, LVT_THERMAL, LVT_PMI, LVT_LINT0, LVT_LINT1, LVT_ERROR)

APIC_VERSION = 0x14 | (5 << 16)  # max LVT entry index 5: six LVTs without CMCI
LVT_MASKED = 1 << 16
TIMER_MODE_SHIFT = 17
TIMER_ONESHOT, TIMER_PERIODIC, TIMER_TSC_DEADLINE = 0, 1, 2
SVR_ENABLE = 1 << 8
TDX_APIC_BUS_CYCLE_NS = 40  # 25 MHz

ICR_SHORTHAND_SELF = 1 << 18
ICR_DELIVERY_MASK = 7 << 8
ICR_FIXED = 0
ICR_LOWEST_PRIORITY = 1 << 8
ICR_LOGICAL = 1 << 11
ICR_SHORTHAND_ALL = 2 << 18
ICR_SHORTHAND_OTHERS = 3 << 18
X2APIC_BROADCAST = 0xFFFFFFFF


def ipi_targets(icr: int, dest: int, source: int, apic_ids: list[int]) -> list[int]:
    """The indexes in `apic_ids` an IPI from APIC `source` reaches (SDM vol. 3A 11.12.10: in x2APIC logical mode
    the destination is a cluster (bits 31:16) and a bit mask of the cluster's 16 members, as LDR reads)."""
    shorthand = icr & (3 << 18)
    if shorthand == ICR_SHORTHAND_SELF:
        return [i for i, a in enumerate(apic_ids) if a == source]
    if shorthand == ICR_SHORTHAND_ALL:
        return list(range(len(apic_ids)))
    if shorthand == ICR_SHORTHAND_OTHERS:
        return [i for i, a in enumerate(apic_ids) if a != source]
    if dest == X2APIC_BROADCAST:
        return list(range(len(apic_ids)))
    if icr & ICR_LOGICAL:
        return [i for i, a in enumerate(apic_ids) if a >> 4 == dest >> 16 and dest >> (a & 0xF) & 1]
    return [i for i, a in enumerate(apic_ids) if a == dest]


def divisor_of(divide_config: int) -> int:
    """Divide configuration register (bits 3, 1:0) to the divisor 2, 4, ..., 128, 1."""
    code = (divide_config & 3) | ((divide_config >> 1) & 4)
    return 1 if code == 7 else 2 << code


@dataclass
class ApicTimer:
    """An armed timer: it fires at `next_fire_ns`, then every `period_ns` when periodic."""

    start_ns: int
    count: int
    tick_ns: int
    periodic: bool
    next_fire_ns: int

    @property
    def period_ns(self) -> int:
        return self.count * self.tick_ns


class X2Apic:
    def __init__(
        self, apic_id: int, *, bsp: bool, bus_cycle_ns: int = TDX_APIC_BUS_CYCLE_NS, events: EventLog | None = None
    ):
        self.apic_id = apic_id
        self.base = APIC_BASE_ADDRESS | APIC_BASE_EN | APIC_BASE_EXTD | (APIC_BASE_BSP if bsp else 0)
        self.bus_cycle_ns = bus_cycle_ns
        self.events = events or EventLog()
        self.tpr = 0
        self.svr = 0xFF
        self.lvt = dict.fromkeys(LVTS, LVT_MASKED)
        self.divide = 0
        self.initial_count = 0
        self.icr = 0
        self.irr = 0  # 256-bit vector bitmaps as ints
        self.isr = 0
        self.tmr = 0
        self.timer: ApicTimer | None = None
        self.timer_fired = 0
        self.ipis: list[tuple[int, int]] = []  # (icr, destination) of IPIs for others: the platform routes them
        self.tsc_deadline = 0
        self.on_level_eoi: Callable[[int], None] | None = None  # the I/O APIC's EOI, set by the platform

    # --- interrupt state ------------------------------------------------------------------------------

    @staticmethod
    def _highest(bits: int) -> int | None:
        return bits.bit_length() - 1 if bits else None

    @property
    def ppr(self) -> int:
        isrv = self._highest(self.isr) or 0
        return self.tpr & 0xFF if (self.tpr >> 4) >= (isrv >> 4) else isrv & 0xF0

    def raise_vector(self, vector: int, level: bool = False) -> None:
        """IRR, and TMR for a level-triggered interrupt (its EOI is broadcast to the I/O APIC: `on_level_eoi`)."""
        if vector >= 16:  # vectors 0-15 are illegal for fixed delivery (ESR send/receive illegal vector)
            self.irr |= 1 << vector
            self.tmr = (self.tmr | (1 << vector)) if level else (self.tmr & ~(1 << vector))

    def _lvt_timer_mode(self) -> int:
        return (self.lvt[LVT_TIMER] >> TIMER_MODE_SHIFT) & 3

    def _advance_timer(self, now_ns: int) -> None:
        t = self.timer
        if t is None or now_ns < t.next_fire_ns:
            return
        if t.periodic and t.period_ns:
            missed = (now_ns - t.next_fire_ns) // t.period_ns + 1  # IRR holds one: late periods coalesce
            t.next_fire_ns += missed * t.period_ns
        else:
            self.timer = None
        self.timer_fired += 1
        self.events.count("apic.timer fired")
        lvt = self.lvt[LVT_TIMER]
        if not lvt & LVT_MASKED:
            self.raise_vector(lvt & 0xFF)

    def pending_interrupt(self, now_ns: int) -> int | None:
        """The vector this vCPU would take now (timer evaluated at now_ns), or None."""
        self._advance_timer(now_ns)
        if not self.svr & SVR_ENABLE:
            return None
        vector = self._highest(self.irr)
        if vector is None or (vector >> 4) <= (self.ppr >> 4):
            return None
        return vector

    def acknowledge(self) -> int | None:
        """INTA: the highest requested vector moves from IRR to ISR; returns it (None if nothing requested).
        Callers check pending_interrupt first: this does not re-check priority."""
        vector = self._highest(self.irr)
        if vector is None:
            return None
        self.irr &= ~(1 << vector)
        self.isr |= 1 << vector
        return vector

    def eoi(self) -> None:
        vector = self._highest(self.isr)
        if vector is not None:
            self.isr &= ~(1 << vector)
            on_level_eoi = getattr(self, "on_level_eoi", None)  # a snapshot's APIC may predate it
            if self.tmr >> vector & 1 and on_level_eoi is not None:
                on_level_eoi(vector)  # KVM's kvm_ioapic_update_eoi: the broadcast EOI of a level interrupt

    def next_deadline(self) -> int | None:
        """Virtual time (ns) at which the timer will next raise an interrupt, or None if it will not."""
        t = self.timer
        if t is None or self.lvt[LVT_TIMER] & LVT_MASKED:
            return None
        return t.next_fire_ns

    def current_count(self, now_ns: int) -> int:
        self._advance_timer(now_ns)
        t = self.timer
        if t is None:
            return 0
        return max(0, (t.next_fire_ns - now_ns + t.tick_ns - 1) // t.tick_ns)

    def _arm(self, now_ns: int) -> None:
        self.timer = None
        if not self.initial_count or self._lvt_timer_mode() == TIMER_TSC_DEADLINE:
            return
        tick = divisor_of(self.divide) * self.bus_cycle_ns
        periodic = self._lvt_timer_mode() == TIMER_PERIODIC
        self.timer = ApicTimer(now_ns, self.initial_count, tick, periodic, now_ns + self.initial_count * tick)
        self.events.count("apic.timer armed")

    # --- MSR interface ------------------------------------------------------------------------------

    def handles(self, index: int) -> bool:
        return index == MSR_APIC_BASE or X2APIC_FIRST <= index <= X2APIC_LAST

    def rdmsr(self, index: int, now_ns: int) -> int | None:
        """The register's value, or None where x2APIC raises #GP (write-only or reserved)."""
        if index == MSR_APIC_BASE:
            return self.base
        if index == ID:
            return self.apic_id
        if index == VERSION:
            return APIC_VERSION
        if index == TPR:
            return self.tpr
        if index == PPR:
            return self.ppr
        if index == LDR:
            return ((self.apic_id >> 4) << 16) | (1 << (self.apic_id & 0xF))
        if index == SVR:
            return self.svr
        if ISR0 <= index < ISR0 + 8:
            return (self.isr >> (32 * (index - ISR0))) & 0xFFFFFFFF
        if TMR0 <= index < TMR0 + 8:
            return (self.tmr >> (32 * (index - TMR0))) & 0xFFFFFFFF
        if IRR0 <= index < IRR0 + 8:
            self._advance_timer(now_ns)
            return (self.irr >> (32 * (index - IRR0))) & 0xFFFFFFFF
        if index == ESR:
            return 0
        if index == ICR:
            return self.icr
        if index in self.lvt:
            return self.lvt[index]
        if index == TIMER_INITIAL:
            return self.initial_count
        if index == TIMER_CURRENT:
            return self.current_count(now_ns)
        if index == TIMER_DIVIDE:
            return self.divide
        return None

    def wrmsr(self, index: int, value: int, now_ns: int) -> bool:
        """Write a register; False where x2APIC raises #GP (read-only or reserved)."""
        if index == MSR_APIC_BASE:
            if value != self.base:
                self.events.note("apic.base write ignored", f"{value:#x}: a TD stays in x2APIC mode")
            return True
        if index == TPR:
            self.tpr = value & 0xFF
        elif index == EOI:
            self.eoi()
        elif index == SVR:
            self.svr = value & 0x11FF
        elif index == ESR:
            pass
        elif index == ICR:
            self._send_ipi(value)
        elif index == SELF_IPI:
            self.raise_vector(value & 0xFF)
        elif index in self.lvt:
            self.lvt[index] = value & 0xFFFFFFFF
            if index == LVT_TIMER and self.timer is not None:
                self.timer.periodic = self._lvt_timer_mode() == TIMER_PERIODIC
        elif index == TIMER_INITIAL:
            self.initial_count = value & 0xFFFFFFFF
            self._arm(now_ns)
        elif index == TIMER_DIVIDE:
            self.divide = value & 0xB
            if self.timer is not None:
                self._arm(now_ns)  # restart with the new rate
        else:
            return False
        return True

    def _send_ipi(self, value: int) -> None:
        self.icr = value & ~(1 << 12)  # delivery status always idle
        dest = value >> 32
        to_self = value & (3 << 18) == ICR_SHORTHAND_SELF or (value & (3 << 18) == 0 and dest == self.apic_id)
        if to_self and value & ICR_DELIVERY_MASK == ICR_FIXED:
            self.raise_vector(value & 0xFF)
            self.events.count("apic.self ipi")
        else:
            self.ipis.append((value, dest))
            self.events.count("apic.ipi sent")
