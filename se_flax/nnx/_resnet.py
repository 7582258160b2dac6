"""ResNet, ResNeXt, SK-ResNet and their attention variants in Flax NNX (NHWC).

The third front-end of one design: the architecture is a :class:`se_common.ResNetConfig`, the
registries :data:`BLOCKS` and :data:`ATTN_LAYERS` map its names (``se_common``'s) to NNX classes,
and every layer option lives once, in the :class:`BlockLayers` the backbone hands each block.
Attribute names mirror the linen modules' (``layer1_0/conv1``, ``downsample_0``), so the same
converted variables fill both: ``update_nnx(model, torch_to_flax(state_dict))``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from se_common import (
    BlockSpec,
    PretrainedCfg,
    ResNetConfig,
    check_head_options,
    lookup,
    model_feature_info,
)
from se_common import drop_rate as checked_rate
from se_flax._dtypes import Dtype, compute_dtype, mean
from se_flax._grouped import fusion_boundary
from se_flax._layers import aa_pool, avg_pool_2x2, check_input, max_pool
from se_flax._resnet import LayerOptions
from se_flax.nnx._attention import CbamModule, EcaModule, EffectiveSEModule
from se_flax.nnx._layers import (
    BatchNorm,
    ConvNormAct,
    DropBlock,
    DropPath,
    ModuleDef,
    conv,
    held_param_dtype,
)
from se_flax.nnx._selective_kernel import SelectiveKernel
from se_flax.nnx._squeeze_excite import SqueezeExcite

__all__ = [
    "ATTN_LAYERS",
    "BLOCKS",
    "BasicBlock",
    "BlockLayers",
    "Bottleneck",
    "ResNet",
    "ResidualBlock",
    "SelectiveKernelBasic",
    "SelectiveKernelBottleneck",
]

Array = jax.Array
Activation = Callable[[Array], Array]

# Attention layers by their se_common.ATTENTION names: NNX classes (or factories) called as
# factory(channels, dtype=..., param_dtype=..., rngs=...), applied as layer(x).
ATTN_LAYERS: dict[str, ModuleDef] = {
    "se": SqueezeExcite,
    "eca": EcaModule,
    "cbam": CbamModule,
    "ese": EffectiveSEModule,
}


@dataclasses.dataclass(frozen=True)
class BlockLayers(LayerOptions):
    """How an NNX backbone builds its layers (the twin of :class:`se_flax.BlockLayers`): the
    options of :class:`se_flax.LayerOptions`, applied in one method per kind of layer, each
    taking the input channels and ``rngs``. ``norm_layer`` is called as ``nnx.BatchNorm`` is:
    ``norm_layer(num_features, dtype=..., param_dtype=..., rngs=...)``, e.g.
    ``partial(BatchNorm, momentum=0.7, epsilon=1e-3)``; ``attn_layer`` as in
    :data:`ATTN_LAYERS`.
    """

    norm_layer: ModuleDef = BatchNorm

    def conv(
        self,
        in_features: int,
        features: int,
        kernel_size: int,
        stride: int = 1,
        *,
        groups: int = 1,
        rngs: nnx.Rngs,
    ) -> nnx.Module:
        """A bias-free convolution with PyTorch's symmetric padding ``kernel_size // 2``."""
        options = self._conv_options(kernel_size, stride, groups)
        return conv(in_features, features, rngs=rngs, **options)

    def norm(self, features: int, *, last: bool = False, rngs: nnx.Rngs) -> nnx.Module:
        """A norm over ``features``; ``last`` marks a block's last one (``zero_init_last``)."""
        return self._norm_layer(last)(features, rngs=rngs, **self._dtypes)

    def conv_norm_act(
        self,
        in_features: int,
        features: int,
        kernel_size: int,
        *,
        apply_act: bool = True,
        last: bool = False,
        rngs: nnx.Rngs,
    ) -> ConvNormAct:
        """timm's ``ConvNormAct`` (SK blocks)."""
        options = self._conv_norm_act_options(features, kernel_size, apply_act, last)
        return ConvNormAct(in_features, rngs=rngs, **options)

    def selective_kernel(self, in_features: int, spec: BlockSpec, *, rngs: nnx.Rngs):
        """The block's Selective Kernel unit, from ``spec.sk`` (stride and groups of its 3x3)."""
        return SelectiveKernel(in_features, rngs=rngs, **self._selective_kernel_options(spec))

    def attn(self, channels: int, *, rngs: nnx.Rngs) -> nnx.Module | None:
        """The attention layer over ``channels``, or ``None``."""
        if self.attn_layer is None:
            return None
        return self.attn_layer(channels, rngs=rngs, **self._dtypes)


