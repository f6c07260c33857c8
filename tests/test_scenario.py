"""Scenario files (lazyaccept.scenario): the TOML keys against BootScenario and the boot flags, errors, `run`,
`boot --scenario`, and every file in examples/ booted and checked against its [expect]."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazyaccept import scenario as S
from lazyaccept.boot import BootScenario, run_boot
from lazyaccept.cli import build_parser, main
from lazyaccept.commands import boot
from lazyaccept.errors import ConfigError, LazyAcceptError

# matrix-*.toml are `lazyaccept matrix` files (tests/matrix), not scenarios
EXAMPLES = sorted(
    p for p in (Path(__file__).parents[1] / "examples").glob("*.toml") if not p.name.startswith("matrix-")
)


def toml_text(data: dict[str, Any]) -> str:
    """A small TOML writer for the tables these tests build (tomllib only reads)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)  # a JSON string is a valid TOML basic string
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        return repr(v)

    out = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, table in data.items():
        if not isinstance(table, dict):
            continue
        out.append(f"[{section}]")
        out += [f"{k} = {value(v)}" for k, v in table.items()]
    return "\n".join(out) + "\n"


def write(tmp_path: Path, data: dict[str, Any] | str, name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else toml_text(data))
    return p


def boot_args(*flags: str):
    parser, _ = build_parser()
    return parser.parse_args(["boot", *flags])


def flags_scenario(*flags: str) -> BootScenario:
    return boot.scenario_from_args(boot_args(*flags))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    for name in ("vmlinuz", "initrd.img", "OVMF.fd", "grubx64.efi", "app.efi", "shimx64.efi", "disk.img"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "esp").mkdir()
    return {p.name: str(p) for p in tmp_path.iterdir()}


def samples(f: dict[str, str]) -> dict[str, dict[str, Any]]:
    """For each BootScenario field, a file that sets it to something other than the CLI default."""
    grub = {"kind": "grub"}
    return {
        "ram": {"td": {"ram": "4G"}},
        "smp": {"td": {"vcpus": 2}},
        "profile": {"td": {"host_profile": "kvm-4k"}},
        "hob_convention": {"td": {"hob_convention": "cloud-hypervisor"}},
        "firmware": {"firmware": {"image": f["OVMF.fd"]}},
        "firmware_exec": {"firmware": {"exec": True}},
        "shim": {"firmware": {"exec": True, "shim": f["shimx64.efi"]}},
        "edk2_profile": {"firmware": {"profile": "inteltdx-2026.08"}},
        "upfront": {"firmware": {"upfront": "256M"}},
        "option1": {"firmware": {"on_demand": [1]}},
        "option2": {"firmware": {"on_demand": [2]}},
        "option3": {"firmware": {"on_demand": [3]}},
        "accept_all_at_exit": {"firmware": {"accept_all_at_exit": True}},
        "memory_acceptance_protocol": {"firmware": {"memory_acceptance_protocol": True}},
        "cc_measurement": {"firmware": {"cc_measurement": False}},
        "tcg2": {"firmware": {"tcg2": True}},
        "grub": {"loader": grub},
        "systemd_boot": {"loader": {"kind": "systemd-boot"}},
        "stream_initrd": {"loader": {"stream_initrd": True}},
        "disk_from": {"loader": {**grub, "disk_from": f["esp"]}},
        "disk": {"loader": {**grub, "disk": f["disk.img"]}},
        "grub_efi": {"loader": {**grub, "grub_efi": f["grubx64.efi"]}},
        "grub_timeout": {"loader": {**grub, "grub_timeout": 5}},
        "grub_cfg": {"loader": {**grub, "grub_cfg": ""}},
        "fat_bits": {"loader": {**grub, "fat": 16}},
        "keys": {"loader": {**grub, "keys": ["ls\\n"]}},
        "interactive": {"loader": {**grub, "interactive": True}},
        "kernel": {"payload": {"kernel": f["vmlinuz"]}},
        "initrd": {"payload": {"initrd": f["initrd.img"]}},
        "initrd_size": {"payload": {"initrd_size": "1M"}},
        "cmdline": {"payload": {"cmdline": "quiet"}},
        "efi_app": {"loader": {"kind": "efi-app"}, "payload": {"efi_app": f["app.efi"]}},
        "uki": {"loader": {"kind": "uki"}},
        "cpu": {"cpu": {"backend": "unicorn"}},
        "os_ready_bytes": {"os": {"ready_bytes": 0}},
        "run_kernel": {"os": {"run_kernel": True}},
        "rng_seed": {"run": {"rng_seed": 7}},
        "timeout_s": {"run": {"timeout_s": 5}},
        "log_calls": {"run": {"log_calls": False}},
    }


