"""The RFC's on-demand accept options by name: 1 allocator (DXE's page allocator accepts what it hands out),
2 loader (QEMU's direct-boot loader accepts ahead of its copies), 3 accept-service (the AcceptMemory boot service,
called by a loader-aware stub). The numbers stay accepted everywhere, as `1`, `option1` or the name."""

from __future__ import annotations

from collections.abc import Iterable

from lazyaccept.errors import ConfigError

ON_DEMAND_NAMES = {1: "allocator", 2: "loader", 3: "accept-service"}
_SPELLINGS = {
    **{name: n for n, name in ON_DEMAND_NAMES.items()},
    **{str(n): n for n in ON_DEMAND_NAMES},
    **{f"option{n}": n for n in ON_DEMAND_NAMES},
}
CHOICES_TEXT = ", ".join(f"{name} ({n})" for n, name in ON_DEMAND_NAMES.items())


def on_demand_number(item: str | int, *, what: str = "on-demand option") -> int:
    """1, 2 or 3 for `allocator`/`1`/`option1`, `loader`/`2`/`option2`, `accept-service`/`3`/`option3`."""
    if isinstance(item, bool):  # True is an int in Python, but no option
        number = None
    elif isinstance(item, int):
        number = item if item in ON_DEMAND_NAMES else None
    else:
        number = _SPELLINGS.get(str(item).strip().lower())
    if number is None:
        raise ConfigError(f"unknown {what} {item!r}: choose from {CHOICES_TEXT}")
    return number


def parse_on_demand(items: str | Iterable[str | int]) -> list[int]:
    """A comma-separated list (or a list) of options, 'none' for none: the sorted, distinct numbers."""
    if isinstance(items, str):
        parts = [p for p in (x.strip() for x in items.split(",")) if p]
        if parts == ["none"]:
            return []
        items = parts
    return sorted({on_demand_number(i) for i in items})
