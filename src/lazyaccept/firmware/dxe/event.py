"""Events, TPL and time (edk2 DxeMain Event/ and Misc/): enough for loaders that poll keys and timers; all
times are the TD's virtual clock, and idle polling lets it run."""

from __future__ import annotations

from lazyaccept.firmware.dxe.service_base import Event, ServiceBase, ServiceStop
from lazyaccept.records import StopKind, StopReason
from lazyaccept.spec import guids
from lazyaccept.spec.efi import EfiStatus as S

# Idle guest code (a key poll that finds nothing, a loop reading the TSC) makes virtual time pass, in steps that
# double while nothing else happens, so a sleep or a menu timeout costs few emulated iterations.
IDLE_FIRST_STEP_NS = 100
IDLE_MAX_STEP_NS = 10_000_000
IDLE_SERVICES = frozenset({"ConIn.ReadKeyStroke", "CheckEvent", "BS.CheckEvent"})
# With no scripted keys left and no terminal, a loader idle this long (virtual time) waits for input that
# will never come: the run stops. Longer than GRUB's 10 s "Press any key to continue..." wait.
INPUT_WAIT_LIMIT_NS = 30_000_000_000
HALT_STALL_US = 10_000_000  # a Stall this long, HALT_STALLS times in a row with no other call, is a halt
HALT_STALLS = 3
NO_MORE_KEYS = "the loader waits for keyboard input and no scripted keys are left"


