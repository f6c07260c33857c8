"""The comparison's outputs: the text table, the plots (PNG and SVG), the address-space picture and the HTML
report, from a Comparison (lazyaccept.compare holds the model).

report.html reads without JavaScript and without anything but the files beside it: a summary computed from the
cells, HTML tables, the failing cells with their reason and a hint, the plots inline as SVG (text kept as text,
so a browser and a test can read the axis labels), and the provenance of the run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazyaccept._version import __version__
from lazyaccept.advise import Payload, model_boot
from lazyaccept.compare import DEFAULT_POLICIES, Cell, Comparison, Policy
from lazyaccept.guest.workload import guest_after_stub, run_to_ready
from lazyaccept.records import Actor
from lazyaccept.report_html import CSS, definition_list, document, inline_svg, save_figure
from lazyaccept.report_html import count as _n
from lazyaccept.report_html import esc as _e
from lazyaccept.report_html import join_words as _join
from lazyaccept.report_html import mpl as _mpl
from lazyaccept.report_html import seconds as _s
from lazyaccept.tdx.costs import HostProfile, resolve_profile
from lazyaccept.tdx.module import PageState
from lazyaccept.units import GiB, format_size, human_size

FLAT = 0.05  # a firmware phase whose largest value is within 5% of its smallest over the sizes is "flat"


def _policies(cmp: Comparison) -> list[str]:
    return list(dict.fromkeys(c.policy for c in cmp.cells))


def _sizes(cmp: Comparison) -> list[int]:
    return sorted({c.ram for c in cmp.cells})


def profile_source(cmp: Comparison, profile: str) -> str:
    """What a cell's host profile is read from (a built-in name or a TOML file): cells carry the profile's name."""
    return cmp.profile_sources.get(profile, profile)


def host_profile(cmp: Comparison, profile: str) -> HostProfile:
    return resolve_profile(profile_source(cmp, profile))


def profile_name(cmp: Comparison, profile: str) -> str:
    """A host profile's own name (a TOML file names itself), fit for titles and file names."""
    return host_profile(cmp, profile).name


# ----------------------------------------------------------------------------- the figures, as text


def spread(cmp: Comparison, policy: str, vcpus: int, profile: str) -> str:
    """How the firmware phase changes over TD sizes, in words. A relative spread is meaningless for a phase that
    grows with memory (eager: x1000 from 4G to 4T, which printed as 102200%) and undefined when no size boots
    (it printed as nan%), so: flat within a percentage, or the growth factor with both ends, or n/a."""
    cells = sorted((c for c in cmp.select(policy=policy, vcpus=vcpus, profile=profile) if c.boots), key=lambda c: c.ram)
    if not cells:
        return "n/a (boots at no size)"
    if len(cells) == 1:
        return f"n/a (boots at {format_size(cells[0].ram)} only)"
    values = [c.firmware_ns for c in cells]
    lo, hi = min(values), max(values)
    if hi <= lo * (1 + FLAT):
        return f"flat: {_s(lo)} to {_s(hi)} (within {(hi - lo) / lo * 100:.1f}%)"
    first, last = cells[0], cells[-1]
    return (
        f"grows x{hi / lo:.0f}: {_s(first.firmware_ns)} at {format_size(first.ram)} "
        f"to {_s(last.firmware_ns)} at {format_size(last.ram)}"
    )


def table(cmp: Comparison, vcpus: int, profile: str) -> str:
    """The terminal's table: firmware / OS-to-ready seconds per policy and size, then each policy's spread."""
    sizes = _sizes(cmp)
    policies = _policies(cmp)
    width = max([14, *(len(p) + 2 for p in policies)])
    name = profile_name(cmp, profile)
    lines = [f"{name}, {vcpus} vCPU(s): firmware time / OS-to-ready time (s); '-' = does not boot"]
    lines.append(f"{'policy':{width}}" + "".join(f"{format_size(s):>16}" for s in sizes))
    for p in policies:
        row = f"{p:{width}}"
        for s in sizes:
            c = cmp.select(policy=p, ram=s, vcpus=vcpus, profile=profile)
            cell = f"{c[0].firmware_ns / 1e9:.2f}/{(c[0].os_ns or 0) / 1e9:.2f}" if c and c[0].boots else "-"
            row += f"{cell:>16}"
        lines.append(row.rstrip())
    lines.append("firmware phase over sizes:")
    lines += [f"  {p:{width}}{spread(cmp, p, vcpus, profile)}" for p in policies]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- failures


