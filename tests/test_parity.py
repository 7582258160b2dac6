"""PyTorch vs Flax: identical outputs and gradients for copied weights, in both directions."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import partial

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from torch import nn

import se_flax
import se_torch
from se_convert import flax_to_torch, torch_to_flax
from tests.helpers import (
    assert_trees_close,
    nchw_to_nhwc,
    nhwc_to_nchw,
    randomize_,
    torch_pass,
)

# Activation and gate pairs: (PyTorch factory, the same function in JAX).
ACTS = {
    "relu": (nn.ReLU, jax.nn.relu),
    "silu": (nn.SiLU, jax.nn.silu),
    "gelu": (nn.GELU, partial(jax.nn.gelu, approximate=False)),  # torch's GELU is the exact one
}
GATES = {
    "sigmoid": (nn.Sigmoid, jax.nn.sigmoid),
    "hard_sigmoid": (nn.Hardsigmoid, jax.nn.hard_sigmoid),  # both relu6(x + 3) / 6
}
# Gradient tolerance floors (rtol, atol) per gate, added to the precision's own. PyTorch's
# Hardsigmoid backward multiplies by the float32 constant 1.0f / 6.0f even for float64 tensors
# (0.1666666716 instead of 0.1666666667, see test_torch_hardsigmoid_grad_is_float32_accurate),
# so its float64 gradients are only float32-accurate; measured worst |diff| 1.7e-8 (hypothesis).
GATE_GRAD_FLOOR = {"sigmoid": (0.0, 0.0), "hard_sigmoid": (1e-7, 1e-7)}


@dataclass(frozen=True)
class Precision:
    """A dtype and the tolerances measured for it (outputs and gradients are O(1) here)."""

    torch: torch.dtype
    jax: jnp.dtype
    rtol: float
    atol: float
    grad_rtol: float
    grad_atol: float


# float64: rounding level. float32: a few ulps of the pooled sums, measured max ~3e-7 on outputs
# and ~1e-6 on parameter gradients (sums over N*H*W), with margin.
PRECISIONS = [
    pytest.param(Precision(torch.float64, jnp.float64, 0, 1e-12, 0, 1e-12), id="float64"),
    pytest.param(Precision(torch.float32, jnp.float32, 1e-5, 2e-6, 1e-5, 1e-5), id="float32"),
]


def flax_run(model, variables, x_nchw: np.ndarray, cot_nchw: np.ndarray):
    """The same quantities in Flax, returned in PyTorch's NCHW layout for the input ones."""

    def loss(params, x):
        y = model.apply({"params": params}, x)
        return jnp.sum(y * cot), y

    cot = jnp.asarray(nchw_to_nhwc(cot_nchw))
    grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
    (g_params, g_x), y = grad_fn(variables["params"], jnp.asarray(nchw_to_nhwc(x_nchw)))
    return nhwc_to_nchw(np.asarray(y)), nhwc_to_nchw(np.asarray(g_x)), g_params


def assert_parity(
    tmodule, fmodel, shape, prec: Precision, rng, channels_last=False, gate="sigmoid"
):
    grad_rtol = max(prec.grad_rtol, GATE_GRAD_FLOOR[gate][0])
    grad_atol = max(prec.grad_atol, GATE_GRAD_FLOOR[gate][1])
    x = rng.standard_normal(shape).astype(prec.jax)
    cot = rng.standard_normal(shape).astype(prec.jax)
    variables = torch_to_flax(tmodule)
    ty, tgx, tgp = torch_pass(tmodule, x, cot, channels_last=channels_last)
    fy, fgx, fgp = flax_run(fmodel, variables, x, cot)
    assert fy.dtype == np.dtype(prec.jax)
    assert_trees_close(fy, ty, rtol=prec.rtol, atol=prec.atol, what="output")
    assert_trees_close(fgx, tgx, rtol=grad_rtol, atol=grad_atol, what="input grad")
    assert_trees_close(fgp, tgp, rtol=grad_rtol, atol=grad_atol, what="param grads")
    return ty


