"""Sizes and addresses as users write them: 4096, 512M, 64G, 4T, 67000M, 0x800000."""

from __future__ import annotations

import re

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

PAGE_4K = 4 * KiB
PAGE_2M = 2 * MiB
PAGE_1G = GiB

_SUFFIX = {"": 1, "B": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB, "P": 1 << 50}
_SIZE_RE = re.compile(r"^\s*(0x[0-9a-fA-F]+|\d+(?:\.\d+)?)\s*([KMGTP]?)(i?B)?\s*$", re.IGNORECASE)


_UNIT_NAMES = {KiB: "KiB", MiB: "MiB", GiB: "GiB"}


class SizeError(ValueError):
    """A size string that cannot be read; the message names the value."""


def parse_size(text: str | int, *, what: str = "size", bare_unit: int = 1) -> int:
    """Parse '4096', '512M', '64G', '4T', '67000M', '1.5G' or '0x1000' into bytes (binary units, as QEMU).

    `bare_unit` scales a number written without a unit: 1 (bytes) for scenario files and the Python API, MiB on
    the command line, where `-m 4096` means 4 GiB as in QEMU. A `B` suffix (`4096B`) always means bytes. With a
    bare_unit other than bytes, a bare hex number is refused: QEMU would read `0x1000` as MiB, which is never what
    someone writing an address-like byte count means."""
    if isinstance(text, int):
        if text < 0:
            raise SizeError(f"invalid {what} {text!r}: must not be negative")
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise SizeError(f"invalid {what} {text!r}: expected a number with an optional K/M/G/T suffix, e.g. 64G")
    number, suffix, bytes_suffix = m.group(1), m.group(2).upper(), m.group(3)
    bare = not suffix and not bytes_suffix
    scale = bare_unit if bare else _SUFFIX[suffix]
    if number.lower().startswith("0x"):
        value = int(number, 16) * scale
        if bare and bare_unit != 1:
            raise SizeError(
                f"invalid {what} {text!r}: a number without a unit counts {_UNIT_NAMES.get(bare_unit, bare_unit)} "
                f"here (as QEMU's -m); write this byte count as {format_size(int(number, 16))} or {int(number, 16)}B"
            )
    elif "." in number:
        if scale == 1:
            raise SizeError(f"invalid {what} {text!r}: a fraction needs a unit suffix")
        whole, frac = number.split(".")
        value = int(whole) * scale + (int(frac) * scale) // (10 ** len(frac))
        if (int(frac) * scale) % (10 ** len(frac)):
            raise SizeError(f"invalid {what} {text!r}: not a whole number of bytes")
    else:
        value = int(number) * scale
    return value


def format_size(n_bytes: int) -> str:
    """Shortest exact binary-unit spelling: 4096 -> '4K', 67000M stays '67000M', 3 -> '3B'."""
    if n_bytes == 0:
        return "0"
    for suffix, scale in (("T", TiB), ("G", GiB), ("M", MiB), ("K", KiB)):
        if n_bytes % scale == 0:
            return f"{n_bytes // scale}{suffix}"
    return f"{n_bytes}B"


def human_size(n_bytes: float) -> str:
    """Approximate, for tables: 1.50 GiB."""
    for suffix, scale in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n_bytes) >= scale:
            return f"{n_bytes / scale:.2f} {suffix}"
    return f"{int(n_bytes)} B"


def align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def align_down(value: int, align: int) -> int:
    return value // align * align


def format_ns(ns: float) -> str:
    """Virtual durations for humans: 812 ns, 8.00 us, 1.25 ms, 60.0 s."""
    if ns < 1_000:
        return f"{ns:.0f} ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.2f} us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e9:.2f} s"
