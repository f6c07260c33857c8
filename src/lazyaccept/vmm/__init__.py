"""The VMM: lays out a TD as QEMU does (RAM, TDVF sections, TD HOB)."""
