"""QEMU's firmware configuration device (fw_cfg) as an x86 guest sees it: I/O ports 0x510/0x511 and DMA at 0x514.

Behaviour mirrored (QEMU 9.2 / 10.x: hw/nvram/fw_cfg.c, hw/i386/fw_cfg.c, hw/i386/x86-common.c x86_load_linux,
docs/specs/fw_cfg.rst):
- a 16-bit write to 0x510 selects an item and rewinds it; each byte read (0x510 or 0x511) returns the next byte, 0
  past the end or for an unknown key; byte writes are ignored (the data-port write was removed in QEMU 2.4);
- the DMA address register at 0x514 is big-endian, written as two 32-bit halves; the write of the low half
  (0x518) runs the transfer; reading it returns "QEMU CFG";
- integers in items are little-endian (fw_cfg_add_i16/i32/i64); the file directory is big-endian;
- files are kept sorted by name and numbered from FW_CFG_FILE_FIRST in that order, as QEMU does for machine types
  without legacy_fw_cfg_order;
- -shim (QEMU 10.0, qemu-options.hx): etc/boot/shim, with the unpatched kernel as etc/boot/kernel (shim_files).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag

from lazyaccept.errors import ConfigError, LazyAcceptError
from lazyaccept.spec.linux_boot import field_offset, read_setup_header
from lazyaccept.vmm.acpi import AcpiMachine, build_acpi
from lazyaccept.vmm.devices.base import EventLog, GuestInputError, GuestMemory, check_size

FW_CFG_IO_BASE = 0x510
FW_CFG_DMA_IO_BASE = 0x514
FW_CFG_DMA_SIGNATURE = b"QEMU CFG"
FILE_NAME_SIZE = 56  # FWCfgFile.name
FILE_SLOTS = 0x20  # FW_CFG_FILE_SLOTS_DFLT: QEMU refuses a 33rd file


class FwCfgKey(IntEnum):
    """Item selectors (include/standard-headers/linux/qemu_fw_cfg.h; x86 ones from hw/i386/fw_cfg.h)."""

    SIGNATURE = 0x00
    ID = 0x01
    UUID = 0x02
    RAM_SIZE = 0x03
    NOGRAPHIC = 0x04
    NB_CPUS = 0x05
    MACHINE_ID = 0x06
    KERNEL_ADDR = 0x07
    KERNEL_SIZE = 0x08
    KERNEL_CMDLINE = 0x09
    INITRD_ADDR = 0x0A
    INITRD_SIZE = 0x0B
    BOOT_DEVICE = 0x0C
    NUMA = 0x0D
    BOOT_MENU = 0x0E
    MAX_CPUS = 0x0F
    KERNEL_ENTRY = 0x10
    KERNEL_DATA = 0x11
    INITRD_DATA = 0x12
    CMDLINE_ADDR = 0x13
    CMDLINE_SIZE = 0x14
    CMDLINE_DATA = 0x15
    SETUP_ADDR = 0x16
    SETUP_SIZE = 0x17
    SETUP_DATA = 0x18
    FILE_DIR = 0x19
    FILE_FIRST = 0x20
    ACPI_TABLES = 0x8000  # FW_CFG_ARCH_LOCAL + 0
    SMBIOS_ENTRIES = 0x8001
    IRQ0_OVERRIDE = 0x8002
    HPET = 0x8004


# What QEMU's -kernel/-initrd/-append set (x86_load_linux): a selection of one is the firmware's first look at
# the payload (edk2's QemuKernelLoaderFsDxe, X86QemuLoadImageLib), the point a snapshot may be taken before.
DIRECT_BOOT_KEYS = frozenset(
    [FwCfgKey.KERNEL_ADDR, FwCfgKey.KERNEL_SIZE, FwCfgKey.KERNEL_CMDLINE, FwCfgKey.INITRD_ADDR, FwCfgKey.INITRD_SIZE]
    + [FwCfgKey(k) for k in range(FwCfgKey.KERNEL_ENTRY, FwCfgKey.SETUP_DATA + 1)]
)
WRITE_CHANNEL = 0x4000  # selector bit: the (removed) port write channel; the key is taken without it
FW_CFG_INVALID = 0xFFFF


class FwCfgFeature(IntFlag):
    """The bitmap at key FW_CFG_ID."""

    TRADITIONAL = 0x01
    DMA = 0x02


class DmaControl(IntFlag):
    """FWCfgDmaAccess.control bits; the selector is in bits 31:16 when SELECT is set."""

    ERROR = 0x01
    READ = 0x02
    SKIP = 0x04
    SELECT = 0x08
    WRITE = 0x10


DMA_ACCESS = struct.Struct(">IIQ")  # FWCfgDmaAccess: be32 control, be32 length, be64 address
DIR_ENTRY = struct.Struct(">IHH56s")  # FWCfgFile: be32 size, be16 select, be16 reserved, char name[56]
E820_ENTRY = struct.Struct("<QQI")  # struct e820_entry (hw/i386/e820_memory_layout.h), packed
E820_RAM = 1


@dataclass
class FwCfgItem:
    data: bytes
    writable: bool = False  # DMA WRITE allowed (QEMU's allow_write; e.g. etc/smi/requested-features)
    on_write: Callable[[bytes], None] | None = None
    on_select: Callable[[], None] | None = None  # QEMU's select_cb: runs before the item is read


@dataclass(frozen=True)
class DirectBoot:
    """What QEMU's -kernel/-initrd/-append (and -shim) put in fw_cfg; see direct_boot_items and shim_files."""

    kernel: bytes
    initrd: bytes = b""
    cmdline: str = ""
    # QEMU >= 10.0's -shim (qemu-options.hx): a first-stage loader the firmware starts instead of the kernel.
    shim: bytes | None = None


