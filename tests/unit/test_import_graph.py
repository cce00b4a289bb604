"""The import graph of honed: no cycles, and every import runs downward through the declared layers.

Every module under src/honed is parsed with `ast` (nothing is imported). Imports inside functions
(lazy imports) count like top-level ones: a lazy import still ties the two modules together, it
only defers the cost; imports under `if TYPE_CHECKING:` count too. `from honed.x import y` is an
edge to the module `honed.x.y` when that is a module, else to `honed.x`.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# Lowest first. A module may import modules of its own layer and of layers below it, never above.
# A module belongs to the layer of the longest prefix listed that matches its name ("honed" itself
# matches only honed/__init__.py, so a new package must be given its place here).
LAYERS: list[tuple[str, ...]] = [
    ("honed", "honed.errors", "honed.utils"),  # version, the error tree, small helpers
    ("honed.config", "honed.model.families"),  # typed configs; the family table is plain data every layer reads
    ("honed.data",),  # conversations, templates, tokenize, packing, augment, quality, sampling strategies
    ("honed.model",),  # load models and tokenizers, adapters, the scope prompt
    ("honed.infer",),  # chat and batch generation (used by eval, guard, serve)
    ("honed.engine",),  # the fast training paths
    ("honed.train",),  # training loops, losses, checkpoints
    ("honed.bench",),  # measuring the training engine
    ("honed.eval",),
    ("honed.guard",),
    ("honed.export",),
    ("honed.serve",),
    ("honed.testing",),  # tiny models and fixtures: may use anything below the commands
    ("honed.quickstart",),
    ("honed.commands",),
    ("honed.cli", "honed.__main__"),
]

# Upward edges tolerated for now, each with who removes it.
ALLOWED_UPWARD: set[tuple[str, str]] = set()


def _module_files() -> dict[str, Path]:
    files = {}
    for path in sorted((SRC / "honed").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported honed module, line) for every import statement in the file, lazy ones included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
        else:
            continue
        for target in targets:
            if target != "honed" and not target.startswith("honed."):
                continue
            while target not in modules and "." in target:  # `import honed.x.func`-like: its module
                target = target.rpartition(".")[0]
            if target in modules and target != name and (target, node.lineno) not in found:
                found.append((target, node.lineno))
    return found


def _graph() -> tuple[dict[str, Path], dict[str, list[tuple[str, int]]]]:
    modules = _module_files()
    return modules, {name: _imports(name, path, modules) for name, path in modules.items()}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or (prefix != "honed" and module.startswith(prefix + "."))


def _layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if _within(module, prefix) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    return best


def _where(modules, name, line) -> str:
    return f"{modules[name].relative_to(SRC.parent)}:{line}"


def _cycles(edges: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child, _ in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges.get(child, []))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
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
                        out.append(sorted(component))
    return out


def test_every_module_has_a_layer():
    modules, _ = _graph()
    missing = sorted(m for m in modules if _layer_of(m) is None)
    assert not missing, f"modules in no layer of LAYERS (add their package where it belongs): {missing}"


def test_no_import_cycles():
    modules, edges = _graph()
    problems = []
    for component in _cycles(edges):
        members = set(component)
        inner = [f"  {a} -> {b}  ({_where(modules, a, line)})" for a in component for b, line in edges[a] if b in members]
        problems.append(f"cycle between {', '.join(component)}:\n" + "\n".join(inner))
    assert not problems, "import cycles (move what both sides need into a module below them):\n" + "\n".join(problems)


def test_imports_run_downward():
    modules, edges = _graph()
    upward = []
    for name, targets in edges.items():
        mine = _layer_of(name)
        for target, line in targets:
            theirs = _layer_of(target)
            if mine is None or theirs is None or theirs <= mine:
                continue
            if any(_within(name, a) and _within(target, b) for a, b in ALLOWED_UPWARD):
                continue
            upward.append(f"  {name} -> {target}  ({_where(modules, name, line)}): "
                          f"layer {LAYERS[mine][0]} imports layer {LAYERS[theirs][0]} above it")
    assert not upward, "imports that run upward (pass a function in, or move the shared code down):\n" + "\n".join(sorted(upward))


@pytest.mark.parametrize("source, expected", [
    ("from honed.engine import replay\n", [("honed.engine.replay", 1)]),
    ("def f():\n    from honed.engine.fused import covers\n", [("honed.engine.fused", 2)]),
    ("from . import lora\n", [("honed.engine.lora", 1)]),
    ("import honed.errors\nimport torch\n", [("honed.errors", 1)]),
])
def test_imports_are_read_like_python_resolves_them(tmp_path, source, expected):
    modules = {"honed.engine": Path("x"), "honed.engine.replay": Path("x"), "honed.engine.fused": Path("x"),
               "honed.engine.lora": Path("x"), "honed.errors": Path("x"), "honed.engine.fp8": tmp_path / "fp8.py"}
    (tmp_path / "fp8.py").write_text(source)
    assert _imports("honed.engine.fp8", tmp_path / "fp8.py", modules) == expected


def test_cycles_are_found_and_acyclic_graphs_pass():
    assert _cycles({"a": [("b", 1)], "b": [("c", 1)], "c": [("a", 1)], "d": [("a", 1)]}) == [["a", "b", "c"]]
    assert _cycles({"a": [("b", 1)], "b": [("c", 1)], "c": [], "d": [("a", 1), ("c", 2)]}) == []


def test_layers_are_matched_by_the_longest_prefix():
    assert _layer_of("honed.model.families") == _layer_of("honed.config") < _layer_of("honed.data") < _layer_of("honed.model.load")
    assert _layer_of("honed") == _layer_of("honed.errors") == 0
    assert _layer_of("honed.new_package.module") is None  # unknown packages must be placed, not fall to the bottom
