"""The RegNet family (timm's regnet.py): the width generator to the integer (a committed table
from timm, always; timm itself where installed), the plans' parameter counts, clear errors for
configs that cannot be built, and the three front-ends in float64 on small networks of the
test's own: RegNetY (SE from the block input), RegNetV (pre-activation, average-pool
shortcuts, output stride 8) and RegNetZ (inverted bottlenecks, linear outputs, no shortcut
where the shape changes, a final conv)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import se_common
import se_flax
import se_torch
from se_common import RegNetConfig
from se_convert import torch_to_flax, update_nnx
from tests.helpers import family_names, nchw_to_nhwc, planned_parameters, randomize_
from tests.test_efficientnet import F64, check_bit_identical_to_timm, check_three_front_ends

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "tests" / "data" / "regnet_widths.json"  # scripts/timm_regnet_widths.py wrote it
REGNETS = (se_torch.RegNet, se_flax.RegNet, se_flax.nnx.RegNet)

# timm 1.0.31's parameter counts (1000 classes), every registered RegNet.
TIMM_PARAMS = {
    "regnetv_040": 20_640_640,
    "regnetv_064": 30_576_052,
    "regnetx_002": 2_684_792,
    "regnetx_004": 5_157_512,
    "regnetx_004_tv": 5_495_976,
    "regnetx_006": 6_196_040,
    "regnetx_008": 7_259_656,
    "regnetx_016": 9_190_136,
    "regnetx_032": 15_296_552,
    "regnetx_040": 22_118_248,
    "regnetx_064": 26_209_256,
    "regnetx_080": 39_572_648,
    "regnetx_120": 46_106_056,
    "regnetx_160": 54_278_536,
    "regnetx_320": 107_811_560,
    "regnety_002": 3_162_996,
    "regnety_004": 4_344_144,
    "regnety_006": 6_055_160,
    "regnety_008": 6_263_168,
    "regnety_008_tv": 6_432_512,
    "regnety_016": 11_202_430,
    "regnety_032": 19_436_338,
    "regnety_040": 20_646_656,
    "regnety_064": 30_583_252,
    "regnety_080": 39_180_068,
    "regnety_080_tv": 39_381_472,
    "regnety_120": 51_822_544,
    "regnety_160": 83_590_140,
    "regnety_320": 145_046_770,
    "regnety_640": 281_378_786,
    "regnety_1280": 644_812_894,
    "regnety_2560": 1_282_601_138,
    "regnetz_005": 7_122_742,
    "regnetz_040": 27_116_800,
    "regnetz_040_h": 28_938_880,
}

# Small networks of the test's own (4 stages of 1, 1, 2, 1 blocks, widths 8 to 40), each with a
# (2, 3, 29, 30) input: odd and even sides through every stride.
SMALL = {"depth": 5, "w0": 8, "wa": 8.0, "wm": 1.5, "stem_width": 8, "se_ratio": 0.25}
CASES = {
    "regnety": RegNetConfig(**SMALL, group_size=8),
    "regnetv-avg-os8": RegNetConfig(
        **SMALL, group_size=4, preact=True, act_layer="silu", downsample="avg", output_stride=8
    ),
    "regnetz": RegNetConfig(
        **SMALL,
        group_size=4,
        bottle_ratio=4.0,
        downsample=None,
        linear_out=True,
        num_features=24,
        act_layer="silu",
        zero_init_last=False,
    ),
}


def plan_table(config: RegNetConfig) -> dict[str, list]:
    """The committed table's row of a config: per-block generator widths, and per block its
    input, bottleneck and output widths, 3x3 groups and SE width."""
    blocks = [
        [b.in_channels, b.bottleneck, b.out_channels, b.groups, b.se_channels]
        for b in config.blocks()
    ]
    return {"widths": config.widths(), "blocks": blocks}


def test_widths_and_groups_are_timms_table():
    """Every registered RegNet's widths, groups and SE widths, to the integer, as the table
    timm's generate_regnet and built models gave (float32 quantisation, regnetx_080's group
    width 120 capped to 80 in its first stage, the _tv models' torchvision rounding)."""
    table = json.loads(TABLE.read_text())
    assert set(table) == set(family_names("regnet"))
    for name, row in table.items():
        assert plan_table(se_common.get_model(name).config) == row, name
    first = se_common.get_model("regnetx_080").config.blocks()[0]
    assert (first.bottleneck, first.groups) == (80, 1)
    assert se_common.adjust_widths_groups([48, 104], 1.0, 8, 0.9) == ([48, 104], [8, 8])


def test_parameter_counts_are_timms():
    names = family_names("regnet")
    assert set(names) == set(TIMM_PARAMS)
    for name in names:
        assert planned_parameters(name) == TIMM_PARAMS[name], name


