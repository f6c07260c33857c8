"""Instruction decoding for KVM exits: the few instructions that fault at CPL3 and that the backend emulates."""

from __future__ import annotations

from dataclasses import dataclass

_GPR_BY_NUMBER = "rax rcx rdx rbx rsp rbp rsi rdi r8 r9 r10 r11 r12 r13 r14 r15".split()


@dataclass
class Insn:
    """An instruction the backend emulates: its length and what it is."""

    length: int
    kind: str  # "cpuid" | "rdmsr" | "wrmsr" | "mov_from_cr" | "mov_to_cr" | "cli" | "sti" | "hlt" | "in" | ...
    size: int = 0  # operand size for in/out
    port: int | None = None  # immediate port, None for DX
    cr: int = 0
    gpr: str = ""


_LEGACY_PREFIXES = frozenset({0x66, 0x67, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0xF0})


def _modrm_length(code: bytes, i: int) -> int:
    """Bytes taken by the ModRM at code[i] with its SIB and displacement (64-bit addressing)."""
    modrm = code[i]
    mod, rm = modrm >> 6, modrm & 7
    n = 1
    if mod != 3 and rm == 4:
        sib = code[i + 1]
        n += 1
        if mod == 0 and sib & 7 == 5:
            n += 4
    if mod == 1:
        n += 1
    elif mod == 2 or (mod == 0 and rm == 5):
        n += 4
    return n


def decode(code: bytes) -> Insn | None:
    """The few instructions that fault at CPL3 and that a firmware environment must emulate, else None."""
    try:
        i, opsize16, rex = 0, False, 0
        while code[i] in _LEGACY_PREFIXES:
            opsize16 |= code[i] == 0x66
            i += 1
        if 0x40 <= code[i] <= 0x4F:
            rex = code[i]
            i += 1
        op = code[i]
        wide = 2 if opsize16 else 4
        simple = {0xFA: "cli", 0xFB: "sti", 0xF4: "hlt"}
        if op in simple:
            return Insn(i + 1, simple[op])
        if op in (0xE4, 0xE5, 0xE6, 0xE7):
            return Insn(i + 2, "in" if op < 0xE6 else "out", 1 if op % 2 == 0 else wide, code[i + 1])
        if op in (0xEC, 0xED, 0xEE, 0xEF):
            return Insn(i + 1, "in" if op < 0xEE else "out", 1 if op % 2 == 0 else wide)
        if op != 0x0F:
            return None
        op2 = code[i + 1]
        two = {0xA2: "cpuid", 0x32: "rdmsr", 0x30: "wrmsr", 0x31: "rdtsc", 0x09: "wbinvd", 0x08: "invd"}
        if op2 in two:
            return Insn(i + 2, two[op2])
        if op2 in (0x20, 0x22):
            modrm = code[i + 2]
            cr = ((modrm >> 3) & 7) | (8 if rex & 4 else 0)
            gpr = _GPR_BY_NUMBER[(modrm & 7) | (8 if rex & 1 else 0)]
            return Insn(i + 3, "mov_from_cr" if op2 == 0x20 else "mov_to_cr", cr=cr, gpr=gpr)
        if op2 == 0x01 and code[i + 2] == 0xF9:
            return Insn(i + 3, "rdtscp")
        if op2 == 0x01 and code[i + 2] >> 6 != 3 and (code[i + 2] >> 3) & 7 == 7:
            return Insn(i + 2 + _modrm_length(code, i + 2), "invlpg")
    except IndexError:
        return None
    return None
