"""JAX/Flax runners, NHWC: linen ``jit`` and ``jit_donate``; NNX ``nnx_jit``, ``nnx_tree`` and
``nnx_split``."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import se_flax
import se_flax.nnx
from benchmarks import _torch
from benchmarks._cases import (
    BLOCK_WORKLOADS,
    EVAL_WORKLOADS,
    EXTRA_MODELS,
    NNX_MODES,
    SE_WORKLOADS,
    Case,
    sk_options,
)
from benchmarks._timing import Runner
from se_convert import torch_to_flax, update_nnx
from se_flax.optim import sgd
from se_flax.training import TrainState, cross_entropy, train_step

CHAIN = 32  # a donated block input is chained through at most this many calls, then refilled


def _block(case: Case, dtype: jnp.dtype) -> nn.Module:
    if case.workload in SE_WORKLOADS:
        return se_flax.SqueezeExcite(dtype=dtype, param_dtype=dtype)
    return se_flax.SelectiveKernel(**sk_options(), dtype=dtype, param_dtype=dtype)


def _model(case: Case, dtype: jnp.dtype) -> se_flax.ResNet:
    if case.name in EXTRA_MODELS:
        return se_flax.ResNet(EXTRA_MODELS[case.name], dtype=dtype, param_dtype=dtype)
    return se_flax.create_model(case.name, dtype=dtype, param_dtype=dtype)


def _tx():
    """The optimizer of every train case, as the PyTorch runner's ``SGD(lr=0.01, momentum=0.9)``."""
    return sgd(0.01, momentum=0.9)


def _nnx_model(case: Case, dtype: jnp.dtype, variables: dict) -> nnx.Module:
    """The case's NNX network holding ``variables``: built abstractly (``nnx.eval_shape``, no
    random initialisation), then filled with the converted weights."""
    kwargs = {"dtype": dtype, "param_dtype": dtype}
    if case.name in EXTRA_MODELS:
        config = EXTRA_MODELS[case.name]
        abstract = nnx.eval_shape(lambda: se_flax.nnx.ResNet(config, **kwargs, rngs=nnx.Rngs(0)))
    else:
        abstract = nnx.eval_shape(lambda: se_flax.nnx.create_model(case.name, **kwargs))
    return update_nnx(abstract, variables)


def _variables(case: Case, seed: int) -> dict:
    """The PyTorch runner's initial weights, converted: both frameworks run the same network,
    and no Flax ``init`` has to be compiled per case."""
    return torch_to_flax(_torch.module(case, seed))


def runner(case: Case, slots: int, seed: int) -> Runner:
    """Builds the runner of one JAX case: parameters and ``slots`` rotated inputs on device."""
    dtype = jnp.dtype(case.dtype)
    rng = np.random.default_rng(seed)
    donate = case.mode == "jit_donate"
    variables = _variables(case, seed)

    def inputs() -> list[jax.Array]:
        return [
            jax.device_put(rng.standard_normal(case.shape, np.float32).astype(dtype))
            for _ in range(slots)
        ]

    if case.workload in BLOCK_WORKLOADS:
        module = _block(case, dtype)
        pristine = inputs()
        if case.workload in EVAL_WORKLOADS:
            apply = functools.partial(module.apply, train=False)
            fn = jax.jit(apply, donate_argnums=(1,) if donate else ())
            cotangents = None
        else:

            def fwdbwd(variables, x, g):
                def forward(params, x):  # train mode: SK's BatchNorms use batch statistics
                    variables_ = {**variables, "params": params}
                    return module.apply(variables_, x, train=True, mutable=["batch_stats"])

                _, vjp, updates = jax.vjp(forward, variables["params"], x, has_aux=True)
                grads, dx = vjp(g)
                return (grads, updates), dx  # updates: new running statistics ({} for SE)

            fn = jax.jit(fwdbwd, donate_argnums=(1,) if donate else ())
            cotangents = inputs()
        xs = list(pristine)

        def step(i: int):
            k = i % slots
            if cotangents is None:
                out = fn(variables, xs[k])
            else:
                out = fn(variables, xs[k], cotangents[k])
            if not donate:
                return out
            # The input's buffer now holds the output (y, or dx): chain it to the slot's next
            # call, and wait on what is not donated (parameter gradients and statistics).
            xs[k] = out if cotangents is None else out[1]
            return None if cotangents is None else out[0]

        def refresh() -> None:
            if donate:  # fresh copies (untimed) of the inputs that were donated
                xs[:] = [jnp.copy(x) for x in pristine]

        def sync(outputs: list) -> None:
            jax.block_until_ready((outputs, xs))

        return Runner(step, sync, refresh, CHAIN * slots if donate else 1000)

    images = inputs()
    labels = [jax.device_put(rng.integers(0, 1000, case.batch, np.int32)) for _ in range(slots)]
    if case.mode in NNX_MODES:
        return _nnx_runner(case, _nnx_model(case, dtype, variables), images, labels)
    model = _model(case, dtype)
    if case.workload == "infer":
        fn = jax.jit(lambda variables, x: model.apply(variables, x, train=False))
        return Runner(lambda i: fn(variables, images[i % slots]), jax.block_until_ready)

    state = [
        TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            batch_stats=variables["batch_stats"],
            tx=_tx(),
        )
    ]
    fn = jax.jit(train_step.__wrapped__, donate_argnums=0) if donate else train_step

    def train(i: int):
        state[0], metrics = fn(state[0], images[i % slots], labels[i % slots])
        return metrics

    return Runner(train, lambda outputs: jax.block_until_ready((outputs, state[0])))


