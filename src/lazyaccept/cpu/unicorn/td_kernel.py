"""What a TD vCPU adds once the Linux kernel runs on it (tdvf_run --run-kernel): port I/O, CPUID of the hypervisor
leaves and the MSRs the TDX module does not run natively raise #VE (or #GP, or are answered by the virtual APIC),
as tdx/msr.py says. The other CPUID leaves are answered by the vCPU's CPUID hook directly, as the TDX module
virtualises them without an exit (the firmware's choice, td_vcpu.py).

RDMSR/WRMSR have no unicorn hook at all (unicorn 2.1.4 refuses UC_X86_INS_RDMSR/WRMSR hooks and runs them against
its own CPU model), so the kernel's image is searched for their opcodes (0F 32, 0F 30) when it starts to run and a
code hook is put on each match (`msr_sites`: a few hundred in Debian's 6.12; one inside another instruction never
fires, since code hooks run at instruction starts only). The hook stops before the instruction when the TDX module
would not let it run natively; the vCPU then raises what the module would.

In a TD the TDX module turns IN/OUT into a #VE (exit reason 30, IO_INSTRUCTION) and the guest's own handler
emulates the instruction with TDG.VP.VMCALL<Instruction.IO> (Linux 6.12 arch/x86/coco/tdx/tdx.c handle_io; before
its IDT is up, tdx_early_handle_ve from do_early_exception). edk2's TDVF never executes IN/OUT in a TD (its IoLib
calls TDVMCALL itself), so this is only armed after the handoff.

unicorn cannot raise an exception from its IN/OUT hooks: the hook runs inside the instruction, the rest of the
translation block goes on after it, and a register write there does not abort it (checked on unicorn 2.1.4). Nor
does the hook know the instruction's address at CPL0: RIP there is the last PC the block synced (its start, or an
earlier instruction that may fault), since QEMU's gen_check_io syncs it only when CPL > IOPL. The GPRs are current
(the I/O helper is called with the TCG globals saved). A code hook on the instruction's own address does run
before it, and an emu_stop there leaves RIP on it. So a site is handled in two ways:
- first time (`IoSites.discovered`): the IN/OUT hook saves the CPU context and stops; the few instructions left in
  the block run with a dummy value. The instruction is found by decoding forward from the synced RIP (a scratch
  unicorn as the length decoder, `instruction_at`: a block has no branch before its end); the context is restored
  with RIP on it (the rest of the block's register effects are gone; its memory stores are not, but they are made
  again when the block runs after the #VE: in Debian's 6.12 the block after an IN/OUT is register moves, a
  compare and a jump, and the one after a CPUID (native_cpuid) stores the four outputs, rewritten then with the
  emulated values; a block that read back what it stored would not be rolled back soundly). Then the #VE is
  delivered at the instruction, and a code hook is put on its address;
- every later time: that code hook stops before the instruction and the #VE is delivered at it.
CPUID is found the same way from its own hook (where RIP is exact: QEMU syncs it before the CPUID helper), for the
hypervisor leaves only.

RDRAND and RDSEED run natively in a TD, and unicorn answers them from the host's random source (QEMU's
helper_rdrand), so two runs of the same boot diverged: the kernel seeds its CRNG, the SLUB freelist order and its
hash tables from them, and its instruction count, hence its virtual time and console timestamps, followed. They
have no unicorn hook either, so their sites in the kernel's image get code hooks as the MSRs' do (`random_sites`)
and the vCPU answers them from a fixed-seed generator (`GuestEntropy`): a run repeats.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_MODE_64, UC_PROT_ALL, Uc, UcError
from unicorn import x86_const as X

from lazyaccept.tdx.tdcall import VeInfo

EXIT_REASON_IO_INSTRUCTION = 30  # VM-exit basic reasons (SDM vol. 3C, appendix C)
EXIT_REASON_CPUID = 10
CPUID_LENGTH = 2  # 0F A2
# The hypervisor CPUID range: the TDX module always raises #VE for it (Linux 6.12 arch/x86/coco/tdx/tdx.c
# handle_cpuid forwards exactly this range to the VMM); the leaves it virtualises it answers itself.
HYPERVISOR_LEAVES = range(0x40000000, 0x50000000)
OPERAND_SIZE_PREFIX = 0x66
# SDM vol. 3C, table 28-5 (exit qualification for I/O instructions): bits 2:0 size - 1, bit 3 direction (1 = IN),
# bit 4 string, bit 5 REP, bit 6 operand encoding (1 = immediate port), bits 31:16 the port.
IO_QUAL_IN = 1 << 3
IO_QUAL_IMMEDIATE = 1 << 6
_IN_OPCODES = {0xE4: True, 0xE5: True, 0xEC: False, 0xED: False}  # opcode -> the port is an immediate byte
_OUT_OPCODES = {0xE6: True, 0xE7: True, 0xEE: False, 0xEF: False}


@dataclass(frozen=True)
class IoSite:
    """One IN/OUT instruction of the guest, as decoded at its address."""

    address: int
    length: int
    is_in: bool
    size: int  # 1, 2 or 4 bytes
    port: int | None  # the immediate port, or None: DX

    def ve_info(self, rdx: int) -> VeInfo:
        port = self.port if self.port is not None else rdx & 0xFFFF
        qual = (self.size - 1) | (IO_QUAL_IN if self.is_in else 0) | (port << 16)
        qual |= IO_QUAL_IMMEDIATE if self.port is not None else 0
        return VeInfo(EXIT_REASON_IO_INSTRUCTION, exit_qualification=qual, instruction_length=self.length)


@dataclass(frozen=True)
class CpuidSite:
    """A CPUID instruction of the guest: #VE when it asks for a hypervisor leaf."""

    address: int
    length: int = CPUID_LENGTH

    @staticmethod
    def ve_info(leaf: int) -> VeInfo | None:
        if leaf & 0xFFFFFFFF not in HYPERVISOR_LEAVES:
            return None
        return VeInfo(EXIT_REASON_CPUID, instruction_length=CPUID_LENGTH)


