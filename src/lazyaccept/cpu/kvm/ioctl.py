"""/dev/kvm from Python: the structures and ioctls of linux/kvm.h (x86) that the KVM backend uses, and
anonymous host memory for guest RAM.

Only ctypes and ioctl; no QEMU, no compiled extension (one 148-byte machine-code trampoline excepted: KVM_RUN with
the host thread's TSC disabled, see tsc_guarded_run). Structure layouts are declared once each with their C
names, with their sizes checked at import so that a mistake fails loudly instead of corrupting a vCPU.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from dataclasses import dataclass

KVM_DEVICE = "/dev/kvm"
KVM_API_VERSION = 12  # the only stable API version since Linux 2.6.22

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.restype = ctypes.c_int
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.restype = ctypes.c_int
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mprotect.restype = ctypes.c_int
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.pthread_sigmask.restype = ctypes.c_int
_libc.pthread_sigmask.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_libc.prctl.restype = ctypes.c_int
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_MAP_FAILED = ctypes.c_void_p(-1).value
_MAP_NORESERVE = 0x4000
_MADV_DONTNEED = 4
_MADV_HUGEPAGE = 14
U64 = ctypes.c_uint64


class KvmError(OSError):
    """A KVM ioctl or host-memory call failed; the message names the call."""


# ------------------------------------------------------------------------------------------------ ioctl numbers
def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (0xAE << 8) | nr


def _io(nr: int) -> int:
    return _ioc(0, nr, 0)


def _iow(nr: int, size: int) -> int:
    return _ioc(1, nr, size)


def _ior(nr: int, size: int) -> int:
    return _ioc(2, nr, size)


def _iowr(nr: int, size: int) -> int:
    return _ioc(3, nr, size)


# ------------------------------------------------------------------------------------------------ structures
# Class names are the C names of linux/kvm.h.
class kvm_regs(ctypes.Structure):
    _fields_ = [(n, U64) for n in ("rax rbx rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags").split()]


class kvm_segment(ctypes.Structure):
    _fields_ = [
        ("base", U64),
        ("limit", ctypes.c_uint32),
        ("selector", ctypes.c_uint16),
        ("type", ctypes.c_uint8),
        ("present", ctypes.c_uint8),
        ("dpl", ctypes.c_uint8),
        ("db", ctypes.c_uint8),
        ("s", ctypes.c_uint8),
        ("l", ctypes.c_uint8),
        ("g", ctypes.c_uint8),
        ("avl", ctypes.c_uint8),
        ("unusable", ctypes.c_uint8),
        ("padding", ctypes.c_uint8),
    ]


class kvm_dtable(ctypes.Structure):
    _fields_ = [("base", U64), ("limit", ctypes.c_uint16), ("padding", ctypes.c_uint16 * 3)]


class kvm_sregs(ctypes.Structure):
    _fields_ = [
        ("cs", kvm_segment),
        ("ds", kvm_segment),
        ("es", kvm_segment),
        ("fs", kvm_segment),
        ("gs", kvm_segment),
        ("ss", kvm_segment),
        ("tr", kvm_segment),
        ("ldt", kvm_segment),
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        ("cr0", U64),
        ("cr2", U64),
        ("cr3", U64),
        ("cr4", U64),
        ("cr8", U64),
        ("efer", U64),
        ("apic_base", U64),
        ("interrupt_bitmap", U64 * 4),
    ]


class kvm_fpu(ctypes.Structure):
    _fields_ = [
        ("fpr", ctypes.c_uint8 * 128),
        ("fcw", ctypes.c_uint16),
        ("fsw", ctypes.c_uint16),
        ("ftwx", ctypes.c_uint8),
        ("pad1", ctypes.c_uint8),
        ("last_opcode", ctypes.c_uint16),
        ("last_ip", U64),
        ("last_dp", U64),
        ("xmm", ctypes.c_uint8 * 256),
        ("mxcsr", ctypes.c_uint32),
        ("pad2", ctypes.c_uint32),
    ]


class kvm_signal_mask(ctypes.Structure):
    """struct kvm_signal_mask with the kernel's 8-byte sigset (linux/kvm.h; api.rst, KVM_SET_SIGNAL_MASK)."""

    _fields_ = [("len", ctypes.c_uint32), ("sigset", ctypes.c_uint8 * 8)]


