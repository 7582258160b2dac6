"""Prints the project's import graph: file by file, its circles, then package by package.

Every absolute import of a first-party module counts, at any depth of a file's code (an import
inside a function is still an arrow: it runs the first time the function does; one under
``if TYPE_CHECKING:`` never runs, so it is none), resolved to the file it names: ``from pkg
import name`` where ``name`` is a submodule is that submodule, a package is its ``__init__.py``.
``__main__.py`` files are entry points (``python -m``, imported by no library code), so they
stand outside the graph and may import upward.

Stdlib only, so it runs on any checkout::

    git worktree add /tmp/before <commit>
    python scripts/import_graph.py --root /tmp/before --cycles
    git worktree remove /tmp/before
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_files(root: Path) -> dict[str, str]:
    """Maps each first-party module's dotted name to its file, relative to ``root``.

    The project's packages are the top-level directories with an identifier's name that hold
    Python files (which also covers ``examples/``, a namespace package without ``__init__.py``).

    Args:
        root: the checkout's root directory.

    Returns:
        ``{"se_flax.nnx": "se_flax/nnx/__init__.py", "se_flax._resnet": ..., ...}``, entry
        points (``__main__.py``) left out.
    """
    modules = {}
    for top in sorted(root.iterdir()):
        if not (top.is_dir() and top.name.isidentifier() and not top.name.startswith(".")):
            continue
        for path in sorted(top.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__main__" or not all(part.isidentifier() for part in parts):
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path.relative_to(root).as_posix()
    return modules


def imported_names(node: ast.AST) -> list[str]:
    """The dotted names one statement imports absolutely (none for other statements).

    ``from a import b`` gives ``a.b``: whether that is a module or a name in ``a`` is the
    resolver's question (:func:`resolve`).
    """
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [f"{node.module}.{alias.name}" for alias in node.names]
    return []


def imports(path: Path, *, checking: bool = True) -> Iterator[tuple[ast.stmt, str]]:
    """Every absolute import in a file, at any depth: ``(statement, dotted name)`` pairs.

    Args:
        path: the file.
        checking: also the imports under ``if TYPE_CHECKING:``. They are dependencies all the
            same (of the annotations), but they never run, so they close no import circle.
    """
    tree = ast.parse(path.read_text(), str(path))
    skipped = set()
    for node in ast.walk(tree):
        if not checking and isinstance(node, ast.If) and _is_type_checking(node.test):
            skipped.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    for node in ast.walk(tree):
        if id(node) not in skipped:
            for name in imported_names(node):
                yield node, name


def _is_type_checking(test: ast.expr) -> bool:
    """Whether an ``if`` tests ``TYPE_CHECKING`` (or ``typing.TYPE_CHECKING``)."""
    return getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING"


def resolve(name: str, modules: dict[str, str]) -> str | None:
    """The file a dotted name imports: its longest prefix that is a first-party module."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if (prefix := ".".join(parts[:end])) in modules:
            return modules[prefix]
    return None


def file_graph(root: Path) -> dict[str, set[str]]:
    """Each first-party file (entry points left out) and the first-party files it runs.

    Imports under ``if TYPE_CHECKING:`` are left out: they never run.
    """
    modules = module_files(root)
    graph = {}
    for relative in modules.values():
        found = imports(root / relative, checking=False)
        targets = {resolve(name, modules) for _, name in found}
        graph[relative] = targets - {None, relative}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan's algorithm).

    Returns:
        The import circles, each sorted, in order of their first file.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:  # `node` is the root of a component: pop it
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The file graph folded onto top-level packages (``se_flax/nnx`` is part of ``se_flax``)."""
    packages: dict[str, set[str]] = {}
    for source, targets in graph.items():
        package = source.split("/")[0]
        packages.setdefault(package, set()).update(t.split("/")[0] for t in targets)
        packages[package].discard(package)
    return packages


def main(argv: list[str] | None = None) -> int:
    """Prints the graphs; with ``--cycles`` only the circles, exiting 1 if there are any."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout (default: this one)")
    parser.add_argument("--cycles", action="store_true", help="only the circles; 1 if any")
    args = parser.parse_args(argv)
    graph = file_graph(args.root.resolve())
    if not args.cycles:
        print("Files:")
        for source, targets in sorted(graph.items()):
            print(f"  {source} -> {', '.join(sorted(targets)) or '-'}")
    found = cycles(graph)
    print(f"Import circles: {len(found) or 'none'}")
    for number, component in enumerate(found, 1):
        print(f"  {number}. {len(component)} files:")
        for source in component:
            inside = sorted(graph[source] & set(component))
            print(f"       {source} -> {', '.join(inside)}")
    if not args.cycles:
        print("Packages:")
        for package, targets in sorted(package_graph(graph).items()):
            print(f"  {package} -> {', '.join(sorted(targets)) or '-'}")
    return 1 if args.cycles and found else 0


if __name__ == "__main__":
    sys.exit(main())
