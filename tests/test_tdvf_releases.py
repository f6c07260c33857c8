"""edk2 2026.08 (Debian forky) under the real-firmware runner: the OvmfPkgX64 image direct-boots Debian's 6.12 EFI
stub into the kernel on a 4 GiB, 2-vCPU TD with a sound handoff; the PEI-less IntelTdxX64 image with Microsoft keys
enrolled refuses the unsigned stub under Secure Boot and ends where BDS finds nothing to boot, as it would under
QEMU; through QEMU 10's -shim it admits Debian's Microsoft-signed shim (not the unsigned build), whose signature
check of Debian's kernel passes and whose SBAT check refuses it."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Iterator

import pytest

from lazyaccept.binaries import BinaryStore
from lazyaccept.cpu.unicorn.td_vcpu import KERNEL_TEXT_MAPPING
from lazyaccept.errors import InputError
from lazyaccept.exitcodes import EXIT_BOOTED, EXIT_FAILED
from lazyaccept.guest.handoff_check import side_effect_free_reader
from lazyaccept.tdvf_run import SECURE_BOOT_REFUSED_LINE, TdvfOutcome, TdvfRun, run_tdvf
from lazyaccept.units import GiB, MiB

pytestmark = pytest.mark.real_binary

MAX_WALL_S = 600  # a bound, not a figure: a run that needs more is stuck


def test_inteltdx_2026_08_refuses_the_unsigned_stub_and_bds_finds_nothing_to_boot() -> None:
    # OVMF.inteltdx.ms.fd enrols Microsoft's keys, so LoadImage of the unsigned stub is a security violation, and
    # X86QemuLoadImageLib (edk2 5a6a9f7955, 2025-10) refuses the legacy loader in a confidential VM.
    store = BinaryStore()
    rep = run_tdvf(TdvfRun(store.ovmf_inteltdx_fd(), kernel=store.linux_vmlinuz(), max_wall_s=MAX_WALL_S))
    assert rep.outcome == TdvfOutcome.NO_BOOT_OPTION and rep.exit_code == EXIT_FAILED, (rep.detail, rep.console)
    assert "Secure Boot refused the kernel" in rep.detail
    assert SECURE_BOOT_REFUSED_LINE in rep.console and "not using insecure legacy linux kernel loader" in rep.console
    assert rep.tdcalls["MEM_PAGE_ACCEPT"] > 0 and rep.rip < KERNEL_TEXT_MAPPING


def test_inteltdx_2026_08_admits_debians_signed_shim_which_refuses_a_kernel_without_sbat() -> None:
    # QEMU 10's -shim: fw_cfg's etc/boot/shim and the unpatched etc/boot/kernel. Secure Boot admits Microsoft's
    # signature on shim (no "verification failed" from the firmware: X86QemuLoadImageLib starts it), shim reads
    # the kernel from QemuKernelLoaderFsDxe's file system byte for byte as signed, and refuses it: Debian's kernel
    # has no .sbat section, which shim 16.1 (pe.c verify_sbat_section) requires of an image it loads itself.
    store = BinaryStore()
    kernel = store.linux_signed_vmlinuz()
    rep = run_tdvf(TdvfRun(store.ovmf_inteltdx_fd(), ram=4 * GiB, kernel=kernel, shim=store.shim_signed_efi(),
                           initrd_size=16 * MiB, max_wall_s=MAX_WALL_S))
    assert rep.outcome == TdvfOutcome.REFUSED and rep.exit_code == EXIT_FAILED, (rep.detail, rep.console[-500:])
    assert "Verification failed (0x1A Security Violation)" in rep.detail and "no .sbat section" in rep.detail
    assert SECURE_BOOT_REFUSED_LINE not in rep.console
    assert rep.td is not None
    data, read = kernel.read_bytes(), side_effect_free_reader(rep.td.tdx)
    copies, found = [], {}
    for base, chunk in _readable(read, 2 * GiB):
        at = chunk.find(data[:4096])
        while at >= 0:  # the firmware's blob and shim's file buffer
            copies.append(base + at)
            at = chunk.find(data[:4096], at + 1)
        # an event may straddle a 2 MiB piece: pieces overlap (below), so key events by their address
        found.update({base + at: event for at, event in _variable_authorities(chunk)})
    copies = sorted(set(copies))
    authorities = [found[a] for a in sorted(found)]
    assert len(copies) == 2 and all(read(gpa, len(data)) == data for gpa in copies), [hex(c) for c in copies]
    # The CC event log's EV_EFI_VARIABLE_AUTHORITY events: the firmware verified shim by Microsoft's UEFI CA in db;
    # shim logged the SbatLevel it applies, then verified the kernel's signature by Debian's CA (its vendor
    # certificate, mirrored into MokListRT: shim 16.1 verify.c check_allowlist). What refused the kernel after that
    # is SBAT.
    assert [name for name, _, _ in authorities] == ["db", "SbatLevel", "MokListRT"]
    (_, db_owner, db_cert), (_, _, _), (_, mok_owner, mok_cert) = authorities
    assert db_owner == MICROSOFT_OWNER and b"Microsoft Corporation UEFI CA 2011" in db_cert
    assert mok_owner == SHIM_LOCK and b"Debian Secure Boot CA" in mok_cert


MICROSOFT_OWNER = uuid.UUID("77fa9abd-0359-4d32-bd60-28f4e78f784b")  # the owner of Microsoft's db entries
SHIM_LOCK = uuid.UUID("605dab50-e046-4300-abb6-3dd810dd8b23")
EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
SHA384 = 0x000C


def _readable(read: Callable[[int, int], bytes], end: int) -> Iterator[tuple[int, bytes]]:
    """Guest memory below `end` in 2 MiB pieces, each 64 KiB longer than 2 MiB where readable (so a record across a
    piece's end is whole in one of them), page by page where a piece holds a page the TD cannot read (never
    accepted, or shared)."""
    for base in range(0, end, 2 * MiB):
        try:
            yield base, read(base, 2 * MiB + 64 * 1024)
            continue
        except InputError:
            pass
        try:
            yield base, read(base, 2 * MiB)
        except InputError:
            for page in range(base, base + 2 * MiB, 4096):
                try:
                    yield page, read(page, 4096)
                except InputError:
                    continue


def _variable_authorities(chunk: bytes) -> list[tuple[int, tuple[str, uuid.UUID, bytes]]]:
    """(offset, (variable name, signature owner, signature data)) of each EV_EFI_VARIABLE_AUTHORITY event with one
    SHA-384 digest (TdTcg2Dxe's CC event log: TCG_PCR_EVENT2 then UEFI_VARIABLE_DATA) wholly inside chunk."""
    out = []
    marker = struct.pack("<IIH", EV_EFI_VARIABLE_AUTHORITY, 1, SHA384)
    at = chunk.find(marker)
    while at >= 0:
        body = at + len(marker) + 48 + 4  # the digest, then EventSize
        if body + 32 <= len(chunk):
            names, size = struct.unpack_from("<QQ", chunk, body + 16)
            data = body + 32 + 2 * names
            if names < 64 and data + size <= len(chunk) and size >= 16:
                name = chunk[body + 32 : data].decode("utf-16-le", "replace")
                out.append((at, (name, uuid.UUID(bytes_le=chunk[data : data + 16]), chunk[data + 16 : data + size])))
        at = chunk.find(marker, at + 1)
    return out


def test_inteltdx_2026_08_refuses_an_unsigned_shim() -> None:
    # The other half of Secure Boot's check on -shim: LoadImage of Debian's unsigned shim build is a security
    # violation, X86QemuLoadImageLib gives up on direct boot, BDS finds nothing else to boot; no shim code runs.
    store = BinaryStore()
    rep = run_tdvf(TdvfRun(store.ovmf_inteltdx_fd(), ram=4 * GiB, kernel=store.linux_signed_vmlinuz(),
                           shim=store.shim_efi(), max_wall_s=MAX_WALL_S))
    assert rep.outcome == TdvfOutcome.NO_BOOT_OPTION and rep.exit_code == EXIT_FAILED, (rep.detail, rep.console)
    assert "Secure Boot refused the shim (it is unsigned)" in rep.detail
    assert "Verification failed" not in rep.console and SECURE_BOOT_REFUSED_LINE not in rep.console


def test_ovmf_2026_08_boots_the_stub_into_the_kernel_on_two_vcpus() -> None:
    # Also the test of the TD vCPU's code pages: before writes to an executed page kept to unicorn's slow path,
    # this image ran a stale translation of a page DXE had reloaded and was terminated in FaultTolerantWriteDxe.
    store = BinaryStore()
    rep = run_tdvf(TdvfRun(store.ovmf_2026_fd(), ram=4 * GiB, vcpus=2, kernel=store.linux_vmlinuz(),
                           max_wall_s=MAX_WALL_S))
    assert rep.outcome == TdvfOutcome.KERNEL and rep.exit_code == EXIT_BOOTED, (rep.detail, rep.console[-500:])
    assert rep.kernel is not None and not rep.kernel.check.problems, rep.kernel.check.problems
    table = rep.kernel.handoff.table if rep.kernel.handoff else None
    assert table is not None and table.set_bytes() == 2 * GiB  # above 4 GiB, as upstream leaves it
    assert {a for a in rep.accepted_by_actor if a.startswith("SecMain")} == {"SecMain vCPU 0", "SecMain vCPU 1"}
