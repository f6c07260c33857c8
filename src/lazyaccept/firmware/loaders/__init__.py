"""Firmware loaders (QEMU direct boot)."""