# The named blobs QEMU 10.0's x86_load_linux (hw/i386/x86-common.c) adds: the kernel file as given, without the
# setup-header patches of the KERNEL_*/SETUP_* items (a signed image must hash as signed), and -shim's file.
# edk2 (OvmfPkg/QemuKernelLoaderFsDxe, edk2-stable202502 on) serves every etc/boot/NAME file as NAME in its
# kernel file system, and a named "kernel" replaces the one it would assemble from the setup and kernel items.
BOOT_KERNEL_FILE = "etc/boot/kernel"
BOOT_SHIM_FILE = "etc/boot/shim"


def shim_files(boot: DirectBoot) -> dict[str, bytes]:
    """The etc/boot/ files of a direct boot with -shim. QEMU 10 adds etc/boot/kernel to every -kernel boot; this
    VMM adds it only with -shim (which needs QEMU 10), so runs without one keep QEMU 9.2's items."""
    if boot.shim is None:
        return {}
    if not boot.shim:
        raise ConfigError("the shim file is empty")
    return {BOOT_KERNEL_FILE: boot.kernel, BOOT_SHIM_FILE: boot.shim}


@dataclass
class FwCfgPayload:
    """A TD's fw_cfg contents beyond what the machine itself sets: direct boot, extra files, -nographic."""

    direct_boot: DirectBoot | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    nographic: bool = True  # TDs are started headless; QEMU stores -nographic at FW_CFG_NOGRAPHIC


def _le(value: int, size: int) -> bytes:
    return value.to_bytes(size, "little")


