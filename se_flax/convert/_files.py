"""Weight files: read and write PyTorch, safetensors, msgpack and orbax checkpoints, and convert
between them. The Python API behind ``se-convert``.

>>> weights = load("seresnet18.pth")                  # Weights(layout="torch", ...), no pickle code
>>> convert_file("seresnet18.pth", "seresnet18.msgpack", model="seresnet18", verify=True)

PyTorch files are read with ``torch.load(weights_only=True)`` only. safetensors and msgpack are
read and written with NumPy (bfloat16 through ml_dtypes), so Flax-side files need no torch.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from se_flax.convert._arrays import to_numpy, to_torch

__all__ = ["FORMATS", "FileError", "Weights", "convert_file", "load", "save"]

Layout = Literal["torch", "flax"]
# format -> (extensions, layouts it can hold)
FORMATS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "torch": ((".pth", ".pt", ".bin"), ("torch",)),
    "safetensors": ((".safetensors",), ("torch", "flax")),
    "msgpack": ((".msgpack",), ("flax",)),
    "orbax": (("",), ("flax",)),  # a directory
}
METADATA_FILE = "se_flax.json"  # inside orbax directories: layout and model
SE_MODELS = ("se", "selayer")  # bare SE blocks: timm/torchvision layout, the classic recipe


class FileError(ValueError):
    """A file that cannot be read, written or converted; the message says which and why."""


@dataclass
class Weights:
    """Tensors of one checkpoint, flat: PyTorch state_dict keys, or Flax paths joined by ``/``
    starting with the collection (``params/layer1_0/conv1/kernel``)."""

    layout: Layout
    tensors: dict[str, np.ndarray]
    model: str | None = None
    notes: list[str] = field(default_factory=list)

    def variables(self) -> dict[str, Any]:
        """Flax layout as nested variables ``{"params": ..., "batch_stats": ...}``."""
        from flax import traverse_util

        return traverse_util.unflatten_dict(self.tensors, sep="/")


def file_format(path: str | os.PathLike) -> str:
    """The format of ``path`` from its extension; a path without one is an orbax directory."""
    suffix = Path(path).suffix.lower()
    for name, (extensions, _) in FORMATS.items():
        if suffix in extensions:
            return name
    known = ", ".join(e for exts, _ in FORMATS.values() for e in exts if e)
    raise FileError(f"{path}: unknown extension {suffix!r}; use {known}, or none (orbax directory)")


def _flatten_flax(tree: Any, what: str) -> dict[str, np.ndarray]:
    from flax import traverse_util

    if not isinstance(tree, dict) or not tree:
        raise FileError(f"{what}: expected a dict of Flax collections, got {type(tree).__name__}")
    flat = traverse_util.flatten_dict(tree, sep="/")
    bad = [k for k, v in flat.items() if not hasattr(v, "dtype")]
    if bad:
        raise FileError(f"{what}: entries that are not arrays: {', '.join(sorted(bad)[:5])}")
    return {k: np.asarray(v) for k, v in flat.items()}


def _state_dict(obj: Any, path: Path, notes: list[str]) -> dict[str, Any]:
    import torch

    def is_state_dict(d: Any) -> bool:
        return isinstance(d, dict) and d and all(isinstance(v, torch.Tensor) for v in d.values())

    if is_state_dict(obj):
        return obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if is_state_dict(obj.get(key)):
                notes.append(f"read the state_dict under the checkpoint's {key!r} key")
                return obj[key]
        keys = ", ".join(map(repr, list(obj)[:8]))
        raise FileError(f"{path}: no state_dict of tensors in this checkpoint (top-level: {keys})")
    raise FileError(f"{path}: expected a state_dict, got {type(obj).__name__}")


def load(path: str | os.PathLike) -> Weights:
    """Reads a checkpoint of any supported format. Never runs code stored in a file.

    Raises:
        FileError: unreadable, truncated or corrupted files, wrong formats, refused pickles.
    """
    path = Path(path)
    kind = file_format(path)
    if not path.exists():
        raise FileError(f"{path}: no such file or directory")
    if kind == "orbax" and not path.is_dir():
        raise FileError(f"{path}: expected an orbax checkpoint directory")
    if kind != "orbax" and not path.is_file():
        raise FileError(f"{path}: not a file")
    notes: list[str] = []
    try:
        if kind == "torch":
            try:
                import torch
            except ImportError:
                raise FileError(f"{path}: reading PyTorch files needs torch") from None
            import pickle

            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:
                text = str(e)
                detail = next(
                    (line.strip() for line in text.splitlines() if "Unpickler error" in line),
                    text.strip().splitlines()[0] if text.strip() else "",
                )
                if "global" in detail.lower() or "operand" in detail.lower():
                    raise FileError(
                        f"{path}: refused: the pickle holds more than tensors and would run "
                        f"code (weights_only=True); nothing in it was run. {detail[:300]}"
                    ) from None
                raise FileError(f"{path}: cannot read as torch: {detail[:300]}") from None
            sd = _state_dict(obj, path, notes)
            return Weights("torch", {k: to_numpy(v) for k, v in sd.items()}, None, notes)
        if kind == "safetensors":
            from safetensors import safe_open
            from safetensors.numpy import load_file

            with safe_open(path, framework="numpy") as f:
                metadata = f.metadata() or {}
            tensors = load_file(path)
            layout = metadata.get("layout")
            if layout not in ("torch", "flax"):
                layout = "flax" if any("/" in k for k in tensors) else "torch"
                notes.append(f"no layout in the file's metadata: keys read as {layout} layout")
            return Weights(layout, tensors, metadata.get("model"), notes)
        if kind == "msgpack":
            from flax import serialization

            tree = serialization.msgpack_restore(path.read_bytes())
            return Weights("flax", _flatten_flax(tree, str(path)), None, notes)
        import orbax.checkpoint as ocp

        meta = path / METADATA_FILE
        model = json.loads(meta.read_text()).get("model") if meta.is_file() else None
        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.restore(path.resolve())
        return Weights("flax", _flatten_flax(tree, str(path)), model, notes)
    except FileError:
        raise
    except Exception as e:  # any reader's failure on a bad file becomes one clear message
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise FileError(f"{path}: cannot read as {kind}: {type(e).__name__}: {first}") from None


@contextmanager
def _atomic(path: Path, force: bool) -> Iterator[Path]:
    """Yields a temporary path next to ``path``; renames it onto ``path`` only on success."""
    if path.exists() and not force:
        raise FileError(f"{path} exists; pass --force (force=True) to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if target.is_file():  # as open() would create it (some writers use 0o600)
            umask = os.umask(0)
            os.umask(umask)
            target.chmod(0o666 & ~umask)
        if path.is_dir() and not path.is_symlink():
            old = tmp / "replaced"
            path.rename(old)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save(weights: Weights, path: str | os.PathLike, force: bool = False) -> None:
    """Writes ``weights`` in the format of ``path``'s extension, atomically: a failure leaves
    nothing behind, and an existing ``path`` is replaced only with ``force``."""
    path = Path(path)
    kind = file_format(path)
    if weights.layout not in FORMATS[kind][1]:
        raise FileError(f"{path}: {kind} files hold the Flax layout, not {weights.layout}")
    with _atomic(path, force) as tmp:
        if kind == "torch":
            import torch

            torch.save({k: to_torch(v) for k, v in weights.tensors.items()}, tmp)
        elif kind == "safetensors":
            from safetensors.numpy import save_file

            metadata = {
                "layout": weights.layout,
                "format": "pt" if weights.layout == "torch" else "flax",
            }
            if weights.model:
                metadata["model"] = weights.model
            save_file(
                {k: np.ascontiguousarray(v) for k, v in weights.tensors.items()},
                tmp,
                metadata=metadata,
            )
        elif kind == "msgpack":
            from flax import serialization

            tmp.write_bytes(serialization.msgpack_serialize(weights.variables()))
        else:
            import orbax.checkpoint as ocp

            with ocp.StandardCheckpointer() as checkpointer:
                checkpointer.save(tmp.resolve(), weights.variables())
            (tmp / METADATA_FILE).write_text(json.dumps({"layout": "flax", "model": weights.model}))


def _se_module(tensors: dict[str, np.ndarray], model: str) -> Any:
    """The PyTorch SE block that Flax SE weights describe (widths read from fc1's kernel)."""
    import se_torch

    kernel = tensors.get("params/fc1/kernel")
    if kernel is None or kernel.ndim != 2:
        raise FileError(f"--model {model}: expected an SE block's params/fc1/kernel (C, rd)")
    channels, rd = kernel.shape
    if model == "selayer":
        reductions = [r for r in range(1, channels + 1) if channels // r == rd]
        if not reductions:
            raise FileError(f"--model selayer: no reduction r gives {channels} // r = {rd}")
        return se_torch.SELayer(channels, reduction=reductions[0])
    return se_torch.SqueezeExcite(channels, rd_channels=rd, bias="params/fc1/bias" in tensors)


def torch_module(model: str, tensors: dict[str, np.ndarray] | None = None) -> Any:
    """A PyTorch module of architecture ``model`` (``create_model`` names, ``se``, ``selayer``)."""
    import se_torch

    if model in SE_MODELS:
        if tensors is None:
            raise FileError(f"--model {model}: widths come from the weights")
        return _se_module(tensors, model)
    return se_torch.create_model(model)


def _flax_module(model: str, tensors: dict[str, np.ndarray]) -> Any:
    import se_flax

    if model in SE_MODELS:
        rd = tensors["params/fc1/kernel"].shape[1]
        return se_flax.SqueezeExcite(rd_channels=rd, use_bias="params/fc1/bias" in tensors)
    return se_flax.create_model(model)


def _to_flax(weights: Weights, model: str | None) -> Weights:
    import jax

    from se_flax.convert._convert import torch_to_flax

    target = None
    if model is not None and model not in SE_MODELS:
        flax_model = _flax_module(model, {})
        x = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
        target = jax.eval_shape(flax_model.init, jax.random.key(0), x)
    variables = torch_to_flax(weights.tensors, target=_match_dtypes(target, weights))
    return Weights("flax", _flatten_flax(jax.tree.map(np.asarray, variables), "converted"), model)


def _is_float(v: np.ndarray) -> bool:
    return v.dtype.kind == "f" or v.dtype.name == "bfloat16"


def _float_dtype(weights: Weights) -> np.dtype | None:
    """The one floating dtype of a checkpoint's tensors, None if it has several (or none)."""
    floats = {v.dtype for v in weights.tensors.values() if _is_float(v)}
    return floats.pop() if len(floats) == 1 else None


def _match_dtypes(target: Any, weights: Weights) -> Any:
    """The target's shapes with the checkpoint's floating dtype (a bf16 file stays bf16)."""
    if target is None:
        return None
    import jax

    dtype = _float_dtype(weights)
    if dtype is None:
        return target
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, dtype if s.dtype == np.float32 else s.dtype),
        target,
    )


