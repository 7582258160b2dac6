"""The parse function: timm's block strings, decoded and planned framework-free, and the
EfficientNet family (EfficientNet B0-B8 / L2, Lite, EdgeTPU, V2, MixNet, TinyNet, MNASNet,
MobileNet V1/V2, FBNet, SPNASNet) as rows of the one registry.

An architecture is a list of stages, each a list of block strings (timm's notation, Tan & Le's
``mnasnet_models.py`` grown up)::

    ds_r1_k3_s1_e1_c16_se0.25     a depthwise-separable block, 16 outputs, SE at 1/4
    ir_r2_k3_s2_e6_c24_se0.25     two inverted residuals, 3x3 depthwise, stride 2, 6x expansion

The first token is the block type (:data:`BLOCK_KINDS`), then options in any order:

========  =====================================================================================
``r``     repeats (depth scaling multiplies them)
``k``     kernel size of the block's spatial conv; ``k3.5.7`` mixes kernels over channel splits
``a``     ``ir``: kernel(s) of the expansion conv (``a1.1``: two 1x1 convs over channel splits)
``p``     kernel(s) of the pointwise (projection) conv
``s``     stride of the first repeat
``e``     expansion ratio (``ir``, ``er``; ``1`` only for ``ds``, ``dsa``, ``cn``)
``c``     output channels (before width scaling)
``se``    Squeeze-and-Excitation ratio (of the block input, or of the expanded width with
          ``se_from_exp``)
``n``     activation: ``re`` (ReLU), ``r6`` (ReLU6), ``hs`` (hard swish), ``sw`` (SiLU),
          ``mi`` (Mish); default: the model's
``gs``    group size of the spatial conv (``1``: depthwise)
``fc``    ``er``: input channels the expansion is computed from (TF EdgeTPU's quirk)
``noskip`` / ``skip``   no residual where one fits / a residual for ``cn``
========  =====================================================================================

:func:`decode_block_str` and :func:`decode_arch_def` decode exactly as timm's
``_efficientnet_builder`` does, and refuse what timm ignores silently (an unknown option, an
unknown activation, an option the block type has no use for), naming the token and the string.
:meth:`EfficientNetConfig.blocks` then plans every block as timm's ``EfficientNetBuilder`` builds
it (width rounding, depth scaling, stride to dilation past ``output_stride``, drop-path rates);
each front-end builds its modules from these :class:`MBBlockSpec` alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from se_common._checks import drop_rate, feature_levels, positive_int
from se_common._registry import FAMILIES, Family, FeatureInfo, TensorSpec, register_model
from se_common._widths import make_divisible

__all__ = [
    "ACTIVATIONS",
    "BLOCK_KINDS",
    "EFFICIENTNET",
    "MB_SE",
    "PAD_TYPES",
    "SE_GATES",
    "SE_ROUNDINGS",
    "BlockArgs",
    "EfficientNetConfig",
    "MBBlockSpec",
    "conv_parts",
    "decode_arch_def",
    "decode_block_str",
    "round_channels",
    "split_channels",
]

Plan = dict[str, TensorSpec]

# Activations by name (timm's get_act_layer names; "swish" is SiLU), and the block-string codes.
ACTIVATIONS = ("relu", "relu6", "hard_swish", "silu", "mish")
_ACT_ALIASES = {"swish": "silu", "hardswish": "hard_swish"}
_ACT_CODES = {"re": "relu", "r6": "relu6", "hs": "hard_swish", "sw": "silu", "mi": "mish"}

# Block types: depthwise-separable (``dsa``: with an activation after the pointwise conv and no
# residual), inverted residual (MBConv), edge residual (FusedMBConv), conv-norm-act.
BLOCK_KINDS = ("ds", "dsa", "ir", "er", "cn")
_NOT_BUILT = {
    "uir": "MobileNetV4's universal inverted residual",
    "mha": "MobileNetV4's multi-head attention",
    "mqa": "MobileNetV4's multi-query attention",
}
# The SE of the family's blocks (timm's _efficientnet_blocks.SqueezeExcite), for tables.
MB_SE = (
    "Squeeze-and-Excitation inside the blocks (timm's EfficientNet SqueezeExcite: "
    "se.conv_reduce / se.conv_expand with biases, width se_ratio x the block input (x the "
    "expanded width with se_from_exp), the block's activation or ReLU, a sigmoid or "
    "MobileNetV3's hard-sigmoid gate), where a block string has `se`"
)
# SE's gate: timm's sigmoid, or MobileNetV3's hard sigmoid (PyTorch's relu6(x + 3) / 6).
SE_GATES = ("sigmoid", "hard_sigmoid")
# How SE's reduced width is rounded from se_ratio x its input: Python's round (timm's default),
# timm's round_channels (to a multiple of 8, MobileNetV3), or the model's own width rounding
# (channel_multiplier, channel_divisor, round_limit: FBNetV3).
SE_ROUNDINGS = ("round", "divisible", "model")
# Padding: PyTorch's symmetric ``((s - 1) + d * (k - 1)) // 2``, or TensorFlow's "SAME"
# (computed from the input size: asymmetric for even sizes at stride 2; timm's tf_ ports).
PAD_TYPES = ("", "same")

# Which options each block type reads, as timm's _decode_block_str does ("e" must be 1 where
# the type has no expansion; timm ignores it there).
_OPTIONS = {
    "ds": {"r", "k", "p", "s", "c", "se", "n", "gs", "e"},
    "dsa": {"r", "k", "p", "s", "c", "se", "n", "gs", "e"},
    "ir": {"r", "k", "a", "p", "s", "e", "c", "se", "n", "gs"},
    "er": {"r", "k", "p", "s", "e", "c", "se", "n", "gs", "fc"},
    "cn": {"r", "k", "s", "c", "n", "gs", "e"},
}
_REQUIRED = {"r", "k", "s", "c"}
_INT = re.compile(r"\d+")
_FLOAT = re.compile(r"\d+(\.\d+)?")
_KERNELS = re.compile(r"\d+(\.\d+)*")


def canonical_act(name: str, what: str = "act_layer") -> str:
    """An :data:`ACTIVATIONS` name for ``name`` (timm's spellings too); a ``ValueError`` naming
    it otherwise."""
    key = _ACT_ALIASES.get(name, name) if isinstance(name, str) else name
    if key not in ACTIVATIONS:
        raise ValueError(
            f"{what} {name!r} is not one of {', '.join(ACTIVATIONS)} (or timm's 'swish')"
        )
    return key


@dataclass(frozen=True)
class BlockArgs:
    """One decoded block string (timm's block kwargs), before width and depth scaling.

    Attributes:
        block_type: a :data:`BLOCK_KINDS` name.
        out_chs: output channels, unscaled.
        stride: of the stage's first repeat.
        kernel_size: of the spatial conv (``ds``/``dsa``/``ir``: depthwise; ``er``: the
            expansion conv; ``cn``: its conv); several: a mixed conv over channel splits.
        exp_kernel_size: ``ir``'s expansion conv kernel(s) (``a``).
        pw_kernel_size: the pointwise conv kernel(s) (``p``).
        exp_ratio: expansion (``ir``, ``er``).
        se_ratio: SE ratio; 0: no SE.
        act: the block's activation, or ``None`` for the model's.
        noskip: no residual even where the shapes allow one (``dsa`` always).
        skip: ``cn``: a residual where the shapes allow one.
        pw_act: an activation after the pointwise conv (``dsa``).
        force_in_chs: ``er``: expand from these channels instead of the input's (0: the input).
        group_size: channels per group of the spatial conv (1: depthwise, 0: ungrouped),
            ``None``: the type's default (depthwise for ``ds``/``ir``, ungrouped for ``er``/``cn``).
    """

    block_type: str
    out_chs: int
    stride: int
    kernel_size: tuple[int, ...]
    exp_kernel_size: tuple[int, ...] = (1,)
    pw_kernel_size: tuple[int, ...] = (1,)
    exp_ratio: float = 1.0
    se_ratio: float = 0.0
    act: str | None = None
    noskip: bool = False
    skip: bool = False
    pw_act: bool = False
    force_in_chs: int = 0
    group_size: int | None = None


def _bad(block_str: str, token: str, why: str) -> ValueError:
    return ValueError(f"block string {block_str!r}: {token!r} {why}")


def decode_block_str(block_str: str) -> tuple[BlockArgs, int]:
    """A block string's :class:`BlockArgs` and its repeat count, as timm's
    ``_decode_block_str``.

    Raises:
        ValueError: naming the string and the token, for an unknown or unbuilt block type, an
            unknown option, a malformed or repeated value, an option the type has no use for,
            or a missing ``r``, ``k``, ``s``, ``c`` (``e`` for ``ir`` and ``er``).

    Example:
        >>> decode_block_str("ir_r2_k3_s2_e6_c24_se0.25")[1]
        2
    """
    if not isinstance(block_str, str) or not block_str:
        raise ValueError(f"a block string must be a non-empty str, got {block_str!r}")
    kind, *tokens = block_str.split("_")
    if kind in _NOT_BUILT:
        raise _bad(block_str, kind, f"({_NOT_BUILT[kind]}) is not built in se-flax")
    if kind not in BLOCK_KINDS:
        raise _bad(block_str, kind, f"is not a block type; se-flax builds {', '.join(BLOCK_KINDS)}")
    values: dict[str, str] = {}
    skip: bool | None = None
    for token in tokens:
        if token in ("noskip", "skip"):
            if skip is not None:
                raise _bad(block_str, token, "repeats a skip option")
            skip = token == "skip"
            continue
        if token.startswith("n") and not token[1:2].isdigit():
            key, value = "n", token[1:]
            if value not in _ACT_CODES:
                raise _bad(block_str, token, f"is no activation; codes: {', '.join(_ACT_CODES)}")
        else:
            match = re.fullmatch(r"([a-z]+)(\d.*)", token)
            if match is None:
                raise _bad(block_str, token, "is not an option (a name, then its value)")
            key, value = match.groups()
            if key == "n":
                raise _bad(block_str, token, f"is no activation; codes: {', '.join(_ACT_CODES)}")
        if key in ("d", "cc"):
            what = "space-to-depth" if key == "d" else "CondConv experts"
            raise _bad(block_str, token, f"({what}) is not built in se-flax")
        if key not in _OPTIONS[kind]:
            known = ", ".join(sorted(_OPTIONS[kind]))
            raise _bad(block_str, token, f"is not an option of {kind} blocks ({known})")
        if key in values:
            raise _bad(block_str, token, f"repeats option {key!r}")
        pattern = {"k": _KERNELS, "a": _KERNELS, "p": _KERNELS, "e": _FLOAT, "se": _FLOAT}
        if key != "n" and not pattern.get(key, _INT).fullmatch(value):
            raise _bad(block_str, token, f"has a malformed value {value!r}")
        values[key] = value
    required = _REQUIRED | ({"e"} if kind in ("ir", "er") else set())
    missing = sorted(required - set(values))
    if missing:
        raise ValueError(f"block string {block_str!r} lacks option(s) {', '.join(missing)}")
    # cn blocks take "skip", the others "noskip"; dsa blocks never have a residual
    if skip is not None and (kind == "dsa" or (kind == "cn") != skip):
        raise _bad(block_str, "skip" if skip else "noskip", f"has no effect on {kind} blocks")

    def kernels(key: str) -> tuple[int, ...]:
        ks = tuple(int(k) for k in values[key].split(".")) if key in values else (1,)
        if any(k < 1 for k in ks):
            raise _bad(block_str, key + values[key], "has a kernel size below 1")
        return ks

    exp_ratio = float(values.get("e", 1))
    if kind in ("ds", "dsa", "cn") and exp_ratio != 1:
        raise _bad(block_str, "e" + values["e"], f"is not e1: {kind} blocks have no expansion")
    if kind == "cn" and len(kernels("k")) > 1:
        raise _bad(block_str, "k" + values["k"], "mixes kernels, which cn blocks cannot")
    stride = int(values["s"])
    if stride not in (1, 2):
        raise _bad(block_str, "s" + values["s"], "is not a stride of 1 or 2 (timm's builder)")
    args = BlockArgs(
        block_type=kind,
        out_chs=positive_int(f"{block_str!r} c", int(values["c"])),
        stride=stride,
        kernel_size=kernels("k"),
        exp_kernel_size=kernels("a"),
        pw_kernel_size=kernels("p"),
        exp_ratio=exp_ratio,
        se_ratio=float(values.get("se", 0)),
        act=_ACT_CODES[values["n"]] if "n" in values else None,
        noskip=kind == "dsa" or skip is False,
        skip=skip is True,
        pw_act=kind == "dsa",
        force_in_chs=int(values.get("fc", 0)),
        group_size=int(values["gs"]) if "gs" in values else None,
    )
    if "fc" in values and args.force_in_chs < 1:
        raise _bad(block_str, "fc" + values["fc"], "must name at least 1 input channel")
    if args.exp_ratio <= 0:
        raise _bad(block_str, "e" + values["e"], "is not a positive expansion")
    return args, positive_int(f"{block_str!r} r", int(values["r"]))


def _scale_stage_depth(
    stage: Sequence[BlockArgs], repeats: Sequence[int], multiplier: float, trunc: str
) -> list[BlockArgs]:
    """timm's ``_scale_stage_depth``: the stage's total repeats scaled (``ceil``, or ``round``
    keeping at least 1), spread over its strings from the last one back."""
    total = sum(repeats)
    if trunc == "round":
        scaled = max(1, round(total * multiplier))
    else:
        scaled = math.ceil(total * multiplier)
    out = []
    for r in repeats[::-1]:
        rs = max(1, round(r / total * scaled))
        out.append(rs)
        total -= r
        scaled -= rs
    blocks = []
    for args, rep in zip(stage, out[::-1], strict=True):
        blocks.extend([args] * rep)
    return blocks


def decode_arch_def(
    arch_def: Sequence[Sequence[str]],
    depth_multiplier: float | Sequence[float] = 1.0,
    depth_trunc: str = "ceil",
    fix_first_last: bool = False,
    group_size: int | None = None,
) -> tuple[tuple[BlockArgs, ...], ...]:
    """Every block of every stage, decoded and depth-scaled, as timm's ``decode_arch_def``.

    Args:
        arch_def: stages, each a sequence of block strings.
        depth_multiplier: scales each stage's repeats (one per stage, or one for all).
        depth_trunc: ``"ceil"`` (EfficientNet) or ``"round"`` (MixNet, TinyNet).
        fix_first_last: leave the first and last stages unscaled (EfficientNet-Lite).
        group_size: the group size of blocks whose string has no ``gs``.

    Raises:
        ValueError: for a malformed string (:func:`decode_block_str`) or argument, naming it.

    Example:
        >>> [len(s) for s in decode_arch_def([["ds_r1_k3_s1_c16"], ["ir_r2_k3_s2_e6_c24"]], 1.5)]
        [2, 3]
    """
    if isinstance(arch_def, str) or not arch_def:
        raise ValueError(f"arch_def must be a non-empty list of stages, got {arch_def!r}")
    if isinstance(depth_multiplier, (int, float)) and not isinstance(depth_multiplier, bool):
        multipliers = (depth_multiplier,) * len(arch_def)
    else:
        multipliers = tuple(depth_multiplier)
        if len(multipliers) != len(arch_def):
            raise ValueError(
                f"depth_multiplier {depth_multiplier!r} has {len(multipliers)} entries for "
                f"{len(arch_def)} stages"
            )
    for m in multipliers:
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m < 100:
            raise ValueError(f"depth_multiplier {m!r} must be a number in (0, 100)")
    if depth_trunc not in ("ceil", "round"):
        raise ValueError(f"depth_trunc {depth_trunc!r} is not 'ceil' or 'round'")
    if group_size is not None and (isinstance(group_size, bool) or group_size < 0):
        raise ValueError(f"group_size {group_size!r} must be an integer >= 0")
    stages = []
    for i, (strings, multiplier) in enumerate(zip(arch_def, multipliers, strict=True)):
        if isinstance(strings, str) or not strings:
            raise ValueError(
                f"stage {i} of arch_def must be a non-empty list of block strings, got {strings!r}"
            )
        decoded = [decode_block_str(s) for s in strings]
        args = [
            a if group_size is None or a.group_size is not None else _with_groups(a, group_size)
            for a, _ in decoded
        ]
        if fix_first_last and i in (0, len(arch_def) - 1):
            multiplier = 1.0
        stages.append(
            tuple(_scale_stage_depth(args, [r for _, r in decoded], multiplier, depth_trunc))
        )
    return tuple(stages)


def _with_groups(args: BlockArgs, group_size: int) -> BlockArgs:
    return replace(args, group_size=group_size)


def round_channels(
    channels: float, multiplier: float = 1.0, divisor: int = 8, round_limit: float = 0.9
) -> int:
    """timm's ``round_channels``: ``channels * multiplier`` to a multiple of ``divisor``
    (``make_divisible``); a zero multiplier leaves ``channels``."""
    if not multiplier:
        return channels
    return make_divisible(channels * multiplier, divisor, None, round_limit)


def split_channels(channels: int, parts: int) -> tuple[int, ...]:
    """timm's ``_split_channels`` of a mixed conv: equal parts, the remainder on the first."""
    split = [channels // parts] * parts
    split[0] += channels - sum(split)
    return tuple(split)


def _groups(group_size: int | None, channels: int, default: int, where: str) -> int:
    size = default if group_size is None else group_size
    if not size:
        return 1
    if channels % size:
        raise ValueError(f"{where}: group_size {size} does not divide {channels} channels")
    return channels // size


@dataclass(frozen=True)
class MBBlockSpec:
    """One block of an EfficientNet-family network, fully planned: PyTorch name
    ``blocks.{stage}.{index}``, timm's module of its ``block_type``.

    Attributes:
        block_type: ``ds``, ``dsa`` (DepthwiseSeparableConv), ``ir`` (InvertedResidual),
            ``er`` (EdgeResidual), ``cn`` (ConvBnAct).
        in_channels, mid_channels, out_channels: widths in, of the expanded middle (the input's
            for ``ds``), and out.
        kernel_size: of the spatial conv (several: a mixed conv, ``conv_dw.{i}``).
        exp_kernel_size, pw_kernel_size: of the expansion and pointwise convs (several: mixed).
        stride, dilation: of the spatial conv.
        groups: of the spatial conv (``mid_channels``: depthwise); a mixed conv is depthwise
            or ungrouped.
        se_channels: SE's reduced width (``se.conv_reduce``), 0 for no SE.
        act: the block's activation (an :data:`ACTIVATIONS` name).
        se_act: SE's activation (the block's unless the model forces one).
        se_gate: SE's gate (:data:`SE_GATES`).
        has_skip: a residual sum.
        pw_act: an activation after the pointwise conv (``dsa``).
        drop_path: stochastic depth rate in training.
    """

    block_type: str
    stage: int
    index: int
    in_channels: int
    mid_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    exp_kernel_size: tuple[int, ...]
    pw_kernel_size: tuple[int, ...]
    stride: int
    dilation: int
    groups: int
    se_channels: int
    act: str
    has_skip: bool
    pw_act: bool = False
    drop_path: float = 0.0
    se_act: str = "relu"
    se_gate: str = "sigmoid"

    @property
    def key(self) -> str:
        """The PyTorch module path, ``blocks.{stage}.{index}``."""
        return f"blocks.{self.stage}.{self.index}"


def conv_parts(
    inp: int, out: int, kernels: Sequence[int], groups: int = 1
) -> list[tuple[int, int, int, int]]:
    """A conv's parts, ``(in, out, kernel, groups)`` each: one for a single kernel; for
    several, the channel splits of timm's ``MixedConv2d`` (:func:`split_channels`), each part
    depthwise if the conv is (``groups == inp``), else ungrouped."""
    if len(kernels) == 1:
        return [(inp, out, kernels[0], groups)]
    depthwise = groups == inp > 1
    ins, outs = split_channels(inp, len(kernels)), split_channels(out, len(kernels))
    return [
        (ci, co, k, ci if depthwise else 1) for ci, co, k in zip(ins, outs, kernels, strict=True)
    ]


def _conv_parts_keys(
    plan: Plan, key: str, out: int, inp: int, kernels: Sequence[int], groups: int = 1
) -> None:
    """A bias-free conv at ``key``, or a mixed conv's parts at ``key.{i}``."""
    parts = conv_parts(inp, out, kernels, groups)
    for i, (ci, co, k, g) in enumerate(parts):
        name = key if len(parts) == 1 else f"{key}.{i}"
        plan[f"{name}.weight"] = TensorSpec((co, ci // g, k, k))


def _bn_keys(plan: Plan, key: str, channels: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        plan[f"{key}.{name}"] = TensorSpec((channels,))
    plan[f"{key}.num_batches_tracked"] = TensorSpec((), "int64")


def _se_keys(plan: Plan, key: str, channels: int, rd: int) -> None:
    plan[f"{key}.conv_reduce.weight"] = TensorSpec((rd, channels, 1, 1))
    plan[f"{key}.conv_reduce.bias"] = TensorSpec((rd,))
    plan[f"{key}.conv_expand.weight"] = TensorSpec((channels, rd, 1, 1))
    plan[f"{key}.conv_expand.bias"] = TensorSpec((channels,))


def block_state_dict(plan: Plan, spec: MBBlockSpec) -> None:
    """A block's tensors at ``spec.key`` in timm's order."""
    s = spec

    def conv(name: str, out: int, inp: int, kernels: Sequence[int], groups: int = 1) -> None:
        _conv_parts_keys(plan, f"{s.key}.{name}", out, inp, kernels, groups)

    def bn(name: str, channels: int) -> None:
        _bn_keys(plan, f"{s.key}.{name}", channels)

    def se() -> None:
        if s.se_channels:
            _se_keys(plan, f"{s.key}.se", s.mid_channels, s.se_channels)

    mid, out = s.mid_channels, s.out_channels
    if s.block_type in ("ds", "dsa"):
        conv("conv_dw", mid, mid, s.kernel_size, s.groups)
        bn("bn1", mid)
        se()
        conv("conv_pw", out, mid, s.pw_kernel_size)
        bn("bn2", out)
    elif s.block_type == "ir":
        conv("conv_pw", mid, s.in_channels, s.exp_kernel_size)
        bn("bn1", mid)
        conv("conv_dw", mid, mid, s.kernel_size, s.groups)
        bn("bn2", mid)
        se()
        conv("conv_pwl", out, mid, s.pw_kernel_size)
        bn("bn3", out)
    elif s.block_type == "er":
        conv("conv_exp", mid, s.in_channels, s.kernel_size, s.groups)
        bn("bn1", mid)
        se()
        conv("conv_pwl", out, mid, s.pw_kernel_size)
        bn("bn2", out)
    else:  # cn
        conv("conv", out, s.in_channels, s.kernel_size, s.groups)
        bn("bn1", out)


def _arch(stages: Sequence[Sequence[str]]) -> tuple[tuple[str, ...], ...]:
    """``arch_def`` as a tuple of stages; a flat list of strings (or one string) is refused,
    as its stages would be guessed."""
    if isinstance(stages, str) or any(isinstance(stage, str) for stage in stages):
        raise ValueError(
            f"arch_def must be a list of stages, each a list of block strings, got {stages!r}"
        )
    return tuple(tuple(stage) for stage in stages)


@dataclass(frozen=True)
class EfficientNetConfig:
    """An EfficientNet-family network as data: block strings and timm's builder arguments.

    Attributes:
        arch_def: stages of block strings (module docstring).
        channel_multiplier, channel_divisor, round_limit: width scaling of every block's output
            and the stem (timm's ``round_chs_fn``).
        depth_multiplier, depth_trunc, fix_first_last, group_size: depth scaling and the
            default group size (:func:`decode_arch_def`).
        stem_size, stem_kernel_size, fix_stem: the stem conv (stride 2): its channels
            (width-scaled unless ``fix_stem``) and kernel.
        head_features: channels of the head conv (``conv_head``, ``bn2``; timm's
            ``num_features`` argument); 0: no head conv (MobileNet V1).
        act_layer: the model's activation (:data:`ACTIVATIONS`, or timm's ``"swish"``).
        se_from_exp: SE's width from the expanded channels (MobileNetV3) rather than from the
            block input (EfficientNet).
        se_gate: SE's gate (:data:`SE_GATES`): ``"sigmoid"``, or ``"hard_sigmoid"``.
        se_act: an activation SE uses in every block (MobileNetV3's ``"relu"``; timm's
            ``force_act_layer``), or ``None``: each block's own.
        se_rounding: how SE's reduced width is rounded (:data:`SE_ROUNDINGS`).
        efficient_head: MobileNetV3's head: the global pool first, then ``conv_head`` (1x1,
            bias if ``head_bias``, no BatchNorm) and the activation; else EfficientNet's
            ``conv_head`` and ``bn2`` before the pool.
        head_bias: ``conv_head``'s bias (the efficient head only).
        pad_type: ``""`` (PyTorch's symmetric padding) or ``"same"`` (TensorFlow's, the tf_
            ports); :data:`PAD_TYPES`.
        bn_eps: the BatchNorms' epsilon (1e-3 for TensorFlow's weights).
        output_stride: 32, or 16 / 8: later strides become dilations (segmentation).
    """

    arch_def: tuple[tuple[str, ...], ...]
    channel_multiplier: float = 1.0
    depth_multiplier: float | tuple[float, ...] = 1.0
    depth_trunc: str = "ceil"
    fix_first_last: bool = False
    group_size: int | None = None
    channel_divisor: int = 8
    round_limit: float = 0.9
    stem_size: int = 32
    stem_kernel_size: int = 3
    fix_stem: bool = False
    head_features: int = 1280
    act_layer: str = "relu"
    se_from_exp: bool = False
    se_gate: str = "sigmoid"
    se_act: str | None = None
    se_rounding: str = "round"
    efficient_head: bool = False
    head_bias: bool = False
    pad_type: str = ""
    bn_eps: float = 1e-5
    output_stride: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch_def", _arch(self.arch_def))
        dm = self.depth_multiplier
        if isinstance(dm, (list, tuple)):
            object.__setattr__(self, "depth_multiplier", tuple(dm))
        elif isinstance(dm, bool) or not isinstance(dm, (int, float)):
            raise ValueError(f"depth_multiplier must be a number or one per stage, got {dm!r}")
        for name in ("fix_first_last", "fix_stem", "se_from_exp", "efficient_head", "head_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        gs = self.group_size
        if gs is not None and (isinstance(gs, bool) or not isinstance(gs, int) or gs < 0):
            raise ValueError(f"group_size must be None or an integer >= 0, got {gs!r}")
        limit = self.round_limit
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 <= limit <= 1:
            raise ValueError(f"round_limit must be a number in [0, 1], got {limit!r}")
        object.__setattr__(self, "act_layer", canonical_act(self.act_layer))
        if self.se_act is not None:
            object.__setattr__(self, "se_act", canonical_act(self.se_act, "se_act"))
        if self.se_gate not in SE_GATES:
            raise ValueError(f"se_gate {self.se_gate!r} is not one of {', '.join(SE_GATES)}")
        if self.se_rounding not in SE_ROUNDINGS:
            raise ValueError(
                f"se_rounding {self.se_rounding!r} is not one of {', '.join(SE_ROUNDINGS)}"
            )
        if self.head_bias and not self.efficient_head:
            raise ValueError(
                "head_bias=True needs efficient_head=True (EfficientNet's head "
                "conv is followed by a BatchNorm and has no bias)"
            )
        if self.pad_type not in PAD_TYPES:
            raise ValueError(f"pad_type {self.pad_type!r} is not '' or 'same'")
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride {self.output_stride!r} is not 8, 16 or 32")
        m = self.channel_multiplier
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m <= 100:
            raise ValueError(f"channel_multiplier {m!r} must be a number in (0, 100]")
        if isinstance(self.bn_eps, bool) or not 0 < float(self.bn_eps) < 1:
            raise ValueError(f"bn_eps {self.bn_eps!r} must be a number in (0, 1)")
        positive_int("channel_divisor", self.channel_divisor)
        positive_int("stem_size", self.stem_size)
        positive_int("stem_kernel_size", self.stem_kernel_size)
        head = self.head_features
        if isinstance(head, bool) or not isinstance(head, int) or head < 0:
            raise ValueError(f"head_features must be an integer >= 0, got {head!r}")
        if self.efficient_head and not head:
            raise ValueError("the efficient head (efficient_head=True) needs head_features > 0")
        stages = decode_arch_def(
            self.arch_def,
            self.depth_multiplier,
            self.depth_trunc,
            self.fix_first_last,
            self.group_size,
        )
        object.__setattr__(self, "_stages", stages)
        self.blocks()  # plans every width and group, so a bad one fails here

    def round_chs(self, channels: float) -> int:
        return round_channels(
            channels, self.channel_multiplier, self.channel_divisor, self.round_limit
        )

    @property
    def stem_channels(self) -> int:
        return self.stem_size if self.fix_stem else self.round_chs(self.stem_size)

    def blocks(self, drop_path_rate: float = 0.0) -> list[MBBlockSpec]:
        """Every block in order, as timm's ``EfficientNetBuilder`` builds it; block ``i`` of
        ``n`` drops its branch at ``drop_path_rate * i / n`` in training (timm's rule).

        Raises:
            ValueError: for a rate outside ``[0, 1)``, or a group size that does not divide.
        """
        drop_path_rate = drop_rate("drop_path_rate", drop_path_rate)
        return self._plan(drop_path_rate)[0]

    def _plan(self, drop_path_rate: float = 0.0) -> tuple[list[MBBlockSpec], list[FeatureInfo]]:
        stages = self._stages
        total = sum(len(s) for s in stages)
        in_chs = self.stem_channels
        features = []
        if stages[0][0].stride > 1:
            features.append(FeatureInfo(in_chs, 2, "bn1"))
        specs: list[MBBlockSpec] = []
        current_stride, dilation, n = 2, 1, 0
        for si, stage in enumerate(stages):
            for bi, args in enumerate(stage):
                stride = args.stride if bi == 0 else 1
                next_dilation = dilation
                if stride > 1:
                    if current_stride * stride > self.output_stride:
                        next_dilation, stride = dilation * stride, 1
                    else:
                        current_stride *= stride
                specs.append(
                    self._block(args, si, bi, in_chs, stride, dilation, drop_path_rate * n / total)
                )
                dilation = next_dilation
                in_chs = specs[-1].out_channels
                n += 1
            last = si + 1 == len(stages)
            if last or stages[si + 1][0].stride > 1:
                features.append(FeatureInfo(in_chs, current_stride, f"blocks.{si}"))
        return specs, features

    def _block(
        self,
        a: BlockArgs,
        stage: int,
        index: int,
        in_chs: int,
        stride: int,
        dilation: int,
        dp: float,
    ) -> MBBlockSpec:
        where = f"arch_def stage {stage} block {index} ({a.block_type})"
        out = self.round_chs(a.out_chs)
        act = a.act or self.act_layer
        kind = a.block_type
        if kind == "ir":
            mid = make_divisible(in_chs * a.exp_ratio)
            groups = _groups(a.group_size, mid, 1, where)
        elif kind == "er":
            base = self.round_chs(a.force_in_chs) if a.force_in_chs else in_chs
            mid = make_divisible(base * a.exp_ratio)
            groups = _groups(a.group_size, mid, 0, where)
        elif kind in ("ds", "dsa"):
            mid = in_chs
            groups = _groups(a.group_size, mid, 1, where)
        else:
            mid = out
            groups = _groups(a.group_size, in_chs, 0, where)
        # the grouped conv's channels in and out: the depthwise conv's (mid to mid), er's
        # expansion (in to mid), cn's conv (in to out)
        conv_in = in_chs if kind in ("er", "cn") else mid
        conv_out = out if kind == "cn" else mid
        for side, channels in (("in", conv_in), ("out", conv_out)):
            if channels % groups:
                raise ValueError(
                    f"{where}: {groups} groups (group_size {a.group_size}) do not divide the "
                    f"conv's {channels} {side}put channels"
                )
        if len(a.kernel_size) > 1 and groups not in (1, conv_in):
            raise ValueError(
                f"{where}: a mixed conv is depthwise or ungrouped, not {groups} groups of "
                f"{conv_in} input channels"
            )
        se = 0
        if a.se_ratio and kind != "cn":
            ratio = a.se_ratio
            if not self.se_from_exp:
                ratio /= a.exp_ratio if kind in ("ir", "er") else 1.0
            se = self._se_width(mid * ratio)
            if se < 1:
                raise ValueError(f"{where}: SE ratio {a.se_ratio} leaves no channels of {mid}")
        if kind == "cn":
            has_skip = a.skip and stride == 1 and in_chs == out
        else:
            has_skip = in_chs == out and stride == 1 and not a.noskip
        return MBBlockSpec(
            block_type=kind,
            stage=stage,
            index=index,
            in_channels=in_chs,
            mid_channels=mid,
            out_channels=out,
            kernel_size=a.kernel_size,
            exp_kernel_size=a.exp_kernel_size,
            pw_kernel_size=a.pw_kernel_size,
            stride=stride,
            dilation=dilation,
            groups=groups,
            se_channels=se,
            act=act,
            has_skip=has_skip,
            pw_act=a.pw_act,
            drop_path=dp if has_skip else 0.0,
            se_act=self.se_act or act,
            se_gate=self.se_gate,
        )

    def _se_width(self, width: float) -> int:
        """SE's reduced width from ``se_ratio x`` its input (timm's ``rd_round_fn``)."""
        if self.se_rounding == "divisible":
            return round_channels(width)
        if self.se_rounding == "model":
            return self.round_chs(width)
        return round(width)

    @property
    def head_in_channels(self) -> int:
        return self.blocks()[-1].out_channels

    @property
    def num_features(self) -> int:
        """timm's ``num_features``: the head's channels (EfficientNet), or with the efficient
        head the last block's (the input of the pool)."""
        if self.efficient_head:
            return self.head_in_channels
        return self.head_features or self.head_in_channels

    @property
    def head_hidden_size(self) -> int:
        """timm's ``head_hidden_size``: the channels the classifier takes (the pre-logits)."""
        return self.head_features if self.efficient_head else self.num_features

    def attention(self) -> list[tuple[str, str]]:
        """(short name, description) of the attention the network places: ``mb_se`` where
        any block has SE."""
        return [("mb_se", MB_SE)] if any(b.se_channels for b in self.blocks()) else []

    def check_options(
        self, num_classes: Any, in_chans: Any, out_indices: Sequence[int] | None
    ) -> tuple[int, ...]:
        """Clear errors for the three front-ends' model options; the feature levels of
        ``out_indices`` (default: every level of :meth:`feature_info`)."""
        return feature_levels(num_classes, in_chans, out_indices, len(self.feature_info()))

    def feature_taps(self) -> tuple[int | None, dict[int, int]]:
        """Where the front-ends take each :meth:`feature_info` level: the stem's level (its
        ``bn1``) or ``None``, and the index in :meth:`blocks` of each stage's last block that
        is a level -> its level."""
        levels = {f.module: i for i, f in enumerate(self.feature_info())}
        last = {b.stage: i for i, b in enumerate(self.blocks())}  # stage -> its last block
        taps = {
            i: levels[f"blocks.{stage}"] for stage, i in last.items() if f"blocks.{stage}" in levels
        }
        return levels.get("bn1"), taps

    def feature_info(self) -> tuple[FeatureInfo, ...]:
        """timm's ``feature_info``: the stem's ``bn1`` where the first block strides, then the
        last block of each stage before a stride (``blocks.{i}``)."""
        return tuple(self._plan()[1])

    def state_dict(self, num_classes: int, in_chans: int) -> dict[str, TensorSpec]:
        """The PyTorch state_dict's keys (timm's order) and shapes."""
        plan: Plan = {}
        stem = self.stem_channels
        _conv_parts_keys(plan, "conv_stem", stem, in_chans, (self.stem_kernel_size,))
        _bn_keys(plan, "bn1", stem)
        for spec in self.blocks():
            block_state_dict(plan, spec)
        if self.efficient_head:
            _conv_parts_keys(plan, "conv_head", self.head_features, self.head_in_channels, (1,))
            if self.head_bias:
                plan["conv_head.bias"] = TensorSpec((self.head_features,))
        elif self.head_features:
            _conv_parts_keys(plan, "conv_head", self.head_features, self.head_in_channels, (1,))
            _bn_keys(plan, "bn2", self.head_features)
        if num_classes:
            plan["classifier.weight"] = TensorSpec((num_classes, self.head_hidden_size))
            plan["classifier.bias"] = TensorSpec((num_classes,))
        return plan


# ------------------------------------------------------------------ timm's architectures

# timm 1.0's efficientnet.py arch definitions, string for string.
_EFFICIENTNET = (
    ("ds_r1_k3_s1_e1_c16_se0.25",),
    ("ir_r2_k3_s2_e6_c24_se0.25",),
    ("ir_r2_k5_s2_e6_c40_se0.25",),
    ("ir_r3_k3_s2_e6_c80_se0.25",),
    ("ir_r3_k5_s1_e6_c112_se0.25",),
    ("ir_r4_k5_s2_e6_c192_se0.25",),
    ("ir_r1_k3_s1_e6_c320_se0.25",),
)
_LITE = tuple((s[0].replace("_se0.25", ""),) for s in _EFFICIENTNET)
_EDGE = (
    ("er_r1_k3_s1_e4_c24_fc24_noskip",),
    ("er_r2_k3_s2_e8_c32",),
    ("er_r4_k3_s2_e8_c48",),
    ("ir_r5_k5_s2_e8_c96",),
    ("ir_r4_k5_s1_e8_c144",),
    ("ir_r2_k5_s2_e8_c192",),
)
_V2_BASE = (
    ("cn_r1_k3_s1_e1_c16_skip",),
    ("er_r2_k3_s2_e4_c32",),
    ("er_r2_k3_s2_e4_c48",),
    ("ir_r3_k3_s2_e4_c96_se0.25",),
    ("ir_r5_k3_s1_e6_c112_se0.25",),
    ("ir_r8_k3_s2_e6_c192_se0.25",),
)
_V2_S = (
    ("cn_r2_k3_s1_e1_c24_skip",),
    ("er_r4_k3_s2_e4_c48",),
    ("er_r4_k3_s2_e4_c64",),
    ("ir_r6_k3_s2_e4_c128_se0.25",),
    ("ir_r9_k3_s1_e6_c160_se0.25",),
    ("ir_r15_k3_s2_e6_c256_se0.25",),
)
_V2_RW = (("er_r2_k3_s1_e1_c24",), *_V2_S[1:-1], ("ir_r15_k3_s2_e6_c272_se0.25",))
_V2_M = (
    ("cn_r3_k3_s1_e1_c24_skip",),
    ("er_r5_k3_s2_e4_c48",),
    ("er_r5_k3_s2_e4_c80",),
    ("ir_r7_k3_s2_e4_c160_se0.25",),
    ("ir_r14_k3_s1_e6_c176_se0.25",),
    ("ir_r18_k3_s2_e6_c304_se0.25",),
    ("ir_r5_k3_s1_e6_c512_se0.25",),
)
_V2_L = (
    ("cn_r4_k3_s1_e1_c32_skip",),
    ("er_r7_k3_s2_e4_c64",),
    ("er_r7_k3_s2_e4_c96",),
    ("ir_r10_k3_s2_e4_c192_se0.25",),
    ("ir_r19_k3_s1_e6_c224_se0.25",),
    ("ir_r25_k3_s2_e6_c384_se0.25",),
    ("ir_r7_k3_s1_e6_c640_se0.25",),
)
_V2_XL = (
    ("cn_r4_k3_s1_e1_c32_skip",),
    ("er_r8_k3_s2_e4_c64",),
    ("er_r8_k3_s2_e4_c96",),
    ("ir_r16_k3_s2_e4_c192_se0.25",),
    ("ir_r24_k3_s1_e6_c256_se0.25",),
    ("ir_r32_k3_s2_e6_c512_se0.25",),
    ("ir_r8_k3_s1_e6_c640_se0.25",),
)
_MIXNET_S = (
    ("ds_r1_k3_s1_e1_c16",),
    ("ir_r1_k3_a1.1_p1.1_s2_e6_c24", "ir_r1_k3_a1.1_p1.1_s1_e3_c24"),
    ("ir_r1_k3.5.7_s2_e6_c40_se0.5_nsw", "ir_r3_k3.5_a1.1_p1.1_s1_e6_c40_se0.5_nsw"),
    ("ir_r1_k3.5.7_p1.1_s2_e6_c80_se0.25_nsw", "ir_r2_k3.5_p1.1_s1_e6_c80_se0.25_nsw"),
    (
        "ir_r1_k3.5.7_a1.1_p1.1_s1_e6_c120_se0.5_nsw",
        "ir_r2_k3.5.7.9_a1.1_p1.1_s1_e3_c120_se0.5_nsw",
    ),
    ("ir_r1_k3.5.7.9.11_s2_e6_c200_se0.5_nsw", "ir_r2_k3.5.7.9_p1.1_s1_e6_c200_se0.5_nsw"),
)
_MIXNET_M = (
    ("ds_r1_k3_s1_e1_c24",),
    ("ir_r1_k3.5.7_a1.1_p1.1_s2_e6_c32", "ir_r1_k3_a1.1_p1.1_s1_e3_c32"),
    ("ir_r1_k3.5.7.9_s2_e6_c40_se0.5_nsw", "ir_r3_k3.5_a1.1_p1.1_s1_e6_c40_se0.5_nsw"),
    ("ir_r1_k3.5.7_s2_e6_c80_se0.25_nsw", "ir_r3_k3.5.7.9_a1.1_p1.1_s1_e6_c80_se0.25_nsw"),
    ("ir_r1_k3_s1_e6_c120_se0.5_nsw", "ir_r3_k3.5.7.9_a1.1_p1.1_s1_e3_c120_se0.5_nsw"),
    ("ir_r1_k3.5.7.9_s2_e6_c200_se0.5_nsw", "ir_r3_k3.5.7.9_p1.1_s1_e6_c200_se0.5_nsw"),
)
_MNASNET_B1 = (
    ("ds_r1_k3_s1_c16_noskip",),
    ("ir_r3_k3_s2_e3_c24",),
    ("ir_r3_k5_s2_e3_c40",),
    ("ir_r3_k5_s2_e6_c80",),
    ("ir_r2_k3_s1_e6_c96",),
    ("ir_r4_k5_s2_e6_c192",),
    ("ir_r1_k3_s1_e6_c320_noskip",),
)
_MNASNET_A1 = (
    ("ds_r1_k3_s1_e1_c16_noskip",),
    ("ir_r2_k3_s2_e6_c24",),
    ("ir_r3_k5_s2_e3_c40_se0.25",),
    ("ir_r4_k3_s2_e6_c80",),
    ("ir_r2_k3_s1_e6_c112_se0.25",),
    ("ir_r3_k5_s2_e6_c160_se0.25",),
    ("ir_r1_k3_s1_e6_c320",),
)
_MNASNET_SMALL = (
    ("ds_r1_k3_s1_c8",),
    ("ir_r1_k3_s2_e3_c16",),
    ("ir_r2_k3_s2_e6_c16",),
    ("ir_r4_k5_s2_e6_c32_se0.25",),
    ("ir_r3_k3_s1_e6_c32_se0.25",),
    ("ir_r3_k5_s2_e6_c88_se0.25",),
    ("ir_r1_k3_s1_e6_c144",),
)
_SPNASNET = (
    ("ds_r1_k3_s1_c16_noskip",),
    ("ir_r3_k3_s2_e3_c24",),
    ("ir_r1_k5_s2_e6_c40", "ir_r3_k3_s1_e3_c40"),
    ("ir_r1_k5_s2_e6_c80", "ir_r3_k3_s1_e3_c80"),
    ("ir_r1_k5_s1_e6_c96", "ir_r3_k5_s1_e3_c96"),
    ("ir_r4_k5_s2_e6_c192",),
    ("ir_r1_k3_s1_e6_c320_noskip",),
)
_FBNETC = (
    ("ir_r1_k3_s1_e1_c16",),
    ("ir_r1_k3_s2_e6_c24", "ir_r2_k3_s1_e1_c24"),
    ("ir_r1_k5_s2_e6_c32", "ir_r1_k5_s1_e3_c32", "ir_r1_k5_s1_e6_c32", "ir_r1_k3_s1_e6_c32"),
    ("ir_r1_k5_s2_e6_c64", "ir_r1_k5_s1_e3_c64", "ir_r2_k5_s1_e6_c64"),
    ("ir_r3_k5_s1_e6_c112", "ir_r1_k5_s1_e3_c112"),
    ("ir_r4_k5_s2_e6_c184",),
    ("ir_r1_k3_s1_e6_c352",),
)
_MOBILENET_V1 = (
    ("dsa_r1_k3_s1_c64",),
    ("dsa_r2_k3_s2_c128",),
    ("dsa_r2_k3_s2_c256",),
    ("dsa_r6_k3_s2_c512",),
    ("dsa_r2_k3_s2_c1024",),
)
_MOBILENET_V2 = (
    ("ds_r1_k3_s1_c16",),
    ("ir_r2_k3_s2_e6_c24",),
    ("ir_r3_k3_s2_e6_c32",),
    ("ir_r4_k3_s2_e6_c64",),
    ("ir_r3_k3_s1_e6_c96",),
    ("ir_r3_k3_s2_e6_c160",),
    ("ir_r1_k3_s1_e6_c320",),
)
_EDGETPU = (
    ("cn_r1_k1_s1_c16",),
    ("er_r1_k3_s2_e8_c32", "er_r3_k3_s1_e4_c32"),
    ("er_r1_k3_s2_e8_c48", "er_r3_k3_s1_e4_c48"),
    ("ir_r1_k3_s2_e8_c96", "ir_r3_k3_s1_e4_c96"),
    ("ir_r1_k3_s1_e8_c96_noskip", "ir_r3_k3_s1_e4_c96"),
    ("ir_r1_k5_s2_e8_c160", "ir_r3_k5_s1_e4_c160"),
    ("ir_r1_k3_s1_e8_c192",),
)


def _edgetpu_v2(c: tuple[int, ...], gs: int) -> tuple[tuple[str, ...], ...]:
    """timm's MobileNet-EdgeTPU-V2 definition at stage widths ``c`` and group size ``gs``."""
    return (
        (f"cn_r1_k1_s1_c{c[0]}",),
        (f"er_r1_k3_s2_e8_c{c[1]}", f"er_r1_k3_s1_e4_gs{gs}_c{c[1]}"),
        (
            f"er_r1_k3_s2_e8_c{c[2]}",
            f"er_r1_k3_s1_e4_gs{gs}_c{c[2]}",
            f"er_r1_k3_s1_e4_c{c[2]}",
            f"er_r1_k3_s1_e4_gs{gs}_c{c[2]}",
        ),
        (f"er_r1_k3_s2_e8_c{c[3]}", f"ir_r3_k3_s1_e4_c{c[3]}"),
        (f"ir_r1_k3_s1_e8_c{c[4]}", f"ir_r3_k3_s1_e4_c{c[4]}"),
        (f"ir_r1_k3_s2_e8_c{c[5]}", f"ir_r3_k3_s1_e4_c{c[5]}"),
        (f"ir_r1_k3_s1_e8_c{c[6]}",),
    )


_TEST = (
    ("cn_r1_k3_s1_e1_c16_skip",),
    ("er_r1_k3_s2_e4_c24",),
    ("er_r1_k3_s2_e4_c32",),
    ("ir_r1_k3_s2_e4_c48_se0.25",),
    ("ir_r1_k3_s2_e4_c64_se0.25",),
)

_TF = {"pad_type": "same", "bn_eps": 1e-3}  # timm's tf_ ports: TensorFlow's padding and eps


def _rows() -> dict[str, EfficientNetConfig]:
    """Every architecture, as timm's ``_gen_*`` functions configure it."""
    rows: dict[str, dict[str, Any]] = {}
    b = {  # name: (channel_multiplier, depth_multiplier)
        "b0": (1.0, 1.0), "b1": (1.0, 1.1), "b2": (1.1, 1.2), "b3": (1.2, 1.4), "b4": (1.4, 1.8),
        "b5": (1.6, 2.2), "b6": (1.8, 2.6), "b7": (2.0, 3.1), "b8": (2.2, 3.6), "l2": (4.3, 5.3),
    }  # fmt: skip

    def scaled(name: str, arch: Any, cm: float, dm: float, **args: Any) -> None:
        """A scaled row and its TensorFlow port ``tf_{name}``."""
        rows[name] = dict(arch_def=arch, channel_multiplier=cm, depth_multiplier=dm, **args)
        rows[f"tf_{name}"] = {**rows[name], **_TF}

    for v, (cm, dm) in b.items():
        scaled(
            f"efficientnet_{v}",
            _EFFICIENTNET,
            cm,
            dm,
            head_features=round_channels(1280, cm),
            act_layer="silu",
        )
    lite = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2), "lite3": (1.2, 1.4),
            "lite4": (1.4, 1.8)}  # fmt: skip
    for v, (cm, dm) in lite.items():
        lite_args = dict(fix_first_last=True, fix_stem=True, act_layer="relu6")
        scaled(f"efficientnet_{v}", _LITE, cm, dm, **lite_args)
    for v, (cm, dm) in {"es": (1.0, 1.0), "em": (1.0, 1.1), "el": (1.2, 1.4)}.items():
        head = round_channels(1280, cm)
        scaled(f"efficientnet_{v}", _EDGE, cm, dm, head_features=head, act_layer="relu")
    for v, (cm, dm) in {
        "b0": (1.0, 1.0),
        "b1": (1.0, 1.1),
        "b2": (1.1, 1.2),
        "b3": (1.2, 1.4),
    }.items():
        rows[f"tf_efficientnetv2_{v}"] = dict(
            arch_def=_V2_BASE,
            channel_multiplier=cm,
            depth_multiplier=dm,
            round_limit=0.0,
            head_features=round_channels(1280, cm, round_limit=0.0),
            act_layer="silu",
            **_TF,
        )
    v2 = {"s": (_V2_S, 24), "m": (_V2_M, 24), "l": (_V2_L, 32), "xl": (_V2_XL, 32)}
    for v, (arch, stem) in v2.items():
        args = dict(arch_def=arch, stem_size=stem, act_layer="silu")
        rows[f"efficientnetv2_{v}"] = args
        rows[f"tf_efficientnetv2_{v}"] = {**args, **_TF}
    v2_rw = dict(stem_size=24, act_layer="silu")
    rows["efficientnetv2_rw_t"] = dict(
        arch_def=_V2_S, channel_multiplier=0.8, depth_multiplier=0.9, head_features=1024, **v2_rw
    )
    rows["efficientnetv2_rw_s"] = dict(arch_def=_V2_RW, head_features=1792, **v2_rw)
    rows["efficientnetv2_rw_m"] = dict(
        arch_def=_V2_RW,
        channel_multiplier=1.2,
        depth_multiplier=(1.2, 1.2, 1.2, 1.2, 1.6, 1.6),
        head_features=2152,
        **v2_rw,
    )
    mixnet = dict(head_features=1536, act_layer="relu")
    rows["mixnet_s"] = dict(arch_def=_MIXNET_S, stem_size=16, **mixnet)
    for v, (cm, dm) in {
        "m": (1.0, 1.0),
        "l": (1.3, 1.0),
        "xl": (1.6, 1.2),
        "xxl": (2.4, 1.3),
    }.items():
        rows[f"mixnet_{v}"] = dict(
            arch_def=_MIXNET_M,
            stem_size=24,
            channel_multiplier=cm,
            depth_multiplier=dm,
            depth_trunc="round",
            **mixnet,
        )
    for v in ("s", "m", "l"):
        rows[f"tf_mixnet_{v}"] = {**rows[f"mixnet_{v}"], **_TF}
    tiny = {"a": (1.0, 1.2), "b": (0.75, 1.1), "c": (0.54, 0.85), "d": (0.54, 0.695),
            "e": (0.51, 0.6)}  # fmt: skip
    for v, (w, dm) in tiny.items():
        rows[f"tinynet_{v}"] = dict(
            arch_def=_EFFICIENTNET,
            channel_multiplier=w,
            depth_multiplier=dm,
            depth_trunc="round",
            fix_stem=True,
            head_features=max(1280, round_channels(1280, w)),
            act_layer="silu",
        )
    for v, cm in {"050": 0.5, "075": 0.75, "100": 1.0, "140": 1.4}.items():
        rows[f"mnasnet_{v}"] = dict(arch_def=_MNASNET_B1, channel_multiplier=cm)
        rows[f"semnasnet_{v}"] = dict(arch_def=_MNASNET_A1, channel_multiplier=cm)
    rows["mnasnet_small"] = dict(arch_def=_MNASNET_SMALL, stem_size=8)
    rows["spnasnet_100"] = dict(arch_def=_SPNASNET)
    rows["fbnetc_100"] = dict(arch_def=_FBNETC, stem_size=16, head_features=1984)
    v1 = dict(arch_def=_MOBILENET_V1, act_layer="relu6")
    rows["mobilenetv1_100"] = dict(head_features=0, **v1)
    rows["mobilenetv1_100h"] = dict(head_features=1024, **v1)
    rows["mobilenetv1_125"] = dict(channel_multiplier=1.25, head_features=0, **v1)
    for v, cm in {"035": 0.35, "050": 0.5, "075": 0.75, "100": 1.0, "140": 1.4}.items():
        rows[f"mobilenetv2_{v}"] = dict(
            arch_def=_MOBILENET_V2,
            channel_multiplier=cm,
            head_features=max(1280, round_channels(1280, cm)),
            act_layer="relu6",
        )
    for v, (cm, dm) in {"110d": (1.1, 1.2), "120d": (1.2, 1.4)}.items():
        rows[f"mobilenetv2_{v}"] = dict(
            arch_def=_MOBILENET_V2,
            channel_multiplier=cm,
            depth_multiplier=dm,
            fix_first_last=True,
            fix_stem=True,
            act_layer="relu6",
        )
    rows["mobilenet_edgetpu_100"] = dict(arch_def=_EDGETPU)
    edgetpu_v2 = {  # name: stage widths, group size, stem size, stem kernel, head
        "xs": ((16, 32, 48, 96, 144, 160, 192), 64, 32, 3, 1280),
        "s": ((24, 48, 64, 128, 160, 192, 256), 64, 64, 5, 1280),
        "m": ((32, 64, 80, 160, 192, 240, 320), 64, 64, 5, 1344),
        "l": ((32, 64, 96, 192, 240, 256, 384), 128, 64, 7, 1408),
    }
    for v, (c, gs, stem, k, head) in edgetpu_v2.items():
        rows[f"mobilenet_edgetpu_v2_{v}"] = dict(
            arch_def=_edgetpu_v2(c, gs), stem_size=stem, stem_kernel_size=k, head_features=head
        )
    rows["test_efficientnet"] = dict(
        arch_def=_TEST, stem_size=24, head_features=256, round_limit=0.0, act_layer="silu"
    )
    return {name: EfficientNetConfig(**args) for name, args in rows.items()}


# timm's efficientnet.py models that this builder does not make, and why (docs/efficientnet.md).
NOT_BUILT = {
    "efficientnet_b0_gn, efficientnet_b0_g8_gn, efficientnet_b3_gn, efficientnet_b3_g8_gn, "
    "efficientnet_b0_g16_evos, test_efficientnet_gn, test_efficientnet_ln, "
    "test_efficientnet_evos": "GroupNorm, LayerNorm or EvoNorm instead of BatchNorm",
    "efficientnet_cc_b0_4e, efficientnet_cc_b0_8e, efficientnet_cc_b1_8e, "
    "tf_efficientnet_cc_b0_4e, tf_efficientnet_cc_b0_8e, tf_efficientnet_cc_b1_8e": (
        "CondConv (per-sample mixtures of expert kernels, the `cc` option)"
    ),
    "efficientnet_x_b3, efficientnet_x_b5, efficientnet_h_b5": (
        "space-to-depth blocks (the `d` option)"
    ),
    "efficientnet_b1_pruned, efficientnet_b2_pruned, efficientnet_b3_pruned, "
    "efficientnet_es_pruned, efficientnet_el_pruned": (
        "pruned widths, read by timm from a text file inside its package"
    ),
    "gc_efficientnetv2_rw_t": "global-context attention instead of SE",
    "efficientnet_blur_b0": "anti-aliased strides inside the blocks (no published weights)",
}

# timm's efficientnet.py: the stem conv_stem and bn1, the stages blocks.{i}, the head conv_head
# and bn2, the classifier.
EFFICIENTNET = Family(
    "efficientnet",
    EfficientNetConfig,
    builders={
        "torch": "se_torch._efficientnet:EfficientNet",
        "linen": "se_flax._efficientnet:EfficientNet",
        "nnx": "se_flax.nnx._efficientnet:EfficientNet",
    },
    classifier="classifier",
    pre_logits=("conv_head", "bn2"),
    first_conv="conv_stem",
)
FAMILIES[EFFICIENTNET.name] = EFFICIENTNET
for _name, _config in _rows().items():
    register_model(_name, EFFICIENTNET, _config)
