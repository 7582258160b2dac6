"""Selective Kernel: PyTorch vs Flax parity (eval, train, statistics, gradients), bit-exact
conversion both ways, widths, converter rule selection and bad input."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.errors import ScopeParamShapeError
from torch import nn

import se_flax
import se_torch
from se_convert import ConversionError, flax_to_torch, torch_to_flax
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

# Measured worst errors: see tests/layer_parity.py for how.
CASES = [
    # SK, timm's default split_input (each path sees half the input), stride 2, 32 -> 48
    # channels; paths 3x3 and 3x3 dilated 2. H is even here: with stride 2, "SAME" padding is
    # asymmetric only for even sizes (for odd ones it equals PyTorch's symmetric padding).
    # Measured 3.4e-6 / 1.2e-5; 8.4e-3 / 1.2e-3.
    Case(
        "sk-split-stride2",
        lambda: se_torch.SelectiveKernel(32, 48, stride=2),
        lambda **kw: se_flax.SelectiveKernel(features=48, stride=2, **kw),
        (3, 32, 10, 11),
        f32_out=1.5e-5,
        f32_grad=5e-5,
        bf16=3e-2,
        f16=5e-3,
    ),
    # SK as in skresnext: grouped paths over the whole input, rd_divisor 32.
    # Measured 4.3e-6 / 6.7e-5 (where PyTorch's own error is 1.2e-4; 1.1e-5 where it is
    # more than 5x smaller); 9.8e-3 / 1.4e-3.
    Case(
        "sk-grouped",
        lambda: se_torch.SelectiveKernel(64, groups=16, split_input=False, rd_divisor=32),
        lambda **kw: se_flax.SelectiveKernel(groups=16, split_input=False, rd_divisor=32, **kw),
        (3, 64, 9, 11),
        f32_out=1.5e-5,
        f32_grad=5e-5,
        bf16=3e-2,
        f16=5e-3,
    ),
    # SK with true 3x3 and 5x5 paths and non-default path BatchNorm eps and momentum (the
    # attention's BatchNorm keeps PyTorch's defaults in both). Measured 9.3e-6 / 5.6e-5 (1.0e-5
    # where PyTorch's own error is more than 5x smaller); 7.9e-3 / 1.2e-3.
    Case(
        "sk-k35-no3x3",
        lambda: se_torch.SelectiveKernel(
            32,
            kernel_size=[3, 5],
            keep_3x3=False,
            norm_layer=functools.partial(nn.BatchNorm2d, eps=1e-3, momentum=0.3),
        ),
        lambda **kw: se_flax.SelectiveKernel(
            kernel_size=[3, 5],
            keep_3x3=False,
            norm_layer=functools.partial(se_flax.BatchNorm, epsilon=1e-3, momentum=0.7),
            **kw,
        ),
        (3, 32, 9, 11),
        f32_out=2e-5,
        f32_grad=5e-5,
        bf16=3e-2,
        f16=5e-3,
    ),
]
CASE = {case.name: case for case in CASES}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_parity_eval_train_statistics_gradients(case, dtype, rng):
    assert_parity(case, dtype, rng)


TORCH_ROUND_TRIPS = [(case, "float32") for case in CASES] + [
    (CASE["sk-split-stride2"], "bfloat16"),
    (CASE["sk-grouped"], "float16"),
]
FLAX_ROUND_TRIPS = [
    (CASE["sk-grouped"], "float32"),
    (CASE["sk-k35-no3x3"], "float32"),
    (CASE["sk-split-stride2"], "bfloat16"),
]


@pytest.mark.parametrize("case,dtype", TORCH_ROUND_TRIPS, ids=case_ids(TORCH_ROUND_TRIPS))
def test_torch_flax_torch_is_bit_exact(case, dtype, rng):
    assert assert_torch_flax_torch_is_bit_exact(case, dtype, rng)  # with counters


@pytest.mark.parametrize("case,dtype", FLAX_ROUND_TRIPS, ids=case_ids(FLAX_ROUND_TRIPS))
def test_flax_torch_flax_is_bit_exact(case, dtype, rng):
    assert_flax_torch_flax_is_bit_exact(case, dtype, rng)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_flax_structure_equals_converted_torch(case):
    expected = assert_flax_structure_equals_converted_torch(case)
    assert any(k.startswith("batch_stats/") for k in expected)


def test_structure_examples():
    """A few leaves spelled out: the paths' kernels (a grouped conv keeps C_in / groups), the
    attention's 1x1 convs as Dense kernels, and the paths' kernel sizes and dilations."""
    got = shapes(torch_to_flax(CASE["sk-split-stride2"].torch_module()))
    assert got["params/paths_0/conv/kernel"] == ((3, 3, 16, 48), np.float32)
    assert got["params/paths_1/conv/kernel"] == ((3, 3, 16, 48), np.float32)
    assert got["params/attn/fc_reduce/kernel"] == ((48, 8), np.float32)
    assert got["params/attn/fc_select/kernel"] == ((8, 96), np.float32)
    got = shapes(torch_to_flax(CASE["sk-grouped"].torch_module()))
    assert got["params/paths_0/conv/kernel"] == ((3, 3, 4, 64), np.float32)
    assert got["params/attn/fc_reduce/kernel"] == ((64, 32), np.float32)
    got = shapes(torch_to_flax(CASE["sk-k35-no3x3"].torch_module()))
    assert got["params/paths_1/conv/kernel"] == ((5, 5, 16, 32), np.float32)
    sk = CASE["sk-split-stride2"].torch_module()
    assert [p.conv.dilation for p in sk.paths] == [(1, 1), (2, 2)]
    assert [p.conv.padding for p in sk.paths] == [(1, 1), (2, 2)]


SK_WIDTHS = [  # (out channels, options, width of the attention's hidden layer)
    (64, {"rd_ratio": 1 / 8, "rd_divisor": 16}, 16),  # skresnet18 / 34
    (512, {"rd_ratio": 1 / 8, "rd_divisor": 16}, 64),
    (64, {}, 8),  # defaults 1/16, 8
    (128, {"rd_divisor": 32}, 32),  # skresnext
    (368, {"rd_divisor": 16}, 32),  # 23 -> 16 loses > 10%: round_limit 0.9 adds a divisor
    (384, {"rd_divisor": 16}, 32),  # 24 -> 32
    (64, {"rd_channels": 5}, 5),
]


@pytest.mark.parametrize("out,options,width", SK_WIDTHS)
def test_selective_kernel_attention_width(out, options, width):
    if "rd_channels" not in options:
        ratio, divisor = options.get("rd_ratio", 1 / 16), options.get("rd_divisor", 8)
        assert timm_make_divisible(out * ratio, divisor, 0.9) == width
    tmodule = se_torch.SelectiveKernel(16, out, **options)
    assert tmodule.attn.fc_reduce.weight.shape == (width, out, 1, 1)
    assert tmodule.attn.fc_select.weight.shape == (2 * out, width, 1, 1)
    got = flax_shapes(se_flax.SelectiveKernel(features=out, **options), (1, 5, 5, 16))
    assert got["params/attn/fc_reduce/kernel"][0] == (out, width)
    assert got["params/attn/bn/scale"][0] == (width,)


def test_attention_twins_share_defaults(rng):
    """``SelectiveKernelAttn`` has the same defaults in both frameworks (2 paths, width 32)."""
    x = rng.standard_normal((3, 2, 40, 5, 5)).astype(np.float32)  # (N, P, C, H, W)
    tmodule = se_torch.SelectiveKernelAttn(40)
    assert tmodule.fc_reduce.weight.shape == (32, 40, 1, 1)
    fmodule = se_flax.SelectiveKernelAttn()
    x_flax = np.moveaxis(x, 2, -1)  # (N, P, H, W, C)
    got = shapes(jax.eval_shape(fmodule.init, jax.random.key(0), x_flax))
    assert got == shapes(torch_to_flax(tmodule))
    assert got["params/fc_select/kernel"][0] == (32, 80)


class Conv1dFcReduce(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Module()
        self.attn.fc_reduce = nn.Conv1d(8, 4, 1, bias=False)


def test_a_conv1d_named_like_the_attention_converts_as_a_conv1d():
    """With the module, its type decides: a Conv1d named ``fc_reduce`` is a Conv1d kernel
    ``(k, I, O)``. Without it, the name's rule (a 1x1 Conv2d) refuses the 3-D tensor, and
    Dense-shaped variables do not fit the Conv1d."""
    module = Conv1dFcReduce()
    kernel = torch_to_flax(module)["params"]["attn"]["fc_reduce"]["kernel"]
    np.testing.assert_array_equal(kernel, module.attn.fc_reduce.weight.detach().permute(2, 1, 0))
    with pytest.raises(ConversionError, match=r"shape \(4, 8, 1\) is not a 1x1 Conv2d weight"):
        torch_to_flax(module.state_dict())
    with pytest.raises(
        ConversionError, match=r"fc_reduce/kernel: \(8, 4\) float64, module .* needs \(1, 8, 4\)"
    ):
        flax_to_torch(
            {"params": {"attn": {"fc_reduce": {"kernel": jnp.ones((8, 4))}}}}, Conv1dFcReduce()
        )


def test_flax_to_torch_lists_every_misshaped_key(rng):
    assert_flax_to_torch_lists_every_misshaped_key(
        se_torch.SelectiveKernel(32, 48), se_torch.SelectiveKernel(32, 64), rng
    )


def test_torch_bad_input():
    assert_torch_bad_input(se_torch.SelectiveKernel(8, 16))


def test_flax_bad_input(rng):
    assert_flax_bad_input(se_flax.SelectiveKernel(features=16), rng)


def test_flax_weights_for_other_channels_are_refused(rng):
    """Channels come from the input in Flax; weights built for 8 do not take 6."""
    module = se_flax.SelectiveKernel(features=16)
    x = jnp.asarray(rng.standard_normal((2, 5, 5, 8)), jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    with pytest.raises(ScopeParamShapeError, match=r"expected to generate shape"):
        jax.eval_shape(module.apply, variables, x[..., 2:])


# (id, PyTorch constructor, Flax module, Flax input channels, message)
BAD_OPTIONS = [
    (
        "sk-kernel-3-4",
        lambda: se_torch.SelectiveKernel(32, kernel_size=[3, 4]),
        se_flax.SelectiveKernel(kernel_size=[3, 4]),
        32,
        r"every kernel size must be an odd integer >= 3, got \[3, 4\]",
    ),
    (
        "sk-one-kernel",
        lambda: se_torch.SelectiveKernel(32, kernel_size=[3]),
        se_flax.SelectiveKernel(kernel_size=[3]),
        32,
        r"kernel_size must be an odd int >= 3 or a sequence of at least two, got \[3\]",
    ),
    (
        "sk-kernel-2",
        lambda: se_torch.SelectiveKernel(32, kernel_size=2),
        se_flax.SelectiveKernel(kernel_size=2),
        32,
        r"every kernel size must be an odd integer >= 3, got 2",
    ),
    (
        "sk-split-input-indivisible",
        lambda: se_torch.SelectiveKernel(33),
        se_flax.SelectiveKernel(),
        33,
        r"split_input needs in_channels divisible by the 2 paths, got in_channels=33",
    ),
    (
        "sk-split-input-three-paths",
        lambda: se_torch.SelectiveKernel(32, kernel_size=[3, 5, 7]),
        se_flax.SelectiveKernel(kernel_size=[3, 5, 7]),
        32,
        r"divisible by the 3 paths, got in_channels=32",
    ),
    (
        "sk-rd-channels-and-ratio",
        lambda: se_torch.SelectiveKernel(32, rd_channels=4, rd_ratio=0.25),
        se_flax.SelectiveKernel(rd_channels=4, rd_ratio=0.25),
        32,
        r"not both: got rd_channels=4, rd_ratio=0.25",
    ),
    (
        "sk-dilation-0",
        lambda: se_torch.SelectiveKernel(32, dilation=0),
        se_flax.SelectiveKernel(dilation=0),
        32,
        r"dilation must be an integer >= 1, got 0",
    ),
]


@pytest.mark.parametrize(
    "make_torch,flax_module,channels,message",
    [case[1:] for case in BAD_OPTIONS],
    ids=[case[0] for case in BAD_OPTIONS],
)
def test_bad_options_both_frameworks(make_torch, flax_module, channels, message):
    assert_bad_options(make_torch, flax_module, channels, message)


def test_output_channels_that_would_be_dropped_are_checked_too():
    """``out_channels=0`` (``features=0`` in Flax) is not "default"."""
    x = jnp.ones((2, 8, 8, 32), jnp.float32)
    for bad in (0, -4):
        with pytest.raises(ValueError, match=rf"out_channels must be an integer >= 1, got {bad}"):
            se_torch.SelectiveKernel(32, out_channels=bad)
        with pytest.raises(ValueError, match=rf"features must be an integer >= 1, got {bad}"):
            se_flax.SelectiveKernel(features=bad).init(jax.random.key(0), x)


SMOKE_16BIT = [(case, "bfloat16") for case in CASES] + [(CASE["sk-split-stride2"], "float16")]


@pytest.mark.parametrize("case,dtype", SMOKE_16BIT, ids=case_ids(SMOKE_16BIT))
def test_flax_16bit_compute(case, dtype, rng):
    assert_flax_16bit_compute(case, dtype, rng)
