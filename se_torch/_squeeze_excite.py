"""Squeeze-and-Excitation blocks in PyTorch (NCHW; channels_last inputs work too).

Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018, eq. 2-4:
``z = mean_{hw}(x)`` (squeeze), ``s = σ(W2 δ(W1 z))`` (excite), ``y = s ⊙ x`` (scale).
"""

from __future__ import annotations

import torch
from torch import nn

from se_common import classic_rd_channels, resolve_rd_channels
from se_torch._dtypes import mean
from se_torch._layers import Factory, check_input

__all__ = ["SELayer", "SElayer", "SqueezeExcite"]


class SELayer(nn.Module):
    """The classic SE recipe, line for line: ``Linear`` layers without bias, reduction ``r``.

    State-dict keys are ``fc.0.weight`` (C // r, C) and ``fc.2.weight`` (C, C // r), so
    checkpoints of the classic recipe load with ``strict=True``.

    Args:
        channel: number of input (and output) channels C.
        reduction: the reduction ratio r; the hidden width is ``channel // reduction``.

    Shapes:
        input ``(N, C, H, W)``, output ``(N, C, H, W)``.

    Example:
        >>> se = SELayer(64, reduction=16)
        >>> se(torch.randn(2, 64, 7, 7)).shape
        torch.Size([2, 64, 7, 7])
    """

    def __init__(self, channel: int, reduction: int = 16) -> None:
        super().__init__()
        rd = classic_rd_channels(channel, reduction, channels_name="channel")
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, rd, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(rd, channel, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, channels=self.fc[0].in_features)
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


SElayer = SELayer  # the recipe's own spelling


class SqueezeExcite(nn.Module):
    """Configurable SE block with timm's ``SEModule`` / torchvision's ``SqueezeExcitation`` layout.

    State-dict keys are ``fc1.weight`` (rd, C, 1, 1), ``fc1.bias`` (rd,), ``fc2.weight``
    (C, rd, 1, 1) and ``fc2.bias`` (C,), so their state_dicts load as they are. The defaults
    reproduce timm's ``SEModule`` exactly.

    Args:
        channels: number of input (and output) channels C.
        rd_ratio: hidden width as a fraction of C (default 1/16), rounded with ``rd_divisor``.
        rd_channels: explicit hidden width; excludes ``rd_ratio`` and ``rd_divisor``.
        rd_divisor: the hidden width is rounded to a multiple of this (default 8), like timm's
            ``make_divisible(C * rd_ratio, rd_divisor, round_limit=0.)``.
        bias: whether both 1x1 convolutions have a bias.
        act_layer: factory of the activation δ between the two layers (default ``nn.ReLU``).
        gate_layer: factory of the gate σ (default ``nn.Sigmoid``; ``nn.Hardsigmoid`` is
            ``relu6(x + 3) / 6``).
        device, dtype: passed to the parameters' constructors.

    Shapes:
        input ``(N, C, *spatial)`` with one or more spatial axes (channels_last memory format
        works and is kept); output has the input's shape. Half-precision inputs are pooled with
        float32 accumulation.

    Example:
        >>> se = SqueezeExcite(64)            # hidden width 8, as timm's SEModule(64)
        >>> se(torch.randn(2, 64, 7, 7)).shape
        torch.Size([2, 64, 7, 7])
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float | None = None,
        rd_channels: int | None = None,
        rd_divisor: int | None = None,
        bias: bool = True,
        act_layer: Factory = nn.ReLU,
        gate_layer: Factory = nn.Sigmoid,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.rd_channels = resolve_rd_channels(channels, rd_ratio, rd_channels, rd_divisor)
        factory = {"device": device, "dtype": dtype}
        self.fc1 = nn.Conv2d(channels, self.rd_channels, 1, bias=bias, **factory)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(self.rd_channels, channels, 1, bias=bias, **factory)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, channels=self.channels, spatial_dims=None)
        n, c, *spatial = x.shape
        s = mean(x, tuple(range(2, x.ndim))).view(n, c, 1, 1)
        s = self.gate(self.fc2(self.act(self.fc1(s))))
        return x * s.view(n, c, *(1 for _ in spatial))
