"""SE's relatives in Flax linen (NHWC), twins of ``se_torch``'s: ECA, effective SE and CBAM.

Parameter paths mirror timm's state_dict keys (``conv``, ``fc``, ``channel/fc1``,
``spatial/conv/conv``, ...), so :mod:`se_flax.convert` maps them one to one. Every attention
layer is applied as ``layer(x, train=...)`` and plugs into the backbones by name
(``create_model("resnet50", attn="eca")``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from se_common import check_feature_map, eca_kernel_size, odd_kernel_size, resolve_rd_channels
from se_flax._layers import ConvNormAct
from se_flax._squeeze_excite import (
    accumulation_dtype,
    compute_dtype,
    default_bias_init,
    default_kernel_init,
)

__all__ = ["CbamModule", "ChannelAttn", "EcaModule", "EffectiveSEModule", "SpatialAttn"]

Array = jax.Array
Dtype = Any


def check_image(x: Array) -> None:
    """Clear errors for an input that is not a floating-point ``(N, H, W, C)`` feature map."""
    channels = x.shape[-1] if x.ndim else 0
    check_feature_map(
        x.shape,
        x.dtype,
        jnp.issubdtype(x.dtype, jnp.floating),
        channels,
        channels_last=True,
        spatial_dims=2,
    )


def _mean_hw(x: Array, dtype: jnp.dtype, **kwargs: Any) -> Array:
    """Mean over H and W, accumulated in float32 for 16-bit dtypes, rounded to ``dtype``."""
    acc = accumulation_dtype(dtype)
    return jnp.mean(x.astype(acc), axis=(1, 2), **kwargs).astype(dtype)


def _gate(fn: Callable[[Array], Array], v: Array, dtype: jnp.dtype) -> Array:
    return fn(v.astype(accumulation_dtype(dtype))).astype(dtype)


class EcaModule(nn.Module):
    """Efficient Channel Attention (linen), the twin of ``se_torch.EcaModule``.

    ``y = x * gate(conv1d(mean_hw(x)))`` with a 1-D convolution over the channel vector (zero
    padded, no bias); parameter ``conv/kernel`` of shape ``(k, 1, 1)``.

    Attributes:
        kernel_size: the 1-D kernel size (odd); by default adaptive from C:
            ``t = int(abs(log2(C) + beta) / gamma)``, made odd, at least 3 (as timm).
        gamma, beta: the adaptive rule's constants (2 and 1).
        gate_fn: the gate (default ``nn.sigmoid``).
        dtype, param_dtype, precision, kernel_init: as in ``nn.Conv``.

    Shapes:
        input ``(N, H, W, C)``, output the same. For 16-bit dtypes pooling and gate run in
        float32.

    Example:
        >>> eca = EcaModule()
        >>> x = jnp.ones((2, 7, 7, 256))
        >>> eca.apply(eca.init(jax.random.key(0), x), x).shape
        (2, 7, 7, 256)
    """

    kernel_size: int | None = None
    gamma: float = 2
    beta: float = 1
    gate_fn: Callable[[Array], Array] = nn.sigmoid
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: nn.initializers.Initializer = default_kernel_init

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """``train`` has no effect (no statistics); every attention layer takes it."""
        check_image(x)
        k = eca_kernel_size(x.shape[-1], self.kernel_size, self.gamma, self.beta)
        dtype = compute_dtype(x, self.dtype, self.param_dtype)
        y = nn.Conv(
            1,
            (k,),
            padding=(((k - 1) // 2, (k - 1) // 2),),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            kernel_init=self.kernel_init,
            name="conv",
        )(_mean_hw(x, dtype)[..., None])
        return x.astype(dtype) * _gate(self.gate_fn, y[:, None, None, :, 0], dtype)


class EffectiveSEModule(nn.Module):
    """Effective SE (linen), the twin of ``se_torch.EffectiveSEModule``.

    ``y = x * hard_sigmoid(fc(mean_hw(x)))`` with one C -> C dense layer with bias; parameters
    ``fc/kernel`` ``(C, C)`` and ``fc/bias`` ``(C,)``.

    Attributes:
        add_maxpool: pool with ``0.5 * mean + 0.5 * max`` (timm's experimental option).
        gate_fn: the gate (default ``nn.hard_sigmoid``, PyTorch's ``relu6(x + 3) / 6``).
        dtype, param_dtype, precision, kernel_init, bias_init: as in ``nn.Dense``.

    Shapes:
        input ``(N, H, W, C)``, output the same.

    Example:
        >>> ese = EffectiveSEModule()
        >>> x = jnp.ones((2, 7, 7, 64))
        >>> ese.apply(ese.init(jax.random.key(0), x), x).shape
        (2, 7, 7, 64)
    """

    add_maxpool: bool = False
    gate_fn: Callable[[Array], Array] = nn.hard_sigmoid
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: nn.initializers.Initializer = default_kernel_init
    bias_init: nn.initializers.Initializer = default_bias_init

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """``train`` has no effect (no statistics); every attention layer takes it."""
        check_image(x)
        dtype = compute_dtype(x, self.dtype, self.param_dtype)
        x = x.astype(dtype)
        s = _mean_hw(x, dtype, keepdims=True)
        if self.add_maxpool:
            s = 0.5 * s + 0.5 * jnp.max(x, axis=(1, 2), keepdims=True)
        s = nn.Dense(
            x.shape[-1],
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            name="fc",
        )(s)
        return x * _gate(self.gate_fn, s, dtype)


class ChannelAttn(nn.Module):
    """CBAM's channel attention: a shared MLP over average- and max-pooled channels, summed."""

    rd_ratio: float | None = None
    rd_channels: int | None = None
    rd_divisor: int | None = None
    act_fn: Callable[[Array], Array] = nn.relu
    gate_fn: Callable[[Array], Array] = nn.sigmoid
    mlp_bias: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: nn.initializers.Initializer = default_kernel_init
    bias_init: nn.initializers.Initializer = default_bias_init

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        rd = resolve_rd_channels(
            c, self.rd_ratio, self.rd_channels, self.rd_divisor, default_divisor=1
        )
        dtype = compute_dtype(x, self.dtype, self.param_dtype)
        x = x.astype(dtype)
        dense = dict(
            use_bias=self.mlp_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
        )
        fc1, fc2 = nn.Dense(rd, name="fc1", **dense), nn.Dense(c, name="fc2", **dense)
        mlp = lambda v: fc2(self.act_fn(fc1(v)))  # noqa: E731
        s = mlp(_mean_hw(x, dtype, keepdims=True)) + mlp(jnp.max(x, axis=(1, 2), keepdims=True))
        return x * _gate(self.gate_fn, s, dtype)


class SpatialAttn(nn.Module):
    """CBAM's spatial attention: conv + BatchNorm over the channel mean and max, gated."""

    kernel_size: int = 7
    gate_fn: Callable[[Array], Array] = nn.sigmoid
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: nn.initializers.Initializer = default_kernel_init

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        k = odd_kernel_size("spatial_kernel_size", self.kernel_size)
        dtype = compute_dtype(x, self.dtype, self.param_dtype)
        x = x.astype(dtype)
        mean = jnp.mean(x.astype(accumulation_dtype(dtype)), axis=-1, keepdims=True)
        s = jnp.concatenate([mean.astype(dtype), jnp.max(x, axis=-1, keepdims=True)], axis=-1)
        s = ConvNormAct(
            1,
            k,
            apply_act=False,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            kernel_init=self.kernel_init,
            name="conv",
        )(s, train)
        return x * _gate(self.gate_fn, s, dtype)


class CbamModule(nn.Module):
    """CBAM (linen), the twin of ``se_torch.CbamModule``: channel attention, then spatial.

    Parameters ``channel/fc1/kernel`` ``(C, rd)``, ``channel/fc2/kernel`` ``(rd, C)``,
    ``spatial/conv/conv/kernel`` ``(k, k, 2, 1)`` and ``spatial/conv/bn/*`` (with
    ``batch_stats``).

    Attributes:
        rd_ratio, rd_channels, rd_divisor: the MLP's hidden width, by default timm's
            ``make_divisible(C / 16, 1, round_limit=0.)``.
        spatial_kernel_size: the spatial conv's kernel size (odd, default 7).
        act_fn, gate_fn: the MLP activation and both gates.
        mlp_bias: whether the MLP's dense layers have biases (timm: no).
        bn_momentum, bn_epsilon: the spatial BatchNorm's, Flax convention.
        dtype, param_dtype, precision, kernel_init, bias_init: of the layers.

    Call as ``module.apply(variables, x, train=False)``; in training pass ``train=True,
    mutable=["batch_stats"]``.

    Shapes:
        input ``(N, H, W, C)``, output the same.

    Example:
        >>> cbam = CbamModule()
        >>> x = jnp.ones((2, 7, 7, 64))
        >>> cbam.apply(cbam.init(jax.random.key(0), x), x).shape
        (2, 7, 7, 64)
    """

    rd_ratio: float | None = None
    rd_channels: int | None = None
    rd_divisor: int | None = None
    spatial_kernel_size: int = 7
    act_fn: Callable[[Array], Array] = nn.relu
    gate_fn: Callable[[Array], Array] = nn.sigmoid
    mlp_bias: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: nn.initializers.Initializer = default_kernel_init
    bias_init: nn.initializers.Initializer = default_bias_init

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        check_image(x)
        dtypes = dict(
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            kernel_init=self.kernel_init,
        )
        x = ChannelAttn(
            self.rd_ratio,
            self.rd_channels,
            self.rd_divisor,
            self.act_fn,
            self.gate_fn,
            self.mlp_bias,
            bias_init=self.bias_init,
            name="channel",
            **dtypes,
        )(x)
        return SpatialAttn(
            self.spatial_kernel_size,
            self.gate_fn,
            self.bn_momentum,
            self.bn_epsilon,
            name="spatial",
            **dtypes,
        )(x, train)
