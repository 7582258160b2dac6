"""The parse function and the EfficientNet family: timm's block strings decoded exactly (and
malformed ones refused), planned framework-free, and built in all three front-ends with the
same numbers (float64, eval and train, BatchNorm statistics, gradients), on networks of block
strings of the test's own that timm does not register. Against timm itself where installed."""

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
from se_common import EfficientNetConfig, decode_arch_def, decode_block_str
from se_convert import flax_to_torch, torch_to_flax, update_nnx
from tests.helpers import (
    assert_trees_close,
    family_names,
    flatten,
    nchw_to_nhwc,
    planned_parameters,
    randomize_,
    torch_pass,
)

# timm 1.0.31's parameter counts (1000 classes), every registered EfficientNet-family name.
TIMM_PARAMS = {
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232,
    "efficientnet_b4": 19_341_616,
    "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704,
    "efficientnet_b7": 66_347_960,
    "efficientnet_b8": 87_413_142,
    "efficientnet_el": 10_589_712,
    "efficientnet_em": 6_899_496,
    "efficientnet_es": 5_438_392,
    "efficientnet_l2": 480_309_308,
    "efficientnet_lite0": 4_652_008,
    "efficientnet_lite1": 5_416_680,
    "efficientnet_lite2": 6_092_072,
    "efficientnet_lite3": 8_197_096,
    "efficientnet_lite4": 13_006_568,
    "efficientnetv2_l": 118_515_272,
    "efficientnetv2_m": 54_139_356,
    "efficientnetv2_rw_m": 53_236_442,
    "efficientnetv2_rw_s": 23_941_296,
    "efficientnetv2_rw_t": 13_649_388,
    "efficientnetv2_s": 21_458_488,
    "efficientnetv2_xl": 208_119_808,
    "fbnetc_100": 5_572_200,
    "mixnet_l": 7_329_252,
    "mixnet_m": 5_014_382,
    "mixnet_s": 4_134_606,
    "mixnet_xl": 11_896_768,
    "mixnet_xxl": 23_961_752,
    "mnasnet_050": 2_218_512,
    "mnasnet_075": 3_170_208,
    "mnasnet_100": 4_383_312,
    "mnasnet_140": 7_115_728,
    "mnasnet_small": 2_030_264,
    "mobilenet_edgetpu_100": 4_091_432,
    "mobilenet_edgetpu_v2_l": 10_921_640,
    "mobilenet_edgetpu_v2_m": 8_462_888,
    "mobilenet_edgetpu_v2_s": 5_986_456,
    "mobilenet_edgetpu_v2_xs": 4_459_880,
    "mobilenetv1_100": 4_231_976,
    "mobilenetv1_100h": 5_282_600,
    "mobilenetv1_125": 6_270_840,
    "mobilenetv2_035": 1_677_128,
    "mobilenetv2_050": 1_968_680,
    "mobilenetv2_075": 2_636_424,
    "mobilenetv2_100": 3_504_872,
    "mobilenetv2_110d": 4_516_520,
    "mobilenetv2_120d": 5_831_144,
    "mobilenetv2_140": 6_108_776,
    "semnasnet_050": 2_082_006,
    "semnasnet_075": 2_912_278,
    "semnasnet_100": 3_887_038,
    "semnasnet_140": 6_105_992,
    "spnasnet_100": 4_421_616,
    "test_efficientnet": 356_196,
    "tf_efficientnet_b0": 5_288_548,
    "tf_efficientnet_b1": 7_794_184,
    "tf_efficientnet_b2": 9_109_994,
    "tf_efficientnet_b3": 12_233_232,
    "tf_efficientnet_b4": 19_341_616,
    "tf_efficientnet_b5": 30_389_784,
    "tf_efficientnet_b6": 43_040_704,
    "tf_efficientnet_b7": 66_347_960,
    "tf_efficientnet_b8": 87_413_142,
    "tf_efficientnet_el": 10_589_712,
    "tf_efficientnet_em": 6_899_496,
    "tf_efficientnet_es": 5_438_392,
    "tf_efficientnet_l2": 480_309_308,
    "tf_efficientnet_lite0": 4_652_008,
    "tf_efficientnet_lite1": 5_416_680,
    "tf_efficientnet_lite2": 6_092_072,
    "tf_efficientnet_lite3": 8_197_096,
    "tf_efficientnet_lite4": 13_006_568,
    "tf_efficientnetv2_b0": 7_139_704,
    "tf_efficientnetv2_b1": 8_141_052,
    "tf_efficientnetv2_b2": 10_096_086,
    "tf_efficientnetv2_b3": 14_358_406,
    "tf_efficientnetv2_l": 118_515_272,
    "tf_efficientnetv2_m": 54_139_356,
    "tf_efficientnetv2_s": 21_458_488,
    "tf_efficientnetv2_xl": 208_119_808,
    "tf_mixnet_l": 7_329_252,
    "tf_mixnet_m": 5_014_382,
    "tf_mixnet_s": 4_134_606,
    "tinynet_a": 6_187_972,
    "tinynet_b": 3_730_562,
    "tinynet_c": 2_457_234,
    "tinynet_d": 2_338_446,
    "tinynet_e": 2_042_972,
}


