"""UEFI drivers the Python DXE core installs: console, RNG, measurement, memory attributes, LoadFile2, block I/O."""
