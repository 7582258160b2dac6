"""The EfficientNet family in Flax NNX (NHWC), the third front-end of one design: the
architecture is a :class:`se_common.EfficientNetConfig`, blocks are built from their
:class:`se_common.MBBlockSpec`, and attribute names mirror the linen modules' (``blocks_1_0``,
``conv_dw``, ``conv_dw_0``, ``se/conv_reduce``), so the same converted variables fill both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from se_common import (
    EfficientNetConfig,
    MBBlockSpec,
    PretrainedCfg,
    conv_parts,
    lookup,
    model_feature_info,
)
from se_common import drop_rate as checked_rate
from se_flax._dtypes import Dtype, compute_dtype, mean
from se_flax._efficientnet import (
    ACTIVATIONS,
    GATES,
    MBOptions,
    apply_parts,
    check_options,
    classifier_init,
    fan_out_init,
)
from se_flax._grouped import fusion_boundary
from se_flax._layers import check_input
from se_flax._squeeze_excite import squeeze_excite
from se_flax.nnx._layers import BatchNorm, DropPath, conv, held_param_dtype

__all__ = [
    "MB_BLOCKS",
    "ConvBnAct",
    "DepthwiseSeparableConv",
    "EdgeResidual",
    "EfficientNet",
    "InvertedResidual",
    "MBLayers",
    "MBSqueezeExcite",
    "MobileNetV3",
]

Array = jax.Array
Activation = Callable[[Array], Array]


@dataclasses.dataclass(frozen=True)
class MBLayers(MBOptions):
    """How an NNX EfficientNet builds its layers (the twin of :class:`se_flax.MBLayers`);
    ``norm_layer`` is called as ``nnx.BatchNorm`` is, with ``epsilon``."""

    norm_layer: Any = BatchNorm

    def convs(
        self,
        owner: nnx.Module,
        name: str,
        inp: int,
        out: int,
        kernels: Sequence[int],
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        *,
        bias: bool = False,
        rngs: nnx.Rngs,
    ) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """Builds a conv (``owner.name``) or a mixed conv's parts (``owner.name_i``); returns
        their attribute names and input splits, for :meth:`apply`."""
        parts = conv_parts(inp, out, kernels, groups)
        names = tuple(name if len(parts) == 1 else f"{name}_{i}" for i in range(len(parts)))
        for n, (ci, co, k, g) in zip(names, parts, strict=True):
            options = self._conv_options(k, stride, dilation, g, bias)
            setattr(owner, n, conv(ci, co, rngs=rngs, **options))
        return names, tuple(p[0] for p in parts)

    def norm(self, channels: int, *, rngs: nnx.Rngs) -> nnx.Module:
        return self.norm_layer(channels, epsilon=self.bn_eps, rngs=rngs, **self._dtypes)


def _apply(owner: nnx.Module, conv: tuple[tuple[str, ...], tuple[int, ...]], x: Array) -> Array:
    names, splits = conv
    return apply_parts(x, [getattr(owner, n) for n in names], splits)


class MBSqueezeExcite(nnx.Module):
    """The SE of EfficientNet's blocks (NNX), the twin of ``se_torch.MBSqueezeExcite``:
    ``nnx.Linear`` layers ``conv_reduce`` and ``conv_expand`` with biases, an activation
    between (the block's, or MobileNetV3's ReLU), a gate (sigmoid, or the hard sigmoid).

    Example:
        >>> se = MBSqueezeExcite(96, 4, nnx.silu, rngs=nnx.Rngs(0))
        >>> se(jnp.ones((2, 7, 7, 96))).shape
        (2, 7, 7, 96)
    """

    def __init__(
        self,
        channels: int,
        rd_channels: int,
        act_fn: Activation = nnx.relu,
        gate_fn: Activation = nnx.sigmoid,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        rngs: nnx.Rngs,
    ) -> None:
        dense = {
            "dtype": dtype,
            "param_dtype": param_dtype,
            "precision": precision,
            "kernel_init": fan_out_init(1),
            "rngs": rngs,
        }
        self.conv_reduce = nnx.Linear(channels, rd_channels, **dense)
        self.conv_expand = nnx.Linear(rd_channels, channels, **dense)
        self.act_fn, self.gate_fn = act_fn, gate_fn
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        check_input(x, channels=self.conv_reduce.in_features, spatial_dims=None)
        dtype = compute_dtype(x, self.dtype, held_param_dtype(self))
        return squeeze_excite(
            x, self.conv_reduce, self.conv_expand, self.act_fn, self.gate_fn, dtype
        )


class _Block(nnx.Module):
    """Base of the NNX blocks, built as ``Block(spec, layers, rngs=rngs)``: SE, stochastic
    depth and the residual sum of ``spec``."""

    def __init__(self, spec: MBBlockSpec, layers: MBLayers, *, rngs: nnx.Rngs) -> None:
        self.act_fn = ACTIVATIONS[spec.act]
        self.has_skip = spec.has_skip
        self.se = (
            MBSqueezeExcite(
                spec.mid_channels,
                spec.se_channels,
                ACTIVATIONS[spec.se_act],
                GATES[spec.se_gate],
                precision=layers.precision,
                rngs=rngs,
                **layers._dtypes,
            )
            if spec.se_channels
            else None
        )
        self.drop_path = (
            DropPath(spec.drop_path, rngs=rngs) if spec.drop_path and spec.has_skip else None
        )

    def attend(self, y: Array) -> Array:
        return y if self.se is None else self.se(y)

    def residual(self, y: Array, x: Array) -> Array:
        if not self.has_skip:
            return y
        if self.drop_path is not None:
            y = self.drop_path(y)
        return y + x


class DepthwiseSeparableConv(_Block):
    """timm's ``DepthwiseSeparableConv`` (``ds``, ``dsa``). NHWC."""

    def __init__(self, spec: MBBlockSpec, layers: MBLayers, *, rngs: nnx.Rngs) -> None:
        super().__init__(spec, layers, rngs=rngs)
        s, c = spec, spec.mid_channels
        self.dw = layers.convs(
            self, "conv_dw", c, c, s.kernel_size, s.stride, s.dilation, s.groups, rngs=rngs
        )
        self.bn1 = layers.norm(c, rngs=rngs)
        self.pw = layers.convs(self, "conv_pw", c, s.out_channels, s.pw_kernel_size, rngs=rngs)
        self.bn2 = layers.norm(s.out_channels, rngs=rngs)
        self.pw_act = s.pw_act

    def __call__(self, x: Array) -> Array:
        y = self.attend(self.act_fn(self.bn1(_apply(self, self.dw, x))))
        y = self.bn2(_apply(self, self.pw, y))
        return self.residual(self.act_fn(y) if self.pw_act else y, x)


