"""ResNet, ResNeXt, SK-ResNet and their attention variants in PyTorch, key for key timm's models.

The architecture is data (:class:`se_common.ResNetConfig`). Two registries turn its names into
modules: :data:`BLOCKS` maps a block type to its class, :data:`ATTN_LAYERS` an attention name
to its factory (``se_common`` holds the names). The attention layer sits where timm places it:
after the last BatchNorm of a block, before the residual sum.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from se_common import (
    BlockSpec,
    PretrainedCfg,
    ResNetConfig,
    check_head_options,
    conv_padding,
    lookup,
    model_feature_info,
)
from se_common import drop_rate as checked_rate
from se_torch._attention import CbamModule, EcaModule, EffectiveSEModule
from se_torch._layers import ConvNormAct, DropBlock2d, DropPath, Factory, check_input
from se_torch._selective_kernel import SelectiveKernel
from se_torch._squeeze_excite import SqueezeExcite

__all__ = [
    "ATTN_LAYERS",
    "BLOCKS",
    "BasicBlock",
    "BlurPool2d",
    "Bottleneck",
    "ResNet",
    "ResidualBlock",
    "SelectiveKernelBasic",
    "SelectiveKernelBottleneck",
    "conv2d",
]

# Attention layers by their se_common.ATTENTION names; each is called as factory(channels).
ATTN_LAYERS: dict[str, Factory] = {
    "se": SqueezeExcite,
    "eca": EcaModule,
    "cbam": CbamModule,
    "ese": EffectiveSEModule,
}


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    padding: int | None = None,
) -> nn.Conv2d:
    """A backbone convolution: no bias, symmetric padding (default ``kernel_size // 2``)."""
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride,
        kernel_size // 2 if padding is None else padding,
        groups=groups,
        bias=False,
    )


class BlurPool2d(nn.Module):
    """timm's ``BlurPool2d`` (Zhang, ICML 2019) with its 3x3 filter: a binomial blur
    ``[1, 2, 1] / 4`` in each direction, per channel, then the stride; the input padded by 1,
    reflecting (``pad_mode="reflect"``) or with zeros (``"constant"``, timm's ``blurpc``). The
    filter is a non-persistent buffer, as timm's: it is in no state_dict."""

    def __init__(self, channels: int, stride: int = 2, pad_mode: str = "reflect") -> None:
        super().__init__()
        if pad_mode not in ("reflect", "constant"):
            raise ValueError(f"pad_mode must be 'reflect' or 'constant', got {pad_mode!r}")
        self.channels, self.stride, self.pad_mode = channels, stride, pad_mode
        self.padding = [conv_padding(3, stride)] * 4  # timm's get_padding
        coeffs = torch.tensor([math.comb(2, k) for k in range(3)], dtype=torch.float32) / 4
        filt = (coeffs[:, None] * coeffs[None, :])[None, None].repeat(channels, 1, 1, 1)
        self.register_buffer("filt", filt, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x, self.padding, mode=self.pad_mode)
        return nn.functional.conv2d(
            x, self.filt.to(x.dtype), stride=self.stride, groups=self.channels
        )


def aa_layer(name: str, channels: int, stride: int = 2) -> nn.Module:
    """The anti-aliasing layer a config names (``se_common.AA_LAYERS``), as timm's
    ``create_aa``: ``nn.AvgPool2d(stride)``, or :class:`BlurPool2d`."""
    if name == "avg":
        return nn.AvgPool2d(stride)
    if name in ("blur", "blurpc"):
        return BlurPool2d(channels, stride, "reflect" if name == "blur" else "constant")
    raise ValueError(f"unknown aa_layer {name!r}; known: avg, blur, blurpc")


