"""CPU backends that run real EFI binaries against the firmware."""