def test_every_boot_scenario_field_is_reachable_from_its_key(tmp_path: Path, files: dict[str, str]) -> None:
    names = {f.name for f in fields(BootScenario)}
    assert set(S.FIELD_KEYS) | set(S.NOT_EXPOSED) == names, "a BootScenario field has no TOML key and no reason"
    assert not set(S.FIELD_KEYS) & set(S.NOT_EXPOSED)
    defaults = S.cli_defaults()
    for name, key in S.FIELD_KEYS.items():
        data = samples(files)[name]
        section, k = key.split(".")
        assert k in data[section], f"the sample for {name} does not use {key}"
        got = S.load_scenario(write(tmp_path, data)).scenario
        assert getattr(got, name) != getattr(defaults, name), f"{key} does not change BootScenario.{name}"


def test_every_boot_flag_maps_to_scenario_fields() -> None:
    parser, _ = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["boot"]
    names = {f.name for f in fields(BootScenario)}
    for action in sub._actions:
        assert action.dest in S.FLAG_FIELDS or action.dest in S.NOT_SCENARIO_FLAGS, f"--{action.dest} is not mapped"
    assert all(set(t) <= names for t in S.FLAG_FIELDS.values())


def test_docstring_documents_every_key() -> None:
    doc = S.__doc__ or ""
    for section, keys in S.KNOWN_KEYS.items():
        part = doc.split(f"[{section}]", 1)[1].split("\n    [", 1)[0]
        for key in keys:
            assert f"\n    {key} = " in part, f"{section}.{key} is not documented"


def test_defaults_are_the_cli_defaults(tmp_path: Path) -> None:
    sc = S.load_scenario(write(tmp_path, "")).scenario
    assert sc == flags_scenario()
    assert (sc.ram, sc.smp) == (64 << 30, 8)  # -smp's default, which is BootScenario's


def test_a_file_equals_its_flags(tmp_path: Path, files: dict[str, str]) -> None:
    data = {
        "td": {"ram": "4G", "vcpus": 2, "host_profile": "kvm-4k"},
        "firmware": {
            "image": "OVMF.fd",  # relative to the file's folder
            "upfront": 256 << 20,
            "on_demand": [1, 3],
            "accept_all_at_exit": True,
            "memory_acceptance_protocol": True,
            "cc_measurement": False,
            "tcg2": True,
        },
        "loader": {"stream_initrd": True},
        "payload": {"kernel": "vmlinuz", "initrd_size": "64M", "cmdline": "console=ttyS0 quiet"},
        "cpu": {"backend": "unicorn"},
        "run": {"rng_seed": 5, "timeout_s": 30, "log_calls": False},
    }
    flags = (
        "-m 4G -smp 2 --profile kvm-4k --upfront 256M --option 1 --option 3 --accept-all-at-exit "
        "--allow-unaccepted-protocol --no-cc-measurement --tcg2 --stream-initrd --initrd-size 64M --cpu unicorn "
        "--rng-seed 5 --timeout 30 --no-log"
    ).split()
    flags += ["--firmware", files["OVMF.fd"], "--kernel", files["vmlinuz"], "--append", "console=ttyS0 quiet"]
    assert S.load_scenario(write(tmp_path, data)).scenario == flags_scenario(*flags)


