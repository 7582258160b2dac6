"""``load``: any checkpoint file, or timm's pretrained layout (a hub id or a directory)."""

from __future__ import annotations

import os
from pathlib import Path

from se_weights._formats import Weights, byte_limit, read_file
from se_weights._hub import CONFIG_FILE, is_hub_id, read_pretrained

__all__ = ["load"]


def load(path: str | os.PathLike, *, max_bytes: int | None = None) -> Weights:
    """Reads a checkpoint of any supported format. Never runs code stored in a file.

    ``path`` may also be timm's pretrained layout: a directory holding ``config.json`` and
    ``model.safetensors``, or a hub id (``timm/seresnet50.a1_in1k``, ``hf-hub:...``) read
    through the Hugging Face cache; the weights then record the config's architecture.

    Hostile files get bounded time and memory: a file holding more than ``max_bytes`` of
    tensors (default 16 GiB, or ``$SE_CONVERT_MAX_BYTES``), a pickle whose objects expand
    beyond 10**7 nodes, and a tensor whose storage is smaller than its elements are refused
    before anything is materialised. Arrays come back in the machine's byte order.

    Raises:
        FileError: unreadable, truncated or corrupted files, wrong formats, refused pickles.
    """
    byte_limit(max_bytes)  # a bad limit is an error whatever the source
    if not (is_hub_id(path) or (Path(path) / CONFIG_FILE).is_file()):
        return read_file(path, max_bytes=max_bytes)
    pretrained = read_pretrained(path)
    note = f"read timm's layout from {pretrained.directory}"
    if pretrained.cfg.tag:
        note += f" (tag {pretrained.cfg.tag})"
    options = pretrained.options(None, False)
    return Weights(
        "torch",
        pretrained.tensors,
        pretrained.architecture,
        notes=[note, *pretrained.notes],
        options={k: options[k] for k in ("num_classes", "in_chans")},
    )
