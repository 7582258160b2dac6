"""ECA, effective SE and CBAM: PyTorch vs Flax parity (eval, train, statistics, gradients),
bit-exact conversion both ways, widths, converter rule selection and bad input."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax.errors import ScopeParamShapeError
from torch import nn

import se_flax
import se_torch
from se_convert import ConversionError, flax_to_torch, torch_to_flax
from tests.helpers import flatten, randomize_
from tests.layer_parity import (
    Case,
    assert_bad_options,
    assert_flax_16bit_compute,
    assert_flax_bad_input,
    assert_flax_structure_equals_converted_torch,
    assert_flax_to_torch_lists_every_misshaped_key,
    assert_flax_torch_flax_is_bit_exact,
    assert_parity,
    assert_torch_bad_input,
    assert_torch_flax_torch_is_bit_exact,
    case_ids,
    flax_shapes,
    shapes,
    timm_make_divisible,
)

# PyTorch's Hardsigmoid backward multiplies by the float32 constant 1/6 even for float64 tensors
# (see test_parity.test_torch_hardsigmoid_grad_is_float32_accurate): effective SE's float64
# gradients are float32-accurate only. Measured worst 3.5e-8.
HARDSIGMOID_GRAD64 = 1e-7

# Measured worst errors: see tests/layer_parity.py for how.
CASES = [
    # ECA, adaptive kernel: C=128 -> k=5. Measured 2.4e-7 / 7.3e-7; 6.8e-3 / 8.1e-4.
    Case(
        "eca",
        lambda: se_torch.EcaModule(128),
        lambda **kw: se_flax.EcaModule(**kw),
        (3, 128, 9, 11),
        f32_out=1e-6,
        f32_grad=3e-6,
        bf16=2e-2,
        f16=3e-3,
    ),
    # ECA, explicit kernel on a small C. Measured 1.9e-7 / 8.2e-7; 5.7e-3 / 7.1e-4.
    Case(
        "eca-k7",
        lambda: se_torch.EcaModule(40, kernel_size=7),
        lambda **kw: se_flax.EcaModule(kernel_size=7, **kw),
        (2, 40, 7, 9),
        f32_out=1e-6,
        f32_grad=3e-6,
        bf16=2e-2,
        f16=3e-3,
    ),
    # Effective SE (hard sigmoid gate). Measured 7.2e-7 / 3.0e-7; 5.9e-3 / 8.1e-4.
    Case(
        "ese",
        lambda: se_torch.EffectiveSEModule(48),
        lambda **kw: se_flax.EffectiveSEModule(**kw),
        (3, 48, 9, 11),
        f32_out=3e-6,
        f32_grad=2e-6,
        f64_grad=HARDSIGMOID_GRAD64,
        bf16=2e-2,
        f16=3e-3,
    ),
    # Effective SE, 0.5 * mean + 0.5 * max pooling. Measured 5.9e-7 / 2.7e-7; 7.5e-3 / 8.0e-4.
    Case(
        "ese-maxpool",
        lambda: se_torch.EffectiveSEModule(48, add_maxpool=True),
        lambda **kw: se_flax.EffectiveSEModule(add_maxpool=True, **kw),
        (3, 48, 9, 11),
        f32_out=3e-6,
        f32_grad=2e-6,
        f64_grad=HARDSIGMOID_GRAD64,
        bf16=2e-2,
        f16=3e-3,
    ),
    # CBAM, timm's defaults (hidden 64 / 16 = 4, 7x7 spatial conv + BatchNorm).
    # Measured 9.3e-7 / 1.9e-5; 1.1e-2 / 1.2e-3.
    Case(
        "cbam",
        lambda: se_torch.CbamModule(64),
        lambda **kw: se_flax.CbamModule(**kw),
        (3, 64, 9, 11),
        f32_out=4e-6,
        f32_grad=8e-5,
        bf16=3e-2,
        f16=5e-3,
    ),
    # CBAM, 3x3 spatial conv, MLP biases, SiLU, explicit hidden width, and a spatial BatchNorm
    # with non-default eps and momentum. Measured 1.3e-6 / 1.7e-5; 1.1e-2 / 1.9e-3.
    Case(
        "cbam-k3-bias-silu",
        lambda: se_torch.CbamModule(
            48,
            rd_channels=6,
            spatial_kernel_size=3,
            act_layer=nn.SiLU,
            mlp_bias=True,
            norm_layer=functools.partial(nn.BatchNorm2d, eps=1e-3, momentum=0.3),
        ),
        lambda **kw: se_flax.CbamModule(
            rd_channels=6,
            spatial_kernel_size=3,
            act_fn=jax.nn.silu,
            mlp_bias=True,
            norm_layer=functools.partial(se_flax.BatchNorm, epsilon=1e-3, momentum=0.7),
            **kw,
        ),
        (3, 48, 9, 11),
        f32_out=5e-6,
        f32_grad=8e-5,
        bf16=3e-2,
        f16=5e-3,
    ),
]
CASE = {case.name: case for case in CASES}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_parity_eval_train_statistics_gradients(case, dtype, rng):
    assert_parity(case, dtype, rng)


# ---------------------------------------------------------------- round trips

TORCH_ROUND_TRIPS = [(case, "float32") for case in CASES] + [
    (CASE["eca"], "bfloat16"),
    (CASE["cbam"], "float16"),
]
# One case per parameter structure (effective SE's add_maxpool and ECA's kernel size add none).
FLAX_ROUND_TRIPS = [(CASE[name], "float32") for name in ("eca", "ese", "cbam-k3-bias-silu")]


@pytest.mark.parametrize("case,dtype", TORCH_ROUND_TRIPS, ids=case_ids(TORCH_ROUND_TRIPS))
def test_torch_flax_torch_is_bit_exact(case, dtype, rng):
    counters = assert_torch_flax_torch_is_bit_exact(case, dtype, rng)
    assert bool(counters) == case.name.startswith("cbam")


@pytest.mark.parametrize("case,dtype", FLAX_ROUND_TRIPS, ids=case_ids(FLAX_ROUND_TRIPS))
def test_flax_torch_flax_is_bit_exact(case, dtype, rng):
    assert_flax_torch_flax_is_bit_exact(case, dtype, rng)


# ---------------------------------------------------------------- structure and widths


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_flax_structure_equals_converted_torch(case):
    expected = assert_flax_structure_equals_converted_torch(case)
    has_stats = any(k.startswith("batch_stats/") for k in expected)
    assert has_stats == case.name.startswith("cbam")


def test_structure_examples():
    """A few leaves spelled out: layouts (Conv1d -> (k, I, O), 1x1 conv -> Dense)."""
    got = shapes(torch_to_flax(CASE["eca"].torch_module()))
    assert got == {"params/conv/kernel": ((5, 1, 1), np.float32)}
    got = shapes(torch_to_flax(CASE["ese"].torch_module()))
    assert got["params/fc/kernel"] == ((48, 48), np.float32)
    got = shapes(torch_to_flax(CASE["cbam"].torch_module()))
    assert got["params/channel/fc1/kernel"] == ((64, 4), np.float32)
    assert got["params/spatial/conv/conv/kernel"] == ((7, 7, 2, 1), np.float32)
    assert got["batch_stats/spatial/conv/bn/num_batches_tracked"] == ((), np.int32)


def timm_eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """timm's EcaModule rule, written out: t = int(|log2(C) + beta| / gamma), odd, >= 3."""
    t = int(abs(math.log2(channels) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


ECA_KERNELS = {64: 3, 128: 5, 256: 5, 512: 5, 1024: 5, 2048: 7}  # ResNet widths


@pytest.mark.parametrize("channels,kernel", ECA_KERNELS.items())
def test_eca_adaptive_kernel_size(channels, kernel):
    assert timm_eca_kernel_size(channels) == kernel
    assert se_torch.EcaModule(channels).conv.weight.shape == (1, 1, kernel)
    got = flax_shapes(se_flax.EcaModule(), (1, 1, 1, channels))
    assert got == {"params/conv/kernel": ((kernel, 1, 1), np.float32)}


@pytest.mark.parametrize(
    "channels,gamma,beta,kernel",
    [(1, 2, 1, 3), (3, 2, 1, 3), (64, 1, 2, 9), (64, 3, 1, 3), (100_000, 2, 1, 9), (48, 2.5, 0, 3)],
)
def test_eca_kernel_size_other_constants(channels, gamma, beta, kernel):
    assert timm_eca_kernel_size(channels, gamma, beta) == kernel
    assert se_torch.EcaModule(channels, gamma=gamma, beta=beta).kernel_size == kernel
    got = flax_shapes(se_flax.EcaModule(gamma=gamma, beta=beta), (1, 1, 1, channels))
    assert got["params/conv/kernel"][0] == (kernel, 1, 1)


def test_eca_explicit_kernel_size_wins():
    """Unlike timm (which ignores kernel_size when channels is given), an explicit size is used."""
    assert se_torch.EcaModule(2048, kernel_size=3).conv.weight.shape == (1, 1, 3)
    assert se_torch.EcaModule(kernel_size=9).conv.weight.shape == (1, 1, 9)
    got = flax_shapes(se_flax.EcaModule(kernel_size=3), (1, 1, 1, 2048))
    assert got["params/conv/kernel"][0] == (3, 1, 1)


CBAM_WIDTHS = {  # C -> make_divisible(C / 16, 1, round_limit=0): rounds to nearest, at least 1
    (64, None): 4,
    (256, None): 16,
    (2048, None): 128,
    (24, None): 2,  # 1.5 rounds up, where C // 16 would give 1
    (20, None): 1,
    (8, None): 1,
    (20, 1 / 8): 3,
}


@pytest.mark.parametrize("channels,rd_ratio", CBAM_WIDTHS)
def test_cbam_hidden_width(channels, rd_ratio):
    width = CBAM_WIDTHS[channels, rd_ratio]
    assert timm_make_divisible(channels * (rd_ratio or 1 / 16), 1, 0.0) == width
    tmodule = se_torch.CbamModule(channels, rd_ratio=rd_ratio)
    assert tmodule.channel.fc1.weight.shape == (width, channels, 1, 1)
    got = flax_shapes(se_flax.CbamModule(rd_ratio=rd_ratio), (1, 3, 3, channels))
    assert got["params/channel/fc1/kernel"][0] == (channels, width)
    assert got["params/channel/fc2/kernel"][0] == (width, channels)


# ---------------------------------------------------------------- converter rule selection


def test_bare_eca_and_effective_se_convert_from_the_module(rng):
    """A bare module's ``conv`` (Conv1d) and ``fc`` (1x1 Conv2d) are told apart from a
    backbone's conv and classifier by their type; the values move with the right layout."""
    eca = randomize_(se_torch.EcaModule(64, kernel_size=5), rng, torch.float32)
    got = torch_to_flax(eca)
    w = eca.conv.weight.detach().numpy()  # (1, 1, k)
    assert flatten(got).keys() == {"params/conv/kernel"}
    np.testing.assert_array_equal(got["params"]["conv"]["kernel"], w.transpose(2, 1, 0))
    ese = randomize_(se_torch.EffectiveSEModule(24), rng, torch.float32)
    got = torch_to_flax(ese)
    assert flatten(got).keys() == {"params/fc/kernel", "params/fc/bias"}
    w = ese.fc.weight.detach().numpy()  # (O, I, 1, 1)
    np.testing.assert_array_equal(got["params"]["fc"]["kernel"], w[:, :, 0, 0].T)
    np.testing.assert_array_equal(got["params"]["fc"]["bias"], ese.fc.bias.detach().numpy())


@pytest.mark.parametrize("attn", ["eca", "ese", "cbam"])
def test_backbone_state_dict_converts_without_the_module(attn):
    """In blocks the layers sit at ``se.conv`` / ``se.fc``, whose context rules outrank the
    backbone's ``conv`` and the classifier's ``fc``: the state_dict alone gives the same
    variables as the module, with the Flax backbone's exact structure."""
    tmodel = se_torch.create_model("resnet18", attn=attn, num_classes=5)
    fmodel = se_flax.create_model("resnet18", attn=attn, num_classes=5)
    target = jax.eval_shape(
        functools.partial(fmodel.init, train=False),
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
    )
    from_module = flatten(torch_to_flax(tmodel, target=target))
    from_state_dict = flatten(torch_to_flax(tmodel.state_dict(), target=target))
    assert from_module.keys() == from_state_dict.keys()
    for key, leaf in from_module.items():
        assert from_state_dict[key].dtype == leaf.dtype, key
        np.testing.assert_array_equal(from_state_dict[key], leaf, err_msg=key)
    assert from_module["params/fc/kernel"].shape == (512, 5)  # the classifier stays Linear
    se_leaves = {k: v.shape for k, v in from_module.items() if "/se/" in k and "layer1_0" in k}
    expected = {
        "eca": {"params/layer1_0/se/conv/kernel": (3, 1, 1)},
        "ese": {"params/layer1_0/se/fc/kernel": (64, 64), "params/layer1_0/se/fc/bias": (64,)},
    }
    if attn in expected:
        assert se_leaves == expected[attn]
    else:
        assert se_leaves["params/layer1_0/se/channel/fc1/kernel"] == (64, 4)


def test_bare_effective_se_state_dict_is_an_error():
    """Without the module, a bare EffectiveSEModule's ``fc.weight`` is the classifier's name:
    the Linear rule takes it and its layout check refuses the 4-D tensor; never silent."""
    with pytest.raises(ConversionError, match=r"is not a Linear weight \(O, I\)") as info:
        torch_to_flax(se_torch.EffectiveSEModule(16).state_dict())
    assert info.value.mismatched == [
        "fc.weight: shape (16, 16, 1, 1) is not a Linear weight (O, I)"
    ]
    assert info.value.missing == info.value.unexpected == []


def test_bare_eca_state_dict_is_an_error():
    """The same for ECA: without the module, ``conv`` is the backbone's Conv2d rule."""
    with pytest.raises(ConversionError, match=r"is not a Conv2d weight") as info:
        torch_to_flax(se_torch.EcaModule(64).state_dict())
    assert info.value.mismatched == [
        "conv.weight: shape (1, 1, 3) is not a Conv2d weight (O, I, kH, kW)"
    ]


class SeWithConv2d(nn.Module):
    """A block whose ``se`` child has a Conv2d named ``conv``: not ECA despite the name."""

    def __init__(self):
        super().__init__()
        self.se = nn.Module()
        self.se.conv = nn.Conv2d(4, 6, 3)


def test_se_conv_that_is_a_conv2d_gets_the_conv2d_rule(rng):
    module = randomize_(SeWithConv2d(), rng, torch.float32)
    got = torch_to_flax(module)
    w = module.se.conv.weight.detach().numpy()
    np.testing.assert_array_equal(got["params"]["se"]["conv"]["kernel"], w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(got["params"]["se"]["conv"]["bias"], module.se.conv.bias.detach())
    back = flax_to_torch(got, SeWithConv2d())
    assert torch.equal(back.se.conv.weight, module.se.conv.weight)
    # Its bare state_dict names it ECA's `se.conv`: the Conv1d layout check refuses it.
    with pytest.raises(
        ConversionError, match=r"se.conv.weight: shape \(6, 4, 3, 3\) is not a Conv1d"
    ):
        torch_to_flax(module.state_dict())


WRONG_CHANNELS = {  # name: (source module, target module with other channels)
    "eca": (lambda: se_torch.EcaModule(64), lambda: se_torch.EcaModule(256)),
    "ese": (lambda: se_torch.EffectiveSEModule(32), lambda: se_torch.EffectiveSEModule(48)),
    "cbam": (lambda: se_torch.CbamModule(64), lambda: se_torch.CbamModule(32)),
}


@pytest.mark.parametrize("name", WRONG_CHANNELS)
def test_flax_to_torch_lists_every_misshaped_key(name, rng):
    source, target = (f() for f in WRONG_CHANNELS[name])
    assert_flax_to_torch_lists_every_misshaped_key(source, target, rng)


# ---------------------------------------------------------------- bad input

TORCH_MODULES = {  # each built for 8 input channels
    "eca": lambda: se_torch.EcaModule(8),
    "ese": lambda: se_torch.EffectiveSEModule(8),
    "cbam": lambda: se_torch.CbamModule(8),
}
FLAX_MODULES = {
    "eca": se_flax.EcaModule,
    "ese": se_flax.EffectiveSEModule,
    "cbam": se_flax.CbamModule,
}


@pytest.mark.parametrize("name", TORCH_MODULES)
def test_torch_bad_input(name):
    assert_torch_bad_input(TORCH_MODULES[name]())


@pytest.mark.parametrize("name", FLAX_MODULES)
def test_flax_bad_input(name, rng):
    assert_flax_bad_input(FLAX_MODULES[name](), rng)


@pytest.mark.parametrize("name", ["ese", "cbam"])
def test_flax_weights_for_other_channels_are_refused(name, rng):
    """Channels come from the input in Flax; weights built for 8 do not take 6."""
    module = FLAX_MODULES[name]()
    x = jnp.asarray(rng.standard_normal((2, 5, 5, 8)), jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    with pytest.raises(ScopeParamShapeError, match=r"expected to generate shape"):
        jax.eval_shape(module.apply, variables, x[..., 2:])


# (id, PyTorch constructor, Flax module, Flax input channels, message)
BAD_OPTIONS = [
    (
        "eca-even-kernel",
        lambda: se_torch.EcaModule(64, kernel_size=4),
        se_flax.EcaModule(kernel_size=4),
        64,
        r"kernel_size must be odd \(so the output keeps its size\), got 4",
    ),
    (
        "eca-kernel-0",
        lambda: se_torch.EcaModule(64, kernel_size=0),
        se_flax.EcaModule(kernel_size=0),
        64,
        r"kernel_size must be an integer >= 1, got 0",
    ),
    (
        "eca-gamma-0",
        lambda: se_torch.EcaModule(64, gamma=0),
        se_flax.EcaModule(gamma=0),
        64,
        r"gamma must be > 0, got 0",
    ),
    (
        "eca-gamma-negative",
        lambda: se_torch.EcaModule(64, gamma=-2.0),
        se_flax.EcaModule(gamma=-2.0),
        64,
        r"gamma must be > 0, got -2.0",
    ),
    (
        "eca-gamma-nan",
        lambda: se_torch.EcaModule(64, gamma=float("nan")),
        se_flax.EcaModule(gamma=float("nan")),
        64,
        r"gamma must be a finite number, got nan",
    ),
    (
        "cbam-even-spatial-kernel",
        lambda: se_torch.CbamModule(64, spatial_kernel_size=4),
        se_flax.CbamModule(spatial_kernel_size=4),
        64,
        r"spatial_kernel_size must be odd \(so the output keeps its size\), got 4",
    ),
    (
        "cbam-rd-channels-and-ratio",
        lambda: se_torch.CbamModule(64, rd_channels=4, rd_ratio=0.25),
        se_flax.CbamModule(rd_channels=4, rd_ratio=0.25),
        64,
        r"either rd_channels or rd_ratio/rd_divisor, not both: got rd_channels=4, rd_ratio=0.25",
    ),
]


@pytest.mark.parametrize(
    "make_torch,flax_module,channels,message",
    [case[1:] for case in BAD_OPTIONS],
    ids=[case[0] for case in BAD_OPTIONS],
)
def test_bad_options_both_frameworks(make_torch, flax_module, channels, message):
    assert_bad_options(make_torch, flax_module, channels, message)


def test_eca_needs_channels_or_kernel_size():
    with pytest.raises(
        ValueError, match=r"give channels \(for the adaptive kernel size\) or kernel_size"
    ):
        se_torch.EcaModule()
    # with an explicit size, the channel count is free (the weights do not depend on it)
    eca = se_torch.EcaModule(kernel_size=3)
    for c in (5, 64):
        assert eca(torch.randn(2, c, 3, 4)).shape == (2, c, 3, 4)


def test_eca_gamma_is_checked_even_when_kernel_size_makes_it_unused():
    x = jnp.ones((2, 8, 8, 32), jnp.float32)
    with pytest.raises(ValueError, match=r"gamma must be > 0, got -1"):
        se_torch.EcaModule(64, kernel_size=3, gamma=-1)
    with pytest.raises(ValueError, match=r"gamma must be > 0, got -1"):
        se_flax.EcaModule(kernel_size=3, gamma=-1).init(jax.random.key(0), x)


# ---------------------------------------------------------------- 16-bit smoke

# One case per kind of layer in bfloat16, one in float16.
SMOKE_16BIT = [(CASE[name], "bfloat16") for name in ("eca", "ese-maxpool", "cbam-k3-bias-silu")] + [
    (CASE["cbam"], "float16")
]


@pytest.mark.parametrize("case,dtype", SMOKE_16BIT, ids=case_ids(SMOKE_16BIT))
def test_flax_16bit_compute(case, dtype, rng):
    assert_flax_16bit_compute(case, dtype, rng)
