"""The conversion engine: plans where every tensor goes with the rule tables (see
:mod:`se_weights._rules`), then moves them, in either direction, strictly."""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from se_weights._arrays import is_floating, is_torch_tensor, to_numpy, to_torch
from se_weights._rules import CONTEXTS, LAYER_RULES, RULES, Context, Layout, Rule

__all__ = [
    "ConversionError",
    "DroppedTensorsWarning",
    "Rename",
    "flax_to_state_dict",
    "flax_to_torch",
    "torch_to_flax",
    "update_nnx",
]

FlaxPath = tuple[str, ...]  # (collection, module, ..., leaf)
# A function of the default Flax module path ("body_0/conv"), or (regex, replacement) pairs
# applied to it in order with re.sub.
Rename = Callable[[str], str] | Sequence[tuple[str, str]]


class ConversionError(ValueError):
    """Everything wrong with one conversion, listed at once.

    Attributes:
        missing: keys the target needs that the source lacks.
        unexpected: source keys that no rule or target takes.
        mismatched: keys present on both sides with a different shape, dtype or module type,
            and layers whose Flax layout is ambiguous without a target.
    """

    def __init__(
        self, title: str, missing: list[str], unexpected: list[str], mismatched: list[str]
    ):
        self.title = title
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        super().__init__(self.report())

    def report(self, limit: int | None = None) -> str:
        """The message, listing at most ``limit`` items per category (``None``: all)."""
        total = len(self.missing) + len(self.unexpected) + len(self.mismatched)
        lines = [f"{self.title}: {total} problem(s)"]
        for label, items in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("mismatched", self.mismatched),
        ):
            if items:
                lines.append(f"  {label} ({len(items)}):")
                shown = items if limit is None else items[:limit]
                lines.extend(f"    {item}" for item in shown)
                if len(shown) < len(items):
                    lines.append(f"    ... and {len(items) - len(shown)} more")
        return "\n".join(lines)


class DroppedTensorsWarning(UserWarning):
    """PyTorch tensors the Flax target has no place for by design (the BatchNorm counters that
    ``flax.linen.BatchNorm`` and ``nnx.BatchNorm`` lack), dropped on purpose; the message names
    every one. Nothing else is ever dropped."""


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
    flax_path: FlaxPath | None  # None: the target has no place for it (dropped, reported)
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


def _renamer(rename: Rename | None) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    """The Flax module path after ``rename``; a path renamed to "" is the top level."""
    if rename is None:
        return lambda names: names
    if callable(rename):
        apply = rename
    else:
        pairs = [(re.compile(pattern), replacement) for pattern, replacement in rename]

        def apply(path: str) -> str:
            for pattern, replacement in pairs:
                path = pattern.sub(replacement, path)
            return path

    def renamed(names: tuple[str, ...]) -> tuple[str, ...]:
        path = apply("/".join(names))
        if not isinstance(path, str):
            raise TypeError(f"rename must return a str path, got {path!r} for {names}")
        return tuple(part for part in path.split("/") if part)

    return renamed


def _class_names(module_type: type) -> set[str]:
    return {cls.__name__ for cls in module_type.__mro__}


# ------------------------------------------------------------------ by name (bare state_dicts)


# What every state_dict key the names alone cannot place says (no rule, or several).
_PASS_THE_MODULE = (
    "its name alone cannot decide: pass the torch.nn.Module itself (torch_to_flax(module)), "
    "whose layer types choose the rules, or rules="
)


@dataclass(frozen=True)
class _NoRule:
    reason: str
    wrong_type: bool  # a rule has the name but not the module's type: a mismatch, not a stray key


