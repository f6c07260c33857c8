"""The host terminal as the console of an interactive boot: keys typed here reach ConIn, ConOut text and
cursor moves are shown here as they happen (`lazyaccept boot --grub --interactive`).

Keys are read without echo or line buffering (termios cbreak) and decoded into EFI scan codes and characters:
arrows and Home/End/Delete from their ANSI escape sequences, Enter as CR, Backspace as BS, as a serial terminal
on OVMF's console would deliver them.
"""

from __future__ import annotations

import os
import select
import sys
from typing import IO

from lazyaccept.firmware.drivers.console import SCAN

ESCAPES = {
    b"[A": SCAN["up"],
    b"[B": SCAN["down"],
    b"[C": SCAN["right"],
    b"[D": SCAN["left"],
    b"[H": SCAN["home"],
    b"[F": SCAN["end"],
    b"[2~": SCAN["insert"],
    b"[3~": SCAN["delete"],
}
MAX_WAIT_S = 0.05  # an idle poll waits at most this long, so output and keys stay responsive


def decode_keys(data: bytes) -> list[tuple[int, int]]:
    """(scan code, character) pairs of bytes read from a terminal."""
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(data):
        b = data[i]
        if b == 0x1B:
            for seq, scan in ESCAPES.items():
                if data[i + 1 : i + 1 + len(seq)] == seq:
                    out.append((scan, 0))
                    i += 1 + len(seq)
                    break
            else:
                out.append((SCAN["esc"], 0))
                i += 1
            continue
        if b in (0x0A, 0x0D):
            out.append((0, 0x0D))
        elif b == 0x7F:
            out.append((0, 0x08))
        else:
            out.append((0, b))
        i += 1
    return out


class HostTerminal:
    def __init__(self, stdin: IO[bytes] | None = None, stdout: IO[str] | None = None):
        self.stdin = stdin or sys.stdin.buffer
        self.stdout = stdout or sys.stdout
        self.fd = self.stdin.fileno()
        self._saved = None
        self.input_closed = False
        if os.isatty(self.fd):
            import termios
            import tty

            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)

    def poll(self) -> list[tuple[int, int]]:
        if self.input_closed:
            return []
        ready, _, _ = select.select([self.fd], [], [], 0)
        if not ready:
            return []
        data = os.read(self.fd, 256)
        if not data:  # input ended (a pipe): from now on the run stops when the loader waits for keys
            self.input_closed = True
        return decode_keys(data)

    def wait(self, seconds: float) -> None:
        self.stdout.flush()
        if not self.input_closed:
            select.select([self.fd], [], [], min(seconds, MAX_WAIT_S))

    def output(self, text: str) -> None:
        self.stdout.write(text)

    def cursor(self, column: int, row: int) -> None:
        self.stdout.write(f"\x1b[{row + 1};{column + 1}H")

    def clear(self) -> None:
        self.stdout.write("\x1b[2J\x1b[H")

    def close(self) -> None:
        self.stdout.write("\n")
        self.stdout.flush()
        if self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None