# struct kvm_xsave (asm/kvm.h): __u32 region[1024], then as many more bytes as KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)
# on the VM says (KVM_GET_XSAVE2 writes and KVM_SET_XSAVE reads that many). The XSAVE standard format: the legacy
# FXSAVE region first (FCW at 0, MXCSR at 24, XMM0-15 at 160, 16 bytes each), the XSAVE header at 512.
XSAVE_SIZE = 4096
XSAVE_FCW, XSAVE_MXCSR, XSAVE_XMM0, XSAVE_XSTATE_BV = 0, 24, 160, 512


class kvm_userspace_memory_region(ctypes.Structure):
    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("guest_phys_addr", U64),
        ("memory_size", U64),
        ("userspace_addr", U64),
    ]


class kvm_cpuid_entry2(ctypes.Structure):
    _fields_ = [
        ("function", ctypes.c_uint32),
        ("index", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("eax", ctypes.c_uint32),
        ("ebx", ctypes.c_uint32),
        ("ecx", ctypes.c_uint32),
        ("edx", ctypes.c_uint32),
        ("padding", ctypes.c_uint32 * 3),
    ]


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1  # sic, the C name


class kvm_msr_entry(ctypes.Structure):
    _fields_ = [("index", ctypes.c_uint32), ("reserved", ctypes.c_uint32), ("data", U64)]


def _cpuid2(n: int) -> type[ctypes.Structure]:
    class kvm_cpuid2(ctypes.Structure):
        _fields_ = [("nent", ctypes.c_uint32), ("padding", ctypes.c_uint32), ("entries", kvm_cpuid_entry2 * n)]

    return kvm_cpuid2


def _msrs(n: int) -> type[ctypes.Structure]:
    class kvm_msrs(ctypes.Structure):
        _fields_ = [("nmsrs", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("entries", kvm_msr_entry * n)]

    return kvm_msrs


class kvm_run_io(ctypes.Structure):
    _fields_ = [
        ("direction", ctypes.c_uint8),
        ("size", ctypes.c_uint8),
        ("port", ctypes.c_uint16),
        ("count", ctypes.c_uint32),
        ("data_offset", U64),
    ]


class kvm_run_mmio(ctypes.Structure):
    _fields_ = [
        ("phys_addr", U64),
        ("data", ctypes.c_uint8 * 8),
        ("len", ctypes.c_uint32),
        ("is_write", ctypes.c_uint8),
    ]


class kvm_run_internal(ctypes.Structure):
    _fields_ = [("suberror", ctypes.c_uint32), ("ndata", ctypes.c_uint32), ("data", U64 * 16)]


class kvm_run_union(ctypes.Union):
    _fields_ = [
        ("io", kvm_run_io),
        ("mmio", kvm_run_mmio),
        ("internal", kvm_run_internal),
        ("fail_entry_reason", U64),
        ("padding", ctypes.c_char * 256),
    ]


class kvm_run(ctypes.Structure):
    _fields_ = [
        ("request_interrupt_window", ctypes.c_uint8),
        ("immediate_exit", ctypes.c_uint8),
        ("padding1", ctypes.c_uint8 * 6),
        ("exit_reason", ctypes.c_uint32),
        ("ready_for_interrupt_injection", ctypes.c_uint8),
        ("if_flag", ctypes.c_uint8),
        ("flags", ctypes.c_uint16),
        ("cr8", U64),
        ("apic_base", U64),
        ("u", kvm_run_union),
    ]


for _struct, _size in (
    (kvm_regs, 144),
    (kvm_sregs, 312),
    (kvm_fpu, 416),
    (kvm_signal_mask, 12),
    (kvm_userspace_memory_region, 32),
    (kvm_cpuid_entry2, 40),
    (kvm_msr_entry, 16),
):
    if ctypes.sizeof(_struct) != _size:  # pragma: no cover - a layout mistake must not reach a vCPU
        raise ImportError(f"{_struct.__name__} is {ctypes.sizeof(_struct)} bytes, linux/kvm.h says {_size}")

KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, 8)
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, ctypes.sizeof(kvm_userspace_memory_region))
KVM_SET_TSS_ADDR = _io(0x47)
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, ctypes.sizeof(kvm_regs))
KVM_SET_REGS = _iow(0x82, ctypes.sizeof(kvm_regs))
KVM_GET_SREGS = _ior(0x83, ctypes.sizeof(kvm_sregs))
KVM_SET_SREGS = _iow(0x84, ctypes.sizeof(kvm_sregs))
KVM_GET_MSRS = _iowr(0x88, 8)
KVM_SET_MSRS = _iow(0x89, 8)
KVM_GET_FPU = _ior(0x8C, ctypes.sizeof(kvm_fpu))
KVM_SET_FPU = _iow(0x8D, ctypes.sizeof(kvm_fpu))
KVM_SET_SIGNAL_MASK = _iow(0x8B, 4)  # the ioctl number encodes the 4-byte header of kvm_signal_mask
KVM_SET_CPUID2 = _iow(0x90, 8)
KVM_GET_XSAVE = _ior(0xA4, XSAVE_SIZE)
KVM_SET_XSAVE = _iow(0xA5, XSAVE_SIZE)
KVM_GET_XSAVE2 = _ior(0xCF, XSAVE_SIZE)

KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_XSAVE2 = 208

KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_IO_OUT = 1
EXIT_NAMES = {
    KVM_EXIT_UNKNOWN: "UNKNOWN",
    KVM_EXIT_EXCEPTION: "EXCEPTION",
    KVM_EXIT_IO: "IO",
    KVM_EXIT_DEBUG: "DEBUG",
    KVM_EXIT_HLT: "HLT",
    KVM_EXIT_MMIO: "MMIO",
    KVM_EXIT_SHUTDOWN: "SHUTDOWN (triple fault)",
    KVM_EXIT_FAIL_ENTRY: "FAIL_ENTRY",
    KVM_EXIT_INTR: "INTR",
    KVM_EXIT_INTERNAL_ERROR: "INTERNAL_ERROR",
}

_EINTR = 4


def _ioctl(fd: int, request: int, arg: ctypes.Structure | ctypes.Array | int = 0, what: str = "") -> int:
    """One ioctl other than KVM_RUN, retried when a signal interrupts it (ctypes does not retry as os.* calls do
    since PEP 475; KVM_CREATE_VM, for one, returns EINTR under a busy interval timer)."""
    pointer = ctypes.c_void_p(arg) if isinstance(arg, int) else ctypes.cast(ctypes.byref(arg), ctypes.c_void_p)
    while True:
        result = _libc.ioctl(fd, request, pointer)
        if result >= 0:
            return result
        errno = ctypes.get_errno()
        if errno != _EINTR:
            raise KvmError(errno, f"KVM ioctl {what or hex(request)}: {os.strerror(errno)}")