class FwCfg:
    """The fw_cfg device: items by key, files by name, the port and DMA state."""

    def __init__(self, memory: GuestMemory | None = None, *, events: EventLog | None = None):
        self.memory = memory
        self.events = events or EventLog()
        self.items: dict[int, FwCfgItem] = {}
        self.files: dict[str, FwCfgItem] = {}
        self.file_keys: dict[str, int] = {}
        self.file_names: dict[int, str] = {}
        self._current: FwCfgItem | None = None
        self.selected = FW_CFG_INVALID
        self.offset = 0
        self.dma_address = 0
        self.dma_address_mask = (1 << 64) - 1  # the platform clears the TD's shared bit here
        self.add_bytes(FwCfgKey.SIGNATURE, b"QEMU")
        features = FwCfgFeature.TRADITIONAL | (FwCfgFeature.DMA if memory is not None else 0)
        self.add_bytes(FwCfgKey.ID, _le(int(features), 4))
        self._rebuild_dir()

    # --- building ---------------------------------------------------------------------------------------

    def add_bytes(self, key: int, data: bytes) -> None:
        self.items[int(key)] = FwCfgItem(bytes(data))

    def add_int(self, key: int, value: int, size: int) -> None:
        self.add_bytes(key, _le(value, size))

    def add_file(
        self,
        name: str,
        data: bytes,
        *,
        writable: bool = False,
        on_write: Callable[[bytes], None] | None = None,
        on_select: Callable[[], None] | None = None,
    ) -> None:
        """Add (or replace, as fw_cfg_modify_file) a named file; keys follow the sorted names."""
        encoded = name.encode()
        if not encoded or len(encoded) >= FILE_NAME_SIZE:
            raise ConfigError(f"fw_cfg file name {name!r} must be 1..{FILE_NAME_SIZE - 1} bytes")
        if name not in self.files and len(self.files) >= FILE_SLOTS:
            raise ConfigError(f"fw_cfg has no free file slot for {name!r} ({FILE_SLOTS} files at most)")
        self.files[name] = FwCfgItem(bytes(data), writable, on_write, on_select)
        self._rebuild_dir()

    def replace_file_data(self, name: str, data: bytes) -> None:
        """New contents for an existing file (fw_cfg_modify_file); the directory follows a size change."""
        item = self.files[name]
        resized = len(item.data) != len(data)
        item.data = bytes(data)
        if resized:
            self._rebuild_dir()

    def _rebuild_dir(self) -> None:
        names = sorted(self.files, key=lambda n: n.encode())  # QEMU compares with strcmp
        self.file_keys = {name: FwCfgKey.FILE_FIRST + i for i, name in enumerate(names)}
        self.file_names = {k: name for name, k in self.file_keys.items()}
        entries = b"".join(DIR_ENTRY.pack(len(self.files[n].data), self.file_keys[n], 0, n.encode()) for n in names)
        self.items[FwCfgKey.FILE_DIR] = FwCfgItem(struct.pack(">I", len(names)) + entries)

    def _item(self, key: int) -> FwCfgItem | None:
        if FwCfgKey.FILE_FIRST <= key < FwCfgKey.FILE_FIRST + FILE_SLOTS:
            name = self.file_names.get(key)
            return None if name is None else self.files[name]
        return self.items.get(key)

    # --- port interface ---------------------------------------------------------------------------------

    def select(self, key: int) -> None:
        key &= ~WRITE_CHANNEL & 0xFFFF
        self.selected = key if self._item(key) is not None else FW_CFG_INVALID
        self.offset = 0
        self.events.count(f"fw_cfg.select {key:#x}")
        item = self._item(key)
        if item is not None and item.on_select is not None:
            item.on_select()
        self._current = item

    def read_data(self) -> int:
        item = self._current
        if item is None or self.offset >= len(item.data):
            return 0
        value = item.data[self.offset]
        self.offset += 1
        return value

    def io_read(self, port: int, size: int) -> int:
        if FW_CFG_DMA_IO_BASE <= port < FW_CFG_DMA_IO_BASE + 8:
            check_size(size, (1, 2, 4), "fw_cfg DMA register size")
            at = port - FW_CFG_DMA_IO_BASE
            # A big-endian register (QEMU's fw_cfg_dma_mem_ops, DEVICE_BIG_ENDIAN): IN sees its bytes in order.
            return int.from_bytes(FW_CFG_DMA_SIGNATURE[at : at + size].ljust(size, b"\0"), "little")
        check_size(size, (1,), "fw_cfg data read size")  # fw_cfg_comb_valid: reads are byte-wide
        return self.read_data()

    def io_write(self, port: int, size: int, value: int) -> None:
        if FW_CFG_DMA_IO_BASE <= port < FW_CFG_DMA_IO_BASE + 8:
            check_size(size, (4,), "fw_cfg DMA address write size")
            # DEVICE_BIG_ENDIAN: the register gets the OUT value byte-swapped (edk2 writes SwapBytes32(half)).
            value = int.from_bytes((value & 0xFFFFFFFF).to_bytes(4, "little"), "big")
            if port == FW_CFG_DMA_IO_BASE:
                self.dma_address = (value & 0xFFFFFFFF) << 32
            elif port == FW_CFG_DMA_IO_BASE + 4:
                self.dma_address |= value & 0xFFFFFFFF
                address, self.dma_address = self.dma_address, 0
                self.dma(address)
            else:
                raise GuestInputError(f"write to {port:#x} inside the DMA register", field="fw_cfg DMA port")
            return
        check_size(size, (1, 2), "fw_cfg port write size")
        if size == 2:
            self.select(value & 0xFFFF)
        else:
            self.events.count("fw_cfg.data write ignored")

    def selection_by(self, port: int, size: int, value: int) -> int | None:
        """The key an OUT of `value` to `port` would select, without running it (None: it selects nothing):
        a 16-bit write of the selector, or the DMA trigger whose descriptor has SELECT."""
        if port == FW_CFG_IO_BASE and size == 2:
            return value & ~WRITE_CHANNEL & 0xFFFF
        if port != FW_CFG_DMA_IO_BASE + 4 or size != 4 or self.memory is None:
            return None
        low = int.from_bytes((value & 0xFFFFFFFF).to_bytes(4, "little"), "big")
        try:
            control = DMA_ACCESS.unpack(self.memory.read((self.dma_address | low) & self.dma_address_mask, 16))[0]
        except (LazyAcceptError, struct.error):
            return None
        return (control >> 16) & ~WRITE_CHANNEL if control & DmaControl.SELECT else None

    def set_direct_boot(self, items: dict[int, bytes]) -> dict[int, bytes]:
        """Replace the direct-boot items (QEMU's -kernel/-initrd/-append) with `items`; the old ones are
        returned. Only before the firmware looked at any of them (selection_by): a selected item stays."""
        if self.selected in DIRECT_BOOT_KEYS:
            raise ConfigError("fw_cfg's direct-boot items cannot change while the firmware reads one")
        old = {int(k): self.items.pop(k).data for k in DIRECT_BOOT_KEYS if k in self.items}
        for key, data in items.items():
            if key not in DIRECT_BOOT_KEYS:
                raise ConfigError(f"fw_cfg key {key:#x} is not a direct-boot item")
            self.add_bytes(key, data)
        return old

    # --- DMA ------------------------------------------------------------------------------------------

    def dma(self, address: int) -> None:
        """Run the FWCfgDmaAccess at `address`; completion leaves control 0, or ERROR."""
        if self.memory is None:
            raise GuestInputError("DMA requested but this fw_cfg has no guest memory", field="fw_cfg DMA")
        address &= self.dma_address_mask
        self.events.count("fw_cfg.dma")
        try:
            control, length, target = DMA_ACCESS.unpack(self.memory.read(address, DMA_ACCESS.size))
        except (LazyAcceptError, struct.error):
            self.events.note("fw_cfg.dma error", f"descriptor at {address:#x} unreadable")
            self._dma_complete(address, DmaControl.ERROR)
            return
        if control & DmaControl.SELECT:
            self.select(control >> 16)
        error = self._transfer(control, length, target & self.dma_address_mask)
        self._dma_complete(address, DmaControl.ERROR if error else 0)

    def _transfer(self, control: int, length: int, target: int) -> bool:
        """Copy (or skip, or write) `length` bytes; True on error. At most two steps: data, then zero fill."""
        assert self.memory is not None
        item = self._current
        try:
            while length:
                if item is None or self.offset >= len(item.data):
                    if control & DmaControl.READ:
                        self.memory.write(target, bytes(length))  # past the end reads as zeros
                    return bool(control & DmaControl.WRITE)  # nothing to write into
                n = min(length, len(item.data) - self.offset)
                if control & DmaControl.READ:
                    self.memory.write(target, item.data[self.offset : self.offset + n])
                elif control & DmaControl.WRITE:
                    if not item.writable or n != length:
                        return True
                    data = self.memory.read(target, n)
                    item.data = item.data[: self.offset] + data + item.data[self.offset + n :]
                    if item.on_write:
                        item.on_write(item.data)
                self.offset += n
                target += n
                length -= n
        except LazyAcceptError as exc:
            self.events.note("fw_cfg.dma error", f"guest memory at {target:#x}: {exc}")
            return True
        return False

    def _dma_complete(self, address: int, control: int) -> None:
        assert self.memory is not None
        try:
            self.memory.write(address, struct.pack(">I", control))
        except LazyAcceptError as exc:
            self.events.note("fw_cfg.dma error", f"completion at {address:#x}: {exc}")


