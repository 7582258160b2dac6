"""Squeeze-and-Excitation block in Flax linen (channels last, any number of spatial axes).

Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018, eq. 2-4:
``z = mean_{spatial}(x)`` (squeeze), ``s = σ(W2 δ(W1 z))`` (excite), ``y = s ⊙ x`` (scale).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from se_common import check_feature_map, resolve_rd_channels

__all__ = ["SqueezeExcite", "squeeze_excite"]

Array = jax.Array
Dtype = Any

default_kernel_init = nn.initializers.lecun_normal()
default_bias_init = nn.initializers.zeros_init()


def compute_dtype(x: Array, dtype: Dtype | None, param_dtype: Dtype) -> jnp.dtype:
    """The dtype to compute in: ``dtype`` if given, else Flax's promotion of input and params."""
    return jnp.dtype(dtype) if dtype is not None else jnp.promote_types(x.dtype, param_dtype)


def accumulation_dtype(dtype: Dtype) -> jnp.dtype:
    """float32 for 16-bit dtypes, else ``dtype``: what reductions and gates are computed in."""
    return jnp.dtype(jnp.float32) if jnp.finfo(dtype).bits < 32 else jnp.dtype(dtype)


def squeeze_excite(
    x: Array,
    fc1: Callable[[Array], Array],
    fc2: Callable[[Array], Array],
    act_fn: Callable[[Array], Array],
    gate_fn: Callable[[Array], Array],
    dtype: jnp.dtype,
) -> Array:
    """The SE computation shared by the linen and NNX modules.

    Args:
        x: input ``(N, *spatial, C)``.
        fc1, fc2: the reduce (C -> rd) and expand (rd -> C) dense layers.
        act_fn, gate_fn: δ and σ of the paper's eq. 3.
        dtype: computation and output dtype. Below 32 bits, pooling, ``act_fn`` and
            ``gate_fn`` run in float32 and round once to ``dtype``, as PyTorch's kernels do; they
            touch only N * C values, so this costs nothing and keeps the gate correctly rounded.

    Returns:
        ``x * gate`` of shape ``(N, *spatial, C)`` and dtype ``dtype``.
    """
    acc = accumulation_dtype(dtype)

    def in_acc(fn: Callable[[Array], Array], v: Array) -> Array:
        return fn(v.astype(acc)).astype(dtype)

    z = jnp.mean(x.astype(acc), axis=tuple(range(1, x.ndim - 1)), keepdims=True).astype(dtype)
    s = in_acc(gate_fn, fc2(in_acc(act_fn, fc1(z))))
    return x.astype(dtype) * s


def check_input(x: Array, channels: int) -> None:
    """Raises a clear error for a non-floating input, rank < 3, or a wrong channel count."""
    check_feature_map(
        x.shape, x.dtype, jnp.issubdtype(x.dtype, jnp.floating), channels, channels_last=True
    )


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation block (linen), the twin of ``se_torch.SqueezeExcite``.

    Parameters are ``fc1/kernel`` (C, rd), ``fc1/bias`` (rd,), ``fc2/kernel`` (rd, C) and
    ``fc2/bias`` (C,); C is taken from the input's last axis. Defaults reproduce timm's
    ``SEModule``: hidden width ``make_divisible(C / 16, 8, round_limit=0.)``.

    Attributes:
        rd_ratio: hidden width as a fraction of C (default 1/16), rounded with ``rd_divisor``.
        rd_channels: explicit hidden width; excludes ``rd_ratio`` and ``rd_divisor``.
        rd_divisor: round the hidden width to a multiple of this (default 8).
        use_bias: whether both dense layers have a bias.
        act_fn: activation δ between the two layers (default ``nn.relu``).
        gate_fn: gate σ (default ``nn.sigmoid``; ``jax.nn.hard_sigmoid`` is PyTorch's
            ``relu6(x + 3) / 6``).
        dtype: computation and output dtype (default: promote input and ``param_dtype``).
        param_dtype: dtype of the parameters.
        precision: matmul precision of the dense layers.
        kernel_init, bias_init: initializers of the dense layers.

    Shapes:
        input ``(N, *spatial, C)`` with one or more spatial axes; output has the same shape.
        For 16-bit computation dtypes, pooling, activation and gate run in float32.

    Example:
        >>> se = SqueezeExcite()
        >>> x = jnp.ones((2, 7, 7, 64))
        >>> variables = se.init(jax.random.key(0), x)
        >>> se.apply(variables, x).shape
        (2, 7, 7, 64)
    """

    rd_ratio: float | None = None
    rd_channels: int | None = None
    rd_divisor: int | None = None
    use_bias: bool = True
    act_fn: Callable[[Array], Array] = nn.relu
    gate_fn: Callable[[Array], Array] = nn.sigmoid
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: nn.initializers.Initializer = default_kernel_init
    bias_init: nn.initializers.Initializer = default_bias_init

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """``train`` has no effect (no statistics); every attention layer takes it."""
        channels = x.shape[-1] if x.ndim else 0
        if self.has_variable("params", "fc1"):
            channels = self.variables["params"]["fc1"]["kernel"].shape[0]
        check_input(x, channels)
        rd = resolve_rd_channels(channels, self.rd_ratio, self.rd_channels, self.rd_divisor)
        dense = dict(
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
        )
        return squeeze_excite(
            x,
            nn.Dense(rd, name="fc1", **dense),
            nn.Dense(channels, name="fc2", **dense),
            self.act_fn,
            self.gate_fn,
            compute_dtype(x, self.dtype, self.param_dtype),
        )
