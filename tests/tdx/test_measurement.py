"""MRTD as the TDX module builds it at TD build, and the RTMRs; expected values are computed here with hashlib
from the TDX module's description (128-byte blocks: 16-byte API name, u64 GPA, zeros), not with the model's code."""

from __future__ import annotations

import hashlib

import pytest

from lazyaccept.tdx.module import TdxError, TdxModule
from lazyaccept.units import MiB
from lazyaccept.vmm.td import TdConfig, build_td


def block(name: bytes, gpa: int) -> bytes:
    out = bytearray(128)
    out[: len(name)] = name
    out[16:24] = gpa.to_bytes(8, "little")
    return bytes(out)


def test_mrtd_of_a_tiny_synthetic_td_matches_an_independent_computation() -> None:
    # One measured page (bytes 0..255 repeated) at 0xFFFFF000, then two added but unmeasured pages at 0x800000.
    page = bytes(range(256)) * 16
    tdx = TdxModule(num_vcpus=1, gpa_width=48)
    tdx.add(0xFFFFF000, 4096, data=page, measured=True)
    tdx.add(0x800000, 8192, data=b"\x5a" * 100)
    tdx.finalize()
    mrtd = tdx.measurement.mrtd

    h = hashlib.sha384()
    h.update(block(b"MEM.PAGE.ADD", 0xFFFFF000))
    for off in range(0, 4096, 256):
        h.update(block(b"MR.EXTEND", 0xFFFFF000 + off))
        h.update(page[off : off + 256])
    h.update(block(b"MEM.PAGE.ADD", 0x800000))
    h.update(block(b"MEM.PAGE.ADD", 0x801000))
    assert mrtd == h.digest()
    assert tdx.measurement.as_dict()["mrtd"] == h.hexdigest()


def test_mrtd_of_an_empty_td_is_sha384_of_nothing() -> None:
    tdx = TdxModule()
    tdx.finalize()
    assert tdx.measurement.mrtd == hashlib.sha384(b"").digest()


def test_add_after_finalize_is_refused() -> None:
    tdx = TdxModule()
    tdx.add_ram(0, 16 * MiB)
    tdx.finalize()
    with pytest.raises(TdxError, match="FINALIZE"):
        tdx.add(0, 4096)


def test_build_td_finalizes_mrtd_over_the_tdvf_sections() -> None:
    td = build_td(TdConfig(ram_size=256 * MiB))
    m = td.tdx.measurement
    assert m.finalized and len(m.as_dict()["mrtd"]) == 96  # type: ignore[arg-type]
    added = sum(s.memory_size for s in td.firmware.sections) // 4096
    measured = sum(s.memory_size for s in td.firmware.sections if s.measured) // 256
    assert (m.pages_added, m.chunks_extended) == (added, measured)


def test_rtmrs_start_at_zero_and_extend_by_hash_of_concatenation() -> None:
    tdx = TdxModule()
    assert tdx.measurement.as_dict()["rtmr"] == ["00" * 48] * 4
    d = hashlib.sha384(b"event").digest()
    tdx.measurement.extend_rtmr(2, d)
    assert tdx.measurement.rtmr[2] == hashlib.sha384(bytes(48) + d).digest()
