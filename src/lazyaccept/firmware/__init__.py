"""TDVF firmware, mirroring edk2 component boundaries: sec, dxe, loaders."""
