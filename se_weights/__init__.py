"""The converter's core, below both twins: the rule tables, the conversion engine, bit-exact
array moves, weight files and timm's pretrained layout (the hub reader and writer).

    >>> from se_weights import torch_to_flax, flax_to_torch
    >>> variables = torch_to_flax(torch_module, target=flax_shapes)   # any model, by layer types
    >>> flax_to_torch(variables, torch_module)                        # loads strictly, in place
    >>> tensors = read_pretrained("timm/seresnet50.a1_in1k").tensors  # timm's hub weights, NumPy

It imports neither ``se_torch`` nor ``se_flax`` (both build on it), and torch only to read or
write PyTorch tensors and files: NumPy/safetensors dicts convert without torch installed. Users
import it as :mod:`se_convert`, which adds the command layer above both twins (``convert_file``,
``se-convert``).
"""

from se_weights._convert import (
    ConversionError,
    DroppedTensorsWarning,
    Rename,
    flax_to_state_dict,
    flax_to_torch,
    torch_to_flax,
    update_nnx,
)
from se_weights._formats import FORMATS, FileError, Framework, Weights, save
from se_weights._hub import Pretrained, read_pretrained
from se_weights._load import load
from se_weights._rules import CONTEXTS, LAYER_RULES, RULES, Child, Context, Layout, Rule, Tensor

__all__ = [
    "CONTEXTS",
    "FORMATS",
    "LAYER_RULES",
    "RULES",
    "Child",
    "Context",
    "ConversionError",
    "DroppedTensorsWarning",
    "FileError",
    "Framework",
    "Layout",
    "Pretrained",
    "Rename",
    "Rule",
    "Tensor",
    "Weights",
    "flax_to_state_dict",
    "flax_to_torch",
    "load",
    "read_pretrained",
    "save",
    "torch_to_flax",
    "update_nnx",
]
