"""The 16-bit matmul and convolution primitives (se_flax._rounded): float32 sums rounded once,
in values and in derivatives of every order, under jit, vmap and eagerly."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import se_flax
from se_flax._rounded import NHWC, rounded_matmul, shifted_conv
from tests.helpers import assert_within_a_bfloat16_step

bf16 = jnp.bfloat16
STRIDES, PADS = (2, 1), ((2, 0), (1, 1))  # uneven on purpose


def _dots(fn, *args) -> set[tuple[str, str, str]]:
    """The (lhs, rhs, result) element types of the dots of ``fn``'s lowered program."""
    text = jax.jit(fn).lower(*args).as_text()
    t = r"tensor<(?:\d+x)*(\w+)>"
    pattern = rf"stablehlo\.dot_general.*: \({t}, {t}\) -> {t}"
    return set(re.findall(pattern, text))


def _exact_conv(x, k):
    x, k = (jnp.asarray(a).astype(jnp.float64) for a in (x, k))
    return jax.lax.conv_general_dilated(x, k, STRIDES, PADS, dimension_numbers=NHWC)


def _conv(x, k):
    return shifted_conv(x, k, STRIDES, PADS)


def _operands(rng, *shapes, scale=1.0):
    return [jnp.asarray(rng.standard_normal(s) * scale, bf16) for s in shapes]


def test_rounded_matmul_values_and_gradients(rng):
    a, b = _operands(rng, (37, 64), (64, 24))
    y = rounded_matmul(a, b)
    assert y.dtype == bf16 and y.shape == (37, 24)
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert_within_a_bfloat16_step(y, a64 @ b64)
    cot = _operands(rng, y.shape)[0]
    loss = lambda a, b: jnp.sum((rounded_matmul(a, b) * cot).astype(jnp.float32))  # noqa: E731
    ga, gb = jax.jit(jax.grad(loss, (0, 1)))(a, b)
    assert ga.dtype == gb.dtype == bf16
    c64 = np.asarray(cot, np.float64)
    assert_within_a_bfloat16_step(ga, c64 @ b64.T)
    assert_within_a_bfloat16_step(gb, a64.T @ c64)
    # The gradients' matmuls take bfloat16 operands and accumulate in float32 (on XLA's CPU
    # backend, the bf16 units); written as matmul(..., float32).astype, autodiff would turn
    # them into float32 matmuls.
    assert _dots(jax.grad(loss, (0, 1)), a, b) == {("bf16", "bf16", "f32")}
    da, db = _operands(rng, a.shape, b.shape)
    tangent = jax.jit(lambda *v: jax.jvp(rounded_matmul, v[:2], v[2:])[1])(a, b, da, db)
    both = jax.jit(lambda *v: rounded_matmul(v[2], v[1]) + rounded_matmul(v[0], v[3]))
    np.testing.assert_array_equal(np.asarray(tangent, np.float32), both(a, b, da, db))


def test_rounded_matmul_under_vmap_is_a_loop(rng):
    a, b = _operands(rng, (3, 10, 16), (3, 16, 8))
    loop = lambda f, n: np.stack([np.asarray(f(i), np.float32) for i in range(n)])  # noqa: E731
    for axes, each in (
        ((0, None), lambda i: rounded_matmul(a[i], b[0])),
        ((None, 0), lambda i: rounded_matmul(a[0], b[i])),
        ((0, 0), lambda i: rounded_matmul(a[i], b[i])),
    ):
        args = (a if axes[0] == 0 else a[0], b if axes[1] == 0 else b[0])
        got = jax.jit(jax.vmap(rounded_matmul, axes))(*args)
        np.testing.assert_array_equal(np.asarray(got, np.float32), loop(each, 3))


def test_pointwise_conv_bfloat16_gradients_use_bfloat16_matmuls(rng):
    x = jnp.asarray(rng.standard_normal((2, 6, 5, 32)), jnp.float32)
    conv = se_flax.PointwiseConv(16, (2, 1), dtype=bf16, param_dtype=bf16)
    variables = conv.init(jax.random.key(0), x)
    grad = jax.grad(lambda v, x: jnp.sum(conv.apply(v, x).astype(jnp.float32) ** 2), (0, 1))
    assert _dots(grad, variables, x) == {("bf16", "bf16", "f32")}
    float64 = se_flax.PointwiseConv(16, (2, 1), dtype=jnp.float64, param_dtype=jnp.float64)
    y = conv.apply(variables, x)
    cot = _operands(rng, y.shape)[0]
    g = jax.grad(lambda v: jnp.sum((conv.apply(v, x) * cot).astype(jnp.float32)))(variables)
    wide = jax.tree.map(lambda v: np.asarray(v, np.float64), variables)
    xb = np.asarray(jnp.asarray(x, bf16), np.float64)
    c64 = np.asarray(cot, np.float64)
    exact = jax.grad(lambda v: jnp.sum(float64.apply(v, xb) * c64))(wide)
    assert_within_a_bfloat16_step(g["params"]["kernel"], exact["params"]["kernel"])


