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

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from se_common._checks import drop_rate, positive_int
from se_common._layers import conv_padding, eca_kernel_size, odd_kernel_size, selective_kernel_paths
from se_common._registry import FAMILIES, Family, FeatureInfo, TensorSpec, register_model
from se_common._widths import resolve_rd_channels

__all__ = [
    "AA_LAYERS",
    "ATTENTION",
    "BLOCK_TYPES",
    "RESNET",
    "STEM_TYPES",
    "Attention",
    "BlockSpec",
    "BlockType",
    "DropBlock",
    "ResNetConfig",
    "SelectiveKernelConfig",
    "batchnorm_keys",
    "conv_keys",
    "linear_keys",
]

STEM_CHANNELS = 64  # of timm's 7x7 stem (a deep stem ends with stem_width * 2)
Plan = dict[str, TensorSpec]

# timm's ResNet stem_type values: one 7x7 conv; three 3x3 convs (stem_width, stem_width,
# 2 * stem_width); the same, tiered (3 * (stem_width // 4), stem_width, 2 * stem_width).
STEM_TYPES = ("", "deep", "deep_tiered")

# Anti-aliasing layers (timm's create_aa names, after its normalisation: lower case, no "_" or
# "-"), each -> its canonical name: a 2x2 average pool, or a 3x3 binomial blur (reflect or zero
# padding, timm's BlurPool2d) before the stride.
AA_LAYERS = {
    "avg": "avg",
    "avgpool": "avg",
    "blur": "blur",
    "blurpool": "blur",
    "blurpc": "blurpc",
}


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


def _se_keys(plan: Plan, key: str, channels: int, **args: Any) -> None:
    rd = resolve_rd_channels(channels, **args)  # timm's SEModule: make_divisible(C / 16, 8, 0.)
    conv_keys(plan, f"{key}.fc1", rd, channels, 1, bias=True)
    conv_keys(plan, f"{key}.fc2", channels, rd, 1, bias=True)


def _eca_keys(plan: Plan, key: str, channels: int, **args: Any) -> None:
    conv_keys(plan, f"{key}.conv", 1, 1, (eca_kernel_size(channels, **args),))


def _cbam_keys(plan: Plan, key: str, channels: int, **args: Any) -> None:
    rd = resolve_rd_channels(channels, default_divisor=1, **args)
    conv_keys(plan, f"{key}.channel.fc1", rd, channels, 1)
    conv_keys(plan, f"{key}.channel.fc2", channels, rd, 1)
    conv_keys(plan, f"{key}.spatial.conv.conv", 1, 2, 7)
    batchnorm_keys(plan, f"{key}.spatial.conv.bn", 1)


def _ese_keys(plan: Plan, key: str, channels: int, **args: Any) -> None:
    conv_keys(plan, f"{key}.fc", channels, channels, 1, bias=True)


@dataclass(frozen=True)
class Attention:
    """An attention layer a config can name (timm's ``create_attn`` names).

    Attributes:
        description: what it is.
        state_dict: ``f(plan, key, channels, **args)`` adds its PyTorch tensors at ``key`` (with
            timm's default widths, or those ``args`` set) to a state_dict plan; ``None`` if it
            has no plan, so saving a model with it in timm's layout is refused.
        options: the keyword arguments a config's ``attn_args`` may give it (every front-end's
            layer takes them under these names, as timm's): ``rd_ratio=0.25`` for ResNet-RS.
    """

    description: str
    state_dict: Callable[..., None] | None = None
    options: tuple[str, ...] = ()


