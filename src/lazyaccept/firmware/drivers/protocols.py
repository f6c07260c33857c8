"""The protocols a binary finds on a lazyaccept TDVF: console, RNG, CC measurement, memory attributes, the
memory-accept protocols, and LoadFile2 for a Linux initrd. Each is a guest-visible structure of function
pointers into service thunks, implemented here in Python.

Layouts per the UEFI specification and edk2 (Protocol/SimpleTextOut.h, SimpleTextIn.h, Rng.h, CcMeasurement.h,
MemoryAttribute.h, LoadFile2.h; OvmfPkg Protocol/SevMemoryAcceptance.h; MdePkg Protocol/MemoryAccept.h).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from lazyaccept.records import Actor
from lazyaccept.spec import guids
from lazyaccept.spec.efi import EfiMemoryType as M
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.spec.efi_tables import SIMPLE_TEXT_OUTPUT_MODE

if TYPE_CHECKING:
    from lazyaccept.firmware.dxe.core import UefiCore

FW = Actor.DXE
END_NODE = bytes([0x7F, 0xFF, 4, 0])
COPY_CHUNK = 64 << 20  # LoadFile2 writes the initrd in pieces this size (zeros into untouched memory stay free)
COLUMNS, ROWS = 80, 25
# EFI_SIMPLE_TEXT_OUTPUT_MODE field offsets (CursorColumn, CursorRow) that loaders read back (GRUB's getxy)
MODE_CURSOR_COLUMN, MODE_CURSOR_ROW = 12, 16
# EFI scan codes (UEFI 2.10 table 12.2) for keys a script or a terminal sends
SCAN = {"up": 1, "down": 2, "right": 3, "left": 4, "home": 5, "end": 6, "insert": 7, "delete": 8, "esc": 0x17}


class Terminal(Protocol):
    """A person at a host terminal: keys in, console text out (see cpu/terminal.py)."""

    def poll(self) -> list[tuple[int, int]]: ...
    def wait(self, seconds: float) -> None: ...
    def output(self, text: str) -> None: ...
    def cursor(self, column: int, row: int) -> None: ...
    def clear(self) -> None: ...


def vendor_media_path(vendor: bytes) -> bytes:
    """A VenMedia(GUID) node followed by End: MEDIA_DEVICE_PATH (4), MEDIA_VENDOR_DP (3)."""
    return bytes([4, 3]) + (20).to_bytes(2, "little") + vendor + END_NODE


def pointers(*values: int) -> bytes:
    return b"".join(v.to_bytes(8, "little") for v in values)


class ProtocolBase:
    def __init__(self, machine: UefiCore):
        self.m = machine

    def struct(self, name: str, methods: list[tuple[str, Callable[..., int | None], int]], tail: bytes = b"") -> int:
        """Allocate and write a protocol interface: function pointers to new thunks, then tail data."""
        thunks = [self.m.thunk(f"{name}.{n}", fn, nargs) for n, fn, nargs in methods]
        addr = self.m.fw_alloc(8 * len(thunks) + len(tail))
        self.m.mem.write(addr, pointers(*thunks) + tail, actor=FW)
        return addr


class Console(ProtocolBase):
    """ConOut captured into the run report; ConIn fed from a scripted key queue."""

    def __init__(self, machine: UefiCore):
        super().__init__(machine)
        self.keys: list[tuple[int, int]] = []  # (scan code, unicode char)
        self.text: list[str] = []
        self.terminal: Terminal | None = None
        self.script: list[tuple[str, list[tuple[int, int]]]] = []  # (text to wait for, keys to type then)
        self._since_script = ""
        self.column = self.row = 0
        self.mode = self.m.fw_alloc(SIMPLE_TEXT_OUTPUT_MODE.size)
        self.m.mem.write(
            self.mode, SIMPLE_TEXT_OUTPUT_MODE.pack(MaxMode=1, Mode=0, Attribute=7, CursorVisible=1), actor=FW
        )
        ok = self._ok
        self.conout = self.struct(
            "ConOut",
            [
                ("Reset", ok, 2),
                ("OutputString", self.output_string, 2),
                ("TestString", ok, 2),
                ("QueryMode", self.query_mode, 4),
                ("SetMode", self.set_mode, 2),
                ("SetAttribute", ok, 2),
                ("ClearScreen", self.clear_screen, 1),
                ("SetCursorPosition", self.set_cursor_position, 3),
                ("EnableCursor", ok, 2),
            ],
            pointers(self.mode),
        )
        self.wait_for_key = self.m.fw_alloc(16)
        self.m.events[self.wait_for_key] = _key_event()
        self.conin = self.struct(
            "ConIn", [("Reset", ok, 2), ("ReadKeyStroke", self.read_key, 2)], pointers(self.wait_for_key)
        )
        self.handle = self.m.new_handle()
        self.m.install(self.handle, guids.SIMPLE_TEXT_OUT, self.conout, self)
        self.m.install(self.handle, guids.SIMPLE_TEXT_IN, self.conin, self)

    def _ok(self, *_args: int) -> int:
        return S.SUCCESS

    def output_string(self, this: int, string: int) -> int:
        text = self.m.read_str16(string)
        self.text.append(text)
        self._advance_cursor(text)
        if self.terminal is not None:
            self.terminal.output(text)
        if self.script:
            self._since_script = (self._since_script + text)[-8192:]
            expected, keys = self.script[0]
            if expected in self._since_script:
                self.script.pop(0)
                self.keys.extend(keys)
                self._since_script = ""
        return S.SUCCESS

    def _advance_cursor(self, text: str) -> None:
        """Where the text leaves the cursor on an 80x25 screen that scrolls (ConSplitter/terminal semantics)."""
        col, row = self.column, self.row
        for ch in text:
            if ch == "\r":
                col = 0
            elif ch == "\n":
                row += 1
            elif ch == "\b":
                col = max(0, col - 1)
            else:
                col += 1
                if col >= COLUMNS:
                    col, row = 0, row + 1
            if row >= ROWS:
                row = ROWS - 1
        self._set_cursor(col, row)

    def _set_cursor(self, column: int, row: int) -> None:
        if (column, row) != (self.column, self.row):
            self.column, self.row = column, row
            self.m.mem.write(
                self.mode + MODE_CURSOR_COLUMN,
                column.to_bytes(4, "little") + row.to_bytes(4, "little"),
                actor=FW,
            )

    def set_cursor_position(self, this: int, column: int, row: int) -> int:
        if column >= COLUMNS or row >= ROWS:
            return S.UNSUPPORTED
        self._set_cursor(column, row)
        if self.terminal is not None:
            self.terminal.cursor(column, row)
        return S.SUCCESS

    def clear_screen(self, this: int) -> int:
        self._set_cursor(0, 0)
        if self.terminal is not None:
            self.terminal.clear()
        return S.SUCCESS

    def query_mode(self, this: int, mode: int, cols_ptr: int, rows_ptr: int) -> int:
        if mode != 0:
            return S.UNSUPPORTED
        self.m.w64(cols_ptr, 80)
        self.m.w64(rows_ptr, 25)
        return S.SUCCESS

    def set_mode(self, this: int, mode: int) -> int:
        return S.SUCCESS if mode == 0 else S.UNSUPPORTED

    def read_key(self, this: int, key_ptr: int) -> int:
        if not self.keys and self.terminal is not None:
            self.keys.extend(self.terminal.poll())
        if not self.keys:
            self.m.idle()  # a poll that found nothing: virtual time passes (and a terminal gets a chance)
            if self.terminal is not None:
                self.keys.extend(self.terminal.poll())
            if not self.keys:
                return S.NOT_READY
        scan, char = self.keys.pop(0)
        self.m.write(key_ptr, scan.to_bytes(2, "little") + char.to_bytes(2, "little"))
        return S.SUCCESS

    def key_available(self) -> bool:
        return bool(self.keys)

    def type_text(self, text: str) -> None:
        self.keys.extend(keys_of(text))

    def when(self, expected: str, text: str) -> None:
        """Type text once the console has shown `expected` (after the previous scripted step)."""
        self.script.append((expected, keys_of(text)))

    @property
    def output(self) -> str:
        return "".join(self.text).replace("\r\n", "\n")


def keys_of(text: str) -> list[tuple[int, int]]:
    """(scan code, char) pairs of a text; '\n' is Enter, and {up}, {down}, {esc}... name special keys."""
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(text):
        if text[i] == "{" and "}" in text[i:]:
            name = text[i + 1 : text.index("}", i)]
            if name in SCAN:
                out.append((SCAN[name], 0))
                i += len(name) + 2
                continue
        out.append((0, ord("\r" if text[i] == "\n" else text[i])))
        i += 1
    return out


def _key_event():  # an Event record for ConIn.WaitForKey
    from lazyaccept.firmware.dxe.event import Event

    return Event(type=0x200, tpl=8, notify=0, context=0)


class Rng(ProtocolBase):
    """EFI_RNG_PROTOCOL, seeded so that a run (with nokaslr) is reproducible; the seed goes in the report."""

    def __init__(self, machine: UefiCore, seed: int):
        super().__init__(machine)
        self.seed = seed
        self.random = random.Random(seed)
        self.bytes_served = 0
        self.interface = self.struct("Rng", [("GetInfo", self.get_info, 3), ("GetRNG", self.get_rng, 4)])
        self.m.install(self.m.new_handle(), guids.RNG, self.interface, self)

    def get_info(self, this: int, size_ptr: int, list_ptr: int) -> int:
        have = self.m.r64(size_ptr)
        self.m.w64(size_ptr, 16)
        if have < 16 or not list_ptr:
            return S.BUFFER_TOO_SMALL
        self.m.write(list_ptr, guids.RNG_ALG_RAW.bytes_le)
        return S.SUCCESS

    def get_rng(self, this: int, algorithm_ptr: int, length: int, buffer: int) -> int:
        if not buffer or length == 0:
            return S.INVALID_PARAMETER
        if algorithm_ptr and self.m.read_guid(algorithm_ptr) != guids.RNG_ALG_RAW:
            return S.UNSUPPORTED
        self.m.write(buffer, self.random.randbytes(length))
        self.bytes_served += length
        return S.SUCCESS


@dataclass
class RtmrExtend:
    mr_index: int
    digest: str
    size: int
    description: str


class MeasurementProtocol(ProtocolBase):
    """What the CC and TCG2 protocols share: an empty event log, and HashLogExtendEvent that hashes the data,
    charges the hashing to virtual time and records the extend."""

    def __init__(self, machine: UefiCore):
        super().__init__(machine)
        self.extends: list[RtmrExtend] = []

    def get_event_log(self, this: int, fmt: int, location_ptr: int, last_ptr: int, truncated_ptr: int) -> int:
        for p in (location_ptr, last_ptr):
            if p:
                self.m.w64(p, 0)
        if truncated_ptr:
            self.m.write(truncated_ptr, b"\0")
        return S.SUCCESS

    def _extend(self, index: int, data: int, size: int, digest, label: str, index_name: str) -> int:
        for view in self.m.mem.views(data, size, actor=self.m.actor):  # hashed in place: no copy of the data
            digest.update(view)
        self.m.tdx.charge(0, self.m.tdx.profile.bytes_ns(size, self.m.tdx.profile.hash_bytes_per_s))
        self.extends.append(RtmrExtend(index, digest.hexdigest(), size, f"{size:#x} bytes at {data:#x}"))
        self.m.log(label, f"{index_name} {index}, {size:#x} bytes", S.SUCCESS)
        return S.SUCCESS


class CcMeasurement(MeasurementProtocol):
    """EFI_CC_MEASUREMENT_PROTOCOL as TDVF offers it: RTMR extends recorded, hashing charged to virtual time."""

    def __init__(self, machine: UefiCore):
        super().__init__(machine)
        self.interface = self.struct(
            "CcMeasurement",
            [
                ("GetCapability", self.get_capability, 2),
                ("GetEventLog", self.get_event_log, 5),
                ("HashLogExtendEvent", self.hash_log_extend_event, 5),
                ("MapPcrToMrIndex", self.map_pcr, 3),
            ],
        )
        self.m.install(self.m.new_handle(), guids.CC_MEASUREMENT, self.interface, self)

    def get_capability(self, this: int, caps_ptr: int) -> int:
        # EFI_CC_BOOT_SERVICE_CAPABILITY: Size, StructureVersion(2), ProtocolVersion(2), HashAlgorithmBitmap
        # (SHA384 = 4), SupportedEventLogs (CC_EVENT_LOG_FORMAT_TCG_2 = 2), CcType (TDX = 2, version 1.0).
        if not caps_ptr:
            return S.INVALID_PARAMETER
        self.m.write(
            caps_ptr, bytes([24, 1, 0, 1, 0]) + (4).to_bytes(4, "little") + (2).to_bytes(4, "little") + bytes([2, 1, 0])
        )
        return S.SUCCESS

    def map_pcr(self, this: int, pcr: int, mr_ptr: int) -> int:
        # TDVF's mapping: PCR0 -> MRTD (0), PCR1,7 -> RTMR0 (1), PCR2-6 -> RTMR1 (2), PCR8-15 -> RTMR2 (3).
        pcr &= 0xFFFFFFFF
        if pcr > 16 or not mr_ptr:
            return S.INVALID_PARAMETER
        mr = 0 if pcr == 0 else 1 if pcr in (1, 7) else 2 if pcr <= 6 else 3 if pcr <= 15 else 4
        self.m.w32(mr_ptr, mr)
        return S.SUCCESS

    def hash_log_extend_event(self, this: int, flags: int, data: int, size: int, event: int) -> int:
        if not data or not event:
            return S.INVALID_PARAMETER
        mr_index = int.from_bytes(self.m.read(event + 4 + 2 + 4, 4), "little")  # Header.MrIndex
        return self._extend(mr_index, data, size, hashlib.sha384(), "CcMeasurement.HashLogExtendEvent", "RTMR index")


class Tcg2(MeasurementProtocol):
    """EFI_TCG2_PROTOCOL of a vTPM (TCG EFI Protocol Specification, edk2 Tcg2Dxe): SHA-256 bank, extends recorded.
    GRUB 2.12 registers its TPM verifier only when a TCG/TCG2 handle exists (commands/efi/tpm.c
    grub_tpm_present), and that verifier reads each file whole into its own memory before it is used."""

    def __init__(self, machine: UefiCore):
        super().__init__(machine)
        self.interface = self.struct(
            "Tcg2",
            [
                ("GetCapability", self.get_capability, 2),
                ("GetEventLog", self.get_event_log, 5),
                ("HashLogExtendEvent", self.hash_log_extend_event, 5),
                ("SubmitCommand", self.submit_command, 5),
                ("GetActivePcrBanks", self.get_active_pcr_banks, 2),
                ("SetActivePcrBanks", self.set_active_pcr_banks, 2),
                ("GetResultOfSetActivePcrBanks", self.get_result, 3),
            ],
        )
        self.m.install(self.m.new_handle(), guids.TCG2, self.interface, self)

    def get_capability(self, this: int, caps_ptr: int) -> int:
        # EFI_TCG2_BOOT_SERVICE_CAPABILITY (packed): Size, StructureVersion 1.1, ProtocolVersion 1.1,
        # HashAlgorithmBitmap (SHA256 = 2), SupportedEventLogs (TCG_2 = 2), TPMPresentFlag, MaxCommandSize,
        # MaxResponseSize, ManufacturerID, NumberOfPCRBanks, ActivePcrBanks.
        if not caps_ptr:
            return S.INVALID_PARAMETER
        caps = (
            bytes([30, 1, 1, 1, 1])
            + (2).to_bytes(4, "little")
            + (2).to_bytes(4, "little")
            + bytes([1])
            + (4096).to_bytes(2, "little")
            + (4096).to_bytes(2, "little")
            + b"LZYA"
            + (1).to_bytes(4, "little")
            + (2).to_bytes(4, "little")
        )
        given = self.m.read(caps_ptr, 1)[0]
        self.m.write(caps_ptr, caps[: max(1, min(given, len(caps)))])
        return S.SUCCESS

    def hash_log_extend_event(self, this: int, flags: int, data: int, size: int, event: int) -> int:
        if not data or not event:
            return S.INVALID_PARAMETER
        pcr = int.from_bytes(self.m.read(event + 4 + 4 + 2, 4), "little")  # Header.PCRIndex
        return self._extend(pcr, data, size, hashlib.sha256(), "Tcg2.HashLogExtendEvent", "PCR")

    def submit_command(self, this: int, in_size: int, in_ptr: int, out_size: int, out_ptr: int) -> int:
        return S.UNSUPPORTED

    def get_active_pcr_banks(self, this: int, banks_ptr: int) -> int:
        if not banks_ptr:
            return S.INVALID_PARAMETER
        self.m.w32(banks_ptr, 2)
        return S.SUCCESS

    def set_active_pcr_banks(self, this: int, banks: int) -> int:
        return S.UNSUPPORTED

    def get_result(self, this: int, present_ptr: int, response_ptr: int) -> int:
        return S.UNSUPPORTED


class MemoryAttribute(ProtocolBase):
    """EFI_MEMORY_ATTRIBUTE_PROTOCOL: attribute changes are recorded (the stub makes its text RO+X)."""

    def __init__(self, machine: UefiCore):
        super().__init__(machine)
        self.changes: list[tuple[str, int, int, int]] = []
        self.interface = self.struct(
            "MemoryAttribute",
            [
                ("GetMemoryAttributes", self.get, 4),
                ("SetMemoryAttributes", self.set, 4),
                ("ClearMemoryAttributes", self.clear, 4),
            ],
        )
        self.m.install(self.m.new_handle(), guids.MEMORY_ATTRIBUTE, self.interface, self)

    def _check(self, base: int, length: int) -> bool:
        return bool(length) and not base & 0xFFF and not length & 0xFFF

    def get(self, this: int, base: int, length: int, attr_ptr: int) -> int:
        if not self._check(base, length) or not attr_ptr:
            return S.INVALID_PARAMETER
        self.m.w64(attr_ptr, 0)
        return S.SUCCESS

    def set(self, this: int, base: int, length: int, attributes: int) -> int:
        if not self._check(base, length):
            return S.INVALID_PARAMETER
        self.changes.append(("set", base, length, attributes))
        return S.SUCCESS

    def clear(self, this: int, base: int, length: int, attributes: int) -> int:
        if not self._check(base, length):
            return S.INVALID_PARAMETER
        self.changes.append(("clear", base, length, attributes))
        return S.SUCCESS


class LoadFile2(ProtocolBase):
    """EFI_LOAD_FILE2_PROTOCOL on the LINUX_EFI_INITRD_MEDIA device path, as OVMF's QemuKernelLoaderFsDxe
    installs it: a NULL or small buffer gets EFI_BUFFER_TOO_SMALL and the size; otherwise the initrd is copied."""

    def __init__(
        self,
        machine: UefiCore,
        size: int,
        read: Callable[[int, int], bytes | bytearray | memoryview],
        on_probe: Callable[[int], None] | None = None,
        *,
        source_gpa: int | None = None,
        source_actor: str = FW,
    ):
        """`read(offset, length)` gives the initrd's bytes (any buffer); with `source_gpa` the initrd is the
        firmware's copy at that address in guest memory, read as `source_actor`, and is copied guest to guest."""
        super().__init__(machine)
        self.size = size
        self.read_source = read
        self.on_probe = on_probe
        self.source_gpa = source_gpa
        self.source_actor = source_actor
        self.copies = 0
        self.interface = self.struct("LoadFile2", [("LoadFile", self.load_file, 5)])
        path = vendor_media_path(guids.LINUX_INITRD_MEDIA.bytes_le)
        self.device_path = self.m.fw_alloc(len(path))
        self.m.mem.write(self.device_path, path, actor=FW)
        self.handle = self.m.new_handle()
        self.m.install(self.handle, guids.DEVICE_PATH, self.device_path)
        self.m.install(self.handle, guids.LOAD_FILE2, self.interface, self)

    def load_file(self, this: int, path: int, boot_policy: int, size_ptr: int, buffer: int) -> int:
        if not size_ptr:
            return S.INVALID_PARAMETER
        if boot_policy & 0xFF:
            return S.UNSUPPORTED
        have = self.m.r64(size_ptr)
        if not buffer or have < self.size:
            self.m.w64(size_ptr, self.size)
            if self.on_probe is not None:
                self.on_probe(self.size)
            self.m.log("LoadFile2.LoadFile", f"initrd size probe -> {self.size:#x}", S.BUFFER_TOO_SMALL)
            return S.BUFFER_TOO_SMALL
        if self.source_gpa is not None:
            self.m.mem.copy(
                buffer, self.source_gpa, self.size, actor=self.m.actor, src_actor=self.source_actor, chunk=COPY_CHUNK
            )
        else:
            for off in range(0, self.size, COPY_CHUNK):
                n = min(COPY_CHUNK, self.size - off)
                self.m.mem.write(buffer + off, self.read_source(off, n), actor=self.m.actor)
        self.m.tdx.charge(0, self.m.tdx.profile.bytes_ns(self.size, self.m.tdx.profile.copy_bytes_per_s))
        self.m.w64(size_ptr, self.size)
        self.copies += 1
        self.m.log("LoadFile2.LoadFile", f"initrd {self.size:#x} bytes -> {buffer:#x}", S.SUCCESS)
        return S.SUCCESS


