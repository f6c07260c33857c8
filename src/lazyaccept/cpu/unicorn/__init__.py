"""The unicorn CPU backend: EFI code under unicorn's JIT (backend.py) and its RDTSC/port I/O hooks (io.py)."""