class ResidualBlock(nn.Module):
    """Base of the residual blocks. A block type is a subclass registered in :data:`BLOCKS`.

    Every block is built as ``Block(spec, attn_layer=..., act_layer=..., norm_layer=...)``: a
    :class:`se_common.BlockSpec` (widths, stride, groups, Selective Kernel options) and the
    layer factories. A subclass builds its convolutions, then calls :meth:`build_tail` (so the
    state_dict keys come in timm's order), computes its branch ``y`` and returns
    ``act(self.residual(y, x))``; :meth:`zero_init_last` zeroes its last BatchNorm scale.
    """

    def build_tail(self, spec: BlockSpec, attn_layer: Factory | None, norm_layer: Factory) -> None:
        """The attention layer ``se`` and the shortcut ``downsample``: timm's
        ``downsample_conv`` (a strided conv, norm) or ``downsample_avg`` (a 2x2 average pool in
        ceil mode, or ``Identity`` at stride 1, then a 1x1 conv and norm)."""
        self.se = attn_layer(spec.out_channels) if attn_layer else None
        self.drop_path = DropPath(spec.drop_path) if spec.drop_path else None
        self.downsample = None
        if spec.downsample:
            layers: list[nn.Module] = []
            if spec.avg_down:
                layers.append(
                    nn.AvgPool2d(2, spec.stride, ceil_mode=True, count_include_pad=False)
                    if spec.stride != 1
                    else nn.Identity()
                )
            stride = 1 if spec.avg_down else spec.stride
            k = spec.down_kernel_size
            layers.append(
                conv2d(spec.in_channels, spec.out_channels, k, stride, padding=spec.down_padding)
            )
            layers.append(norm_layer(spec.out_channels))
            self.downsample = nn.Sequential(*layers)

    def residual(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Attention on the branch ``y``, plus the (downsampled) shortcut ``x``."""
        if self.se is not None:
            y = self.se(y)
        if self.drop_path is not None:
            y = self.drop_path(y)
        if self.downsample is not None:
            x = self.downsample(x)
        return y + x

    def zero_init_last(self) -> None:
        """Zeroes the scale of the block's last norm (timm's ``zero_init_last``)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not define zero_init_last(); define it, or build the "
            f"model with zero_init_last=False"
        )


class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions (stride on the first), attention, residual sum. NCHW."""

    def __init__(
        self,
        spec: BlockSpec,
        attn_layer: Factory | None = None,
        act_layer: Factory = nn.ReLU,
        norm_layer: Factory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        first = spec.first_width
        self.conv1 = conv2d(spec.in_channels, first, 3, spec.conv_stride)
        self.bn1 = norm_layer(first)
        self.drop_block = DropBlock2d(spec.drop_block) if spec.drop_block else nn.Identity()
        self.act1 = act_layer()
        self.aa = aa_layer(spec.aa, first, spec.stride) if spec.aa else nn.Identity()
        self.conv2 = conv2d(first, spec.out_channels, 3)
        self.bn2 = norm_layer(spec.out_channels)
        self.build_tail(spec, attn_layer, norm_layer)
        self.act2 = act_layer()

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        return self.act2(self.residual(self.bn2(self.conv2(y)), x))


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 grouped (stride here, "v1.5"), 1x1 expand, attention, residual sum."""

    def __init__(
        self,
        spec: BlockSpec,
        attn_layer: Factory | None = None,
        act_layer: Factory = nn.ReLU,
        norm_layer: Factory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        w, first = spec.width, spec.first_width
        self.conv1 = conv2d(spec.in_channels, first, 1)
        self.bn1 = norm_layer(first)
        self.act1 = act_layer()
        self.conv2 = conv2d(first, w, 3, spec.conv_stride, spec.groups)
        self.bn2 = norm_layer(w)
        self.drop_block = DropBlock2d(spec.drop_block) if spec.drop_block else nn.Identity()
        self.act2 = act_layer()
        self.aa = aa_layer(spec.aa, w, spec.stride) if spec.aa else nn.Identity()
        self.conv3 = conv2d(w, spec.out_channels, 1)
        self.bn3 = norm_layer(spec.out_channels)
        self.build_tail(spec, attn_layer, norm_layer)
        self.act3 = act_layer()

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(y)))))
        return self.act3(self.residual(self.bn3(self.conv3(y)), x))


