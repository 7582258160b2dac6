"""One tree comparison and the layout helpers every parity test uses."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import torch
from flax import traverse_util


def to_np(x: Any) -> np.ndarray:
    """NumPy copy of a torch tensor or JAX array (bf16 via ml_dtypes)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return np.asarray(x)


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, 1, -1)


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, -1, 1)


def _flat(tree: Any) -> dict[str, Any]:
    if isinstance(tree, dict):
        return {"/".join(map(str, k)): v for k, v in traverse_util.flatten_dict(tree).items()}
    return {"": tree}


def assert_trees_close(actual: Any, expected: Any, *, rtol: float, atol: float, what: str = ""):
    """Asserts same structure, shapes and dtypes, then values within ``atol + rtol * |expected|``.

    The failure message names the worst leaf, the worst element and its difference.
    """
    actual, expected = _flat(actual), _flat(expected)
    assert actual.keys() == expected.keys(), (
        f"{what}: structure differs: only in actual {sorted(actual.keys() - expected.keys())}, "
        f"only in expected {sorted(expected.keys() - actual.keys())}"
    )
    worst = (-np.inf, "", None, 0.0)
    for key in sorted(actual):
        a = np.asarray(to_np(actual[key]), np.float64)
        e = np.asarray(to_np(expected[key]), np.float64)
        assert a.shape == e.shape, f"{what}: {key}: shape {a.shape} != {e.shape}"
        excess = np.abs(a - e) - (atol + rtol * np.abs(e))
        if excess.size and excess.max() > worst[0]:
            i = np.unravel_index(np.argmax(excess), excess.shape)
            worst = (excess.max(), key, i, float(np.abs(a - e)[i]))
    excess, key, index, diff = worst
    assert excess <= 0, (
        f"{what}: leaf {key!r} at {index}: |diff| = {diff:.3e} exceeds atol={atol:g} + "
        f"rtol={rtol:g} * |expected|"
    )


def max_abs_diff(a: Any, b: Any) -> float:
    return max(
        float(np.max(np.abs(np.float64(to_np(x)) - np.float64(to_np(y))), initial=0.0))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
