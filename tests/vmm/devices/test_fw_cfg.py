"""fw_cfg by docs/specs/fw_cfg.rst: signature, feature bitmap, file directory, DMA, direct-boot items."""

from __future__ import annotations

import struct

import pytest

from lazyaccept.errors import ConfigError
from lazyaccept.spec.linux_boot import field_offset
from lazyaccept.units import GiB
from lazyaccept.vmm.devices.base import GuestInputError
from lazyaccept.vmm.devices.fw_cfg import (
    DirectBoot,
    DmaControl,
    FwCfg,
    FwCfgKey,
    FwCfgPayload,
    direct_boot_items,
    q35_fw_cfg,
)

from .conftest import BytesMemory


def read_item(fw: FwCfg, key: int, n: int) -> bytes:
    fw.io_write(0x510, 2, key)
    return bytes(fw.io_read(0x511, 1) for _ in range(n))


def directory(fw: FwCfg) -> dict[str, tuple[int, int]]:
    count = int.from_bytes(read_item(fw, FwCfgKey.FILE_DIR, 4), "big")
    raw = read_item(fw, FwCfgKey.FILE_DIR, 4 + 64 * count)[4:]
    out = {}
    for i in range(count):
        size, select, _, name = struct.unpack_from(">IHH56s", raw, 64 * i)
        out[name.rstrip(b"\0").decode()] = (size, select)
    return out


def machine(memory: BytesMemory | None = None, payload: FwCfgPayload | None = None) -> FwCfg:
    return q35_fw_cfg(
        ram_size=4 * GiB,
        vcpus=2,
        e820_ram=[(0, 2 * GiB), (4 * GiB, 2 * GiB)],
        below_4g=2 * GiB,
        payload=payload,
        memory=memory,
    )


def test_signature_and_features(memory: BytesMemory) -> None:
    fw = machine(memory)
    assert read_item(fw, FwCfgKey.SIGNATURE, 4) == b"QEMU"
    assert read_item(fw, FwCfgKey.SIGNATURE, 6) == b"QEMU\0\0"  # past the end reads 0
    assert int.from_bytes(read_item(fw, FwCfgKey.ID, 4), "little") == 3  # traditional + DMA
    assert int.from_bytes(read_item(machine(), FwCfgKey.ID, 4), "little") == 1  # no memory, no DMA
    assert read_item(fw, 0x7777, 2) == b"\0\0"  # unknown key
    assert int.from_bytes(read_item(fw, FwCfgKey.RAM_SIZE, 8), "little") == 4 * GiB
    assert int.from_bytes(read_item(fw, FwCfgKey.NB_CPUS, 2), "little") == 2
    assert fw.io_read(0x514, 4).to_bytes(4, "little") == b"QEMU"  # big-endian register: bytes in order
    assert fw.io_read(0x518, 4).to_bytes(4, "little") == b" CFG"


def test_directory_sorted_and_files_readable() -> None:
    fw = machine(payload=FwCfgPayload(files={"opt/x": b"hello"}))
    d = directory(fw)
    assert list(d) == sorted(d)
    assert {"bootorder", "bios-geometry", "etc/boot-fail-wait", "etc/e820", "opt/x"} == set(d)
    assert d["bootorder"][0] == 0
    assert d["opt/x"] == (5, d["opt/x"][1]) and d["opt/x"][1] >= 0x20
    assert read_item(fw, d["opt/x"][1], 5) == b"hello"
    assert read_item(fw, d["etc/boot-fail-wait"][1], 4) == b"\xff\xff\xff\xff"
    e820 = read_item(fw, d["etc/e820"][1], d["etc/e820"][0])
    assert [struct.unpack_from("<QQI", e820, 20 * i) for i in range(2)] == [(0, 2 * GiB, 1), (4 * GiB, 2 * GiB, 1)]


