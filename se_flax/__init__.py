"""Flax Squeeze-and-Excitation modules (channels last), twins of the PyTorch ``se_torch``.

Linen modules live here; NNX twins in ``se_flax.nnx``; the weight converter in ``se_flax.convert``.
"""

from se_common import make_divisible, resolve_rd_channels
from se_flax._squeeze_excite import SqueezeExcite

__all__ = ["SqueezeExcite", "make_divisible", "resolve_rd_channels"]
