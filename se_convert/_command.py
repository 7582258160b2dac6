"""``convert_file``: the orchestration behind ``se-convert`` (read, convert, write, verify).

It sits above both twins: building a model by name (``--model``) and running both frameworks
(``--verify``) import ``se_torch`` and ``se_flax``, when asked for.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from se_convert._models import SE_BLOCKS, Model
from se_weights._arrays import is_floating, to_numpy, to_torch
from se_weights._convert import flax_to_torch, torch_to_flax
from se_weights._formats import (
    FORMATS,
    FileError,
    Framework,
    Weights,
    _flatten_flax,
    file_format,
    save,
)
from se_weights._load import load

__all__ = ["convert_file"]


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


def _to_flax(weights: Weights, model: Model | None) -> Weights:
    """Flax-layout weights; with a ``model``, checked against its Flax twin: every variable
    there, nothing else, the shapes and the checkpoint's dtype (a bare SE block's widths come
    from the converted ``fc1``, and every other tensor must agree with them)."""
    dtype = _float_dtype(weights)
    target = None if model is None else model.flax_shapes()
    variables = torch_to_flax(weights.tensors, target=_in_dtype(target, dtype))
    converted = _flatten_flax(variables, "converted")
    if model is not None and model.is_se_block:
        _check_flax(converted, model, dtype)
    return Weights("flax", converted)


def _check_flax(tensors: dict[str, np.ndarray], model: Model, dtype: np.dtype | None) -> None:
    """Flax-layout ``tensors`` against ``model``'s Flax twin, strictly (ConversionError)."""
    from se_weights._convert import _compare, _flat_flax, _Problems

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
        A report: direction, tensors, parameters, dtypes, seconds and, with ``verify``, the
        max abs difference.

    Example:
        >>> convert_file("seresnet18.pth", "seresnet18.msgpack", "seresnet18", verify=True)
    """
    start = time.perf_counter()
    weights = load(source, max_bytes=max_bytes)
    for note in weights.notes:
        log(note)
    if attn is not None and model is None and weights.model is None:
        raise FileError("--attn needs --model (or a file that records its model)")
    name = model or weights.model
    if attn is None and name == weights.model:
        attn = weights.attn  # as the file records it
    options = weights.options if name == weights.model else {}
    chosen = None if name is None else Model(name, attn, **options)
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
    if framework == weights.framework:
        converted = Weights(framework, weights.tensors)
        if chosen is not None and framework == "flax":
            _check_flax(weights.tensors, chosen, _float_dtype(weights))
        elif chosen is not None:
            _to_flax(weights, chosen)  # a PyTorch copy is checked through its Flax twin
    elif framework == "flax":
        converted = _to_flax(weights, chosen)
    else:
        converted = _to_torch(weights, chosen)
    if chosen is not None:
        converted.model, converted.attn = chosen.name, chosen.attn
        converted.options = chosen.options
    report: dict[str, Any] = {
        "source": str(source),
        "output": str(output),
        "direction": f"{weights.framework} -> {framework}",
        "model": name,
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
                f"--verify: {written.name} does not hold what was converted: "
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

    save(converted, output, force=force, check=check if verify else None)
    report["seconds"] = time.perf_counter() - start
    return report