def test_add_file_rejects_bad_names() -> None:
    fw = FwCfg()
    with pytest.raises(ConfigError, match="must be 1..55 bytes"):
        fw.add_file("x" * 56, b"")
    for i in range(0x20):
        fw.add_file(f"f{i:02}", b"")
    with pytest.raises(ConfigError, match="no free file slot"):
        fw.add_file("one-more", b"")


def bswap32(value: int) -> int:
    return int.from_bytes(value.to_bytes(4, "little"), "big")


def dma(fw: FwCfg, memory: BytesMemory, control: int, length: int, target: int, at: int = 0x1000) -> int:
    memory.write(at, struct.pack(">IIQ", control, length, target))
    # edk2 writes SwapBytes32 of each half: the register is big-endian
    fw.io_write(0x514, 4, bswap32(at >> 32))
    fw.io_write(0x518, 4, bswap32(at & 0xFFFFFFFF))
    return int.from_bytes(memory.read(at, 4), "big")


def test_dma_select_read_skip_and_zero_fill(memory: BytesMemory) -> None:
    fw = machine(memory, FwCfgPayload(files={"opt/blob": bytes(range(200))}))
    key = directory(fw)["opt/blob"][1]
    assert dma(fw, memory, (key << 16) | DmaControl.SELECT | DmaControl.READ, 10, 0x2000) == 0
    assert memory.read(0x2000, 10) == bytes(range(10))
    assert dma(fw, memory, DmaControl.SKIP, 100, 0) == 0  # offset now 110
    memory.write(0x3000, b"\xaa" * 100)
    assert dma(fw, memory, DmaControl.READ, 100, 0x3000) == 0
    assert memory.read(0x3000, 100) == bytes(range(110, 200)) + bytes(10)  # past the end: zeros
    # the directory itself through DMA
    assert dma(fw, memory, (FwCfgKey.FILE_DIR << 16) | DmaControl.SELECT | DmaControl.READ, 4, 0x4000) == 0
    assert int.from_bytes(memory.read(0x4000, 4), "big") == len(fw.files)


def test_dma_write_and_errors(memory: BytesMemory) -> None:
    fw = machine(memory)
    seen: list[bytes] = []
    fw.add_file("etc/rw", b"\0" * 8, writable=True, on_write=seen.append)
    key = fw.file_keys["etc/rw"]
    memory.write(0x2000, b"ABCDEFGH")
    assert dma(fw, memory, (key << 16) | DmaControl.SELECT | DmaControl.WRITE, 8, 0x2000) == 0
    assert fw.files["etc/rw"].data == b"ABCDEFGH" and seen == [b"ABCDEFGH"]
    ro = fw.file_keys["bootorder"]
    assert dma(fw, memory, (ro << 16) | DmaControl.SELECT | DmaControl.WRITE, 4, 0x2000) == DmaControl.ERROR
    sig = (FwCfgKey.SIGNATURE << 16) | DmaControl.SELECT | DmaControl.READ
    assert dma(fw, memory, sig, 4, 1 << 40) == DmaControl.ERROR  # target outside guest memory


def test_dma_without_memory_is_a_clear_error() -> None:
    fw = FwCfg()
    with pytest.raises(GuestInputError, match="no guest memory"):
        fw.io_write(0x518, 4, 0x1000)
    with pytest.raises(GuestInputError, match="fw_cfg data read size"):
        fw.io_read(0x511, 2)


def bzimage(setup_sects: int = 3, version: int = 0x20F, size: int = 8192) -> bytes:
    k = bytearray(size)
    k[0x1F1] = setup_sects
    k[0x202:0x206] = b"HdrS"
    k[0x206:0x208] = version.to_bytes(2, "little")
    k[field_offset("initrd_addr_max") : field_offset("initrd_addr_max") + 4] = (0x7FFFFFFF).to_bytes(4, "little")
    k[field_offset("xloadflags") : field_offset("xloadflags") + 2] = (0).to_bytes(2, "little")
    return bytes(k)


def le(b: bytes) -> int:
    return int.from_bytes(b, "little")