Site = IoSite | CpuidSite


def decode_io(address: int, code: bytes) -> IoSite | None:
    """IN/OUT (not INS/OUTS: the kernel uses no string port I/O on these paths) at `address`, from its bytes."""
    at = 0
    wide16 = False
    while at < len(code) and code[at] == OPERAND_SIZE_PREFIX:
        wide16, at = True, at + 1
    if at >= len(code):
        return None
    opcode = code[at]
    table = _IN_OPCODES if opcode in _IN_OPCODES else _OUT_OPCODES if opcode in _OUT_OPCODES else None
    if table is None:
        return None
    immediate = table[opcode]
    if immediate and at + 1 >= len(code):
        return None
    size = 1 if opcode & 1 == 0 else (2 if wide16 else 4)
    port = code[at + 1] if immediate else None
    return IoSite(address, at + 1 + (1 if immediate else 0), opcode in _IN_OPCODES, size, port)


SCRATCH_BASE = 0x100000
MAX_BLOCK = 0x1000  # a translation block stays within a page or two; the decode never goes beyond this


def instruction_at(code: bytes, start: int, wanted: Callable[[int, bytes], IoSite | None]) -> IoSite | None:
    """The first instruction, decoding forward from `start` (an instruction boundary) through `code` (guest bytes
    from `start` on), that `wanted` recognises. unicorn decodes: a code hook reports each instruction's size and
    stops before it runs, and the sweep goes on after it. Nothing is executed."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    size = (len(code) + 0xFFF) & ~0xFFF
    uc.mem_map(SCRATCH_BASE, size + 0x1000, UC_PROT_ALL)
    uc.mem_write(SCRATCH_BASE, code)
    last: list[tuple[int, int]] = []

    def hook(u: Uc, address: int, length: int, _user: object) -> None:
        last.append((address, length))
        u.emu_stop()

    uc.hook_add(UC_HOOK_CODE, hook)
    pc = SCRATCH_BASE
    while pc < SCRATCH_BASE + len(code):
        last.clear()
        try:
            uc.emu_start(pc, SCRATCH_BASE + size + 0x1000)
        except UcError:
            return None
        if not last:
            return None
        address, length = last[0]
        offset = address - SCRATCH_BASE
        site = wanted(start + offset, code[offset : offset + 4])
        if site is not None:
            return site
        pc = address + length
    return None


EXIT_REASON_EPT_VIOLATION = 48
# EPT-violation exit qualification (SDM vol. 3C, table 28-7): bit 0 a read, bit 1 a write, bit 7 the linear address
# is valid, bit 8 the access was to the translated address (not a paging-structure entry).
EPT_QUAL_READ, EPT_QUAL_WRITE, EPT_QUAL_GLA_VALID, EPT_QUAL_TRANSLATED = 1, 1 << 1, 1 << 7, 1 << 8


def mmio_ve(gla: int, gpa: int, write: bool) -> VeInfo:
    """The #VE the TDX module raises for a load/store to a shared GPA the VMM left unmapped (MMIO): exit reason
    EPT_VIOLATION with the guest's linear and physical address (shared bit included). The guest's handler decodes
    the instruction itself (Linux 6.12 handle_mmio: the instruction length of an EPT-violation #VE is undefined)."""
    qual = (EPT_QUAL_WRITE if write else EPT_QUAL_READ) | EPT_QUAL_GLA_VALID | EPT_QUAL_TRANSLATED
    return VeInfo(EXIT_REASON_EPT_VIOLATION, exit_qualification=qual, gla=gla, gpa=gpa)


_GPRS = "rax rcx rdx rbx rsp rbp rsi rdi r8 r9 r10 r11 r12 r13 r14 r15".split()
_PREFIXES = frozenset({0x66, 0x67, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0xF0})
# The MMIO instructions a TD guest's #VE handler decodes (Linux 6.12 arch/x86/lib/insn-eval.c insn_decode_mmio):
# MOV r/m <-> r (88, 89, 8A, 8B), MOV r/m, imm (C6, C7), MOVZX (0F B6, 0F B7), MOVSX (0F BE, 0F BF).
_MMIO_ONE_BYTE = {0x88: 0, 0x89: 0, 0x8A: 0, 0x8B: 0, 0xC6: 1, 0xC7: 4}  # opcode -> immediate bytes
_MMIO_TWO_BYTE = frozenset({0xB6, 0xB7, 0xBE, 0xBF})


def mmio_operand_address(code: bytes, rip: int, reg: Callable[[str], int]) -> int | None:
    """The linear address of the memory operand of the MMIO instruction `code` at `rip` (registers by name from
    `reg`, "fs_base"/"gs_base" for a segment override), or None for an instruction insn_decode_mmio refuses.
    The TDX module reports the exact GPA of the access in the #VE; unicorn's TLB fill sees only the page."""
    i, rex, opsize16, addr32, segment = 0, 0, False, False, ""
    while i < len(code) and code[i] in _PREFIXES:
        opsize16 |= code[i] == 0x66
        addr32 |= code[i] == 0x67
        segment = {0x64: "fs_base", 0x65: "gs_base"}.get(code[i], segment)
        i += 1
    if i < len(code) and 0x40 <= code[i] <= 0x4F:
        rex, i = code[i], i + 1
    if i >= len(code):
        return None
    if code[i] in _MMIO_ONE_BYTE:
        imm = _MMIO_ONE_BYTE[code[i]]
        imm = 2 if imm == 4 and opsize16 else imm
        i += 1
    elif code[i] == 0x0F and i + 1 < len(code) and code[i + 1] in _MMIO_TWO_BYTE:
        imm, i = 0, i + 2
    else:
        return None
    if i >= len(code):
        return None
    modrm = code[i]
    mod, rm = modrm >> 6, modrm & 7
    i += 1
    if mod == 3:
        return None
    address = 0
    if rm == 4:
        if i >= len(code):
            return None
        sib = code[i]
        i += 1
        scale, index, base = sib >> 6, ((sib >> 3) & 7) | (rex & 2) << 2, (sib & 7) | (rex & 1) << 3
        if index != 4:
            address += reg(_GPRS[index]) << scale
        if base & 7 == 5 and mod == 0:
            address += int.from_bytes(code[i : i + 4], "little", signed=True)
            i += 4
        else:
            address += reg(_GPRS[base])
    elif rm == 5 and mod == 0:
        disp = int.from_bytes(code[i : i + 4], "little", signed=True)
        i += 4
        address = rip + i + imm + disp  # RIP-relative: from the next instruction
    else:
        address += reg(_GPRS[rm | (rex & 1) << 3])
    if mod == 1:
        address += int.from_bytes(code[i : i + 1], "little", signed=True)
    elif mod == 2:
        address += int.from_bytes(code[i : i + 4], "little", signed=True)
    if segment:
        address += reg(segment)
    return address & (0xFFFFFFFF if addr32 else (1 << 64) - 1)


RDMSR, WRMSR = b"\x0f\x32", b"\x0f\x30"
EXIT_REASON_MSR_READ, EXIT_REASON_MSR_WRITE = 31, 32
MSR_INSTRUCTION_LENGTH = 2


def msr_sites(image: bytes, base: int) -> dict[int, bool]:
    """Every address in the kernel's image (mapped at `base`) where RDMSR (False) or WRMSR (True) may start."""
    sites: dict[int, bool] = {}
    for opcode, write in ((RDMSR, False), (WRMSR, True)):
        at = image.find(opcode)
        while at >= 0:
            sites[base + at] = write
            at = image.find(opcode, at + 1)
    return sites


PAUSE = b"\xf3\x90"  # cpu_relax(): every spin-wait loop of the kernel's (include/asm/vdso/processor.h rep_nop)


def pause_sites(image: bytes, base: int) -> list[int]:
    """Every address in the kernel's image (mapped at `base`) where a PAUSE may start: where a vCPU spinning on
    another one gives the host thread away (td_machine). A match inside another instruction never fires."""
    sites = []
    at = image.find(PAUSE)
    while at >= 0:
        sites.append(base + at)
        at = image.find(PAUSE, at + 1)
    return sites


class VeSites:
    """The guest's IN/OUT and CPUID sites found so far, each with a code hook that stops before it."""

    def __init__(self, uc: Uc, on_site: object, read: Callable[[int], int] | None = None):
        self.uc = uc
        self._on_site = on_site
        self._read = read if read is not None else lambda reg: int(uc.reg_read(reg))
        self.sites: dict[int, Site] = {}
        self.discovered = 0  # sites found by the IN/OUT or CPUID hook (the first execution, rolled back)

    def add(self, site: Site) -> None:
        if site.address in self.sites:
            return
        self.sites[site.address] = site
        self.uc.hook_add(UC_HOOK_CODE, self._on_site, None, site.address, site.address)
        binding: object = self.uc
        # The translation already made of the instruction has no call to the new hook: drop it.
        binding.ctl_remove_cache(site.address, site.address + site.length)  # type: ignore[attr-defined]

    def ve_info(self, site: Site) -> VeInfo | None:
        """The #VE the TDX module raises for `site` with the registers as they are now, or None (it runs)."""
        if isinstance(site, IoSite):
            return site.ve_info(self._read(X.UC_X86_REG_RDX))
        return site.ve_info(self._read(X.UC_X86_REG_RAX))

    def io_count(self) -> int:
        return sum(isinstance(site, IoSite) for site in self.sites.values())


# RDRAND (0F C7 /6) and RDSEED (0F C7 /7), register operand only (SDM vol. 2B), after an optional 66 and REX.
RANDOM_OPCODE = b"\x0f\xc7"
_RANDOM_REGS = "rax rcx rdx rbx rsp rbp rsi rdi r8 r9 r10 r11 r12 r13 r14 r15".split()


@dataclass(frozen=True)
class RandomSite:
    """One RDRAND/RDSEED as decoded at its address."""

    length: int
    register: str  # the 64-bit register holding the destination
    size: int  # operand bytes: 2, 4 or 8
    seed: bool  # RDSEED


def decode_random(code: bytes) -> RandomSite | None:
    at, size, rex = 0, 4, 0
    if code[at : at + 1] == b"\x66":
        size, at = 2, at + 1
    if at < len(code) and 0x40 <= code[at] <= 0x4F:
        rex, at = code[at], at + 1
    if code[at : at + 2] != RANDOM_OPCODE or at + 2 >= len(code):
        return None
    modrm = code[at + 2]
    if modrm >> 6 != 3 or (modrm >> 3) & 7 not in (6, 7):
        return None
    size = 8 if rex & 8 else size
    return RandomSite(at + 3, _RANDOM_REGS[(modrm & 7) | (rex & 1) << 3], size, (modrm >> 3) & 7 == 7)


def random_sites(image: bytes, base: int) -> list[int]:
    """Every address in the kernel's image (mapped at `base`) where a RDRAND/RDSEED may start, prefixes included
    (a match inside another instruction never fires: code hooks run at instruction starts only)."""
    sites: set[int] = set()
    at = image.find(RANDOM_OPCODE)
    while at >= 0:
        for start in range(max(at - 2, 0), at + 1):
            if decode_random(image[start : at + 3]) is not None:
                sites.add(base + start)
        at = image.find(RANDOM_OPCODE, at + 1)
    return sorted(sites)


class GuestEntropy:
    """RDRAND/RDSEED values for a run that repeats: splitmix64 (Steele, Lea, Flood 2014) from a fixed seed."""

    def __init__(self, seed: int = 0x6C617A7961636365):  # "lazyacce"
        self.state = seed

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & (1 << 64) - 1
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (1 << 64) - 1
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (1 << 64) - 1
        return z ^ (z >> 31)
