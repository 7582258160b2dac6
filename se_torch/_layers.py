"""Building blocks shared by the PyTorch modules: the input check, ``ConvNormAct``, and the
training-only regularisers ``DropPath`` and ``DropBlock2d`` (timm's)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from se_common import DropBlock, check_feature_map, conv_padding, drop_rate

__all__ = ["ConvNormAct", "DropBlock2d", "DropPath", "Factory", "check_input"]

Factory = Callable[..., nn.Module]  # a layer factory: a class or a functools.partial of one


def check_input(
    x: torch.Tensor, *, channels: int | None = None, spatial_dims: int | None = 2
) -> None:
    """Clear errors unless ``x`` is a floating ``(N, C, *spatial)`` map.

    Args:
        channels: the C the module's weights are for; ``None`` accepts any.
        spatial_dims: the exact number of spatial axes; ``None`` accepts any >= 1.
    """
    if channels is None:
        channels = x.shape[1] if x.ndim > 1 else 0
    check_feature_map(
        x.shape,
        x.dtype,
        x.is_floating_point(),
        channels,
        channels_last=False,
        spatial_dims=spatial_dims,
    )


class ConvNormAct(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> activation, with timm's ``ConvNormAct`` keys.

    State-dict keys are ``conv.weight`` and ``bn.*``; padding is timm's symmetric
    ``((stride - 1) + dilation * (k - 1)) // 2``.

    Args:
        in_channels, out_channels, kernel_size, stride, dilation, groups: of the convolution.
        apply_act: whether the activation follows the BatchNorm.
        act_layer, norm_layer: factories of the activation and of the BatchNorm
            (``norm_layer(out_channels, device=..., dtype=...)``).

    Shapes:
        input ``(N, in_channels, H, W)``; output ``(N, out_channels, H / stride, W / stride)``.

    Example:
        >>> cna = ConvNormAct(16, 32, 3, stride=2)
        >>> cna(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 32, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        apply_act: bool = True,
        act_layer: Factory = nn.ReLU,
        norm_layer: Factory = nn.BatchNorm2d,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        padding = conv_padding(kernel_size, stride, dilation)
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias=False,
            **factory,
        )
        self.bn = norm_layer(out_channels, **factory)
        self.act = act_layer() if apply_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., ECCV 2016), timm's ``DropPath``: in training, each
    sample's input is zeroed with probability ``drop_prob``, else scaled by
    ``1 / (1 - drop_prob)``; the identity in eval mode. Masks come from PyTorch's generator
    (``torch.manual_seed``)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_rate("drop_prob", drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.drop_prob:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class DropBlock2d(nn.Module):
    """DropBlock (Ghiasi et al., NeurIPS 2018), timm's ``DropBlock2d`` (blocks shared by all
    channels, kept values rescaled): see :class:`se_common.DropBlock`. The identity in eval
    mode; masks come from PyTorch's generator."""

    def __init__(self, drop: DropBlock) -> None:
        super().__init__()
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.drop.rate:
            return x
        n, _, h, w = x.shape
        kh, kw, gamma = self.drop.block_and_seed_rate(h, w)
        with torch.no_grad():
            seeds = torch.empty((n, 1, h, w), dtype=x.dtype, device=x.device).bernoulli_(gamma)
            blocks = nn.functional.max_pool2d(seeds, (kh, kw), 1, (kh // 2, kw // 2))
            if kh % 2 == 0 or kw % 2 == 0:
                blocks = blocks[..., (kh + 1) % 2 :, (kw + 1) % 2 :]
            keep = 1.0 - blocks
            scale = keep.numel() / keep.to(dtype=torch.float32).sum().add(1e-7)
            keep.mul_(scale.to(x.dtype))
        return x * keep

    def extra_repr(self) -> str:
        d = self.drop
        return f"drop_prob={d.rate}, block_size={d.block_size}, gamma_scale={d.gamma_scale}"
