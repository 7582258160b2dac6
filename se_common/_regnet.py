"""The RegNet family (Radosavovic et al., "Designing Network Design Spaces", CVPR 2020; Dollar
et al., "Fast and Accurate Model Scaling", CVPR 2021), as timm's ``regnet.py`` builds it:
RegNetX (no SE), RegNetY (SE in every bottleneck), RegNetV (pre-activation) and RegNetZ.

An architecture is a handful of numbers (:class:`RegNetConfig`, timm's ``RegNetCfg``): the
*width generator* turns the linear widths ``w0 + wa * j`` of ``depth`` blocks into four stages
of quantised widths (:func:`generate_regnet`, timm's, to the integer: it computes in float32),
whose bottleneck widths are then made divisible by the group width
(:func:`adjust_widths_groups`). The plan (:meth:`RegNetConfig.blocks`) gives every block's
widths, groups, SE width (``round(in_chs * se_ratio)``, from the block's *input*), stride,
dilation and shortcut; the three front-ends build from it alone.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from se_common._checks import drop_rate, feature_levels, positive_int
from se_common._configs import batchnorm_keys, conv_keys, linear_keys
from se_common._efficientnet import ACTIVATIONS
from se_common._registry import FAMILIES, Family, FeatureInfo, TensorSpec, register_model
from se_common._widths import make_divisible

__all__ = [
    "DOWNSAMPLE_TYPES",
    "NOT_BUILT",
    "REGNET",
    "RegBlockSpec",
    "RegNetConfig",
    "RegStageSpec",
    "adjust_widths_groups",
    "generate_regnet",
]

Plan = dict[str, TensorSpec]

# timm's shortcut types where a block changes shape: a strided 1x1 conv and norm, a 2x2
# average pool then a 1x1 conv and norm (ResNet-D's), or none (no residual: RegNetZ).
DOWNSAMPLE_TYPES = ("conv1x1", "avg", None)
MAX_DEPTH = 1024  # blocks of one network: a config is untrusted input, its work bounded
MAX_WIDTH = 65536  # channels of one stage
QUANT = 8  # generate_regnet's width quantum (timm's default)


def generate_regnet(
    wa: float, w0: int, wm: float, depth: int, quant: int = QUANT
) -> tuple[list[int], list[int]]:
    """timm's ``generate_regnet``: the per-block widths of a RegNet and its per-block stage
    exponents, computed as timm computes them, in float32.

    Block ``j``'s continuous width ``w0 + wa * j`` is snapped to ``w0 * wm ** e``, the exponent
    ``e = round(log(w_j / w0) / log(wm))``, then rounded to a multiple of ``quant``.
    float32's ``log`` and ``pow`` are taken correctly rounded (float64, then rounded once), which
    agreed with timm's PyTorch kernels on every registered config and on 100,000 random ones.

    Example:
        >>> widths, _ = generate_regnet(36.44, 24, 2.49, 13)  # regnetx_002
        >>> sorted(set(widths))
        [24, 56, 152, 368]
    """
    f, d = np.float32, np.float64
    cont = np.arange(depth, dtype=f) * f(wa) + f(w0)
    exps = np.round(np.log((cont / f(w0)).astype(d)).astype(f) / f(math.log(wm)))
    widths = np.round((f(w0) * (d(f(wm)) ** exps.astype(d)).astype(f)) / f(quant)) * f(quant)
    return widths.astype(np.int64).tolist(), exps.astype(np.int64).tolist()


def adjust_widths_groups(
    widths: list[int], bottle_ratio: float, group_size: int, group_min_ratio: float = 0.0
) -> tuple[list[int], list[int]]:
    """timm's ``adjust_widths_groups_comp``: each stage's group width is at most its bottleneck
    width ``int(w * b)`` (regnetx_080's 120 is 80 in its first stage), the bottleneck width is
    made a multiple of it (nearest, as pycls; with ``group_min_ratio``, torchvision's
    ``make_divisible``) and the stage width given back from it; returns (widths, group widths).

    Example:
        >>> adjust_widths_groups([80, 240, 720, 1920], 1.0, 120)
        ([80, 240, 720, 1920], [80, 120, 120, 120])
    """
    bottles = [int(w * bottle_ratio) for w in widths]
    groups = [min(group_size, b) for b in bottles]
    if group_min_ratio:  # timm passes the ratio as make_divisible's min_value (and round_limit)
        bottles = [
            int(make_divisible(b, g, group_min_ratio)) for b, g in zip(bottles, groups, strict=True)
        ]
    else:
        bottles = [int(round(b / g) * g) for b, g in zip(bottles, groups, strict=True)]
    return [int(b / bottle_ratio) for b in bottles], groups


@dataclass(frozen=True)
class RegStageSpec:
    """One of the four stages, as timm's ``RegNet._get_stage_args`` plans it."""

    out_channels: int
    depth: int
    stride: int
    dilation: int
    group_size: int


@dataclass(frozen=True)
class RegBlockSpec:
    """One block, fully planned: PyTorch name ``s{stage}.b{index}``.

    ``shortcut`` is ``"identity"``, ``"conv1x1"`` (strided 1x1 conv, and a norm unless
    pre-activation), ``"avg"`` (2x2 average pool at the stride, then the 1x1 conv) or ``None``
    (no residual). ``pool`` is the average pool of an ``"avg"`` shortcut: ``"stride"`` (2x2,
    ceil mode, padding not counted), ``"same"`` (timm's ``AvgPool2dSame`` at stride 1, in a
    dilated stage) or ``None``.
    """

    stage: int  # 1..4
    index: int  # 1..depth
    in_channels: int
    out_channels: int
    bottleneck: int  # channels of the grouped 3x3 conv
    groups: int
    se_channels: int  # 0: no SE
    stride: int
    dilation: int  # of the 3x3 conv
    shortcut: str | None
    pool: str | None = None
    drop_path: float = 0.0


def _number(name: str, value: Any, low: float, *, above: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or (value <= low if above else value < low)
    ):
        relation = ">" if above else ">="
        raise ValueError(f"{name} must be a finite number {relation} {low:g}, got {value!r}")
    return value


@dataclass(frozen=True)
class RegNetConfig:
    """A RegNet: timm's ``RegNetCfg`` field for field (its ``norm_layer`` is BatchNorm here),
    with timm's model options ``output_stride`` and ``zero_init_last``.

    Attributes:
        depth: blocks in all (timm: ``d``).
        w0, wa, wm: the initial width (a multiple of 8), slope (>= 0) and multiplier (> 1) of
            the width generator (:func:`generate_regnet`); they must give four stages.
        group_size: channels per group of the 3x3 convs (at most a stage's bottleneck width:
            timm's cap, :func:`adjust_widths_groups`).
        bottle_ratio: bottleneck width over block width (RegNetZ: 4, an inverted bottleneck).
        se_ratio: SE width over the block's input width (0: no SE, RegNetX).
        group_min_ratio: torchvision's rounding of bottleneck widths to the group width (the
            ``_tv`` models: 0.9); 0 rounds to the nearest multiple, as pycls.
        stem_width: channels of the 3x3 stride-2 stem.
        downsample: the shortcut where a block changes shape, one of :data:`DOWNSAMPLE_TYPES`.
        linear_out: no activation after a block's residual sum (RegNetZ).
        preact: pre-activation blocks (RegNetV): norm-act before each conv, a bare conv stem.
        num_features: a final 1x1 conv-norm-act to this width before the pool (0: none).
        act_layer: the activation (a :data:`se_common.ACTIVATIONS` name), in SE too.
        output_stride: 32, or 16 / 8: the last strides become dilations (segmentation).
        zero_init_last: the models' default for zeroing each bottleneck's last BatchNorm scale
            (timm: on, but off for RegNetZ and meaningless for pre-activation blocks).

    Example:
        >>> cfg = RegNetConfig(depth=13, w0=24, wa=36.44, wm=2.49, group_size=8, se_ratio=0.25)
        >>> [s.out_channels for s in cfg.stages()], cfg.num_features
        ([24, 56, 152, 368], 368)
    """

    depth: int = 21
    w0: int = 80
    wa: float = 42.63
    wm: float = 2.66
    group_size: int = 24
    bottle_ratio: float = 1.0
    se_ratio: float = 0.0
    group_min_ratio: float = 0.0
    stem_width: int = 32
    downsample: str | None = "conv1x1"
    linear_out: bool = False
    preact: bool = False
    num_features: int = 0
    act_layer: str = "relu"
    output_stride: int = 32
    zero_init_last: bool = True

    def __post_init__(self) -> None:
        depth = positive_int("depth", self.depth)
        if depth > MAX_DEPTH:
            raise ValueError(f"depth must be at most {MAX_DEPTH}, got {depth}")
        w0 = positive_int("w0", self.w0)
        if w0 % QUANT or w0 > MAX_WIDTH:
            raise ValueError(f"w0 must be a multiple of {QUANT} up to {MAX_WIDTH}, got {w0}")
        _number("wa", self.wa, 0)
        _number("wm", self.wm, 1, above=True)
        positive_int("group_size", self.group_size)
        _number("bottle_ratio", self.bottle_ratio, 0, above=True)
        _number("se_ratio", self.se_ratio, 0)
        if not 0 <= _number("group_min_ratio", self.group_min_ratio, 0) < 1:
            raise ValueError(f"group_min_ratio must be in [0, 1), got {self.group_min_ratio!r}")
        if positive_int("stem_width", self.stem_width) > MAX_WIDTH:
            raise ValueError(f"stem_width must be at most {MAX_WIDTH}, got {self.stem_width}")
        if self.downsample not in DOWNSAMPLE_TYPES:
            raise ValueError(
                f"unknown downsample {self.downsample!r}; timm's are "
                f"{', '.join(map(repr, DOWNSAMPLE_TYPES))}"
            )
        for name in ("linear_out", "preact", "zero_init_last"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        nf = self.num_features
        if isinstance(nf, bool) or not isinstance(nf, int) or not 0 <= nf <= MAX_WIDTH:
            raise ValueError(f"num_features must be an integer in [0, {MAX_WIDTH}], got {nf!r}")
        if self.act_layer not in ACTIVATIONS:
            raise ValueError(
                f"unknown act_layer {self.act_layer!r}; known: {', '.join(ACTIVATIONS)}"
            )
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride {self.output_stride!r} is not 8, 16 or 32")
        for spec in self.blocks():
            if not spec.groups or spec.bottleneck % spec.groups:
                raise ValueError(
                    f"group_size {self.group_size} makes {spec.groups} groups of s{spec.stage}'s "
                    f"bottleneck width {spec.bottleneck} (round({spec.out_channels} * "
                    f"bottle_ratio {self.bottle_ratio:g})), which they do not divide: no "
                    f"grouped conv has that shape"
                )

    def widths(self) -> list[int]:
        """Every block's width from the generator (before the group-width adjustment)."""
        return generate_regnet(self.wa, self.w0, self.wm, self.depth)[0]

    def stages(self) -> list[RegStageSpec]:
        """The four stages (timm's ``_get_stage_args``): widths adjusted to the group width,
        strides 2, turned into dilations past ``output_stride``.

        Raises:
            ValueError: where the generator gives other than four stages, or a width above
                the limit.
        """
        widths = self.widths()
        stage_widths = sorted(set(widths))  # timm's torch.unique: sorted distinct widths
        depths = [widths.count(w) for w in stage_widths]
        if len(stage_widths) != 4:
            raise ValueError(
                f"depth={self.depth}, w0={self.w0}, wa={self.wa!r}, wm={self.wm!r} give "
                f"{len(stage_widths)} stage(s) of widths {stage_widths}; a RegNet has 4"
            )
        if stage_widths[-1] > MAX_WIDTH:
            raise ValueError(f"wa={self.wa!r} gives a width {stage_widths[-1]} > {MAX_WIDTH}")
        if int(stage_widths[0] * self.bottle_ratio) < 1:
            raise ValueError(
                f"bottle_ratio {self.bottle_ratio!r} leaves stage s1 (width {stage_widths[0]}) "
                f"no bottleneck channels"
            )
        out, group_sizes = adjust_widths_groups(
            stage_widths, self.bottle_ratio, self.group_size, self.group_min_ratio
        )
        stages, net_stride, dilation = [], 2, 1
        for w, d, g in zip(out, depths, group_sizes, strict=True):
            if net_stride >= self.output_stride:
                dilation, stride = dilation * 2, 1
            else:
                stride = 2
                net_stride *= 2
            stages.append(RegStageSpec(w, d, stride, dilation, g))
        return stages

    def blocks(self, drop_path_rate: float = 0.0) -> list[RegBlockSpec]:
        """Every block in order, as timm's ``RegStage`` and ``Bottleneck`` build them; with
        ``drop_path_rate`` (stochastic depth in training) block ``i`` of ``n`` drops its branch
        at ``drop_path_rate * i / (n - 1)`` (timm's ``calculate_drop_path_rates``).

        Raises:
            ValueError: for a rate outside ``[0, 1)``, naming it.
        """
        rate = drop_rate("drop_path_rate", drop_path_rate)
        specs, in_channels, n = [], self.stem_width, 0
        stages = self.stages()
        total = sum(s.depth for s in stages)
        for s, stage in enumerate(stages, 1):
            first_dilation = 1 if stage.dilation in (1, 2) else 2
            for j in range(1, stage.depth + 1):
                stride = stage.stride if j == 1 else 1
                dilation = first_dilation
                out = stage.out_channels
                bottleneck = round(out * self.bottle_ratio)
                changes = in_channels != out or stride != 1 or dilation != stage.dilation
                shortcut, pool = "identity", None
                if changes:
                    shortcut = self.downsample
                    if shortcut == "avg" and (stride > 1 or dilation > 1):
                        pool = "stride" if dilation == 1 else "same"
                specs.append(
                    RegBlockSpec(
                        s,
                        j,
                        in_channels,
                        out,
                        bottleneck,
                        bottleneck // stage.group_size,
                        round(in_channels * self.se_ratio) if self.se_ratio else 0,
                        stride,
                        dilation,
                        shortcut,
                        pool,
                        rate * n / (total - 1) if rate and total > 1 else 0.0,
                    )
                )
                in_channels, first_dilation, n = out, stage.dilation, n + 1
        return specs

    @property
    def final_width(self) -> int:
        """Channels out of the last stage."""
        return self.stages()[-1].out_channels

    @property
    def pooled_features(self) -> int:
        """Channels the classifier takes (timm's ``num_features``)."""
        return self.num_features or self.final_width

    @property
    def head_hidden_size(self) -> int:
        return self.pooled_features

    @property
    def final_act(self) -> bool:
        """Whether an activation follows the last stage without a final conv (timm's
        ``final_conv``: after RegNetZ's linear blocks and RegNetV's pre-activation ones)."""
        return not self.num_features and (self.linear_out or self.preact)

    def attention(self) -> list[tuple[str, str]]:
        """(short name, description) of the attention the network places: RegNetY's SE."""
        if not self.se_ratio:
            return []
        return [
            (
                "se",
                f"SE after each grouped 3x3 conv: width round({self.se_ratio:g} x the block "
                f"input), the block's activation ({self.act_layer}), sigmoid gate",
            )
        ]

    def feature_info(self) -> tuple[FeatureInfo, ...]:
        """timm's ``feature_info``: the stem (stride 2), then ``s1`` to ``s4``."""
        info, reduction = [FeatureInfo(self.stem_width, 2, "stem")], 2
        for i, stage in enumerate(self.stages(), 1):
            reduction *= stage.stride
            info.append(FeatureInfo(stage.out_channels, reduction, f"s{i}"))
        return tuple(info)

    def check_options(
        self, num_classes: Any, in_chans: Any, out_indices: Sequence[int] | None
    ) -> tuple[int, ...]:
        """Clear errors for the three front-ends' model options; the feature levels of
        ``out_indices`` (default: every level of :meth:`feature_info`)."""
        return feature_levels(num_classes, in_chans, out_indices, len(self.feature_info()))

    def state_dict(self, num_classes: int, in_chans: int) -> Plan:
        """The PyTorch state_dict's keys (in timm's order) and shapes, with ``num_classes``
        classes (0: no classifier) and ``in_chans`` input channels."""
        plan: Plan = {}
        pre = self.preact
        if pre:
            conv_keys(plan, "stem", self.stem_width, in_chans, 3)
        else:
            conv_keys(plan, "stem.conv", self.stem_width, in_chans, 3)
            batchnorm_keys(plan, "stem.bn", self.stem_width)
        for b in self.blocks():
            key = f"s{b.stage}.b{b.index}"
            inp, mid, out = b.in_channels, b.bottleneck, b.out_channels
            convs = ((inp, mid, 1, 1), (mid, mid, 3, b.groups), (mid, out, 1, 1))
            for i, (ci, co, k, g) in enumerate(convs, 1):
                if pre:
                    batchnorm_keys(plan, f"{key}.norm{i}", ci)
                    conv_keys(plan, f"{key}.conv{i}", co, ci, k, g)
                else:
                    conv_keys(plan, f"{key}.conv{i}.conv", co, ci, k, g)
                    batchnorm_keys(plan, f"{key}.conv{i}.bn", co)
                if i == 2 and b.se_channels:
                    conv_keys(plan, f"{key}.se.fc1", b.se_channels, mid, 1, bias=True)
                    conv_keys(plan, f"{key}.se.fc2", mid, b.se_channels, 1, bias=True)
            if b.shortcut in ("conv1x1", "avg"):
                down = f"{key}.downsample" + (".1" if b.shortcut == "avg" else "")
                if pre:
                    conv_keys(plan, down, out, inp, 1)
                else:
                    conv_keys(plan, f"{down}.conv", out, inp, 1)
                    batchnorm_keys(plan, f"{down}.bn", out)
        if self.num_features:
            conv_keys(plan, "final_conv.conv", self.num_features, self.final_width, 1)
            batchnorm_keys(plan, "final_conv.bn", self.num_features)
        if num_classes:
            linear_keys(plan, "head.fc", num_classes, self.pooled_features)
        return plan


def _rows() -> dict[str, RegNetConfig]:
    """timm 1.0's ``regnet.py`` ``model_cfgs``, row for row (but regnety_040_sgn)."""
    x = {
        "002": (24, 36.44, 2.49, 8, 13),
        "004": (24, 24.48, 2.54, 16, 22),
        "006": (48, 36.97, 2.24, 24, 16),
        "008": (56, 35.73, 2.28, 16, 16),
        "016": (80, 34.01, 2.25, 24, 18),
        "032": (88, 26.31, 2.25, 48, 25),
        "040": (96, 38.65, 2.43, 40, 23),
        "064": (184, 60.83, 2.07, 56, 17),
        "080": (80, 49.56, 2.88, 120, 23),
        "120": (168, 73.36, 2.37, 112, 19),
        "160": (216, 55.59, 2.1, 128, 22),
        "320": (320, 69.86, 2.0, 168, 23),
    }
    y = {
        "002": (24, 36.44, 2.49, 8, 13),
        "004": (48, 27.89, 2.09, 8, 16),
        "006": (48, 32.54, 2.32, 16, 15),
        "008": (56, 38.84, 2.4, 16, 14),
        "016": (48, 20.71, 2.65, 24, 27),
        "032": (80, 42.63, 2.66, 24, 21),
        "040": (96, 31.41, 2.24, 64, 22),
        "064": (112, 33.22, 2.27, 72, 25),
        "080": (192, 76.82, 2.19, 56, 17),
        "120": (168, 73.36, 2.37, 112, 19),
        "160": (200, 106.23, 2.48, 112, 18),
        "320": (232, 115.89, 2.53, 232, 20),
        "640": (352, 147.48, 2.4, 328, 20),
        "1280": (456, 160.83, 2.52, 264, 27),
        "2560": (640, 230.83, 2.53, 373, 27),
    }

    def cfg(args: tuple[Any, ...], **more: Any) -> RegNetConfig:
        w0, wa, wm, group_size, depth = args
        return RegNetConfig(depth=depth, w0=w0, wa=wa, wm=wm, group_size=group_size, **more)

    rows = {f"regnetx_{v}": cfg(a) for v, a in x.items()}
    rows["regnetx_004_tv"] = cfg(x["004"], group_min_ratio=0.9)
    rows.update({f"regnety_{v}": cfg(a, se_ratio=0.25) for v, a in y.items()})
    for v in ("008", "080"):
        rows[f"regnety_{v}_tv"] = cfg(y[v], se_ratio=0.25, group_min_ratio=0.9)
    v = {"preact": True, "act_layer": "silu", "se_ratio": 0.25}
    rows["regnetv_040"] = cfg(y["040"], **v)
    rows["regnetv_064"] = cfg(y["064"], **v, downsample="avg")
    z = {"bottle_ratio": 4.0, "se_ratio": 0.25, "downsample": None, "linear_out": True}
    z |= {"act_layer": "silu", "zero_init_last": False}
    rows["regnetz_005"] = cfg((16, 10.7, 2.51, 4, 21), num_features=1024, **z)
    rows["regnetz_040"] = cfg((48, 14.5, 2.226, 8, 28), **z)
    rows["regnetz_040_h"] = cfg((48, 14.5, 2.226, 8, 28), num_features=1536, **z)
    return rows


# timm's RegNets this family does not build, and why (docs/regnet.md).
NOT_BUILT = {
    "regnety_040_sgn": "GroupNorm (group size 16) with SiLU in place of BatchNorm; no published "
    "weights",
    "regnetz_b16, regnetz_c16, regnetz_d8, regnetz_d32, regnetz_e8 and their _evos variants": (
        "timm builds these in byobnet.py (ByobNet blocks, not regnet.py's), out of this family"
    ),
}

# timm's regnet.py: the stem, the stages s1..s4, final_conv, the head's classifier head.fc.
REGNET = Family(
    "regnet",
    RegNetConfig,
    builders={
        "torch": "se_torch._regnet:RegNet",
        "linen": "se_flax._regnet:RegNet",
        "nnx": "se_flax.nnx._regnet:RegNet",
    },
    classifier="head.fc",
    pre_logits=("final_conv",),
    first_conv="stem.conv",
)
FAMILIES[REGNET.name] = REGNET
for _name, _config in _rows().items():
    register_model(_name, REGNET, _config)
