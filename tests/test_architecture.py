"""The floor plan: no import loops inside igds, and no module over 500 lines.

The import graph is read with ``ast`` from every ``.py`` file under ``src/igds``
(subpackages included), counting every intra-package import wherever it sits: at the
top, inside a function, or under ``if TYPE_CHECKING``. A loop hidden in a function
body is still a loop in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "igds"
MAX_LINES = 500


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (relative or absolute, at any depth)."""
    files = {module_name(f, root): f for f in sorted((root / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    # the package a relative import starts from: a module's own package,
                    # or the package itself for an __init__.py
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                # ``from .x import y`` imports module x.y when it is one, else a name of x
                targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in files else stem for a in node.names]
            for target in targets:
                while target and target not in files:  # ``import igds.a.b`` as a name inside igds.a.b
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One loop (as a path that returns to its start) per strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_loop_in(graph, group) for group in groups]


def _loop_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no loop through {start} in {sorted(group)}")


def test_no_import_cycles():
    found = cycles(import_graph(SRC, PACKAGE))
    assert not found, "import cycles in src/igds:\n  " + "\n  ".join(" -> ".join(c) for c in found)


def test_the_cycle_finder_sees_loops_inside_functions_and_subpackages(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("def f():\n    from .sub.c import other\n")
    (pkg / "sub" / "__init__.py").write_text("from .c import other\n")
    (pkg / "sub" / "c.py").write_text("from .. import a\nimport pkg.d\n")
    (pkg / "d.py").write_text("from pkg import b\n")
    (pkg / "e.py").write_text("from .sub import c\nfrom . import d\n")  # imports into a loop, is in none
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.sub"] == {"pkg.sub.c"} and graph["pkg.e"] == {"pkg.sub.c", "pkg.d"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]


def long_modules(root: Path, limit: int) -> dict[str, int]:
    lines = {module_name(f, root): len(f.read_text(encoding="utf-8").splitlines())
             for f in sorted((root / PACKAGE).rglob("*.py"))}
    return {name: n for name, n in lines.items() if n > limit}


def test_no_module_over_500_lines():
    too_long = long_modules(SRC, MAX_LINES)
    assert not too_long, f"modules over {MAX_LINES} lines: " + ", ".join(f"{k} ({v})" for k, v in too_long.items())


def test_the_public_names_resolve_and_the_readme_uses_them():
    import igds
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for name in igds.__all__:
        assert getattr(igds, name) is not None, name
    # every entry point is one the README names (the curated surface, not accidental exports)
    unmentioned = [n for n in igds.__all__ if n != "__version__" and n not in readme]
    assert not unmentioned, f"igds.__all__ names the README does not mention: {unmentioned}"
