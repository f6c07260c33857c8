"""On-demand options by name (allocator, loader, accept-service) beside the RFC's numbers; compare's policies as
UPFRONT[+OPTION...]; compare with a host profile file names its outputs after the profile."""

from __future__ import annotations

import json
import re

import pytest

from lazyaccept.cli import build_parser, main
from lazyaccept.commands.boot import scenario_from_args
from lazyaccept.compare import DEFAULT_POLICIES, Policy, compare
from lazyaccept.errors import ConfigError
from lazyaccept.scenario import ScenarioError, scenario_from_dict
from lazyaccept.units import GiB, MiB

PARSER = build_parser()[0]


@pytest.mark.parametrize(
    ("flags", "on"),
    [
        ([], (False, False, False)),
        (["--on-demand", "allocator"], (True, False, False)),
        (["--on-demand", "loader,accept-service"], (False, True, True)),
        (["--option", "1", "--option", "3"], (True, False, True)),
        (["--on-demand", "loader", "--option", "1"], (True, True, False)),
        (["--on-demand", "none"], (False, False, False)),
        (["--on-demand", "option3"], (False, False, True)),
    ],
)
def test_on_demand_names_and_numbers_set_the_same_options(flags: list[str], on: tuple[bool, bool, bool]) -> None:
    sc = scenario_from_args(PARSER.parse_args(["boot", *flags]))
    assert (sc.option1, sc.option2, sc.option3) == on


def test_unknown_on_demand_name_exits_2_naming_it(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        PARSER.parse_args(["boot", "--on-demand", "allocater"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown on-demand option 'allocater': choose from allocator (1), loader (2), accept-service (3)" in err


def test_scenario_on_demand_takes_names_or_numbers(tmp_path) -> None:
    sf = scenario_from_dict({"firmware": {"on_demand": ["allocator", 3]}}, tmp_path)
    assert (sf.scenario.option1, sf.scenario.option2, sf.scenario.option3) == (True, False, True)
    with pytest.raises(ScenarioError, match=r"^firmware.on_demand: unknown on-demand option 'alloc'"):
        scenario_from_dict({"firmware": {"on_demand": ["alloc"]}}, tmp_path)


@pytest.mark.parametrize(
    ("text", "upfront", "option"),
    [
        ("128M+option1", "128M", "option1"),
        ("128+allocator", "128M", "option1"),
        ("below-4g+option2+option3", "below-4g", "option2+option3"),
        ("below-4g+loader+accept-service", "below-4g", "option2+option3"),
        ("all", "all", "none"),
        ("eager", "all", "none"),
        ("1G", "1G", "none"),
    ],
)
def test_any_upfront_plus_options_is_a_policy(text: str, upfront: str, option: str) -> None:
    p = Policy.parse(text, bare_unit=MiB)
    assert (p.upfront, p.option) == (upfront, option)


def test_default_policy_names_are_unchanged() -> None:
    assert [Policy.parse(p.name) for p in DEFAULT_POLICIES] == DEFAULT_POLICIES


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("sometimes", "invalid policy 'sometimes': 'sometimes' is no up-front policy"),
        ("128M+option4", "invalid policy '128M+option4': unknown on-demand option 'option4'"),
        ("0+option1", "invalid policy '0+option1': up-front size '0' must be larger than zero"),
    ],
)
def test_bad_policies_name_the_part(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        Policy.parse(text, bare_unit=MiB)


def test_combined_options_reach_the_model() -> None:
    # 256M up front cannot hold a 1G initrd blob; the loader's accept-ahead (option 2) can; option 3 on top as well.
    cmp = compare([Policy.parse(t) for t in ("256M", "256M+loader", "256M+loader+accept-service")], [64 * GiB], [8],
                  initrd_bytes=1 * GiB)
    assert [c.boots for c in cmp.cells] == [False, True, True]


def test_compare_with_a_profile_file_names_outputs_after_the_profile(tmp_path, capsys) -> None:
    prof = tmp_path / "conf" / "my.toml"
    prof.parent.mkdir()
    prof.write_text('base = "kvm-4k"\nexit_ns = 9000\n')
    named = tmp_path / "other.toml"
    named.write_text('name = "slowhost"\nbase = "kvm-2m"\n')
    out = tmp_path / "cmp"
    assert main(["compare", "--sizes", "4G", "--vcpus", "1", "--profiles", f"{prof},{named}", "--policies",
                 "below-4g,128+option1", "--out", str(out), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["failed_cell_count"] == 2  # 128M+option1: the stub's kernel slot search never calls AllocatePages
    assert {c["profile"] for c in data["cells"]} == {"my", "slowhost"}
    assert {c["policy"] for c in data["cells"]} == {"below-4g", "128M+option1"}
    for name in ("time_my_1vcpu.svg", "accepted_slowhost_1vcpu.png", "address_space.svg"):
        assert (out / name).stat().st_size > 1000
    assert "(my, 1 vCPUs)" in (out / "time_my_1vcpu.svg").read_text()


def test_two_profiles_with_one_name_are_refused(tmp_path, capsys) -> None:
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "host.toml").write_text('base = "kvm-2m"\n')
    profiles = f"{tmp_path}/a/host.toml,{tmp_path}/b/host.toml"
    code = main(["compare", "--sizes", "4G", "--vcpus", "1", "--profiles", profiles])
    assert code == 2 and "are both named 'host'" in capsys.readouterr().err
