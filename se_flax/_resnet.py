"""ResNet, ResNeXt, SK-ResNet and their attention variants in Flax linen (NHWC), twins of
``se_torch``'s.

Submodule names mirror PyTorch's state_dict keys (``layer1.0.conv1`` is ``layer1_0/conv1``,
``downsample.0`` is ``downsample_0``), so :mod:`se_flax.convert` maps them one to one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from se_common import (
    BlockSpec,
    ResNetConfig,
    SelectiveKernelConfig,
    check_feature_map,
    check_head_options,
    model_config,
)
from se_flax._attention import CbamModule, EcaModule, EffectiveSEModule
from se_flax._batchnorm import BatchNorm
from se_flax._layers import ConvNormAct, conv_kernel_init, pad
from se_flax._layers import conv as _conv
from se_flax._selective_kernel import SelectiveKernel
from se_flax._squeeze_excite import SqueezeExcite, accumulation_dtype, compute_dtype

__all__ = [
    "ATTN_LAYERS",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "SelectiveKernelBasic",
    "SelectiveKernelBottleneck",
    "create_model",
]

ModuleDef = Callable[..., nn.Module]

# Attention layers by the names used in model configs (timm's ``create_attn`` names). Each is a
# linen module factory called as factory(name="se", dtype=..., param_dtype=...) and applied as
# layer(x, train=...); channels come from its input.
ATTN_LAYERS: dict[str, ModuleDef] = {
    "se": SqueezeExcite,
    "eca": EcaModule,
    "cbam": CbamModule,
    "ese": EffectiveSEModule,
}


class _ResidualBlock(nn.Module):
    """What all block types share: options, and the tail attention -> + shortcut -> act."""

    spec: BlockSpec
    conv: ModuleDef
    norm: ModuleDef
    act: Callable[[jax.Array], jax.Array]
    attn_layer: ModuleDef | None = None
    zero_init_last: bool = True
    train: bool = False

    def last_scale_init(self) -> nn.initializers.Initializer:
        """The last BatchNorm's scale initialiser: zeros with ``zero_init_last``, else ones."""
        return nn.initializers.zeros_init() if self.zero_init_last else nn.initializers.ones_init()

    def last_norm(self, name: str) -> nn.Module:
        return self.norm(name=name, scale_init=self.last_scale_init())

    def residual(self, y: jax.Array, x: jax.Array) -> jax.Array:
        s = self.spec
        if self.attn_layer is not None:
            y = self.attn_layer(name="se")(y, train=self.train)
        if s.downsample:
            x = self.conv(
                s.out_channels, (1, 1), (s.stride, s.stride), pad(1), name="downsample_0"
            )(x)
            x = self.norm(name="downsample_1")(x)
        return self.act(y + x)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convolutions (stride on the first), attention, residual sum. NHWC."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.spec
        y = self.conv(s.width, (3, 3), (s.stride, s.stride), pad(3), name="conv1")(x)
        y = self.act(self.norm(name="bn1")(y))
        y = self.conv(s.out_channels, (3, 3), (1, 1), pad(3), name="conv2")(y)
        return self.residual(self.last_norm("bn2")(y), x)


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3 grouped (stride here, "v1.5"), 1x1 expand, attention, residual sum."""

    cardinality: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.spec
        y = self.conv(s.width, (1, 1), (1, 1), pad(1), name="conv1")(x)
        y = self.act(self.norm(name="bn1")(y))
        y = self.conv(
            s.width,
            (3, 3),
            (s.stride, s.stride),
            pad(3),
            feature_group_count=self.cardinality,
            name="conv2",
        )(y)
        y = self.act(self.norm(name="bn2")(y))
        y = self.conv(s.out_channels, (1, 1), (1, 1), pad(1), name="conv3")(y)
        return self.residual(self.last_norm("bn3")(y), x)


class _SelectiveKernelBlock(_ResidualBlock):
    """The options SK blocks add: the SK unit's and the layers' (dtype, BatchNorm, init)."""

    sk: SelectiveKernelConfig = SelectiveKernelConfig()
    layer: Any = None  # dict of ConvNormAct / SelectiveKernel options

    def conv_norm_act(self, features: int, kernel_size: int, name: str) -> nn.Module:
        return ConvNormAct(features, kernel_size, act_fn=self.act, name=name, **self.layer)

    def last_conv_norm(self, features: int, kernel_size: int, name: str) -> nn.Module:
        """The block's last conv + BatchNorm, no activation (it follows the residual sum)."""
        return ConvNormAct(
            features,
            kernel_size,
            apply_act=False,
            bn_scale_init=self.last_scale_init(),
            name=name,
            **self.layer,
        )

    def selective_kernel(self, features: int, name: str, groups: int = 1) -> nn.Module:
        sk = self.sk
        return SelectiveKernel(
            features,
            sk.kernel_size,
            self.spec.stride,
            groups=groups,
            rd_ratio=sk.rd_ratio,
            rd_divisor=sk.rd_divisor,
            keep_3x3=sk.keep_3x3,
            split_input=sk.split_input,
            act_fn=self.act,
            name=name,
            **self.layer,
        )


