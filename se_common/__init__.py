"""Framework-free pieces shared by ``se_torch`` and ``se_flax``: widths, checks, model configs
and the registries of block types, attention layers and models.

Nothing here imports torch or jax, so each framework package depends only on its own framework.
"""

from se_common._checks import check_feature_map, check_head_options, lookup, positive_int
from se_common._configs import (
    ATTENTION,
    BLOCK_TYPES,
    MODEL_CONFIGS,
    BlockSpec,
    BlockType,
    ResNetConfig,
    SelectiveKernelConfig,
    config_name,
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
from se_common._pretrained import PretrainedCfg
from se_common._widths import classic_rd_channels, make_divisible, resolve_rd_channels

__all__ = [
    "ATTENTION",
    "BLOCK_TYPES",
    "MODEL_CONFIGS",
    "BlockSpec",
    "BlockType",
    "PretrainedCfg",
    "ResNetConfig",
    "SelectiveKernelConfig",
    "check_feature_map",
    "check_head_options",
    "classic_rd_channels",
    "config_name",
    "conv_padding",
    "eca_kernel_size",
    "get_config",
    "lookup",
    "make_divisible",
    "model_config",
    "odd_kernel_size",
    "out_channels_or",
    "positive_int",
    "resolve_rd_channels",
    "selective_kernel_paths",
]
