"""Dependency arrows run one way, layer by layer (``LAYERS``): ``se_common`` (no framework) <-
``se_weights`` (the converter's core) <- the twins ``se_torch``, ``se_flax`` <- ``se_convert``
(the command layer) <- benchmarks, examples, scripts <- tests. Checked in the source (every
import, also inside functions), as an import graph without circles, and by importing every module
of each layer with the layers above it (and the packages it must not use) unavailable."""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_import_graph():
    """scripts/import_graph.py, which is a script (no package), imported from its path."""
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts/import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


import_graph = _load_import_graph()
MODULES = import_graph.module_files(ROOT)  # dotted name -> file; entry points (__main__) left out

# Lowest first: a package imports its own layer's files and the layers below it, never a
# sibling (the twins never import each other). ``__main__.py`` files are entry points, outside:
# se_flax/convert/__main__.py runs se_convert's command.
LAYERS = (
    ("se_common",),
    ("se_weights",),
    ("se_torch", "se_flax"),
    ("se_convert",),
    ("benchmarks", "examples", "scripts"),
    ("tests",),
)
LAYER = {package: depth for depth, packages in enumerate(LAYERS) for package in packages}
# The layers the subprocesses import, each with everything above it blocked.
LIBRARY = ("se_common", "se_weights", "se_torch", "se_flax", "se_convert")

# Third-party packages each library package must never import (top-level module names),
# __main__.py files included.
FORBIDDEN = {
    "se_common": {"torch", "jax", "jaxlib", "flax", "optax"},
    "se_weights": {"torch", "sklearn", "matplotlib"},
    "se_torch": {"jax", "jaxlib", "flax", "optax", "sklearn", "matplotlib"},
    "se_flax": {"torch", "sklearn", "matplotlib"},
    "se_convert": {"torch", "sklearn", "matplotlib"},
}
# The documented exceptions (README, "Repository layout"), each imported lazily, inside the
# functions that need it: the converter touches torch only to read and write PyTorch tensors
# and files, and the command layer only to save and verify them.
OPTIONAL = {
    "se_weights/_arrays.py": {"torch"},
    "se_weights/_formats.py": {"torch"},
    "se_convert/_command.py": {"torch"},
}


def top_level_imports(path: Path) -> dict[str, set[int]]:
    """Each top-level name a file imports (at any depth), with the lines that import it."""
    lines: dict[str, set[int]] = {}
    for node, name in import_graph.imports(path):
        lines.setdefault(name.split(".")[0], set()).add(node.lineno)
    return lines


def function_lines(path: Path) -> set[int]:
    """The lines inside function bodies: an import there runs only when the function does."""
    return {
        line
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for line in range(node.body[0].lineno, node.end_lineno + 1)
    }


def test_every_package_has_a_layer():
    """A new top-level package is placed in ``LAYERS``, so it cannot escape the checks."""
    assert {name.split(".")[0] for name in MODULES} == set(LAYER)


@pytest.mark.parametrize("package", sorted(LAYER))
def test_packages_import_only_the_layers_below(package):
    wrong = {}
    for name, relative in MODULES.items():
        if name.split(".")[0] == package:
            upward = {
                imported
                for imported in top_level_imports(ROOT / relative)
                if imported in LAYER and imported != package and LAYER[imported] >= LAYER[package]
            }
            if upward:
                wrong[relative] = sorted(upward)
    assert not wrong, f"imports against the dependency arrows: {wrong}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_no_forbidden_package(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    wrong = {}
    for path in files:
        relative = path.relative_to(ROOT).as_posix()
        bad = set(top_level_imports(path)) & FORBIDDEN[package]
        if bad - OPTIONAL.get(relative, set()):
            wrong[relative] = sorted(bad - OPTIONAL.get(relative, set()))
    assert not wrong, f"forbidden imports: {wrong}"