def _nnx_runner(
    case: Case, model: nnx.Module, images: list[jax.Array], labels: list[jax.Array]
) -> Runner:
    """An NNX network's inference or training step, written as users write it.

    ``nnx_jit``: ``nnx.jit`` over functions of the module (and optimizer), which update them in
    place; each call pays ``nnx.jit``'s Python traversal of the object graph. ``nnx_tree``: the
    same with ``nnx.jit(graph=False)``, which flattens the modules as pytrees (they hold no
    shared references), far cheaper per call. ``nnx_split``: the
    pattern of Flax's "Performance considerations" guide: ``nnx.split`` once, then a pure
    ``jax.jit`` function of the state that ``nnx.merge``s the objects and returns their new
    state, the model and the ``nnx.Optimizer`` split together. Neither donates: both compare with
    the linen ``jit`` mode (no donation either), same weights, inputs, loss and optimizer.
    """
    slots = len(images)
    if case.workload == "infer":
        model.eval()  # BatchNorm: running statistics
        if case.mode in ("nnx_jit", "nnx_tree"):
            forward = nnx.jit(lambda model, x: model(x), graph=case.mode == "nnx_jit")
            return Runner(lambda i: forward(model, images[i % slots]), jax.block_until_ready)
        graphdef, state = nnx.split(model)
        pure = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
        return Runner(lambda i: pure(state, images[i % slots]), jax.block_until_ready)

    model.train()  # BatchNorm: batch statistics, running statistics updated
    optimizer = nnx.Optimizer(model, _tx(), wrt=nnx.Param)

    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            logits = model(x)
            return cross_entropy(logits, y), logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)  # nnx.Param
        optimizer.update(model, grads)
        return {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}

    if case.mode in ("nnx_jit", "nnx_tree"):
        step = nnx.jit(train_step, graph=case.mode == "nnx_jit")
        # The Variables keep their identity across calls (nnx.jit swaps their values): waiting
        # on them needs no graph traversal inside the timed sync.
        held = [v for _, v in nnx.iter_graph((model, optimizer)) if isinstance(v, nnx.Variable)]

        def train(i: int):
            return step(model, optimizer, images[i % slots], labels[i % slots])

        def sync(outputs: list) -> None:
            jax.block_until_ready((outputs, [v.get_value() for v in held]))

        return Runner(train, sync)

    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def pure_step(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        metrics = train_step(model, optimizer, x, y)
        return nnx.state((model, optimizer)), metrics

    states = [state]

    def train_split(i: int):
        states[0], metrics = pure_step(states[0], images[i % slots], labels[i % slots])
        return metrics

    return Runner(train_split, lambda outputs: jax.block_until_ready((outputs, states[0])))