class InvertedResidual(_Block):
    """timm's ``InvertedResidual`` (``ir``, MBConv). NHWC."""

    def __init__(self, spec: MBBlockSpec, layers: MBLayers, *, rngs: nnx.Rngs) -> None:
        super().__init__(spec, layers, rngs=rngs)
        s, c = spec, spec.mid_channels
        self.pw = layers.convs(self, "conv_pw", s.in_channels, c, s.exp_kernel_size, rngs=rngs)
        self.bn1 = layers.norm(c, rngs=rngs)
        self.dw = layers.convs(
            self, "conv_dw", c, c, s.kernel_size, s.stride, s.dilation, s.groups, rngs=rngs
        )
        self.bn2 = layers.norm(c, rngs=rngs)
        self.pwl = layers.convs(self, "conv_pwl", c, s.out_channels, s.pw_kernel_size, rngs=rngs)
        self.bn3 = layers.norm(s.out_channels, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        y = self.act_fn(self.bn1(_apply(self, self.pw, x)))
        y = self.attend(self.act_fn(self.bn2(_apply(self, self.dw, y))))
        return self.residual(self.bn3(_apply(self, self.pwl, y)), x)


class EdgeResidual(_Block):
    """timm's ``EdgeResidual`` (``er``, FusedMBConv). NHWC."""

    def __init__(self, spec: MBBlockSpec, layers: MBLayers, *, rngs: nnx.Rngs) -> None:
        super().__init__(spec, layers, rngs=rngs)
        s, c = spec, spec.mid_channels
        self.exp = layers.convs(
            self,
            "conv_exp",
            s.in_channels,
            c,
            s.kernel_size,
            s.stride,
            s.dilation,
            s.groups,
            rngs=rngs,
        )
        self.bn1 = layers.norm(c, rngs=rngs)
        self.pwl = layers.convs(self, "conv_pwl", c, s.out_channels, s.pw_kernel_size, rngs=rngs)
        self.bn2 = layers.norm(s.out_channels, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        y = self.attend(self.act_fn(self.bn1(_apply(self, self.exp, x))))
        return self.residual(self.bn2(_apply(self, self.pwl, y)), x)


class ConvBnAct(_Block):
    """timm's ``ConvBnAct`` (``cn``). NHWC."""

    def __init__(self, spec: MBBlockSpec, layers: MBLayers, *, rngs: nnx.Rngs) -> None:
        super().__init__(spec, layers, rngs=rngs)
        s = spec
        self.cv = layers.convs(
            self,
            "conv",
            s.in_channels,
            s.out_channels,
            s.kernel_size,
            s.stride,
            s.dilation,
            s.groups,
            rngs=rngs,
        )
        self.bn1 = layers.norm(s.out_channels, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.residual(self.act_fn(self.bn1(_apply(self, self.cv, x))), x)


# Block classes by their se_common.BLOCK_KINDS names (the ResNet family's are BLOCKS).
MB_BLOCKS: dict[str, type[_Block]] = {
    "ds": DepthwiseSeparableConv,
    "dsa": DepthwiseSeparableConv,
    "ir": InvertedResidual,
    "er": EdgeResidual,
    "cn": ConvBnAct,
}


class EfficientNet(nnx.Module):
    """An EfficientNet-family network described by a :class:`se_common.EfficientNetConfig`
    (NNX, NHWC), the twin of :class:`se_flax.EfficientNet` with the same options and variable
    paths. A new model is in training mode: ``model.eval()`` for inference.

    Args:
        config: the block strings and builder arguments.
        num_classes: classifier outputs; 0 returns the pooled features.
        in_chans: input channels (checked against the input).
        features_only: return the feature maps of ``out_indices`` (no head conv, classifier).
        out_indices: feature levels (``config.feature_info()``), default all.
        drop_rate, drop_path_rate: dropout before the classifier and stochastic depth in
            training (block ``i`` of ``n`` at ``drop_path_rate * i / n``), from the
            ``dropout`` stream of ``rngs``.
        norm_layer: factory of the norms (default :class:`BatchNorm`), called with
            ``epsilon`` (the config's ``bn_eps``), the dtypes and ``rngs``.
        dtype, param_dtype, precision: of every layer.
        rngs: random streams for initialisation (and ``dropout``).

    Example:
        >>> model = create_model("efficientnet_b0", rngs=nnx.Rngs(0))
        >>> model.eval()
        >>> model(jnp.ones((1, 224, 224, 3))).shape
        (1, 1000)
    """

    pretrained_cfg: PretrainedCfg | None = None  # static: set by from_pretrained

    def __init__(
        self,
        config: EfficientNetConfig,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_layer: Any = BatchNorm,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        rngs: nnx.Rngs,
    ) -> None:
        self.out_indices = check_options(config, num_classes, in_chans, out_indices)
        checked_rate("drop_rate", drop_rate)
        cfg = config
        specs = cfg.blocks(drop_path_rate)  # checks the rate first
        layers = MBLayers(
            pad_type=cfg.pad_type,
            bn_eps=cfg.bn_eps,
            norm_layer=norm_layer,
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
        )
        self.config, self.in_chans, self.num_classes = cfg, in_chans, num_classes
        self.features_only, self.dtype = features_only, dtype
        self.act_fn = ACTIVATIONS[cfg.act_layer]
        stem = cfg.stem_channels
        self.stem = layers.convs(
            self, "conv_stem", in_chans, stem, (cfg.stem_kernel_size,), 2, rngs=rngs
        )
        self.bn1 = layers.norm(stem, rngs=rngs)
        names = []
        for spec in specs:
            block = lookup(MB_BLOCKS, spec.block_type, "block", "se_flax.nnx.MB_BLOCKS")
            name = f"blocks_{spec.stage}_{spec.index}"
            setattr(self, name, block(spec, layers, rngs=rngs))
            names.append(name)
        self.block_names = tuple(names)
        stem_level, taps = cfg.feature_taps()
        self.stem_level = stem_level
        self.stage_ends = tuple(taps.items())  # (block index, feature level)
        self.num_features, self.head_hidden_size = cfg.num_features, cfg.head_hidden_size
        self.head = None
        if cfg.head_features and not features_only:
            inp, out, bias = specs[-1].out_channels, cfg.head_features, cfg.head_bias
            self.head = layers.convs(self, "conv_head", inp, out, (1,), bias=bias, rngs=rngs)
            if not cfg.efficient_head:
                self.bn2 = layers.norm(cfg.head_features, rngs=rngs)
        self.head_drop = nnx.Dropout(drop_rate, rngs=rngs) if drop_rate else None
        self.classifier = (
            nnx.Linear(
                cfg.head_hidden_size,
                num_classes,
                precision=precision,
                dtype=dtype,
                param_dtype=param_dtype,
                kernel_init=classifier_init,
                rngs=rngs,
            )
            if num_classes and not features_only
            else None
        )

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """timm's ``feature_info`` of every level (of ``out_indices`` with ``features_only``)."""
        return model_feature_info(self.config, self.features_only, self.out_indices)

    def __call__(self, x: Array) -> Array | list[Array]:
        check_input(x, channels=self.in_chans)
        x = self.act_fn(self.bn1(_apply(self, self.stem, x)))
        features = {} if self.stem_level is None else {self.stem_level: x}
        ends = dict(self.stage_ends)
        for i, name in enumerate(self.block_names):
            x = fusion_boundary(getattr(self, name)(x))  # as linen's (se_flax._grouped)
            if i in ends:
                features[ends[i]] = x
        if self.features_only:
            return [features[i] for i in self.out_indices]
        dtype = compute_dtype(x, self.dtype, held_param_dtype(self))
        if self.config.efficient_head:  # MobileNetV3's: pool, conv_head (bias), activation
            x = mean(x, (1, 2), dtype, True)
            x = self.act_fn(_apply(self, self.head, x)).reshape(x.shape[0], -1)
        else:
            if self.head is not None:
                x = self.act_fn(self.bn2(_apply(self, self.head, x)))
            x = mean(x, (1, 2), dtype)
        if self.head_drop is not None:
            x = self.head_drop(x)
        return x if self.classifier is None else self.classifier(x)


class MobileNetV3(EfficientNet):
    """A MobileNetV3-family network (timm's ``mobilenetv3.py``: MobileNetV3, LCNet, FBNetV3,
    HardCoReNAS) described by a :class:`se_common.MobileNetV3Config` (NNX, NHWC), the twin of
    ``se_torch.MobileNetV3``: an :class:`EfficientNet` with the efficient head (global pool,
    1x1 ``conv_head`` with bias, activation, classifier).

    Example:
        >>> model = create_model("mobilenetv3_large_100", rngs=nnx.Rngs(0))
        >>> model.eval()
        >>> model(jnp.ones((1, 224, 224, 3))).shape
        (1, 1000)
    """
