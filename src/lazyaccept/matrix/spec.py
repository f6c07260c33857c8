"""The matrix file: a base scenario, axes to sweep, and filters of cells to skip; expanded into cells, each a
CellTask whose binaries travel by content.

    description = "..."              optional
    budget_s = 900                   optional: each cell's wall-time budget in seconds (default: the base's
                                     run.timeout_s + 60; `--budget` wins)

    [base]                           a scenario in `lazyaccept run`'s format (lazyaccept.scenario): its tables
    td = { vcpus = 2 }               [base.td], [base.firmware], ...; every cell starts from it. No [expect] (each
                                     cell's outcome is recorded) and no folders (loader.disk_from,
                                     loader.write_disk_dir: a folder does not travel by content)

    [axes]                           each a non-empty list; the cells are their product, the first axis outermost;
                                     an axis replaces the base's key(s) it stands for
    firmware = ["ovmf-x64-2025.02", "debian:ovmf"]    a Python firmware profile (firmware.profile; "python": the
                                     built-in layout), or a real image (debian:ovmf | debian:ovmf-2026 |
                                     debian:ovmf-inteltdx | a path) run from its reset vector (firmware.exec)
    loader = ["qemu-direct-boot", "grub", "shim-grub", "systemd-boot", "uki"]    loader.kind ("direct" is
                                     qemu-direct-boot; shim-grub is GRUB with Debian's shim as BOOTX64.EFI)
    kernel = ["debian:linux-6.12", "debian:linux-7.2", "vmlinuz"]   payload.kernel
    ram = ["4G", "64G"]              td.ram (sizes as in a scenario: "64G" or bytes)
    vcpus = [1, 8]                   td.vcpus
    upfront = ["below-4g", "256M"]   firmware.upfront
    on_demand = [[], ["allocator"]]  firmware.on_demand (each value a list)
    initrd_size = ["64M"]            payload.initrd_size
    os = ["model", "real"]           os.run_kernel (real: the real kernel runs on from the handoff)
    host_profile = ["kvm-2m", "kvm-4k"]   td.host_profile

    [[skip]]                         a filter: a cell matching every condition is skipped (listed as skipped)
    loader = "uki"                   axis = value, or axis = [values] (any of them; for on_demand a list of lists)
    ram = ["4G"]
    reason = "..."                   optional: shown in the summary

Combinations the scenario loader or the boot refuse (an up-front size beyond the TD's RAM, os = "real" with more
than one vCPU, a real firmware image with a Python-firmware policy) are skipped with the loader's own message.
Errors name the key (`axes.ram[1]: invalid size ...`, exit code 2).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lazyaccept._version import __version__
from lazyaccept.errors import ConfigError, InputError, LazyAcceptError
from lazyaccept.matrix.cell import FILE_REF_PREFIX, CellTask, FileRef
from lazyaccept.scenario import DEBIAN_FILES, ScenarioError, _did_you_mean, _toml_type, scenario_from_dict
from lazyaccept.units import SizeError, format_size, parse_size

# Axis -> the scenario key(s) it sets, in the order a label names them.
AXES: dict[str, str] = {
    "firmware": "firmware.profile, or firmware.image + firmware.exec",
    "loader": "loader.kind (and firmware.shim for shim-grub)",
    "kernel": "payload.kernel",
    "ram": "td.ram",
    "vcpus": "td.vcpus",
    "upfront": "firmware.upfront",
    "on_demand": "firmware.on_demand",
    "initrd_size": "payload.initrd_size",
    "os": "os.run_kernel",
    "host_profile": "td.host_profile",
}
LOADERS = ("qemu-direct-boot", "direct", "grub", "shim-grub", "systemd-boot", "uki")
OS_CHOICES = ("model", "real")
PYTHON_FIRMWARE = "python"  # the firmware axis' name for the Python firmware on the built-in layout
TOP_KEYS = ("description", "budget_s", "base", "axes", "skip")
# Scenario keys holding a file: a user's file travels by content ("@sha256:..."), a debian: name as it is.
PATH_KEYS = (("firmware", "image"), ("firmware", "shim"), ("loader", "grub_efi"), ("loader", "disk"),
             ("payload", "kernel"), ("payload", "initrd"), ("payload", "efi_app"), ("td", "host_profile"))
FOLDER_KEYS = (("loader", "disk_from"), ("loader", "write_disk_dir"))
# BootScenario fields holding a pinned binary by debian: name (an apt-only package's .deb travels with the cell).
DEBIAN_FIELDS = ("kernel", "shim", "firmware", "grub_efi", "efi_app")
START_UP_S = 60.0  # the default budget's margin over the run's own timeout: the child's start and the report


@dataclass(frozen=True)
class SkipRule:
    conditions: dict[str, list[Any]]  # axis -> the values (normalised) that match
    reason: str


@dataclass
class MatrixSpec:
    base: dict[str, Any]
    folder: Path  # relative paths resolve here
    axes: dict[str, list[Any]]  # in the file's order
    skips: list[SkipRule] = field(default_factory=list)
    budget_s: float | None = None
    description: str = ""


@dataclass
class Cell:
    axes: dict[str, Any]
    label: str
    task: CellTask | None  # None when skipped
    skipped: str | None = None  # why


def load_matrix(path: str | Path) -> MatrixSpec:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise InputError(f"matrix file {str(p)!r} not found") from None
    except OSError as exc:
        raise InputError(f"cannot read matrix file {str(p)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{p}: invalid TOML: {exc}") from None
    return matrix_from_dict(data, p.resolve().parent)


def matrix_from_dict(data: dict[str, Any], folder: Path) -> MatrixSpec:
    for key in data:
        if key not in TOP_KEYS:
            raise ScenarioError(f"{key}: unknown key" + _did_you_mean(key, TOP_KEYS))
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ScenarioError(f"description: expected a string, got {_toml_type(description)}")
    budget = data.get("budget_s")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0):
        raise ScenarioError(f"budget_s: expected a positive number of seconds, got {budget!r}")
    base = _table(data, "base")
    check_base(base, folder)
    axes = _table(data, "axes")
    if not axes:
        raise ScenarioError("axes: no axis: give at least one, e.g. ram = [\"4G\", \"64G\"]")
    checked = {name: check_axis(name, values, folder) for name, values in axes.items()}
    skips = data.get("skip", [])
    if not isinstance(skips, list) or not all(isinstance(s, dict) for s in skips):
        raise ScenarioError("skip: expected [[skip]] tables")
    rules = [skip_rule(i, s, checked, folder) for i, s in enumerate(skips)]
    return MatrixSpec(base, folder, checked, rules, None if budget is None else float(budget), description)


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ScenarioError(f"{name}: expected a [{name}] table, got {_toml_type(value)}")
    return value


def check_base(base: dict[str, Any], folder: Path) -> None:
    if "expect" in base:
        raise ScenarioError("base.expect: not in a matrix (every cell's outcome is recorded, booting or not)")
    for section, key in FOLDER_KEYS:
        if key in (base.get(section) or {}):
            raise ScenarioError(f"base.{section}.{key}: a folder cannot travel to a worker by content; give "
                                "loader.disk (an image) or let GRUB's disk be generated")
    try:
        scenario_from_dict(base, folder)
    except LazyAcceptError as exc:
        raise ScenarioError(f"base.{exc}") from None


def check_axis(name: str, values: Any, folder: Path) -> list[Any]:
    """The axis' values as given, each checked on its own (a combination's refusal is a skip, not an error)."""
    if name not in AXES:
        raise ScenarioError(f"axes.{name}: unknown axis" + _did_you_mean(name, tuple(AXES)))
    if not isinstance(values, list) or not values:
        raise ScenarioError(f"axes.{name}: expected a non-empty list, got {_toml_type(values)} {values!r}")
    seen: dict[str, int] = {}
    for i, value in enumerate(values):
        where = f"axes.{name}[{i}]"
        try:
            normal = normalise(name, value, folder)
        except (LazyAcceptError, SizeError) as exc:
            raise ScenarioError(f"{where}: {exc}") from None
        text = json.dumps(normal)
        if text in seen:
            raise ScenarioError(f"{where}: {value!r} repeats axes.{name}[{seen[text]}]")
        seen[text] = i
    return values


def normalise(axis: str, value: Any, folder: Path) -> Any:
    """One comparable spelling of an axis value (sizes in bytes, on-demand options as numbers, files resolved);
    ConfigError/SizeError naming what is wrong with it."""
    if axis in ("ram", "initrd_size"):
        _expect_type(value, (str, int), 'a size such as "64G" or a number of bytes')
        return parse_size(value)
    if axis == "vcpus":
        from lazyaccept.vmm.td import MAX_VCPUS

        _expect_type(value, (int,), "a whole number")
        if not 1 <= value <= MAX_VCPUS:
            raise ConfigError(f"{value} is out of range: must be between 1 and {MAX_VCPUS}")
        return value
    if axis == "upfront":
        from lazyaccept.firmware.sec.policy import parse_policy

        _expect_type(value, (str, int), 'below-4g, all, or a size such as "256M"')
        if isinstance(value, int):
            return value
        policy = parse_policy(value)
        return policy.size_bytes if policy.kind == "size" else value
    if axis == "on_demand":
        from lazyaccept.on_demand import parse_on_demand

        if value == "none":
            return []
        _expect_type(value, (list,), 'a list such as ["allocator"] (or [] for none)')
        return parse_on_demand(value)
    if axis == "loader":
        return "qemu-direct-boot" if _choice(value, LOADERS) == "direct" else value
    if axis == "os":
        return _choice(value, OS_CHOICES)
    _expect_type(value, (str,), "a string")
    if axis == "firmware":
        from lazyaccept.firmware.profiles import PROFILE_NAMES

        if value in PROFILE_NAMES or value == PYTHON_FIRMWARE:
            return value
        return _file_or_debian(value, folder, DEBIAN_FILES["firmware"],
                               f"{PYTHON_FIRMWARE}, {', '.join(PROFILE_NAMES)}")
    if axis == "kernel":
        return _file_or_debian(value, folder, DEBIAN_FILES["kernel"], "")
    # host_profile
    from lazyaccept.tdx.costs import PROFILES

    if value in PROFILES:
        return value
    path = _file_or_debian(value, folder, {}, ", ".join(PROFILES))
    from lazyaccept.tdx.costs import load_profile

    load_profile(path)
    return path


def _expect_type(value: Any, types: tuple[type, ...], what: str) -> None:
    if not isinstance(value, types) or isinstance(value, bool):
        raise ConfigError(f"expected {what}, got {_toml_type(value)} {value!r}")


def _choice(value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"unknown value {value!r}: choose one of {', '.join(choices)}")
    return str(value)


def _file_or_debian(value: str, folder: Path, names: dict[str, str | None], others: str) -> str:
    if value.startswith("debian:") and names:
        if value not in names:
            raise ConfigError(f"unknown Debian binary {value!r}: choose one of {', '.join(names)}")
        return value
    p = Path(value).expanduser()
    p = p if p.is_absolute() else folder / p
    if not p.is_file():
        choices = ", ".join(x for x in (others, ", ".join(names)) if x)
        raise ConfigError(f"{value!r} is no file" + (f" nor one of {choices}" if choices else ""))
    return str(p.resolve())


def skip_rule(index: int, table: dict[str, Any], axes: dict[str, list[Any]], folder: Path) -> SkipRule:
    reason = table.get("reason", "")
    if not isinstance(reason, str):
        raise ScenarioError(f"skip[{index}].reason: expected a string, got {_toml_type(reason)}")
    conditions: dict[str, list[Any]] = {}
    for axis, value in table.items():
        if axis == "reason":
            continue
        if axis not in axes:
            known = tuple(axes) + ("reason",)
            raise ScenarioError(f"skip[{index}].{axis}: not an axis of this matrix" + _did_you_mean(axis, known))
        # A list is "any of these"; for on_demand, whose values are lists, a list of lists.
        many = isinstance(value, list) and (axis != "on_demand" or all(isinstance(v, list) for v in value))
        values = value if many and value else [value]
        try:
            conditions[axis] = [json.dumps(normalise(axis, v, folder)) for v in values]
        except (LazyAcceptError, SizeError) as exc:
            raise ScenarioError(f"skip[{index}].{axis}: {exc}") from None
    if not conditions:
        raise ScenarioError(f"skip[{index}]: no condition: give axis = value pairs")
    return SkipRule(conditions, reason)


def _skip_reason(spec: MatrixSpec, axes: dict[str, Any], normal: dict[str, str]) -> str | None:
    for i, rule in enumerate(spec.skips):
        if all(normal[axis] in values for axis, values in rule.conditions.items()):
            return rule.reason or f"[[skip]] {i + 1}: " + ", ".join(
                f"{a} = {json.dumps(axes[a])}" for a in rule.conditions)
    return None


def label(axes: dict[str, Any]) -> str:
    """grub/linux-6.12/64G/upfront=256M/allocator: the axes' values in a short spelling, in the file's order."""
    parts = []
    for axis, value in axes.items():
        if axis in ("firmware", "kernel", "host_profile") and isinstance(value, str):
            text = value.removeprefix("debian:") if value.startswith("debian:") else Path(value).name
        elif isinstance(value, int) and axis in ("ram", "initrd_size", "upfront"):
            text = format_size(value)
        elif axis == "on_demand":
            text = "+".join(map(str, value)) if isinstance(value, list) and value else "none"
        else:
            text = str(value)
        prefix = {"vcpus": "vcpus=", "upfront": "upfront=", "initrd_size": "initrd=", "os": "os=",
                  "host_profile": "host="}.get(axis, "")
        parts.append(prefix + text)
    return "/".join(parts)


def cell_scenario(base: dict[str, Any], axes: dict[str, Any]) -> dict[str, Any]:
    """The base with each axis' key(s) set."""
    d = copy.deepcopy(base)

    def put(section: str, key: str, value: Any) -> None:
        d.setdefault(section, {})[key] = value

    def drop(section: str, key: str) -> None:
        d.get(section, {}).pop(key, None)

    for axis, value in axes.items():
        if axis == "firmware":
            from lazyaccept.firmware.profiles import PROFILE_NAMES

            for key in ("profile", "image", "exec"):
                drop("firmware", key)
            if value in PROFILE_NAMES:
                put("firmware", "profile", value)
            elif value != PYTHON_FIRMWARE:
                put("firmware", "image", value)
                put("firmware", "exec", True)
        elif axis == "loader":
            put("loader", "kind", "grub" if value == "shim-grub" else "qemu-direct-boot" if value == "direct"
                else value)
            if value == "shim-grub":
                put("firmware", "shim", "debian:shim")
        elif axis == "os":
            put("os", "run_kernel", value == "real")
        else:
            section, key = AXES[axis].split(".")
            put(section, key, value)
    return d


