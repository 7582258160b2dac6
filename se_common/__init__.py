"""Framework-free pieces shared by ``se_torch`` and ``se_flax``: width rules and option checks.

Nothing here imports torch or jax, so each framework package depends only on its own framework.
"""

from se_common._checks import check_feature_map
from se_common._widths import make_divisible, resolve_rd_channels

__all__ = ["check_feature_map", "make_divisible", "resolve_rd_channels"]
