"""The README's Python examples run as written, in order, in one namespace."""

from __future__ import annotations

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

README = Path(__file__).resolve().parents[1] / "README.md"
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


def hub_with_seresnet50(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> se_torch.ResNet:
    """The README's ``timm/seresnet50.a1_in1k``, random weights in timm's layout, placed in a
    Hugging Face cache the hub client reads (offline, see conftest); ``cat.jpg`` in the working
    directory."""
    from huggingface_hub import constants

    rng = np.random.default_rng(50)
    published = randomize_(se_torch.create_model("seresnet50"), rng, torch.float32).eval()
    cfg = se_torch.PretrainedCfg(
        "seresnet50", tag="a1_in1k", interpolation="bicubic", crop_pct=0.95
    )
    se_torch.save_pretrained(published, tmp_path / "files", pretrained_cfg=cfg)
    hub_cache(tmp_path / "hf", "timm/seresnet50.a1_in1k", tmp_path / "files")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "cat.jpg")
    monkeypatch.chdir(tmp_path)
    return published


def test_readme_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 4
    published = hub_with_seresnet50(tmp_path, monkeypatch)
    namespace: dict = {}
    pretrained: dict = {}  # the namespace after the pretrained examples (later ones reuse names)
    saved = [dict(registry) for registry in REGISTRIES]
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
            if "from_pretrained(" in block:
                pretrained = dict(namespace)
    finally:
        for registry, contents in zip(REGISTRIES, saved, strict=True):
            registry.clear()
            registry.update(contents)
    # the pretrained example: the published model's logits, from the hub cache, in JAX
    x = pretrained["x"]
    assert x.shape == (1, 224, 224, 3) and pretrained["logits"].shape == (1, 1000)
    with torch.no_grad():
        expected = published(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    # float32 through 50 layers at 224 x 224, random weights: measured 1.4e-5 on logits of O(10)
    np.testing.assert_allclose(pretrained["logits"], expected, rtol=1e-4, atol=1e-4)
    tuned = jax.eval_shape(pretrained["tuned"].apply, pretrained["tuned_variables"], x)
    assert (tuned.shape, tuned.dtype) == ((1, 10), jnp.bfloat16)
    assert pretrained["batch"].shape == (4, 224, 224, 3)
    assert (tmp_path / "my-seresnet50" / "model.safetensors").is_file()
    # the conversion example's claim: Flax output equals PyTorch output
    torch_y = namespace["se"](namespace["x_nchw"]).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(namespace["y_flax"]), torch_y, rtol=1e-5, atol=2e-6)
    assert namespace["hse_logits"].shape == (2, 10)  # the registered attention layer's model
    # the NNX backbone example: linen's eval logits from the same converted variables
    linen_logits = namespace["fmodel"].apply(namespace["variables"], namespace["x_nhwc"])
    np.testing.assert_allclose(namespace["nnx_logits"], linen_logits, rtol=1e-6, atol=1e-6)
