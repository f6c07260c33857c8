"""The kernel-side #VE sites of a TD vCPU (cpu/unicorn/td_kernel.py): IN/OUT decoded at their address, the first
IN/OUT after a synced RIP found by unicorn as a length decoder, the RDMSR/WRMSR and RDRAND/RDSEED candidates of an
image."""

from __future__ import annotations

import struct

from unicorn import x86_const as X

from lazyaccept.cpu.unicorn.td_kernel import (
    EPT_QUAL_GLA_VALID,
    EPT_QUAL_READ,
    EPT_QUAL_TRANSLATED,
    EXIT_REASON_CPUID,
    EXIT_REASON_EPT_VIOLATION,
    EXIT_REASON_IO_INSTRUCTION,
    EXIT_REASON_MSR_READ,
    CpuidSite,
    GuestEntropy,
    decode_io,
    decode_random,
    instruction_at,
    mmio_operand_address,
    msr_sites,
    pause_sites,
    random_sites,
)
from lazyaccept.cpu.unicorn.td_machine import TdMachine
from lazyaccept.cpu.unicorn.td_vcpu import VIRTUAL_TSC_HZ
from lazyaccept.records import StopKind
from lazyaccept.units import MiB
from lazyaccept.vmm.platform import Q35Platform
from lazyaccept.vmm.td import TdConfig, build_td


def test_decode_io_forms() -> None:
    out_dx = decode_io(0x1000, b"\xee")  # out dx, al
    assert out_dx is not None and (out_dx.is_in, out_dx.size, out_dx.port, out_dx.length) == (False, 1, None, 1)
    in16 = decode_io(0x1000, b"\x66\xed")  # in ax, dx
    assert in16 is not None and (in16.is_in, in16.size, in16.length) == (True, 2, 2)
    out_imm = decode_io(0x1000, b"\xe6\x80")  # out 0x80, al
    assert out_imm is not None and (out_imm.port, out_imm.length) == (0x80, 2)
    assert decode_io(0x1000, b"\x90") is None
    info = in16.ve_info(0x3FD)
    # SDM table 28-5: size - 1, IN, DX encoding, the port in bits 31:16
    assert info.exit_reason == EXIT_REASON_IO_INSTRUCTION and info.exit_qualification == 1 | 1 << 3 | 0x3FD << 16
    assert out_imm.ve_info(0).exit_qualification == 1 << 6 | 0x80 << 16 and info.instruction_length == 2


def test_instruction_at_skips_bytes_inside_other_instructions() -> None:
    # out dx,eax (at 0) | and ecx,2 | lea edx,[rcx+0xcfc] (its 0x0c... no I/O opcode) | in ax,dx | jmp
    code = bytes.fromhex("ef83e1028d91fc0c000066ede98d000000")
    base = 0xFFFFFFFF81C40BD2

    def wanted_in16(address: int, head: bytes):  # type: ignore[no-untyped-def]
        site = decode_io(address, head)
        return site if site is not None and site.is_in and site.size == 2 else None

    site = instruction_at(code[1:], base + 1, wanted_in16)
    assert site is not None and site.address == base + 10 and site.length == 2
    # 0xed inside "lea ... 0xcfc" would not be an instruction start: a mov with an 0xec immediate is skipped too
    assert instruction_at(bytes.fromhex("b8ec000000ee"), 0x2000, lambda a, h: decode_io(a, h)).address == 0x2005


def test_cpuid_site_raises_ve_for_the_hypervisor_leaves_only() -> None:
    assert CpuidSite.ve_info(0x40000000) is not None and CpuidSite.ve_info(0x4FFFFFFF) is not None
    assert CpuidSite.ve_info(0x40000000).exit_reason == EXIT_REASON_CPUID  # type: ignore[union-attr]
    assert CpuidSite.ve_info(1) is None and CpuidSite.ve_info(0x50000000) is None


def test_msr_sites() -> None:
    assert msr_sites(b"\x90\x0f\x32\x90\x0f\x30\x0f\x32", 0x1000) == {0x1001: False, 0x1004: True, 0x1006: False}


def test_pause_sites() -> None:
    # every F3 90, overlapping ones too (a match inside another instruction never fires)
    assert pause_sites(b"\xf3\x90\x90\xf3\xf3\x90", 0x1000) == [0x1000, 0x1004]
    assert pause_sites(b"\x90\x90", 0) == []


