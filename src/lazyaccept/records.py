"""What a run records, in one vocabulary for every layer: why the CPU stopped, and each firmware service call.

The report (boot.py), the JSON (docs/JSON.md) and the checks read these; nothing parses their text back.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StopReason:
    kind: str  # "returned" | "exit" | "kernel" | "terminated" | "exception" | "budget" | "error" | "input"
    detail: str = ""
    rip: int | None = None


@dataclass
class ServiceCall:
    name: str
    detail: str
    status: int | None
    image: str
