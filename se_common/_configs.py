"""Backbones described as data, shared by the PyTorch and Flax builders.

Every name, depth and width follows timm's model of the same name, so state_dicts match key for key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "MODEL_CONFIGS",
    "BlockSpec",
    "ResNetConfig",
    "SelectiveKernelConfig",
    "get_config",
    "model_config",
]

STEM_CHANNELS = 64


@dataclass(frozen=True)
class BlockSpec:
    """One residual block, fully planned: PyTorch name ``layer{stage}.{index}``."""

    stage: int  # 1..4
    index: int
    in_channels: int
    width: int  # channels of the 3x3 convolution(s)
    out_channels: int
    stride: int
    downsample: bool  # whether the shortcut needs a strided 1x1 conv + BatchNorm


@dataclass(frozen=True)
class SelectiveKernelConfig:
    """The Selective Kernel unit of SK-ResNets (timm's ``sk_kwargs``).

    With it, a basic block's first 3x3 conv and a bottleneck's 3x3 conv become a
    ``SelectiveKernel`` (paths of 3x3 convs with dilations 1 and 2, fused by softmax attention).

    Attributes:
        rd_ratio, rd_divisor: width of the attention's hidden layer,
            ``make_divisible(out_channels * rd_ratio, rd_divisor)`` (timm's round_limit 0.9).
        split_input: each path sees its own slice of the input channels (timm's SK-ResNets) rather
            than all of them (SKNet's paper, ``skresnext50_32x4d``).
        kernel_size: receptive field of each path; ``keep_3x3`` makes them 3x3 convs with dilation.
    """

    rd_ratio: float = 1.0 / 16
    rd_divisor: int = 8
    split_input: bool = True
    kernel_size: tuple[int, ...] = (3, 5)
    keep_3x3: bool = True


@dataclass(frozen=True)
class ResNetConfig:
    """A ResNet-family backbone.

    Attributes:
        block: ``"basic"`` (two 3x3 convs, expansion 1) or ``"bottleneck"`` (1x1, 3x3, 1x1,
            expansion 4; the stride sits on the 3x3 conv, "ResNet v1.5", as in timm).
        layers: number of blocks in each of the four stages.
        cardinality: groups of the 3x3 conv in bottlenecks (ResNeXt's C).
        base_width: width per group; a stage with ``planes`` uses
            ``int(planes * base_width / 64) * cardinality`` channels inside its bottlenecks.
        attn: the attention layer placed in every block after the last BatchNorm, before the
            residual sum (timm's ``attn_layer``), by name: ``"se"``, ``"eca"``, ``"cbam"``,
            ``"ese"`` (effective SE) or ``None``.
        sk: Selective Kernel options for SK-ResNets (timm's ``SelectiveKernelBasic`` /
            ``SelectiveKernelBottleneck`` blocks), or ``None`` for plain blocks.
        zero_init_last: the models' default for zeroing each block's last BatchNorm scale
            (timm: on for ResNets, off for SK-ResNets).
    """

    block: Literal["basic", "bottleneck"]
    layers: tuple[int, int, int, int]
    cardinality: int = 1
    base_width: int = 64
    attn: str | None = None
    sk: SelectiveKernelConfig | None = None
    zero_init_last: bool = True

    def __post_init__(self) -> None:
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {self.block!r}")
        if self.block == "basic" and (self.cardinality, self.base_width) != (1, 64):
            raise ValueError(
                f"basic blocks support only cardinality=1 and base_width=64, got "
                f"cardinality={self.cardinality}, base_width={self.base_width}"
            )

    @property
    def expansion(self) -> int:
        return 1 if self.block == "basic" else 4

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of the features at strides 2 (stem), 4, 8, 16, 32."""
        return (STEM_CHANNELS, *(64 * 2**s * self.expansion for s in range(4)))

    def blocks(self) -> list[BlockSpec]:
        """Every residual block in order, as timm's ResNet builds them."""
        specs, in_channels = [], STEM_CHANNELS
        for s, depth in enumerate(self.layers):
            planes = 64 * 2**s
            if self.block == "basic":
                width = planes
            else:
                width = int(planes * self.base_width / 64) * self.cardinality
            out_channels = planes * self.expansion
            for i in range(depth):
                stride = 2 if s > 0 and i == 0 else 1
                downsample = i == 0 and (stride != 1 or in_channels != out_channels)
                specs.append(
                    BlockSpec(s + 1, i, in_channels, width, out_channels, stride, downsample)
                )
                in_channels = out_channels
        return specs


def _family(prefix: str, attn: str | None) -> dict[str, ResNetConfig]:
    return {
        f"{prefix}18": ResNetConfig("basic", (2, 2, 2, 2), attn=attn),
        f"{prefix}34": ResNetConfig("basic", (3, 4, 6, 3), attn=attn),
        f"{prefix}50": ResNetConfig("bottleneck", (3, 4, 6, 3), attn=attn),
        f"{prefix}101": ResNetConfig("bottleneck", (3, 4, 23, 3), attn=attn),
        f"{prefix}152": ResNetConfig("bottleneck", (3, 8, 36, 3), attn=attn),
    }


MODEL_CONFIGS: dict[str, ResNetConfig] = {
    **_family("resnet", None),
    **_family("seresnet", "se"),
    "resnext50_32x4d": ResNetConfig("bottleneck", (3, 4, 6, 3), 32, 4),
    "seresnext50_32x4d": ResNetConfig("bottleneck", (3, 4, 6, 3), 32, 4, "se"),
    "seresnext101_32x4d": ResNetConfig("bottleneck", (3, 4, 23, 3), 32, 4, "se"),
    # timm's sknet.py: SK units in place of the 3x3 convs, no zero-init of the last BatchNorm.
    "skresnet18": ResNetConfig(
        "basic", (2, 2, 2, 2), sk=SelectiveKernelConfig(1 / 8, 16), zero_init_last=False
    ),
    "skresnet34": ResNetConfig(
        "basic", (3, 4, 6, 3), sk=SelectiveKernelConfig(1 / 8, 16), zero_init_last=False
    ),
    "skresnet50": ResNetConfig(
        "bottleneck", (3, 4, 6, 3), sk=SelectiveKernelConfig(), zero_init_last=False
    ),
    "skresnext50_32x4d": ResNetConfig(
        "bottleneck",
        (3, 4, 6, 3),
        32,
        4,
        sk=SelectiveKernelConfig(1 / 16, 32, split_input=False),
        zero_init_last=False,
    ),
}


def get_config(name: str) -> ResNetConfig:
    """The config of a model name; ``ValueError`` listing the known names otherwise."""
    try:
        return MODEL_CONFIGS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODEL_CONFIGS))}"
        ) from None


def model_config(name: str, kwargs: dict[str, Any], attn_layers: Container[str]) -> ResNetConfig:
    """The config for ``create_model(name, **kwargs)``; pops ``attn`` from ``kwargs``, applies it.

    ``attn`` names the attention layer (one of ``attn_layers``) or ``None`` for none, so
    ``create_model("resnet50", attn="se")`` builds the same network as ``"seresnet50"``, and
    ``attn="eca"``, ``"cbam"`` or ``"ese"`` its ECA, CBAM or effective-SE variant.
    """
    config = get_config(name)
    if "attn" in kwargs:
        attn = kwargs.pop("attn")
        if attn is not None and attn not in attn_layers:
            raise ValueError(f"unknown attn {attn!r}; known: {', '.join(sorted(attn_layers))}")
        config = dataclasses.replace(config, attn=attn)
    return config
