"""Policies compared side by side: boot time and accepted memory as TD size grows.

Each cell of the matrix is one model run (no CPU emulation) of one TD: the VMM and SEC, the DXE memory services
with QEMU direct boot and the Linux 6.12 stub model (advise.model_boot), then, on the same TDX module, the Linux
model from the stub's handoff to a ready userspace (guest.workload.run_to_ready). So the OS phase starts from what
the firmware accepted, on demand included; a cell whose firmware phase fails has no OS figures. Firmware time and
OS time are kept apart, so the report shows that a lazy firmware phase stays flat from 4 GiB to 4 TiB while eager
grows linearly, and that the OS phase still grows (the memmap, 1/64 of RAM, accepted early on one CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lazyaccept.advise import Payload, model_boot
from lazyaccept.errors import ConfigError
from lazyaccept.firmware.sec import parse_policy
from lazyaccept.guest.workload import guest_after_stub, run_to_ready
from lazyaccept.on_demand import on_demand_number
from lazyaccept.tdx.costs import resolve_profile
from lazyaccept.tdx.module import PageState
from lazyaccept.units import GiB, MiB, SizeError, TiB, format_size, parse_size

DEFAULT_SIZES = [4 * GiB, 16 * GiB, 64 * GiB, 256 * GiB, 512 * GiB, 1 * TiB, 2 * TiB, 4 * TiB]
DEFAULT_VCPUS = [1, 8, 64]


@dataclass(frozen=True)
class Policy:
    name: str
    upfront: str
    option: str = "none"  # none, option1, option2, option3, or several joined by "+" (option2+option3)

    @classmethod
    def parse(cls, text: str, *, bare_unit: int = 1) -> Policy:
        """UPFRONT[+OPTION...]: eager, below-4g, all or a size, then on-demand options by name or number
        (`256M+option1`, `below-4g+loader+accept-service`); the six default names stay as they were. A bare size
        counts `bare_unit` bytes (MiB on the command line). ConfigError names the part it cannot read."""
        name = text.strip()
        for p in DEFAULT_POLICIES:
            if p.name == name:
                return p
        first, *rest = [part.strip() for part in name.split("+")]
        upfront = {"eager": "all"}.get(first.lower(), first)
        try:
            if upfront.lower() not in ("all", "below-4g", "below4g"):
                first = upfront = format_size(parse_size(first, what="up-front size", bare_unit=bare_unit))
            parse_policy(upfront)  # a size of 0 and such
            numbers = sorted({on_demand_number(part) for part in rest})
        except SizeError:
            raise ConfigError(
                f"invalid policy {name!r}: {first!r} is no up-front policy (eager, all, below-4g or a size such as "
                "256M); each +OPTION after it an on-demand option"
            ) from None
        except ConfigError as exc:
            raise ConfigError(f"invalid policy {name!r}: {exc}") from None
        # A size is named as format_size spells it, so `128+allocator` and `128M+allocator` are one policy.
        return cls("+".join([first, *rest]), upfront, "+".join(f"option{n}" for n in numbers) or "none")


DEFAULT_POLICIES = [
    Policy("eager", "all"),
    Policy("below-4g", "below-4g"),
    Policy("512M", "512M"),
    Policy("256M", "256M"),
    Policy("256M+option1", "256M", "option1"),
    Policy("256M+option2", "256M", "option2"),
]


@dataclass
class Cell:
    policy: str
    ram: int
    vcpus: int
    profile: str
    boots: bool
    failed_step: str
    sec_ns: int
    loader_ns: int  # DXE, loader copies and the stub until ExitBootServices (boot vCPU)
    os_ns: int | None  # the stub after ExitBootServices and Linux to a ready userspace; None: never got there
    firmware_accepted: int  # accepted when the stub jumps to the kernel
    ready_accepted: int | None  # accepted when userspace is ready (the same TD); None: never got there

    @property
    def firmware_ns(self) -> int:
        return self.sec_ns + self.loader_ns

    @property
    def total_ns(self) -> int | None:
        return None if self.os_ns is None else self.firmware_ns + self.os_ns


@dataclass
class Comparison:
    cells: list[Cell] = field(default_factory=list)
    initrd_bytes: int = 0
    resident_bytes: int = 0
    # Cells name a host profile by its name (a file's `name` key or stem); this maps it back to what was given.
    profile_sources: dict[str, str] = field(default_factory=dict)

    def select(self, **kw) -> list[Cell]:
        return [c for c in self.cells if all(getattr(c, k) == v for k, v in kw.items())]

    def flatness(self, policy: str, vcpus: int, profile: str) -> float:
        """(max - min) / min of the firmware phase over TD sizes."""
        values = [c.firmware_ns for c in self.select(policy=policy, vcpus=vcpus, profile=profile) if c.boots]
        return (max(values) - min(values)) / min(values) if values else float("nan")


def run_cell(policy: Policy, ram: int, vcpus: int, profile: str, payload: Payload, resident: int) -> Cell:
    """One TD: the model boot, then Linux on the TDX module it left."""
    model = model_boot(ram, vcpus, policy.upfront, policy.option, payload, profile=profile)
    sec_ns = model.sec.phase_ns if model.sec else 0
    if not model.ok or model.td is None or model.sec is None or model.stub is None:
        return Cell(
            policy.name, ram, vcpus, profile, False, model.failed_step, sec_ns, 0, None, model.accepted_bytes, None
        )
    # The stub's own accepts after ExitBootServices are the OS phase's first part, not the loader's.
    loader_ns = max(0, model.clock_ns - model.stub.after_exit_ns - model.sec.vcpu_ns[0])
    work = run_to_ready(guest_after_stub(model.td, model.sec, model.stub), resident)
    return Cell(
        policy.name,
        ram,
        vcpus,
        profile,
        True,
        "",
        sec_ns,
        loader_ns,
        work.ns,
        model.accepted_bytes,
        model.td.tdx.bytes_in_state(PageState.ACCEPTED),
    )


def compare(
    policies: list[Policy] = DEFAULT_POLICIES,
    sizes: list[int] = DEFAULT_SIZES,
    vcpus: list[int] = DEFAULT_VCPUS,
    profiles: Sequence[str] = ("kvm-2m",),
    *,
    initrd_bytes: int = 64 * MiB,
    resident_bytes: int = 512 * MiB,
    progress: Callable[[int, int], None] | None = None,
) -> Comparison:
    out = Comparison(initrd_bytes=initrd_bytes, resident_bytes=resident_bytes)
    for profile in profiles:
        name = resolve_profile(profile).name
        if out.profile_sources.setdefault(name, profile) != profile:
            raise ConfigError(f"host profiles {out.profile_sources[name]!r} and {profile!r} are both named {name!r}")
    total = len(policies) * len(sizes) * len(vcpus) * len(out.profile_sources)
    payload = Payload(initrd_bytes=initrd_bytes)
    for name, profile in out.profile_sources.items():
        for n in vcpus:
            for ram in sizes:
                for policy in policies:
                    cell = run_cell(policy, ram, n, profile, payload, resident_bytes)
                    cell.profile = name  # file names and titles use it: a path has slashes
                    out.cells.append(cell)
                    if progress:
                        progress(len(out.cells), total)
    return out


def cell_record(c: Cell) -> dict[str, Any]:
    """One cell in compare's JSON (docs/JSON.md): every size in bytes, every time in virtual ns."""
    return {
        "policy": c.policy,
        "ram_bytes": c.ram,
        "vcpus": c.vcpus,
        "profile": c.profile,
        "boots": c.boots,
        "failed_step": c.failed_step,
        "sec_ns": c.sec_ns,
        "loader_ns": c.loader_ns,
        "firmware_ns": c.firmware_ns,
        "os_ns": c.os_ns,
        "total_ns": c.total_ns,
        "firmware_accepted_bytes": c.firmware_accepted,
        "ready_accepted_bytes": c.ready_accepted,
    }


def comparison_record(cmp: Comparison, *, written: Sequence[Path] = (), wall_s: float = 0.0) -> dict[str, Any]:
    """compare's JSON record: what `compare --json` prints and `comparison.json` holds, both after the header."""
    return {
        "initrd_bytes": cmp.initrd_bytes,
        "resident_bytes": cmp.resident_bytes,
        "cells": [cell_record(c) for c in cmp.cells],
        "failed_cell_count": sum(not c.boots for c in cmp.cells),
        "written": [str(p) for p in written],
        "wall_s": wall_s,
    }
