"""The SE block's two memory-bound passes as Pallas kernels (GPU through Triton; interpret mode
elsewhere), with their own derivatives: :func:`fused_squeeze_excite`.

An SE block reads its input twice (the squeeze's pool, then the scale) and writes its output
once; the excitation between (two tiny matmuls) is plain JAX. Each pass here is one kernel over
``(N, H * W, C)`` with a grid of (sample, channel tile) programs, each looping over the spatial
rows in chunks: the pool accumulates per channel in float32; the scale multiplies by the gate.
The backward pass of the scale is one kernel too (the input gradient ``ct * gate`` and the
gate's gradient ``sum(ct * x)`` from one read of each); the pool's is a broadcast.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from se_flax._dtypes import accumulation_dtype

__all__ = ["fused_squeeze_excite", "se_pool", "se_scale"]

Array = jax.Array
CHANNEL_TILE = 128  # channels per program (a power of 2 dividing C, else all of C)
ROW_CHUNK = 256  # spatial rows per loop step (a power of 2 dividing H * W, else smaller)


def _tile(n: int, most: int) -> int:
    """The largest power of 2 <= ``most`` dividing ``n`` (1 at worst)."""
    return math.gcd(n, 1 << (most.bit_length() - 1))


def _interpret() -> bool:
    return jax.default_backend() != "gpu"


def _channel_tile(c: int) -> int:
    t = _tile(c, CHANNEL_TILE)
    return t if t >= 16 else c  # small or odd C: one tile of all channels


def _pool_kernel(x_ref, o_ref, *, rows: int, chunk: int) -> None:
    def body(i, acc):
        block = x_ref[0, pl.ds(i * chunk, chunk), :].astype(o_ref.dtype)
        return acc + jnp.sum(block, axis=0)

    acc = jax.lax.fori_loop(0, rows // chunk, body, jnp.zeros(o_ref.shape[-1], o_ref.dtype))
    o_ref[0, :] = acc


def _wide(dtype: jnp.dtype) -> jnp.dtype:
    """What the reductions accumulate in: float32, float64 for float64."""
    return accumulation_dtype(dtype)


def _pool_sum(x3: Array) -> Array:
    """``sum(x3, axis=1)`` accumulated in float32 (float64 for float64), ``x3`` (N, P, C)."""
    n, p, c = x3.shape
    bc, chunk = _channel_tile(c), _tile(p, ROW_CHUNK)
    return pl.pallas_call(
        functools.partial(_pool_kernel, rows=p, chunk=chunk),
        out_shape=jax.ShapeDtypeStruct((n, c), _wide(x3.dtype)),
        grid=(n, c // bc),
        in_specs=[pl.BlockSpec((1, p, bc), lambda i, j: (i, 0, j))],
        out_specs=pl.BlockSpec((1, bc), lambda i, j: (i, j)),
        interpret=_interpret(),
    )(x3)


def _scale_kernel(x_ref, g_ref, o_ref, *, rows: int, chunk: int) -> None:
    g = g_ref[0, :]

    def body(i, carry):
        rows_i = pl.ds(i * chunk, chunk)
        o_ref[0, rows_i, :] = (x_ref[0, rows_i, :] * g[None, :]).astype(o_ref.dtype)
        return carry

    jax.lax.fori_loop(0, rows // chunk, body, 0)


def _scale(x3: Array, g: Array) -> Array:
    n, p, c = x3.shape
    bc, chunk = _channel_tile(c), _tile(p, ROW_CHUNK)
    return pl.pallas_call(
        functools.partial(_scale_kernel, rows=p, chunk=chunk),
        out_shape=jax.ShapeDtypeStruct(x3.shape, x3.dtype),
        grid=(n, c // bc),
        in_specs=[
            pl.BlockSpec((1, p, bc), lambda i, j: (i, 0, j)),
            pl.BlockSpec((1, bc), lambda i, j: (i, j)),
        ],
        out_specs=pl.BlockSpec((1, p, bc), lambda i, j: (i, 0, j)),
        interpret=_interpret(),
    )(x3, g)


def _scale_grad_kernel(ct_ref, x_ref, g_ref, dx_ref, dg_ref, *, rows: int, chunk: int) -> None:
    g = g_ref[0, :]

    def body(i, acc):
        rows_i = pl.ds(i * chunk, chunk)
        ct = ct_ref[0, rows_i, :]
        dx_ref[0, rows_i, :] = (ct * g[None, :]).astype(dx_ref.dtype)
        prod = ct.astype(dg_ref.dtype) * x_ref[0, rows_i, :].astype(dg_ref.dtype)
        return acc + jnp.sum(prod, axis=0)

    acc = jax.lax.fori_loop(0, rows // chunk, body, jnp.zeros(dg_ref.shape[-1], dg_ref.dtype))
    dg_ref[0, :] = acc


def _scale_grads(ct: Array, x3: Array, g: Array) -> tuple[Array, Array]:
    n, p, c = x3.shape
    bc, chunk = _channel_tile(c), _tile(p, ROW_CHUNK)
    rows = pl.BlockSpec((1, p, bc), lambda i, j: (i, 0, j))
    per_channel = pl.BlockSpec((1, bc), lambda i, j: (i, j))
    return pl.pallas_call(
        functools.partial(_scale_grad_kernel, rows=p, chunk=chunk),
        out_shape=(
            jax.ShapeDtypeStruct(x3.shape, x3.dtype),
            jax.ShapeDtypeStruct((n, c), _wide(x3.dtype)),
        ),
        grid=(n, c // bc),
        in_specs=[rows, rows, per_channel],
        out_specs=(rows, per_channel),
        interpret=_interpret(),
    )(ct, x3, g)


@jax.custom_vjp
def se_pool(x3: Array) -> Array:
    """The squeeze: the mean over axis 1 of ``x3`` (N, P, C), accumulated in float32 (float64
    for float64), in ``x3``'s dtype."""
    return (_pool_sum(x3) / x3.shape[1]).astype(x3.dtype)


def _pool_fwd(x3):
    return se_pool(x3), x3.shape


def _pool_bwd(shape, ct):
    return (jnp.broadcast_to((ct / shape[1])[:, None, :], shape).astype(ct.dtype),)


se_pool.defvjp(_pool_fwd, _pool_bwd)


@jax.custom_vjp
def se_scale(x3: Array, g: Array) -> Array:
    """The scale: ``x3 * g[:, None, :]``, ``x3`` (N, P, C) and the gate ``g`` (N, C)."""
    return _scale(x3, g.astype(x3.dtype))


def _scale_fwd(x3, g):
    return se_scale(x3, g), (x3, g)


def _scale_bwd(res, ct):
    x3, g = res
    dx, dg = _scale_grads(ct, x3, g.astype(x3.dtype))
    return dx, dg.astype(g.dtype)


se_scale.defvjp(_scale_fwd, _scale_bwd)


def fused_squeeze_excite(x: Array, excite: Callable[[Array], Array], dtype: jnp.dtype) -> Array:
    """``x * excite(mean(x))`` with the pool and the scale as Pallas kernels.

    Args:
        x: input ``(N, *spatial, C)``.
        excite: the gate of the pooled ``(N, C)``: ``gate(fc2(act(fc1(z))))``, differentiated
            by JAX.
        dtype: computation and output dtype.
    """
    shape = x.shape
    x3 = x.astype(dtype).reshape(shape[0], -1, shape[-1])
    g = excite(se_pool(x3))
    return se_scale(x3, g).reshape(shape)
