"""advise: the smallest up-front accept per on-demand option, from the model; the model's verdicts checked
against real runs of Debian's Linux 6.12 EFI stub on the same firmware."""

from __future__ import annotations

import json

import pytest

from lazyaccept.advise import Payload, advise, advise_chain, chain_scenario, check_with_real_firmware, model_boot
from lazyaccept.binaries import linux_vmlinuz
from lazyaccept.boot import BootScenario, run_boot
from lazyaccept.cli import main
from lazyaccept.errors import InputError
from lazyaccept.guest.kernel_image import kernel_sizes
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.units import GiB, MiB


def test_advice_for_a_1g_initrd_on_64g() -> None:
    rep = advise(64 * GiB, 8, Payload(initrd_bytes=1 * GiB))
    by = {a.option: a for a in rep.advice}
    # Upstream needs both copies of the initrd accepted up front, and more than below-4g gives.
    assert by["none"].min_upfront_bytes > 2 * GiB and not by["none"].below_4g_boots
    # Option 1 cannot make the kernel slot: the up-front accept must hold it.
    assert by["option1"].limited_by == "kernel slot"
    assert 56 * MiB < by["option1"].min_upfront_bytes < 256 * MiB
    # Option 2 accepts the slot ahead, so the minimum falls below the kernel's size.
    assert by["option2"].min_upfront_bytes < by["option1"].min_upfront_bytes
    # Option 3 helps the stub, not QEMU's own copy of the initrd: that copy needs ~1.1 GiB up front. Just above it
    # (1112 MiB) the stub's lowest kernel slot (nokaslr) starts in the free memory-type bins, which edk2-stable202502's
    # GetMemoryMap reports as EfiConventionalMemory when they share a free entry with the memory beside them, and
    # AllocateAddress refuses it: the kernel slot decides the minimum (1170 MiB).
    assert by["option3"].limited_by == "kernel slot"
    assert by["option3"].min_upfront_bytes > 1 * GiB
    refused = model_boot(64 * GiB, 8, f"{(by['option3'].min_upfront_bytes - 2 * MiB) // MiB}M", "option3", rep.payload)
    assert "AllocateAddress" in refused.message and "EFI_NOT_FOUND" in refused.message
    for a in rep.advice:
        assert a.probes < 40  # a binary search, not a sweep
        below = model_boot(64 * GiB, 8, f"{(a.min_upfront_bytes - 2 * MiB) // MiB}M", a.option, rep.payload)
        assert not below.ok


