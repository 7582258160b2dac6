"""ECA, effective SE, CBAM and Selective Kernel: PyTorch vs Flax parity (eval, train, statistics,
gradients), bit-exact conversion both ways, widths, converter rule selection and bad input."""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from flax.errors import ScopeParamShapeError
from torch import nn

import se_flax
import se_torch
from se_flax.convert import ConversionError, flax_to_torch, torch_to_flax
from tests.helpers import nchw_to_nhwc, nhwc_to_nchw, to_np


@dataclass(frozen=True)
class Case:
    """One attention layer in both frameworks, its input, and the tolerances measured for it."""

    name: str
    torch_module: Callable[[], nn.Module]
    flax_module: Callable[..., linen.Module]  # takes dtype / param_dtype
    shape: tuple[int, int, int, int]  # NCHW input; H != W, odd sizes (one even for stride 2)
    f32_out: float  # float32 outputs: |diff| <= tol * (1 + |expected|)
    f32_grad: float  # float32 gradients, per tensor: max |diff| <= tol * max(1, max |expected|)
    f64_grad: float = 1e-12  # float64 gradients, the same measure
    bf16: float = 0.0  # dtype=bfloat16 forward: max |diff| vs float32 <= bf16 * max |float32|
    f16: float = 0.0  # dtype=float16 forward, the same


# float64: rounding level; measured over 100 seeds x 3 passes (eval and train each), all cases:
# outputs <= 2e-14, statistics <= 7.2e-16, gradients <= 1.7e-13 (effective SE's excepted, below).
# float32 is compared with a float64 PyTorch twin (see parity_errors): Flax must be within the
# case's bound or at most F32_RATIO times as far off as PyTorch's float32. The comment above each
# case gives Flax's worst float32 error over the same 100 seeds, outputs / gradients, then the
# worst 16-bit forward error (bfloat16 / float16, relative to the largest output). Gradients
# are the least accurate where sums cancel: the BatchNorm scale gradients, and SK's attention
# BatchNorm, which normalises only N=3 pooled values in training. There PyTorch's CPU kernels
# (float64 accumulation) are often far closer than XLA's float32 sums; elsewhere PyTorch's
# float32 error is as large (up to 1.2e-4 on SK). Statistics, all cases: <= 1.8e-7.
F64 = 1e-12
F32_STATS = 1e-6
F32_RATIO = 5.0
# PyTorch's Hardsigmoid backward multiplies by the float32 constant 1/6 even for float64 tensors
# (see test_parity.test_torch_hardsigmoid_grad_is_float32_accurate): effective SE's float64
# gradients are float32-accurate only. Measured worst 3.5e-8.
HARDSIGMOID_GRAD64 = 1e-7
ODD_BN_TORCH = functools.partial(nn.BatchNorm2d, eps=1e-3, momentum=0.3)

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
    # CBAM, 3x3 spatial conv, MLP biases, SiLU, explicit hidden width.
    # Measured 1.3e-6 / 1.7e-5; 1.1e-2 / 1.9e-3.
    Case(
        "cbam-k3-bias-silu",
        lambda: se_torch.CbamModule(
            48, rd_channels=6, spatial_kernel_size=3, act_layer=nn.SiLU, mlp_bias=True
        ),
        lambda **kw: se_flax.CbamModule(
            rd_channels=6, spatial_kernel_size=3, act_fn=jax.nn.silu, mlp_bias=True, **kw
        ),
        (3, 48, 9, 11),
        f32_out=5e-6,
        f32_grad=8e-5,
        bf16=3e-2,
        f16=5e-3,
    ),
    # SK, timm's default split_input (each path sees half the input), stride 2, 32 -> 48
    # channels; paths 3x3 and 3x3 dilated 2. H is even here: with stride 2, "SAME" padding is
    # asymmetric only for even sizes (for odd ones it equals PyTorch's symmetric padding).
    # Measured 3.4e-6 / 1.2e-5; 8.4e-3 / 1.2e-3.
    Case(
        "sk-split-stride2",
        lambda: se_torch.SelectiveKernel(32, 48, stride=2),
        lambda **kw: se_flax.SelectiveKernel(out_channels=48, stride=2, **kw),
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
            32, kernel_size=[3, 5], keep_3x3=False, norm_layer=ODD_BN_TORCH
        ),
        lambda **kw: se_flax.SelectiveKernel(
            kernel_size=[3, 5], keep_3x3=False, bn_epsilon=1e-3, bn_momentum=0.7, **kw
        ),
        (3, 32, 9, 11),
        f32_out=2e-5,
        f32_grad=5e-5,
        bf16=3e-2,
        f16=5e-3,
    ),
]
CASE = {case.name: case for case in CASES}
SK_NAMES = ("sk-split-stride2", "sk-grouped", "sk-k35-no3x3")


