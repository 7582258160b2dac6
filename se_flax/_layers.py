"""Building blocks shared by the Flax modules: initialisers, the input check, dense layers with
their owner's options, convolutions (``PointwiseConv`` for 1x1, ``Conv`` with
``conv_general_dilated`` for the rest), the stem's ``max_pool`` and ``ConvNormAct``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from se_common import (
    check_feature_map,
    conv_padding,
    drop_rate,
    model_feature_info,
    pooled_features,
)
from se_flax._batchnorm import BatchNorm
from se_flax._dtypes import Dtype, accumulation_dtype, compute_dtype, held_param_dtype, mean
from se_flax._grouped import fusion_boundary, grouped_conv, kernels_built, ungrouped_on_kernels
from se_flax._rounded import NHWC, rounded_matmul, shifted_conv, windows

__all__ = [
    "Conv",
    "ConvNormAct",
    "ModuleDef",
    "PlannedBackbone",
    "PointwiseConv",
    "aa_pool",
    "avg_pool_2x2",
    "blur_pool",
    "check_input",
    "conv",
    "conv_general_dilated",
    "conv_kernel_init",
    "default_bias_init",
    "default_kernel_init",
    "dense",
    "drop_block",
    "drop_path",
    "is_pointwise",
    "max_pool",
    "pad",
    "planned_levels",
    "pointwise_conv",
]

ModuleDef = Callable[..., nn.Module]  # a linen module class, or a functools.partial of one

default_kernel_init = nn.initializers.lecun_normal()  # nn.Dense's and nn.Conv's defaults
default_bias_init = nn.initializers.zeros_init()
# PyTorch's kaiming_normal_(mode="fan_out", nonlinearity="relu"), as timm initialises convs.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def check_input(x: jax.Array, *, channels: int | None = None, spatial_dims: int | None = 2) -> None:
    """Clear errors unless ``x`` is a floating ``(N, *spatial, C)`` map.

    Args:
        channels: the C the module's weights are for; ``None`` accepts any.
        spatial_dims: the exact number of spatial axes; ``None`` accepts any >= 1.
    """
    if channels is None:
        channels = x.shape[-1] if x.ndim else 0
    check_feature_map(
        x.shape,
        x.dtype,
        jnp.issubdtype(x.dtype, jnp.floating),
        channels,
        channels_last=True,
        spatial_dims=spatial_dims,
    )


def dense(owner: nn.Module, features: int, *, name: str, use_bias: bool = True) -> nn.Dense:
    """``nn.Dense`` with its owner's ``dtype``, ``param_dtype``, ``precision``, ``kernel_init``
    and ``bias_init`` (the default bias init if the owner has none): the one place where the
    attention layers' options meet their dense layers."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=owner.dtype,
        param_dtype=owner.param_dtype,
        precision=owner.precision,
        kernel_init=owner.kernel_init,
        bias_init=getattr(owner, "bias_init", default_bias_init),
        name=name,
    )


def pooled_head(
    owner: nn.Module,
    x: jax.Array,
    train: bool,
    *,
    name: str,
    kernel_init: nn.initializers.Initializer = default_kernel_init,
    pool: bool = True,
) -> jax.Array:
    """A backbone's head, inside ``owner``'s compact call: the global average pool (unless
    ``x`` is pooled already: ``pool=False``), the dropout ``head_drop`` at ``owner.drop_rate``
    in training, and the classifier ``name`` with ``owner.num_classes`` outputs (none for 0:
    the pooled features), in ``owner``'s dtypes."""
    if pool:
        x = mean(x, (1, 2), compute_dtype(x, owner.dtype, held_param_dtype(owner)))
    if owner.drop_rate:
        x = nn.Dropout(owner.drop_rate, deterministic=not train, name="head_drop")(x)
    if owner.num_classes:
        x = nn.Dense(
            owner.num_classes,
            precision=owner.precision,
            dtype=owner.dtype,
            param_dtype=owner.param_dtype,
            kernel_init=kernel_init,
            name=name,
        )(x)
    return x


def pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    # Explicit symmetric padding as PyTorch's; "SAME" pads stride-2 convs asymmetrically.
    return ((k // 2, k // 2), (k // 2, k // 2))


class PointwiseConv(nn.Module):
    """A 1x1 convolution (any stride, no padding) computed as one matmul over ``(N*H*W, C)``.

    Parameters, initialisation and results are those of ``nn.Conv(features, (1, 1), strides)``
    (``kernel`` of shape ``(1, 1, C_in, features)``), so checkpoints and the converter see no
    difference. On XLA's CPU backend the matmul runs the forward pass 1.5-3x and the gradients
    up to 5x faster than the convolution does (measured at ResNet-50's 1x1 shapes, batch 8).
    """

    features: int
    strides: tuple[int, int] = (1, 1)
    use_bias: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: nn.initializers.Initializer = default_kernel_init
    bias_init: nn.initializers.Initializer = default_bias_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (1, 1, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        return pointwise_conv(x, kernel, bias, self.strides, self.precision, self.dtype)


def pointwise_conv(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    strides: tuple[int, int],
    precision: Any,
    dtype: Dtype | None,
) -> jax.Array:
    """A 1x1 convolution ``(N, H, W, C_in)`` -> ``(N, H / s, W / s, features)`` as one matmul,
    shared by the linen and NNX :class:`PointwiseConv`; ``kernel`` is ``(1, 1, C_in, features)``."""
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=dtype)
    x = x[:, :: strides[0], :: strides[1], :]
    # 16-bit inputs accumulate in float32, rounded once (as PyTorch's CPU and GPU kernels do):
    # XLA's CPU backend then runs bfloat16 matmuls on the CPU's bf16 units (AMX / AVX512-BF16),
    # 4-20x faster than with a bfloat16 result (measured on a 2-core Xeon with AMX). Its
    # gradients are computed the same way (se_flax._rounded), not as float32 matmuls.
    rows = x.reshape(-1, x.shape[-1])
    if accumulation_dtype(x.dtype) == x.dtype:
        y = jnp.matmul(rows, kernel[0, 0], precision=precision)
    else:
        y = rounded_matmul(rows, kernel[0, 0], precision)
    y = y.reshape(*x.shape[:-1], kernel.shape[-1])
    return y if bias is None else y + bias


# Below this many input channels the shifted matmuls are memory-bound and slower than XLA's
# convolution (8x56x56x64: 77 vs 133-232 GFLOP/s); from 128 on they are 2-4x faster.
SHIFTED_MATMUL_MIN_CHANNELS = 128


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Any,
    padding: Any,
    lhs_dilation: Any = None,
    rhs_dilation: Any = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    out_sharding: Any = None,
) -> jax.Array:
    """``lax.conv_general_dilated``, with grouped and depthwise convolutions on CPU through
    se_flax's kernels, and bfloat16 convolutions on CPU as shifted matmuls.

    Given to ``nn.Conv`` / ``nnx.Conv`` (their ``conv_general_dilated`` option) by
    :func:`conv` and :class:`Conv`: parameters, results and every other case are the
    convolution's.

    A grouped NHWC convolution (``feature_group_count > 1``, depthwise included) with any
    strides and kernel dilation and non-negative padding (explicit, ``"SAME"``, ``"VALID"``)
    runs on XLA's CPU backend se_flax's kernels (setup.py builds them;
    :func:`se_flax.kernels_built`), for the forward pass and both gradients: XLA's CPU
    convolution runs 3-130x slower forward and 40-700x slower backward there (docs'
    benchmark findings). float32 and float64 run as they are; bfloat16 and float16 are
    computed in float32 and rounded once (their gradients too). Forward mode, higher
    derivatives and ``vmap`` work; other backends keep XLA's convolution.

    An ungrouped float32 or float64 convolution with a kernel larger than 1x1 and at most 64
    input channels (stems, first stages) runs the same kernels where they beat XLA's: its
    forward pass for at most 64 output channels, its kernel gradient, and its input gradient
    from 8 input channels on (``se_flax._grouped``'s rules; measured at batch 8 on a 2-core
    Xeon: a 3-channel 3x3 stem 3.9x faster forward and about 3x in its kernel gradient,
    ResNet's 56x56x64 3x3 1.8x forward and 3.3x forward + both gradients). XLA's convolution
    serves the other passes.

    An
    ungrouped, undilated NHWC bfloat16 convolution with at least 128 input channels (padding
    explicit and non-negative, or ``"SAME"`` / ``"VALID"``) computes,
    on XLA's CPU backend, one matmul per kernel tap accumulated in float32 and rounded once:
    XLA then runs them on the CPU's bf16 units (AMX / AVX512-BF16), where its bfloat16
    convolution does not. Measured on a 2-core Xeon with AMX, ResNet-50's 3x3 shapes at batch
    8: 460-830 GFLOP/s against XLA's 160-280. On CPU its input and kernel gradients are
    computed the same way, from the bfloat16 cotangent (86-1009 GFLOP/s against XLA's 59-268);
    forward mode, higher derivatives and ``vmap`` work. Other backends (GPU, TPU) keep XLA's
    convolution and its gradients.
    """
    args = (window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers)
    pads = padding
    if isinstance(padding, str) and lhs.ndim == rhs.ndim == 4:  # "SAME", "VALID": explicit pads
        dilated = [
            (k - 1) * d + 1 for k, d in zip(rhs.shape[:2], rhs_dilation or (1, 1), strict=True)
        ]
        pads = lax.padtype_to_pads(lhs.shape[1:3], dilated, window_strides, padding)
    shifted = (
        lhs.dtype == jnp.bfloat16
        and rhs.dtype == jnp.bfloat16
        and preferred_element_type is None
        and out_sharding is None
        and feature_group_count == 1
        and batch_group_count == 1
        and lhs.ndim == 4
        and rhs.ndim == 4
        and lhs.shape[-1] == rhs.shape[2] >= SHIFTED_MATMUL_MIN_CHANNELS
        and not isinstance(pads, str)
        and all(p >= 0 for pair in pads for p in pair)  # (negative pads crop: XLA's case)
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
    )
    wide = jnp.float64 if lhs.dtype == jnp.float64 else jnp.float32  # what the kernels run
    grouped = (
        (
            feature_group_count > 1
            or (  # stems, first stages: se_flax's kernels where they beat XLA's (_grouped.py)
                rhs.ndim == 4
                and lhs.dtype in (jnp.float32, jnp.float64)
                and ungrouped_on_kernels(rhs.shape)
            )
        )
        and lhs.dtype == rhs.dtype
        and lhs.dtype in (jnp.float32, jnp.float64, jnp.bfloat16, jnp.float16)
        and preferred_element_type in (None, lhs.dtype, wide)
        and out_sharding is None
        and batch_group_count == 1
        and lhs.ndim == 4
        and rhs.ndim == 4
        and not isinstance(pads, str)
        and all(p >= 0 for pair in pads for p in pair)
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
        and kernels_built()
    )
    if grouped:  # 16 bits: accumulated in float32, rounded once (gradients too, by autodiff)
        y = grouped_conv(
            lhs.astype(wide),
            rhs.astype(wide),
            feature_group_count,
            window_strides,
            pads,
            rhs_dilation or (1, 1),
            precision,
        )
        return y.astype(preferred_element_type or lhs.dtype)
    if not shifted:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            *args,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
            out_sharding=out_sharding,
        )
    strides = tuple(int(s) for s in window_strides)
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    return shifted_conv(lhs, rhs, strides, pads, precision)