def _find_rule(
    module_path: str,
    module_type: type | None,
    rules: Iterable[Rule] = RULES,
    fits: Callable[[Rule], bool] | None = None,
) -> tuple[Rule, str, str] | _NoRule:
    """(rule, prefix, local name) of the name table for a PyTorch module, or why there is none.

    ``module_type`` is the module's class, or ``None`` when only a state_dict is at hand (then
    ``fits``, whether a rule takes the module's tensor names, settles a tie between rules of
    one name: timm's ``downsample.1`` is a conv after an average pool, else a BatchNorm); see
    :mod:`se_weights._rules` for how a rule is chosen.
    """
    named = []
    for rule in rules:
        if rule.torch_module is None:
            continue
        pattern = rf"(?:(?P<_prefix>.+)\.)?(?P<_local>{rule.torch_module})"
        match = re.fullmatch(pattern, module_path)
        if match:
            named.append((rule, match["_prefix"] or "", match["_local"]))
    if not named:
        return _NoRule(f"no conversion rule for module {module_path!r}", False)
    if module_type is None:
        found = [f for f in named if not f[0].by_type_only]
    else:
        types = _class_names(module_type)
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
    if len(found) > 1 and module_type is None and fits is not None:
        found = [f for f in found if fits(f[0])] or found
    if len(found) == 1:
        return found[0]
    return _NoRule(
        f"module {module_path!r} matches several rules: {[r.name for r, _, _ in found]}", False
    )


# ------------------------------------------------------------------ planning