class SelectiveKernelBasic(_SelectiveKernelBlock):
    """timm's SK basic block: SelectiveKernel (stride here), ConvNormAct 3x3, attention, sum."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.spec
        y = self.selective_kernel(s.width, "conv1")(x, self.train)
        y = self.last_conv_norm(s.out_channels, 3, "conv2")(y, self.train)
        return self.residual(y, x)


class SelectiveKernelBottleneck(_SelectiveKernelBlock):
    """timm's SK bottleneck: 1x1 reduce, SelectiveKernel (grouped, stride here), 1x1 expand."""

    cardinality: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.spec
        y = self.conv_norm_act(s.width, 1, "conv1")(x, self.train)
        y = self.selective_kernel(s.width, "conv2", self.cardinality)(y, self.train)
        y = self.last_conv_norm(s.out_channels, 1, "conv3")(y, self.train)
        return self.residual(y, x)


class ResNet(nn.Module):
    """A ResNet-family network described by a :class:`se_common.ResNetConfig`. NHWC.

    Attributes:
        config: depths, block type, cardinality, base width and attention layer name.
        num_classes: classifier outputs; 0 returns the pooled features.
        in_chans: input channels (checked against the input).
        features_only: return feature maps instead of logits (no classifier is built).
        out_indices: which feature maps: 0 is the stem (stride 2), 1-4 the stages
            (strides 4, 8, 16, 32; the default, for detection necks).
        attn_layer: overrides the config's attention layer: a linen module factory taking
            ``name``, ``dtype`` and ``param_dtype``, whose modules are applied as
            ``layer(x, train=...)``, e.g. ``partial(SqueezeExcite, rd_ratio=0.25)``.
        act: activation function.
        zero_init_last: initialise each block's last BatchNorm scale to zero; ``None`` takes the
            config's default (timm's: on for ResNets, off for SK-ResNets).
        bn_momentum, bn_epsilon: BatchNorm options, Flax convention (PyTorch's 0.1 is 0.9).
        dtype: computation dtype (e.g. ``jnp.bfloat16``); ``param_dtype``: parameter dtype.
        precision: precision of the convolutions and the classifier.

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
    act: Callable[[jax.Array], jax.Array] = nn.relu
    zero_init_last: bool | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None

    def __post_init__(self) -> None:
        check_head_options(self.num_classes, self.in_chans, self.out_indices)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | list[jax.Array]:
        cfg = self.config
        check_feature_map(
            x.shape,
            x.dtype,
            jnp.issubdtype(x.dtype, jnp.floating),
            self.in_chans,
            channels_last=True,
            spatial_dims=2,
        )
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        conv = functools.partial(
            _conv,
            use_bias=False,
            kernel_init=conv_kernel_init,
            precision=self.precision,
            **dtypes,
        )
        norm = functools.partial(
            BatchNorm,
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            **dtypes,
        )
        attn = self.attn_layer
        if attn is None and cfg.attn is not None:
            attn = ATTN_LAYERS[cfg.attn]
        if attn is not None:
            attn = functools.partial(attn, **dtypes)

        x = conv(cfg.feature_channels[0], (7, 7), (2, 2), pad(7), name="conv1")(x)
        x = self.act(norm(name="bn1")(x))
        features = [x]
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pad(3))  # pads with -inf
        zero_init_last = cfg.zero_init_last if self.zero_init_last is None else self.zero_init_last
        layer = dict(  # the options of SK blocks' ConvNormAct and SelectiveKernel
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            precision=self.precision,
            kernel_init=conv_kernel_init,
            **dtypes,
        )
        blocks = cfg.blocks()
        for i, spec in enumerate(blocks):
            options = dict(
                conv=conv,
                norm=norm,
                act=self.act,
                attn_layer=attn,
                zero_init_last=zero_init_last,
                train=train,
                name=f"layer{spec.stage}_{spec.index}",
            )
            if cfg.block == "basic" and cfg.sk is not None:
                x = SelectiveKernelBasic(spec, sk=cfg.sk, layer=layer, **options)(x)
            elif cfg.block == "basic":
                x = BasicBlock(spec, **options)(x)
            elif cfg.sk is not None:
                x = SelectiveKernelBottleneck(
                    spec, sk=cfg.sk, layer=layer, cardinality=cfg.cardinality, **options
                )(x)
            else:
                x = Bottleneck(spec, cardinality=cfg.cardinality, **options)(x)
            if i + 1 == len(blocks) or blocks[i + 1].stage != spec.stage:
                features.append(x)
        if self.features_only:
            return [features[i] for i in self.out_indices]
        dtype = compute_dtype(x, self.dtype, self.param_dtype)
        x = jnp.mean(x.astype(accumulation_dtype(dtype)), axis=(1, 2)).astype(dtype)
        if self.num_classes:
            x = nn.Dense(self.num_classes, name="fc", precision=self.precision, **dtypes)(x)
        return x


def create_model(name: str, **kwargs: Any) -> ResNet:
    """Builds a linen model by timm's name (see ``se_common.MODEL_CONFIGS``).

    Args:
        name: e.g. ``"seresnet50"``, ``"seresnext50_32x4d"``, ``"resnet18"``, ``"skresnet18"``.
        **kwargs: fields of :class:`ResNet` (``num_classes``, ``in_chans``, ``features_only``,
            ``out_indices``, ``attn_layer``, ``dtype``, ...), or ``attn=`` one of
            :data:`ATTN_LAYERS`' names (``"se"``, ``"eca"``, ``"cbam"``, ``"ese"``) or ``None``
            to change the config's attention layer by name.

    Example:
        >>> model = create_model("seresnet50", dtype=jnp.bfloat16)
    """
    return ResNet(model_config(name, kwargs, ATTN_LAYERS), **kwargs)
