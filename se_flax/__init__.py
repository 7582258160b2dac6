"""Flax Squeeze-and-Excitation modules (channels last), twins of the PyTorch ``se_torch``.

Linen modules live here; NNX twins in ``se_flax.nnx``; the weight converter in ``se_flax.convert``.
"""

from se_common import make_divisible, resolve_rd_channels
from se_flax._batchnorm import BatchNorm
from se_flax._resnet import (
    ATTN_LAYERS,
    BasicBlock,
    Bottleneck,
    PointwiseConv,
    ResNet,
    create_model,
)
from se_flax._squeeze_excite import SqueezeExcite

__all__ = [
    "ATTN_LAYERS",
    "BasicBlock",
    "BatchNorm",
    "Bottleneck",
    "PointwiseConv",
    "ResNet",
    "SqueezeExcite",
    "create_model",
    "make_divisible",
    "resolve_rd_channels",
]