class AcceptProtocols(ProtocolBase):
    """EDKII_MEMORY_ACCEPT_PROTOCOL (TdxDxe installs it: TDCALLs only, no GCD update) and, when the policy
    installs it, OVMF_SEV_MEMORY_ACCEPTANCE_PROTOCOL (the OS's opt-in to unaccepted memory)."""

    def __init__(self, machine: UefiCore):
        super().__init__(machine)
        core = self.m.dxe
        self.allow_calls = 0
        if core.protocol is not None:
            iface = self.struct("MemoryAccept", [("AcceptMemory", self.accept_memory, 3)])
            self.m.install(self.m.new_handle(), guids.EDKII_MEMORY_ACCEPT, iface, self)
        if core.sev_protocol is not None:
            iface = self.struct("SevMemoryAcceptance", [("AllowUnacceptedMemory", self.allow, 1)])
            self.m.install(self.m.new_handle(), guids.OVMF_SEV_MEMORY_ACCEPTANCE, iface, self)

    def accept_memory(self, this: int, start: int, size: int) -> int:
        protocol = self.m.dxe.protocol
        if protocol is None:  # installed only with the protocol; a stale pointer finds nothing to call
            return S.UNSUPPORTED
        status = protocol.accept_memory(start, size, actor=self.m.actor)
        self.m.log("MemoryAccept.AcceptMemory", f"{start:#x}, {size:#x}", status)
        return status

    def allow(self, this: int) -> int:
        self.allow_calls += 1
        sev = self.m.dxe.sev_protocol
        if sev is None:
            return S.UNSUPPORTED
        status = sev.allow_unaccepted_memory()
        self.m.log("SevMemoryAcceptance.AllowUnacceptedMemory", "", status)
        return status


