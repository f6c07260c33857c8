"""Boot scenarios as TOML files: `lazyaccept run FILE.toml` and `lazyaccept boot --scenario FILE` (a .json file
holding the same tables is read too).

A scenario file says what `lazyaccept boot` flags say, in sections. Every key is optional; a missing key takes the
default of the `boot` flag it stands for (BootScenario's, which the flags read: `-smp` is 8 here too). Sizes are
strings such as "64G", "256M", "0x1000" or whole numbers of bytes. Relative paths resolve against the folder
holding the file (and `~` against the home folder). Unknown sections or keys, wrong types and impossible values
are errors naming the key (`td.ram: invalid size 'sixty' ...`, exit code 2).

    description = "..."          string, shown nowhere; say what the scenario shows

    [td]
    ram = "64G"                  size > 0, a multiple of 4K                      -m (default 64G)
    vcpus = 8                    integer, 1..4096                                -smp (default 8)
    host_profile = "kvm-2m"      kvm-2m, kvm-4k or a profile .toml path          --profile (default kvm-2m)
    hob_convention = "qemu"      qemu | cloud-hypervisor                         (sec's --hob-convention; default qemu)

    [firmware]
    image = "OVMF.fd"            path, or debian:ovmf | debian:ovmf-2026 |       --firmware (default: built-in layout)
                                 debian:ovmf-inteltdx
    exec = false                 bool: run the image itself (edk2's own TDVF)    --firmware-exec
                                 from the reset vector; then none of the
                                 policy keys below
    shim = "shimx64.efi.signed"  path, or debian:shim | debian:shim-signed;      --shim / -shim
                                 with exec: QEMU 10's -shim (the firmware
                                 starts it, it loads the kernel: Secure Boot
                                 chains); with loader.kind = "grub": shim is
                                 the ESP's BOOTX64.EFI and starts grubx64.efi
                                 beside it (Secure Boot off)
    profile = "ovmf-x64-2026.08" the edk2 build and release the Python firmware  --edk2-profile (default: read
                                 behaves as: ovmf-x64-2025.02 | ovmf-x64-2026.08  from the image)
                                 | inteltdx-2026.08
    upfront = "below-4g"         below-4g | all | a size (string or integer),    --upfront (default below-4g)
                                 at most td.ram
    on_demand = ["allocator"]    list of allocator, loader, accept-service       --on-demand LIST, or --option
                                 (or the RFC's numbers 1, 2, 3)                  1|2|3 repeated (default [])
    accept_all_at_exit = false   bool                                            --accept-all-at-exit
    memory_acceptance_protocol = false  bool                                     --allow-unaccepted-protocol
    cc_measurement = true        bool                                            --no-cc-measurement (inverted)
    tcg2 = false                 bool                                            --tcg2

    [loader]
    kind = "qemu-direct-boot"    qemu-direct-boot | grub | efi-app |             --grub / --efi-app /
                                 systemd-boot | uki                              --systemd-boot / --uki
    stream_initrd = false        bool; qemu-direct-boot only                     --stream-initrd
    uki = false                  bool; systemd-boot only: the payload as a       --uki --systemd-boot
                                 unified kernel image, a Type #2 entry
    disk_from = "esp/"           folder; grub or systemd-boot                    --disk-from
    disk = "disk.img"            raw GPT/MBR image, read only; grub only         --disk
    write_disk_dir = "esp/"      folder written before the boot; grub or         --write-disk-dir
                                 systemd-boot
    grub_efi = "grubx64.efi"     path, or debian:grub-2.12 | debian:grub-2.14;   --grub-efi (default Debian's 2.12)
                                 grub only
    grub_timeout = 0             integer >= 0; grub only                         --grub-timeout (default 0)
    grub_cfg = "..."             text of the generated disk's grub.cfg ("" for   (none)
                                 none); grub only, not with disk_from or
                                 write_disk_dir
    fat = 32                     16 | 32; grub or systemd-boot                   --fat (default 32)
    keys = ["ls\\n"]              list of strings typed from the start, or        --type, repeated
                                 tables {after = "TEXT", type = "KEYS"} typed
                                 once TEXT shows; grub only
    keys_at_prompt = ["..."]     list of strings typed at each grub> prompt;     --type-at-prompt, repeated
                                 grub only
    interactive = false          bool; grub only                                 --interactive

    [payload]
    kernel = "vmlinuz"           path, or debian:linux-6.12 | debian:linux-6.1 | --kernel (default Debian's 6.12)
                                 debian:linux-7.2 | debian:linux-6.12-signed;
                                 not with kind = "efi-app"
    initrd = "initrd.img"        path; not with initrd_size                      --initrd
    initrd_size = "1G"           size; a synthetic initrd                        --initrd-size
    cmdline = "..."              string                                          --append (default
                                                                                 'console=ttyS0 nokaslr')
    efi_app = "app.efi"          path, or debian:systemd-boot | debian:shim;     --efi-app
                                 needs kind = "efi-app" (which needs it)

    [cpu]
    backend = "auto"             auto | unicorn | kvm                            --cpu (default auto)

    [os]
    ready_bytes = "512M"         size; after the handoff the Linux model boots   (none; default 512M, 0 = skip)
                                 to a ready userspace this large
    run_kernel = false           bool: the real kernel runs on from the handoff  --run-kernel
                                 instead of the model (1 vCPU; not with exec)

    [run]
    rng_seed = 0                 integer                                         --rng-seed (default 0)
    timeout_s = 600              number > 0: the wall-time budget in seconds      --timeout (default 600)
    log_calls = true             bool                                            --no-log (inverted)

    [expect]                     checked by `run` only: a mismatch exits 1 with one line, expected vs got
    outcome = "kernel-entry"     kernel-entry | memory-lost | loader-failed | stub-exited | app-exited |
                                 waiting-for-input | terminated | budget | error
    exit_code = 0                0 | 1 | 3 | 4 (the `boot` exit code of that outcome)

With `lazyaccept boot --scenario FILE [flags]`, a flag given on the command line wins over the file: it replaces
the keys it stands for (a repeated flag such as --option or --type replaces the whole list; --initrd and
--initrd-size each drop the other from the file; --disk-from and --write-disk-dir each drop the other, and imply
GRUB). Flags not given leave the file's values. `boot --scenario` ignores [expect] (the flags may change the
outcome); `run` checks it.
"""