class Conv(nn.Conv):
    """``nn.Conv`` with :func:`conv_general_dilated`: the same attributes, parameters
    (``kernel`` ``(KH, KW, C_in / feature_group_count, features)``, ``bias``), names and
    results, with grouped and depthwise convolutions on CPU through se_flax's kernels (and
    bfloat16 ones as shifted matmuls). A drop-in for ``nn.Conv`` in a model of one's own.

    Example:
        >>> conv = Conv(64, (3, 3), feature_group_count=64)  # depthwise
        >>> x = jnp.ones((2, 8, 8, 64))
        >>> conv.apply(conv.init(jax.random.key(0), x), x).shape
        (2, 8, 8, 64)
    """

    conv_general_dilated: Any = conv_general_dilated


def max_pool(x: jax.Array, window: int = 3, stride: int = 2) -> jax.Array:
    """Max pooling of ``(N, H, W, C)`` over ``window x window`` windows, padded by
    ``window // 2`` with ``-inf`` on each side: PyTorch's ``nn.MaxPool2d(window, stride,
    window // 2)``, the ResNet stem's pool.

    ``nn.max_pool``'s values, computed as the maximum of ``window**2`` strided slices, which
    XLA's CPU backend runs faster in bfloat16 (4 vs 17 ms at a ResNet-50's stem, batch 8, on a
    2-core Xeon; float32 the same). Derivatives (a custom JVP, so forward and reverse mode
    alike) route each window's tangent from its first maximum in row-major window order, or
    from its last NaN where it holds one, as PyTorch's CPU ``max_pool2d`` does
    (``nn.max_pool``'s derivative takes the largest number there); the gradient sums each input's
    contributions in the order of the outputs it feeds, as PyTorch does. XLA fuses these
    strided slices and selects: a ResNet stem's pool forward and backward (8x112x112x64,
    float32, 2-core Xeon) 95 ms with ``nn.max_pool``'s derivative (four index arrays and a
    scatter), 7.6 with these (PyTorch channels_last 7.3).

    Shapes:
        input ``(N, H, W, C)``; output ``(N, (H - 1) // stride + 1, (W - 1) // stride + 1, C)``
        for an odd ``window``.

    Raises:
        ValueError: for an even or non-positive ``window`` or a non-positive ``stride``.
    """
    if window < 1 or window % 2 == 0 or stride < 1:
        raise ValueError(
            f"max_pool needs an odd window >= 1 and a stride >= 1, got {window=}, {stride=}"
        )
    return _max_pool(x, window, stride)


