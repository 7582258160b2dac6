"""The Python examples of README.md and of every page under docs/ run as written: each file's
```python blocks in order, in one namespace per file (one test per file).

A block that cannot run here (a GPU, the network) has the line ``<!-- no-run: the reason -->``
right above its fence; ``NO_RUN`` must list it, so a skipped example is never silent."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

import se_common
import se_flax
import se_torch
from tests.helpers import randomize_
from tests.test_pretrained import hub_cache

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
# The pages README's topics moved to (issue 27); docs/models.md and docs/api/ come with the site.
TOPIC_PAGES = (
    "index",
    "getting-started",
    "se-family",
    "nnx",
    "pretrained",
    "converting",
    "se-convert",
    "training",
    "benchmarks",
    "untrusted-files",
    "numerics",
    "registry",
)
# The blocks marked no-run, per file, by their reasons. Keep this tiny: an example that does not
# run in the tests is one that may be wrong.
NO_RUN: dict[str, list[str]] = {}
# Files whose examples the checks below inspect: at least this many blocks must be found there.
MIN_BLOCKS = {
    "README.md": 3,
    "docs/getting-started.md": 5,
    "docs/pretrained.md": 2,
    "docs/nnx.md": 1,
    "docs/se-family.md": 2,
    "docs/resnet.md": 5,
    "docs/efficientnet.md": 5,
    "docs/mobilenetv3.md": 4,
    "docs/regnet.md": 4,
    "docs/converting.md": 1,
    "docs/training.md": 4,
    "docs/registry.md": 1,
}
HUB_ID = "timm/seresnet50.a1_in1k"
# The examples register an attention layer and a model; the rest of the suite must not see them.
REGISTRIES = (
    se_common.ATTENTION,
    se_common.BLOCK_TYPES,
    se_common.MODELS,
    se_torch.ATTN_LAYERS,
    se_torch.BLOCKS,
    se_flax.ATTN_LAYERS,
    se_flax.BLOCKS,
    se_flax.nnx.ATTN_LAYERS,
    se_flax.nnx.BLOCKS,
)

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)$")
NO_RUN_MARK = re.compile(r"^\s*<!--\s*no-run:\s*(?P<reason>.*?)\s*-->\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    code: str
    line: int  # 0-based index of the block's first code line in its file
    no_run: str | None  # the reason of a no-run mark, or None


def python_blocks(text: str) -> list[Block]:
    """Every fenced ```python block of a Markdown text (indented ones too, as in lists), with a
    no-run mark on the nearest non-blank line above the fence. Other fences are skipped whole, so
    what they hold is never taken for a fence."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        indent, info = fence["indent"], fence["info"].strip()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), len(lines))
        assert end < len(lines), f"line {i + 1}: a fence that is never closed"
        if info.split(" ")[0] == "python":
            above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            mark = NO_RUN_MARK.match(above)
            body = [line.removeprefix(indent) for line in lines[i + 1 : end]]
            blocks.append(Block("\n".join(body) + "\n", i + 1, mark and mark["reason"]))
        i = end + 1
    return blocks


def run_blocks(blocks: list[Block], filename: str) -> tuple[dict, dict]:
    """Runs the blocks in order in one namespace, with line numbers of the file in tracebacks.
    Returns the namespace at the end and as it was after the last block that loads pretrained
    weights (later examples may reuse its names). The registries are restored afterwards."""
    namespace: dict = {}
    pretrained: dict = {}
    saved = [dict(registry) for registry in REGISTRIES]
    try:
        for block in blocks:
            if block.no_run is None:
                exec(compile("\n" * block.line + block.code, filename, "exec"), namespace)
                if "from_pretrained(" in block.code:
                    pretrained = dict(namespace)
    finally:
        for registry, contents in zip(REGISTRIES, saved, strict=True):
            registry.clear()
            registry.update(contents)
    return namespace, pretrained


@pytest.fixture(scope="module")
def seresnet50_files(tmp_path_factory) -> tuple[Path, se_torch.ResNet]:
    """``timm/seresnet50.a1_in1k`` as the hub serves it: random weights in timm's layout and
    timm's config (built once per module: README and the pages that load it share it)."""
    rng = np.random.default_rng(50)
    published = randomize_(se_torch.create_model("seresnet50"), rng, torch.float32).eval()
    cfg = se_torch.PretrainedCfg(
        "seresnet50", tag="a1_in1k", interpolation="bicubic", crop_pct=0.95
    )
    files = tmp_path_factory.mktemp("seresnet50.a1_in1k")
    se_torch.save_pretrained(published, files, pretrained_cfg=cfg)
    return files, published


def hub_with_seresnet50(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: Path) -> None:
    """The examples' ``timm/seresnet50.a1_in1k``, placed in a Hugging Face cache the hub client
    reads (offline, see conftest)."""
    from huggingface_hub import constants

    hub_cache(tmp_path / "hf", HUB_ID, files)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


# --- what the examples claim, checked on their namespaces -------------------------------------


def check_logits(pretrained: dict, published: se_torch.ResNet) -> None:
    """The pretrained example: the published model's logits, from the hub cache, in JAX."""
    x = pretrained["x"]
    assert x.shape == (1, 224, 224, 3) and pretrained["logits"].shape == (1, 1000)
    with torch.no_grad():
        expected = published(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    # float32 through 50 layers at 224 x 224, random weights: measured 1.4e-5 on logits of O(10)
    np.testing.assert_allclose(pretrained["logits"], expected, rtol=1e-4, atol=1e-4)


def check_readme(namespace, pretrained, published, tmp_path):
    check_logits(pretrained, published)
    loaded = pretrained["torch_model"].state_dict()
    for key, value in published.state_dict().items():  # PyTorch's: the published tensors
        assert torch.equal(loaded[key], value), key
    assert isinstance(pretrained["nnx_model"], se_flax.nnx.ResNet)
    assert namespace["y_own"].shape == (2, 32, 32, 64)


def check_pretrained(namespace, pretrained, published, tmp_path):
    check_logits(pretrained, published)
    tuned = jax.eval_shape(
        pretrained["tuned"].apply, pretrained["tuned_variables"], pretrained["x"]
    )
    assert (tuned.shape, tuned.dtype) == ((1, 10), jnp.bfloat16)
    assert pretrained["batch"].shape == (4, 224, 224, 3)
    assert (tmp_path / "my-seresnet50" / "model.safetensors").is_file()


def check_getting_started(namespace, pretrained, published, tmp_path):
    # the conversion example's claim: Flax output equals PyTorch output
    torch_y = namespace["se"](namespace["x_nchw"]).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(namespace["y_flax"]), torch_y, rtol=1e-5, atol=2e-6)
    assert namespace["logits"].shape == (2, 10)


def check_nnx(namespace, pretrained, published, tmp_path):
    # the NNX backbone example: linen's eval logits from the same converted variables
    fmodel = se_flax.create_model("seresnet18", num_classes=10)
    linen_logits = fmodel.apply(namespace["variables"], namespace["x_nhwc"])
    np.testing.assert_allclose(namespace["nnx_logits"], linen_logits, rtol=1e-6, atol=1e-6)


def check_registry(namespace, pretrained, published, tmp_path):
    assert namespace["hse_logits"].shape == (2, 10)  # the registered attention layer's model


CHECKS = {
    "README.md": check_readme,
    "docs/pretrained.md": check_pretrained,
    "docs/getting-started.md": check_getting_started,
    "docs/nnx.md": check_nnx,
    "docs/registry.md": check_registry,
}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_examples_run(page, tmp_path, monkeypatch, request):
    name = page.relative_to(ROOT).as_posix()
    text = page.read_text()
    blocks = python_blocks(text)
    assert [b.no_run for b in blocks if b.no_run is not None] == NO_RUN.get(name, []), (
        f"{name}: the no-run blocks differ from NO_RUN"
    )
    assert len(blocks) >= MIN_BLOCKS.get(name, 0), f"{name}: examples missing"
    published = None
    if HUB_ID in text:
        files, published = request.getfixturevalue("seresnet50_files")
        hub_with_seresnet50(tmp_path, monkeypatch, files)
    image = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "cat.jpg")
    monkeypatch.chdir(tmp_path)  # what the examples write lands here
    namespace, pretrained = run_blocks(blocks, str(page))
    if name in CHECKS:
        CHECKS[name](namespace, pretrained, published, tmp_path)


def test_every_topic_has_its_page():
    names = {page.relative_to(ROOT).as_posix() for page in PAGES}
    assert {f"docs/{topic}.md" for topic in TOPIC_PAGES} <= names
    assert set(MIN_BLOCKS) | set(CHECKS) | set(NO_RUN) <= names


def test_blocks_are_found_marked_and_run_in_order():
    page = "\n".join(
        [
            "Text.",
            "```python",
            "a = 1",
            "```",
            "```bash",
            "```python",  # inside a bash block: not a fence of its own
            "```",
            "- a list item:",
            "",
            "  ```python",
            "  b = a + 1",
            "  ```",
            "<!-- no-run: needs a GPU -->",
            "",
            "```python",
            "raise RuntimeError('skipped')",
            "```",
            "```python",
            "c = b + 1",
            "```",
        ]
    )
    blocks = python_blocks(page)
    assert [b.code for b in blocks] == [
        "a = 1\n",
        "b = a + 1\n",
        "raise RuntimeError('skipped')\n",
        "c = b + 1\n",
    ]
    assert [b.no_run for b in blocks] == [None, None, "needs a GPU", None]
    namespace, _ = run_blocks(blocks, "page.md")
    assert namespace["c"] == 3
    # a broken example fails its test, at its line in the file
    broken = python_blocks("Text.\n\n```python\nx = 1\nundefined_name\n```\n")
    with pytest.raises(NameError) as error:
        run_blocks(broken, "page.md")
    assert error.traceback[-1].lineno == 4  # 0-based: line 5 of page.md
