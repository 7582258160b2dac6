"""The dtype policy of the Flax modules, in one place.

A module computes in ``dtype`` if given, else in the promotion of its input and the parameters it
holds (Flax's rule: a float64 checkpoint loaded into a model with the default ``param_dtype``
computes in float64). Below 32 bits, reductions (poolings, BatchNorm statistics) and element-wise
gates run in float32 and round once to the compute dtype, as PyTorch's kernels do: they touch few
values, so this costs nothing and keeps them correctly rounded. Variables keep their dtype across
updates (BatchNorm statistics).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "Dtype",
    "accumulation_dtype",
    "apply_accumulated",
    "compute_dtype",
    "held_param_dtype",
    "mean",
    "promoted_floating_dtype",
]

Dtype = Any  # a dtype or anything jnp.dtype accepts


def compute_dtype(x: jax.Array, dtype: Dtype | None, param_dtype: Dtype) -> jnp.dtype:
    """The dtype to compute in: ``dtype`` if given, else Flax's promotion of input and params."""
    return jnp.dtype(dtype) if dtype is not None else jnp.promote_types(x.dtype, param_dtype)


def held_param_dtype(module: nn.Module) -> jnp.dtype:
    """The floating dtype of the parameters a linen module holds, which may differ from its
    ``param_dtype`` (loaded weights), or its ``param_dtype`` while they are being created."""
    params = jax.tree.leaves(module.variables.get("params", {}))
    return promoted_floating_dtype(params, module.param_dtype)


def promoted_floating_dtype(arrays: Sequence[Any], default: Dtype) -> jnp.dtype:
    """The promotion of the floating dtypes among ``arrays`` (parameters held by a linen or NNX
    module), or ``default`` if there are none."""
    held = {jnp.dtype(a.dtype) for a in arrays if jnp.issubdtype(a.dtype, jnp.floating)}
    return functools.reduce(jnp.promote_types, held) if held else jnp.dtype(default)


def accumulation_dtype(dtype: Dtype) -> jnp.dtype:
    """float32 for 16-bit dtypes, else ``dtype``: what reductions and gates are computed in."""
    return jnp.dtype(jnp.float32) if jnp.finfo(dtype).bits < 32 else jnp.dtype(dtype)


def mean(
    x: jax.Array, axis: int | Sequence[int], dtype: Dtype, keepdims: bool = False
) -> jax.Array:
    """The mean of ``x`` over ``axis``, accumulated in :func:`accumulation_dtype` of ``dtype``
    and rounded once to ``dtype``."""
    axis = axis if isinstance(axis, int) else tuple(axis)
    acc = accumulation_dtype(dtype)
    return jnp.mean(x.astype(acc), axis=axis, keepdims=keepdims).astype(dtype)


def apply_accumulated(
    fn: Callable[[jax.Array], jax.Array], v: jax.Array, dtype: Dtype
) -> jax.Array:
    """``fn(v)`` computed in :func:`accumulation_dtype` of ``dtype``, rounded once to ``dtype``
    (activations and gates of the attention layers)."""
    return fn(v.astype(accumulation_dtype(dtype))).astype(dtype)