def test_random_sites_and_their_decoding() -> None:
    # rdrand rax (REX.W); rdseed eax; rdrand r9w (66 REX.B); 0F C7 /1 (cmpxchg8b, memory operand): not one
    site = decode_random(bytes.fromhex("480fc7f0"))
    assert site is not None and (site.length, site.register, site.size, site.seed) == (4, "rax", 8, False)
    site = decode_random(bytes.fromhex("0fc7f8"))
    assert site is not None and (site.length, site.register, site.size, site.seed) == (3, "rax", 4, True)
    site = decode_random(bytes.fromhex("66410fc7f1"))
    assert site is not None and (site.length, site.register, site.size) == (5, "r9", 2)
    assert decode_random(bytes.fromhex("0fc70e")) is None
    # every start that decodes: the prefixed form, and the bare one inside it (never reached: not an instruction start)
    assert random_sites(bytes.fromhex("90480fc7f0900fc7f8"), 0x1000) == [0x1001, 0x1002, 0x1006]


# ----------------------------------------------------------------- a TD vCPU in kernel mode, on a hand-made guest
# Page tables at 1 MiB (2 MiB identity page at 0; VA 4 MiB -> GPA 0xFEC00000 | shared bit, MMIO), IDT, code, GDT,
# stack: accepted 4 KiB pages. A 32-bit stub switches to long mode as firmware does; the #VE handler reads its
# information (TDG.VP.VEINFO.GET), stores RCX (exit reason), RDX (qualification), R9 (GPA) at 0x105000 and ends the
# run with an unknown TDCALL leaf the test's `until` stops at.
IDT, CODE, HANDLER, STUB, OUT_AREA, GDT = 0x103000, 0x104000, 0x104100, 0x104200, 0x105000, 0x106000
STACK_TOP = 0x107FF0
MMIO_VA = 0x400000
END_LEAF = 99


def _tdcall() -> bytes:
    return b"\x66\x0f\x01\xcc"


def _mov_to_abs(reg_rex_modrm: str, address: int) -> bytes:
    return bytes.fromhex(reg_rex_modrm) + struct.pack("<I", address)


def _kernel_mode_vcpu(code: bytes) -> tuple[TdMachine, memoryview]:
    td = build_td(TdConfig(ram_size=256 * MiB))
    machine = TdMachine(td, platform=Q35Platform.for_td(td), until=lambda leaf, _: "end" if leaf == END_LEAF else None)
    for page in range(0x100000, 0x108000, 0x1000):
        td.tdx.accept_page(page, 0)
    machine.mapping.sync()
    ram, shared = machine.ram.view, machine.mapping.shared_bit

    def put(gpa: int, data: bytes) -> None:
        ram[gpa : gpa + len(data)] = data

    put(0x100000, struct.pack("<Q", 0x101003))
    put(0x101000, struct.pack("<Q", 0x102003))
    put(0x102000, struct.pack("<QQQ", 0x83, 0, 0xFEC00000 | shared | 0x83))
    put(IDT + 20 * 16, struct.pack("<HHBBHII", HANDLER & 0xFFFF, 0x08, 0, 0x8E, HANDLER >> 16, 0, 0))
    put(CODE, code)
    put(HANDLER, bytes.fromhex("b803000000") + _tdcall() + _mov_to_abs("48890c25", OUT_AREA)
        + _mov_to_abs("48891425", OUT_AREA + 8) + _mov_to_abs("4c890c25", OUT_AREA + 16)
        + bytes.fromhex("b8") + struct.pack("<I", END_LEAF) + _tdcall())
    # cr4.PAE, cr3, EFER.LME|NXE, cr0.PG, ljmp 0x08:CODE
    put(STUB, bytes.fromhex("0f20e083c8200f22e0b8000010000f22d8b9800000c00f320d000900000f300f20c00d000000800f22c0ea")
        + struct.pack("<IH", CODE, 0x08))
    put(GDT, struct.pack("<QQQ", 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF))
    uc = machine.vcpus[0].uc
    uc.reg_write(X.UC_X86_REG_GDTR, (0, GDT, 23, 0))
    uc.reg_write(X.UC_X86_REG_IDTR, (0, IDT, 0xFFF, 0))
    uc.reg_write(X.UC_X86_REG_RIP, STUB)
    uc.reg_write(X.UC_X86_REG_RSP, STACK_TOP)
    machine.enter_kernel(0, code, CODE)  # the "kernel image": its RDMSR/WRMSR sites get their code hooks
    return machine, ram


def _outputs(ram: memoryview) -> tuple[int, int, int]:
    reason, qual, gpa = struct.unpack_from("<QQQ", ram, OUT_AREA)
    return reason, qual, gpa