def _to_torch(weights: Weights, model: str | None) -> Weights:
    from se_flax.convert._convert import flax_to_torch

    if model is None:
        raise FileError(
            "Flax -> PyTorch needs --model: the PyTorch key names depend on the "
            f"architecture (one of the create_model names, or {', '.join(SE_MODELS)})"
        )
    module = torch_module(model, weights.tensors)
    dtype = _float_dtype(weights)
    if dtype is not None:
        import torch

        module = module.to(getattr(torch, dtype.name))
    flax_to_torch(weights.variables(), module)
    state = module.state_dict()
    return Weights("torch", {k: to_numpy(v) for k, v in state.items()}, model)


def verify(torch_weights: Weights, flax_weights: Weights, model: str, seed: int = 0) -> float:
    """Runs one random input through both frameworks, each with its own side of the converted
    weights (upcast to float32, which is exact), and returns the max abs difference."""
    import jax
    import torch

    module = torch_module(model, flax_weights.tensors).float().eval()
    module.load_state_dict(  # strict; float16/bfloat16 tensors upcast exactly
        {k: to_torch(v) for k, v in torch_weights.tensors.items()}, strict=True
    )
    variables = jax.tree.map(
        lambda v: v.astype(np.float32) if _is_float(v) else v, flax_weights.variables()
    )
    flax_model = _flax_module(model, flax_weights.tensors)
    rng = np.random.default_rng(seed)
    if model in SE_MODELS:
        channels = flax_weights.tensors["params/fc1/kernel"].shape[0]
        x = rng.standard_normal((2, 7, 7, channels)).astype(np.float32)
        y_flax = flax_model.apply(variables, x)
    else:
        x = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
        y_flax = flax_model.apply(variables, x, train=False)
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
    layout: Layout | None = None,
    check: bool = False,
    force: bool = False,
    tolerance: float = 1e-4,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Converts ``source`` into ``output``; the formats (extensions) give the direction.

    Args:
        model: the architecture (``create_model`` names; ``se`` or ``selayer`` for a bare SE
            block). Needed for Flax -> PyTorch; for PyTorch -> Flax it checks every tensor
            against the Flax model.
        layout: the output layout where the format holds both (safetensors); by default the
            other framework's, so ``.pth -> .safetensors`` converts to Flax.
        check: ``--verify``: run both models on one random input, compare, fail above
            ``tolerance`` (max abs difference).
        force: overwrite an existing ``output``.

    Returns:
        A report: direction, tensors, parameters, dtypes, seconds and, with ``check``, the
        max abs difference.
    """
    start = time.perf_counter()
    weights = load(source)
    for note in weights.notes:
        log(note)
    model = model or weights.model
    out_kind = file_format(output)
    allowed = FORMATS[out_kind][1]
    if layout is None:
        other = "flax" if weights.layout == "torch" else "torch"
        layout = other if other in allowed else weights.layout
    if layout not in allowed:
        raise FileError(f"{output}: {out_kind} files hold the {allowed[0]} layout, not {layout}")
    if layout == weights.layout:
        converted = Weights(layout, weights.tensors, model)
    elif layout == "flax":
        converted = _to_flax(weights, model)
    else:
        converted = _to_torch(weights, model)
    report: dict[str, Any] = {
        "source": str(source),
        "output": str(output),
        "direction": f"{weights.layout} -> {layout}",
        "model": model,
        "tensors": len(converted.tensors),
        "parameters": int(sum(v.size for v in converted.tensors.values())),
        "dtypes": sorted({str(v.dtype) for v in converted.tensors.values()}),
    }
    if check:
        if model is None:
            raise FileError("--verify needs --model (or a file that records its model)")
        sides = {w.layout: w for w in (weights, converted)}  # a layout change gives both
        torch_side = sides.get("torch") or _to_torch(weights, model)
        flax_side = sides.get("flax") or _to_flax(weights, model)
        report["max_abs_diff"] = verify(torch_side, flax_side, model)
        report["tolerance"] = tolerance
        if not report["max_abs_diff"] <= tolerance:
            raise FileError(
                f"--verify: outputs differ by {report['max_abs_diff']:.3g} > {tolerance:g}; "
                f"nothing written to {output}"
            )
    save(converted, output, force=force)
    report["seconds"] = time.perf_counter() - start
    return report
