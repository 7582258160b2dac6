"""Pretrained weights in timm's layout (a hub repo or a directory) into Flax models, and back.

Neither way imports torch: loading reads ``model.safetensors`` with NumPy; saving plans
PyTorch's state_dict keys and shapes from the architecture's framework-free config
(``config.state_dict(...)``) and moves each variable by the converter's name table.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import traverse_util

from se_common import PretrainedCfg
from se_flax._dtypes import Dtype
from se_flax._factory import create_model

if TYPE_CHECKING:
    from se_weights._hub import Pretrained

__all__ = ["from_pretrained", "save_pretrained"]

_INIT_SIZE = 32  # spatial size of the input that traces the variables' shapes (any size works)


def _is_float(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jnp.floating)


def classifier_path(pretrained: Pretrained) -> tuple[str, ...]:
    """The Flax module path of the architecture's classifier (``("fc",)``)."""
    from se_weights._convert import flax_names

    return flax_names(pretrained.arch.family.classifier)


def new_head(pretrained: Pretrained, shapes: Any) -> bool:
    """Whether the model has a classifier the weights do not hold (a new one to initialise)."""
    params = traverse_util.flatten_dict(dict(shapes.get("params", {})))
    path = classifier_path(pretrained)
    return pretrained.new_classifier and any(p[: len(path)] == path for p in params)