def test_a_load_from_a_shared_gpa_with_no_memory_is_an_mmio_ve() -> None:
    machine, ram = _kernel_mode_vcpu(_mov_to_abs("488b0425", MMIO_VA + 0x140000))  # mov rax, [TPM TIS window]
    result = machine.run(max_wall_s=10)
    assert result.stop.kind == StopKind.REQUESTED, result.stop
    reason, qual, gpa = _outputs(ram)
    assert reason == EXIT_REASON_EPT_VIOLATION and gpa == 0xFED40000 | machine.mapping.shared_bit
    assert qual == EPT_QUAL_READ | EPT_QUAL_GLA_VALID | EPT_QUAL_TRANSLATED
    assert result.registers["r8"] == MMIO_VA + 0x140000  # the linear address (TDG.VP.VEINFO.GET's R8)


def test_an_out_met_the_first_time_is_rolled_back_to_a_ve() -> None:
    # mov edx, 0x3f8; mov eax, 0x41; out dx, al; mov eax, 0x42; then zeros: add [rax], al, a read of page 0, which
    # is not accepted (the rest of the block, rolled back: no termination for it)
    machine, ram = _kernel_mode_vcpu(bytes.fromhex("baf8030000b841000000eeb842000000"))
    result = machine.run(max_wall_s=10)
    assert result.stop.kind == StopKind.REQUESTED, result.stop
    reason, qual, _ = _outputs(ram)
    assert reason == EXIT_REASON_IO_INSTRUCTION and qual == 0x3F8 << 16  # 1 byte, OUT, port in DX
    assert result.registers["rax"] == END_LEAF  # the handler's; the frame has RAX 0x41 and RIP at the OUT
    frame_rip = struct.unpack_from("<Q", ram, STACK_TOP - 40)[0]
    assert frame_rip == CODE + 10 and CODE + 10 in machine.vcpus[0].io_sites.sites  # type: ignore[union-attr]
    assert machine.platform is not None and machine.platform.uart.output == b""  # the VMM never saw it


def test_cpuid_of_a_hypervisor_leaf_is_a_ve_and_other_leaves_are_answered() -> None:
    # mov eax, 1; cpuid (answered: no #VE); mov eax, 0x40000000; cpuid (#VE: exit reason 10)
    machine, ram = _kernel_mode_vcpu(bytes.fromhex("b8010000000fa2b8000000400fa2"))
    result = machine.run(max_wall_s=10)
    assert result.stop.kind == StopKind.REQUESTED, result.stop
    assert _outputs(ram)[0] == EXIT_REASON_CPUID
    assert struct.unpack_from("<Q", ram, STACK_TOP - 40)[0] == CODE + 12  # the frame's RIP: the second CPUID
    assert machine.vcpus[0].progress.ve == {"exit 10": 1}


def test_rdmsr_of_an_msr_outside_the_modules_table_is_a_ve() -> None:
    # mov ecx, 0xc0000080; rdmsr (EFER: native); mov ecx, 0x1b; rdmsr (IA32_APIC_BASE: #VE, exit reason 31)
    machine, ram = _kernel_mode_vcpu(bytes.fromhex("b9800000c00f32b91b0000000f32"))
    result = machine.run(max_wall_s=10)
    assert result.stop.kind == StopKind.REQUESTED, result.stop
    assert _outputs(ram)[0] == EXIT_REASON_MSR_READ
    assert struct.unpack_from("<Q", ram, STACK_TOP - 40)[0] == CODE + 12
    assert machine.vcpus[0].msr_events == {"rdmsr 0xc0000080 native": 1, "rdmsr 0x1b ve": 1}


def _rdtsc_and_cpuid15() -> tuple[tuple[int, ...], int]:
    # rdtsc; mov [OUT], eax; mov [OUT+4], edx; rdtsc; mov [OUT+8], eax; mov [OUT+12], edx;
    # mov eax, 0x15; xor ecx, ecx; cpuid; mov [OUT+16], eax; mov [OUT+20], ebx; mov [OUT+24], ecx; then the end
    code = b"\x0f\x31" + _mov_to_abs("890425", OUT_AREA) + _mov_to_abs("891425", OUT_AREA + 4)
    code += b"\x0f\x31" + _mov_to_abs("890425", OUT_AREA + 8) + _mov_to_abs("891425", OUT_AREA + 12)
    code += b"\xb8\x15\x00\x00\x00\x31\xc9\x0f\xa2" + _mov_to_abs("890425", OUT_AREA + 16)
    code += _mov_to_abs("891c25", OUT_AREA + 20) + _mov_to_abs("890c25", OUT_AREA + 24)
    code += b"\xb8" + struct.pack("<I", END_LEAF) + _tdcall()
    machine, ram = _kernel_mode_vcpu(code)
    result = machine.run(max_wall_s=10)
    assert result.stop.kind == StopKind.REQUESTED, result.stop
    return struct.unpack_from("<QQIII", ram, OUT_AREA), machine.vcpus[0].tdx.clocks_ns[0]