def flatten(tree) -> dict:
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def randomize_(module: nn.Module, rng: np.random.Generator, dtype: torch.dtype) -> nn.Module:
    """Every parameter and statistic random: weights N(0, 1/fan_in), biases N(0, 0.5^2),
    BatchNorm scale N(1, 0.2^2), running mean N(0, 0.5^2), running variance U(0.5, 2) and a
    random num_batches_tracked."""
    module.to(dtype)
    norms = {name for name, m in module.named_modules() if is_batchnorm(m)}
    with torch.no_grad():
        for key, t in module.state_dict().items():
            owner, _, leaf = key.rpartition(".")
            if leaf == "num_batches_tracked":
                values = np.asarray(rng.integers(1, 1000))
            elif leaf == "running_var":
                values = rng.uniform(0.5, 2.0, t.shape)
            elif owner in norms and leaf == "weight":
                values = rng.normal(1.0, 0.2, t.shape)
            elif leaf == "weight":
                values = rng.normal(0.0, (1 / t[0].numel()) ** 0.5, t.shape)
            else:  # biases, BatchNorm shifts and running means
                values = rng.normal(0.0, 0.5, t.shape)
            t.copy_(torch.from_numpy(values))
    return module


def random_input(shape, rng: np.random.Generator, dtype) -> np.ndarray:
    """Unit noise plus a per-sample, per-channel offset, so the pooled descriptors (and hence
    the gates) are O(1) and differ across the batch."""
    n, c = shape[:2]
    return (rng.standard_normal(shape) + rng.normal(0, 1, (n, c, 1, 1))).astype(dtype)


def grads_to_flax(grads: dict[str, torch.Tensor]) -> dict:
    """PyTorch gradients in Flax's layout. The keys get an ``se.`` prefix: a bare EcaModule's
    ``conv.weight`` and EffectiveSEModule's ``fc.weight`` are told apart from a backbone's conv
    and classifier only by their module type, which a plain dict lacks; inside a block (``se.``)
    the context rules name them."""
    prefixed = {f"se.{k}": v for k, v in grads.items()}
    return torch_to_flax(prefixed, collections=["params"])["params"]["se"]


def torch_pass(module: nn.Module, x: np.ndarray, cot: np.ndarray, train: bool):
    """Output, input gradient and parameter gradients (Flax layout) of ``sum(module(x) * cot)``."""
    module.train(train)
    module.zero_grad(set_to_none=True)
    xt = torch.from_numpy(x).requires_grad_(True)
    y = module(xt)
    (y * torch.from_numpy(cot)).sum().backward()
    grads = {k: p.grad for k, p in module.named_parameters()}
    return y.detach().numpy(), xt.grad.numpy(), grads_to_flax(grads)


@functools.cache
def flax_pass(case_name: str, dtype: str):
    """A jitted pass: eval and train outputs, input and parameter gradients, new statistics."""
    fmodule = CASE[case_name].flax_module(param_dtype=jnp.dtype(dtype))

    @jax.jit
    def run(params, stats, x, cot):
        def loss(p, x, train):
            y, updates = fmodule.apply(
                {"params": p, **stats}, x, train=train, mutable=["batch_stats"]
            )
            return jnp.sum(y * cot), (y, updates)

        grad = jax.grad(loss, argnums=(0, 1), has_aux=True)
        (e_gp, e_gx), (e_y, _) = grad(params, x, False)
        (t_gp, t_gx), (t_y, updates) = grad(params, x, True)
        return (e_y, e_gx, e_gp), (t_y, t_gx, t_gp), dict(updates)

    return run