# --- what QEMU puts in it for an x86 q35 TD --------------------------------------------------------------


ACPI_DATA_SIZE = 0x20000 + 0x8000  # PCMachineClass.acpi_data_size: room QEMU keeps below the top of low RAM
REAL_ADDR = 0x10000  # where x86_load_linux says the setup code goes (protocol >= 2.02, loaded high)
CMDLINE_ADDR = 0x20000
PROT_ADDR = 0x100000
LOADER_TYPE_QEMU = 0xB0
CAN_USE_HEAP = 0x80
XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1


def direct_boot_items(boot: DirectBoot, below_4g: int) -> dict[int, bytes]:
    """The fw_cfg items x86_load_linux (QEMU 9.2/10.x hw/i386/x86-common.c) sets for a bzImage: the setup part
    (setup_sects + 1 sectors, 4 when setup_sects is 0) with its header patched, the rest as the kernel, the
    initrd placed at the top of what the header and low RAM allow, the command line with its NUL."""
    kernel = boot.kernel
    header = read_setup_header(kernel)
    if header is None or header["version"] < 0x202:
        raise ConfigError("kernel has no Linux boot protocol 2.02+ setup header (QEMU's other paths not modelled)")
    setup_sects = header["setup_sects"] or 4
    setup_size = (setup_sects + 1) * 512
    if setup_size > len(kernel):
        raise ConfigError(f"invalid kernel header: setup_sects {setup_sects} beyond the {len(kernel)}-byte image")
    version = header["version"]
    if version >= 0x20C and header["xloadflags"] & XLF_CAN_BE_LOADED_ABOVE_4G:
        initrd_max = 0xFFFFFFFF
    elif version >= 0x203:
        initrd_max = header["initrd_addr_max"]
    else:
        initrd_max = 0x37FFFFFF
    initrd_max = min(initrd_max, below_4g - ACPI_DATA_SIZE - 1)

    setup = bytearray(kernel[:setup_size])

    def put(name: str, value: int, size: int) -> None:
        setup[field_offset(name) : field_offset(name) + size] = _le(value, size)

    cmdline = boot.cmdline.encode() + b"\0"
    put("cmd_line_ptr", CMDLINE_ADDR, 4)
    put("type_of_loader", LOADER_TYPE_QEMU, 1)
    put("loadflags", header["loadflags"] | CAN_USE_HEAP, 1)
    put("heap_end_ptr", CMDLINE_ADDR - REAL_ADDR - 0x200, 2)
    items = {
        FwCfgKey.CMDLINE_ADDR: _le(CMDLINE_ADDR, 4),
        FwCfgKey.CMDLINE_SIZE: _le(len(cmdline), 4),
        FwCfgKey.CMDLINE_DATA: cmdline,
    }
    if boot.initrd:
        if len(boot.initrd) >= initrd_max:
            raise ConfigError(f"initrd of {len(boot.initrd)} bytes does not fit below {initrd_max:#x}")
        initrd_addr = (initrd_max - len(boot.initrd)) & ~0xFFF
        put("ramdisk_image", initrd_addr, 4)
        put("ramdisk_size", len(boot.initrd), 4)
        items[FwCfgKey.INITRD_ADDR] = _le(initrd_addr, 4)
        items[FwCfgKey.INITRD_SIZE] = _le(len(boot.initrd), 4)
        items[FwCfgKey.INITRD_DATA] = boot.initrd
    items[FwCfgKey.KERNEL_ADDR] = _le(PROT_ADDR, 4)
    items[FwCfgKey.KERNEL_SIZE] = _le(len(kernel) - setup_size, 4)
    items[FwCfgKey.KERNEL_DATA] = kernel[setup_size:]
    items[FwCfgKey.SETUP_ADDR] = _le(REAL_ADDR, 4)
    items[FwCfgKey.SETUP_SIZE] = _le(setup_size, 4)
    items[FwCfgKey.SETUP_DATA] = bytes(setup)
    return {int(k): v for k, v in items.items()}