# ---------------------------------------------------------------- the grammar


def test_a_block_string_decodes_to_timms_arguments():
    args, repeats = decode_block_str("ir_r2_k3.5_a1.1_p1.1_s2_e6_c40_se0.25_nsw_gs8")
    assert repeats == 2
    assert args == se_common.BlockArgs(
        block_type="ir",
        out_chs=40,
        stride=2,
        kernel_size=(3, 5),
        exp_kernel_size=(1, 1),
        pw_kernel_size=(1, 1),
        exp_ratio=6.0,
        se_ratio=0.25,
        act="silu",
        group_size=8,
    )
    ds, _ = decode_block_str("ds_r1_k3_s1_e1_c16_noskip")
    assert (ds.noskip, ds.pw_act, ds.exp_ratio, ds.group_size) == (True, False, 1.0, None)
    dsa, _ = decode_block_str("dsa_r1_k3_s1_c64")
    assert dsa.noskip and dsa.pw_act
    er, _ = decode_block_str("er_r1_k3_s1_e4_c24_fc24_noskip")
    assert (er.force_in_chs, er.exp_ratio, er.noskip) == (24, 4.0, True)
    cn, _ = decode_block_str("cn_r1_k3_s1_e1_c16_skip")
    assert cn.skip and not cn.noskip
    for code, act in (("re", "relu"), ("r6", "relu6"), ("hs", "hard_swish"), ("mi", "mish")):
        assert decode_block_str(f"ir_r1_k3_s1_e6_c8_n{code}")[0].act == act


# Each malformed string, and what its error names (timm ignores most of these silently).
MALFORMED = [
    ("ir_r1_k3_s1_c16", "lacks option(s) e"),
    ("ir_r1_k3_s1_e6_c16_x3", "'x3' is not an option of ir blocks"),
    ("ir_r1_k3_s1_e6_c16_nzz", "'nzz' is no activation"),
    ("ir_r1_k3_s3_e6_c16", "'s3' is not a stride of 1 or 2"),
    ("zz_r1_k3_s1_c8", "'zz' is not a block type"),
    ("uir_r1_k3_s1_e6_c16", "universal inverted residual) is not built"),
    ("ir_r1_k3_s1_e6_c16_d1", "'d1' (space-to-depth) is not built"),
    ("ir_r1_k3_s1_e6_c16_cc4", "'cc4' (CondConv experts) is not built"),
    ("ds_r1_k3_s1_e6_c16", "'e6' is not e1: ds blocks have no expansion"),
    ("cn_r1_k3.5_s1_c16", "'k3.5' mixes kernels"),
    ("cn_r1_k3_s1_c16_se0.25", "'se0.25' is not an option of cn blocks"),
    ("ir_r1_k3_s1_e6_c16_skip", "'skip' has no effect on ir blocks"),
    ("cn_r1_k3_s1_c16_noskip", "'noskip' has no effect on cn blocks"),
    ("dsa_r1_k3_s1_c16_noskip", "'noskip' has no effect on dsa blocks"),
    ("ir_r1_k3_s1_e6_c16_r2", "'r2' repeats option 'r'"),
    ("ir_r1_k3_s1_e6.5.1_c16", "'e6.5.1' has a malformed value '6.5.1'"),
    ("ir_r1_k3_s1_e6_c16_", "'' is not an option"),
    ("er_r1_k3_s1_e4_c24_fcx", "'fcx' is not an option"),
    ("ir_r0_k3_s1_e6_c16", "r must be an integer >= 1, got 0"),
    ("ir_r1_k3_s1_e0_c16", "'e0' is not a positive expansion"),
    ("ir_r1_k0_s1_e6_c16", "'k0' has a kernel size below 1"),
    ("ir_r1_k3_s1_e6_c16_n1", "'n1' is no activation"),
    ("er_r1_k3_s1_e4_c24_fc0", "'fc0' must name at least 1 input channel"),
    ("ds_r1_k3_s1_e0_c8", "'e0' is not e1: ds blocks have no expansion"),
]