def _pool_taps(x: jax.Array, window: int, stride: int, fill: float) -> list[jax.Array]:
    """The pool's ``window**2`` strided slices of ``x`` padded by ``window // 2`` with ``fill``."""
    p = window // 2
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=fill)
    return windows(xp, (window, window), (stride, stride))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    return functools.reduce(jnp.maximum, _pool_taps(x, window, stride, -jnp.inf))


@_max_pool.defjvp
def _max_pool_jvp(window, stride, primals, tangents):
    (x,), (t,) = primals, tangents
    taps = _pool_taps(x, window, stride, -jnp.inf)
    y = functools.reduce(jnp.maximum, taps)
    # Each window's first maximum, or its last NaN (PyTorch's CPU kernel's choices).
    index = jnp.int8 if len(taps) < 127 else jnp.int32
    none = jnp.asarray(len(taps), index)
    first = jnp.full(y.shape, none)
    for k, tap in enumerate(taps):
        take = jnp.isnan(tap) | ((tap == y) & (first == none))
        first = jnp.where(take, jnp.asarray(k, index), first)
    first = fusion_boundary(first)  # computed once (fused, XLA computed it in each select)
    # A select chain, linear in t: its transpose adds the taps' contributions in descending
    # tap order, i.e. each input's in the order of the outputs it feeds (PyTorch's order).
    out = jnp.zeros_like(y)
    for k, tk in reversed(list(enumerate(_pool_taps(t, window, stride, 0)))):
        out = jnp.where(first == k, tk, out)
    return y, out


def _accumulated(x: jax.Array) -> jax.Array:
    """``x`` in at least float32, so 16-bit pools accumulate as PyTorch's CPU kernels do."""
    return x if jnp.finfo(x.dtype).bits >= 32 else x.astype(jnp.float32)


