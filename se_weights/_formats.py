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
from typing import IO, Any, Literal

import numpy as np

from se_weights._arrays import to_numpy, to_torch

__all__ = ["FORMATS", "FileError", "Framework", "Weights", "file_format", "read_file", "save"]

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
DEFAULT_MAX_BYTES = 16 * 2**30  # tensors per file, overridable (max_bytes=, --max-bytes, env)
MAX_BYTES_ENV = "SE_CONVERT_MAX_BYTES"
MAX_PICKLE_NODES = 10**7  # a state_dict's pickle has about 20 per tensor


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
        options: the model's ``num_classes`` and ``in_chans`` where the file records them
            (timm's ``config.json``).
    """

    framework: Framework
    tensors: dict[str, np.ndarray]
    model: str | None = None
    attn: str | None = None
    notes: list[str] = field(default_factory=list)
    options: dict[str, int] = field(default_factory=dict)

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


def byte_limit(value: int | None = None) -> int:
    """The most bytes of tensors a file may hold: ``value``, else ``$SE_CONVERT_MAX_BYTES``, else
    :data:`DEFAULT_MAX_BYTES` (16 GiB)."""
    if value is None:
        text = os.environ.get(MAX_BYTES_ENV, "")
        if not text:
            return DEFAULT_MAX_BYTES
        try:
            value = int(text)
        except ValueError:
            raise FileError(f"{MAX_BYTES_ENV}={text!r}: expected a number of bytes") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FileError(f"max_bytes must be a positive number of bytes, got {value!r}")
    return value


def _check_size(what: str, size: int, limit: int) -> None:
    if size > limit:
        raise FileError(
            f"{what}: {size:,} bytes of tensors, more than the limit of {limit:,} (raise it with "
            f"--max-bytes, max_bytes= or ${MAX_BYTES_ENV})"
        )


def _check_pickle(stream: IO[bytes], what: str, limit: int = MAX_PICKLE_NODES) -> None:
    """Walks a pickle's opcodes without running them (linear time) and refuses one whose objects,
    expanded, exceed ``limit`` nodes: a DAG of shared tuples (``t = (t, t)``, 64 deep) is a few
    hundred bytes, yet hashing it as a dict key (as ``torch.load`` does) takes 2**64 steps."""
    import pickletools

    mark = pickletools.markobject
    stack: list[int | None] = []  # each object's expanded size; None for a mark
    memo: dict[int, int | None] = {}
    try:
        for op, arg, _ in pickletools.genops(stream):
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif op.name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            else:
                size, before = 1, op.stack_before
                if mark in before:
                    while (item := stack.pop()) is not None:
                        size += item
                below = before.index(mark) if mark in before else len(before)
                for _ in range(below):
                    size += stack.pop() or 0
                if size > limit:
                    raise FileError(
                        f"{what}: refused: the pickle's objects expand to more than {limit:,} "
                        f"nodes (shared references nested to blow up); nothing in it was run"
                    )
                stack.extend(None if obj is mark else size for obj in op.stack_after)
    except FileError:
        raise
    except (ValueError, IndexError, KeyError, TypeError) as e:
        raise FileError(
            f"{what}: cannot read as torch: not a valid pickle: {str(e)[:200]}"
        ) from None


def _check_torch_file(path: Path, limit: int) -> None:
    """Bounds what ``torch.load`` will do: the pickle's structure, and the bytes it may read."""
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            storages = [m for m in members if "/data/" in m.filename]  # archive/data/<key>
            _check_size(str(path), sum(m.file_size for m in storages), limit)
            pickles = [m for m in members if m.filename.endswith("data.pkl")]
            if len(pickles) != 1:
                raise FileError(f"{path}: not a PyTorch checkpoint (no single data.pkl inside)")
            with archive.open(pickles[0]) as stream:
                _check_pickle(stream, str(path))
        return
    _check_size(str(path), path.stat().st_size, limit)
    with path.open("rb") as stream:  # the legacy format: 4 pickles, then the storages
        for _ in range(4):
            _check_pickle(stream, str(path))


def _check_storage(state_dict: dict[str, Any], path: Path, limit: int) -> None:
    """Refuses tensors that would grow when materialised: a view whose storage holds fewer bytes
    than its elements need (stride 0, overlapping), and a total beyond ``limit``."""
    total = 0
    for key, t in state_dict.items():
        need, held = t.numel() * t.element_size(), t.untyped_storage().nbytes()
        if need > held:
            raise FileError(
                f"{path}: {key}: refused: shape {tuple(t.shape)} needs {need:,} bytes but its "
                f"storage holds {held:,} (a stride-0 or overlapping view); nothing materialised"
            )
        total += need
    _check_size(str(path), total, limit)


def _native(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every array in the machine's byte order, with the same values (a big-endian ``>f4`` from a
    msgpack file would otherwise be written back as if it were native: swapped bytes)."""
    return {
        k: v.astype(v.dtype.newbyteorder("=")) if not v.dtype.isnative else v
        for k, v in tensors.items()
    }


def _check_paths(tensors: dict[str, np.ndarray], path: Path) -> None:
    """Flax paths must form a tree: a leaf (``params/fc1``) where others have children
    (``params/fc1/kernel``) would be dropped when nesting them."""
    names = set(tensors)
    clashes = {k: p for k in names for p in _prefixes(k) if p in names}  # child -> a leaf above
    if clashes:
        children, leaves = sorted(clashes), sorted(set(clashes.values()))
        raise FileError(
            f"{path}: {', '.join(children[:5])}: under another tensor's name "
            f"({', '.join(leaves[:5])}); a Flax path is a leaf or a subtree, not both"
        )


def _prefixes(key: str) -> list[str]:
    parts = key.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _options(metadata: dict[str, Any], path: Path) -> dict[str, int]:
    """A backbone's ``num_classes`` / ``in_chans`` as the file records them (text or numbers)."""
    options = {}
    for key in ("num_classes", "in_chans"):
        if key in metadata:
            try:
                options[key] = int(str(metadata[key]))
            except ValueError:
                raise FileError(f"{path}: {key} {metadata[key]!r} is not a number") from None
            if options[key] < (0 if key == "num_classes" else 1):
                raise FileError(f"{path}: {key} {options[key]} is out of range")
    return options


def _metadata(value: Any, what: str, path: Path) -> str | None:
    if value is not None and not isinstance(value, str):
        raise FileError(f"{path}: the file's {what} must be a name, got {value!r}")
    return value


def read_file(path: str | os.PathLike, *, max_bytes: int | None = None) -> Weights:
    """Reads a checkpoint file (or orbax directory) of any supported format: :func:`load`
    without timm's pretrained layout. Never runs code stored in a file.

    Raises:
        FileError: unreadable, truncated or corrupted files, wrong formats, refused pickles.
    """
    limit = byte_limit(max_bytes)
    path = Path(path)
    kind = file_format(path)
    if not path.exists():
        raise FileError(f"{path}: no such file or directory")
    if kind == "orbax" and not path.is_dir():
        raise FileError(f"{path}: expected an orbax checkpoint directory")
    if kind != "orbax" and not path.is_file():
        raise FileError(f"{path}: not a file")
    try:
        weights = _read(path, kind, limit)
    except FileError:
        raise
    except Exception as e:  # any reader's failure on a bad file becomes one clear message
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise FileError(f"{path}: cannot read as {kind}: {type(e).__name__}: {first}") from None
    weights.tensors = _native(weights.tensors)
    _check_size(str(path), sum(v.nbytes for v in weights.tensors.values()), limit)
    if weights.framework == "flax":
        _check_paths(weights.tensors, path)
    weights.model = _metadata(weights.model, "model", path)
    weights.attn = _metadata(weights.attn, "attn", path)
    return weights


def _read(path: Path, kind: str, limit: int) -> Weights:
    notes: list[str] = []
    if kind == "torch":
        try:
            import torch
        except ImportError:
            raise FileError(f"{path}: reading PyTorch files needs torch") from None
        import pickle

        _check_torch_file(path, limit)
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
        _check_storage(sd, path, limit)
        return Weights("torch", {k: to_numpy(v) for k, v in sd.items()}, notes=notes)
    if kind == "safetensors":
        from safetensors import safe_open
        from safetensors.numpy import load_file

        _check_size(str(path), path.stat().st_size, limit)
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
        tensors = load_file(path)
        framework = _metadata_framework(metadata)
        if framework is None:
            framework = "flax" if any("/" in k for k in tensors) else "torch"
            notes.append(f"no framework in the file's metadata: keys read as {framework}'s")
        return Weights(
            framework,
            tensors,
            metadata.get("model"),
            metadata.get("attn"),
            notes,
            _options(metadata, path),
        )
    if kind == "msgpack":
        from flax import serialization

        _check_size(str(path), path.stat().st_size, limit)
        tree = serialization.msgpack_restore(path.read_bytes())
        return Weights("flax", _flatten_flax(tree, str(path)), notes=notes)
    import jax
    import orbax.checkpoint as ocp

    meta_path = path / METADATA_FILE
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileError(f"{meta_path}: not valid JSON: {str(e)[:200]}") from None
    if not isinstance(meta, dict):
        raise FileError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    with ocp.StandardCheckpointer() as checkpointer:
        shapes = checkpointer.metadata(path.resolve()).item_metadata
        sizes = [
            int(np.prod(m.shape, dtype=np.int64)) * np.dtype(m.dtype).itemsize
            for m in jax.tree.leaves(shapes)
        ]
        _check_size(str(path), sum(sizes), limit)
        tree = checkpointer.restore(path.resolve())
    return Weights(
        "flax",
        _flatten_flax(tree, str(path)),
        meta.get("model"),
        meta.get("attn"),
        notes,
        _options(meta, meta_path),
    )


ORBAX_MARKERS = (METADATA_FILE, "_CHECKPOINT_METADATA")  # a checkpoint directory se-flax wrote


def _replaceable(path: Path, directory: bool | None) -> None:
    """What ``force`` may replace: a file (or link) where a file goes, and where a directory goes
    a checkpoint directory this package wrote; never another directory (a project folder)."""
    if path.is_symlink() or not path.exists():
        return
    if path.is_dir() and not (
        directory is not False and any((path / m).exists() for m in ORBAX_MARKERS)
    ):
        raise FileError(
            f"{path} is a directory that is not a checkpoint se-flax wrote (no "
            f"{' or '.join(ORBAX_MARKERS)} in it): not replaced, even with --force (force=True)"
        )
    if not path.is_dir() and directory is True:
        raise FileError(f"{path} is a file, not a checkpoint directory: not replaced")


def _claim(written: Path, path: Path) -> None:
    """Moves ``written`` to ``path`` only if nothing is there, atomically (two writers without
    force: one wins, the other fails, nothing is replaced)."""
    try:
        if written.is_dir():
            os.mkdir(path)  # the claim; the rename below replaces this empty directory
            os.rename(written, path)
            return
        try:
            os.link(written, path)  # fails if path exists, whatever appeared meanwhile
        except FileExistsError:
            raise
        except OSError:  # no hard links here: claim the name, then replace the empty claim
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            os.replace(written, path)
    except FileExistsError:
        raise FileError(f"{path} appeared while writing it; pass --force (force=True)") from None


@contextmanager
def _atomic(path: Path, force: bool) -> Iterator[Path]:
    """Yields a temporary path next to ``path``; moves it onto ``path`` only on success.

    Without ``force`` an existing ``path`` is an error, also one that appears while writing.
    With it, only a file or a checkpoint directory se-flax wrote is replaced.
    """
    if path.exists() and not force:
        raise FileError(f"{path} exists; pass --force (force=True) to overwrite it")
    if force:
        _replaceable(path, directory=None)  # what is written is known once it is
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if target.is_file():  # as open() would create it (some writers use 0o600)
            umask = os.umask(0)
            os.umask(umask)
            target.chmod(0o666 & ~umask)
        if not force:
            _claim(target, path)
            return
        _replaceable(path, directory=target.is_dir())  # again: it may have changed meanwhile
        if path.is_dir() and not path.is_symlink():
            path.rename(tmp / "replaced")  # a checkpoint se-flax wrote, removed below
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
    metadata.update({k: str(v) for k, v in weights.options.items()})
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
