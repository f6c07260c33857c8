"""A snapshot of edk2's own TDVF (Debian's OVMF.fd 2025.02) at its first look at the payload, restored with the
same or another payload: the boot goes on to the same kernel entry and handoff as a fresh boot. Also the snapshot
point's fw_cfg decoding, the guest-memory copy, and the refusals (another RAM size or image, a file that is no
snapshot)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from lazyaccept.binaries import BinaryStore
from lazyaccept.cli import main
from lazyaccept.cpu.unicorn.td_memory import HostRam
from lazyaccept.cpu.unicorn.td_snapshot import TdvfSnapshot
from lazyaccept.errors import ConfigError, InputError
from lazyaccept.exitcodes import EXIT_BAD_INPUT
from lazyaccept.tdvf_run import SNAPSHOT_POINT, TdvfOutcome, TdvfReport, TdvfRun, run_tdvf
from lazyaccept.units import GiB, MiB
from lazyaccept.vmm.devices.fw_cfg import FW_CFG_DMA_IO_BASE, FW_CFG_IO_BASE, DmaControl, FwCfg, FwCfgKey
from lazyaccept.vmm.td import TdConfig

OTHER_CMDLINE = "console=ttyS0 nokaslr lazyaccept.snapshot=restored"


class _Memory:
    def __init__(self) -> None:
        self.data = bytearray(0x3000)

    def read(self, gpa: int, size: int) -> bytes:
        return bytes(self.data[gpa : gpa + size])

    def write(self, gpa: int, data: bytes) -> None:
        self.data[gpa : gpa + len(data)] = data


def test_the_snapshot_point_is_a_direct_boot_selection_by_port_or_dma() -> None:
    memory = _Memory()
    fw = FwCfg(memory)
    assert fw.selection_by(FW_CFG_IO_BASE, 2, FwCfgKey.KERNEL_SIZE) == FwCfgKey.KERNEL_SIZE
    assert fw.selection_by(FW_CFG_IO_BASE + 1, 1, FwCfgKey.KERNEL_SIZE) is None  # a data-port byte
    # DMA: the descriptor at 0x1000 selects SETUP_SIZE; the trigger is the low half, byte-swapped as edk2 writes it
    memory.write(0x1000, struct.pack(">IIQ", (FwCfgKey.SETUP_SIZE << 16) | DmaControl.SELECT | DmaControl.READ, 4,
                                     0x2000))  # fmt: skip
    trigger = int.from_bytes((0x1000).to_bytes(4, "big"), "little")
    assert fw.selection_by(FW_CFG_DMA_IO_BASE + 4, 4, trigger) == FwCfgKey.SETUP_SIZE
    assert fw.selected != FwCfgKey.SETUP_SIZE  # asking selected nothing
    memory.write(0x1000, struct.pack(">IIQ", DmaControl.READ, 4, 0x2000))  # no SELECT: the current item goes on
    assert fw.selection_by(FW_CFG_DMA_IO_BASE + 4, 4, trigger) is None


def test_direct_boot_items_are_replaced_only_before_the_firmware_reads_them() -> None:
    fw = FwCfg()
    assert fw.set_direct_boot({FwCfgKey.KERNEL_SIZE: b"\x01\0\0\0"}) == {}
    assert fw.set_direct_boot({}) == {FwCfgKey.KERNEL_SIZE: b"\x01\0\0\0"} and FwCfgKey.KERNEL_SIZE not in fw.items
    with pytest.raises(ConfigError, match="not a direct-boot item"):
        fw.set_direct_boot({FwCfgKey.RAM_SIZE: b""})
    fw.set_direct_boot({FwCfgKey.KERNEL_SIZE: b"\x02\0\0\0"})
    fw.select(FwCfgKey.KERNEL_SIZE)
    with pytest.raises(ConfigError, match="while the firmware reads one"):
        fw.set_direct_boot({})


def test_host_memory_is_copied_by_its_non_zero_pages() -> None:
    ram = HostRam(64 * MiB)
    ram.write(0x1234, b"x")
    ram.write(5 * MiB, b"\1" * 0x3000)
    ram.read(9 * MiB, 0x10000)  # read, so resident, but zero: nothing to keep
    ram.write(20 * MiB, b"y")
    ram.zero(20 * MiB, 20 * MiB + 0x1000)  # zeroed again
    assert list(ram.nonzero_runs()) == [(0x1000, 0x2000), (5 * MiB, 5 * MiB + 0x3000)]


# ----------------------------------------------------------------- the real firmware


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> tuple[TdvfReport, Path]:
    store = BinaryStore()
    path = tmp_path_factory.mktemp("snapshot") / "ovmf.snap"
    run = TdvfRun(Path(store.ovmf_fd()), kernel=Path(store.linux_vmlinuz()), snapshot_save=path, max_wall_s=400)
    return run_tdvf(run), path


@pytest.mark.real_binary
def test_a_boot_from_the_snapshot_reaches_the_same_kernel_entry_and_handoff(fresh: tuple[TdvfReport, Path]) -> None:
    rep, path = fresh
    assert rep.outcome == TdvfOutcome.KERNEL and rep.kernel is not None, (rep.detail, rep.console[-800:])
    assert any(SNAPSHOT_POINT in note for note in rep.notes) and rep.snapshot is not None
    snapshot = TdvfSnapshot.load(path)
    again = run_tdvf(TdvfRun(rep.run.firmware, kernel=rep.run.kernel, snapshot=snapshot, max_wall_s=400))
    assert again.outcome == TdvfOutcome.KERNEL and again.kernel is not None, again.detail
    assert again.rip == rep.rip and again.accepted_ranges == rep.accepted_ranges
    assert again.shared_ranges == rep.shared_ranges and again.tdcalls == rep.tdcalls
    assert again.tdvmcalls == rep.tdvmcalls and again.virtual_ns == rep.virtual_ns
    assert again.measurement == rep.measurement and again.console == rep.console
    k, k2 = rep.kernel, again.kernel
    assert (k2.boot_params_gpa, k2.kernel_load) == (k.boot_params_gpa, k.kernel_load)
    assert k2.memory_map == k.memory_map and not k2.check.problems and k2.check.lost_bytes == k.check.lost_bytes


@pytest.mark.real_binary
def test_a_snapshot_boots_another_payload(fresh: tuple[TdvfReport, Path]) -> None:
    rep, _path = fresh
    assert rep.snapshot is not None
    other = run_tdvf(TdvfRun(rep.run.firmware, kernel=rep.run.kernel, cmdline=OTHER_CMDLINE, snapshot=rep.snapshot,
                             max_wall_s=400))  # fmt: skip
    assert other.outcome == TdvfOutcome.KERNEL and other.kernel is not None, other.detail
    assert other.kernel.boot_params is not None and other.kernel.boot_params.cmdline == OTHER_CMDLINE
    assert not other.kernel.check.problems


@pytest.mark.real_binary
def test_a_snapshot_of_another_td_is_refused(fresh: tuple[TdvfReport, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    rep, path = fresh
    assert rep.snapshot is not None
    firmware = str(rep.run.firmware)
    with pytest.raises(ConfigError, match="another RAM size"):
        rep.snapshot.check(TdConfig(ram_size=3 * GiB, firmware_path=firmware))
    with pytest.raises(ConfigError, match="another vCPU count"):
        rep.snapshot.check(TdConfig(ram_size=rep.run.ram, vcpus=2, firmware_path=firmware))
    with pytest.raises(ConfigError, match="another firmware image"):
        rep.snapshot.check(TdConfig(ram_size=rep.run.ram, firmware_path=str(BinaryStore().ovmf_2026_fd())))
    junk = tmp_path / "junk.snap"
    junk.write_bytes(path.read_bytes()[:4096])
    with pytest.raises(InputError, match="damaged snapshot"):
        TdvfSnapshot.load(junk)
    assert main(["tdvf", "-m", "3G", "--from-snapshot", str(path)]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip().endswith("snapshot was made with another RAM size (2G there, 3G here)")
