"""Selective Kernel unit (Li et al., CVPR 2019) in Flax linen (NHWC), twin of ``se_torch``'s.

Parameter paths mirror timm's ``SelectiveKernel`` keys: ``paths_{i}/conv``, ``paths_{i}/bn``,
``attn/fc_reduce``, ``attn/bn``, ``attn/fc_select``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from se_common import out_channels_or, resolve_rd_channels, selective_kernel_paths
from se_flax._batchnorm import BatchNorm
from se_flax._dtypes import Dtype, accumulation_dtype, compute_dtype, held_param_dtype, mean
from se_flax._layers import ConvNormAct, ModuleDef, check_input, default_kernel_init, dense

__all__ = [
    "SelectiveKernel",
    "SelectiveKernelAttn",
    "select",
    "selective_kernel_attn",
    "split_paths",
]

Layer = Callable[[jax.Array], jax.Array]

Array = jax.Array


class SelectiveKernelAttn(nn.Module):
    """Fuse and select: ``(N, P, H, W, C)`` -> softmax weights over P, ``(N, P, 1, 1, C)``.

    ``softmax_P(fc_select(act(bn(fc_reduce(mean_hw(sum_P x))))))``, the twin of
    ``se_torch.SelectiveKernelAttn``; C is read from the input.

    Attributes:
        num_paths: P (default 2).
        attn_channels: width of the hidden layer (default 32).
        act_fn: the activation (default ``nn.relu``).
        norm_layer: factory of the norm, as in :class:`ConvNormAct` (default :class:`BatchNorm`
            with PyTorch's defaults, as timm's).
        dtype, param_dtype, precision, kernel_init: of the layers.
    """

    num_paths: int = 2
    attn_channels: int = 32
    act_fn: Callable[[Array], Array] = nn.relu
    norm_layer: ModuleDef = BatchNorm
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: nn.initializers.Initializer = default_kernel_init

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        c = x.shape[-1]
        dtype = compute_dtype(x, self.dtype, held_param_dtype(self))
        fc_reduce = dense(self, self.attn_channels, name="fc_reduce", use_bias=False)
        bn = self.norm_layer(
            use_running_average=not train,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="bn",
        )
        fc_select = dense(self, c * self.num_paths, name="fc_select", use_bias=False)
        return selective_kernel_attn(x, fc_reduce, bn, fc_select, self.act_fn, dtype)


def selective_kernel_attn(
    x: Array, fc_reduce: Layer, bn: Layer, fc_select: Layer, act_fn: Layer, dtype: jnp.dtype
) -> Array:
    """Fuse and select, shared by the linen and NNX modules: ``(N, P, H, W, C)`` -> softmax
    weights over P, ``(N, P, 1, 1, C)``; ``fc_select`` maps to ``P * C``."""
    n, p, _, _, c = x.shape
    s = mean(jnp.sum(x.astype(dtype), axis=1), (1, 2), dtype, keepdims=True)
    s = fc_select(act_fn(bn(fc_reduce(s))))
    s = s.reshape(n, p, 1, 1, c)  # PyTorch's view(N, P, C, 1, 1)
    acc = accumulation_dtype(dtype)
    return jax.nn.softmax(s.astype(acc), axis=1).astype(dtype)


def split_paths(x: Array, num_paths: int, split_input: bool) -> list[Array]:
    """Each path's input: its own ``C_in / num_paths`` slice with ``split_input``, else ``x``."""
    if not split_input:
        return [x] * num_paths
    if x.shape[-1] % num_paths:
        raise ValueError(
            f"split_input needs in_channels divisible by the {num_paths} paths, got "
            f"in_channels={x.shape[-1]}"
        )
    return jnp.split(x, num_paths, axis=-1)


def select(paths: Sequence[Layer], inputs: Sequence[Array], attn: Layer) -> Array:
    """The paths' outputs stacked on axis 1, weighted by ``attn`` of them, summed over paths."""
    y = jnp.stack([path(xi) for path, xi in zip(paths, inputs, strict=True)], axis=1)
    return jnp.sum(y * attn(y), axis=1)


class SelectiveKernel(nn.Module):
    """Selective Kernel convolution (linen), the twin of ``se_torch.SelectiveKernel``.

    Split: one conv + BatchNorm + ReLU per path, by default a 3x3 and a 3x3 with dilation 2.
    Fuse: sum the paths, pool, reduce. Select: a softmax over the paths, per channel, weights
    their sum. ``C_in`` comes from the input.

    Attributes:
        features: output channels (default: the input's; PyTorch's ``out_channels``).
        kernel_size: receptive field of each path (default ``(3, 5)``).
        stride, dilation, groups: of every path's conv (``groups`` capped at ``features``).
        rd_ratio, rd_channels, rd_divisor: width of the attention's hidden layer, by default
            timm's ``make_divisible(features / 16, 8)`` (round_limit 0.9).
        keep_3x3: make every path a 3x3 conv, dilated to reach its kernel size.
        split_input: each path sees its own ``C_in / paths`` slice of the input.
        act_fn: the paths' activation (the attention keeps ReLU, as timm's).
        norm_layer: factory of the paths' norm, as in :class:`ConvNormAct` (the attention keeps
            a default :class:`BatchNorm`, as timm's).
        dtype, param_dtype, precision, kernel_init: of the layers.

    Call as ``module.apply(variables, x, train=False)``; in training pass ``train=True,
    mutable=["batch_stats"]``.

    Shapes:
        input ``(N, H, W, C_in)``; output ``(N, H / stride, W / stride, features)``.

    Example:
        >>> sk = SelectiveKernel(features=128, stride=2)
        >>> x = jnp.ones((2, 8, 8, 64))
        >>> sk.apply(sk.init(jax.random.key(0), x), x).shape
        (2, 4, 4, 128)
    """

    features: int | None = None
    kernel_size: int | Sequence[int] | None = None
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    rd_ratio: float | None = None
    rd_channels: int | None = None
    rd_divisor: int | None = None
    keep_3x3: bool = True
    split_input: bool = True
    act_fn: Callable[[Array], Array] = nn.relu
    norm_layer: ModuleDef = BatchNorm
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: nn.initializers.Initializer = default_kernel_init

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        check_input(x)
        in_channels = x.shape[-1]
        kernel_size = self.kernel_size
        if isinstance(kernel_size, tuple):  # linen may hand a list attribute back as a tuple
            kernel_size = list(kernel_size)
        paths = selective_kernel_paths(kernel_size, self.dilation, self.keep_3x3)
        out = out_channels_or(self.features, in_channels, "features")
        inputs = split_paths(x, len(paths), self.split_input)
        options = dict(
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            kernel_init=self.kernel_init,
        )
        path_layers = [
            ConvNormAct(
                out,
                k,
                self.stride,
                d,
                min(out, self.groups),
                act_fn=self.act_fn,
                norm_layer=self.norm_layer,
                name=f"paths_{i}",
                **options,
            )
            for i, (k, d) in enumerate(paths)
        ]
        rd = resolve_rd_channels(
            out, self.rd_ratio, self.rd_channels, self.rd_divisor, round_limit=0.9
        )
        attn = SelectiveKernelAttn(len(paths), rd, name="attn", **options)
        return select(
            [lambda v, layer=layer: layer(v, train) for layer in path_layers],
            inputs,
            lambda y: attn(y, train),
        )
