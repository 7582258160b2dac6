"""The EfficientNet family in PyTorch, key for key timm's ``efficientnet.py`` models, built
from block strings (:class:`se_common.EfficientNetConfig`).

Each block is one of timm's four modules (:data:`BLOCKS`), built from its
:class:`se_common.MBBlockSpec` alone: ``DepthwiseSeparableConv`` (``ds``, ``dsa``),
``InvertedResidual`` (``ir``, MBConv), ``EdgeResidual`` (``er``, FusedMBConv) and ``ConvBnAct``
(``cn``). Their SE is :class:`MBSqueezeExcite` (``se.conv_reduce`` / ``se.conv_expand``, the
block's activation, a sigmoid gate); mixed kernels are :class:`MixedConv2d`; TensorFlow's
"SAME" padding (``pad_type="same"``) is :class:`Conv2dSame` where it depends on the input size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from se_common import (
    EfficientNetConfig,
    MBBlockSpec,
    PretrainedCfg,
    conv_padding,
    conv_parts,
    lookup,
    model_feature_info,
)
from se_common import drop_rate as checked_rate
from se_torch._layers import DropPath, check_input

__all__ = [
    "ACT_LAYERS",
    "GATE_LAYERS",
    "MB_BLOCKS",
    "BatchNormAct2d",
    "Conv2dSame",
    "ConvBnAct",
    "DepthwiseSeparableConv",
    "EdgeResidual",
    "EfficientNet",
    "InvertedResidual",
    "MBSqueezeExcite",
    "MixedConv2d",
    "MobileNetV3",
    "create_conv2d",
]

# Activations by their se_common.ACTIVATIONS names.
ACT_LAYERS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hard_swish": nn.Hardswish,
    "silu": nn.SiLU,
    "mish": nn.Mish,
}
# SE gates by their se_common.SE_GATES names (nn.Hardsigmoid: relu6(x + 3) / 6).
GATE_LAYERS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "hard_sigmoid": nn.Hardsigmoid}


def _same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding of one axis (timm's ``get_same_padding``): before, after."""
    total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's "SAME" padding, computed from each input's size (timm's
    ``Conv2dSame``): ``ceil(size / stride)`` outputs, the odd pixel padded after."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, padding=0, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        top, bottom = _same_pads(x.shape[-2], kh, sh, dh)
        left, right = _same_pads(x.shape[-1], kw, sw, dw)
        return super().forward(F.pad(x, (left, right, top, bottom)))


def create_conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    pad_type: str = "",
    bias: bool = False,
) -> nn.Conv2d:
    """timm's ``create_conv2d_pad``: PyTorch's symmetric padding, or with ``pad_type="same"``
    TensorFlow's (static where it does not depend on the size, else :class:`Conv2dSame`)."""
    options = {"stride": stride, "dilation": dilation, "groups": groups, "bias": bias}
    if pad_type == "same" and not (stride == 1 and (dilation * (kernel_size - 1)) % 2 == 0):
        return Conv2dSame(in_channels, out_channels, kernel_size, **options)
    padding = conv_padding(kernel_size, stride, dilation)
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, **options)


