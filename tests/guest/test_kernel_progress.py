"""The attribution of the kernel's accepts (guest/kernel_progress.py) on Debian's real 6.12 image: a kernel stack
holding the return addresses of a real call chain, among words that are not return addresses, names the code that
wanted the memory and the allocator it went through. (The phases and the whole path run in
tests/test_tdvf_kernel.py's kernel run.)"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from lazyaccept.binaries import BinaryStore
from lazyaccept.guest.kallsyms import KernelSymbols, loaded_image, read_kallsyms, vmlinux_from_bzimage
from lazyaccept.guest.kernel_progress import accept_chain, attribute, kaslr_slide

pytestmark = pytest.mark.real_binary


@pytest.fixture(scope="module")
def kernel() -> tuple[KernelSymbols, bytes]:
    image = loaded_image(vmlinux_from_bzimage(BinaryStore().linux_vmlinuz().read_bytes()))
    return read_kallsyms(image, load_vaddr=0xFFFF_FFFF_8100_0000), image


def return_address(symbols: KernelSymbols, image: bytes, caller: str, callee: str) -> int:
    """The address after the first direct CALL from caller to callee (E8 rel32) in the loaded image."""
    text, start, target = symbols.address("_text"), symbols.address(caller), symbols.address(callee)
    assert text is not None and start is not None and target is not None
    end = min(a for a in symbols.addresses if a > start)
    for at in range(start - text, end - text - 4):
        if image[at] == 0xE8 and text + at + 5 + struct.unpack_from("<i", image, at + 1)[0] == target:
            return text + at + 5
    raise AssertionError(f"no call from {caller} to {callee}")


def test_swiotlb_behind_memblock(kernel: tuple[KernelSymbols, bytes]) -> None:
    symbols, image = kernel
    accept, tdx = symbols.address("accept_memory"), symbols.address("tdx_accept_memory")
    assert accept is not None and tdx is not None
    words = [
        0x1234,  # a length on the stack
        return_address(symbols, image, "accept_memory", "tdx_accept_memory"),
        accept,  # a function pointer: not after a CALL
        accept + 3,  # inside a function, not after a CALL
        return_address(symbols, image, "__accept_page", "_raw_spin_unlock_irqrestore"),  # an older call's
        return_address(symbols, image, "memblock_alloc_range_nid", "accept_memory"),
        0xFFFF_8880_0000_1000,  # a direct-map pointer
        return_address(symbols, image, "memblock_alloc_internal", "memblock_alloc_range_nid"),
        return_address(symbols, image, "memblock_alloc_try_nid", "memblock_alloc_internal"),
        return_address(symbols, image, "swiotlb_init_remap", "memblock_alloc_try_nid"),
    ]
    rip = tdx + 0x40  # at the TDCALL, in tdx_accept_memory (try_accept_one inlined)
    chain = accept_chain(symbols, image, rip, words)
    assert chain == ["accept_memory", "memblock_alloc_range_nid", "memblock_alloc_internal", "memblock_alloc_try_nid",
                     "swiotlb_init_remap"]
    assert attribute(chain) == ("swiotlb_init_remap", "memblock_alloc_range_nid")
    # under a KASLR slide the same words, moved, give the same chain
    slide = 0x2A00000
    assert accept_chain(symbols, image, rip + slide, [w + slide for w in words], slide) == chain


def test_the_buddy_allocator_free_path_and_the_fallbacks(kernel: tuple[KernelSymbols, bytes]) -> None:
    symbols, image = kernel
    free = return_address(symbols, image, "__free_pages_core", "accept_memory")
    accept = return_address(symbols, image, "accept_memory", "tdx_accept_memory")
    tdx = symbols.address("tdx_accept_memory")
    assert tdx is not None
    chain = accept_chain(symbols, image, tdx + 0x40, [accept, free])
    assert chain == ["accept_memory", "__free_pages_core"]
    assert attribute(chain) == ("__free_pages_core", "")  # the allocator alone: it names the accept
    assert attribute(["tdx_accept_memory", "accept_memory"]) == ("accept_memory", "")  # the outermost found
    assert attribute([]) == ("(no caller found on the stack)", "")
    assert attribute(["accept_memory", "do_anonymous_page", "__alloc_pages_noprof"]) == ("do_anonymous_page", "")
    assert attribute(["accept_memory", "cond_accept_memory", "get_page_from_freelist", "do_anonymous_page"]) == (
        "do_anonymous_page", "cond_accept_memory")


def test_the_kaslr_slide_from_the_code_at_the_entry(kernel: tuple[KernelSymbols, bytes]) -> None:
    symbols, image = kernel
    text, entry = symbols.address("_text"), symbols.address("common_startup_64")
    assert text is not None and entry is not None

    def memory(slide: int) -> Callable[[int, int], bytes]:
        return lambda va, n: image[va - slide - text : va - slide - text + n]

    assert kaslr_slide(symbols, image, entry, memory(0)) == 0
    assert kaslr_slide(symbols, image, entry + 0x1E200000, memory(0x1E200000)) == 0x1E200000
    assert kaslr_slide(symbols, image, entry, lambda va, n: b"\xcc" * n) is None
