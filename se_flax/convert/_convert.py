"""The conversion engine: applies the rule table in either direction, strictly."""

from __future__ import annotations

import re
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from se_flax.convert._arrays import to_numpy, to_torch
from se_flax.convert._rules import RULES, Layout, Rule

__all__ = ["ConversionError", "flax_to_torch", "torch_to_flax", "update_nnx"]

FlaxPath = tuple[str, ...]  # (collection, module, ..., leaf)


class ConversionError(ValueError):
    """Everything wrong with one conversion, listed at once.

    Attributes:
        missing: keys the target needs that the source lacks.
        unexpected: source keys that no rule or target takes.
        mismatched: keys present on both sides with a different shape, dtype or module type.
    """

    def __init__(
        self, title: str, missing: list[str], unexpected: list[str], mismatched: list[str]
    ):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = [f"{title}: {len(missing) + len(unexpected) + len(mismatched)} problem(s)"]
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mismatched", mismatched),
        ):
            if items:
                lines.append(f"  {label} ({len(items)}):")
                lines.extend(f"    {item}" for item in items)
        super().__init__("\n".join(lines))


@dataclass
class _Problems:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def raise_if_any(self, title: str) -> None:
        if self.missing or self.unexpected or self.mismatched:
            raise ConversionError(title, self.missing, self.unexpected, self.mismatched)


@dataclass(frozen=True)
class _Entry:
    flax_path: FlaxPath
    layout: Layout


def flax_names(torch_path: str) -> tuple[str, ...]:
    """The Flax module path of a PyTorch module path: ``layer1.0.se`` -> ``(layer1_0, se)``.

    Numbered children of PyTorch containers become ``name_i``, linen's own naming of lists.
    """
    names: list[str] = []
    for segment in torch_path.split(".") if torch_path else ():
        if segment.isdigit() and names:
            names[-1] = f"{names[-1]}_{segment}"
        else:
            names.append(segment)
    return tuple(names)


_PATTERNS = [
    (rule, re.compile(rf"(?:(?P<_prefix>.+)\.)?(?P<_local>{rule.torch_module})")) for rule in RULES
]


@dataclass(frozen=True)
class _NoRule:
    reason: str
    wrong_type: bool  # a rule has the name but not the module's type: a mismatch, not a stray key


def _find_rule(module_path: str, module_type: type | None) -> tuple[Rule, str, str] | _NoRule:
    """(rule, prefix, local name) for a PyTorch module, or why there is none.

    ``module_type`` is the module's class, or ``None`` when only a state_dict is at hand; see
    :mod:`se_flax.convert._rules` for how a rule is chosen.
    """
    named = []
    for rule, pattern in _PATTERNS:
        match = pattern.fullmatch(module_path)
        if match:
            named.append((rule, match["_prefix"] or "", match["_local"]))
    if not named:
        return _NoRule(f"no conversion rule for module {module_path!r}", False)
    if module_type is None:
        found = [f for f in named if not f[0].by_type_only]
    else:
        types = {cls.__name__ for cls in module_type.__mro__}
        found = [f for f in named if types & set(f[0].torch_types)]
        if not found:
            kinds = " or ".join(sorted({t for rule, _, _ in named for t in rule.torch_types}))
            return _NoRule(
                f"{module_path}: is a {module_type.__name__}, rules named so "
                f"{[r.name for r, _, _ in named]} expect {kinds}",
                True,
            )
    longest = max(local.count(".") for _, _, local in found)
    found = [f for f in found if f[2].count(".") == longest]
    if len(found) == 1:
        return found[0]
    return _NoRule(
        f"module {module_path!r} matches several rules: {[r.name for r, _, _ in found]}", False
    )


