"""The MobileNetV3 family on the parse function (timm's mobilenetv3.py and hardcorenas.py):
its configs planned as timm builds them, its activations and SE gate as PyTorch's, its
efficient head in all three front-ends, the same numbers in float64 on a network of the test's
own. Against timm itself where installed."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import se_common
import se_flax
import se_torch
from se_common import MobileNetV3Config
from se_convert import torch_to_flax, update_nnx
from se_flax._efficientnet import ACTIVATIONS, GATES
from tests.helpers import family_names, nchw_to_nhwc, planned_parameters, randomize_
from tests.test_efficientnet import F64, check_bit_identical_to_timm, check_three_front_ends

# timm 1.0.31's parameter counts (1000 classes), every registered MobileNetV3-family name.
TIMM_PARAMS = {
    "mobilenetv3_large_075": 3_993_528,
    "mobilenetv3_large_100": 5_483_032,
    "mobilenetv3_large_150d": 14_622_320,
    "mobilenetv3_small_050": 1_593_224,
    "mobilenetv3_small_075": 2_041_872,
    "mobilenetv3_small_100": 2_542_856,
    "mobilenetv3_rw": 5_479_918,
    "tf_mobilenetv3_large_075": 3_993_528,
    "tf_mobilenetv3_large_100": 5_483_032,
    "tf_mobilenetv3_large_minimal_100": 3_924_288,
    "tf_mobilenetv3_small_075": 2_041_872,
    "tf_mobilenetv3_small_100": 2_542_856,
    "tf_mobilenetv3_small_minimal_100": 2_044_736,
    "fbnetv3_b": 8_598_464,
    "fbnetv3_d": 10_306_272,
    "fbnetv3_g": 16_623_888,
    "lcnet_035": 1_644_370,
    "lcnet_050": 1_880_856,
    "lcnet_075": 2_358_288,
    "lcnet_100": 2_953_800,
    "lcnet_150": 4_501_112,
    "hardcorenas_a": 5_260_232,
    "hardcorenas_b": 5_176_544,
    "hardcorenas_c": 5_521_224,
    "hardcorenas_d": 7_500_208,
    "hardcorenas_e": 8_070_992,
    "hardcorenas_f": 8_199_688,
}


def test_parameter_counts_are_timms():
    """Every name's plan (tests/test_model_registry.py proves it is se_torch's state_dict) holds
    timm's parameter count: the widths of every block, SE and head as timm rounds them."""
    names = family_names("mobilenetv3")
    assert set(names) == set(TIMM_PARAMS)
    for name in names:
        assert planned_parameters(name) == TIMM_PARAMS[name], name


def test_se_widths_and_heads_follow_timms_rules():
    large = se_common.get_model("mobilenetv3_large_100").config
    blocks = large.blocks()
    # stage 2's SE: 0.25 of the expanded 72 is 18, rounded to a multiple of 8 (timm's
    # round_channels: 16 would lose over 10%, so 24), ReLU inside, a hard-sigmoid gate
    first_se = next(b for b in blocks if b.se_channels)
    assert (first_se.mid_channels, first_se.se_channels) == (72, 24)
    assert (first_se.act, first_se.se_act, first_se.se_gate) == ("relu", "relu", "hard_sigmoid")
    late = blocks[-2]
    assert (late.act, late.se_act) == ("hard_swish", "relu")
    assert (large.num_features, large.head_hidden_size) == (960, 1280)
    # mobilenetv3_rw: SE under the block's activation, Python's round; no head bias
    rw = se_common.get_model("mobilenetv3_rw").config
    rw_se = [b for b in rw.blocks() if b.se_channels]
    assert {b.se_act for b in rw_se} == {"relu", "hard_swish"}
    assert rw_se[0].se_channels == 18 and "conv_head.bias" not in rw.state_dict(1000, 3)
    # FBNetV3: SE from the block input (se_from_exp=False), rounded as the model's widths
    fb = se_common.get_model("fbnetv3_b").config
    fb_se = next(b for b in fb.blocks() if b.se_channels)
    assert fb_se.se_channels == se_common.make_divisible(
        fb_se.in_channels * 0.25, 8, round_limit=0.95
    )
    # EfficientNet keeps its own head: conv_head and bn2 before the pool, num_features its width
    b0 = se_common.get_model("efficientnet_b0").config
    assert (b0.num_features, b0.head_hidden_size, b0.efficient_head) == (1280, 1280, False)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("se_gate", "hardsigmoid", "se_gate 'hardsigmoid' is not one of sigmoid, hard_sigmoid"),
        ("se_rounding", "ceil", "se_rounding 'ceil' is not one of round, divisible, model"),
        ("se_act", "gelu", "se_act 'gelu' is not one of"),
        ("head_features", 0, "the efficient head .* needs head_features > 0"),
        ("head_bias", 1, "head_bias must be True or False, got 1"),
        ("efficient_head", False, "head_bias=True needs efficient_head=True"),
    ],
)
def test_bad_config_values_are_named(field, value, message):
    config = se_common.get_model("mobilenetv3_small_050").config
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(config, **{field: value})


