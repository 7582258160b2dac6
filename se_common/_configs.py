"""Backbones described as data, shared by the PyTorch and Flax builders.

Every name, depth and width follows timm's model of the same name, so state_dicts match key for key.
Three registries make the design extensible by rows, not code paths:

* :data:`BLOCK_TYPES`: residual block types by name; each framework maps the name to its class
  (``se_torch.BLOCKS``, ``se_flax.BLOCKS``).
* :data:`ATTENTION`: attention layers by name (timm's ``create_attn`` names); each framework maps
  the name to its factory (``se_torch.ATTN_LAYERS``, ``se_flax.ATTN_LAYERS``).
The ResNet family's models are rows of the one registry of architectures
(:mod:`se_common._registry`), under timm's names.

A config plans its network framework-free: the blocks (:meth:`ResNetConfig.blocks`), the
feature stages (:meth:`ResNetConfig.feature_info`, timm's ``feature_info``) and the PyTorch
state_dict's keys and shapes (:meth:`ResNetConfig.state_dict`), which saving from Flax writes
without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from se_common._checks import positive_int
from se_common._layers import eca_kernel_size, selective_kernel_paths
from se_common._registry import FAMILIES, Family, FeatureInfo, TensorSpec, register_model
from se_common._widths import resolve_rd_channels

__all__ = [
    "ATTENTION",
    "BLOCK_TYPES",
    "RESNET",
    "Attention",
    "BlockSpec",
    "BlockType",
    "ResNetConfig",
    "SelectiveKernelConfig",
    "batchnorm_keys",
    "conv_keys",
    "linear_keys",
]

STEM_CHANNELS = 64
Plan = dict[str, TensorSpec]


# ---------------------------------------------------------------- state_dict plans, by layer


def conv_keys(
    plan: Plan,
    key: str,
    out: int,
    inp: int,
    k: int | tuple[int, ...],
    groups: int = 1,
    bias: bool = False,
) -> None:
    """A ``Conv2d`` (``k`` an int) or ``Conv1d`` (``k`` a 1-tuple) at ``key``."""
    kernel = (k, k) if isinstance(k, int) else tuple(k)
    plan[f"{key}.weight"] = TensorSpec((out, inp // groups, *kernel))
    if bias:
        plan[f"{key}.bias"] = TensorSpec((out,))


def batchnorm_keys(plan: Plan, key: str, channels: int) -> None:
    """A ``BatchNorm2d`` at ``key``: affine parameters, running statistics, counter."""
    for name in ("weight", "bias", "running_mean", "running_var"):
        plan[f"{key}.{name}"] = TensorSpec((channels,))
    plan[f"{key}.num_batches_tracked"] = TensorSpec((), "int64")


def linear_keys(plan: Plan, key: str, out: int, inp: int) -> None:
    plan[f"{key}.weight"] = TensorSpec((out, inp))
    plan[f"{key}.bias"] = TensorSpec((out,))


def _se_keys(plan: Plan, key: str, channels: int) -> None:
    rd = resolve_rd_channels(channels)  # timm's SEModule: make_divisible(C / 16, 8, 0.)
    conv_keys(plan, f"{key}.fc1", rd, channels, 1, bias=True)
    conv_keys(plan, f"{key}.fc2", channels, rd, 1, bias=True)


def _eca_keys(plan: Plan, key: str, channels: int) -> None:
    conv_keys(plan, f"{key}.conv", 1, 1, (eca_kernel_size(channels),))


def _cbam_keys(plan: Plan, key: str, channels: int) -> None:
    rd = resolve_rd_channels(channels, default_divisor=1)
    conv_keys(plan, f"{key}.channel.fc1", rd, channels, 1)
    conv_keys(plan, f"{key}.channel.fc2", channels, rd, 1)
    conv_keys(plan, f"{key}.spatial.conv.conv", 1, 2, 7)
    batchnorm_keys(plan, f"{key}.spatial.conv.bn", 1)


def _ese_keys(plan: Plan, key: str, channels: int) -> None:
    conv_keys(plan, f"{key}.fc", channels, channels, 1, bias=True)


@dataclass(frozen=True)
class Attention:
    """An attention layer a config can name (timm's ``create_attn`` names).

    Attributes:
        description: what it is.
        state_dict: ``f(plan, key, channels)`` adds its PyTorch tensors at ``key`` (with
            timm's default widths) to a state_dict plan; ``None`` if it has no plan, so
            saving a model with it in timm's layout is refused.
    """

    description: str
    state_dict: Callable[[Plan, str, int], None] | None = None


# Each placed in every block after the last BatchNorm, before the residual sum, as timm's
# attn_layer; each framework maps the name to its layer (se_torch.ATTN_LAYERS, ...).
ATTENTION: dict[str, Attention] = {
    "se": Attention("Squeeze-and-Excitation (Hu et al., CVPR 2018), timm's SEModule", _se_keys),
    "eca": Attention("Efficient Channel Attention (Wang et al., CVPR 2020)", _eca_keys),
    "cbam": Attention("CBAM: channel then spatial attention (Woo et al., ECCV 2018)", _cbam_keys),
    "ese": Attention(
        "effective SE: one C -> C layer, hard-sigmoid gate (CenterMask, CVPR 2020)", _ese_keys
    ),
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
        state_dict: ``f(plan, key, spec)`` adds the block's convolutions and norms at ``key``
            (``layer1.0``) to a state_dict plan, PyTorch's keys in timm's order (attention and
            shortcut follow); ``None`` if the type has none (saving from Flax is refused).
    """

    expansion: int
    grouped: bool
    selective_kernel: bool = False
    state_dict: Callable[[Plan, str, BlockSpec], None] | None = None


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


def _conv_norm_keys(plan: Plan, key: str, out: int, inp: int, k: int, groups: int = 1) -> None:
    """timm's ``ConvNormAct``: ``conv`` and ``bn``."""
    conv_keys(plan, f"{key}.conv", out, inp, k, groups)
    batchnorm_keys(plan, f"{key}.bn", out)


def _selective_kernel_keys(plan: Plan, key: str, spec: BlockSpec, in_channels: int) -> None:
    """timm's ``SelectiveKernel``: ``paths.{i}`` (ConvNormAct) and ``attn``."""
    sk, width = spec.sk, spec.width
    paths = selective_kernel_paths(list(sk.kernel_size), 1, sk.keep_3x3)
    path_in = in_channels // len(paths) if sk.split_input else in_channels
    for i, (k, _) in enumerate(paths):
        _conv_norm_keys(plan, f"{key}.paths.{i}", width, path_in, k, min(width, spec.groups))
    rd = resolve_rd_channels(width, sk.rd_ratio, None, sk.rd_divisor, round_limit=0.9)
    conv_keys(plan, f"{key}.attn.fc_reduce", rd, width, 1)
    batchnorm_keys(plan, f"{key}.attn.bn", rd)
    conv_keys(plan, f"{key}.attn.fc_select", width * len(paths), rd, 1)


def _basic_keys(plan: Plan, key: str, spec: BlockSpec) -> None:
    conv_keys(plan, f"{key}.conv1", spec.width, spec.in_channels, 3)
    batchnorm_keys(plan, f"{key}.bn1", spec.width)
    conv_keys(plan, f"{key}.conv2", spec.out_channels, spec.width, 3)
    batchnorm_keys(plan, f"{key}.bn2", spec.out_channels)


def _bottleneck_keys(plan: Plan, key: str, spec: BlockSpec) -> None:
    w = spec.width
    conv_keys(plan, f"{key}.conv1", w, spec.in_channels, 1)
    batchnorm_keys(plan, f"{key}.bn1", w)
    conv_keys(plan, f"{key}.conv2", w, w, 3, spec.groups)
    batchnorm_keys(plan, f"{key}.bn2", w)
    conv_keys(plan, f"{key}.conv3", spec.out_channels, w, 1)
    batchnorm_keys(plan, f"{key}.bn3", spec.out_channels)


def _sk_basic_keys(plan: Plan, key: str, spec: BlockSpec) -> None:
    _selective_kernel_keys(plan, f"{key}.conv1", spec, spec.in_channels)
    _conv_norm_keys(plan, f"{key}.conv2", spec.out_channels, spec.width, 3)


def _sk_bottleneck_keys(plan: Plan, key: str, spec: BlockSpec) -> None:
    _conv_norm_keys(plan, f"{key}.conv1", spec.width, spec.in_channels, 1)
    _selective_kernel_keys(plan, f"{key}.conv2", spec, spec.width)
    _conv_norm_keys(plan, f"{key}.conv3", spec.out_channels, spec.width, 1)


BLOCK_TYPES: dict[str, BlockType] = {
    "basic": BlockType(1, False, state_dict=_basic_keys),  # two 3x3 convs
    "bottleneck": BlockType(4, True, state_dict=_bottleneck_keys),  # 1x1, 3x3 (stride, groups), 1x1
    "sk_basic": BlockType(1, False, True, _sk_basic_keys),  # timm's sknet.py
    "sk_bottleneck": BlockType(4, True, True, _sk_bottleneck_keys),
}


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
        layers = self.layers
        if isinstance(layers, (str, bytes)) or not hasattr(layers, "__len__") or len(layers) != 4:
            raise ValueError(f"layers must be 4 block counts (one per stage), got {layers!r}")
        counts = tuple(positive_int(f"layers[{i}]", n) for i, n in enumerate(layers))
        object.__setattr__(self, "layers", counts)  # frozen: normalised once, while constructing
        for name in ("cardinality", "base_width"):
            positive_int(name, getattr(self, name))
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

    @property
    def num_features(self) -> int:
        """Channels of the pooled features the classifier takes."""
        return self.feature_channels[-1]

    def feature_info(self) -> tuple[FeatureInfo, ...]:
        """The feature levels ``out_indices`` picks from, as timm's ``feature_info``: the stem
        (``act1``, stride 2), then ``layer1`` to ``layer4`` (strides 4 to 32)."""
        modules = ("act1", "layer1", "layer2", "layer3", "layer4")
        return tuple(
            FeatureInfo(c, 2 ** (i + 1), m)
            for i, (c, m) in enumerate(zip(self.feature_channels, modules, strict=True))
        )

    def state_dict(self, num_classes: int, in_chans: int) -> dict[str, TensorSpec]:
        """The PyTorch state_dict's keys (in timm's order) and shapes of this network with
        ``num_classes`` classes (0: no classifier) and ``in_chans`` input channels.

        Raises:
            ValueError: for an attention layer without a plan (:class:`Attention`).
        """
        attention = None if self.attn is None else ATTENTION[self.attn]
        if attention is not None and attention.state_dict is None:
            raise ValueError(
                f"attn {self.attn!r} has no state_dict plan in se_common.ATTENTION: its keys "
                f"are unknown to the framework-free spec"
            )
        plan: Plan = {}
        conv_keys(plan, "conv1", STEM_CHANNELS, in_chans, 7)
        batchnorm_keys(plan, "bn1", STEM_CHANNELS)
        for spec in self.blocks():
            block = self.block_type.state_dict
            if block is None:
                raise ValueError(
                    f"block {self.block!r} has no state_dict plan in se_common.BLOCK_TYPES"
                )
            block(plan, f"layer{spec.stage}.{spec.index}", spec)
            if attention is not None:
                attention.state_dict(plan, f"layer{spec.stage}.{spec.index}.se", spec.out_channels)
            if spec.downsample:
                key = f"layer{spec.stage}.{spec.index}.downsample"
                conv_keys(plan, f"{key}.0", spec.out_channels, spec.in_channels, 1)
                batchnorm_keys(plan, f"{key}.1", spec.out_channels)
        if num_classes:
            linear_keys(plan, "fc", num_classes, self.num_features)
        return plan

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


_RESNETS: dict[str, ResNetConfig] = {
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

# timm's resnet.py / sknet.py: the stem conv1, the stages layer1..4, the classifier fc.
RESNET = Family(
    "resnet",
    ResNetConfig,
    builders={
        "torch": "se_torch._resnet:ResNet",
        "linen": "se_flax._resnet:ResNet",
        "nnx": "se_flax.nnx._resnet:ResNet",
    },
    classifier="fc",
    config_options=("block", "layers", "cardinality", "base_width", "attn", "sk"),
)
FAMILIES[RESNET.name] = RESNET
for _name, _config in _RESNETS.items():
    register_model(_name, RESNET, _config)
