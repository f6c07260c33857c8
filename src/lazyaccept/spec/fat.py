"""FAT12/16/32 on-disk structures (Microsoft "FAT: General Overview of On-Disk Format" 1.03, its BPB_/BS_/FSI_/DIR_/
LDIR_ names): the boot sector with its BIOS parameter block in the FAT12/16 and FAT32 forms, FSInfo, the 32-byte
directory entry and the long-name entry. The writer is vmm/disk.py."""

from __future__ import annotations

from lazyaccept.binlayout import Layout

_BPB_COMMON = [
    ("BS_jmpBoot", "3s"),
    ("BS_OEMName", "8s"),
    ("BPB_BytsPerSec", "H"),
    ("BPB_SecPerClus", "B"),
    ("BPB_RsvdSecCnt", "H"),
    ("BPB_NumFATs", "B"),
    ("BPB_RootEntCnt", "H"),
    ("BPB_TotSec16", "H"),
    ("BPB_Media", "B"),
    ("BPB_FATSz16", "H"),
    ("BPB_SecPerTrk", "H"),
    ("BPB_NumHeads", "H"),
    ("BPB_HiddSec", "I"),
    ("BPB_TotSec32", "I"),
]
_BS_EXTENDED = [
    ("BS_DrvNum", "B"),
    ("BS_Reserved1", "B"),
    ("BS_BootSig", "B"),
    ("BS_VolID", "I"),
    ("BS_VolLab", "11s"),
    ("BS_FilSysType", "8s"),
]
FAT16_BOOT_SECTOR = Layout("FAT12/16 boot sector", _BPB_COMMON + _BS_EXTENDED)
FAT32_BOOT_SECTOR = Layout(
    "FAT32 boot sector",
    _BPB_COMMON
    + [
        ("BPB_FATSz32", "I"),
        ("BPB_ExtFlags", "H"),
        ("BPB_FSVer", "H"),
        ("BPB_RootClus", "I"),
        ("BPB_FSInfo", "H"),
        ("BPB_BkBootSec", "H"),
        ("BPB_Reserved", "12s"),
    ]
    + _BS_EXTENDED,
)
BOOT_SIGNATURE_OFFSET = 510  # 0x55 0xAA, in every 512-byte-or-larger sector
BOOT_SIGNATURE = b"\x55\xaa"
BS_BOOTSIG_EXTENDED = 0x29  # BS_VolID, BS_VolLab and BS_FilSysType are present

FSINFO = Layout(
    "FSInfo",
    [
        ("FSI_LeadSig", "I"),
        ("FSI_Reserved1", "480s"),
        ("FSI_StrucSig", "I"),
        ("FSI_Free_Count", "I"),
        ("FSI_Nxt_Free", "I"),
        ("FSI_Reserved2", "12s"),
        ("FSI_TrailSig", "I"),
    ],
)
FSI_LEAD_SIG, FSI_STRUC_SIG, FSI_TRAIL_SIG = 0x41615252, 0x61417272, 0xAA550000  # "RRaA", "rrAa", 00 00 55 AA

DIR_ENTRY = Layout(
    "DIR_ENTRY",
    [
        ("DIR_Name", "11s"),
        ("DIR_Attr", "B"),
        ("DIR_NTRes", "B"),
        ("DIR_CrtTimeTenth", "B"),
        ("DIR_CrtTime", "H"),
        ("DIR_CrtDate", "H"),
        ("DIR_LstAccDate", "H"),
        ("DIR_FstClusHI", "H"),
        ("DIR_WrtTime", "H"),
        ("DIR_WrtDate", "H"),
        ("DIR_FstClusLO", "H"),
        ("DIR_FileSize", "I"),
    ],
)
LDIR_ENTRY = Layout(
    "LDIR_ENTRY",
    [
        ("LDIR_Ord", "B"),
        ("LDIR_Name1", "10s"),  # 5 UCS-2 characters
        ("LDIR_Attr", "B"),  # ATTR_LONG_NAME
        ("LDIR_Type", "B"),
        ("LDIR_Chksum", "B"),
        ("LDIR_Name2", "12s"),  # 6 characters
        ("LDIR_FstClusLO", "H"),
        ("LDIR_Name3", "4s"),  # 2 characters
    ],
)
LDIR_CHARS = 13
LAST_LONG_ENTRY = 0x40  # ORed into LDIR_Ord of the last (first stored) long-name entry
ATTR_VOLUME_ID, ATTR_DIRECTORY, ATTR_ARCHIVE, ATTR_LONG_NAME = 0x08, 0x10, 0x20, 0x0F

assert FAT16_BOOT_SECTOR.size == 62 and FAT32_BOOT_SECTOR.size == 90 and FAT32_BOOT_SECTOR.offset_of("BS_DrvNum") == 64
assert FSINFO.size == 512 and FSINFO.offset_of("FSI_StrucSig") == 484
assert DIR_ENTRY.size == LDIR_ENTRY.size == 32
