"""NNX building blocks: BatchNorm with PyTorch's statistics, ``PointwiseConv``, ``ConvNormAct``.

Each is the twin of the linen module of the same name and computes with the same function
(:func:`se_flax._batchnorm.batch_norm`, :func:`se_flax._layers.pointwise_conv`), so the same
variables give the same numbers in both front-ends. Variable paths mirror the linen ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from se_common import conv_padding
from se_flax._batchnorm import batch_norm
from se_flax._dtypes import Dtype, promoted_floating_dtype
from se_flax._layers import (
    conv_general_dilated,
    conv_kernel_init,
    default_bias_init,
    default_kernel_init,
    drop_block,
    drop_path,
    is_pointwise,
    pointwise_conv,
)

__all__ = [
    "BatchNorm",
    "Conv",
    "ConvNormAct",
    "DropBlock",
    "DropPath",
    "ModuleDef",
    "PointwiseConv",
    "conv",
    "conv_kernel_init",
    "held_param_dtype",
]

ones_init = nnx.initializers.ones_init()
ModuleDef = Callable[..., nnx.Module]  # an NNX module class, or a functools.partial of one
Array = jax.Array


def held_param_dtype(module: nnx.Module) -> jnp.dtype:
    """The promotion of the floating dtypes of every ``nnx.Param`` a module holds: what it
    computes in when no ``dtype`` is given (the linen modules' rule, for loaded weights too)."""
    # Every NNX module here holds parameters; float32 (the default param_dtype) is a fallback.
    return promoted_floating_dtype(jax.tree.leaves(nnx.state(module, nnx.Param)), jnp.float32)


class BatchNorm(nnx.Module):
    """Batch normalisation over the last (channel) axis with PyTorch's statistics (NNX).

    The twin of :class:`se_flax.BatchNorm` and of PyTorch's ``nn.BatchNorm2d``: the running
    variance takes the *unbiased* batch variance, the variance is computed in two passes, and
    ``num_batches_tracked`` (int32) counts training steps. Unlike ``flax.nnx.BatchNorm`` it
    converts to and from PyTorch with every buffer.

    Args:
        num_features: channels C.
        use_running_average: normalise with the running statistics (eval). ``model.eval()`` and
            ``model.train()`` set it; the default is training, as ``nnx.BatchNorm``'s.
        momentum: Flax's convention, ``running = momentum * running + (1 - momentum) * batch``;
            PyTorch's ``momentum=0.1`` is ``0.9`` here (the default).
        epsilon: added to the variance (PyTorch's ``eps``, default 1e-5).
        dtype: computation and output dtype (statistics are computed in at least float32).
        param_dtype: dtype of ``scale``, ``bias`` and the statistics when created; updates keep
            the dtype of the stored statistics.
        scale_init, bias_init: initialisers of ``scale`` (ones) and ``bias`` (zeros).
        rngs: random streams (the default initialisers use none).

    Variables: ``scale``, ``bias`` (``nnx.Param``); ``mean``, ``var``, ``num_batches_tracked``
    (``nnx.BatchStat``).

    Shapes:
        input ``(N, ..., C)``, output the same; ``N * prod(...)`` must be > 1 in training.

    Example:
        >>> bn = BatchNorm(16, rngs=nnx.Rngs(0))
        >>> y = bn(jnp.ones((4, 8, 8, 16)))  # training: updates bn.mean, bn.var
        >>> bn.eval()
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool = False,
        momentum: float = 0.9,
        epsilon: float = 1e-5,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        scale_init: nnx.Initializer = ones_init,
        bias_init: nnx.Initializer = default_bias_init,
        rngs: nnx.Rngs,
    ) -> None:
        c = num_features
        self.num_features = c
        self.use_running_average = use_running_average
        self.momentum = momentum
        self.epsilon = epsilon
        self.dtype = dtype
        key = rngs.params()  # one key for both, as nnx.BatchNorm
        self.scale = nnx.Param(scale_init(key, (c,), param_dtype))
        self.bias = nnx.Param(bias_init(key, (c,), param_dtype))
        self.mean = nnx.BatchStat(jnp.zeros((c,), param_dtype))
        self.var = nnx.BatchStat(jnp.ones((c,), param_dtype))
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))

    def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
        """Normalises ``x``; ``use_running_average`` overrides the module's mode for this call."""
        if x.ndim < 1 or x.shape[-1] != self.num_features:
            raise ValueError(
                f"BatchNorm has {self.num_features} features, got input shape {x.shape}"
            )
        if use_running_average is None:
            use_running_average = self.use_running_average
        y, updated = batch_norm(
            x,
            self.scale[...],
            self.bias[...],
            self.mean[...],
            self.var[...],
            use_running_average,
            self.momentum,
            self.epsilon,
            self.dtype,
        )
        if updated is not None:
            self.mean[...], self.var[...] = updated
            self.num_batches_tracked[...] = self.num_batches_tracked[...] + 1
        return y


class PointwiseConv(nnx.Module):
    """A 1x1 convolution (any stride, no padding) computed as one matmul (NNX).

    The twin of :class:`se_flax.PointwiseConv`: ``kernel`` ``(1, 1, in_features, features)``
    like ``nnx.Conv``'s, faster on CPUs.

    Example:
        >>> pw = PointwiseConv(64, 256, rngs=nnx.Rngs(0))
        >>> pw(jnp.ones((2, 8, 8, 64))).shape
        (2, 8, 8, 256)
    """

    def __init__(
        self,
        in_features: int,
        features: int,
        strides: tuple[int, int] = (1, 1),
        *,
        use_bias: bool = False,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        kernel_init: nnx.Initializer = default_kernel_init,
        bias_init: nnx.Initializer = default_bias_init,
        rngs: nnx.Rngs,
    ) -> None:
        shape = (1, 1, in_features, features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, param_dtype))
        self.bias = (
            nnx.Param(bias_init(rngs.params(), (features,), param_dtype)) if use_bias else None
        )
        self.strides = tuple(strides)
        self.dtype = dtype
        self.precision = precision

    def __call__(self, x: Array) -> Array:
        bias = None if self.bias is None else self.bias[...]
        return pointwise_conv(x, self.kernel[...], bias, self.strides, self.precision, self.dtype)


