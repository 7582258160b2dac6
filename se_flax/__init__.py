"""Flax Squeeze-and-Excitation modules and relatives (channels last), twins of ``se_torch``.

Linen modules live here; NNX twins in ``se_flax.nnx``; the weight converter in ``se_flax.convert``.
``se_flax.nnx`` is imported on first use (``import se_flax; se_flax.nnx.ResNet``), so linen users
do not pay for importing ``flax.nnx`` (about 0.13 s on a 2-core CPU).
Nothing here imports torch or ``se_torch`` (the converter does, lazily, only to read and write
PyTorch tensors and files).
"""

import importlib
from typing import TYPE_CHECKING, Any

from se_common import PretrainedCfg, list_models, make_divisible, resolve_rd_channels
from se_flax._attention import CbamModule, ChannelAttn, EcaModule, EffectiveSEModule, SpatialAttn
from se_flax._batchnorm import BatchNorm
from se_flax._efficientnet import (
    MB_BLOCKS,
    ConvBnAct,
    DepthwiseSeparableConv,
    EdgeResidual,
    EfficientNet,
    InvertedResidual,
    MBLayers,
    MBSqueezeExcite,
    MobileNetV3,
)
from se_flax._factory import create_model
from se_flax._grouped import kernels_built
from se_flax._layers import (
    Conv,
    ConvNormAct,
    PointwiseConv,
    avg_pool_2x2,
    blur_pool,
    conv_general_dilated,
    drop_block,
    drop_path,
)
from se_flax._pretrained import from_pretrained, save_pretrained
from se_flax._regnet import RegBottleneck, RegNet, RegPreBottleneck
from se_flax._resnet import (
    ATTN_LAYERS,
    BLOCKS,
    BasicBlock,
    BlockLayers,
    Bottleneck,
    LayerOptions,
    ResidualBlock,
    ResNet,
    SelectiveKernelBasic,
    SelectiveKernelBottleneck,
)
from se_flax._selective_kernel import SelectiveKernel, SelectiveKernelAttn
from se_flax._squeeze_excite import SELayer, SqueezeExcite

__all__ = [
    "ATTN_LAYERS",
    "BLOCKS",
    "MB_BLOCKS",
    "BasicBlock",
    "BatchNorm",
    "BlockLayers",
    "Bottleneck",
    "CbamModule",
    "ChannelAttn",
    "Conv",
    "ConvBnAct",
    "ConvNormAct",
    "DepthwiseSeparableConv",
    "EcaModule",
    "EdgeResidual",
    "EffectiveSEModule",
    "EfficientNet",
    "InvertedResidual",
    "LayerOptions",
    "MBLayers",
    "MBSqueezeExcite",
    "MobileNetV3",
    "PointwiseConv",
    "PretrainedCfg",
    "RegBottleneck",
    "RegNet",
    "RegPreBottleneck",
    "ResNet",
    "ResidualBlock",
    "SELayer",
    "SelectiveKernel",
    "SelectiveKernelAttn",
    "SelectiveKernelBasic",
    "SelectiveKernelBottleneck",
    "SpatialAttn",
    "SqueezeExcite",
    "avg_pool_2x2",
    "blur_pool",
    "conv_general_dilated",
    "create_model",
    "drop_block",
    "drop_path",
    "from_pretrained",
    "kernels_built",
    "list_models",
    "make_divisible",
    "resolve_rd_channels",
    "save_pretrained",
]

_SUBMODULES = ("convert", "distributed", "nnx", "optim", "training")

if TYPE_CHECKING:
    from se_flax import distributed as distributed
    from se_flax import nnx as nnx
    from se_flax import optim as optim
    from se_flax import training as training


def __getattr__(name: str) -> Any:
    """``se_flax.nnx`` (and the other submodules) imported on first access."""
    if name in _SUBMODULES:
        return importlib.import_module(f"se_flax.{name}")
    raise AttributeError(f"module 'se_flax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES])