@dataclass
class _Planner:
    """Maps each PyTorch key to its Flax path and layout, recording every key that has none.

    Attributes:
        module: the ``torch.nn.Module`` (types choose the rules), or ``None`` (names do).
        shapes: PyTorch key -> its tensor's shape.
        target: the flattened Flax variables or shapes to fit, if any.
        collections: produce only these Flax collections (``None``: all).
    """

    module: Any
    shapes: Mapping[str, tuple[int, ...]]
    problems: _Problems
    target: Mapping[FlaxPath, Any] | None = None
    collections: Container[str] | None = None
    rules: Sequence[Rule] = ()
    contexts: Sequence[Context] = ()
    rename: Callable[[tuple[str, ...]], tuple[str, ...]] = lambda names: names

    def plan(self) -> dict[str, _Entry]:
        groups: dict[str, list[str]] = {}
        for key in self.shapes:
            module_path, _, tensor = key.rpartition(".")
            groups.setdefault(module_path, []).append(tensor)
        plan: dict[str, _Entry] = {}
        for module_path, tensors in groups.items():
            if self.module is not None:
                found = self._by_type(module_path, tensors)
            else:
                found = self._by_name(module_path, tensors)
            if found is not None:
                rule, flax_module = found
                plan.update(self._entries(module_path, tensors, rule, flax_module))
        return plan

    def _by_name(self, module_path: str, tensors: list[str]) -> tuple[Rule, FlaxPath] | None:
        found = _find_rule(
            module_path, None, [*self.rules, *RULES], lambda rule: self._fits(rule, tensors)
        )
        if isinstance(found, _NoRule):
            prefix = f"{module_path}." if module_path else ""
            self.problems.unexpected.extend(
                f"{prefix}{t}: {found.reason}; {_PASS_THE_MODULE}" for t in tensors
            )
            return None
        return found[0], self._named_path(found)

    def _fits(self, rule: Rule, tensors: list[str]) -> bool:
        """Whether a module holding exactly ``tensors`` is of the rule's kind: each is one of
        its tensors, and it has every one the rule requires (of the collections asked for)."""
        held = set(tensors)
        return held <= set(rule.tensors) and all(
            name in held
            for name, spec in rule.tensors.items()
            if spec.required and self._wanted(spec.collection)
        )

    def _named_path(self, found: tuple[Rule, str, str]) -> FlaxPath:
        """The Flax module path a name-table row gives: its ``flax_module`` (``fc.0`` ->
        ``fc1``) below the matched prefix, or the PyTorch name's own; then ``rename``."""
        rule, torch_prefix, local = found
        local_names = (rule.flax_module,) if rule.flax_module else flax_names(local)
        return self.rename(flax_names(torch_prefix) + local_names)

    def _by_type(self, module_path: str, tensors: list[str]) -> tuple[Rule, FlaxPath] | None:
        module_type = type(self.module.get_submodule(module_path))
        names = _class_names(module_type)
        candidates = [r for r in (*self.rules, *LAYER_RULES) if names & set(r.torch_types)]
        prefix = f"{module_path}." if module_path else ""
        if not candidates:
            self.problems.unexpected.extend(
                f"{prefix}{t}: no conversion rule for a {module_type.__name__} (module "
                f"{module_path!r}); pass rules= to add one"
                for t in tensors
            )
            return None
        context = self._context(module_path)
        # No Context names it: the name table's row for this path and type, if any, gives the
        # Flax module path a state_dict of the same names gets (fc.0 -> fc1), so that a module
        # and its state_dict convert to the same tree; the PyTorch name's own comes second.
        named = None
        if context is None:
            found = _find_rule(module_path, module_type, [*self.rules, *RULES])
            named = None if isinstance(found, _NoRule) else found
        places = [self.rename(context[0])] if context else []
        if named is not None:
            places.append(self._named_path(named))
        default = self.rename(flax_names(module_path))
        if not context and default not in places:
            places.append(default)
        preferred = candidates[0]
        if context and context[1]:
            asked = [r for r in candidates if r.name == context[1]]
            if not asked:
                self.problems.mismatched.append(
                    f"{module_path}: its parent's context asks for rule {context[1]!r}, which "
                    f"does not take a {module_type.__name__} (its rules: "
                    f"{[r.name for r in candidates]})"
                )
                return None
            preferred = asked[0]
        if self.target is not None:  # the first place and rule whose leaves the target holds
            ordered = sorted(candidates, key=lambda r: r is not preferred)
            for place in places:
                held = self._held(place)
                for rule in ordered:
                    if self._expected(rule, module_path, tensors, place) == held:
                        return rule, place
            return preferred, places[0]
        # does the name-table row claim this layer for another layout?
        if named is not None and self._layouts(named[0]) != self._layouts(
            preferred, named[0].tensors
        ):
            options = " or ".join(
                f"{rule.name!r} ({self._describe(rule, module_path, tensors)})"
                for rule in (preferred, named[0])
            )
            self.problems.mismatched.append(
                f"{module_path}: ambiguous without a target: this {module_type.__name__} is "
                f"{options}, by its type or by its name; pass target= (the Flax variables, "
                f"or jax.eval_shape of the model's init) to choose, or rules="
            )
            return None
        return preferred, places[0]

    def _describe(self, rule: Rule, module_path: str, tensors: list[str]) -> str:
        """The Flax leaves ``rule`` would make, e.g. ``kernel (1, 1, 8, 32), bias (32,)``."""
        expected = self._expected(rule, module_path, tensors, ()) or {}
        return ", ".join(f"{path[-1]} {shape}" for path, shape in expected.items())

    @staticmethod
    def _layouts(rule: Rule, names: Iterable[str] | None = None) -> dict[str, str]:
        names = rule.tensors if names is None else names
        return {t: rule.tensors[t].layout.name for t in names if t in rule.tensors}

    def _context(self, module_path: str) -> tuple[FlaxPath, str | None] | None:
        """The Flax module path and preferred rule the nearest library ancestor gives a child,
        or ``None`` when no :class:`Context` names it."""
        segments = module_path.split(".") if module_path else []
        for depth in range(len(segments) - 1, -1, -1):
            parent = ".".join(segments[:depth])
            child = ".".join(segments[depth:])
            names = _class_names(type(self.module.get_submodule(parent)))
            for context in (*self.contexts, *CONTEXTS):
                if names & set(context.torch_types) and child in context.children:
                    spec = context.children[child]
                    local = tuple(spec.flax_name.split("/")) if spec.flax_name else None
                    return flax_names(parent) + (local or flax_names(child)), spec.rule
        return None

    def _wanted(self, collection: str | None) -> bool:
        return collection is not None and (
            self.collections is None or collection in self.collections
        )

    def _expected(
        self, rule: Rule, module_path: str, tensors: list[str], flax_module: FlaxPath
    ) -> dict[FlaxPath, tuple[int, ...]] | None:
        """The Flax leaves and shapes ``rule`` makes of these tensors; ``None`` if it cannot."""
        prefix = f"{module_path}." if module_path else ""
        expected = {}
        for tensor in tensors:
            spec = rule.tensors.get(tensor)
            if spec is None:
                return None
            shape = tuple(self.shapes[prefix + tensor])
            if not spec.layout.fits(shape):
                return None
            if self._wanted(spec.collection):
                expected[(spec.collection, *flax_module, spec.name)] = spec.layout.flax_shape(shape)
        return expected

    def _held(self, flax_module: FlaxPath) -> dict[FlaxPath, tuple[int, ...]]:
        """The target's own leaves of a Flax module (not its children's)."""
        depth = len(flax_module) + 2
        return {
            path: tuple(leaf.shape)
            for path, leaf in self.target.items()
            if len(path) == depth and path[1:-1] == flax_module and self._wanted(path[0])
        }

    def _entries(
        self, module_path: str, tensors: list[str], rule: Rule, flax_module: FlaxPath
    ) -> dict[str, _Entry]:
        prefix = f"{module_path}." if module_path else ""
        entries = {}
        for tensor in tensors:
            spec = rule.tensors.get(tensor)
            if spec is None:
                self.problems.unexpected.append(
                    f"{prefix}{tensor}: rule {rule.name!r} has no tensor {tensor!r}"
                )
            elif spec.collection is None:
                entries[prefix + tensor] = _Entry(None, spec.layout)
            elif not self._wanted(spec.collection):
                self.problems.unexpected.append(
                    f"{prefix}{tensor}: goes to {spec.collection!r}, not one of the requested "
                    f"collections {tuple(self.collections)}"
                )
            else:
                path = (spec.collection, *flax_module, spec.name)
                entries[prefix + tensor] = _Entry(path, spec.layout)
        for tensor, spec in rule.tensors.items():
            if spec.required and self._wanted(spec.collection) and tensor not in tensors:
                self.problems.missing.append(f"{prefix}{tensor} (rule {rule.name!r} requires it)")
        return entries