class ResidualBlock(nnx.Module):
    """Base of the NNX residual blocks. A block type is a subclass registered in :data:`BLOCKS`.

    Every block is built as ``Block(spec, layers, rngs=rngs)`` and applied as ``block(x)``
    (the mode follows ``model.train()`` / ``model.eval()``). A subclass builds its branch's
    layers with ``layers`` (its last norm with ``last=True``), then calls
    ``super().__init__(spec, layers, rngs=rngs)`` for the attention and the shortcut, and
    returns ``self.residual(y, x)`` from ``__call__``.
    """

    def __init__(self, spec: BlockSpec, layers: BlockLayers, *, rngs: nnx.Rngs) -> None:
        self.se = layers.attn(spec.out_channels, rngs=rngs)
        self.drop_path = DropPath(spec.drop_path, rngs=rngs) if spec.drop_path else None
        self.drop_block = DropBlock(spec.drop_block, rngs=rngs) if spec.drop_block else None
        self.downsample = spec.downsample
        self.avg_down = spec.downsample and spec.avg_down
        self.pool_down = self.avg_down and spec.stride != 1
        self.aa, self.stride = spec.aa, spec.stride
        inp, out = spec.in_channels, spec.out_channels
        if self.avg_down:  # timm's downsample_avg: pool, 1x1 conv, norm
            self.downsample_1 = layers.conv(inp, out, 1, rngs=rngs)
            self.downsample_2 = layers.norm(out, rngs=rngs)
        elif spec.downsample:  # timm's downsample_conv: strided conv, norm
            k = spec.down_kernel_size
            self.downsample_0 = layers.conv(inp, out, k, spec.stride, rngs=rngs)
            self.downsample_1 = layers.norm(out, rngs=rngs)
        self.act_fn = layers.act_fn

    def apply_drop_block(self, y: Array) -> Array:
        """The spec's DropBlock (stages 3 and 4 with ``drop_block_rate``), in training."""
        return y if self.drop_block is None else self.drop_block(y)

    def anti_alias(self, y: Array) -> Array:
        """The block's anti-aliasing layer at its stride, if it has one."""
        return y if self.aa is None else aa_pool(self.aa, y, self.stride)

    def residual(self, y: Array, x: Array) -> Array:
        """Attention on the branch ``y``, plus the (downsampled) shortcut ``x``, activated."""
        if self.se is not None:
            y = self.se(y)
        if self.drop_path is not None:
            y = self.drop_path(y)
        if self.avg_down:
            if self.pool_down:
                x = avg_pool_2x2(x, ceil_mode=True)
            x = self.downsample_2(self.downsample_1(x))
        elif self.downsample:
            x = self.downsample_1(self.downsample_0(x))
        return self.act_fn(y + x)


