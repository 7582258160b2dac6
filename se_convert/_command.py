"""``convert_file``: the orchestration behind ``se-convert`` (read, convert, write, verify).

It sits above both twins: building a model by name (``--model``) and running both frameworks
(``--verify``) import ``se_torch`` and ``se_flax``, when asked for.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from se_common import get_model
from se_convert._models import DEFAULT_OPTIONS, SE_BLOCKS, Model
from se_weights._arrays import is_floating, to_numpy, to_torch
from se_weights._convert import ConversionError, _Planner, _Problems, flax_to_torch, torch_to_flax
from se_weights._formats import (
    FORMATS,
    FileError,
    Framework,
    Weights,
    _flatten_flax,
    file_format,
    save,
)
from se_weights._hub import misfits
from se_weights._load import load

__all__ = ["convert_file"]

# A backbone's options its weights show: option -> (the command's flag, the Family field naming
# the module whose PyTorch weight holds it, and that weight's axis: Linear (classes, features),
# Conv2d (out, in_chans, kH, kW)).
OPTIONS = {
    "num_classes": ("--num-classes", "classifier", 0),
    "in_chans": ("--in-chans", "first_conv", 1),
}


def _float_dtype(weights: Weights) -> np.dtype | None:
    """The one floating dtype of a checkpoint's tensors, None if it has several (or none)."""
    floats = {v.dtype for v in weights.tensors.values() if is_floating(v.dtype)}
    return floats.pop() if len(floats) == 1 else None


def _in_dtype(target: Any, dtype: np.dtype | None) -> Any:
    """``target``'s float32 leaves in the checkpoint's floating dtype (a bf16 file stays bf16)."""
    import jax

    if target is None or dtype is None:
        return target
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, dtype if s.dtype == np.float32 else s.dtype),
        target,
    )


def _shape(shape: tuple[int | str, ...]) -> str:
    """A shape as Python writes a tuple, its named widths (``rd``, ``C``) unquoted."""
    items = [str(d) for d in shape]
    return f"({', '.join(items)}{',' if len(items) == 1 else ''})"


def _torch_problems(tensors: dict[str, np.ndarray], model: Model) -> _Problems:
    """PyTorch-layout ``tensors`` against ``model``'s framework-free state_dict plan: every key
    missing, unexpected or of another shape or dtype kind, and more than one floating dtype."""
    plan, problems = model.torch_plan(tensors)
    side = f"{model.name} model"
    floats = sorted({np.dtype(v.dtype).name for v in tensors.values() if is_floating(v.dtype)})
    floating = floats[0] if len(floats) == 1 else "float"

    def wanted(key: str) -> str:
        spec = plan[key]
        return f"{_shape(spec.shape)} {floating if spec.dtype == 'float' else spec.dtype}"

    found = _Problems(mismatched=list(problems))
    found.missing.extend(f"{k} {wanted(k)} (in the {side})" for k in plan if k not in tensors)
    for key, value in tensors.items():
        shape, dtype = tuple(np.shape(value)), np.dtype(value.dtype)
        spec = plan.get(key)
        if spec is None:
            found.unexpected.append(f"{key} {_shape(shape)} {dtype} (not in the {side})")
        elif misfits(shape, dtype, spec):
            found.mismatched.append(f"{key}: {_shape(shape)} {dtype}, the {side} has {wanted(key)}")
    if len(floats) > 1:
        found.mismatched.append(
            f"floating dtypes {', '.join(floats)}: the {side}'s weights are of one"
        )
    return found


def _fails(problems: _Problems) -> bool:
    return bool(problems.missing or problems.unexpected or problems.mismatched)


def _check_torch(tensors: dict[str, np.ndarray], model: Model) -> None:
    """PyTorch-layout ``tensors`` against ``model``'s PyTorch state_dict, strictly and without
    torch (ConversionError): the keys, shapes and dtype kinds of the source's own layout."""
    problems = _torch_problems(tensors, model)
    title = f"the weights do not fit --model {model.name}"
    if model.is_se_block and _fails(problems):
        fitting = [
            n
            for n in SE_BLOCKS
            if n != model.name and not _fails(_torch_problems(tensors, Model(n)))
        ]
        if fitting:
            title += f" (they are a bare {fitting[0]!r} block's: --model {fitting[0]})"
    problems.raise_if_any(title)


