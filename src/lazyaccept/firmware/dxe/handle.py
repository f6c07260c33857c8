"""Handles and protocols (edk2 DxeMain Hand/): the handle database, install/uninstall, locate by protocol
and by device path."""

from __future__ import annotations

import uuid

from lazyaccept.errors import InputError
from lazyaccept.firmware.dxe.service_base import FIRMWARE_ACTOR, MAX_DEVICE_PATH, ServiceBase
from lazyaccept.spec import guids
from lazyaccept.spec.device_path import node_length
from lazyaccept.spec.efi import EfiMemoryType as M
from lazyaccept.spec.efi import EfiStatus as S


class HandleServices(ServiceBase):
    def new_handle(self) -> int:
        handle = self.fw_alloc(16)
        self.handles[handle] = {}
        return handle

    def install(self, handle: int, guid: uuid.UUID, interface: int, impl: object | None = None) -> None:
        self.handles.setdefault(handle, {})[guid] = interface
        if impl is not None:
            self.interfaces[interface] = impl

    def handles_with(self, guid: uuid.UUID) -> list[int]:
        return [h for h, protos in self.handles.items() if guid in protos]

    def read_device_path(self, addr: int) -> bytes:
        """A device path's bytes up to and including its End node; hostile lengths are refused."""
        out = bytearray()
        while len(out) < MAX_DEVICE_PATH:
            node = self.read(addr + len(out), 4)
            length = node_length(node, addr + len(out))
            out += self.read(addr + len(out), length)
            if node[0] == 0x7F and node[1] == 0xFF:
                return bytes(out)
        raise InputError(f"device path at {addr:#x} has no End node within {MAX_DEVICE_PATH} bytes")

    def bs_HandleProtocol(self, handle: int, guid_ptr: int, interface_ptr: int) -> int:
        return self.bs_OpenProtocol(handle, guid_ptr, interface_ptr, 0, 0, 0x2, _name="HandleProtocol")

    def bs_OpenProtocol(
        self,
        handle: int,
        guid_ptr: int,
        interface_ptr: int,
        agent: int,
        controller: int,
        attributes: int,
        _name: str = "OpenProtocol",
    ) -> int:
        if not guid_ptr:
            return S.INVALID_PARAMETER
        guid = self.read_guid(guid_ptr)
        if handle not in self.handles:
            status = S.INVALID_PARAMETER
        else:
            interface = self.handles[handle].get(guid)
            status = S.SUCCESS if interface is not None else S.UNSUPPORTED
            if interface is not None and interface_ptr and attributes != 0x4:  # TEST_PROTOCOL writes nothing
                self.w64(interface_ptr, interface)
        self.log(_name, f"{handle:#x}, {guids.name_of(guid)}", status)
        return status

    def bs_CloseProtocol(self, handle: int, guid_ptr: int, agent: int, controller: int) -> int:
        return S.SUCCESS if handle in self.handles else S.INVALID_PARAMETER

    def bs_LocateProtocol(self, guid_ptr: int, registration: int, interface_ptr: int) -> int:
        if not guid_ptr or not interface_ptr:
            return S.INVALID_PARAMETER
        guid = self.read_guid(guid_ptr)
        found = self.handles_with(guid)
        status = S.SUCCESS if found else S.NOT_FOUND
        self.w64(interface_ptr, self.handles[found[0]][guid] if found else 0)
        self.log("LocateProtocol", guids.name_of(guid), status)
        return status

    def _search(self, search_type: int, guid_ptr: int) -> tuple[list[int], str]:
        search_type &= 0xFFFFFFFF
        if search_type == 0:  # AllHandles
            return list(self.handles), "all"
        if search_type == 2 and guid_ptr:  # ByProtocol
            guid = self.read_guid(guid_ptr)
            return self.handles_with(guid), guids.name_of(guid)
        return [], "unsupported search"

    def bs_LocateHandle(self, search_type: int, guid_ptr: int, key: int, size_ptr: int, buffer: int) -> int:
        found, what = self._search(search_type, guid_ptr)
        if not size_ptr:
            return S.INVALID_PARAMETER
        need = 8 * len(found)
        have = self.r64(size_ptr)
        self.w64(size_ptr, need)
        if not found:
            status = S.NOT_FOUND
        elif have < need:
            status = S.BUFFER_TOO_SMALL
        else:
            self.write(buffer, b"".join(h.to_bytes(8, "little") for h in found))
            status = S.SUCCESS
        self.log("LocateHandle", what, status)
        return status

    def bs_LocateHandleBuffer(self, search_type: int, guid_ptr: int, key: int, count_ptr: int, buffer_ptr: int) -> int:
        found, what = self._search(search_type, guid_ptr)
        if not count_ptr or not buffer_ptr:
            return S.INVALID_PARAMETER
        self.w64(count_ptr, len(found))
        if not found:
            self.w64(buffer_ptr, 0)
            status = S.NOT_FOUND
        else:
            status, addr = self.dxe.allocate_pool(M.EfiBootServicesData, 8 * len(found))
            if status == S.SUCCESS:
                self.write(addr, b"".join(h.to_bytes(8, "little") for h in found))
                self.w64(buffer_ptr, addr)
        self.log("LocateHandleBuffer", what, status)
        return status

    def locate_device_path(self, guid: uuid.UUID, path: bytes) -> tuple[int, int]:
        """CoreLocateDevicePath: the handle with `guid` whose device path is the longest prefix of `path` (with its
        End node), and that prefix's length; (0, -1) if none."""
        wanted = path[:-4]
        best, best_len = 0, -1
        for handle in self.handles_with(guid):
            dp = self.handles[handle].get(guids.DEVICE_PATH)
            if dp is None:
                continue
            mine = self.read_device_path(dp)[:-4]
            if wanted.startswith(mine) and len(mine) > best_len:
                best, best_len = handle, len(mine)
        return best, best_len

    def bs_LocateDevicePath(self, guid_ptr: int, path_ptr_ptr: int, handle_ptr: int) -> int:
        if not guid_ptr or not path_ptr_ptr:
            return S.INVALID_PARAMETER
        guid = self.read_guid(guid_ptr)
        path_addr = self.r64(path_ptr_ptr)
        best, best_len = self.locate_device_path(guid, self.read_device_path(path_addr))
        if best_len < 0:
            status = S.NOT_FOUND
        else:
            if not handle_ptr:
                return S.INVALID_PARAMETER
            self.w64(handle_ptr, best)
            self.w64(path_ptr_ptr, path_addr + best_len)
            status = S.SUCCESS
        self.log("LocateDevicePath", guids.name_of(guid), status)
        return status

    def bs_ProtocolsPerHandle(self, handle: int, buffer_ptr: int, count_ptr: int) -> int:
        if handle not in self.handles:
            return S.INVALID_PARAMETER
        protos = list(self.handles[handle])
        status, array = self.dxe.allocate_pool(M.EfiBootServicesData, 8 * max(1, len(protos)))
        if status != S.SUCCESS:
            return status
        for i, g in enumerate(protos):
            gaddr = self.fw_alloc(16)
            self.mem.write(gaddr, g.bytes_le, actor=FIRMWARE_ACTOR)
            self.w64(array + 8 * i, gaddr)
        self.w64(buffer_ptr, array)
        self.w64(count_ptr, len(protos))
        return S.SUCCESS

    def bs_InstallProtocolInterface(self, handle_ptr: int, guid_ptr: int, interface_type: int, interface: int) -> int:
        if not handle_ptr or not guid_ptr:
            return S.INVALID_PARAMETER
        handle = self.r64(handle_ptr)
        guid = self.read_guid(guid_ptr)
        if handle == 0:
            handle = self.new_handle()
            self.w64(handle_ptr, handle)
        elif handle not in self.handles:
            return S.INVALID_PARAMETER
        elif guid in self.handles[handle]:
            return S.INVALID_PARAMETER
        self.install(handle, guid, interface)
        self.log("InstallProtocolInterface", f"{handle:#x}, {guids.name_of(guid)}", S.SUCCESS)
        return S.SUCCESS

    def bs_InstallMultipleProtocolInterfaces(self) -> int:
        handle_ptr = self.backend.reg("rcx")
        values = self._varargs(1)
        if not handle_ptr:
            return S.INVALID_PARAMETER
        handle = self.r64(handle_ptr)
        pairs = []
        for i in range(0, len(values) - 1, 2):
            pairs.append((self.read_guid(values[i]), values[i + 1]))
        if handle and handle not in self.handles:
            return S.INVALID_PARAMETER
        if handle and any(g in self.handles[handle] for g, _ in pairs):
            return S.ALREADY_STARTED
        if any(g == guids.DEVICE_PATH for g, _ in pairs):
            wanted = next(p for g, p in pairs if g == guids.DEVICE_PATH)
            path = self.read_device_path(wanted)
            for other in self.handles_with(guids.DEVICE_PATH):
                if self.read_device_path(self.handles[other][guids.DEVICE_PATH]) == path:
                    self.log("InstallMultipleProtocolInterfaces", "device path already installed", S.ALREADY_STARTED)
                    return S.ALREADY_STARTED
        if not handle:
            handle = self.new_handle()
            self.w64(handle_ptr, handle)
        for g, p in pairs:
            self.install(handle, g, p)
        self.log(
            "InstallMultipleProtocolInterfaces",
            f"{handle:#x}, " + ", ".join(guids.name_of(g) for g, _ in pairs),
            S.SUCCESS,
        )
        return S.SUCCESS

    def bs_UninstallMultipleProtocolInterfaces(self) -> int:
        handle = self.backend.reg("rcx")
        values = self._varargs(1)
        if handle not in self.handles:
            return S.INVALID_PARAMETER
        for i in range(0, len(values) - 1, 2):
            guid = self.read_guid(values[i])
            if self.handles[handle].get(guid) != values[i + 1]:
                return S.INVALID_PARAMETER
        for i in range(0, len(values) - 1, 2):
            self.handles[handle].pop(self.read_guid(values[i]), None)
        return S.SUCCESS

    def bs_UninstallProtocolInterface(self, handle: int, guid_ptr: int, interface: int) -> int:
        if handle not in self.handles or not guid_ptr:
            return S.INVALID_PARAMETER
        guid = self.read_guid(guid_ptr)
        if self.handles[handle].get(guid) != interface:
            return S.NOT_FOUND
        del self.handles[handle][guid]
        return S.SUCCESS

    def bs_ReinstallProtocolInterface(self, handle: int, guid_ptr: int, old: int, new: int) -> int:
        if handle not in self.handles or not guid_ptr:
            return S.INVALID_PARAMETER
        guid = self.read_guid(guid_ptr)
        if self.handles[handle].get(guid) != old:
            return S.NOT_FOUND
        self.handles[handle][guid] = new
        return S.SUCCESS

    def bs_RegisterProtocolNotify(self, guid_ptr: int, event: int, registration_ptr: int) -> int:
        if registration_ptr:
            self.w64(registration_ptr, self.fw_alloc(8))
        return S.SUCCESS