# ------------------------------------------------------------------------------------------------ host memory
class HostMemory:
    """Anonymous host memory reserved but not committed (MAP_NORESERVE): pages exist once touched.

    The start is aligned to `align` so that KVM can back guest 2 MiB pages with host huge pages (it requires the
    guest and host addresses to agree modulo the huge-page size), and MADV_HUGEPAGE asks for them.
    """

    def __init__(self, size: int, align: int = 1 << 21, hugepages: bool = True):
        self.size = size
        reserve = size + align
        raw = _libc.mmap(
            None,
            reserve,
            mmap.PROT_READ | mmap.PROT_WRITE,
            mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE,
            -1,
            0,
        )
        if raw in (None, _MAP_FAILED):
            errno = ctypes.get_errno()
            raise KvmError(errno, f"mmap of {size:#x} bytes of guest RAM: {os.strerror(errno)}")
        self.address = (raw + align - 1) & ~(align - 1)
        # Give back the unaligned head and tail so that only `size` bytes stay reserved.
        if self.address > raw:
            _libc.munmap(ctypes.c_void_p(raw), self.address - raw)
        tail = raw + reserve - (self.address + size)
        if tail:
            _libc.munmap(ctypes.c_void_p(self.address + size), tail)
        if hugepages:
            _libc.madvise(ctypes.c_void_p(self.address), size, _MADV_HUGEPAGE)  # advisory: ignore failure
        self.view = memoryview((ctypes.c_char * size).from_address(self.address)).cast("B")

    def discard(self, offset: int, size: int) -> None:
        """Drop whole pages in [offset, offset + size): they read as zero again and cost no host memory."""
        if _libc.madvise(ctypes.c_void_p(self.address + offset), size, _MADV_DONTNEED) != 0:
            errno = ctypes.get_errno()
            raise KvmError(errno, f"madvise(MADV_DONTNEED) at {offset:#x}+{size:#x}: {os.strerror(errno)}")

    def close(self) -> None:
        if self.view is not None:
            self.view.release()
            _libc.munmap(ctypes.c_void_p(self.address), self.size)
            self.view = None  # type: ignore[assignment]


# ------------------------------------------------------------------------------------------------ signals, host TSC
_SIG_BLOCK, _SIG_SETMASK = 0, 2
PR_GET_TSC, PR_SET_TSC, PR_TSC_ENABLE, PR_TSC_SIGSEGV = 25, 26, 1, 2
_EBADF = 9


def thread_signal_mask() -> int:
    """The calling thread's blocked signals as the kernel's 64-bit sigset (bit n-1 for signal n)."""
    sigset = (ctypes.c_uint8 * 128)()  # glibc's sigset_t; the kernel's is its first 8 bytes
    if _libc.pthread_sigmask(_SIG_BLOCK, None, sigset) != 0:  # pragma: no cover - it cannot fail with these args
        raise KvmError(0, "pthread_sigmask")
    return int.from_bytes(bytes(sigset[:8]), "little")


