"""Backbone structure in both frameworks: timm's names, shapes and parameter counts; options."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import se_flax
import se_torch
from se_common import ResNetConfig, SelectiveKernelConfig, get_model, list_models
from se_convert import torch_to_flax, update_nnx
from se_flax import nnx as se_nnx
from tests.helpers import (
    assert_trees_close,
    assert_within_a_bfloat16_step,
    family_names,
    nchw_to_nhwc,
    planned_parameters,
)

# Parameter counts of timm 1.0.31's models of the same names (timm.create_model(name)): every
# architecture of timm's resnet.py (but resnet50_gn, the _pruned ones, test_resnet) and sknet.py.
TIMM_PARAMS = {
    "ecaresnet26t": 16_011_916,
    "ecaresnet50d": 25_576_350,
    "ecaresnet50t": 25_573_814,
    "ecaresnet101d": 44_568_563,
    "ecaresnet200d": 64_693_400,
    "ecaresnet269d": 102_093_077,
    "ecaresnetlight": 30_162_046,
    "ecaresnext26t_32x4d": 15_406_220,
    "ecaresnext50t_32x4d": 25_045_686,
    "resnet10t": 5_435_488,
    "resnet14t": 10_081_632,
    "resnet18": 11_689_512,
    "resnet18d": 11_708_744,
    "resnet26": 15_995_176,
    "resnet26d": 16_014_408,
    "resnet26t": 16_011_872,
    "resnet34": 21_797_672,
    "resnet34d": 21_816_904,
    "resnet50": 25_557_032,
    "resnet50c": 25_576_264,
    "resnet50d": 25_576_264,
    "resnet50s": 25_680_808,
    "resnet50t": 25_573_728,
    "resnet101": 44_549_160,
    "resnet101c": 44_568_392,
    "resnet101d": 44_568_392,
    "resnet101s": 44_672_936,
    "resnet152": 60_192_808,
    "resnet152c": 60_212_040,
    "resnet152d": 60_212_040,
    "resnet152s": 60_316_584,
    "resnet200": 64_673_832,
    "resnet200d": 64_693_064,
    "resnetaa34d": 21_816_904,
    "resnetaa50": 25_557_032,
    "resnetaa50d": 25_576_264,
    "resnetaa101d": 44_568_392,
    "resnetblur18": 11_689_512,
    "resnetblur50": 25_557_032,
    "resnetblur50d": 25_576_264,
    "resnetblur101d": 44_568_392,
    "resnetrs50": 35_691_912,
    "resnetrs101": 63_618_696,
    "resnetrs152": 86_621_576,
    "resnetrs200": 93_209_992,
    "resnetrs270": 129_861_448,
    "resnetrs350": 163_956_168,
    "resnetrs420": 191_891_656,
    "resnext50_32x4d": 25_028_904,
    "resnext50d_32x4d": 25_048_136,
    "resnext101_32x4d": 44_177_704,
    "resnext101_32x8d": 88_791_336,
    "resnext101_32x16d": 194_026_792,
    "resnext101_32x32d": 468_530_472,
    "resnext101_64x4d": 83_455_272,
    "senet154": 115_088_984,
    "seresnet18": 11_779_624,
    "seresnet34": 21_960_416,
    "seresnet50": 28_088_024,
    "seresnet50t": 28_104_720,
    "seresnet101": 49_326_872,
    "seresnet152": 66_821_848,
    "seresnet152d": 66_841_080,
    "seresnet200d": 71_855_096,
    "seresnet269d": 113_672_760,
    "seresnetaa50d": 28_107_256,
    "seresnext26d_32x4d": 16_809_512,
    "seresnext26t_32x4d": 16_806_976,
    "seresnext50_32x4d": 27_559_896,
    "seresnext101_32x4d": 48_955_416,
    "seresnext101_32x8d": 93_569_048,
    "seresnext101_64x4d": 88_232_984,
    "seresnext101d_32x8d": 93_588_280,
    "seresnextaa101d_32x8d": 93_588_280,
    "seresnextaa201d_32x8d": 149_394_904,
    "skresnet18": 11_958_056,
    "skresnet34": 22_282_376,
    "skresnet50": 25_803_160,
    "skresnext50_32x4d": 27_479_784,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
}
# timm 1.0.31's ResNet(block, layers, block_args=dict(attn_layer=attn)): the attention variants
# of the existing ResNets, built here by configuration (create_model(name, attn=attn)).
TIMM_ATTN_PARAMS = {
    ("resnet18", "eca"): 11_689_548,
    ("resnet50", "eca"): 25_557_118,
    ("resnext50_32x4d", "eca"): 25_028_990,
    ("resnet18", "cbam"): 11_777_352,
    ("resnet50", "cbam"): 28_073_576,
    ("resnext50_32x4d", "cbam"): 27_545_448,
    ("resnet18", "ese"): 12_387_752,
    ("resnet50", "ese"): 45_691_688,
    ("resnext50_32x4d", "ese"): 45_163_560,
}


def test_every_model_is_listed():
    assert set(family_names("resnet")) == set(TIMM_PARAMS)


def test_parameter_counts_match_timm():
    """Every name's plan (tests/test_model_registry.py: se_torch's state_dict, key for key)
    holds timm's parameter count; one PyTorch model per block type is counted too."""
    for name, count in TIMM_PARAMS.items():
        assert planned_parameters(name) == count, name
    for name in ("resnet18", "seresnext26t_32x4d", "skresnet18", "skresnext50_32x4d", "senet154"):
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = se_torch.create_model(name)
        assert sum(p.numel() for p in model.parameters()) == TIMM_PARAMS[name], name