class Conv(nnx.Conv):
    """``nnx.Conv`` with :func:`se_flax.conv_general_dilated` (NNX): the same arguments,
    variables (``kernel`` ``(KH, KW, in_features / feature_group_count, out_features)``,
    ``bias``) and results, with grouped and depthwise convolutions on CPU through se_flax's
    kernels. A drop-in for ``nnx.Conv`` in a model of one's own.

    Example:
        >>> conv = Conv(64, 64, (3, 3), feature_group_count=64, rngs=nnx.Rngs(0))  # depthwise
        >>> conv(jnp.ones((2, 8, 8, 64))).shape
        (2, 8, 8, 64)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("conv_general_dilated", conv_general_dilated)
        super().__init__(*args, **kwargs)


def conv(
    in_features: int,
    features: int,
    kernel_size: tuple[int, int],
    strides: tuple[int, int],
    padding: Any,
    *,
    kernel_dilation: tuple[int, int] = (1, 1),
    feature_group_count: int = 1,
    rngs: nnx.Rngs,
    **options: Any,
) -> nnx.Module:
    """:class:`Conv` (``nnx.Conv`` with :func:`se_flax.conv_general_dilated`), or its faster
    twin :class:`PointwiseConv` for ungrouped 1x1 kernels."""
    if is_pointwise(kernel_size, feature_group_count, padding):
        return PointwiseConv(in_features, features, tuple(strides), rngs=rngs, **options)
    return Conv(
        in_features,
        features,
        tuple(kernel_size),
        tuple(strides),
        padding=padding,
        kernel_dilation=kernel_dilation,
        feature_group_count=feature_group_count,
        rngs=rngs,
        **options,
    )


class ConvNormAct(nnx.Module):
    """Conv (no bias) -> norm -> activation (NNX), the twin of :class:`se_flax.ConvNormAct`.

    Variables ``conv/kernel`` ``(k, k, in_features / groups, features)`` and ``bn/*``, mirroring
    timm's ``conv.weight`` and ``bn.*``. Padding is PyTorch's symmetric
    ``((stride - 1) + dilation * (k - 1)) // 2``.

    Args:
        in_features, features: input and output channels.
        kernel_size, stride, dilation, groups: of the convolution.
        apply_act: whether ``act_fn`` follows the norm.
        act_fn: the activation (default ``nnx.relu``).
        norm_layer: factory of the norm, called as ``norm_layer(features, dtype=...,
            param_dtype=..., rngs=...)`` (default :class:`BatchNorm`; ``nnx.BatchNorm`` fits).
        dtype, param_dtype, precision, kernel_init: of the convolution (and the norm's dtypes).
        rngs: random streams for initialisation.

    Shapes:
        input ``(N, H, W, in_features)``; output ``(N, H / stride, W / stride, features)``.

    Example:
        >>> cna = ConvNormAct(16, 32, 3, stride=2, rngs=nnx.Rngs(0))
        >>> cna(jnp.ones((2, 8, 8, 16))).shape
        (2, 4, 4, 32)
    """

    def __init__(
        self,
        in_features: int,
        features: int,
        kernel_size: int = 1,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        *,
        apply_act: bool = True,
        act_fn: Callable[[Array], Array] = nnx.relu,
        norm_layer: ModuleDef = BatchNorm,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        kernel_init: nnx.Initializer = default_kernel_init,
        rngs: nnx.Rngs,
    ) -> None:
        k, s, d = kernel_size, stride, dilation
        p = conv_padding(k, s, d)
        dtypes = {"dtype": dtype, "param_dtype": param_dtype}
        self.conv = conv(
            in_features,
            features,
            (k, k),
            (s, s),
            ((p, p), (p, p)),
            kernel_dilation=(d, d),
            feature_group_count=groups,
            use_bias=False,
            precision=precision,
            kernel_init=kernel_init,
            rngs=rngs,
            **dtypes,
        )
        self.bn = norm_layer(features, rngs=rngs, **dtypes)
        self.apply_act = apply_act
        self.act_fn = act_fn

    def __call__(self, x: Array) -> Array:
        y = self.bn(self.conv(x))
        return self.act_fn(y) if self.apply_act else y


class _Stochastic(nnx.Module):
    """A training-only layer drawing from the ``dropout`` stream of its ``rngs`` (as
    ``nnx.Dropout``): ``model.train()`` / ``model.eval()`` switch ``deterministic``."""

    def __init__(self, *, rngs: nnx.Rngs, deterministic: bool = False) -> None:
        self.deterministic = deterministic
        self.rngs = rngs["dropout"].fork()


class DropPath(_Stochastic):
    """Stochastic depth (timm's ``DropPath``): in training each sample zeroed with probability
    ``rate``, else scaled by ``1 / (1 - rate)``; the identity in eval mode (NNX)."""

    def __init__(self, rate: float, *, rngs: nnx.Rngs, deterministic: bool = False) -> None:
        super().__init__(rngs=rngs, deterministic=deterministic)
        self.rate = rate

    def __call__(self, x: Array) -> Array:
        return x if self.deterministic or not self.rate else drop_path(x, self.rate, self.rngs())


class DropBlock(_Stochastic):
    """DropBlock (timm's ``DropBlock2d``) with a :class:`se_common.DropBlock`'s rate, block
    size and gamma scale; the identity in eval mode (NNX)."""

    def __init__(self, drop: Any, *, rngs: nnx.Rngs, deterministic: bool = False) -> None:
        super().__init__(rngs=rngs, deterministic=deterministic)
        self.drop = drop

    def __call__(self, x: Array) -> Array:
        return x if self.deterministic else drop_block(x, self.drop, self.rngs())
