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


def _traced_batch_norm(x, scale, bias, epsilon):
    """The training-mode forward pass, differentiated by tracing (the reference)."""
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias, mean, var


def close(actual, expected, tol: float) -> None:
    """Leaf by leaf, within ``tol`` of the largest |expected| of each leaf."""
    for i, (a, e) in enumerate(
        zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True)
    ):
        scale = max(float(np.abs(e).max()), 1e-30)
        err = float(np.abs(np.asarray(a) - np.asarray(e)).max()) / scale
        assert err <= tol, f"leaf {i}: {err:.3g} of its largest"


def test_written_out_derivative_equals_traced_and_pytorch(rng):
    """BatchNorm's training derivative is written out (a custom JVP, for speed): in float64 its
    reverse mode, forward mode and forward-over-reverse (Hessian-vector products) equal those
    of the traced forward pass at rounding level, and its gradients equal PyTorch's."""
    from se_flax._batchnorm import _normalize_batch

    shape = (3, 5, 4, 6)
    x, dx, cot = (rng.standard_normal(shape) * 2 + 0.5 for _ in range(3))
    scale, bias, dscale = (rng.standard_normal(6) for _ in range(3))
    stat_cot = rng.standard_normal(6), rng.standard_normal(6)

    def loss(f):
        def value(x, scale, bias):
            y, mean, var = f(x, scale, bias, 1e-3)
            return jnp.sum(jnp.tanh(y) * cot) + jnp.sum(mean * stat_cot[0] + var * stat_cot[1])

        return value

    ours, traced = loss(_normalize_batch), loss(_traced_batch_norm)
    args = (x, scale, bias)
    grad = jax.grad(ours, argnums=(0, 1, 2))(*args)
    close(grad, jax.grad(traced, argnums=(0, 1, 2))(*args), 1e-12)
    tangents = (dx, dscale, np.zeros(6))
    close(
        jax.jvp(lambda *a: _normalize_batch(*a, 1e-3), args, tangents),
        jax.jvp(lambda *a: _traced_batch_norm(*a, 1e-3), args, tangents),
        1e-12,
    )
    hvp = lambda f: jax.jvp(jax.grad(f), (x, scale, bias), tangents)[1]  # noqa: E731
    close(hvp(ours), hvp(traced), 1e-11)

    bn = torch.nn.BatchNorm2d(6, eps=1e-3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(scale))
        bn.bias.copy_(torch.from_numpy(bias))
    tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_()
    t_y = torch.tanh(bn(tx))
    t_y.backward(torch.from_numpy(np.ascontiguousarray(cot.transpose(0, 3, 1, 2))))
    no_stats = jax.grad(
        lambda x, s, b: jnp.sum(jnp.tanh(_normalize_batch(x, s, b, 1e-3)[0]) * cot),
        argnums=(0, 1, 2),
    )(*args)
    close(
        no_stats,
        (nchw_to_nhwc(tx.grad.numpy()), bn.weight.grad.numpy(), bn.bias.grad.numpy()),
        1e-12,
    )