from __future__ import annotations

import argparse
import json
import math
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, overload

from lazyaccept.boot import BootScenario
from lazyaccept.errors import ConfigError, InputError, LazyAcceptError
from lazyaccept.firmware.profiles import DEFAULT_PROFILE, PROFILE_NAMES
from lazyaccept.units import SizeError, format_size, parse_size

LOADER_KINDS = ("qemu-direct-boot", "grub", "efi-app", "systemd-boot", "uki")
OUTCOMES = (
    "kernel-entry",
    "memory-lost",
    "loader-failed",
    "stub-exited",
    "app-exited",
    "waiting-for-input",
    "terminated",
    "budget",
    "error",
)
EXPECTABLE_EXIT_CODES = (0, 1, 3, 4)  # 2 is bad input: no boot runs, so there is no outcome to expect

# Pinned Debian binaries by name: the BinaryStore accessor, or None for the value the flag's default already means.
DEBIAN_FILES: dict[str, dict[str, str | None]] = {
    "kernel": {
        "debian:linux-6.12": None,
        "debian:linux-6.1": "linux61_vmlinuz",
        "debian:linux-7.2": "linux72_vmlinuz",
        "debian:linux-6.12-signed": "linux_signed_vmlinuz",
    },
    "shim": {"debian:shim": "shim_efi", "debian:shim-signed": "shim_signed_efi"},
    "firmware": {
        "debian:ovmf": "ovmf_fd",
        "debian:ovmf-2026": "ovmf_2026_fd",
        "debian:ovmf-inteltdx": "ovmf_inteltdx_fd",
    },
    "grub_efi": {"debian:grub-2.12": None, "debian:grub-2.14": "grub214_efi"},
    "efi_app": {"debian:systemd-boot": "systemd_boot_efi", "debian:shim": "shim_efi"},
}



def debian_file(value: str, names: dict[str, str | None]) -> str | None:
    """The path of the pinned Debian binary `value` names (a key of one of DEBIAN_FILES' tables), extracted on
    first use; None for the name of the flag's own default. ConfigError for an unknown name or a missing .deb."""
    if value not in names:
        raise ConfigError(f"unknown Debian binary {value!r}: choose one of {', '.join(names)}")
    accessor = names[value]
    if accessor is None:
        return None
    from lazyaccept.binaries import BinaryStore

    try:
        return str(getattr(BinaryStore(), accessor)())
    except LazyAcceptError as exc:
        raise ConfigError(f"{value}: {exc}") from None


