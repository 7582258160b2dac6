"""Pretrained weights in timm's layout (a hub repo or a directory) into ``se_torch`` models,
and back: no timm needed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from se_common import PretrainedCfg
from se_torch._resnet import ResNet, create_model

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
) -> ResNet:
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
    from se_convert import ConversionError
    from se_convert._arrays import to_torch
    from se_convert._hub import HEAD, read_pretrained, report

    pretrained = read_pretrained(source, revision=revision)
    model = create_model(
        pretrained.architecture, **pretrained.options(num_classes, features_only, **kwargs)
    )
    if dtype is not None:
        model = model.to(dtype)
    own = model.state_dict()
    new_head = [k for k in HEAD if k in own and k not in pretrained.tensors]
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
    model: ResNet,
    directory: str | os.PathLike,
    *,
    pretrained_cfg: PretrainedCfg | None = None,
    force: bool = False,
) -> Path:
    """Writes a model in timm's layout: ``config.json`` and ``model.safetensors`` (its
    state_dict, bit for bit), which ``timm.create_model(name, pretrained=True,
    pretrained_cfg_overlay=dict(file=...))`` and both frameworks' ``from_pretrained`` load.

    Args:
        model: a :class:`se_torch.ResNet` of a named architecture.
        directory: created if needed; files other than the two are left alone.
        pretrained_cfg: the data config to write; default the model's ``pretrained_cfg``, else
            timm's ResNet defaults (224 x 224, ImageNet mean and std).
        force: replace an existing ``config.json`` / ``model.safetensors``.
    """
    from se_convert._arrays import to_numpy
    from se_convert._hub import write_pretrained

    if not isinstance(model, ResNet):
        raise TypeError(f"save_pretrained takes a se_torch.ResNet, got {type(model).__name__}")
    head = getattr(model, "fc", None)
    num_classes = head.out_features if isinstance(head, torch.nn.Linear) else 0
    tensors = {k: to_numpy(v) for k, v in model.state_dict().items()}
    return write_pretrained(
        directory,
        tensors,
        model.config,
        in_chans=model.in_chans,
        num_classes=num_classes,
        pretrained_cfg=model.pretrained_cfg if pretrained_cfg is None else pretrained_cfg,
        force=force,
    )