class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions (stride on the first), attention, residual sum. NHWC."""

    def __init__(self, spec: BlockSpec, layers: BlockLayers, *, rngs: nnx.Rngs) -> None:
        s = spec
        self.conv1 = layers.conv(s.in_channels, s.first_width, 3, s.conv_stride, rngs=rngs)
        self.bn1 = layers.norm(s.first_width, rngs=rngs)
        self.conv2 = layers.conv(s.first_width, s.out_channels, 3, rngs=rngs)
        self.bn2 = layers.norm(s.out_channels, last=True, rngs=rngs)
        super().__init__(spec, layers, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        y = self.anti_alias(self.act_fn(self.apply_drop_block(self.bn1(self.conv1(x)))))
        return self.residual(self.bn2(self.conv2(y)), x)


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 grouped (stride here, "v1.5"), 1x1 expand, attention, residual sum."""

    def __init__(self, spec: BlockSpec, layers: BlockLayers, *, rngs: nnx.Rngs) -> None:
        s = spec
        self.conv1 = layers.conv(s.in_channels, s.first_width, 1, rngs=rngs)
        self.bn1 = layers.norm(s.first_width, rngs=rngs)
        self.conv2 = layers.conv(
            s.first_width, s.width, 3, s.conv_stride, groups=s.groups, rngs=rngs
        )
        self.bn2 = layers.norm(s.width, rngs=rngs)
        self.conv3 = layers.conv(s.width, s.out_channels, 1, rngs=rngs)
        self.bn3 = layers.norm(s.out_channels, last=True, rngs=rngs)
        super().__init__(spec, layers, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        y = self.act_fn(self.bn1(self.conv1(x)))
        y = self.anti_alias(self.act_fn(self.apply_drop_block(self.bn2(self.conv2(y)))))
        return self.residual(self.bn3(self.conv3(y)), x)


class SelectiveKernelBasic(ResidualBlock):
    """timm's SK basic block: SelectiveKernel (stride here), ConvNormAct 3x3, attention, sum."""

    def __init__(self, spec: BlockSpec, layers: BlockLayers, *, rngs: nnx.Rngs) -> None:
        s = spec
        self.conv1 = layers.selective_kernel(s.in_channels, s, rngs=rngs)
        self.conv2 = layers.conv_norm_act(
            s.width, s.out_channels, 3, apply_act=False, last=True, rngs=rngs
        )
        super().__init__(spec, layers, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.residual(self.conv2(self.conv1(x)), x)


class SelectiveKernelBottleneck(ResidualBlock):
    """timm's SK bottleneck: 1x1 reduce, SelectiveKernel (grouped, stride here), 1x1 expand."""

    def __init__(self, spec: BlockSpec, layers: BlockLayers, *, rngs: nnx.Rngs) -> None:
        s = spec
        self.conv1 = layers.conv_norm_act(s.in_channels, s.width, 1, rngs=rngs)
        self.conv2 = layers.selective_kernel(s.width, s, rngs=rngs)
        self.conv3 = layers.conv_norm_act(
            s.width, s.out_channels, 1, apply_act=False, last=True, rngs=rngs
        )
        super().__init__(spec, layers, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.residual(self.conv3(self.conv2(self.conv1(x))), x)


# Block classes by their se_common.BLOCK_TYPES names.
BLOCKS: dict[str, type[ResidualBlock]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "sk_basic": SelectiveKernelBasic,
    "sk_bottleneck": SelectiveKernelBottleneck,
}


class ResNet(nnx.Module):
    """A ResNet-family network described by a :class:`se_common.ResNetConfig` (NNX). NHWC.

    The twin of :class:`se_flax.ResNet` with the same options and variable paths; a new
    model is in training mode (as every NNX and PyTorch model): call ``model.eval()`` for
    inference with the running statistics and ``model.train()`` to go back.

    Args:
        config: depths, block type (a :data:`BLOCKS` class), cardinality, base width and
            attention layer name (an :data:`ATTN_LAYERS` factory).
        num_classes: classifier outputs; 0 returns the pooled features.
        in_chans: input channels (checked against the input).
        features_only: return feature maps instead of logits (no classifier is built).
        out_indices: which feature maps: 0 is the stem (stride 2), 1-4 the stages.
        attn_layer: overrides the config's attention layer: an NNX factory called as
            ``factory(channels, dtype=..., param_dtype=..., rngs=...)``, e.g.
            ``partial(SqueezeExcite, rd_ratio=0.25)``.
        act_fn: activation function.
        norm_layer: factory of the norms (default :class:`BatchNorm`, PyTorch's statistics),
            e.g. ``partial(BatchNorm, momentum=0.7, epsilon=1e-3)`` (see :class:`BlockLayers`).
        zero_init_last: zero each block's last norm scale; ``None`` takes the config's default.
        drop_rate, drop_path_rate, drop_block_rate: timm's training-only dropout before the
            classifier, stochastic depth and DropBlock (stages 3 and 4); masks come from the
            ``dropout`` stream of ``rngs``, and ``model.eval()`` turns them off.
        dtype: computation dtype (e.g. ``jnp.bfloat16``); ``param_dtype``: parameter dtype.
        precision: precision of the convolutions and the classifier.
        rngs: random streams for initialisation.

    Attributes:
        pretrained_cfg: the data config of pretrained weights (set by :func:`from_pretrained`:
            input size, mean, std, ``preprocess``), else ``None``.

    Shapes:
        input ``(N, H, W, in_chans)``; logits ``(N, num_classes)``, or a list of
        ``(N, H / s_i, W / s_i, C_i)`` feature maps with ``features_only``.

    Example:
        >>> model = create_model("seresnet50", rngs=nnx.Rngs(0))
        >>> model.eval()
        >>> model(jnp.ones((1, 224, 224, 3))).shape
        (1, 1000)
    """

    pretrained_cfg: PretrainedCfg | None = None  # static: set by from_pretrained

    def __init__(
        self,
        config: ResNetConfig,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        features_only: bool = False,
        out_indices: Sequence[int] = (1, 2, 3, 4),
        attn_layer: ModuleDef | None = None,
        act_fn: Activation = nnx.relu,
        norm_layer: ModuleDef = BatchNorm,
        zero_init_last: bool | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        drop_block_rate: float = 0.0,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        rngs: nnx.Rngs,
    ) -> None:
        check_head_options(num_classes, in_chans, out_indices)
        checked_rate("drop_rate", drop_rate)
        if not isinstance(config, ResNetConfig):
            raise TypeError(f"config must be a se_common.ResNetConfig, got {config!r}")
        cfg = config
        blocks = cfg.blocks(drop_path_rate, drop_block_rate)  # checks the rates first
        block = lookup(BLOCKS, cfg.block, "block", "se_flax.nnx.BLOCKS")
        if attn_layer is None and cfg.attn is not None:
            attn_layer = lookup(ATTN_LAYERS, cfg.attn, "attn", "se_flax.nnx.ATTN_LAYERS")
            if cfg.attn_args:
                attn_layer = functools.partial(attn_layer, **dict(cfg.attn_args))
        layers = BlockLayers(
            act_fn=act_fn,
            norm_layer=norm_layer,
            attn_layer=attn_layer,
            zero_init_last=cfg.zero_init_last if zero_init_last is None else zero_init_last,
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
        )
        self.config = cfg
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.features_only = features_only
        self.out_indices = tuple(out_indices)
        self.act_fn = act_fn
        self.dtype = dtype
        self._build_stem(cfg, layers, in_chans, rngs)
        names, stage_ends = [], []
        for i, spec in enumerate(blocks):
            name = f"layer{spec.stage}_{spec.index}"
            setattr(self, name, block(spec, layers, rngs=rngs))
            names.append(name)
            if i + 1 == len(blocks) or blocks[i + 1].stage != spec.stage:
                stage_ends.append(i)
        self.block_names = tuple(names)
        self.stage_ends = tuple(stage_ends)
        self.head_drop = nnx.Dropout(drop_rate, rngs=rngs) if drop_rate else None
        self.fc = (
            nnx.Linear(
                cfg.num_features,
                num_classes,
                precision=precision,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )
            if num_classes and not features_only
            else None
        )

    def _build_stem(
        self, cfg: ResNetConfig, layers: BlockLayers, in_chans: int, rngs: nnx.Rngs
    ) -> None:
        """timm's stem: ``conv1`` (7x7, or ``conv1_0``, ``conv1_3``, ``conv1_6`` with norms
        ``conv1_1``, ``conv1_4``), ``bn1``, and with ``replace_stem_pool`` the conv
        ``maxpool_0`` and its norm (``maxpool_1``, or ``maxpool_2`` after anti-aliasing)."""
        channels = cfg.stem_channels
        c = channels[-1]
        if cfg.deep_stem:
            inp = in_chans
            for i, out in enumerate(channels):
                conv = layers.conv(inp, out, 3, 2 if i == 0 else 1, rngs=rngs)
                setattr(self, f"conv1_{3 * i}", conv)
                if i < 2:
                    setattr(self, f"conv1_{3 * i + 1}", layers.norm(out, rngs=rngs))
                inp = out
        else:
            self.conv1 = layers.conv(in_chans, c, 7, 2, rngs=rngs)
        self.bn1 = layers.norm(c, rngs=rngs)
        self.stem_norm = None
        if cfg.replace_stem_pool:
            aa = cfg.aa_layer
            self.maxpool_0 = layers.conv(c, c, 3, 1 if aa else 2, rngs=rngs)
            self.stem_norm = f"maxpool_{2 if aa else 1}"
            setattr(self, self.stem_norm, layers.norm(c, rngs=rngs))

    def _stem(self, x: Array) -> Array:
        cfg = self.config
        if cfg.deep_stem:
            x = self.act_fn(self.conv1_1(self.conv1_0(x)))
            x = self.act_fn(self.conv1_4(self.conv1_3(x)))
            x = self.conv1_6(x)
        else:
            x = self.conv1(x)
        return self.act_fn(self.bn1(x))

    def _stem_pool(self, x: Array) -> Array:
        aa = self.config.aa_layer
        if self.stem_norm is not None:
            x = self.maxpool_0(x)
            if aa:
                x = aa_pool(aa, x)
            return self.act_fn(getattr(self, self.stem_norm)(x))
        if aa == "avg":
            return aa_pool(aa, x)
        if aa:
            return aa_pool(aa, max_pool(x, 3, 1))
        return max_pool(x, 3, 2)

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """timm's ``feature_info``: ``num_chs``, ``reduction`` and ``module`` of every level
        (of ``out_indices`` with ``features_only``)."""
        return model_feature_info(self.config, self.features_only, self.out_indices)

    def __call__(self, x: Array) -> Array | list[Array]:
        check_input(x, channels=self.in_chans)
        x = self._stem(x)
        features = [x]
        x = self._stem_pool(x)
        for i, name in enumerate(self.block_names):
            x = fusion_boundary(getattr(self, name)(x))  # as linen's (se_flax._grouped)
            if i in self.stage_ends:
                features.append(x)
        if self.features_only:
            return [features[i] for i in self.out_indices]
        dtype = compute_dtype(x, self.dtype, held_param_dtype(self))
        x = mean(x, (1, 2), dtype)
        if self.head_drop is not None:
            x = self.head_drop(x)
        return x if self.fc is None else self.fc(x)
