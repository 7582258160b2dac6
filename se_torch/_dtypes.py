"""The dtype policy of the PyTorch modules, in one place: 16-bit inputs are reduced in float32."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["accumulation_dtype", "mean"]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float16 and bfloat16, else ``dtype``: what poolings accumulate in."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def mean(x: torch.Tensor, dim: int | Sequence[int], keepdim: bool = False) -> torch.Tensor:
    """``x.mean(dim)`` accumulated in :func:`accumulation_dtype`, rounded once to ``x.dtype``."""
    return x.mean(dim=dim, keepdim=keepdim, dtype=accumulation_dtype(x.dtype)).to(x.dtype)
