"""SE's relatives in Flax NNX (NHWC): ECA, effective SE and CBAM, twins of the linen modules.

Each computes with the linen module's function (:mod:`se_flax._attention`) and has its variable
paths, so converted weights fill both. Constructors take the channels C and ``rngs``; the
backbones build them by name through :data:`se_flax.nnx.ATTN_LAYERS` as
``factory(channels, dtype=..., param_dtype=..., rngs=...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from se_common import eca_kernel_size, odd_kernel_size, positive_int, resolve_rd_channels
from se_flax._attention import channel_attn, eca, effective_se, spatial_attn
from se_flax._dtypes import Dtype, compute_dtype
from se_flax._layers import check_input, default_bias_init, default_kernel_init
from se_flax.nnx._layers import BatchNorm, ConvNormAct, ModuleDef, held_param_dtype

__all__ = ["CbamModule", "ChannelAttn", "EcaModule", "EffectiveSEModule", "SpatialAttn"]

Array = jax.Array


class EcaModule(nnx.Module):
    """Efficient Channel Attention (NNX), the twin of :class:`se_flax.EcaModule`.

    ``y = x * gate(conv1d(mean_hw(x)))``; variable ``conv/kernel`` of shape ``(k, 1, 1)``.

    Args:
        channels: C (sets the adaptive kernel size and is checked against the input).
        kernel_size: the 1-D kernel size (odd); by default adaptive from C as timm's.
        gamma, beta: the adaptive rule's constants (2 and 1).
        gate_fn: the gate (default ``nnx.sigmoid``).
        dtype, param_dtype, precision, kernel_init: as in ``nnx.Conv``.
        rngs: random streams for initialisation.

    Example:
        >>> eca = EcaModule(256, rngs=nnx.Rngs(0))
        >>> eca(jnp.ones((2, 7, 7, 256))).shape
        (2, 7, 7, 256)
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int | None = None,
        gamma: float = 2,
        beta: float = 1,
        gate_fn: Callable[[Array], Array] = nnx.sigmoid,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        kernel_init: nnx.Initializer = default_kernel_init,
        rngs: nnx.Rngs,
    ) -> None:
        self.channels = positive_int("channels", channels)
        k = eca_kernel_size(channels, kernel_size, gamma, beta)
        self.conv = nnx.Conv(
            1,
            1,
            (k,),
            padding=(((k - 1) // 2, (k - 1) // 2),),
            use_bias=False,
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            kernel_init=kernel_init,
            rngs=rngs,
        )
        self.gate_fn = gate_fn
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        check_input(x, channels=self.channels)
        return eca(x, self.conv, self.gate_fn, compute_dtype(x, self.dtype, held_param_dtype(self)))


class EffectiveSEModule(nnx.Module):
    """Effective SE (NNX), the twin of :class:`se_flax.EffectiveSEModule`.

    ``y = x * hard_sigmoid(fc(mean_hw(x)))``; variables ``fc/kernel`` ``(C, C)``, ``fc/bias``.

    Args:
        channels: C.
        add_maxpool: pool with ``0.5 * mean + 0.5 * max`` (timm's experimental option).
        gate_fn: the gate (default ``nnx.hard_sigmoid``, PyTorch's ``relu6(x + 3) / 6``).
        dtype, param_dtype, precision, kernel_init, bias_init: as in ``nnx.Linear``.
        rngs: random streams for initialisation.

    Example:
        >>> ese = EffectiveSEModule(64, rngs=nnx.Rngs(0))
        >>> ese(jnp.ones((2, 7, 7, 64))).shape
        (2, 7, 7, 64)
    """

    def __init__(
        self,
        channels: int,
        *,
        add_maxpool: bool = False,
        gate_fn: Callable[[Array], Array] = nnx.hard_sigmoid,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        kernel_init: nnx.Initializer = default_kernel_init,
        bias_init: nnx.Initializer = default_bias_init,
        rngs: nnx.Rngs,
    ) -> None:
        self.channels = positive_int("channels", channels)
        self.fc = nnx.Linear(
            channels,
            channels,
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            kernel_init=kernel_init,
            bias_init=bias_init,
            rngs=rngs,
        )
        self.add_maxpool = add_maxpool
        self.gate_fn = gate_fn
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        check_input(x, channels=self.channels)
        dtype = compute_dtype(x, self.dtype, held_param_dtype(self))
        return effective_se(x, self.fc, self.gate_fn, self.add_maxpool, dtype)


class ChannelAttn(nnx.Module):
    """CBAM's channel attention (NNX): a shared MLP over average- and max-pooled channels."""

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float | None = None,
        rd_channels: int | None = None,
        rd_divisor: int | None = None,
        act_fn: Callable[[Array], Array] = nnx.relu,
        gate_fn: Callable[[Array], Array] = nnx.sigmoid,
        mlp_bias: bool = False,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        kernel_init: nnx.Initializer = default_kernel_init,
        bias_init: nnx.Initializer = default_bias_init,
        rngs: nnx.Rngs,
    ) -> None:
        self.channels = positive_int("channels", channels)
        rd = resolve_rd_channels(channels, rd_ratio, rd_channels, rd_divisor, default_divisor=1)
        dense = dict(
            use_bias=mlp_bias,
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            kernel_init=kernel_init,
            bias_init=bias_init,
            rngs=rngs,
        )
        self.fc1 = nnx.Linear(channels, rd, **dense)
        self.fc2 = nnx.Linear(rd, channels, **dense)
        self.act_fn = act_fn
        self.gate_fn = gate_fn
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        check_input(x, channels=self.channels)
        dtype = compute_dtype(x, self.dtype, held_param_dtype(self))
        return channel_attn(x, self.fc1, self.fc2, self.act_fn, self.gate_fn, dtype)


class SpatialAttn(nnx.Module):
    """CBAM's spatial attention (NNX): conv + norm over the channel mean and max, gated."""

    def __init__(
        self,
        kernel_size: int = 7,
        *,
        gate_fn: Callable[[Array], Array] = nnx.sigmoid,
        norm_layer: ModuleDef = BatchNorm,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        kernel_init: nnx.Initializer = default_kernel_init,
        rngs: nnx.Rngs,
    ) -> None:
        k = odd_kernel_size("spatial_kernel_size", kernel_size)
        self.conv = ConvNormAct(
            2,
            1,
            k,
            apply_act=False,
            norm_layer=norm_layer,
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            kernel_init=kernel_init,
            rngs=rngs,
        )
        self.gate_fn = gate_fn
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        check_input(x)
        dtype = compute_dtype(x, self.dtype, held_param_dtype(self))
        return spatial_attn(x, self.conv, self.gate_fn, dtype)


class CbamModule(nnx.Module):
    """CBAM (NNX), the twin of :class:`se_flax.CbamModule`: channel attention, then spatial.

    Variables ``channel/fc1/kernel`` ``(C, rd)``, ``channel/fc2/kernel`` ``(rd, C)``,
    ``spatial/conv/conv/kernel`` ``(k, k, 2, 1)`` and ``spatial/conv/bn/*``.

    Args:
        channels: C.
        rd_ratio, rd_channels, rd_divisor: the MLP's hidden width, by default timm's
            ``make_divisible(C / 16, 1, round_limit=0.)``.
        spatial_kernel_size: the spatial conv's kernel size (odd, default 7).
        act_fn, gate_fn: the MLP activation and both gates.
        mlp_bias: whether the MLP's dense layers have biases (timm: no).
        norm_layer: factory of the spatial attention's norm (default :class:`BatchNorm`).
        dtype, param_dtype, precision, kernel_init, bias_init: of the layers.
        rngs: random streams for initialisation.

    Example:
        >>> cbam = CbamModule(64, rngs=nnx.Rngs(0))
        >>> cbam(jnp.ones((2, 7, 7, 64))).shape
        (2, 7, 7, 64)
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float | None = None,
        rd_channels: int | None = None,
        rd_divisor: int | None = None,
        spatial_kernel_size: int = 7,
        act_fn: Callable[[Array], Array] = nnx.relu,
        gate_fn: Callable[[Array], Array] = nnx.sigmoid,
        mlp_bias: bool = False,
        norm_layer: ModuleDef = BatchNorm,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        kernel_init: nnx.Initializer = default_kernel_init,
        bias_init: nnx.Initializer = default_bias_init,
        rngs: nnx.Rngs,
    ) -> None:
        self.channels = positive_int("channels", channels)
        options = dict(
            gate_fn=gate_fn,
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            kernel_init=kernel_init,
            rngs=rngs,
        )
        self.channel = ChannelAttn(
            channels,
            rd_ratio=rd_ratio,
            rd_channels=rd_channels,
            rd_divisor=rd_divisor,
            act_fn=act_fn,
            mlp_bias=mlp_bias,
            bias_init=bias_init,
            **options,
        )
        self.spatial = SpatialAttn(spatial_kernel_size, norm_layer=norm_layer, **options)

    def __call__(self, x: Array) -> Array:
        check_input(x, channels=self.channels)
        return self.spatial(self.channel(x))
