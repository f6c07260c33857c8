"""The real kernel after the Python firmware's handoff (`lazyaccept boot --run-kernel`): the TD the Python firmware
booted (the same TDX module, the same guest memory) is handed to a TD vCPU on unicorn (cpu/unicorn/td_machine.py)
in the state the EFI stub leaves at its jump, and the kernel runs on exactly as after edk2's own TDVF
(tdvf_run.run_kernel_on): the same KernelRun, the same outcomes (powered-off, kernel-panic, kernel-stopped).

What the Python firmware does not leave in guest memory, and so is made here as the real firmware has it:
- Guest memory. The Python firmware's memory is its CPU backend's (cpu/memory.py EmulatedBacking: pages mapped on
  first touch, the VMM's earlier writes in a sparse backing); the TD vCPU's is one host reservation behind every
  GPA (td_memory.HostRam). The bytes are copied over and the reservation becomes the TDX module's backing.
- Page tables. Its backend runs in long mode without paging (linear = physical), so no CR3 exists at the jump.
  The identity tables are built where edk2's TDX reset vector builds its own (PcdOvmfSecPageTablesBase, MEMFD
  0x800000, 6 pages: OvmfPkg/ResetVector/Ia32/PageTables64.asm, edk2-stable202502): PML4, one PDPT, four page
  directories mapping the first 4 GiB with 2 MiB pages, and (beyond what the reset vector maps) 1 GiB pages for
  the rest of the PDPT's 512 GiB so that RAM above 4 GiB is reachable too. The Python firmware reserves those pages
  as the real one does (firmware/profiles.py "SEC page tables": EfiACPIMemoryNVS), so the kernel never reuses them.
- GDT and IDT. It has neither in guest memory (its services are Python): GDTR and IDTR are empty, CS and SS hold
  flat 64-bit descriptors (edk2's CpuDxe selectors 0x38 and 0x30). Linux 6.12's startup_64
  (arch/x86/kernel/head_64.S) loads its own GDT and IDT (startup_64_setup_gdt_idt) before it loads a selector or
  can take an exception.
- Runtime services. Its services are Python behind `ret` thunks (cpu/machine.py), which no code on the TD vCPU can
  reach: each call the kernel makes into a thunk (SetVirtualAddressMap, through the 1:1 map of efi_mm) is answered
  EFI_UNSUPPORTED (as the Python firmware answers it: it has no SetVirtualAddressMap), and the kernel carries on
  without EFI runtime services ("Unable to switch EFI into virtual mode") and without freeing the EFI boot
  services memory (the real firmware's kernel frees it).
- The chipset. OVMF's PlatformInitLib programs ICH9's PMBASE and ACPI_EN and Q35's PCIEXBAR before it reads the
  VMM's ACPI tables; the Python firmware installs those tables for exactly that programming
  (firmware/drivers/acpi.py), so the VMM's PCI configuration is written the same way here (the kernel's S5 write
  reaches the ACPI PM block at the FADT's PM1a_CNT only then).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from unicorn import UC_HOOK_CODE, Uc
from unicorn import x86_const as X

from lazyaccept.cpu.machine import EfiMachine
from lazyaccept.cpu.memory import EmulatedBacking
from lazyaccept.cpu.unicorn.td_machine import TdMachine
from lazyaccept.cpu.unicorn.td_memory import HostRam
from lazyaccept.cpu.unicorn.td_state import (
    CR4_PAE,
    INITIAL_CR4,
    INITIAL_EFER,
    KERNEL_CODE64_FLAGS,
    KERNEL_DATA_FLAGS,
    MSR_EFER,
    RFLAGS_IF,
    enter_cpl0,
)
from lazyaccept.errors import ConfigError
from lazyaccept.firmware.drivers.acpi import OVMF_MMCONFIG, OVMF_PM_BASE
from lazyaccept.firmware.profiles import Edk2Profile
from lazyaccept.guest.handoff_check import side_effect_free_reader
from lazyaccept.spec.efi import EfiMemoryType as M
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.spec.efi import MemoryDescriptor
from lazyaccept.tdvf_run import KernelRun, TdvfOutcome, accepts_outside, kernel_outcome, run_kernel_on
from lazyaccept.units import PAGE_2M, PAGE_4K, GiB
from lazyaccept.vmm.devices.pci import ACPI_EN, LPC_ACPI_CNTL, LPC_PMBASE, MCH_PCIEXBAR
from lazyaccept.vmm.platform import Q35Platform
from lazyaccept.vmm.td import Td

SEC_PAGE_TABLES = "SEC page tables"  # firmware/profiles.py's name of PcdOvmfSecPageTablesBase/Size
PAGE_TABLE_BYTES = 6 * PAGE_4K  # PML4, PDPT, four page directories
# PageTables64.asm: PAGE_PDE_DIRECTORY_ATTR (present, R/W, accessed) for the upper levels, PAGE_PDE_LARGEPAGE_ATTR
# for the 2 MiB leaves (present, R/W, accessed, dirty, PS); its 5-level variant gives 1 GiB leaves the same bits.
TABLE_ATTR = 0x23
LEAF_ATTR = 0xE3
# edk2's X64 CR0 in DXE (PE, MP, ET, NE, WP, AM, PG) and CR4 (PAE, OSFXSR, OSXMMEXCPT, plus the TD's fixed MCE).
CR0_LONG_MODE = 0x80050033
CR4_LONG_MODE = INITIAL_CR4 | CR4_PAE | (1 << 9) | (1 << 10)
CODE64_SELECTOR, DATA_SELECTOR = 0x38, 0x30  # UefiCpuPkg/CpuDxe/CpuGdt.h LINEAR_CODE64_SEL, LINEAR_DATA64_SEL
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
# Memory types the kernel keeps for good: where the page tables may lie under it while startup_64 runs.
KEPT_TYPES = (M.EfiReservedMemoryType, M.EfiACPIMemoryNVS, M.EfiRuntimeServicesData, M.EfiRuntimeServicesCode)


@dataclass
class PythonFirmwareKernel:
    """What `lazyaccept boot --run-kernel` adds to a BootReport: the kernel's run, its outcome and how it began."""

    run: KernelRun
    outcome: TdvfOutcome
    detail: str
    page_tables: int  # CR3 at the jump
    console: str  # the serial console (the kernel's whole output: the Python firmware writes none there)
    outside_table: list[tuple[int, int]]  # the kernel's accepts not within the stub's unaccepted table
    # The firmware's services the kernel called into (their thunks), each answered EFI_UNSUPPORTED, sorted.
    runtime_calls: list[str]


