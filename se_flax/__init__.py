"""Flax Squeeze-and-Excitation modules and relatives (channels last), twins of ``se_torch``.

Linen modules live here; NNX twins in ``se_flax.nnx``; the weight converter in ``se_flax.convert``.
"""

from se_common import make_divisible, resolve_rd_channels
from se_flax._attention import (
    CbamModule,
    ChannelAttn,
    EcaModule,
    EffectiveSEModule,
    SpatialAttn,
)
from se_flax._batchnorm import BatchNorm
from se_flax._layers import ConvNormAct, PointwiseConv
from se_flax._resnet import (
    ATTN_LAYERS,
    BasicBlock,
    Bottleneck,
    ResNet,
    SelectiveKernelBasic,
    SelectiveKernelBottleneck,
    create_model,
)
from se_flax._selective_kernel import SelectiveKernel, SelectiveKernelAttn
from se_flax._squeeze_excite import SqueezeExcite

__all__ = [
    "ATTN_LAYERS",
    "BasicBlock",
    "BatchNorm",
    "Bottleneck",
    "CbamModule",
    "ChannelAttn",
    "ConvNormAct",
    "EcaModule",
    "EffectiveSEModule",
    "PointwiseConv",
    "ResNet",
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