# Which TOML key sets each BootScenario field. tests/test_scenario.py checks that these and NOT_EXPOSED cover
# every field, so a new field cannot be forgotten here.
FIELD_KEYS: dict[str, str] = {
    "ram": "td.ram",
    "smp": "td.vcpus",
    "profile": "td.host_profile",
    "hob_convention": "td.hob_convention",
    "firmware": "firmware.image",
    "firmware_exec": "firmware.exec",
    "shim": "firmware.shim",
    "edk2_profile": "firmware.profile",
    "upfront": "firmware.upfront",
    "option1": "firmware.on_demand",
    "option2": "firmware.on_demand",
    "option3": "firmware.on_demand",
    "accept_all_at_exit": "firmware.accept_all_at_exit",
    "memory_acceptance_protocol": "firmware.memory_acceptance_protocol",
    "cc_measurement": "firmware.cc_measurement",
    "tcg2": "firmware.tcg2",
    "grub": "loader.kind",
    "systemd_boot": "loader.kind",
    "stream_initrd": "loader.stream_initrd",
    "disk_from": "loader.disk_from",
    "disk": "loader.disk",
    "grub_efi": "loader.grub_efi",
    "grub_timeout": "loader.grub_timeout",
    "grub_cfg": "loader.grub_cfg",
    "fat_bits": "loader.fat",
    "keys": "loader.keys",
    "interactive": "loader.interactive",
    "kernel": "payload.kernel",
    "initrd": "payload.initrd",
    "initrd_size": "payload.initrd_size",
    "cmdline": "payload.cmdline",
    "efi_app": "payload.efi_app",
    "uki": "loader.kind",
    "cpu": "cpu.backend",
    "os_ready_bytes": "os.ready_bytes",
    "run_kernel": "os.run_kernel",
    "rng_seed": "run.rng_seed",
    "timeout_s": "run.timeout_s",
    "log_calls": "run.log_calls",
}
NOT_EXPOSED: dict[str, str] = {
    "grub_fast_paths": "a speed-up of GRUB's byte loops under unicorn that gives the same result; no flag sets it",
}

# The BootScenario fields each `boot` flag sets, for --scenario: a flag given on the command line replaces them.
FLAG_FIELDS: dict[str, tuple[str, ...]] = {
    "ram": ("ram",),
    "smp": ("smp",),
    "profile": ("profile",),
    "firmware": ("firmware",),
    "firmware_exec": ("firmware_exec",),
    "shim": ("shim",),
    "edk2_profile": ("edk2_profile",),
    "hob_convention": ("hob_convention",),
    "upfront": ("upfront",),
    "options": ("option1", "option2", "option3"),
    "accept_all_at_exit": ("accept_all_at_exit",),
    "allow_unaccepted_protocol": ("memory_acceptance_protocol",),
    "no_cc_measurement": ("cc_measurement",),
    "kernel": ("kernel",),
    "efi_app": ("efi_app",),
    "uki": ("uki",),
    "initrd": ("initrd", "initrd_size"),
    "initrd_size": ("initrd_size", "initrd"),
    "append": ("cmdline",),
    "stream_initrd": ("stream_initrd",),
    "grub": ("grub",),
    "systemd_boot": ("systemd_boot", "grub"),
    "disk_from": ("disk_from", "grub"),
    "disk": ("disk", "grub"),
    "write_disk_dir": ("grub",),  # and the folder to write, which is not a BootScenario field
    "grub_efi": ("grub_efi",),
    "grub_timeout": ("grub_timeout",),
    "type_now": ("keys",),
    "type_at_prompt": ("keys",),
    "interactive": ("interactive",),
    "tcg2": ("tcg2",),
    "fat": ("fat_bits",),
    "cpu": ("cpu",),
    "rng_seed": ("rng_seed",),
    "no_log": ("log_calls",),
    "timeout": ("timeout_s",),
    "run_kernel": ("run_kernel",),
}
# output flags, and the file itself
NOT_SCENARIO_FLAGS = {"json", "calls", "scenario", "help", "junit", "verbose", "verbose_after_command", "quiet", "log"}