def out_measure(a: np.ndarray, e: np.ndarray) -> float:
    """Outputs and statistics: worst ``|diff| / (1 + |expected|)``."""
    return float(np.max(np.abs(a - e) / (1 + np.abs(e))))


def grad_measure(a: np.ndarray, e: np.ndarray) -> float:
    """Gradients, per tensor: ``max |diff| / max(1, max |expected|)``. Parameter gradients are
    sums over N*H*W positions, so their rounding scales with their size."""
    return float(np.max(np.abs(a - e)) / max(1.0, np.max(np.abs(e))))


def leaves(tree) -> dict[str, np.ndarray]:
    flat = flatten(tree) if isinstance(tree, dict) else {"": tree}
    return {k: to_np(v) for k, v in flat.items()}


def compare(kind, what, measure, flax_tree, torch_tree, reference_tree) -> list[tuple]:
    """Rows ``(kind, where, Flax's error, PyTorch's error)`` against the reference, per leaf.
    Flax and PyTorch must agree on keys, shapes and dtypes."""
    f, t, r = leaves(flax_tree), leaves(torch_tree), leaves(reference_tree)
    assert f.keys() == t.keys() == r.keys(), f"{what}: {sorted(f)} vs {sorted(t)}"
    rows = []
    for key in sorted(r):
        assert f[key].shape == t[key].shape == r[key].shape, f"{what} {key}: shapes differ"
        assert f[key].dtype == t[key].dtype, f"{what} {key}: {f[key].dtype} != {t[key].dtype}"
        ref = np.float64(r[key])
        errors = (measure(np.float64(f[key]), ref), measure(np.float64(t[key]), ref))
        rows.append((kind, f"{what} {key}".strip(), *errors))
    return rows


def batch_stats(module: nn.Module) -> dict:
    return torch_to_flax(module).get("batch_stats", {})


def parity_errors(case: Case, dtype: str, rng: np.random.Generator, passes: int = 3) -> list:
    """``passes`` rounds of (eval pass, train pass) in both frameworks from the same randomised
    weights and statistics; each framework carries its own statistics on. Returns rows
    ``(kind, where, Flax's error, PyTorch's error)`` for outputs, gradients and statistics.

    float64: the reference is PyTorch itself (its error is 0). float32: the reference is a
    float64 PyTorch twin with the same weights and statistics at each pass, so PyTorch's own
    float32 error tells how well-conditioned each value is. The BatchNorm counters must match
    exactly and advance by one per train pass.
    """
    float32 = dtype == "float32"
    tmodule = randomize_(case.torch_module(), rng, getattr(torch, dtype))
    variables = torch_to_flax(tmodule)
    params = variables["params"]
    stats = {k: v for k, v in variables.items() if k == "batch_stats"}
    run = flax_pass(case.name, dtype)
    rows = []
    for step in range(passes):
        x = random_input(case.shape, rng, dtype)
        with torch.no_grad():
            y_shape = tmodule.eval()(torch.from_numpy(x)).shape
        cot = rng.standard_normal(tuple(y_shape)).astype(dtype)
        reference = copy.deepcopy(tmodule).double() if float32 else tmodule
        t_eval = torch_pass(tmodule, x, cot, train=False)
        t_train = torch_pass(tmodule, x, cot, train=True)
        r_eval, r_train = t_eval, t_train
        if float32:
            x64, cot64 = x.astype(np.float64), cot.astype(np.float64)
            r_eval = torch_pass(reference, x64, cot64, train=False)
            r_train = torch_pass(reference, x64, cot64, train=True)
        f_eval, f_train, updates = run(params, stats, nchw_to_nhwc(x), nchw_to_nhwc(cot))
        for mode, (fy, fgx, fgp), (ty, tgx, tgp), (ry, rgx, rgp) in (
            ("eval", f_eval, t_eval, r_eval),
            ("train", f_train, t_train, r_train),
        ):
            what = f"pass {step + 1} {mode}"
            fy, fgx = nhwc_to_nchw(np.asarray(fy)), nhwc_to_nchw(np.asarray(fgx))
            assert fy.dtype == fgx.dtype == np.dtype(dtype)
            rows += compare("out", f"{what} output", out_measure, fy, ty, ry)
            rows += compare("grad", f"{what} input grad", grad_measure, fgx, tgx, rgx)
            rows += compare("grad", f"{what} param grad", grad_measure, fgp, tgp, rgp)
        t_stats, r_stats = batch_stats(tmodule), batch_stats(reference)
        assert updates.keys() == ({"batch_stats"} if t_stats else set())
        if t_stats:
            f_flat, t_flat, r_flat = (
                flatten(s) for s in (updates["batch_stats"], t_stats, r_stats)
            )
            before = flatten(stats["batch_stats"])
            counters = [k for k in t_flat if k.endswith("num_batches_tracked")]
            assert counters, "BatchNorm statistics without a counter"
            for k in counters:  # exact, and advanced by exactly one per train pass
                assert f_flat[k].dtype == t_flat[k].dtype == np.int32, k
                assert int(f_flat[k]) == int(t_flat[k]) == int(r_flat[k]) == int(before[k]) + 1
            rows += compare(
                "stats", f"pass {step + 1} statistics", out_measure, f_flat, t_flat, r_flat
            )
            stats = {"batch_stats": updates["batch_stats"]}
    return rows