def host_tsc_mode() -> int:
    """prctl(PR_GET_TSC) of the calling thread: PR_TSC_ENABLE or PR_TSC_SIGSEGV."""
    mode = ctypes.c_int(0)
    if _libc.prctl(PR_GET_TSC, ctypes.addressof(mode), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise KvmError(errno, f"prctl(PR_GET_TSC): {os.strerror(errno)}")
    return mode.value


# KVM_RUN with the host thread's TSC disabled (kvm-pvm forwards a guest's CPL3 RDTSC fault only then), and no
# instruction of this process able to read the TSC meanwhile: raw syscalls, no libc, every signal blocked from
# before the TSC is disabled until after it is enabled again. Called through ctypes, which drops the GIL for the
# whole call, so no Python code runs on this thread in between. KVM_SET_SIGNAL_MASK gives the vCPU the thread's
# usual mask during KVM_RUN itself, so a signal still ends KVM_RUN with EINTR; its handler runs only once the
# old mask is back, after PR_TSC_ENABLE.
#   long tsc_guarded_run(int vcpu_fd /* rdi */, u64 masks[2] /* rsi: [0] all ones, [1] receives the old mask */)
#   returns KVM_RUN's result (a negative errno on failure), or a failed syscall's before it.
# x86-64 Linux syscall numbers: rt_sigprocmask 14, ioctl 16, prctl 157; a syscall changes only rax, rcx, r11.
_TSC_GUARDED_RUN = bytes.fromhex(
    "53"  # push rbx
    "4154"  # push r12
    "4189fc"  # mov r12d, edi                ; vcpu fd
    "4889f3"  # mov rbx, rsi                 ; masks
    "b80e000000"  # mov eax, 14              ; rt_sigprocmask(SIG_BLOCK, &masks[0], &masks[1], 8)
    "31ff"  # xor edi, edi
    "4889de"  # mov rsi, rbx
    "488d5308"  # lea rdx, [rbx+8]
    "41ba08000000"  # mov r10d, 8
    "0f05"  # syscall
    "4885c0"  # test rax, rax
    "756c"  # jnz done                       ; nothing changed yet: return its error
    "b89d000000"  # mov eax, 157             ; prctl(PR_SET_TSC, PR_TSC_SIGSEGV, 0, 0, 0)
    "bf1a000000"  # mov edi, 26
    "be02000000"  # mov esi, 2
    "31d2"  # xor edx, edx
    "4531d2"  # xor r10d, r10d
    "4531c0"  # xor r8d, r8d
    "0f05"  # syscall
    "4885c0"  # test rax, rax
    "7530"  # jnz restore                    ; TSC still enabled: only the mask to restore
    "b810000000"  # mov eax, 16              ; ioctl(fd, KVM_RUN, 0)
    "4489e7"  # mov edi, r12d
    "be80ae0000"  # mov esi, 0xae80
    "31d2"  # xor edx, edx
    "0f05"  # syscall
    "4989c4"  # mov r12, rax                 ; KVM_RUN's result
    "b89d000000"  # mov eax, 157             ; prctl(PR_SET_TSC, PR_TSC_ENABLE, 0, 0, 0)
    "bf1a000000"  # mov edi, 26
    "be01000000"  # mov esi, 1
    "31d2"  # xor edx, edx
    "4531d2"  # xor r10d, r10d
    "4531c0"  # xor r8d, r8d
    "0f05"  # syscall
    "4c89e0"  # mov rax, r12
    "4989c4"  # restore: mov r12, rax        ; the result to return
    "b80e000000"  # mov eax, 14              ; rt_sigprocmask(SIG_SETMASK, &masks[1], NULL, 8)
    "bf02000000"  # mov edi, 2
    "488d7308"  # lea rsi, [rbx+8]
    "31d2"  # xor edx, edx
    "41ba08000000"  # mov r10d, 8
    "0f05"  # syscall
    "4c89e0"  # mov rax, r12
    "415c"  # done: pop r12
    "5b"  # pop rbx
    "c3"  # ret
)
_TSC_GUARDED_RUN_TYPE = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_int, ctypes.c_void_p)
_tsc_guard: tuple[object, str] | None = None  # (the callable or None, why not), made once per process
_tsc_guard_lock = threading.Lock()


def tsc_guarded_run() -> tuple[object, str]:
    """The trampoline above as a ctypes function, or (None, why it is not available): an anonymous page written
    and then made PROT_READ|PROT_EXEC (a host policy may refuse executable anonymous memory), checked once by a
    call on an invalid fd that must return EBADF with the TSC enabled and the signal mask as it was."""
    global _tsc_guard
    with _tsc_guard_lock:
        if _tsc_guard is None:
            _tsc_guard = _make_tsc_guard()
        return _tsc_guard