@pytest.mark.parametrize("block_str,message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_string_names_the_token_and_the_string(block_str, message):
    with pytest.raises(ValueError) as e:
        decode_block_str(block_str)
    assert message in str(e.value) and repr(block_str) in str(e.value), str(e.value)


def test_depth_scaling_spreads_repeats_as_timm_does():
    stage = [["ir_r1_k3_s1_e1_c8", "ir_r2_k5_s1_e1_c8"]]
    kernels = lambda stages: [b.kernel_size[0] for b in stages[0]]  # noqa: E731
    # ceil(3 * 1.5) = 5, given back to front: round(2 / 3 * 5) = 3, then the 2 left
    assert kernels(decode_arch_def(stage, 1.5)) == [3, 3, 5, 5, 5]
    # round(3 * 1.5) = 4 (Python's round: half to even), then round(2 / 3 * 4) = 3, then 1
    assert kernels(decode_arch_def(stage, 1.5, "round")) == [3, 5, 5, 5]
    # at least one repeat each, with "round" even when the multiplier shrinks the stage
    assert kernels(decode_arch_def(stage, 0.1, "round")) == [3, 5]
    two = [["ir_r2_k3_s1_e1_c8"], ["ir_r2_k3_s2_e1_c8"], ["ir_r2_k3_s1_e1_c8"]]
    assert [len(s) for s in decode_arch_def(two, 2.0, fix_first_last=True)] == [2, 4, 2]
    assert [len(s) for s in decode_arch_def(two, (1.0, 1.5, 2.0))] == [2, 3, 4]
    grouped = decode_arch_def([["ir_r1_k3_s1_e1_c8", "ir_r1_k3_s1_e1_c8_gs4"]], group_size=2)
    assert [b.group_size for b in grouped[0]] == [2, 4]
    for bad, message in (
        (dict(depth_multiplier=(1.0, 2.0)), "has 2 entries for 3 stages"),
        (dict(depth_multiplier=0), r"depth_multiplier 0 must be a number in \(0, 100\)"),
        (dict(depth_trunc="floor"), "depth_trunc 'floor' is not"),
    ):
        with pytest.raises(ValueError, match=message):
            decode_arch_def(two, **bad)
    with pytest.raises(ValueError, match="stage 1 of arch_def must be a non-empty list"):
        decode_arch_def([["ir_r1_k3_s1_e1_c8"], []])


def test_planning_follows_timms_builder():
    b0 = se_common.get_model("efficientnet_b0").config
    blocks = b0.blocks()
    assert len(blocks) == 16 and blocks[0].key == "blocks.0.0"
    first_ir = blocks[1]  # 16 -> 96 (x6), SE at 0.25 of the block input: round(96 * 0.25 / 6)
    assert (first_ir.in_channels, first_ir.mid_channels, first_ir.se_channels) == (16, 96, 4)
    assert first_ir.groups == 96 and first_ir.stride == 2 and not first_ir.has_skip
    assert [b.has_skip for b in blocks[1:3]] == [False, True]
    assert [(f.num_chs, f.reduction, f.module) for f in b0.feature_info()] == [
        (16, 2, "blocks.0"),
        (24, 4, "blocks.1"),
        (40, 8, "blocks.2"),
        (112, 16, "blocks.4"),
        (320, 32, "blocks.6"),
    ]
    # stochastic depth: block i of n at rate * i / n, where a block has its residual
    rates = [b.drop_path for b in b0.blocks(0.2)]
    assert rates == [0.2 * i / 16 if b.has_skip else 0.0 for i, b in enumerate(blocks)]
    # past output_stride, strides become dilations (the stride's block keeps the old one)
    os8 = dataclasses.replace(b0, output_stride=8).blocks()
    assert [(b.stride, b.dilation) for b in os8[3:7]] == [(2, 1), (1, 1), (1, 1), (1, 2)]
    assert os8[-1].dilation == 4  # two strides past 8: 2, then 2 * 2
    assert [f.reduction for f in dataclasses.replace(b0, output_stride=8).feature_info()] == [
        2,
        4,
        8,
        8,
        8,
    ]
    v2 = se_common.get_model("tf_efficientnetv2_b0").config  # round_limit 0: 1280 * 1.0
    assert (v2.stem_channels, v2.num_features, v2.bn_eps, v2.pad_type) == (32, 1280, 1e-3, "same")
    v1 = se_common.get_model("mobilenetv1_100").config
    assert v1.head_features == 0 and v1.num_features == 1024  # no head conv: the last block's
    assert "conv_head.weight" not in v1.state_dict(1000, 3)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("pad_type", "valid", "pad_type 'valid' is not '' or 'same'"),
        ("act_layer", "gelu", "act_layer 'gelu' is not one of"),
        ("output_stride", 4, "output_stride 4 is not 8, 16 or 32"),
        ("channel_multiplier", 0.0, "channel_multiplier 0.0 must be a number"),
        ("bn_eps", 0, "bn_eps 0 must be a number in"),
        ("head_features", -1, "head_features must be an integer >= 0, got -1"),
        (
            "arch_def",
            (("ir_r1_k3_s1_e4_c8_gs3",),),
            "stage 0 block 0 (ir): group_size 3 does not divide 128 channels",
        ),
        ("arch_def", "ir_r1_k3_s1_e4_c8", "arch_def must be a list of stages"),
        ("arch_def", ["ds_r1_k3_s1_c8", "ir_r1_k3_s2_e6_c8"], "each a list of block strings"),
        ("arch_def", (("er_r1_k3_s1_e3_c32_gs32",),), "3 groups (group_size 32) do not divide"),
        ("arch_def", (("cn_r1_k3_s1_c40_gs2",),), "do not divide the conv's 40 output"),
        ("arch_def", (("er_r1_k3.5_s1_e4_c32",),), None),  # ungrouped mixed: fine
        ("group_size", 8.0, "group_size must be None or an integer >= 0, got 8.0"),
        ("fix_stem", "no", "fix_stem must be True or False, got 'no'"),
        ("depth_multiplier", True, "depth_multiplier must be a number or one per stage"),
        ("round_limit", 1.5, "round_limit must be a number in [0, 1], got 1.5"),
    ],
)
def test_bad_config_values_are_named(field, value, message):
    base = EfficientNetConfig((("ds_r1_k3_s1_c8",),))
    if message is None:
        dataclasses.replace(base, **{field: value})
        return
    with pytest.raises(ValueError) as e:
        dataclasses.replace(base, **{field: value})
    assert message in str(e.value), str(e.value)