PRECISIONS = ["float64", "float32"]


@pytest.mark.parametrize("dtype", PRECISIONS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_parity_eval_train_statistics_gradients(case, dtype, rng):
    """Eval and train outputs, input and parameter gradients and the updated statistics agree
    over three passes. float64: to rounding level. float32: Flax is within the case's bound of
    float64, or at most F32_RATIO times as far from it as PyTorch's float32 (values that are
    ill-conditioned for both frameworks, see the note above CASES)."""
    if dtype == "float64":
        bounds = {"out": F64, "stats": F64, "grad": case.f64_grad}
        ratio = 0.0
    else:
        bounds = {"out": case.f32_out, "stats": F32_STATS, "grad": case.f32_grad}
        ratio = F32_RATIO
    rows = parity_errors(case, dtype, rng)
    assert {row[0] for row in rows} >= {"out", "grad"}
    excess = [
        (flax / max(bounds[kind], ratio * torch_err), kind, where, flax, torch_err)
        for kind, where, flax, torch_err in rows
    ]
    score, kind, where, flax, torch_err = max(excess)
    assert score <= 1, (
        f"{case.name} {dtype}: {where}: error {flax:.3g} > {bounds[kind]:g} "
        f"(PyTorch's own: {torch_err:.3g})"
    )


# ---------------------------------------------------------------- round trips


def flax_input(case: Case, rng: np.random.Generator, dtype) -> jnp.ndarray:
    return jnp.asarray(nchw_to_nhwc(random_input(case.shape, rng, np.float32)), dtype)


TORCH_ROUND_TRIPS = [(case, "float32") for case in CASES] + [
    (CASE["eca"], "bfloat16"),
    (CASE["cbam"], "float16"),
    (CASE["sk-split-stride2"], "bfloat16"),
    (CASE["sk-grouped"], "float16"),
]
# One case per parameter structure (effective SE's add_maxpool and ECA's kernel size add none).
FLAX_ROUND_TRIPS = [
    (CASE[name], "float32")
    for name in ("eca", "ese", "cbam-k3-bias-silu", "sk-grouped", "sk-k35-no3x3")
] + [(CASE["sk-split-stride2"], "bfloat16")]


def case_ids(pairs) -> list[str]:
    return [f"{case.name}-{dtype}" for case, dtype in pairs]


@pytest.mark.parametrize("case,dtype", TORCH_ROUND_TRIPS, ids=case_ids(TORCH_ROUND_TRIPS))
def test_torch_flax_torch_is_bit_exact(case, dtype, rng):
    """Every tensor comes back with its bits and dtype; num_batches_tracked stays int64."""
    source = randomize_(case.torch_module(), rng, getattr(torch, dtype))
    variables = torch_to_flax(source)
    float_leaves = {v.dtype for k, v in flatten(variables).items() if "batches" not in k}
    assert float_leaves == {jnp.dtype(dtype)}
    target = flax_to_torch(variables, case.torch_module().to(getattr(torch, dtype)))
    source_sd, target_sd = source.state_dict(), target.state_dict()
    assert source_sd.keys() == target_sd.keys()
    for key, tensor in source_sd.items():
        assert target_sd[key].dtype == tensor.dtype, key
        assert torch.equal(target_sd[key], tensor), key
    counters = [k for k in source_sd if k.endswith("num_batches_tracked")]
    assert all(target_sd[k].dtype == torch.int64 for k in counters)
    assert bool(counters) == isinstance(source, (se_torch.CbamModule, se_torch.SelectiveKernel))


@pytest.mark.parametrize("case,dtype", FLAX_ROUND_TRIPS, ids=case_ids(FLAX_ROUND_TRIPS))
def test_flax_torch_flax_is_bit_exact(case, dtype, rng):
    """From Flax's own initialisation after one train step (non-trivial statistics, counter 1),
    every leaf comes back with its bits and dtype."""
    fmodule = case.flax_module(param_dtype=jnp.dtype(dtype))
    x = flax_input(case, rng, dtype)
    # An "rbg" key: its initialisers compile in half the time of the default threefry's.
    init_key = jax.random.key(int(rng.integers(2**31)), impl="rbg")
    variables = jax.jit(fmodule.init)(init_key, x)
    stats = {k: v for k, v in variables.items() if k == "batch_stats"}
    cot = jnp.ones(jax.eval_shape(fmodule.apply, variables, x).shape, x.dtype)
    _, _, updates = flax_pass(case.name, dtype)(variables["params"], stats, x, cot)  # one step
    variables = {"params": variables["params"], **updates}
    tmodule = flax_to_torch(variables, case.torch_module().to(getattr(torch, dtype)))
    flat_in, flat_out = flatten(variables), flatten(torch_to_flax(tmodule))
    assert flat_in.keys() == flat_out.keys()
    for key, leaf in flat_in.items():
        assert flat_out[key].dtype == leaf.dtype, key
        np.testing.assert_array_equal(np.asarray(flat_out[key]), np.asarray(leaf), err_msg=key)
        if key.endswith("/var"):  # the train step moved the statistics away from their init
            assert not np.all(np.asarray(leaf, np.float32) == 1), key
    counters = {v.item() for k, v in flat_in.items() if k.endswith("num_batches_tracked")}
    assert counters == ({1} if "batch_stats" in variables else set())


# ---------------------------------------------------------------- structure and widths


def shapes(tree) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in flatten(tree).items()}