HINTS = {
    "firmware": "SEC left too little accepted for the firmware itself: accept more up front",
    "kernel slot": "the stub's kernel slot search never calls AllocatePages, so an allocator option cannot help: "
    "accept more up front, or let the loader accept a slot ahead (option 2)",
    "stub": "accept more up front",
}
ALLOCATION_HINT = "add on-demand accept (option 1: the DXE allocator accepts what an allocation needs; option 2: the " \
    "loader accepts and retries), or accept more up front"


@dataclass(frozen=True)
class Failure:
    policy: str
    profile: str  # the host profile's name
    step: str
    reason: str  # the model's message for the first cell (the smallest TD, the fewest vCPUs)
    hint: str
    cells: tuple[tuple[int, int], ...]  # (TD size, vCPUs)


def failures(cmp: Comparison, policies: Iterable[Policy] = DEFAULT_POLICIES) -> list[Failure]:
    """The cells that do not boot, grouped by policy, profile and failed step. A Cell keeps only the step; the model
    is deterministic, so the first cell of each group is run again for its message (a failing run stops early)."""
    by_name = {p.name: p for p in policies}
    groups: dict[tuple[str, str, str], list[Cell]] = {}
    for c in sorted(cmp.cells, key=lambda c: (c.ram, c.vcpus)):
        if not c.boots:
            groups.setdefault((c.policy, c.profile, c.failed_step), []).append(c)
    out = []
    for (name, profile, step), cells in groups.items():
        policy = by_name.get(name)
        reason = ""
        if policy is not None:
            first = cells[0]
            run = model_boot(first.ram, first.vcpus, policy.upfront, policy.option,
                             Payload(initrd_bytes=cmp.initrd_bytes), profile=profile_source(cmp, profile))
            reason = f"{format_size(first.ram)}, {first.vcpus} vCPUs: {run.message}"
        on_demand = policy is not None and policy.option != "none"
        hint = HINTS.get(step, "accept more up front" if on_demand else ALLOCATION_HINT)
        cells_at = tuple((c.ram, c.vcpus) for c in cells)
        out.append(Failure(name, profile_name(cmp, profile), step, reason, hint, cells_at))
    return out


# ----------------------------------------------------------------------------- the summary


def _sizes_phrase(sizes: Sequence[int], all_sizes: Sequence[int]) -> str:
    if list(sizes) == list(all_sizes):
        return "every size" if len(all_sizes) == 1 else f"every size ({format_size(all_sizes[0])} to " \
            f"{format_size(all_sizes[-1])})"
    return _join([format_size(s) for s in sizes]) if sizes else "no size"


