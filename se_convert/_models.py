"""The architectures ``se-convert`` builds by name, in both frameworks: the command layer's one
registry (the converter's core never builds a model). It imports ``se_torch`` and ``se_flax``
only when it builds one."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from se_common import ATTENTION, MODELS, TensorSpec, get_model, list_models
from se_weights._formats import FileError

__all__ = ["DEFAULT_OPTIONS", "SE_BLOCKS", "Model", "model_names"]

# Bare SE blocks, whose widths come from the weights (Flax layout: params/fc1/kernel (C, rd)).
SE_BLOCKS = {
    "se": "a bare SE block: timm's SEModule / torchvision's layout (fc1, fc2 1x1 convs)",
    "selayer": "the classic recipe's SELayer (fc.0, fc.2 Linear, no bias)",
}
# A bare SE block's PyTorch state_dict, framework-free: key -> shape in its widths C (channels)
# and rd (hidden width); the first key holding both gives them (se_torch.SqueezeExcite,
# se_torch.SELayer).
SE_TENSORS: dict[str, dict[str, tuple[int | str, ...]]] = {
    "se": {
        "fc1.weight": ("rd", "C", 1, 1),
        "fc1.bias": ("rd",),
        "fc2.weight": ("C", "rd", 1, 1),
        "fc2.bias": ("C",),
    },
    "selayer": {"fc.0.weight": ("rd", "C"), "fc.2.weight": ("C", "rd")},
}
# The tensors a block has with bias=True only (SqueezeExcite(bias=False) has neither).
SE_BIASES = {"se": ("fc1.bias", "fc2.bias"), "selayer": ()}
# A backbone's create_model options that its weights decide, and their defaults.
DEFAULT_OPTIONS = {"num_classes": 1000, "in_chans": 3}


def model_names() -> list[str]:
    """Every name ``--model`` takes: the ``create_model`` names, then the bare SE blocks."""
    return [*list_models(), *SE_BLOCKS]


@dataclass(frozen=True)
class Model:
    """An architecture by name: a ``create_model`` name (with another attention layer, ``attn``)
    or a bare SE block.

    Raises (on construction):
        FileError: for an unknown name or attention layer, ``attn`` on a bare SE block, or a
            ``num_classes`` (>= 0) or ``in_chans`` (>= 1) that is no such integer.
    """

    name: str
    attn: str | None = None
    num_classes: int = 1000  # a backbone's classifier (0: none), as its weights have it
    in_chans: int = 3

    def __post_init__(self) -> None:
        if self.name not in MODELS and self.name not in SE_BLOCKS:
            raise FileError(f"unknown model {self.name!r}; known: {', '.join(model_names())}")
        if self.attn is not None and self.name in SE_BLOCKS:
            raise FileError(f"--attn applies to backbones, not to a bare {self.name!r} block")
        if self.attn is not None and self.attn not in ATTENTION:
            raise FileError(f"unknown attn {self.attn!r}; known: {', '.join(sorted(ATTENTION))}")
        for key, least in (("num_classes", 0), ("in_chans", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise FileError(f"{key} must be an integer >= {least}, got {value!r}")

    @property
    def options(self) -> dict[str, int]:
        """``num_classes`` and ``in_chans`` where they differ from the defaults (to record)."""
        options = {"num_classes": self.num_classes, "in_chans": self.in_chans}
        return {k: v for k, v in options.items() if v != DEFAULT_OPTIONS[k]}

    @property
    def is_se_block(self) -> bool:
        return self.name in SE_BLOCKS

    def _options(self) -> dict[str, Any]:
        options = {"num_classes": self.num_classes, "in_chans": self.in_chans}
        return options if self.attn is None else {**options, "attn": self.attn}

    def _widths(self, flax_tensors: dict[str, np.ndarray] | None) -> tuple[int, int, bool]:
        """(C, hidden width, biases) of a bare SE block, read from its Flax weights."""
        kernel = (flax_tensors or {}).get("params/fc1/kernel")
        if kernel is None or kernel.ndim != 2:
            raise FileError(
                f"--model {self.name}: the widths come from the weights, and there is no SE "
                f"block's params/fc1/kernel (C, rd)"
            )
        channels, rd = kernel.shape
        if channels < 1 or rd < 1:
            raise FileError(
                f"--model {self.name}: params/fc1/kernel has shape {kernel.shape}: an SE block's "
                f"widths (C, rd) are >= 1"
            )
        return channels, rd, "params/fc1/bias" in flax_tensors

    def torch_plan(
        self, torch_tensors: dict[str, np.ndarray] | None = None
    ) -> tuple[dict[str, TensorSpec], list[str]]:
        """The PyTorch state_dict this model has, framework-free (no torch): key -> shape and
        dtype kind, and why the widths ``torch_tensors`` show make no such model (empty if
        they do).

        A backbone's is its registry config's plan, with ``attn`` applied as ``create_model``
        applies it and this model's ``num_classes`` and ``in_chans``. A bare SE block's widths
        come from ``torch_tensors`` (:data:`SE_TENSORS`; the biases if it holds either); without
        them its shapes stay in ``C`` and ``rd``, which no tensor matches.

        Raises:
            FileError: for an attention layer without a state_dict plan.
        """
        if not self.is_se_block:
            row = get_model(self.name)
            config = row.family.configure(
                row.config, {} if self.attn is None else {"attn": self.attn}
            )
            try:
                return config.state_dict(self.num_classes, self.in_chans), []
            except ValueError as e:
                raise FileError(f"--model {self.name}: {e}") from None
        tensors = torch_tensors or {}
        shapes = dict(SE_TENSORS[self.name])
        if not any(k in tensors for k in SE_BIASES[self.name]):
            shapes = {k: v for k, v in shapes.items() if k not in SE_BIASES[self.name]}
        widths: dict[str, int] = {}
        problems = []
        for key, pattern in shapes.items():
            shape = tuple(np.shape(tensors[key])) if key in tensors else None
            if {"C", "rd"} <= set(pattern) and shape is not None and _fits(shape, pattern):
                widths = {p: s for p, s in zip(pattern, shape, strict=True) if isinstance(p, str)}
                channels, rd = widths["C"], widths["rd"]
                if channels < 1 or rd < 1:
                    problems.append(f"{key}: shape {shape}: an SE block's widths (C, rd) are >= 1")
                elif self.name == "selayer" and channels // _reduction(channels, rd) != rd:
                    problems.append(
                        f"{key}: shape {shape}: no classic SELayer(C, reduction) has C = "
                        f"{channels} and a hidden width of {rd} (C // reduction)"
                    )
                break
        plan = {
            key: TensorSpec(tuple(widths.get(p, p) if isinstance(p, str) else p for p in pattern))
            for key, pattern in shapes.items()
        }
        return plan, problems

    def torch(self, flax_tensors: dict[str, np.ndarray] | None = None) -> Any:
        """The PyTorch module (a bare SE block's widths from ``flax_tensors``)."""
        import se_torch

        if not self.is_se_block:
            return se_torch.create_model(self.name, **self._options())
        channels, rd, bias = self._widths(flax_tensors)
        if self.name == "selayer":
            reduction = _reduction(channels, rd)
            if channels // reduction != rd or bias:
                raise FileError(
                    f"--model selayer: fc1 {(channels, rd)}{' with a bias' if bias else ''} is "
                    f"no classic SELayer(C, reduction)"
                )
            return se_torch.SELayer(channels, reduction=reduction)
        return se_torch.SqueezeExcite(channels, rd_channels=rd, bias=bias)

    def flax(self, flax_tensors: dict[str, np.ndarray] | None = None) -> Any:
        """The linen module (a bare SE block's widths from ``flax_tensors``)."""
        import se_flax

        if not self.is_se_block:
            return se_flax.create_model(self.name, **self._options())
        _, rd, bias = self._widths(flax_tensors)
        return se_flax.SqueezeExcite(rd_channels=rd, use_bias=bias)

    def input_shape(self, flax_tensors: dict[str, np.ndarray] | None = None) -> tuple[int, ...]:
        """An NHWC input the model takes (batch 2)."""
        if self.is_se_block:
            return (2, 7, 7, self._widths(flax_tensors)[0])
        return (2, 64, 64, self.in_chans)

    def flax_shapes(self, flax_tensors: dict[str, np.ndarray] | None = None) -> Any:
        """The abstract variables of the linen twin (a bare SE block's widths from
        ``flax_tensors``; ``None`` for one without them)."""
        if not self.is_se_block:
            return _flax_shapes(self.name, self.attn, self.num_classes, self.in_chans)
        if flax_tensors is None:
            return None
        import jax

        x = jax.ShapeDtypeStruct(self.input_shape(flax_tensors), np.float32)
        return jax.eval_shape(self.flax(flax_tensors).init, jax.random.key(0), x)


def _fits(shape: tuple[int, ...], pattern: tuple[int | str, ...]) -> bool:
    """Whether ``shape`` is ``pattern``'s, its named widths free."""
    return len(shape) == len(pattern) and all(
        isinstance(p, str) or p == s for p, s in zip(pattern, shape, strict=True)
    )


def _reduction(channels: int, rd: int) -> int:
    """The least reduction ``r`` with ``channels // r <= rd`` (classic SELayer's hidden width)."""
    return channels // (rd + 1) + 1


@functools.cache
def _flax_shapes(name: str, attn: str | None, num_classes: int, in_chans: int) -> Any:
    """Traced once per architecture: a command converting many files builds it once."""
    import jax

    import se_flax

    options = {} if attn is None else {"attn": attn}
    model = se_flax.create_model(name, num_classes=num_classes, in_chans=in_chans, **options)
    x = jax.ShapeDtypeStruct((1, 32, 32, in_chans), np.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)
