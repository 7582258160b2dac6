"""Pretrained weights in timm's layout (a hub repo or a directory) into ``se_torch`` models,
and back: no timm needed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from se_common import PretrainedCfg
from se_torch._factory import create_model

__all__ = ["from_pretrained", "save_pretrained"]


def from_pretrained(
    source: str | os.PathLike,
    *,
    num_classes: int | None = None,
    features_only: bool = False,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    verbose: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """A model holding timm's pretrained weights, in eval mode, without timm.

    The twin of ``se_flax.from_pretrained``: the same sources, options and checks.

    Args:
        source: a hub id (``"timm/seresnet50.a1_in1k"``, ``hf-hub:`` and ``@revision``
            allowed), downloaded on first use into the Hugging Face cache (``HF_HUB_OFFLINE=1``:
            the cache only), or a directory with timm's ``config.json`` and
            ``model.safetensors``.
        num_classes: ``None`` keeps the published classifier; another count drops it and keeps
            a new one, initialised as ``torch.nn.Linear`` is (0: pooled features).
        features_only: feature maps instead of logits (the classifier is dropped).
        dtype: the parameters' dtype (default float32; the stored weights are cast).
        revision: a hub branch, tag or commit.
        verbose: print what was loaded and what changed to stderr.
        **kwargs: other options of :func:`se_torch.create_model`.

    Returns:
        The model in eval mode, with ``model.pretrained_cfg`` the weights' data config
        (:class:`se_common.PretrainedCfg`; ``preprocess(images, layout="NCHW")``).

    Raises:
        se_convert.FileError: a missing or unreadable file, an unknown architecture, a hub id
            not in the cache while offline.
        se_convert.ConversionError: missing, unexpected and mis-shaped keys, all listed.

    Example:
        >>> model = se_torch.from_pretrained("timm/seresnet50.a1_in1k")
        >>> x = torch.from_numpy(model.pretrained_cfg.preprocess(images, layout="NCHW"))
        >>> logits = model(x)
    """
    from se_weights import ConversionError
    from se_weights._arrays import to_torch
    from se_weights._hub import read_pretrained, report

    pretrained = read_pretrained(source, revision=revision)
    options = pretrained.options(num_classes, features_only, **kwargs)
    # framework-free, before anything is allocated: a config's sizes (a 2,000,000-class
    # classifier, 16 GB) are checked against the weights' shapes, not built first
    pretrained.check(options)
    model = create_model(pretrained.architecture, **options)
    if dtype is not None:
        model = model.to(dtype)
    own = model.state_dict()
    head = pretrained.arch.family.head_keys(own, features_only=False)
    new_head = [k for k in head if k not in pretrained.tensors] if pretrained.new_classifier else []
    missing = [k for k in own if k not in pretrained.tensors and k not in new_head]
    unexpected = [k for k in pretrained.tensors if k not in own]
    mismatched = [
        f"{k}: stored {tuple(v.shape)}, {pretrained.architecture} needs {tuple(own[k].shape)}"
        for k, v in pretrained.tensors.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise ConversionError(
            f"{pretrained.cfg.source}: the weights do not fit {pretrained.architecture}",
            missing,
            unexpected,
            mismatched,
        )
    tensors = {k: to_torch(v) for k, v in pretrained.tensors.items()}
    result = model.load_state_dict(tensors, strict=not new_head)  # copies, casting the dtype
    if sorted(result.missing_keys) != sorted(new_head) or result.unexpected_keys:
        raise RuntimeError(f"load_state_dict disagrees with the key check: {result}")
    model.pretrained_cfg = pretrained.cfg
    model.eval()
    count = sum(p.numel() for p in model.parameters())
    report(pretrained, count, str(next(model.parameters()).dtype).removeprefix("torch."), verbose)
    return model


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    pretrained_cfg: PretrainedCfg | None = None,
    force: bool = False,
) -> Path:
    """Writes a model in timm's layout: ``config.json`` and ``model.safetensors`` (its
    state_dict, bit for bit), which ``timm.create_model(name, pretrained=True,
    pretrained_cfg_overlay=dict(file=...))`` and both frameworks' ``from_pretrained`` load.

    Args:
        model: a model of a registered architecture (``create_model``'s), whose state_dict is
            exactly its architecture's (checked).
        directory: created if needed; files other than the two are left alone.
        pretrained_cfg: the data config to write; default the model's ``pretrained_cfg``, else
            timm's ResNet defaults (224 x 224, ImageNet mean and std).
        force: replace an existing ``config.json`` / ``model.safetensors``.
    """
    from se_weights._arrays import to_numpy
    from se_weights._hub import write_pretrained

    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError(
            f"save_pretrained takes a model of se_torch.create_model, got {type(model).__name__}"
        )
    tensors = {k: to_numpy(v) for k, v in model.state_dict().items()}
    return write_pretrained(
        directory,
        tensors,
        model.config,
        in_chans=model.in_chans,
        num_classes=0 if model.features_only else model.num_classes,
        pretrained_cfg=model.pretrained_cfg if pretrained_cfg is None else pretrained_cfg,
        force=force,
    )
