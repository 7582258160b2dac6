"""PyTorch Squeeze-and-Excitation modules (NCHW), twins of the Flax modules in ``se_flax``."""

from se_common import make_divisible, resolve_rd_channels
from se_torch._resnet import ATTN_LAYERS, BasicBlock, Bottleneck, ResNet, create_model
from se_torch._squeeze_excite import SELayer, SElayer, SqueezeExcite

__all__ = [
    "ATTN_LAYERS",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "SELayer",
    "SElayer",
    "SqueezeExcite",
    "create_model",
    "make_divisible",
    "resolve_rd_channels",
]
