"""Flax Squeeze-and-Excitation modules and relatives (channels last), twins of ``se_torch``.

Linen modules live here; NNX twins in ``se_flax.nnx``; the weight converter in ``se_flax.convert``.
Nothing here imports torch or ``se_torch`` (the converter does, lazily, only to read and write
PyTorch tensors and files).
"""

from se_common import make_divisible, resolve_rd_channels
from se_flax._attention import CbamModule, ChannelAttn, EcaModule, EffectiveSEModule, SpatialAttn
from se_flax._batchnorm import BatchNorm
from se_flax._layers import ConvNormAct, PointwiseConv
from se_flax._resnet import (
    ATTN_LAYERS,
    BLOCKS,
    BasicBlock,
    BlockLayers,
    Bottleneck,
    ResidualBlock,
    ResNet,
    SelectiveKernelBasic,
    SelectiveKernelBottleneck,
    create_model,
)
from se_flax._selective_kernel import SelectiveKernel, SelectiveKernelAttn
from se_flax._squeeze_excite import SELayer, SqueezeExcite

__all__ = [
    "ATTN_LAYERS",
    "BLOCKS",
    "BasicBlock",
    "BatchNorm",
    "BlockLayers",
    "Bottleneck",
    "CbamModule",
    "ChannelAttn",
    "ConvNormAct",
    "EcaModule",
    "EffectiveSEModule",
    "PointwiseConv",
    "ResNet",
    "ResidualBlock",
    "SELayer",
    "SelectiveKernel",
    "SelectiveKernelAttn",
    "SelectiveKernelBasic",
    "SelectiveKernelBottleneck",
    "SpatialAttn",
    "SqueezeExcite",
    "create_model",
    "make_divisible",
    "resolve_rd_channels",
]