def flax_shapes(fmodule: linen.Module, shape_nhwc, dtype=jnp.float32) -> dict:
    spec = jax.ShapeDtypeStruct(shape_nhwc, dtype)
    return shapes(jax.eval_shape(fmodule.init, jax.random.key(0), spec))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_flax_structure_equals_converted_torch(case):
    """Flax's parameter and statistic paths, shapes and dtypes are those of the PyTorch twin's
    converted state_dict: nothing missing, nothing extra."""
    n, c, h, w = case.shape
    expected = shapes(torch_to_flax(case.torch_module()))
    assert flax_shapes(case.flax_module(), (n, h, w, c)) == expected
    has_stats = any(k.startswith("batch_stats/") for k in expected)
    assert has_stats == case.name.startswith(("cbam", "sk"))


def test_structure_examples():
    """A few leaves spelled out: layouts (Conv1d -> (k, I, O), 1x1 conv -> Dense, grouped
    conv keeps C_in / groups) and the SK paths' kernel sizes."""
    got = shapes(torch_to_flax(CASE["eca"].torch_module()))
    assert got == {"params/conv/kernel": ((5, 1, 1), np.float32)}
    got = shapes(torch_to_flax(CASE["ese"].torch_module()))
    assert got["params/fc/kernel"] == ((48, 48), np.float32)
    got = shapes(torch_to_flax(CASE["cbam"].torch_module()))
    assert got["params/channel/fc1/kernel"] == ((64, 4), np.float32)
    assert got["params/spatial/conv/conv/kernel"] == ((7, 7, 2, 1), np.float32)
    assert got["batch_stats/spatial/conv/bn/num_batches_tracked"] == ((), np.int32)
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


