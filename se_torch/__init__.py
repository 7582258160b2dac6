"""PyTorch Squeeze-and-Excitation modules and relatives (NCHW), twins of ``se_flax``'s."""

from se_common import PretrainedCfg, list_models, make_divisible, resolve_rd_channels
from se_torch._attention import CbamModule, ChannelAttn, EcaModule, EffectiveSEModule, SpatialAttn
from se_torch._efficientnet import (
    MB_BLOCKS,
    BatchNormAct2d,
    Conv2dSame,
    ConvBnAct,
    DepthwiseSeparableConv,
    EdgeResidual,
    EfficientNet,
    InvertedResidual,
    MBSqueezeExcite,
    MixedConv2d,
    MobileNetV3,
)
from se_torch._factory import create_model
from se_torch._layers import ConvNormAct, DropBlock2d, DropPath
from se_torch._pretrained import from_pretrained, save_pretrained
from se_torch._regnet import RegBottleneck, RegNet, RegPreBottleneck
from se_torch._resnet import (
    ATTN_LAYERS,
    BLOCKS,
    BasicBlock,
    BlurPool2d,
    Bottleneck,
    ResidualBlock,
    ResNet,
    SelectiveKernelBasic,
    SelectiveKernelBottleneck,
    conv2d,
)
from se_torch._selective_kernel import SelectiveKernel, SelectiveKernelAttn
from se_torch._squeeze_excite import SELayer, SElayer, SqueezeExcite

__all__ = [
    "ATTN_LAYERS",
    "BLOCKS",
    "MB_BLOCKS",
    "BasicBlock",
    "BatchNormAct2d",
    "BlurPool2d",
    "Bottleneck",
    "CbamModule",
    "ChannelAttn",
    "Conv2dSame",
    "ConvBnAct",
    "ConvNormAct",
    "DepthwiseSeparableConv",
    "DropBlock2d",
    "DropPath",
    "EcaModule",
    "EdgeResidual",
    "EffectiveSEModule",
    "EfficientNet",
    "InvertedResidual",
    "MBSqueezeExcite",
    "MixedConv2d",
    "MobileNetV3",
    "PretrainedCfg",
    "RegBottleneck",
    "RegNet",
    "RegPreBottleneck",
    "ResNet",
    "ResidualBlock",
    "SELayer",
    "SElayer",
    "SelectiveKernel",
    "SelectiveKernelAttn",
    "SelectiveKernelBasic",
    "SelectiveKernelBottleneck",
    "SpatialAttn",
    "SqueezeExcite",
    "conv2d",
    "create_model",
    "from_pretrained",
    "list_models",
    "make_divisible",
    "resolve_rd_channels",
    "save_pretrained",
]
