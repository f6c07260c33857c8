"""Every command's JSON starts with the same three keys (docs/JSON.md): the schema version, the lazyaccept
version and the command, so a CI job can tell what it is reading before it reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazyaccept import __version__
from lazyaccept.cli import JSON_SCHEMA_VERSION, main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

COMMANDS = {
    "sec": ["sec", "-m", "4G", "-smp", "2"],
    "firmware-info": ["firmware-info", "--builtin"],
    "workload": ["workload", "-m", "8G", "-smp", "2", "--fill", "1G", "--workers", "1"],
    "advise": ["advise", "-m", "4G", "-smp", "2", "--initrd-size", "16M"],
    "compare": ["compare", "--sizes", "4G", "--vcpus", "2", "--profiles", "kvm-2m", "--policies", "below-4g"],
    "boot": ["boot", "-m", "4G", "-smp", "2"],
    "run": ["run", str(EXAMPLES / "below-4g-4g.toml")],
}


@pytest.mark.real_binary
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_json_names_its_schema_version_and_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([*COMMANDS[command], "--json"])
    data = json.loads(capsys.readouterr().out)
    assert list(data)[:3] == ["schema", "lazyaccept", "command"]
    assert (data["schema"], data["lazyaccept"], data["command"]) == (JSON_SCHEMA_VERSION, __version__, command)
    assert code == data.get("exit_code", code)