def test_advise_cli_json(capsys) -> None:
    assert main(["advise", "-m", "16G", "-smp", "2", "--initrd-size", "64M", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {a["option"] for a in data["advice"]} == {"none", "option1", "option2", "option3"}


@pytest.mark.real_binary
@pytest.mark.parametrize(
    ("upfront", "initrd", "option", "model_step", "real_outcome"),
    [
        ("256M", 1 * GiB, "none", "initrd blob", "loader-failed"),
        ("64M", 16 * MiB, "option1", "kernel slot", "stub-exited"),
        ("256M", 16 * MiB, "none", "", "kernel-entry"),
        ("256M", 64 * MiB, "none", "stub initrd buffer", "stub-exited"),
    ],
)
def test_model_agrees_with_the_real_stub(upfront: str, initrd: int, option: str, model_step: str,
                                          real_outcome: str) -> None:
    model = model_boot(64 * GiB, 4, upfront, option, Payload(initrd_bytes=initrd))
    real = run_boot(BootScenario(ram=64 * GiB, smp=4, upfront=upfront, initrd_size=initrd,
                                 option1=option == "option1", log_calls=False))
    assert model.failed_step == model_step
    assert real.outcome == real_outcome
    assert model.ok == real.reached_kernel


@pytest.mark.real_binary
def test_model_and_real_machine_take_the_same_loader_steps() -> None:
    """QemuDirectBoot is one loader on two sets of boot services: the model's and the real machine's runs of it
    (4 GiB, 64 MiB up front, a 64 MiB initrd, option 2) issue the same steps with the same statuses and sizes."""
    kernel = kernel_sizes(linux_vmlinuz().read_bytes())
    payload = Payload(kernel.file_bytes, kernel.init_size, kernel.image_bytes, 64 * MiB)
    model = model_boot(4 * GiB, 4, "64M", "option2", payload)
    real = run_boot(BootScenario(ram=4 * GiB, smp=4, upfront="64M", initrd_size=64 * MiB, option2=True,
                                 log_calls=False))
    assert model.ok and real.reached_kernel, (model.message, real.reason)
    steps = [(e.what, S(e.status).name, e.size) for e in model.loader_events]
    assert steps == [(e["what"], e["status"], e["size"]) for e in real.loader_events]
    assert [s[0] for s in steps] == [
        "AllocatePool for the kernel blob",
        "AllocatePool for the initrd blob",
        "LoadImage of the kernel",
        "accept ahead for the kernel slot",
        "accept ahead for the stub's initrd buffer",
    ]


@pytest.mark.real_binary
def test_check_real_agrees_where_the_image_boots() -> None:
    rep = advise(4 * GiB, 1, Payload(initrd_bytes=16 * MiB), options=("none",))
    check = check_with_real_firmware(rep, None)
    assert check.model_boots and check.real_boots and check.agrees, check
    assert check.real_outcome == "kernel-entry"


@pytest.mark.real_binary
def test_check_real_agrees_where_the_image_terminates_the_td(capsys) -> None:
    # edk2 before b15f98e68f on 2815M with 2 vCPUs: SEC drops the tail at the top of low RAM, PEI's permanent memory
    # is there (tests/test_tdvf_regressions.py); the model says so too, in PEI, and the real image agrees.
    # Nothing boots there, so advise exits 1 (README, "Exit codes") although the model and the image agree.
    assert main(["advise", "-m", "2815M", "-smp", "2", "--initrd-size", "16M", "--check-real", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert all(a["min_upfront_bytes"] is None for a in data["advice"])
    check = data["real_check"]
    assert check["agrees"] and not check["model_boots"] and not check["real_boots"], check
    assert check["real_outcome"] == "terminated" and "PeiCore" in check["real_reason"]
    assert "PeiCore" in check["model_detail"]


def test_check_real_needs_the_kernel_file() -> None:
    rep = advise(4 * GiB, 1, Payload(init_size=64 * MiB), options=("none",))
    with pytest.raises(InputError, match="--kernel"):
        check_with_real_firmware(rep, None)


def chain_boot(chain: str, upfront: int) -> str:
    """One boot of `chain` on the Python firmware at `upfront` bytes up front (4G, 1 vCPU, a 16M initrd)."""
    return str(run_boot(BootScenario(ram=4 * GiB, smp=1, upfront=f"{upfront // MiB}M", initrd_size=16 * MiB,
                                     os_ready_bytes=0, log_calls=False, **chain_scenario(chain, None))).outcome)


@pytest.mark.real_binary
@pytest.mark.parametrize("chain", ["grub", "systemd-boot"])
def test_advise_chain_minimum_boots_and_2m_below_does_not(chain: str) -> None:
    rep = advise_chain(4 * GiB, 1, Payload(initrd_bytes=16 * MiB), chain, options=("none",))
    (a,) = rep.advice
    assert rep.chain == chain and a.option == "none" and a.min_upfront_bytes is not None
    assert 2 <= a.probes <= 16  # galloping from the model's guess keeps the real boots few
    assert a.below_4g_boots  # below-4g accepts ~2 GiB here, far above any minimum
    assert chain_boot(chain, a.min_upfront_bytes) == "kernel-entry"
    assert chain_boot(chain, a.min_upfront_bytes - 2 * MiB) != "kernel-entry"
    assert a.detail  # the failing boot's reason, just below the minimum
    if chain == "systemd-boot":  # the kernel's stub asks for the initrd's 16 MiB and gets OUT_OF_RESOURCES
        assert a.failed_allocation is not None and a.failed_allocation["size_bytes"] == 16 * MiB


@pytest.mark.real_binary
def test_advise_chain_cli_json_names_the_chain(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["advise", "--chain", "uki", "-m", "4G", "-smp", "1", "--initrd-size", "16M", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["chain"] == "uki" and data["wall_s"] > 0
    assert [a["option"] for a in data["advice"]] == ["none", "option1", "option2", "option3"]
    assert all(a["min_upfront_bytes"] and a["probes"] >= 2 for a in data["advice"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--chain", "lilo"], "invalid choice: 'lilo'"),
        (["--chain", "grub", "--kernel-init-size", "64M"], "not --kernel-init-size"),
        (["--chain", "grub", "--check-real"], "--check-real checks the direct-boot model"),
    ],
)
def test_advise_chain_bad_input_is_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["advise", "-m", "4G", "-smp", "1", *argv])
    except SystemExit as exc:  # argparse's own exit for a bad choice
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_advise_chain_rejects_direct_and_unknown_chains() -> None:
    with pytest.raises(InputError, match="--chain 'direct'"):
        advise_chain(4 * GiB, 1, Payload(), "direct")


@pytest.mark.real_binary
def test_api_advise_shim_grub_boots_the_pinned_shim(monkeypatch: pytest.MonkeyPatch) -> None:
    """api.advise(chain=) is the command's --chain; shim-grub hands advise_chain Debian's shim 16.1 (as `boot --grub
    --shim debian:shim`); advise_chain's own search is the real-boot tests' above, not run again here."""
    import lazyaccept.commands.advise as command
    from lazyaccept import api
    from lazyaccept.binaries import shim_efi

    seen: dict[str, object] = {}

    def fake(ram: int, smp: int, payload: Payload, chain: str, **kw: object) -> object:
        seen.update(kw, chain=chain, ram=ram)
        return advise(ram, smp, payload, options=("none",))

    monkeypatch.setattr(command, "advise_chain", fake)
    api.advise(ram="4G", smp=1, initrd_size="16M", chain="shim-grub")
    assert seen["chain"] == "shim-grub" and seen["ram"] == 4 * GiB
    assert seen["shim"] == str(shim_efi()) and seen["kernel"] is None


@pytest.mark.real_binary
def test_a_boot_out_of_accepted_memory_hints_what_to_change() -> None:
    """boot's hint line (boot_report.outcome_hint) on real stub runs: the initrd's failed allocation can be helped by
    the allocator's on-demand accept; the UKI's kernel slot, chosen from the memory map, only by more up front; a boot
    that reaches the kernel has none."""
    base = BootScenario(ram=4 * GiB, smp=2, upfront="256M", initrd_size=64 * MiB)
    direct = run_boot(base)
    assert direct.outcome == "stub-exited" and "Failed to load initrd" in direct.console
    assert direct.hint.startswith("let the allocator accept on demand (--on-demand allocator)")
    assert "`lazyaccept advise` with the same TD" in direct.hint
    uki = run_boot(BootScenario(ram=4 * GiB, smp=2, upfront="256M", initrd_size=64 * MiB, uki=True, option1=True))
    assert uki.outcome == "stub-exited" and "Failed to decompress kernel" in uki.console
    assert uki.hint.startswith("accept more up front (--upfront): the stub picks its kernel slot from the memory map")
    assert "advise --chain uki" in uki.hint
    booted = run_boot(BootScenario(ram=4 * GiB, smp=2, upfront="256M", initrd_size=64 * MiB, option1=True))
    assert booted.outcome == "kernel-entry" and booted.hint == ""
