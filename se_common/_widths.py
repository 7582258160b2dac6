"""Hidden-width rules of the SE block, reproducing timm and the classic recipe exactly."""

from __future__ import annotations

import math
import numbers

from se_common._checks import positive_int

DEFAULT_RD_RATIO = 1.0 / 16
DEFAULT_RD_DIVISOR = 8


def make_divisible(
    v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9
) -> int:
    """Rounds ``v`` to the nearest multiple of ``divisor``, as timm's ``make_divisible``.

    The result is at least ``min_value`` (default ``divisor``) and, if rounding lost more than
    ``1 - round_limit`` of ``v``, one ``divisor`` larger.

    Example:
        >>> make_divisible(64 / 16, 8, round_limit=0.0)
        8
    """
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def resolve_rd_channels(
    channels: int,
    rd_ratio: float | None = None,
    rd_channels: int | None = None,
    rd_divisor: int | None = None,
    *,
    default_ratio: float = DEFAULT_RD_RATIO,
    default_divisor: int = DEFAULT_RD_DIVISOR,
    round_limit: float = 0.0,
) -> int:
    """Returns the hidden (reduced) width of an attention layer for ``channels`` channels.

    Either ``rd_channels`` is given explicitly, or the width is
    ``make_divisible(channels * rd_ratio, rd_divisor, round_limit=round_limit)``. The defaults
    (``rd_ratio=1/16``, ``rd_divisor=8``, ``round_limit=0.``) are timm's ``SEModule``; the other
    layers pass their own (CBAM: divisor 1; Selective Kernel: ``round_limit=0.9``). Giving
    ``rd_channels`` together with ``rd_ratio`` or ``rd_divisor`` is an error rather than a
    silent preference.

    Raises:
        ValueError: naming the offending value, for a non-positive or non-integer ``channels``,
            ``rd_channels`` or ``rd_divisor``, a non-positive ``rd_ratio``, or conflicting options.

    Example:
        >>> resolve_rd_channels(256)
        16
        >>> resolve_rd_channels(64, rd_channels=4)
        4
    """
    channels = positive_int("channels", channels)
    if rd_channels is not None:
        if rd_ratio is not None or rd_divisor is not None:
            raise ValueError(
                f"give either rd_channels or rd_ratio/rd_divisor, not both: got rd_channels="
                f"{rd_channels!r}, rd_ratio={rd_ratio!r}, rd_divisor={rd_divisor!r}"
            )
        return positive_int("rd_channels", rd_channels)
    rd_ratio = default_ratio if rd_ratio is None else rd_ratio
    if (
        isinstance(rd_ratio, bool)
        or not isinstance(rd_ratio, numbers.Real)
        or not math.isfinite(rd_ratio)
        or rd_ratio <= 0
    ):
        raise ValueError(f"rd_ratio must be a finite number > 0, got {rd_ratio!r}")
    rd_divisor = positive_int("rd_divisor", default_divisor if rd_divisor is None else rd_divisor)
    return make_divisible(channels * rd_ratio, rd_divisor, round_limit=round_limit)


def classic_rd_channels(
    channels: int, reduction: int = 16, *, channels_name: str = "channels"
) -> int:
    """The classic recipe's hidden width ``channels // reduction``, which must be >= 1.

    Raises:
        ValueError: naming the value, for a non-integer or non-positive ``channels`` or
            ``reduction``, or a reduction larger than ``channels``.

    Example:
        >>> classic_rd_channels(256, 16)
        16
    """
    channels = positive_int(channels_name, channels)
    reduction = positive_int("reduction", reduction)
    if channels // reduction < 1:
        raise ValueError(
            f"{channels_name} // reduction must be >= 1, got {channels} // {reduction} = 0"
        )
    return channels // reduction
