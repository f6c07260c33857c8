"""Every command's --json against the JSON Schema shipped in the wheel (src/lazyaccept/schema/lazyaccept.schema.json,
docs/JSON.md): the three header keys first (schema version, lazyaccept version, command), then the command's own
keys, each named with its unit. A renamed or new key, a wrong type or a missing key fails the schema; so do the
spellings schema 3 replaced (compare's `ram`, boot's `options: "none"` and `cpu.why`)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from lazyaccept import __version__
from lazyaccept.cli import JSON_SCHEMA_VERSION, build_parser, main
from lazyaccept.exitcodes import EXIT_BOOTED, EXIT_FAILED, EXIT_MEMORY_LOST
from lazyaccept.json_keys import schema_path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCHEMA = json.loads(schema_path().read_text())
VALIDATOR = Draft202012Validator(SCHEMA)  # format checking off: formats are annotations here


def run_json(argv: list[str]) -> tuple[int, dict[str, Any], str]:
    """Run a command with --json: its exit code, its JSON and the text as printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main([*argv, "--json"])
    return code, json.loads(out.getvalue()), out.getvalue()


def errors(record: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(record)]


def check(command: str, code: int, data: dict[str, Any]) -> None:
    assert list(data)[:3] == ["schema", "lazyaccept", "command"]
    assert (data["schema"], data["lazyaccept"], data["command"]) == (JSON_SCHEMA_VERSION, __version__, command)
    assert code == data.get("exit_code", code)
    assert errors(data) == []


# argv (without --json), the exit code it must give; the cheapest run of each command and of each JSON variant.
MODEL_RUNS: dict[str, tuple[list[str], int]] = {
    "sec": (["sec", "-m", "4G", "-smp", "2"], EXIT_BOOTED),
    "sec-4k": (["sec", "-m", "16G", "-smp", "4", "--upfront", "256M", "--profile", "kvm-4k"], EXIT_BOOTED),
    "firmware-info": (["firmware-info", "--builtin"], EXIT_BOOTED),
    "workload": (["workload", "-m", "8G", "-smp", "2", "--fill", "1G", "--workers", "1"], EXIT_BOOTED),
    "workload-lost": (["workload", "-m", "8G", "--no-unaccepted-support"], EXIT_BOOTED),
    "workload-crash": (["workload", "-m", "4G", "--fill", "8G"], EXIT_FAILED),  # outcome crash, detail: the OOM
    "advise": (["advise", "-m", "4G", "-smp", "2", "--initrd-size", "16M"], EXIT_BOOTED),
    "advise-never-boots": (["advise", "-m", "1G", "-smp", "1", "--initrd-size", "900M"], EXIT_FAILED),
    "compare": (["compare", "--sizes", "4G", "--vcpus", "2", "--policies", "below-4g,256M+option1"], EXIT_BOOTED),
    "compare-cell-fails": (["compare", "--sizes", "4G", "--vcpus", "2", "--policies", "below-4g,256M"], EXIT_FAILED),
}
REAL_RUNS: dict[str, tuple[list[str], int]] = {
    "boot": (["boot", "-m", "4G", "-smp", "2"], EXIT_BOOTED),
    "boot-option1": (["boot", "-m", "8G", "-smp", "2", "--upfront", "256M", "--option", "1", "--initrd-size", "64M"],
                     EXIT_BOOTED),
    "boot-grub": (["boot", "--grub", "-m", "4G", "-smp", "2"], EXIT_BOOTED),
    "boot-systemd-boot": (["boot", "--systemd-boot", "-m", "4G", "-smp", "2", "--initrd-size", "16M"], EXIT_BOOTED),
    "boot-systemd-boot-fails": (["boot", "--systemd-boot", "-m", "64G", "-smp", "2", "--upfront", "256M",
                                 "--initrd-size", "1G"], EXIT_FAILED),  # systemd-boot's own initrd allocation
    "boot-uki": (["boot", "--uki", "-m", "4G", "-smp", "2", "--initrd-size", "8M"], EXIT_BOOTED),
    "boot-uki-systemd-boot": (["boot", "--uki", "--systemd-boot", "-m", "4G", "-smp", "2"], EXIT_BOOTED),
    "boot-uki-fails": (["boot", "--uki", "-m", "64G", "--upfront", "256M", "--initrd-size", "1G"], EXIT_FAILED),
    "advise-chain-systemd-boot": (["advise", "--chain", "systemd-boot", "-m", "4G", "-smp", "1",
                                   "--initrd-size", "16M"], EXIT_BOOTED),  # real boots: chain, wall_s
    "boot-firmware-exec": (["boot", "--firmware-exec", "-smp", "1"], EXIT_BOOTED),
    "run": (["run", str(EXAMPLES / "below-4g-4g.toml")], EXIT_BOOTED),
    "run-memory-lost": (["run", str(EXAMPLES / "linux61-memory-lost.toml")], EXIT_MEMORY_LOST),
    "demo": (["demo"], EXIT_BOOTED),
    "differential": (["differential", "-m", "2815M", "-smp", "4"], EXIT_BOOTED),  # both firmwares end in PEI
}


