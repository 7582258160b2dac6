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

from se_common import eca_kernel_size, odd_kernel_size, resolve_rd_channels
from se_flax._batchnorm import BatchNorm
from se_flax._dtypes import Dtype, apply_accumulated, compute_dtype, held_param_dtype, mean
from se_flax._layers import (
    ConvNormAct,
    ModuleDef,
    check_input,
    default_bias_init,
    default_kernel_init,
    dense,
)

__all__ = [
    "CbamModule",
    "ChannelAttn",
    "EcaModule",
    "EffectiveSEModule",
    "SpatialAttn",
    "channel_attn",
    "eca",
    "effective_se",
    "spatial_attn",
]

Array = jax.Array


Layer = Callable[[Array], Array]


# The computations, shared by the linen modules below and their NNX twins in se_flax.nnx; each
# takes its layers as callables and computes in ``dtype`` (see se_flax._dtypes).
def eca(x: Array, conv: Layer, gate_fn: Layer, dtype: jnp.dtype) -> Array:
    """ECA: ``x * gate(conv1d(mean_hw(x)))``; ``conv`` maps ``(N, C, 1)`` to ``(N, C, 1)``."""
    y = conv(mean(x, (1, 2), dtype)[..., None])
    return x.astype(dtype) * apply_accumulated(gate_fn, y[:, None, None, :, 0], dtype)


def effective_se(x: Array, fc: Layer, gate_fn: Layer, add_maxpool: bool, dtype: jnp.dtype) -> Array:
    """Effective SE: ``x * gate(fc(pool(x)))``, pool the mean, or ``(mean + max) / 2``."""
    x = x.astype(dtype)
    s = mean(x, (1, 2), dtype, keepdims=True)
    if add_maxpool:
        s = 0.5 * s + 0.5 * jnp.max(x, axis=(1, 2), keepdims=True)
    return x * apply_accumulated(gate_fn, fc(s), dtype)


def channel_attn(
    x: Array, fc1: Layer, fc2: Layer, act_fn: Layer, gate_fn: Layer, dtype: jnp.dtype
) -> Array:
    """CBAM's channel attention: one MLP over the mean- and max-pooled channels, summed."""
    x = x.astype(dtype)
    mlp = lambda v: fc2(act_fn(fc1(v)))  # noqa: E731
    s = mlp(mean(x, (1, 2), dtype, keepdims=True)) + mlp(jnp.max(x, axis=(1, 2), keepdims=True))
    return x * apply_accumulated(gate_fn, s, dtype)


def spatial_attn(x: Array, conv_norm: Layer, gate_fn: Layer, dtype: jnp.dtype) -> Array:
    """CBAM's spatial attention: ``conv_norm`` over the channel mean and max, gated."""
    x = x.astype(dtype)
    s = jnp.concatenate(
        [mean(x, -1, dtype, keepdims=True), jnp.max(x, axis=-1, keepdims=True)], axis=-1
    )
    return x * apply_accumulated(gate_fn, conv_norm(s), dtype)


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
        check_input(x)
        k = eca_kernel_size(x.shape[-1], self.kernel_size, self.gamma, self.beta)
        dtype = compute_dtype(x, self.dtype, held_param_dtype(self))
        conv = nn.Conv(
            1,
            (k,),
            padding=(((k - 1) // 2, (k - 1) // 2),),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            kernel_init=self.kernel_init,
            name="conv",
        )
        return eca(x, conv, self.gate_fn, dtype)


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
        check_input(x)
        dtype = compute_dtype(x, self.dtype, held_param_dtype(self))
        fc = dense(self, x.shape[-1], name="fc")
        return effective_se(x, fc, self.gate_fn, self.add_maxpool, dtype)


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
        dtype = compute_dtype(x, self.dtype, held_param_dtype(self))
        fc1 = dense(self, rd, name="fc1", use_bias=self.mlp_bias)
        fc2 = dense(self, c, name="fc2", use_bias=self.mlp_bias)
        return channel_attn(x, fc1, fc2, self.act_fn, self.gate_fn, dtype)


class SpatialAttn(nn.Module):
    """CBAM's spatial attention: conv + BatchNorm over the channel mean and max, gated."""

    kernel_size: int = 7
    gate_fn: Callable[[Array], Array] = nn.sigmoid
    norm_layer: ModuleDef = BatchNorm
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: nn.initializers.Initializer = default_kernel_init

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        k = odd_kernel_size("spatial_kernel_size", self.kernel_size)
        dtype = compute_dtype(x, self.dtype, held_param_dtype(self))
        conv = ConvNormAct(
            1,
            k,
            apply_act=False,
            norm_layer=self.norm_layer,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            kernel_init=self.kernel_init,
            name="conv",
        )
        return spatial_attn(x, lambda s: conv(s, train), self.gate_fn, dtype)


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
        norm_layer: factory of the spatial attention's norm (default :class:`BatchNorm`), as
            in :class:`ConvNormAct`.
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
    norm_layer: ModuleDef = BatchNorm
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: nn.initializers.Initializer = default_kernel_init
    bias_init: nn.initializers.Initializer = default_bias_init

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        check_input(x)
        options = dict(
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
            **options,
        )(x)
        return SpatialAttn(
            self.spatial_kernel_size, self.gate_fn, self.norm_layer, name="spatial", **options
        )(x, train)
