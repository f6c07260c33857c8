"""Every status code and detail value of the TDX module model, DEMOTE, termination, zeroing, and costs."""

from __future__ import annotations

import pytest

from lazyaccept.tdx.costs import PROFILES, load_profile, resolve_profile
from lazyaccept.tdx.module import PageState, TdTerminated, TdxError, TdxModule, edk2_accept_split
from lazyaccept.tdx.status import TdcallLeaf, TdxStatus, status_name
from lazyaccept.units import GiB, MiB

K4, M2 = 4096, 2 * MiB


def td(profile: str = "kvm-2m", ram: int = 64 * MiB, vcpus: int = 1) -> TdxModule:
    tdx = TdxModule(profile, num_vcpus=vcpus, gpa_width=48)
    tdx.add_ram(0, ram)
    return tdx


def test_status_values_are_the_architectural_ones() -> None:
    assert TdxStatus.PAGE_ALREADY_ACCEPTED == 0x00000B0A00000000
    assert TdxStatus.PAGE_SIZE_MISMATCH == 0xC0000B0B00000000
    assert TdxStatus.OPERAND_INVALID == 0xC000010000000000
    assert TdxStatus.OPERAND_BUSY == 0x8000020000000000
    assert status_name(0xC0000B0B00000001) == "PAGE_SIZE_MISMATCH(detail=0x1)"


def test_accept_4k_success_then_already_accepted_detail_level_0() -> None:
    tdx = td()
    assert tdx.accept_page(0x10000, 0) == TdxStatus.SUCCESS
    assert tdx.accept_page(0x10000, 0) == TdxStatus.PAGE_ALREADY_ACCEPTED | 0
    assert [(i.kind, i.start, i.size) for i in tdx.incidents] == [("already-accepted", 0x10000, K4)]


def test_accept_2m_on_2m_host_then_already_accepted_detail_level_1() -> None:
    tdx = td("kvm-2m")
    assert tdx.accept_page(M2, 1) == TdxStatus.SUCCESS
    assert tdx.pages.get(M2).level == 1
    assert tdx.accept_page(M2, 1) == 0x00000B0A00000001
    # a 4K accept inside an accepted 2M leaf: already accepted, walk stopped at level 1
    assert tdx.accept_page(M2 + 5 * K4, 0) == 0x00000B0A00000001


def test_2m_over_4k_mappings_is_page_size_mismatch_detail_1() -> None:
    tdx = td("kvm-2m")
    tdx.aug(M2, K4, 0)  # the VMM mapped one 4K page there: the 2M entry is a page table
    assert tdx.accept_page(M2, 1) == 0xC0000B0B00000001


