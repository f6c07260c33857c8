"""DXE core memory services with unaccepted memory (GCD, pages, pool, accept, ExitBootServices)."""