def test_bad_model_options_are_named():
    config = EfficientNetConfig((("ds_r1_k3_s1_c8",), ("ir_r1_k3_s2_e2_c8",)), head_features=16)
    for front_end, build in (
        ("torch", lambda **o: se_torch.EfficientNet(config, **o)),
        ("linen", lambda **o: se_flax.EfficientNet(config, **o)),
        ("nnx", lambda **o: se_flax.nnx.EfficientNet(config, rngs=nnx.Rngs(0), **o)),
    ):
        for options, message in (
            ({"out_indices": (0, 3)}, r"out_indices \(0, 3\) must be distinct feature levels"),
            ({"num_classes": -1}, "num_classes must be an integer >= 0, got -1"),
            ({"drop_rate": 1.0}, "drop_rate"),
            ({"drop_path_rate": -0.1}, "drop_path_rate"),
        ):
            with pytest.raises(ValueError, match=message):
                build(**options)
        with pytest.raises(TypeError, match="EfficientNetConfig"):
            resnet = se_common.get_model("resnet18").config
            if front_end == "nnx":
                se_flax.nnx.EfficientNet(resnet, rngs=nnx.Rngs(0))
            else:
                (se_torch.EfficientNet if front_end == "torch" else se_flax.EfficientNet)(resnet)
        with pytest.raises(ValueError, match="out_indices must be a sequence"):
            build(out_indices=3)


