"""Runtime services: time from the virtual clock, variables from the run's configuration, ResetSystem ends
the run."""

from __future__ import annotations

import uuid

from lazyaccept.firmware.dxe.service_base import ServiceBase, ServiceStop
from lazyaccept.records import StopKind, StopReason
from lazyaccept.spec import guids
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.spec.efi_tables import EFI_TIME

VAR_NON_VOLATILE, VAR_BOOTSERVICE_ACCESS, VAR_RUNTIME_ACCESS = 0x1, 0x2, 0x4
VAR_HARDWARE_ERROR_RECORD, VAR_AUTHENTICATED_WRITE_ACCESS = 0x8, 0x10
VAR_TIME_BASED_AUTHENTICATED_WRITE_ACCESS, VAR_APPEND_WRITE, VAR_ENHANCED_AUTHENTICATED_ACCESS = 0x20, 0x40, 0x80
VAR_ATTRIBUTES_KNOWN = 0xFF
NV_BS_RT = VAR_NON_VOLATILE | VAR_BOOTSERVICE_ACCESS | VAR_RUNTIME_ACCESS
BS_RT = VAR_BOOTSERVICE_ACCESS | VAR_RUNTIME_ACCESS
MAX_VARIABLE_SIZE = 0x8400  # OVMF's PcdMaxVariableSize (OvmfPkg/OvmfPkgX64.dsc)
# QueryVariableInfo's answers: the 4 MiB flash's live variable store (OvmfPkgDefines.fdf.inc VARS_LIVE_SIZE) for
# non-volatile variables, MdeModulePkg's PcdVariableStoreSize for volatile ones, and the size a variable takes
# beyond its name and data (AUTHENTICATED_VARIABLE_HEADER, which edk2 counts for every variable).
NV_STORE_BYTES, VOLATILE_STORE_BYTES, VARIABLE_HEADER_BYTES = 0x40000, 0x10000, 60
OS_INDICATIONS_BOOT_TO_FW_UI = 0x1


def _u16(text: str) -> bytes:
    return (text + "\0").encode("utf-16-le")


# What a boot manager reads before any option runs: Secure Boot off with no keys enrolled (setup mode), as an
# OVMF image without enrolled keys has them; OsIndicationsSupported as BdsDxe sets it; the language variables.
READ_ONLY_VARIABLES = {
    (n, guids.GLOBAL_VARIABLE)
    for n in ("SecureBoot", "SetupMode", "AuditMode", "DeployedMode", "OsIndicationsSupported", "BootOptionSupport",
              "PlatformLangCodes", "LangCodes", "SignatureSupport", "VendorKeys", "BootCurrent")
}


def default_variables() -> dict[tuple[str, uuid.UUID], tuple[int, bytes]]:
    g = guids.GLOBAL_VARIABLE
    return {
        ("SecureBoot", g): (BS_RT, b"\0"),
        ("SetupMode", g): (BS_RT, b"\1"),
        ("AuditMode", g): (BS_RT, b"\0"),
        ("DeployedMode", g): (BS_RT, b"\0"),
        ("VendorKeys", g): (BS_RT, b"\0"),
        ("OsIndicationsSupported", g): (BS_RT, OS_INDICATIONS_BOOT_TO_FW_UI.to_bytes(8, "little")),
        ("PlatformLangCodes", g): (BS_RT, b"en-US;fr-FR\0"),
        ("PlatformLang", g): (NV_BS_RT, b"en-US\0"),
        ("LangCodes", g): (BS_RT, b"engfra\0"),
        ("Lang", g): (NV_BS_RT, b"eng\0"),
        ("Timeout", g): (NV_BS_RT, (0).to_bytes(2, "little")),
    }


def load_option(description: str, device_path: bytes, active: bool = True) -> bytes:
    """An EFI_LOAD_OPTION (UEFI 2.10 3.1.3): Attributes, FilePathListLength, Description, FilePathList."""
    return (int(active).to_bytes(4, "little") + len(device_path).to_bytes(2, "little") + _u16(description)
            + device_path)


def set_boot_option(variables: dict, number: int, description: str, device_path: bytes) -> None:
    """Boot#### and BootOrder for the option BDS made for a device, and BootCurrent while it runs."""
    g = guids.GLOBAL_VARIABLE
    variables[(f"Boot{number:04X}", g)] = (NV_BS_RT, load_option(description, device_path))
    variables[("BootOrder", g)] = (NV_BS_RT, number.to_bytes(2, "little"))
    variables[("BootCurrent", g)] = (BS_RT, number.to_bytes(2, "little"))


