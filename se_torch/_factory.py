"""``create_model``: any registered architecture by timm's name (``se_common.list_models()``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from se_common import build_model

__all__ = ["create_model"]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Builds a model by timm's name, with timm's state_dict keys and shapes.

    Args:
        name: a registered name (``se_common.list_models()``), e.g. ``"seresnet50"``,
            ``"seresnext50_32x4d"``, ``"resnet18"``, ``"skresnet18"``.
        **kwargs: fields of the architecture's config, which change it (a ResNet's ``attn``:
            a name of ``se_common.ATTENTION`` or ``None``; ``layers``, ...), and options of
            its family's model (a ResNet's ``num_classes``, ``in_chans``, ``features_only``,
            ``out_indices``, ``attn_layer``, ...).

    Example:
        >>> model = create_model("resnet50", attn="se")   # the same network as seresnet50
        >>> model = create_model("resnet50", attn="eca")  # ECA-ResNet-50
    """
    return build_model("torch", name, **kwargs)
