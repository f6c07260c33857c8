"""Intel TDX architectural numbers: TDCALL leaves, TDVMCALL sub-functions, Secure-EPT levels, completion status.

Checked against intel/tdx-module release TDX_1.5.01 (tag TDX_1.5.01): leaves in include/tdx_api_defs.h
(tdcall_leaf_opcode_t), status codes and operand ids in include/auto_gen/tdx_error_codes_defs.h, EPT levels in
src/common/x86_defs/x86_defs.h (ept_level_t), the TD attribute bit in include/tdx_api_defs.h (td_param_attributes_t).
Member names are the C names without their TDX_/TDG_/_LEAF/OPERAND_ID_ affixes. The TDVMCALL sub-functions are
not the module's (it passes them to the VMM): they come from the GHCI specification, as Linux spells them in
arch/x86/include/asm/shared/tdx.h.

A status is 64 bits: the class in bits 63:32, detail (operand id, or the Secure-EPT level where the walk stopped)
in the low bits. Callers compare after masking the low 16 bits, as edk2's TdAcceptPages does.
"""

from __future__ import annotations

from enum import IntEnum


class TdcallLeaf(IntEnum):
    """tdcall_leaf_opcode_t: RAX of a TDCALL; C names are TDG_<member>_LEAF."""

    VP_VMCALL = 0
    VP_INFO = 1
    MR_RTMR_EXTEND = 2
    VP_VEINFO_GET = 3
    MR_REPORT = 4
    VP_CPUIDVE_SET = 5
    MEM_PAGE_ACCEPT = 6
    VM_RD = 7
    VM_WR = 8
    VP_RD = 9
    VP_WR = 10
    SYS_RD = 11
    SYS_RDALL = 12
    SERVTD_RD = 18
    SERVTD_WR = 20
    MR_VERIFYREPORT = 22
    MEM_PAGE_ATTR_RD = 23
    MEM_PAGE_ATTR_WR = 24
    VP_ENTER = 25
    VP_INVEPT = 26
    VP_INVVPID = 27


class TdvmcallSubfunction(IntEnum):
    """R11 of TDG.VP.VMCALL with R10 = 0 (GHCI); Linux names the 0x1000x ones TDVMCALL_<member>, the others
    are VM-exit reasons (Linux's EXIT_REASON_<name>)."""

    # VM-exit reasons the guest asks for by number (Intel SDM vol. 3 appendix C; GHCI 1.5 section 3)
    EXIT_REASON_CPUID = 10
    EXIT_REASON_HLT = 12
    EXIT_REASON_IO_INSTRUCTION = 30
    EXIT_REASON_MSR_READ = 31
    EXIT_REASON_MSR_WRITE = 32
    EXIT_REASON_EPT_VIOLATION = 48  # #VE.RequestMMIO
    EXIT_REASON_WBINVD = 54
    GET_TD_VM_CALL_INFO = 0x10000
    MAP_GPA = 0x10001
    GET_QUOTE = 0x10002
    REPORT_FATAL_ERROR = 0x10003
    SETUP_EVENT_NOTIFY_INTERRUPT = 0x10004


class TdvmcallStatus(IntEnum):
    """TDG.VP.VMCALL completion status in R10 (GHCI 1.5 table 2-4; Linux arch/x86/include/asm/shared/tdx.h and
    edk2 MdePkg/Include/IndustryStandard/Tdx.h spell them TDVMCALL_STATUS_<member>). GPA_INUSE is GHCI's only."""

    SUCCESS = 0
    RETRY = 1
    INVALID_OPERAND = 0x8000000000000000
    GPA_INUSE = 0x8000000000000001
    ALIGN_ERROR = 0x8000000000000002


class PageLevel(IntEnum):
    """ept_level_t as TDG.MEM.PAGE.ACCEPT's RCX bits 2:0 encode it: LVL_PT (4K), LVL_PD (2M), LVL_PDPT (1G)."""

    L4K = 0  # LVL_PT
    L2M = 1  # LVL_PD
    L1G = 2  # LVL_PDPT

    @property
    def size(self) -> int:
        return 1 << (12 + 9 * int(self))


class TdxStatus(IntEnum):
    """Completion status classes (bits 63:32); C names are TDX_<member>."""

    SUCCESS = 0
    NON_RECOVERABLE_TD = 0x6000000200000000
    INTERRUPTED_RESUMABLE = 0x8000000300000000
    OPERAND_INVALID = 0xC000010000000000
    OPERAND_BUSY = 0x8000020000000000
    OPERAND_BUSY_HOST_PRIORITY = 0x8000020400000000  # module-internal: the dispatcher returns it as OPERAND_BUSY
    TD_FATAL = 0xE000060400000000
    EPT_WALK_FAILED = 0xC0000B0000000000
    EPT_ENTRY_NOT_PRESENT = 0xC0000B0300000000
    PAGE_ALREADY_ACCEPTED = 0x00000B0A00000000  # not an error class (bit 63 clear); detail = the leaf's level
    PAGE_SIZE_MISMATCH = 0xC0000B0B00000000
    NO_VALID_VE_INFO = 0xC000070400000000  # TDG.VP.VEINFO.GET with no #VE information stored
    # TDG.VM.RD/WR (include/auto_gen/tdx_error_codes_defs.h, TDX_1.5.01)
    METADATA_FIELD_ID_INCORRECT = 0xC0000C0000000000
    METADATA_FIELD_NOT_WRITABLE = 0xC0000C0100000000
    METADATA_FIELD_NOT_READABLE = 0xC0000C0200000000
    METADATA_FIELD_VALUE_NOT_VALID = 0xC0000C0300000000