class RuntimeServices(ServiceBase):
    variables_set: list[tuple[str, uuid.UUID]]  # (name, vendor) of each successful SetVariable, in order

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

    # ------------------------------------------------------------------------------------------- variables
    # A volatile store (the run's MachineConfig.variables, nothing survives it) with the checks of edk2's
    # variable driver (edk2-stable202605 MdeModulePkg/Universal/Variable/RuntimeDxe/Variable.c
    # VariableServiceGetVariable, VariableServiceGetNextVariableName, VariableServiceSetVariable) and the
    # read-only globals of UEFI 2.10 3.3 (VarCheck's policy in OVMF). Authenticated writes are not modeled.
    def _visible(self, attributes: int) -> bool:
        """After ExitBootServices only variables with RUNTIME_ACCESS exist for callers."""
        return not self.dxe.exited or bool(attributes & VAR_RUNTIME_ACCESS)

    def rt_GetVariable(self, name_ptr: int, guid_ptr: int, attr_ptr: int, size_ptr: int, data_ptr: int) -> int:
        if not name_ptr or not guid_ptr or not size_ptr:
            return S.INVALID_PARAMETER
        name, guid = self.read_str16(name_ptr), self.read_guid(guid_ptr)
        value = self.config.variables.get((name, guid)) if name else None
        if not name:
            status = S.NOT_FOUND
        elif value is None or not self._visible(value[0]):
            status = S.NOT_FOUND
        else:
            attributes, data = value
            have = self.r64(size_ptr)
            if have >= len(data) and not data_ptr:
                status = S.INVALID_PARAMETER
            else:
                self.w64(size_ptr, len(data))
                status = S.BUFFER_TOO_SMALL if have < len(data) else S.SUCCESS
                if status == S.SUCCESS:
                    self.write(data_ptr, data)
                if attr_ptr:  # written on BUFFER_TOO_SMALL too (Variable.c's Done: label)
                    self.w32(attr_ptr, attributes)
        self.log("GetVariable", f"{guids.name_of(guid)}:{name}", status)
        return status

    def rt_SetVariable(self, name_ptr: int, guid_ptr: int, attributes: int, size: int, data_ptr: int) -> int:
        if not name_ptr or not guid_ptr:
            return S.INVALID_PARAMETER
        name, guid = self.read_str16(name_ptr), self.read_guid(guid_ptr)
        attributes &= 0xFFFFFFFF
        status = self._set_variable(name, guid, attributes, size, data_ptr)
        self.log("SetVariable", f"{guids.name_of(guid)}:{name}, attributes {attributes:#x}, {size} bytes", status)
        if status == S.SUCCESS:
            self.variables_set.append((name, guid))
        return status

    def _set_variable(self, name: str, guid: uuid.UUID, attributes: int, size: int, data_ptr: int) -> int:
        if not name or (size and not data_ptr) or size > MAX_VARIABLE_SIZE:
            return S.INVALID_PARAMETER
        if attributes & ~VAR_ATTRIBUTES_KNOWN:
            return S.INVALID_PARAMETER
        if attributes & VAR_AUTHENTICATED_WRITE_ACCESS:  # deprecated since UEFI 2.6
            return S.UNSUPPORTED
        if attributes & VAR_TIME_BASED_AUTHENTICATED_WRITE_ACCESS:
            return S.SECURITY_VIOLATION if (name, guid) in READ_ONLY_VARIABLES else S.UNSUPPORTED
        if attributes & VAR_RUNTIME_ACCESS and not attributes & VAR_BOOTSERVICE_ACCESS:
            return S.INVALID_PARAMETER
        if (name, guid) in READ_ONLY_VARIABLES:
            return S.WRITE_PROTECTED
        if self.dxe.exited and attributes and not attributes & VAR_RUNTIME_ACCESS:
            return S.INVALID_PARAMETER
        old = self.config.variables.get((name, guid))
        if old is not None and not self._visible(old[0]):
            old = None
        append = bool(attributes & VAR_APPEND_WRITE)
        if size == 0 and append:
            return S.SUCCESS if old is not None else S.NOT_FOUND  # appending nothing changes nothing
        if size == 0 or not attributes & (VAR_BOOTSERVICE_ACCESS | VAR_RUNTIME_ACCESS | VAR_NON_VOLATILE):
            if old is None:
                return S.NOT_FOUND
            del self.config.variables[(name, guid)]
            return S.SUCCESS
        plain = attributes & ~VAR_APPEND_WRITE
        if old is not None and old[0] != plain:  # an existing variable keeps its attributes
            return S.INVALID_PARAMETER
        data = self.read(data_ptr, size)
        self.config.variables[(name, guid)] = (plain, (old[1] if old is not None and append else b"") + data)
        return S.SUCCESS

    def rt_GetNextVariableName(self, size_ptr: int, name_ptr: int, guid_ptr: int) -> int:
        if not size_ptr or not name_ptr or not guid_ptr:
            return S.INVALID_PARAMETER
        have = self.r64(size_ptr)
        if have == 0:  # no room for even the NUL that ends the name passed in (UEFI 2.8 and later)
            return S.INVALID_PARAMETER
        name = self.read_str16(name_ptr, max(1, have // 2))
        if 2 * (len(name) + 1) > have:
            return S.INVALID_PARAMETER
        keys = [k for k, v in self.config.variables.items() if self._visible(v[0])]
        if name:
            guid = self.read_guid(guid_ptr)
            if (name, guid) not in keys:
                return S.INVALID_PARAMETER
            index = keys.index((name, guid)) + 1
        else:
            index = 0
        if index >= len(keys):
            return S.NOT_FOUND
        next_name, next_guid = keys[index]
        encoded = (next_name + "\0").encode("utf-16-le")
        self.w64(size_ptr, len(encoded))
        if have < len(encoded):
            return S.BUFFER_TOO_SMALL
        self.write(name_ptr, encoded)
        self.write(guid_ptr, next_guid.bytes_le)
        return S.SUCCESS

    def rt_QueryVariableInfo(self, attributes: int, max_storage_ptr: int, remaining_ptr: int, max_size_ptr: int) -> int:
        """VariableServiceQueryVariableInfo: the store the attributes select, what is left of it and the largest
        variable it takes (shim sizes its MokList mirrors with it)."""
        attributes &= 0xFFFFFFFF
        status = self._query_variable_info(attributes, max_storage_ptr, remaining_ptr, max_size_ptr)
        self.log("QueryVariableInfo", f"attributes {attributes:#x}", status)
        return status

    def _query_variable_info(self, attributes: int, max_storage_ptr: int, remaining_ptr: int, max_size_ptr: int) -> int:
        if not max_storage_ptr or not remaining_ptr or not max_size_ptr or not attributes:
            return S.INVALID_PARAMETER
        if attributes & ~VAR_ATTRIBUTES_KNOWN & ~VAR_APPEND_WRITE or attributes & VAR_AUTHENTICATED_WRITE_ACCESS:
            return S.UNSUPPORTED
        if not attributes & (VAR_NON_VOLATILE | VAR_BOOTSERVICE_ACCESS | VAR_RUNTIME_ACCESS):
            return S.UNSUPPORTED
        if attributes & VAR_RUNTIME_ACCESS and not attributes & VAR_BOOTSERVICE_ACCESS:
            return S.INVALID_PARAMETER
        if self.dxe.exited and not attributes & VAR_RUNTIME_ACCESS:
            return S.INVALID_PARAMETER
        volatile = not attributes & VAR_NON_VOLATILE
        store = VOLATILE_STORE_BYTES if volatile else NV_STORE_BYTES
        used = sum(VARIABLE_HEADER_BYTES + 2 * (len(name) + 1) + len(data)
                   for (name, _guid), (attrs, data) in self.config.variables.items()
                   if bool(attrs & VAR_NON_VOLATILE) != volatile)
        self.w64(max_storage_ptr, store)
        self.w64(remaining_ptr, max(0, store - used))
        self.w64(max_size_ptr, MAX_VARIABLE_SIZE - VARIABLE_HEADER_BYTES)
        return S.SUCCESS

    def rt_ResetSystem(self, reset_type: int, status: int, size: int, data: int) -> int:
        raise ServiceStop(StopReason(StopKind.EXIT, f"ResetSystem({reset_type})"))