def test_a_grub_file_equals_its_flags(tmp_path: Path, files: dict[str, str]) -> None:
    data = {
        "loader": {
            "kind": "grub",
            "grub_efi": "grubx64.efi",
            "grub_timeout": 3,
            "fat": 16,
            "keys": ["e\\n"],
            "keys_at_prompt": ["lsefimmap\\n"],
        },
        "payload": {"initrd_size": "1G"},
    }
    flags = ["--grub", "--grub-efi", files["grubx64.efi"], "--grub-timeout", "3", "--fat", "16", "--initrd-size", "1G"]
    flags += ["--type", "e\\n", "--type-at-prompt", "lsefimmap\\n"]
    sc = S.load_scenario(write(tmp_path, data)).scenario
    assert sc == flags_scenario(*flags)
    assert sc.keys == [("", "e\n"), ("grub>", "lsefimmap\n")]


def test_keys_as_tables_wait_for_their_text(tmp_path: Path) -> None:
    data = {"loader": {"kind": "grub", "keys": [{"after": "Booting", "type": "{esc}"}, "c"]}}
    assert S.load_scenario(write(tmp_path, data)).scenario.keys == [("Booting", "{esc}"), ("", "c")]


def test_relative_paths_resolve_against_the_files_folder(tmp_path: Path) -> None:
    (tmp_path / "sub" / "k").mkdir(parents=True)
    (tmp_path / "sub" / "k" / "vmlinuz").write_bytes(b"x")
    p = write(tmp_path / "sub", {"payload": {"kernel": "k/vmlinuz"}})
    assert S.load_scenario(p).scenario.kernel == str(tmp_path / "sub" / "k" / "vmlinuz")


def test_a_host_profile_file_is_relative_to_the_scenario(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "slow.toml").write_text('base = "kvm-4k"\nexit_ns = 9000\n')
    sc = S.load_scenario(write(tmp_path, {"td": {"host_profile": "p/slow.toml"}})).scenario
    assert sc.profile == str(tmp_path / "p" / "slow.toml")
    (tmp_path / "p" / "slow.toml").write_text("exit_ns = -1\n")
    with pytest.raises(S.ScenarioError, match="^td.host_profile: .*must be a non-negative number"):
        S.load_scenario(tmp_path / "s.toml")


def test_flags_given_with_scenario_win_over_the_file(tmp_path: Path, files: dict[str, str]) -> None:
    p = write(tmp_path, {
        "td": {"ram": "4G", "vcpus": 2},
        "firmware": {"upfront": "256M", "on_demand": [1, 3]},
        "payload": {"initrd_size": "64M", "cmdline": "quiet"},
    })
    sc = flags_scenario("--scenario", str(p))
    assert (sc.ram, sc.smp, sc.upfront, sc.option1, sc.option3, sc.initrd_size) == (4 << 30, 2, "256M", 1, 1, 64 << 20)
    # a flag wins even when it spells the CLI default; --option replaces the list; --initrd drops initrd_size
    sc = flags_scenario("--scenario", str(p), "--upfront", "below-4g", "-smp", "8", "--option", "2",
                        "--initrd", files["initrd.img"])
    assert (sc.upfront, sc.smp, sc.option1, sc.option2, sc.option3) == ("below-4g", 8, False, True, False)
    assert (sc.initrd, sc.initrd_size, sc.ram, sc.cmdline) == (files["initrd.img"], None, 4 << 30, "quiet")


