"""EFI_SIMPLE_TEXT_OUTPUT_PROTOCOL and EFI_SIMPLE_TEXT_INPUT_PROTOCOL (UEFI 2.10 ch. 12; edk2 Protocol/SimpleTextOut.h,
SimpleTextIn.h): output captured into the report, keys from a script or a person at a terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from lazyaccept import progress
from lazyaccept.firmware.drivers.base import FW, ProtocolBase, pointers
from lazyaccept.firmware.dxe.service_base import Event
from lazyaccept.spec import guids
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.spec.efi_tables import SIMPLE_TEXT_OUTPUT_MODE

if TYPE_CHECKING:
    from lazyaccept.firmware.dxe.core import UefiCore

COLUMNS, ROWS = 80, 25
# EFI_SIMPLE_TEXT_OUTPUT_MODE field offsets (CursorColumn, CursorRow) that loaders read back (GRUB's getxy)
MODE_CURSOR_COLUMN, MODE_CURSOR_ROW = 12, 16
# EFI scan codes (UEFI 2.10 table 12.2) for keys a script or a terminal sends
SCAN = {"up": 1, "down": 2, "right": 3, "left": 4, "home": 5, "end": 6, "insert": 7, "delete": 8, "esc": 0x17}


class Terminal(Protocol):
    """A person at a host terminal: keys in, console text out (see terminal.py)."""

    def poll(self) -> list[tuple[int, int]]: ...
    def wait(self, seconds: float) -> None: ...
    def output(self, text: str) -> None: ...
    def cursor(self, column: int, row: int) -> None: ...
    def clear(self) -> None: ...


class Console(ProtocolBase):
    """ConOut captured into the run report; ConIn fed from a scripted key queue."""

    def __init__(self, machine: UefiCore):
        super().__init__(machine)
        self.keys: list[tuple[int, int]] = []  # (scan code, unicode char)
        self.text: list[str] = []
        self.terminal: Terminal | None = None
        self.script: list[tuple[str, list[tuple[int, int]]]] = []  # (text to wait for, keys to type then)
        self._since_script = ""
        self.column = self.row = 0
        self.mode = self.m.fw_alloc(SIMPLE_TEXT_OUTPUT_MODE.size)
        self.m.mem.write(
            self.mode, SIMPLE_TEXT_OUTPUT_MODE.pack(MaxMode=1, Mode=0, Attribute=7, CursorVisible=1), actor=FW
        )
        ok = self._ok
        self.conout = self.struct(
            "ConOut",
            [
                ("Reset", ok, 2),
                ("OutputString", self.output_string, 2),
                ("TestString", ok, 2),
                ("QueryMode", self.query_mode, 4),
                ("SetMode", self.set_mode, 2),
                ("SetAttribute", ok, 2),
                ("ClearScreen", self.clear_screen, 1),
                ("SetCursorPosition", self.set_cursor_position, 3),
                ("EnableCursor", ok, 2),
            ],
            pointers(self.mode),
        )
        self.wait_for_key = self.m.fw_alloc(16)
        self.m.events[self.wait_for_key] = _key_event()
        self.conin = self.struct(
            "ConIn", [("Reset", ok, 2), ("ReadKeyStroke", self.read_key, 2)], pointers(self.wait_for_key)
        )
        self.handle = self.m.new_handle()
        self.m.install(self.handle, guids.SIMPLE_TEXT_OUT, self.conout, self)
        self.m.install(self.handle, guids.SIMPLE_TEXT_IN, self.conin, self)

    def _ok(self, *_args: int) -> int:
        return S.SUCCESS

    def output_string(self, this: int, string: int) -> int:
        text = self.m.read_str16(string)
        self.text.append(text)
        progress.console(text)  # as it arrives, on a terminal (progress.py)
        self._advance_cursor(text)
        if self.terminal is not None:
            self.terminal.output(text)
        if self.script:
            self._since_script = (self._since_script + text)[-8192:]
            expected, keys = self.script[0]
            if expected in self._since_script:
                self.script.pop(0)
                self.keys.extend(keys)
                self._since_script = ""
        return S.SUCCESS

    def _advance_cursor(self, text: str) -> None:
        """Where the text leaves the cursor on an 80x25 screen that scrolls (ConSplitter/terminal semantics)."""
        col, row = self.column, self.row
        for ch in text:
            if ch == "\r":
                col = 0
            elif ch == "\n":
                row += 1
            elif ch == "\b":
                col = max(0, col - 1)
            else:
                col += 1
                if col >= COLUMNS:
                    col, row = 0, row + 1
            if row >= ROWS:
                row = ROWS - 1
        self._set_cursor(col, row)

    def _set_cursor(self, column: int, row: int) -> None:
        if (column, row) != (self.column, self.row):
            self.column, self.row = column, row
            self.m.mem.write(
                self.mode + MODE_CURSOR_COLUMN,
                column.to_bytes(4, "little") + row.to_bytes(4, "little"),
                actor=FW,
            )

    def set_cursor_position(self, this: int, column: int, row: int) -> int:
        if column >= COLUMNS or row >= ROWS:
            return S.UNSUPPORTED
        self._set_cursor(column, row)
        if self.terminal is not None:
            self.terminal.cursor(column, row)
        return S.SUCCESS

    def clear_screen(self, this: int) -> int:
        self._set_cursor(0, 0)
        if self.terminal is not None:
            self.terminal.clear()
        return S.SUCCESS

    def query_mode(self, this: int, mode: int, cols_ptr: int, rows_ptr: int) -> int:
        if mode != 0:
            return S.UNSUPPORTED
        self.m.w64(cols_ptr, 80)
        self.m.w64(rows_ptr, 25)
        return S.SUCCESS

    def set_mode(self, this: int, mode: int) -> int:
        return S.SUCCESS if mode == 0 else S.UNSUPPORTED

    def read_key(self, this: int, key_ptr: int) -> int:
        if not self.keys and self.terminal is not None:
            self.keys.extend(self.terminal.poll())
        if not self.keys:
            self.m.idle()  # a poll that found nothing: virtual time passes (and a terminal gets a chance)
            if self.terminal is not None:
                self.keys.extend(self.terminal.poll())
            if not self.keys:
                return S.NOT_READY
        scan, char = self.keys.pop(0)
        self.m.write(key_ptr, scan.to_bytes(2, "little") + char.to_bytes(2, "little"))
        return S.SUCCESS

    def key_available(self) -> bool:
        return bool(self.keys)

    def type_text(self, text: str) -> None:
        self.keys.extend(keys_of(text))

    def when(self, expected: str, text: str) -> None:
        """Type text once the console has shown `expected` (after the previous scripted step)."""
        self.script.append((expected, keys_of(text)))

    @property
    def output(self) -> str:
        return "".join(self.text).replace("\r\n", "\n")


def keys_of(text: str) -> list[tuple[int, int]]:
    """(scan code, char) pairs of a text; '\n' is Enter, and {up}, {down}, {esc}... name special keys."""
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(text):
        if text[i] == "{" and "}" in text[i:]:
            name = text[i + 1 : text.index("}", i)]
            if name in SCAN:
                out.append((SCAN[name], 0))
                i += len(name) + 2
                continue
        out.append((0, ord("\r" if text[i] == "\n" else text[i])))
        i += 1
    return out


def _key_event():  # an Event record for ConIn.WaitForKey

    return Event(type=0x200, tpl=8, notify=0, context=0)