def se_pair(channels: int, prec: Precision, rng, *, act="relu", gate="sigmoid", **options):
    """A randomized ``se_torch.SqueezeExcite`` and its linen twin with the same options."""
    torch_opts = {"bias" if k == "use_bias" else k: v for k, v in options.items()}
    tmodule = se_torch.SqueezeExcite(
        channels, act_layer=ACTS[act][0], gate_layer=GATES[gate][0], **torch_opts
    )
    fmodel = se_flax.SqueezeExcite(
        act_fn=ACTS[act][1], gate_fn=GATES[gate][1], param_dtype=prec.jax, **options
    )
    return randomize_(tmodule, rng, prec.torch), fmodel


@pytest.mark.parametrize("prec", PRECISIONS)
@pytest.mark.parametrize("use_bias,act,gate", list(itertools.product([True, False], ACTS, GATES)))
def test_options(prec, use_bias, act, gate, rng):
    tmodule, fmodel = se_pair(24, prec, rng, act=act, gate=gate, use_bias=use_bias)
    assert_parity(tmodule, fmodel, (2, 24, 5, 7), prec, rng, gate=gate)


SHAPES = {
    # name: (input shape NCHW-style, width options)
    "1d-batch1": ((1, 3, 5), {"rd_channels": 1}),
    "2d-odd-hw": ((2, 40, 7, 9), {}),
    "2d-1x1-spatial": ((3, 64, 1, 1), {"rd_ratio": 0.25}),
    "2d-c-not-div-16": ((2, 20, 3, 5), {"rd_ratio": 0.3, "rd_divisor": 1}),
    "3d": ((2, 17, 3, 4, 5), {"rd_ratio": 0.5, "rd_divisor": 4}),
    "wide": ((1, 256, 4, 4), {"rd_divisor": 16}),
}


@pytest.mark.parametrize("prec", PRECISIONS)
@pytest.mark.parametrize("name", SHAPES)
def test_shapes_and_widths(prec, name, rng):
    shape, options = SHAPES[name]
    tmodule, fmodel = se_pair(shape[1], prec, rng, **options)
    assert_parity(tmodule, fmodel, shape, prec, rng)


