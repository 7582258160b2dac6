"""One registry of architectures, for every family: timm's names to a family and its config.

A *family* (:class:`Family`) is what every front-end, the hub reader, the converter's commands
and the benchmarks need to know of a kind of network: its builder in each front-end (PyTorch,
linen, NNX), its classifier and pre-logits modules, the ``config.json`` ``model_args`` it
reads, and its config type, whose objects plan the network framework-free (feature stages as
timm's ``feature_info``, the state_dict's keys and shapes). An *architecture*
(:class:`Architecture`) is one row: a name (timm's, exactly), its family, its config and timm's
pretrained configs for each published tag.

    >>> se_common.list_models("seresnext*")[:3]
    ['seresnext26d_32x4d', 'seresnext26t_32x4d', 'seresnext50_32x4d']
    >>> se_common.get_model("seresnet50").family.name
    'resnet'

``create_model``, ``from_pretrained`` and ``save_pretrained`` of all three front-ends,
``se-convert --model`` and ``python -m benchmarks --models`` go through it; none of them names
a family. A new family is one :class:`Family` in :data:`FAMILIES` and one row per name in
:data:`MODELS` (``register_model``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from se_common._pretrained import LIMITS, PretrainedCfg, shown

__all__ = [
    "FAMILIES",
    "FRONT_ENDS",
    "MODELS",
    "Architecture",
    "Family",
    "FeatureInfo",
    "ModelArg",
    "ModelConfig",
    "TensorSpec",
    "architecture_of",
    "build_model",
    "get_model",
    "list_models",
    "model_feature_info",
    "pooled_features",
    "register_model",
]

# The front-ends a family builds in: PyTorch (se_torch), Flax linen (se_flax), Flax NNX.
FRONT_ENDS = ("torch", "linen", "nnx")
PRETRAINED_CFGS = Path(__file__).with_name("pretrained_cfgs.json")  # from timm, see scripts/


@dataclass(frozen=True)
class FeatureInfo:
    """One feature level, as an entry of timm's ``feature_info``.

    Attributes:
        num_chs: its channels.
        reduction: its stride with respect to the input.
        module: the PyTorch module whose output it is (``"act1"``, ``"layer1"``).
    """

    num_chs: int
    reduction: int
    module: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a state_dict plan: its PyTorch shape, and ``"float"`` (the model's
    floating dtype) or ``"int64"`` (BatchNorm's ``num_batches_tracked``)."""

    shape: tuple[int, ...]
    dtype: str = "float"


class ModelConfig(Protocol):
    """What a family's config plans, framework-free (dataclass fields are ``create_model``
    options: ``create_model("resnet50", layers=(1, 1, 1, 1))``, as timm's ``model_args``)."""

    def feature_info(self) -> tuple[FeatureInfo, ...]: ...

    def state_dict(self, num_classes: int, in_chans: int) -> dict[str, TensorSpec]: ...

    @property
    def num_features(self) -> int:
        """timm's ``model.num_features``: the channels the global pool takes (what a
        ``config.json``'s ``num_features`` records). A config whose field of that name means
        something else (RegNet's, timm's ``RegNetCfg``) gives this as ``pooled_features``
        (:func:`pooled_features`)."""
        ...


def pooled_features(config: Any) -> int:
    """timm's ``model.num_features`` of a config (:class:`ModelConfig`): its
    ``pooled_features`` where it has one, else its ``num_features``."""
    return getattr(config, "pooled_features", None) or config.num_features


@dataclass(frozen=True)
class ModelArg:
    """One ``config.json`` ``model_args`` entry a family reads, and its valid values: a config is
    untrusted input, so each value is checked before anything is built.

    Attributes:
        description: what it is, for messages.
        kind: ``int``, ``float``, ``str`` or ``bool`` (``True`` is no integer here).
        low, high: the inclusive range of a number.
        choices: the values a string (or number) may take, if only some.
        option: passed to ``create_model`` as an option of that name; ``False``: checked only
            (``global_pool``, which se-flax fixes to ``"avg"``).
    """

    description: str
    kind: type = int
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    option: bool = True

    def check(self, name: str, value: Any) -> Any:
        """``value`` if valid (an integral float stays a float: no silent rounding); else a
        ``ValueError`` naming ``name`` and the value."""
        if self.kind is bool:
            ok = isinstance(value, bool)
        elif self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = ok and math.isfinite(value)
        else:
            ok = isinstance(value, self.kind)
        wanted = {
            bool: "true or false",
            int: "an integer",
            float: "a finite number",
            str: "a string",
        }.get(self.kind, f"a {self.kind.__name__}")
        if ok and self.choices is not None and value not in self.choices:
            raise ValueError(
                f"model_args {name} {shown(value)}: se-flax takes "
                f"{' or '.join(map(repr, self.choices))} ({self.description})"
            )
        low = -math.inf if self.low is None else self.low
        high = math.inf if self.high is None else self.high
        if ok and self.kind in (int, float) and not low <= value <= high:
            ok, wanted = False, f"{wanted} in [{low:g}, {high:g}]"
        if not ok:
            raise ValueError(
                f"model_args {name} ({self.description}) must be {wanted}, got {shown(value)}"
            )
        return value


