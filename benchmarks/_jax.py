"""JAX/Flax runners: ``jit`` and ``jit_donate`` modes, NHWC."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import se_flax
from benchmarks import _torch
from benchmarks._cases import (
    BLOCK_WORKLOADS,
    EVAL_WORKLOADS,
    EXTRA_MODELS,
    SE_WORKLOADS,
    Case,
    sk_options,
)
from benchmarks._timing import Runner
from se_convert import torch_to_flax
from se_flax.optim import sgd
from se_flax.training import TrainState, train_step

CHAIN = 32  # a donated block input is chained through at most this many calls, then refilled


def _block(case: Case, dtype: jnp.dtype) -> nn.Module:
    if case.workload in SE_WORKLOADS:
        return se_flax.SqueezeExcite(dtype=dtype, param_dtype=dtype)
    return se_flax.SelectiveKernel(**sk_options(), dtype=dtype, param_dtype=dtype)


def _model(case: Case, dtype: jnp.dtype) -> se_flax.ResNet:
    if case.name in EXTRA_MODELS:
        return se_flax.ResNet(EXTRA_MODELS[case.name], dtype=dtype, param_dtype=dtype)
    return se_flax.create_model(case.name, dtype=dtype, param_dtype=dtype)


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

    model = _model(case, dtype)
    images = inputs()
    if case.workload == "infer":
        fn = jax.jit(lambda variables, x: model.apply(variables, x, train=False))
        return Runner(lambda i: fn(variables, images[i % slots]), jax.block_until_ready)

    labels = [jax.device_put(rng.integers(0, 1000, case.batch, np.int32)) for _ in range(slots)]
    state = [
        TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            batch_stats=variables["batch_stats"],
            tx=sgd(0.01, momentum=0.9),
        )
    ]
    fn = jax.jit(train_step.__wrapped__, donate_argnums=0) if donate else train_step

    def train(i: int):
        state[0], metrics = fn(state[0], images[i % slots], labels[i % slots])
        return metrics

    return Runner(train, lambda outputs: jax.block_until_ready((outputs, state[0])))
