"""The drivers a lazyaccept TDVF starts with, as one record the core and the report reach them through."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lazyaccept.firmware.drivers.accept import AcceptProtocols
from lazyaccept.firmware.drivers.acpi import AcpiTables, install_acpi_tables
from lazyaccept.firmware.drivers.base import ProtocolBase
from lazyaccept.firmware.drivers.console import Console
from lazyaccept.firmware.drivers.measurement import CcMeasurement, Tcg2
from lazyaccept.firmware.drivers.memory_attribute import MemoryAttribute
from lazyaccept.firmware.drivers.rng import Rng
from lazyaccept.spec.efi import EfiStatus as S

if TYPE_CHECKING:
    from lazyaccept.firmware.dxe.core import UefiCore


@dataclass
class PlatformProtocols:
    console: Console
    rng: Rng
    accept: AcceptProtocols
    cc: CcMeasurement | None = None
    memory_attribute: MemoryAttribute | None = None
    extra: list[ProtocolBase] = field(default_factory=list)
    tcg2: Tcg2 | None = None
    acpi: AcpiTables | None = None  # the ACPI tables as OVMF installs them (drivers/acpi.py)
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
        # OVMF's AcpiTableDxe, AcpiPlatformDxe (at BDS, once the root bridges are connected) and TdxDxe: the
        # tables are in place before any image runs
        acpi=install_acpi_tables(
            machine, machine.tdx.num_vcpus, wakeup_version=machine.dxe.policy.edk2_profile.madt_wakeup_version
        ) if cfg.acpi else None,
    )
