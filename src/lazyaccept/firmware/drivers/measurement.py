"""Measurement: EFI_CC_MEASUREMENT_PROTOCOL as TDVF offers it (edk2 Protocol/CcMeasurement.h) and EFI_TCG2_PROTOCOL for
a vTPM; extends are recorded and hashing is charged to virtual time."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lazyaccept.firmware.drivers.base import ProtocolBase
from lazyaccept.spec import guids
from lazyaccept.spec.efi import EfiStatus as S

if TYPE_CHECKING:
    from lazyaccept.firmware.dxe.core import UefiCore


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
