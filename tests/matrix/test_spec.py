"""The matrix file (lazyaccept.matrix.spec): parsing and its errors, the cells of the product, [[skip]] filters and
the built-in skips, and the cache key following the binaries' content."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from lazyaccept.matrix.cell import FILE_REF_PREFIX
from lazyaccept.matrix.spec import expand, label, load_matrix, matrix_from_dict
from lazyaccept.scenario import ScenarioError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "matrix-small.toml"


def spec(data: dict[str, Any], folder: Path = Path(".")) -> Any:
    return matrix_from_dict(data, folder.resolve())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"axes": {"ram": ["4G", "sixty"]}}, "axes.ram[1]: invalid size 'sixty'"),
        ({"axes": {"rams": ["4G"]}}, "axes.rams: unknown axis (did you mean 'ram'?)"),
        ({"axes": {"ram": []}}, "axes.ram: expected a non-empty list"),
        ({"axes": {"ram": "4G"}}, "axes.ram: expected a non-empty list, got a string"),
        ({"axes": {"loader": ["grub", "lilo"]}}, "axes.loader[1]: unknown value 'lilo'"),
        ({"axes": {"kernel": ["debian:linux-9.9"]}}, "axes.kernel[0]: unknown Debian binary 'debian:linux-9.9'"),
        ({"axes": {"kernel": ["no-such-vmlinuz"]}}, "axes.kernel[0]: 'no-such-vmlinuz' is no file"),
        ({"axes": {"on_demand": [["allocator"], ["teleport"]]}}, "axes.on_demand[1]: unknown on-demand option"),
        ({"axes": {"vcpus": [0]}}, "axes.vcpus[0]: 0 is out of range"),
        ({"axes": {"vcpus": [True]}}, "axes.vcpus[0]: expected a whole number, got a boolean"),
        ({"axes": {"ram": ["4G", "4096M"]}}, "axes.ram[1]: '4096M' repeats axes.ram[0]"),
        ({"axes": {"os": ["model", "vm"]}}, "axes.os[1]: unknown value 'vm'"),
        ({"axes": {"firmware": ["ovmf-x64-1999.01"]}}, "axes.firmware[0]: 'ovmf-x64-1999.01' is no file nor one of"),
        ({"axes": {}}, "axes: no axis"),
        ({"base": {"td": {"ram": "sixty"}}, "axes": {"vcpus": [1]}}, "base.td.ram: invalid size 'sixty'"),
        ({"base": {"expect": {"outcome": "kernel-entry"}}, "axes": {"vcpus": [1]}}, "base.expect: not in a matrix"),
        ({"base": {"loader": {"kind": "grub", "disk_from": "."}}, "axes": {"vcpus": [1]}},
         "base.loader.disk_from: a folder cannot travel"),
        ({"axes": {"vcpus": [1]}, "budget": 3}, "budget: unknown key (did you mean 'budget_s'?)"),
        ({"axes": {"vcpus": [1]}, "budget_s": -1}, "budget_s: expected a positive number of seconds"),
        ({"axes": {"vcpus": [1]}, "skip": [{"ram": "4G"}]}, "skip[0].ram: not an axis of this matrix"),
        ({"axes": {"vcpus": [1]}, "skip": [{"reason": "x"}]}, "skip[0]: no condition"),
        ({"axes": {"vcpus": [1]}, "skip": [{"vcpus": "one"}]}, "skip[0].vcpus: expected a whole number"),
    ],
)
def test_errors_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        spec(data)
    assert str(exc.value).startswith(message), str(exc.value)


def test_the_example_file_loads_and_expands() -> None:
    s = load_matrix(EXAMPLE)
    assert list(s.axes) == ["loader", "ram", "upfront", "on_demand"]
    cells = expand(s)
    assert len(cells) == 12
    assert [c.label for c in cells[:2]] == ["qemu-direct-boot/4G/upfront=256M/none",
                                            "qemu-direct-boot/4G/upfront=256M/allocator"]
    skipped = [c for c in cells if c.task is None]
    assert [c.label for c in skipped] == ["uki/64G/upfront=256M/none", "uki/64G/upfront=256M/allocator"]
    assert {c.skipped for c in skipped} == {"the UKI only at 4G here (examples/uki-4g.toml's size)"}
    assert len({c.task.key for c in cells if c.task}) == 10  # every cell its own run


def test_a_cell_is_the_base_with_its_axes_set() -> None:
    s = spec({"base": {"td": {"vcpus": 2}, "payload": {"initrd_size": "64M"}},
              "axes": {"loader": ["shim-grub"], "ram": ["64G"], "on_demand": [["allocator", "loader"]],
                       "os": ["model"], "firmware": ["ovmf-x64-2026.08"]}})
    (cell,) = expand(s, budget_s=123)
    assert cell.task is not None and cell.task.budget_s == 123
    assert cell.task.scenario == {
        "td": {"vcpus": 2, "ram": "64G"}, "payload": {"initrd_size": "64M"},
        "loader": {"kind": "grub"}, "firmware": {"shim": "debian:shim", "on_demand": ["allocator", "loader"],
                                                 "profile": "ovmf-x64-2026.08"},
        "os": {"run_kernel": False},
    }
    assert cell.label == "shim-grub/64G/allocator+loader/os=model/ovmf-x64-2026.08"
    assert {f.role for f in cell.task.files} == {"deb"}  # Debian's binaries only: by name, the .debs travel


def test_skip_filters_and_the_loaders_refusals() -> None:
    s = spec({
        "base": {"td": {"vcpus": 2}},
        "axes": {"ram": ["1G", "4G"], "upfront": ["2G", "below-4g"], "on_demand": [[], ["allocator"]],
                 "os": ["model", "real"], "firmware": ["python", "debian:ovmf"]},
        "skip": [{"on_demand": [["allocator"]], "ram": ["4096M"]}],  # a list of lists: any of these option sets
    })
    cells = expand(s)
    assert len(cells) == 32
    reasons = {c.label: c.skipped for c in cells}
    # [[skip]]: sizes compare by value (4096M is 4G)
    assert reasons["4G/upfront=below-4g/allocator/os=model/python"] == (
        '[[skip]] 1: on_demand = ["allocator"], ram = "4G"')
    # the scenario loader: more up front than RAM
    assert reasons["1G/upfront=2G/none/os=model/python"].startswith("firmware.upfront: up-front size 2G is larger")
    # the boot: the real kernel after the Python firmware with 2 vCPUs; a real image with a Python-firmware policy
    assert reasons["4G/upfront=below-4g/none/os=real/python"].startswith(
        "--run-kernel after the Python firmware needs 1 vCPU")
    assert "edk2's own TDVF (--firmware-exec) does what its build does" in reasons[
        "4G/upfront=2G/none/os=model/ovmf"]
    runs = [label for label, why in reasons.items() if why is None]
    assert runs == ["1G/upfront=below-4g/none/os=model/python", "1G/upfront=below-4g/none/os=model/ovmf",
                    "1G/upfront=below-4g/allocator/os=model/python", "4G/upfront=2G/none/os=model/python",
                    "4G/upfront=below-4g/none/os=model/python",
                    "4G/upfront=below-4g/none/os=model/ovmf"]
    ovmf = next(c for c in cells if c.label == "1G/upfront=below-4g/none/os=model/ovmf").task
    assert ovmf is not None
    assert ovmf.scenario["firmware"] == {"image": "debian:ovmf", "exec": True, "upfront": "below-4g", "on_demand": []}


def test_the_key_follows_the_binaries_content_not_their_path(tmp_path: Path) -> None:
    from lazyaccept.binaries import BinaryStore

    kernel = tmp_path / "vmlinuz"
    shutil.copyfile(BinaryStore().linux_vmlinuz(), kernel)
    copy = tmp_path / "sub" / "bzImage"
    copy.parent.mkdir()
    shutil.copyfile(kernel, copy)

    def task(path: str) -> Any:
        (cell,) = expand(spec({"axes": {"kernel": [path], "ram": ["4G"]}}, tmp_path))
        return cell.task

    first = task("vmlinuz")
    assert first.key == task(str(copy)).key  # the same bytes elsewhere: the same cell
    (user,) = [f for f in first.files if f.role == "file"]
    assert first.scenario["payload"]["kernel"] == FILE_REF_PREFIX + user.sha256 and user.name == "vmlinuz"
    with open(copy, "r+b") as f:  # one byte of the copy changes: a different cell
        f.seek(0x1000)
        byte = f.read(1)
        f.seek(0x1000)
        f.write(bytes([byte[0] ^ 1]))
    assert task(str(copy)).key != first.key
    assert expand(spec({"axes": {"kernel": ["vmlinuz"], "ram": ["8G"]}}, tmp_path))[0].task.key != first.key


def test_labels_spell_values_shortly() -> None:
    assert label({"loader": "grub", "kernel": "debian:linux-6.12", "ram": "64G", "upfront": "256M",
                  "on_demand": ["allocator"]}) == "grub/linux-6.12/64G/upfront=256M/allocator"
    assert label({"kernel": "/x/y/bzImage", "ram": 1 << 32, "host_profile": "kvm-4k", "vcpus": 8}) == (
        "bzImage/4G/host=kvm-4k/vcpus=8")
