"""Pretrained weights in timm's layout into NNX models (and back, through
:func:`se_flax.save_pretrained`). Neither way imports torch."""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util

from se_flax._dtypes import Dtype
from se_flax._pretrained import classifier_path, convert_into, new_head, put, save_pretrained
from se_flax.nnx._factory import create_model

__all__ = ["from_pretrained", "save_pretrained"]


def from_pretrained(
    source: str | os.PathLike,
    *,
    num_classes: int | None = None,
    features_only: bool = False,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    revision: str | None = None,
    rngs: nnx.Rngs | None = None,
    verbose: bool = True,
    **kwargs: Any,
) -> nnx.Module:
    """An NNX model holding timm's pretrained weights, in eval mode, without torch.

    The twin of :func:`se_flax.from_pretrained` (same sources, options and checks); the
    weights are loaded into the model in place.

    Args:
        source: a hub id (``"timm/seresnet50.a1_in1k"``, ``hf-hub:`` and ``@revision``
            allowed), downloaded on first use into the Hugging Face cache (``HF_HUB_OFFLINE=1``:
            the cache only), or a directory with timm's ``config.json`` and
            ``model.safetensors``.
        num_classes: ``None`` keeps the published classifier; another count drops it and keeps
            the new one ``rngs`` initialised (0: pooled features).
        features_only: feature maps instead of logits (the classifier is dropped).
        dtype, param_dtype: computation and parameter dtypes (stored weights are cast).
        revision: a hub branch, tag or commit.
        rngs: random streams of a new classifier's initialisation (default ``nnx.Rngs(0)``);
            the model is built abstract and filled, so nothing else is initialised.
        verbose: print what was loaded and what changed to stderr.
        **kwargs: other options of :func:`se_flax.nnx.create_model`.

    Returns:
        The model, in eval mode (``model.train()`` to fine-tune), with ``model.pretrained_cfg``
        the weights' data config (:class:`se_common.PretrainedCfg`, with ``preprocess``).

    Example:
        >>> model = se_flax.nnx.from_pretrained("timm/seresnet50.a1_in1k")
        >>> logits = model(model.pretrained_cfg.preprocess(images))
    """
    from se_weights import update_nnx
    from se_weights._convert import _flat_flax
    from se_weights._hub import read_pretrained, report

    pretrained = read_pretrained(source, revision=revision)
    options = pretrained.options(
        num_classes, features_only, **kwargs, dtype=dtype, param_dtype=param_dtype
    )
    pretrained.check(options)  # framework-free, before anything is built
    rngs = nnx.Rngs(0) if rngs is None else rngs

    def build(rngs: nnx.Rngs) -> nnx.Module:
        return create_model(pretrained.architecture, rngs=rngs, **options)

    # Abstract, not initialised: an eager initialisation costs seconds of op compilation
    # (seresnet50, 2-core CPU: 6.8 s cold, against 0.5 s for nnx.eval_shape).
    model = nnx.eval_shape(build, rngs)
    own = traverse_util.unflatten_dict(_flat_flax(model))
    variables = convert_into(pretrained, own)
    if new_head(pretrained, own):
        path = classifier_path(pretrained)

        def head(rngs: nnx.Rngs) -> Any:
            module = build(rngs)
            for name in path:
                module = getattr(module, name)
            return nnx.to_pure_dict(nnx.state(module, nnx.Param))

        put(variables["params"], path, nnx.jit(head)(rngs))  # compiled to the head's init only
    update_nnx(model, variables)
    # The dropout streams (drop_path_rate and the like), abstract so far: concrete, distinct
    # keys from ``rngs`` (nnx.reseed draws one per stream, by the streams' own tags).
    tags = {s.key.tag for _, s in nnx.iter_graph(model) if isinstance(s, nnx.RngStream)}
    if tags:
        nnx.reseed(model, **{tag: rngs["dropout"]() for tag in tags})
    abstract = [
        jax.tree_util.keystr(p)
        for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(model))
        if isinstance(v, jax.ShapeDtypeStruct)
    ]
    if abstract:  # every variable must have been filled (update_nnx is strict; this is cheap)
        raise RuntimeError(f"variables left uninitialised: {abstract[:5]}")
    model.pretrained_cfg = pretrained.cfg
    model.eval()
    count = sum(v.size for v in jax.tree.leaves(variables["params"]))
    report(pretrained, count, param_dtype, verbose)
    return model