class MixedConv2d(nn.ModuleDict):
    """timm's ``MixedConv2d`` (Tan & Le, MixConv, BMVC 2019): the channels split into parts
    (:func:`se_common.conv_parts`), each convolved with its own kernel, concatenated.
    Children ``"0"``, ``"1"``, ... (keys ``conv_dw.0.weight``); depthwise or ungrouped."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_sizes: Sequence[int],
        stride: int = 1,
        dilation: int = 1,
        depthwise: bool = False,
        pad_type: str = "",
    ) -> None:
        super().__init__()
        parts = conv_parts(in_channels, out_channels, kernel_sizes, in_channels if depthwise else 1)
        for i, (ci, co, k, groups) in enumerate(parts):
            self[str(i)] = create_conv2d(ci, co, k, stride, dilation, groups, pad_type)
        self.splits = [p[0] for p in parts]
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.splits, 1)
        return torch.cat([conv(p) for conv, p in zip(self.values(), parts, strict=True)], 1)


def _conv(
    inp: int,
    out: int,
    kernels: tuple[int, ...],
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    pad_type: str = "",
) -> nn.Module:
    """A conv of one kernel, or a :class:`MixedConv2d` of several (depthwise if ``groups``
    is the input's channels, as timm's ``create_conv2d``)."""
    if len(kernels) > 1:
        return MixedConv2d(inp, out, kernels, stride, dilation, groups == inp > 1, pad_type)
    return create_conv2d(inp, out, kernels[0], stride, dilation, groups, pad_type)


class BatchNormAct2d(nn.BatchNorm2d):
    """``BatchNorm2d`` followed by an activation, timm's ``BatchNormAct2d``: the same keys and
    statistics as a BatchNorm (its activation holds none)."""

    def __init__(
        self, channels: int, act: str = "relu", apply_act: bool = True, eps: float = 1e-5
    ) -> None:
        super().__init__(channels, eps=eps)
        self.act = ACT_LAYERS[act]() if apply_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class MBSqueezeExcite(nn.Module):
    """The SE of EfficientNet's blocks, timm's ``_efficientnet_blocks.SqueezeExcite``: mean
    pool, 1x1 conv ``conv_reduce`` (with bias), an activation (the block's, or MobileNetV3's
    ReLU), 1x1 conv ``conv_expand``, a gate (sigmoid, or MobileNetV3's hard sigmoid). Its width
    comes from the block (:class:`MBBlockSpec`).

    Example:
        >>> se = MBSqueezeExcite(96, 4, "silu")
        >>> se(torch.randn(2, 96, 7, 7)).shape
        torch.Size([2, 96, 7, 7])
    """

    def __init__(
        self, channels: int, rd_channels: int, act: str = "relu", gate: str = "sigmoid"
    ) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, rd_channels, 1, bias=True)
        self.act1 = ACT_LAYERS[act]()
        self.conv_expand = nn.Conv2d(rd_channels, channels, 1, bias=True)
        self.gate = GATE_LAYERS[gate]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * self.gate(s)


class _Block(nn.Module):
    """Base of the blocks: the residual sum (with stochastic depth) of ``spec``."""

    def __init__(self, spec: MBBlockSpec, pad_type: str, eps: float) -> None:
        super().__init__()
        self.spec, self.pad_type, self.eps = spec, pad_type, eps
        self.has_skip = spec.has_skip
        self.drop_path = DropPath(spec.drop_path) if spec.drop_path else nn.Identity()

    def norm(self, channels: int, apply_act: bool = True) -> BatchNormAct2d:
        return BatchNormAct2d(channels, self.spec.act, apply_act, self.eps)

    def se_layer(self) -> nn.Module:
        s = self.spec
        return (
            MBSqueezeExcite(s.mid_channels, s.se_channels, s.se_act, s.se_gate)
            if s.se_channels
            else nn.Identity()
        )

    def residual(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(y) + x if self.has_skip else y


class DepthwiseSeparableConv(_Block):
    """timm's ``DepthwiseSeparableConv`` (``ds``, ``dsa``): depthwise conv, norm-act, SE,
    pointwise conv, norm (activated for ``dsa``), residual."""

    def __init__(self, spec: MBBlockSpec, pad_type: str = "", eps: float = 1e-5) -> None:
        super().__init__(spec, pad_type, eps)
        s = spec
        c = s.mid_channels
        self.conv_dw = _conv(c, c, s.kernel_size, s.stride, s.dilation, s.groups, pad_type)
        self.bn1 = self.norm(c)
        self.se = self.se_layer()
        self.conv_pw = _conv(c, s.out_channels, s.pw_kernel_size, pad_type=pad_type)
        self.bn2 = self.norm(s.out_channels, apply_act=s.pw_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se(self.bn1(self.conv_dw(x)))
        return self.residual(self.bn2(self.conv_pw(y)), x)


class InvertedResidual(_Block):
    """timm's ``InvertedResidual`` (``ir``, MBConv): pointwise expansion, norm-act, depthwise
    conv, norm-act, SE, pointwise projection, norm, residual."""

    def __init__(self, spec: MBBlockSpec, pad_type: str = "", eps: float = 1e-5) -> None:
        super().__init__(spec, pad_type, eps)
        s = spec
        c = s.mid_channels
        self.conv_pw = _conv(s.in_channels, c, s.exp_kernel_size, pad_type=pad_type)
        self.bn1 = self.norm(c)
        self.conv_dw = _conv(c, c, s.kernel_size, s.stride, s.dilation, s.groups, pad_type)
        self.bn2 = self.norm(c)
        self.se = self.se_layer()
        self.conv_pwl = _conv(c, s.out_channels, s.pw_kernel_size, pad_type=pad_type)
        self.bn3 = self.norm(s.out_channels, apply_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn1(self.conv_pw(x))
        y = self.se(self.bn2(self.conv_dw(y)))
        return self.residual(self.bn3(self.conv_pwl(y)), x)


class EdgeResidual(_Block):
    """timm's ``EdgeResidual`` (``er``, FusedMBConv): a full expansion conv, norm-act, SE,
    pointwise projection, norm, residual."""

    def __init__(self, spec: MBBlockSpec, pad_type: str = "", eps: float = 1e-5) -> None:
        super().__init__(spec, pad_type, eps)
        s = spec
        c = s.mid_channels
        self.conv_exp = _conv(
            s.in_channels, c, s.kernel_size, s.stride, s.dilation, s.groups, pad_type
        )
        self.bn1 = self.norm(c)
        self.se = self.se_layer()
        self.conv_pwl = _conv(c, s.out_channels, s.pw_kernel_size, pad_type=pad_type)
        self.bn2 = self.norm(s.out_channels, apply_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se(self.bn1(self.conv_exp(x)))
        return self.residual(self.bn2(self.conv_pwl(y)), x)


class ConvBnAct(_Block):
    """timm's ``ConvBnAct`` (``cn``): conv, norm-act, residual with ``skip``."""

    def __init__(self, spec: MBBlockSpec, pad_type: str = "", eps: float = 1e-5) -> None:
        super().__init__(spec, pad_type, eps)
        s = spec
        self.conv = _conv(
            s.in_channels, s.out_channels, s.kernel_size, s.stride, s.dilation, s.groups, pad_type
        )
        self.bn1 = self.norm(s.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(self.bn1(self.conv(x)), x)


# Block classes by their se_common.BLOCK_KINDS names (the ResNet family's are BLOCKS).
MB_BLOCKS: dict[str, type[_Block]] = {
    "ds": DepthwiseSeparableConv,
    "dsa": DepthwiseSeparableConv,
    "ir": InvertedResidual,
    "er": EdgeResidual,
    "cn": ConvBnAct,
}


class EfficientNet(nn.Module):
    """An EfficientNet-family network described by a :class:`se_common.EfficientNetConfig`.
    NCHW; ``state_dict`` keys and shapes are timm's.

    Args:
        config: the block strings and builder arguments.
        num_classes: classifier outputs; 0 returns the pooled features.
        in_chans: input channels.
        features_only: return the feature maps of ``out_indices`` (timm's
            ``EfficientNetFeatures``: no head conv, no classifier).
        out_indices: feature levels (``config.feature_info()``), default all.
        drop_rate: dropout before the classifier in training.
        drop_path_rate: stochastic depth: block ``i`` of ``n`` drops its branch at
            ``drop_path_rate * i / n`` in training (timm's).

    Shapes:
        input ``(N, in_chans, H, W)``; logits ``(N, num_classes)``, or feature maps.

    Example:
        >>> model = create_model("efficientnet_b0").eval()
        >>> model(torch.randn(1, 3, 224, 224)).shape
        torch.Size([1, 1000])
    """

    pretrained_cfg: PretrainedCfg | None = None  # set by from_pretrained

    def __init__(
        self,
        config: EfficientNetConfig,
        num_classes: int = 1000,
        in_chans: int = 3,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(config, EfficientNetConfig):
            raise TypeError(f"config must be a se_common.EfficientNetConfig, got {config!r}")
        self.out_indices = config.check_options(num_classes, in_chans, out_indices)
        self.drop_rate = checked_rate("drop_rate", drop_rate)
        specs = config.blocks(drop_path_rate)
        self.config, self.in_chans, self.num_classes = config, in_chans, num_classes
        self.features_only = features_only
        pad, eps, act = config.pad_type, config.bn_eps, config.act_layer
        stem = config.stem_channels
        self.conv_stem = create_conv2d(in_chans, stem, config.stem_kernel_size, 2, pad_type=pad)
        self.bn1 = BatchNormAct2d(stem, act, eps=eps)
        stages: list[list[nn.Module]] = [[] for _ in config.arch_def]
        for spec in specs:
            block = lookup(MB_BLOCKS, spec.block_type, "block", "se_torch.MB_BLOCKS")
            stages[spec.stage].append(block(spec, pad, eps))
        self.blocks = nn.Sequential(*(nn.Sequential(*s) for s in stages))
        self.num_features = config.num_features
        self.head_hidden_size = config.head_hidden_size
        self._stem_level, self._taps = config.feature_taps()
        if not features_only:
            if config.head_features:
                self.conv_head = create_conv2d(
                    specs[-1].out_channels,
                    config.head_features,
                    1,
                    pad_type=pad,
                    bias=config.head_bias,
                )
            if config.efficient_head:
                self.act2 = ACT_LAYERS[act]()
            elif config.head_features:
                self.bn2 = BatchNormAct2d(config.head_features, act, eps=eps)
            self.classifier = (
                nn.Linear(self.head_hidden_size, num_classes) if num_classes else nn.Identity()
            )
        self._init_weights()

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """timm's ``feature_info``: ``num_chs``, ``reduction`` and ``module`` of every level
        (of ``out_indices`` with ``features_only``)."""
        return model_feature_info(self.config, self.features_only, self.out_indices)

    def _init_weights(self) -> None:
        """timm's ``_init_weight_goog``: convs normal with std ``sqrt(2 / fan_out)`` (fan-out
        per group), BatchNorm ones and zeros, the classifier uniform in ``1 / sqrt(out)``."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                fan_out = kh * kw * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.weight.shape[0])
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_input(x, channels=self.in_chans)
        x = self.bn1(self.conv_stem(x))
        features = {} if self._stem_level is None else {self._stem_level: x}
        for i, block in enumerate(b for stage in self.blocks for b in stage):
            x = block(x)
            if i in self._taps:
                features[self._taps[i]] = x
        if self.features_only:
            return [features[i] for i in self.out_indices]
        if self.config.efficient_head:
            x = self.act2(self.conv_head(x.mean(dim=(2, 3), keepdim=True))).flatten(1)
        else:
            if self.config.head_features:
                x = self.bn2(self.conv_head(x))
            x = x.mean(dim=(2, 3))
        if self.drop_rate:
            x = F.dropout(x, self.drop_rate, self.training)
        return self.classifier(x)


class MobileNetV3(EfficientNet):
    """A MobileNetV3-family network (timm's ``mobilenetv3.py``: MobileNetV3, LCNet, FBNetV3,
    HardCoReNAS) described by a :class:`se_common.MobileNetV3Config`: an :class:`EfficientNet`
    with the efficient head (global pool, ``conv_head`` with bias, activation, classifier).
    ``num_features`` is the last block's width, ``head_hidden_size`` the head's, as timm's.

    Example:
        >>> model = create_model("mobilenetv3_large_100").eval()
        >>> model(torch.randn(1, 3, 224, 224)).shape
        torch.Size([1, 1000])
    """
