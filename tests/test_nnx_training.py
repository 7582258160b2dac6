"""NNX training: ``nnx.Optimizer`` with ``se_flax.optim`` vs torch.optim step for step, the same
steps as linen's ``train_step`` bit for bit, and orbax checkpoints that resume bit-identically."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import jax
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import se_flax
import se_torch
from se_common import ResNetConfig
from se_convert import torch_to_flax, update_nnx
from se_flax import optim as flax_optim
from se_flax.training import (
    TrainState,
    nnx_eval_step,
    nnx_train_step,
    restore_nnx_checkpoint,
    save_nnx_checkpoint,
    train_step,
)
from se_torch import training as torch_training
from tests.helpers import assert_trees_close, flatten, nchw_to_nhwc, randomize_
from tests.test_training import (  # noqa: F401  (_standard_promotion: an autouse fixture)
    CASES,
    CLASSES,
    CONFIG,
    STEPS,
    OptCase,
    _standard_promotion,
    tol64,
)

BATCH, SIZE = 8, 16  # 16x16 images: layers 3 and 4 still see 8 values per channel
DTYPE = "float64"


@dataclass(frozen=True)
class NnxCase:
    """A row of the PyTorch -> optax table, and how the NNX run around it goes."""

    opt: OptCase  # its tol64 is the tolerance here too
    mode: str  # "train" or "eval": the mode the caller leaves the model in; the steps neither
    # depend on it nor change it
    linen: bool  # also run linen's train_step on the same batches (one compile more): same bits


# Measured worst |diff| / (1 + |x|) from PyTorch after 12 float64 steps (the test runs 6; 6 seeds,
# ResNet-10 + SE with random weights and statistics, 16x16 images): SGD + Nesterov + weight
# decay: losses 1.7e-14, parameters 4.8e-15, statistics 4.0e-14; AdamW: losses 2.0e-14,
# parameters 6.1e-13, statistics 3.5e-13 (its 1 / (sqrt(v) + eps) amplifies rounding).
# Tolerances leave >= 16x.
# NNX vs linen: 0 (the same bits) in every one of those runs, both optimizers; the check runs
# for AdamW only, to spare a compile.
NNX_CASES = {
    "sgd-nesterov-weight-decay": NnxCase(
        OptCase(
            "sgd-nesterov-weight-decay",
            lambda p: (
                torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.05),
                None,
            ),
            lambda: flax_optim.sgd(0.01, momentum=0.9, nesterov=True, weight_decay=0.05),
            tol64=1e-12,
        ),
        mode="eval",
        linen=False,
    ),
    "adamw": NnxCase(next(c for c in CASES if c.name == "adamw"), mode="train", linen=True),
}


@functools.cache
def optax_tx(name: str) -> optax.GradientTransformation:
    """One transformation object per case: ``nnx.jit`` and ``jax.jit`` compile a step once per
    transformation, so the tests sharing it share the compiled steps."""
    return NNX_CASES[name].opt.make_optax()


def batches(rng: np.random.Generator, n: int = STEPS) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fresh random NCHW images and labels."""
    return [
        (rng.standard_normal((BATCH, 3, SIZE, SIZE)), rng.integers(0, CLASSES, BATCH))
        for _ in range(n)
    ]


def torch_model(rng: np.random.Generator) -> torch.nn.Module:
    """A ResNet-10 + SE with random weights and statistics (none at PyTorch's init values)."""
    return randomize_(se_torch.ResNet(CONFIG, num_classes=CLASSES), rng, getattr(torch, DTYPE))


def abstract_resnet(**options) -> nnx.Module:
    """The NNX ResNet-10 + SE (``options`` override the defaults) built under ``nnx.eval_shape``:
    no arrays, no initialisation cost."""
    options = {"config": CONFIG, "num_classes": CLASSES, "param_dtype": DTYPE, **options}
    return nnx.eval_shape(lambda: se_flax.nnx.ResNet(**options, rngs=nnx.Rngs(0)))


def nnx_model(variables: dict) -> nnx.Module:
    """The NNX ResNet-10 + SE holding ``variables`` (e.g. PyTorch's, via ``torch_to_flax``)."""
    return update_nnx(abstract_resnet(), variables)


def variables(model: nnx.Module) -> dict:
    """An NNX model's variables in linen's layout (that of ``torch_to_flax``)."""
    return {
        "params": nnx.to_pure_dict(nnx.state(model, nnx.Param)),
        "batch_stats": nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)),
    }


def modes(model: nnx.Module) -> set[bool]:
    """The ``use_running_average`` of every BatchNorm: ``{True}`` in eval mode."""
    return {
        m.use_running_average
        for _, m in nnx.iter_modules(model)
        if isinstance(m, se_flax.nnx.BatchNorm)
    }