def _plan(
    torch_keys: Iterable[str],
    module: Any,
    problems: _Problems,
    collections: Container[str] | None = None,
) -> dict[str, _Entry]:
    """Maps each PyTorch key to its Flax path and layout, recording every key that has none.

    With ``collections``, only tensors going to those Flax collections are expected.
    """
    groups: dict[str, list[str]] = {}
    for key in torch_keys:
        module_path, _, tensor = key.rpartition(".")
        groups.setdefault(module_path, []).append(tensor)
    plan = {}
    for module_path, tensors in groups.items():
        prefix = f"{module_path}." if module_path else ""
        module_type = None if module is None else type(module.get_submodule(module_path))
        found = _find_rule(module_path, module_type)
        if isinstance(found, _NoRule):
            if found.wrong_type:
                problems.mismatched.append(found.reason)
            else:
                problems.unexpected.extend(f"{prefix}{t}: {found.reason}" for t in tensors)
            continue
        rule, torch_prefix, local = found
        flax_module = flax_names(torch_prefix) + (
            (rule.flax_module,) if rule.flax_module else flax_names(local)
        )
        for tensor in tensors:
            spec = rule.tensors.get(tensor)
            if spec is None:
                problems.unexpected.append(
                    f"{prefix}{tensor}: rule {rule.name!r} has no tensor {tensor!r}"
                )
            elif collections is not None and spec.collection not in collections:
                problems.unexpected.append(
                    f"{prefix}{tensor}: goes to {spec.collection!r}, not one of the requested "
                    f"collections {tuple(collections)}"
                )
            else:
                path = (spec.collection, *flax_module, spec.name)
                plan[f"{prefix}{tensor}"] = _Entry(path, spec.layout)
        for tensor, spec in rule.tensors.items():
            wanted = collections is None or spec.collection in collections
            if spec.required and wanted and tensor not in tensors:
                problems.missing.append(f"{prefix}{tensor} (rule {rule.name!r} requires it)")
    return plan


def _fmt(path: FlaxPath) -> str:
    return "/".join(path)


def _compare(
    got: Mapping[FlaxPath, Any], want: Mapping[FlaxPath, Any], problems: _Problems, side: str
) -> None:
    """Records leaves missing from ``got``, extra in it, or shaped/typed unlike ``want``."""
    problems.missing.extend(f"{_fmt(p)} (in the {side})" for p in want if p not in got)
    problems.unexpected.extend(f"{_fmt(p)} (not in the {side})" for p in got if p not in want)
    for p in got.keys() & want.keys():
        g, w = got[p], want[p]
        if tuple(g.shape) != tuple(w.shape) or np.dtype(g.dtype) != np.dtype(w.dtype):
            problems.mismatched.append(
                f"{_fmt(p)}: {tuple(g.shape)} {np.dtype(g.dtype)}, the {side} has "
                f"{tuple(w.shape)} {np.dtype(w.dtype)}"
            )


def _flat_flax(variables: Any) -> dict[FlaxPath, Any]:
    """Flattens linen variables, or the Param/BatchStat state of an NNX module."""
    from flax import nnx

    if isinstance(variables, nnx.Module):
        _, params, stats, _ = nnx.split(variables, nnx.Param, nnx.BatchStat, ...)
        variables = {"params": nnx.to_pure_dict(params), "batch_stats": nnx.to_pure_dict(stats)}
    if not isinstance(variables, Mapping):
        raise TypeError(
            f"expected Flax variables (a mapping like {{'params': ...}}) or an NNX module, got "
            f"{type(variables).__name__}"
        )
    flat = traverse_util.flatten_dict(dict(variables))
    return {tuple(str(k) for k in path): leaf for path, leaf in flat.items()}


def _as_state_dict(source: Any) -> tuple[Mapping[str, Any], Any]:
    if hasattr(source, "state_dict") and hasattr(source, "get_submodule"):
        return source.state_dict(), source
    if isinstance(source, Mapping):
        return source, None
    raise TypeError(
        f"expected a torch.nn.Module or a state_dict-like mapping of name -> tensor/array, got "
        f"{type(source).__name__}"
    )


