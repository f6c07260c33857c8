"""What a run records, in one vocabulary for every layer: who accepted memory, why the CPU stopped, and each
firmware service call with its arguments.

The report (boot.py), the JSON (docs/JSON.md) and the checks read these; nothing parses their text back.
Both enums are StrEnums: their values are what the JSON has always carried.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Actor(StrEnum):
    """Who touched or accepted memory, for the roles the models play. A real binary is named by its image
    instead (e.g. the vmlinuz file the stub was loaded from), so the report says which binary it was."""

    VMM = "vmm"  # TDH.MEM.PAGE.ADD/AUG before the TD runs
    SEC = "sec"  # TDVF SEC's up-front accept, on every vCPU
    DXE = "dxe"  # the DXE core and its drivers
    DXE_OPTION1 = "dxe-option1"  # the page allocator accepting more when it would run out (option 1)
    EXIT_ACCEPT_ALL = "exit-accept-all"  # ExitBootServices accepting what the OS cannot (no unaccepted table)
    QEMU_LOADER = "qemu-loader"  # QEMU direct boot's firmware side (QemuKernelLoaderFsDxe, LoadImage)
    LOADER_OPTION2 = "loader-option2"  # a loader accepting and retrying (option 2)
    STUB = "stub"  # the Linux EFI stub model
    LINUX_MEMBLOCK = "linux-memblock"
    LINUX_MEMMAP = "linux-memmap"
    LINUX_BUDDY = "linux-buddy"
    LINUX_EAGER = "linux-eager"
    LINUX = "linux"  # the real kernel, run on after the stub's jump (tdvf_run --run-kernel)


class StopKind(StrEnum):
    """Why the CPU stopped running guest code."""

    RETURNED = "returned"  # the top-level image returned
    EXIT = "exit"  # an image exited (Exit, ResetSystem, a wait that can never end)
    KERNEL = "kernel"  # the jump into the kernel after ExitBootServices
    TERMINATED = "terminated"  # the TDX module terminated the TD
    EXCEPTION = "exception"  # a CPU exception nobody handles
    BUDGET = "budget"  # the instruction or wall-time budget ran out
    ERROR = "error"  # the backend failed
    INPUT = "input"  # the loader waits for keys that will never come
    REQUESTED = "requested"  # a stop condition the caller set was met


@dataclass
class StopReason:
    kind: StopKind
    detail: str = ""
    rip: int | None = None


@dataclass
class ServiceCall:
    name: str
    detail: str
    status: int | None
    image: str
    args: tuple[int, ...] = field(default=())  # the arguments as the binary passed them (registers, then stack)