def avg_pool_2x2(x: jax.Array, *, ceil_mode: bool = False) -> jax.Array:
    """PyTorch's ``nn.AvgPool2d(2)`` over ``(N, H, W, C)``: the mean of each 2x2 window at
    stride 2. ``ceil_mode=False`` drops an odd last row or column; ``ceil_mode=True`` (with
    ``count_include_pad=False``, timm's ``avg_down`` shortcut) keeps it as a window of the
    elements it has.

    Shapes:
        input ``(N, H, W, C)``; output ``(N, H // 2, W // 2, C)``, or with ``ceil_mode``
        ``(N, ceil(H / 2), ceil(W / 2), C)``.
    """
    n, h, w, c = x.shape
    if not ceil_mode:
        x = x[:, : h - h % 2, : w - w % 2]
        h, w = h - h % 2, w - w % 2
    ph, pw = h % 2, w % 2
    y = _accumulated(x)
    if ph or pw:
        y = jnp.pad(y, ((0, 0), (0, ph), (0, pw), (0, 0)))
    y = y.reshape(n, (h + ph) // 2, 2, (w + pw) // 2, 2, c).sum((2, 4))
    if ph or pw:  # the elements each window has: 2 per side, 1 at an odd end
        rows = jnp.full(((h + ph) // 2,), 2.0, y.dtype).at[-1].set(2.0 - ph)
        cols = jnp.full(((w + pw) // 2,), 2.0, y.dtype).at[-1].set(2.0 - pw)
        return (y / (rows[:, None, None] * cols[None, :, None])).astype(x.dtype)
    return (y / 4).astype(x.dtype)


def blur_pool(x: jax.Array, stride: int = 2, pad_mode: str = "reflect") -> jax.Array:
    """timm's ``BlurPool2d`` with its 3x3 filter over ``(N, H, W, C)``: padded by 1
    (``"reflect"``, or ``"constant"`` zeros: timm's ``blurpc``), blurred by ``[1, 2, 1] / 4``
    along each axis per channel, at ``stride``.

    Shapes:
        input ``(N, H, W, C)``; output ``(N, (H - 1) // stride + 1, (W - 1) // stride + 1, C)``.
    """
    if pad_mode not in ("reflect", "constant"):
        raise ValueError(f"pad_mode must be 'reflect' or 'constant', got {pad_mode!r}")
    p = conv_padding(3, stride)  # timm's get_padding
    y = jnp.pad(_accumulated(x), ((0, 0), (p, p), (p, p), (0, 0)), mode=pad_mode)
    h = (y.shape[1] - 3) // stride + 1
    w = (y.shape[2] - 3) // stride + 1
    weights = (0.25, 0.5, 0.25)
    y = sum(c * y[:, i : i + stride * (h - 1) + 1 : stride] for i, c in enumerate(weights))
    y = sum(c * y[:, :, j : j + stride * (w - 1) + 1 : stride] for j, c in enumerate(weights))
    return y.astype(x.dtype)


def aa_pool(name: str, x: jax.Array, stride: int = 2) -> jax.Array:
    """The anti-aliasing layer a config names (``se_common.AA_LAYERS``), as timm's
    ``create_aa``: a 2x2 average pool (``"avg"``) or a blur pool (``"blur"``, ``"blurpc"``)."""
    if name == "avg":
        if stride != 2:
            raise ValueError(f"the avg anti-aliasing layer pools 2x2 at stride 2, got {stride}")
        return avg_pool_2x2(x)
    if name in ("blur", "blurpc"):
        return blur_pool(x, stride, "reflect" if name == "blur" else "constant")
    raise ValueError(f"unknown aa_layer {name!r}; known: avg, blur, blurpc")


def drop_path(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Stochastic depth (timm's ``DropPath``) in training: each sample of ``x`` zeroed with
    probability ``rate``, else scaled by ``1 / (1 - rate)``."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return x * (mask.astype(x.dtype) / keep)


def drop_block(x: jax.Array, drop: Any, key: jax.Array) -> jax.Array:
    """DropBlock (timm's ``DropBlock2d``) in training over ``(N, H, W, C)``: blocks of
    ``drop.block_size`` (a :class:`se_common.DropBlock`) zeroed across channels around seeds
    drawn at timm's rate, the rest scaled by ``H * W`` over the kept count (per batch)."""
    n, h, w, _ = x.shape
    kh, kw, gamma = drop.block_and_seed_rate(h, w)
    seeds = jax.random.bernoulli(key, gamma, (n, h, w, 1)).astype(jnp.float32)
    blocks = jax.lax.reduce_window(  # the max over each block around a pixel; 0-padded
        seeds,
        jnp.zeros((), seeds.dtype),
        jax.lax.max,
        (1, kh, kw, 1),
        (1, 1, 1, 1),
        ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)),
    )
    blocks = blocks[:, (kh + 1) % 2 : (kh + 1) % 2 + h, (kw + 1) % 2 : (kw + 1) % 2 + w]
    keep = 1.0 - blocks
    scale = keep.size / (keep.sum() + 1e-7)
    return x * jax.lax.stop_gradient(keep.astype(x.dtype) * scale.astype(x.dtype))


def is_pointwise(kernel_size: tuple[int, int], feature_group_count: int, padding: Any) -> bool:
    """Whether a convolution is an ungrouped, unpadded 1x1, which :class:`PointwiseConv` (linen
    and NNX) computes as one matmul."""
    return tuple(kernel_size) == (1, 1) and feature_group_count == 1 and padding == pad(1)


def conv(
    features: int,
    kernel_size: tuple[int, int],
    strides: tuple[int, int],
    padding: Any,
    *,
    kernel_dilation: tuple[int, int] = (1, 1),
    feature_group_count: int = 1,
    name: str,
    **options: Any,
) -> nn.Module:
    """:class:`Conv` (``nn.Conv`` with :func:`conv_general_dilated`), or its faster twin
    :class:`PointwiseConv` for ungrouped 1x1 kernels."""
    if is_pointwise(kernel_size, feature_group_count, padding):
        return PointwiseConv(features, tuple(strides), name=name, **options)
    return Conv(
        features,
        kernel_size,
        strides,
        padding,
        kernel_dilation=kernel_dilation,
        feature_group_count=feature_group_count,
        name=name,
        **options,
    )


class ConvNormAct(nn.Module):
    """Conv (no bias) -> BatchNorm -> activation, the twin of ``se_torch.ConvNormAct``.

    Parameters ``conv/kernel`` ``(k, k, C_in / groups, features)`` and ``bn/*``, mirroring
    timm's ``ConvNormAct`` keys ``conv.weight`` and ``bn.*``. Padding is PyTorch's symmetric
    ``((stride - 1) + dilation * (k - 1)) // 2``; ungrouped 1x1 convs run as
    :class:`PointwiseConv`.

    Attributes:
        features: output channels.
        kernel_size, stride, dilation, groups: of the convolution.
        apply_act: whether ``act_fn`` follows the BatchNorm.
        act_fn: the activation (default ``nn.relu``).
        norm_layer: factory of the norm, called with ``use_running_average``, ``dtype``,
            ``param_dtype`` and ``name`` (default :class:`BatchNorm`; for other options,
            ``functools.partial(BatchNorm, momentum=0.7, epsilon=1e-3)``).
        dtype, param_dtype, precision, kernel_init: of the convolution (and the norm's dtypes).

    Call as ``module.apply(variables, x, train=False)`` (``mutable=["batch_stats"]`` in training).

    Shapes:
        input ``(N, H, W, C_in)``; output ``(N, H / stride, W / stride, features)``.

    Example:
        >>> cna = ConvNormAct(32, 3, stride=2)
        >>> x = jnp.ones((2, 8, 8, 16))
        >>> cna.apply(cna.init(jax.random.key(0), x), x).shape
        (2, 4, 4, 32)
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    apply_act: bool = True
    act_fn: Callable[[jax.Array], jax.Array] = nn.relu
    norm_layer: ModuleDef = BatchNorm
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: nn.initializers.Initializer = default_kernel_init

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        k, s, d = self.kernel_size, self.stride, self.dilation
        p = conv_padding(k, s, d)
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        y = conv(
            self.features,
            (k, k),
            (s, s),
            ((p, p), (p, p)),
            kernel_dilation=(d, d),
            feature_group_count=self.groups,
            use_bias=False,
            precision=self.precision,
            kernel_init=self.kernel_init,
            name="conv",
            **dtypes,
        )(x)
        y = self.norm_layer(use_running_average=not train, name="bn", **dtypes)(y)
        return self.act_fn(y) if self.apply_act else y


def planned_levels(
    config: Any, config_type: type, num_classes: Any, in_chans: Any, out_indices: Any
) -> tuple[int, ...]:
    """Clear errors for the options of a backbone planned by a ``config_type`` config (the
    EfficientNet and RegNet families: its ``check_options``); the levels of ``out_indices``."""
    if not isinstance(config, config_type):
        raise TypeError(f"config must be a se_common.{config_type.__name__}, got {config!r}")
    return config.check_options(num_classes, in_chans, out_indices)


class PlannedBackbone:
    """What the linen backbones planned by a config share (the EfficientNet and RegNet
    families): their options checked when built, and timm's ``feature_info``,
    ``num_features`` and ``head_hidden_size``. A mixin before ``nn.Module``; the module has the
    fields ``config``, ``num_classes``, ``in_chans``, ``features_only``, ``out_indices``,
    ``drop_rate`` and ``drop_path_rate``."""

    config_type: ClassVar[type]

    def __post_init__(self) -> None:
        planned_levels(
            self.config, self.config_type, self.num_classes, self.in_chans, self.out_indices
        )
        drop_rate("drop_rate", self.drop_rate)
        self.config.blocks(self.drop_path_rate)  # checks the rate
        super().__post_init__()

    @property
    def levels(self) -> tuple[int, ...]:
        return planned_levels(
            self.config, self.config_type, self.num_classes, self.in_chans, self.out_indices
        )

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """timm's ``feature_info`` of every level (of ``out_indices`` with ``features_only``)."""
        return model_feature_info(self.config, self.features_only, self.levels)

    @property
    def num_features(self) -> int:
        """timm's ``num_features``: the channels the global pool takes."""
        return pooled_features(self.config)

    @property
    def head_hidden_size(self) -> int:
        """timm's ``head_hidden_size``: the width the classifier takes."""
        return self.config.head_hidden_size