def snapshot(*nodes) -> nnx.State:
    """A copy of every variable's value (NumPy), unaffected by later updates."""
    return jax.tree.map(np.array, nnx.state(nodes))


def assert_bitwise_equal(actual, expected) -> None:
    """Same tree, and every leaf the same dtype and bits; failures name the leaf."""
    got = jax.tree_util.tree_flatten_with_path(actual)[0]
    want = jax.tree_util.tree_flatten_with_path(expected)[0]
    assert [p for p, _ in got] == [p for p, _ in want]
    for (path, a), (_, b) in zip(got, want, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path), strict=True)


def torch_run(case: OptCase, model: torch.nn.Module, data: list, extra: tuple) -> tuple:
    """PyTorch's metrics of every step on ``data``, then its eval metrics on ``extra``."""
    optimizer, scheduler = case.make_torch(model.parameters())
    steps = [
        torch_training.train_step(
            model, optimizer, torch.from_numpy(x), torch.from_numpy(y), scheduler
        )
        for x, y in data
    ]
    x, y = extra
    return steps, torch_training.eval_step(model, torch.from_numpy(x), torch.from_numpy(y))


@pytest.mark.parametrize("name", list(NNX_CASES))
def test_nnx_training_matches_torch_and_linen(name, rng):
    """``STEPS`` steps of ``nnx_train_step`` on identical batches equal torch.optim's at rounding
    level (losses, every parameter and statistic) and linen's ``train_step`` bit for bit."""
    case, mode, tx = NNX_CASES[name].opt, NNX_CASES[name].mode, optax_tx(name)
    tol = tol64(case)
    tmodel = torch_model(rng)
    initial = torch_to_flax(tmodel)
    data, (extra,) = batches(rng), batches(rng, 1)
    # PyTorch first: its threads and XLA's slow each other down when interleaved.
    torch_steps, torch_eval = torch_run(case, tmodel, data, extra)
    expected = torch_to_flax(tmodel)

    model = nnx_model(initial)
    getattr(model, mode)()
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    nnx_steps = [nnx_train_step(model, optimizer, nchw_to_nhwc(x), y) for x, y in data]
    for step, (f, t) in enumerate(zip(nnx_steps, torch_steps, strict=True)):
        assert_trees_close(f["loss"], t["loss"], rtol=tol, atol=tol, what=f"loss {step}")
        assert float(f["accuracy"]) == float(t["accuracy"]), step
    assert int(optimizer.step[...]) == STEPS
    assert modes(model) == {mode == "eval"}  # trained in training mode, left in its own
    got = variables(model)
    for what in ("params", "batch_stats"):
        assert_trees_close(got[what], expected[what], rtol=tol, atol=tol, what=what)
    counters = {k: v for k, v in flatten(got["batch_stats"]).items() if "num_batches" in k}
    start = flatten(initial["batch_stats"])
    assert len(counters) == 12  # the stem, 2 in each of 4 blocks, 3 downsampling norms
    for key, counter in counters.items():
        assert counter.dtype == np.int32 and int(counter) == int(start[key]) + STEPS, key

    before = snapshot(model)
    f = nnx_eval_step(model, nchw_to_nhwc(extra[0]), extra[1])
    assert_trees_close(f["loss"], torch_eval["loss"], rtol=tol, atol=tol, what="eval loss")
    assert float(f["accuracy"]) == float(torch_eval["accuracy"])
    assert_bitwise_equal(snapshot(model), before)  # eval mode updates nothing
    assert modes(model) == {mode == "eval"}

    if not NNX_CASES[name].linen:
        return
    # linen's train_step with the same transformation on the same batches: the same bits.
    state = TrainState.create(
        apply_fn=se_flax.ResNet(CONFIG, num_classes=CLASSES, param_dtype=DTYPE).apply,
        params=initial["params"],
        batch_stats=initial["batch_stats"],
        tx=tx,
    )
    for (x, y), f in zip(data, nnx_steps, strict=True):
        state, linen = train_step(state, nchw_to_nhwc(x), y)
        assert_bitwise_equal(f, linen)
    assert_bitwise_equal(got, {"params": state.params, "batch_stats": state.batch_stats})
    assert_bitwise_equal(
        jax.tree.leaves(nnx.as_pure(optimizer.opt_state)), jax.tree.leaves(state.opt_state)
    )
    assert int(optimizer.step[...]) == int(state.step)


def _global_pool(x):
    return x.mean(axis=(1, 2))


def small_model(seed: int, abstract: bool = False) -> nnx.Module:
    """ConvNormAct + SE + pooling + classifier: what a checkpoint holds (parameters, statistics
    with their counter) at a fraction of the ResNet's compile time."""

    def make():
        f64 = {"param_dtype": DTYPE, "rngs": nnx.Rngs(seed)}
        return nnx.Sequential(
            se_flax.nnx.ConvNormAct(3, 16, 3, stride=2, **f64),
            se_flax.nnx.SqueezeExcite(16, rd_channels=4, **f64),
            _global_pool,
            nnx.Linear(16, CLASSES, **f64),
        )

    return nnx.eval_shape(make) if abstract else make()


