"""Flax NNX twins of the linen modules (channels last): same options, variable paths and numbers.

NNX conventions: constructors take the input channels and ``rngs``; ``model.train()`` and
``model.eval()`` switch every BatchNorm; variables are ``nnx.Param`` and ``nnx.BatchStat``.

>>> from flax import nnx
>>> import se_flax
>>> model = se_flax.nnx.create_model("seresnet50", num_classes=10, rngs=nnx.Rngs(0))
>>> se = se_flax.nnx.SqueezeExcite(64, rngs=nnx.Rngs(0))
"""

from se_common import list_models
from se_flax.nnx._attention import (
    CbamModule,
    ChannelAttn,
    EcaModule,
    EffectiveSEModule,
    SpatialAttn,
)
from se_flax.nnx._efficientnet import (
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
from se_flax.nnx._factory import create_model
from se_flax.nnx._layers import (
    BatchNorm,
    Conv,
    ConvNormAct,
    DropBlock,
    DropPath,
    PointwiseConv,
)
from se_flax.nnx._pretrained import from_pretrained, save_pretrained
from se_flax.nnx._regnet import RegBottleneck, RegNet, RegPreBottleneck
from se_flax.nnx._resnet import (
    ATTN_LAYERS,
    BLOCKS,
    BasicBlock,
    BlockLayers,
    Bottleneck,
    ResidualBlock,
    ResNet,
    SelectiveKernelBasic,
    SelectiveKernelBottleneck,
)
from se_flax.nnx._selective_kernel import SelectiveKernel, SelectiveKernelAttn
from se_flax.nnx._squeeze_excite import SELayer, SqueezeExcite

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
    "DropBlock",
    "DropPath",
    "EcaModule",
    "EdgeResidual",
    "EffectiveSEModule",
    "EfficientNet",
    "InvertedResidual",
    "MBLayers",
    "MBSqueezeExcite",
    "MobileNetV3",
    "PointwiseConv",
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
    "create_model",
    "from_pretrained",
    "list_models",
    "save_pretrained",
]