def test_mainline_host_turns_every_fresh_2m_accept_into_a_mismatch() -> None:
    tdx = td("kvm-4k")
    assert tdx.accept_page(M2, 1) == 0xC0000B0B00000001
    assert tdx.stats.exits == 1 and tdx.stats.augs_4k == 1  # KVM mapped the faulting 4K page only
    res = tdx.accept_range(4 * M2, M2 + M2 // 2)  # 3 MiB: one 2M page + 256 4K pages
    assert res.ok and res.mismatches == 1 and res.accepted_2m == 0 and res.accepted_4k == 512 + 256


@pytest.mark.parametrize(
    "rcx",
    [
        M2 + K4 | 1,  # 2M accept not 2M aligned
        0x1000 | 0x8,  # reserved bit 3
        (1 << 52) | 0x1000,  # reserved bit 52
        0x1000 | 2,  # level 2 (1G): current modules accept 4K and 2M only
        (1 << 47) | 0,  # the shared bit of a 48-bit GPA width: beyond the private range
    ],
)
def test_operand_invalid_names_rcx(rcx: int) -> None:
    tdx = td()
    assert tdx.tdcall(TdcallLeaf.MEM_PAGE_ACCEPT, rcx)["rax"] == 0xC000010000000001


def test_operand_busy_only_through_fault_injection() -> None:
    tdx = td()
    assert tdx.accept_page(0, 0) == TdxStatus.SUCCESS
    tdx.inject_busy(1)
    assert tdx.accept_page(K4, 0) == 0x8000020000000001  # OPERAND_BUSY + OPERAND_ID_RCX
    assert tdx.accept_page(K4, 0) == TdxStatus.SUCCESS


def test_edk2_retries_busy_three_times_then_fails() -> None:
    tdx = td()
    tdx.inject_busy(3)
    assert tdx.accept_range(0, 4 * M2).ok
    tdx.inject_busy(4)
    res = tdx.accept_range(8 * M2, 4 * M2)
    assert not res.ok and res.busy == 4 and res.failed_gpa == 8 * M2 and res.accepted_bytes == 0


def test_vp_info() -> None:
    tdx = TdxModule("kvm-2m", num_vcpus=8, gpa_width=52)
    out = tdx.tdcall(TdcallLeaf.VP_INFO, vcpu=3)
    assert out["rax"] == 0 and out["rcx"] == 52 and out["r8"] & 0xFFFFFFFF == 8 and out["r9"] == 3
    assert tdx.tdcall(99)["rax"] == TdxStatus.OPERAND_INVALID  # unknown leaf: RAX operand


def test_4k_accept_inside_pending_2m_leaf_demotes() -> None:
    tdx = td("kvm-2m")
    tdx.aug(M2, M2, 1)
    assert tdx.accept_page(M2 + 3 * K4, 0) == TdxStatus.SUCCESS
    assert tdx.stats.demotes == 1 and tdx.vmm.demotes == 1
    assert tdx.pages.get(M2).level == 0 and tdx.pages.get(M2).state == PageState.PENDING
    # the leaf is 4K now: a 2M accept there is a mismatch
    assert tdx.accept_page(M2, 1) == TdxStatus.PAGE_SIZE_MISMATCH | 1


def test_explicit_demote_and_bad_vmm_operations() -> None:
    tdx = td("kvm-2m")
    tdx.aug(0, M2, 1)
    tdx.demote(0)
    assert tdx.pages.get(0).level == 0
    with pytest.raises(TdxError, match="no 2M leaf"):
        tdx.demote(0)
    with pytest.raises(TdxError, match="over present pages"):
        tdx.add(0, K4)
    with pytest.raises(TdxError, match="outside guest RAM"):
        tdx.aug(128 * MiB, K4)


def test_access_to_pending_memory_terminates_the_td() -> None:
    tdx = td()
    tdx.accept_range(0, M2)
    tdx.memory.write(0x1000, b"hello", actor="sec")
    assert tdx.memory.read(0x1000, 5, actor="sec") == b"hello"
    with pytest.raises(TdTerminated) as exc:
        tdx.memory.read(M2 - 2, 4, actor="stub")  # straddles into memory never accepted
    t = exc.value.termination
    assert (t.gpa, t.access, t.actor) == (M2, "read", "stub")
    assert tdx.terminated
    with pytest.raises(TdTerminated):
        tdx.accept_page(0, 0)  # a terminated TD runs nothing more


def test_access_to_removed_memory_terminates_and_reaccept_is_detected() -> None:
    tdx = td()
    tdx.accept_range(0, 4 * M2)
    tdx.memory.write(M2, b"secret", actor="dxe")
    tdx.remove(M2, K4)
    tdx.aug(M2, K4)  # a hostile VMM maps a fresh page where the old one was
    assert tdx.accept_page(M2, 0) == TdxStatus.SUCCESS  # the guest blindly accepts again ...
    assert tdx.memory.read(M2, 6, actor="dxe") == bytes(6)  # ... and silently gets a zeroed page
    assert [(i.kind, i.start) for i in tdx.incidents] == [("reaccept-after-remove", M2)]
    tdx.remove(2 * M2, K4)
    with pytest.raises(TdTerminated, match="removed"):
        tdx.memory.write(2 * M2, b"x", actor="dxe", vcpu=0)


def test_accept_zeroes_the_page() -> None:
    tdx = td()
    tdx.add(0, K4, data=b"\xff" * K4)
    assert tdx.memory.read(0, 4, actor="t") == b"\xff" * 4
    tdx.memory.backing.write(K4, b"\xaa" * 16)  # stale host contents under a pending page
    tdx.accept_page(K4, 0)
    assert tdx.memory.read(K4, 16, actor="t") == bytes(16)


def test_accept_of_memory_the_vmm_does_not_back_terminates() -> None:
    tdx = td(ram=8 * MiB)
    with pytest.raises(TdTerminated, match="does not back"):
        tdx.accept_range(0, 16 * MiB)
    assert tdx.termination.gpa == 8 * MiB
    assert tdx.bytes_in_state(PageState.ACCEPTED) == 8 * MiB


def test_edk2_split_exact_2m_middle_goes_as_4k() -> None:
    assert edk2_accept_split(0, M2) == [(0, 512, K4)]
    assert edk2_accept_split(K4, 3 * M2) == [(K4, 511, K4), (M2, 2, M2), (3 * M2, 1, K4)]
    tdx = td()
    res = tdx.accept_range(0, M2)
    assert res.tdcalls == 512 and res.accepted_4k == 512 and res.accepted_2m == 0


def test_kvm_4k_fault_costs_about_8us() -> None:
    tdx = td("kvm-4k")
    tdx.accept_page(0, 0)
    assert 7_500 <= tdx.clock_ns(0) <= 8_500  # Dstack-TEE/dstack PR 1220: ~8 us per 4K accept fault


def test_kvm_2m_eager_rate_and_bandwidth_cap() -> None:
    """LKML Feb 2025: ~1 min for 90 GiB on 1 vCPU, 40 s on 4 vCPUs, no scaling beyond."""
    one = TdxModule("kvm-2m", num_vcpus=1)
    one.add_ram(4 * GiB, 90 * GiB)
    one.accept_range(4 * GiB, 90 * GiB)
    assert 55e9 <= one.clock_ns(0) <= 65e9
    for vcpus, expect_s in ((4, 40), (8, 40)):
        tdx = TdxModule("kvm-2m", num_vcpus=vcpus)
        tdx.add_ram(4 * GiB, 90 * GiB)
        share = 90 * GiB // vcpus
        with tdx.parallel(vcpus):
            for v in range(vcpus):
                tdx.accept_range(4 * GiB + v * share, share, vcpu=v)
        assert abs(max(tdx.clocks_ns) / 1e9 - expect_s) / expect_s < 0.15


def test_profiles_load_from_file(tmp_path) -> None:
    f = tmp_path / "slowhost.toml"
    f.write_text('base = "kvm-4k"\nexit_ns = 9000\n')
    p = load_profile(f)
    assert p.name == "slowhost" and p.exit_ns == 9000 and p.max_private_level == 0
    assert resolve_profile(str(f)) == p
    assert set(PROFILES) == {"kvm-4k", "kvm-2m"}
    (tmp_path / "bad.toml").write_text("warp_speed = 3\n")
    with pytest.raises(Exception, match="warp_speed"):
        load_profile(tmp_path / "bad.toml")


def test_accepting_again_after_the_guests_own_conversion_is_no_incident() -> None:
    # MapGPA to shared (KVM removes the private page), then back to private: the fresh accept is the protocol.
    tdx = td()
    tdx.accept_range(0, 4 * M2)
    tdx.remove(M2, 2 * M2, converted=True)
    tdx.aug(M2, K4)
    assert tdx.accept_page(M2, 0) == TdxStatus.SUCCESS
    assert tdx.incidents == []
    tdx.remove(3 * M2, K4)  # the VMM's own removal still counts when the page is accepted again
    tdx.aug(3 * M2, K4)
    tdx.accept_page(3 * M2, 0)
    assert [(i.kind, i.start) for i in tdx.incidents] == [("reaccept-after-remove", 3 * M2)]