def put(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Sets ``tree[path[0]][path[1]]...`` to ``value``, making the dicts on the way."""
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def convert_into(pretrained: Pretrained, shapes: Any) -> dict[str, Any]:
    """The pretrained tensors as Flax variables of exactly ``shapes``' structure and dtypes,
    less the classifier where :meth:`Pretrained.options` dropped it (its Flax module, e.g.
    ``params/fc``, is then absent).

    The conversion is strict (every tensor used, every variable filled, shapes checked) in the
    stored dtype; floating variables are then cast to ``shapes``' dtypes (exact when widening).
    """
    from se_weights import ConversionError, torch_to_flax

    if new_head(pretrained, shapes):
        path = classifier_path(pretrained)
        flat = traverse_util.flatten_dict(dict(shapes))
        shapes = traverse_util.unflatten_dict(
            {p: v for p, v in flat.items() if p[1 : 1 + len(path)] != path}
        )
    stored = pretrained.float_dtype
    target = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, stored if _is_float(s.dtype) else s.dtype),
        shapes,
    )
    try:
        variables = torch_to_flax(pretrained.tensors, target=target)
    except ConversionError as e:  # the same lists, titled with the source
        title = f"{pretrained.cfg.source}: the weights do not fit {pretrained.architecture}"
        raise ConversionError(title, e.missing, e.unexpected, e.mismatched) from None
    return jax.tree.map(lambda v, s: jnp.asarray(v, s.dtype), variables, shapes)


def from_pretrained(
    source: str | os.PathLike,
    *,
    num_classes: int | None = None,
    features_only: bool = False,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    revision: str | None = None,
    rng: jax.Array | int = 0,
    verbose: bool = True,
    **kwargs: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """A linen model and its variables from timm's pretrained weights, without torch.

    Args:
        source: a hub id (``"timm/seresnet50.a1_in1k"``, optionally ``hf-hub:`` in front and
            ``@revision`` behind), downloaded on first use into the Hugging Face cache
            (``HF_HOME``/``HF_HUB_CACHE``; with ``HF_HUB_OFFLINE=1`` only the cache is read);
            or a directory holding timm's ``config.json`` and ``model.safetensors``.
        num_classes: ``None`` keeps the published classifier; another count drops it and
            initialises a new one from ``rng`` (0: no classifier, pooled features).
        features_only: feature maps instead of logits (the classifier is dropped).
        dtype: computation dtype; ``param_dtype``: the variables' dtype (the stored weights
            are cast: exact from float32 to float32 or float64).
        revision: a hub branch, tag or commit.
        rng: key (or seed) of a new classifier's initialisation.
        verbose: print what was loaded (architecture, tag, parameters, dtype) and what
            changed (a dropped classifier) to stderr.
        **kwargs: other options of :func:`se_flax.create_model` (``out_indices``, ...).

    Returns:
        ``(model, variables)``, with ``model.pretrained_cfg`` the weights' data config
        (:class:`se_common.PretrainedCfg`: ``preprocess`` prepares images as timm does).
        Call ``model.apply(variables, x)`` (inference: ``train=False``, the default).

    Raises:
        se_convert.FileError: a missing or unreadable file, an architecture se-flax does not
            build, a hub id not in the cache while offline.
        se_convert.ConversionError: weights that do not fit the architecture, listed.

    Example:
        >>> model, variables = se_flax.from_pretrained("timm/seresnet50.a1_in1k")
        >>> x = model.pretrained_cfg.preprocess([Image.open("cat.jpg").convert("RGB")])
        >>> logits = model.apply(variables, x)           # (1, 1000)
    """
    from se_weights._hub import read_pretrained, report

    pretrained = read_pretrained(source, revision=revision)
    options = pretrained.options(num_classes, features_only, **kwargs)
    pretrained.check(options)  # framework-free, before anything is built
    model = create_model(
        pretrained.architecture,
        **options,
        dtype=dtype,
        param_dtype=param_dtype,
        pretrained_cfg=pretrained.cfg,
    )
    x = jax.ShapeDtypeStruct((1, _INIT_SIZE, _INIT_SIZE, model.in_chans), dtype or param_dtype)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    variables = convert_into(pretrained, shapes)
    if new_head(pretrained, shapes):
        key = jax.random.key(int(rng)) if isinstance(rng, numbers.Integral) else rng
        path = classifier_path(pretrained)

        def head(k: jax.Array) -> Any:
            tree = model.init(k, jnp.zeros(x.shape, x.dtype))["params"]
            for name in path:
                tree = tree[name]
            return tree

        put(variables["params"], path, jax.jit(head)(key))  # compiled to the head's init only
    count = sum(v.size for v in jax.tree.leaves(variables["params"]))
    report(pretrained, count, param_dtype, verbose)
    return model, variables


def save_pretrained(
    model: Any,
    directory: str | os.PathLike,
    variables: Any = None,
    *,
    pretrained_cfg: PretrainedCfg | None = None,
    force: bool = False,
) -> Path:
    """Writes a linen model's variables, or an NNX model, in timm's layout: ``config.json``
    and ``model.safetensors`` (PyTorch's keys and layouts, the variables' dtype, bit for bit),
    without torch.

    ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))``,
    ``se_torch.from_pretrained`` and :func:`from_pretrained` load the directory;
    ``huggingface_hub.upload_folder`` publishes it. The keys and shapes are planned from the
    architecture's config; every variable must have its key and every key its variable.

    Args:
        model: a linen model of ``se_flax.create_model`` (with ``variables``) or an NNX model
            of ``se_flax.nnx.create_model``, of a registered architecture.
        directory: created if needed; files other than the two are left alone.
        variables: the linen model's ``{"params": ..., "batch_stats": ...}``.
        pretrained_cfg: the data config to write; default the model's ``pretrained_cfg``, else
            timm's ResNet defaults (224 x 224, ImageNet mean and std).
        force: replace an existing ``config.json`` / ``model.safetensors``.

    Example:
        >>> se_flax.save_pretrained(model, "my-seresnet50", variables)
    """
    from flax import nnx

    from se_weights import flax_to_state_dict
    from se_weights._hub import write_pretrained

    if isinstance(model, nn.Module):
        if variables is None:
            raise TypeError("save_pretrained(linen model, directory, variables): no variables")
        source = variables
    elif isinstance(model, nnx.Module):
        if variables is not None:
            raise TypeError("an NNX model holds its variables: pass no variables")
        source = model
    else:
        raise TypeError(
            f"save_pretrained takes a linen or NNX model of se_flax.create_model, got "
            f"{type(model).__name__}"
        )
    if not hasattr(model, "config"):
        raise TypeError(
            f"save_pretrained takes a model of a registered architecture (with a config), got "
            f"{type(model).__name__}"
        )
    num_classes = 0 if model.features_only else model.num_classes
    plan = model.config.state_dict(num_classes, model.in_chans)
    tensors = flax_to_state_dict(source, plan)  # strict: every variable placed, bit for bit
    return write_pretrained(
        directory,
        tensors,
        model.config,
        in_chans=model.in_chans,
        num_classes=num_classes,
        pretrained_cfg=model.pretrained_cfg if pretrained_cfg is None else pretrained_cfg,
        force=force,
    )
