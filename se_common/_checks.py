"""Input checks with the same messages in both frameworks."""

from __future__ import annotations

from collections.abc import Sequence


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
