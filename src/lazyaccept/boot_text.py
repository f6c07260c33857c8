"""The text report of `lazyaccept boot` (and `run`): the scenario, the outcome, the console, the phases with a
totals line, the handoff (E820 as the kernel sanitises it); every table in aligned columns."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from lazyaccept import progress
from lazyaccept.boot import BootReport
from lazyaccept.boot_report import Phase
from lazyaccept.guest.acpi_check import format_acpi
from lazyaccept.guest.boot_params import e820_type_name
from lazyaccept.on_demand import ON_DEMAND_NAMES
from lazyaccept.spec.efi import memory_type_name
from lazyaccept.units import format_ns, format_size, human_size

# Linux keeps these apart even when neighbours have the same type (e820_nomerge): PRAM and soft-reserved ranges
# may mark NUMA or device boundaries.
E820_NOMERGE = frozenset({12, 0xEFFFFFFF})


def sanitize_e820(entries: Iterable[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """(start, size, type) entries as Linux sanitises the table the loader handed over (arch/x86/kernel/e820.c,
    e820__update_table, v6.12): empty entries dropped; the start and end of every entry sorted into change
    points (a start before an end at the same address); where entries overlap the highest type wins; a new entry
    starts wherever the type changes, so neighbours and overlaps of one type merge (not PRAM or soft-reserved).
    A table of one entry, or one that wraps past 2^64, is left as it is, as Linux does."""
    table = list(entries)
    if len(table) < 2 or any(start + size >= 1 << 64 for start, size, _ in table):  # u64 wrap
        return table
    points = sorted(
        (addr, is_end, i)
        for i, (start, size, _) in enumerate(table)
        if size
        for addr, is_end in ((start, False), (start + size, True))
    )
    out: list[tuple[int, int, int]] = []
    overlap: list[int] = []
    last_type, last_addr = 0, 0
    for addr, is_end, i in points:
        if is_end:
            overlap.remove(i)
        else:
            overlap.append(i)
        current = max((table[j][2] for j in overlap), default=0)
        if current != last_type or current in E820_NOMERGE:
            if last_type and addr > last_addr:
                out.append((last_addr, addr - last_addr, last_type))
            if current:
                last_addr = addr
            last_type = current
    return out


def aligned(rows: Sequence[Sequence[str]], right: Sequence[bool], indent: str = "  ") -> list[str]:
    """Rows of cells in columns as wide as their widest cell; `right` says which columns align right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(right))]
    out = []
    for row in rows:
        cells = (c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True))
        out.append((indent + "  ".join(cells)).rstrip())
    return out


def _is_os_phase(ph: Phase) -> bool:
    return ph.name.startswith(("OS: ", "the real kernel")) or ph.name == "stub after ExitBootServices"


def totals_line(rep: BootReport) -> str:
    """Firmware total (everything from SEC to the stub's ExitBootServices, or edk2's phases to the kernel's
    entry), the OS after it, and the time to ready: from the VMM build until the OS model's userspace is ready."""
    firmware = sum(ph.virtual_ns for ph in rep.phases if ph.name != "VMM build" and not _is_os_phase(ph))
    os_ns = sum(ph.virtual_ns for ph in rep.phases if _is_os_phase(ph))
    total = sum(ph.virtual_ns for ph in rep.phases)
    text = f"totals: firmware {format_ns(firmware)}, OS {format_ns(os_ns)}; "
    if rep.os_outcome == "ready":
        return text + f"time to ready {format_ns(total)} (from the VMM build to a ready userspace)"
    if rep.kernel is not None:
        return text + f"time to ready: not reached, the real kernel ran {format_ns(os_ns)}: {rep.kernel.outcome}"
    why = rep.os_outcome or f"the boot stopped: {rep.outcome}"
    return text + f"time to ready: not reached ({why})"


def _grub_chain(grub: dict | None) -> str:
    """"shim 16.1 -> grub2 2.14-4": the loaders the Boot Manager's image started, as their SBAT records name them."""
    grub = grub or {}
    return " -> ".join(x for x in (grub.get("shim"), grub.get("image") or "GRUB") if x)


def _kernel_name(kernel: str | None) -> str:
    """The kernel file, or the pinned Debian package it was extracted from."""
    from lazyaccept.binaries import pinned_package

    if kernel is None:
        return "Debian linux 6.12 cloud kernel"
    package = pinned_package(kernel)
    return f"Debian's {package.name} {package.version}" if package else kernel


