"""A model of what the Linux 6.12 x86 EFI stub asks of the firmware's memory services, in order.

Source: torvalds/linux drivers/firmware/efi/libstub (x86-stub.c efi_pe_entry / efi_stub_entry / exit_boot /
allocate_e820, mem.c efi_get_memory_map / efi_allocate_pages, randomalloc.c efi_random_alloc,
efi-stub-helper.c efi_load_initrd_dev_path / efi_exit_boot_services, unaccepted_memory.c) and REFERENCE.md s6:

1. boot_params: efi_allocate_pages(16 KiB, max ULONG_MAX): AllocatePages(MaxAddress, LoaderData);
   the command line: AllocatePool(LoaderData); the stub's FreePool(NULL) (edk2 answers EFI_INVALID_PARAMETER).
2. the decompressed kernel: efi_random_alloc scans a fresh memory map for EfiConventionalMemory only, 2 MiB
   slots at or above LOAD_PHYSICAL_ADDR (16 MiB), picks slot (total * seed[0]) >> 32 and calls
   AllocatePages(AllocateAddress, LoaderCode). With no slot it returns EFI_OUT_OF_RESOURCES without calling
   AllocatePages, so no allocator-level option can make room for the kernel.
3. the initrd: LoadFile2 on the initrd media device path with a NULL buffer (EFI_BUFFER_TOO_SMALL gives the
   size), then AllocatePages(MaxAddress = ULONG_MAX, LoaderData); on failure "Failed to load initrd" and exit.
4. AllowUnacceptedMemory when OVMF_SEV_MEMORY_ACCEPTANCE_PROTOCOL exists (setup_unaccepted_memory).
5. exit_boot: allocate_e820 (a memory map into pool; e820 extension pool if more than 96 descriptors;
   allocate_unaccepted_bitmap: AllocatePool(ACPIReclaim, 24 + bitmap) from the lowest/highest type-15
   addresses rounded to 2 MiB); efi_exit_boot_services (memory map into ACPIReclaim pool with 32 slack
   descriptors, ExitBootServices, and exactly one retry on EFI_INVALID_PARAMETER reusing the buffer).
6. after ExitBootServices, setup_e820: the final memory map becomes e820 and each type-15 descriptor goes through
   process_unaccepted_memory (guest/unaccepted.py stub_split): ranges shorter than two 2 MiB units, unaligned
   heads and tails are accepted at once by the stub, with Linux's accept rules (arch_accept_memory ->
   tdx_accept_memory: guest/handoff.py TdxAccepter); the aligned middle is set in the bitmap, which is written
   into guest memory. The result carries the `Handoff` record the kernel model starts from.

Knobs for the RFC's options: accept_for_initrd / accept_for_kernel make an option-3-aware loader call the
AcceptMemory boot service and retry (the real 6.12 stub never does). QEMU direct boot's own copies (and option 2)
are the loader's, not the stub's: guest/model_services.py runs this model from firmware/loaders/direct_boot.py.

Allocations besides the steps above, as the real 6.12 stub makes them on lazyaccept's firmware (its service-call
log, BootReport.calls, is the reference: tests/guest/test_stub_allocations.py): with a CC measurement protocol, the
tagged event of each measurement (LoadOptions, the initrd) is an AllocatePool(LoaderData)/FreePool pair
(efi-stub-helper.c efi_measure_tagged_event); efi_parse_options copies the command line into pool and frees it;
5-level paging takes two pages below 4 GiB when the CPU has LA57 (x86-5lvl.c efi_setup_5level_paging; TDs here
are 4-level); efi_load_initrd's 16-byte LoaderData pool for the LINUX_EFI_INITRD_MEDIA table; the RNG seed's
pool (random.c efi_random_get_seed: EfiACPIReclaimMemory in 6.12) for LINUX_EFI_RANDOM_SEED; setup_efi_pci's
FreePool(NULL); allocate_unaccepted_bitmap returns early when the table is installed already.
The tables the stub installs are recorded (StubResult.tables); InstallConfigurationTable's own pool is edk2's.
Not modelled: the TPM/CC event-log copy (tpm.c efi_retrieve_eventlog; lazyaccept's firmware has no event log
to copy), PCI and quirk setup.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lazyaccept.firmware.dxe.exit import DxeCore, DxePolicy
from lazyaccept.firmware.dxe.gcd import GcdType
from lazyaccept.firmware.platform import start_dxe
from lazyaccept.firmware.sec import SecResult
from lazyaccept.guest.handoff import (
    STUB_ACTOR,
    E820Entry,
    E820Type,
    GuestCrash,
    Handoff,
    LoadedRange,
    TdxAccepter,
    merge_ranges,
    snapshot_stats,
    stats_since,
)
from lazyaccept.guest.unaccepted import (
    UnacceptedTable,
    encode_unaccepted_table,
    process_unaccepted_memory,
)
from lazyaccept.records import Actor
from lazyaccept.spec.efi import (
    EFI_MEMORY_MORE_RELIABLE,
    EFI_MEMORY_RO,
    EFI_MEMORY_SP,
    EFI_MEMORY_WB,
    EFI_MEMORY_XP,
    EFI_PAGE_SHIFT,
    EFI_PAGE_SIZE,
    MAX_UINT64,
    OVMF_SEV_MEMORY_ACCEPTANCE_PROTOCOL_GUID,
    EfiAllocateType,
    EfiMemoryType,
    EfiStatus,
    MemoryDescriptor,
    status_name,
)
from lazyaccept.spec.linux_efi import EFI_UNACCEPTED_UNIT_SIZE
from lazyaccept.tdx.module import AcceptStats
from lazyaccept.units import MiB, align_down, align_up, format_size, human_size
from lazyaccept.vmm.td import Td

S = EfiStatus
M = EfiMemoryType
A = EfiAllocateType

EFI_MMAP_NR_SLACK_SLOTS = 32  # efistub.h
EFI_BOOT_MEMMAP_HEADER = 40  # struct efi_boot_memmap before map[]
E820_MAX_ENTRIES_ZEROPAGE = 128
SETUP_DATA_HEADER = 16
E820_ENTRY_SIZE = 20
BOOT_PARAMS_SIZE = 4096  # x86-stub.c efi_allocate_bootparams: efi_allocate_pages(sizeof(struct boot_params))
U32_MAX = 0xFFFFFFFF
# efi_measure_tagged_event's pool: the CC event header and tagged-event header (26 bytes) + the description
CC_TAGGED_EVENT_HEADER = 26
MEASURE_LOAD_OPTIONS = "LOADED_IMAGE::LoadOptions"
MEASURE_INITRD = "Linux initrd"
INITRD_MEDIA_POOL = 16  # efi_load_initrd: struct linux_efi_initrd { base, size }
RANDOM_SEED_POOL = 4 + 32  # struct linux_efi_random_seed { u32 size; u8 bits[EFI_RANDOM_SEED_SIZE] }
LA57_PAGES = 2  # efi_setup_5level_paging: trampoline code and a page table, below 4 GiB

# x86-stub.c setup_e820 (6.12): EFI memory type -> e820 type; types not listed are left out. Type 15 is RAM only
# with CONFIG_UNACCEPTED_MEMORY, and the RAM types with EFI_MEMORY_SP are soft-reserved (efi_soft_reserve_enabled).
E820_OF_EFI: dict[int, E820Type] = {
    M.EfiReservedMemoryType: E820Type.RESERVED,
    M.EfiRuntimeServicesCode: E820Type.RESERVED,
    M.EfiRuntimeServicesData: E820Type.RESERVED,
    M.EfiMemoryMappedIO: E820Type.RESERVED,
    M.EfiMemoryMappedIOPortSpace: E820Type.RESERVED,
    M.EfiPalCode: E820Type.RESERVED,
    M.EfiUnusableMemory: E820Type.UNUSABLE,
    M.EfiACPIReclaimMemory: E820Type.ACPI,
    M.EfiLoaderCode: E820Type.RAM,
    M.EfiLoaderData: E820Type.RAM,
    M.EfiBootServicesCode: E820Type.RAM,
    M.EfiBootServicesData: E820Type.RAM,
    M.EfiConventionalMemory: E820Type.RAM,
    M.EfiACPIMemoryNVS: E820Type.NVS,
    M.EfiPersistentMemory: E820Type.PMEM,
    M.EfiUnacceptedMemoryType: E820Type.RAM,
}


@dataclass(frozen=True)
class StubConfig:
    kernel_alloc_bytes: int = 56 * MiB  # ALIGN(max(output_len, kernel_total_size)), 6.12 cloud kernel
    kernel_align: int = 2 * MiB  # CONFIG_PHYSICAL_ALIGN
    load_physical_addr: int = 16 * MiB  # LOAD_PHYSICAL_ADDR
    kaslr_seed: int = 0  # seed[0]; 0 (nokaslr, no RNG) picks the lowest slot, 0xffffffff nearly the highest
    initrd_bytes: int = 0
    cmdline_bytes: int = 256  # with its NUL (model_services gives the loader's LoadOptions length)
    cc_measurement: bool = True  # the firmware offers EFI_CC_MEASUREMENT_PROTOCOL (TDVF does)
    rng: bool = True  # EFI_RNG_PROTOCOL (lazyaccept's firmware offers it)
    cpu_la57: bool = False  # CPUID.7.ECX.LA57: the TDs here run 4-level paging
    kernel_text_bytes: int = 0  # text + inittext, what efi_adjust_memory_range_protection covers (0: all of it)
    unaccepted_memory_support: bool = True  # CONFIG_UNACCEPTED_MEMORY
    dxe_mem_attributes: bool = True  # CONFIG_EFI_DXE_MEM_ATTRIBUTES, GCD path
    accept_for_initrd: bool = False  # option-3-aware loader: AcceptMemory then retry the initrd allocation
    accept_for_kernel: bool = False  # ... and for the kernel slot
    load_file2: Callable[[], int] | None = None  # returns the initrd size (default: initrd_bytes)


@dataclass
class StubResult:
    ok: bool
    status: EfiStatus
    message: str
    kernel: tuple[int, int] | None = None
    initrd: tuple[int, int] | None = None
    boot_params: int = 0
    unaccepted_table: UnacceptedTable | None = None
    unaccepted_table_address: int | None = None
    exit_attempts: int = 0
    memory_map: tuple[MemoryDescriptor, ...] = ()
    log: list[str] = field(default_factory=list)
    accepted_by_actor: dict[str, int] = field(default_factory=dict)
    stub_accepted_bytes: int = 0  # accepted by the stub itself after ExitBootServices
    clock_ns: int = 0  # virtual time of the whole run on the boot vCPU
    after_exit_ns: int = 0  # of which after ExitBootServices (the stub's own accepts)
    handoff: Handoff | None = None  # what the kernel starts from (None: the stub did not exit boot services)
    failed_step: str = ""  # when not ok: "kernel slot", "stub initrd buffer" or "stub" (any other step)
    # (service, memory type or None, pages or bytes) of each AllocatePages/AllocatePool/FreePool, in order
    allocations: list[tuple[str, int | None, int]] = field(default_factory=list)
    memory_map_pools: list[int] = field(default_factory=list)  # indices in `allocations` of memory-map buffers
    tables: dict[str, int] = field(default_factory=dict)  # configuration tables installed: GUID -> address

    @property
    def accepted_bytes(self) -> int:
        return sum(self.accepted_by_actor.values()) + self.stub_accepted_bytes


class _Abort(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = EfiStatus(status)
        self.message = message


class StubModel:
    """One run of the stub's firmware calls against a DxeCore."""

    def __init__(self, core: DxeCore, config: StubConfig):
        self.core = core
        self.config = config
        self.log: list[str] = []
        self.result = StubResult(False, S.LOAD_ERROR, "")
        self._refused_slot: tuple[int, EfiStatus] | None = None  # efi_random_alloc's slot AllocatePages refused

    def run(self) -> StubResult:
        core, cfg, res = self.core, self.config, self.result
        t0 = core.clock_ns
        before = dict(core.acceptor.accepted_by_actor())
        step = "stub"
        try:
            self._pe_entry()
            step = "kernel slot"
            res.kernel = self._decompress_kernel()
            if cfg.initrd_bytes:
                step = "stub initrd buffer"
                res.initrd = self._load_initrd()
            step = "stub"
            if cfg.rng:
                self._random_seed()
            status = self._free(None)  # setup_efi_pci: no PCI I/O handles, FreePool(NULL)
            self._note(f"FreePool(NULL) = {status_name(status)}")
            self._setup_unaccepted_memory()
            self._exit_boot()
            res.ok, res.status, res.message = True, S.SUCCESS, "booted: ExitBootServices succeeded"
        except _Abort as exc:
            res.ok, res.status, res.message, res.failed_step = False, exc.status, exc.message, step
        after = core.acceptor.accepted_by_actor()
        res.accepted_by_actor = {a: n - before.get(a, 0) for a, n in after.items() if n - before.get(a, 0)}
        res.exit_attempts = core.exit_attempts
        if res.handoff is not None and res.accepted_by_actor.get(Actor.EXIT_ACCEPT_ALL):
            res.handoff.notes.append("the firmware accepted all memory at ExitBootServices")
        res.log = self.log
        res.clock_ns = core.clock_ns - t0
        return res

    # ----------------------------------------------------------------- steps

    # ----------------------------------------------------------------- the memory services, recorded

    def _pages(self, allocate_type: int, memory_type: int, pages: int, memory: int) -> tuple[EfiStatus, int]:
        self.result.allocations.append(("AllocatePages", int(memory_type), pages))
        return self.core.allocate_pages(allocate_type, memory_type, pages, memory)

    def _pool(self, memory_type: int, size: int) -> tuple[EfiStatus, int]:
        self.result.allocations.append(("AllocatePool", int(memory_type), size))
        return self.core.allocate_pool(memory_type, size)

    def _free(self, buffer: int | None) -> EfiStatus:
        self.result.allocations.append(("FreePool" if buffer else "FreePool(NULL)", None, 0))
        return self.core.free_pool(buffer)

    def _install_table(self, name: str, address: int) -> None:
        self.result.tables[name] = address
        self._note(f"InstallConfigurationTable({name}, {address:#x})")

    def _measure(self, description: str) -> None:
        """efi_measure_tagged_event with a CC measurement protocol: the event in pool, hashed, freed."""
        if not self.config.cc_measurement:
            return
        status, pool = self._pool(M.EfiLoaderData, CC_TAGGED_EVENT_HEADER + len(description) + 1)
        if status == S.SUCCESS:
            self._free(pool)

    # ----------------------------------------------------------------- steps

    def _pe_entry(self) -> None:
        cfg = self.config
        status, addr = self._pages(
            A.AllocateMaxAddress, M.EfiLoaderData, BOOT_PARAMS_SIZE >> EFI_PAGE_SHIFT, MAX_UINT64
        )
        self._note(f"AllocatePages(MaxAddress, LoaderData, boot_params) = {status_name(status)} {addr:#x}")
        if status != S.SUCCESS:
            raise _Abort(status, f"Failed to allocate lowmem for boot params ({status_name(status)})")
        self.result.boot_params = addr
        self._measure(MEASURE_LOAD_OPTIONS)
        status, _ = self._pool(M.EfiLoaderData, cfg.cmdline_bytes)
        self._note(f"AllocatePool(LoaderData, cmdline) = {status_name(status)}")
        if status != S.SUCCESS:
            raise _Abort(status, f"Failed to convert the command line ({status_name(status)})")
        if cfg.cpu_la57:
            # efi_setup_5level_paging allocates whenever the CPU has LA57, whether or not 5-level is then used.
            status, _ = self._pages(A.AllocateMaxAddress, M.EfiLoaderData, LA57_PAGES, U32_MAX)
            self._note(f"AllocatePages(MaxAddress 4G, LoaderData, 5-level trampoline) = {status_name(status)}")
            if status != S.SUCCESS:
                raise _Abort(status, "Failed to allocate memory for 5-level paging trampoline")
        status, pool = self._pool(M.EfiLoaderData, cfg.cmdline_bytes)  # efi_parse_options' copy
        if status == S.SUCCESS:
            self._free(pool)

    def _random_seed(self) -> None:
        """random.c efi_random_get_seed: no previous seed table, no RandomSeed variable: one pool of the seed."""
        status, addr = self._pool(M.EfiACPIReclaimMemory, RANDOM_SEED_POOL)
        self._note(f"AllocatePool(ACPIReclaim, random seed) = {status_name(status)}")
        if status == S.SUCCESS:
            self._install_table("LINUX_EFI_RANDOM_SEED", addr)

    def _get_memory_map(self, memory_type: int) -> tuple[int, int, list[MemoryDescriptor], int]:
        """mem.c efi_get_memory_map: probe, AllocatePool with 32 descriptors of slack, GetMemoryMap.
        Returns (pool address, map key, descriptors, buffer size)."""
        core = self.core
        probe = core.get_memory_map(0, buffer=False)
        if probe.status != S.BUFFER_TOO_SMALL:
            raise _Abort(S.LOAD_ERROR, f"GetMemoryMap size probe returned {status_name(probe.status)}")
        size = probe.memory_map_size + probe.descriptor_size * EFI_MMAP_NR_SLACK_SLOTS
        status, pool = self._pool(memory_type, EFI_BOOT_MEMMAP_HEADER + size)
        self.result.memory_map_pools.append(len(self.result.allocations) - 1)
        if status != S.SUCCESS:
            raise _Abort(status, f"allocating the memory map buffer failed ({status_name(status)}; {self._room()})")
        result = core.get_memory_map(size)
        if result.status != S.SUCCESS:
            self._free(pool)
            raise _Abort(result.status, f"GetMemoryMap into {size} bytes returned {status_name(result.status)}")
        if result.overflow_bytes:
            raise _Abort(
                S.BUFFER_TOO_SMALL,
                f"GetMemoryMap wrote {result.overflow_bytes} bytes past the stub's {size}-byte buffer "
                "(its size probe missed descriptors: edk2 before f80a406aa9)",
            )
        return pool, result.map_key, list(result.descriptors), size

    def _decompress_kernel(self) -> tuple[int, int]:
        cfg = self.config
        addr = self._random_alloc()
        if addr is None and cfg.accept_for_kernel and self.core.policy.option3:
            if self._accept_via_service(cfg.kernel_alloc_bytes, min_address=cfg.load_physical_addr):
                addr = self._random_alloc()
        if addr is None and self._refused_slot is not None:
            # efi_random_alloc returns AllocatePages' status as it is; the stub gives up (x86-stub.c, 6.12).
            target, status = self._refused_slot
            raise _Abort(
                status,
                f"Failed to decompress kernel: efi_random_alloc's AllocatePages(AllocateAddress {target:#x}, "
                f"{format_size(align_up(cfg.kernel_alloc_bytes, EFI_PAGE_SIZE))}) returned {status_name(status)}: "
                "the slot GetMemoryMap offered as EfiConventionalMemory overlaps a free memory-type bin of another "
                "type, which AllocateAddress refuses",
            )
        if addr is None:
            raise _Abort(S.OUT_OF_RESOURCES, self._no_kernel_slot_message())
        end = addr + align_up(cfg.kernel_alloc_bytes, EFI_PAGE_SIZE)
        if cfg.dxe_mem_attributes:
            self._adjust_memory_range_protection(addr, addr + (cfg.kernel_text_bytes or end - addr))
        return addr, end

    def _random_alloc(self) -> int | None:
        """randomalloc.c efi_random_alloc (6.12: alloc_min = LOAD_PHYSICAL_ADDR, alloc_max = ULONG_MAX)."""
        cfg = self.config
        pool, _, descs, _ = self._get_memory_map(M.EfiLoaderData)
        align = max(cfg.kernel_align, EFI_PAGE_SIZE)
        size = align_up(cfg.kernel_alloc_bytes, EFI_PAGE_SIZE)
        slots: list[tuple[MemoryDescriptor, int]] = []
        for md in descs:
            slots.append((md, _entry_num_slots(md, size, align, cfg.load_physical_addr, MAX_UINT64)))
        mirrored = sum(n for md, n in slots if md.attribute & EFI_MEMORY_MORE_RELIABLE)
        total = mirrored or sum(n for _, n in slots)
        target_slot = (total * (cfg.kaslr_seed & 0xFFFFFFFF)) >> 32
        status, target = S.OUT_OF_RESOURCES, None
        self._refused_slot = None
        for md, n in slots:
            if mirrored and not md.attribute & EFI_MEMORY_MORE_RELIABLE:
                continue
            if target_slot >= n:
                target_slot -= n
                continue
            target = align_up(max(md.physical_start, cfg.load_physical_addr), align) + target_slot * align
            status, _ = self._pages(A.AllocateAddress, M.EfiLoaderCode, size >> EFI_PAGE_SHIFT, target)
            self._note(f"AllocatePages(Address {target:#x}, LoaderCode, kernel) = {status_name(status)}")
            if status != S.SUCCESS:
                self._refused_slot = (target, status)
            break
        self._free(pool)
        self._note(f"efi_random_alloc: {total} slot(s) of {format_size(size)}, status {status_name(status)}")
        return target if status == S.SUCCESS else None

    def _no_kernel_slot_message(self) -> str:
        cfg = self.config
        largest = 0
        for s, e, v in self.core.pages.runs():
            if v.type == M.EfiConventionalMemory:
                lo = align_up(max(s, cfg.load_physical_addr), cfg.kernel_align)
                largest = max(largest, e - lo)
        return (
            f"Failed to decompress kernel: efi_random_alloc found no {format_size(cfg.kernel_align)}-aligned slot of "
            f"{format_size(align_up(cfg.kernel_alloc_bytes, EFI_PAGE_SIZE))} in EfiConventionalMemory at or above "
            f"{format_size(cfg.load_physical_addr)} (largest usable: {format_size(max(0, largest))}); the stub "
            "returns EFI_OUT_OF_RESOURCES without calling AllocatePages, so accept-on-allocation-failure cannot "
            "help: the up-front accept must leave room for the kernel"
        )

    def _adjust_memory_range_protection(self, start: int, end: int) -> None:
        """x86-stub.c efi_adjust_memory_range_protection (6.12), DXE services path, over the kernel's text and
        inittext: system-memory descriptors with RO or XP set become EFI_MEMORY_WB; the others are left alone."""
        core = self.core
        pos = align_down(start, EFI_PAGE_SIZE)
        end = align_up(end, EFI_PAGE_SIZE)
        while pos < end:
            status, desc = core.get_memory_space_descriptor(pos)
            if status != S.SUCCESS or desc is None:
                break
            nxt = desc.end
            if desc.gcd_memory_type != GcdType.EfiGcdMemoryTypeSystemMemory or not desc.attributes & (
                EFI_MEMORY_RO | EFI_MEMORY_XP
            ):
                pos = nxt
                continue
            lo, hi = max(pos, desc.base_address), min(end, nxt)
            status = core.set_memory_space_attributes(lo, hi - lo, EFI_MEMORY_WB)
            if status != S.SUCCESS:
                self._note(f"SetMemorySpaceAttributes({lo:#x}) = {status_name(status)}")
                break
            pos = nxt

    def _load_initrd(self) -> tuple[int, int]:
        """efi-stub-helper.c efi_load_initrd_dev_path: LoadFile2 probe, then efi_allocate_pages(max ULONG_MAX)."""
        core, cfg = self.core, self.config
        size = cfg.load_file2() if cfg.load_file2 else cfg.initrd_bytes
        self._note(f"LoadFile2(initrd, NULL) = EFI_BUFFER_TOO_SMALL, size {format_size(size)}")
        pages = (size + EFI_PAGE_SIZE - 1) >> EFI_PAGE_SHIFT
        status, addr = self._pages(A.AllocateMaxAddress, M.EfiLoaderData, pages, MAX_UINT64)
        self._note(f"AllocatePages(MaxAddress, LoaderData, initrd) = {status_name(status)} {addr:#x}")
        if status == S.OUT_OF_RESOURCES and cfg.accept_for_initrd and core.policy.option3:
            if self._accept_via_service(size):
                status, addr = self._pages(A.AllocateMaxAddress, M.EfiLoaderData, pages, MAX_UINT64)
                self._note(f"AllocatePages(MaxAddress, LoaderData, initrd) retry = {status_name(status)} {addr:#x}")
        if status != S.SUCCESS:
            raise _Abort(
                status,
                f"Failed to load initrd: AllocatePages(MaxAddress, LoaderData, {format_size(size)}) returned "
                f"{status_name(status)} ({self._room()}); the stub exits to the firmware without retrying",
            )
        self._measure(MEASURE_INITRD)
        # efi_load_initrd: the initrd's base and size in a LoaderData pool, published for the kernel
        status, table = self._pool(M.EfiLoaderData, INITRD_MEDIA_POOL)
        if status == S.SUCCESS:
            self._install_table("LINUX_EFI_INITRD_MEDIA", table)
        return addr, addr + size

    def _accept_via_service(self, size: int, *, min_address: int = 0) -> bool:
        """An option-3-aware loader: pick the lowest 2 MiB-aligned type-15 range of the size and accept it."""
        core = self.core
        pool, _, descs, _ = self._get_memory_map(M.EfiLoaderData)
        self._free(pool)
        want = align_up(size, EFI_UNACCEPTED_UNIT_SIZE)
        for md in sorted(descs, key=lambda d: d.physical_start):
            if md.type != M.EfiUnacceptedMemoryType:
                continue
            base = align_up(max(md.physical_start, min_address), EFI_UNACCEPTED_UNIT_SIZE)
            if base + want <= md.end:
                status = core.accept_memory(base, want)
                self._note(f"AcceptMemory({base:#x}, {format_size(want)}) = {status_name(status)}")
                return status == S.SUCCESS
        self._note(f"no unaccepted range of {format_size(want)} to accept")
        return False

    def _setup_unaccepted_memory(self) -> None:
        """x86-stub.c setup_unaccepted_memory: opt in when the firmware offers the protocol."""
        if not self.config.unaccepted_memory_support:
            return
        proto = self.core.locate_protocol(OVMF_SEV_MEMORY_ACCEPTANCE_PROTOCOL_GUID)
        if proto is None:
            self._note("LocateProtocol(OVMF_SEV_MEMORY_ACCEPTANCE_PROTOCOL) = EFI_NOT_FOUND")
            return
        status = proto.allow_unaccepted_memory()  # type: ignore[attr-defined]
        self._note(f"AllowUnacceptedMemory() = {status_name(status)}")

    def _exit_boot(self) -> None:
        core, cfg = self.core, self.config
        # allocate_e820
        pool, _, descs, _ = self._get_memory_map(M.EfiLoaderData)
        nr_desc = len(descs)
        if nr_desc > E820_MAX_ENTRIES_ZEROPAGE - EFI_MMAP_NR_SLACK_SLOTS:
            extra = nr_desc - E820_MAX_ENTRIES_ZEROPAGE + EFI_MMAP_NR_SLACK_SLOTS
            status, _ = self._pool(M.EfiLoaderData, SETUP_DATA_HEADER + E820_ENTRY_SIZE * extra)
            if status != S.SUCCESS:
                raise _Abort(status, f"Failed to allocate e820ext ({status_name(status)})")
        table = None
        if cfg.unaccepted_memory_support:
            table = self._allocate_unaccepted_bitmap(descs)
        self._free(pool)
        # efi_exit_boot_services
        pool, key, descs, buff_size = self._get_memory_map(M.EfiACPIReclaimMemory)
        self._install_table("LINUX_EFI_BOOT_MEMMAP", pool)
        status = core.exit_boot_services(1, key)
        self._note(f"ExitBootServices(key {key}) = {status_name(status)}")
        if status == S.INVALID_PARAMETER:
            again = core.get_memory_map(buff_size)
            self._note(f"GetMemoryMap(reused buffer {buff_size}) = {status_name(again.status)}")
            if again.status != S.SUCCESS:
                raise _Abort(again.status, f"exit_boot() failed!: GetMemoryMap retry {status_name(again.status)}")
            descs = list(again.descriptors)
            status = core.exit_boot_services(1, again.map_key)
            self._note(f"ExitBootServices(key {again.map_key}) retry = {status_name(status)}")
        if status != S.SUCCESS:
            raise _Abort(status, f"exit_boot() failed!: ExitBootServices returned {status_name(status)}")
        self.result.memory_map = tuple(descs)
        self.result.handoff = self._setup_e820(descs, table)

    def _allocate_unaccepted_bitmap(self, descs: list[MemoryDescriptor]) -> UnacceptedTable | None:
        """unaccepted_memory.c allocate_unaccepted_bitmap: nothing if the table is installed already (a loader
        before the stub ran it), else the table in ACPIReclaim pool, installed."""
        if "LINUX_EFI_UNACCEPTED_MEM_TABLE" in self.result.tables:
            return self.result.unaccepted_table
        unaccepted = [d for d in descs if d.type == M.EfiUnacceptedMemoryType]
        if not unaccepted:
            return None
        table = UnacceptedTable.covering(min(d.physical_start for d in unaccepted), max(d.end for d in unaccepted))
        status, addr = self._pool(M.EfiACPIReclaimMemory, table.encoded_size)
        self._note(f"AllocatePool(ACPIReclaim, table of {table.bitmap_bytes} bitmap bytes) = {status_name(status)}")
        if status != S.SUCCESS:
            raise _Abort(status, "Failed to allocate unaccepted memory config table")
        self.result.unaccepted_table, self.result.unaccepted_table_address = table, addr
        self._install_table("LINUX_EFI_UNACCEPTED_MEM_TABLE", addr)
        return table

    def _setup_e820(self, descs: list[MemoryDescriptor], table: UnacceptedTable | None) -> Handoff:
        """x86-stub.c setup_e820 after ExitBootServices: e820 from the final memory map, each type-15 descriptor
        through process_unaccepted_memory, whose own accepts follow Linux's rules (TdxAccepter); then the table
        as the kernel will read it."""
        core, cfg, res = self.core, self.config, self.result
        tdx = core.tdx
        t0 = core.clock_ns
        before = snapshot_stats(tdx.stats) if tdx is not None else None
        accepter = TdxAccepter(tdx) if tdx is not None else None
        accepted_now: list[tuple[int, int]] = []

        def arch_accept_memory(s: int, e: int) -> None:
            if accepter is not None:
                accepter.accept(s, e, vcpu=core.vcpu, actor=STUB_ACTOR)

        e820: list[E820Entry] = []
        type15: list[tuple[int, int]] = []
        try:
            for d in sorted(descs, key=lambda x: x.physical_start):
                kind = E820_OF_EFI.get(d.type)
                if kind is None:
                    continue
                if d.type == M.EfiUnacceptedMemoryType:
                    type15.append((d.physical_start, d.end))
                    if not cfg.unaccepted_memory_support:
                        continue
                    if table is not None:
                        accepted_now += process_unaccepted_memory(table, d.physical_start, d.end, arch_accept_memory)
                elif kind == E820Type.RAM and d.attribute & EFI_MEMORY_SP:
                    kind = E820Type.SOFT_RESERVED
                last = e820[-1] if e820 else None
                if last is not None and last.type == kind and last.end == d.physical_start:
                    e820[-1] = E820Entry(last.start, d.end - last.start, kind)  # setup_e820 merges neighbours
                else:
                    e820.append(E820Entry(d.physical_start, d.size, kind))
        except GuestCrash as exc:
            raise _Abort(S.DEVICE_ERROR, str(exc)) from None
        address = res.unaccepted_table_address
        if table is not None and tdx is not None and address is not None:
            tdx.memory.write(address, encode_unaccepted_table(table), actor=STUB_ACTOR, vcpu=core.vcpu)
        res.stub_accepted_bytes = sum(e - s for s, e in accepted_now)
        res.after_exit_ns = core.clock_ns - t0
        notes = []
        if type15 and not cfg.unaccepted_memory_support:
            notes.append(
                f"kernel without unaccepted-memory support: {human_size(sum(e - s for s, e in type15))} of "
                "type-15 memory left out of e820 (lost)"
            )
        loaded = [LoadedRange(name, *r) for name, r in (("kernel", res.kernel), ("initrd", res.initrd)) if r]
        return Handoff(
            e820,
            table,
            address if table is not None else None,
            merge_ranges(type15),
            sorted(loaded, key=lambda x: x.start),
            cfg.unaccepted_memory_support,
            accepted_now,
            stats_since(tdx.stats, before) if tdx is not None and before is not None else AcceptStats(),
            "model",
            notes,
        )

    # ----------------------------------------------------------------- helpers

    def _room(self) -> str:
        core = self.core
        return (
            f"largest free run {format_size(core.pages.largest_free_run())}, "
            f"{format_size(core.acceptor.unaccepted_bytes())} still unaccepted, "
            f"policy {core.policy.name}"
        )

    def _note(self, line: str) -> None:
        self.log.append(line)


def _entry_num_slots(md: MemoryDescriptor, size: int, align: int, alloc_min: int, alloc_max: int) -> int:
    """randomalloc.c get_entry_num_slots (soft-reserve handling off: EFI_MEMORY_SP memory is not conventional
    in OVMF's maps)."""
    if md.type != M.EfiConventionalMemory:
        return 0
    region_end = min(md.physical_start + md.number_of_pages * EFI_PAGE_SIZE - 1, alloc_max)
    if region_end < size:
        return 0
    first = align_up(max(md.physical_start, alloc_min), align)
    last = align_down(region_end - size + 1, align)
    if first > last:
        return 0
    return (last - first) // align + 1


def run_stub(core: DxeCore, config: StubConfig | None = None) -> StubResult:
    """Run the stub model against a DxeCore; the result says where it stopped and why."""
    return StubModel(core, config or StubConfig()).run()


def run_stub_after_sec(
    td: Td, sec: SecResult, config: StubConfig | None = None, policy: DxePolicy | None = None
) -> tuple[DxeCore, StubResult]:
    """DXE from SEC's HOB list, then the stub with nothing loaded in between (the firmware's end state when the
    loader's own copies do not matter)."""
    core = start_dxe(td, sec, policy)
    return core, run_stub(core, config)