@pytest.mark.parametrize("name,attn", TIMM_ATTN_PARAMS)
def test_attention_variants_match_timm_counts_in_both_frameworks(name, attn):
    model = se_torch.create_model(name, attn=attn)
    assert sum(p.numel() for p in model.parameters()) == TIMM_ATTN_PARAMS[name, attn]
    blocks = [m for m in model.modules() if isinstance(m, se_torch.ResidualBlock)]
    assert blocks and all(type(b.se) is se_torch.ATTN_LAYERS[attn] for b in blocks)
    shapes = flax_shapes(name, attn=attn)
    count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes["params"]))
    assert count == TIMM_ATTN_PARAMS[name, attn]
    variables = torch_to_flax(model.state_dict(), target=shapes)  # no module: names decide
    assert jax.tree.structure(variables) == jax.tree.structure(shapes)


def flax_shapes(name, **kwargs):
    model = se_flax.create_model(name, **kwargs)
    x = jax.ShapeDtypeStruct((1, 64, 64, kwargs.get("in_chans", 3)), jnp.float32)
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)


@pytest.mark.parametrize(
    "name",
    [
        "resnet18",
        "seresnet34",
        "seresnet50",
        "seresnext50_32x4d",
        "skresnet18",
        "skresnet50",
        "skresnext50_32x4d",
    ],
)
def test_flax_twin_has_every_torch_tensor(name):
    """Every PyTorch tensor maps onto the Flax model's own variables: names, shapes, dtypes."""
    shapes = flax_shapes(name)
    count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes["params"]))
    assert count == TIMM_PARAMS[name]
    variables = torch_to_flax(se_torch.create_model(name), target=shapes)
    assert jax.tree.structure(variables) == jax.tree.structure(shapes)


def test_se_placement_and_widths():
    model = se_torch.create_model("seresnet50")
    block = model.layer3[0]
    assert isinstance(block.se, se_torch.SqueezeExcite)
    assert block.se.fc1.weight.shape == (64, 1024, 1, 1)  # 1024 / 16, after bn3
    assert se_torch.create_model("resnet50").layer3[0].se is None
    keys = list(se_torch.create_model("seresnet18").layer1[0].state_dict())
    assert keys.index("se.fc1.weight") > keys.index("bn2.num_batches_tracked")


def test_attention_is_configuration():
    """SE into a plain ResNet, by name or by factory, in both frameworks."""
    plain_plus_se = se_torch.create_model("resnet50", attn="se")
    assert {k: v.shape for k, v in plain_plus_se.state_dict().items()} == {
        k: v.shape for k, v in se_torch.create_model("seresnet50").state_dict().items()
    }
    wide = se_torch.create_model(
        "resnet18", attn_layer=functools.partial(se_torch.SqueezeExcite, rd_ratio=0.25)
    )
    assert wide.layer1[0].se.rd_channels == 16
    flax_wide = flax_shapes(
        "resnet18", attn_layer=functools.partial(se_flax.SqueezeExcite, rd_ratio=0.25)
    )
    assert flax_wide["params"]["layer1_0"]["se"]["fc1"]["kernel"].shape == (64, 16)
    torch_to_flax(wide, target=flax_wide)
    assert "se" not in flax_shapes("seresnet18", attn=None)["params"]["layer1_0"]


