"""Runtime services: time from the virtual clock, variables from the run's configuration, ResetSystem ends
the run."""

from __future__ import annotations

from lazyaccept.firmware.dxe.service_base import ServiceBase, ServiceStop
from lazyaccept.records import StopKind, StopReason
from lazyaccept.spec import guids
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.spec.efi_tables import EFI_TIME


class RuntimeServices(ServiceBase):
    def rt_GetTime(self, time_ptr: int, caps_ptr: int) -> int:
        if not time_ptr:
            return S.INVALID_PARAMETER
        seconds = self.tdx.clock_ns(0) // 1_000_000_000
        self.write(
            time_ptr,
            EFI_TIME.pack(
                Year=2026,
                Month=1,
                Day=1,
                Hour=seconds // 3600 % 24,
                Minute=seconds // 60 % 60,
                Second=seconds % 60,
                Nanosecond=self.tdx.clock_ns(0) % 1_000_000_000,
                TimeZone=0x7FF,
            ),
        )
        return S.SUCCESS

    def rt_GetVariable(self, name_ptr: int, guid_ptr: int, attr_ptr: int, size_ptr: int, data_ptr: int) -> int:
        if not name_ptr or not guid_ptr or not size_ptr:
            return S.INVALID_PARAMETER
        name, guid = self.read_str16(name_ptr), self.read_guid(guid_ptr)
        value = self.config.variables.get((name, guid))
        if value is None:
            status = S.NOT_FOUND
        else:
            attributes, data = value
            have = self.r64(size_ptr)
            self.w64(size_ptr, len(data))
            if have < len(data) or not data_ptr:
                status = S.BUFFER_TOO_SMALL
            else:
                self.write(data_ptr, data)
                if attr_ptr:
                    self.w32(attr_ptr, attributes)
                status = S.SUCCESS
        self.log("GetVariable", f"{guids.name_of(guid)}:{name}", status)
        return status

    def rt_SetVariable(self, name_ptr: int, guid_ptr: int, attributes: int, size: int, data_ptr: int) -> int:
        if not name_ptr or not guid_ptr:
            return S.INVALID_PARAMETER
        name, guid = self.read_str16(name_ptr), self.read_guid(guid_ptr)
        if size == 0:
            self.config.variables.pop((name, guid), None)
        else:
            self.config.variables[(name, guid)] = (attributes & 0xFFFFFFFF, self.read(data_ptr, size))
        self.log("SetVariable", f"{guids.name_of(guid)}:{name}, {size} bytes", S.SUCCESS)
        return S.SUCCESS

    def rt_GetNextVariableName(self, size_ptr: int, name_ptr: int, guid_ptr: int) -> int:
        return S.NOT_FOUND

    def rt_ResetSystem(self, reset_type: int, status: int, size: int, data: int) -> int:
        raise ServiceStop(StopReason(StopKind.EXIT, f"ResetSystem({reset_type})"))