# ------------------------------------------------------------------ the three entry points


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


def _planner(
    module: Any,
    shapes: Mapping[str, tuple[int, ...]],
    problems: _Problems,
    *,
    target: Mapping[FlaxPath, Any] | None,
    collections: Iterable[str] | None,
    rename: Rename | None,
    rules: Iterable[Rule | Context] | None,
) -> _Planner:
    """The planner of one conversion, with the user's ``rules=`` and ``rename=`` checked."""
    rules = list(rules or ())
    bad = [r for r in rules if not isinstance(r, (Rule, Context))]
    if bad:
        raise TypeError(f"rules= takes Rule and Context objects, got {bad!r}")
    return _Planner(
        module,
        shapes,
        problems,
        target=target,
        collections=None if collections is None else tuple(collections),
        rules=[r for r in rules if isinstance(r, Rule)],
        contexts=[r for r in rules if isinstance(r, Context)],
        rename=_renamer(rename),
    )


def torch_to_flax(
    source: Any,
    *,
    target: Any = None,
    collections: Iterable[str] | None = None,
    rename: Rename | None = None,
    rules: Iterable[Rule | Context] | None = None,
) -> dict[str, dict[str, Any]]:
    """Converts PyTorch weights to Flax variables.

    Args:
        source: a ``torch.nn.Module``, whose layer *types* choose the rules whatever their names
            (:data:`se_convert.LAYER_RULES`), or a state_dict-like mapping of name -> torch
            tensor / NumPy array / JAX array, e.g. one read from a safetensors file (no torch
            needed for NumPy input), whose *names* choose (:data:`se_convert.RULES`). Where the
            name table knows a layer's name, both give it the same Flax name (the classic
            recipe's ``fc.0`` is ``fc1``), so a module and its state_dict convert alike.
        target: optional Flax variables (arrays or ``jax.ShapeDtypeStruct``, e.g. from
            ``jax.eval_shape(model.init, ...)``), or an NNX module, that the result must match
            exactly: every leaf present, nothing extra, same shapes and dtypes. With a module
            source it also picks each layer's Flax layout where a type has two (a 1x1 Conv2d as
            a ``Dense`` or a ``Conv`` kernel; a BatchNorm with or without a counter).
        collections: produce only these Flax collections, e.g. ``("params",)`` to convert
            gradients or ``dict(module.named_parameters())``; tensors of other collections are
            then neither required nor accepted.
        rename: maps the default Flax module paths (PyTorch's with ``a.b.0.c`` as ``a/b_0/c``)
            to the target's: a function of the path, or ``(regex, replacement)`` pairs applied
            in order with ``re.sub``.
        rules: extra :class:`se_convert.Rule` (a layer type of one's own) and
            :class:`se_convert.Context` rows, tried before the built-in ones.

    Returns:
        ``{"params": ...}`` plus ``"batch_stats"`` when the source has BatchNorm statistics;
        JAX arrays with the source's exact bits and dtypes.

    Raises:
        ConversionError: listing every missing, unexpected and mismatched key at once.

    Warns:
        DroppedTensorsWarning: naming the BatchNorm counters a target without them (Flax's
            own BatchNorm) has no place for.

    Example:
        >>> variables = torch_to_flax(se_torch.SqueezeExcite(64))
        >>> se_flax.SqueezeExcite().apply(variables, x_nhwc)
    """
    state_dict, module = _as_state_dict(source)
    problems = _Problems()
    target_flat = None if target is None else _flat_flax(target)
    plan = _planner(
        module,
        {k: np.shape(v) for k, v in state_dict.items()},
        problems,
        target=target_flat if module is not None else None,
        collections=collections,
        rename=rename,
        rules=rules,
    ).plan()
    flat: dict[FlaxPath, np.ndarray] = {}
    dropped = []
    origin: dict[FlaxPath, str] = {}  # which source key each Flax path came from
    for key, entry in plan.items():
        if entry.flax_path is not None and entry.flax_path in origin:
            problems.unexpected.append(
                f"{key}: lands on {_fmt(entry.flax_path)}, as {origin[entry.flax_path]} does "
                f"(two source keys for one variable)"
            )
            continue
        if entry.flax_path is not None:
            origin[entry.flax_path] = key
        if is_torch_tensor(state_dict[key]) and state_dict[key].is_meta:
            problems.mismatched.append(
                f"{key}: on the meta device, it has no values to convert (load or materialize "
                f"the module first)"
            )
            continue
        try:
            array = to_numpy(state_dict[key])
        except TypeError as e:
            problems.mismatched.append(f"{key}: {e}")
            continue
        reason = entry.layout.torch_problem(array.shape, str(array.dtype))
        if reason is None and array.dtype == np.float64 and not jax.config.jax_enable_x64:
            reason = "float64 needs jax_enable_x64=True (JAX would silently make it float32)"
        if reason is None and entry.flax_path is None:
            dropped.append(key)
            continue
        if reason is None:
            try:
                flat[entry.flax_path] = np.array(entry.layout.to_flax(array), order="C")
            except ValueError as e:
                reason = str(e)
        if reason is not None:
            problems.mismatched.append(f"{key}: {reason}")
    if target_flat is not None:
        _compare(flat, target_flat, problems, side="target")
    problems.raise_if_any("cannot convert PyTorch weights to Flax")
    if dropped:
        warnings.warn(
            f"dropped {len(dropped)} BatchNorm counter(s) the Flax target has no place for: "
            f"{', '.join(dropped)}",
            DroppedTensorsWarning,
            stacklevel=2,
        )
    return traverse_util.unflatten_dict({p: jnp.asarray(a) for p, a in flat.items()})