@functools.lru_cache(maxsize=1)
def deb_refs() -> tuple[FileRef, ...]:
    """Every pinned .deb of the shared folder, verified here once: a cell may touch any of them (65 MB in all)."""
    from lazyaccept.binaries import FOLDER_PACKAGES, BinaryStore

    store = BinaryStore()
    refs = []
    for package in FOLDER_PACKAGES:
        path = store.deb(package)  # checked against its pin
        refs.append(FileRef(package.sha256, package.filename, path.stat().st_size, str(path), "deb"))
    return tuple(refs)


@functools.lru_cache(maxsize=256)
def _file_ref(path: str, mtime_ns: int, size: int) -> FileRef:
    from lazyaccept.binaries import sha256_of

    return FileRef(sha256_of(Path(path)), Path(path).name, size, path, "file")


def file_ref(path: str) -> FileRef:
    st = Path(path).stat()
    return _file_ref(path, st.st_mtime_ns, st.st_size)


def _apt_only_refs(sc: Any) -> list[FileRef]:
    """The .deb of an apt-only package a cell names (debian:linux-6.1): not in the shared folder, so it travels."""
    from lazyaccept.binaries import BinaryStore, pinned_package

    refs = []
    for name in DEBIAN_FIELDS:
        package = pinned_package(getattr(sc, name) or "")
        if package is not None and package.apt_only:
            path = BinaryStore().deb(package)
            refs.append(FileRef(package.sha256, package.filename, path.stat().st_size, str(path), "deb"))
    return refs