def test_zero_init_last_follows_the_config_unless_given():
    """timm zero-inits each block's last BatchNorm scale in ResNets, not in SK-ResNets."""
    torch_last = {
        "resnet18": lambda m: m.layer1[0].bn2.weight,
        "skresnet18": lambda m: m.layer1[0].conv2.bn.weight,
        "skresnet50": lambda m: m.layer1[0].conv3.bn.weight,
    }
    # each name's config and blocks, at one block per stage (the rule is per block)
    for name, zeroed in (("resnet18", True), ("skresnet18", False), ("skresnet50", False)):
        assert get_model(name).config.zero_init_last == zeroed
        for override in (None, not zeroed):
            model = se_torch.create_model(name, layers=(1, 1, 1, 1), zero_init_last=override)
            weight = torch_last[name](model)
            assert bool(torch.all(weight == 0)) == (zeroed if override is None else override)
    # Flax: the same rule on one-block-per-stage twins (SK basic and bottleneck), to stay quick:
    # the config's default, and an override against it, giving ones and zeros.
    x = jnp.ones((1, 8, 8, 3), jnp.float32)
    sk = SelectiveKernelConfig()
    for block, last, config_zero, override in (
        ("basic", "conv2", False, None),
        ("bottleneck", "conv3", False, True),
    ):
        config = ResNetConfig(block, (1, 1, 1, 1), sk=sk, zero_init_last=config_zero)
        model = se_flax.ResNet(config, num_classes=2, zero_init_last=override)
        # jit and an "rbg" key: a quarter of the time of an eager threefry init
        init = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)["params"]
        scale = init["layer1_0"][last]["bn"]["scale"]
        want = config_zero if override is None else override
        assert bool(jnp.all(scale == 0)) == want, (block, config_zero, override)


def test_features_only_and_heads(rng):
    x = rng.standard_normal((2, 1, 64, 96)).astype(np.float32)
    tmodel = se_torch.create_model("seresnet18", features_only=True, in_chans=1).eval()
    assert not any(k.startswith("fc.") for k in tmodel.state_dict())
    features = tmodel(torch.from_numpy(x))
    assert [tuple(f.shape) for f in features] == [
        (2, 64, 16, 24),
        (2, 128, 8, 12),
        (2, 256, 4, 6),
        (2, 512, 2, 3),
    ]
    fmodel = se_flax.create_model("seresnet18", features_only=True, in_chans=1)
    f_features = fmodel.apply(torch_to_flax(tmodel), nchw_to_nhwc(x))
    assert [f.shape for f in f_features] == [
        (2, 16, 24, 64),
        (2, 8, 12, 128),
        (2, 4, 6, 256),
        (2, 2, 3, 512),
    ]
    for f, t in zip(f_features, features, strict=True):
        assert_trees_close(f, nchw_to_nhwc(t.detach().numpy()), rtol=1e-4, atol=1e-5)
    pooled = se_torch.create_model("resnet18", num_classes=0).eval()
    assert pooled(torch.from_numpy(np.repeat(x, 3, axis=1))).shape == (2, 512)
    stem = se_torch.create_model("resnet18", features_only=True, out_indices=(0, 4)).eval()
    assert [f.shape[1] for f in stem(torch.from_numpy(np.repeat(x, 3, axis=1)))] == [64, 512]


