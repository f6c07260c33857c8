"""The TDX module's MSR handling in a TD (TDX_1.5.01 msr_config_lookup.c, td_msr_access.c), as tdx/msr.py has it."""

from __future__ import annotations

import pytest

from lazyaccept.tdx.msr import MsrAction, msr_action


@pytest.mark.parametrize(
    ("index", "write", "action"),
    [
        (0xC0000080, False, MsrAction.NATIVE),  # EFER read: bitmap bit fixed 0
        (0xC0000080, True, MsrAction.MODULE),  # EFER write: the module checks it
        (0x10, False, MsrAction.NATIVE),  # TSC read
        (0x10, True, MsrAction.VE),  # TSC write
        (0x1B, False, MsrAction.VE),  # IA32_APIC_BASE: not in the table
        (0x802, False, MsrAction.VE),  # x2APIC ID: not in the table
        (0x80B, True, MsrAction.VIRTUAL_APIC),  # EOI: the virtual APIC page
        (0x813, False, MsrAction.VIRTUAL_APIC),  # ISR3
        (0x828, False, MsrAction.VE),  # ESR: past IRR7
        (0x6E0, True, MsrAction.VE),  # TSC deadline: #VE where the TD has it
        (0x1A0, False, MsrAction.MODULE),  # MISC_ENABLE read is virtualised
        (0x1A0, True, MsrAction.VE),
        (0xC1, False, MsrAction.GP),  # a PMC without PERFMON
        (0x8B, True, MsrAction.VE),  # BIOS_SIGN_ID / UCODE_REV: not in the table
        (0x1500, False, MsrAction.GP),  # LBR without XFAM LBR
    ],
)
def test_msr_action(index: int, write: bool, action: MsrAction) -> None:
    assert msr_action(index, write) == action