GIVEN_ATTR = "_flags_given"  # the Namespace attribute that lists the dests given on the command line


class ScenarioError(ConfigError):
    """A bad key or value in a scenario file; the message starts with the key (`td.ram: ...`)."""


@dataclass(frozen=True)
class Expect:
    outcome: str | None = None
    exit_code: int | None = None

    def mismatch(self, outcome: str, exit_code: int) -> str | None:
        """None when the run is what the file expects, else one line saying expected vs got."""
        if self.outcome in (None, outcome) and self.exit_code in (None, exit_code):
            return None
        return f"expected {self.describe()}; got outcome {outcome}, exit code {exit_code}"

    def describe(self) -> str:
        parts = [f"outcome {self.outcome}"] if self.outcome else []
        parts += [f"exit code {self.exit_code}"] if self.exit_code is not None else []
        return ", ".join(parts) or "nothing"

    def as_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "exit_code": self.exit_code}


@dataclass
class ScenarioFile:
    path: Path
    scenario: BootScenario
    write_disk_dir: str | None = None  # loader.write_disk_dir: written by prepared() just before the boot
    expect: Expect | None = None
    description: str = ""

    def prepared(self) -> BootScenario:
        """The BootScenario to run; writes loader.write_disk_dir first, as `boot --write-disk-dir` does."""
        if self.write_disk_dir is None:
            return self.scenario
        from lazyaccept.boot import write_disk_folder

        return write_disk_folder(self.scenario, Path(self.write_disk_dir), "loader.write_disk_dir")


def cli_defaults() -> BootScenario:
    """The BootScenario of `lazyaccept boot` with no flags: BootScenario's own defaults are the CLI's (a test holds
    the two together), so the file's defaults are too."""
    return BootScenario()


class _Section:
    """One table of the file; each getter pops its key so that what is left at the end is unknown."""

    def __init__(self, name: str, table: dict[str, Any], folder: Path):
        self.name, self.table, self.folder = name, dict(table), folder

    def has(self, key: str) -> bool:
        return key in self.table

    def error(self, key: str, message: str) -> ScenarioError:
        return ScenarioError(f"{self.name}.{key}: {message}")

    def _take(self, key: str, types: tuple[type, ...], what: str) -> Any:
        value = self.table.pop(key)
        # bool is an int in Python, but `vcpus = true` is no count.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise self.error(key, f"expected {what}, got {_toml_type(value)} {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return self._take(key, (bool,), "true or false") if self.has(key) else default

    def integer(self, key: str, default: int, *, low: int | None = None, high: int | None = None) -> int:
        if not self.has(key):
            return default
        value = self._take(key, (int,), "a whole number")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise self.error(key, f"{value} is out of range: must be {bounds}")
        return value

    @overload
    def string(self, key: str, default: str) -> str: ...
    @overload
    def string(self, key: str, default: None) -> str | None: ...
    def string(self, key: str, default: str | None) -> str | None:
        return self._take(key, (str,), "a string") if self.has(key) else default

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise self.error(key, f"unknown value {value!r}: choose one of {', '.join(choices)}")
        return value

    @overload
    def size(self, key: str, default: int) -> int: ...
    @overload
    def size(self, key: str, default: None) -> int | None: ...
    def size(self, key: str, default: int | None) -> int | None:
        if not self.has(key):
            return default
        value = self._take(key, (str, int), 'a size such as "64G" or a number of bytes')
        try:
            return parse_size(value)
        except SizeError as exc:
            raise self.error(key, str(exc)) from None

    @overload
    def path(self, key: str, default: str, *, kind: str = ..., debian: None = ...) -> str: ...
    @overload
    def path(self, key: str, default: str | None, *, kind: str = ..., debian: str | None = ...) -> str | None: ...
    def path(self, key: str, default: str | None, *, kind: str = "file", debian: str | None = None) -> str | None:
        if not self.has(key):
            return default
        value = self._take(key, (str,), "a path (a string)")
        if debian and value.startswith("debian:"):
            return self._debian(key, value, DEBIAN_FILES[debian])
        if not value:
            raise self.error(key, "empty path")
        p = Path(value).expanduser()
        p = p if p.is_absolute() else self.folder / p
        if kind == "file" and not p.is_file():
            raise self.error(key, f"no such file {str(p)!r}" if not p.exists() else f"{str(p)!r} is not a file")
        if kind == "dir" and not p.is_dir():
            raise self.error(key, f"no such folder {str(p)!r}" if not p.exists() else f"{str(p)!r} is not a folder")
        return str(p)

    def _debian(self, key: str, value: str, names: dict[str, str | None]) -> str | None:
        try:
            return debian_file(value, names)
        except ConfigError as exc:
            raise self.error(key, str(exc)) from None

    def finish(self) -> None:
        if self.table:
            key = next(iter(self.table))
            raise self.error(key, "unknown key" + _did_you_mean(key, KNOWN_KEYS[self.name]))


