"""Up-front accept policies: how much of the TD's pending RAM TDVF's SEC accepts before DXE.

- `below-4g`: all pending RAM below 4 GiB, clipped at 4 GiB (upstream edk2 since 2022-11, PR 3572:
  SecTdxHelper.c AcceptMemory with AcceptMemoryEndAddress = BASE_4GB).
- `SIZE` (e.g. `512M`, `256M`): pending RAM in ascending address order until SIZE bytes of RAM are accepted in
  all, counting what the VMM added (TD_HOB, TEMP_MEM); the last range is cut at the exact byte (4 KiB
  granularity). 512M is what the edk2 lazy-accept v1/v2 series accepted up front, 256M what td-shim accepts.
  The AP stacks are accepted first whatever the size (APs cannot run without them), so a SIZE smaller than the
  AP stack area plus the added RAM accepts slightly more, and the result says so.
- `all`: everything (eager; what TDVF did before lazy accept).
"""

from __future__ import annotations

from dataclasses import dataclass

from lazyaccept.errors import ConfigError
from lazyaccept.units import PAGE_4K, GiB, SizeError, align_up, format_size, parse_size


@dataclass(frozen=True)
class UpfrontPolicy:
    kind: str  # "below-4g" | "size" | "all"
    size_bytes: int = 0

    @property
    def name(self) -> str:
        return format_size(self.size_bytes) if self.kind == "size" else self.kind

    def targets(self, pending: list[tuple[int, int]], added_bytes: int) -> list[tuple[int, int]]:
        """The [start, end) ranges of pending RAM this policy accepts, ascending."""
        pending = sorted(pending)
        if self.kind == "all":
            return pending
        if self.kind == "below-4g":
            return [(s, min(e, 4 * GiB)) for s, e in pending if s < 4 * GiB]
        budget = max(0, self.size_bytes - added_bytes)
        out = []
        for s, e in pending:
            if budget <= 0:
                break
            take = min(e - s, budget)
            out.append((s, s + take))
            budget -= take
        return out


def parse_policy(text: str) -> UpfrontPolicy:
    """'below-4g', 'all' (or 'eager'), or a size such as '512M'."""
    key = text.strip().lower()
    if key in ("below-4g", "below4g"):
        return UpfrontPolicy("below-4g")
    if key in ("all", "eager"):
        return UpfrontPolicy("all")
    try:
        size = parse_size(text, what="up-front policy")
    except SizeError:
        raise ConfigError(f"unknown up-front policy {text!r}: use below-4g, all, or a size such as 512M") from None
    if size <= 0:
        raise ConfigError(f"up-front size {text!r} must be larger than zero")
    return UpfrontPolicy("size", align_up(size, PAGE_4K))
