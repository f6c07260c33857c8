"""The device path parser (spec/device_path.py): nodes, their text form, and hostile paths refused naming the field
and offset."""

from __future__ import annotations

import uuid

import pytest

from lazyaccept.errors import InputError
from lazyaccept.firmware.drivers.blockio import (
    acpi_pci_root,
    file_path_node,
    hard_drive_node,
    mbr_hard_drive_node,
    pci_node,
)
from lazyaccept.spec.device_path import (
    MEDIA,
    MEDIA_FILEPATH,
    device_path_text,
    node_length,
    parse_device_path,
    split_nodes,
)

END = bytes([0x7F, 0xFF, 4, 0])
GUID = uuid.UUID("0d7a4582-e836-44bc-a3c9-c50329dc3c11")


def boot_option() -> bytes:
    return (acpi_pci_root() + pci_node(4) + hard_drive_node(1, 0x800, 0x32000, GUID)
            + file_path_node("\\EFI\\BOOT\\BOOTX64.EFI") + END)


def test_a_boot_option_parses_into_its_nodes_and_text() -> None:
    nodes = parse_device_path(boot_option())
    assert [(n.type, n.subtype) for n in nodes] == [(2, 1), (1, 1), (4, 1), (4, 4)]
    assert [n.offset for n in nodes] == [0, 12, 18, 60]
    assert nodes[-1].type == MEDIA and nodes[-1].subtype == MEDIA_FILEPATH
    assert [n.raw for n in nodes] == split_nodes(boot_option())
    assert device_path_text(boot_option()) == (
        "PciRoot(0x0)/Pci(0x4,0x0)/HD(1,GPT,0D7A4582-E836-44BC-A3C9-C50329DC3C11,0x800,0x32000)/\\EFI\\BOOT\\BOOTX64.EFI"
    )


def test_an_mbr_partition_node_shows_the_disk_signature() -> None:
    path = acpi_pci_root() + pci_node(4) + mbr_hard_drive_node(2, 63, 1000, 0xDEADBEEF) + END
    assert device_path_text(path).endswith("/HD(2,MBR,0xdeadbeef,0x3f,0x3e8)")


@pytest.mark.parametrize(
    ("path", "text", "field", "offset"),
    [
        (acpi_pci_root() + bytes([1, 1, 2, 0]) + END, "has length 2, less than its 4-byte header", "Length", 12),
        (acpi_pci_root() + bytes([1, 1, 200, 0, 0, 4]), "node of 200 bytes runs past the path's 18 bytes", "Length",
         12),
        (acpi_pci_root() + pci_node(4), "no End node", "End", 18),
        (acpi_pci_root() + bytes([1, 1]), "truncated device path node: 2 of 4 header bytes", "Length", 12),
    ],
)
def test_hostile_paths_are_refused_naming_field_and_offset(path: bytes, text: str, field: str, offset: int) -> None:
    with pytest.raises(InputError) as caught:
        parse_device_path(path)
    assert text in str(caught.value) and (caught.value.field, caught.value.offset) == (field, offset)
    # The lenient walk the firmware does stops before the bad node instead.
    assert split_nodes(path) == [acpi_pci_root()] + ([pci_node(4)] if field == "End" else [])
    device_path_text(path)  # and the text form never fails


def test_node_length_refuses_a_short_header() -> None:
    with pytest.raises(InputError, match="offset 0x10"):
        node_length(bytes([4, 4, 3, 0]), 16)