def test_se_width_comes_from_the_block_input():
    """RegNetY's SE squeezes the bottleneck's channels to round(in_chs * 0.25) of the block's
    *input* (timm's Bottleneck), not of the bottleneck: regnety_016's s2.b1 takes 48 channels
    into a 120-wide bottleneck, so its SE is 120 -> 12 -> 120."""
    blocks = se_common.get_model("regnety_016").config.blocks()
    s2 = next(b for b in blocks if (b.stage, b.index) == (2, 1))
    assert (s2.in_channels, s2.bottleneck, s2.se_channels, s2.groups) == (48, 120, 12, 5)
    plan = se_common.get_model("regnety_016").config.state_dict(1000, 3)
    assert plan["s2.b1.se.fc1.weight"].shape == (12, 120, 1, 1)
    assert not any(".se." in k for k in se_common.get_model("regnetx_016").config.state_dict(0, 3))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"depth": 0}, "depth must be an integer >= 1, got 0"),
        ({"depth": 10**6}, "depth must be at most 1024"),
        ({"wm": 1.0}, "wm must be a finite number > 1, got 1.0"),
        ({"wm": float("nan")}, "wm must be a finite number > 1"),
        ({"wa": -1.0}, "wa must be a finite number >= 0, got -1.0"),
        ({"w0": 12}, "w0 must be a multiple of 8"),
        ({"stem_width": 2**20}, "stem_width must be at most 65536, got 1048576"),
        ({"group_size": 0}, "group_size must be an integer >= 1, got 0"),
        ({"depth": 2}, "give 1 stage(s) of widths [80]; a RegNet has 4"),
        ({"downsample": "max"}, "unknown downsample 'max'"),
        ({"act_layer": "gelu"}, "unknown act_layer 'gelu'"),
        ({"output_stride": 4}, "output_stride 4 is not 8, 16 or 32"),
        ({"se_ratio": -0.25}, "se_ratio must be a finite number >= 0, got -0.25"),
        ({"group_min_ratio": 1.0}, "group_min_ratio must be in [0, 1), got 1.0"),
        ({"num_features": -1}, "num_features must be an integer in [0, 65536], got -1"),
        ({"preact": 1}, "preact must be true or false, got 1"),
        ({"bottle_ratio": 0.001}, "bottle_ratio 0.001 leaves stage s1 (width 80)"),
        ({"bottle_ratio": 1.5, "group_size": 7}, "group_size 7 makes 16 groups of s1's"),
    ],
)
def test_configs_that_cannot_be_built_name_the_field(change, message):
    with pytest.raises(ValueError) as error:
        RegNetConfig(**change)
    assert message in str(error.value)


@pytest.mark.parametrize("case", list(CASES))
def test_three_front_ends_agree_in_float64(case, rng):
    """PyTorch, linen and NNX on the same random weights: eval and train outputs, BatchNorm
    statistics and every gradient at float64 rounding; a bare state_dict converts as the
    module does (the pre-activation `stem`, `norm1`..`norm3` and `downsample.1` by name)."""
    config = CASES[case]
    check_three_front_ends(case, config, (2, 3, 29, 30), rng, REGNETS, grad=1e-10)


def test_heads_and_features_as_timm(rng):
    """0 classes give the pooled features (after RegNetZ's final conv); features_only gives the
    stem and four stages' maps (timm's feature_info) with no final conv or classifier."""
    config = CASES["regnetz"]
    x = rng.standard_normal((2, 3, 29, 30))
    tmodel = randomize_(se_torch.RegNet(config, num_classes=0), rng, torch.float64).eval()
    variables = torch_to_flax(tmodel)
    assert "final_conv" in variables["params"] and "head" not in variables["params"]
    fmodel = se_flax.RegNet(config, num_classes=0, param_dtype=jnp.float64)
    abstract = nnx.eval_shape(
        lambda: se_flax.nnx.RegNet(config, num_classes=0, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    )
    nnx_model = update_nnx(abstract, variables)
    nnx_model.eval()
    for model in (tmodel, fmodel, nnx_model):
        assert (model.num_features, model.head_hidden_size) == (24, 24)
    with torch.no_grad():
        want = tmodel(torch.from_numpy(x)).numpy()
    assert want.shape == (2, 24)
    np.testing.assert_allclose(jax.jit(fmodel.apply)(variables, nchw_to_nhwc(x)), want, **F64)
    forward = nnx.jit(lambda model, x: model(x))
    np.testing.assert_allclose(forward(nnx_model, nchw_to_nhwc(x)), want, **F64)

    levels = (0, 2, 4)
    features = randomize_(
        se_torch.RegNet(config, features_only=True, out_indices=levels), rng, torch.float64
    ).eval()
    assert not any(k.startswith(("final_conv", "head")) for k in features.state_dict())
    assert [f["module"] for f in features.feature_info] == ["stem", "s2", "s4"]
    with torch.no_grad():
        want = [f.permute(0, 2, 3, 1).numpy() for f in features(torch.from_numpy(x))]
    assert [w.shape[1:] for w in want] == [(15, 15, 8), (4, 4, 16), (1, 1, 40)]
    flax_features = se_flax.RegNet(
        config, features_only=True, out_indices=levels, param_dtype=jnp.float64
    )
    got = jax.jit(flax_features.apply)(torch_to_flax(features), nchw_to_nhwc(x))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, **F64)


