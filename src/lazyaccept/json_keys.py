"""The JSON vocabulary (docs/JSON.md, src/lazyaccept/schema/lazyaccept.schema.json): the internal records keep
their field names; these map them to keys that carry their unit (`_bytes`, `_ns`, `_s`, `_count`) on the way out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# TdxModule's accept counters (AcceptStats.as_dict) -> their JSON keys; the others are plural nouns already.
TDX_STATS_KEYS = {
    "accepted_4k": "accepted_4k_count",
    "accepted_2m": "accepted_2m_count",
    "already_accepted": "already_accepted_count",
    "busy": "busy_count",
}


def renamed(d: dict[str, Any], **names: str) -> dict[str, Any]:
    """A copy of `d` with keys renamed as `names` says (old=new), in the same order."""
    return {names.get(k, k): v for k, v in d.items()}


def tdx_stats_json(stats: dict[str, int]) -> dict[str, int]:
    return renamed(stats, **TDX_STATS_KEYS)


def acpi_json(acpi: dict[str, Any] | None) -> dict[str, Any] | None:
    """acpi_check.acpi_summary with each table's `length` as `length_bytes` (the FADT/MADT fields keep the ACPI
    specification's names)."""
    if acpi is None:
        return None
    return {**acpi, "tables": [renamed(t, length="length_bytes") for t in acpi.get("tables", [])]}


def grub_json(grub: dict[str, Any] | None) -> dict[str, Any] | None:
    """GRUB's details (loaders/grub.py) with each ESP device's `bytes_read` as `read_bytes`."""
    if grub is None or "esp" not in grub or not isinstance(grub["esp"], dict):
        return grub
    esp = grub["esp"]
    devices = [renamed(d, bytes_read="read_bytes") for d in esp.get("devices", [])]
    return {**grub, "esp": {**esp, "devices": devices}}


def schema_path() -> Path:
    """The JSON Schema (Draft 2020-12) every command's --json validates against; installed with the package."""
    return Path(__file__).resolve().parent / "schema" / "lazyaccept.schema.json"
