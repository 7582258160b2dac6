"""ResNet, ResNeXt, SK-ResNet and their attention variants in PyTorch, key for key timm's models.

The architecture is data (:class:`se_common.ResNetConfig`). Two registries turn its names into
modules: :data:`BLOCKS` maps a block type to its class, :data:`ATTN_LAYERS` an attention name
to its factory (``se_common`` holds the names). The attention layer sits where timm places it:
after the last BatchNorm of a block, before the residual sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from se_common import (
    BlockSpec,
    PretrainedCfg,
    ResNetConfig,
    check_head_options,
    lookup,
    model_feature_info,
)
from se_torch._attention import CbamModule, EcaModule, EffectiveSEModule
from se_torch._layers import ConvNormAct, Factory, check_input
from se_torch._selective_kernel import SelectiveKernel
from se_torch._squeeze_excite import SqueezeExcite

__all__ = [
    "ATTN_LAYERS",
    "BLOCKS",
    "BasicBlock",
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
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
) -> nn.Conv2d:
    """A backbone convolution: no bias, PyTorch's symmetric padding ``kernel_size // 2``."""
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride,
        kernel_size // 2,
        groups=groups,
        bias=False,
    )


class ResidualBlock(nn.Module):
    """Base of the residual blocks. A block type is a subclass registered in :data:`BLOCKS`.

    Every block is built as ``Block(spec, attn_layer=..., act_layer=..., norm_layer=...)``: a
    :class:`se_common.BlockSpec` (widths, stride, groups, Selective Kernel options) and the
    layer factories. A subclass builds its convolutions, then calls :meth:`build_tail` (so the
    state_dict keys come in timm's order), computes its branch ``y`` and returns
    ``act(self.residual(y, x))``; :meth:`zero_init_last` zeroes its last BatchNorm scale.
    """

    def build_tail(self, spec: BlockSpec, attn_layer: Factory | None, norm_layer: Factory) -> None:
        """The attention layer ``se`` and the shortcut ``downsample`` (1x1 conv + norm)."""
        self.se = attn_layer(spec.out_channels) if attn_layer else None
        self.downsample = None
        if spec.downsample:
            self.downsample = nn.Sequential(
                conv2d(spec.in_channels, spec.out_channels, 1, spec.stride),
                norm_layer(spec.out_channels),
            )

    def residual(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Attention on the branch ``y``, plus the (downsampled) shortcut ``x``."""
        if self.se is not None:
            y = self.se(y)
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
        self.conv1 = conv2d(spec.in_channels, spec.width, 3, spec.stride)
        self.bn1 = norm_layer(spec.width)
        self.act1 = act_layer()
        self.conv2 = conv2d(spec.width, spec.out_channels, 3)
        self.bn2 = norm_layer(spec.out_channels)
        self.build_tail(spec, attn_layer, norm_layer)
        self.act2 = act_layer()

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
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
        w = spec.width
        self.conv1 = conv2d(spec.in_channels, w, 1)
        self.bn1 = norm_layer(w)
        self.act1 = act_layer()
        self.conv2 = conv2d(w, w, 3, spec.stride, spec.groups)
        self.bn2 = norm_layer(w)
        self.act2 = act_layer()
        self.conv3 = conv2d(w, spec.out_channels, 1)
        self.bn3 = norm_layer(spec.out_channels)
        self.build_tail(spec, attn_layer, norm_layer)
        self.act3 = act_layer()

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.act2(self.bn2(self.conv2(y)))
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
    ) -> None:
        super().__init__()
        check_head_options(num_classes, in_chans, out_indices)
        self.config, self.in_chans, self.num_classes = config, in_chans, num_classes
        self.features_only, self.out_indices = features_only, tuple(out_indices)
        block = lookup(BLOCKS, config.block, "block", "se_torch.BLOCKS")
        if attn_layer is None and config.attn is not None:
            attn_layer = lookup(ATTN_LAYERS, config.attn, "attn", "se_torch.ATTN_LAYERS")
        self.conv1 = conv2d(in_chans, config.feature_channels[0], 7, 2)
        self.bn1 = norm_layer(config.feature_channels[0])
        self.act1 = act_layer()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages: list[list[nn.Module]] = [[], [], [], []]
        for spec in config.blocks():
            stages[spec.stage - 1].append(
                block(spec, attn_layer=attn_layer, act_layer=act_layer, norm_layer=norm_layer)
            )
        for i, blocks in enumerate(stages):
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_features = config.num_features
        if not features_only:
            self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self._init_weights(config.zero_init_last if zero_init_last is None else zero_init_last)

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
        return self.fc(x.mean(dim=(2, 3)))