def test_optional_imports_are_still_needed_and_lazy():
    """An exception that is no longer used is removed from the list, so it cannot hide a new
    import later; one at module level would load its package with the module."""
    for relative, allowed in OPTIONAL.items():
        path = ROOT / relative
        imported = top_level_imports(path)
        assert allowed <= set(imported), relative
        eager = {name for name in allowed if imported[name] - function_lines(path)}
        assert not eager, (relative, eager)


def test_the_import_graph_has_no_circles():
    graph = import_graph.file_graph(ROOT)
    assert set(graph) == set(MODULES.values())
    assert import_graph.cycles(graph) == []


def test_the_import_graph_finds_circles(tmp_path):
    """The check above can fail: a circle through a package's ``__init__.py``, an import inside
    a function and a ``from pkg import submodule``; none through ``TYPE_CHECKING`` imports (they
    never run) or an entry point."""
    files = {
        "a/__init__.py": "from a import b",
        "a/b.py": "def f():\n    import c.d",
        "c/__init__.py": "",
        "c/d.py": "from a import name",
        "c/__main__.py": "import a.b",
        "e/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import e.f",
        "e/f.py": "import e",
    }
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        (tmp_path / relative).write_text(text)
    graph = import_graph.file_graph(tmp_path)
    assert graph["a/__init__.py"] == {"a/b.py"} and graph["c/d.py"] == {"a/__init__.py"}
    assert import_graph.cycles(graph) == [["a/__init__.py", "a/b.py", "c/d.py"]]
    assert import_graph.package_graph(graph) == {"a": {"c"}, "c": {"a"}, "e": set()}


IMPORT_LAYER = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    for blocked in BLOCKED:
        sys.modules[blocked] = None  # any `import blocked` (or of its submodules) now fails
    package = importlib.import_module(PACKAGE)
    names = [PACKAGE] + [m.name for m in pkgutil.walk_packages(package.__path__, PACKAGE + ".")]
    for name in names:
        if not name.endswith("__main__"):
            importlib.import_module(name)
    print(json.dumps(sorted(name for name in names if not name.endswith("__main__"))))
    """
)
# The converter's core and command layer import neither twin nor torch until asked to, and
# convert NumPy weights without torch.
IMPORT_CONVERTER = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    import numpy as np
    for package in ("se_weights", "se_convert"):
        for m in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
            if not m.name.endswith("__main__"):
                importlib.import_module(m.name)
    from se_convert import torch_to_flax
    rng = np.random.default_rng(0)
    weights = {f"fc{i}.weight": rng.normal(size=s).astype(np.float32)
               for i, s in ((1, (2, 8, 1, 1)), (2, (8, 2, 1, 1)))}
    kernel = torch_to_flax(weights)["params"]["fc1"]["kernel"]
    assert np.array_equal(kernel, weights["fc1.weight"][:, :, 0, 0].T)
    print(sorted(m for m in ("se_flax", "se_torch", "torch") if m in sys.modules))
    """
)


def run_script(script: str) -> str:
    """Runs ``script`` in a fresh interpreter (nothing imported yet); returns its output."""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("package", LIBRARY)
def test_each_layer_imports_with_the_layers_above_it_blocked(package):
    """Every module of ``package`` imports with the packages of the layers above it, its sibling
    twin and its forbidden packages unavailable (the lazy exceptions stay unimported)."""
    above = {other for other, depth in LAYER.items() if depth >= LAYER[package]} - {package}
    blocked = sorted(above | FORBIDDEN[package])
    script = f"BLOCKED = {blocked!r}\nPACKAGE = {package!r}\n{IMPORT_LAYER}"
    imported = json.loads(run_script(script))
    # compiled modules too (se_flax's kernels, which import as an empty module)
    compiled = {
        ".".join((*path.relative_to(ROOT).parts[:-1], path.name.split(".")[0]))
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        for path in (ROOT / package).rglob(f"*{suffix}")
    }
    want = sorted(name for name in MODULES if name.split(".")[0] == package)
    assert imported == sorted([*want, *compiled])


def test_the_converter_imports_no_framework_package_until_asked():
    assert run_script(IMPORT_CONVERTER).strip() == "[]"
