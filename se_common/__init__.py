"""Framework-free pieces shared by ``se_torch`` and ``se_flax``: widths, checks, model configs,
the registries of block types and attention layers, and the one registry of architectures
(``list_models``, ``get_model``), every family's.

Nothing here imports torch or jax, so each framework package depends only on its own framework.
"""

from se_common._checks import check_feature_map, check_head_options, lookup, positive_int
from se_common._configs import (
    ATTENTION,
    BLOCK_TYPES,
    RESNET,
    Attention,
    BlockSpec,
    BlockType,
    ResNetConfig,
    SelectiveKernelConfig,
    batchnorm_keys,
    conv_keys,
    linear_keys,
)
from se_common._layers import (
    conv_padding,
    eca_kernel_size,
    odd_kernel_size,
    out_channels_or,
    selective_kernel_paths,
)
from se_common._pretrained import PretrainedCfg
from se_common._registry import (
    FAMILIES,
    FRONT_ENDS,
    MODELS,
    Architecture,
    Family,
    FeatureInfo,
    ModelArg,
    TensorSpec,
    architecture_of,
    build_model,
    get_model,
    list_models,
    model_feature_info,
    register_model,
)
from se_common._widths import classic_rd_channels, make_divisible, resolve_rd_channels

__all__ = [
    "ATTENTION",
    "BLOCK_TYPES",
    "FAMILIES",
    "FRONT_ENDS",
    "MODELS",
    "RESNET",
    "Architecture",
    "Attention",
    "BlockSpec",
    "BlockType",
    "Family",
    "FeatureInfo",
    "ModelArg",
    "PretrainedCfg",
    "ResNetConfig",
    "SelectiveKernelConfig",
    "TensorSpec",
    "architecture_of",
    "batchnorm_keys",
    "build_model",
    "check_feature_map",
    "check_head_options",
    "classic_rd_channels",
    "conv_keys",
    "conv_padding",
    "eca_kernel_size",
    "get_model",
    "linear_keys",
    "list_models",
    "lookup",
    "make_divisible",
    "model_feature_info",
    "odd_kernel_size",
    "out_channels_or",
    "positive_int",
    "register_model",
    "resolve_rd_channels",
    "selective_kernel_paths",
]
