"""Framework-free arithmetic of the SE family's layers, shared so both twins agree."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from se_common._checks import positive_int

__all__ = [
    "conv_padding",
    "eca_kernel_size",
    "odd_kernel_size",
    "out_channels_or",
    "selective_kernel_paths",
]


def odd_kernel_size(name: str, value: object) -> int:
    """``value`` as an int if it is an odd kernel size >= 1 (one that keeps the size), else an
    error naming ``name`` and the value."""
    k = positive_int(name, value)
    if k % 2 == 0:
        raise ValueError(f"{name} must be odd (so the output keeps its size), got {value!r}")
    return k


def conv_padding(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """Symmetric padding of timm's ``get_padding``: ``((stride - 1) + dilation * (k - 1)) // 2``.

    Example:
        >>> conv_padding(3, stride=2, dilation=2)
        2
    """
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


def eca_kernel_size(
    channels: int | None, kernel_size: int | None = None, gamma: float = 2, beta: float = 1
) -> int:
    """The ECA 1-D kernel size: ``kernel_size`` if given, else adaptive from ``channels``.

    The adaptive size is ECA-Net's eq. 12 as timm computes it:
    ``t = int(abs(log2(channels) + beta) / gamma)``, then the next odd number, at least 3.

    Raises:
        ValueError: naming the value, for an even or non-positive ``kernel_size``, a
            non-positive ``gamma``, or neither ``channels`` nor ``kernel_size`` given.

    Example:
        >>> eca_kernel_size(256), eca_kernel_size(2048), eca_kernel_size(64, kernel_size=7)
        (5, 7, 7)
    """
    for name, value in (("gamma", gamma), ("beta", beta)):
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not math.isfinite(value)
        ):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma!r}")
    if kernel_size is not None:
        return odd_kernel_size("kernel_size", kernel_size)
    if channels is None:
        raise ValueError("give channels (for the adaptive kernel size) or kernel_size")
    channels = positive_int("channels", channels)
    t = int(abs(math.log(channels, 2) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


def out_channels_or(out_channels: object, in_channels: int, name: str = "out_channels") -> int:
    """``out_channels`` checked (an int >= 1; errors call it ``name``), or ``in_channels`` when it
    is ``None``."""
    return in_channels if out_channels is None else positive_int(name, out_channels)


def selective_kernel_paths(
    kernel_size: int | Sequence[int] | None = None, dilation: int = 1, keep_3x3: bool = True
) -> list[tuple[int, int]]:
    """(kernel size, dilation) of each Selective Kernel path, as timm's ``SelectiveKernel``.

    ``kernel_size`` defaults to ``(3, 5)``; one int means two paths of that size. With
    ``keep_3x3`` every path is a 3x3 conv whose dilation gives the requested receptive field
    (a 5x5 becomes a 3x3 with dilation 2).

    Raises:
        ValueError: for a kernel size that is even or < 3 (timm checks only the first one), fewer
            than two paths, or a dilation < 1.

    Example:
        >>> selective_kernel_paths()
        [(3, 1), (3, 2)]
    """
    sizes = [3, 5] if kernel_size is None else kernel_size
    if isinstance(sizes, numbers.Integral) and not isinstance(sizes, bool):
        sizes = [sizes, sizes]
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) < 2:
        raise ValueError(
            f"kernel_size must be an odd int >= 3 or a sequence of at least two, got "
            f"{kernel_size!r}"
        )
    for k in sizes:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 3 or k % 2 == 0:
            raise ValueError(f"every kernel size must be an odd integer >= 3, got {kernel_size!r}")
    dilation = positive_int("dilation", dilation)
    if keep_3x3:
        return [(3, dilation * (int(k) - 1) // 2) for k in sizes]
    return [(int(k), dilation) for k in sizes]