def command_of(argv: list[str]) -> str:
    return argv[0]


def test_the_schema_is_draft_2020_12_and_covers_every_command() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["properties"]["schema"] == {**SCHEMA["properties"]["schema"], "const": JSON_SCHEMA_VERSION}
    parser, runners = build_parser()
    # matrix-cell: a line of `matrix`'s matrix.jsonl, a record of its own but no command
    assert set(SCHEMA["properties"]["command"]["enum"]) == set(runners) | {"matrix-cell"}
    for command in runners:  # each command's record is strict at its top level: a new or renamed key is caught
        definition = SCHEMA["$defs"][command]
        for branch in (definition, definition.get("then"), definition.get("else")):
            if branch is not None and "if" not in branch:
                assert branch["additionalProperties"] is False, command


def test_the_schema_ships_in_the_package() -> None:
    assert schema_path().is_file() and schema_path().parent.name == "schema"
    assert schema_path().is_relative_to(Path(__import__("lazyaccept").__file__).parent)


@pytest.mark.parametrize("name", sorted(MODEL_RUNS))
def test_model_commands_json_validates(name: str) -> None:
    argv, expected = MODEL_RUNS[name]
    code, data, _ = run_json(argv)
    assert code == expected, data
    check(command_of(argv), code, data)


@pytest.mark.real_binary
@pytest.mark.parametrize("name", sorted(REAL_RUNS))
def test_real_binary_commands_json_validates(name: str) -> None:
    argv, expected = REAL_RUNS[name]
    code, data, _ = run_json(argv)
    assert code == expected, {k: data.get(k) for k in ("outcome", "reason", "ok", "notes")}
    check(command_of(argv), code, data)
    if argv[0] in ("boot", "run"):
        assert data["cpu"]["reason"] in SCHEMA["$defs"]["boot"]["properties"]["cpu"]["properties"]["reason"]["enum"]
        assert isinstance(data["scenario"]["options"], list)


@pytest.mark.real_binary
def test_initramfs_json_validates(tmp_path: Path) -> None:
    code, data, _ = run_json(["initramfs", "--out", str(tmp_path / "initramfs.cpio.gz"), "--gzip"])
    check("initramfs", code, data)
    assert data["size_bytes"] == (tmp_path / "initramfs.cpio.gz").stat().st_size


@pytest.mark.real_binary
def test_uki_json_validates(tmp_path: Path) -> None:
    out = tmp_path / "linux.efi"
    code, data, _ = run_json(["uki", "--out", str(out), "--initrd-size", "2M", "--append", "console=ttyS0"])
    check("uki", code, data)
    assert data["size_bytes"] == out.stat().st_size
    assert [s["name"] for s in data["sections"][data["stub_section_count"] :]] == [
        ".osrel", ".cmdline", ".uname", ".initrd", ".linux"
    ]


@pytest.mark.real_binary
def test_tdvf_json_validates() -> None:
    # The shell run (tests/test_tdvf_cli.py checks what it says; --run-kernel's run takes minutes).
    code, data, _ = run_json(["tdvf", "--max-wall", "200"])
    assert code == EXIT_BOOTED and data["outcome"] == "shell", data["detail"]
    check("tdvf", code, data)


@pytest.mark.real_binary
def test_tdvf_json_with_the_kernels_handoff_validates() -> None:
    from lazyaccept.binaries import BinaryStore

    code, data, _ = run_json(["tdvf", "--kernel", str(BinaryStore().linux_vmlinuz()), "--max-wall", "200"])
    assert code == EXIT_BOOTED and data["outcome"] == "kernel", data["detail"]
    check("tdvf", code, data)
    assert data["handoff"]["e820"] and data["handoff"]["acpi"]["tables"]  # 2 GiB: all accepted, no table