class AcpiFiles:
    """etc/acpi/tables, etc/acpi/rsdp and etc/table-loader (vmm/acpi.py), built again the first time the firmware
    selects any of them, as QEMU's acpi_build_update does: the FADT then carries the PMBASE and the MCFG the
    MMCONFIG window the firmware programmed. `machine` reads those from the platform (a bound method: snapshots
    pickle it)."""

    def __init__(self, fw: FwCfg, machine: Callable[[], AcpiMachine]):
        self.fw = fw
        self.machine = machine
        self.built = False
        for name, data in build_acpi(machine()).files().items():  # what QEMU's acpi_setup registers at machine done
            fw.add_file(name, data, on_select=self.update)

    def update(self) -> None:
        if self.built:
            return
        self.built = True
        for name, data in build_acpi(self.machine()).files().items():
            self.fw.replace_file_data(name, data)


def e820_file(ram: list[tuple[int, int]]) -> bytes:
    """etc/e820: one struct e820_entry per RAM range, as pc_memory_init's e820_add_entry calls leave it."""
    return b"".join(E820_ENTRY.pack(start, size, E820_RAM) for start, size in ram)


def q35_fw_cfg(
    *,
    ram_size: int,
    vcpus: int,
    e820_ram: list[tuple[int, int]],
    below_4g: int,
    payload: FwCfgPayload | None = None,
    memory: GuestMemory | None = None,
    events: EventLog | None = None,
) -> FwCfg:
    """fw_cfg as QEMU fills it for a q35 TD with no boot devices, no SMBIOS and no NUMA. The ACPI builder's files
    depend on the LPC bridge and the MCH (PMBASE, MMCONFIG): the platform adds them (AcpiFiles)."""
    payload = payload or FwCfgPayload()
    fw = FwCfg(memory, events=events)
    fw.add_bytes(FwCfgKey.UUID, bytes(16))  # fw_cfg_common_realize: qemu_uuid, all zero without -uuid
    fw.add_int(FwCfgKey.NOGRAPHIC, int(payload.nographic), 2)
    fw.add_int(FwCfgKey.BOOT_MENU, 0, 2)  # -boot menu=off
    fw.add_int(FwCfgKey.NB_CPUS, vcpus, 2)  # fw_cfg_arch_create: boot CPUs
    fw.add_int(FwCfgKey.MAX_CPUS, vcpus, 2)  # apic_id_limit; equal to the vCPU count for a flat topology
    fw.add_int(FwCfgKey.RAM_SIZE, ram_size, 8)
    fw.add_bytes(FwCfgKey.ACPI_TABLES, b"")  # legacy -acpitable blob: empty
    fw.add_int(FwCfgKey.IRQ0_OVERRIDE, 1, 4)
    fw.add_bytes(FwCfgKey.NUMA, bytes(8 * (1 + vcpus)))  # 0 nodes, then one node id per APIC id
    fw.add_file("etc/e820", e820_file(e820_ram))
    fw.add_file("etc/boot-fail-wait", _le(0xFFFFFFFF, 4))  # fw_cfg_reboot: -boot reboot-timeout, default -1
    fw.add_file("bootorder", b"")  # fw_cfg_machine_reset: no device has a bootindex
    fw.add_file("bios-geometry", b"")  # likewise, no disks with a geometry
    if payload.direct_boot is not None:
        for key, data in direct_boot_items(payload.direct_boot, below_4g).items():
            fw.add_bytes(key, data)
        for name, data in shim_files(payload.direct_boot).items():
            fw.add_file(name, data)
    for name, data in payload.files.items():
        fw.add_file(name, data)
    return fw