class EventServices(ServiceBase):
    _long_stalls = 0
    _halt_ns = 0  # the virtual time of the current run of long stalls
    _last_long_stall = -2

    def bs_RaiseTPL(self, new_tpl: int) -> int:
        old, self.tpl = getattr(self, "tpl", 4), new_tpl
        return old

    def bs_RestoreTPL(self, old_tpl: int) -> int:
        self.tpl = old_tpl
        return S.SUCCESS

    def bs_CreateEvent(self, event_type: int, tpl: int, notify: int, context: int, event_ptr: int) -> int:
        return self.bs_CreateEventEx(event_type, tpl, notify, context, 0, event_ptr)

    def bs_CreateEventEx(
        self, event_type: int, tpl: int, notify: int, context: int, group_ptr: int, event_ptr: int
    ) -> int:
        if not event_ptr:
            return S.INVALID_PARAMETER
        event = self.fw_alloc(16)
        group = self.read_guid(group_ptr) if group_ptr else None
        self.events[event] = Event(event_type & 0xFFFFFFFF, tpl, notify, context, group)
        self.w64(event_ptr, event)
        self.log(
            "CreateEventEx",
            f"type {event_type & 0xFFFFFFFF:#x}" + (f", group {guids.name_of(group)}" if group else ""),
            S.SUCCESS,
        )
        return S.SUCCESS

    def bs_CloseEvent(self, event: int) -> int:
        return S.SUCCESS if self.events.pop(event, None) is not None else S.INVALID_PARAMETER

    def bs_SignalEvent(self, event: int) -> int:
        e = self.events.get(event)
        if e is None:
            return S.INVALID_PARAMETER
        e.signaled = True
        return S.SUCCESS

    def bs_SetTimer(self, event: int, timer_type: int, trigger_time: int) -> int:
        e = self.events.get(event)
        if e is None:
            return S.INVALID_PARAMETER
        now = self.tdx.clock_ns(0)
        if timer_type == 0:  # TimerCancel
            e.timer_due_ns = None
        else:
            e.timer_period_ns = trigger_time * 100 if timer_type == 1 else 0  # 100 ns units
            e.timer_due_ns = now + trigger_time * 100
        return S.SUCCESS

    def _event_ready(self, event: int) -> bool:
        e = self.events.get(event)
        if e is None:
            return False
        if self.protocols.is_key_event(event):
            return self.protocols.console.key_available()
        if e.timer_due_ns is not None and self.tdx.clock_ns(0) >= e.timer_due_ns:
            e.signaled = True
            e.timer_due_ns = self.tdx.clock_ns(0) + e.timer_period_ns if e.timer_period_ns else None
        return e.signaled

    def bs_CheckEvent(self, event: int) -> int:
        if event not in self.events:
            return S.INVALID_PARAMETER
        self.tdx.charge(0, 1_000)  # a poll takes time, so timers can expire
        if self._event_ready(event):
            self.events[event].signaled = False
            return S.SUCCESS
        return S.NOT_READY

    def bs_WaitForEvent(self, count: int, events_ptr: int, index_ptr: int) -> int:
        if count == 0 or not events_ptr:
            return S.INVALID_PARAMETER
        events = [self.r64(events_ptr + 8 * i) for i in range(min(count, 64))]
        for _ in range(2):
            for i, ev in enumerate(events):
                if self._event_ready(ev):
                    self.events[ev].signaled = False
                    if index_ptr:
                        self.w64(index_ptr, i)
                    return S.SUCCESS
            # Nothing ready: let virtual time run to the earliest timer.
            due = [t for e in events if e in self.events and (t := self.events[e].timer_due_ns)]
            if not due:
                break
            self.tdx.charge(0, max(0, min(due) - self.tdx.clock_ns(0)))
        if self._terminal_live() and any(self.protocols.is_key_event(e) for e in events):
            while not self.protocols.console.key_available():  # a person at the terminal: wait for a key
                self.idle()
            return self.bs_WaitForEvent(count, events_ptr, index_ptr)
        if any(self.protocols.is_key_event(e) for e in events):
            self.input_waiting = True
            raise ServiceStop(StopReason(StopKind.INPUT, NO_MORE_KEYS))
        raise ServiceStop(StopReason(StopKind.EXIT, "WaitForEvent would block forever (no input, no timer)"))

    def bs_GetNextMonotonicCount(self, count_ptr: int) -> int:
        if not count_ptr:
            return S.INVALID_PARAMETER
        self.monotonic += 1
        self.w64(count_ptr, self.monotonic)
        return S.SUCCESS

    def bs_Stall(self, microseconds: int) -> int:
        self.tdx.charge(0, microseconds * 1000)
        # An image that does nothing but stall a minute at a time has halted (systemd's freeze() after a failed
        # assertion: for (;;) BS->Stall(60 s)): the run ends there, as the real machine would sit forever.
        calls = sum(self.call_counts.values())
        if microseconds >= HALT_STALL_US and calls == self._last_long_stall + 1:
            self._long_stalls += 1
            self._halt_ns += microseconds * 1000
        else:
            self._long_stalls = int(microseconds >= HALT_STALL_US)
            self._halt_ns = microseconds * 1000 if self._long_stalls else 0
        self._last_long_stall = calls
        if self._long_stalls >= HALT_STALLS:
            # The stalls that showed the halt are not boot time (the machine sits there forever): the phase ends
            # where the image halted.
            self.tdx.charge(0, -self._halt_ns)
            raise ServiceStop(StopReason(
                StopKind.EXIT, f"{self.actor} halted: it only calls Stall({microseconds} us), forever"))
        return S.SUCCESS

    def bs_SetWatchdogTimer(self, timeout: int, code: int, size: int, data: int) -> int:
        return S.SUCCESS

    def idle(self) -> int:
        """The guest polled and found nothing to do: advance virtual time by the next idle step (returned).
        With a terminal attached the step is waited for in wall time too, so a countdown runs at human speed."""
        step = min(IDLE_FIRST_STEP_NS << min(self.idle_streak, 40), IDLE_MAX_STEP_NS)
        self.idle_streak += 1
        self.tdx.charge(0, step)
        console = self.protocols.console
        if self._terminal_live():
            console.terminal.wait(step / 1e9)  # type: ignore[union-attr]
        elif (
            not console.key_available()
            and self.tdx.clock_ns(0) - self.last_activity_ns > INPUT_WAIT_LIMIT_NS
            and not self.dxe.exited
        ):
            self.input_waiting = True
            self.backend.stop(StopReason(StopKind.INPUT, NO_MORE_KEYS))
        return step

    def _terminal_live(self) -> bool:
        """A person can still type (a terminal whose input has not ended)."""
        terminal = self.protocols.console.terminal
        return terminal is not None and not getattr(terminal, "input_closed", False)