@pytest.mark.real_binary
def test_write_disk_dir_uses_the_merged_scenario(tmp_path: Path) -> None:
    p = write(tmp_path, {"loader": {"kind": "grub"}, "payload": {"initrd_size": "64M", "cmdline": "quiet"}})
    esp = tmp_path / "esp"
    sc = flags_scenario("--scenario", str(p), "--write-disk-dir", str(esp), "--append", "console=ttyS0 loud")
    assert (sc.grub, sc.disk_from) == (True, str(esp))
    assert "console=ttyS0 loud" in (esp / "grub.cfg").read_text()
    assert sum(f.stat().st_size for f in esp.iterdir() if f.name.startswith("initrd")) == 64 << 20


BAD = [
    ('[td]\nram = "sixty"\n', "td.ram: invalid size 'sixty'"),
    ("[td]\nram = -1\n", "td.ram: invalid size -1: must not be negative"),
    ("[td]\nram = 5000\n", "td.ram: RAM size 5000 must be a positive multiple of 4 KiB"),
    ('[td]\nram = "128T"\n', "td.ram: RAM size 128T is beyond what lazyaccept models"),
    ('[td]\nhost_profile = "slow.toml"\n', "td.host_profile: no such file"),
    ("[td]\nhost_profile = 3\n", "td.host_profile: expected a string, got an integer 3"),
    ("[td]\nhost_profile = [1]\n", "td.host_profile: expected a string, got an array [1]"),
    ('[td]\nvcpus = "8"\n', "td.vcpus: expected a whole number, got a string '8'"),
    ("[td]\nvcpus = true\n", "td.vcpus: expected a whole number, got a boolean"),
    ("[td]\nvcpus = 0\n", "td.vcpus: 0 is out of range"),
    ('[td]\nhost_profile = "kvm-9m"\n', "td.host_profile: unknown host profile 'kvm-9m'"),
    ('[td]\nhob_convention = "xen"\n', "td.hob_convention: unknown value 'xen'"),
    ('[firmware]\nprofile = "ovmf-9"\n', "firmware.profile: unknown value 'ovmf-9'"),
    ("[td]\nmemory = 1\n", "td.memory: unknown key"),
    ("[tdx]\nram = 1\n", "tdx: unknown section (did you mean 'td'?)"),
    ("td = 3\n", "td: expected a [td] table"),
    ('ram = "4G"\n', "ram: unknown key (keys go in sections such as [td])"),
    ('[firmware]\nupfront = "sometimes"\n', "firmware.upfront: unknown up-front policy 'sometimes'"),
    ('[td]\nram = "4G"\n[firmware]\nupfront = "5G"\n', "firmware.upfront: up-front size 5G is larger than"),
    ("[firmware]\non_demand = [4]\n", "firmware.on_demand: unknown on-demand option 4"),
    ("[firmware]\non_demand = 1\n", "firmware.on_demand: expected a list"),
    ("[firmware]\non_demand = [1.0]\n", "firmware.on_demand: unknown on-demand option 1.0"),
    ('[firmware]\ntcg2 = "yes"\n', "firmware.tcg2: expected true or false"),
    ('[payload]\ninitrd = "a"\ninitrd_size = "1G"\n', "payload.initrd_size: give payload.initrd or"),
    ('[payload]\nkernel = "no-such-vmlinuz"\n', "payload.kernel: no such file"),
    ('[payload]\nkernel = "debian:linux-9"\n', "payload.kernel: unknown Debian binary 'debian:linux-9'"),
    ('[payload]\nefi_app = "x.efi"\n', 'payload.efi_app: needs loader.kind = "efi-app"'),
    ('[loader]\nkind = "efi-app"\n', "loader.kind: loader.kind = \"efi-app\" needs payload.efi_app"),
    ('[loader]\nkind = "pxe"\n', "loader.kind: unknown value 'pxe'"),
    ("[loader]\nfat = 32\n", 'loader.fat: only with loader.kind = "grub"'),
    ('[loader]\nkind = "grub"\nfat = 12\n', "loader.fat: FAT12 is not offered"),
    ('[loader]\nkind = "systemd-boot"\ngrub_efi = "x.efi"\n', 'loader.grub_efi: only with loader.kind = "grub"'),
    ('[loader]\nkind = "systemd-boot"\nstream_initrd = true\n', "loader.stream_initrd: systemd-boot reads the"),
    ('[loader]\nkind = "grub"\nkeys = [1]\n', "loader.keys[0]: expected a string or"),
    ('[cpu]\nbackend = "qemu"\n', "cpu.backend: unknown value 'qemu'"),
    ('[os]\nready_bytes = "lots"\n', "os.ready_bytes: invalid size 'lots'"),
    ("[run]\ntimeout_s = 0\n", "run.timeout_s: 0 must be a positive number of seconds"),
    ("[run]\ntimeout_s = inf\n", "run.timeout_s: inf must be a positive number of seconds"),
    ('[expect]\noutcome = "booted"\n', "expect.outcome: unknown value 'booted'"),
    ("[expect]\nexit_code = 2\n", "expect.exit_code: 2 is no exit code of a boot"),
    ("[td]\nram = \n", "invalid TOML: Invalid value (at line 2, column 7)"),
    ("[td]\nram = '4G'\n[td]\n", "invalid TOML: Cannot declare ('td',) twice (at line 3, column 4)"),
]


