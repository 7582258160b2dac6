"""``create_model``: any registered architecture by timm's name (``se_common.list_models()``),
as a linen module."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from se_common import build_model

__all__ = ["create_model"]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Builds a linen model by timm's name; its variables convert from timm's state_dict.

    Args:
        name: a registered name (``se_common.list_models()``), e.g. ``"seresnet50"``.
        **kwargs: fields of the architecture's config, which change it (a ResNet's ``attn``:
            a name of ``se_common.ATTENTION`` or ``None``; ``layers``, ...), and fields of its
            family's module (a ResNet's ``num_classes``, ``in_chans``, ``features_only``,
            ``out_indices``, ``attn_layer``, ``dtype``, ...).

    Example:
        >>> model = create_model("seresnet50", dtype=jnp.bfloat16)
    """
    return build_model("linen", name, **kwargs)
