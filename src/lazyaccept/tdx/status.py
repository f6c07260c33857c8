"""TDCALL leaves, page levels and completion status codes with their detail bits.

Values from the TDX module's error-code definitions (intel/tdx-module, include/auto_gen/tdx_error_codes_defs.h)
and edk2 MdePkg/Include/IndustryStandard/Tdx.h. A status is a 64-bit value: the class in bits 63:32 and
detail (operand id, or the Secure-EPT level where the walk stopped) in the low bits. Callers compare after
masking the low 16 bits, as edk2's TdAcceptPages does.
"""

from __future__ import annotations

from enum import IntEnum


class TdcallLeaf(IntEnum):
    VP_INFO = 1  # TDG.VP.INFO
    MEM_PAGE_ACCEPT = 6  # TDG.MEM.PAGE.ACCEPT


class PageLevel(IntEnum):
    """Secure-EPT level as the ACCEPT operand encodes it in RCX bits 2:0."""

    L4K = 0
    L2M = 1
    L1G = 2

    @property
    def size(self) -> int:
        return 1 << (12 + 9 * int(self))


class TdxStatus(IntEnum):
    SUCCESS = 0
    PAGE_ALREADY_ACCEPTED = 0x00000B0A00000000  # not an error class (bit 63 clear)
    PAGE_SIZE_MISMATCH = 0xC0000B0B00000000
    OPERAND_INVALID = 0xC000010000000000
    OPERAND_BUSY = 0x8000020000000000


class OperandId(IntEnum):
    """Operand ids carried in the detail bits of OPERAND_INVALID / OPERAND_BUSY."""

    RAX = 0
    RCX = 1
    SEPT = 0x92  # the Secure EPT tree, whose lock a concurrent ACCEPT or the VMM may hold


STATUS_CLASS_MASK = ~0xFFFF & ((1 << 64) - 1)
ERROR_BIT = 1 << 63

# TDG.MEM.PAGE.ACCEPT's RCX: GPA in bits 51:12, level in bits 2:0; bits 11:3 and 63:52 are reserved.
ACCEPT_RCX_LEVEL_MASK = 0x7
ACCEPT_RCX_RESERVED_MASK = (0xFFF << 52) | 0xFF8

# TD attribute bit 28, set by QEMU by default: an access to a pending page exits to the VMM (fatal) instead
# of raising #VE in the guest.
TD_ATTR_SEPT_VE_DISABLE = 1 << 28


def status_class(status: int) -> int:
    return status & STATUS_CLASS_MASK


def status_name(status: int) -> str:
    """'PAGE_SIZE_MISMATCH(detail=0x1)' for a full status value."""
    cls = status_class(status)
    detail = status & 0xFFFF
    try:
        name = TdxStatus(cls).name
    except ValueError:
        name = f"{cls:#018x}"
    return f"{name}(detail={detail:#x})" if detail else name


def is_error(status: int) -> bool:
    return bool(status & ERROR_BIT)
