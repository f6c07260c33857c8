"""The text report of `lazyaccept boot` (and `run`): the scenario, the outcome, the console, the phases, the
handoff."""

from __future__ import annotations

from lazyaccept.boot import BootReport
from lazyaccept.guest.acpi_check import format_acpi
from lazyaccept.guest.boot_params import e820_type_name
from lazyaccept.spec.efi import memory_type_name
from lazyaccept.units import format_ns, format_size, human_size


def format_report(rep: BootReport, show_calls: bool = False) -> str:
    sc = rep.scenario
    firmware = (
        f"edk2's own TDVF {sc.firmware or 'Debian OVMF.fd 2025.02'} from the reset vector"
        + (f", shim {sc.shim}" if sc.shim else "")
        if sc.firmware_exec
        else f"up-front {sc.upfront}, on-demand {sc.options_name}"
        + (", accept-all at exit" if sc.accept_all_at_exit else "")
    )
    lines = [
        f"TD {format_size(sc.ram)}, {sc.smp} vCPUs, {sc.profile}; {firmware}",
        f"EFI application {sc.efi_app}, RNG seed {rep.rng_seed}"
        if sc.efi_app
        else f"payload: {sc.kernel or 'Debian linux 6.12 cloud kernel'}, initrd "
        + (sc.initrd or (human_size(sc.initrd_size) + " synthetic" if sc.initrd_size else "none"))
        + (" (streamed)" if sc.stream_initrd else "")
        + f", cmdline '{sc.cmdline}', RNG seed {rep.rng_seed}",
    ]
    if sc.grub:
        lines[1] = (
            f"loader: GRUB from a GPT disk ({'folder ' + sc.disk_from if sc.disk_from else lines[1][9:]}); "
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
    if rep.hint:
        lines.append(f"hint: {rep.hint}")
    if rep.termination:
        lines.append(f"TD terminated: {rep.termination}")
    for inc in rep.incidents:
        lines.append(
            f"double accept ({inc['kind']}): [{inc['start']:#x}, {inc['end']:#x}) by {inc['actor']}"
            + (" -- the guest silently got a zeroed page" if inc["kind"] == "reaccept-after-remove" else "")
        )
    lines += ["", "console:"] + [f"  {line}" for line in rep.console.splitlines() if line.strip()]
    if rep.grub:
        esp = rep.grub["esp"]
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
            f"failed allocation: [{f['image']}] {f['service']}({f['detail']}) -> {f['status']}"
            for f in rep.grub["failed_allocations"]
        ]
    lines += ["", f"{'phase':50} {'virtual time':>14} {'accepted':>12}"]
    for ph in rep.phases:
        lines.append(f"{ph.name:50} {format_ns(ph.virtual_ns):>14} {human_size(ph.accepted_bytes):>12}")
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
            lines.append("E820 handed to the kernel:")
            for e in rep.boot_params.e820:
                lines.append(f"  {e.start:#014x}-{e.end:#014x} {e820_type_name(e.type)}")
        if rep.memory_map:
            lines.append(f"UEFI memory map at ExitBootServices ({len(rep.memory_map)} descriptors), by type:")
            by_type: dict[str, int] = {}
            for d in rep.memory_map:
                by_type[memory_type_name(d.type)] = by_type.get(memory_type_name(d.type), 0) + d.size
            lines += [f"  {name:<28} {human_size(n)}" for name, n in sorted(by_type.items(), key=lambda kv: -kv[1])]
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
