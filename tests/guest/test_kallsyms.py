"""The kernel's own symbol table (guest/kallsyms.py), read from Debian's real 6.12 and 7.2 bzImages: found by the
tables' structure, decoded, and the address -> function lookups the kernel run's attribution uses."""

from __future__ import annotations

import pytest
from fuzz.targets import KALLSYMS_BASE, kallsyms_seeds, synthetic_kallsyms

from lazyaccept.binaries import BinaryStore
from lazyaccept.errors import InputError
from lazyaccept.guest.kallsyms import KernelSymbols, loaded_image, read_kallsyms, vmlinux_from_bzimage


@pytest.fixture(scope="module")
def store() -> BinaryStore:
    return BinaryStore()


@pytest.fixture(scope="module")
def vmlinux612(store: BinaryStore) -> bytes:
    return vmlinux_from_bzimage(store.linux_vmlinuz().read_bytes())


def _check_plausible(table: KernelSymbols) -> None:
    assert len(table) > 50_000
    assert list(table.addresses) == sorted(table.addresses)  # as the kernel keeps them: by address
    text, etext = table.address("_text"), table.address("_etext")
    assert text == 0xFFFF_FFFF_8100_0000  # Debian's link address (CONFIG_PHYSICAL_START 16 MiB)
    assert etext is not None and text < etext
    init = (table.address("_sinittext"), table.address("_einittext"))
    assert init[0] is not None and init[1] is not None
    # __init functions in the init text, the rest in the text, each a function type
    for name in ("start_kernel", "memblock_alloc_try_nid", "swiotlb_init_remap", "mm_core_init"):
        address = table.address(name)
        assert address is not None and init[0] <= address < init[1], name
        assert table.function_at(address + 1) == (name, 1)
    for name in ("accept_memory", "accept_page", "__free_pages_core", "tdx_accept_memory", "kernel_init"):
        address = table.address(name)
        assert address is not None and text <= address < etext, name
        assert table.function_at(address) == (name, 0)
    assert table.function_at(0x1000) is None and table.function_at(etext + 0x10) is None


@pytest.mark.real_binary
def test_debian_6_12_kallsyms(vmlinux612: bytes) -> None:
    assert vmlinux612[:4] == b"\x7fELF"
    table = read_kallsyms(vmlinux612)
    _check_plausible(table)
    assert table.layout == "absolute-percpu"  # x86-64 6.12: per-CPU symbols stay absolute
    assert table.address("__per_cpu_start") == 0 and table.types[0] in "AD"


@pytest.mark.real_binary
def test_debian_7_2_kallsyms(store: BinaryStore) -> None:
    elf = vmlinux_from_bzimage(store.linux72_vmlinuz().read_bytes())
    table = read_kallsyms(elf)
    _check_plausible(table)
    assert table.layout == "place-relative"
    # as a run reads it: the image laid out from _text in guest memory, addresses from where it is mapped
    loaded = read_kallsyms(loaded_image(elf), load_vaddr=0xFFFF_FFFF_8100_0000)
    assert loaded.addresses == table.addresses and loaded.names == table.names


@pytest.mark.real_binary
def test_a_corrupted_token_table_is_one_input_error(vmlinux612: bytes) -> None:
    table = read_kallsyms(vmlinux612)
    broken = bytearray(vmlinux612)
    # token 'a' is no longer 'a': the table's structure check fails, and there is no other table
    broken[table.table_offset : table.table_offset + 2048] = bytes(2048)
    with pytest.raises(InputError) as exc:
        read_kallsyms(bytes(broken))
    assert "no kallsyms table" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.real_binary
def test_a_bzimage_with_a_cut_payload_is_one_input_error(store: BinaryStore) -> None:
    data = store.linux_vmlinuz().read_bytes()
    with pytest.raises(InputError, match="payload") as exc:
        vmlinux_from_bzimage(data[: len(data) // 2])
    assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="bzImage"):
        vmlinux_from_bzimage(b"MZ" + bytes(4096))


def test_synthetic_table_and_its_damage() -> None:
    image = kallsyms_seeds()[0]
    table = read_kallsyms(image, load_vaddr=KALLSYMS_BASE)
    assert table.layout == "base-relative" and len(table) == 1103
    assert table.address("f0001") == KALLSYMS_BASE + 0x210 and table.function_at(KALLSYMS_BASE + 0x215) == ("f0001", 5)
    # a marker that disagrees with the names: not a table
    names = [("T", "_text", KALLSYMS_BASE), ("T", "start_kernel", KALLSYMS_BASE + 0x100)]
    names += [("t", f"g{i}", KALLSYMS_BASE + 0x200 + i) for i in range(1000)]
    names.append(("T", "_etext", KALLSYMS_BASE + 0x2000))
    good = synthetic_kallsyms(names)
    assert len(read_kallsyms(good, load_vaddr=KALLSYMS_BASE)) == 1003
    names_end = 8 + sum(2 + len(name) for _, name, _ in names)  # after num_syms and its padding
    markers_at = names_end + -names_end % 8
    bad = bytearray(good)
    bad[markers_at + 4] ^= 1  # the second block's offset
    with pytest.raises(InputError, match="no kallsyms table"):
        read_kallsyms(bytes(bad), load_vaddr=KALLSYMS_BASE)
    unsorted = synthetic_kallsyms(names[:1] + names[2:-1] + names[1:2] + names[-1:])
    with pytest.raises(InputError, match="no kallsyms table"):
        read_kallsyms(unsorted, load_vaddr=KALLSYMS_BASE)