def check_scenario(vcpus: int) -> None:
    """Refuse what the Python firmware cannot hand over, before the boot runs."""
    if vcpus != 1:
        raise ConfigError(
            f"--run-kernel after the Python firmware needs 1 vCPU, not {vcpus}: its APs are a model parked in no "
            "code, so the kernel could not wake them through the MADT's mailbox (`lazyaccept tdvf --run-kernel` runs "
            "edk2's own APs)"
        )


def run_kernel_after_python_firmware(
    td: Td,
    firmware: EfiMachine,
    profile: Edk2Profile,
    *,
    jump: int,
    kernel_load: int,
    init_size: int,
    memory_map: list[MemoryDescriptor],
    table_ranges: list[tuple[int, int]],
    max_wall_s: float,
    slide: int | None = None,
) -> PythonFirmwareKernel:
    """Go on in the kernel from the stub's jump to `jump` (startup_64, physical), with the registers the Python
    firmware's CPU holds there (RSI = boot_params), on the TD as the firmware left it. `table_ranges` are what the
    stub's unaccepted table marks pending (the kernel's accepts are checked against them). `slide`: the kernel's
    KASLR slide if known (0 with nokaslr): entering in the identity map, its phases cannot find it themselves."""
    backing = firmware.backing
    registers = {name: backing.backend.reg(name) for name in GPRS}
    rflags = backing.backend.reg("eflags") & ~RFLAGS_IF  # interrupts off, as at any EFI stub's jump
    _take_memory(td, backing)
    cr3 = _identity_page_tables(td, profile, memory_map)
    platform = Q35Platform.for_td(td)
    _program_chipset(platform)
    machine = TdMachine(td, platform=platform)
    _enter_long_mode(machine, cr3, jump, registers, rflags)
    runtime_calls = _answer_service_thunks(machine, firmware)
    image = b""
    if init_size:
        image = bytes(side_effect_free_reader(td.tdx)(kernel_load, init_size))
    run = run_kernel_on(machine, platform, max_wall_s, image, 0, slide)
    outcome, detail = kernel_outcome(run, td.tdx)
    return PythonFirmwareKernel(run, outcome, detail, cr3, platform.uart.text(), accepts_outside(run, table_ranges),
                                sorted(runtime_calls))


def _answer_service_thunks(machine: TdMachine, firmware: EfiMachine) -> set[str]:
    """A call into one of the Python firmware's service thunks returns EFI_UNSUPPORTED (module docstring); the
    services called are named. The thunks are reached at their physical addresses (VA = PA). Not counted: the
    hook runs again for the same `ret` when unicorn restarts there (a stop the vCPU asked for in between)."""
    calls: set[str] = set()
    names = [name for name, _fn, _nargs in firmware._services]
    base, size = firmware.thunk_base, firmware.thunk_size

    def on_thunk(uc: Uc, address: int, _size: int, _user: object) -> None:
        index = (address - base) // size
        calls.add(names[index] if index < len(names) else f"thunk {index}")
        uc.reg_write(X.UC_X86_REG_RAX, S.UNSUPPORTED)

    for vcpu in machine.vcpus:
        vcpu.uc.hook_add(UC_HOOK_CODE, on_thunk, None, base, firmware.thunk_end - 1)
    return calls