def timm_eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """timm's EcaModule rule, written out: t = int(|log2(C) + beta| / gamma), odd, >= 3."""
    t = int(abs(math.log2(channels) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


def timm_make_divisible(v: float, divisor: int, round_limit: float) -> int:
    """timm's make_divisible, written out (min_value = divisor)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < round_limit * v else new_v


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
    got = flax_shapes(se_flax.SelectiveKernel(out_channels=out, **options), (1, 5, 5, 16))
    assert got["params/attn/fc_reduce/kernel"][0] == (out, width)
    assert got["params/attn/bn/scale"][0] == (width,)


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


class Conv1dFcReduce(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Module()
        self.attn.fc_reduce = nn.Conv1d(8, 4, 1, bias=False)


def test_conv1d_named_like_a_conv2d_rule_is_a_type_mismatch():
    with pytest.raises(ConversionError) as info:
        torch_to_flax(Conv1dFcReduce())
    assert info.value.missing == info.value.unexpected == []
    [problem] = info.value.mismatched
    assert problem.startswith("attn.fc_reduce: is a Conv1d")
    assert "expect Conv2d" in problem
    with pytest.raises(ConversionError, match=r"attn.fc_reduce: is a Conv1d"):
        flax_to_torch(
            {"params": {"attn": {"fc_reduce": {"kernel": jnp.ones((8, 4))}}}}, Conv1dFcReduce()
        )


WRONG_CHANNELS = {  # name: (source module, target module with other channels)
    "eca": (lambda: se_torch.EcaModule(64), lambda: se_torch.EcaModule(256)),
    "ese": (lambda: se_torch.EffectiveSEModule(32), lambda: se_torch.EffectiveSEModule(48)),
    "cbam": (lambda: se_torch.CbamModule(64), lambda: se_torch.CbamModule(32)),
    "sk": (
        lambda: se_torch.SelectiveKernel(32, 48),
        lambda: se_torch.SelectiveKernel(32, 64),
    ),
}


@pytest.mark.parametrize("name", WRONG_CHANNELS)
def test_flax_to_torch_lists_every_misshaped_key(name, rng):
    """Every key whose shape differs is reported at once, and the module is left untouched."""
    source, target = (f() for f in WRONG_CHANNELS[name])
    variables = torch_to_flax(randomize_(source, rng, torch.float32))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    expected = {
        k for k, v in target.state_dict().items() if v.shape != source.state_dict()[k].shape
    }
    assert expected  # the two modules differ
    with pytest.raises(ConversionError) as info:
        flax_to_torch(variables, target)
    err = info.value
    named = [re.search(r"module (\S+) needs", m) for m in err.mismatched]
    assert all(named), err.mismatched
    assert sorted(m[1] for m in named) == sorted(expected)
    assert err.missing == err.unexpected == []
    assert f"{len(expected)} problem(s)" in str(err)
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k]), k


# ---------------------------------------------------------------- bad input

TORCH_MODULES = {  # each built for 8 input channels
    "eca": lambda: se_torch.EcaModule(8),
    "ese": lambda: se_torch.EffectiveSEModule(8),
    "cbam": lambda: se_torch.CbamModule(8),
    "sk": lambda: se_torch.SelectiveKernel(8, 16),
}
FLAX_MODULES = {
    "eca": se_flax.EcaModule,
    "ese": se_flax.EffectiveSEModule,
    "cbam": se_flax.CbamModule,
    "sk": functools.partial(se_flax.SelectiveKernel, out_channels=16),
}


@pytest.mark.parametrize("name", TORCH_MODULES)
def test_torch_bad_input(name):
    module = TORCH_MODULES[name]()
    with pytest.raises(ValueError, match=r"input has 6 channels .* weights are for 8 channels"):
        module(torch.randn(2, 6, 5, 5))
    with pytest.raises(ValueError, match=r"rank 4 .*got rank 3 \(shape \(2, 8, 5\)\)"):
        module(torch.randn(2, 8, 5))
    with pytest.raises(TypeError, match=r"floating-point input, got dtype torch.int64"):
        module(torch.randint(0, 5, (2, 8, 5, 5)))


@pytest.mark.parametrize("name", FLAX_MODULES)
def test_flax_bad_input(name, rng):
    """The checks run at trace time, so ``jax.eval_shape`` finds them without compiling."""
    module = FLAX_MODULES[name]()
    x = jnp.asarray(rng.standard_normal((2, 5, 5, 8)), jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    train = functools.partial(module.apply, train=True, mutable=["batch_stats"])
    for call in (
        lambda x: jax.eval_shape(module.init, jax.random.key(0), x),
        lambda x: jax.eval_shape(module.apply, variables, x),
        lambda x: jax.eval_shape(train, variables, x),
        lambda x: jax.jit(module.apply)(variables, x),
    ):
        with pytest.raises(
            ValueError, match=r"rank 4 .*\(N, \*spatial, C\), got rank 3 \(shape \(2, 5, 8\)\)"
        ):
            call(x[:, 0])
        with pytest.raises(TypeError, match=r"floating-point input, got dtype int32"):
            call(x.astype(jnp.int32))


@pytest.mark.parametrize("name", ["ese", "cbam", "sk"])
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
    with pytest.raises(ValueError, match=message):
        make_torch()
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(
            flax_module.init, jax.random.key(0), jnp.ones((2, 5, 5, channels), jnp.float32)
        )


def test_eca_needs_channels_or_kernel_size():
    with pytest.raises(
        ValueError, match=r"give channels \(for the adaptive kernel size\) or kernel_size"
    ):
        se_torch.EcaModule()
    # with an explicit size, the channel count is free (the weights do not depend on it)
    eca = se_torch.EcaModule(kernel_size=3)
    for c in (5, 64):
        assert eca(torch.randn(2, c, 3, 4)).shape == (2, c, 3, 4)


# ---------------------------------------------------------------- 16-bit smoke


# One case per kind of layer in bfloat16, two in float16.
SMOKE_16BIT = [
    (CASE[name], "bfloat16")
    for name in (
        "eca",
        "ese-maxpool",
        "cbam-k3-bias-silu",
        "sk-split-stride2",
        "sk-grouped",
        "sk-k35-no3x3",
    )
] + [(CASE["cbam"], "float16"), (CASE["sk-split-stride2"], "float16")]


@pytest.mark.parametrize("case,dtype", SMOKE_16BIT, ids=case_ids(SMOKE_16BIT))
def test_flax_16bit_compute(case, dtype, rng):
    """``dtype=`` a 16-bit type computes and returns that type (statistics keep the parameter
    dtype) and stays close to the float32 result on the same (rounded) input."""
    model = case.flax_module(dtype=jnp.dtype(dtype))

    @jax.jit
    def run(variables, x):
        return model.apply(variables, x), model.apply(
            variables, x, train=True, mutable=["batch_stats"]
        )

    variables = torch_to_flax(randomize_(case.torch_module(), rng, torch.float32))
    x = flax_input(case, rng, dtype)
    y, (y_train, updates) = run(variables, x)
    stats = {k: v for k, v in variables.items() if k == "batch_stats"}
    # The float32 eval output of the parity test's (already compiled) pass is the reference.
    float32_pass = flax_pass(case.name, "float32")
    x32, cot = x.astype(jnp.float32), jnp.ones(y.shape, jnp.float32)
    (reference, _, _), _, _ = float32_pass(variables["params"], stats, x32, cot)
    assert y.dtype == y_train.dtype == jnp.dtype(dtype)
    error = float(jnp.max(jnp.abs(y.astype(jnp.float32) - reference)))
    bound = case.bf16 if dtype == "bfloat16" else case.f16
    assert error <= bound * float(jnp.max(jnp.abs(reference))), error
    assert jax.tree.map(lambda v: v.dtype, updates) == jax.tree.map(lambda v: v.dtype, stats)


def test_options_that_would_be_dropped_are_checked_too():
    """out_channels=0 is not "default"; gamma is checked even when kernel_size makes it unused."""
    x = jnp.ones((2, 8, 8, 32), jnp.float32)
    for bad in (0, -4):
        with pytest.raises(ValueError, match=rf"out_channels must be an integer >= 1, got {bad}"):
            se_torch.SelectiveKernel(32, out_channels=bad)
        with pytest.raises(ValueError, match=rf"out_channels must be an integer >= 1, got {bad}"):
            se_flax.SelectiveKernel(out_channels=bad).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"gamma must be > 0, got -1"):
        se_torch.EcaModule(64, kernel_size=3, gamma=-1)
    with pytest.raises(ValueError, match=r"gamma must be > 0, got -1"):
        se_flax.EcaModule(kernel_size=3, gamma=-1).init(jax.random.key(0), x)