def _shown(weights: Weights, module: str) -> tuple[str, tuple[int, ...], tuple[int, ...]] | None:
    """Where ``weights`` hold PyTorch module ``module``'s weight (its Flax path by the name
    table): the key, its shape there and its shape in PyTorch's layout; None where they hold
    none, or none of the name table's layer."""
    key = f"{module}.weight"
    entry = _Planner(None, {key: ()}, _Problems()).plan().get(key)
    if entry is None or entry.flax_path is None:
        return None
    if weights.framework == "flax":
        key = "/".join(entry.flax_path)
    if key not in weights.tensors:
        return None
    shape = tuple(np.shape(weights.tensors[key]))
    torch_shape = shape
    if weights.framework == "flax":
        try:
            moved = entry.layout.to_torch(np.broadcast_to(np.zeros((), np.int8), shape))
        except (ValueError, IndexError):
            return None
        torch_shape = tuple(moved.shape)
    return (key, shape, torch_shape) if entry.layout.fits(torch_shape) else None


@dataclass(frozen=True)
class _Option:
    """A backbone's ``num_classes`` or ``in_chans``: its value, where it came from (``None``: the
    default) and what the weights show of it (their key, its shape there, the value)."""

    name: str
    value: int
    origin: str | None
    shown: tuple[str, tuple[int, ...], int] | None

    @property
    def flag(self) -> str:
        return OPTIONS[self.name][0]

    def describe(self) -> str:
        return f"{self.name} {self.value} {self.origin or 'by default'}"

    def hint(self) -> str | None:
        """How to fix a value the weights contradict."""
        if self.shown is not None and self.shown[2] != self.value:
            key, shape, value = self.shown
            return f"{key} {_shape(shape)} shows {self.name} {value}: pass {self.flag} {value}"
        return None


def _check_count(name: str, value: Any, least: int) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or value < least
    ):
        raise FileError(f"{name} must be an integer >= {least}, got {value!r}")


def _backbone_options(
    weights: Weights,
    name: str,
    explicit: dict[str, int | None],
    recorded: dict[str, int],
    source: str | os.PathLike,
) -> dict[str, _Option]:
    """``num_classes`` and ``in_chans`` of backbone ``name``: an explicit option, else what the
    file records, else what the weights show (the family's classifier and first conv), else the
    default. A record the weights contradict is a FileError naming the option that fixes it."""
    family = get_model(name).family
    chosen = {}
    for option, (flag, field_name, axis) in OPTIONS.items():
        found = _shown(weights, getattr(family, field_name))
        shown = None if found is None else (found[0], found[1], found[2][axis])
        if explicit[option] is not None:
            chosen[option] = _Option(option, explicit[option], f"from {flag}", shown)
        elif option in recorded:
            if shown is not None and shown[2] != recorded[option]:
                raise FileError(
                    f"{source}: the file records {option} {recorded[option]}, but its {shown[0]} "
                    f"{_shape(shown[1])} shows {shown[2]}: pass {flag} {shown[2]} (an option "
                    f"overrides the record)"
                )
            chosen[option] = _Option(option, recorded[option], "as the file records", shown)
        elif shown is not None:
            chosen[option] = _Option(option, shown[2], f"from {shown[0]}", shown)
        else:
            chosen[option] = _Option(option, DEFAULT_OPTIONS[option], None, None)
    return chosen


def _context(options: dict[str, _Option], classifier: str) -> str:
    """What a failed backbone conversion's message adds: each option's value and origin, and
    the option that fixes one the weights contradict (or a classifier they lack)."""
    notes = [o.describe() for o in options.values()]
    notes += [h for h in (o.hint() for o in options.values()) if h]
    classes = options["num_classes"]
    if classes.shown is None and classes.value:
        notes.append(
            f"the weights have no classifier ({classifier}.weight): pass --num-classes 0 for "
            f"weights without a classifier"
        )
    return "; ".join(notes)


def _to_flax(weights: Weights, model: Model | None) -> Weights:
    """Flax-layout weights; with a ``model``, the PyTorch tensors checked against its PyTorch
    state_dict first (keys, shapes, dtype kinds: :func:`_check_torch`), then the result
    against its Flax twin: every variable there, nothing else, the shapes and the checkpoint's
    dtype (a bare SE block's widths come from the converted ``fc1``)."""
    if model is not None:
        _check_torch(weights.tensors, model)
    dtype = _float_dtype(weights)
    target = None if model is None else model.flax_shapes()
    variables = torch_to_flax(weights.tensors, target=_in_dtype(target, dtype))
    converted = _flatten_flax(variables, "converted")
    if model is not None and model.is_se_block:
        _check_flax(converted, model, dtype)
    return Weights("flax", converted)