# Each placed in every block after the last BatchNorm, before the residual sum, as timm's
# attn_layer; each framework maps the name to its layer (se_torch.ATTN_LAYERS, ...).
ATTENTION: dict[str, Attention] = {
    "se": Attention(
        "Squeeze-and-Excitation (Hu et al., CVPR 2018), timm's SEModule",
        _se_keys,
        ("rd_ratio", "rd_channels", "rd_divisor"),
    ),
    "eca": Attention(
        "Efficient Channel Attention (Wang et al., CVPR 2020)",
        _eca_keys,
        ("kernel_size", "gamma", "beta"),
    ),
    "cbam": Attention(
        "CBAM: channel then spatial attention (Woo et al., ECCV 2018)",
        _cbam_keys,
        ("rd_ratio", "rd_channels", "rd_divisor"),
    ),
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
class DropBlock:
    """timm's ``DropBlock2d`` of a stage (Ghiasi et al., NeurIPS 2018): in training, square
    blocks of ``block_size`` (clipped to the map) zeroed across channels, seeded at rate
    ``gamma_scale * rate * H * W / block_size**2 / ((H - block_size + 1) * (W - block_size +
    1))``, and the rest scaled by the map's size over the kept count."""

    rate: float
    block_size: int
    gamma_scale: float

    def block_and_seed_rate(self, h: int, w: int) -> tuple[int, int, float]:
        """The block ``(kh, kw)`` on an ``h x w`` map (clipped to it) and the rate its seeds
        are drawn at, as timm's ``drop_block_2d`` computes it."""
        kh, kw = min(self.block_size, h), min(self.block_size, w)
        gamma = (
            float(self.gamma_scale * self.rate * h * w)
            / float(kh * kw)
            / float((h - kh + 1) * (w - kw + 1))
        )
        return kh, kw, gamma


# timm's drop_blocks(): DropBlock in stages 3 (5x5 blocks, gamma_scale 0.25) and 4 (3x3, 1.0).
DROP_BLOCK_STAGES = {3: (5, 0.25), 4: (3, 1.0)}


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
    reduce_first: int = 1  # the first conv outputs width // reduce_first (timm's senet154: 2)
    aa: str | None = None  # anti-aliasing (an AA_LAYERS name) taking the stride, if any
    avg_down: bool = False  # shortcut: 2x2 average pool (ceil mode) at the stride, then 1x1
    down_kernel_size: int = 1  # of the shortcut conv (1 where the stride is 1)
    drop_path: float = 0.0  # stochastic depth: the rate the branch is dropped at in training
    drop_block: DropBlock | None = None  # DropBlock after the 3x3 conv's norm, in training

    @property
    def first_width(self) -> int:
        """Channels out of the block's first convolution."""
        return self.width // self.reduce_first

    @property
    def conv_stride(self) -> int:
        """The stride of the strided conv: 1 where an anti-aliasing layer takes it."""
        return 1 if self.aa is not None else self.stride

    @property
    def down_padding(self) -> int:
        """Symmetric padding of the shortcut conv (timm's ``get_padding``)."""
        return conv_padding(self.down_kernel_size, 1 if self.avg_down else self.stride)


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
    first = spec.first_width
    conv_keys(plan, f"{key}.conv1", first, spec.in_channels, 3)
    batchnorm_keys(plan, f"{key}.bn1", first)
    conv_keys(plan, f"{key}.conv2", spec.out_channels, first, 3)
    batchnorm_keys(plan, f"{key}.bn2", spec.out_channels)


def _bottleneck_keys(plan: Plan, key: str, spec: BlockSpec) -> None:
    w, first = spec.width, spec.first_width
    conv_keys(plan, f"{key}.conv1", first, spec.in_channels, 1)
    batchnorm_keys(plan, f"{key}.bn1", first)
    conv_keys(plan, f"{key}.conv2", w, first, 3, spec.groups)
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
        stem_type: timm's ``stem_type``, one of :data:`STEM_TYPES`: ``""`` (one 7x7 conv, 64
            channels), ``"deep"`` (three 3x3 convs of ``stem_width``, ``stem_width`` and
            ``2 * stem_width`` channels: the c, d, s and e models) or ``"deep_tiered"``
            (``3 * (stem_width // 4)``, ``stem_width``, ``2 * stem_width``: the t models).
        stem_width: channels of a deep stem (above); unused by the 7x7 stem.
        replace_stem_pool: a 3x3 stride-2 conv, BatchNorm and activation in place of the stem's
            max pool (ResNet-RS), under timm's name ``maxpool``.
        avg_down: shortcuts downsample by a 2x2 average pool (ceil mode, padding not counted)
            before their 1x1 conv (the d and t models), rather than by a strided 1x1 conv.
        down_kernel_size: kernel of the strided shortcut conv (odd; timm's senet154: 3);
            shortcuts at stride 1 keep a 1x1.
        block_reduce_first: a block's first conv outputs ``width // block_reduce_first``
            channels (timm's senet154: 2).
        aa_layer: anti-aliasing before each stride (timm's ``aa_layer``): ``"avg"`` (a 2x2
            average pool) or ``"blur"`` / ``"blurpc"`` (a 3x3 binomial filter, reflect or zero
            padded; timm's ``BlurPool2d``); timm's other spellings (:data:`AA_LAYERS`) are taken
            and stored by these names. The strided convs then run at stride 1.
        attn_args: keyword arguments of the attention layer (timm's ``partial(SEModule,
            rd_ratio=0.25)`` of ResNet-RS is ``attn_args={"rd_ratio": 0.25}``), each one its
            :class:`Attention`'s ``options`` name; stored as sorted ``(name, value)`` pairs.
    """

    block: str
    layers: tuple[int, int, int, int]
    cardinality: int = 1
    base_width: int = 64
    attn: str | None = None
    sk: SelectiveKernelConfig | None = None
    zero_init_last: bool = True
    stem_type: str = ""
    stem_width: int = 64
    replace_stem_pool: bool = False
    avg_down: bool = False
    down_kernel_size: int = 1
    block_reduce_first: int = 1
    aa_layer: str | None = None
    attn_args: Mapping[str, Any] | tuple[tuple[str, Any], ...] = ()

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
        self._check_stem_and_shortcuts()
        self._check_attn_args()
        for spec in self.blocks():
            if spec.first_width < 1 or spec.first_width % spec.groups:
                raise ValueError(
                    f"block_reduce_first={self.block_reduce_first} leaves layer{spec.stage}'s "
                    f"first conv {spec.first_width} channels (width {spec.width} // "
                    f"{self.block_reduce_first}), which the cardinality {spec.groups} does not "
                    f"divide into groups"
                )

    def _check_stem_and_shortcuts(self) -> None:
        if self.stem_type not in STEM_TYPES:
            raise ValueError(
                f"unknown stem_type {self.stem_type!r}; timm's are "
                f"{', '.join(map(repr, STEM_TYPES))}"
            )
        positive_int("stem_width", self.stem_width)
        if self.stem_type == "deep_tiered" and self.stem_width < 4:
            raise ValueError(
                f"stem_width={self.stem_width} leaves a deep_tiered stem's first conv "
                f"3 * ({self.stem_width} // 4) = 0 channels; give at least 4"
            )
        odd_kernel_size("down_kernel_size", self.down_kernel_size)
        positive_int("block_reduce_first", self.block_reduce_first)
        for name in ("replace_stem_pool", "avg_down"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.avg_down and self.down_kernel_size != 1:
            raise ValueError(
                f"avg_down shortcuts are a pool then a 1x1 conv: down_kernel_size must be 1 "
                f"with avg_down, got {self.down_kernel_size}"
            )
        if self.aa_layer is not None:
            key = self.aa_layer
            if isinstance(key, str):
                key = key.lower().replace("_", "").replace("-", "")
            if key not in AA_LAYERS:
                raise ValueError(
                    f"unknown aa_layer {self.aa_layer!r}; timm's are "
                    f"{', '.join(map(repr, AA_LAYERS))}"
                )
            object.__setattr__(self, "aa_layer", AA_LAYERS[key])  # frozen: once, constructing
        kind = self.block_type
        if kind.selective_kernel and (self.aa_layer or self.block_reduce_first != 1):
            raise ValueError(
                f"{self.block} blocks take no aa_layer or block_reduce_first (timm's "
                f"sknet.py has neither), got aa_layer={self.aa_layer!r}, "
                f"block_reduce_first={self.block_reduce_first}"
            )

    def _check_attn_args(self) -> None:
        args = self.attn_args
        pairs = args.items() if isinstance(args, Mapping) else args
        try:
            pairs = sorted((str(k), v) for k, v in pairs)
        except (TypeError, ValueError):
            raise ValueError(
                f"attn_args must be a mapping of option names to values, got {args!r}"
            ) from None
        if pairs and self.attn is None:
            raise ValueError(f"attn_args {dict(pairs)} given without an attn layer")
        if pairs:
            allowed = ATTENTION[self.attn].options
            bad = [k for k, _ in pairs if k not in allowed]
            if bad:
                raise ValueError(
                    f"attn {self.attn!r} takes no option {', '.join(map(repr, bad))} in "
                    f"attn_args; it takes {', '.join(map(repr, allowed)) or 'none'}"
                )
        object.__setattr__(self, "attn_args", tuple(pairs))  # frozen: once, constructing
        if pairs:  # the widths they give are checked now, by the plan of one block
            plan: Plan = {}
            ATTENTION[self.attn].state_dict(plan, "se", 64 * self.expansion, **dict(pairs))

    @property
    def deep_stem(self) -> bool:
        return "deep" in self.stem_type

    @property
    def stem_channels(self) -> tuple[int, ...]:
        """Output channels of the stem's convolutions, in order (timm's ``conv1``)."""
        if not self.deep_stem:
            return (STEM_CHANNELS,)
        w = self.stem_width
        first = 3 * (w // 4) if self.stem_type == "deep_tiered" else w
        return (first, w, 2 * w)

    @property
    def block_type(self) -> BlockType:
        return BLOCK_TYPES[self.block]

    @property
    def expansion(self) -> int:
        return self.block_type.expansion

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of the features at strides 2 (stem), 4, 8, 16, 32."""
        return (self.stem_channels[-1], *(64 * 2**s * self.expansion for s in range(4)))

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
        self._stem_keys(plan, in_chans)
        args = dict(self.attn_args)
        for spec in self.blocks():
            block = self.block_type.state_dict
            if block is None:
                raise ValueError(
                    f"block {self.block!r} has no state_dict plan in se_common.BLOCK_TYPES"
                )
            block(plan, f"layer{spec.stage}.{spec.index}", spec)
            if attention is not None:
                key = f"layer{spec.stage}.{spec.index}.se"
                attention.state_dict(plan, key, spec.out_channels, **args)
            if spec.downsample:  # timm's downsample_conv, or downsample_avg (pool, conv, norm)
                key = f"layer{spec.stage}.{spec.index}.downsample"
                first = 1 if spec.avg_down else 0
                k = spec.down_kernel_size
                conv_keys(plan, f"{key}.{first}", spec.out_channels, spec.in_channels, k)
                batchnorm_keys(plan, f"{key}.{first + 1}", spec.out_channels)
        if num_classes:
            linear_keys(plan, "fc", num_classes, self.num_features)
        return plan

    def _stem_keys(self, plan: Plan, in_chans: int) -> None:
        """timm's stem: ``conv1`` (a conv, or a Sequential of conv, norm, act, conv, norm,
        act, conv), ``bn1``, and with ``replace_stem_pool`` ``maxpool`` (conv, [aa], norm)."""
        channels = self.stem_channels
        if self.deep_stem:
            inp = in_chans
            for i, c in enumerate(channels):
                conv_keys(plan, f"conv1.{3 * i}", c, inp, 3)
                if i < 2:
                    batchnorm_keys(plan, f"conv1.{3 * i + 1}", c)
                inp = c
        else:
            conv_keys(plan, "conv1", channels[-1], in_chans, 7)
        batchnorm_keys(plan, "bn1", channels[-1])
        if self.replace_stem_pool:
            conv_keys(plan, "maxpool.0", channels[-1], channels[-1], 3)
            batchnorm_keys(plan, f"maxpool.{2 if self.aa_layer else 1}", channels[-1])

    def blocks(self, drop_path_rate: float = 0.0, drop_block_rate: float = 0.0) -> list[BlockSpec]:
        """Every residual block in order, as timm's ResNet builds them; with the training
        options timm's ``drop_path_rate`` (block ``i`` of ``n`` drops its branch at
        ``drop_path_rate * i / (n - 1)``) and ``drop_block_rate`` (stages 3 and 4,
        :data:`DROP_BLOCK_STAGES`).

        Raises:
            ValueError: for a rate outside ``[0, 1)``, naming it.
        """
        drop_path_rate = drop_rate("drop_path_rate", drop_path_rate)
        drop_block_rate = drop_rate("drop_block_rate", drop_block_rate)
        if drop_block_rate and self.block_type.selective_kernel:
            raise ValueError(
                f"drop_block_rate={drop_block_rate} is not built for {self.block} blocks (timm "
                f"drops blocks inside their Selective Kernel paths); use drop_path_rate"
            )
        specs = self._blocks()
        last = max(len(specs) - 1, 1)
        return [
            dataclasses.replace(
                spec,
                drop_path=drop_path_rate * i / last,
                drop_block=(
                    DropBlock(drop_block_rate, *DROP_BLOCK_STAGES[spec.stage])
                    if drop_block_rate and spec.stage in DROP_BLOCK_STAGES
                    else None
                ),
            )
            if drop_path_rate or drop_block_rate
            else spec
            for i, spec in enumerate(specs)
        ]

    def _blocks(self) -> list[BlockSpec]:
        kind = self.block_type
        groups = self.cardinality if kind.grouped else 1
        specs, in_channels = [], self.stem_channels[-1]
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
                        self.block_reduce_first,
                        self.aa_layer if stride == 2 else None,
                        self.avg_down and downsample,
                        self.down_kernel_size if downsample and stride != 1 else 1,
                    )
                )
                in_channels = out_channels
        return specs


# timm's stem and shortcut variants ("Bag of Tricks", timm's ResNet docstring): c, d, s, t.
_C = {"stem_type": "deep", "stem_width": 32}
_D = {"stem_type": "deep", "stem_width": 32, "avg_down": True}
_S = {"stem_type": "deep", "stem_width": 64}
_T = {"stem_type": "deep_tiered", "stem_width": 32, "avg_down": True}
# ResNet-RS: the d variant with a strided conv for the stem pool and SE at ratio 1/4.
_RS = {**_D, "replace_stem_pool": True, "attn": "se", "attn_args": {"rd_ratio": 0.25}}

# Every architecture of timm's resnet.py but resnet50_gn (GroupNorm), the _pruned ones (their
# widths are files inside timm) and test_resnet: timm 1.0.31's model_args, one row per name.
_RESNETS: dict[str, ResNetConfig] = {
    "ecaresnet101d": ResNetConfig("bottleneck", (3, 4, 23, 3), 1, 64, "eca", **_D),
    "ecaresnet200d": ResNetConfig("bottleneck", (3, 24, 36, 3), 1, 64, "eca", **_D),
    "ecaresnet269d": ResNetConfig("bottleneck", (3, 30, 48, 8), 1, 64, "eca", **_D),
    "ecaresnet26t": ResNetConfig("bottleneck", (2, 2, 2, 2), 1, 64, "eca", **_T),
    "ecaresnet50d": ResNetConfig("bottleneck", (3, 4, 6, 3), 1, 64, "eca", **_D),
    "ecaresnet50t": ResNetConfig("bottleneck", (3, 4, 6, 3), 1, 64, "eca", **_T),
    "ecaresnetlight": ResNetConfig(
        "bottleneck", (1, 1, 11, 3), 1, 64, "eca", stem_width=32, avg_down=True
    ),
    "ecaresnext26t_32x4d": ResNetConfig("bottleneck", (2, 2, 2, 2), 32, 4, "eca", **_T),
    "ecaresnext50t_32x4d": ResNetConfig("bottleneck", (3, 4, 6, 3), 32, 4, "eca", **_T),
    "resnet101": ResNetConfig("bottleneck", (3, 4, 23, 3)),
    "resnet101c": ResNetConfig("bottleneck", (3, 4, 23, 3), **_C),
    "resnet101d": ResNetConfig("bottleneck", (3, 4, 23, 3), **_D),
    "resnet101s": ResNetConfig("bottleneck", (3, 4, 23, 3), **_S),
    "resnet10t": ResNetConfig("basic", (1, 1, 1, 1), **_T),
    "resnet14t": ResNetConfig("bottleneck", (1, 1, 1, 1), **_T),
    "resnet152": ResNetConfig("bottleneck", (3, 8, 36, 3)),
    "resnet152c": ResNetConfig("bottleneck", (3, 8, 36, 3), **_C),
    "resnet152d": ResNetConfig("bottleneck", (3, 8, 36, 3), **_D),
    "resnet152s": ResNetConfig("bottleneck", (3, 8, 36, 3), **_S),
    "resnet18": ResNetConfig("basic", (2, 2, 2, 2)),
    "resnet18d": ResNetConfig("basic", (2, 2, 2, 2), **_D),
    "resnet200": ResNetConfig("bottleneck", (3, 24, 36, 3)),
    "resnet200d": ResNetConfig("bottleneck", (3, 24, 36, 3), **_D),
    "resnet26": ResNetConfig("bottleneck", (2, 2, 2, 2)),
    "resnet26d": ResNetConfig("bottleneck", (2, 2, 2, 2), **_D),
    "resnet26t": ResNetConfig("bottleneck", (2, 2, 2, 2), **_T),
    "resnet34": ResNetConfig("basic", (3, 4, 6, 3)),
    "resnet34d": ResNetConfig("basic", (3, 4, 6, 3), **_D),
    "resnet50": ResNetConfig("bottleneck", (3, 4, 6, 3)),
    "resnet50c": ResNetConfig("bottleneck", (3, 4, 6, 3), **_C),
    "resnet50d": ResNetConfig("bottleneck", (3, 4, 6, 3), **_D),
    "resnet50s": ResNetConfig("bottleneck", (3, 4, 6, 3), **_S),
    "resnet50t": ResNetConfig("bottleneck", (3, 4, 6, 3), **_T),
    "resnetaa101d": ResNetConfig("bottleneck", (3, 4, 23, 3), **_D, aa_layer="avg"),
    "resnetaa34d": ResNetConfig("basic", (3, 4, 6, 3), **_D, aa_layer="avg"),
    "resnetaa50": ResNetConfig("bottleneck", (3, 4, 6, 3), aa_layer="avg"),
    "resnetaa50d": ResNetConfig("bottleneck", (3, 4, 6, 3), **_D, aa_layer="avg"),
    "resnetblur101d": ResNetConfig("bottleneck", (3, 4, 23, 3), **_D, aa_layer="blur"),
    "resnetblur18": ResNetConfig("basic", (2, 2, 2, 2), aa_layer="blur"),
    "resnetblur50": ResNetConfig("bottleneck", (3, 4, 6, 3), aa_layer="blur"),
    "resnetblur50d": ResNetConfig("bottleneck", (3, 4, 6, 3), **_D, aa_layer="blur"),
    "resnetrs101": ResNetConfig("bottleneck", (3, 4, 23, 3), 1, 64, **_RS),
    "resnetrs152": ResNetConfig("bottleneck", (3, 8, 36, 3), 1, 64, **_RS),
    "resnetrs200": ResNetConfig("bottleneck", (3, 24, 36, 3), 1, 64, **_RS),
    "resnetrs270": ResNetConfig("bottleneck", (4, 29, 53, 4), 1, 64, **_RS),
    "resnetrs350": ResNetConfig("bottleneck", (4, 36, 72, 4), 1, 64, **_RS),
    "resnetrs420": ResNetConfig("bottleneck", (4, 44, 87, 4), 1, 64, **_RS),
    "resnetrs50": ResNetConfig("bottleneck", (3, 4, 6, 3), 1, 64, **_RS),
    "resnext101_32x16d": ResNetConfig("bottleneck", (3, 4, 23, 3), 32, 16),
    "resnext101_32x32d": ResNetConfig("bottleneck", (3, 4, 23, 3), 32, 32),
    "resnext101_32x4d": ResNetConfig("bottleneck", (3, 4, 23, 3), 32, 4),
    "resnext101_32x8d": ResNetConfig("bottleneck", (3, 4, 23, 3), 32, 8),
    "resnext101_64x4d": ResNetConfig("bottleneck", (3, 4, 23, 3), 64, 4),
    "resnext50_32x4d": ResNetConfig("bottleneck", (3, 4, 6, 3), 32, 4),
    "resnext50d_32x4d": ResNetConfig("bottleneck", (3, 4, 6, 3), 32, 4, **_D),
    "senet154": ResNetConfig(
        "bottleneck",
        (3, 8, 36, 3),
        64,
        4,
        "se",
        stem_type="deep",
        down_kernel_size=3,
        block_reduce_first=2,
    ),
    "seresnet101": ResNetConfig("bottleneck", (3, 4, 23, 3), 1, 64, "se"),
    "seresnet152": ResNetConfig("bottleneck", (3, 8, 36, 3), 1, 64, "se"),
    "seresnet152d": ResNetConfig("bottleneck", (3, 8, 36, 3), 1, 64, "se", **_D),
    "seresnet18": ResNetConfig("basic", (2, 2, 2, 2), 1, 64, "se"),
    "seresnet200d": ResNetConfig("bottleneck", (3, 24, 36, 3), 1, 64, "se", **_D),
    "seresnet269d": ResNetConfig("bottleneck", (3, 30, 48, 8), 1, 64, "se", **_D),
    "seresnet34": ResNetConfig("basic", (3, 4, 6, 3), 1, 64, "se"),
    "seresnet50": ResNetConfig("bottleneck", (3, 4, 6, 3), 1, 64, "se"),
    "seresnet50t": ResNetConfig("bottleneck", (3, 4, 6, 3), 1, 64, "se", **_T),
    "seresnetaa50d": ResNetConfig("bottleneck", (3, 4, 6, 3), 1, 64, "se", **_D, aa_layer="avg"),
    "seresnext101_32x4d": ResNetConfig("bottleneck", (3, 4, 23, 3), 32, 4, "se"),
    "seresnext101_32x8d": ResNetConfig("bottleneck", (3, 4, 23, 3), 32, 8, "se"),
    "seresnext101_64x4d": ResNetConfig("bottleneck", (3, 4, 23, 3), 64, 4, "se"),
    "seresnext101d_32x8d": ResNetConfig("bottleneck", (3, 4, 23, 3), 32, 8, "se", **_D),
    "seresnext26d_32x4d": ResNetConfig("bottleneck", (2, 2, 2, 2), 32, 4, "se", **_D),
    "seresnext26t_32x4d": ResNetConfig("bottleneck", (2, 2, 2, 2), 32, 4, "se", **_T),
    "seresnext50_32x4d": ResNetConfig("bottleneck", (3, 4, 6, 3), 32, 4, "se"),
    "seresnextaa101d_32x8d": ResNetConfig(
        "bottleneck", (3, 4, 23, 3), 32, 8, "se", **_D, aa_layer="avg"
    ),
    "seresnextaa201d_32x8d": ResNetConfig(
        "bottleneck",
        (3, 24, 36, 4),
        32,
        8,
        "se",
        aa_layer="avg",
        stem_width=64,
        stem_type="deep",
        avg_down=True,
    ),
    "wide_resnet101_2": ResNetConfig("bottleneck", (3, 4, 23, 3), 1, 128),
    "wide_resnet50_2": ResNetConfig("bottleneck", (3, 4, 6, 3), 1, 128),
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
    config_options=(
        "block",
        "layers",
        "cardinality",
        "base_width",
        "attn",
        "sk",
        "stem_type",
        "stem_width",
        "replace_stem_pool",
        "avg_down",
        "down_kernel_size",
        "block_reduce_first",
        "aa_layer",
        "attn_args",
    ),
)
FAMILIES[RESNET.name] = RESNET
for _name, _config in _RESNETS.items():
    register_model(_name, RESNET, _config)
