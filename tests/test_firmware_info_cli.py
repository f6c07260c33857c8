"""`lazyaccept firmware-info`: table, JSON, and exit code 2 with one line for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lazyaccept import binaries, cli
from lazyaccept.vmm.tdvf import builtin_ovmf_metadata, synthesize_image

BUILTIN = builtin_ovmf_metadata()


@pytest.fixture
def ovmf_like(tmp_path):
    """An image with the same metadata as Debian's OVMF.fd (zeros elsewhere)."""
    path = tmp_path / "OVMF.fd"
    image = synthesize_image(BUILTIN.sections, BUILTIN.image_size, descriptor_offset=BUILTIN.descriptor_offset)
    path.write_bytes(image)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["firmware-info", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(out: str) -> list[list[str]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#  type"))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


EXPECTED_ROWS = [
    ["0", "BFV", "0x84000", "0x37c000", "0xffc84000", "0x37c000", "MR_EXTEND", "ADD+MR.EXTEND", "image", "ROM"],
    ["1", "CFV", "0x0", "0x84000", "0xffc00000", "0x84000", "-", "ADD", "image", "ROM"],
    ["2", "TEMP_MEM", "0x0", "0x0", "0x811000", "0xf000", "-", "ADD", "zero", "RAM"],
    ["3", "TEMP_MEM", "0x0", "0x0", "0x80b000", "0x2000", "-", "ADD", "zero", "RAM"],
    ["4", "TD_HOB", "0x0", "0x0", "0x809000", "0x2000", "-", "ADD", "zero", "RAM"],
    ["5", "TEMP_MEM", "0x0", "0x0", "0x800000", "0x6000", "-", "ADD", "zero", "RAM"],
]


def test_table(capsys, ovmf_like):
    code, out, err = run(capsys, str(ovmf_like))
    assert code == 0 and err == ""
    assert "image size: 0x400000" in out
    assert "ROM base:   0xffc00000" in out
    assert table_rows(out) == EXPECTED_ROWS


def test_builtin_table(capsys):
    code, out, _ = run(capsys, "--builtin")
    assert code == 0
    assert "firmware:   builtin" in out
    assert table_rows(out) == EXPECTED_ROWS


def test_json(capsys, ovmf_like):
    code, out, _ = run(capsys, str(ovmf_like), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["image_bytes"] == 0x400000 and data["rom_base"] == 0xFFC00000
    assert data["source"] == str(ovmf_like)
    assert data["sections"][0] == {
        "index": 0, "type": "BFV", "type_value": 0, "raw_offset": 0x84000, "raw_size_bytes": 0x37C000,
        "memory_base": 0xFFC84000, "memory_size_bytes": 0x37C000, "attributes": ["MR_EXTEND"], "attributes_value": 1,
        "qemu_add": "ADD+MR.EXTEND", "content": "image", "region": "ROM",
    }
    assert [s["type"] for s in data["sections"]] == ["BFV", "CFV", "TEMP_MEM", "TEMP_MEM", "TD_HOB", "TEMP_MEM"]


def test_builtin_json_equals_image_json(capsys, ovmf_like):
    _, from_image, _ = run(capsys, str(ovmf_like), "--json")
    _, builtin, _ = run(capsys, "--builtin", "--json")
    a, b = json.loads(from_image), json.loads(builtin)
    assert a.pop("source") != b.pop("source")
    assert a == b


def test_bad_image_exits_2_with_one_line(capsys, tmp_path, ovmf_like):
    image = bytearray(ovmf_like.read_bytes())
    image[BUILTIN.descriptor_offset] = ord("X")  # the signature
    bad = tmp_path / "bad.fd"
    bad.write_bytes(bytes(image))
    code, out, err = run(capsys, str(bad))
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert "signature" in err and "TDVF_DESCRIPTOR.Signature" in err and f"offset {BUILTIN.descriptor_offset:#x}" in err


def test_missing_file_exits_2_with_one_line(capsys, tmp_path):
    code, out, err = run(capsys, str(tmp_path / "nope.fd"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "nope.fd" in err and "No such file" in err


def test_image_and_builtin_exclude_each_other(capsys, ovmf_like):
    with pytest.raises(SystemExit) as info:
        cli.main(["firmware-info", "--builtin", str(ovmf_like)])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["firmware-info"])
    assert info.value.code == 2


@pytest.mark.real_binary
def test_real_ovmf_fd_through_the_installed_command():
    proc = subprocess.run(
        [sys.executable, "-m", "lazyaccept", "firmware-info", str(binaries.ovmf_fd()), "--json"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [(s["type"], s["memory_base"], s["memory_size_bytes"]) for s in data["sections"]] == [
        (s.type.name, s.memory_base, s.memory_size) for s in BUILTIN.sections
    ]


@pytest.mark.real_binary
def test_real_ovmf_code_4m_is_refused(capsys):
    code, out, err = run(capsys, str(binaries.ovmf_code_4m_fd()))
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert "TDVF_SECTION[0].RawDataSize" in err and "BFV raw data" in err and "runs past the end" in err
