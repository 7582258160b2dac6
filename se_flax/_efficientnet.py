"""The EfficientNet family in Flax linen (NHWC), twins of ``se_torch``'s, built from block
strings (:class:`se_common.EfficientNetConfig`).

Blocks are built from their :class:`se_common.MBBlockSpec` alone, with every layer option once
in the :class:`MBLayers` the backbone hands each block. Submodule names mirror timm's
state_dict keys (``blocks.1.0.conv_dw`` is ``blocks_1_0/conv_dw``, a mixed conv's
``conv_dw.2`` is ``conv_dw_2``, SE's ``se.conv_reduce`` a ``Dense`` ``se/conv_reduce``), so
:mod:`se_flax.convert` maps them one to one. Depthwise convolutions are ``Conv`` kernels
``(k, k, 1, C)`` with ``feature_group_count=C`` (PyTorch's ``(C, 1, k, k)``); with
``pad_type="same"`` every conv pads as TensorFlow's "SAME" for the input's size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from se_common import (
    EfficientNetConfig,
    MBBlockSpec,
    PretrainedCfg,
    conv_padding,
    conv_parts,
    lookup,
)
from se_flax._batchnorm import BatchNorm
from se_flax._dtypes import Dtype, compute_dtype, held_param_dtype, mean
from se_flax._grouped import fusion_boundary
from se_flax._layers import (
    PlannedBackbone,
    check_input,
    conv,
    drop_path,
    planned_levels,
    pooled_head,
)
from se_flax._squeeze_excite import squeeze_excite

__all__ = [
    "ACTIVATIONS",
    "GATES",
    "MB_BLOCKS",
    "ConvBnAct",
    "DepthwiseSeparableConv",
    "EdgeResidual",
    "EfficientNet",
    "InvertedResidual",
    "MBLayers",
    "MBSqueezeExcite",
    "MobileNetV3",
    "conv_pads",
]

Array = jax.Array
Activation = Callable[[Array], Array]


# Activations by their se_common.ACTIVATIONS names.
ACTIVATIONS: dict[str, Activation] = {
    "relu": nn.relu,
    "relu6": nn.relu6,
    "hard_swish": nn.hard_swish,
    "silu": nn.silu,
    "mish": jax.nn.mish,
}
# SE gates by their se_common.SE_GATES names (jax's hard_sigmoid: relu6(x + 3) / 6, PyTorch's;
# XLA divides by the constant 6 as a product with 1 / 6, one rounding from PyTorch's quotient).
GATES: dict[str, Activation] = {"sigmoid": nn.sigmoid, "hard_sigmoid": nn.hard_sigmoid}


def conv_pads(kernel_size: int, stride: int, dilation: int, pad_type: str) -> Any:
    """A conv's padding: PyTorch's symmetric ``((s - 1) + d * (k - 1)) // 2``, or with
    ``pad_type="same"`` TensorFlow's ``"SAME"`` (timm's ``Conv2dSame``; static pads where they do
    not depend on the input size)."""
    if pad_type == "same" and not (stride == 1 and (dilation * (kernel_size - 1)) % 2 == 0):
        return "SAME"
    p = conv_padding(kernel_size, stride, dilation)
    return ((p, p), (p, p))


def fan_out_init(groups: int) -> nn.initializers.Initializer:
    """timm's ``_init_weight_goog`` for a conv: normal, std ``sqrt(2 / fan_out)``, the fan-out
    counted per group (``k * k * out / groups``)."""
    return nn.initializers.variance_scaling(2.0 * groups, "fan_out", "normal")


# timm's classifier init: uniform in +-1 / sqrt(out).
classifier_init = nn.initializers.variance_scaling(1.0 / 3, "fan_out", "uniform")


@dataclasses.dataclass(frozen=True)
class MBOptions:
    """Every option of an EfficientNet-family backbone's layers, once (shared by the linen
    :class:`MBLayers` and its NNX twin).

    Attributes:
        pad_type: ``""`` or ``"same"`` (:data:`se_common.PAD_TYPES`).
        bn_eps: the norms' epsilon.
        norm_layer: factory of the norms (default :class:`BatchNorm`, PyTorch's statistics),
            called with ``epsilon`` and the dtypes.
        dtype, param_dtype, precision: of every layer.
    """

    pad_type: str = ""
    bn_eps: float = 1e-5
    norm_layer: Any = BatchNorm
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @property
    def _dtypes(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "param_dtype": self.param_dtype}

    def _conv_options(
        self, k: int, stride: int, dilation: int, groups: int, bias: bool = False
    ) -> dict[str, Any]:
        return {
            "kernel_size": (k, k),
            "strides": (stride, stride),
            "padding": conv_pads(k, stride, dilation, self.pad_type),
            "kernel_dilation": (dilation, dilation),
            "feature_group_count": groups,
            "use_bias": bias,
            "kernel_init": fan_out_init(groups),
            "precision": self.precision,
            **self._dtypes,
        }


def apply_parts(
    x: Array, convs: Sequence[Callable[[Array], Array]], splits: Sequence[int]
) -> Array:
    """Each conv on its slice of ``x``'s channels, concatenated (one conv: on all of ``x``)."""
    if len(convs) == 1:
        return convs[0](x)
    parts = jnp.split(x, np.cumsum(splits)[:-1].tolist(), axis=-1)
    return jnp.concatenate([c(p) for c, p in zip(convs, parts, strict=True)], axis=-1)


@dataclasses.dataclass(frozen=True)
class MBLayers(MBOptions):
    """How a linen EfficientNet builds its layers: the options of :class:`MBOptions`, one
    method per kind of layer."""

    def conv(
        self,
        x: Array,
        out: int,
        kernels: Sequence[int],
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        *,
        bias: bool = False,
        name: str,
    ) -> Array:
        """A conv (``name``), or a mixed conv (``name_0``, ``name_1``, ...), applied to ``x``."""
        parts = conv_parts(x.shape[-1], out, kernels, groups)
        several = len(parts) > 1
        convs = [
            conv(
                co,
                name=f"{name}_{i}" if several else name,
                **self._conv_options(k, stride, dilation, g, bias),
            )
            for i, (_, co, k, g) in enumerate(parts)
        ]
        return apply_parts(x, convs, [p[0] for p in parts])

    def norm(self, x: Array, train: bool, act: Activation | None, *, name: str) -> Array:
        """A norm (``name``) in the mode ``train``, then ``act`` if any (timm's
        ``BatchNormAct2d``)."""
        y = self.norm_layer(
            use_running_average=not train, epsilon=self.bn_eps, name=name, **self._dtypes
        )(x)
        return y if act is None else act(y)


class MBSqueezeExcite(nn.Module):
    """The SE of EfficientNet's blocks (linen), the twin of ``se_torch.MBSqueezeExcite``:
    ``Dense`` layers ``conv_reduce`` (C, rd) and ``conv_expand`` (rd, C) with biases, an
    activation between (the block's, or MobileNetV3's ReLU), a gate.

    Attributes:
        rd_channels: the reduced width.
        act_fn: the activation.
        gate_fn: the gate (sigmoid, or MobileNetV3's ``nn.hard_sigmoid``).
        dtype, param_dtype, precision: as in :class:`se_flax.SqueezeExcite`.

    Example:
        >>> se = MBSqueezeExcite(4, nn.silu)
        >>> x = jnp.ones((2, 7, 7, 96))
        >>> se.apply(se.init(jax.random.key(0), x), x).shape
        (2, 7, 7, 96)
    """

    rd_channels: int
    act_fn: Activation = nn.relu
    gate_fn: Activation = nn.sigmoid
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: nn.initializers.Initializer = fan_out_init(1)

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        check_input(x, spatial_dims=None)

        def dense(features: int, name: str) -> nn.Dense:
            return nn.Dense(
                features,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                precision=self.precision,
                kernel_init=self.kernel_init,
                name=name,
            )

        dtype = compute_dtype(x, self.dtype, held_param_dtype(self))
        return squeeze_excite(
            x,
            dense(self.rd_channels, "conv_reduce"),
            dense(x.shape[-1], "conv_expand"),
            self.act_fn,
            self.gate_fn,
            dtype,
        )


class _Block(nn.Module):
    """Base of the blocks, built as ``Block(spec, layers)`` and applied as ``block(x, train)``;
    training with ``drop_path`` takes a ``"dropout"`` rng."""

    spec: MBBlockSpec
    layers: MBLayers = MBLayers()

    @property
    def act(self) -> Activation:
        return ACTIVATIONS[self.spec.act]

    def se(self, y: Array, train: bool) -> Array:
        s, layers = self.spec, self.layers
        if not s.se_channels:
            return y
        se = MBSqueezeExcite(
            s.se_channels,
            ACTIVATIONS[s.se_act],
            GATES[s.se_gate],
            precision=layers.precision,
            name="se",
            **layers._dtypes,
        )
        return se(y, train=train)

    def residual(self, y: Array, x: Array, train: bool) -> Array:
        s = self.spec
        if not s.has_skip:
            return y
        if s.drop_path and train:
            y = drop_path(y, s.drop_path, self.make_rng("dropout"))
        return y + x


class DepthwiseSeparableConv(_Block):
    """timm's ``DepthwiseSeparableConv`` (``ds``, ``dsa``): depthwise conv, norm-act, SE,
    pointwise conv, norm (activated for ``dsa``), residual. NHWC."""

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        s, L = self.spec, self.layers
        y = L.conv(x, s.mid_channels, s.kernel_size, s.stride, s.dilation, s.groups, name="conv_dw")
        y = self.se(L.norm(y, train, self.act, name="bn1"), train)
        y = L.conv(y, s.out_channels, s.pw_kernel_size, name="conv_pw")
        y = L.norm(y, train, self.act if s.pw_act else None, name="bn2")
        return self.residual(y, x, train)


class InvertedResidual(_Block):
    """timm's ``InvertedResidual`` (``ir``, MBConv): pointwise expansion, norm-act, depthwise
    conv, norm-act, SE, pointwise projection, norm, residual. NHWC."""

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        s, L = self.spec, self.layers
        y = L.conv(x, s.mid_channels, s.exp_kernel_size, name="conv_pw")
        y = L.norm(y, train, self.act, name="bn1")
        y = L.conv(y, s.mid_channels, s.kernel_size, s.stride, s.dilation, s.groups, name="conv_dw")
        y = self.se(L.norm(y, train, self.act, name="bn2"), train)
        y = L.conv(y, s.out_channels, s.pw_kernel_size, name="conv_pwl")
        return self.residual(L.norm(y, train, None, name="bn3"), x, train)


class EdgeResidual(_Block):
    """timm's ``EdgeResidual`` (``er``, FusedMBConv): a full expansion conv, norm-act, SE,
    pointwise projection, norm, residual. NHWC."""

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        s, L = self.spec, self.layers
        y = L.conv(
            x, s.mid_channels, s.kernel_size, s.stride, s.dilation, s.groups, name="conv_exp"
        )
        y = self.se(L.norm(y, train, self.act, name="bn1"), train)
        y = L.conv(y, s.out_channels, s.pw_kernel_size, name="conv_pwl")
        return self.residual(L.norm(y, train, None, name="bn2"), x, train)


class ConvBnAct(_Block):
    """timm's ``ConvBnAct`` (``cn``): conv, norm-act, residual with ``skip``. NHWC."""

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        s, L = self.spec, self.layers
        y = L.conv(x, s.out_channels, s.kernel_size, s.stride, s.dilation, s.groups, name="conv")
        return self.residual(L.norm(y, train, self.act, name="bn1"), x, train)


# Block classes by their se_common.BLOCK_KINDS names (the ResNet family's are BLOCKS).
MB_BLOCKS: dict[str, type[_Block]] = {
    "ds": DepthwiseSeparableConv,
    "dsa": DepthwiseSeparableConv,
    "ir": InvertedResidual,
    "er": EdgeResidual,
    "cn": ConvBnAct,
}


def check_options(
    config: Any, num_classes: Any, in_chans: Any, out_indices: Sequence[int] | None
) -> tuple[int, ...]:
    """Clear errors for an EfficientNet's options; the feature levels of ``out_indices``."""
    return planned_levels(config, EfficientNetConfig, num_classes, in_chans, out_indices)


class EfficientNet(PlannedBackbone, nn.Module):
    """An EfficientNet-family network described by a :class:`se_common.EfficientNetConfig`
    (linen, NHWC), the twin of ``se_torch.EfficientNet``.

    Attributes:
        config: the block strings and builder arguments.
        num_classes: classifier outputs; 0 returns the pooled features.
        in_chans: input channels (checked against the input).
        features_only: return the feature maps of ``out_indices`` (no head conv, classifier).
        out_indices: feature levels (``config.feature_info()``), default all.
        drop_rate: dropout before the classifier in training.
        drop_path_rate: stochastic depth in training: block ``i`` of ``n`` drops its branch at
            ``drop_path_rate * i / n`` (timm's). With either rate, training takes a
            ``"dropout"`` rng: ``apply(..., rngs={"dropout": key})``.
        norm_layer: factory of the norms (default :class:`BatchNorm`), called with
            ``use_running_average``, ``epsilon`` (the config's ``bn_eps``), the dtypes, ``name``.
        dtype, param_dtype, precision: of every layer.
        pretrained_cfg: the data config of pretrained weights (set by ``from_pretrained``).

    Call as ``model.apply(variables, x, train=False)``; in training pass ``train=True,
    mutable=["batch_stats"]``.

    Example:
        >>> model = create_model("efficientnet_b0")
        >>> x = jnp.ones((1, 224, 224, 3))
        >>> variables = model.init(jax.random.key(0), x)
        >>> model.apply(variables, x).shape
        (1, 1000)
    """

    config: EfficientNetConfig
    num_classes: int = 1000
    in_chans: int = 3
    features_only: bool = False
    out_indices: Sequence[int] | None = None
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_layer: Any = BatchNorm
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    pretrained_cfg: PretrainedCfg | None = None

    config_type = EfficientNetConfig

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array | list[Array]:
        cfg = self.config
        check_input(x, channels=self.in_chans)
        layers = MBLayers(
            pad_type=cfg.pad_type,
            bn_eps=cfg.bn_eps,
            norm_layer=self.norm_layer,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
        )
        act = ACTIVATIONS[cfg.act_layer]
        x = layers.conv(x, cfg.stem_channels, (cfg.stem_kernel_size,), 2, name="conv_stem")
        x = layers.norm(x, train, act, name="bn1")
        stem_level, taps = cfg.feature_taps()
        features = {} if stem_level is None else {stem_level: x}
        for i, spec in enumerate(cfg.blocks(self.drop_path_rate)):
            block = lookup(MB_BLOCKS, spec.block_type, "block", "se_flax.MB_BLOCKS")
            block_ = block(spec, layers, name=f"blocks_{spec.stage}_{spec.index}")
            x = fusion_boundary(block_(x, train))  # computed once (se_flax._grouped)
            if i in taps:
                features[taps[i]] = x
        if self.features_only:
            return [features[i] for i in self.levels]
        if cfg.efficient_head:  # MobileNetV3's: pool, conv_head (bias), activation
            x = mean(x, (1, 2), compute_dtype(x, self.dtype, held_param_dtype(self)), True)
            x = act(layers.conv(x, cfg.head_features, (1,), bias=cfg.head_bias, name="conv_head"))
            x = x.reshape(x.shape[0], -1)
        elif cfg.head_features:
            x = layers.conv(x, cfg.head_features, (1,), name="conv_head")
            x = layers.norm(x, train, act, name="bn2")
        return pooled_head(
            self,
            x,
            train,
            name="classifier",
            kernel_init=classifier_init,
            pool=not cfg.efficient_head,
        )


class MobileNetV3(EfficientNet):
    """A MobileNetV3-family network (timm's ``mobilenetv3.py``: MobileNetV3, LCNet, FBNetV3,
    HardCoReNAS) described by a :class:`se_common.MobileNetV3Config` (linen, NHWC), the twin
    of ``se_torch.MobileNetV3``: an :class:`EfficientNet` with the efficient head (global
    pool, 1x1 ``conv_head`` with bias, activation, classifier).

    Example:
        >>> model = create_model("mobilenetv3_large_100")
        >>> x = jnp.ones((1, 224, 224, 3))
        >>> variables = model.init(jax.random.key(0), x)
        >>> model.apply(variables, x).shape
        (1, 1000)
    """
