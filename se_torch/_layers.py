"""Building blocks shared by the PyTorch modules: the input check and ``ConvNormAct``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from se_common import check_feature_map, conv_padding

__all__ = ["ConvNormAct", "Factory", "check_input"]

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
