"""GUIDs of the protocols and tables a binary sees (MdePkg.dec, MdeModulePkg.dec, OvmfPkg.dec, Linux efi.h)."""

from __future__ import annotations

import uuid
from types import MappingProxyType

from lazyaccept.binlayout import guid
from lazyaccept.spec.efi import (
    EDKII_MEMORY_ACCEPT_PROTOCOL_GUID,
    EFI_DXE_SERVICES_TABLE_GUID,
    LINUX_EFI_INITRD_MEDIA_GUID,
    LINUX_EFI_UNACCEPTED_MEM_TABLE_GUID,
    OVMF_SEV_MEMORY_ACCEPTANCE_PROTOCOL_GUID,
)

LOADED_IMAGE = guid("5b1b31a1-9562-11d2-8e3f-00a0c969723b")
LOADED_IMAGE_DEVICE_PATH = guid("bc62157e-3e33-4fec-9920-2d3b36d750df")
DEVICE_PATH = guid("09576e91-6d3f-11d2-8e39-00a0c969723b")
LOAD_FILE2 = guid("4006c0c1-fcb3-403e-996d-4a6c8724e06d")
LOAD_FILE = guid("56ec3091-954c-11d2-8e3f-00a0c969723b")
SIMPLE_TEXT_IN = guid("387477c1-69c7-11d2-8e39-00a0c969723b")
SIMPLE_TEXT_IN_EX = guid("dd9e7534-7762-4698-8c14-f58517a625aa")
SIMPLE_TEXT_OUT = guid("387477c2-69c7-11d2-8e39-00a0c969723b")
RNG = guid("3152bca5-eade-433d-862e-c01cdc291f44")
RNG_ALG_RAW = guid("e43176d7-b6e8-4827-b784-7ffdc4b68561")
MEMORY_ATTRIBUTE = guid("f4560cf6-40ec-4b4a-a192-bf1d57d0b189")
CC_MEASUREMENT = guid("96751a3d-72f4-41a6-a794-ed5d0e67ae6b")
TCG2 = guid("607f766c-7455-42be-930b-e4d76db2720f")
GLOBAL_VARIABLE = guid("8be4df61-93ca-11d2-aa0d-00e098032b8c")
ACPI_20_TABLE = guid("8868e871-e4f1-11d3-bc22-0080c73c8881")  # gEfiAcpiTableGuid: the RSDP, revision 2
ACPI_10_TABLE = guid("eb9d2d30-2d88-11d3-9a16-0090273fc14d")  # gEfiAcpi10TableGuid: the RSDP, revision 0
SMBIOS3_TABLE = guid("f2fd1544-9794-4a2c-992e-e5bbcf20e394")
BLOCK_IO = guid("964e5b21-6459-11d2-8e39-00a0c969723b")
DISK_IO = guid("ce345171-ba0b-11d2-8e4f-00a0c969723b")
SIMPLE_FILE_SYSTEM = guid("964e5b22-6459-11d2-8e39-00a0c969723b")
FILE_INFO = guid("09576e92-6d3f-11d2-8e39-00a0c969723b")
FILE_SYSTEM_INFO = guid("09576e93-6d3f-11d2-8e39-00a0c969723b")
FILE_SYSTEM_VOLUME_LABEL = guid("db47d7d3-fe81-11d3-9a35-0090273fc14d")
PART_TYPE_SYSTEM_PART = guid("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")  # gEfiPartTypeSystemPartGuid: the ESP's GPT type

EDKII_MEMORY_ACCEPT = EDKII_MEMORY_ACCEPT_PROTOCOL_GUID
OVMF_SEV_MEMORY_ACCEPTANCE = OVMF_SEV_MEMORY_ACCEPTANCE_PROTOCOL_GUID
DXE_SERVICES_TABLE = EFI_DXE_SERVICES_TABLE_GUID
LINUX_INITRD_MEDIA = LINUX_EFI_INITRD_MEDIA_GUID
LINUX_UNACCEPTED_MEM_TABLE = LINUX_EFI_UNACCEPTED_MEM_TABLE_GUID
LINUX_RANDOM_SEED = guid("1ce1e5bc-7ceb-42f2-81e5-8aadf180f57b")
LINUX_BOOT_MEMMAP = guid("800f683f-d08b-423a-a293-965c3c6fe2b4")

# Names for the call log: every GUID above, and protocols binaries ask for that the firmware does not offer.
NAMES = MappingProxyType(
    {
        **{value: name for name, value in globals().items() if isinstance(value, uuid.UUID) and name.isupper()},
        guid("9042a9de-23dc-4a38-96fb-7aded080516a"): "GRAPHICS_OUTPUT",
        guid("982c298b-f4fa-41cb-b838-77aa688fb839"): "UGA_DRAW",
        guid("4cf5b200-68b8-4ca5-9eec-b23e3f50029a"): "PCI_IO",
        guid("e20939be-32d4-41be-a150-897f85d49829"): "MEMORY_OVERWRITE_CONTROL",
        guid("605dab50-e046-4300-abb6-3dd810dd8b23"): "SHIM_LOCK",
        guid("b7799cb0-eca2-4943-9667-1fae07b747fa"): "LINUX_TPM_EVENT_LOG",
        guid("e03fc20a-85dc-406e-b9e0-3ad69b93ab2e"): "LINUX_SCREEN_INFO",
    }
)


def name_of(value: uuid.UUID) -> str:
    return NAMES.get(value, str(value))
