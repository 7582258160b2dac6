"""The documentation site: ``mkdocs build --strict`` passes (any warning fails it), and the model
table of docs/models.md is generated from the registry with the right numbers."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import se_common

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(
        f"se_docs_{name}", ROOT / "scripts" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


table = _script("model_table")


def _build(out: Path) -> None:
    """``mkdocs build --strict`` into ``out``: a warning fails it, and none may be logged."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log
    assert "WARNING" not in log, log


def test_site_builds_strictly_with_every_page(tmp_path):
    """One build (a few seconds) and what it holds: the API pages with every export and no
    private name, the benchmark results served from benchmarks/results/, the model table."""
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
    site = tmp_path / "site"
    _build(site)

    pages = ["index.html", "models/index.html", "benchmarks/index.html"]
    pages += [f"api/{page}/index.html" for page in ("se_flax", "se_flax_nnx", "se_torch")]
    pages += [f"api/{page}/index.html" for page in ("se_convert", "se_common")]
    for page in pages:
        assert (site / page).is_file(), page
    api = (site / "api" / "se_common" / "index.html").read_text()
    for name in se_common.__all__:  # every export, nothing private
        assert f'id="se_common.{name}"' in api, name
    assert 'id="se_common._' not in api
    # "Example:" sections are highlighted as doctest code (its prompts), not Markdown quotes
    assert '<span class="gp">&gt;&gt;&gt; </span><span class="n">list_models' in api
    assert "<blockquote>" not in api

    # every file of benchmarks/results/ is at assets/results/, nothing copied into docs/
    files = [p for p in RESULTS.rglob("*") if p.is_file()]
    assert any(p.suffix == ".png" for p in files)
    for path in files:
        rel = path.relative_to(RESULTS)
        if path.suffix == ".md":  # a run's results.md is a page
            assert (site / "assets" / "results" / rel.with_suffix("") / "index.html").is_file()
        else:
            assert (site / "assets" / "results" / rel).read_bytes() == path.read_bytes(), rel
    assert not (ROOT / "docs" / "assets" / "results").exists()

    page = (site / "models" / "index.html").read_text()
    assert "model-table:" not in page  # both markers replaced
    for name in [*se_common.list_models(), *table.unbuilt()]:
        assert f"<code>{name}</code>" in page, name


def _built_rows() -> dict[str, list[str]]:
    rows = {}
    for line in table.built_table().splitlines():
        match = re.match(r"\| `([^`]+)` \|(.*)\|$", line)
        if match:
            rows[match[1]] = [cell.strip() for cell in match[2].split(" | ")]
    return rows


def test_table_lists_every_registered_name_with_its_parameters_and_tags():
    torch = pytest.importorskip("torch")
    import se_torch

    rows = _built_rows()
    assert list(rows) == se_common.list_models()
    # the table counts from the plans (tests/test_model_registry.py: each plan is se_torch's
    # state_dict); the first name of each family is counted from its PyTorch model too
    firsts = {}
    for name in rows:
        firsts.setdefault(se_common.get_model(name).family.name, name)
    for name, (family, params, attn, fronts, tags) in rows.items():
        arch = se_common.get_model(name)
        assert params == f"{table.parameter_count(name):,}", name
        if name in firsts.values():
            with torch.device("meta"):  # shapes only: no memory, no initialisation
                model = se_torch.create_model(name)
            assert params == f"{sum(p.numel() for p in model.parameters()):,}", name
        assert family == f"`{arch.family.name}`"
        assert fronts == ", ".join(f"`{f}`" for f in arch.family.builders)
        expected = [f"[`{t}`](https://huggingface.co/timm/{name}.{t})" for t in arch.tags]
        assert tags == (", ".join(expected) or "none"), name
        placed = table.attention_of(arch.config)
        for short, description in placed:
            assert f"`{short}`" in attn and html.escape(description) in attn, name
        if getattr(arch.config, "attn", None):
            assert se_common.ATTENTION[arch.config.attn].description.split(" (")[0] in attn
        if getattr(arch.config, "sk", None) is not None:
            assert "`sk`" in attn and "Selective Kernel" in attn
        if not placed:
            assert attn == "none", name
    # the EfficientNet family's SE is in the table as its blocks have it
    assert "`mb_se`" in rows["efficientnet_b0"][2] and rows["efficientnet_lite0"][2] == "none"


def test_unbuilt_list_excludes_every_registered_name():
    data = table.timm_se_architectures()
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", data["timm"])
    todo = table.unbuilt()
    assert len(todo) > 100
    registered = set(se_common.list_models())
    assert not registered & set(todo)
    rendered = table.timm_table()
    listed = set(re.findall(r"^    \| `([^`]+)` \|", rendered, re.MULTILINE))
    assert listed == set(todo)
    for name, row in todo.items():
        assert row["tags"] and row["attention"], name
        assert all(a in data["attention"] for a in row["attention"]), name
    # the counts per module add up; timm's SE-ResNets built here are named, not listed
    counts = re.findall(r"^\| \[`[^`]+`\]\(#timm-[^)]+\) \| (\d+) \|", rendered, re.MULTILINE)
    assert sum(map(int, counts)) == len(todo)
    for name in set(data["architectures"]) & registered:
        assert f"`{name}`" in rendered.split("\n", 1)[0]
        # timm's parameter count (built on the meta device) agrees with the plan's
        assert data["architectures"][name]["parameters"] == table.parameter_count(name), name