def test_parameter_counts_are_timms():
    """Every name's plan (which tests/test_model_registry.py proves is se_torch's state_dict,
    key for key) holds timm's parameter count; one model per kind of block, built for real."""
    names = family_names("efficientnet")
    assert set(names) == set(TIMM_PARAMS)
    for name in names:
        assert planned_parameters(name) == TIMM_PARAMS[name], name
    for name in ("mixnet_s", "tf_efficientnetv2_b0", "mobilenetv1_100", "mobilenet_edgetpu_v2_m"):
        with torch.device("meta"):
            model = se_torch.create_model(name)
        assert sum(p.numel() for p in model.parameters()) == TIMM_PARAMS[name], name


def test_pretrained_cfgs_follow_the_tags():
    """TensorFlow's ports differ in their statistics and sizes, tag by tag (timm's table)."""
    arch = se_common.get_model("tf_efficientnet_b0")
    assert arch.pretrained_cfg("ap_in1k").mean == (0.5, 0.5, 0.5)
    assert arch.pretrained_cfg("ns_jft_in1k").mean == (0.485, 0.456, 0.406)
    assert se_common.get_model("efficientnet_b3").pretrained_cfg().input_size == (3, 288, 288)
    assert se_common.get_model("efficientnet_b0").pretrained_cfg().interpolation == "bicubic"


# ---------------------------------------------------------------- three front-ends, one network

# An architecture of the test's own, as block strings (timm registers nothing like it): every
# block type, a mixed depthwise conv (k3.5) with mixed expansion and projection (a1.1, p1.1),
# grouped convs (gs), the EdgeTPU's fc, SE under four activations, cn residuals (skip); the
# last stage's stride (16 in all) becomes a dilation at output_stride 8.
USER_ARCH = (
    ("ds_r1_k3_s1_e1_c8_se0.25", "dsa_r1_k3_s1_c8"),
    ("ir_r2_k3.5_a1.1_p1.1_s2_e4_c16_se0.25_nsw",),
    ("er_r1_k3_s2_e4_c16_fc8_gs4_se0.25_nhs", "er_r1_k3_s1_e2_c16"),
    ("cn_r1_k3_s1_c16_skip",),
    ("ir_r1_k5_s2_e3_c24_nmi_gs2_se0.5", "cn_r1_k3_s1_c24_skip", "ir_r1_k3.5_s1_e2_c24"),
)
# One float64 case per padding mode: PyTorch's symmetric padding; TensorFlow's "SAME" (timm's
# tf_ ports: eps 1e-3) at odd and even sizes, with output_stride 8 (dilated "SAME" convs).
CASES = {
    "torch-padding": (
        EfficientNetConfig(USER_ARCH, stem_size=8, head_features=32, act_layer="relu"),
        (2, 3, 31, 30),
    ),
    "tf-same-dilated": (
        EfficientNetConfig(
            USER_ARCH,
            stem_size=8,
            head_features=32,
            act_layer="silu",
            pad_type="same",
            bn_eps=1e-3,
            output_stride=8,
        ),
        (2, 3, 33, 34),
    ),
}
F64 = {"rtol": 1e-12, "atol": 1e-12}
GRAD = 1e-11  # per tensor, the worst error as a fraction of its largest gradient
GRAD_FLOOR = 1e-4


def test_the_cases_are_no_registered_architecture():
    for config, _ in CASES.values():
        with pytest.raises(ValueError, match="no model name has this config"):
            se_common.architecture_of(config)
    blocks = CASES["torch-padding"][0].blocks()
    assert {b.block_type for b in blocks} == set(se_common.BLOCK_KINDS)
    dilations = {b.dilation for b in CASES["tf-same-dilated"][0].blocks()}
    assert dilations == {1, 2}


# TensorFlow's padding and dilations (the harder case) run here; PyTorch's symmetric padding of
# the same convs runs in tests/test_mobilenetv3.py's case (every block type) and the torch-padding
# case's config in the feature and stochastic-depth tests below, to keep the suite quick.
@pytest.mark.parametrize("case", ["tf-same-dilated"])
def test_three_front_ends_agree_in_float64(case, rng):
    config, shape = CASES[case]
    check_three_front_ends(case, config, shape, rng)


