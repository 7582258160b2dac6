"""The helpers every test shares: one tree comparison, layout moves, random weights and one
PyTorch forward/backward pass."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import torch
from flax import traverse_util
from torch import nn

import se_common
from se_convert import torch_to_flax


def to_np(x: Any) -> np.ndarray:
    """NumPy copy of a torch tensor or JAX array (bf16 via ml_dtypes)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return np.asarray(x)


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, 1, -1)


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, -1, 1)


def flatten(tree: Any) -> dict[str, Any]:
    """A nested dict of leaves as ``{"a/b/c": leaf}``; a non-dict is ``{"": tree}``."""
    if isinstance(tree, Mapping):
        flat = traverse_util.flatten_dict(dict(tree))
        return {"/".join(map(str, k)): v for k, v in flat.items()}
    return {"": tree}


def assert_trees_close(actual: Any, expected: Any, *, rtol: float, atol: float, what: str = ""):
    """Asserts same structure, shapes and dtypes, then values within ``atol + rtol * |expected|``.

    The failure message names the worst leaf, the worst element and its difference.
    """
    actual, expected = flatten(actual), flatten(expected)
    assert actual.keys() == expected.keys(), (
        f"{what}: structure differs: only in actual {sorted(actual.keys() - expected.keys())}, "
        f"only in expected {sorted(expected.keys() - actual.keys())}"
    )
    worst = (-np.inf, "", None, 0.0)
    for key in sorted(actual):
        a = np.asarray(to_np(actual[key]), np.float64)
        e = np.asarray(to_np(expected[key]), np.float64)
        assert a.shape == e.shape, f"{what}: {key}: shape {a.shape} != {e.shape}"
        excess = np.abs(a - e) - (atol + rtol * np.abs(e))
        if excess.size and excess.max() > worst[0]:
            i = np.unravel_index(np.argmax(excess), excess.shape)
            worst = (excess.max(), key, i, float(np.abs(a - e)[i]))
    excess, key, index, diff = worst
    assert excess <= 0, (
        f"{what}: leaf {key!r} at {index}: |diff| = {diff:.3e} exceeds atol={atol:g} + "
        f"rtol={rtol:g} * |expected|"
    )


def assert_within_a_bfloat16_step(got: Any, exact: Any) -> None:
    """``got``, float32 sums of bfloat16 inputs' exact products rounded once to bfloat16, is
    within one bfloat16 step (2^-8 relative) of the float64 result ``exact``; 1e-5 absolute
    covers the float32 sums' own error many times over."""
    exact = np.asarray(exact, np.float64)
    step = np.abs(exact) * 2.0**-8 + 1e-5
    np.testing.assert_array_less(np.abs(np.asarray(got, np.float64) - exact), step)


def max_abs_diff(a: Any, b: Any) -> float:
    return max(
        float(np.max(np.abs(np.float64(to_np(x)) - np.float64(to_np(y))), initial=0.0))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def randomize_(
    module: nn.Module, rng: np.random.Generator, dtype: torch.dtype, *, shift_std: float = 0.5
) -> nn.Module:
    """Every parameter and statistic of ``module`` random, in ``dtype``, in place.

    Weights N(0, 1/fan_in) (activations stay O(1) through depth), BatchNorm scales N(1, 0.2^2),
    running variances U(0.5, 2), counters in [1, 1000), and biases, BatchNorm shifts and running
    means N(0, shift_std^2). Nothing keeps PyTorch's init (zero-init scales, unit statistics).
    """
    module.to(dtype)
    norms = {
        name for name, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }
    with torch.no_grad():
        for key, t in module.state_dict().items():
            owner, _, leaf = key.rpartition(".")
            if leaf == "num_batches_tracked":
                values = np.asarray(rng.integers(1, 1000))
            elif leaf == "running_var":
                values = rng.uniform(0.5, 2.0, t.shape)
            elif owner in norms and leaf == "weight":
                values = rng.normal(1.0, 0.2, t.shape)
            elif t.ndim > 1:
                values = rng.normal(0.0, (1 / t[0].numel()) ** 0.5, t.shape)
            else:  # biases, BatchNorm shifts and running means
                values = rng.normal(0.0, shift_std, t.shape)
            t.copy_(torch.from_numpy(values))
    return module


def torch_pass(
    module: nn.Module,
    x: np.ndarray,
    cot: np.ndarray,
    *,
    train: bool | None = None,
    channels_last: bool = False,
    context: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Output, input gradient and parameter gradients of ``sum(module(x) * cot)``, NCHW.

    Args:
        x, cot: NumPy arrays, cast to the module's dtype.
        train: ``module.train(train)`` first (``None`` keeps its mode).
        channels_last: feed the input in PyTorch's channels_last memory format.
        context: convert the gradients under this parent name and strip it again: a bare
            EcaModule's ``conv`` or EffectiveSEModule's ``fc`` is told from a backbone's conv
            and classifier by its module type, which a dict of gradients lacks; under ``se.``
            the block rules name them.

    Returns:
        The output and input gradient (detached tensors) and the parameter gradients in Flax's
        layout, flattened to ``"fc1/kernel"``-style keys.
    """
    if train is not None:
        module.train(train)
    module.zero_grad(set_to_none=True)
    dtype = next(module.parameters()).dtype
    xt = torch.from_numpy(np.asarray(x)).to(dtype)
    if channels_last:
        xt = xt.contiguous(memory_format=torch.channels_last)
    xt.requires_grad_(True)
    y = module(xt)
    (y * torch.from_numpy(np.asarray(cot)).to(dtype)).sum().backward()
    grads = {k: p.grad for k, p in module.named_parameters()}
    if context:
        grads = {f"{context}.{k}": g for k, g in grads.items()}
    params = torch_to_flax(grads, collections=["params"])["params"]
    return y.detach(), xt.grad, flatten(params[context] if context else params)


def family_names(family: str) -> list[str]:
    """The registered names of ``family`` (``"resnet"``, ``"efficientnet"``, ...)."""
    return [n for n in se_common.list_models() if se_common.get_model(n).family.name == family]


def planned_parameters(name: str, num_classes: int = 1000, in_chans: int = 3) -> int:
    """The parameter count of ``name``'s framework-free plan (its state_dict's float tensors
    without the running statistics), as timm counts ``model.parameters()``."""
    plan = se_common.get_model(name).config.state_dict(num_classes, in_chans)
    return sum(
        int(np.prod(spec.shape))
        for key, spec in plan.items()
        if spec.dtype == "float" and not key.endswith((".running_mean", ".running_var"))
    )


def register(monkeypatch: Any, name: str, config: Any, family: Any = None) -> Any:
    """Registers ``name`` (a ResNet-family config by default) for one test; the registry is
    restored afterwards."""
    family = se_common.RESNET if family is None else family
    row = se_common.Architecture(name, family, config)
    monkeypatch.setitem(se_common.MODELS, name, row)
    return row