def torch_to_flax(
    source: Any, *, target: Any = None, collections: Iterable[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Converts PyTorch weights to Flax variables.

    Args:
        source: a ``torch.nn.Module`` (its module types are checked against the rules) or a
            state_dict-like mapping of name -> torch tensor / NumPy array / JAX array, e.g. one
            read from a safetensors file (no torch needed for NumPy input).
        target: optional Flax variables (arrays or ``jax.ShapeDtypeStruct``, e.g. from
            ``jax.eval_shape(model.init, ...)``) the result must match exactly: every leaf
            present, nothing extra, same shapes and dtypes.
        collections: produce only these Flax collections, e.g. ``("params",)`` to convert
            gradients or ``dict(module.named_parameters())``; tensors of other collections are
            then neither required nor accepted.

    Returns:
        ``{"params": ...}`` plus ``"batch_stats"`` when the source has BatchNorm statistics;
        JAX arrays with the source's exact bits and dtypes.

    Raises:
        ConversionError: listing every missing, unexpected and mismatched key at once.

    Example:
        >>> variables = torch_to_flax(se_torch.SqueezeExcite(64))
        >>> se_flax.SqueezeExcite().apply(variables, x_nhwc)
    """
    state_dict, module = _as_state_dict(source)
    problems = _Problems()
    wanted = None if collections is None else tuple(collections)
    plan = _plan(state_dict.keys(), module, problems, wanted)
    flat: dict[FlaxPath, np.ndarray] = {}
    for key, entry in plan.items():
        try:
            array = to_numpy(state_dict[key])
        except TypeError as e:
            problems.mismatched.append(f"{key}: {e}")
            continue
        reason = entry.layout.torch_problem(array.shape, str(array.dtype))
        if reason is None and array.dtype == np.float64 and not jax.config.jax_enable_x64:
            reason = "float64 needs jax_enable_x64=True (JAX would silently make it float32)"
        if reason is None:
            try:
                flat[entry.flax_path] = np.array(entry.layout.to_flax(array), order="C")
            except ValueError as e:
                reason = str(e)
        if reason is not None:
            problems.mismatched.append(f"{key}: {reason}")
    if target is not None:
        _compare(flat, _flat_flax(target), problems, side="target")
    problems.raise_if_any("cannot convert PyTorch weights to Flax")
    return traverse_util.unflatten_dict({p: jnp.asarray(a) for p, a in flat.items()})


def flax_to_torch(variables: Any, module: Any) -> Any:
    """Loads Flax variables into a PyTorch module, in place, with ``strict=True`` semantics.

    Args:
        variables: linen variables (``{"params": ..., "batch_stats": ...}``) or an NNX module.
        module: the ``torch.nn.Module`` to fill: ``se_torch.SELayer``/``SqueezeExcite`` or any
            module with the classic, timm or torchvision key layout.

    Returns:
        ``module``, with every tensor replaced by the converted one (same bits, same dtype).

    Raises:
        ConversionError: listing every missing, unexpected and mismatched key (shape, dtype or
            module type) at once; the module is left untouched.
    """
    flat = _flat_flax(variables)
    target = module.state_dict()
    problems = _Problems()
    plan = _plan(target.keys(), module, problems)
    converted, used = {}, set()
    for key, entry in plan.items():
        if entry.flax_path not in flat:
            problems.missing.append(f"{_fmt(entry.flax_path)} (for {key})")
            continue
        used.add(entry.flax_path)
        array = to_numpy(flat[entry.flax_path])
        shape, dtype = tuple(target[key].shape), str(target[key].dtype).removeprefix("torch.")
        reason = entry.layout.torch_problem(shape, dtype)
        if reason is not None:
            problems.mismatched.append(f"{key}: the module's {reason}")
            continue
        want = (entry.layout.flax_shape(shape), entry.layout.dtypes[dtype])
        if (array.shape, str(array.dtype)) != want:
            problems.mismatched.append(
                f"{_fmt(entry.flax_path)}: {array.shape} {array.dtype}, module {key} needs "
                f"{want[0]} {want[1]}"
            )
            continue
        converted[key] = to_torch(entry.layout.to_torch(array))
    problems.unexpected.extend(
        f"{_fmt(p)} (no key of the module takes it)" for p in flat if p not in used
    )
    problems.raise_if_any(f"cannot load Flax variables into {type(module).__name__}")
    module.load_state_dict(converted, strict=True)
    return module


def update_nnx(model: Any, variables: Mapping[str, Any]) -> Any:
    """Loads linen-style variables (e.g. from :func:`torch_to_flax`) into an NNX module, strictly.

    Args:
        model: an NNX module such as ``se_flax.nnx.SqueezeExcite``.
        variables: ``{"params": ..., "batch_stats": ...}`` with the module's exact structure.

    Returns:
        ``model``, updated in place.

    Raises:
        ConversionError: listing every missing, unexpected and mismatched leaf at once.
    """
    from flax import nnx

    problems = _Problems()
    _compare(_flat_flax(variables), _flat_flax(model), problems, side="NNX module")
    problems.raise_if_any(f"cannot load variables into {type(model).__name__}")
    _, params, stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    nnx.replace_by_pure_dict(params, dict(variables.get("params", {})))
    nnx.replace_by_pure_dict(stats, dict(variables.get("batch_stats", {})))
    nnx.update(model, params, stats)
    return model
