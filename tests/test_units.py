"""Sizes as users write them."""

from __future__ import annotations

import pytest

from lazyaccept.units import SizeError, format_size, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [("4096", 4096), ("512M", 512 << 20), ("64G", 64 << 30), ("4T", 4 << 40), ("67000M", 67000 << 20),
     ("1.5G", 3 << 29), ("0x1000", 4096), ("2MiB", 2 << 20), ("64g", 64 << 30)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "64Q", "G", "-1G", "1.3B", "12 34", "0.1", "1e9"])
def test_malformed_sizes_name_the_value(text: str) -> None:
    with pytest.raises(SizeError, match="invalid size"):
        parse_size(text)


def test_format_size_round_trips() -> None:
    for value in (4096, 512 << 20, 64 << 30, 4 << 40, 67000 << 20, 3):
        assert parse_size(format_size(value)) == value
    assert format_size(67000 << 20) == "67000M"


@pytest.mark.parametrize(
    ("text", "value"),
    [("4096", 4 << 30), ("4096B", 4096), ("4096b", 4096), ("64G", 64 << 30), ("1.5", 3 << 19), ("0x10M", 16 << 20),
     ("2MiB", 2 << 20), ("0", 0)],
)
def test_bare_number_in_mib_as_qemu_m(text: str, value: int) -> None:
    from lazyaccept.units import MiB

    assert parse_size(text, bare_unit=MiB) == value


def test_bare_hex_is_refused_when_bare_numbers_are_mib() -> None:
    from lazyaccept.units import MiB

    with pytest.raises(SizeError, match=r"invalid size '0x37de000': .* write this byte count as 57208K or 58580992B"):
        parse_size("0x37de000", bare_unit=MiB)
    assert parse_size("0x37de000") == 0x37DE000  # bytes by default: scenario files and the Python API
