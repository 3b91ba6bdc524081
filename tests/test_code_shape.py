"""The shape of the code, checked: layers import only downwards, no module imports back into one that
imports it (not even inside a function), and no module reaches for another's private names."""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[1]
PACKAGES = {
    "ipg": ROOT / "ipg",
    "ipg.cluster": ROOT / "cluster",
    "ipg.workers": ROOT / "workers",
    "ipg.driver": ROOT / "driver",
}


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            if "organism" in path.parts and package == "ipg":
                continue
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            out[name] = path
    return out


def _imports(path: Path) -> list[ast.ImportFrom]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom) and n.module]


def test_no_import_cycles():
    modules = _modules()

    def targets(node):  # `from ipg.x import y` names ipg.x, and ipg.x.y where y is a module itself
        return {node.module} | {f"{node.module}.{a.name}" for a in node.names}

    graph = {
        name: {t for n in _imports(path) for t in targets(n) if t in modules and t != name}
        for name, path in modules.items()
    }
    state: dict[str, int] = {}

    def visit(name, stack):
        state[name] = 1
        for dep in graph[name]:
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep) :] + [dep]))
            if dep not in state:
                visit(dep, stack + [dep])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_the_library_never_imports_the_layers_above_it():
    for name, path in _modules().items():
        if name.startswith(("ipg.driver", "ipg.workers", "ipg.cluster")):
            continue
        above = [
            n.module for n in _imports(path) if n.module.startswith(("ipg.driver", "ipg.workers", "ipg.cluster", "ray"))
        ]
        assert not above, f"{name} imports {above}"


def test_no_private_name_is_imported_across_modules():
    for name, path in _modules().items():
        private = [
            f"{n.module}.{a.name}"
            for n in _imports(path)
            if n.module.startswith("ipg")
            for a in n.names
            if a.name.startswith("_") and not a.name.startswith("__")
        ]
        assert not private, f"{name} imports {private}"