def test_nnx_checkpoint_resumes_bit_identically(rng, tmp_path):
    """Save after 3 steps, restore into a fresh, differently initialised model and optimizer,
    3 more steps: every Param, BatchStat (counters too), optimizer state and step are the bits
    of 6 uninterrupted steps. AdamW: its update depends on the restored count."""
    tx = optax_tx("adamw")
    model = small_model(0)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    data = batches(rng, 6)
    for step, (images, labels) in enumerate(data):
        nnx_train_step(model, optimizer, nchw_to_nhwc(images), labels)
        if step == 2:
            save_nnx_checkpoint(tmp_path / "ckpt", model, optimizer)
            at_save = snapshot(model, optimizer)

    fresh = small_model(1)
    fresh_optimizer = nnx.Optimizer(fresh, tx, wrt=nnx.Param)
    nnx_train_step(fresh, fresh_optimizer, nchw_to_nhwc(data[0][0]), data[0][1])  # moments != 0
    restore_nnx_checkpoint(tmp_path / "ckpt", fresh, fresh_optimizer)
    assert_bitwise_equal(nnx.state((fresh, fresh_optimizer)), at_save)
    assert int(fresh_optimizer.step[...]) == 3
    for images, labels in data[3:]:
        nnx_train_step(fresh, fresh_optimizer, nchw_to_nhwc(images), labels)
    assert int(fresh_optimizer.step[...]) == 6
    assert_bitwise_equal(nnx.state((fresh, fresh_optimizer)), nnx.state((model, optimizer)))

    # Into an abstract model and optimizer (nnx.eval_shape: no arrays until restored).
    abstract = small_model(0, abstract=True)
    abstract_optimizer = nnx.eval_shape(lambda: nnx.Optimizer(abstract, tx, wrt=nnx.Param))
    restore_nnx_checkpoint(tmp_path / "ckpt", abstract, abstract_optimizer)
    assert_bitwise_equal(nnx.state((abstract, abstract_optimizer)), at_save)

    with pytest.raises(ValueError, match=r"exists|already"):  # never overwritten silently
        save_nnx_checkpoint(tmp_path / "ckpt", model, optimizer)
    save_nnx_checkpoint(tmp_path / "ckpt", model, optimizer, force=True)
    restore_nnx_checkpoint(tmp_path / "ckpt", abstract, abstract_optimizer)
    assert int(abstract_optimizer.step[...]) == 6


# What a checkpoint of the ResNet-10 + SE with AdamW is restored into, and the difference named.
MISMATCHES = [
    (
        {"config": ResNetConfig("basic", (1, 1, 1, 1), attn="eca")},
        "adamw",
        r"model\.layer1_0\.se\.conv\.kernel\.value: not in the checkpoint",
    ),
    (
        {"config": ResNetConfig("basic", (1, 1, 2, 1), attn="se")},
        "adamw",
        r"model\.layer3_1\.\S+: not in the checkpoint",
    ),
    (
        {"num_classes": CLASSES + 1},
        "adamw",
        r"model\.fc\.bias\.value: checkpoint float64\[5\], expected float64\[6\]",
    ),
    (  # orbax alone would cast to float32 silently
        {"param_dtype": "float32"},
        "adamw",
        r"model\.bn1\.bias\.value: checkpoint float64\[64\], expected float32\[64\]",
    ),
    (
        {},
        "sgd-nesterov-weight-decay",
        r"optimizer\.opt_state\.\S+\.trace\.\S+: not in the checkpoint",
    ),
]


def test_nnx_restore_into_another_model_raises(rng, tmp_path):
    """A checkpoint restored into another architecture, number of classes, dtype or optimizer:
    a ValueError naming the leaves, raised before anything is read or changed."""
    model = nnx_model(torch_to_flax(torch_model(rng)))
    optimizer = nnx.Optimizer(model, optax_tx("adamw"), wrt=nnx.Param)
    save_nnx_checkpoint(tmp_path / "ckpt", model, optimizer)
    for kwargs, tx_name, message in MISMATCHES:
        target = abstract_resnet(**kwargs)
        target_optimizer = nnx.eval_shape(
            lambda t=target, n=tx_name: nnx.Optimizer(t, optax_tx(n), wrt=nnx.Param)
        )
        before = nnx.state((target, target_optimizer))
        with pytest.raises(ValueError, match="does not match the model and optimizer") as error:
            restore_nnx_checkpoint(tmp_path / "ckpt", target, target_optimizer)
        assert re.search(message, str(error.value)), (kwargs, tx_name, str(error.value))
        assert jax.tree.leaves(nnx.state((target, target_optimizer))) == jax.tree.leaves(before)
