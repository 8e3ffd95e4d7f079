"""The house's one-way dependencies (docs/ARCHITECTURE.md): a room never imports a room above it, and
no two modules import each other.

Every ``import``/``from ... import`` in the package counts, including the lazy ones inside
functions, because a lazy upward import is still an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Lower number = lower room. Rooms on the same level may import each other.
LAYERS: dict[str, int] = {
    "srcore.errors": 0, "srcore.io": 0, "srcore.storage": 0, "srcore.servers": 0, "srcore.config": 0,
    "srcore.raycluster": 0, "srcore.environment": 0,
    "srcore.ops": 1, "srcore.kernels": 1,
    "srcore.data": 2, "srcore.metrics": 2,
    "srcore.models": 3,
    "srcore.inference": 4, "srcore.evaluation": 4, "srcore.train": 4, "srcore.export": 4,
    "srcore.tracking": 5,
    "srcore.stack": 6, "srcore.console": 6, "srcore.cli": 6, "flows": 6,
}


def _room(module: str) -> str | None:
    best = None
    for room in LAYERS:
        if (module == room or module.startswith(room + ".")) and (best is None or len(room) > len(best)):
            best = room
    return best


def _module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def upward_imports(root: Path = REPO) -> list[str]:
    problems = []
    files = sorted((root / "srcore").rglob("*.py")) + sorted((root / "flows").rglob("*.py"))
    for path in files:
        here = _room(_module_name(path, root))
        if here is None:
            continue
        for lineno, module in _imports(path):
            there = _room(module)
            if there is not None and LAYERS[there] > LAYERS[here]:
                problems.append(
                    f"{path.relative_to(root)}:{lineno}: {here} imports {module} (a room above it)")
    return problems


def test_every_module_has_a_room():
    unplaced = [str(p.relative_to(REPO)) for p in sorted((REPO / "srcore").rglob("*.py"))
                if p != REPO / "srcore" / "__init__.py" and _room(_module_name(p)) is None]
    assert not unplaced, f"modules outside every room of LAYERS: {unplaced}"


def test_no_upward_imports():
    problems = upward_imports()
    assert not problems, "imports that run upward:\n" + "\n".join(problems)


def test_checker_sees_an_upward_import(tmp_path):
    (tmp_path / "srcore" / "data").mkdir(parents=True)
    (tmp_path / "flows").mkdir()
    (tmp_path / "srcore" / "data" / "bad.py").write_text("def f():\n    from srcore.models import build\n")
    assert upward_imports(tmp_path) == [
        "srcore/data/bad.py:2: srcore.data imports srcore.models (a room above it)"]


@pytest.mark.parametrize("module", ["srcore.config", "srcore.io", "srcore.storage", "srcore.errors"])
def test_bottom_rooms_import_nothing_heavy(module):
    import subprocess
    import sys

    code = (f"import sys, {module}; "
            "print(sorted(m for m in ('torch', 'srcore.models', 'srcore.data') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def _module_of(name: str, modules: set[str]) -> str | None:
    """The srcore module ``name`` refers to (``srcore.data.loaders.shard_set`` -> ``srcore.data.loaders``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported_names(path: Path) -> list[str]:
    """What ``path`` imports, with ``from package import module`` as ``package.module``."""
    names = [name for _, name in _imports(path)]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def import_cycles(root: Path = REPO) -> list[list[str]]:
    """Circles of imports between srcore's modules (lazy imports count). A package and its own
    modules are left aside: ``srcore/models/__init__.py`` gathering ``srcore.models.presets`` is not a
    circle with a module of ``srcore.models`` that imports the package."""
    files = {(_module_name(p, root)): p for p in sorted((root / "srcore").rglob("*.py"))}
    modules = set(files)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in files.items():
        for name in _imported_names(path):
            target = _module_of(name, modules)
            if target is None or target == module:
                continue
            if target.startswith(module + ".") or module.startswith(target + "."):
                continue  # a package and its own modules
            graph[module].add(target)
    cycles, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return cycles


def test_no_import_circles():
    cycles = import_cycles()
    assert not cycles, "modules that import each other:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_checker_sees_an_import_circle(tmp_path):
    (tmp_path / "srcore" / "data").mkdir(parents=True)
    (tmp_path / "srcore" / "data" / "a.py").write_text("from srcore.data.b import f\n")
    (tmp_path / "srcore" / "data" / "b.py").write_text("def f():\n    from srcore.data import a\n")
    assert import_cycles(tmp_path) == [["srcore.data.a", "srcore.data.b", "srcore.data.a"]]
