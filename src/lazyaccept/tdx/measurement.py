"""The TD's measurement registers: MRTD built during TD build, RTMR[0..3] extended by the guest.

Checked against intel/tdx-module tag TDX_1.5.01:
- TDH.MNG.INIT (src/vmm_dispatcher/api_calls/tdh_mng_init.c) starts one SHA-384 context for MRTD.
- TDH.MEM.PAGE.ADD (tdh_mem_page_add.c) feeds it one 128-byte block per 4K page: sha384_128B_block_t with
  api_name 'MEM.PAGE.ADD' (16 bytes, zero padded), the page's GPA (u64 LE), zeros.
- TDH.MR.EXTEND (tdh_mr_extend.c) feeds one such block with 'MR.EXTEND' and the chunk's GPA, then the 256
  bytes of the chunk (two more blocks).
- TDH.MR.FINALIZE (tdh_mr_finalize.c) finalizes the context into MRTD.
- TDG.MR.RTMR.EXTEND (src/td_dispatcher/vm_exits/tdg_mr_rtmr_extend.c): RTMR[i] = SHA-384(RTMR[i] || digest).
KVM issues them per page: ADD, then with KVM_TDX_MEASURE_MEMORY_REGION the 16 MR.EXTENDs of that page
(Linux arch/x86/kvm/vmx/tdx.c, tdx_gmem_post_populate).
"""

from __future__ import annotations

import hashlib
import struct

from lazyaccept.errors import LazyAcceptError
from lazyaccept.spec.tdx import (
    MEM_PAGE_ADD_API_NAME,
    MR_EXTEND_API_NAME,
    MR_EXTEND_CHUNK,
    NUM_RTMRS,
    SHA384_BLOCK,
    SHA384_SIZE,
)
from lazyaccept.units import PAGE_4K

_HEADER = struct.Struct("<16sQ")  # api_name (uint128_t), gpa; the rest of the 128-byte block is zero
_PAD = bytes(SHA384_BLOCK - _HEADER.size)


def mr_block(api_name: bytes, gpa: int) -> bytes:
    """One sha384_128B_block_t as TDH.MEM.PAGE.ADD / TDH.MR.EXTEND fill it."""
    return _HEADER.pack(api_name, gpa) + _PAD


class MeasurementError(LazyAcceptError):
    """A build-time measurement operation out of order (e.g. an ADD after TDH.MR.FINALIZE)."""


class TdMeasurement:
    """MRTD (open until finalize) and the four RTMRs of one TD.

    The ADDs are journalled and hashed when MRTD is first read: building a TD stays cheap (tests, fuzzing and
    advise build thousands), and the digest is the same as hashing at each TDH.MEM.PAGE.ADD."""

    def __init__(self) -> None:
        self._journal: list[tuple[int, int, bytes | None]] = []  # TDH.MNG.INIT: an empty context
        self._finalized = False
        self._mrtd: bytes | None = None
        self.rtmr = [bytes(SHA384_SIZE) for _ in range(NUM_RTMRS)]
        self.pages_added = 0
        self.chunks_extended = 0

    @property
    def finalized(self) -> bool:
        return self._finalized

    def page_add(self, start: int, size: int, contents: bytes | None = None) -> None:
        """TDH.MEM.PAGE.ADD of each 4K page of [start, start + size); with `contents` (the pages' bytes as
        added) each page is also measured with TDH.MR.EXTEND right after its ADD, as KVM does."""
        if self._finalized:
            raise MeasurementError(f"TDH.MEM.PAGE.ADD at {start:#x} after TDH.MR.FINALIZE")
        if contents is not None and len(contents) != size:
            raise MeasurementError(f"MR.EXTEND of {size:#x} bytes given {len(contents):#x} bytes of contents")
        self._journal.append((start, size, contents))
        self.pages_added += size // PAGE_4K
        if contents is not None:
            self.chunks_extended += size // MR_EXTEND_CHUNK

    def finalize(self) -> None:
        """TDH.MR.FINALIZE: MRTD is fixed; later ADDs are refused. Nothing is hashed until MRTD is read."""
        self._finalized = True

    @property
    def mrtd(self) -> bytes | None:
        """MRTD once finalized (None before TDH.MR.FINALIZE)."""
        if not self._finalized:
            return None
        if self._mrtd is None:
            ctx = hashlib.sha384()
            for start, size, contents in self._journal:
                view = memoryview(contents) if contents is not None else None
                for off in range(0, size, PAGE_4K):
                    ctx.update(mr_block(MEM_PAGE_ADD_API_NAME, start + off))
                    if view is None:
                        continue
                    for c in range(off, off + PAGE_4K, MR_EXTEND_CHUNK):
                        ctx.update(mr_block(MR_EXTEND_API_NAME, start + c))
                        ctx.update(view[c : c + MR_EXTEND_CHUNK])
            self._mrtd = ctx.digest()
            self._journal.clear()
        return self._mrtd

    def extend_rtmr(self, index: int, digest: bytes) -> None:
        self.rtmr[index] = hashlib.sha384(self.rtmr[index] + digest).digest()

    def as_dict(self) -> dict[str, object]:
        """Hex digests for the report (MRTD None before TDH.MR.FINALIZE)."""
        return {
            "mrtd": self.mrtd.hex() if self.mrtd is not None else None,
            "rtmr": [r.hex() for r in self.rtmr],
            "pages_added": self.pages_added,
            "chunks_extended": self.chunks_extended,
        }
