"""Selective Kernel unit (Li et al., CVPR 2019) in Flax NNX, the twin of the linen module.

Variable paths mirror timm's keys as the linen ones do: ``paths_{i}/conv``, ``paths_{i}/bn``,
``attn/fc_reduce``, ``attn/bn``, ``attn/fc_select``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from se_common import (
    out_channels_or,
    positive_int,
    resolve_rd_channels,
    selective_kernel_paths,
)
from se_flax._dtypes import Dtype, compute_dtype
from se_flax._layers import check_input, default_kernel_init
from se_flax._selective_kernel import select, selective_kernel_attn, split_paths
from se_flax.nnx._layers import BatchNorm, ConvNormAct, ModuleDef, held_param_dtype

__all__ = ["SelectiveKernel", "SelectiveKernelAttn"]

Array = jax.Array


class SelectiveKernelAttn(nnx.Module):
    """Fuse and select (NNX): ``(N, P, H, W, C)`` -> softmax weights over P, ``(N, P, 1, 1, C)``.

    Args:
        channels: C.
        num_paths: P (default 2).
        attn_channels: width of the hidden layer (default 32).
        act_fn: the activation (default ``nnx.relu``).
        norm_layer: factory of the norm (default :class:`BatchNorm`, as timm's).
        dtype, param_dtype, precision, kernel_init: of the layers.
        rngs: random streams for initialisation.
    """

    def __init__(
        self,
        channels: int,
        num_paths: int = 2,
        attn_channels: int = 32,
        *,
        act_fn: Callable[[Array], Array] = nnx.relu,
        norm_layer: ModuleDef = BatchNorm,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        kernel_init: nnx.Initializer = default_kernel_init,
        rngs: nnx.Rngs,
    ) -> None:
        self.channels = positive_int("channels", channels)
        self.num_paths = positive_int("num_paths", num_paths)
        dense = dict(
            use_bias=False,
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            kernel_init=kernel_init,
            rngs=rngs,
        )
        self.fc_reduce = nnx.Linear(channels, attn_channels, **dense)
        self.bn = norm_layer(attn_channels, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc_select = nnx.Linear(attn_channels, channels * num_paths, **dense)
        self.act_fn = act_fn
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        if x.ndim != 5 or x.shape[1] != self.num_paths or x.shape[-1] != self.channels:
            raise ValueError(
                f"SelectiveKernelAttn expects (N, {self.num_paths}, H, W, {self.channels}), "
                f"got shape {x.shape}"
            )
        dtype = compute_dtype(x, self.dtype, held_param_dtype(self))
        return selective_kernel_attn(x, self.fc_reduce, self.bn, self.fc_select, self.act_fn, dtype)


class SelectiveKernel(nnx.Module):
    """Selective Kernel convolution (NNX), the twin of :class:`se_flax.SelectiveKernel`.

    Split: one conv + norm + activation per path (by default a 3x3 and a 3x3 with dilation 2).
    Fuse: sum the paths, pool, reduce. Select: a softmax over the paths, per channel.

    Args:
        in_features: input channels ``C_in``.
        features: output channels (default ``in_features``; PyTorch's ``out_channels``).
        kernel_size: receptive field of each path (default ``(3, 5)``).
        stride, dilation, groups: of every path's conv (``groups`` capped at ``features``).
        rd_ratio, rd_channels, rd_divisor: width of the attention's hidden layer, by default
            timm's ``make_divisible(features / 16, 8)`` (round_limit 0.9).
        keep_3x3: make every path a 3x3 conv, dilated to reach its kernel size.
        split_input: each path sees its own ``C_in / paths`` slice of the input.
        act_fn: the paths' activation (the attention keeps ReLU, as timm's).
        norm_layer: factory of the paths' norm (the attention keeps :class:`BatchNorm`).
        dtype, param_dtype, precision, kernel_init: of the layers.
        rngs: random streams for initialisation.

    Shapes:
        input ``(N, H, W, in_features)``; output ``(N, H / stride, W / stride, features)``.

    Example:
        >>> sk = SelectiveKernel(64, 128, stride=2, rngs=nnx.Rngs(0))
        >>> sk(jnp.ones((2, 8, 8, 64))).shape
        (2, 4, 4, 128)
    """

    def __init__(
        self,
        in_features: int,
        features: int | None = None,
        kernel_size: int | Sequence[int] | None = None,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        *,
        rd_ratio: float | None = None,
        rd_channels: int | None = None,
        rd_divisor: int | None = None,
        keep_3x3: bool = True,
        split_input: bool = True,
        act_fn: Callable[[Array], Array] = nnx.relu,
        norm_layer: ModuleDef = BatchNorm,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        kernel_init: nnx.Initializer = default_kernel_init,
        rngs: nnx.Rngs,
    ) -> None:
        self.in_features = positive_int("in_features", in_features)
        paths = selective_kernel_paths(
            list(kernel_size) if isinstance(kernel_size, tuple) else kernel_size,
            dilation,
            keep_3x3,
        )
        out = out_channels_or(features, in_features, "features")
        if split_input and in_features % len(paths):
            raise ValueError(
                f"split_input needs in_channels divisible by the {len(paths)} paths, got "
                f"in_channels={in_features}"
            )
        path_in = in_features // len(paths) if split_input else in_features
        options = dict(
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            kernel_init=kernel_init,
            rngs=rngs,
        )
        for i, (k, d) in enumerate(paths):
            layer = ConvNormAct(
                path_in,
                out,
                k,
                stride,
                d,
                min(out, groups),
                act_fn=act_fn,
                norm_layer=norm_layer,
                **options,
            )
            setattr(self, f"paths_{i}", layer)
        rd = resolve_rd_channels(out, rd_ratio, rd_channels, rd_divisor, round_limit=0.9)
        self.attn = SelectiveKernelAttn(out, len(paths), rd, **options)
        self.num_paths = len(paths)
        self.split_input = split_input

    def __call__(self, x: Array) -> Array:
        check_input(x, channels=self.in_features)
        paths = [getattr(self, f"paths_{i}") for i in range(self.num_paths)]
        return select(paths, split_paths(x, self.num_paths, self.split_input), self.attn)