def _check_flax(tensors: dict[str, np.ndarray], model: Model, dtype: np.dtype | None) -> None:
    """Flax-layout ``tensors`` against ``model``'s Flax twin, strictly (ConversionError)."""
    from se_weights._convert import _compare, _flat_flax

    problems = _Problems()
    target = _in_dtype(model.flax_shapes(tensors), dtype)
    _compare(
        {tuple(k.split("/")): v for k, v in tensors.items()},
        _flat_flax(target),
        problems,
        side=f"{model.name} model",
    )
    problems.raise_if_any(f"the weights do not fit --model {model.name}")


def _to_torch(weights: Weights, model: Model | None) -> Weights:
    if model is None:
        raise FileError(
            "Flax -> PyTorch needs --model: the PyTorch key names depend on the architecture "
            f"(a create_model name, or {', '.join(SE_BLOCKS)})"
        )
    module = model.torch(weights.tensors)
    dtype = _float_dtype(weights)
    if dtype is not None:
        import torch

        module = module.to(getattr(torch, dtype.name))
    flax_to_torch(weights.variables(), module)
    return Weights("torch", {k: to_numpy(v) for k, v in module.state_dict().items()})


def _differences(written: dict[str, np.ndarray], meant: dict[str, np.ndarray]) -> list[str]:
    """Every tensor the file holds other than it was meant to: key, shape, dtype or bits."""
    problems = [f"{k}: missing" for k in meant if k not in written]
    problems += [f"{k}: not meant to be written" for k in written if k not in meant]
    for k in meant.keys() & written.keys():
        a, b = written[k], meant[k]
        if (a.shape, a.dtype) != (b.shape, b.dtype):
            problems.append(f"{k}: {a.shape} {a.dtype}, meant {b.shape} {b.dtype}")
        elif a.tobytes() != b.tobytes():
            problems.append(f"{k}: other bits")
    return sorted(problems)


def _max_difference(torch_side: Weights, flax_side: Weights, model: Model, seed: int = 0) -> float:
    """One random input through both frameworks, each with its side's weights (upcast to
    float32, which is exact); the max abs difference of the outputs."""
    import jax
    import torch

    module = model.torch(flax_side.tensors).float().eval()
    module.load_state_dict(  # strict; float16/bfloat16 tensors upcast exactly
        {k: to_torch(v) for k, v in torch_side.tensors.items()}, strict=True
    )
    variables = jax.tree.map(
        lambda v: v.astype(np.float32) if is_floating(v.dtype) else v, flax_side.variables()
    )
    x = np.random.default_rng(seed).standard_normal(model.input_shape(flax_side.tensors))
    x = x.astype(np.float32)
    flax_module = model.flax(flax_side.tensors)
    if model.is_se_block:
        y_flax = flax_module.apply(variables, x)
    else:
        y_flax = flax_module.apply(variables, x, train=False)
    with torch.no_grad():
        y_torch = module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    if y_torch.ndim == 4:
        y_torch = y_torch.transpose(0, 2, 3, 1)
    return float(np.max(np.abs(np.asarray(y_flax) - y_torch)))


