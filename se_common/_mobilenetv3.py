"""The MobileNetV3 family on the same parse function: MobileNetV3 large / small and their
TensorFlow ports, LCNet, FBNetV3 and HardCoReNAS (timm's ``mobilenetv3.py`` and
``hardcorenas.py``), as rows of the one registry.

They are EfficientNet-family networks (:class:`se_common.EfficientNetConfig`: the same block
strings, blocks and planning) with MobileNetV3's choices as data: hard-swish activations, SE with
a hard-sigmoid gate, ReLU and widths rounded to multiples of 8 from the expanded channels, and
the "efficient head" (global pool, then ``conv_head``, a 1x1 conv with bias and no BatchNorm,
the activation, the classifier).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from se_common._efficientnet import EfficientNetConfig
from se_common._registry import FAMILIES, Family, register_model

__all__ = ["MOBILENETV3", "NOT_BUILT", "MobileNetV3Config"]


@dataclass(frozen=True)
class MobileNetV3Config(EfficientNetConfig):
    """A MobileNetV3-family network: an :class:`EfficientNetConfig` with timm's
    ``MobileNetV3`` defaults (stem of 16, hard swish, the efficient head with a bias, SE from
    the expanded width with a ReLU, a hard-sigmoid gate and widths divisible by 8).

    Example:
        >>> cfg = MobileNetV3Config(arch_def=[["ds_r1_k3_s1_e1_c16_nre"], ["cn_r1_k1_s1_c96"]])
        >>> cfg.num_features, cfg.head_hidden_size
        (96, 1280)
    """

    stem_size: int = 16
    act_layer: str = "hard_swish"
    se_from_exp: bool = True
    se_gate: str = "hard_sigmoid"
    se_act: str | None = "relu"
    se_rounding: str = "divisible"
    efficient_head: bool = True
    head_bias: bool = True


# timm 1.0's mobilenetv3.py and hardcorenas.py arch definitions, string for string.
_LARGE = (
    ("ds_r1_k3_s1_e1_c16_nre",),
    ("ir_r1_k3_s2_e4_c24_nre", "ir_r1_k3_s1_e3_c24_nre"),
    ("ir_r3_k5_s2_e3_c40_se0.25_nre",),
    ("ir_r1_k3_s2_e6_c80", "ir_r1_k3_s1_e2.5_c80", "ir_r2_k3_s1_e2.3_c80"),
    ("ir_r2_k3_s1_e6_c112_se0.25",),
    ("ir_r3_k5_s2_e6_c160_se0.25",),
    ("cn_r1_k1_s1_c960",),
)
_LARGE_MINIMAL = (
    ("ds_r1_k3_s1_e1_c16",),
    ("ir_r1_k3_s2_e4_c24", "ir_r1_k3_s1_e3_c24"),
    ("ir_r3_k3_s2_e3_c40",),
    ("ir_r1_k3_s2_e6_c80", "ir_r1_k3_s1_e2.5_c80", "ir_r2_k3_s1_e2.3_c80"),
    ("ir_r2_k3_s1_e6_c112",),
    ("ir_r3_k3_s2_e6_c160",),
    ("cn_r1_k1_s1_c960",),
)
_SMALL = (
    ("ds_r1_k3_s2_e1_c16_se0.25_nre",),
    ("ir_r1_k3_s2_e4.5_c24_nre", "ir_r1_k3_s1_e3.67_c24_nre"),
    ("ir_r1_k5_s2_e4_c40_se0.25", "ir_r2_k5_s1_e6_c40_se0.25"),
    ("ir_r2_k5_s1_e3_c48_se0.25",),
    ("ir_r3_k5_s2_e6_c96_se0.25",),
    ("cn_r1_k1_s1_c576",),
)
_SMALL_MINIMAL = (
    ("ds_r1_k3_s2_e1_c16",),
    ("ir_r1_k3_s2_e4.5_c24", "ir_r1_k3_s1_e3.67_c24"),
    ("ir_r1_k3_s2_e4_c40", "ir_r2_k3_s1_e6_c40"),
    ("ir_r2_k3_s1_e3_c48",),
    ("ir_r3_k3_s2_e6_c96",),
    ("cn_r1_k1_s1_c576",),
)
_RW = (
    ("ds_r1_k3_s1_e1_c16_nre_noskip",),
    ("ir_r1_k3_s2_e4_c24_nre", "ir_r1_k3_s1_e3_c24_nre"),
    ("ir_r3_k5_s2_e3_c40_se0.25_nre",),
    ("ir_r1_k3_s2_e6_c80", "ir_r1_k3_s1_e2.5_c80", "ir_r2_k3_s1_e2.3_c80"),
    ("ir_r2_k3_s1_e6_c112_se0.25",),
    ("ir_r3_k5_s2_e6_c160_se0.25",),
    ("cn_r1_k1_s1_c960",),
)
_FBNETV3 = {  # variant: (stem, arch_def)
    "b": (
        16,
        (
            ("ds_r2_k3_s1_e1_c16",),
            ("ir_r1_k5_s2_e4_c24", "ir_r3_k5_s1_e2_c24"),
            ("ir_r1_k5_s2_e5_c40_se0.25", "ir_r4_k5_s1_e3_c40_se0.25"),
            ("ir_r1_k5_s2_e5_c72", "ir_r4_k3_s1_e3_c72"),
            ("ir_r1_k3_s1_e5_c120_se0.25", "ir_r5_k5_s1_e3_c120_se0.25"),
            ("ir_r1_k3_s2_e6_c184_se0.25", "ir_r5_k5_s1_e4_c184_se0.25",
             "ir_r1_k5_s1_e6_c224_se0.25"),
            ("cn_r1_k1_s1_c1344",),
        ),
    ),
    "d": (
        24,
        (
            ("ds_r2_k3_s1_e1_c16",),
            ("ir_r1_k3_s2_e5_c24", "ir_r5_k3_s1_e2_c24"),
            ("ir_r1_k5_s2_e4_c40_se0.25", "ir_r4_k3_s1_e3_c40_se0.25"),
            ("ir_r1_k3_s2_e5_c72", "ir_r4_k3_s1_e3_c72"),
            ("ir_r1_k3_s1_e5_c128_se0.25", "ir_r6_k5_s1_e3_c128_se0.25"),
            ("ir_r1_k3_s2_e6_c208_se0.25", "ir_r5_k5_s1_e5_c208_se0.25",
             "ir_r1_k5_s1_e6_c240_se0.25"),
            ("cn_r1_k1_s1_c1440",),
        ),
    ),
    "g": (
        32,
        (
            ("ds_r3_k3_s1_e1_c24",),
            ("ir_r1_k5_s2_e4_c40", "ir_r4_k5_s1_e2_c40"),
            ("ir_r1_k5_s2_e4_c56_se0.25", "ir_r4_k5_s1_e3_c56_se0.25"),
            ("ir_r1_k5_s2_e5_c104", "ir_r4_k3_s1_e3_c104"),
            ("ir_r1_k3_s1_e5_c160_se0.25", "ir_r8_k5_s1_e3_c160_se0.25"),
            ("ir_r1_k3_s2_e6_c264_se0.25", "ir_r6_k5_s1_e5_c264_se0.25",
             "ir_r2_k5_s1_e6_c288_se0.25"),
            ("cn_r1_k1_s1_c1728",),
        ),
    ),
}  # fmt: skip
_LCNET = (
    ("dsa_r1_k3_s1_c32",),
    ("dsa_r2_k3_s2_c64",),
    ("dsa_r2_k3_s2_c128",),
    ("dsa_r1_k3_s2_c256", "dsa_r1_k5_s1_c256"),
    ("dsa_r4_k5_s1_c256",),
    ("dsa_r2_k5_s2_c512_se0.25",),
)
_HARDCORENAS = {
    "a": (
        ("ds_r1_k3_s1_e1_c16_nre",),
        ("ir_r1_k5_s2_e3_c24_nre", "ir_r1_k5_s1_e3_c24_nre_se0.25"),
        ("ir_r1_k5_s2_e3_c40_nre", "ir_r1_k5_s1_e6_c40_nre_se0.25"),
        ("ir_r1_k5_s2_e6_c80_se0.25", "ir_r1_k5_s1_e6_c80_se0.25"),
        ("ir_r1_k5_s1_e6_c112_se0.25", "ir_r1_k5_s1_e6_c112_se0.25"),
        ("ir_r1_k5_s2_e6_c192_se0.25", "ir_r1_k5_s1_e6_c192_se0.25"),
        ("cn_r1_k1_s1_c960",),
    ),
    "b": (
        ("ds_r1_k3_s1_e1_c16_nre",),
        ("ir_r1_k5_s2_e3_c24_nre", "ir_r1_k5_s1_e3_c24_nre_se0.25", "ir_r1_k3_s1_e3_c24_nre"),
        ("ir_r1_k5_s2_e3_c40_nre", "ir_r1_k5_s1_e3_c40_nre", "ir_r1_k5_s1_e3_c40_nre"),
        ("ir_r1_k5_s2_e3_c80", "ir_r1_k5_s1_e3_c80", "ir_r1_k3_s1_e3_c80", "ir_r1_k3_s1_e3_c80"),
        ("ir_r1_k5_s1_e3_c112", "ir_r1_k3_s1_e3_c112",
         "ir_r1_k3_s1_e3_c112", "ir_r1_k3_s1_e3_c112"),
        ("ir_r1_k5_s2_e6_c192_se0.25", "ir_r1_k5_s1_e6_c192_se0.25", "ir_r1_k3_s1_e3_c192_se0.25"),
        ("cn_r1_k1_s1_c960",),
    ),
    "c": (
        ("ds_r1_k3_s1_e1_c16_nre",),
        ("ir_r1_k5_s2_e3_c24_nre", "ir_r1_k5_s1_e3_c24_nre_se0.25"),
        ("ir_r1_k5_s2_e3_c40_nre", "ir_r1_k5_s1_e3_c40_nre", "ir_r1_k5_s1_e3_c40_nre",
         "ir_r1_k5_s1_e3_c40_nre"),
        ("ir_r1_k5_s2_e4_c80", "ir_r1_k5_s1_e6_c80_se0.25",
         "ir_r1_k3_s1_e3_c80", "ir_r1_k3_s1_e3_c80"),
        ("ir_r1_k5_s1_e6_c112_se0.25", "ir_r1_k3_s1_e3_c112", "ir_r1_k3_s1_e3_c112",
         "ir_r1_k3_s1_e3_c112"),
        ("ir_r1_k5_s2_e6_c192_se0.25", "ir_r1_k5_s1_e6_c192_se0.25", "ir_r1_k3_s1_e3_c192_se0.25"),
        ("cn_r1_k1_s1_c960",),
    ),
    "d": (
        ("ds_r1_k3_s1_e1_c16_nre",),
        ("ir_r1_k5_s2_e3_c24_nre_se0.25", "ir_r1_k5_s1_e3_c24_nre_se0.25"),
        ("ir_r1_k5_s2_e3_c40_nre_se0.25", "ir_r1_k5_s1_e4_c40_nre_se0.25",
         "ir_r1_k3_s1_e3_c40_nre_se0.25"),
        ("ir_r1_k5_s2_e4_c80_se0.25", "ir_r1_k3_s1_e3_c80_se0.25", "ir_r1_k3_s1_e3_c80_se0.25",
         "ir_r1_k3_s1_e3_c80_se0.25"),
        ("ir_r1_k3_s1_e4_c112_se0.25", "ir_r1_k5_s1_e4_c112_se0.25", "ir_r1_k3_s1_e3_c112_se0.25",
         "ir_r1_k5_s1_e3_c112_se0.25"),
        ("ir_r1_k5_s2_e6_c192_se0.25", "ir_r1_k5_s1_e6_c192_se0.25", "ir_r1_k5_s1_e6_c192_se0.25",
         "ir_r1_k3_s1_e6_c192_se0.25"),
        ("cn_r1_k1_s1_c960",),
    ),
    "e": (
        ("ds_r1_k3_s1_e1_c16_nre",),
        ("ir_r1_k5_s2_e3_c24_nre_se0.25", "ir_r1_k5_s1_e3_c24_nre_se0.25"),
        ("ir_r1_k5_s2_e6_c40_nre_se0.25", "ir_r1_k5_s1_e4_c40_nre_se0.25",
         "ir_r1_k5_s1_e4_c40_nre_se0.25", "ir_r1_k3_s1_e3_c40_nre_se0.25"),
        ("ir_r1_k5_s2_e4_c80_se0.25", "ir_r1_k3_s1_e6_c80_se0.25"),
        ("ir_r1_k5_s1_e6_c112_se0.25", "ir_r1_k5_s1_e6_c112_se0.25", "ir_r1_k5_s1_e6_c112_se0.25",
         "ir_r1_k5_s1_e3_c112_se0.25"),
        ("ir_r1_k5_s2_e6_c192_se0.25", "ir_r1_k5_s1_e6_c192_se0.25", "ir_r1_k5_s1_e6_c192_se0.25",
         "ir_r1_k3_s1_e6_c192_se0.25"),
        ("cn_r1_k1_s1_c960",),
    ),
    "f": (
        ("ds_r1_k3_s1_e1_c16_nre",),
        ("ir_r1_k5_s2_e3_c24_nre_se0.25", "ir_r1_k5_s1_e3_c24_nre_se0.25"),
        ("ir_r1_k5_s2_e6_c40_nre_se0.25", "ir_r1_k5_s1_e6_c40_nre_se0.25"),
        ("ir_r1_k5_s2_e6_c80_se0.25", "ir_r1_k5_s1_e6_c80_se0.25", "ir_r1_k3_s1_e3_c80_se0.25",
         "ir_r1_k3_s1_e3_c80_se0.25"),
        ("ir_r1_k3_s1_e6_c112_se0.25", "ir_r1_k5_s1_e6_c112_se0.25", "ir_r1_k5_s1_e6_c112_se0.25",
         "ir_r1_k3_s1_e3_c112_se0.25"),
        ("ir_r1_k5_s2_e6_c192_se0.25", "ir_r1_k5_s1_e6_c192_se0.25", "ir_r1_k3_s1_e6_c192_se0.25",
         "ir_r1_k3_s1_e6_c192_se0.25"),
        ("cn_r1_k1_s1_c960",),
    ),
}  # fmt: skip

_TF = {"pad_type": "same", "bn_eps": 1e-3}  # timm's tf_ ports: TensorFlow's padding and eps


def _rows() -> dict[str, MobileNetV3Config]:
    """Every architecture, as timm's ``_gen_mobilenet_v3``, ``_gen_mobilenet_v3_rw``,
    ``_gen_fbnetv3``, ``_gen_lcnet`` and ``_gen_hardcorenas`` configure it."""
    rows: dict[str, dict[str, Any]] = {}

    def v3(size: str, cm: float, minimal: bool = False, **args: Any) -> dict[str, Any]:
        """``_gen_mobilenet_v3``: large or small, full (hard swish) or minimal (ReLU, no SE)."""
        arch = {
            ("large", False): _LARGE,
            ("large", True): _LARGE_MINIMAL,
            ("small", False): _SMALL,
            ("small", True): _SMALL_MINIMAL,
        }[size, minimal]
        return dict(
            arch_def=arch,
            channel_multiplier=cm,
            fix_stem=cm < 0.75,
            head_features=1024 if size == "small" else 1280,
            act_layer="relu" if minimal else "hard_swish",
            **args,
        )

    rows["mobilenetv3_large_075"] = v3("large", 0.75)
    rows["mobilenetv3_large_100"] = v3("large", 1.0)
    rows["mobilenetv3_large_150d"] = v3("large", 1.5, depth_multiplier=1.2)
    for v, cm in {"050": 0.5, "075": 0.75, "100": 1.0}.items():
        rows[f"mobilenetv3_small_{v}"] = v3("small", cm)
    rows["mobilenetv3_rw"] = dict(
        arch_def=_RW,
        head_bias=False,
        se_act=None,
        se_rounding="round",
        bn_eps=1e-3,
    )
    for v, cm in {"075": 0.75, "100": 1.0}.items():
        rows[f"tf_mobilenetv3_large_{v}"] = v3("large", cm, **_TF)
        rows[f"tf_mobilenetv3_small_{v}"] = v3("small", cm, **_TF)
    rows["tf_mobilenetv3_large_minimal_100"] = v3("large", 1.0, minimal=True, **_TF)
    rows["tf_mobilenetv3_small_minimal_100"] = v3("small", 1.0, minimal=True, **_TF)
    for v, (stem, arch) in _FBNETV3.items():
        rows[f"fbnetv3_{v}"] = dict(
            arch_def=arch,
            stem_size=stem,
            round_limit=0.95,
            head_features=1984,
            head_bias=False,
            se_from_exp=False,
            se_act=None,
            se_rounding="model",
        )
    for v, cm in {"035": 0.35, "050": 0.5, "075": 0.75, "100": 1.0, "150": 1.5}.items():
        rows[f"lcnet_{v}"] = dict(arch_def=_LCNET, channel_multiplier=cm, se_rounding="round")
    for v, arch in _HARDCORENAS.items():
        rows[f"hardcorenas_{v}"] = dict(arch_def=arch, stem_size=32)
    return {name: MobileNetV3Config(**args) for name, args in rows.items()}


# timm's mobilenetv3.py models that this builder does not make, and why (docs/mobilenetv3.md).
NOT_BUILT = {
    "mobilenetv4_conv_small_035, mobilenetv4_conv_small_050, mobilenetv4_conv_small, "
    "mobilenetv4_conv_medium, mobilenetv4_conv_large, mobilenetv4_hybrid_medium, "
    "mobilenetv4_hybrid_large, mobilenetv4_conv_aa_medium, mobilenetv4_conv_blur_medium, "
    "mobilenetv4_conv_aa_large, mobilenetv4_hybrid_medium_075, mobilenetv4_hybrid_large_075": (
        "MobileNetV4: universal inverted residual and multi-query attention blocks (`uir`, "
        "`mqa`), layer scale and a normed head; no SE"
    ),
}

# timm's mobilenetv3.py: the stem conv_stem and bn1, the stages blocks.{i}, the efficient head
# conv_head (after the pool), the classifier.
MOBILENETV3 = Family(
    "mobilenetv3",
    MobileNetV3Config,
    builders={
        "torch": "se_torch._efficientnet:MobileNetV3",
        "linen": "se_flax._efficientnet:MobileNetV3",
        "nnx": "se_flax.nnx._efficientnet:MobileNetV3",
    },
    classifier="classifier",
    pre_logits=("conv_head",),
    first_conv="conv_stem",
)
FAMILIES[MOBILENETV3.name] = MOBILENETV3
for _name, _config in _rows().items():
    register_model(_name, MOBILENETV3, _config)
