"""Run every benchmark: python -m benchmarks [name ...]; a name may drop its bench_ prefix (initrd, kvm)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import benchmarks


def main(argv: list[str]) -> int:
    names = argv or sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))
    for name in names:
        name = name if name.startswith("bench_") else f"bench_{name}"
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"== {name}", flush=True)
        sys.argv = [name]  # each benchmark parses its own options; run them with defaults
        module.main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
