"""Squeeze-and-Excitation blocks in Flax linen (channels last, any number of spatial axes).

Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018, eq. 2-4:
``z = mean_{spatial}(x)`` (squeeze), ``s = σ(W2 δ(W1 z))`` (excite), ``y = s ⊙ x`` (scale).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from se_common import classic_rd_channels, resolve_rd_channels
from se_flax._dtypes import Dtype, apply_accumulated, compute_dtype, held_param_dtype, mean
from se_flax._fused_se import fused_squeeze_excite
from se_flax._layers import check_input, default_bias_init, default_kernel_init, dense

__all__ = ["SELayer", "SqueezeExcite", "squeeze_excite"]

Array = jax.Array


def squeeze_excite(
    x: Array,
    fc1: Callable[[Array], Array],
    fc2: Callable[[Array], Array],
    act_fn: Callable[[Array], Array],
    gate_fn: Callable[[Array], Array],
    dtype: jnp.dtype,
    fused: bool = False,
) -> Array:
    """The SE computation shared by the linen and NNX modules.

    Args:
        x: input ``(N, *spatial, C)``.
        fc1, fc2: the reduce (C -> rd) and expand (rd -> C) dense layers.
        act_fn, gate_fn: δ and σ of the paper's eq. 3.
        dtype: computation and output dtype. Below 32 bits, pooling, ``act_fn`` and
            ``gate_fn`` run in float32 and round once to ``dtype`` (see :mod:`se_flax._dtypes`).
        fused: the pool and the scale as Pallas kernels with their own derivatives
            (:func:`se_flax._fused_se.fused_squeeze_excite`: Triton on GPUs, interpret mode
            elsewhere); the same results to rounding.

    Returns:
        ``x * gate`` of shape ``(N, *spatial, C)`` and dtype ``dtype``.
    """

    def excite(z: Array) -> Array:
        return apply_accumulated(gate_fn, fc2(apply_accumulated(act_fn, fc1(z), dtype)), dtype)

    if fused:
        return fused_squeeze_excite(x, excite, dtype)
    return x.astype(dtype) * excite(mean(x, range(1, x.ndim - 1), dtype, keepdims=True))


def _weight_channels(module: nn.Module, x: Array) -> int:
    """C of the module's existing ``fc1`` weights, else the input's (when initialising)."""
    if module.has_variable("params", "fc1"):
        return module.variables["params"]["fc1"]["kernel"].shape[0]
    return x.shape[-1] if x.ndim else 0


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
        fused: pool and scale with se-flax's Pallas kernels (:func:`squeeze_excite`); off by
            default until measured faster on a GPU (issue 33).

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
    fused: bool = False

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """``train`` has no effect (no statistics); every attention layer takes it."""
        channels = _weight_channels(self, x)
        check_input(x, channels=channels, spatial_dims=None)
        rd = resolve_rd_channels(channels, self.rd_ratio, self.rd_channels, self.rd_divisor)
        return squeeze_excite(
            x,
            dense(self, rd, name="fc1", use_bias=self.use_bias),
            dense(self, channels, name="fc2", use_bias=self.use_bias),
            self.act_fn,
            self.gate_fn,
            compute_dtype(x, self.dtype, held_param_dtype(self)),
            self.fused,
        )


class SELayer(nn.Module):
    """The classic SE recipe (linen), the twin of ``se_torch.SELayer``: dense layers without
    bias, hidden width ``C // reduction``, ReLU and sigmoid.

    Parameters ``fc1/kernel`` (C, C // r) and ``fc2/kernel`` (C // r, C): the classic
    state_dict's ``fc.0.weight`` and ``fc.2.weight`` convert to them with no options.

    Attributes:
        reduction: the reduction ratio r (default 16).
        dtype, param_dtype, precision, kernel_init: as in :class:`SqueezeExcite`.

    Shapes:
        input ``(N, H, W, C)`` (as the classic recipe, two spatial axes); output the same.

    Example:
        >>> se = SELayer(reduction=16)
        >>> x = jnp.ones((2, 7, 7, 64))
        >>> se.apply(se.init(jax.random.key(0), x), x).shape
        (2, 7, 7, 64)
    """

    reduction: int = 16
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: nn.initializers.Initializer = default_kernel_init

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """``train`` has no effect (no statistics); every attention layer takes it."""
        channels = _weight_channels(self, x)
        check_input(x, channels=channels)
        rd = classic_rd_channels(channels, self.reduction)
        return squeeze_excite(
            x,
            dense(self, rd, name="fc1", use_bias=False),
            dense(self, channels, name="fc2", use_bias=False),
            nn.relu,
            nn.sigmoid,
            compute_dtype(x, self.dtype, held_param_dtype(self)),
        )