def _make_tsc_guard() -> tuple[object, str]:
    size = mmap.PAGESIZE
    page = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if page in (None, _MAP_FAILED):
        return None, f"mmap of the KVM_RUN trampoline page: {os.strerror(ctypes.get_errno())}"
    ctypes.memmove(page, _TSC_GUARDED_RUN, len(_TSC_GUARDED_RUN))
    if _libc.mprotect(ctypes.c_void_p(page), size, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
        errno = ctypes.get_errno()
        _libc.munmap(ctypes.c_void_p(page), size)
        return None, f"an executable page for the KVM_RUN trampoline was refused: {os.strerror(errno)}"
    function = _TSC_GUARDED_RUN_TYPE(page)  # the page stays mapped for the life of the process
    masks = (U64 * 2)((1 << 64) - 1, 0)
    before = thread_signal_mask()
    result = function(-1, ctypes.addressof(masks))
    if result != -_EBADF or host_tsc_mode() != PR_TSC_ENABLE or thread_signal_mask() != before:
        return None, f"the KVM_RUN trampoline's check failed (result {result}, TSC mode {host_tsc_mode()})"
    return function, ""


@dataclass
class CpuidEntry:
    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


class Kvm:
    """An open /dev/kvm."""

    def __init__(self, path: str = KVM_DEVICE):
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise KvmError(exc.errno, f"{path}: {exc.strerror}") from None
        try:
            version = _ioctl(self.fd, KVM_GET_API_VERSION, what="KVM_GET_API_VERSION")
            if version != KVM_API_VERSION:
                raise KvmError(0, f"{path}: KVM API version {version}, this code speaks {KVM_API_VERSION}")
        except BaseException:
            os.close(self.fd)
            raise

    def check_extension(self, cap: int) -> int:
        return _ioctl(self.fd, KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")

    def supported_cpuid(self) -> list[CpuidEntry]:
        n = 256
        while True:
            table = _cpuid2(n)()
            table.nent = n
            try:
                _ioctl(self.fd, KVM_GET_SUPPORTED_CPUID, table, "KVM_GET_SUPPORTED_CPUID")
            except KvmError as exc:
                if exc.errno == 7 and n < 4096:  # E2BIG: more entries than we offered
                    n *= 2
                    continue
                raise
            return [
                CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
                for e in table.entries[: table.nent]
            ]

    def create_vm(self) -> Vm:
        return Vm(self, _ioctl(self.fd, KVM_CREATE_VM, 0, "KVM_CREATE_VM"))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Vm:
    def __init__(self, kvm: Kvm, fd: int):
        self.kvm = kvm
        self.fd = fd

    def set_memory_region(self, slot: int, gpa: int, size: int, host_address: int) -> None:
        """Slot `slot` maps [gpa, gpa + size) to host memory at host_address; size 0 deletes the slot."""
        region = kvm_userspace_memory_region(
            slot=slot, flags=0, guest_phys_addr=gpa, memory_size=size, userspace_addr=host_address
        )
        _ioctl(self.fd, KVM_SET_USER_MEMORY_REGION, region, f"KVM_SET_USER_MEMORY_REGION slot {slot} at {gpa:#x}")

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM (what this VM offers; KVM_CAP_XSAVE2's size is asked here)."""
        try:
            return _ioctl(self.fd, KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION (VM)")
        except KvmError:  # a kernel without KVM_CAP_CHECK_EXTENSION_VM: ask the system fd
            return self.kvm.check_extension(cap)

    def create_vcpu(self, index: int = 0) -> Vcpu:
        return Vcpu(self, _ioctl(self.fd, KVM_CREATE_VCPU, index, "KVM_CREATE_VCPU"))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Vcpu:
    def __init__(self, vm: Vm, fd: int):
        self.vm = vm
        self.fd = fd
        size = _ioctl(vm.kvm.fd, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")
        self._run_map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_state = kvm_run.from_buffer(self._run_map)
        self._masks = (U64 * 2)((1 << 64) - 1, 0)  # the trampoline's all-blocked mask and the old one

    def run(self) -> int:
        """KVM_RUN once: the exit reason, or KVM_EXIT_INTR when a signal interrupted it (EINTR)."""
        result = _libc.ioctl(self.fd, KVM_RUN, None)
        if result < 0:
            errno = ctypes.get_errno()
            if errno == _EINTR:
                return KVM_EXIT_INTR
            raise KvmError(errno, f"KVM_RUN: {os.strerror(errno)}")
        return self.run_state.exit_reason

    def run_tsc_guarded(self) -> int:
        """KVM_RUN once with the host thread's TSC disabled (tsc_guarded_run), otherwise as run()."""
        function, why = tsc_guarded_run()
        if function is None:
            raise KvmError(0, f"KVM_RUN with the host TSC disabled: {why}")
        result = function(self.fd, ctypes.addressof(self._masks))  # type: ignore[operator]
        if result < 0:
            if result == -_EINTR:
                return KVM_EXIT_INTR
            raise KvmError(-result, f"KVM_RUN (host TSC disabled): {os.strerror(-result)}")
        return self.run_state.exit_reason

    def set_signal_mask(self, blocked: int | None) -> None:
        """KVM_SET_SIGNAL_MASK: the signals blocked while KVM_RUN runs (None: the thread's own mask, as set)."""
        if blocked is None:
            _ioctl(self.fd, KVM_SET_SIGNAL_MASK, 0, "KVM_SET_SIGNAL_MASK")
            return
        mask = kvm_signal_mask(len=8)
        mask.sigset[:] = list(blocked.to_bytes(8, "little"))
        _ioctl(self.fd, KVM_SET_SIGNAL_MASK, mask, "KVM_SET_SIGNAL_MASK")

    def io_data(self, size: int) -> memoryview:
        """The data bytes of the current KVM_EXIT_IO (in the shared kvm_run page)."""
        offset = self.run_state.u.io.data_offset
        return memoryview(self._run_map)[offset : offset + size]

    def get_regs(self, regs: kvm_regs) -> None:
        _ioctl(self.fd, KVM_GET_REGS, regs, "KVM_GET_REGS")

    def set_regs(self, regs: kvm_regs) -> None:
        _ioctl(self.fd, KVM_SET_REGS, regs, "KVM_SET_REGS")

    def get_sregs(self, sregs: kvm_sregs) -> None:
        _ioctl(self.fd, KVM_GET_SREGS, sregs, "KVM_GET_SREGS")

    def set_sregs(self, sregs: kvm_sregs) -> None:
        _ioctl(self.fd, KVM_SET_SREGS, sregs, "KVM_SET_SREGS")

    def get_fpu(self, fpu: kvm_fpu) -> None:
        _ioctl(self.fd, KVM_GET_FPU, fpu, "KVM_GET_FPU")

    def set_fpu(self, fpu: kvm_fpu) -> None:
        _ioctl(self.fd, KVM_SET_FPU, fpu, "KVM_SET_FPU")

    def get_xsave(self, buffer: ctypes.Array, *, xsave2: bool = False) -> None:
        """KVM_GET_XSAVE (4096 bytes), or KVM_GET_XSAVE2 (len(buffer) = KVM_CAP_XSAVE2's size)."""
        if xsave2:
            _ioctl(self.fd, KVM_GET_XSAVE2, buffer, "KVM_GET_XSAVE2")
        else:
            _ioctl(self.fd, KVM_GET_XSAVE, buffer, "KVM_GET_XSAVE")

    def set_xsave(self, buffer: ctypes.Array) -> None:
        _ioctl(self.fd, KVM_SET_XSAVE, buffer, "KVM_SET_XSAVE")

    def set_cpuid(self, entries: list[CpuidEntry]) -> None:
        table = _cpuid2(len(entries))()
        table.nent = len(entries)
        for i, e in enumerate(entries):
            table.entries[i] = kvm_cpuid_entry2(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
        _ioctl(self.fd, KVM_SET_CPUID2, table, "KVM_SET_CPUID2")

    def set_msrs(self, values: dict[int, int]) -> int:
        """Write MSRs; returns how many KVM accepted (it stops at the first it refuses)."""
        table = _msrs(len(values))()
        table.nmsrs = len(values)
        for i, (index, data) in enumerate(values.items()):
            table.entries[i].index = index
            table.entries[i].data = data
        return _ioctl(self.fd, KVM_SET_MSRS, table, "KVM_SET_MSRS")

    def get_msrs(self, indexes: list[int]) -> dict[int, int]:
        table = _msrs(len(indexes))()
        table.nmsrs = len(indexes)
        for i, index in enumerate(indexes):
            table.entries[i].index = index
        n = _ioctl(self.fd, KVM_GET_MSRS, table, "KVM_GET_MSRS")
        return {table.entries[i].index: table.entries[i].data for i in range(n)}

    def close(self) -> None:
        if self.fd >= 0:
            del self.run_state
            try:
                self._run_map.close()
            except BufferError:  # a ctypes view of kvm_run is still alive somewhere: the OS frees it at exit
                pass
            os.close(self.fd)
            self.fd = -1
