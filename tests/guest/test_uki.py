"""Unified kernel images: the builder against the real systemd-stub 262 (read back with spec/pe.py and the firmware's
own PE parser, no pefile), its bad inputs, and boots of the UKI on the Python firmware."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from lazyaccept.advise import failed_allocation
from lazyaccept.binaries import BinaryStore
from lazyaccept.boot import BootScenario, Outcome, run_boot
from lazyaccept.cli import main
from lazyaccept.errors import InputError
from lazyaccept.firmware.dxe.pe import parse_pe
from lazyaccept.guest import uki
from lazyaccept.guest.kernel_image import read_release
from lazyaccept.spec.pe import (
    DIRECTORY_SECURITY,
    IMAGE_DATA_DIRECTORY,
    IMAGE_OPTIONAL_HEADER64,
    IMAGE_SCN_CNT_CODE,
    IMAGE_SCN_CNT_INITIALIZED_DATA,
    IMAGE_SCN_MEM_READ,
    IMAGE_SECTION_HEADER,
    PE_SIGNATURE_AND_FILE_HEADER,
)
from lazyaccept.units import GiB, MiB, align_up

pytestmark = pytest.mark.real_binary


@pytest.fixture(scope="module")
def stub() -> Path:
    return BinaryStore().systemd_stub()


@pytest.fixture(scope="module")
def kernel() -> Path:
    return BinaryStore().linux_vmlinuz()


def build(tmp_path: Path, stub: Path, kernel: Path, **kw) -> tuple[uki.UkiImage, Path]:
    out = tmp_path / "linux.efi"
    return uki.build_uki(out, stub, uki.payloads(kernel, **kw)), out


def test_sections_follow_the_stubs_last_at_the_next_alignment_and_the_headers_add_up(
    tmp_path: Path, stub: Path, kernel: Path
) -> None:
    image, out = build(tmp_path, stub, kernel, initrd_size=3 * MiB + 5, cmdline="console=ttyS0 quiet")
    old = uki.read_headers(stub.read_bytes())
    new, size = uki.read_uki(out)
    assert size == image.size == out.stat().st_size
    assert [s.name for s in new.sections] == [s.name for s in old.sections] + [
        ".osrel", ".cmdline", ".uname", ".initrd", ".linux"
    ]
    assert new.file_header["NumberOfSections"] == len(old.sections) + 5
    sa, fa = old.optional["SectionAlignment"], old.optional["FileAlignment"]
    prev = old.sections[-1]
    for s in new.sections[len(old.sections) :]:
        assert s.virtual_address == align_up(prev.virtual_address + prev.virtual_size, sa)
        assert s.raw_offset == align_up(prev.raw_offset + prev.raw_size, fa)
        assert s.raw_size == align_up(s.virtual_size, fa)
        kind = IMAGE_SCN_CNT_CODE if s.name == ".linux" else IMAGE_SCN_CNT_INITIALIZED_DATA
        assert s.characteristics == IMAGE_SCN_MEM_READ | kind
        prev = s
    last = new.sections[-1]
    assert new.optional["SizeOfImage"] == align_up(last.virtual_address + last.virtual_size, sa) == image.size_of_image
    added = sum(s.virtual_size for s in new.sections[len(old.sections) :])
    assert new.optional["SizeOfInitializedData"] == old.optional["SizeOfInitializedData"] + added
    assert new.optional["CheckSum"] == 0
    unchanged = set(IMAGE_OPTIONAL_HEADER64.fields) - {"SizeOfImage", "SizeOfInitializedData", "CheckSum"}
    assert {k: new.optional[k] for k in unchanged} == {k: old.optional[k] for k in unchanged}
    # the firmware's own parser takes it, with the stub's entry point and relocations
    pe = parse_pe(out.read_bytes(), "linux.efi")
    assert pe.size_of_image == image.size_of_image and pe.entry_rva == old.optional["AddressOfEntryPoint"]
    assert pe.relocations == parse_pe(stub.read_bytes()).relocations


def test_the_stubs_bytes_stay_as_they_were_but_for_the_patched_fields(tmp_path: Path, stub: Path, kernel: Path) -> None:
    _, out = build(tmp_path, stub, kernel, initrd_size=1 * MiB, cmdline="x")
    old, new = stub.read_bytes(), out.read_bytes()
    h = uki.read_headers(old)
    patched = {h.pe_offset + PE_SIGNATURE_AND_FILE_HEADER.offset_of("NumberOfSections") + i for i in range(2)}
    for name in ("SizeOfImage", "SizeOfInitializedData", "CheckSum"):
        patched |= {h.optional_offset + IMAGE_OPTIONAL_HEADER64.offset_of(name) + i for i in range(4)}
    table_end = h.table_offset + len(h.sections) * IMAGE_SECTION_HEADER.size
    new_table = set(range(table_end, table_end + 5 * IMAGE_SECTION_HEADER.size))
    differ = {i for i in range(len(old)) if old[i] != new[i]}
    assert differ <= patched | new_table and differ & new_table
    for s in h.sections:  # each of the stub's sections, byte for byte
        assert new[s.raw_offset : s.raw_offset + s.raw_size] == old[s.raw_offset : s.raw_offset + s.raw_size]


def test_the_sections_hold_what_was_given(tmp_path: Path, stub: Path, kernel: Path) -> None:
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(bytes(range(256)) * 40000 + b"tail")  # not a multiple of FileAlignment
    osrel = tmp_path / "os-release"
    osrel.write_text('ID=test\nPRETTY_NAME="Test"\n')
    image, out = build(tmp_path, stub, kernel, initrd=initrd, cmdline="console=ttyS0 root=/dev/vda", osrel=osrel)
    get = {s.name: uki.section_bytes(out, s, limit=64 * MiB) for s in image.added}
    assert get[".cmdline"] == b"console=ttyS0 root=/dev/vda"
    assert get[".osrel"] == osrel.read_bytes() and get[".initrd"] == initrd.read_bytes()
    assert get[".linux"] == kernel.read_bytes()
    assert get[".uname"].decode() == read_release(kernel.read_bytes()[: 64 << 10])[0] != ""
    # FileAlignment padding reads as zeros
    s = image.section(".initrd")
    assert s is not None
    with open(out, "rb") as f:
        f.seek(s.raw_offset + s.virtual_size)
        assert f.read(s.raw_size - s.virtual_size) == bytes(s.raw_size - s.virtual_size)


def test_without_a_command_line_there_is_no_cmdline_section(tmp_path: Path, stub: Path, kernel: Path) -> None:
    image, _ = build(tmp_path, stub, kernel)
    assert [s.name for s in image.added] == [".osrel", ".uname", ".linux"]


def test_a_1g_synthetic_initrd_is_a_hole_and_is_never_held_in_memory(tmp_path: Path, stub: Path, kernel: Path) -> None:
    tracemalloc.start()
    try:
        image, out = build(tmp_path, stub, kernel, initrd_size=1 * GiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.size > 1 * GiB and peak < 64 * MiB
    assert out.stat().st_blocks * 512 < 64 * MiB  # the kernel and the stub; the initrd is a hole


def test_a_real_initrd_is_copied_in_chunks(tmp_path: Path, stub: Path, kernel: Path) -> None:
    initrd = tmp_path / "big.img"
    with open(initrd, "wb") as f:
        f.truncate(96 * MiB)
        f.seek(50 * MiB)
        f.write(b"marker")
    tracemalloc.start()
    try:
        image, out = build(tmp_path, stub, kernel, initrd=initrd)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < uki.COPY_CHUNK + 32 * MiB
    s = image.section(".initrd")
    assert s is not None
    with open(out, "rb") as f:
        f.seek(s.raw_offset + 50 * MiB)
        assert f.read(6) == b"marker"


def test_pieces_and_relocate_load_the_image_as_layout_does(tmp_path: Path, stub: Path, kernel: Path) -> None:
    # The firmware loads images over 64 MiB (a UKI with a big initrd) piece by piece from a map of the file.
    _, out = build(tmp_path, stub, kernel, initrd_size=2 * MiB, cmdline="x")
    pe = parse_pe(out.read_bytes())
    base = 0x7C000000
    image = bytearray(pe.size_of_image)
    for rva, piece in pe.pieces(chunk=1 * MiB):
        image[rva : rva + len(piece)] = piece

    def write(rva: int, b: bytes) -> None:
        image[rva : rva + len(b)] = b

    pe.relocate(base, lambda rva, n: bytes(image[rva : rva + n]), write)
    assert image == pe.layout(base)


# Bad input: one line naming the structure and the offset.


def test_a_stub_that_is_no_pe_image(tmp_path: Path, kernel: Path) -> None:
    bad = tmp_path / "stub.efi"
    bad.write_bytes(b"#!/bin/sh\n" + bytes(200))
    with pytest.raises(InputError, match=r"not a PE image.*IMAGE_DOS_HEADER.e_magic, offset 0x0"):
        build(tmp_path, bad, kernel)
    bad.write_bytes(b"MZ" + bytes(10))
    with pytest.raises(InputError, match=r"IMAGE_DOS_HEADER.*offset 0x0"):
        build(tmp_path, bad, kernel)
    assert not (tmp_path / "linux.efi").exists()  # nothing half-written


def _patched_stub(tmp_path: Path, stub: Path, index: int, **fields: int) -> Path:
    data = bytearray(stub.read_bytes())
    h = uki.read_headers(bytes(data))
    at = h.table_offset + index * IMAGE_SECTION_HEADER.size
    header = IMAGE_SECTION_HEADER.unpack(data, at)
    data[at : at + IMAGE_SECTION_HEADER.size] = IMAGE_SECTION_HEADER.pack(header, **fields)
    out = tmp_path / "patched.efi"
    out.write_bytes(data)
    return out


def test_overlapping_stub_sections(tmp_path: Path, stub: Path, kernel: Path) -> None:
    h = uki.read_headers(stub.read_bytes())
    bad = _patched_stub(tmp_path, stub, 2, VirtualAddress=h.sections[1].virtual_address + 0x100)
    at = h.table_offset + 2 * IMAGE_SECTION_HEADER.size + IMAGE_SECTION_HEADER.offset_of("VirtualAddress")
    with pytest.raises(InputError, match=rf"\[2\] \(\.data\) overlaps IMAGE_SECTION_HEADER\[1\] \(\.rodata\) in "
                       rf"memory.*offset {at:#x}"):  # fmt: skip
        build(tmp_path, bad, kernel)
    bad = _patched_stub(tmp_path, stub, 3, PointerToRawData=h.sections[2].raw_offset)
    with pytest.raises(InputError, match=r"\[3\] \(\.sbat\) overlaps IMAGE_SECTION_HEADER\[2\] \(\.data\) in the file"):
        build(tmp_path, bad, kernel)
    bad = _patched_stub(tmp_path, stub, 5, SizeOfRawData=0x10000)
    with pytest.raises(InputError, match=r"\[5\] \(\.reloc\): raw data .* ends past the file"):
        build(tmp_path, bad, kernel)


def test_a_signed_stub_is_refused_as_ukify_refuses_it(tmp_path: Path, stub: Path, kernel: Path) -> None:
    data = bytearray(stub.read_bytes())
    h = uki.read_headers(bytes(data))
    at = h.directory_offset + DIRECTORY_SECURITY * IMAGE_DATA_DIRECTORY.size
    data[at : at + 8] = IMAGE_DATA_DIRECTORY.pack(VirtualAddress=len(data), Size=0x800)
    bad = tmp_path / "signed.efi"
    bad.write_bytes(data)
    with pytest.raises(InputError, match=rf"is signed.*IMAGE_DATA_DIRECTORY\[SECURITY\], offset {at:#x}"):
        build(tmp_path, bad, kernel)


def test_a_section_past_pes_32_bit_fields(tmp_path: Path, stub: Path, kernel: Path) -> None:
    with pytest.raises(InputError, match=r"IMAGE_SECTION_HEADER\[8\] \(\.initrd\) of 0x100000000 bytes .*past PE's "
                       r"32-bit VirtualAddress \(field IMAGE_SECTION_HEADER.VirtualAddress, "
                       r"offset 0x294\)"):  # fmt: skip
        build(tmp_path, stub, kernel, initrd_size=4 * GiB)


def test_the_cli_writes_it_and_bad_input_is_one_line_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "u.efi"
    assert main(["uki", "--out", str(out), "--initrd-size", "4M", "--append", "console=ttyS0"]) == 0
    text = capsys.readouterr().out
    assert ".initrd" in text and "synthetic (zeros)" in text and out.stat().st_size > 4 * MiB
    bad = tmp_path / "not.efi"
    bad.write_text("hello\n" * 20)
    assert main(["uki", "--out", str(out), "--stub", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "IMAGE_DOS_HEADER.e_magic" in err and "Traceback" not in err


# Boots of the UKI, started as the first image.


def test_a_uki_boots_to_the_kernel_entry_on_4g() -> None:
    rep = run_boot(BootScenario(ram="4G", smp=2, uki=True, initrd_size="16M"))
    assert rep.outcome == Outcome.KERNEL_ENTRY, rep.reason
    assert rep.handoff_ok and rep.kernel_release.startswith("6.12")
    assert "Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID" in rep.console
    assert rep.uki is not None
    who = [(a["who"], a["status"]) for a in rep.uki["allocations"]]
    # the Boot Manager's buffer of the file, LoadImage's pages, then systemd-stub's and the kernel stub's
    assert who == [("firmware", "SUCCESS"), ("firmware", "SUCCESS"), ("systemd-stub", "SUCCESS"),
                   ("systemd-stub", "SUCCESS"), ("linux EFI stub", "SUCCESS"),
                   ("linux EFI stub", "SUCCESS")]  # fmt: skip
    assert rep.uki["allocations"][0]["size_bytes"] == rep.uki["file_bytes"]
    copy = rep.uki["allocations"][2]
    assert "below 4 GiB" in copy["what"] and copy["size_bytes"] == 16 * MiB + 4096


@pytest.mark.parametrize("on_demand", ["none", "loader", "accept-service"])
def test_64g_with_256m_up_front_and_a_1g_initrd_fails_in_the_boot_managers_buffer(on_demand: str) -> None:
    # edk2's Boot Manager reads the whole file into a pool buffer before LoadImage: that allocation fails first
    sc = BootScenario(ram="64G", uki=True, upfront="256M", initrd_size="1G",
                      option2=on_demand == "loader", option3=on_demand == "accept-service")  # fmt: skip
    rep = run_boot(sc)
    assert rep.outcome == Outcome.LOADER_FAILED and "OUT_OF_RESOURCES" in rep.reason
    assert "Boot Manager: its buffer of" in rep.reason and "no LoadImage" in rep.reason
    assert rep.uki is not None
    (buffer,) = rep.uki["allocations"]
    assert buffer["who"] == "firmware" and buffer["status"] == "OUT_OF_RESOURCES"
    assert buffer["what"].startswith("the Boot Manager's buffer of") and "EfiBootServicesData" in buffer["what"]
    assert buffer["size_bytes"] == rep.uki["file_bytes"] > 1 * GiB
    assert not any(c["name"] == "LoadImage" for c in rep.calls)
    failed = failed_allocation(rep)  # what advise answers for the chain
    assert failed is not None and (failed["owner"], failed["size_bytes"]) == ("firmware", rep.uki["file_bytes"])
    assert failed["what"].startswith("the Boot Manager's buffer of")
    assert "Boot Manager's buffer" in rep.explanation and "only the allocator option (1)" in rep.explanation


def test_64g_with_the_allocator_boots_and_systemd_stub_copies_the_initrd_into_the_freed_buffers_pages() -> None:
    rep = run_boot(BootScenario(ram="64G", uki=True, upfront="256M", initrd_size="1G", option1=True))
    assert rep.outcome == Outcome.KERNEL_ENTRY and rep.handoff_ok, rep.reason
    assert rep.uki is not None
    got = [(a["who"], a["what"].split(" (")[0].split(":")[0], a["status"]) for a in rep.uki["allocations"]]
    assert got[:3] == [
        ("firmware", "the Boot Manager's buffer of vmlinuz-6.12.117+deb13-cloud-amd64.efi", "SUCCESS"),
        ("firmware", "LoadImage of the whole UKI", "SUCCESS"),
        ("systemd-stub", "the initrd's copy below 4 GiB", "SUCCESS"),
    ]
    # the Boot Manager frees its buffer (below 4 GiB, accepted on demand) once LoadImage has copied it: systemd-stub's
    # copy below 4 GiB gets those pages back
    calls = [(c["image"], c["name"], c["detail"]) for c in rep.calls]
    pool = next(d for i, n, d in calls if i == "Boot Manager" and n == "AllocatePool").rsplit("-> ", 1)[1]
    assert ("Boot Manager", "FreePool", pool) in calls
    # the initrd is in memory four times, three of them accepted on demand by the allocator: inside the buffer (its
    # pages then reused by systemd-stub's copy), inside the UKI LoadImage loaded, in the kernel stub's copy
    assert rep.accepted_by_actor["dxe-option1"] > 3 * GiB


def test_with_a_vtpm_the_report_lists_its_extends() -> None:
    rep = run_boot(BootScenario(ram="4G", smp=2, uki=True, initrd_size="1M", tcg2=True))
    assert rep.outcome == Outcome.KERNEL_ENTRY, rep.reason
    initrd = [m for m in rep.measurements if m.get("pcr") == 9 and m["size"] > 1 * MiB]
    assert len(initrd) == 1  # the kernel stub's measurement of the initrd it read through systemd-stub's LoadFile2


# Through systemd-boot: the UKI on the ESP as a Type #2 entry (EFI/Linux/*.efi), no entry file.


def test_systemd_boot_finds_the_uki_as_a_type_2_entry_and_boots_it_on_4g() -> None:
    rep = run_boot(BootScenario(ram="4G", smp=2, uki=True, systemd_boot=True, initrd_size="16M"))
    assert rep.outcome == Outcome.KERNEL_ENTRY and rep.handoff_ok, rep.reason
    assert rep.systemd_boot is not None and rep.uki is not None
    assert any(name.startswith("EFI/Linux/") and name.endswith(".efi") for name in rep.systemd_boot["esp"]["files"])
    assert not any(name.startswith("loader/entries") for name in rep.systemd_boot["esp"]["files"])
    first, load = rep.uki["allocations"][:2]
    assert first["who"] == "systemd-boot" and first["status"] == "SUCCESS"
    assert first["size_bytes"] >= rep.uki["file_bytes"]
    assert load["who"] == "firmware" and load["status"] == "SUCCESS"


def test_64g_with_256m_up_front_and_a_1g_initrd_halts_in_systemd_boots_buffer_of_the_uki() -> None:
    rep = run_boot(BootScenario(ram="64G", uki=True, systemd_boot=True, upfront="256M", initrd_size="1G"))
    assert rep.outcome == Outcome.LOADER_FAILED and "xmalloc" in rep.reason
    assert rep.uki is not None
    (buffer,) = rep.uki["allocations"]
    assert buffer["who"] == "systemd-boot" and buffer["status"] == "OUT_OF_RESOURCES"
    assert buffer["size_bytes"] >= rep.uki["file_bytes"] > 1 * GiB
    assert "Type #2 entry's UKI whole" in rep.explanation


def test_no_room_for_the_new_section_headers(tmp_path: Path, stub: Path, kernel: Path) -> None:
    data = bytearray(stub.read_bytes())
    h = uki.read_headers(bytes(data))
    end = h.table_offset + (len(h.sections) + 1) * IMAGE_SECTION_HEADER.size  # room for one more header only
    at = h.optional_offset + IMAGE_OPTIONAL_HEADER64.offset_of("SizeOfHeaders")
    data[at : at + 4] = end.to_bytes(4, "little")
    bad = tmp_path / "tight.efi"
    bad.write_bytes(data)
    with pytest.raises(InputError, match=rf"no room for IMAGE_SECTION_HEADER\[7\] \(\.cmdline\) in the headers "
                       rf"\(they end at {end:#x}\).*SizeOfHeaders, offset {at:#x}"):  # fmt: skip
        build(tmp_path, bad, kernel, cmdline="x")