class OperandId(IntEnum):
    """Operand ids in the detail bits of OPERAND_INVALID / OPERAND_BUSY; C names are OPERAND_ID_<member>."""

    RAX = 0
    RCX = 1
    RDX = 2
    SEPT_TREE = 146  # the Secure EPT tree's lock, which the VMM's SEPT operations take (not ACCEPT's detail)
    SEPT_ENTRY = 147
    SEPT = SEPT_TREE  # lazyaccept's earlier name
    RTMR = 168  # TDCS.RTMR, whose lock TDG.MR.RTMR.EXTEND takes


# TDG.MEM.PAGE.ACCEPT's busy status, TDX_1.5.01: tdg_mem_page_accept.c (src/td_dispatcher/vm_exits/) returns
# sept_lock_acquire_guest's error (src/common/helpers/tdx_locks.h: OPERAND_BUSY, or OPERAND_BUSY_HOST_PRIORITY when
# the VMM waits for the entry) plus OPERAND_ID_RCX, the page operand; tdx_td_dispatcher.c's stuck-host-priority
# handling turns HOST_PRIORITY into OPERAND_BUSY, keeping the detail. So the guest sees one value either way.
ACCEPT_BUSY = TdxStatus.OPERAND_BUSY | OperandId.RCX

STATUS_DETAIL_MASK = 0xFFFF
STATUS_CLASS_MASK = ~STATUS_DETAIL_MASK & ((1 << 64) - 1)
ERROR_BIT = 1 << 63

# TDG.MEM.PAGE.ACCEPT's RCX: GPA in bits 51:12, level in bits 2:0; bits 11:3 and 63:52 are reserved.
ACCEPT_RCX_LEVEL_MASK = 0x7
ACCEPT_RCX_RESERVED_MASK = (0xFFF << 52) | 0xFF8
ACCEPT_RCX_GPA_MASK = ((1 << 52) - 1) & ~0xFFF

# TD attribute bit 28 (SEPT_VE_DISABLE), set by QEMU by default: an access to a pending page exits to the VMM
# (fatal) instead of raising #VE in the guest.
TD_ATTR_SEPT_VE_DISABLE = 1 << 28

# RAX of a TDCALL (tdx_leaf_and_version_t): leaf in bits 15:0, version in 23:16; bits 63:24 reserved.
TDCALL_LEAF_MASK = 0xFFFF
TDCALL_VERSION_SHIFT = 16
TDCALL_VERSION_MASK = 0xFF
TDCALL_RAX_RESERVED_MASK = ((1 << 64) - 1) & ~0xFFFFFF

# TDG.VP.INFO's R10 (tdg_commands_available_t): bit 0 says TDG.SYS.RD is available.
VP_INFO_TDG_SYS_RD_AVAILABLE = 1 << 0

# Measurement registers (src/common/data_structures/td_control_structures.h, crypto/sha384.h).
NUM_RTMRS = 4
SHA384_SIZE = 48
SHA384_BLOCK = 128  # sha384_128B_block_t: what TDH.MEM.PAGE.ADD and TDH.MR.EXTEND feed the MRTD context
RTMR_EXTEND_ALIGN = 64  # TDG.MR.RTMR.EXTEND's RCX: the digest's GPA is 64-byte aligned
MR_EXTEND_CHUNK = 256  # TDH.MR.EXTEND measures 256 bytes at a 256-byte aligned GPA
MEM_PAGE_ADD_API_NAME = b"MEM.PAGE.ADD"
MR_EXTEND_API_NAME = b"MR.EXTEND"

# TDG.VP.VMCALL's RCX (tdvmcall_control_t): GPR_SELECT in bits 15:0 (bit i = GPR i in the order RAX, RCX,
# RDX, RBX, RSP, RBP, RSI, RDI, R8..R15), XMM_SELECT in 31:16, bits 63:32 reserved. RAX, RCX and RSP can
# never be passed.
VMCALL_GPR_ORDER = (
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip
VMCALL_GPR_FORBIDDEN = (1 << 0) | (1 << 1) | (1 << 4)
VMCALL_RCX_RESERVED_MASK = ((1 << 64) - 1) & ~0xFFFFFFFF

# GHCI TDG.VP.VMCALL status codes in R10 (Linux: TDVMCALL_STATUS_*).
TDVMCALL_STATUS_SUCCESS = 0
TDVMCALL_STATUS_INVALID_OPERAND = 0x8000000000000000

assert ACCEPT_RCX_GPA_MASK | ACCEPT_RCX_RESERVED_MASK | ACCEPT_RCX_LEVEL_MASK == (1 << 64) - 1
