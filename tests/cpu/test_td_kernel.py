"""The kernel-side #VE sites of a TD vCPU (cpu/unicorn/td_kernel.py): IN/OUT decoded at their address, the first
IN/OUT after a synced RIP found by unicorn as a length decoder, the RDMSR/WRMSR candidates of an image."""

from __future__ import annotations

from lazyaccept.cpu.unicorn.td_kernel import (
    EXIT_REASON_CPUID,
    EXIT_REASON_IO_INSTRUCTION,
    CpuidSite,
    decode_io,
    instruction_at,
    msr_sites,
)


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
