"""lazyaccept: TDVF lazy memory acceptance for Intel TDX guests, modelled and run on real binaries.

The Python API is lazyaccept.api (`from lazyaccept.api import boot, run_scenario, Outcome`); its names are
re-exported here but for `boot` and `compare`, which at the package root are the modules lazyaccept.boot (the
Python firmware's boot) and lazyaccept.compare (the policy matrix). They are imported on first use, so that
`import lazyaccept` (the CLI, the pytest plugin when pytest starts) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lazyaccept._version import __version__

# The API's names, imported from lazyaccept.api on first use (PEP 562); `api` itself too.
__all__ = [
    "AdviceResult",
    "BootReport",
    "BootResult",
    "BootScenario",
    "CompareResult",
    "ConfigError",
    "InputError",
    "LazyAcceptError",
    "MatrixResult",
    "Outcome",
    "SecRun",
    "__version__",
    "advise",
    "api",
    "boot_scenario",
    "run_scenario",
    "sec",
]

if TYPE_CHECKING:
    from lazyaccept import api
    from lazyaccept.api import (
        AdviceResult,
        BootReport,
        BootResult,
        BootScenario,
        CompareResult,
        ConfigError,
        InputError,
        LazyAcceptError,
        MatrixResult,
        Outcome,
        SecRun,
        advise,
        boot_scenario,
        run_scenario,
        sec,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        import importlib

        api = importlib.import_module("lazyaccept.api")
        return api if name == "api" else getattr(api, name)
    raise AttributeError(f"module 'lazyaccept' has no attribute {name!r}")
