"""Backbones described as data, shared by the PyTorch and Flax builders.

Every name, depth and width follows timm's model of the same name, so state_dicts match key for key.
Three registries make the design extensible by rows, not code paths:

* :data:`BLOCK_TYPES`: residual block types by name; each framework maps the name to its class
  (``se_torch.BLOCKS``, ``se_flax.BLOCKS``).
* :data:`ATTENTION`: attention layers by name (timm's ``create_attn`` names); each framework maps
  the name to its factory (``se_torch.ATTN_LAYERS``, ``se_flax.ATTN_LAYERS``).
* :data:`MODEL_CONFIGS`: models by timm's names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ATTENTION",
    "BLOCK_TYPES",
    "MODEL_CONFIGS",
    "BlockSpec",
    "BlockType",
    "ResNetConfig",
    "SelectiveKernelConfig",
    "config_name",
    "get_config",
    "model_config",
]

STEM_CHANNELS = 64

# Attention layers a config can name (timm's create_attn names) -> what they are. Each placed in
# every block after the last BatchNorm, before the residual sum, as timm's attn_layer.
ATTENTION: dict[str, str] = {
    "se": "Squeeze-and-Excitation (Hu et al., CVPR 2018), timm's SEModule",
    "eca": "Efficient Channel Attention (Wang et al., CVPR 2020)",
    "cbam": "CBAM: channel then spatial attention (Woo et al., ECCV 2018)",
    "ese": "effective SE: one C -> C layer, hard-sigmoid gate (CenterMask, CVPR 2020)",
}


@dataclass(frozen=True)
class BlockType:
    """What the planner needs to know of a residual block type (its layers are each framework's).

    Attributes:
        expansion: a stage with ``planes`` outputs ``planes * expansion`` channels.
        grouped: the inner width is ResNeXt's ``int(planes * base_width / 64) * cardinality``
            and the 3x3 convolution has ``cardinality`` groups; otherwise the inner width is
            ``planes`` and only ``cardinality=1, base_width=64`` are accepted.
        selective_kernel: its 3x3 convolution is a Selective Kernel unit, configured by the
            config's ``sk`` (timm's ``sk_kwargs``).
    """

    expansion: int
    grouped: bool
    selective_kernel: bool = False


BLOCK_TYPES: dict[str, BlockType] = {
    "basic": BlockType(expansion=1, grouped=False),  # two 3x3 convs
    "bottleneck": BlockType(expansion=4, grouped=True),  # 1x1, 3x3 (stride, groups), 1x1
    "sk_basic": BlockType(expansion=1, grouped=False, selective_kernel=True),  # timm's sknet.py
    "sk_bottleneck": BlockType(expansion=4, grouped=True, selective_kernel=True),
}


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
class BlockSpec:
    """One residual block, fully planned: PyTorch name ``layer{stage}.{index}``.

    A block class builds its layers from its spec alone (and the layer factories it is given),
    so every block type has the same constructor.
    """

    stage: int  # 1..4
    index: int
    in_channels: int
    width: int  # channels of the 3x3 convolution(s)
    out_channels: int
    stride: int
    downsample: bool  # whether the shortcut needs a strided 1x1 conv + BatchNorm
    groups: int = 1  # of the 3x3 convolution (ResNeXt's cardinality for grouped types)
    sk: SelectiveKernelConfig | None = None  # the Selective Kernel unit's options, if any


@dataclass(frozen=True)
class ResNetConfig:
    """A ResNet-family backbone.

    Attributes:
        block: a name in :data:`BLOCK_TYPES`: ``"basic"`` (two 3x3 convs, expansion 1),
            ``"bottleneck"`` (1x1, 3x3, 1x1, expansion 4; the stride sits on the 3x3 conv,
            "ResNet v1.5", as in timm), or their Selective Kernel variants ``"sk_basic"`` and
            ``"sk_bottleneck"`` (timm's ``SelectiveKernelBasic`` / ``SelectiveKernelBottleneck``).
        layers: number of blocks in each of the four stages.
        cardinality: groups of the 3x3 conv in bottlenecks (ResNeXt's C).
        base_width: width per group; a stage with ``planes`` uses
            ``int(planes * base_width / 64) * cardinality`` channels inside its bottlenecks.
        attn: the attention layer placed in every block after the last BatchNorm, before the
            residual sum (timm's ``attn_layer``), by its name in :data:`ATTENTION` (``"se"``,
            ``"eca"``, ``"cbam"``, ``"ese"``), or ``None``.
        sk: the Selective Kernel options of SK block types (default ``SelectiveKernelConfig()``).
            Giving ``sk`` with ``"basic"`` or ``"bottleneck"`` means their SK variant: the config
            then holds ``"sk_basic"`` or ``"sk_bottleneck"``.
        zero_init_last: the models' default for zeroing each block's last BatchNorm scale
            (timm: on for ResNets, off for SK-ResNets).
    """

    block: str
    layers: tuple[int, int, int, int]
    cardinality: int = 1
    base_width: int = 64
    attn: str | None = None
    sk: SelectiveKernelConfig | None = None
    zero_init_last: bool = True

    def __post_init__(self) -> None:
        if self.block not in BLOCK_TYPES:
            raise ValueError(
                f"unknown block {self.block!r}; known: {', '.join(sorted(BLOCK_TYPES))}"
            )
        if self.attn is not None and self.attn not in ATTENTION:
            raise ValueError(f"unknown attn {self.attn!r}; known: {', '.join(sorted(ATTENTION))}")
        if self.sk is not None and not self.block_type.selective_kernel:
            variant = f"sk_{self.block}"
            if variant not in BLOCK_TYPES or not BLOCK_TYPES[variant].selective_kernel:
                raise ValueError(
                    f"block {self.block!r} has no Selective Kernel variant, but sk={self.sk!r} "
                    f"was given"
                )
            object.__setattr__(self, "block", variant)  # frozen: set once, while constructing
        if self.block_type.selective_kernel and self.sk is None:
            object.__setattr__(self, "sk", SelectiveKernelConfig())
        if not self.block_type.grouped and (self.cardinality, self.base_width) != (1, 64):
            raise ValueError(
                f"{self.block} blocks support only cardinality=1 and "
                f"base_width=64, got cardinality={self.cardinality}, base_width={self.base_width}"
            )

    @property
    def block_type(self) -> BlockType:
        return BLOCK_TYPES[self.block]

    @property
    def expansion(self) -> int:
        return self.block_type.expansion

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of the features at strides 2 (stem), 4, 8, 16, 32."""
        return (STEM_CHANNELS, *(64 * 2**s * self.expansion for s in range(4)))

    def blocks(self) -> list[BlockSpec]:
        """Every residual block in order, as timm's ResNet builds them."""
        kind = self.block_type
        groups = self.cardinality if kind.grouped else 1
        specs, in_channels = [], STEM_CHANNELS
        for s, depth in enumerate(self.layers):
            planes = 64 * 2**s
            width = int(planes * self.base_width / 64) * groups if kind.grouped else planes
            out_channels = planes * kind.expansion
            for i in range(depth):
                stride = 2 if s > 0 and i == 0 else 1
                downsample = i == 0 and (stride != 1 or in_channels != out_channels)
                specs.append(
                    BlockSpec(
                        s + 1,
                        i,
                        in_channels,
                        width,
                        out_channels,
                        stride,
                        downsample,
                        groups,
                        self.sk,
                    )
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
        "sk_basic", (2, 2, 2, 2), sk=SelectiveKernelConfig(1 / 8, 16), zero_init_last=False
    ),
    "skresnet34": ResNetConfig(
        "sk_basic", (3, 4, 6, 3), sk=SelectiveKernelConfig(1 / 8, 16), zero_init_last=False
    ),
    "skresnet50": ResNetConfig(
        "sk_bottleneck", (3, 4, 6, 3), sk=SelectiveKernelConfig(), zero_init_last=False
    ),
    "skresnext50_32x4d": ResNetConfig(
        "sk_bottleneck",
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


def config_name(config: ResNetConfig) -> str:
    """The name of :data:`MODEL_CONFIGS` whose config equals ``config`` (``resnet50`` with
    ``attn="se"`` is ``seresnet50``); ``ValueError`` when it has none."""
    for name, known in MODEL_CONFIGS.items():
        if known == config:
            return name
    raise ValueError(
        f"no model name has this config ({config}); timm's layout records an architecture by "
        f"name, one of {', '.join(sorted(MODEL_CONFIGS))}"
    )


def model_config(name: str, kwargs: dict[str, Any]) -> ResNetConfig:
    """The config for ``create_model(name, **kwargs)``; pops ``attn`` from ``kwargs``, applies it.

    ``attn`` names the attention layer (a name in :data:`ATTENTION`) or ``None`` for none, so
    ``create_model("resnet50", attn="se")`` builds the same network as ``"seresnet50"``, and
    ``attn="eca"``, ``"cbam"`` or ``"ese"`` its ECA, CBAM or effective-SE variant.
    """
    config = get_config(name)
    if "attn" in kwargs:
        config = dataclasses.replace(config, attn=kwargs.pop("attn"))
    return config
