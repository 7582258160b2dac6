"""Framework-free pieces shared by ``se_torch`` and ``se_flax``: widths, checks, model configs.

Nothing here imports torch or jax, so each framework package depends only on its own framework.
"""

from se_common._checks import check_feature_map, check_head_options
from se_common._configs import MODEL_CONFIGS, BlockSpec, ResNetConfig, get_config, model_config
from se_common._widths import make_divisible, resolve_rd_channels

__all__ = [
    "MODEL_CONFIGS",
    "BlockSpec",
    "ResNetConfig",
    "check_feature_map",
    "check_head_options",
    "get_config",
    "make_divisible",
    "model_config",
    "resolve_rd_channels",
]
