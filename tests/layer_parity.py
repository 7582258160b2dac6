"""The parity harness of the attention layers' twins (``test_attention.py``,
``test_selective_kernel.py``): each case is one layer in both frameworks with its measured
tolerances, checked in eval and train mode, with statistics and gradients, round trips, structure,
16-bit compute and bad input."""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from se_convert import ConversionError, flax_to_torch, torch_to_flax
from tests.helpers import flatten, nchw_to_nhwc, nhwc_to_nchw, randomize_, to_np, torch_pass


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


def case_ids(pairs) -> list[str]:
    return [f"{case.name}-{dtype}" for case, dtype in pairs]


def timm_make_divisible(v: float, divisor: int, round_limit: float) -> int:
    """timm's make_divisible, written out (min_value = divisor)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < round_limit * v else new_v


def random_input(shape, rng: np.random.Generator, dtype) -> np.ndarray:
    """Unit noise plus a per-sample, per-channel offset, so the pooled descriptors (and hence
    the gates) are O(1) and differ across the batch."""
    n, c = shape[:2]
    return (rng.standard_normal(shape) + rng.normal(0, 1, (n, c, 1, 1))).astype(dtype)


def flax_input(case: Case, rng: np.random.Generator, dtype) -> jnp.ndarray:
    return jnp.asarray(nchw_to_nhwc(random_input(case.shape, rng, np.float32)), dtype)


@functools.cache
def flax_pass(case: Case, dtype: str):
    """A jitted pass: eval and train outputs, input and parameter gradients, new statistics."""
    fmodule = case.flax_module(param_dtype=jnp.dtype(dtype))

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


def _torch_pass(module: nn.Module, x: np.ndarray, cot: np.ndarray, train: bool):
    """The PyTorch side of a pass: output and input gradient as NumPy, parameter gradients."""
    y, gx, gp = torch_pass(module, x, cot, train=train, context="se")
    return y.numpy(), gx.numpy(), gp


def out_measure(a: np.ndarray, e: np.ndarray) -> float:
    """Outputs and statistics: worst ``|diff| / (1 + |expected|)``."""
    return float(np.max(np.abs(a - e) / (1 + np.abs(e))))


def grad_measure(a: np.ndarray, e: np.ndarray) -> float:
    """Gradients, per tensor: ``max |diff| / max(1, max |expected|)``. Parameter gradients are
    sums over N*H*W positions, so their rounding scales with their size."""
    return float(np.max(np.abs(a - e)) / max(1.0, np.max(np.abs(e))))


def _leaves(tree) -> dict[str, np.ndarray]:
    return {k: to_np(v) for k, v in flatten(tree).items()}


def compare(kind, what, measure, flax_tree, torch_tree, reference_tree) -> list[tuple]:
    """Rows ``(kind, where, Flax's error, PyTorch's error)`` against the reference, per leaf.
    Flax and PyTorch must agree on keys, shapes and dtypes."""
    f, t, r = _leaves(flax_tree), _leaves(torch_tree), _leaves(reference_tree)
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
    run = flax_pass(case, dtype)
    rows = []
    for step in range(passes):
        x = random_input(case.shape, rng, dtype)
        with torch.no_grad():
            y_shape = tmodule.eval()(torch.from_numpy(x)).shape
        cot = rng.standard_normal(tuple(y_shape)).astype(dtype)
        reference = copy.deepcopy(tmodule).double() if float32 else tmodule
        t_eval = _torch_pass(tmodule, x, cot, train=False)
        t_train = _torch_pass(tmodule, x, cot, train=True)
        r_eval, r_train = t_eval, t_train
        if float32:
            x64, cot64 = x.astype(np.float64), cot.astype(np.float64)
            r_eval = _torch_pass(reference, x64, cot64, train=False)
            r_train = _torch_pass(reference, x64, cot64, train=True)
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


def assert_parity(case: Case, dtype: str, rng: np.random.Generator) -> None:
    """Eval and train outputs, input and parameter gradients and the updated statistics agree
    over three passes. float64: to rounding level. float32: Flax is within the case's bound of
    float64, or at most F32_RATIO times as far from it as PyTorch's float32 (values that are
    ill-conditioned for both frameworks, see the note above F64)."""
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


def assert_torch_flax_torch_is_bit_exact(case: Case, dtype: str, rng: np.random.Generator):
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
    return counters


def assert_flax_torch_flax_is_bit_exact(case: Case, dtype: str, rng: np.random.Generator):
    """From Flax's own initialisation after one train step (non-trivial statistics, counter 1),
    every leaf comes back with its bits and dtype."""
    fmodule = case.flax_module(param_dtype=jnp.dtype(dtype))
    x = flax_input(case, rng, dtype)
    # An "rbg" key: its initialisers compile in half the time of the default threefry's.
    init_key = jax.random.key(int(rng.integers(2**31)), impl="rbg")
    variables = jax.jit(fmodule.init)(init_key, x)
    stats = {k: v for k, v in variables.items() if k == "batch_stats"}
    cot = jnp.ones(jax.eval_shape(fmodule.apply, variables, x).shape, x.dtype)
    _, _, updates = flax_pass(case, dtype)(variables["params"], stats, x, cot)  # one step
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


def shapes(tree) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in flatten(tree).items()}


def flax_shapes(fmodule: linen.Module, shape_nhwc, dtype=jnp.float32) -> dict:
    spec = jax.ShapeDtypeStruct(shape_nhwc, dtype)
    return shapes(jax.eval_shape(fmodule.init, jax.random.key(0), spec))


def assert_flax_structure_equals_converted_torch(case: Case) -> dict:
    """Flax's parameter and statistic paths, shapes and dtypes are those of the PyTorch twin's
    converted state_dict: nothing missing, nothing extra. Returns them."""
    n, c, h, w = case.shape
    expected = shapes(torch_to_flax(case.torch_module()))
    assert flax_shapes(case.flax_module(), (n, h, w, c)) == expected
    return expected


def assert_flax_16bit_compute(case: Case, dtype: str, rng: np.random.Generator) -> None:
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
    x32, cot = x.astype(jnp.float32), jnp.ones(y.shape, jnp.float32)
    (reference, _, _), _, _ = flax_pass(case, "float32")(variables["params"], stats, x32, cot)
    assert y.dtype == y_train.dtype == jnp.dtype(dtype)
    error = float(jnp.max(jnp.abs(y.astype(jnp.float32) - reference)))
    bound = case.bf16 if dtype == "bfloat16" else case.f16
    assert error <= bound * float(jnp.max(jnp.abs(reference))), error
    assert jax.tree.map(lambda v: v.dtype, updates) == jax.tree.map(lambda v: v.dtype, stats)


def assert_flax_to_torch_lists_every_misshaped_key(
    source: nn.Module, target: nn.Module, rng: np.random.Generator
) -> None:
    """Every key whose shape differs is reported at once, and the module is left untouched."""
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


def assert_torch_bad_input(module: nn.Module) -> None:
    """A module built for 8 channels names the bad channel count, rank and dtype."""
    with pytest.raises(ValueError, match=r"input has 6 channels .* weights are for 8 channels"):
        module(torch.randn(2, 6, 5, 5))
    with pytest.raises(ValueError, match=r"rank 4 .*got rank 3 \(shape \(2, 8, 5\)\)"):
        module(torch.randn(2, 8, 5))
    with pytest.raises(TypeError, match=r"floating-point input, got dtype torch.int64"):
        module(torch.randint(0, 5, (2, 8, 5, 5)))


def assert_flax_bad_input(module: linen.Module, rng: np.random.Generator) -> None:
    """The checks run at trace time, so ``jax.eval_shape`` finds them without compiling."""
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


def assert_bad_options(make_torch, flax_module: linen.Module, channels: int, message: str):
    """The same bad option fails with the same message in both frameworks."""
    with pytest.raises(ValueError, match=message):
        make_torch()
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(
            flax_module.init, jax.random.key(0), jnp.ones((2, 5, 5, channels), jnp.float32)
        )
