"""``create_model``: any registered architecture by timm's name (``se_common.list_models()``),
as an NNX module."""

from __future__ import annotations

from typing import Any

from flax import nnx

from se_common import build_model

__all__ = ["create_model"]


def create_model(name: str, *, rngs: nnx.Rngs | None = None, **kwargs: Any) -> nnx.Module:
    """Builds an NNX model by timm's name; the twin of :func:`se_flax.create_model` (same
    names, options and variable paths).

    Args:
        name: a registered name (``se_common.list_models()``).
        rngs: random streams of the initialisation (default ``nnx.Rngs(0)``).
        **kwargs: config fields and model options, as in :func:`se_flax.create_model`.

    Example:
        >>> model = create_model("seresnet50", num_classes=10, rngs=nnx.Rngs(0))
    """
    return build_model("nnx", name, rngs=nnx.Rngs(0) if rngs is None else rngs, **kwargs)