def convert_file(
    source: str | os.PathLike,
    output: str | os.PathLike,
    model: str | None = None,
    *,
    attn: str | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    framework: Framework | None = None,
    verify: bool = False,
    force: bool = False,
    tolerance: float = 1e-4,
    max_bytes: int | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Converts ``source`` into ``output``; the formats (extensions) give the direction.

    Args:
        model: the architecture (``create_model`` names; ``se`` or ``selayer`` for a bare SE
            block), default: the one the source file records. Needed for Flax -> PyTorch; for
            PyTorch -> Flax it checks every tensor against the Flax model.
        attn: a backbone's attention layer, when it is not the model's own (``create_model``'s
            ``attn``: ``"se"``, ``"eca"``, ``"cbam"``, ``"ese"``).
        num_classes, in_chans: a backbone's classes (0: no classifier) and input channels. By
            default what the source file records, else what its weights show (the family's
            classifier and first convolution, in either layout), else 1000 and 3; the report's
            ``options`` says which. A file recording other values than its weights show is an
            error.
        framework: whose layout to write where the format holds both (safetensors); by
            default the other framework's, so ``.pth -> .safetensors`` converts to Flax.
        verify: read the written file back, check every tensor's key, shape, dtype and bits,
            run both frameworks on one random input from it and fail above ``tolerance`` (max
            abs difference); on failure nothing is written.
        force: overwrite an existing ``output`` (a file, or a checkpoint directory se-flax
            wrote; never another directory).
        max_bytes: refuse a ``source`` holding more bytes of tensors (default 16 GiB, or
            ``$SE_CONVERT_MAX_BYTES``).

    Returns:
        A report: direction, model, ``options`` (a backbone's ``num_classes`` / ``in_chans``
        other than the defaults, each with where it came from, e.g. ``num_classes 10 from
        fc.weight``), tensors, parameters, dtypes, seconds and, with ``verify``, the max abs
        difference.

    Raises:
        FileError: an unreadable file, a bad option; ConversionError: weights that do not fit
            the model, each problem listed (for a backbone, with its options' values and
            origins, and the option that fixes one the weights contradict).

    Example:
        >>> convert_file("seresnet18.pth", "seresnet18.msgpack", "seresnet18", verify=True)
    """
    start = time.perf_counter()
    weights = load(source, max_bytes=max_bytes)
    for note in weights.notes:
        log(note)
    _check_count("num_classes", num_classes, 0)
    _check_count("in_chans", in_chans, 1)
    explicit = {"num_classes": num_classes, "in_chans": in_chans}
    name = model or weights.model
    for flag, value in (("--attn", attn), *((OPTIONS[k][0], v) for k, v in explicit.items())):
        if value is not None and name is None:
            raise FileError(f"{flag} needs --model (or a file that records its model)")
        if value is not None and name in SE_BLOCKS and flag != "--attn":
            raise FileError(f"{flag} applies to backbones, not to a bare {name!r} block")
    if attn is None and name == weights.model:
        attn = weights.attn  # as the file records it
    options: dict[str, _Option] = {}
    if name is not None and name not in SE_BLOCKS:
        Model(name, attn)  # an unknown name or attn: that error first
        recorded = weights.options if name == weights.model else {}
        options = _backbone_options(weights, name, explicit, recorded, source)
    chosen = None if name is None else Model(name, attn, **{k: o.value for k, o in options.items()})
    out_kind = file_format(output)
    allowed = FORMATS[out_kind][1]
    if framework is None:
        other = "flax" if weights.framework == "torch" else "torch"
        framework = other if other in allowed else weights.framework
    if framework not in allowed:
        raise FileError(
            f"{output}: {out_kind} files hold the {' or '.join(allowed)} framework's tensors, "
            f"not {framework}'s"
        )
    try:
        if framework == weights.framework:
            converted = Weights(framework, weights.tensors)
            if chosen is not None and framework == "flax":
                _check_flax(weights.tensors, chosen, _float_dtype(weights))
            elif chosen is not None:
                _check_torch(weights.tensors, chosen)  # a PyTorch copy: the same check
        elif framework == "flax":
            converted = _to_flax(weights, chosen)
        else:
            converted = _to_torch(weights, chosen)
    except ConversionError as e:
        if not options:
            raise
        classifier = get_model(name).family.classifier
        title = f"{e.title} ({_context(options, classifier)})"
        raise ConversionError(title, e.missing, e.unexpected, e.mismatched) from None
    if chosen is not None:
        converted.model, converted.attn = chosen.name, chosen.attn
        converted.options = chosen.options
    report: dict[str, Any] = {
        "source": str(source),
        "output": str(output),
        "direction": f"{weights.framework} -> {framework}",
        "model": name,
        "options": [o.describe() for o in options.values() if o.value != DEFAULT_OPTIONS[o.name]],
        "tensors": len(converted.tensors),
        "parameters": int(sum(v.size for v in converted.tensors.values())),
        "dtypes": sorted({str(v.dtype) for v in converted.tensors.values()}),
    }
    if verify and chosen is None:
        raise FileError("--verify needs --model (or a file that records its model)")

    def check(written: Path) -> None:
        """The file as written, read back: the same tensors, and both frameworks agree."""
        reread = load(written)
        differences = _differences(reread.tensors, converted.tensors)
        if differences:
            raise FileError(
                f"--verify: {output} (as written) does not hold what was converted: "
                f"{'; '.join(differences[:5])}"
                + (f" (and {len(differences) - 5} more)" if len(differences) > 5 else "")
            )
        sides = {weights.framework: weights, reread.framework: reread}
        torch_side = sides.get("torch") or _to_torch(reread, chosen)
        flax_side = sides.get("flax") or _to_flax(reread, chosen)
        report["max_abs_diff"] = _max_difference(torch_side, flax_side, chosen)
        report["tolerance"] = tolerance
        if not report["max_abs_diff"] <= tolerance:
            raise FileError(
                f"--verify: outputs differ by {report['max_abs_diff']:.3g} > {tolerance:g}; "
                f"nothing written to {output}"
            )

    save(converted, output, force=force, check=check if verify else None, log=log)
    report["seconds"] = time.perf_counter() - start
    return report