def test_num_features_is_timms_not_the_config_field():
    """timm's RegNetCfg.num_features is the final conv's width (0: none); a model's num_features
    (what config.json records, what the pool takes) is that, or the last stage's width."""
    for name, final, pooled in (("regnety_002", 0, 368), ("regnetz_005", 1024, 1024)):
        config = se_common.get_model(name).config
        assert (config.num_features, config.pooled_features) == (final, pooled), name
        with torch.device("meta"):
            assert se_torch.create_model(name).num_features == pooled, name
        assert se_flax.create_model(name).num_features == pooled, name


def test_dilated_stages_keep_the_reduction_and_shortcuts(rng):
    """output_stride 16: s4 runs at stride 1 with dilation 2 (its first block at dilation 1,
    with a shortcut conv though its shape stays), as timm's RegStage; feature_info keeps
    reduction 16."""
    config = dataclasses.replace(se_common.get_model("regnety_002").config, output_stride=16)
    first = next(b for b in config.blocks() if b.stage == 4)
    assert (first.stride, first.dilation, first.shortcut) == (1, 1, "conv1x1")
    assert [f.reduction for f in config.feature_info()] == [2, 4, 8, 16, 16]


def test_pretrained_cfgs_and_family():
    arch = se_common.get_model("regnety_016")
    assert {"tv2_in1k", "pycls_in1k"} <= set(arch.tags)
    assert arch.pretrained_cfg("pycls_in1k").crop_pct == 0.875
    assert arch.family is se_common.REGNET and arch.family.classifier == "head.fc"
    assert se_common.get_model("regnety_640").tags  # SEER fine-tunes


# ---------------------------------------------------------------- the real timm (skipped in CI)


def test_committed_table_is_timms():
    """The table test_widths_and_groups_are_timms_table checks against is timm's own."""
    pytest.importorskip("timm")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from timm_regnet_widths import timm_table
    finally:
        sys.path.pop(0)
    assert timm_table(family_names("regnet")) == json.loads(TABLE.read_text())


@pytest.mark.parametrize(
    "name", ["regnetx_002", "regnety_002", "regnety_008_tv", "regnetv_064", "regnetz_005"]
)
def test_bit_identical_to_timm(name, rng):
    """timm's model and ours on the same weights: eval and train outputs, gradients and
    statistics equal bit for bit in float64 (the note lists every name, measured so)."""
    check_bit_identical_to_timm(name, {}, rng)


def test_zero_init_last_follows_the_config_unless_given():
    """timm zero-inits each bottleneck's last BatchNorm scale, but not RegNetZ's; the builders'
    zero_init_last overrides the config. Flax: the first block of each, as the models build
    it (a whole network's initialisation would compile for seconds)."""
    from se_flax._regnet import RegBottleneck, RegLayers
    from se_flax.nnx._regnet import RegBottleneck as NNXBottleneck
    from se_flax.nnx._regnet import RegLayers as NNXLayers

    for case, override in (("regnety", None), ("regnetz", None), ("regnety", False)):
        config = CASES[case]
        want = config.zero_init_last if override is None else override
        torch_model = se_torch.RegNet(config, num_classes=2, zero_init_last=override)
        assert bool(torch.all(torch_model.s1.b1.conv3.bn.weight == 0)) == want, case
        if override is not None:
            continue  # Flax's blocks take the resolved flag: on and off are checked below
        spec = config.blocks()[0]
        block = RegBottleneck(spec, RegLayers(zero_init_last=want), config.linear_out)
        x = jnp.ones((1, 8, 8, spec.in_channels), jnp.float32)
        params = jax.jit(block.init)(jax.random.key(0, impl="rbg"), x)["params"]
        assert bool(jnp.all(params["conv3"]["bn"]["scale"] == 0)) == want, case
        assert not bool(jnp.any(params["conv1"]["bn"]["scale"] == 0)), case
        nnx_block = NNXBottleneck(spec, NNXLayers(zero_init_last=want), rngs=nnx.Rngs(0))
        assert bool(jnp.all(nnx_block.conv3.bn.scale[...] == 0)) == want, case
