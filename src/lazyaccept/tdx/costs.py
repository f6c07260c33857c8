"""What each operation costs in virtual time, by host profile.

The cost table does not depend on how a run executes (model or emulated binary): every TDCALL, exit, AUG,
DEMOTE and every byte cleared is charged the same. Costs are integers (ns) so that a closed-form count and a
call-by-call sum agree exactly.

Calibration (REFERENCE.md section 7):
- eager accept by Linux on a host that maps 2M: ~1 min for 90 GiB on 1 vCPU (~1.5 GiB/s), 40 s on 4 vCPUs,
  no scaling beyond (LKML, "Accept unaccepted kexec segments' destination addresses", Feb 2025). Modelled as
  a per-vCPU clearing rate of 1.5 GiB/s and a shared memory-bandwidth cap of 2.25 GiB/s.
- per 4K accept fault on mainline KVM (private memory mapped at 4K only): ~8 us (Dstack-TEE/dstack PR 1220).
  Modelled as exit 4 us + AUG 1 us + TDCALL 0.5 us + clearing 4 KiB at 1.5 GiB/s (2.5 us).
No public cycle count for one TDG.MEM.PAGE.ACCEPT at 4K versus 2M exists: the TDCALL, exit, AUG and DEMOTE
overheads below are assumptions chosen to meet those totals, not measurements.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from lazyaccept.errors import ConfigError, InputError
from lazyaccept.units import GiB, MiB

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class HostProfile:
    name: str
    description: str
    # Largest Secure-EPT level the host maps private memory at on demand: 0 = 4K (mainline KVM), 1 = 2M.
    max_private_level: int
    tdcall_ns: int  # one TDCALL round trip into the TDX module and back (assumed)
    exit_ns: int  # an EPT-violation TD exit to the VMM and re-entry (assumed)
    aug_4k_ns: int  # TDH.MEM.PAGE.AUG of a 4K page by the VMM (assumed)
    aug_2m_ns: int  # TDH.MEM.PAGE.AUG of a 2M page (assumed)
    demote_ns: int  # TDH.MEM.PAGE.DEMOTE of a 2M leaf to 512 4K leaves (assumed)
    add_4k_ns: int  # TDH.MEM.PAGE.ADD of a 4K page at build time (assumed)
    mr_extend_4k_ns: int  # TDH.MR.EXTEND over a 4K page (16 x 256 B chunks, assumed)
    clear_bytes_per_s: int  # accept zeroing rate of one vCPU
    clear_bytes_per_s_total: int  # shared memory-bandwidth cap across concurrently accepting vCPUs
    copy_bytes_per_s: int  # memcpy in the guest (assumed)
    hash_bytes_per_s: int  # SHA-384 in the guest, for measurements (assumed)
    decompress_bytes_per_s: int  # kernel decompression, output bytes (assumed)
    boot_service_call_ns: int  # one boot-service call's firmware overhead (assumed)
    # One guest instruction the emulated firmware executes, in picoseconds (virtual time of its own work:
    # decompressing volumes, hashing for the RTMRs). Assumed; see _SOURCES["guest_instruction_ps"].
    guest_instruction_ps: int
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def clear_ns(self, n_bytes: int, concurrency: int = 1) -> int:
        """Time for one vCPU to clear n_bytes while `concurrency` vCPUs clear at once."""
        rate = min(self.clear_bytes_per_s, self.clear_bytes_per_s_total / max(1, concurrency))
        return round(n_bytes * NS_PER_S / rate)

    def bytes_ns(self, n_bytes: int, rate_bytes_per_s: int) -> int:
        return round(n_bytes * NS_PER_S / rate_bytes_per_s)

    def instructions_ns(self, instructions: int) -> int:
        """Virtual time of `instructions` guest instructions (rounded down: callers charge cumulative totals)."""
        return instructions * self.guest_instruction_ps // 1000

    def to_dict(self) -> dict:
        return asdict(self)


_SOURCES = {
    "clear_bytes_per_s": "LKML Feb 2025, 'Accept unaccepted kexec segments' destination addresses': 90 GiB in ~1 min",
    "clear_bytes_per_s_total": "same thread: 40 s on 4 vCPUs, no scaling beyond",
    "per-4K fault": "Dstack-TEE/dstack PR 1220: ~8 us per 4K accept fault on mainline KVM",
    "guest_instruction_ps": "assumed: 1 instruction per cycle at 2.0 GHz, the base clock of 5th Gen Xeon Scalable "
    "(Emerald Rapids, e.g. Xeon Platinum 8580, Intel ARK), the first Xeon generation with TDX generally available; "
    "IPC 1 because firmware's heavy work (LZMA decoding, SHA-384) is branchy, serial code",
    "max_private_level": "Linux arch/x86/kvm/vmx/tdx.c: private max mapping level PG_LEVEL_4K (mainline)",
}

_COMMON = dict(
    tdcall_ns=500,
    exit_ns=4_000,
    aug_4k_ns=1_000,
    aug_2m_ns=2_000,
    demote_ns=5_000,
    add_4k_ns=3_000,
    mr_extend_4k_ns=4_000,
    clear_bytes_per_s=int(1.5 * GiB),
    clear_bytes_per_s_total=int(2.25 * GiB),
    copy_bytes_per_s=4 * GiB,
    hash_bytes_per_s=800 * MiB,
    decompress_bytes_per_s=500 * MiB,
    boot_service_call_ns=200,
    guest_instruction_ps=500,
)

PROFILES: dict[str, HostProfile] = {
    "kvm-4k": HostProfile(
        name="kvm-4k",
        description="mainline KVM: private memory mapped at 4K only; every fresh 2M accept ends in "
        "PAGE_SIZE_MISMATCH and 512 4K accepts, each an exit + AUG + accept (~8 us)",
        max_private_level=0,
        sources=_SOURCES,
        **_COMMON,
    ),
    "kvm-2m": HostProfile(
        name="kvm-2m",
        description="a host that maps private memory at 2M: ~1.5 GiB/s per vCPU eager accept, a shared "
        "memory-bandwidth cap so 4 vCPUs give ~1.5x one vCPU and more give nothing",
        max_private_level=1,
        sources=_SOURCES,
        **_COMMON,
    ),
}

DEFAULT_PROFILE = "kvm-2m"


def profile_by_name(name: str) -> HostProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(
            f"unknown host profile {name!r}: choose one of {', '.join(PROFILES)} or a .toml file"
        ) from None


def load_profile(path: str | Path) -> HostProfile:
    """A TOML file: `base = "kvm-2m"` (optional) and any HostProfile field to override, e.g. `exit_ns = 6000`."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"host profile file {str(p)!r} not found") from None
    except OSError as exc:  # a directory, no permission
        raise InputError(f"cannot read host profile file {str(p)!r}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"host profile file {str(p)!r} is not valid TOML: {exc}") from None
    base = profile_by_name(str(data.pop("base", DEFAULT_PROFILE)))
    known = {f.name: f.type for f in fields(HostProfile)}
    overrides: dict = {"name": str(data.pop("name", p.stem)), "sources": {"file": str(p)}}
    for key, value in data.items():
        if key not in known or key == "sources":
            raise InputError(f"unknown host profile key {key!r} in {str(p)!r}", field=key)
        if key == "description":
            overrides[key] = str(value)
            continue
        # inf and nan are valid TOML floats but no cost.
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise InputError(f"host profile key {key!r} in {str(p)!r} must be a non-negative number", field=key)
        overrides[key] = int(value)
    profile = replace(base, **overrides)
    if profile.max_private_level not in (0, 1):
        raise InputError("max_private_level must be 0 (4K) or 1 (2M)", field="max_private_level")
    for rate in (f.name for f in fields(HostProfile) if f.name.endswith("_bytes_per_s")):
        if getattr(profile, rate) <= 0:  # rates divide: zero would fail mid-run
            raise InputError(f"{rate} must be positive (bytes per second)", field=rate)
    return profile


def resolve_profile(name_or_path: str) -> HostProfile:
    if name_or_path in PROFILES:
        return PROFILES[name_or_path]
    if name_or_path.endswith(".toml") or Path(name_or_path).exists():
        return load_profile(name_or_path)
    return profile_by_name(name_or_path)
