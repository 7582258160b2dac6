"""Framework-free pieces shared by ``se_torch`` and ``se_flax``: widths, checks, model configs.

Nothing here imports torch or jax, so each framework package depends only on its own framework.
"""

from se_common._checks import check_feature_map, check_head_options
from se_common._configs import (
    MODEL_CONFIGS,
    BlockSpec,
    ResNetConfig,
    SelectiveKernelConfig,
    get_config,
    model_config,
)
from se_common._layers import (
    conv_padding,
    eca_kernel_size,
    odd_kernel_size,
    out_channels_or,
    selective_kernel_paths,
)
from se_common._widths import make_divisible, resolve_rd_channels

__all__ = [
    "MODEL_CONFIGS",
    "BlockSpec",
    "ResNetConfig",
    "SelectiveKernelConfig",
    "check_feature_map",
    "check_head_options",
    "conv_padding",
    "eca_kernel_size",
    "get_config",
    "make_divisible",
    "model_config",
    "odd_kernel_size",
    "out_channels_or",
    "resolve_rd_channels",
    "selective_kernel_paths",
]
