"""Dependency arrows run one way: ``se_common`` (no framework) <- ``se_torch``, ``se_flax`` <-
commands, examples and benchmarks. Checked in the source (every import, also inside functions)
and by importing every module with torch unavailable."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What each package must never import (top-level module names).
FORBIDDEN = {
    "se_common": {"torch", "jax", "jaxlib", "flax", "optax", "se_torch", "se_flax", "se_convert"},
    "se_torch": {
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "se_flax",
        "se_convert",
        "sklearn",
        "matplotlib",
    },
    "se_flax": {"torch", "se_torch", "sklearn", "matplotlib", "examples", "benchmarks"},
    "se_convert": {"torch", "se_torch", "se_flax", "sklearn", "matplotlib"},
}
# The documented exceptions (README, "Repository layout"), all imported lazily, inside the
# functions that need them: the converter's core touches torch only to read and write PyTorch
# tensors and files; its command layer (se-convert --model/--verify) builds models by name with
# both twins; the twins' pretrained loaders and savers use the converter (and saving from Flax,
# the PyTorch twin).
OPTIONAL = {
    "se_convert/_arrays.py": {"torch"},
    "se_convert/_formats.py": {"torch"},
    "se_convert/_models.py": {"se_torch", "se_flax"},
    "se_convert/_command.py": {"torch"},
    # se_torch.from_pretrained reads timm's layout and reports misfits with the converter's core
    "se_torch/_pretrained.py": {"se_convert"},
    # se_flax.save_pretrained writes PyTorch's keys and layouts, which the PyTorch twin gives
    "se_flax/_pretrained.py": {"torch", "se_torch"},
}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every absolute import in a file, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_downstream(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    wrong = {}
    for path in files:
        relative = path.relative_to(ROOT).as_posix()
        bad = imported_modules(path) & FORBIDDEN[package]
        if bad - OPTIONAL.get(relative, set()):
            wrong[relative] = sorted(bad - OPTIONAL.get(relative, set()))
    assert not wrong, f"imports against the dependency arrows: {wrong}"


def test_optional_imports_are_still_needed():
    """An exception that is no longer used is removed from the list, so it cannot hide a new
    import later."""
    for relative, allowed in OPTIONAL.items():
        assert allowed <= imported_modules(ROOT / relative), relative


IMPORT_EVERYTHING = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    sys.modules["torch"] = None  # any `import torch` now fails
    sys.modules["se_torch"] = None
    import numpy as np
    import se_flax
    names = [m.name for m in pkgutil.walk_packages(se_flax.__path__, "se_flax.")]
    for name in names:
        if not name.endswith("__main__"):
            importlib.import_module(name)
    from se_convert import torch_to_flax
    rng = np.random.default_rng(0)
    weights = {f"fc{i}.weight": rng.normal(size=s).astype(np.float32)
               for i, s in ((1, (2, 8, 1, 1)), (2, (8, 2, 1, 1)))}
    kernel = torch_to_flax(weights)["params"]["fc1"]["kernel"]
    assert np.array_equal(kernel, weights["fc1.weight"][:, :, 0, 0].T)
    loaded = sorted(m for m in ("sklearn", "matplotlib", "se_torch", "torch") if sys.modules.get(m))
    print(len(names), loaded)
    """
)
# The converter's core and command layer import neither twin nor torch until asked to.
IMPORT_CONVERTER = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    import se_convert
    for m in pkgutil.walk_packages(se_convert.__path__, "se_convert."):
        if not m.name.endswith("__main__"):
            importlib.import_module(m.name)
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


def test_every_se_flax_module_imports_without_torch():
    count, loaded = run_script(IMPORT_EVERYTHING).split(" ", 1)
    modules = len(list((ROOT / "se_flax").rglob("*.py"))) - 1  # all but se_flax/__init__.py
    assert int(count) == modules and loaded.strip() == "[]", (count, loaded)


def test_the_converter_imports_no_framework_package_until_asked():
    assert run_script(IMPORT_CONVERTER).strip() == "[]"
