"""TD-scope metadata as the guest reads and writes it with TDG.VM.RD / TDG.VM.WR.

Checked against intel/tdx-module tag TDX_1.5.01: src/td_dispatcher/vm_exits/tdg_vm_rd_wr.c (RCX must be 0, the
field ID must be a single element, R8 is written 0 first and then the value read, or the old value on a write),
src/common/metadata_handlers/metadata_generic.c (md_check_as_single_element_id: reserved bits and the
last-element/last-field counts must be 0; element size, INC_SIZE, WRITE_MASK_VALID and the context code are
ignored; a field is found by its class and field codes), metadata_td.c (md_td_read_element: a field with no guest
read mask is NOT_READABLE; md_td_write_element: the requested mask narrowed to the guest write mask, nothing left
is NOT_WRITABLE, requested bits outside the write mask must keep their value) and the guest masks of
include/auto_gen/tdr_tdcs_fields_lookup.c.

Only the fields a Linux TD guest touches are here (arch/x86/coco/tdx/tdx.c, 6.12: tdx_setup writes NOTIFY_ENABLES;
its SEPT #VE check reads CONFIG_FLAGS and TD_CTLS and may write TD_CTLS.PENDING_VE_DISABLE). Any other field ID
answers METADATA_FIELD_ID_INCORRECT, as one the module's lookup table does not hold.
"""

from __future__ import annotations

from dataclasses import dataclass

from lazyaccept.spec.tdx import OperandId, TdxStatus

U64 = (1 << 64) - 1
FIELD_CODE_MASK = (1 << 24) - 1
CLASS_SHIFT, CLASS_MASK = 56, 0x3F
# md_field_id_t: reserved_0 bits 31:24, reserved_1 bits 49:47, reserved_2 bit 55, reserved_3 bit 62; last
# element in field bits 37:34, last field in sequence bits 46:38.
SINGLE_ELEMENT_MUST_BE_ZERO = (0xFF << 24) | (0x7 << 47) | (1 << 55) | (1 << 62) | (0xF << 34) | (0x1FF << 38)
CONFIG_FLAGS_GPAW = 1 << 0  # config_flags_t (include/tdx_api_defs.h): GPAW 52
TD_CTLS_PENDING_VE_DISABLE = 1 << 0


@dataclass
class _Field:
    name: str
    guest_rd_mask: int
    guest_wr_mask: int
    value: int = 0


def _key(field_id: int) -> tuple[int, int]:
    return (field_id >> CLASS_SHIFT) & CLASS_MASK, field_id & FIELD_CODE_MASK


class TdMetadata:
    """The TD's TDCS fields the guest reaches, with the guest masks of TDX_1.5.01's lookup table."""

    def __init__(self, gpa_width: int):
        self._fields = {
            _key(0x9110000300000010): _Field("NOTIFY_ENABLES", 1, 1),
            # QEMU sets no flexible PENDING_VE and no NO_RBP_MOD; GPAW follows the TD's GPA width.
            _key(0x1110000300000016): _Field("CONFIG_FLAGS", U64, 0, CONFIG_FLAGS_GPAW if gpa_width == 52 else 0),
            _key(0x1110000300000017): _Field("TD_CTLS", U64, TD_CTLS_PENDING_VE_DISABLE),
        }
        self.writes: list[tuple[str, int, int]] = []  # (field, value, mask) as the guest wrote them

    def _lookup(self, field_id: int, vm_id: int) -> _Field | int:
        if vm_id != 0:
            return TdxStatus.OPERAND_INVALID | OperandId.RCX
        if field_id & SINGLE_ELEMENT_MUST_BE_ZERO:
            return TdxStatus.METADATA_FIELD_ID_INCORRECT
        found = self._fields.get(_key(field_id))
        return found if found is not None else TdxStatus.METADATA_FIELD_ID_INCORRECT

    def read(self, field_id: int, vm_id: int) -> tuple[int, int]:
        """TDG.VM.RD version 0: (status, R8)."""
        found = self._lookup(field_id & U64, vm_id)
        if isinstance(found, int):
            return found, 0
        if not found.guest_rd_mask:
            return TdxStatus.METADATA_FIELD_NOT_READABLE, 0
        return TdxStatus.SUCCESS, found.value & found.guest_rd_mask

    def write(self, field_id: int, vm_id: int, value: int, mask: int) -> tuple[int, int]:
        """TDG.VM.WR: (status, R8 = the old value on success)."""
        found = self._lookup(field_id & U64, vm_id)
        if isinstance(found, int):
            return found, 0
        combined = found.guest_wr_mask & mask
        if not combined:
            return TdxStatus.METADATA_FIELD_NOT_WRITABLE, 0
        if (found.value ^ value) & mask & ~found.guest_wr_mask:
            return TdxStatus.METADATA_FIELD_VALUE_NOT_VALID, 0
        old = found.value
        found.value = (old & ~combined) | (value & combined)
        self.writes.append((found.name, value & U64, mask & U64))
        return TdxStatus.SUCCESS, old & found.guest_rd_mask