EFFICIENTNETS = (se_torch.EfficientNet, se_flax.EfficientNet, se_flax.nnx.EfficientNet)


def check_three_front_ends(case, config, shape, rng, classes=EFFICIENTNETS, grad=GRAD) -> None:
    """The PyTorch, linen and NNX ``classes`` of ``config`` on the same random weights and
    input of ``shape``: eval and train outputs, BatchNorm statistics and gradients (each
    within ``grad`` of its largest) agree in float64; trained statistics convert back bit for
    bit."""
    torch_class, linen_class, nnx_class = classes
    tmodel = randomize_(torch_class(config, num_classes=5), rng, torch.float64)
    fmodel = linen_class(config, num_classes=5, param_dtype=jnp.float64)
    variables = torch_to_flax(tmodel)
    by_name = torch_to_flax(tmodel.state_dict())  # a bare state_dict: the names decide alike
    assert jax.tree.map(np.array_equal, by_name, variables) == jax.tree.map(lambda _: True, by_name)
    x = rng.standard_normal(shape)
    cot = rng.standard_normal((shape[0], 5))
    xf = nchw_to_nhwc(x)

    @jax.jit
    def flax_pass(params, stats):
        def loss(p):
            out, new = fmodel.apply(
                {"params": p, "batch_stats": stats}, xf, train=True, mutable=["batch_stats"]
            )
            return jnp.sum(out * cot), (out, new["batch_stats"])

        grads, (train_out, new_stats) = jax.grad(loss, has_aux=True)(params)
        eval_out = fmodel.apply({"params": params, "batch_stats": stats}, xf)
        return eval_out, train_out, new_stats, grads

    f_eval, f_train, f_stats, f_grads = flax_pass(variables["params"], variables["batch_stats"])
    # NNX, on the same weights: eval, then one train pass updating its statistics in place
    abstract = nnx.eval_shape(
        lambda: nnx_class(config, num_classes=5, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    )
    nnx_model = update_nnx(abstract, variables)
    nnx_call = nnx.jit(lambda model, x: model(x))  # one program per mode, not op by op
    nnx_model.eval()
    n_eval = nnx_call(nnx_model, xf)
    nnx_model.train()
    n_train = nnx_call(nnx_model, xf)

    t_eval, _, _ = torch_pass(tmodel, x, cot, train=False)
    t_train, _, t_grads = torch_pass(tmodel, x, cot, train=True)
    t_stats = torch_to_flax(tmodel)["batch_stats"]
    for what, got, want in (
        ("linen eval", f_eval, t_eval),
        ("linen train", f_train, t_train),
        ("linen statistics", f_stats, t_stats),
        ("nnx eval", n_eval, t_eval),
        ("nnx train", n_train, t_train),
        ("nnx statistics", nnx.to_pure_dict(nnx.state(nnx_model, nnx.BatchStat)), t_stats),
    ):
        assert_trees_close(got, want, **F64, what=f"{case} {what}")
    grads = flatten(f_grads)
    assert grads.keys() == t_grads.keys()
    # A gradient that is zero in exact arithmetic (the last block's bn3 bias: a per-channel
    # shift that conv_head's train-mode BatchNorm removes) is rounding noise in both: each
    # tensor is measured against its largest, but at least GRAD_FLOOR of the largest overall.
    scale = max(float(np.abs(np.asarray(g)).max()) for g in t_grads.values())
    for key, want in t_grads.items():
        want = np.asarray(want)
        largest = max(float(np.abs(want).max()), GRAD_FLOOR * scale)
        error = np.abs(np.asarray(grads[key]) - want).max() / largest
        assert error <= grad, f"{case} gradient {key}: {error:.3g} of its largest"
    # trained statistics convert back into the PyTorch model bit for bit
    back = flax_to_torch({"params": variables["params"], "batch_stats": f_stats}, tmodel)
    for key, value in torch_to_flax(back)["batch_stats"].items():
        assert jax.tree.all(jax.tree.map(np.array_equal, value, f_stats[key])), key


def test_feature_maps_agree_and_match_feature_info(rng):
    config, shape = CASES["tf-same-dilated"]
    levels = (0, 1, 2)
    tmodel = randomize_(
        se_torch.EfficientNet(config, features_only=True, out_indices=levels), rng, torch.float64
    ).eval()
    fmodel = se_flax.EfficientNet(
        config, features_only=True, out_indices=levels, param_dtype=jnp.float64
    )
    variables = torch_to_flax(tmodel)
    assert "conv_head" not in variables["params"] and "classifier" not in variables["params"]
    x = rng.standard_normal(shape)
    with torch.no_grad():
        expected = [f.permute(0, 2, 3, 1).numpy() for f in tmodel(torch.from_numpy(x))]
    got = jax.jit(fmodel.apply)(variables, nchw_to_nhwc(x))
    nnx_model = update_nnx(
        nnx.eval_shape(
            lambda: se_flax.nnx.EfficientNet(
                config, features_only=True, out_indices=levels, param_dtype=jnp.float64,
                rngs=nnx.Rngs(0),
            )
        ),
        variables,
    )  # fmt: skip
    nnx_model.eval()
    info = tmodel.feature_info
    assert info == fmodel.feature_info == nnx_model.feature_info
    # the strings' stride-2 stages start levels; the last stride (past output_stride 8) does not
    assert info == [
        {"num_chs": 8, "reduction": 2, "module": "blocks.0"},
        {"num_chs": 16, "reduction": 4, "module": "blocks.1"},
        {"num_chs": 16, "reduction": 8, "module": "blocks.3"},
    ]
    nnx_got = nnx.jit(lambda model, x: model(x))(nnx_model, nchw_to_nhwc(x))
    for i, (e, g, n) in enumerate(zip(expected, got, nnx_got, strict=True)):
        assert e.shape[-1] == info[i]["num_chs"]
        assert e.shape[1] == -(-shape[2] // info[i]["reduction"])  # "SAME": ceil(H / stride)
        np.testing.assert_allclose(g, e, **F64)
        np.testing.assert_allclose(n, e, **F64)


def test_stochastic_depth_and_dropout_train_only(rng):
    config, shape = CASES["torch-padding"]
    rates = {"drop_rate": 0.3, "drop_path_rate": 0.4}
    tmodel = randomize_(se_torch.EfficientNet(config, num_classes=3, **rates), rng, torch.float64)
    plain = se_torch.EfficientNet(config, num_classes=3).double()
    plain.load_state_dict(tmodel.state_dict())
    fmodel = se_flax.EfficientNet(config, num_classes=3, param_dtype=jnp.float64, **rates)
    variables = torch_to_flax(tmodel)
    x = rng.standard_normal(shape)
    xt, xf = torch.from_numpy(x), nchw_to_nhwc(x)
    with torch.no_grad():  # eval: the rates change nothing, bit for bit
        assert torch.equal(tmodel.eval()(xt), plain.eval()(xt))
    plain_flax = se_flax.EfficientNet(config, num_classes=3, param_dtype=jnp.float64)
    np.testing.assert_array_equal(
        jax.jit(fmodel.apply)(variables, xf), jax.jit(plain_flax.apply)(variables, xf)
    )

    @jax.jit
    def linen_train(key):
        out, _ = fmodel.apply(
            variables, xf, train=True, rngs={"dropout": key}, mutable=["batch_stats"]
        )
        return out

    a = linen_train(jax.random.key(0))
    np.testing.assert_array_equal(a, linen_train(jax.random.key(0)))
    assert not np.allclose(a, linen_train(jax.random.key(1)))
    nnx_model = update_nnx(
        nnx.eval_shape(
            lambda: se_flax.nnx.EfficientNet(
                config, num_classes=3, param_dtype=jnp.float64, rngs=nnx.Rngs(0, dropout=3), **rates
            )
        ),
        variables,
    )
    nnx.reseed(nnx_model, dropout=3)  # the abstract model's dropout streams, made concrete
    nnx_model.train()
    forward = nnx.jit(lambda model, x: model(x))
    assert not np.allclose(forward(nnx_model, xf), forward(nnx_model, xf))  # the stream moves on
    tmodel.train()
    blocks = [m for m in tmodel.modules() if isinstance(m, se_torch.InvertedResidual)]
    assert blocks and all(isinstance(b.drop_path, se_torch.DropPath) for b in blocks if b.has_skip)
    torch.manual_seed(5)
    first = tmodel(xt).detach()
    torch.manual_seed(5)
    assert torch.equal(first, tmodel(xt).detach())
    assert not torch.allclose(first, tmodel(xt).detach())


# ---------------------------------------------------------------- the real timm (skipped in CI)


def test_every_string_decodes_as_timms():
    timm_builder = pytest.importorskip("timm.models._efficientnet_builder")
    for name in family_names("efficientnet"):
        config = se_common.get_model(name).config
        for stage in config.arch_def:
            for block_str in stage:
                theirs, their_repeats = timm_builder._decode_block_str(block_str)
                ours, repeats = decode_block_str(block_str)
                assert repeats == their_repeats, block_str
                kernel = theirs.get("dw_kernel_size", theirs.get("exp_kernel_size"))
                kernel = theirs.get("kernel_size", kernel)
                assert ours.kernel_size == (
                    tuple(kernel) if isinstance(kernel, list) else (kernel,)
                )
                assert ours.out_chs == theirs["out_chs"] and ours.stride == theirs["stride"]
                assert ours.exp_ratio == theirs.get("exp_ratio", 1.0), block_str
                assert ours.se_ratio == theirs.get("se_ratio", 0.0), block_str
                assert ours.noskip == theirs.get("noskip", False), block_str
                assert ours.group_size == theirs.get("group_size"), block_str
                for field in ("exp_kernel_size", "pw_kernel_size"):
                    if field in theirs and not (ours.block_type == "er" and field[0] == "e"):
                        value = theirs[field]
                        value = tuple(value) if isinstance(value, list) else (value,)
                        assert getattr(ours, field) == value, (block_str, field)
                act = theirs["act_layer"]
                assert (ours.act is None) == (act is None), block_str
                if ours.block_type == "er":
                    assert ours.force_in_chs == theirs["force_in_chs"], block_str
                if ours.block_type == "cn":
                    assert ours.skip == theirs["skip"], block_str
                if ours.block_type in ("ds", "dsa"):
                    assert ours.pw_act == theirs["pw_act"], block_str


@pytest.mark.parametrize(
    "name,options",
    [
        ("test_efficientnet", {}),
        ("tf_mixnet_s", {}),
        ("efficientnetv2_rw_t", {}),
        ("mobilenetv1_100", {}),
        ("mnasnet_small", {}),
        ("efficientnet_b0", {"output_stride": 8, "group_size": 8}),  # dilations, grouped convs
        ("tf_efficientnet_lite0", {"output_stride": 16}),
    ],
)
def test_bit_identical_to_timm(name, options, rng):
    """timm's model and ours on the same weights: eval and train outputs, gradients and
    statistics equal bit for bit in float64 (the note lists every name, measured so)."""
    check_bit_identical_to_timm(name, options, rng)


def check_bit_identical_to_timm(name, options, rng) -> None:
    """timm's ``name`` and se_torch's on the same random float64 weights: state_dict loads
    strictly; num_features, head_hidden_size and feature_info are timm's; eval and train
    outputs, gradients and BatchNorm statistics are equal bit for bit."""
    timm = pytest.importorskip("timm")
    theirs = randomize_(timm.create_model(name, **options), rng, torch.float64)
    ours = se_torch.create_model(name, **options).double()
    ours.load_state_dict(theirs.state_dict())
    assert (ours.num_features, ours.head_hidden_size) == (
        theirs.num_features,
        theirs.head_hidden_size,
    )
    assert ours.feature_info == [
        {k: f[k] for k in ("num_chs", "reduction", "module")} for f in theirs.feature_info
    ]
    x = rng.standard_normal((2, 3, 37, 34))
    cot = rng.standard_normal((2, 1000))
    for train in (False, True):
        a, _, ga = torch_pass(theirs, x, cot, train=train)
        b, _, gb = torch_pass(ours, x, cot, train=train)
        assert torch.equal(a, b), (name, train)
        assert all(np.array_equal(ga[k], gb[k]) for k in ga), (name, train)
    for (key, t), u in zip(theirs.state_dict().items(), ours.state_dict().values(), strict=True):
        assert torch.equal(t, u), key