def format_report(rep: BootReport, show_calls: bool = False) -> str:
    sc = rep.scenario
    firmware = (
        f"edk2's own TDVF {sc.firmware or 'Debian OVMF.fd 2025.02'} from the reset vector"
        + (f", shim {sc.shim}" if sc.shim else "")
        if sc.firmware_exec
        else f"up-front {sc.upfront}, on-demand "
        + (", ".join(f"{ON_DEMAND_NAMES[int(n[-1])]} ({n})" for n in sc.option_names) or "none")
        + (", accept-all at exit" if sc.accept_all_at_exit else "")
    )
    lines = [
        f"TD {format_size(sc.ram)}, {sc.smp} vCPUs, {sc.profile}; {firmware}",
        f"EFI application {sc.efi_app}, RNG seed {rep.rng_seed}"
        if sc.efi_app
        else f"payload: UKI (systemd-stub) of {_kernel_name(sc.kernel)}, initrd "
        + (sc.initrd or (human_size(sc.initrd_size) + " synthetic" if sc.initrd_size else "none"))
        + f", cmdline '{sc.cmdline}', RNG seed {rep.rng_seed}"
        if sc.uki
        else f"payload: {_kernel_name(sc.kernel)}, initrd "
        + (sc.initrd or (human_size(sc.initrd_size) + " synthetic" if sc.initrd_size else "none"))
        + (" (streamed)" if sc.stream_initrd else "")
        + f", cmdline '{sc.cmdline}', RNG seed {rep.rng_seed}",
    ]
    if sc.systemd_boot:
        where = "folder " + sc.disk_from if sc.disk_from else lines[1][9:]
        lines[1] = f"loader: systemd-boot from a GPT disk ({where})"
    elif sc.grub:
        lines[1] = (
            f"loader: {_grub_chain(rep.grub)} from a GPT disk "
            f"({'folder ' + sc.disk_from if sc.disk_from else lines[1][9:]}); "
            if not sc.disk
            else f"loader: the Boot Manager from the disk image {sc.disk} (its EFI/BOOT/BOOTX64.EFI, else GRUB); "
            f"measurement protocols: {(rep.grub or {}).get('measurement', '?')}"
        )
    lines += [
        f"edk2 profile {rep.edk2_profile}: {rep.edk2_profile_why}",
        "",
        f"outcome: {rep.outcome.upper()}: {rep.reason}",
        rep.cpu_why + "".join(f"; {n}" for n in rep.cpu_notes),
    ]
    if rep.explanation:
        lines.append(f"why: {rep.explanation}")
    if rep.hint and progress.hints():  # -q: no hints
        lines.append(f"hint: {rep.hint}")
    if rep.termination:
        lines.append(rep.termination)  # Termination.__str__ starts "TD terminated: "
    for inc in rep.incidents:
        lines.append(
            f"double accept ({inc['kind']}): [{inc['start']:#x}, {inc['end']:#x}) by {inc['actor']}"
            + (" -- the guest silently got a zeroed page" if inc["kind"] == "reaccept-after-remove" else "")
        )
    lines += ["", "console:"] + [f"  {line}" for line in rep.console.splitlines() if line.strip()]
    if rep.grub:
        esp = rep.grub["esp"]
        if "source" in esp:  # boot --disk
            lines += ["", f"disk: {esp['source']}, {human_size(esp['disk_bytes'])} {esp['partition_table'].upper()}, "
                      f"ESP partition {esp['esp_partition']} {esp['fat']}"]
            lines += [f"  note: {n}" for n in esp["notes"]]
        else:
            lines += [
                "",
                f"disk: {human_size(esp['disk_bytes'])} GPT, ESP {esp['fat']} ({esp['cluster_bytes']} B clusters)",
            ]
        lines += [f"  {d['path']}: {d['reads']} reads, {human_size(d['bytes_read'])}" for d in esp["devices"]]
        lines += [f"  file {name}: {human_size(size)}" for name, size in esp["files"].items()]
        search = rep.grub.get("config_search")
        if search:
            lines.append(
                f"grub.cfg search: prefix {search['prefix']} from the {search['prefix_source']}, fw_path "
                f"{search['fw_path']}; "
                + ", ".join([f"looked up {x['path']} ({x['result']})" for x in search["lookups"]] or ["no lookup seen"])
            )
            lines.append("  grub.cfg on the disk: " + (", ".join(rep.grub["grub_cfg_on_disk"]) or "none"))
            if rep.grub.get("hint"):
                lines.append(f"  fix: {rep.grub['hint']}")
        lines += [
            f"failed allocation: [{f['image']}, {f['owner']}] {f['service']}({f['detail']}) -> {f['status']}, "
            f"{human_size(f['size_bytes'])}"
            for f in rep.grub["failed_allocations"]
        ]
    if rep.systemd_boot:
        esp = rep.systemd_boot["esp"]
        lines += ["", f"disk: {human_size(esp['disk_bytes'])} GPT, ESP {esp['fat']} ({esp['cluster_bytes']} B "
                  "clusters)"]
        lines += [f"  file {name}: {human_size(size)}" for name, size in esp["files"].items()]
        lines += [f"variable {v['name']} = {v['text'] if v['text'] is not None else str(v['size_bytes']) + ' bytes'}"
                  for v in rep.systemd_boot["variables"]]
        lines += [
            f"failed allocation: [{f['image']}, {f['owner']}] {f['service']}({f['detail']}) -> {f['status']}, "
            f"{human_size(f['size_bytes'])}"
            for f in rep.systemd_boot["failed_allocations"]
        ]
    if rep.uki:
        u = rep.uki
        lines += ["", "UKI: systemd-stub + " + ", ".join(f"{x['name']} {human_size(x['virtual_size_bytes'])}"
                                                         for x in u["sections"]) + f"; SizeOfImage "
                  f"{human_size(u['size_of_image_bytes'])}"]  # fmt: skip
        lines += [f"  allocation by {a['who']}: {a['what']}, {human_size(a['size_bytes'])} -> {a['status']}"
                  for a in u["allocations"]]  # fmt: skip
    phases = [["phase", "virtual time", "accepted"]]
    phases += [[ph.name, format_ns(ph.virtual_ns), human_size(ph.accepted_bytes)] for ph in rep.phases]
    lines += ["", *aligned(phases, (False, True, True), indent=""), totals_line(rep)]
    lines += ["", "accepted by actor: " + ", ".join(f"{a} {human_size(n)}" for a, n in rep.accepted_by_actor.items())]
    for ev in rep.loader_events:
        extra = f", accepted {human_size(ev['accepted_bytes'])}" if ev["accepted_bytes"] else ""
        lines.append(f"loader: {ev['what']}: {ev['status']} ({human_size(ev['size'])}{extra})")
    if rep.reached_kernel:
        lines.append("")
        t = rep.unaccepted_table
        if t:
            lines.append(
                f"unaccepted-memory table: unit {human_size(t['unit_size'])}, base {t['phys_base']:#x}, "
                f"{t['bitmap_bytes']} bitmap bytes, {human_size(t['set_bytes'])} marked unaccepted"
            )
        lines.append(f"stub TDCALLs after ExitBootServices: {rep.tdcalls_by_stub}")
        lines.append(
            f"handoff check: {'PASS' if rep.handoff_ok else 'FAIL'}"
            + (f", {human_size(rep.lost_ram_bytes)} of RAM lost to the OS" if rep.lost_ram_bytes else "")
        )
        lines += [f"  problem: {p}" for p in rep.handoff_problems]
        lines += format_acpi(rep.acpi)
        if rep.kernel_profile:
            lines.append(f"kernel {rep.kernel_release or '(no version string)'}: {rep.kernel_profile}")
            lines += [f"  {why}" for why in rep.kernel_profile_why]
        if rep.os_outcome:
            lines.append(f"Linux after the handoff (model: {rep.kernel_profile or 'linux'}): {rep.os_outcome}")
        if rep.kernel is not None:
            lines += _kernel_run_lines(rep)
        if rep.boot_params:
            raw = [(e.start, e.size, e.type) for e in rep.boot_params.e820]
            e820 = sanitize_e820(raw)
            lines.append(
                f"E820 handed to the kernel, as Linux sanitises it (sorted, merged): {len(e820)} entries"
                + ("" if e820 == raw else f" ({len(raw)} as handed over)")
            )
            rows = [["start", "end", "size", "type"]]
            rows += [[f"{a:#014x}", f"{a + n:#014x}", human_size(n), e820_type_name(t)] for a, n, t in e820]
            lines += aligned(rows, (False, False, True, False))
        if rep.memory_map:
            lines.append(f"UEFI memory map at ExitBootServices ({len(rep.memory_map)} descriptors), by type:")
            by_type: dict[str, int] = {}
            for d in rep.memory_map:
                by_type[memory_type_name(d.type)] = by_type.get(memory_type_name(d.type), 0) + d.size
            lines += aligned([[name, human_size(n)] for name, n in sorted(by_type.items(), key=lambda kv: -kv[1])],
                             (False, True))
    if show_calls:
        lines += ["", "service calls:"]
        lines += [f"  [{c['image']}] {c['name']}({c['detail']}) -> {c['status']}" for c in rep.calls]
    lines.append(f"\nwall time {rep.wall_s:.1f} s")
    return "\n".join(lines)


def _kernel_run_lines(rep: BootReport) -> list[str]:
    from lazyaccept.commands.tdvf import ANSI_ESCAPE, kernel_run_lines

    k = rep.kernel
    console = ANSI_ESCAPE.sub("", k.console).splitlines()
    return [
        f"the real kernel after the handoff: {str(k.outcome).upper()}: {k.detail}",
        f"  entered at the stub's jump {rep.kernel_jump:#x} in long mode, CR3 {k.page_tables:#x} (identity tables "
        "where the TDX reset vector builds its own)",
        "  the firmware's runtime services (Python, unreachable from the TD vCPU) answered EFI_UNSUPPORTED to: "
        + (", ".join(k.runtime_calls) or "none called"),
        *kernel_run_lines(k.run, k.outside_table)[1:],
        f"  serial console ({len(console)} lines, the last 12):",
        *[f"  | {line}" for line in console[-12:]],
    ]
