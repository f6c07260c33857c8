"""Guest-visible UEFI tables: the system table, boot and runtime services, the DXE services table, and the
structures protocols hand out. Layouts per the UEFI 2.10 specification and edk2 MdePkg/Include (Uefi/UefiSpec.h,
Pi/PiDxeCis.h, Protocol/LoadedImage.h, Protocol/SimpleTextOut.h).
"""

from __future__ import annotations

from lazyaccept.binlayout import Layout

EFI_TABLE_HEADER = Layout(
    "EFI_TABLE_HEADER", [("Signature", "Q"), ("Revision", "I"), ("HeaderSize", "I"), ("CRC32", "I"), ("Reserved", "I")]
)
EFI_SYSTEM_TABLE = Layout(
    "EFI_SYSTEM_TABLE",
    [
        ("Hdr", "24s"),
        ("FirmwareVendor", "Q"),
        ("FirmwareRevision", "I"),
        ("Pad", "I"),
        ("ConsoleInHandle", "Q"),
        ("ConIn", "Q"),
        ("ConsoleOutHandle", "Q"),
        ("ConOut", "Q"),
        ("StandardErrorHandle", "Q"),
        ("StdErr", "Q"),
        ("RuntimeServices", "Q"),
        ("BootServices", "Q"),
        ("NumberOfTableEntries", "Q"),
        ("ConfigurationTable", "Q"),
    ],
)
EFI_CONFIGURATION_TABLE = Layout("EFI_CONFIGURATION_TABLE", [("VendorGuid", "16s"), ("VendorTable", "Q")])
EFI_LOADED_IMAGE_PROTOCOL = Layout(
    "EFI_LOADED_IMAGE_PROTOCOL",
    [
        ("Revision", "I"),
        ("Pad0", "I"),
        ("ParentHandle", "Q"),
        ("SystemTable", "Q"),
        ("DeviceHandle", "Q"),
        ("FilePath", "Q"),
        ("Reserved", "Q"),
        ("LoadOptionsSize", "I"),
        ("Pad1", "I"),
        ("LoadOptions", "Q"),
        ("ImageBase", "Q"),
        ("ImageSize", "Q"),
        ("ImageCodeType", "I"),
        ("ImageDataType", "I"),
        ("Unload", "Q"),
    ],
)
SIMPLE_TEXT_OUTPUT_MODE = Layout(
    "SIMPLE_TEXT_OUTPUT_MODE",
    [
        ("MaxMode", "i"),
        ("Mode", "i"),
        ("Attribute", "i"),
        ("CursorColumn", "i"),
        ("CursorRow", "i"),
        ("CursorVisible", "B"),
        ("Pad", "3s"),
    ],
)
EFI_TIME = Layout(
    "EFI_TIME",
    [
        ("Year", "H"),
        ("Month", "B"),
        ("Day", "B"),
        ("Hour", "B"),
        ("Minute", "B"),
        ("Second", "B"),
        ("Pad1", "B"),
        ("Nanosecond", "I"),
        ("TimeZone", "h"),
        ("Daylight", "B"),
        ("Pad2", "B"),
    ],
)

SYSTEM_TABLE_SIGNATURE = 0x5453595320494249  # "IBI SYST"
BOOT_SERVICES_SIGNATURE = 0x56524553544F4F42  # "BOOTSERV"
RUNTIME_SERVICES_SIGNATURE = 0x56524553544E5552  # "RUNTSERV"
DXE_SERVICES_SIGNATURE = 0x565245535F455844  # "DXE_SERV"
UEFI_REVISION = (2 << 16) | 70  # 2.7, what OVMF reports
DXE_SERVICES_REVISION = (1 << 16) | 80
LOADED_IMAGE_REVISION = 0x1000

# (name, number of arguments) in table order.
BOOT_SERVICES = [
    ("RaiseTPL", 1),
    ("RestoreTPL", 1),
    ("AllocatePages", 4),
    ("FreePages", 2),
    ("GetMemoryMap", 5),
    ("AllocatePool", 3),
    ("FreePool", 1),
    ("CreateEvent", 5),
    ("SetTimer", 3),
    ("WaitForEvent", 3),
    ("SignalEvent", 1),
    ("CloseEvent", 1),
    ("CheckEvent", 1),
    ("InstallProtocolInterface", 4),
    ("ReinstallProtocolInterface", 4),
    ("UninstallProtocolInterface", 3),
    ("HandleProtocol", 3),
    ("Reserved", 0),
    ("RegisterProtocolNotify", 3),
    ("LocateHandle", 5),
    ("LocateDevicePath", 3),
    ("InstallConfigurationTable", 2),
    ("LoadImage", 6),
    ("StartImage", 3),
    ("Exit", 4),
    ("UnloadImage", 1),
    ("ExitBootServices", 2),
    ("GetNextMonotonicCount", 1),
    ("Stall", 1),
    ("SetWatchdogTimer", 4),
    ("ConnectController", 4),
    ("DisconnectController", 3),
    ("OpenProtocol", 6),
    ("CloseProtocol", 4),
    ("OpenProtocolInformation", 4),
    ("ProtocolsPerHandle", 3),
    ("LocateHandleBuffer", 5),
    ("LocateProtocol", 3),
    ("InstallMultipleProtocolInterfaces", 0),
    ("UninstallMultipleProtocolInterfaces", 0),
    ("CalculateCrc32", 3),
    ("CopyMem", 3),
    ("SetMem", 3),
    ("CreateEventEx", 6),
]
# lazyaccept's option 3: AcceptMemory(Start, Size) appended after the standard entries; a binary finds it by
# checking that Hdr.HeaderSize covers it (see docs of firmware/dxe/accept.py for its contract).
ACCEPT_MEMORY_SERVICE = ("AcceptMemory", 2)
RUNTIME_SERVICES = [
    ("GetTime", 2),
    ("SetTime", 1),
    ("GetWakeupTime", 3),
    ("SetWakeupTime", 2),
    ("SetVirtualAddressMap", 4),
    ("ConvertPointer", 2),
    ("GetVariable", 5),
    ("GetNextVariableName", 3),
    ("SetVariable", 5),
    ("GetNextHighMonotonicCount", 1),
    ("ResetSystem", 4),
    ("UpdateCapsule", 3),
    ("QueryCapsuleCapabilities", 4),
    ("QueryVariableInfo", 4),
]
DXE_SERVICES = [
    ("AddMemorySpace", 4),
    ("AllocateMemorySpace", 7),
    ("FreeMemorySpace", 2),
    ("RemoveMemorySpace", 2),
    ("GetMemorySpaceDescriptor", 2),
    ("SetMemorySpaceAttributes", 3),
    ("GetMemorySpaceMap", 2),
    ("AddIoSpace", 3),
    ("AllocateIoSpace", 7),
    ("FreeIoSpace", 2),
    ("RemoveIoSpace", 2),
    ("GetIoSpaceDescriptor", 2),
    ("GetIoSpaceMap", 2),
    ("Dispatch", 0),
    ("Schedule", 2),
    ("Trust", 2),
    ("ProcessFirmwareVolume", 3),
    ("SetMemorySpaceCapabilities", 3),
]
TABLE_HEADER_SIZE = EFI_TABLE_HEADER.size
