"""The import graph of src/mtkd (module-level and function-level imports alike): no import cycles, and
no library module (anything outside mtkd/recipes/ and mtkd/cli.py) imports a recipe. Imports under
`if TYPE_CHECKING:` are annotations only and do not count."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"
APPLICATION = ("mtkd.recipes", "mtkd.cli")  # may import anything; the rest is the library


def modules() -> dict[str, Path]:
    """Module name -> file, a package by its __init__.py."""
    out = {}
    for path in sorted((SRC / "mtkd").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
                                          or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif not _is_type_checking(child):
            yield from _import_nodes(child)


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The mtkd modules `name` imports: `from a import b` counts as a.b where that is a module, else a."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in _import_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a module inside a package
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_module_and_function_level_imports():
    edges = graph()
    assert "mtkd.loop" in edges["mtkd.recipes.runner"]  # module level
    assert "mtkd.model" in edges["mtkd"]  # inside a function (mtkd.__getattr__)
    assert "mtkd.tasks" not in edges["mtkd.heads"]  # under TYPE_CHECKING only


def test_no_import_cycles():
    found = [sorted(c) for c in cycles(graph())]
    assert not found, f"import cycles: {found}"


def test_no_library_module_imports_a_recipe():
    crossed = {name: sorted(t for t in targets if t.startswith("mtkd.recipes"))
               for name, targets in graph().items() if not name.startswith(APPLICATION)}
    assert not {name: t for name, t in crossed.items() if t}, crossed
