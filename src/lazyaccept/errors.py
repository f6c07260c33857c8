"""Exceptions that carry a message meant for the user; the CLI prints them on one line with exit code 2."""

from __future__ import annotations


class LazyAcceptError(Exception):
    """Base of every error lazyaccept reports to a user instead of a traceback."""


class InputError(LazyAcceptError):
    """Bad input: a file, an image, a HOB, a command-line value. The message names the field (and offset)."""

    def __init__(self, message: str, *, field: str | None = None, offset: int | None = None):
        self.field = field
        self.offset = offset
        where = []
        if field:
            where.append(f"field {field}")
        if offset is not None:
            where.append(f"offset {offset:#x}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)


class ConfigError(LazyAcceptError):
    """An impossible or unknown setting (policy name, sizes that contradict each other, 0 vCPUs)."""