def test_hard_swish_and_hard_sigmoid_are_pytorchs(rng):
    """float64 values and gradients, on both sides of the kinks at -3 and 3: within one
    rounding of PyTorch's (XLA divides by the constant 6 as a product with its reciprocal);
    PyTorch's hardsigmoid backward uses float32's 1 / 6 even in float64 (3e-8)."""
    x = np.concatenate([rng.uniform(-6, 6, 4000), rng.uniform(-3.001, -2.999, 500)])
    x = np.concatenate([x, -x])
    xf = jnp.asarray(x)
    for name, ours, theirs, grad_rtol in (
        ("hard_swish", ACTIVATIONS["hard_swish"], torch.nn.functional.hardswish, 1e-15),
        ("hard_sigmoid", GATES["hard_sigmoid"], torch.nn.functional.hardsigmoid, 1e-7),
    ):
        xt = torch.from_numpy(x).requires_grad_()
        want = theirs(xt)
        (want_grad,) = torch.autograd.grad(want.sum(), xt)
        got, vjp = jax.vjp(jax.jit(ours), xf)
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=4.5e-16, atol=1e-300)
        np.testing.assert_allclose(
            vjp(jnp.ones_like(xf))[0], want_grad.numpy(), rtol=grad_rtol, atol=1e-15, err_msg=name
        )


# An architecture of the test's own (timm registers nothing like it), MobileNetV3's choices on
# every block type: ds with SE under ReLU, ir with SE from the expanded width, er and dsa with
# SE, hard swish, a cn stage last; the efficient head with its bias.
USER_ARCH = (
    ("ds_r1_k3_s1_e1_c8_se0.25_nre",),
    ("ir_r1_k3_s2_e4_c16_se0.25", "ir_r1_k5_s1_e3_c16_se0.25_nre"),
    ("er_r1_k3_s2_e2_c16_se0.5", "dsa_r1_k3_s1_c24_se0.25"),
    ("cn_r1_k1_s1_c40",),
)
CONFIG = MobileNetV3Config(USER_ARCH, stem_size=8, head_features=24)
MOBILENETV3S = (se_torch.MobileNetV3, se_flax.MobileNetV3, se_flax.nnx.MobileNetV3)
# PyTorch's hardsigmoid backward multiplies by float32's 1 / 6 (3e-8 relative) in float64
HARD_SIGMOID_GRAD = 1e-7


def test_three_front_ends_agree_in_float64(rng):
    with pytest.raises(ValueError, match="no model name has this config"):
        se_common.architecture_of(CONFIG)
    assert {b.block_type for b in CONFIG.blocks()} == {"ds", "ir", "er", "dsa", "cn"}
    check_three_front_ends(
        "mobilenetv3", CONFIG, (2, 3, 29, 30), rng, MOBILENETV3S, HARD_SIGMOID_GRAD
    )


def test_heads_features_and_sizes_as_timm(rng):
    """num_features and head_hidden_size as timm reports them; 0 classes give the pre-logits
    (after conv_head and its activation); features_only builds no head."""
    x = rng.standard_normal((2, 3, 29, 30))
    tmodel = randomize_(se_torch.MobileNetV3(CONFIG, num_classes=0), rng, torch.float64).eval()
    fmodel = se_flax.MobileNetV3(CONFIG, num_classes=0, param_dtype=jnp.float64)
    variables = torch_to_flax(tmodel)
    assert variables["params"]["conv_head"]["bias"].shape == (24,)
    nnx_model = update_nnx(
        nnx.eval_shape(
            lambda: se_flax.nnx.MobileNetV3(
                CONFIG, num_classes=0, param_dtype=jnp.float64, rngs=nnx.Rngs(0)
            )
        ),
        variables,
    )
    nnx_model.eval()
    assert (tmodel.num_features, tmodel.head_hidden_size) == (40, 24)
    assert (nnx_model.num_features, nnx_model.head_hidden_size) == (40, 24)
    assert (fmodel.num_features, fmodel.head_hidden_size) == (40, 24)
    with torch.no_grad():
        want = tmodel(torch.from_numpy(x)).numpy()
    assert want.shape == (2, 24) and want.min() >= -0.375  # hard swish's minimum, at -1.5
    np.testing.assert_allclose(fmodel.apply(variables, nchw_to_nhwc(x)), want, **F64)
    np.testing.assert_allclose(nnx_model(nchw_to_nhwc(x)), want, **F64)
    features = se_torch.MobileNetV3(CONFIG, features_only=True)
    assert not any(k.startswith(("conv_head", "classifier")) for k in features.state_dict())
    assert [f["num_chs"] for f in features.feature_info] == [8, 16, 40]


def test_pretrained_cfgs_follow_the_tags():
    assert se_common.get_model("tf_mobilenetv3_large_100").pretrained_cfg().mean == (0.5,) * 3
    arch = se_common.get_model("mobilenetv3_large_100")
    assert arch.pretrained_cfg().mean == (0.485, 0.456, 0.406)
    assert {"ra_in1k", "miil_in21k_ft_in1k"} <= set(arch.pretrained)
    assert arch.family is se_common.MOBILENETV3 and arch.family.pre_logits == ("conv_head",)


# ---------------------------------------------------------------- the real timm (skipped in CI)


@pytest.mark.parametrize(
    "name",
    ["mobilenetv3_small_050", "tf_mobilenetv3_small_minimal_100", "mobilenetv3_rw", "fbnetv3_b",
     "lcnet_050", "hardcorenas_a"],
)  # fmt: skip
def test_bit_identical_to_timm(name, rng):
    """timm's model and ours on the same weights: eval and train outputs, gradients and
    statistics equal bit for bit in float64 (the note lists every name, measured so)."""
    check_bit_identical_to_timm(name, {}, rng)