def summary(cmp: Comparison) -> list[str]:
    """What the matrix shows, in sentences computed from the cells."""
    sizes, policies = _sizes(cmp), _policies(cmp)
    vcpus = sorted({c.vcpus for c in cmp.cells})
    profiles = list(dict.fromkeys(c.profile for c in cmp.cells))
    out = [
        f"{_n(len(cmp.cells), 'run')}: {_n(len(policies), 'policy', 'policies')} x {_n(len(sizes), 'TD size')} x "
        f"{_join([str(n) for n in vcpus])} vCPU{'s' if vcpus != [1] else ''} on host profile"
        f"{'s' if len(profiles) > 1 else ''} {_join([profile_name(cmp, p) for p in profiles])}, "
        f"a {human_size(cmp.initrd_bytes)} initrd and a {human_size(cmp.resident_bytes)} resident userspace."
    ]
    # Which policies boot where: a size counts when every cell of the policy at that size boots.
    booting: dict[tuple[int, ...], list[str]] = {}
    for p in policies:
        ok = tuple(s for s in sizes if all(c.boots for c in cmp.select(policy=p, ram=s)))
        booting.setdefault(ok, []).append(p)
    parts = []
    for ok, names in sorted(booting.items(), key=lambda kv: -len(kv[0])):
        steps = sorted({c.failed_step for p in names for c in cmp.select(policy=p) if not c.boots})
        verb = "boots" if len(names) == 1 else "boot"
        text = f"{_join(names)} {verb} at {_sizes_phrase(ok, sizes)}"
        if steps:
            text += f" ({'it fails' if len(names) == 1 else 'they fail'} at the {_join(steps)} step elsewhere)" \
                if ok else f" (failing at the {_join(steps)} step)"
        parts.append(text)
    out.append(_join(parts) + ".")
    ready = [c for c in cmp.cells if c.total_ns is not None]
    if ready:
        best = min(ready, key=lambda c: (c.total_ns, c.ram))
        out.append(
            f"Fastest to a ready userspace: {best.policy} at {format_size(best.ram)} with {best.vcpus} vCPUs, "
            f"{_s(best.total_ns or 0)} (firmware {_s(best.firmware_ns)} + OS {_s(best.os_ns or 0)})."
        )
        top = sizes[-1]
        at_top = sorted((c for c in ready if c.ram == top), key=lambda c: c.total_ns or 0)
        if at_top and len(sizes) > 1:
            slow = at_top[-1]
            out.append(
                f"At {format_size(top)} the fastest is {at_top[0].policy} ({_s(at_top[0].total_ns or 0)}, "
                f"{at_top[0].vcpus} vCPUs), the slowest {slow.policy} ({_s(slow.total_ns or 0)}, {slow.vcpus} vCPUs)."
            )
        flat, growing = [], []
        for p in policies:
            texts = [spread(cmp, p, n, prof) for n in vcpus for prof in profiles]
            if all(t.startswith("flat") for t in texts):
                flat.append(p)
            elif any(t.startswith("grows") for t in texts):
                growing.append(f"{p}'s " + next(t for t in texts if t.startswith("grows")))
        if flat:
            out.append(f"The firmware phase of {_join(flat)} stays flat across sizes (within {FLAT * 100:.0f}%)"
                       + (f"; {_join(growing)}." if growing else "."))
        elif growing:
            out.append(f"The firmware phase: {_join(growing)}.")
        biggest = max(ready, key=lambda c: (c.ram, -(c.ready_accepted or 0)))
        lazy = min((c for c in ready if c.ram == biggest.ram), key=lambda c: c.ready_accepted or 0)
        out.append(
            f"When userspace is ready on {format_size(lazy.ram)}, {lazy.policy} has accepted "
            f"{human_size(lazy.ready_accepted or 0)} ({(lazy.ready_accepted or 0) / lazy.ram * 100:.1f}% of RAM); "
            "the rest stays unaccepted until Linux needs it."
        )
    failed = [c for c in cmp.cells if not c.boots]
    out.append(
        f"{len(failed)} of {_n(len(cmp.cells), 'run')} {'fails' if len(failed) == 1 else 'fail'} (listed below "
        "with the failing step, the reason and a hint; the plots leave them out and say so)."
        if failed
        else "Every run boots to a ready userspace."
    )
    return out


# ----------------------------------------------------------------------------- plots


PHASE_STYLES: dict[str, Any] = {"firmware": "-", "OS to ready": "--", "total": ":"}