def test_direct_boot_split_as_qemu() -> None:
    kernel = bzimage()
    items = direct_boot_items(DirectBoot(kernel, b"R" * 5000, "console=ttyS0"), 2 * GiB)
    assert le(items[FwCfgKey.SETUP_SIZE]) == 4 * 512
    assert items[FwCfgKey.KERNEL_DATA] == kernel[2048:] and le(items[FwCfgKey.KERNEL_SIZE]) == len(kernel) - 2048
    assert le(items[FwCfgKey.KERNEL_ADDR]) == 0x100000 and le(items[FwCfgKey.SETUP_ADDR]) == 0x10000
    assert items[FwCfgKey.CMDLINE_DATA] == b"console=ttyS0\0" and le(items[FwCfgKey.CMDLINE_SIZE]) == 14
    initrd_addr = le(items[FwCfgKey.INITRD_ADDR])
    assert initrd_addr == (2 * GiB - 0x28000 - 1 - 5000) & ~0xFFF  # low RAM minus ACPI data caps the header's
    setup = items[FwCfgKey.SETUP_DATA]
    assert setup[field_offset("type_of_loader")] == 0xB0
    assert le(setup[field_offset("cmd_line_ptr") : field_offset("cmd_line_ptr") + 4]) == 0x20000
    assert le(setup[field_offset("ramdisk_image") : field_offset("ramdisk_image") + 4]) == initrd_addr
    assert le(setup[field_offset("heap_end_ptr") : field_offset("heap_end_ptr") + 2]) == 0xFE00
    assert setup[field_offset("loadflags")] & 0x80
    # setup_sects 0 means 4; a small low RAM caps the initrd below it
    items = direct_boot_items(DirectBoot(bzimage(0), b"R" * 10), 512 << 20)
    assert le(items[FwCfgKey.SETUP_SIZE]) == 5 * 512
    assert le(items[FwCfgKey.INITRD_ADDR]) == ((512 << 20) - 0x28000 - 1 - 10) & ~0xFFF


def test_direct_boot_bad_kernels() -> None:
    with pytest.raises(ConfigError, match="setup header"):
        direct_boot_items(DirectBoot(bytes(4096)), 2 * GiB)
    with pytest.raises(ConfigError, match="setup_sects"):
        direct_boot_items(DirectBoot(bzimage(200, size=4096)), 2 * GiB)
    fw = machine(payload=FwCfgPayload(direct_boot=DirectBoot(bzimage())))
    assert read_item(fw, FwCfgKey.SETUP_SIZE, 4) == (2048).to_bytes(4, "little")


def test_shim_adds_qemu_10s_named_boot_files() -> None:
    # QEMU 10.0 x86_load_linux: etc/boot/kernel is the file as given (no setup-header patches), etc/boot/shim the
    # -shim file; without a shim this VMM keeps QEMU 9.2's items only.
    kernel, shim = bzimage(), b"MZ shim image"
    plain = directory(machine(payload=FwCfgPayload(direct_boot=DirectBoot(kernel, b"R", "x"))))
    assert not any(name.startswith("etc/boot/") for name in plain)
    fw = machine(payload=FwCfgPayload(direct_boot=DirectBoot(kernel, b"R", "x", shim)))
    d = directory(fw)
    assert d["etc/boot/kernel"][0] == len(kernel) and d["etc/boot/shim"][0] == len(shim)
    assert read_item(fw, d["etc/boot/kernel"][1], len(kernel)) == kernel  # unpatched, whole
    assert read_item(fw, d["etc/boot/shim"][1], len(shim)) == shim
    assert read_item(fw, FwCfgKey.SETUP_DATA, 4 * 512) != kernel[: 4 * 512]  # the legacy items stay patched
    with pytest.raises(ConfigError, match="shim file is empty"):
        machine(payload=FwCfgPayload(direct_boot=DirectBoot(kernel, shim=b"")))