@pytest.mark.parametrize("prec", PRECISIONS)
@pytest.mark.parametrize("bias", [True, False])
def test_channels_last_torch_input(prec, bias, rng):
    tmodule, fmodel = se_pair(32, prec, rng, use_bias=bias)
    y = assert_parity(tmodule, fmodel, (2, 32, 5, 6), prec, rng, channels_last=True)
    assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("prec", PRECISIONS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("channel,reduction", [(64, 16), (48, 4), (20, 3)])
def test_classic_selayer(prec, channel, reduction, channels_last, rng):
    """The classic recipe's twins: ``se_torch.SELayer(C, r)`` and ``se_flax.SELayer(r)``."""
    tmodule = randomize_(se_torch.SELayer(channel, reduction), rng, prec.torch)
    fmodel = se_flax.SELayer(reduction, param_dtype=prec.jax)
    assert_parity(tmodule, fmodel, (2, channel, 7, 5), prec, rng, channels_last)


@pytest.mark.parametrize("prec", PRECISIONS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_flax_to_torch_direction(prec, use_bias, rng):
    """Flax-initialised weights moved into PyTorch compute the same function."""
    fmodel = se_flax.SqueezeExcite(
        rd_ratio=0.25,
        use_bias=use_bias,
        param_dtype=prec.jax,
        bias_init=jax.nn.initializers.normal(0.5),
    )
    x = rng.standard_normal((2, 5, 6, 32)).astype(prec.jax)
    variables = fmodel.init(jax.random.key(int(rng.integers(2**31))), jnp.asarray(x))
    tmodule = flax_to_torch(
        variables, se_torch.SqueezeExcite(32, rd_ratio=0.25, bias=use_bias, dtype=prec.torch)
    )
    ty = tmodule(torch.from_numpy(nhwc_to_nchw(x)))
    fy = nhwc_to_nchw(np.asarray(fmodel.apply(variables, jnp.asarray(x))))
    assert_trees_close(fy, ty, rtol=prec.rtol, atol=prec.atol, what="output")


# bf16 tolerance, in bf16 ulps of the PyTorch output: measured at most 5 over 30 seeds. A
# one-ulp difference in a bf16 logit moves a small gate by several output ulps; both frameworks
# are equally far from the float64 result, which the test checks too.
BF16_MAX_ULPS = 8
BF16_ERROR_RATIO = 1.25  # Flax's max error vs float64 may exceed PyTorch's by at most this


@pytest.mark.parametrize("gate", sorted(GATES))
def test_bfloat16(gate, rng):
    """bf16 weights and inputs: the frameworks agree to a few ulps and are equally accurate."""
    prec64 = PRECISIONS[0].values[0]
    tmodule, _ = se_pair(48, prec64, rng, gate=gate, rd_ratio=0.25)
    x64 = torch.from_numpy(rng.standard_normal((2, 48, 7, 7))).to(torch.bfloat16).double()
    reference = tmodule.to(torch.bfloat16).double()(x64).detach().numpy()  # bf16 values, f64 math
    tmodule.to(torch.bfloat16)
    fmodel = se_flax.SqueezeExcite(
        rd_ratio=0.25, gate_fn=GATES[gate][1], dtype=jnp.bfloat16, param_dtype=jnp.bfloat16
    )
    ty = tmodule(x64.to(torch.bfloat16)).detach()
    fy = fmodel.apply(torch_to_flax(tmodule), jnp.asarray(nchw_to_nhwc(x64.numpy()), jnp.bfloat16))
    assert ty.dtype == torch.bfloat16 and fy.dtype == jnp.bfloat16
    ty = ty.double().numpy()
    fy = nhwc_to_nchw(np.asarray(fy, np.float64))
    ulp = np.spacing(np.abs(ty).astype(np.float32)) * 2.0**16  # bf16 keeps 16 fewer bits
    worst = np.max(np.abs(fy - ty) / ulp)
    assert worst <= BF16_MAX_ULPS, f"bf16 outputs differ by {worst} ulps"
    err_torch, err_flax = np.abs(ty - reference).max(), np.abs(fy - reference).max()
    assert err_flax <= BF16_ERROR_RATIO * err_torch, (err_flax, err_torch)


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 3),
    spatial=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    channels=st.integers(1, 48),
    width=st.one_of(
        st.builds(dict, rd_channels=st.integers(1, 12)),
        st.builds(
            dict,
            rd_ratio=st.sampled_from([1 / 16, 1 / 8, 0.25, 0.5, 1.0]),
            rd_divisor=st.sampled_from([1, 4, 8]),
        ),
    ),
    use_bias=st.booleans(),
    gate=st.sampled_from(sorted(GATES)),
    seed=st.integers(0, 2**31 - 1),
)
def test_hypothesis_float64(batch, spatial, channels, width, use_bias, gate, seed):
    rng = np.random.default_rng(seed)
    prec = PRECISIONS[0].values[0]
    tmodule, fmodel = se_pair(channels, prec, rng, gate=gate, use_bias=use_bias, **width)
    assert_parity(tmodule, fmodel, (batch, channels, *spatial), prec, rng, gate=gate)


def test_torch_hardsigmoid_grad_is_float32_accurate():
    """Pins the PyTorch behaviour behind GATE_GRAD_FLOOR; if PyTorch fixes it, tighten the floor."""
    x = (torch.rand(4, dtype=torch.float64) * 4 - 2).requires_grad_()  # inside (-3, 3)
    nn.functional.hardsigmoid(x).sum().backward()
    assert torch.all(x.grad == np.float32(1 / 6))
    assert torch.all(x.grad != 1 / 6)
