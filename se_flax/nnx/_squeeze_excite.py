"""Squeeze-and-Excitation blocks in Flax NNX, twins of the linen modules (same computation)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from se_common import classic_rd_channels, positive_int, resolve_rd_channels
from se_flax._dtypes import Dtype, compute_dtype
from se_flax._layers import check_input, default_bias_init, default_kernel_init
from se_flax._squeeze_excite import squeeze_excite
from se_flax.nnx._layers import held_param_dtype

__all__ = ["SELayer", "SqueezeExcite"]

Array = jax.Array


class SqueezeExcite(nnx.Module):
    """Squeeze-and-Excitation block (NNX); same options, parameters and outputs as the linen one.

    Args:
        channels: number of input (and output) channels C.
        rd_ratio: hidden width as a fraction of C (default 1/16), rounded with ``rd_divisor``.
        rd_channels: explicit hidden width; excludes ``rd_ratio`` and ``rd_divisor``.
        rd_divisor: round the hidden width to a multiple of this (default 8).
        use_bias: whether both dense layers have a bias.
        act_fn: activation δ between the two layers (default ``nnx.relu``).
        gate_fn: gate σ (default ``nnx.sigmoid``; ``jax.nn.hard_sigmoid`` is PyTorch's).
        dtype: computation and output dtype (default: promote input and parameters).
        param_dtype: dtype of the parameters.
        precision: matmul precision of the dense layers.
        kernel_init, bias_init: initializers of the dense layers.
        fused: pool and scale with se-flax's Pallas kernels (``se_flax.squeeze_excite``).
        rngs: random streams for initialisation.

    Variables ``fc1/kernel`` (C, rd), ``fc1/bias``, ``fc2/kernel`` (rd, C), ``fc2/bias``.

    Shapes:
        input ``(N, *spatial, C)`` with one or more spatial axes; output has the same shape.

    Example:
        >>> se = SqueezeExcite(64, rngs=nnx.Rngs(0))
        >>> se(jnp.ones((2, 7, 7, 64))).shape
        (2, 7, 7, 64)
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float | None = None,
        rd_channels: int | None = None,
        rd_divisor: int | None = None,
        use_bias: bool = True,
        act_fn: Callable[[Array], Array] = nnx.relu,
        gate_fn: Callable[[Array], Array] = nnx.sigmoid,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        kernel_init: nnx.Initializer = default_kernel_init,
        bias_init: nnx.Initializer = default_bias_init,
        fused: bool = False,
        rngs: nnx.Rngs,
    ) -> None:
        self.channels = positive_int("channels", channels)
        self.fused = fused
        self.rd_channels = resolve_rd_channels(channels, rd_ratio, rd_channels, rd_divisor)
        dense = dict(
            use_bias=use_bias,
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            kernel_init=kernel_init,
            bias_init=bias_init,
            rngs=rngs,
        )
        self.fc1 = nnx.Linear(channels, self.rd_channels, **dense)
        self.fc2 = nnx.Linear(self.rd_channels, channels, **dense)
        self.act_fn = act_fn
        self.gate_fn = gate_fn
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        check_input(x, channels=self.channels, spatial_dims=None)
        dtype = compute_dtype(x, self.dtype, held_param_dtype(self))
        return squeeze_excite(x, self.fc1, self.fc2, self.act_fn, self.gate_fn, dtype, self.fused)


class SELayer(nnx.Module):
    """The classic SE recipe (NNX), twin of :class:`se_flax.SELayer` and ``se_torch.SELayer``:
    dense layers without bias, hidden width ``C // reduction``, ReLU and sigmoid.

    Args:
        channels: C.
        reduction: the reduction ratio r (default 16).
        dtype, param_dtype, precision, kernel_init: as in :class:`SqueezeExcite`.
        rngs: random streams for initialisation.

    Shapes:
        input ``(N, H, W, C)``; output the same.

    Example:
        >>> se = SELayer(64, reduction=16, rngs=nnx.Rngs(0))
        >>> se(jnp.ones((2, 7, 7, 64))).shape
        (2, 7, 7, 64)
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        kernel_init: nnx.Initializer = default_kernel_init,
        rngs: nnx.Rngs,
    ) -> None:
        self.channels = positive_int("channels", channels)
        rd = classic_rd_channels(channels, reduction)
        dense = dict(
            use_bias=False,
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            kernel_init=kernel_init,
            rngs=rngs,
        )
        self.fc1 = nnx.Linear(channels, rd, **dense)
        self.fc2 = nnx.Linear(rd, channels, **dense)
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        check_input(x, channels=self.channels)
        dtype = compute_dtype(x, self.dtype, held_param_dtype(self))
        return squeeze_excite(x, self.fc1, self.fc2, nnx.relu, nnx.sigmoid, dtype)