def _common_model_args() -> dict[str, ModelArg]:
    """timm's ``save_for_hf`` writes these for every model; ``in_chans`` and ``num_classes``
    must agree with the config's ``input_size`` and ``num_classes``."""
    return {
        "in_chans": ModelArg("input channels", int, *LIMITS["channels"]),
        "num_classes": ModelArg("classes", int, *LIMITS["num_classes"]),
        "global_pool": ModelArg("the pooling", str, choices=("avg",), option=False),
    }


@dataclass(frozen=True)
class Family:
    """A family of architectures.

    Attributes:
        name: e.g. ``"resnet"``.
        config_type: the dataclass of its configs (a :class:`ModelConfig`).
        builders: front-end (:data:`FRONT_ENDS`) -> the model class or function, called as
            ``builder(config, **options)`` (NNX: with ``rngs=``); a ``"module:attribute"``
            string is imported on first use, so ``se_common`` imports no framework.
        classifier: the PyTorch module path of the classifier (``"fc"``): its tensors are
            dropped, or a new classifier initialised, when ``num_classes`` changes.
        pre_logits: module paths between the pooled features and the classifier (MobileNetV3's
            ``conv_head``), dropped with the classifier by ``features_only``.
        first_conv: timm's ``pretrained_cfg["first_conv"]`` (the input convolution).
        model_args: the ``config.json`` ``model_args`` the hub reader accepts, each -> its
            :class:`ModelArg` (meaning and valid values); timm's training-only arguments
            (dropout rates) are always ignored.
        config_options: the config fields ``create_model`` options may set (``None``: every
            field); the other options go to the builder, which may take a field's name too
            (a ResNet's ``zero_init_last`` overrides its config's default).
    """

    name: str
    config_type: type
    builders: Mapping[str, Callable[..., Any] | str]
    classifier: str
    pre_logits: tuple[str, ...] = ()
    first_conv: str = "conv1"
    model_args: Mapping[str, ModelArg] = field(default_factory=_common_model_args)
    config_options: tuple[str, ...] | None = None

    def builder(self, front_end: str) -> Callable[..., Any]:
        """The model class of ``front_end``; a ``ValueError`` naming what is missing."""
        if front_end not in FRONT_ENDS:
            raise ValueError(f"front-end {front_end!r} is not one of {', '.join(FRONT_ENDS)}")
        if front_end not in self.builders:
            raise ValueError(
                f"family {self.name!r} has no {front_end} builder (it has "
                f"{', '.join(self.builders) or 'none'}); add one to its Family.builders"
            )
        built = self.builders[front_end]
        if isinstance(built, str):
            module, _, attribute = built.partition(":")
            built = getattr(importlib.import_module(module), attribute)
        return built

    def configure(self, config: Any, options: dict[str, Any]) -> Any:
        """``config`` with the options that are its fields popped from ``options`` and set
        (``attn="eca"``, ``layers=(1, 1, 1, 1)``), as timm's ``model_args`` override a
        model's own."""
        names = {f.name for f in dataclasses.fields(config)}
        if self.config_options is not None:
            names &= set(self.config_options)
        changes = {k: options.pop(k) for k in list(options) if k in names}
        return dataclasses.replace(config, **changes) if changes else config

    def head_keys(self, keys: Iterable[str], features_only: bool) -> list[str]:
        """Those of ``keys`` (a state_dict's) that belong to the classifier, and with
        ``features_only`` to the pre-logits modules too."""
        modules = (self.classifier, *(self.pre_logits if features_only else ()))
        return [k for k in keys if any(k.startswith(f"{m}.") for m in modules)]