def test_linux_differential_json_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wiring only (the real kernel's run takes minutes: tests/test_linux_differential.py)."""
    from lazyaccept.commands import differential as command
    from lazyaccept.linux_differential import LinuxDifferential, compare
    from tests.test_linux_differential import REAL

    def fake(ram: int, initrd: str, timeout_s: float) -> LinuxDifferential:
        d = compare(REAL, REAL)
        d.ram, d.edk2_profile, d.wall_s = ram, "ovmf-x64-2025.02", {"model": 0.5, "real": 300.0}
        return d

    monkeypatch.setattr(command, "run_linux_differential", fake)
    code, data, _ = run_json(["differential", "--linux", "-m", "4G"])
    check("differential", code, data)
    assert data["linux"] is True and code == EXIT_BOOTED


def test_compare_json_is_the_record_comparison_json_holds(tmp_path: Path) -> None:
    code, data, text = run_json(["compare", "--sizes", "4G", "--vcpus", "1", "--policies", "below-4g,256M",
                                 "--out", str(tmp_path)])
    assert code == EXIT_FAILED and data["failed_cell_count"] == 1  # 256M cannot hold the 64M initrd
    assert (tmp_path / "comparison.json").read_text() == text
    assert data["written"][-1] == str(tmp_path / "comparison.json") and len(data["written"]) > 4
    assert all(Path(p).is_file() for p in data["written"])
    check("compare", code, data)
    failed = [c for c in data["cells"] if not c["boots"]]
    assert [(c["policy"], c["failed_step"], c["os_ns"], c["ready_accepted_bytes"]) for c in failed] == [
        ("256M", "stub initrd buffer", None, None)
    ]


def test_advise_text_says_which_option_never_boots(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["advise", "-m", "1G", "-smp", "1", "--initrd-size", "900M"]) == EXIT_FAILED
    assert "no up-front size boots under upstream" in capsys.readouterr().err
    assert main(["advise", "-m", "4G", "-smp", "1", "--initrd-size", "16M"]) == EXIT_BOOTED


# ---------------------------------------------------------------------------------------------- negative cases


@pytest.fixture(scope="module")
def records() -> dict[str, dict[str, Any]]:
    """Valid records to break: compare, sec and workload (model runs, no binaries)."""
    out = {}
    for name in ("compare", "sec", "workload"):
        _, out[name], _ = run_json(MODEL_RUNS[name][0])
        assert errors(out[name]) == []
    return out


def broken(record: dict[str, Any], path: list[str | int], new: Any = None, *, rename: str | None = None,
           drop: bool = False) -> dict[str, Any]:
    r = copy.deepcopy(record)
    parent = r
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if rename is not None:
        parent[rename] = parent.pop(last)
    elif drop:
        del parent[last]
    else:
        parent[last] = new
    return r


@pytest.mark.parametrize(
    ("name", "path", "change", "needle"),
    [
        ("compare", ["cells", 0, "ram_bytes"], {"rename": "ram"}, "'ram' was unexpected"),
        ("compare", ["cells", 0, "firmware_accepted_bytes"], {"rename": "firmware_accepted"}, "unexpected"),
        ("compare", ["cells", 0, "ram_bytes"], {"new": "4G"}, "is not of type 'integer'"),
        ("compare", ["cells", 0, "sec_ns"], {"new": -1}, "less than the minimum"),
        ("compare", ["initrd_bytes"], {"drop": True}, "'initrd_bytes' is a required property"),
        ("compare", ["schema"], {"new": 2}, "3 was expected"),
        ("compare", ["command"], {"new": "matrices"}, "is not one of"),
        ("sec", ["sec", "tdx_stats"], {"rename": "tdcalls"}, "unexpected"),
        ("sec", ["td", "ram_entries", 0, "size_bytes"], {"rename": "size"}, "unexpected"),
        ("sec", ["truth_check"], {"new": "agree"}, "is not of type 'array'"),
        ("workload", ["fill", "virtual_ns"], {"rename": "ns"}, "unexpected"),
        ("workload", ["phases", 0, "accepted_by_actor"], {"new": {"linux-memmap": 1.5}}, "not of type 'integer'"),
        ("workload", ["outcome"], {"new": "crash: out of memory"}, "is not one of"),
        ("workload", ["wall_s"], {"new": 1.0}, "'wall_s' was unexpected"),
    ],
)
def test_a_renamed_key_or_a_wrong_type_fails_the_schema(
    records: dict[str, dict[str, Any]], name: str, path: list[str | int], change: dict[str, Any], needle: str
) -> None:
    found = errors(broken(records[name], path, **change))
    assert found and any(needle in e for e in found), found


def test_the_header_is_required_everywhere(records: dict[str, dict[str, Any]]) -> None:
    for key in ("schema", "lazyaccept", "command"):
        assert any(f"'{key}' is a required property" in e for e in errors(broken(records["sec"], [key], drop=True)))


@pytest.mark.real_binary
def test_the_boot_spellings_schema_3_replaced_fail(records: dict[str, dict[str, Any]]) -> None:
    _, boot, _ = run_json(["boot", "-m", "4G", "-smp", "1"])
    assert errors(boot) == [] and boot["scenario"]["options"] == []
    assert errors(broken(boot, ["scenario", "options"], "none"))
    assert errors(broken(boot, ["cpu", "explanation"], rename="why"))
    assert errors(broken(boot, ["cpu", "reason"], "because"))
    assert errors(broken(boot, ["scenario", "initrd_size_bytes"], rename="initrd_size"))
    assert errors(broken(boot, ["handoff", "e820", 0, "size_bytes"], rename="size"))
    assert errors(broken(boot, ["tdx_stats", "accepted_2m_count"], rename="accepted_2m"))


def test_the_schemas_codes_are_the_codes_the_code_writes() -> None:
    from lazyaccept.boot_report import Outcome
    from lazyaccept.cpu.select import CHOICE_REASONS
    from lazyaccept.tdvf_run import TdvfOutcome

    boot = SCHEMA["$defs"]["boot"]["properties"]
    assert boot["outcome"]["enum"] == [o.value for o in Outcome]
    assert boot["cpu"]["properties"]["reason"]["enum"] == [*CHOICE_REASONS, "not-run"]
    assert SCHEMA["$defs"]["tdvf"]["properties"]["outcome"]["enum"] == [o.value for o in TdvfOutcome]


def sub_errors(definition: str, record: dict[str, Any]) -> list[str]:
    validator = Draft202012Validator({"$defs": SCHEMA["$defs"], "$ref": f"#/$defs/{definition}"})
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(record)]


