"""The README's Python examples run as written, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    # the conversion example's claim: Flax output equals PyTorch output
    torch_y = namespace["se"](namespace["x_nchw"]).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(namespace["y_flax"]), torch_y, rtol=1e-5, atol=2e-6)
