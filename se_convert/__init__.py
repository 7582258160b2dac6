"""One strict, declarative weight converter between PyTorch and Flax (linen and NNX), both ways.

    >>> from se_convert import torch_to_flax, flax_to_torch
    >>> variables = torch_to_flax(torch_module, target=flax_shapes)   # any model, by layer types
    >>> flax_to_torch(variables, torch_module)                        # loads strictly, in place
    >>> tensors = read_pretrained("timm/seresnet50.a1_in1k").tensors  # timm's hub weights, NumPy

The core (rule tables, engine, array moves, file formats) imports neither ``se_torch`` nor
``se_flax``, and torch only to read or write PyTorch tensors and files: NumPy/safetensors dicts
convert without torch installed. The command layer (``convert_file``, ``se-convert``) builds
models by name with both twins. ``se_flax.convert`` is this package under its earlier name.
"""

from se_convert._command import convert_file
from se_convert._convert import (
    ConversionError,
    DroppedTensorsWarning,
    Rename,
    flax_to_torch,
    torch_to_flax,
    update_nnx,
)
from se_convert._formats import FORMATS, FileError, Framework, Weights, load, save
from se_convert._hub import Pretrained, read_pretrained
from se_convert._models import Model, model_names
from se_convert._rules import CONTEXTS, LAYER_RULES, RULES, Child, Context, Layout, Rule, Tensor

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
    "Model",
    "Pretrained",
    "Rename",
    "Rule",
    "Tensor",
    "Weights",
    "convert_file",
    "flax_to_torch",
    "load",
    "model_names",
    "read_pretrained",
    "save",
    "torch_to_flax",
    "update_nnx",
]