def _selective_kernel(
    spec: BlockSpec, in_channels: int, act_layer: Factory, norm_layer: Factory
) -> SelectiveKernel:
    """The block's SK unit (stride and groups of its 3x3 conv), from ``spec.sk``."""
    sk = spec.sk
    return SelectiveKernel(
        in_channels,
        spec.width,
        kernel_size=list(sk.kernel_size),
        stride=spec.stride,
        groups=spec.groups,
        rd_ratio=sk.rd_ratio,
        rd_divisor=sk.rd_divisor,
        keep_3x3=sk.keep_3x3,
        split_input=sk.split_input,
        act_layer=act_layer,
        norm_layer=norm_layer,
    )


class SelectiveKernelBasic(ResidualBlock):
    """timm's SK basic block: SelectiveKernel (stride here), ConvNormAct 3x3, attention, sum."""

    def __init__(
        self,
        spec: BlockSpec,
        attn_layer: Factory | None = None,
        act_layer: Factory = nn.ReLU,
        norm_layer: Factory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = _selective_kernel(spec, spec.in_channels, act_layer, norm_layer)
        self.conv2 = ConvNormAct(
            spec.width, spec.out_channels, 3, apply_act=False, norm_layer=norm_layer
        )
        self.build_tail(spec, attn_layer, norm_layer)
        self.act = act_layer()

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.residual(self.conv2(self.conv1(x)), x))


class SelectiveKernelBottleneck(ResidualBlock):
    """timm's SK bottleneck: 1x1 reduce, SelectiveKernel (grouped, stride here), 1x1 expand."""

    def __init__(
        self,
        spec: BlockSpec,
        attn_layer: Factory | None = None,
        act_layer: Factory = nn.ReLU,
        norm_layer: Factory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        w = spec.width
        layers = {"act_layer": act_layer, "norm_layer": norm_layer}
        self.conv1 = ConvNormAct(spec.in_channels, w, 1, **layers)
        self.conv2 = _selective_kernel(spec, w, **layers)
        self.conv3 = ConvNormAct(w, spec.out_channels, 1, apply_act=False, **layers)
        self.build_tail(spec, attn_layer, norm_layer)
        self.act = act_layer()

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.residual(self.conv3(self.conv2(self.conv1(x))), x))


# Block classes by their se_common.BLOCK_TYPES names.
BLOCKS: dict[str, type[ResidualBlock]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "sk_basic": SelectiveKernelBasic,
    "sk_bottleneck": SelectiveKernelBottleneck,
}


