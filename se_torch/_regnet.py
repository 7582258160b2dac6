"""The RegNet family in PyTorch, key for key timm's ``regnet.py`` models, planned by
:class:`se_common.RegNetConfig`: RegNetX, RegNetY (SE after the grouped 3x3 conv, its width
from the block's input), RegNetV (pre-activation) and RegNetZ (inverted bottlenecks, linear
outputs, no shortcut where the shape changes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from se_common import PretrainedCfg, RegBlockSpec, RegNetConfig, conv_padding, model_feature_info
from se_common import drop_rate as checked_rate
from se_torch._efficientnet import ACT_LAYERS, BatchNormAct2d
from se_torch._layers import ConvNormAct, DropPath, check_input
from se_torch._squeeze_excite import SqueezeExcite

__all__ = ["AvgPool2dSame", "RegBottleneck", "RegNet", "RegPreBottleneck", "RegStage"]


class AvgPool2dSame(nn.Module):
    """timm's ``AvgPool2dSame(2, stride=1)`` of a dilated stage's average-pool shortcut: the
    input zero-padded by one row and column after, then 2x2 means (the padding counted)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 2, 1)


def _shortcut(spec: RegBlockSpec, preact: bool) -> nn.Module | None:
    """timm's ``create_shortcut``: identity, conv (+ norm), pool then conv (+ norm), or none."""
    if spec.shortcut is None:
        return None
    if spec.shortcut == "identity":
        return nn.Identity()
    inp, out = spec.in_channels, spec.out_channels
    stride = spec.stride if spec.shortcut == "conv1x1" else 1
    if preact:
        conv: nn.Module = nn.Conv2d(inp, out, 1, stride, bias=False)
    else:
        conv = ConvNormAct(inp, out, 1, stride, apply_act=False)
    if spec.shortcut == "conv1x1":
        return conv
    pool: nn.Module = nn.Identity()
    if spec.pool == "stride":
        pool = nn.AvgPool2d(2, spec.stride, ceil_mode=True, count_include_pad=False)
    elif spec.pool == "same":
        pool = AvgPool2dSame()
    return nn.Sequential(pool, conv)


