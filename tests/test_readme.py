"""The README's Python examples run as written, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

import se_common
import se_flax
import se_torch

README = Path(__file__).resolve().parents[1] / "README.md"
# The examples register an attention layer and a model; the rest of the suite must not see them.
REGISTRIES = (
    se_common.ATTENTION,
    se_common.BLOCK_TYPES,
    se_common.MODEL_CONFIGS,
    se_torch.ATTN_LAYERS,
    se_torch.BLOCKS,
    se_flax.ATTN_LAYERS,
    se_flax.BLOCKS,
    se_flax.nnx.ATTN_LAYERS,
    se_flax.nnx.BLOCKS,
)


def test_readme_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 4
    namespace: dict = {}
    saved = [dict(registry) for registry in REGISTRIES]
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    finally:
        for registry, contents in zip(REGISTRIES, saved, strict=True):
            registry.clear()
            registry.update(contents)
    # the conversion example's claim: Flax output equals PyTorch output
    torch_y = namespace["se"](namespace["x_nchw"]).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(namespace["y_flax"]), torch_y, rtol=1e-5, atol=2e-6)
    assert namespace["hse_logits"].shape == (2, 10)  # the registered attention layer's model
    # the NNX backbone example: linen's eval logits from the same converted variables
    linen_logits = namespace["fmodel"].apply(namespace["variables"], namespace["x_nhwc"])
    np.testing.assert_allclose(namespace["nnx_logits"], linen_logits, rtol=1e-6, atol=1e-6)