def flax_to_torch(
    variables: Any,
    module: Any,
    *,
    rename: Rename | None = None,
    rules: Iterable[Rule | Context] | None = None,
    keep_counters: bool = False,
) -> Any:
    """Loads Flax variables into a PyTorch module, in place, with ``strict=True`` semantics.

    Args:
        variables: linen variables (``{"params": ..., "batch_stats": ...}``) or an NNX module.
        module: the ``torch.nn.Module`` to fill, of any structure: its layer types choose the
            rules, and the variables' shapes each layer's layout. It may be built on the
            ``meta`` device (``with torch.device("meta"): ...``), wholly or in part: each
            meta parameter and buffer of its state_dict is then replaced by a CPU tensor
            holding the converted values (parameters stay ``nn.Parameter`` with the module's
            ``requires_grad``, tied ones stay one tensor), what ``load_state_dict(...,
            assign=True)`` does for them; its other tensors are copied into, as always, and
            keep their identity and device. A meta buffer outside the state_dict
            (non-persistent) has no values to get: an error.
        rename: as in :func:`torch_to_flax` (the same mapping, so a round trip needs the same).
        rules: as in :func:`torch_to_flax`.
        keep_counters: variables of Flax's own BatchNorm have no ``num_batches_tracked``; by
            default that is an error, with this the module keeps its own counters (not meta
            ones: those have no value to keep, an error).

    Returns:
        ``module``, with every tensor replaced by the converted one (same bits, same dtype).

    Raises:
        ConversionError: listing every missing, unexpected and mismatched key (shape, dtype or
            module type; tied tensors, one Parameter or buffer under several keys as in
            ``m.fc2.weight = m.fc1.weight``, that the variables give different bits) at once;
            the module is left untouched.
    """
    flat = _flat_flax(variables)
    current = module.state_dict(keep_vars=True)  # the module's own tensors, ties included
    problems = _Problems()
    plan = _planner(
        module,
        {k: tuple(v.shape) for k, v in current.items()},
        problems,
        target=flat,
        collections=None,
        rename=rename,
        rules=rules,
    ).plan()
    torch_layout = _from_flax(
        flat,
        plan,
        {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in current.items()},
        problems,
        side="module",
    )
    for keys in _tied(current):
        given = [k for k in keys if k in torch_layout]
        if len({torch_layout[k].tobytes() for k in given}) > 1:
            problems.mismatched.append(
                f"{' and '.join(keys)}: one tensor in the module (tied), but the variables give "
                f"them different values ({' and '.join(_fmt(plan[k].flax_path) for k in given)}):"
                f" loading both would leave only the last"
            )
    for name, buffer in module.named_buffers(remove_duplicate=False):
        if buffer is not None and buffer.is_meta and name not in current:
            problems.missing.append(
                f"{name} (a non-persistent buffer on the meta device: in no state_dict, so the "
                f"variables cannot give it values; build it on a real device)"
            )
    converted = {}
    for key, entry in plan.items():
        if entry.flax_path is None:  # a counter Flax's own BatchNorm does not keep
            if keep_counters and not current[key].is_meta:
                converted[key] = current[key].detach()
            elif keep_counters:
                problems.missing.append(
                    f"{key} (the variables' BatchNorm has no counter, and the module's own is "
                    f"on the meta device: keep_counters=True has no value to keep)"
                )
            else:
                problems.missing.append(
                    f"{key} (the variables' BatchNorm has no counter; keep_counters=True keeps "
                    f"the module's own)"
                )
        elif key in torch_layout:
            converted[key] = to_torch(torch_layout[key])
    problems.raise_if_any(f"cannot load Flax variables into {type(module).__name__}")
    undo = _materialize_meta(module, current)
    try:
        module.load_state_dict(converted, strict=True)
    except BaseException:
        for owner, name, tensor in reversed(undo):
            setattr(owner, name, tensor)
        raise
    return module