@dataclass
class PlatformProtocols:
    console: Console
    rng: Rng
    accept: AcceptProtocols
    cc: CcMeasurement | None = None
    memory_attribute: MemoryAttribute | None = None
    extra: list[ProtocolBase] = field(default_factory=list)
    tcg2: Tcg2 | None = None
    # Resolvers for LoadImage from a device path (a block device's file system...): each returns None when the
    # path is not theirs, an EFI status, or (data, name, device handle, FilePath address).
    path_loaders: list[Callable[[int], object]] = field(default_factory=list)

    def is_key_event(self, event: int) -> bool:
        return event == self.console.wait_for_key

    def load_image_from_path(self, path: int) -> int | tuple[bytes, str, int, int]:
        for loader in self.path_loaders:
            found = loader(path)
            if found is not None:
                return found  # type: ignore[return-value]
        return S.NOT_FOUND


def install_platform_protocols(machine: UefiCore) -> PlatformProtocols:
    cfg = machine.config
    return PlatformProtocols(
        console=Console(machine),
        rng=Rng(machine, cfg.rng_seed),
        accept=AcceptProtocols(machine),
        cc=CcMeasurement(machine) if cfg.cc_measurement else None,
        memory_attribute=MemoryAttribute(machine) if cfg.memory_attribute_protocol else None,
        tcg2=Tcg2(machine) if cfg.tcg2 else None,
    )


__all__ = ["M", "PlatformProtocols", "install_platform_protocols", "LoadFile2", "vendor_media_path"]
