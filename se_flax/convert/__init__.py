"""One strict, declarative weight converter between ``se_torch`` and ``se_flax``, both directions.

    >>> from se_flax.convert import torch_to_flax, flax_to_torch
    >>> variables = torch_to_flax(torch_module_or_state_dict)   # {"params": ...}
    >>> flax_to_torch(variables, torch_module)                   # loads strictly, in place

Importing this package does not import torch; NumPy / safetensors-style dicts convert without it.
"""

from se_flax.convert._convert import ConversionError, flax_to_torch, torch_to_flax, update_nnx
from se_flax.convert._files import FileError, Weights, convert_file, load, save
from se_flax.convert._rules import RULES, Layout, Rule, Tensor

__all__ = [
    "RULES",
    "ConversionError",
    "FileError",
    "Layout",
    "Rule",
    "Tensor",
    "Weights",
    "convert_file",
    "flax_to_torch",
    "load",
    "save",
    "torch_to_flax",
    "update_nnx",
]
