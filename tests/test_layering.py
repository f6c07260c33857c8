"""The package's layering, enforced: spec <- tdx <- vmm <- firmware <- cpu <- guest <- orchestration, nothing
importing upward, no import cycles. Every import counts, at module level or inside a function (a late import hides
a dependency, it does not remove it).

The known exceptions are listed with the reason they still exist; each must still be there (so that the list only
shrinks), and nothing else may appear.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lazyaccept

PACKAGE_DIR = Path(lazyaccept.__file__).parent
LAYERS = ("spec", "tdx", "vmm", "firmware", "cpu", "guest", "orchestration")
# progress and interrupt: the process-wide reporter and Ctrl-C state every layer reports to (they import none above)
SPEC_MODULES = frozenset(
    {"binlayout", "units", "errors", "rangemap", "exitcodes", "records", "spec", "progress", "interrupt", "files"}
)

KNOWN_UPWARD: dict[tuple[str, str], str] = {}
KNOWN_CYCLES: dict[tuple[str, ...], str] = {}


def module_files() -> dict[str, Path]:
    out = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = ("lazyaccept", *path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The lazyaccept modules `name` imports (a `from package import module` names the module)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "lazyaccept")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] == "lazyaccept":
                out.update(f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names)
    return {m for m in out if m in known and m != name}


def layer_of(name: str) -> str:
    parts = name.split(".")
    if len(parts) < 2:
        return "orchestration"
    if parts[1] in SPEC_MODULES:
        return "spec"
    return parts[1] if parts[1] in LAYERS else "orchestration"


def graph() -> dict[str, set[str]]:
    known = module_files()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(g: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[tuple[str, ...]] = set()
    for root in g:
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(g[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.add(tuple(sorted(component)))
    return found


def test_nothing_imports_upward() -> None:
    upward = {
        (name, dep)
        for name, deps in graph().items()
        for dep in deps
        if LAYERS.index(layer_of(dep)) > LAYERS.index(layer_of(name))
    }
    assert upward - set(KNOWN_UPWARD) == set(), "new upward imports"
    assert set(KNOWN_UPWARD) - upward == set(), "fixed: remove these from KNOWN_UPWARD"


def test_no_import_cycles() -> None:
    found = cycles(graph())
    assert found - set(KNOWN_CYCLES) == set(), "new import cycles"
    assert set(KNOWN_CYCLES) - found == set(), "fixed: remove these from KNOWN_CYCLES"


def test_the_checker_sees_what_it_must() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {("a", "b", "c")}
    g = graph()
    assert "lazyaccept.tdx.module" in g["lazyaccept.firmware.sec.sec"] or any(
        d.startswith("lazyaccept.tdx") for d in g["lazyaccept.firmware.sec.sec"]
    )
    assert layer_of("lazyaccept.units") == "spec" and layer_of("lazyaccept.boot") == "orchestration"
    assert layer_of("lazyaccept.cpu.kvm.backend") == "cpu"