def cell_key(files: tuple[FileRef, ...], scenario: dict[str, Any]) -> str:
    blob = json.dumps({"files": sorted(f.sha256 for f in files), "scenario": scenario, "lazyaccept": __version__},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def build_task(spec: MatrixSpec, axes: dict[str, Any], budget_s: float) -> CellTask:
    """The cell's task; ConfigError (a ScenarioError among them) when the loader or the boot refuse the
    combination."""
    from lazyaccept.boot import check_combination
    from lazyaccept.tdx.costs import PROFILES

    d = cell_scenario(spec.base, axes)
    sf = scenario_from_dict(d, spec.folder)
    check_combination(sf.scenario)
    user: list[FileRef] = []
    for section, key in PATH_KEYS:
        value = d.get(section, {}).get(key)
        if not isinstance(value, str) or value.startswith("debian:") or (key == "host_profile" and value in PROFILES):
            continue
        p = Path(value).expanduser()
        ref = file_ref(str((p if p.is_absolute() else spec.folder / p).resolve()))
        user.append(ref)
        d[section][key] = FILE_REF_PREFIX + ref.sha256
    files = tuple({f.sha256: f for f in (*deb_refs(), *_apt_only_refs(sf.scenario), *user)}.values())
    return CellTask(cell_key(files, d), label(axes), dict(axes), d, files, budget_s)


def default_budget(spec: MatrixSpec) -> float:
    if spec.budget_s is not None:
        return spec.budget_s
    return scenario_from_dict(spec.base, spec.folder).scenario.timeout_s + START_UP_S


def expand(spec: MatrixSpec, budget_s: float | None = None) -> list[Cell]:
    """Every cell of the product, in order: a task, or the reason it is skipped (a [[skip]] filter, or the
    loader's or the boot's refusal of the combination)."""
    budget = budget_s if budget_s is not None else default_budget(spec)
    names = list(spec.axes)
    cells = []
    for values in itertools.product(*(spec.axes[n] for n in names)):
        axes = dict(zip(names, values, strict=True))
        normal = {n: json.dumps(normalise(n, v, spec.folder)) for n, v in axes.items()}
        reason = _skip_reason(spec, axes, normal)
        if reason is not None:
            cells.append(Cell(axes, label(axes), None, reason))
            continue
        try:
            task = build_task(spec, axes, budget)
        except ConfigError as exc:  # ScenarioError too: the combination, not a value (each was checked alone)
            cells.append(Cell(axes, label(axes), None, str(exc)))
            continue
        cells.append(Cell(axes, task.label, task))
    return cells
