"""Memory services as binaries call them (edk2 DxeMain Mem/ and Gcd/ behind the EFI ABI): pointers read and
written in guest memory around the DXE core's page, pool, GCD, accept and exit engines (exit.py's DxeCore)."""

from __future__ import annotations

from lazyaccept.firmware.dxe.exit import BootServicesExited  # noqa: F401 - raised through these services
from lazyaccept.firmware.dxe.service_base import ServiceBase
from lazyaccept.spec.efi import EfiStatus as S


class MemoryServices(ServiceBase):
    def bs_AllocatePages(self, alloc_type: int, memory_type: int, pages: int, memory_ptr: int) -> int:
        alloc_type &= 0xFFFFFFFF
        memory_type &= 0xFFFFFFFF
        if not memory_ptr:
            status = S.INVALID_PARAMETER
            self.log("AllocatePages", "Memory NULL", status)
            return status
        requested = self.r64(memory_ptr)
        status, addr = self.dxe.allocate_pages(alloc_type, memory_type, pages, requested)
        if status == S.SUCCESS:
            self.w64(memory_ptr, addr)
        kind = ["AnyPages", "MaxAddress", "Address"][alloc_type] if alloc_type < 3 else str(alloc_type)
        self.log(
            "AllocatePages",
            f"{kind}, type {memory_type}, {pages:#x} pages, in {requested:#x}"
            + (f" -> {addr:#x}" if status == S.SUCCESS else ""),
            status,
        )
        return status

    def bs_FreePages(self, memory: int, pages: int) -> int:
        status = self.dxe.free_pages(memory, pages)
        self.log("FreePages", f"{memory:#x}, {pages:#x} pages", status)
        return status

    def bs_GetMemoryMap(self, size_ptr: int, map_ptr: int, key_ptr: int, desc_size_ptr: int, version_ptr: int) -> int:
        if not size_ptr:
            self.log("GetMemoryMap", "MemoryMapSize NULL", S.INVALID_PARAMETER)
            return S.INVALID_PARAMETER
        have = self.r64(size_ptr)
        result = self.dxe.get_memory_map(have, buffer=bool(map_ptr))
        self.w64(size_ptr, result.memory_map_size)
        if desc_size_ptr:
            self.w64(desc_size_ptr, result.descriptor_size)
        if version_ptr:
            self.w32(version_ptr, result.descriptor_version)
        if result.status == S.SUCCESS:
            self.write(map_ptr, result.pack())
            if key_ptr:
                self.w64(key_ptr, result.map_key)
        self.log("GetMemoryMap", f"size {have} -> {result.memory_map_size}, key {result.map_key}", result.status)
        return result.status

    def bs_AllocatePool(self, pool_type: int, size: int, buffer_ptr: int) -> int:
        status, addr = self.dxe.allocate_pool(pool_type & 0xFFFFFFFF, size, buffer=bool(buffer_ptr))
        if status == S.SUCCESS:
            self.w64(buffer_ptr, addr)
        self.log(
            "AllocatePool",
            f"type {pool_type & 0xFFFFFFFF}, {size:#x} bytes" + (f" -> {addr:#x}" if status == S.SUCCESS else ""),
            status,
        )
        return status

    def bs_FreePool(self, buffer: int) -> int:
        status = self.dxe.free_pool(buffer or None)
        self.log("FreePool", f"{buffer:#x}", status)
        return status

    def bs_ExitBootServices(self, image_handle: int, map_key: int) -> int:
        caller = self.r64(self.backend.reg("rsp"))
        status = self.dxe.exit_boot_services(image_handle, map_key)
        self.log("ExitBootServices", f"key {map_key}", status)
        if status == S.SUCCESS:
            start, end, _ = self.dxe.pages.map.run_at(caller)
            self.exit_caller_region = (start, end)
            self._write_system_table()
            self._update_code_ranges()  # from now on a block outside the images is the jump into the kernel
            for hook in self.on_after_exit:
                hook()
        return status

    def bs_AcceptMemory(self, start: int, size: int) -> int:
        status = self.dxe.accept_memory(start, size)
        self.log("AcceptMemory", f"{start:#x}, {size:#x}", status)
        return status

    def bs_CopyMem(self, dst: int, src: int, length: int) -> None:
        if length:
            self.mem.copy(dst, src, length, actor=self.actor)  # memmove; streamed through views when disjoint
            self.tdx.charge(0, self.tdx.profile.bytes_ns(length, self.tdx.profile.copy_bytes_per_s))

    def bs_SetMem(self, buffer: int, size: int, value: int) -> None:
        if size:
            self.mem.fill(buffer, size, value & 0xFF, actor=self.actor)  # checks the range first

    def ds_GetMemorySpaceDescriptor(self, base: int, desc_ptr: int) -> int:
        status, desc = self.dxe.get_memory_space_descriptor(base)
        if status == S.SUCCESS and desc is not None and desc_ptr:
            self.write(desc_ptr, desc.pack())
        self.log("GetMemorySpaceDescriptor", f"{base:#x}", status)
        return status

    def ds_SetMemorySpaceAttributes(self, base: int, length: int, attributes: int) -> int:
        status = self.dxe.set_memory_space_attributes(base, length, attributes)
        self.log("SetMemorySpaceAttributes", f"{base:#x}, {length:#x}, {attributes:#x}", status)
        return status

    def ds_SetMemorySpaceCapabilities(self, base: int, length: int, capabilities: int) -> int:
        return self.dxe.set_memory_space_capabilities(base, length, capabilities)

    def ds_GetMemorySpaceMap(self, count_ptr: int, map_ptr: int) -> int:
        status, buffer, descs = self.dxe.get_memory_space_map()
        if status == S.SUCCESS:
            self.write(buffer, b"".join(d.pack() for d in descs))
            self.w64(count_ptr, len(descs))
            self.w64(map_ptr, buffer)
        return status
