"""The version, in a module of its own: the package root re-exports the API, so modules under it read the version
from here rather than from the root (an import cycle otherwise: tests/test_layering.py)."""

__version__ = "0.1.0"