def _tied(tensors: Mapping[str, Any]) -> list[list[str]]:
    """The groups of state_dict keys that name one tensor of the module (tied weights, e.g.
    ``m.fc2.weight = m.fc1.weight``): the same object, or views of the same memory with the same
    offset, shape, strides and dtype. Only groups of two keys or more."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for key, tensor in tensors.items():
        dense = not tensor.is_meta and tensor.layout == _torch().strided and tensor.numel()
        identity = (
            (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
            if dense
            else (id(tensor),)
        )
        groups.setdefault(identity, []).append(key)
    return [keys for keys in groups.values() if len(keys) > 1]


def _materialize_meta(module: Any, tensors: Mapping[str, Any]) -> list[tuple[Any, str, Any]]:
    """Replaces each meta tensor among ``tensors`` (the module's state_dict, kept as its own
    objects) by an uninitialized CPU tensor of its shape, dtype and strides, for
    ``load_state_dict`` to copy into: a parameter by an ``nn.Parameter`` with its
    ``requires_grad``, and one tensor under several names (tied) by one new tensor. Returns
    (owner module, name, old tensor) of each replacement, to undo them."""
    torch = _torch()
    wanted = {id(t) for t in tensors.values() if t.is_meta}
    if not wanted:
        return []
    new: dict[int, Any] = {}
    undo = []
    for _, owner in module.named_modules(remove_duplicate=False):
        for slots, is_param in ((owner._parameters, True), (owner._buffers, False)):
            for name, old in list(slots.items()):
                if old is None or id(old) not in wanted:
                    continue
                if id(old) not in new:
                    empty = torch.empty_like(old, device="cpu")
                    new[id(old)] = (
                        torch.nn.Parameter(empty, requires_grad=old.requires_grad)
                        if is_param
                        else empty
                    )
                undo.append((owner, name, old))
                setattr(owner, name, new[id(old)])
    return undo


def _torch() -> Any:
    """torch, which holding a module's tensors means is imported already (the converter never
    imports it: se_weights/_arrays.py does, to move tensors)."""
    return sys.modules["torch"]


def _from_flax(
    flat: Mapping[FlaxPath, Any],
    plan: Mapping[str, _Entry],
    wanted: Mapping[str, tuple[tuple[int, ...], str]],
    problems: _Problems,
    side: str,
) -> dict[str, np.ndarray]:
    """Each planned key's tensor in PyTorch's layout, NumPy, from the Flax leaves ``flat``:
    checked against ``wanted`` (key -> PyTorch shape and dtype name); every problem recorded,
    and every leaf no key takes is unexpected. Keys without a Flax place are left out."""
    arrays, used = {}, set()
    for key, entry in plan.items():
        if entry.flax_path is None:
            continue
        if entry.flax_path not in flat:
            problems.missing.append(f"{_fmt(entry.flax_path)} (for {key})")
            continue
        if entry.flax_path in used:
            problems.mismatched.append(
                f"{key}: would take {_fmt(entry.flax_path)}, which another key takes (two "
                f"{side} keys for one variable)"
            )
            continue
        used.add(entry.flax_path)
        array = to_numpy(flat[entry.flax_path])
        shape, dtype = wanted[key]
        reason = entry.layout.torch_problem(shape, dtype)
        if reason is not None:
            problems.mismatched.append(f"{key}: the {side}'s {reason}")
            continue
        want = (entry.layout.flax_shape(shape), entry.layout.dtypes[dtype])
        if (array.shape, str(array.dtype)) != want:
            problems.mismatched.append(
                f"{_fmt(entry.flax_path)}: {array.shape} {array.dtype}, {side} {key} needs "
                f"{want[0]} {want[1]}"
            )
            continue
        arrays[key] = np.asarray(entry.layout.to_torch(array), order="C")
    problems.unexpected.extend(
        f"{_fmt(p)} (no key of the {side} takes it)" for p in flat if p not in used
    )
    return arrays


def flax_to_state_dict(
    variables: Any,
    plan: Mapping[str, Any],
    *,
    rules: Iterable[Rule | Context] | None = None,
) -> dict[str, np.ndarray]:
    """Flax variables as a PyTorch state_dict of NumPy arrays, without torch: the keys and
    shapes come from ``plan`` (e.g. a family config's ``state_dict(num_classes, in_chans)``),
    each key's Flax place and layout from the name table (:data:`se_convert.RULES`), the same
    plan the hub reader loads with.

    Args:
        variables: linen variables or an NNX module, of one floating dtype.
        plan: PyTorch key -> :class:`se_common.TensorSpec` (shape, ``"float"`` or ``"int64"``).
        rules: extra name rules, tried before the built-in ones.

    Returns:
        key -> array in PyTorch's layout (floats in the variables' dtype, counters int64),
        bit for bit, in ``plan``'s order.

    Raises:
        ConversionError: every planned key without its variable, every variable no key takes,
            every shape or dtype that differs, at once.
    """
    flat = _flat_flax(variables)
    floats = {str(np.dtype(v.dtype)) for v in flat.values() if is_floating(np.dtype(v.dtype))}
    problems = _Problems()
    if len(floats) != 1:
        problems.mismatched.append(
            f"the variables hold {', '.join(sorted(floats)) or 'no'} floating dtype(s): a "
            f"state_dict is written in one"
        )
        problems.raise_if_any("cannot write Flax variables as a PyTorch state_dict")
    dtype = floats.pop()
    wanted = {
        k: (tuple(spec.shape), dtype if spec.dtype == "float" else spec.dtype)
        for k, spec in plan.items()
    }
    entries = _planner(
        None,
        {k: shape for k, (shape, _) in wanted.items()},
        problems,
        target=None,
        collections=None,
        rename=None,
        rules=rules,
    ).plan()
    arrays = _from_flax(flat, entries, wanted, problems, side="state_dict plan")
    problems.raise_if_any("cannot write Flax variables as a PyTorch state_dict")
    return {k: arrays[k] for k in plan}


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
    nnx.replace_by_pure_dict(params, _int_keys(variables.get("params", {})))
    nnx.replace_by_pure_dict(stats, _int_keys(variables.get("batch_stats", {})))
    nnx.update(model, params, stats)
    return model


def _int_keys(tree: Any) -> Any:
    """NNX lists (``nnx.Sequential``'s ``layers``) are keyed by ints; flattened paths by str."""
    if not isinstance(tree, Mapping):
        return tree
    return {
        int(k) if isinstance(k, str) and k.isdigit() else k: _int_keys(v) for k, v in tree.items()
    }
