"""Policies compared side by side: boot time and accepted memory as TD size grows.

Each cell of the matrix is one model run (no CPU emulation) of one TD: the VMM and SEC, the DXE memory services
with QEMU direct boot and the Linux 6.12 stub model (advise.model_boot), then, on the same TDX module, the Linux
model from the stub's handoff to a ready userspace (guest.workload.run_to_ready). So the OS phase starts from what
the firmware accepted, on demand included; a cell whose firmware phase fails has no OS figures. Firmware time and
OS time are kept apart, so the report shows that a lazy firmware phase stays flat from 4 GiB to 4 TiB while eager
grows linearly, and that the OS phase still grows (the memmap, 1/64 of RAM, accepted early on one CPU).
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lazyaccept.advise import Payload, model_boot
from lazyaccept.errors import ConfigError
from lazyaccept.firmware.sec import parse_policy
from lazyaccept.guest.workload import guest_after_stub, run_to_ready
from lazyaccept.on_demand import on_demand_number
from lazyaccept.records import Actor
from lazyaccept.tdx.costs import resolve_profile
from lazyaccept.tdx.module import PageState
from lazyaccept.units import GiB, MiB, SizeError, TiB, format_size, human_size, parse_size

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


# ----------------------------------------------------------------------------- outputs


def table(cmp: Comparison, vcpus: int, profile: str) -> str:
    sizes = sorted({c.ram for c in cmp.cells})
    policies = list(dict.fromkeys(c.policy for c in cmp.cells))
    lines = [f"{profile}, {vcpus} vCPU(s): firmware time / OS-to-ready time (s); '-' = does not boot"]
    lines.append(f"{'policy':14}" + "".join(f"{format_size(s):>16}" for s in sizes))
    for p in policies:
        row = f"{p:14}"
        for s in sizes:
            c = cmp.select(policy=p, ram=s, vcpus=vcpus, profile=profile)
            if not c or not c[0].boots:
                row += f"{'-':>16}"
            else:
                row += f"{c[0].firmware_ns / 1e9:7.2f}/{(c[0].os_ns or 0) / 1e9:<8.2f}"
        lines.append(row)
    for p in policies:
        flat = cmp.flatness(p, vcpus, profile)
        lines.append(f"  firmware phase spread over sizes, {p}: {flat * 100:.1f}%")
    return "\n".join(lines)


def _figure(cmp: Comparison, metric: str, profile: str, vcpus: int, fmt: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for p in dict.fromkeys(c.policy for c in cmp.cells):
        cells = sorted((c for c in cmp.select(policy=p, vcpus=vcpus, profile=profile) if c.boots), key=lambda c: c.ram)
        if not cells:
            continue
        xs = [c.ram / GiB for c in cells]
        if metric == "time":
            ax.plot(xs, [c.firmware_ns / 1e9 for c in cells], marker="o", label=f"{p} firmware")
            ax.plot(xs, [(c.os_ns or 0) / 1e9 for c in cells], marker="x", linestyle="--", label=f"{p} OS to ready")
        else:
            ax.plot(xs, [c.firmware_accepted / GiB for c in cells], marker="o", label=f"{p} at handoff")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("TD memory (GiB)")
    ax.set_ylabel("virtual time (s)" if metric == "time" else "accepted (GiB)")
    ax.set_title(f"{'Boot time' if metric == 'time' else 'Accepted memory'} vs TD size ({profile}, {vcpus} vCPUs)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


STATE_COLOURS = {
    "vmm": "#7f7f7f",
    "sec": "#1f77b4",
    Actor.DXE_OPTION1: "#ff7f0e",
    Actor.LOADER_OPTION2: "#2ca02c",
    "stub": "#9467bd",
    "pending": "#eeeeee",
}


def address_space_figure(ram: int, vcpus: int, policy: Policy, profile: str, payload: Payload, fmt: str) -> bytes:
    """The TD's guest-physical RAM after the firmware handed over, coloured by who accepted each range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from lazyaccept.advise import model_boot_td

    td = model_boot_td(ram, vcpus, policy.upfront, policy.option, payload, profile=profile)
    runs: list[tuple[int, int, str]] = []
    ram_runs = [(rs, re_) for rs, re_, is_ram in td.tdx.ram.runs() if is_ram]
    for s, e, page in (run for rs, re_ in ram_runs for run in td.tdx.pages.runs(rs, re_)):
        who = page.actor if page.state == PageState.ACCEPTED else "pending"
        who = "stub" if who.startswith("vmlinuz") else who  # a real stub run names the binary
        if runs and runs[-1][2] == who and runs[-1][1] == s:
            runs[-1] = (runs[-1][0], e, who)  # levels and flags differ, the picture does not
        else:
            runs.append((s, e, who))
    fig, ax = plt.subplots(figsize=(10, 2.2))
    # Piecewise-linear axis: RAM only (the PCI hole and beyond-RAM are skipped), so small ranges stay visible.
    pos = 0.0
    seen = set()
    for s, e, who in runs:
        width = max((e - s) / ram, 0.002)
        ax.barh(0, width, left=pos, color=STATE_COLOURS.get(who, "#d62728"), edgecolor="none")
        pos += width
        seen.add(who)
    ax.set_yticks([])
    ax.set_xlim(0, pos)
    ax.set_xlabel("guest RAM in address order (fraction of RAM; ranges below 0.2% drawn at 0.2%)")
    ax.set_title(f"{format_size(ram)} TD after handoff, {policy.name}: who accepted what")
    ax.legend(
        handles=[Patch(color=STATE_COLOURS.get(w, "#d62728"), label=w) for w in sorted(seen)],
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.45),
        ncol=6,
    )
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def write_outputs(cmp: Comparison, out: Path, profiles: list[str], vcpus: list[int]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    (out / "comparison.json").write_text(
        json.dumps(
            {
                "initrd_bytes": cmp.initrd_bytes,
                "resident_bytes": cmp.resident_bytes,
                "cells": [dict(asdict(c), firmware_ns=c.firmware_ns, total_ns=c.total_ns) for c in cmp.cells],
            },
            indent=1,
        )
    )
    written.append(out / "comparison.json")
    svgs = []
    for profile in profiles:
        for n in vcpus:
            for metric in ("time", "accepted"):
                stem = f"{metric}_{profile}_{n}vcpu"
                for fmt in ("png", "svg"):
                    data = _figure(cmp, metric, profile, n, fmt)
                    (out / f"{stem}.{fmt}").write_bytes(data)
                    written.append(out / f"{stem}.{fmt}")
                    if fmt == "svg":
                        svgs.append((stem, data.decode()))
    policy = next(p for p in DEFAULT_POLICIES if p.name == "256M+option1")
    for fmt in ("png", "svg"):
        source = cmp.profile_sources.get(profiles[0], profiles[0])
        data = address_space_figure(64 * GiB, 8, policy, source, Payload(initrd_bytes=1 * GiB), fmt)
        (out / f"address_space.{fmt}").write_bytes(data)
        written.append(out / f"address_space.{fmt}")
        if fmt == "svg":
            svgs.append(("address_space", data.decode()))
    tables = "\n".join(f"<pre>{html.escape(table(cmp, n, p))}</pre>" for p in profiles for n in vcpus)
    figures = "\n".join(f"<h3>{html.escape(stem)}</h3>\n{svg[svg.find('<svg') :]}" for stem, svg in svgs)
    (out / "report.html").write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>lazyaccept compare</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}pre{font-size:12px}</style></head><body>"
        "<h1>lazyaccept: up-front and on-demand accept policies compared</h1>"
        f"<p>QEMU direct boot of the Linux 6.12 stub model with a {human_size(cmp.initrd_bytes)} initrd, then Linux "
        f"to a ready userspace of {human_size(cmp.resident_bytes)}. Firmware = SEC (slowest vCPU) + DXE, loader and "
        "stub until ExitBootServices; OS = the stub after ExitBootServices and Linux. Virtual time from the host "
        "profile's cost table.</p>" + tables + figures + "</body></html>"
    )
    written.append(out / "report.html")
    return written
