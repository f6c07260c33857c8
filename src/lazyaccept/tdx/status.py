"""TDX completion status helpers; the leaves, page levels and status codes are declared in lazyaccept.spec.tdx."""

from __future__ import annotations

from lazyaccept.spec.tdx import (
    ACCEPT_BUSY,
    ACCEPT_RCX_LEVEL_MASK,
    ACCEPT_RCX_RESERVED_MASK,
    ERROR_BIT,
    STATUS_CLASS_MASK,
    STATUS_DETAIL_MASK,
    TD_ATTR_SEPT_VE_DISABLE,
    OperandId,
    PageLevel,
    TdcallLeaf,
    TdxStatus,
)

__all__ = [
    "ACCEPT_BUSY",
    "ACCEPT_RCX_LEVEL_MASK",
    "ACCEPT_RCX_RESERVED_MASK",
    "ERROR_BIT",
    "STATUS_CLASS_MASK",
    "TD_ATTR_SEPT_VE_DISABLE",
    "OperandId",
    "PageLevel",
    "TdcallLeaf",
    "TdxStatus",
    "is_error",
    "status_class",
    "status_name",
]


def status_class(status: int) -> int:
    return status & STATUS_CLASS_MASK


def status_name(status: int) -> str:
    """'PAGE_SIZE_MISMATCH(detail=0x1)' for a full status value."""
    cls = status_class(status)
    detail = status & STATUS_DETAIL_MASK
    try:
        name = TdxStatus(cls).name
    except ValueError:
        name = f"{cls:#018x}"
    return f"{name}(detail={detail:#x})" if detail else name


def is_error(status: int) -> bool:
    return bool(status & ERROR_BIT)
