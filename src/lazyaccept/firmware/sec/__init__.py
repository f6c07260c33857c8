"""SEC: TD HOB parsing, the up-front accept, the HOB list for DXE."""