KNOWN_KEYS: dict[str, tuple[str, ...]] = {
    "td": ("ram", "vcpus", "host_profile", "hob_convention"),
    "firmware": (
        "image", "exec", "shim", "profile", "upfront", "on_demand", "accept_all_at_exit", "memory_acceptance_protocol",
        "cc_measurement", "tcg2",
    ),
    "loader": (
        "kind", "stream_initrd", "uki", "disk_from", "disk", "write_disk_dir", "grub_efi", "grub_timeout", "grub_cfg",
        "fat", "keys", "keys_at_prompt", "interactive",
    ),
    "payload": ("kernel", "initrd", "initrd_size", "cmdline", "efi_app"),
    "cpu": ("backend",),
    "os": ("ready_bytes", "run_kernel"),
    "run": ("rng_seed", "timeout_s", "log_calls"),
    "expect": ("outcome", "exit_code"),
}
GRUB_ONLY = ("disk_from", "disk", "write_disk_dir", "grub_efi", "grub_timeout", "grub_cfg", "fat", "keys",
             "keys_at_prompt", "interactive")


def _toml_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
             dict: "a table"}
    return names.get(type(value), f"a {type(value).__name__}")


def _did_you_mean(key: str, known: tuple[str, ...]) -> str:
    import difflib

    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"


