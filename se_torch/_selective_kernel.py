"""Selective Kernel unit (Li et al., "Selective Kernel Networks", CVPR 2019) in PyTorch, NCHW.

Key for key timm's ``SelectiveKernel``: ``paths.{i}.conv/bn`` (one ConvNormAct per kernel
size), ``attn.fc_reduce``, ``attn.bn``, ``attn.fc_select``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from se_common import out_channels_or, resolve_rd_channels, selective_kernel_paths
from se_torch._dtypes import mean
from se_torch._layers import ConvNormAct, Factory, check_input

__all__ = ["SelectiveKernel", "SelectiveKernelAttn"]


class SelectiveKernelAttn(nn.Module):
    """Fuse and select: softmax attention over the paths, per channel.

    ``(N, P, C, H, W)`` -> weights ``(N, P, C, 1, 1)`` that sum to 1 over P:
    ``softmax_P(fc_select(relu(bn(fc_reduce(mean_hw(sum_P x))))))``.
    """

    def __init__(
        self,
        channels: int,
        num_paths: int = 2,
        attn_channels: int = 32,
        act_layer: Factory = nn.ReLU,
        norm_layer: Factory = nn.BatchNorm2d,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_paths = num_paths
        self.fc_reduce = nn.Conv2d(channels, attn_channels, 1, bias=False, **factory)
        self.bn = norm_layer(attn_channels, **factory)
        self.act = act_layer()
        self.fc_select = nn.Conv2d(attn_channels, channels * num_paths, 1, bias=False, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = mean(x.sum(1), (2, 3), keepdim=True)
        s = self.fc_select(self.act(self.bn(self.fc_reduce(s))))
        n, c = s.shape[:2]
        return torch.softmax(s.view(n, self.num_paths, c // self.num_paths, 1, 1), dim=1)


class SelectiveKernel(nn.Module):
    """Selective Kernel convolution with timm's ``SelectiveKernel`` options and layout.

    Split: one ConvNormAct (conv, BatchNorm, ReLU) per path, by default a 3x3 and a 3x3 with
    dilation 2 (a 5x5's receptive field). Fuse: sum the paths, pool, reduce. Select: a softmax
    over the paths per channel weights their sum.

    Args:
        in_channels: input channels C_in.
        out_channels: output channels (default ``in_channels``).
        kernel_size: receptive field of each path (default ``(3, 5)``).
        stride, dilation, groups: of every path's conv (``groups`` is capped at
            ``out_channels``, as timm does).
        rd_ratio, rd_channels, rd_divisor: width of the attention's hidden layer, by default
            timm's ``make_divisible(out_channels / 16, 8)`` (round_limit 0.9).
        keep_3x3: make every path a 3x3 conv, dilated to reach its kernel size (timm's default).
        split_input: each path sees its own ``C_in / paths`` slice of the input (timm's
            SK-ResNets) instead of all of it.
        act_layer, norm_layer: factories of the paths' activation and BatchNorm (the attention
            keeps ReLU and BatchNorm2d, as timm's).

    Shapes:
        input ``(N, C_in, H, W)``; output ``(N, out_channels, H / stride, W / stride)``.

    Example:
        >>> sk = SelectiveKernel(64, 128, stride=2)
        >>> sk(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 128, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        kernel_size: int | Sequence[int] | None = None,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        rd_ratio: float | None = None,
        rd_channels: int | None = None,
        rd_divisor: int | None = None,
        keep_3x3: bool = True,
        split_input: bool = True,
        act_layer: Factory = nn.ReLU,
        norm_layer: Factory = nn.BatchNorm2d,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        out_channels = out_channels_or(out_channels, in_channels)
        paths = selective_kernel_paths(kernel_size, dilation, keep_3x3)
        self.num_paths = len(paths)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.split_input = split_input
        path_in = in_channels
        if split_input:
            if in_channels % self.num_paths:
                raise ValueError(
                    f"split_input needs in_channels divisible by the {self.num_paths} paths, got "
                    f"in_channels={in_channels}"
                )
            path_in = in_channels // self.num_paths
        factory = {"device": device, "dtype": dtype}
        self.paths = nn.ModuleList(
            ConvNormAct(
                path_in,
                out_channels,
                k,
                stride,
                d,
                min(out_channels, groups),
                act_layer=act_layer,
                norm_layer=norm_layer,
                **factory,
            )
            for k, d in paths
        )
        attn_channels = resolve_rd_channels(
            out_channels, rd_ratio, rd_channels, rd_divisor, round_limit=0.9
        )
        self.attn = SelectiveKernelAttn(out_channels, self.num_paths, attn_channels, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, channels=self.in_channels)
        if self.split_input:
            chunks = torch.split(x, self.in_channels // self.num_paths, 1)
            x_paths = [op(chunk) for op, chunk in zip(self.paths, chunks, strict=True)]
        else:
            x_paths = [op(x) for op in self.paths]
        y = torch.stack(x_paths, dim=1)
        return (y * self.attn(y)).sum(dim=1)