class ResNet(nn.Module):
    """A ResNet-family network described by a :class:`se_common.ResNetConfig`. NCHW.

    Args:
        config: depths, block type (a :data:`BLOCKS` class), cardinality, base width and
            attention layer name (an :data:`ATTN_LAYERS` factory).
        num_classes: classifier outputs; 0 returns the pooled features.
        in_chans: input channels.
        features_only: return feature maps instead of logits (no classifier is built).
        out_indices: which feature maps: 0 is the stem (stride 2), 1-4 the stages
            (strides 4, 8, 16, 32; the default, for detection necks).
        attn_layer: overrides the config's attention layer: a factory ``f(channels)``, e.g.
            ``functools.partial(SqueezeExcite, rd_ratio=0.25)``.
        act_layer, norm_layer: factories of the activation and of the BatchNorm.
        drop_rate: dropout before the classifier in training (timm's ``drop_rate``).
        drop_path_rate: stochastic depth in training: block ``i`` of ``n`` drops its branch at
            ``drop_path_rate * i / (n - 1)`` (timm's, :class:`DropPath`).
        drop_block_rate: DropBlock in training in stages 3 and 4 (timm's, :class:`DropBlock2d`).
            Masks come from PyTorch's generator; eval mode computes none of the three.
        zero_init_last: initialise each block's last BatchNorm scale to zero; ``None`` takes the
            config's default (timm's: on for ResNets, off for SK-ResNets).

    Attributes:
        pretrained_cfg: the data config of pretrained weights (set by :func:`from_pretrained`:
            input size, mean, std, ``preprocess``), else ``None``; timm's models have one too.

    Shapes:
        input ``(N, in_chans, H, W)``; logits ``(N, num_classes)``, or a list of
        ``(N, C_i, H / s_i, W / s_i)`` feature maps with ``features_only``.

    Example:
        >>> model = create_model("seresnet50")     # state_dict keys and shapes as timm's
        >>> model.eval()(torch.randn(1, 3, 224, 224)).shape
        torch.Size([1, 1000])
    """

    pretrained_cfg: PretrainedCfg | None = None  # set by from_pretrained

    def __init__(
        self,
        config: ResNetConfig,
        num_classes: int = 1000,
        in_chans: int = 3,
        features_only: bool = False,
        out_indices: Sequence[int] = (1, 2, 3, 4),
        attn_layer: Factory | None = None,
        act_layer: Factory = nn.ReLU,
        norm_layer: Factory = nn.BatchNorm2d,
        zero_init_last: bool | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        drop_block_rate: float = 0.0,
    ) -> None:
        super().__init__()
        check_head_options(num_classes, in_chans, out_indices)
        self.drop_rate = checked_rate("drop_rate", drop_rate)
        blocks = config.blocks(drop_path_rate, drop_block_rate)  # checks the rates first
        self.config, self.in_chans, self.num_classes = config, in_chans, num_classes
        self.features_only, self.out_indices = features_only, tuple(out_indices)
        block = lookup(BLOCKS, config.block, "block", "se_torch.BLOCKS")
        if attn_layer is None and config.attn is not None:
            attn_layer = lookup(ATTN_LAYERS, config.attn, "attn", "se_torch.ATTN_LAYERS")
            if config.attn_args:
                attn_layer = functools.partial(attn_layer, **dict(config.attn_args))
        self._build_stem(config, in_chans, act_layer, norm_layer)
        stages: list[list[nn.Module]] = [[], [], [], []]
        for spec in blocks:
            stages[spec.stage - 1].append(
                block(spec, attn_layer=attn_layer, act_layer=act_layer, norm_layer=norm_layer)
            )
        for i, blocks in enumerate(stages):
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_features = config.num_features
        if not features_only:
            self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self._init_weights(config.zero_init_last if zero_init_last is None else zero_init_last)

    def _build_stem(
        self, config: ResNetConfig, in_chans: int, act_layer: Factory, norm_layer: Factory
    ) -> None:
        """timm's stem: ``conv1`` (7x7, or a Sequential of three 3x3 convs with norms and
        activations between), ``bn1``, ``act1`` and ``maxpool`` (a max pool; a conv, norm and
        activation with ``replace_stem_pool``; with anti-aliasing before its stride)."""
        channels, aa = config.stem_channels, config.aa_layer
        c = channels[-1]
        if config.deep_stem:
            layers, inp = [], in_chans
            for i, out in enumerate(channels):
                layers.append(conv2d(inp, out, 3, 2 if i == 0 else 1))
                if i < 2:
                    layers += [norm_layer(out), act_layer()]
                inp = out
            self.conv1 = nn.Sequential(*layers)
        else:
            self.conv1 = conv2d(in_chans, c, 7, 2)
        self.bn1 = norm_layer(c)
        self.act1 = act_layer()
        if config.replace_stem_pool:
            pool = [conv2d(c, c, 3, 1 if aa else 2), *([aa_layer(aa, c)] if aa else [])]
            self.maxpool = nn.Sequential(*pool, norm_layer(c), act_layer())
        elif aa == "avg":
            self.maxpool = aa_layer(aa, c)
        elif aa:
            self.maxpool = nn.Sequential(nn.MaxPool2d(3, 1, 1), aa_layer(aa, c))
        else:
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """timm's ``feature_info``: ``num_chs``, ``reduction`` and ``module`` of every level
        (of ``out_indices`` with ``features_only``)."""
        return model_feature_info(self.config, self.features_only, self.out_indices)

    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():  # timm's ResNet init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, ResidualBlock):
                    m.zero_init_last()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_input(x, channels=self.in_chans)
        x = self.act1(self.bn1(self.conv1(x)))
        features = [x]
        x = self.maxpool(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            features.append(x)
        if self.features_only:
            return [features[i] for i in self.out_indices]
        x = x.mean(dim=(2, 3))
        if self.drop_rate:
            x = nn.functional.dropout(x, self.drop_rate, self.training)
        return self.fc(x)
