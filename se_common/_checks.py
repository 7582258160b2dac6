"""Checks with the same messages in both frameworks."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

__all__ = [
    "check_feature_map",
    "check_head_options",
    "drop_rate",
    "feature_levels",
    "lookup",
    "positive_int",
]

T = TypeVar("T")


def positive_int(name: str, value: object) -> int:
    """``value`` as an ``int`` if it is an integer >= 1 (not a bool), else a ``ValueError``
    naming ``name`` and the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def drop_rate(name: str, value: object) -> float:
    """``value`` as a ``float`` if it is a probability of dropping, ``0 <= value < 1`` (not a
    bool), else a ``ValueError`` naming ``name`` and the value."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0 <= float(value) < 1  # NaN fails this too
    ):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def lookup(registry: Mapping[str, T], name: str, what: str, where: str) -> T:
    """``registry[name]``, or a ``KeyError``-free ``ValueError`` that says where to register it.

    Args:
        registry: a framework's table, e.g. ``se_torch.BLOCKS``.
        name: a name ``se_common`` knows (configs validate names before any lookup).
        what: what the name is, for the message (``"block"``, ``"attn"``).
        where: the table's public name, for the message (``"se_torch.BLOCKS"``).
    """
    try:
        return registry[name]
    except KeyError:
        raise ValueError(
            f"{what} {name!r} has no entry in {where} (it has {', '.join(sorted(registry))}); "
            f"register this framework's class there"
        ) from None


def check_feature_map(
    shape: Sequence[int],
    dtype: object,
    is_floating: bool,
    channels: int,
    *,
    channels_last: bool,
    spatial_dims: int | None = None,
) -> None:
    """Raises a clear error unless ``shape``/``dtype`` describe a feature map the block accepts.

    Args:
        shape: the input's shape, ``(N, C, *spatial)`` or ``(N, *spatial, C)``.
        dtype: the input's dtype, only used in the message.
        is_floating: whether that dtype is a floating-point type.
        channels: the channel count the module's weights were built for.
        channels_last: ``True`` for NHWC-style input (Flax), ``False`` for NCHW (PyTorch).
        spatial_dims: the exact number of spatial axes required, or ``None`` for any >= 1.
    """
    shape = tuple(int(s) for s in shape)
    layout = "(N, *spatial, C)" if channels_last else "(N, C, *spatial)"
    if spatial_dims is None and len(shape) < 3:
        raise ValueError(
            f"expected an input of rank >= 3 laid out as {layout}, got rank {len(shape)} "
            f"(shape {shape})"
        )
    if spatial_dims is not None and len(shape) != 2 + spatial_dims:
        raise ValueError(
            f"expected an input of rank {2 + spatial_dims} laid out as {layout}, got rank "
            f"{len(shape)} (shape {shape})"
        )
    if not is_floating:
        raise TypeError(f"expected a floating-point input, got dtype {dtype}")
    got = shape[-1] if channels_last else shape[1]
    if got != channels:
        raise ValueError(
            f"input has {got} channels (shape {shape}, layout {layout}) but the module's "
            f"weights are for {channels} channels"
        )


def check_head_options(num_classes: int, in_chans: int, out_indices: Sequence[int]) -> None:
    """Clear errors for the options both frameworks' ResNets share."""
    for name, value, low in (("num_classes", num_classes, 0), ("in_chans", in_chans, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    indices = tuple(out_indices)
    if not indices or any(i not in range(5) for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(
            f"out_indices must be distinct feature levels in 0..4 (strides 2, 4, 8, 16, 32), "
            f"got {out_indices!r}"
        )


def feature_levels(
    num_classes: Any, in_chans: Any, out_indices: Any, levels: int
) -> tuple[int, ...]:
    """Clear errors for the model options of a family with ``levels`` feature levels (the
    EfficientNet and RegNet families'); the levels ``out_indices`` picks (default: all)."""
    for name, value, low in (("num_classes", num_classes, 0), ("in_chans", in_chans, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if out_indices is not None and not isinstance(out_indices, (list, tuple)):
        raise ValueError(f"out_indices must be a sequence of feature levels, got {out_indices!r}")
    indices = tuple(range(levels)) if out_indices is None else tuple(out_indices)
    if (
        not indices
        or len(set(indices)) != len(indices)
        or any(isinstance(i, bool) or not isinstance(i, int) for i in indices)
        or any(not 0 <= i < levels for i in indices)
    ):
        raise ValueError(
            f"out_indices {out_indices!r} must be distinct feature levels in 0..{levels - 1}"
        )
    return indices
