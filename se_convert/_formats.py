"""Weight files: read and write PyTorch, safetensors, msgpack and orbax checkpoints; read timm's
pretrained layout (a hub id, or a directory with ``config.json`` and ``model.safetensors``).

>>> weights = load("seresnet18.pth")          # Weights(framework="torch", ...), no pickle code
>>> save(weights, "seresnet18.safetensors")   # atomic; an existing file needs force=True

PyTorch files are read with ``torch.load(weights_only=True)`` only (torch is imported then, not
before). safetensors and msgpack are read and written with NumPy (bfloat16 through ml_dtypes),
so Flax-side files need no torch. Every tensor keeps its shape, dtype and bits, 0-d counters
included.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from se_convert._arrays import to_numpy, to_torch

__all__ = ["FORMATS", "FileError", "Framework", "Weights", "file_format", "load", "save"]

# Whose names and tensor layouts a checkpoint holds: PyTorch's state_dict keys, or Flax paths.
Framework = Literal["torch", "flax"]
# format -> (extensions, frameworks it can hold)
FORMATS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "torch": ((".pth", ".pt", ".bin"), ("torch",)),
    "safetensors": ((".safetensors",), ("torch", "flax")),
    "msgpack": ((".msgpack",), ("flax",)),
    "orbax": (("",), ("flax",)),  # a directory
}
METADATA_FILE = "se_flax.json"  # inside orbax directories: framework, model and attn


class FileError(ValueError):
    """A file that cannot be read, written or converted; the message says which and why."""


@dataclass
class Weights:
    """Tensors of one checkpoint, flat: PyTorch state_dict keys, or Flax paths joined by ``/``
    starting with the collection (``params/layer1_0/conv1/kernel``).

    Attributes:
        framework: ``"torch"`` or ``"flax"``: whose names and layouts the tensors are in.
        tensors: name -> NumPy array (bfloat16 as ``ml_dtypes.bfloat16``).
        model: the architecture, if known (a ``create_model`` name, ``se`` or ``selayer``).
        attn: the attention layer of a backbone built with another one (``create_model``'s
            ``attn``), if any.
        notes: what reading the file noticed (for the command's output).
    """

    framework: Framework
    tensors: dict[str, np.ndarray]
    model: str | None = None
    attn: str | None = None
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


def _metadata_framework(metadata: dict[str, str]) -> str | None:
    """The framework a file's metadata records (``layout`` in files before 0.2)."""
    value = metadata.get("framework", metadata.get("layout"))
    return value if value in ("torch", "flax") else None


def load(path: str | os.PathLike) -> Weights:
    """Reads a checkpoint of any supported format. Never runs code stored in a file.

    ``path`` may also be timm's pretrained layout: a directory holding ``config.json`` and
    ``model.safetensors``, or a hub id (``timm/seresnet50.a1_in1k``, ``hf-hub:...``) read
    through the Hugging Face cache; the weights then record the config's architecture.

    Raises:
        FileError: unreadable, truncated or corrupted files, wrong formats, refused pickles.
    """
    from se_convert._hub import CONFIG_FILE, is_hub_id, read_pretrained

    if is_hub_id(path) or (Path(path) / CONFIG_FILE).is_file():
        pretrained = read_pretrained(path)
        note = f"read timm's layout from {pretrained.directory}"
        if pretrained.cfg.tag:
            note += f" (tag {pretrained.cfg.tag})"
        return Weights("torch", pretrained.tensors, pretrained.architecture, notes=[note])
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
            return Weights("torch", {k: to_numpy(v) for k, v in sd.items()}, notes=notes)
        if kind == "safetensors":
            from safetensors import safe_open
            from safetensors.numpy import load_file

            with safe_open(path, framework="numpy") as f:
                metadata = f.metadata() or {}
            tensors = load_file(path)
            framework = _metadata_framework(metadata)
            if framework is None:
                framework = "flax" if any("/" in k for k in tensors) else "torch"
                notes.append(f"no framework in the file's metadata: keys read as {framework}'s")
            return Weights(framework, tensors, metadata.get("model"), metadata.get("attn"), notes)
        if kind == "msgpack":
            from flax import serialization

            tree = serialization.msgpack_restore(path.read_bytes())
            return Weights("flax", _flatten_flax(tree, str(path)), notes=notes)
        import orbax.checkpoint as ocp

        meta_path = path / METADATA_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.restore(path.resolve())
        return Weights(
            "flax", _flatten_flax(tree, str(path)), meta.get("model"), meta.get("attn"), notes
        )
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


def save(
    weights: Weights,
    path: str | os.PathLike,
    force: bool = False,
    *,
    check: Callable[[Path], None] | None = None,
) -> None:
    """Writes ``weights`` in the format of ``path``'s extension, atomically: a failure leaves
    nothing behind, and an existing ``path`` is replaced only with ``force``.

    Args:
        check: called with the written file (at a temporary path) before it is moved into
            place; an exception from it leaves nothing written (``se-convert --verify``).
    """
    path = Path(path)
    kind = file_format(path)
    allowed = FORMATS[kind][1]
    if weights.framework not in allowed:
        raise FileError(
            f"{path}: {kind} files hold the {' or '.join(allowed)} framework's tensors, not "
            f"{weights.framework}'s"
        )
    metadata = {"framework": weights.framework}
    metadata.update({k: v for k, v in (("model", weights.model), ("attn", weights.attn)) if v})
    with _atomic(path, force) as tmp:
        if kind == "torch":
            import torch

            torch.save({k: to_torch(v) for k, v in weights.tensors.items()}, tmp)
        elif kind == "safetensors":
            from safetensors.numpy import save_file

            # np.asarray, not np.ascontiguousarray: that one turns 0-d counters into shape (1,)
            tensors = {k: np.asarray(v, order="C") for k, v in weights.tensors.items()}
            file_format_tag = "pt" if weights.framework == "torch" else "flax"
            save_file(tensors, tmp, metadata={**metadata, "format": file_format_tag})
        elif kind == "msgpack":
            from flax import serialization

            tmp.write_bytes(serialization.msgpack_serialize(weights.variables()))
        else:
            import orbax.checkpoint as ocp

            with ocp.StandardCheckpointer() as checkpointer:
                checkpointer.save(tmp.resolve(), weights.variables())
            (tmp / METADATA_FILE).write_text(json.dumps(metadata))
        if check is not None:
            check(tmp)