def test_rdtsc_reads_the_virtual_clock_at_the_frequency_cpuid_15_reports() -> None:
    (first, second, denominator, numerator, crystal), clock_ns = _rdtsc_and_cpuid15()
    assert (denominator, crystal) == (1, 25_000_000) and numerator * crystal == VIRTUAL_TSC_HZ
    # The virtual clock (the TDX module's), not the host's: never going back (both reads sit in one translation
    # block, which the instruction count charges as a whole), no later than the end of the run, and the same run
    # gives the same values.
    assert 0 < first <= second <= clock_ns * VIRTUAL_TSC_HZ // 1_000_000_000
    assert _rdtsc_and_cpuid15()[0][:2] == (first, second)


def test_the_mmio_ve_carries_the_exact_address_of_the_access() -> None:
    # mov rbx, MMIO_VA + 0x140000; mov eax, [rbx + 0x10] (an I/O APIC style IOWIN read at offset 0x10 of its page)
    code = b"\x48\xbb" + struct.pack("<Q", MMIO_VA + 0x140000) + b"\x8b\x43\x10"
    machine, ram = _kernel_mode_vcpu(code)
    result = machine.run(max_wall_s=10)
    assert result.stop.kind == StopKind.REQUESTED, result.stop
    reason, _, gpa = _outputs(ram)
    assert reason == EXIT_REASON_EPT_VIOLATION and gpa == 0xFED40010 | machine.mapping.shared_bit
    assert result.registers["r8"] == MMIO_VA + 0x140010


def test_mmio_operand_address_decodes_what_insn_decode_mmio_takes() -> None:
    regs = {"rbx": 0x1000, "r9": 0x20, "rsi": 3, "gs_base": 0x5000}
    reg = regs.__getitem__
    assert mmio_operand_address(bytes.fromhex("8b4310"), 0, reg) == 0x1010  # mov eax, [rbx+0x10]
    assert mmio_operand_address(bytes.fromhex("41894104"), 0, reg) == 0x24  # mov [r9+4], eax
    assert mmio_operand_address(bytes.fromhex("0fb7 04 b3".replace(" ", "")), 0, reg) == 0x100C  # movzx [rbx+rsi*4]
    assert mmio_operand_address(bytes.fromhex("c705 10000000 01000000".replace(" ", "")), 0x100, reg) == 0x11A
    assert mmio_operand_address(bytes.fromhex("65 8b 0425 08000000".replace(" ", "")), 0, reg) == 0x5008
    assert mmio_operand_address(bytes.fromhex("01c3"), 0, reg) is None  # add ebx, eax: not an MMIO instruction


def _rdrand_twice() -> tuple[int, int, int]:
    # cmp eax, eax (ZF=1, CF=0); rdrand rax; setc cl; setz dl; rdseed ebx; store rax, ebx, and cl | dl << 8
    # (mov ch, dl); then the end
    code = bytes.fromhex("39c0480fc7f00f92c10f94c20fc7fb") + _mov_to_abs("48890425", OUT_AREA)
    code += _mov_to_abs("48891c25", OUT_AREA + 8) + bytes.fromhex("88d5") + _mov_to_abs("66890c25", OUT_AREA + 16)
    code += b"\xb8" + struct.pack("<I", END_LEAF) + _tdcall()
    machine, ram = _kernel_mode_vcpu(code)
    result = machine.run(max_wall_s=10)
    assert result.stop.kind == StopKind.REQUESTED, result.stop
    assert machine.vcpus[0].random_reads == 2
    rax, rbx, flags = struct.unpack_from("<QQH", ram, OUT_AREA)
    return rax, rbx, flags


def test_rdrand_and_rdseed_answer_from_the_runs_generator() -> None:
    rax, rbx, flags = _rdrand_twice()
    entropy = GuestEntropy()
    assert (rax, rbx) == (entropy.next(), entropy.next() & 0xFFFFFFFF)  # a 32-bit destination: zero-extended
    assert flags == 1  # CF set (a valid value), ZF cleared
    assert _rdrand_twice() == (rax, rbx, flags)  # unicorn's own RDRAND reads the host's random source
