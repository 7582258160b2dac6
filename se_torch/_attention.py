"""SE's relatives in PyTorch (NCHW), key for key timm's modules: ECA, effective SE and CBAM.

Each is a drop-in attention layer: ``module(channels)`` maps ``(N, C, H, W)`` to the same shape,
so it plugs into the backbones as ``attn_layer`` (``create_model("resnet50", attn="eca")``).
"""

from __future__ import annotations

import torch
from torch import nn

from se_common import eca_kernel_size, odd_kernel_size, resolve_rd_channels
from se_torch._dtypes import mean
from se_torch._layers import ConvNormAct, Factory, check_input

__all__ = ["CbamModule", "ChannelAttn", "EcaModule", "EffectiveSEModule", "SpatialAttn"]


class EcaModule(nn.Module):
    """Efficient Channel Attention (Wang et al., CVPR 2020) with timm's ``EcaModule`` layout.

    ``y = x * gate(conv1d(mean_hw(x)))``: a 1-D convolution over the pooled channel vector
    (zero padded, no bias) replaces SE's two fully connected layers. State-dict key:
    ``conv.weight`` of shape ``(1, 1, k)``.

    Args:
        channels: C, which picks the adaptive kernel size; ``None`` needs ``kernel_size``.
        kernel_size: the 1-D kernel size (odd). By default it is adaptive:
            ``t = int(abs(log2(C) + beta) / gamma)``, made odd, at least 3 (timm's rule; timm
            ignores an explicit ``kernel_size`` when ``channels`` is given, this module uses it).
        gamma, beta: the adaptive rule's constants (2 and 1, as the paper and timm).
        gate_layer: factory of the gate (default ``nn.Sigmoid``).

    Shapes:
        input ``(N, C, H, W)``, output the same.

    Example:
        >>> eca = EcaModule(256)         # kernel size 5
        >>> eca(torch.randn(2, 256, 7, 7)).shape
        torch.Size([2, 256, 7, 7])
    """

    def __init__(
        self,
        channels: int | None = None,
        kernel_size: int | None = None,
        gamma: float = 2,
        beta: float = 1,
        gate_layer: Factory = nn.Sigmoid,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.kernel_size = eca_kernel_size(channels, kernel_size, gamma, beta)
        self.conv = nn.Conv1d(
            1,
            1,
            self.kernel_size,
            padding=(self.kernel_size - 1) // 2,
            bias=False,
            device=device,
            dtype=dtype,
        )
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, channels=self.channels)
        n, c = x.shape[:2]
        y = self.conv(mean(x, (2, 3), keepdim=True).view(n, 1, c))
        return x * self.gate(y).view(n, c, 1, 1)


class EffectiveSEModule(nn.Module):
    """Effective SE (Lee & Park, CenterMask, CVPR 2020) with timm's ``EffectiveSEModule`` layout.

    ``y = x * hard_sigmoid(fc(mean_hw(x)))`` with one C -> C fully connected layer (a 1x1 conv
    with bias): no reduction, so no channel information is lost. State-dict keys: ``fc.weight``
    ``(C, C, 1, 1)`` and ``fc.bias`` ``(C,)``.

    Args:
        channels: C.
        add_maxpool: pool with ``0.5 * mean + 0.5 * max`` (timm's experimental option).
        gate_layer: factory of the gate (default ``nn.Hardsigmoid``, ``relu6(x + 3) / 6``).

    Shapes:
        input ``(N, C, H, W)``, output the same.

    Example:
        >>> ese = EffectiveSEModule(64)
        >>> ese(torch.randn(2, 64, 7, 7)).shape
        torch.Size([2, 64, 7, 7])
    """

    def __init__(
        self,
        channels: int,
        add_maxpool: bool = False,
        gate_layer: Factory = nn.Hardsigmoid,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels, self.add_maxpool = channels, add_maxpool
        self.fc = nn.Conv2d(channels, channels, 1, device=device, dtype=dtype)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, channels=self.channels)
        s = mean(x, (2, 3), keepdim=True)
        if self.add_maxpool:
            s = 0.5 * s + 0.5 * x.amax(dim=(2, 3), keepdim=True)
        return x * self.gate(self.fc(s))