@dataclass(frozen=True)
class Architecture:
    """One registered architecture.

    Attributes:
        name: timm's name (``"seresnet50"``).
        family: its :class:`Family`.
        config: its config (a ``family.config_type``).
        pretrained: tag -> timm's ``pretrained_cfg`` entries, timm's default tag first; a tag
            with ``hf_hub_id`` has published weights (``timm/<name>.<tag>``).
    """

    name: str
    family: Family
    config: Any
    pretrained: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.config, self.family.config_type):
            raise TypeError(
                f"{self.name}: family {self.family.name!r} takes a "
                f"{self.family.config_type.__name__}, got {type(self.config).__name__}"
            )

    @property
    def tags(self) -> list[str]:
        """The tags with published weights, timm's default first."""
        return [t for t, cfg in self.pretrained.items() if cfg.get("hf_hub_id")]

    def pretrained_cfg(self, tag: str | None = None) -> PretrainedCfg:
        """timm's pretrained config of ``tag`` (default: timm's default tag), or the family's
        generic one (224 x 224, ImageNet statistics) where timm has none."""
        if tag is None:
            tag = next(iter(self.pretrained), None)
            if tag is None:
                return PretrainedCfg(self.name)
        if tag not in self.pretrained:
            known = ", ".join(self.pretrained) or "none"
            raise ValueError(f"{self.name} has no pretrained tag {tag!r}; it has {known}")
        cfg = {k: v for k, v in self.pretrained[tag].items() if k != "hf_hub_id"}
        return PretrainedCfg.from_config({"architecture": self.name, "pretrained_cfg": cfg})


FAMILIES: dict[str, Family] = {}
MODELS: dict[str, Architecture] = {}


@cache
def _timm_cfgs() -> dict[str, dict[str, dict[str, Any]]]:
    return json.loads(PRETRAINED_CFGS.read_text())["models"]


def register_model(
    name: str,
    family: Family | str,
    config: Any,
    pretrained: Mapping[str, Mapping[str, Any]] | None = None,
) -> Architecture:
    """Adds an architecture (``pretrained`` defaults to timm's table for ``name``, if any).

    Raises:
        ValueError: for a name already registered, or an unknown family name.
    """
    if isinstance(family, str):
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; known: {', '.join(sorted(FAMILIES))}")
        family = FAMILIES[family]
    if name in MODELS:
        raise ValueError(f"model {name!r} is registered already ({MODELS[name].family.name})")
    row = Architecture(
        name, family, config, _timm_cfgs().get(name, {}) if pretrained is None else pretrained
    )
    MODELS[name] = row
    return row


def get_model(name: str) -> Architecture:
    """The architecture of a name; a ``ValueError`` listing the known names otherwise."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}"
        ) from None


def model_feature_info(config: Any, features_only: bool, out_indices: Iterable[int]) -> list[dict]:
    """A model's ``feature_info`` as timm gives it: every level's ``num_chs``, ``reduction``
    and ``module``, or with ``features_only`` those of ``out_indices``, in their order."""
    info = config.feature_info()
    if features_only:
        info = [info[i] for i in out_indices]
    return [level.to_dict() for level in info]


def build_model(front_end: str, name: str, **options: Any) -> Any:
    """``create_model(name, **options)`` of ``front_end``: the options that are fields of the
    architecture's config change it (``attn="eca"``), the others go to the family's builder.

    Raises:
        ValueError: an unknown name (listing the known ones), a family without this front-end.
    """
    row = get_model(name)
    config = row.family.configure(row.config, options)
    return row.family.builder(front_end)(config, **options)


def architecture_of(config: Any) -> Architecture:
    """The registered architecture whose config equals ``config`` (``resnet50`` with
    ``attn="se"`` is ``seresnet50``); a ``ValueError`` when none has it."""
    for row in MODELS.values():
        if type(row.config) is type(config) and row.config == config:
            return row
    raise ValueError(
        f"no model name has this config ({config}); timm's layout records an architecture by "
        f"name, one of {', '.join(list_models())}"
    )


def _natural(name: str) -> list[Any]:
    """timm's sort key: digits as numbers (``resnet18`` before ``resnet101``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_models(
    pattern: str | Iterable[str] = "*",
    pretrained: bool = False,
    *,
    exclude: str | Iterable[str] = (),
) -> list[str]:
    """The registered names matching ``pattern`` (shell-style, as timm's ``list_models``),
    in timm's natural order.

    Args:
        pattern: one pattern or several (a name matching any is listed).
        pretrained: list the published weights instead, as ``name.tag`` (timm's
            ``list_models(pretrained=True)``); patterns then match ``name.tag`` too.
        exclude: patterns of names to leave out.

    Example:
        >>> list_models("seresnet5*", pretrained=True)[:2]
        ['seresnet50.a1_in1k', 'seresnet50.a2_in1k']
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    excluded = [exclude] if isinstance(exclude, str) else list(exclude)
    names = []
    for name, row in MODELS.items():
        for entry in [f"{name}.{tag}" for tag in row.tags] if pretrained else [name]:
            wanted = any(
                fnmatch.fnmatchcase(entry, p) or fnmatch.fnmatchcase(name, p) for p in patterns
            )
            if wanted and not any(fnmatch.fnmatchcase(entry, p) for p in excluded):
                names.append(entry)
    return sorted(names, key=_natural)