def _take_memory(td: Td, backing: EmulatedBacking) -> HostRam:
    """The Python firmware's guest memory copied into the TD vCPU's host reservation, made the TDX module's
    backing: first what the VMM wrote before the firmware's CPU existed, then every page the CPU mapped (the
    sparse bytes of a page the CPU maps move into it, so a mapped page's CPU copy is the current one)."""
    tdx = td.tdx
    if tdx.memory.backing is not backing:
        raise ConfigError("the Python firmware's memory is no longer the TD's backing: nothing to hand over")
    ram = HostRam.for_td(tdx)  # a fresh reservation (it adopts sparse backings only), now the TD's backing
    if backing.prior is not None:
        ram.adopt(backing.prior)
    for start, end, mapped in backing.mapped.runs(0, min(backing.mapped.limit, ram.size)):
        if not mapped:
            continue
        at = start
        for view in backing.backend.views(start, end - start):
            ram.write(at, view)
            at += len(view)
    return ram


def _identity_page_tables(td: Td, profile: Edk2Profile, memory_map: list[MemoryDescriptor]) -> int:
    """Build the reset vector's identity tables (module docstring) at the profile's SEC page tables; CR3."""
    reserved = profile.reservation(SEC_PAGE_TABLES)
    if reserved is None or reserved.size < PAGE_TABLE_BYTES:
        raise ConfigError(f"{profile.name} reserves no {PAGE_TABLE_BYTES // PAGE_4K} pages of SEC page tables: "
                          "no place for the page tables at the stub's jump")
    base, tdx = reserved.base, td.tdx
    if not tdx.is_accepted(base, PAGE_TABLE_BYTES):
        raise ConfigError(f"the SEC page tables at {base:#x} are not accepted memory")
    kept = [d for d in memory_map if d.type in KEPT_TYPES]
    if memory_map and not any(d.physical_start <= base and base + PAGE_TABLE_BYTES <= d.end for d in kept):
        raise ConfigError(f"the SEC page tables at {base:#x} are not reserved in the stub's memory map: the kernel "
                          "could reuse them")
    pml4, pdpt, directories = base, base + PAGE_4K, base + 2 * PAGE_4K
    tables = bytearray(PAGE_TABLE_BYTES)
    struct.pack_into("<Q", tables, 0, pdpt | TABLE_ATTR)
    for i in range(512):
        entry = directories + i * PAGE_4K | TABLE_ATTR if i < 4 else i * GiB | LEAF_ATTR
        struct.pack_into("<Q", tables, PAGE_4K + 8 * i, entry)
    for i in range(4 * 512):
        struct.pack_into("<Q", tables, 2 * PAGE_4K + 8 * i, i * PAGE_2M | LEAF_ATTR)
    tdx.memory.backing.write(base, bytes(tables))
    return pml4


def _program_chipset(platform: Q35Platform) -> None:
    """ICH9 PMBASE with ACPI_EN and Q35's PCIEXBAR (256 MiB, enabled) as OVMF's PlatformInitLib leaves them
    (OvmfPkg/Library/PlatformInitLib/Platform.c PlatformMiscInitialization and PciExBarInitialization)."""
    pci = platform.pci
    pci.config_write(0, 0x1F, 0, LPC_PMBASE, 4, OVMF_PM_BASE)
    pci.config_write(0, 0x1F, 0, LPC_ACPI_CNTL, 1, ACPI_EN)
    base, _size = OVMF_MMCONFIG
    pci.config_write(0, 0, 0, MCH_PCIEXBAR + 4, 4, base >> 32)
    pci.config_write(0, 0, 0, MCH_PCIEXBAR, 4, (base & 0xFFFFFFFF) | 1)  # length bits 00: 256 MiB; bit 0: enable


def _enter_long_mode(machine: TdMachine, cr3: int, rip: int, registers: dict[str, int], rflags: int) -> None:
    """vCPU 0 from the TDX module's initial state into the stub's: 64-bit long mode at CPL0 with paging on."""
    uc = machine.vcpus[0].uc
    uc.reg_write(X.UC_X86_REG_MSR, (MSR_EFER, INITIAL_EFER))  # SCE, LME, NXE: as the TDX module starts a vCPU
    uc.reg_write(X.UC_X86_REG_CR3, cr3)
    uc.reg_write(X.UC_X86_REG_CR4, CR4_LONG_MODE)
    uc.reg_write(X.UC_X86_REG_CR0, CR0_LONG_MODE)  # PG with LME: long mode active
    enter_cpl0(uc, (CODE64_SELECTOR, KERNEL_CODE64_FLAGS), (DATA_SELECTOR, KERNEL_DATA_FLAGS))
    for name, value in registers.items():
        uc.reg_write(getattr(X, f"UC_X86_REG_{name.upper()}"), value)
    uc.reg_write(X.UC_X86_REG_EFLAGS, rflags)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0, 0, 0))
    uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0, 0))
    uc.reg_write(X.UC_X86_REG_RIP, rip)