@pytest.mark.parametrize(("shape", "kernel"), [((2, 7, 6, 128), (3, 3)), ((1, 6, 7, 256), (3, 2))])
def test_shifted_conv_gradients(shape, kernel, rng):
    (x,) = _operands(rng, shape)
    (k,) = _operands(rng, (*kernel, shape[-1], 16), scale=1 / 30)
    y = jax.jit(_conv)(x, k)
    assert_within_a_bfloat16_step(y, _exact_conv(x, k))
    cot = _operands(rng, y.shape)[0]
    loss = lambda x, k: jnp.sum((_conv(x, k) * cot).astype(jnp.float32))  # noqa: E731
    gx, gk = jax.jit(jax.grad(loss, (0, 1)))(x, k)
    wide = [a.astype(jnp.float64) for a in (x, k, cot)]
    exact = jax.vjp(_exact_conv, *wide[:2])[1](wide[2])
    assert_within_a_bfloat16_step(gx, exact[0])
    assert_within_a_bfloat16_step(gk, exact[1])
    for argnum, g in ((0, gx), (1, gk)):  # one argument alone: the same gradient
        alone = jax.jit(jax.grad(loss, argnum))(x, k)
        np.testing.assert_array_equal(np.asarray(alone, np.float32), np.asarray(g, np.float32))
    if jax.default_backend() == "cpu":
        text = jax.jit(jax.grad(loss, (0, 1))).lower(x, k).as_text()
        assert "stablehlo.convolution" not in text
        assert _dots(jax.grad(loss, (0, 1)), x, k) == {("bf16", "bf16", "f32")}
    # Other backends keep XLA's convolution and its gradients (a CUDA export, traced here).
    gpu = jax.export.export(jax.jit(jax.grad(loss, (0, 1))), platforms=["cuda"])(x, k)
    text = gpu.mlir_module()
    assert "stablehlo.convolution" in text and "stablehlo.dot_general" not in text
    # Forward mode is the primitive again: d conv(x, k) = conv(dx, k) + conv(x, dk).
    dx, dk = _operands(rng, x.shape, k.shape)
    tangent = jax.jit(lambda *v: jax.jvp(_conv, v[:2], v[2:])[1])(x, k, dx, dk)
    both = jax.jit(lambda *v: _conv(v[2], v[1]) + _conv(v[0], v[3]))(x, k, dx, dk)
    np.testing.assert_array_equal(np.asarray(tangent, np.float32), np.asarray(both, np.float32))


def test_shifted_conv_second_order(rng):
    # Hessian-vector products (forward over reverse) run through the written-out gradients;
    # bfloat16 level against float64, like XLA's own bfloat16 convolution.
    (x,) = _operands(rng, (1, 6, 7, 256))
    (k,) = _operands(rng, (3, 2, 256, 16), scale=1 / 30)
    dx, dk = _operands(rng, x.shape, k.shape)
    xla = functools.partial(
        jax.lax.conv_general_dilated, window_strides=STRIDES, padding=PADS, dimension_numbers=NHWC
    )

    def hvp(conv, *v):
        loss = lambda x, k: jnp.sum(jnp.tanh(conv(x, k).astype(jnp.float64)))  # noqa: E731
        return jax.jvp(jax.grad(loss, (0, 1)), v[:2], v[2:])[1]

    exact = hvp(xla, *(a.astype(jnp.float64) for a in (x, k, dx, dk)))
    ours = jax.jit(functools.partial(hvp, _conv))(x, k, dx, dk)
    theirs = jax.jit(functools.partial(hvp, xla))(x, k, dx, dk)

    def rel(h, e):
        return float(jnp.linalg.norm(h.astype(jnp.float64) - e) / jnp.linalg.norm(e))

    for o, t, e in zip(ours, theirs, exact, strict=True):
        # measured: ours 2.8e-3 / 3.1e-3, XLA's 3.1e-3 / 3.4e-3 (x / kernel)
        assert rel(o, e) < 1e-2 and rel(t, e) < 1e-2, (rel(o, e), rel(t, e))


def test_shifted_conv_under_vmap_is_a_loop(rng):
    # Images fold into the batch; batched kernels (a vmapped ensemble) map one by one: both
    # equal a Python loop bit for bit, per-example gradients too.
    xs, ks = _operands(rng, (3, 2, 6, 5, 128), (3, 3, 3, 128, 8))
    as32 = functools.partial(np.asarray, dtype=np.float32)
    for axes in ((0, None), (None, 0), (0, 0)):
        args = (xs if axes[0] == 0 else xs[0], ks if axes[1] == 0 else ks[0])
        got = jax.jit(jax.vmap(_conv, axes))(*args)
        pick = lambda v, ax, i: v[i] if ax == 0 else v  # noqa: E731
        loop = [_conv(pick(args[0], axes[0], i), pick(args[1], axes[1], i)) for i in range(3)]
        np.testing.assert_array_equal(as32(got), np.stack([as32(v) for v in loop]))
    grad = jax.grad(lambda x, k: jnp.sum(jnp.sin(_conv(x, k).astype(jnp.float32))), 1)
    per_example = jax.jit(jax.vmap(grad, (0, None)))(xs, ks[0])
    loop = np.stack([as32(jax.jit(grad)(xs[i], ks[0])) for i in range(3)])
    np.testing.assert_array_equal(as32(per_example), loop)


def test_eager_equals_jit(rng):
    x, k = _operands(rng, (1, 5, 5, 128), (3, 3, 128, 8))
    np.testing.assert_array_equal(
        np.asarray(_conv(x, k), np.float32), np.asarray(jax.jit(_conv)(x, k), np.float32)
    )
