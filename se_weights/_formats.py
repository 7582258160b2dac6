"""Weight files: read and write PyTorch, safetensors, msgpack and orbax checkpoints; read timm's
pretrained layout (a hub id, or a directory with ``config.json`` and ``model.safetensors``).

>>> weights = load("seresnet18.pth")          # Weights(framework="torch", ...), no pickle code
>>> save(weights, "seresnet18.safetensors")   # atomic; an existing file needs force=True

PyTorch files are read with ``torch.load(weights_only=True)`` only (torch is imported then, not
before). safetensors and msgpack are read and written with NumPy (bfloat16 through ml_dtypes),
so Flax-side files need no torch. Every tensor keeps its shape, dtype and bits, 0-d counters
included, and its own name: keys must be names of the layout the file claims.

A pickle naming a global PyTorch's weights-only unpickler would not allow is refused before
``torch.load`` runs. An orbax directory is walked before anything in it is opened: only regular
files and directories, bounded in number, depth and bytes. Writing is atomic; replacing a
checkpoint directory (``force``) too, whenever the process is killed (see :func:`_atomic`).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
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
# An orbax directory is walked before anything in it is opened: only regular files (or symlinks
# to them) and directories, at most this many entries this deep, and files of at most the tensor
# byte limit plus 1/16 of it (OCDBT framing, compression that does not compress) plus this much
# for the metadata files (_METADATA, manifests: kilobytes for a ResNet).
ORBAX_MAX_ENTRIES = 100_000
ORBAX_MAX_DEPTH = 32
ORBAX_METADATA_ALLOWANCE = 64 * 2**20
METADATA_MAX_BYTES = 2**20  # se_flax.json: a few names


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


def _entry(keys: tuple[Any, ...]) -> str:
    """A tree entry as one would index it: ``['params']['fc1/kernel']``."""
    return "".join(f"[{k!r}]" for k in keys)


def _flatten_flax(tree: Any, what: str) -> dict[str, np.ndarray]:
    """Flax variables, nested, to flat ``/``-joined paths. Refuses names that would not come back
    as they are: two entries on one path (``params['fc1/kernel']`` and
    ``params['fc1']['kernel']``: one of them would be lost), and a name that is not a string, is
    empty or holds ``/``."""
    if not isinstance(tree, Mapping) or not tree:
        raise FileError(f"{what}: expected a dict of Flax collections, got {type(tree).__name__}")
    leaves: list[tuple[tuple[str, ...], Any]] = []
    pending: list[tuple[tuple[Any, ...], Iterator[tuple[Any, Any]]]] = [((), iter(tree.items()))]
    while pending:  # depth first, in the tree's order (as flax's flatten_dict), without recursion
        keys, items = pending[-1]
        item = next(items, None)
        if item is None:
            pending.pop()
            continue
        key, value = item
        if not isinstance(key, str):
            raise FileError(
                f"{what}: {_entry((*keys, key))}: a Flax name must be a string, got "
                f"{type(key).__name__} {key!r}"
            )
        if isinstance(value, Mapping):
            pending.append(((*keys, key), iter(value.items())))
        else:
            leaves.append(((*keys, key), value))
    seen: dict[str, tuple[str, ...]] = {}
    for keys, _ in leaves:
        name = "/".join(keys)
        if name in seen:
            raise FileError(
                f"{what}: two entries are one Flax path, {name}: {_entry(seen[name])} and "
                f"{_entry(keys)} (one of them would be lost)"
            )
        seen[name] = keys
    for keys, _ in leaves:
        bad = next((k for k in keys if not k or "/" in k), None)
        if bad is not None:
            raise FileError(
                f"{what}: {_entry(keys)}: the name {bad!r} {'holds /' if bad else 'is empty'}; "
                f"a Flax name is a non-empty string without / (paths are joined by /)"
            )
    bad = ["/".join(k) for k, v in leaves if not hasattr(v, "dtype")]
    if bad:
        raise FileError(f"{what}: entries that are not arrays: {', '.join(sorted(bad)[:5])}")
    return {"/".join(k): np.asarray(v) for k, v in leaves}


LAYOUTS = {  # framework -> what its names look like
    "flax": "Flax paths (a collection, then names, joined by /: params/fc1/kernel)",
    "torch": "PyTorch state_dict keys (names joined by '.', no /: fc1.weight)",
}


def _bad_name(key: str, framework: str) -> bool:
    if framework == "flax":
        parts = key.split("/")
        return len(parts) < 2 or not all(parts)
    return "/" in key or not all(key.split("."))


def _check_names(tensors: dict[str, Any], framework: str, path: Path, claim: str) -> None:
    """Every key a name of ``framework``'s layout, as the file claims (``claim`` says how)."""
    bad = [k for k in tensors if _bad_name(k, framework)]
    if bad:
        shown = ", ".join(repr(k) for k in sorted(bad)[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise FileError(
            f"{path}: keys that are not {LAYOUTS[framework]}: {shown}{more} ({len(bad)} of "
            f"{len(tensors)}); {claim}"
        )


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


def _code_refused(what: str, detail: str) -> FileError:
    return FileError(
        f"{what}: refused: the pickle holds code or objects that are not tensors ({detail}); "
        f"nothing in it was run"
    )


def _global_detail(full: str) -> str:
    module, _, name = full.rpartition(".")
    alias = f", that is os.{name}" if module in ("posix", "nt") else ""
    return f"it names the global {full}{alias}"


def _allowed_globals() -> Callable[[str, str], str | None] | None:
    """What PyTorch's weights-only unpickler would refuse to look up, as a function of a global's
    module and name (the refused ``module.name``, else None): its default allowlist, the globals
    the user registered (``torch.serialization.add_safe_globals`` / ``safe_globals``), never one
    of its blocked modules, names mapped from Python 2 as it maps them. None where this torch has
    no such tables (torch.load still refuses; the message comes from what it raised)."""
    try:
        from torch import _weights_only_unpickler as unpickler

        allowed = set(unpickler._get_allowed_globals()) | set(unpickler._get_user_allowed_globals())
        blocked = set(unpickler._blocklisted_modules)
        name_mapping, import_mapping = unpickler.NAME_MAPPING, unpickler.IMPORT_MAPPING
    except (ImportError, AttributeError, TypeError, ValueError):
        return None

    def refused(module: str, name: str) -> str | None:
        if (module, name) in name_mapping:
            module, name = name_mapping[(module, name)]
        elif module in import_mapping:
            module = import_mapping[module]
        full = f"{module}.{name}"
        return full if module in blocked or full not in allowed else None

    return refused


_STRING_OPS = frozenset(  # the opcodes of string constants
    ("STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE")
) | {"BINUNICODE8"}


def _check_pickle(
    stream: IO[bytes],
    what: str,
    limit: int = MAX_PICKLE_NODES,
    refused: Callable[[str, str], str | None] | None = None,
) -> None:
    """Walks a pickle's opcodes without running them (linear time) and refuses one whose objects,
    expanded, exceed ``limit`` nodes: a DAG of shared tuples (``t = (t, t)``, 64 deep) is a few
    hundred bytes, yet hashing it as a dict key (as ``torch.load`` does) takes 2**64 steps.

    With ``refused`` (:func:`_allowed_globals`), also every global the pickle looks up
    (``GLOBAL``, ``INST``, and ``STACK_GLOBAL`` of string constants, through the memo too) that
    PyTorch's weights-only unpickler would not allow, named; and the extension registry."""
    import pickletools

    mark = pickletools.markobject
    # each object: (its expanded size, its text if a string constant); None for a mark
    stack: list[tuple[int, str | None] | None] = []
    memo: dict[int, tuple[int, str | None] | None] = {}
    try:
        for op, arg, _ in pickletools.genops(stream):
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
                continue
            if op.name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
                continue
            if op.name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
                continue
            if refused is not None:
                if op.name in ("GLOBAL", "INST"):
                    module, _, name = arg.partition(" ")
                    if (full := refused(module, name)) is not None:
                        raise _code_refused(what, _global_detail(full))
                elif op.name == "STACK_GLOBAL":
                    texts = [item[1] if item else None for item in stack[-2:]]
                    if len(texts) != 2 or None in texts:
                        raise _code_refused(what, "it looks up a global by a name it computes")
                    if (full := refused(texts[0], texts[1])) is not None:
                        raise _code_refused(what, _global_detail(full))
                elif op.name in ("EXT1", "EXT2", "EXT4"):
                    raise _code_refused(what, f"it looks up the extension registry's global {arg}")
            size, before = 1, op.stack_before
            if mark in before:
                while (item := stack.pop()) is not None:
                    size += item[0]
            below = before.index(mark) if mark in before else len(before)
            for _ in range(below):
                item = stack.pop()
                size += item[0] if item else 0
            if size > limit:
                raise FileError(
                    f"{what}: refused: the pickle's objects expand to more than {limit:,} "
                    f"nodes (shared references nested to blow up); nothing in it was run"
                )
            text = arg if op.name in _STRING_OPS and isinstance(arg, str) else None
            stack.extend(None if obj is mark else (size, text) for obj in op.stack_after)
    except FileError:
        raise
    except (ValueError, IndexError, KeyError, TypeError) as e:
        raise FileError(
            f"{what}: cannot read as torch: not a valid pickle: {str(e)[:200]}"
        ) from None


def _check_torch_file(path: Path, limit: int) -> None:
    """Bounds what ``torch.load`` will do: the pickle's structure, the globals it names, and the
    bytes it may read."""
    import zipfile

    refused = _allowed_globals()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            storages = [m for m in members if "/data/" in m.filename]  # archive/data/<key>
            _check_size(str(path), sum(m.file_size for m in storages), limit)
            pickles = [m for m in members if m.filename.endswith("data.pkl")]
            if len(pickles) != 1:
                raise FileError(f"{path}: not a PyTorch checkpoint (no single data.pkl inside)")
            with archive.open(pickles[0]) as stream:
                _check_pickle(stream, str(path), refused=refused)
        return
    _check_size(str(path), path.stat().st_size, limit)
    with path.open("rb") as stream:  # the legacy format: 4 pickles, then the storages
        for i in range(4):  # each checked before the next is read: code in the first is named
            # the magic number, protocol version and system info are plain data: no global
            header = i < 3
            _check_pickle(
                stream, str(path), refused=(lambda m, n: f"{m}.{n}") if header else refused
            )


def _unpickling_refused(path: Path, error: Exception) -> FileError:
    """torch.load's refusal, in our words: the global or instruction it names, never its advice
    (which is to turn off the one thing that keeps the file's code from running)."""
    import pickletools

    text = str(error)
    if found := re.search(r"GLOBAL ([\w.]+)", text):
        return _code_refused(str(path), _global_detail(found.group(1).rstrip(".")))
    if found := re.search(r"Unsupported operand (\d+)", text):
        op = pickletools.code2op.get(chr(int(found.group(1))))
        name = op.name if op else f"opcode {found.group(1)}"
        return _code_refused(str(path), f"it uses the pickle instruction {name}")
    return _code_refused(str(path), "it builds objects other than tensors and their containers")


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

    An orbax directory that is missing because a run replacing it (``save(force=True)``) was
    killed midway is restored first, and a note says so.

    Raises:
        FileError: unreadable, truncated or corrupted files, wrong formats, refused pickles.
    """
    limit = byte_limit(max_bytes)
    path = Path(path)
    kind = file_format(path)
    notes: list[str] = []
    if kind == "orbax" and not os.path.lexists(path):
        _restore(path, notes.append)
    if not path.exists():
        raise FileError(f"{path}: no such file or directory")
    if kind == "orbax" and not path.is_dir():
        raise FileError(f"{path}: expected an orbax checkpoint directory")
    if kind != "orbax" and not path.is_file():
        raise FileError(f"{path}: not a file")
    try:
        weights, claim = _read(path, kind, limit)
    except FileError:
        raise
    except Exception as e:  # any reader's failure on a bad file becomes one clear message
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise FileError(f"{path}: cannot read as {kind}: {type(e).__name__}: {first}") from None
    weights.notes[:0] = notes
    weights.tensors = _native(weights.tensors)
    _check_size(str(path), sum(v.nbytes for v in weights.tensors.values()), limit)
    _check_names(weights.tensors, weights.framework, path, claim)
    if weights.framework == "flax":
        _check_paths(weights.tensors, path)
    weights.model = _metadata(weights.model, "model", path)
    weights.attn = _metadata(weights.attn, "attn", path)
    return weights


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "a special file")


def _check_tree(root: Path, limit: int) -> None:
    """Walks an orbax directory before anything in it is opened (symlinked directories not
    followed): only regular files, symlinks to regular files and directories; a FIFO, socket or
    device would block a reader forever or feed it without end. At most
    :data:`ORBAX_MAX_ENTRIES` entries, :data:`ORBAX_MAX_DEPTH` levels, and files of at most
    ``limit`` bytes plus 1/16 of it plus :data:`ORBAX_METADATA_ALLOWANCE`."""
    allowed = limit + limit // 16 + ORBAX_METADATA_ALLOWANCE
    only = "an orbax checkpoint holds only regular files and directories; nothing was read"
    total = entries = 0
    pending = [(root, 0)]
    while pending:
        directory, depth = pending.pop()
        try:
            with os.scandir(directory) as listing:
                for entry in listing:
                    entries += 1
                    if entries > ORBAX_MAX_ENTRIES:
                        raise FileError(
                            f"{root}: refused: more than {ORBAX_MAX_ENTRIES:,} files and "
                            f"directories in this checkpoint; nothing was read"
                        )
                    mode = entry.stat(follow_symlinks=False).st_mode
                    if stat.S_ISDIR(mode):
                        if depth + 1 > ORBAX_MAX_DEPTH:
                            raise FileError(
                                f"{entry.path}: refused: directories nested more than "
                                f"{ORBAX_MAX_DEPTH} deep in this checkpoint; nothing was read"
                            )
                        pending.append((Path(entry.path), depth + 1))
                        continue
                    if stat.S_ISLNK(mode):
                        target = os.readlink(entry.path)
                        try:
                            info = os.stat(entry.path)
                        except OSError as e:
                            raise FileError(
                                f"{entry.path}: refused: a symlink to {target!r}, which does "
                                f"not resolve ({e.strerror}); {only}"
                            ) from None
                        if not stat.S_ISREG(info.st_mode):
                            raise FileError(
                                f"{entry.path}: refused: a symlink to {_kind(info.st_mode)} "
                                f"({target}); {only}"
                            )
                    else:
                        info = entry.stat(follow_symlinks=False)
                        if not stat.S_ISREG(info.st_mode):
                            raise FileError(
                                f"{entry.path}: refused: {_kind(info.st_mode)}, not a regular "
                                f"file; {only}"
                            )
                    total += info.st_size
                    if total > allowed:
                        raise FileError(
                            f"{root}: refused: its files hold more than {allowed:,} bytes, the "
                            f"limit of {limit:,} bytes of tensors plus room for metadata (raise "
                            f"it with --max-bytes, max_bytes= or ${MAX_BYTES_ENV})"
                        )
        except FileError:
            raise
        except OSError as e:
            name = e.filename or directory
            raise FileError(f"{name}: cannot read this checkpoint's files: {e.strerror}") from None


def _read_metadata(meta_path: Path) -> dict[str, Any]:
    """``se_flax.json``, if there: a regular file (opened without blocking, so a FIFO swapped in
    cannot stall it) of at most :data:`METADATA_MAX_BYTES`, holding a JSON object."""
    try:
        fd = os.open(meta_path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        if os.path.lexists(meta_path):
            raise FileError(f"{meta_path}: a symlink that does not resolve") from None
        return {}
    except OSError as e:
        raise FileError(f"{meta_path}: cannot open: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FileError(f"{meta_path}: refused: {_kind(mode)}, not a regular file")
        data = f.read(METADATA_MAX_BYTES + 1)
    if len(data) > METADATA_MAX_BYTES:
        raise FileError(
            f"{meta_path}: refused: more than {METADATA_MAX_BYTES:,} bytes (it holds a few names)"
        )
    try:
        meta = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileError(f"{meta_path}: not valid JSON: {str(e)[:200]}") from None
    if not isinstance(meta, dict):
        raise FileError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    return meta


def _read(path: Path, kind: str, limit: int) -> tuple[Weights, str]:
    """The weights, and how the file claims their framework (for :func:`_check_names`)."""
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
            raise _unpickling_refused(path, e) from None
        except Exception as e:  # never pass on torch's advice to load it unsafely
            if "weights_only" in str(e):
                raise _unpickling_refused(path, e) from None
            raise
        sd = _state_dict(obj, path, notes)
        _check_storage(sd, path, limit)
        weights = Weights("torch", {k: to_numpy(v) for k, v in sd.items()}, notes=notes)
        return weights, "a PyTorch file holds state_dict keys"
    if kind == "safetensors":
        from safetensors import safe_open
        from safetensors.numpy import load_file

        _check_size(str(path), path.stat().st_size, limit)
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
        tensors = load_file(path)
        framework = _metadata_framework(metadata)
        if framework is not None:
            key = "framework" if "framework" in metadata else "layout"
            claim = f"the file's metadata says {key}={framework}"
        else:
            framework = "flax" if any("/" in k for k in tensors) else "torch"
            notes.append(f"no framework in the file's metadata: keys read as {framework}'s")
            which = "a key holding /" if framework == "flax" else "no key holding /"
            claim = (
                f"the file's metadata names no framework, and {which} made it read as {framework}'s"
            )
        weights = Weights(
            framework,
            tensors,
            metadata.get("model"),
            metadata.get("attn"),
            notes,
            _options(metadata, path),
        )
        return weights, claim
    if kind == "msgpack":
        from flax import serialization

        _check_size(str(path), path.stat().st_size, limit)
        tree = serialization.msgpack_restore(path.read_bytes())
        weights = Weights("flax", _flatten_flax(tree, str(path)), notes=notes)
        return weights, "a msgpack file holds Flax variables"
    _check_tree(path, limit)  # before anything in it is opened
    meta_path = path / METADATA_FILE
    meta = _read_metadata(meta_path)
    import jax
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        shapes = checkpointer.metadata(path.resolve()).item_metadata
        sizes = [
            int(np.prod(m.shape, dtype=np.int64)) * np.dtype(m.dtype).itemsize
            for m in jax.tree.leaves(shapes)
        ]
        _check_size(str(path), sum(sizes), limit)
        tree = checkpointer.restore(path.resolve())
    weights = Weights(
        "flax",
        _flatten_flax(tree, str(path)),
        meta.get("model"),
        meta.get("attn"),
        notes,
        _options(meta, meta_path),
    )
    return weights, "an orbax checkpoint holds Flax variables"


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


_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2  # linux/fs.h
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM}


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux's ``renameat2`` (glibc >= 2.28): True once done, False where the system or the file
    system does not have it (or this flag); any other failure raises OSError."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        call = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    call.restype = ctypes.c_int
    if call(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), os.fspath(src), None, os.fspath(dst))


def _exchange(a: Path, b: Path) -> bool:
    """Swaps ``a`` and ``b`` atomically (``RENAME_EXCHANGE``); False where that cannot be done."""
    return _renameat2(a, b, _RENAME_EXCHANGE)


def _rename(src: Path, dst: Path) -> None:
    """One step of the two-rename fallback of :func:`_swap` (its own name, for the tests)."""
    os.rename(src, dst)


def _move_new(src: Path, dst: Path) -> None:
    """Renames ``src`` to ``dst`` only if nothing is there (FileExistsError otherwise)."""
    if not _renameat2(src, dst, _RENAME_NOREPLACE):
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(dst))
        os.rename(src, dst)


def _claim(written: Path, path: Path) -> None:
    """Moves ``written`` to ``path`` only if nothing is there, atomically (two writers without
    force: one wins, the other fails, nothing is replaced)."""
    try:
        if written.is_dir():
            if _renameat2(written, path, _RENAME_NOREPLACE):
                return
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


_RANDOM_HEX = 8  # the random part of a temporary directory's name
_OWNER_FILE = "owner.json"  # in a temporary directory: whose it is, for what destination
_ASIDE = "replaced"  # in a temporary directory: the checkpoint a --force moved aside


def _name_max(directory: Path) -> int:
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _temporary_prefix(path: Path) -> str:
    """The start of the names of the temporary directories written next to ``path``:
    ``.{name}.``, then :data:`_RANDOM_HEX` hex digits. Where that would not fit the file
    system's name limit (in bytes of its encoding), the name is cut (not inside a character)
    and a hash of the whole follows: ``.{start}~{sha256[:12]}.``."""
    name = os.fsencode(path.name)
    room = _name_max(path.parent) - 2 - _RANDOM_HEX
    if len(name) <= room:
        return f".{path.name}."
    digest = hashlib.sha256(name).hexdigest()[:12]
    cut = name[: max(room - 13, 0)]
    for drop in range(4):  # a UTF-8 character is at most 4 bytes
        try:
            cut[: len(cut) - drop].decode(sys.getfilesystemencoding())
        except UnicodeDecodeError:
            continue
        cut = cut[: len(cut) - drop]
        break
    return f".{os.fsdecode(cut)}~{digest}."


def is_leftover(name: str, output: str | os.PathLike) -> bool:
    """Whether ``name``, an entry next to ``output``, is one of the temporary directories that
    writing ``output`` makes: one being written now, or one a killed run left behind."""
    prefix = re.escape(_temporary_prefix(Path(output)))
    return re.fullmatch(f"{prefix}[0-9a-f]{{{_RANDOM_HEX}}}", name) is not None


def _destination(path: Path) -> str:
    return os.path.join(os.path.realpath(path.parent), os.fsdecode(path.name))


def _temporary_directory(path: Path) -> Path:
    """A new temporary directory next to ``path``, with an owner file (the destination, this
    process and host) written before anything else happens in it."""
    prefix = _temporary_prefix(path)
    for _ in range(100):
        tmp = path.parent / f"{prefix}{secrets.token_hex(_RANDOM_HEX // 2)}"
        try:
            os.mkdir(tmp, 0o700)
        except FileExistsError:
            continue
        break
    else:
        raise FileError(f"{path.parent}: no free name for a temporary directory")
    owner = {"destination": _destination(path), "pid": os.getpid(), "host": socket.gethostname()}
    (tmp / _OWNER_FILE).write_text(json.dumps(owner))
    return tmp


def _owner(leftover: Path) -> dict[str, Any] | None:
    """A temporary directory's owner file, or None (absent, not a small regular file, not JSON)."""
    try:
        fd = os.open(leftover / _OWNER_FILE, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = f.read(65537)
    try:
        owner = json.loads(data) if len(data) <= 65536 else None
    except ValueError:
        return None
    return owner if isinstance(owner, dict) else None


def _alive(pid: Any) -> bool:
    """Whether process ``pid`` may be running (anything unknown counts as running)."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0 or os.name != "posix":
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _dead_leftovers(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The temporary directories next to ``path`` that runs writing it left behind, with their
    owner files: the owner file names ``path``, on this host, from a process that is gone. One
    whose owner may be alive is never among them."""
    destination = _destination(path)
    try:
        with os.scandir(path.parent) as listing:
            leftovers = sorted(Path(e.path) for e in listing if is_leftover(e.name, path))
    except OSError:
        return []
    found = []
    for leftover in leftovers:
        owner = _owner(leftover)
        if (
            owner is not None
            and owner.get("destination") == destination
            and owner.get("host") == socket.gethostname()
            and not _alive(owner.get("pid"))
        ):
            found.append((leftover, owner))
    return found


def _restore(path: Path, log: Callable[[str], None]) -> bool:
    """Puts back the checkpoint a killed ``save(force=True)`` had moved aside (where the system
    cannot swap two directories at once): ``path`` absent, and a dead run's temporary directory
    next to it (:func:`_dead_leftovers`) holds it. True if one was restored."""
    if os.path.lexists(path):
        return False
    for leftover, owner in _dead_leftovers(path):
        aside = leftover / _ASIDE
        if aside.is_symlink() or not aside.is_dir():
            continue
        try:
            _move_new(aside, path)
        except OSError:
            return False
        shutil.rmtree(leftover, ignore_errors=True)
        log(
            f"restored {path}: a run replacing it (process {owner['pid']}, now gone) was killed "
            f"after moving it aside into {leftover.name}; it is back as it was"
        )
        return True
    return False


def _sweep(path: Path, log: Callable[[str], None]) -> None:
    """Removes the temporary directories that killed runs writing ``path`` left behind
    (:func:`_dead_leftovers`) and that hold nothing to restore: ``path`` is there (the new
    checkpoint, or the old one an exchange kept), or they hold no checkpoint moved aside. They
    are this package's own."""
    for leftover, owner in _dead_leftovers(path):
        if os.path.lexists(leftover / _ASIDE) and not os.path.lexists(path):
            continue
        shutil.rmtree(leftover, ignore_errors=True)
        log(
            f"removed {leftover.name} next to {path}: the temporary directory of a run writing it "
            f"(process {owner['pid']}, now gone) that was killed"
        )


def _swap(new: Path, path: Path, tmp: Path) -> None:
    """Puts the directory ``new`` at ``path``, in place of the checkpoint there: one atomic
    exchange where the system has it (the old one then lies at ``new``, removed with ``tmp``);
    else two renames, the old one first moved aside into ``tmp``, whose owner file lets the next
    run put it back (:func:`_restore`) if this one is killed between them."""
    try:
        if _exchange(new, path):
            return
        aside = tmp / _ASIDE
        _rename(path, aside)
    except OSError as e:
        raise FileError(f"{path}: cannot replace it ({e}); it is as it was") from None
    try:
        _rename(new, path)
    except OSError as e:
        try:
            _move_new(aside, path)
            where = "the old one is back in place"
        except OSError:
            where = f"the old one is kept at {aside}"
        raise FileError(f"{path}: cannot move the new checkpoint there ({e}); {where}") from None


def _put_back(path: Path, aside: Path) -> bool:
    """After an interrupted :func:`_swap`: the old checkpoint back at ``path`` if it is still
    aside and ``path`` is empty. False if it must stay where it is (its temporary directory is
    then kept)."""
    if not os.path.lexists(aside) or os.path.lexists(path):
        return True
    try:
        _move_new(aside, path)
    except OSError:
        return False
    return True


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=4)


@contextmanager
def _atomic(path: Path, force: bool, log: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Yields a temporary path next to ``path`` (in a temporary directory, a short name with
    ``path``'s extension); moves it onto ``path`` only on success.

    Without ``force`` an existing ``path`` is an error, also one that appears while writing.
    With it, only a file or a checkpoint directory se-flax wrote is replaced, atomically: the
    destination holds the old or the new one whenever the process is killed, or the old one
    moved aside, which the next run on ``path`` (this, or reading it) restores, saying so to
    ``log`` (default: a warning).
    """
    note = log if log is not None else _warn
    if not os.path.lexists(path):
        _restore(path, note)
    _sweep(path, note)
    if path.exists() and not force:
        raise FileError(f"{path} exists; pass --force (force=True) to overwrite it")
    if force:
        _replaceable(path, directory=None)  # what is written is known once it is
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_directory(path)
    target = tmp / f"w{path.suffix}"  # fits: the suffix is shorter than path's name
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
        if target.is_dir() and path.is_dir() and not path.is_symlink():
            _swap(target, path, tmp)  # a checkpoint se-flax wrote, removed with tmp
        else:
            os.replace(target, path)
    finally:
        if _put_back(path, tmp / _ASIDE):
            shutil.rmtree(tmp, ignore_errors=True)


def save(
    weights: Weights,
    path: str | os.PathLike,
    force: bool = False,
    *,
    check: Callable[[Path], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> None:
    """Writes ``weights`` in the format of ``path``'s extension, atomically: a failure leaves
    nothing behind, and an existing ``path`` is replaced only with ``force``, so that a kill at
    any moment leaves the old or the new one there (or, where the system cannot swap two
    directories at once, the old one moved aside, which the next run restores).

    Args:
        check: called with the written file (at a temporary path) before it is moved into
            place; an exception from it leaves nothing written (``se-convert --verify``).
        log: told what was noticed (a checkpoint restored after a killed run); default: a
            warning.
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
    with _atomic(path, force, log) as tmp:
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