@pytest.mark.parametrize(("text", "needle"), BAD, ids=[b[1][:40] for b in BAD])
def test_bad_file_exits_2_with_one_line_naming_the_key(tmp_path: Path, capsys, text: str, needle: str) -> None:
    p = write(tmp_path, text)
    for command in ("run", "boot"):
        argv = ["run", str(p)] if command == "run" else ["boot", "--scenario", str(p)]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"lazyaccept {command}: error: "), err
        assert needle in err
        if "TOML" in needle:
            assert str(p) in err  # a syntax error names the file


def test_write_disk_dir_that_cannot_be_written_names_the_key(tmp_path: Path, files: dict[str, str], capsys) -> None:
    (tmp_path / "plain").write_text("a file, not a folder")
    data = {"loader": {"kind": "grub", "write_disk_dir": "plain/esp"}, "payload": {"kernel": "vmlinuz"}}
    assert main(["run", str(write(tmp_path, data))]) == 2
    assert capsys.readouterr().err.startswith("lazyaccept run: error: loader.write_disk_dir: cannot write")


def test_missing_file_and_no_traceback(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "lazyaccept", "run", str(tmp_path / "none.toml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "not found" in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1


@pytest.mark.real_binary
def test_run_reports_as_boot_does_and_a_missed_expect_exits_1(tmp_path: Path, capsys) -> None:
    # The upstream example fails in the loader within a second: cheap to run twice.
    src = tomllib.loads((EXAMPLES[0].parent / "direct-boot-64g-upstream.toml").read_text())
    assert main(["boot", "-m", "64G", "-smp", "8", "--upfront", "256M", "--initrd-size", "1G", "--json"]) == 1
    by_flags = json.loads(capsys.readouterr().out)
    src["expect"] = {"outcome": "kernel-entry", "exit_code": 0}
    p = write(tmp_path, src)
    assert main(["run", str(p), "--json"]) == 1
    out = capsys.readouterr()
    by_file = json.loads(out.out)
    assert by_file.pop("expect") == {"outcome": "kernel-entry", "exit_code": 0, "met": False}
    assert (by_flags.pop("command"), by_file.pop("command")) == ("boot", "run")
    for d in (by_flags, by_file):
        d.pop("wall_s")
    assert by_file == by_flags
    assert out.err == (
        f"lazyaccept run: {p}: expected outcome kernel-entry, exit code 0; got outcome loader-failed, exit code 1\n"
    )


@pytest.mark.real_binary
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_boots_as_it_expects(path: Path, capsys) -> None:
    expect = tomllib.loads(path.read_text())["expect"]  # read here, not through the loader under test
    code = main(["run", str(path), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert (data["outcome"], data["exit_code"], code) == (expect["outcome"], expect["exit_code"], expect["exit_code"])
    assert data["expect"]["met"] is True


def test_examples_cover_the_readme_cases() -> None:
    kinds = {p.stem: tomllib.loads(p.read_text()) for p in EXAMPLES}
    for kind in ("grub", "systemd-boot", "uki"):
        assert any(d.get("loader", {}).get("kind") == kind for d in kinds.values()), kind
    assert any(d.get("payload", {}).get("kernel") == "debian:linux-6.1" for d in kinds.values())
    assert any(d.get("firmware", {}).get("shim") == "debian:shim-signed" for d in kinds.values())
    assert all("expect" in d for d in kinds.values())


_values = st.one_of(
    st.booleans(),
    st.integers(-(1 << 64), 1 << 64),
    st.floats(allow_nan=True),
    st.sampled_from(["64G", "4G", "256M", "grub", "efi-app", "all", "sixty", "", "kvm-4k", "unicorn", "ls\\n"]),
    st.lists(st.integers(-1, 5), max_size=3),
    st.lists(st.text(max_size=5), max_size=2),
    st.dictionaries(st.sampled_from(["after", "type", "x"]), st.text(max_size=5), max_size=2),
)
_sections = st.sampled_from([*S.KNOWN_KEYS, "tdx"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(_sections, st.dictionaries(
    st.sampled_from([k for keys in S.KNOWN_KEYS.values() for k in keys] + ["bogus"]), _values, max_size=4
), max_size=4))
def test_any_table_loads_or_fails_with_one_named_line(tmp_path: Path, data: dict[str, Any]) -> None:
    try:
        sf = S.scenario_from_dict(data, tmp_path)
    except LazyAcceptError as exc:
        msg = str(exc)
        assert "\n" not in msg and msg.split(":", 1)[0].split(".")[0] in {*S.KNOWN_KEYS, "tdx"}, msg
    else:
        assert isinstance(sf.scenario, BootScenario)


def test_a_shim_needs_the_real_firmware(tmp_path: Path, files: dict[str, str]) -> None:
    with pytest.raises(S.ScenarioError, match=r"^firmware\.shim: only with firmware\.exec = true"):
        S.load_scenario(write(tmp_path, {"firmware": {"shim": files["shimx64.efi"]}}))
    with pytest.raises(ConfigError, match="--shim needs --firmware-exec"):
        run_boot(flags_scenario("--shim", files["shimx64.efi"]))
    assert flags_scenario("-shim", files["shimx64.efi"], "--firmware-exec").shim == files["shimx64.efi"]


def test_a_json_scenario_is_the_same_tables(tmp_path: Path) -> None:
    data = {"td": {"ram": "8G", "vcpus": 2}, "firmware": {"upfront": "256M", "on_demand": ["allocator"]},
            "payload": {"initrd_size": "64M"}, "run": {"timeout_s": 30.5}}
    (tmp_path / "s.toml").write_text(toml_text(data))
    (tmp_path / "s.json").write_text(json.dumps(data))
    assert S.load_scenario(tmp_path / "s.json").scenario == S.load_scenario(tmp_path / "s.toml").scenario
    (tmp_path / "bad.json").write_text('{"td": {"ram": "8G",}}')
    with pytest.raises(LazyAcceptError, match=r"bad.json: invalid JSON: Expecting property name"):
        S.load_scenario(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(LazyAcceptError, match=r"list.json: expected a JSON object of tables, got an array"):
        S.load_scenario(tmp_path / "list.json")
    (tmp_path / "key.json").write_text(json.dumps({"td": {"ram": "sixty"}}))
    with pytest.raises(S.ScenarioError, match=r"^td.ram: invalid size 'sixty'"):
        S.load_scenario(tmp_path / "key.json")
