"""One strict, declarative weight converter between PyTorch and Flax (linen and NNX), both ways.

    >>> from se_convert import torch_to_flax, flax_to_torch
    >>> variables = torch_to_flax(torch_module, target=flax_shapes)   # any model, by layer types
    >>> flax_to_torch(variables, torch_module)                        # loads strictly, in place
    >>> tensors = read_pretrained("timm/seresnet50.a1_in1k").tensors  # timm's hub weights, NumPy
    >>> convert_file("seresnet18.pth", "seresnet18.msgpack", "seresnet18", verify=True)

This package is the converter's core (:mod:`se_weights`: rule tables, engine, arrays, file
formats, the hub, which imports neither twin) and, above both twins, its command layer: models
by name, ``convert_file`` and ``se-convert``, which import ``se_torch`` and ``se_flax`` only
when they build a model. ``se_flax.convert`` is the core under its earlier name.
"""

from se_convert._command import convert_file
from se_convert._models import Model, model_names
from se_weights import (
    CONTEXTS,
    FORMATS,
    LAYER_RULES,
    RULES,
    Child,
    Context,
    ConversionError,
    DroppedTensorsWarning,
    FileError,
    Framework,
    Layout,
    Pretrained,
    Rename,
    Rule,
    Tensor,
    Weights,
    flax_to_state_dict,
    flax_to_torch,
    load,
    read_pretrained,
    save,
    torch_to_flax,
    update_nnx,
)

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
    "flax_to_state_dict",
    "flax_to_torch",
    "load",
    "model_names",
    "read_pretrained",
    "save",
    "torch_to_flax",
    "update_nnx",
]