@pytest.mark.parametrize("strides", [(1, 1), (2, 2), (2, 1)])
@pytest.mark.parametrize("use_bias", [False, True])
def test_pointwise_conv_is_nn_conv(strides, use_bias, rng):
    # The backbones' 1x1 convolutions are matmuls (faster on XLA's CPU backend); they must
    # be nn.Conv with padding 0 in parameters, initialisation and results, odd sizes included.
    x = jnp.asarray(rng.standard_normal((2, 7, 5, 12)))
    conv = nn.Conv(6, (1, 1), strides, padding=0, use_bias=use_bias, param_dtype=jnp.float64)
    pointwise = se_flax.PointwiseConv(6, strides, use_bias=use_bias, param_dtype=jnp.float64)
    variables = pointwise.init(jax.random.key(3), x)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
        jnp.shape, conv.init(jax.random.key(3), x)
    )
    assert_trees_close(variables, conv.init(jax.random.key(3), x), rtol=0, atol=0)
    variables = jax.tree.map(lambda v: jnp.asarray(rng.standard_normal(v.shape)), variables)
    want = conv.apply(variables, x)
    assert want.shape == (2, -(-7 // strides[0]), -(-5 // strides[1]), 6)
    assert_trees_close(pointwise.apply(variables, x), want, rtol=0, atol=1e-13)
    grad = jax.grad(lambda v, m: jnp.sum(jnp.sin(m.apply(v, x))))
    assert_trees_close(grad(variables, pointwise), grad(variables, conv), rtol=0, atol=1e-13)
    low = se_flax.PointwiseConv(6, strides, dtype=jnp.bfloat16).apply(variables, x)
    assert low.dtype == jnp.bfloat16  # `dtype` casts input and kernel, as in nn.Conv
    # bfloat16 accumulates in float32 and rounds once, as PyTorch's kernels do: the bfloat16
    # inputs' exact products summed in float32 (at most one bfloat16 rounding step away).
    xb = x.astype(jnp.bfloat16).astype(jnp.float32)[:, :: strides[0], :: strides[1]]
    kb = variables["params"]["kernel"].astype(jnp.bfloat16).astype(jnp.float32)[0, 0]
    once = (xb @ kb).astype(jnp.bfloat16)  # (`low` has no bias: its module has none)
    ulp = np.abs(np.asarray(once, np.float32)) * 2.0**-7
    np.testing.assert_array_less(np.abs(np.asarray(low - once, np.float32)), ulp + 1e-30)


def _uses(fn, *args) -> set[str]:
    """Which of convolution / dot the compiled-for-this-backend program of ``fn`` contains."""
    text = jax.jit(fn).lower(*args).as_text()
    return {op for op in ("convolution", "dot_general") if f"stablehlo.{op}" in text}


@pytest.mark.parametrize(
    ("shape", "features", "kernel", "strides", "padding"),
    [
        ((2, 9, 7, 128), 40, (3, 3), (1, 1), ((1, 1), (1, 1))),
        ((2, 9, 8, 136), 24, (3, 3), (2, 2), ((1, 1), (1, 1))),
        ((1, 6, 7, 256), 16, (3, 2), (2, 1), ((2, 0), (1, 1))),
        ((2, 9, 8, 128), 8, (3, 3), (2, 2), "SAME"),  # nn.Conv's default, asymmetric here
        ((1, 7, 6, 128), 8, (3, 3), (1, 2), "VALID"),
    ],
)
def test_bfloat16_conv_is_the_convolution(shape, features, kernel, strides, padding, rng):
    # se_flax.conv_general_dilated computes ungrouped bfloat16 convolutions with >= 128 input
    # channels as one float32-accumulating matmul per kernel tap on CPU (XLA's bf16 convolution
    # does not use the CPU's bf16 units); its values and derivatives are the convolution's.
    x = jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)
    k = jnp.asarray(rng.standard_normal((*kernel, shape[-1], features)) / 30, jnp.bfloat16)
    ours = functools.partial(se_flax.conv_general_dilated, window_strides=strides, padding=padding)
    xla = functools.partial(jax.lax.conv_general_dilated, window_strides=strides, padding=padding)
    dn = ("NHWC", "HWIO", "NHWC")
    ours, xla = (functools.partial(f, dimension_numbers=dn) for f in (ours, xla))
    if jax.default_backend() == "cpu":
        assert _uses(ours, x, k) == {"dot_general"} and _uses(xla, x, k) == {"convolution"}
    y = jax.jit(ours)(x, k)
    assert y.dtype == jnp.bfloat16 and y.shape == jax.jit(xla)(x, k).shape
    # The bfloat16 inputs' exact products summed in float32 (float64 here), rounded once: at most
    # one bfloat16 rounding step (2^-8 relative) from that, the float32 sums' error aside.
    exact = jax.lax.conv_general_dilated(
        np.asarray(x, np.float64), np.asarray(k, np.float64), strides, padding, dimension_numbers=dn
    )
    assert_within_a_bfloat16_step(y, exact)
    # Its derivatives are computed the same way (tests/test_rounded.py): each within one step of
    # its float64 value, and on CPU without a convolution.
    cot = jnp.asarray(rng.standard_normal(y.shape), jnp.bfloat16)
    loss = lambda a, b: jnp.sum((ours(a, b) * cot).astype(jnp.float32))  # noqa: E731
    grads = jax.jit(jax.grad(loss, (0, 1)))(x, k)
    wide = [np.asarray(a, np.float64) for a in (x, k, cot)]
    exact = jax.vjp(lambda a, b: jax.lax.conv_general_dilated(
        a, b, strides, padding, dimension_numbers=dn), *wide[:2])[1](wide[2])  # fmt: skip
    for got, want in zip(grads, exact, strict=True):
        assert got.dtype == jnp.bfloat16
        assert_within_a_bfloat16_step(got, want)
    if jax.default_backend() == "cpu":
        assert _uses(jax.grad(loss, (0, 1)), x, k) == {"dot_general"}


@pytest.mark.parametrize(
    "case",
    [
        "float32",
        "float64",
        "channels below 128",
        "dilated",
        "negative padding",
        "NCHW",
    ],
)
def test_conv_general_dilated_leaves_other_convolutions_alone(case, rng):
    # Every other convolution is lax.conv_general_dilated's, the same program and bits.
    # (Grouped ones run se_flax's kernels: tests/test_grouped_conv.py.)
    dtype = {"float32": jnp.float32, "float64": jnp.float64}.get(case, jnp.bfloat16)
    c = 64 if case == "channels below 128" else 128
    x = jnp.asarray(rng.standard_normal((2, 6, 6, c)), dtype)
    k = jnp.asarray(rng.standard_normal((3, 3, c, 8)), dtype)
    options = {
        "window_strides": (1, 1),
        "padding": ((1, -1), (0, 1)) if case == "negative padding" else ((1, 1), (1, 1)),
        "dimension_numbers": ("NHWC", "HWIO", "NHWC"),
        "rhs_dilation": (2, 2) if case == "dilated" else None,
    }
    if case == "NCHW":
        x = jnp.moveaxis(x, -1, 1)
        options["dimension_numbers"] = ("NCHW", "HWIO", "NCHW")
    ours = functools.partial(se_flax.conv_general_dilated, **options)
    xla = functools.partial(jax.lax.conv_general_dilated, **options)
    assert _uses(ours, x, k) == {"convolution"}
    assert_trees_close(jax.jit(ours)(x, k), jax.jit(xla)(x, k), rtol=0, atol=0)


def test_backbones_use_the_bfloat16_conv():
    # nn.Conv (linen) and nnx.Conv (NNX) of the backbones take it; a 3x3 conv at 128 channels
    # of a bfloat16 ResNet runs as matmuls (on CPU). (The NNX models lower to the linen
    # programs, bfloat16 included: tests/test_nnx.py.)
    from flax import nnx

    linen = se_flax.create_model("resnet18", dtype=jnp.bfloat16)
    abstract = nnx.eval_shape(lambda: se_nnx.create_model("resnet18", dtype=jnp.bfloat16))
    assert abstract.layer2_1.conv1.conv_general_dilated is se_flax.conv_general_dilated
    x = jnp.ones((1, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(linen.init, jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, variables["params"]["layer2_1"]["conv1"]) == {
        "kernel": (3, 3, 128, 128)
    }
    if jax.default_backend() == "cpu":
        text = jax.jit(linen.apply).lower(variables, x).as_text()
        # stem, layer1's four 3x3 (64 channels) and layer2_0.conv1 (64 in) stay convolutions
        assert text.count("stablehlo.convolution") == 6


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.bfloat16])
@pytest.mark.parametrize(
    ("shape", "window", "stride"), [((2, 9, 8, 5), 3, 2), ((1, 7, 10, 3), 5, 3)]
)
def test_max_pool_is_nn_max_pool(dtype, shape, window, stride, rng):
    # The stem's pool: strided slices' maximum (faster in bfloat16 on CPU), nn.max_pool's values
    # and derivatives bit for bit, NaN and -inf included, odd sizes included. float64 and
    # bfloat16 (the code is the same for every dtype; float32's case was dropped for the suite's
    # time, and every float32 network test runs the pool).
    from se_flax._layers import max_pool, pad

    x = np.asarray(rng.standard_normal(shape))
    x[0, 1, 2, 0], x[-1, -1, -1, -1], x[0, 0, 0, 1] = np.nan, -np.inf, np.inf
    x = jnp.asarray(x, dtype)
    ref = functools.partial(nn.max_pool, window_shape=(window,) * 2, strides=(stride,) * 2)
    ref = functools.partial(ref, padding=pad(window))
    ours = functools.partial(max_pool, window=window, stride=stride)
    want = jax.jit(ref)(x)
    assert want.shape == (
        shape[0],
        (shape[1] - 1) // stride + 1,
        (shape[2] - 1) // stride + 1,
        shape[3],
    )
    assert jnp.isnan(want).any() and jnp.isinf(want).any()
    wide = functools.partial(np.asarray, dtype=np.float64)  # (bfloat16's NaN compares unequal)
    np.testing.assert_array_equal(wide(jax.jit(ours)(x)), wide(want))
    y = jnp.where(jnp.isfinite(x), x, 0)  # finite inputs for the derivatives
    cot = jnp.asarray(rng.standard_normal(want.shape), dtype)
    for f in (ours, ref):
        assert f(y).dtype == dtype
    grads = [jax.jit(lambda a, f=f: jax.vjp(f, a)[1](cot)[0])(y) for f in (ours, ref)]
    np.testing.assert_array_equal(*grads)
    dy = jnp.asarray(rng.standard_normal(shape), dtype)
    tangents = [jax.jit(lambda a, f=f: jax.jvp(f, (a,), (dy,))[1])(y) for f in (ours, ref)]
    np.testing.assert_array_equal(*tangents)
    with pytest.raises(ValueError, match="window=4"):
        max_pool(x, 4, 2)
    with pytest.raises(ValueError, match="stride=0"):
        max_pool(x, 3, 0)


@pytest.mark.parametrize(("window", "stride"), [(3, 2), (5, 3), (3, 1)])
def test_max_pool_gradient_goes_to_the_first_maximum_as_pytorchs(window, stride, rng):
    # Ties (a ReLU's zeros, repeated values): each output's gradient goes to its window's
    # first maximum in row-major order, as torch.nn.functional.max_pool2d's does, and a
    # window holding NaNs routes it to its last NaN, as PyTorch's does (nn.max_pool's
    # derivative: to the largest number); each input's sum in PyTorch's order, bit for bit.
    import torch

    from se_flax._layers import max_pool

    x = np.maximum(np.round(rng.standard_normal((2, 11, 9, 4)), 1), 0)  # many ties
    x[0, 1, 2, 0] = x[0, 1, 3, 0] = x[1, 5, 4, 3] = x[1, 6, 4, 3] = np.nan
    cot = rng.standard_normal((2, (11 - 1) // stride + 1, (9 - 1) // stride + 1, 4))
    ours = jax.vjp(lambda a: max_pool(a, window, stride), jnp.asarray(x))[1](jnp.asarray(cot))[0]
    t = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    y = torch.nn.functional.max_pool2d(t, window, stride, window // 2)
    y.backward(torch.tensor(cot.transpose(0, 3, 1, 2)))
    want = t.grad.numpy().transpose(0, 2, 3, 1)
    assert (x == 0).mean() > 0.3
    np.testing.assert_array_equal(np.asarray(ours), want)
    # Built from selects that XLA fuses, not nn.max_pool's reduce-window derivative (its
    # select-and-scatter: 95 against 7.6 ms at a ResNet stem on CPU)
    grad = jax.grad(lambda a: max_pool(a, window, stride).sum())
    text = str(jax.make_jaxpr(grad)(jnp.asarray(x)))
    assert "reduce_window" not in text and "select_and" not in text and "scatter" not in text


def test_train_mode_updates_only_batch_stats(rng):
    model = se_flax.create_model("seresnet18", num_classes=3)
    x = jnp.asarray(rng.standard_normal((2, 32, 32, 3)), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)  # quicker than eager
    train = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    logits, updates = train(variables, x)
    assert logits.shape == (2, 3) and set(updates) == {"batch_stats"}
    assert int(updates["batch_stats"]["bn1"]["num_batches_tracked"]) == 1
    assert not np.allclose(updates["batch_stats"]["bn1"]["mean"], 0)
    eval_logits = jax.jit(model.apply)(variables, x)  # no mutable needed in eval
    assert eval_logits.shape == (2, 3)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("create", [se_torch.create_model, se_flax.create_model])
def test_bad_model_options(create):
    with pytest.raises(ValueError, match=r"unknown model 'seresnet51'; known models: .*seresnet50"):
        create("seresnet51")
    with pytest.raises(ValueError, match=r"unknown attn 'sk'; known: cbam, eca, ese, se$"):
        create("resnet18", attn="sk")
    with pytest.raises(ValueError, match=r"num_classes must be an integer >= 0, got -1"):
        create("resnet18", num_classes=-1)
    with pytest.raises(ValueError, match=r"in_chans must be an integer >= 1, got 0"):
        create("resnet18", in_chans=0)
    for bad in [(5,), (), (1, 1)]:
        with pytest.raises(
            ValueError, match=r"out_indices must be distinct feature levels in 0..4"
        ):
            create("resnet18", features_only=True, out_indices=bad)


def test_bad_config():
    with pytest.raises(
        ValueError,
        match=r"basic blocks support only cardinality=1 .* got "
        r"cardinality=32, base_width=4",
    ):
        ResNetConfig("basic", (2, 2, 2, 2), 32, 4)
    with pytest.raises(
        ValueError,
        match=r"unknown block 'wide'; known: basic, bottleneck, sk_basic, sk_bottleneck$",
    ):
        ResNetConfig("wide", (2, 2, 2, 2))


def test_bad_backbone_input(rng):
    tmodel = se_torch.create_model("resnet18")
    with pytest.raises(ValueError, match=r"input has 1 channels .* weights are for 3 channels"):
        tmodel(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"expected an input of rank 4 .* got rank 3"):
        tmodel(torch.randn(3, 32, 32))
    fmodel = se_flax.create_model("resnet18")
    variables = flax_shapes("resnet18")
    with pytest.raises(ValueError, match=r"input has 1 channels .* weights are for 3 channels"):
        fmodel.apply(variables, jnp.ones((1, 32, 32, 1)))
    with pytest.raises(TypeError, match=r"floating-point input, got dtype int32"):
        fmodel.apply(variables, jnp.ones((1, 32, 32, 3), jnp.int32))


# ---------------------------------------------------------------- the real timm (skipped in CI)


def _timm_model(timm, name: str):
    """timm's model of a name, or ``"base+attn"`` for timm's ResNet with that attention layer."""
    base, _, attn = name.partition("+")
    if not attn:
        return timm.create_model(name), se_torch.create_model(name)
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    config = get_model(base).config
    block = BasicBlock if config.block == "basic" else Bottleneck
    reference = ResNet(
        block=block,
        layers=list(config.layers),
        cardinality=config.cardinality,
        base_width=config.base_width,
        block_args={"attn_layer": attn},
    )
    return reference, se_torch.create_model(base, attn=attn)


@pytest.mark.parametrize(
    "name",
    [
        "seresnet18",
        "seresnet50",
        "seresnext50_32x4d",
        "resnet34",
        "skresnet18",
        "skresnet50",
        "skresnext50_32x4d",
        "resnet18+eca",
        "resnet50+cbam",
        "resnext50_32x4d+ese",
        # timm's ResNet options (issue 29): tiered and deep stems with avg_down, ECA and a 7x7
        # stem with avg_down, ResNet-RS, blur and average-pool anti-aliasing, senet154's
        # shortcuts and halved first convs
        "resnet10t",
        "seresnext26d_32x4d",
        "ecaresnetlight",
        "resnetrs50",
        "resnetblur18",
        "resnetaa34d",
        "senet154",
    ],
)
def test_real_timm_checkpoints_load_and_match(name, rng):
    timm = pytest.importorskip("timm")
    reference, ours = _timm_model(timm, name)
    reference = reference.double().eval()
    with torch.no_grad():  # non-trivial statistics and scales (no zero-init) so all paths count
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.normal_(1.0, 0.2)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    ours = ours.double().eval()
    assert list(ours.state_dict()) == list(reference.state_dict())  # same keys, same order
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.from_numpy(rng.standard_normal((2, 3, 64, 64)))
    with torch.no_grad():
        expected = reference(x)
        assert torch.equal(ours(x), expected)
    base, _, attn = name.partition("+")
    flax_model = se_flax.create_model(
        base, param_dtype=jnp.float64, **({"attn": attn} if attn else {})
    )
    variables = torch_to_flax(reference)
    flax_logits = flax_model.apply(variables, nchw_to_nhwc(x.numpy()))
    assert_trees_close(flax_logits, expected, rtol=1e-10, atol=1e-12, what=name)
    nnx_model = se_nnx.create_model(
        base, param_dtype=jnp.float64, **({"attn": attn} if attn else {})
    )
    update_nnx(nnx_model, variables).eval()
    nnx_logits = nnx_model(jnp.asarray(nchw_to_nhwc(x.numpy())))
    assert_trees_close(nnx_logits, expected, rtol=1e-10, atol=1e-12, what=f"NNX {name}")


def test_every_name_has_timm_s_state_dict():
    """Every registered name builds timm's module tree: the same state_dict keys in the same
    order, with the same shapes (on PyTorch's meta device: no memory, no initialisation)."""
    timm = pytest.importorskip("timm")
    for name in list_models():
        with torch.device("meta"):
            ours = se_torch.create_model(name).state_dict()
            theirs = timm.create_model(name).state_dict()
        assert list(ours) == list(theirs), name
        assert all(ours[k].shape == v.shape for k, v in theirs.items()), name


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("resnet50", {"stem_type": "deeper"}, r"unknown stem_type 'deeper'; timm's are '', "),
        ("resnet50", {"aa_layer": "gauss"}, r"unknown aa_layer 'gauss'; timm's are 'avg'"),
        ("resnet50", {"down_kernel_size": 2}, r"down_kernel_size must be odd .*got 2"),
        ("resnet50d", {"down_kernel_size": 3}, r"down_kernel_size must be 1 with avg_down, got 3"),
        ("seresnet50", {"attn_args": {"ratio": 0.5}}, r"attn 'se' takes no option 'ratio'"),
        ("resnet50", {"attn_args": {"rd_ratio": 0.5}}, r"attn_args \{'rd_ratio': 0.5\} given"),
        ("seresnet50", {"attn_args": {"rd_ratio": -1}}, r"rd_ratio"),
        ("resnet10t", {"stem_width": 3}, r"stem_width=3 leaves a deep_tiered stem's first conv"),
        ("resnet50", {"stem_width": 0}, r"stem_width must be an integer >= 1, got 0"),
        ("resnext50_32x4d", {"block_reduce_first": 3}, r"block_reduce_first=3 leaves layer1's"),
        ("resnet50", {"avg_down": 1}, r"avg_down must be true or false, got 1"),
        ("skresnet18", {"aa_layer": "avg"}, r"sk_basic blocks take no aa_layer"),
        ("resnet50", {"stem_typ": "deep"}, r"stem_typ"),
    ],
)
def test_bad_resnet_options_are_named_in_every_front_end(name, options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        se_torch.create_model(name, **options)
    with pytest.raises((ValueError, TypeError), match=message):
        se_flax.create_model(name, **options)
    with pytest.raises((ValueError, TypeError), match=message):
        se_nnx.create_model(name, rngs=nnx.Rngs(0), **options)


def test_timm_s_spellings_of_aa_layer_are_its_names():
    for spelling, name in (("AvgPool", "avg"), ("blur_pool", "blur"), ("Blur-PC", "blurpc")):
        assert ResNetConfig("basic", (1, 1, 1, 1), aa_layer=spelling).aa_layer == name
    config = get_model("resnetrs50").config
    assert config.attn_args == (("rd_ratio", 0.25),)
    assert dataclasses.replace(config, attn_args={"rd_ratio": 0.25}) == config


@pytest.mark.parametrize("name", ["resnet10t", "resnetrs50", "resnetaa50d", "resnet50s"])
def test_feature_info_of_the_new_stems_is_timms_and_the_maps_match(name):
    """The stem feature (act1) has the deep stem's channels at stride 2; the maps returned
    with features_only have the shapes feature_info describes, in every front-end."""
    config = get_model(name).config
    stem = 2 * config.stem_width if config.stem_type else 64  # timm's inplanes
    expected = [{"num_chs": stem, "reduction": 2, "module": "act1"}]
    expected += [
        {"num_chs": 64 * 2**i * config.expansion, "reduction": 4 * 2**i, "module": f"layer{i + 1}"}
        for i in range(4)
    ]
    options = {"features_only": True, "out_indices": (0, 1, 2, 3, 4)}
    with torch.device("meta"):
        assert se_torch.create_model(name, **options).feature_info == expected
    model = se_flax.create_model(name, **options)
    assert model.feature_info == expected
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    maps = jax.eval_shape(model.init_with_output, jax.random.key(0), x)[0]
    assert [(m.shape[1], m.shape[3]) for m in maps] == [
        (64 // f["reduction"], f["num_chs"]) for f in expected
    ]
    nnx_model = nnx.eval_shape(lambda: se_nnx.create_model(name, rngs=nnx.Rngs(0), **options))
    assert nnx_model.feature_info == expected
