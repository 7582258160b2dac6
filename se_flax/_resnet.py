"""ResNet, ResNeXt, SK-ResNet and their attention variants in Flax linen (NHWC), twins of
``se_torch``'s.

The architecture is data (:class:`se_common.ResNetConfig`). Two registries turn its names into
modules: :data:`BLOCKS` maps a block type to its class, :data:`ATTN_LAYERS` an attention name to
its factory (``se_common`` holds the names). Every option of the layers lives once, in the
:class:`BlockLayers` the backbone hands to each block; the mode reaches a block once, as its
``train`` argument. Submodule names mirror PyTorch's state_dict keys (``layer1.0.conv1`` is
``layer1_0/conv1``, ``downsample.0`` is ``downsample_0``), so :mod:`se_flax.convert` maps them one
to one.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from se_common import (
    BlockSpec,
    PretrainedCfg,
    ResNetConfig,
    check_head_options,
    lookup,
    model_feature_info,
)
from se_common import drop_rate as checked_rate
from se_flax._attention import CbamModule, EcaModule, EffectiveSEModule
from se_flax._batchnorm import BatchNorm
from se_flax._dtypes import Dtype
from se_flax._grouped import fusion_boundary
from se_flax._layers import (
    ConvNormAct,
    ModuleDef,
    aa_pool,
    avg_pool_2x2,
    check_input,
    conv,
    conv_kernel_init,
    drop_block,
    drop_path,
    max_pool,
    pad,
    pooled_head,
)
from se_flax._selective_kernel import SelectiveKernel
from se_flax._squeeze_excite import SqueezeExcite

__all__ = [
    "ATTN_LAYERS",
    "BLOCKS",
    "BasicBlock",
    "BlockLayers",
    "Bottleneck",
    "LayerOptions",
    "ResNet",
    "ResidualBlock",
    "SelectiveKernelBasic",
    "SelectiveKernelBottleneck",
]

Activation = Callable[[jax.Array], jax.Array]

# Attention layers by their se_common.ATTENTION names. Each is a linen module factory called as
# factory(name="se", dtype=..., param_dtype=...) and applied as layer(x, train=...); channels
# come from its input.
ATTN_LAYERS: dict[str, ModuleDef] = {
    "se": SqueezeExcite,
    "eca": EcaModule,
    "cbam": CbamModule,
    "ese": EffectiveSEModule,
}


@dataclasses.dataclass(frozen=True)
class LayerOptions:
    """Every option of a backbone's layers, once: the fields shared by the linen
    :class:`BlockLayers` and its NNX twin ``se_flax.nnx.BlockLayers``, which add one method per
    kind of layer in their front-end's idiom.

    Attributes:
        act_fn: the activation.
        norm_layer: factory of the norms, called as the front-end's BatchNorm is (linen:
            ``use_running_average``, ``dtype``, ``param_dtype``, ``name``; NNX: ``num_features``,
            ``dtype``, ``param_dtype``, ``rngs``), and with ``scale_init`` for a block's last
            norm when ``zero_init_last``; its own options (momentum, epsilon) are bound in it,
            e.g. ``partial(BatchNorm, epsilon=1e-3)``.
        attn_layer: factory of the blocks' attention layer, or ``None``.
        zero_init_last: initialise each block's last norm scale to zero.
        dtype, param_dtype, precision, kernel_init: of every convolution (and the norms' and
            attention layers' dtypes).
    """

    act_fn: Activation = nn.relu
    norm_layer: ModuleDef = BatchNorm
    attn_layer: ModuleDef | None = None
    zero_init_last: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: nn.initializers.Initializer = conv_kernel_init

    def _norm_layer(self, last: bool) -> ModuleDef:
        if last and self.zero_init_last:
            return functools.partial(self.norm_layer, scale_init=nn.initializers.zeros_init())
        return self.norm_layer

    # What each kind of layer takes from the options, as keywords both front-ends' layers accept
    # (the NNX methods add the input channels and ``rngs``, the linen ones a ``name``).
    @property
    def _dtypes(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "param_dtype": self.param_dtype}

    def _conv_options(self, kernel_size: int, stride: int, groups: int) -> dict[str, Any]:
        """A bias-free convolution with PyTorch's symmetric padding ``kernel_size // 2``."""
        return {
            "kernel_size": (kernel_size, kernel_size),
            "strides": (stride, stride),
            "padding": pad(kernel_size),
            "feature_group_count": groups,
            "use_bias": False,
            "kernel_init": self.kernel_init,
            "precision": self.precision,
            **self._dtypes,
        }

    def _conv_norm_act_options(
        self, features: int, kernel_size: int, apply_act: bool, last: bool
    ) -> dict[str, Any]:
        return {
            "features": features,
            "kernel_size": kernel_size,
            "apply_act": apply_act,
            "act_fn": self.act_fn,
            "norm_layer": self._norm_layer(last),
            "precision": self.precision,
            "kernel_init": self.kernel_init,
            **self._dtypes,
        }

    def _selective_kernel_options(self, spec: BlockSpec) -> dict[str, Any]:
        """The block's Selective Kernel unit, from ``spec.sk`` (stride and groups of its 3x3)."""
        sk = spec.sk
        return {
            "features": spec.width,
            "kernel_size": sk.kernel_size,
            "stride": spec.stride,
            "groups": spec.groups,
            "rd_ratio": sk.rd_ratio,
            "rd_divisor": sk.rd_divisor,
            "keep_3x3": sk.keep_3x3,
            "split_input": sk.split_input,
            "act_fn": self.act_fn,
            "norm_layer": self.norm_layer,
            "precision": self.precision,
            "kernel_init": self.kernel_init,
            **self._dtypes,
        }


@dataclasses.dataclass(frozen=True)
class BlockLayers(LayerOptions):
    """How a linen backbone builds its layers: the options of :class:`LayerOptions`, applied in
    one method per kind of layer. :class:`ResNet` makes one and hands it to every block (and its
    stem).
    """

    def conv(self, features: int, kernel_size: int, stride: int = 1, *, groups: int = 1, name: str):
        """A bias-free convolution with PyTorch's symmetric padding ``kernel_size // 2``."""
        return conv(features, name=name, **self._conv_options(kernel_size, stride, groups))

    def norm(self, train: bool, *, name: str, last: bool = False) -> nn.Module:
        """A norm in the mode ``train``; ``last`` marks a block's last one (``zero_init_last``)."""
        return self._norm_layer(last)(use_running_average=not train, name=name, **self._dtypes)

    def conv_norm_act(
        self,
        features: int,
        kernel_size: int,
        *,
        apply_act: bool = True,
        last: bool = False,
        name: str,
    ) -> ConvNormAct:
        """timm's ``ConvNormAct`` (SK blocks), applied as ``layer(x, train)``."""
        options = self._conv_norm_act_options(features, kernel_size, apply_act, last)
        return ConvNormAct(name=name, **options)

    def selective_kernel(self, spec: BlockSpec, *, name: str) -> SelectiveKernel:
        """The block's Selective Kernel unit, from ``spec.sk`` (stride and groups of its 3x3)."""
        return SelectiveKernel(name=name, **self._selective_kernel_options(spec))

    def attn(self, *, name: str = "se") -> nn.Module | None:
        """The attention layer, applied as ``layer(y, train=...)``, or ``None``."""
        if self.attn_layer is None:
            return None
        return self.attn_layer(name=name, **self._dtypes)


class ResidualBlock(nn.Module):
    """Base of the residual blocks. A block type is a subclass registered in :data:`BLOCKS`.

    Every block is built as ``Block(spec, layers)`` (a :class:`se_common.BlockSpec` and the
    backbone's :class:`BlockLayers`) and applied as ``block(x, train)``. A subclass computes its
    branch ``y`` with ``layers`` (its last norm with ``last=True``) and returns
    ``self.residual(y, x, train)``.
    """

    spec: BlockSpec
    layers: BlockLayers = BlockLayers()

    def apply_drop_block(self, y: jax.Array, train: bool) -> jax.Array:
        """The spec's DropBlock (stages 3 and 4 with ``drop_block_rate``) in training."""
        if self.spec.drop_block is None or not train:
            return y
        return drop_block(y, self.spec.drop_block, self.make_rng("dropout"))

    def residual(self, y: jax.Array, x: jax.Array, train: bool) -> jax.Array:
        """Attention on the branch ``y``, plus the (downsampled) shortcut ``x``, activated."""
        s, layers = self.spec, self.layers
        attn = layers.attn(name="se")
        if attn is not None:
            y = attn(y, train=train)
        if s.drop_path and train:
            y = drop_path(y, s.drop_path, self.make_rng("dropout"))
        if s.downsample and s.avg_down:  # timm's downsample_avg: pool, 1x1 conv, norm
            if s.stride != 1:
                x = avg_pool_2x2(x, ceil_mode=True)
            x = layers.conv(s.out_channels, 1, name="downsample_1")(x)
            x = layers.norm(train, name="downsample_2")(x)
        elif s.downsample:  # timm's downsample_conv: strided conv, norm
            k = s.down_kernel_size
            x = layers.conv(s.out_channels, k, s.stride, name="downsample_0")(x)
            x = layers.norm(train, name="downsample_1")(x)
        return layers.act_fn(y + x)


class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions (stride on the first), attention, residual sum. NHWC."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        s, layers = self.spec, self.layers
        y = layers.conv(s.first_width, 3, s.conv_stride, name="conv1")(x)
        y = layers.act_fn(self.apply_drop_block(layers.norm(train, name="bn1")(y), train))
        if s.aa:
            y = aa_pool(s.aa, y, s.stride)
        y = layers.conv(s.out_channels, 3, name="conv2")(y)
        return self.residual(layers.norm(train, name="bn2", last=True)(y), x, train)


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 grouped (stride here, "v1.5"), 1x1 expand, attention, residual sum."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        s, layers = self.spec, self.layers
        y = layers.conv(s.first_width, 1, name="conv1")(x)
        y = layers.act_fn(layers.norm(train, name="bn1")(y))
        y = layers.conv(s.width, 3, s.conv_stride, groups=s.groups, name="conv2")(y)
        y = layers.act_fn(self.apply_drop_block(layers.norm(train, name="bn2")(y), train))
        if s.aa:
            y = aa_pool(s.aa, y, s.stride)
        y = layers.conv(s.out_channels, 1, name="conv3")(y)
        return self.residual(layers.norm(train, name="bn3", last=True)(y), x, train)


class SelectiveKernelBasic(ResidualBlock):
    """timm's SK basic block: SelectiveKernel (stride here), ConvNormAct 3x3, attention, sum."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        s, layers = self.spec, self.layers
        y = layers.selective_kernel(s, name="conv1")(x, train)
        y = layers.conv_norm_act(s.out_channels, 3, apply_act=False, last=True, name="conv2")(
            y, train
        )
        return self.residual(y, x, train)


class SelectiveKernelBottleneck(ResidualBlock):
    """timm's SK bottleneck: 1x1 reduce, SelectiveKernel (grouped, stride here), 1x1 expand."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        s, layers = self.spec, self.layers
        y = layers.conv_norm_act(s.width, 1, name="conv1")(x, train)
        y = layers.selective_kernel(s, name="conv2")(y, train)
        y = layers.conv_norm_act(s.out_channels, 1, apply_act=False, last=True, name="conv3")(
            y, train
        )
        return self.residual(y, x, train)


# Block classes by their se_common.BLOCK_TYPES names.
BLOCKS: dict[str, type[ResidualBlock]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "sk_basic": SelectiveKernelBasic,
    "sk_bottleneck": SelectiveKernelBottleneck,
}


class ResNet(nn.Module):
    """A ResNet-family network described by a :class:`se_common.ResNetConfig`. NHWC.

    Attributes:
        config: depths, block type (a :data:`BLOCKS` class), cardinality, base width and
            attention layer name (an :data:`ATTN_LAYERS` factory).
        num_classes: classifier outputs; 0 returns the pooled features.
        in_chans: input channels (checked against the input).
        features_only: return feature maps instead of logits (no classifier is built).
        out_indices: which feature maps: 0 is the stem (stride 2), 1-4 the stages
            (strides 4, 8, 16, 32; the default, for detection necks).
        attn_layer: overrides the config's attention layer: a linen module factory taking
            ``name``, ``dtype`` and ``param_dtype``, whose modules are applied as
            ``layer(x, train=...)``, e.g. ``partial(SqueezeExcite, rd_ratio=0.25)``.
        act_fn: activation function.
        norm_layer: factory of the norms (default :class:`BatchNorm`, PyTorch's statistics),
            the twin of PyTorch's ``norm_layer``: its options are bound in it, e.g.
            ``partial(BatchNorm, momentum=0.7, epsilon=1e-3)`` for PyTorch's
            ``partial(nn.BatchNorm2d, momentum=0.3, eps=1e-3)`` (Flax's momentum convention).
            It is called as ``flax.linen.BatchNorm`` is (see :class:`BlockLayers`).
        zero_init_last: initialise each block's last BatchNorm scale to zero; ``None`` takes the
            config's default (timm's: on for ResNets, off for SK-ResNets).
        drop_rate: dropout before the classifier in training (timm's ``drop_rate``).
        drop_path_rate: stochastic depth in training: block ``i`` of ``n`` drops its branch at
            ``drop_path_rate * i / (n - 1)`` (timm's).
        drop_block_rate: DropBlock in training in stages 3 and 4 (timm's). With any of the
            three, training takes a ``"dropout"`` rng: ``apply(..., rngs={"dropout": key})``;
            eval mode draws nothing.
        dtype: computation dtype (e.g. ``jnp.bfloat16``); ``param_dtype``: parameter dtype.
        precision: precision of the convolutions and the classifier.
        pretrained_cfg: the data config of pretrained weights (set by :func:`from_pretrained`:
            input size, mean, std, ``preprocess``); no effect on the computation.

    Call as ``model.apply(variables, x, train=False)``; in training pass
    ``train=True, mutable=["batch_stats"]`` to get the updated statistics back.

    Shapes:
        input ``(N, H, W, in_chans)``; logits ``(N, num_classes)``, or a list of
        ``(N, H / s_i, W / s_i, C_i)`` feature maps with ``features_only``.

    Example:
        >>> model = create_model("seresnet50")
        >>> variables = model.init(jax.random.key(0), jnp.ones((1, 224, 224, 3)))
        >>> model.apply(variables, x, train=False).shape
        (1, 1000)
    """

    config: ResNetConfig
    num_classes: int = 1000
    in_chans: int = 3
    features_only: bool = False
    out_indices: Sequence[int] = (1, 2, 3, 4)
    attn_layer: ModuleDef | None = None
    act_fn: Activation = nn.relu
    norm_layer: ModuleDef = BatchNorm
    zero_init_last: bool | None = None
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    drop_block_rate: float = 0.0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    pretrained_cfg: PretrainedCfg | None = None

    def __post_init__(self) -> None:
        check_head_options(self.num_classes, self.in_chans, self.out_indices)
        checked_rate("drop_rate", self.drop_rate)
        self.config.blocks(self.drop_path_rate, self.drop_block_rate)  # checks the rates
        super().__post_init__()

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """timm's ``feature_info``: ``num_chs``, ``reduction`` and ``module`` of every level
        (of ``out_indices`` with ``features_only``)."""
        return model_feature_info(self.config, self.features_only, self.out_indices)

    def _stem(self, x: jax.Array, layers: BlockLayers, train: bool) -> jax.Array:
        """timm's ``conv1`` (7x7, or three 3x3 convs ``conv1_0``, ``conv1_3``, ``conv1_6`` with
        norms ``conv1_1``, ``conv1_4`` and activations between), ``bn1``, ``act1``."""
        cfg = self.config
        channels = cfg.stem_channels
        if cfg.deep_stem:
            for i, c in enumerate(channels):
                x = layers.conv(c, 3, 2 if i == 0 else 1, name=f"conv1_{3 * i}")(x)
                if i < 2:
                    x = self.act_fn(layers.norm(train, name=f"conv1_{3 * i + 1}")(x))
        else:
            x = layers.conv(channels[-1], 7, 2, name="conv1")(x)
        return self.act_fn(layers.norm(train, name="bn1")(x))

    def _stem_pool(self, x: jax.Array, layers: BlockLayers, train: bool) -> jax.Array:
        """timm's ``maxpool``: a 3x3 max pool at stride 2; with ``replace_stem_pool`` a conv
        ``maxpool_0``, norm and activation; with anti-aliasing before its stride."""
        cfg = self.config
        aa = cfg.aa_layer
        if cfg.replace_stem_pool:
            x = layers.conv(x.shape[-1], 3, 1 if aa else 2, name="maxpool_0")(x)
            if aa:
                x = aa_pool(aa, x)
            return self.act_fn(layers.norm(train, name=f"maxpool_{2 if aa else 1}")(x))
        if aa == "avg":
            return aa_pool(aa, x)
        if aa:
            return aa_pool(aa, max_pool(x, 3, 1))
        return max_pool(x, 3, 2)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | list[jax.Array]:
        cfg = self.config
        check_input(x, channels=self.in_chans)
        block = lookup(BLOCKS, cfg.block, "block", "se_flax.BLOCKS")
        attn = self.attn_layer
        if attn is None and cfg.attn is not None:
            attn = lookup(ATTN_LAYERS, cfg.attn, "attn", "se_flax.ATTN_LAYERS")
            if cfg.attn_args:
                attn = functools.partial(attn, **dict(cfg.attn_args))
        layers = BlockLayers(
            act_fn=self.act_fn,
            norm_layer=self.norm_layer,
            attn_layer=attn,
            zero_init_last=(
                cfg.zero_init_last if self.zero_init_last is None else self.zero_init_last
            ),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
        )

        x = self._stem(x, layers, train)
        features = [x]
        x = self._stem_pool(x, layers, train)
        blocks = cfg.blocks(self.drop_path_rate, self.drop_block_rate)
        for i, spec in enumerate(blocks):
            x = fusion_boundary(
                block(spec, layers, name=f"layer{spec.stage}_{spec.index}")(x, train)
            )
            if i + 1 == len(blocks) or blocks[i + 1].stage != spec.stage:
                features.append(x)
        if self.features_only:
            return [features[i] for i in self.out_indices]
        return pooled_head(self, x, train, name="fc")
