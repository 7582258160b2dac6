"""Bit-exact moves of arrays between PyTorch, NumPy and JAX, without importing torch eagerly.

NumPy cannot hold bfloat16 natively; ``ml_dtypes.bfloat16`` (JAX's own) can. PyTorch's bfloat16
tensors travel as their 16-bit patterns (``view(int16)``), never through float32.
"""

from __future__ import annotations

import sys
from typing import Any

import ml_dtypes
import numpy as np


def is_floating(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is a floating type, bfloat16 (``ml_dtypes``, kind ``V``) included."""
    return dtype.kind == "f" or dtype.name == "bfloat16"


def is_torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor can only exist if torch was imported already
    return torch is not None and isinstance(x, torch.Tensor)


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array with ``x``'s exact bits and dtype (bfloat16 as ``ml_dtypes.bfloat16``).

    Accepts torch tensors, NumPy arrays and JAX arrays. Raises ``TypeError`` otherwise.
    """
    if is_torch_tensor(x):
        import torch

        t = x.detach().to("cpu").contiguous()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    if (
        isinstance(x, np.ndarray)
        or hasattr(x, "__jax_array__")
        or type(x).__module__.startswith(("jax", "jaxlib"))
    ):
        return np.asarray(x)
    raise TypeError(f"expected a torch tensor, NumPy array or JAX array, got {type(x).__name__}")


def to_torch(a: np.ndarray) -> Any:
    """A new torch tensor with ``a``'s exact bits and dtype."""
    import torch

    a = np.array(a, order="C")  # a C-ordered copy; np.ascontiguousarray would make 0-d 1-d
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)
