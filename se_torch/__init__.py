"""PyTorch Squeeze-and-Excitation modules (NCHW), twins of the Flax modules in ``se_flax``."""

from se_common import make_divisible, resolve_rd_channels
from se_torch._squeeze_excite import SELayer, SElayer, SqueezeExcite

__all__ = ["SELayer", "SElayer", "SqueezeExcite", "make_divisible", "resolve_rd_channels"]
