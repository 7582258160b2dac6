"""BatchNorm statistics in every module that holds them: updated in the stored variables' own
dtype (never the ``param_dtype`` default), matching PyTorch's float64 run at rounding level."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import se_flax
import se_torch
from se_common import ResNetConfig
from se_convert import torch_to_flax
from tests.helpers import assert_trees_close, nchw_to_nhwc, randomize_

SK_CBAM_NET = ResNetConfig("sk_basic", (1, 1, 1, 1), attn="cbam")  # SK, CBAM and plain norms
# name: (PyTorch module, its Flax twin (taking dtype options), NCHW input shape)
MODULES = {
    "conv_norm_act": (
        lambda: se_torch.ConvNormAct(8, 16, 3),
        lambda **kw: se_flax.ConvNormAct(16, 3, **kw),
        (3, 8, 9, 7),
    ),
    "cbam": (lambda: se_torch.CbamModule(16), se_flax.CbamModule, (3, 16, 9, 7)),
    "selective_kernel": (
        lambda: se_torch.SelectiveKernel(16, 24),
        lambda **kw: se_flax.SelectiveKernel(24, **kw),
        (3, 16, 9, 7),
    ),
    "sk_resnet_with_cbam": (
        lambda: se_torch.ResNet(SK_CBAM_NET, num_classes=5),
        lambda **kw: se_flax.ResNet(SK_CBAM_NET, num_classes=5, **kw),
        (3, 3, 32, 32),
    ),
}


def dtypes(tree) -> dict:
    return jax.tree.map(lambda v: jnp.dtype(v.dtype), tree)


@pytest.mark.parametrize("name", MODULES)
def test_float64_statistics_stay_float64_and_match_pytorch(name, rng):
    """float64 weights in a model built with the default ``param_dtype``: two train steps keep
    every statistic float64 (counters int32) and equal to PyTorch's to rounding level."""
    make_torch, make_flax, shape = MODULES[name]
    tmodule = randomize_(make_torch(), rng, torch.float64).train()
    variables = torch_to_flax(tmodule)
    before = dtypes(variables["batch_stats"])
    assert set(jax.tree.leaves(before)) == {jnp.dtype("float64"), jnp.dtype("int32")}
    fmodule = make_flax()  # param_dtype stays float32
    step = jax.jit(functools.partial(fmodule.apply, train=True, mutable=["batch_stats"]))
    for _ in range(2):
        x = rng.standard_normal(shape)
        y, updates = step(variables, nchw_to_nhwc(x))
        with torch.no_grad():
            expected = tmodule(torch.from_numpy(x)).numpy()
        variables = {"params": variables["params"], **updates}
        assert dtypes(updates["batch_stats"]) == before
        t_stats = torch_to_flax(tmodule)["batch_stats"]
        assert_trees_close(updates["batch_stats"], t_stats, rtol=1e-12, atol=1e-12, what=name)
        if expected.ndim == 4:
            expected = nchw_to_nhwc(expected)
        assert_trees_close(y, expected, rtol=1e-12, atol=1e-12, what=f"{name} output")


@pytest.mark.parametrize("name", MODULES)
def test_bfloat16_statistics_stay_bfloat16(name, rng):
    """bfloat16 weights, bfloat16 compute, default ``param_dtype``: statistics stay bfloat16
    (updated in float32, rounded once) and move with the batch."""
    make_torch, make_flax, shape = MODULES[name]
    variables = torch_to_flax(randomize_(make_torch(), rng, torch.bfloat16))
    before = dtypes(variables["batch_stats"])
    assert set(jax.tree.leaves(before)) == {jnp.dtype("bfloat16"), jnp.dtype("int32")}
    fmodule = make_flax(dtype=jnp.bfloat16)
    step = jax.jit(functools.partial(fmodule.apply, train=True, mutable=["batch_stats"]))
    first = variables["batch_stats"]
    for _ in range(2):
        x = jnp.asarray(nchw_to_nhwc(rng.standard_normal(shape)), jnp.bfloat16)
        _, updates = step(variables, x)
        assert dtypes(updates["batch_stats"]) == before
        variables = {"params": variables["params"], **updates}
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), first, variables["batch_stats"])
    assert all(jax.tree.leaves(moved))


def test_batchnorm_needs_two_values_per_channel_in_training():
    bn = se_flax.BatchNorm()
    variables = bn.init(jax.random.key(0), jnp.ones((4, 3), jnp.float32))
    with pytest.raises(
        ValueError, match=r"more than 1 value per channel, got input shape \(1, 1, 1, 3\)"
    ):
        bn.apply(variables, jnp.ones((1, 1, 1, 3), jnp.float32), mutable=["batch_stats"])


def test_statistics_update_with_the_momentum_and_unbiased_variance(rng):
    """One step by hand: running = m * running + (1 - m) * batch, the variance unbiased."""
    x = rng.standard_normal((4, 3, 5, 6))
    bn = se_flax.BatchNorm(momentum=0.7)
    variables = {
        "params": {"scale": jnp.ones(6), "bias": jnp.zeros(6)},
        "batch_stats": {
            "mean": jnp.asarray(rng.standard_normal(6)),
            "var": jnp.asarray(rng.uniform(0.5, 2, 6)),
            "num_batches_tracked": jnp.asarray(7, jnp.int32),
        },
    }
    _, updates = bn.apply(variables, x, mutable=["batch_stats"])
    stats, old = updates["batch_stats"], variables["batch_stats"]
    flat = x.reshape(-1, 6)
    np.testing.assert_allclose(stats["mean"], 0.7 * old["mean"] + 0.3 * flat.mean(0), rtol=1e-13)
    np.testing.assert_allclose(
        stats["var"], 0.7 * old["var"] + 0.3 * flat.var(0, ddof=1), rtol=1e-13
    )
    assert int(stats["num_batches_tracked"]) == 8 and stats["mean"].dtype == jnp.float64