def _figure(cmp: Comparison, metric: str, profile: str, vcpus: int, fmt: str) -> bytes:
    plt = _mpl()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(9, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    sizes = _sizes(cmp)
    shown, missing = [], []
    for i, p in enumerate(_policies(cmp)):
        colour = colours[i % len(colours)]
        cells = sorted((c for c in cmp.select(policy=p, vcpus=vcpus, profile=profile) if c.boots), key=lambda c: c.ram)
        dropped = [format_size(c.ram) for c in cmp.select(policy=p, vcpus=vcpus, profile=profile) if not c.boots]
        if dropped:
            missing.append(f"{p} ({'every size' if not cells else ', '.join(dropped)})")
        if not cells:
            continue
        shown.append((p, colour))
        xs = [c.ram / GiB for c in cells]
        if metric == "time":
            series = {
                "firmware": [c.firmware_ns / 1e9 for c in cells],
                "OS to ready": [(c.os_ns or 0) / 1e9 for c in cells],
                "total": [(c.total_ns or 0) / 1e9 for c in cells],
            }
            for phase, ys in series.items():
                ax.plot(xs, ys, color=colour, linestyle=PHASE_STYLES[phase], marker="o" if phase == "total" else ".",
                        linewidth=2.2 if phase == "total" else 1.4)
        else:
            ax.plot(xs, [c.firmware_accepted / GiB for c in cells], color=colour, linestyle="-", marker=".")
            ax.plot(xs, [(c.ready_accepted or 0) / GiB for c in cells], color=colour, linestyle="--", marker=".")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks([s / GiB for s in sizes], [format_size(s) for s in sizes])
    ax.xaxis.set_minor_locator(plt.NullLocator())  # no 2^n minor ticks between the sizes
    ax.set_xlabel("TD memory size")
    ax.set_ylabel("virtual time (s)" if metric == "time" else "accepted memory (GiB)")
    what = "Boot time" if metric == "time" else "Accepted memory"
    ax.set_title(f"{what} against TD size ({profile_name(cmp, profile)}, {vcpus} vCPUs)")
    ax.grid(True, which="major", alpha=0.3)
    styles: dict[str, Any] = PHASE_STYLES if metric == "time" else {"at the handoff": "-", "userspace ready": "--"}
    policy_legend = ax.legend(
        handles=[Line2D([], [], color=c, linewidth=2.5, label=p) for p, c in shown],
        title="policy", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title_fontsize=9,
    )
    ax.add_artist(policy_legend)
    ax.legend(
        handles=[Line2D([], [], color="black", linestyle=ls, label=name) for name, ls in styles.items()],
        title="phase" if metric == "time" else "when", loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=8,
        title_fontsize=9,
    )
    if missing:
        fig.text(0.01, -0.02, "not plotted, does not boot: " + "; ".join(missing), fontsize=8, ha="left", va="top")
    return save_figure(fig, fmt)


STATE_COLOURS = {
    "vmm": "#7f7f7f",
    "sec": "#1f77b4",
    Actor.DXE_OPTION1: "#ff7f0e",
    Actor.LOADER_OPTION2: "#2ca02c",
    Actor.EXIT_ACCEPT_ALL: "#8c564b",
    "stub": "#9467bd",
    "linux": "#d62728",  # every Linux actor after the handoff: memblock, memmap, buddy
    "pending": "#f3e3a0",  # unaccepted: a pale yellow, never the white background
}
STATE_LABELS = {"pending": "pending (unaccepted)", "linux": "Linux after the handoff"}


def _who(page) -> str:
    if page.state != PageState.ACCEPTED:
        return "pending"
    who = str(page.actor)
    if who.startswith("vmlinuz"):  # a real stub run names the binary
        return "stub"
    return "linux" if who.startswith("linux") else who


def _accept_runs(td) -> list[tuple[int, int, str]]:
    runs: list[tuple[int, int, str]] = []
    for rs, re_, is_ram in td.tdx.ram.runs():
        if not is_ram:
            continue
        for s, e, page in td.tdx.pages.runs(rs, re_):
            who = _who(page)
            if runs and runs[-1][2] == who and runs[-1][1] == s:
                runs[-1] = (runs[-1][0], e, who)  # levels and flags differ, the picture does not
            else:
                runs.append((s, e, who))
    return runs


def address_space_figure(
    ram: int, vcpus: int, policy: Policy, profile: str, payload: Payload, fmt: str, resident: int = 512 << 20
) -> bytes:
    """The TD's guest-physical address space coloured by who accepted each range: at the firmware's handoff, and
    when Linux (on the same TD) has a ready userspace. The whole space above, below 4 GiB zoomed under it."""
    plt = _mpl()
    from matplotlib.patches import Patch

    model = model_boot(ram, vcpus, policy.upfront, policy.option, payload, profile=profile)
    if not model.ok or model.td is None or model.sec is None or model.stub is None:
        raise ValueError(f"{policy.name} does not boot a {format_size(ram)} TD: {model.message}")
    rows = [("at the handoff", _accept_runs(model.td))]
    run_to_ready(guest_after_stub(model.td, model.sec, model.stub), resident)
    rows.append(("userspace ready", _accept_runs(model.td)))
    top = max(e for s, e, is_ram in model.td.tdx.ram.runs() if is_ram)
    holes = [(s, e) for s, e, is_ram in model.td.tdx.ram.runs(0, top) if not is_ram]
    fig, axes = plt.subplots(2, 1, figsize=(11, 4.2), gridspec_kw={"hspace": 0.9})
    seen: set[str] = set()
    for ax, (lo, hi), title in (
        (axes[0], (0, top), f"the whole {format_size(ram)} TD"),
        (axes[1], (0, 4 * GiB), "below 4 GiB, zoomed"),
    ):
        for y, (_, runs) in enumerate(rows):
            for s, e, who in runs:
                if e <= lo or s >= hi:
                    continue
                ax.barh(y, (e - s) / GiB, left=s / GiB, height=0.7, color=STATE_COLOURS.get(who, "#17becf"),
                        edgecolor="none")
                seen.add(who)
        for s, e in holes:
            if s < hi:
                ax.axvspan(s / GiB, min(e, hi) / GiB, facecolor="white", hatch="//", edgecolor="#bbbbbb", linewidth=0)
                if (min(e, hi) - s) / (hi - lo) > 0.1:  # a label where it fits
                    ax.text((s + min(e, hi)) / 2 / GiB, 0.5, "MMIO hole", ha="center", va="center", fontsize=8)
        for mark in (2 * GiB, 4 * GiB):
            if lo < mark <= hi:
                ax.axvline(mark / GiB, color="black", linewidth=0.8, linestyle=":")
                ax.text(mark / GiB, 1.02, format_size(mark), transform=ax.get_xaxis_transform(), ha="center",
                        va="bottom", fontsize=8)
        ax.set_xlim(lo / GiB, hi / GiB)
        ax.set_ylim(-0.5, len(rows) - 0.5)
        ax.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("guest-physical address (GiB)")
        ax.set_title(title, fontsize=10, pad=14)  # room for the 2G/4G marks' labels
    axes[1].set_xticks([0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4])
    fig.suptitle(f"{format_size(ram)} TD, {vcpus} vCPUs, {policy.name}: who accepted what", y=1.02)
    order = [k for k in STATE_COLOURS if k in seen] + sorted(seen - set(STATE_COLOURS))
    handles = [Patch(color=STATE_COLOURS.get(w, "#17becf"), label=STATE_LABELS.get(w, str(w))) for w in order]
    handles.append(Patch(facecolor="white", hatch="//", edgecolor="#bbbbbb", label="not RAM (MMIO hole)"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize=8)
    return save_figure(fig, fmt)


# ----------------------------------------------------------------------------- report.html


def _policy_table(cmp: Comparison, vcpus: int, profile: str, caption: str, cell: Callable[[Cell | None], str],
                  last: tuple[str, Callable[[str], str]] | None = None) -> str:
    """A policy per row, a TD size per column: `cell` renders a cell (None: not in the matrix); `last` an extra
    column (its heading, its text per policy)."""
    sizes = _sizes(cmp)
    head = "".join(f"<th>{format_size(s)}</th>" for s in sizes)
    rows = []
    for p in _policies(cmp):
        tds = []
        for s in sizes:
            c = cmp.select(policy=p, ram=s, vcpus=vcpus, profile=profile)
            tds.append(cell(c[0] if c else None))
        extra = f"<td class='text'>{_e(last[1](p))}</td>" if last else ""
        rows.append(f"<tr><td class='name'>{_e(p)}</td>{''.join(tds)}{extra}</tr>")
    extra_head = f"<th class='name'>{last[0]}</th>" if last else ""
    return (f"<table><caption class='small'>{caption}</caption><tr><th class='name'>policy</th>{head}{extra_head}</tr>"
            + "".join(rows) + "</table>")


def _time_table(cmp: Comparison, vcpus: int, profile: str) -> str:
    def cell(x: Cell | None) -> str:
        if x is None:
            return "<td>n/a</td>"
        if not x.boots:
            return f"<td class='fail'>does not boot<br><span class='small'>{_e(x.failed_step)}</span></td>"
        return (f"<td><b>{_s(x.total_ns or 0)}</b><br><span class='small'>{_s(x.firmware_ns)} + "
                f"{_s(x.os_ns or 0)}</span></td>")

    return _policy_table(
        cmp, vcpus, profile,
        "time to a ready userspace (bold), firmware + OS below; seconds of virtual time", cell,
        ("firmware phase over sizes", lambda p: spread(cmp, p, vcpus, profile)),
    )


def _accepted_table(cmp: Comparison, vcpus: int, profile: str) -> str:
    def cell(x: Cell | None) -> str:
        if x is None or not x.boots:
            return "<td class='fail'>n/a</td>" if x is not None else "<td>n/a</td>"
        ready = x.ready_accepted or 0
        return (f"<td>{human_size(x.firmware_accepted)}<br><span class='small'>{human_size(ready)} "
                f"({ready / x.ram * 100:.1f}%)</span></td>")

    return _policy_table(
        cmp, vcpus, profile,
        "accepted at the firmware's handoff; below, when userspace is ready (share of RAM; the firmware image's "
        "private pages count too)", cell,
    )


def _failures_html(fails: list[Failure]) -> str:
    if not fails:
        return "<p>Every run boots.</p>"
    rows = []
    for f in fails:
        sizes = sorted({ram for ram, _ in f.cells})
        vcpus = sorted({n for _, n in f.cells})
        rows.append(
            f"<tr><td class='name'>{_e(f.policy)}</td><td class='text'>{_e(', '.join(map(format_size, sizes)))}"
            f"</td><td class='text'>{_e(', '.join(map(str, vcpus)))}</td><td class='text'>{_e(f.profile)}"
            f"</td><td class='text'>does not boot: fails at the <b>{_e(f.step)}</b> step</td>"
            f"<td class='text'>{_e(f.reason or '(no message)')}</td><td class='text'>{_e(f.hint)}</td></tr>"
        )
    return (
        "<table><tr><th class='name'>policy</th><th class='name'>TD sizes</th><th class='name'>vCPUs</th>"
        "<th class='name'>profile</th><th class='name'>outcome</th><th class='name'>reason</th>"
        "<th class='name'>hint</th></tr>" + "".join(rows) + "</table>"
    )


def _provenance_html(cmp: Comparison, profiles: Sequence[str], command_line: str) -> str:
    from lazyaccept import binaries
    items = [
        ("lazyaccept", _e(__version__)),
        ("command line", f"<code>{_e(command_line)}</code>"),
    ]
    for prof in profiles:
        hp = host_profile(cmp, prof)
        items.append((
            f"host profile {_e(hp.name)}",
            f"{_e(hp.description)}<br><span class='small'>TDCALL {hp.tdcall_ns} ns, exit {hp.exit_ns} ns, accept "
            f"clearing {human_size(hp.clear_bytes_per_s)}/s per vCPU ({human_size(hp.clear_bytes_per_s_total)}/s "
            f"shared), private memory mapped at {'2M' if hp.max_private_level else '4K'}</span>",
        ))
    for pkg, what in (
        (binaries.OVMF, "the TDVF metadata of its OVMF.fd (built in, no firmware code runs)"),
        (binaries.LINUX, "its EFI stub's allocations and sizes, modelled (vmlinuz "
         f"{human_size(Payload().kernel_file_bytes)}); Linux after the handoff modelled as this release"),
    ):
        items.append((
            f"{_e(pkg.name)}",
            f"{_e(pkg.version)} (Debian {_e(pkg.suite)}, {_e(pkg.filename)}, SHA256 <code>{_e(pkg.sha256)}</code>): "
            f"{_e(what)}",
        ))
    items.append(("payload", f"a {_e(human_size(cmp.initrd_bytes))} initrd by QEMU direct boot, then a "
                             f"{_e(human_size(cmp.resident_bytes))} resident userspace"))
    return definition_list(items)


def write_outputs(
    cmp: Comparison,
    out: Path,
    profiles: list[str],
    vcpus: list[int],
    *,
    policies: Sequence[Policy] = DEFAULT_POLICIES,
    command_line: str = "lazyaccept compare",
) -> list[Path]:
    """The plots (PNG and SVG) and report.html; the command writes comparison.json last (compare.comparison_record)."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    sections = []
    for profile in profiles:
        name = profile_name(cmp, profile)
        for n in vcpus:
            parts = [f"<h2>{_e(name)}, {n} vCPU{'s' if n > 1 else ''}</h2>",
                     "<h3>Time to a ready userspace</h3>", _time_table(cmp, n, profile),
                     "<h3>Accepted memory</h3>", _accepted_table(cmp, n, profile)]
            for metric, title in (("time", "Boot time against TD size"), ("accepted", "Accepted memory against size")):
                stem = f"{metric}_{re.sub(r'[^A-Za-z0-9._-]', '_', name)}_{n}vcpu"  # a TOML may name it "a/b"
                for fmt in ("png", "svg"):
                    data = _figure(cmp, metric, profile, n, fmt)
                    (out / f"{stem}.{fmt}").write_bytes(data)
                    written.append(out / f"{stem}.{fmt}")
                parts.append(f"<h3>{_e(title)}</h3><figure>{inline_svg(data)}<figcaption class='small'>also "
                             f"<a href='{stem}.png'>{stem}.png</a>, <a href='{stem}.svg'>{stem}.svg</a>"
                             "</figcaption></figure>")
            sections.append("\n".join(parts))
    by_name = {p.name: p for p in policies}
    picture = by_name.get("256M+option1", Policy("256M+option1", "256M", "option1"))
    address = ""
    for fmt in ("png", "svg"):
        data = address_space_figure(64 * GiB, 8, picture, profile_source(cmp, profiles[0]),
                                    Payload(initrd_bytes=1 * GiB), fmt, cmp.resident_bytes)
        (out / f"address_space.{fmt}").write_bytes(data)
        written.append(out / f"address_space.{fmt}")
    address = inline_svg(data)  # the SVG, written last
    fails = failures(cmp, policies)
    body = [
        "<h1>Up-front and on-demand accept policies compared</h1>",
        "<p class='summary'>" + _e(" ".join(summary(cmp))) + "</p>",
        f"<p class='small'>QEMU direct boot of the Linux 6.12 stub model with a {_e(human_size(cmp.initrd_bytes))} "
        f"initrd, then Linux to a ready userspace of {_e(human_size(cmp.resident_bytes))}, on the same TD. Firmware = "
        "SEC (slowest vCPU) + DXE, loader and stub until ExitBootServices; OS = the stub after ExitBootServices and "
        "Linux. Virtual time from the host profile's cost table.</p>",
        "<h2>Runs that do not boot</h2>", _failures_html(fails),
        *sections,
        "<h2>Who accepted what: the address space of one TD</h2>",
        f"<p class='small'>64 GiB, 8 vCPUs, {_e(picture.name)}, a 1 GiB initrd: what the firmware and the stub "
        "accepted by the handoff, then what Linux accepted until userspace was ready. Also "
        "<a href='address_space.png'>address_space.png</a>.</p>",
        f"<figure>{address}</figure>",
        "<h2>Provenance</h2>", _provenance_html(cmp, profiles, command_line),
    ]
    (out / "report.html").write_text(document("lazyaccept compare: accept policies against TD size", body, css=CSS))
    written.append(out / "report.html")
    return written
