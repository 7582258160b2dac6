"""16-bit matmuls and convolutions accumulated in float32 and rounded once, with gradients that
are computed the same way: two JAX primitives behind :func:`se_flax.pointwise_conv` and
:func:`se_flax.conv_general_dilated` in bfloat16.

Why primitives: XLA's CPU backend runs a bfloat16 dot on the CPU's bf16 units (AMX /
AVX512-BF16) only when its result is float32. Written as ``matmul(a, b, float32).astype(bf16)``,
autodiff transposes the cast into a float32 cotangent, so both gradient matmuls become float32
matmuls (and a convolution's per-tap input gradients get rounded to bfloat16 before they are
summed). Each primitive here is bilinear (``jax.interpreters.ad.defbilinear``): its forward-mode
derivative is the primitive again, and its transposes are written out, accumulated in float32
from the bfloat16 cotangent and rounded once. Their operations are ordinary JAX operations, so
higher derivatives (Hessian-vector products) and ``vmap`` work.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

__all__ = ["rounded_matmul", "shifted_conv", "windows"]

NHWC = ("NHWC", "HWIO", "NHWC")


def windows(
    x: jax.Array,
    window: tuple[int, int],
    strides: tuple[int, int],
    axes: tuple[int, int] = (1, 2),
) -> list[jax.Array]:
    """The ``kh * kw`` strided slices of a padded ``x`` that a ``(kh, kw)`` window moved by
    ``strides`` over the spatial ``axes`` reads, in row-major window order: slice ``(i, j)``
    holds the input under tap ``(i, j)`` of every output position (for NHWC,
    ``(N, H_out, W_out, C)``)."""
    (kh, kw), (sh, sw), (ah, aw) = window, strides, axes
    h, w = x.shape[ah], x.shape[aw]
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = []
    for i in range(kh):
        for j in range(kw):
            start, limit, step = [0] * x.ndim, list(x.shape), [1] * x.ndim
            start[ah], limit[ah], step[ah] = i, i + (ho - 1) * sh + 1, sh
            start[aw], limit[aw], step[aw] = j, j + (wo - 1) * sw + 1, sw
            out.append(lax.slice(x, start, limit, step))
    return out


def _f32_dot(a, b, contract, precision):
    """``a . b`` contracting ``contract`` (one axis of each), accumulated in float32."""
    dims = ((contract[0],), (contract[1],)), ((), ())
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


# ------------------------------------------------------------------------------------------
# rounded_matmul: (M, K) @ (K, N), accumulated in float32, rounded once to the inputs' dtype.


def rounded_matmul(a: jax.Array, b: jax.Array, precision: Any = None) -> jax.Array:
    """``(a @ b)`` of 16-bit ``(M, K)`` and ``(K, N)`` accumulated in float32 and rounded once;
    its gradients (``ct @ b.T``, ``a.T @ ct``) are computed the same way."""
    return _rounded_matmul_p.bind(a, b, precision=precision)


def _rounded_matmul_impl(a, b, *, precision):
    return _f32_dot(a, b, (1, 0), precision).astype(a.dtype)


def _rounded_matmul_abstract(a, b, *, precision):
    del precision
    return jax.core.ShapedArray((a.shape[0], b.shape[1]), a.dtype)


def _rounded_matmul_lhs(ct, a, b, *, precision):  # d a = ct @ b.T
    del a
    return rounded_matmul(ct, b.T, precision)


def _rounded_matmul_rhs(ct, a, b, *, precision):  # d b = a.T @ ct
    del b
    return rounded_matmul(a.T, ct, precision)


def _rounded_matmul_batch(args, dims, *, precision):
    (a, b), (da, db) = args, dims
    if db is None:  # a batch of row blocks: one matmul over all rows
        a = jnp.moveaxis(a, da, 0)
        y = rounded_matmul(a.reshape(-1, a.shape[-1]), b, precision)
        return y.reshape(*a.shape[:2], -1), 0
    if da is None:  # a batch of right factors: side by side
        b = jnp.moveaxis(b, db, 1)
        y = rounded_matmul(a, b.reshape(b.shape[0], -1), precision)
        return y.reshape(a.shape[0], *b.shape[1:]), 1
    a, b = jnp.moveaxis(a, da, 0), jnp.moveaxis(b, db, 0)
    return lax.map(lambda ab: rounded_matmul(*ab, precision), (a, b)), 0


_rounded_matmul_p = Primitive("se_flax_rounded_matmul")
_rounded_matmul_p.def_impl(jax.jit(_rounded_matmul_impl, static_argnames="precision", inline=True))
_rounded_matmul_p.def_abstract_eval(_rounded_matmul_abstract)
mlir.register_lowering(
    _rounded_matmul_p, mlir.lower_fun(_rounded_matmul_impl, multiple_results=False)
)
ad.defbilinear(_rounded_matmul_p, _rounded_matmul_lhs, _rounded_matmul_rhs)
batching.primitive_batchers[_rounded_matmul_p] = _rounded_matmul_batch


# ------------------------------------------------------------------------------------------
# shifted_conv: an NHWC / HWIO convolution as one float32-accumulating matmul per kernel tap.


def shifted_conv(
    x: jax.Array,
    kernel: jax.Array,
    strides: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
    precision: Any = None,
) -> jax.Array:
    """The convolution of 16-bit NHWC ``x`` with HWIO ``kernel`` (explicit non-negative
    ``pads``), on CPU as ``sum_ij shift_ij(x) @ kernel[i, j]`` accumulated in float32 and rounded
    once, and its input and kernel gradients likewise; other backends run XLA's convolution and
    its gradients."""
    return _shifted_conv_p.bind(x, kernel, strides=strides, pads=pads, precision=precision)


def _xla_conv(x, kernel, strides, pads, precision):
    return lax.conv_general_dilated(
        x, kernel, strides, pads, dimension_numbers=NHWC, precision=precision
    )


def _shifted_matmuls(x, kernel, strides, pads, precision):
    """``sum_ij shift_ij(x) @ kernel[i, j]`` in float32, rounded once: the convolution."""
    kh, kw, c, f = kernel.shape
    taps = windows(jnp.pad(x, ((0, 0), *pads, (0, 0))), (kh, kw), strides)
    y = None
    for tap, k in zip(taps, kernel.reshape(kh * kw, c, f), strict=True):
        t = _f32_dot(tap.reshape(-1, c), k, (1, 0), precision)
        y = t if y is None else y + t
    return y.astype(x.dtype).reshape(*taps[0].shape[:3], f)


def _shifted_input_grad(ct, kernel, x_shape, strides, pads, precision):
    """The input gradient: each tap's ``ct @ kernel[i, j].T`` (float32) placed where that tap
    read, summed in float32 over the padded input, cropped and rounded once."""
    kh, kw, c, f = kernel.shape
    n, h, w, _ = x_shape
    (sh, sw), ((pt, pb), (pl, pr)) = strides, pads
    hp, wp = h + pt + pb, w + pl + pr
    ho, wo = ct.shape[1:3]
    g = ct.reshape(-1, f)
    zero = jnp.zeros((), jnp.float32)
    acc = None
    for i in range(kh):
        for j in range(kw):
            t = _f32_dot(g, kernel[i, j], (1, 1), precision).reshape(n, ho, wo, c)
            rows = (i, hp - i - (ho - 1) * sh - 1, sh - 1)
            cols = (j, wp - j - (wo - 1) * sw - 1, sw - 1)
            t = lax.pad(t, zero, ((0, 0, 0), rows, cols, (0, 0, 0)))
            acc = t if acc is None else acc + t
    return acc[:, pt : pt + h, pl : pl + w].astype(ct.dtype)


def _shifted_kernel_grad(x, ct, kernel_shape, strides, pads, precision):
    """The kernel gradient: ``shift_ij(x).T @ ct`` per tap, float32, rounded once. ``x`` is
    laid out channels-first once, so each tap is a ``(C, M) @ (M, F)`` matmul (1.5-2x faster
    than contracting a channels-last tap's leading axis, on a 2-core Xeon)."""
    kh, kw, c, f = kernel_shape
    xt = jnp.transpose(jnp.pad(x, ((0, 0), *pads, (0, 0))), (3, 0, 1, 2))  # (C, N, Hp, Wp)
    g = ct.reshape(-1, f)
    taps = windows(xt, (kh, kw), strides, axes=(2, 3))
    dk = jnp.stack([_f32_dot(t.reshape(c, -1), g, (1, 0), precision) for t in taps])
    return dk.reshape(kernel_shape).astype(ct.dtype)


def _shifted_conv_impl(x, kernel, *, strides, pads, precision):
    return lax.platform_dependent(
        x,
        kernel,
        cpu=lambda x, k: _shifted_matmuls(x, k, strides, pads, precision),
        default=lambda x, k: _xla_conv(x, k, strides, pads, precision),
    )


def _shifted_conv_abstract(x, kernel, *, strides, pads, precision):
    del precision
    (n, h, w, _), (kh, kw, _, f) = x.shape, kernel.shape
    ho = (h + sum(pads[0]) - kh) // strides[0] + 1
    wo = (w + sum(pads[1]) - kw) // strides[1] + 1
    return jax.core.ShapedArray((n, ho, wo, f), x.dtype)


def _xla_grad(linear, shape, ct):
    """XLA's own gradient: the transpose of ``linear`` (one argument of ``shape``) at ``ct``."""
    return jax.linear_transpose(linear, jax.ShapeDtypeStruct(shape, ct.dtype))(ct)[0]


def _shifted_conv_transpose(wrt, ct, x, kernel, *, strides, pads, precision):
    """The gradient with respect to ``x`` (``wrt`` 0) or ``kernel`` (1): on CPU written out,
    float32-accumulating bfloat16 matmuls; elsewhere XLA's own."""
    args = (strides, pads, precision)
    if wrt == 0:
        shape, other = x.aval.shape, kernel
        cpu = lambda g, k: _shifted_input_grad(g, k, shape, *args)  # noqa: E731
        xla = lambda g, k: _xla_grad(lambda a: _xla_conv(a, k, *args), shape, g)  # noqa: E731
    else:
        shape, other = kernel.aval.shape, x
        cpu = lambda g, a: _shifted_kernel_grad(a, g, shape, *args)  # noqa: E731
        xla = lambda g, a: _xla_grad(lambda k: _xla_conv(a, k, *args), shape, g)  # noqa: E731
    return lax.platform_dependent(ct, other, cpu=cpu, default=xla)


def _shifted_conv_batch(args, dims, **params):
    (x, kernel), (dx, dk) = args, dims
    if dk is None:  # a batch of images: fold it into N
        x = jnp.moveaxis(x, dx, 0)
        y = _shifted_conv_p.bind(x.reshape(-1, *x.shape[2:]), kernel, **params)
        return y.reshape(*x.shape[:2], *y.shape[1:]), 0
    kernel = jnp.moveaxis(kernel, dk, 0)
    if dx is None:
        return lax.map(lambda k: _shifted_conv_p.bind(x, k, **params), kernel), 0
    x = jnp.moveaxis(x, dx, 0)
    return lax.map(lambda xk: _shifted_conv_p.bind(*xk, **params), (x, kernel)), 0


_shifted_conv_p = Primitive("se_flax_shifted_conv")
_shifted_conv_p.def_impl(
    jax.jit(_shifted_conv_impl, static_argnames=("strides", "pads", "precision"), inline=True)
)
_shifted_conv_p.def_abstract_eval(_shifted_conv_abstract)
mlir.register_lowering(_shifted_conv_p, mlir.lower_fun(_shifted_conv_impl, multiple_results=False))
ad.defbilinear(
    _shifted_conv_p,
    functools.partial(_shifted_conv_transpose, 0),
    functools.partial(_shifted_conv_transpose, 1),
)
batching.primitive_batchers[_shifted_conv_p] = _shifted_conv_batch