class ChannelAttn(nn.Module):
    """CBAM's channel attention: a shared MLP over average- and max-pooled channels, summed."""

    def __init__(
        self,
        channels: int,
        rd_ratio: float | None = None,
        rd_channels: int | None = None,
        rd_divisor: int | None = None,
        act_layer: Factory = nn.ReLU,
        gate_layer: Factory = nn.Sigmoid,
        mlp_bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.rd_channels = resolve_rd_channels(
            channels, rd_ratio, rd_channels, rd_divisor, default_divisor=1
        )
        factory = {"device": device, "dtype": dtype}
        self.fc1 = nn.Conv2d(channels, self.rd_channels, 1, bias=mlp_bias, **factory)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(self.rd_channels, channels, 1, bias=mlp_bias, **factory)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_avg = self.fc2(self.act(self.fc1(mean(x, (2, 3), keepdim=True))))
        x_max = self.fc2(self.act(self.fc1(x.amax(dim=(2, 3), keepdim=True))))
        return x * self.gate(x_avg + x_max)


class SpatialAttn(nn.Module):
    """CBAM's spatial attention: conv + BatchNorm over the channel mean and max, gated."""

    def __init__(
        self,
        kernel_size: int = 7,
        gate_layer: Factory = nn.Sigmoid,
        norm_layer: Factory = nn.BatchNorm2d,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kernel_size = odd_kernel_size("spatial_kernel_size", kernel_size)
        self.conv = ConvNormAct(
            2,
            1,
            kernel_size,
            apply_act=False,
            norm_layer=norm_layer,
            device=device,
            dtype=dtype,
        )
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.cat([mean(x, 1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * self.gate(self.conv(s))


class CbamModule(nn.Module):
    """CBAM (Woo et al., ECCV 2018) with timm's ``CbamModule`` layout: channel, then spatial.

    Channel attention: ``x * σ(fc2(δ(fc1(avg(x)))) + fc2(δ(fc1(max(x)))))``; spatial attention:
    ``x * σ(bn(conv([mean_c(x), max_c(x)])))``. State-dict keys: ``channel.fc1.weight``
    ``(rd, C, 1, 1)``, ``channel.fc2.weight`` ``(C, rd, 1, 1)``, ``spatial.conv.conv.weight``
    ``(1, 2, k, k)`` and ``spatial.conv.bn.*``.

    Args:
        channels: C.
        rd_ratio, rd_channels, rd_divisor: the MLP's hidden width, timm's defaults
            ``make_divisible(C / 16, 1, round_limit=0.)``.
        spatial_kernel_size: the spatial conv's kernel size (odd, default 7).
        act_layer, gate_layer: factories of the MLP activation and of both gates.
        mlp_bias: whether the MLP's 1x1 convs have biases (timm: no).
        norm_layer: factory of the spatial attention's BatchNorm (default ``nn.BatchNorm2d``).

    Shapes:
        input ``(N, C, H, W)``, output the same. In training mode the spatial BatchNorm updates
        its statistics, as any BatchNorm.

    Example:
        >>> cbam = CbamModule(64)        # hidden width 4
        >>> cbam(torch.randn(2, 64, 7, 7)).shape
        torch.Size([2, 64, 7, 7])
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float | None = None,
        rd_channels: int | None = None,
        rd_divisor: int | None = None,
        spatial_kernel_size: int = 7,
        act_layer: Factory = nn.ReLU,
        gate_layer: Factory = nn.Sigmoid,
        mlp_bias: bool = False,
        norm_layer: Factory = nn.BatchNorm2d,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.channels = channels
        self.channel = ChannelAttn(
            channels, rd_ratio, rd_channels, rd_divisor, act_layer, gate_layer, mlp_bias, **factory
        )
        self.spatial = SpatialAttn(spatial_kernel_size, gate_layer, norm_layer, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, channels=self.channels)
        return self.spatial(self.channel(x))
