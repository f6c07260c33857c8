"""The KVM CPU backend: /dev/kvm through ctypes (ioctl.py), guest RAM in KVM slots (guest_ram.py), the backend's
own page tables (paging.py), decoding of faulting instructions (decoder.py), XMM state (xmm.py), and the backend
itself (backend.py)."""