def test_a_kernel_runs_json_validates_on_both_firmwares() -> None:
    """--run-kernel's record (`tdvf` and `boot`), from a KernelRun made here: the real run takes minutes
    (tests/test_tdvf_kernel.py, tests/test_boot_run_kernel.py)."""
    from types import SimpleNamespace

    from lazyaccept.commands.boot import _kernel_run_dict
    from lazyaccept.commands.tdvf import kernel_run_fields
    from lazyaccept.guest.kernel_progress import AcceptCaller, KernelPhase, KernelProgress
    from lazyaccept.kernel_run import PythonFirmwareKernel
    from lazyaccept.tdvf_run import KernelRun, TdvfOutcome

    progress = KernelProgress([KernelPhase("early boot", "", 0, 3, 2, 4 << 20, 900), KernelPhase("/init", "x")],
                              [AcceptCaller("memblock_alloc", "", 4 << 20, 2, ["early boot"])], ["kallsyms"])
    run = KernelRun(
        "requested", "powered off", 0xFFFFFFFF81000000, {"rip": 1}, "tdx: Guest detected\n", [(1 << 32, 2 << 20)],
        3, {"MEM_PAGE_ACCEPT": 3}, {"MAP_GPA": 1}, {"exit 30": 5}, {}, 2, {"rdmsr 0x1b ve": 1},
        [("tdx: Guest detected", 2 << 20, 1)], 1.5, None, 123456, progress, [(0x7000000, 0x7400000)],
        {"Unaccepted": 100}, {"Unaccepted": 50}, [(1 << 32, 2 << 20)],
    )
    tdvf = json.loads(json.dumps(kernel_run_fields(run, [])))
    assert sub_errors("kernel_run", tdvf) == []
    assert sub_errors("kernel_run", {**tdvf, "io_sites": {"in": 2}}) and sub_errors("kernel_run", {**tdvf, "x": 1})
    kernel = PythonFirmwareKernel(run, TdvfOutcome.POWERED_OFF, "powered off", 0x1000, run.console, [], ["GetTime"])
    boot = json.loads(json.dumps(_kernel_run_dict(SimpleNamespace(kernel=kernel))))  # type: ignore[arg-type]
    assert sub_errors("boot_kernel_run", boot) == [] and boot["outcome"] == "powered-off"
    assert sub_errors("boot_kernel_run", {**boot, "firmware_runtime_calls": "GetTime"})