class _Block(nn.Module):
    def __init__(self, spec: RegBlockSpec) -> None:
        super().__init__()
        self.spec = spec
        self.drop_path = DropPath(spec.drop_path) if spec.drop_path else nn.Identity()

    def se_layer(self, act: str) -> nn.Module:
        s = self.spec
        if not s.se_channels:
            return nn.Identity()
        return SqueezeExcite(s.bottleneck, rd_channels=s.se_channels, act_layer=ACT_LAYERS[act])

    def residual(self, y: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        return y if self.downsample is None else self.drop_path(y) + self.downsample(shortcut)


class RegBottleneck(_Block):
    """timm's RegNet ``Bottleneck``: 1x1 conv-norm-act, grouped 3x3 conv-norm-act, SE, 1x1
    conv-norm, the shortcut sum, an activation (none with ``linear_out``)."""

    def __init__(self, spec: RegBlockSpec, act: str = "relu", linear_out: bool = False) -> None:
        super().__init__(spec)
        s, a = spec, ACT_LAYERS[act]
        mid = s.bottleneck
        self.conv1 = ConvNormAct(s.in_channels, mid, 1, act_layer=a)
        self.conv2 = ConvNormAct(mid, mid, 3, s.stride, s.dilation, s.groups, act_layer=a)
        self.se = self.se_layer(act)
        self.conv3 = ConvNormAct(mid, s.out_channels, 1, apply_act=False)
        self.act3 = nn.Identity() if linear_out else a()
        self.downsample = _shortcut(spec, preact=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.se(self.conv2(self.conv1(x))))
        return self.act3(self.residual(y, x))


class RegPreBottleneck(_Block):
    """timm's RegNet ``PreBottleneck`` (RegNetV): norm-act, 1x1 conv, norm-act, grouped 3x3
    conv, SE, norm-act, 1x1 conv, the sum with the shortcut of the first norm's output."""

    def __init__(self, spec: RegBlockSpec, act: str = "relu", linear_out: bool = False) -> None:
        super().__init__(spec)
        s = spec
        mid = s.bottleneck
        pad = conv_padding(3, s.stride, s.dilation)
        self.norm1 = BatchNormAct2d(s.in_channels, act)
        self.conv1 = nn.Conv2d(s.in_channels, mid, 1, bias=False)
        self.norm2 = BatchNormAct2d(mid, act)
        self.conv2 = nn.Conv2d(mid, mid, 3, s.stride, pad, s.dilation, s.groups, bias=False)
        self.se = self.se_layer(act)
        self.norm3 = BatchNormAct2d(mid, act)
        self.conv3 = nn.Conv2d(mid, s.out_channels, 1, bias=False)
        self.downsample = _shortcut(spec, preact=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        y = self.conv2(self.norm2(self.conv1(x)))
        y = self.conv3(self.norm3(self.se(y)))
        return self.residual(y, x)


class RegStage(nn.Sequential):
    """A stage: blocks ``b1``, ``b2``, ... (timm's ``RegStage``)."""


class RegNet(nn.Module):
    """A RegNet described by a :class:`se_common.RegNetConfig`. NCHW; ``state_dict`` keys and
    shapes are timm's (``stem.conv``, ``s1.b1.conv2.conv``, ``s1.b1.se.fc1``,
    ``s1.b1.downsample.conv``, ``final_conv``, ``head.fc``).

    Args:
        config: the architecture.
        num_classes: classifier outputs; 0 returns the pooled features.
        in_chans: input channels.
        features_only: return the feature maps of ``out_indices`` (stem, ``s1`` to ``s4``; no
            final conv, no classifier).
        out_indices: feature levels (``config.feature_info()``), default all.
        drop_rate: dropout before the classifier in training.
        drop_path_rate: stochastic depth: block ``i`` of ``n`` drops its branch at
            ``drop_path_rate * i / (n - 1)`` in training (timm's).
        zero_init_last: zero each bottleneck's last BatchNorm scale; ``None`` takes the
            config's (timm: on, off for RegNetZ).

    Shapes:
        input ``(N, in_chans, H, W)``; logits ``(N, num_classes)``, or feature maps.

    Example:
        >>> model = create_model("regnety_016").eval()
        >>> model(torch.randn(1, 3, 224, 224)).shape
        torch.Size([1, 1000])
    """

    pretrained_cfg: PretrainedCfg | None = None  # set by from_pretrained

    def __init__(
        self,
        config: RegNetConfig,
        num_classes: int = 1000,
        in_chans: int = 3,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_last: bool | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, RegNetConfig):
            raise TypeError(f"config must be a se_common.RegNetConfig, got {config!r}")
        self.out_indices = config.check_options(num_classes, in_chans, out_indices)
        self.drop_rate = checked_rate("drop_rate", drop_rate)
        specs = config.blocks(drop_path_rate)
        self.config, self.in_chans, self.num_classes = config, in_chans, num_classes
        self.features_only = features_only
        act, width = config.act_layer, config.stem_width
        if config.preact:
            self.stem: nn.Module = nn.Conv2d(in_chans, width, 3, 2, 1, bias=False)
        else:
            self.stem = ConvNormAct(in_chans, width, 3, 2, act_layer=ACT_LAYERS[act])
        block = RegPreBottleneck if config.preact else RegBottleneck
        for s in range(1, 5):
            blocks = [(f"b{b.index}", b) for b in specs if b.stage == s]
            stage = RegStage()
            for name, spec in blocks:
                stage.add_module(name, block(spec, act, config.linear_out))
            self.add_module(f"s{s}", stage)
        self.num_features = self.head_hidden_size = config.pooled_features
        if not features_only:
            if config.num_features:
                self.final_conv: nn.Module = ConvNormAct(
                    config.final_width, config.num_features, 1, act_layer=ACT_LAYERS[act]
                )
            else:
                self.final_conv = ACT_LAYERS[act]() if config.final_act else nn.Identity()
            self.head = nn.Module()
            self.head.fc = (
                nn.Linear(config.pooled_features, num_classes) if num_classes else nn.Identity()
            )
        zero = config.zero_init_last if zero_init_last is None else zero_init_last
        self._init_weights(bool(zero))

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """timm's ``feature_info``: ``num_chs``, ``reduction`` and ``module`` of every level
        (of ``out_indices`` with ``features_only``)."""
        return model_feature_info(self.config, self.features_only, self.out_indices)

    def _init_weights(self, zero_init_last: bool) -> None:
        """timm's RegNet ``_init_weights``: convs normal with std ``sqrt(2 / fan_out)`` (fan-out
        per group), the classifier normal with std 0.01, and with ``zero_init_last`` each
        bottleneck's last BatchNorm scale zero."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                fan_out = kh * kw * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
            elif zero_init_last and isinstance(m, RegBottleneck):
                nn.init.zeros_(m.conv3.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_input(x, channels=self.in_chans)
        x = self.stem(x)
        features = [x]
        for s in range(1, 5):
            x = getattr(self, f"s{s}")(x)
            features.append(x)
        if self.features_only:
            return [features[i] for i in self.out_indices]
        x = self.final_conv(x).mean(dim=(2, 3))
        if self.drop_rate:
            x = F.dropout(x, self.drop_rate, self.training)
        return self.head.fc(x)