def load_scenario(path: str | Path) -> ScenarioFile:
    """Read and check a scenario file; errors are ScenarioError/InputError with one line naming the key."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"scenario file {str(p)!r} not found") from None
    except OSError as exc:
        raise InputError(f"cannot read scenario file {str(p)!r}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
        # A .json file holds the same tables (`lazyaccept matrix` hands each cell to `run` so).
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:  # its message ends "(at line L, column C)"
        raise InputError(f"{p}: invalid TOML: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a JSON object of tables, got {_toml_type(data)}")
    return scenario_from_dict(data, p.resolve().parent, path=p)


def scenario_from_dict(data: dict[str, Any], folder: Path, *, path: Path | None = None) -> ScenarioFile:
    data = dict(data)
    description = data.pop("description", "")
    if not isinstance(description, str):
        raise ScenarioError(f"description: expected a string, got {_toml_type(description)}")
    for name, table in data.items():
        if name not in KNOWN_KEYS:
            what = "unknown section" if isinstance(table, dict) else "unknown key (keys go in sections such as [td])"
            raise ScenarioError(f"{name}: {what}" + _did_you_mean(name, (*KNOWN_KEYS, "description")))
        if not isinstance(table, dict):
            raise ScenarioError(f"{name}: expected a [{name}] table, got {_toml_type(table)}")
    sec = {name: _Section(name, data.get(name, {}), folder) for name in KNOWN_KEYS}
    d = cli_defaults()
    td, fw, ld, pl = sec["td"], sec["firmware"], sec["loader"], sec["payload"]

    from lazyaccept.cpu.select import CPU_CHOICES
    from lazyaccept.vmm.layout import MAX_TD_RAM
    from lazyaccept.vmm.td import MAX_VCPUS, HobConvention

    ram = td.size("ram", d.ram)
    if ram == 0 or ram % 4096:
        raise td.error("ram", f"RAM size {ram} must be a positive multiple of 4 KiB")
    if ram > MAX_TD_RAM:
        raise td.error("ram", f"RAM size {format_size(ram)} is beyond what lazyaccept models (64T)")
    smp = td.integer("vcpus", d.smp, low=1, high=MAX_VCPUS)
    profile = _profile(td, d.profile)
    hob = td.choice("hob_convention", d.hob_convention, tuple(c.value for c in HobConvention))

    firmware = fw.path("image", d.firmware, debian="firmware")
    firmware_exec = fw.boolean("exec", d.firmware_exec)
    shim_given = fw.has("shim")
    shim = fw.path("shim", d.shim, debian="shim")
    upfront = _upfront(fw, d.upfront, ram)
    options = _options(fw)
    kind = ld.choice("kind", "qemu-direct-boot", LOADER_KINDS)
    if firmware_exec and kind != "qemu-direct-boot":
        raise ld.error("kind", f"{kind!r} with firmware.exec = true: edk2's own TDVF boots here only by QEMU's direct "
                       "boot (and firmware.shim); the other loaders run on the Python firmware (drop firmware.exec)")
    if shim_given and not firmware_exec and kind != "grub":
        raise fw.error("shim", 'only with firmware.exec = true (QEMU 10\'s -shim) or loader.kind = "grub" (shim as '
                       "BOOTX64.EFI, starting GRUB beside it)")
    for key in GRUB_ONLY:
        if kind == "systemd-boot" and key in ("disk_from", "write_disk_dir", "fat"):
            continue
        if kind != "grub" and ld.has(key):
            raise ld.error(key, f'only with loader.kind = "grub" (this is {kind!r})')
    uki_entry = ld.boolean("uki", False)
    if uki_entry and kind != "systemd-boot":
        raise ld.error("uki", f'only with loader.kind = "systemd-boot" (a Type #2 entry; this is {kind!r}); '
                       'loader.kind = "uki" starts a unified kernel image directly')
    if uki_entry and ld.has("disk_from"):
        raise ld.error("uki", "the UKI is built from the payload; a disk_from folder holds its own entries")
    if kind == "uki" and ld.has("stream_initrd"):
        raise ld.error("stream_initrd", "the initrd is a section of the UKI; only with qemu-direct-boot")
    if kind in ("grub", "systemd-boot") and ld.has("stream_initrd"):
        raise ld.error("stream_initrd", f"{kind} reads the initrd from the disk itself; only with qemu-direct-boot")
    if ld.has("disk_from") and ld.has("write_disk_dir"):
        raise ld.error("write_disk_dir", "give loader.disk_from or loader.write_disk_dir, not both")
    disk_from = ld.path("disk_from", d.disk_from, kind="dir")
    write_dir = ld.path("write_disk_dir", None, kind="any")
    disk = ld.path("disk", d.disk)
    if disk and (disk_from or write_dir):
        raise ld.error("disk", "give loader.disk, loader.disk_from or loader.write_disk_dir, not two of them")
    if disk_from or write_dir or disk:
        for key in ("grub_cfg",):
            if ld.has(key):
                raise ld.error(key, "the disk's own grub.cfg is used with disk_from/write_disk_dir")
    keys = _keys(ld)

    if pl.has("initrd") and pl.has("initrd_size"):
        raise pl.error("initrd_size", "give payload.initrd or payload.initrd_size, not both")
    if kind == "efi-app" and pl.has("kernel"):
        raise pl.error("kernel", 'an efi-app run boots no kernel (loader.kind = "efi-app")')
    if disk_from or disk:
        for key in ("kernel", "initrd", "initrd_size", "cmdline"):
            if pl.has(key):
                which = "loader.disk_from" if disk_from else "loader.disk"
                raise pl.error(key, f"not used with {which}: GRUB boots what the disk's grub.cfg names")
    if write_dir and pl.has("initrd"):
        raise pl.error("initrd", "loader.write_disk_dir writes a synthetic initrd of payload.initrd_size, not a file")
    if kind == "efi-app" and not pl.has("efi_app"):
        raise ld.error("kind", 'loader.kind = "efi-app" needs payload.efi_app')
    if kind != "efi-app" and pl.has("efi_app"):
        raise pl.error("efi_app", 'needs loader.kind = "efi-app"')
    cmdline = pl.string("cmdline", d.cmdline)
    try:
        cmdline.encode("utf-16-le")  # LoadOptions are UTF-16
    except UnicodeEncodeError:
        raise pl.error("cmdline", f"{cmdline!r} is not valid Unicode text") from None

    sc = replace(
        d,
        ram=ram,
        smp=smp,
        profile=profile,
        hob_convention=hob,
        firmware=firmware,
        firmware_exec=firmware_exec,
        shim=shim,
        edk2_profile=fw.choice("profile", DEFAULT_PROFILE.name, PROFILE_NAMES) if fw.has("profile") else d.edk2_profile,
        upfront=upfront,
        option1=1 in options,
        option2=2 in options,
        option3=3 in options,
        accept_all_at_exit=fw.boolean("accept_all_at_exit", d.accept_all_at_exit),
        memory_acceptance_protocol=fw.boolean("memory_acceptance_protocol", d.memory_acceptance_protocol),
        cc_measurement=fw.boolean("cc_measurement", d.cc_measurement),
        tcg2=fw.boolean("tcg2", d.tcg2),
        grub=kind == "grub",
        uki=kind == "uki" or uki_entry,
        systemd_boot=kind == "systemd-boot",
        stream_initrd=ld.boolean("stream_initrd", d.stream_initrd),
        disk_from=disk_from,
        disk=disk,
        grub_efi=ld.path("grub_efi", d.grub_efi, debian="grub_efi"),
        grub_timeout=ld.integer("grub_timeout", d.grub_timeout, low=0),
        grub_cfg=ld.string("grub_cfg", d.grub_cfg),
        fat_bits=_fat(ld, d.fat_bits),
        keys=keys,
        interactive=ld.boolean("interactive", d.interactive),
        kernel=pl.path("kernel", d.kernel, debian="kernel"),
        initrd=pl.path("initrd", d.initrd),
        initrd_size=pl.size("initrd_size", d.initrd_size),
        cmdline=cmdline,
        efi_app=pl.path("efi_app", d.efi_app, debian="efi_app"),
        cpu=sec["cpu"].choice("backend", d.cpu, tuple(CPU_CHOICES)),
        os_ready_bytes=sec["os"].size("ready_bytes", d.os_ready_bytes),
        run_kernel=sec["os"].boolean("run_kernel", d.run_kernel),
        rng_seed=sec["run"].integer("rng_seed", d.rng_seed),
        timeout_s=_seconds(sec["run"], d.timeout_s),
        log_calls=sec["run"].boolean("log_calls", d.log_calls),
    )
    expect = _expect(sec["expect"]) if "expect" in data else None
    for s in sec.values():
        s.finish()
    return ScenarioFile(path or folder, sc, write_dir, expect, description)


def _profile(td: _Section, default: str) -> str:
    from lazyaccept.tdx.costs import PROFILES, load_profile

    value = td.table.get("host_profile")
    if not isinstance(value, str) or value in PROFILES:
        return td.string("host_profile", default)  # a name, the default, or the type error
    # Not a profile name: a file, as for --profile (path() resolves it and checks that it exists).
    if not value.endswith(".toml") and not (td.folder / value).expanduser().exists():
        raise td.error(
            "host_profile", f"unknown host profile {value!r}: choose one of {', '.join(PROFILES)} or a .toml file"
        )
    path = td.path("host_profile", default)
    try:
        load_profile(path)
    except LazyAcceptError as exc:
        raise td.error("host_profile", str(exc)) from None
    return path


def _upfront(fw: _Section, default: str, ram: int) -> str:
    from lazyaccept.firmware.sec import parse_policy

    if not fw.has("upfront"):
        return default
    value = fw._take("upfront", (str, int), 'below-4g, all, or a size such as "256M"')
    if isinstance(value, int):
        if value < 0:
            raise fw.error("upfront", f"up-front size {value} must not be negative")
        value = format_size(value)
    try:
        policy = parse_policy(value)
    except LazyAcceptError as exc:
        raise fw.error("upfront", str(exc)) from None
    if policy.kind == "size" and policy.size_bytes > ram:
        raise fw.error("upfront", f"up-front size {value} is larger than the TD's {format_size(ram)} of RAM")
    return value


def _options(fw: _Section) -> set[int]:
    from lazyaccept.on_demand import on_demand_number

    if not fw.has("on_demand"):
        return set()
    value = fw._take("on_demand", (list,), 'a list such as ["allocator"] or [1, 2]')
    for item in value:
        if not isinstance(item, (int, str)):  # not 1.0: on_demand_number refuses true
            raise fw.error("on_demand", f"unknown on-demand option {item!r}: choose from {_on_demand_choices()}")
    try:
        return {on_demand_number(item) for item in value}
    except ConfigError as exc:
        raise fw.error("on_demand", str(exc)) from None


def _on_demand_choices() -> str:
    from lazyaccept.on_demand import CHOICES_TEXT

    return CHOICES_TEXT


def _fat(ld: _Section, default: int) -> int:
    value = ld.integer("fat", default)
    if value not in (16, 32):
        raise ld.error("fat", f"FAT{value} is not offered: choose 16 or 32")
    return value


def _seconds(run: _Section, default: float) -> float:
    if not run.has("timeout_s"):
        return default
    value = run._take("timeout_s", (int, float), "a number of seconds")
    if not value > 0 or not math.isfinite(value):
        raise run.error("timeout_s", f"{value!r} must be a positive number of seconds")
    return float(value)


def _keys(ld: _Section) -> list[tuple[str, str]]:

    out: list[tuple[str, str]] = []
    for key, default_after in (("keys", ""), ("keys_at_prompt", "grub>")):
        if not ld.has(key):
            continue
        items = ld._take(key, (list,), "a list of strings")
        for i, item in enumerate(items):
            if isinstance(item, str):
                out.append((default_after, unescape_keys(item)))
            elif key == "keys" and isinstance(item, dict) and set(item) == {"after", "type"} and all(
                isinstance(v, str) for v in item.values()
            ):
                out.append((item["after"], unescape_keys(item["type"])))
            else:
                want = 'a string or {after = "TEXT", type = "KEYS"}' if key == "keys" else "a string"
                raise ld.error(f"{key}[{i}]", f"expected {want}, got {_toml_type(item)} {item!r}")
    return out


def _expect(ex: _Section) -> Expect:
    outcome = ex.choice("outcome", "", OUTCOMES) if ex.has("outcome") else None
    code = ex.integer("exit_code", -1) if ex.has("exit_code") else None
    if code is not None and code not in EXPECTABLE_EXIT_CODES:
        raise ex.error("exit_code", f"{code} is no exit code of a boot: choose one of 0, 1, 3, 4")
    return Expect(outcome, code)


def track_given_flags(parser: argparse.ArgumentParser) -> None:
    """Make `parser` record, in GIVEN_ATTR, the dest of every option given on the command line (defaults make them
    indistinguishable otherwise). Call before adding arguments: argparse looks the action class up then."""
    registry = parser._registries["action"]
    for name, cls in list(registry.items()):
        if isinstance(cls, type) and issubclass(cls, argparse.Action) and not getattr(cls, "_records", False):

            def call(self, parser, namespace, values, option_string=None, _base=cls):  # type: ignore[no-untyped-def]
                given = getattr(namespace, GIVEN_ATTR, None) or set()
                given.add(self.dest)
                setattr(namespace, GIVEN_ATTR, given)
                return _base.__call__(self, parser, namespace, values, option_string)

            registry[name] = type(cls.__name__, (cls,), {"__call__": call, "_records": True})


def given_flags(args: argparse.Namespace) -> set[str]:
    return set(getattr(args, GIVEN_ATTR, None) or ())


def scenario_with_flags(args: argparse.Namespace, from_flags) -> BootScenario:
    """`boot --scenario FILE [flags]`: the file, with each flag given on the command line replacing its fields.
    `from_flags(args)` is the boot command's own flags-to-BootScenario function."""
    sf = load_scenario(args.scenario)
    given = given_flags(args) - NOT_SCENARIO_FLAGS
    flags_sc = from_flags(argparse.Namespace(**{**vars(args), "scenario": None, "write_disk_dir": None}))
    names = {f.name for f in fields(BootScenario)}
    changes: dict[str, Any] = {}
    for dest in sorted(given):
        targets = FLAG_FIELDS.get(dest) or ((dest,) if dest in names else None)
        if targets is None:
            raise ConfigError(f"--{dest.replace('_', '-')} cannot be combined with --scenario")
        changes.update({f: getattr(flags_sc, f) for f in targets})
    write_dir = sf.write_disk_dir
    if "disk_from" in given:
        write_dir, changes["disk"] = None, None
    if "disk" in given:
        write_dir, changes["disk_from"] = None, None
    if "write_disk_dir" in given:
        write_dir, changes["disk_from"], changes["disk"] = args.write_disk_dir, None, None
    merged = ScenarioFile(sf.path, replace(sf.scenario, **changes), write_dir)
    return merged.prepared()


def unescape_keys(text: str) -> str:
    """`\\n` typed as two characters is Enter, in a file as in `boot --type`."""
    return text.replace("\\n", "\n")
