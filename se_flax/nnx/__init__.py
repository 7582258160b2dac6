"""Flax NNX twins of the linen modules: ``se_nnx.SqueezeExcite(channels, ..., rngs=...)``."""

from se_flax.nnx._squeeze_excite import SqueezeExcite

__all__ = ["SqueezeExcite"]
