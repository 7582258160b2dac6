"""JAX/Flax runners, NHWC: linen ``jit`` and ``jit_donate``; NNX ``nnx_jit``, ``nnx_tree`` and
``nnx_split``; the convolutions' ``jit`` (``se_flax.conv_general_dilated``) and ``xla_jit``
(``jax.lax.conv_general_dilated``)."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.extend.core import ClosedJaxpr, Jaxpr

import se_flax
import se_flax.nnx
from benchmarks import _torch
from benchmarks._cases import (
    BLOCK_WORKLOADS,
    CONV_BUDGET_S,
    CONV_SHAPES,
    CONV_WORKLOADS,
    EVAL_WORKLOADS,
    NNX_MODES,
    SE_WORKLOADS,
    Case,
    model_options,
    sk_options,
)
from benchmarks._timing import Runner
from se_convert import torch_to_flax, update_nnx
from se_flax import _grouped
from se_flax.optim import sgd
from se_flax.training import TrainState, cross_entropy, train_step

CHAIN = 32  # a donated block input is chained through at most this many calls, then refilled
NHWC = ("NHWC", "HWIO", "NHWC")


def _block(case: Case, dtype: jnp.dtype) -> nn.Module:
    if case.workload in SE_WORKLOADS:
        return se_flax.SqueezeExcite(dtype=dtype, param_dtype=dtype)
    return se_flax.SelectiveKernel(**sk_options(), dtype=dtype, param_dtype=dtype)


def _model(case: Case, dtype: jnp.dtype) -> nn.Module:
    name, options = model_options(case.name)
    return se_flax.create_model(name, **options, dtype=dtype, param_dtype=dtype)


def _tx():
    """The optimizer of every train case, as the PyTorch runner's ``SGD(lr=0.01, momentum=0.9)``."""
    return sgd(0.01, momentum=0.9)


def _nnx_model(case: Case, dtype: jnp.dtype, variables: dict) -> nnx.Module:
    """The case's NNX network holding ``variables``: built abstractly (``nnx.eval_shape``, no
    random initialisation), then filled with the converted weights."""
    name, options = model_options(case.name)
    abstract = nnx.eval_shape(
        lambda: se_flax.nnx.create_model(name, **options, dtype=dtype, param_dtype=dtype)
    )
    return update_nnx(abstract, variables)


def _variables(case: Case, seed: int) -> dict:
    """The PyTorch runner's initial weights, converted: both frameworks run the same network,
    and no Flax ``init`` has to be compiled per case."""
    return torch_to_flax(_torch.module(case, seed))


def _conv_runner(case: Case, slots: int, seed: int) -> Runner:
    """One convolution under ``jax.jit``: ``se_flax.conv_general_dilated`` (``jit``;
    se_flax's CPU kernels where built) or ``jax.lax.conv_general_dilated`` (``xla_jit``), the
    same arguments; forward, or forward + backward (the output, and the input and kernel gradients
    from ``jax.vjp`` at a fixed random cotangent), the PyTorch runner's kernel."""
    conv = CONV_SHAPES[case.name]
    dtype = jnp.dtype(case.dtype)
    rng = np.random.default_rng(seed)
    function = se_flax.conv_general_dilated if case.mode == "jit" else jax.lax.conv_general_dilated
    pads = ((conv.padding, conv.padding),) * 2
    n = case.shape[0]

    def forward(x, kernel):
        strides = (conv.stride, conv.stride)
        return function(
            x, kernel, strides, pads, dimension_numbers=NHWC, feature_group_count=conv.groups
        )

    def arrays(shape) -> list[jax.Array]:
        return [
            jax.device_put(rng.standard_normal(shape, np.float32).astype(dtype))
            for _ in range(slots)
        ]

    kernel = jax.device_put(_torch.conv_kernel(case, seed).astype(dtype))
    xs = arrays(case.shape)
    if case.workload == "conv_fwd":
        fn = jax.jit(forward)

        def step(i: int):
            return fn(xs[i % slots], kernel)

    else:

        def fwdbwd(x, kernel, g):
            y, vjp = jax.vjp(forward, x, kernel)
            return y, *vjp(g)  # the output, the input gradient, the kernel gradient

        fn = jax.jit(fwdbwd)
        cotangents = arrays((n, *conv.output_hw(), conv.features))

        def step(i: int):
            return fn(xs[i % slots], kernel, cotangents[i % slots])

    return Runner(step, jax.block_until_ready, budget_s=CONV_BUDGET_S)


def runner(case: Case, slots: int, seed: int) -> Runner:
    """Builds the runner of one JAX case: parameters and ``slots`` rotated inputs on device."""
    if case.workload in CONV_WORKLOADS:
        return _conv_runner(case, slots, seed)
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
        return Runner(
            lambda i: fn(variables, images[i % slots]),
            jax.block_until_ready,
            extra={
                "xla_flops": lambda: _xla_flops(fn, variables, images[0]),
                "hlo": lambda: _hlo(fn, variables, images[0]),
            },
        )

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

    return Runner(
        train,
        lambda outputs: jax.block_until_ready((outputs, state[0])),
        extra={
            "xla_flops": lambda: _xla_flops(fn, state[0], images[0], labels[0]),
            "hlo": lambda: _hlo(fn, state[0], images[0], labels[0]),
        },
    )


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
        return Runner(
            lambda i: pure(state, images[i % slots]),
            jax.block_until_ready,
            extra={"xla_flops": lambda: _xla_flops(pure, state, images[0])},
        )

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

    return Runner(
        train_split,
        lambda outputs: jax.block_until_ready((outputs, states[0])),
        extra={"xla_flops": lambda: _xla_flops(pure_step, states[0], images[0], labels[0])},
    )


def _xla_flops(fn, *args) -> float:
    """FLOPs of one call of the jitted ``fn`` on ``args``: XLA's cost analysis of the compiled
    program (``"flops"``: 2 per multiply-add, 1 per elementwise operation). Called after the
    runner's timed calls, the lowering and compilation come from jit's cache."""
    cost = fn.lower(*args).compile().cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0]
    return float(cost["flops"]) + _kernel_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def _hlo(fn, *args) -> str:
    """The optimized HLO of the jitted ``fn`` on ``args`` (what ``benchmarks.profile``
    classifies); the compilation comes from jit's cache after the runner's calls."""
    return fn.lower(*args).compile().as_text()


# se_flax's convolution primitives -> (the FFI target of their pass, the operand whose shape
# is the pass's output-sized side: 2 x its size x the kernel's taps x group width FLOPs)
_KERNEL_PASSES = {
    "se_flax_grouped_conv": (_grouped._TARGETS[0], "out"),
    "se_flax_grouped_conv_input_grad": (_grouped._TARGETS[1], 0),
    "se_flax_grouped_conv_kernel_grad": (_grouped._TARGETS[2], 1),
}


def _kernel_flops(jaxpr) -> int:
    """2 x the multiply-adds of the convolution passes that run se_flax's CPU kernels, which
    XLA's cost analysis counts as 0 (a custom call); the passes left to XLA's convolution it
    counts itself."""
    if jax.default_backend() != "cpu" or not se_flax.kernels_built():
        return 0
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in _KERNEL_PASSES:
            target, side = _KERNEL_PASSES[eqn.primitive.name]
            kernel = eqn.params.get("kernel_shape") or eqn.invars[1].aval.shape
            if _grouped._on_kernels(target, eqn.params["groups"], kernel):
                sized = eqn.outvars[0] if side == "out" else eqn.invars[side]
                kh, kw, cg, _ = kernel
                total += 2 * math.prod(sized.aval.shape) * kh * kw * cg
        for sub in _subjaxprs(eqn):
            total += _kernel_flops(sub)
    return total


def _abstract_network(workload: str, name: str, batch: int, image_size: int):
    """The float32 network's jitted eval forward (``infer``) or training step (``train``) and
    abstract arguments for it: nothing is initialised or run."""
    case = Case(workload, "jax", "jit", "float32", name, batch, (batch, image_size, image_size, 3))
    model = _model(case, jnp.float32)
    x = jax.ShapeDtypeStruct(case.shape, jnp.float32)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(case.shape), train=False)
    )
    if workload == "infer":
        return jax.jit(lambda variables, x: model.apply(variables, x, train=False)), (variables, x)

    def create(variables):
        params, stats = variables["params"], variables["batch_stats"]
        return TrainState.create(apply_fn=model.apply, params=params, batch_stats=stats, tx=_tx())

    state = jax.eval_shape(create, variables)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    return jax.jit(train_step.__wrapped__), (state, x, labels)


def network_flops(workload: str, name: str, batch: int, image_size: int) -> float:
    """XLA's FLOPs of one float32 ``infer`` or ``train`` call of network ``name`` at ``batch``
    (compiles it: for runs in which no JAX runner compiled it in float32)."""
    fn, args = _abstract_network(workload, name, batch, image_size)
    return _xla_flops(fn, *args)


def _subjaxprs(eqn):
    for value in eqn.params.values():
        for item in value if isinstance(value, list | tuple) else (value,):
            if isinstance(item, ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, Jaxpr):
                yield item


def _matmul_flops(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        out = math.prod(eqn.outvars[0].aval.shape) if eqn.outvars else 0
        if eqn.primitive.name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * out * math.prod(lhs[d] for d in contracting)
        elif eqn.primitive.name == "conv_general_dilated":
            kernel = eqn.invars[1].aval.shape
            _, in_features, *spatial = eqn.params["dimension_numbers"].rhs_spec
            total += 2 * out * kernel[in_features] * math.prod(kernel[d] for d in spatial)
        elif eqn.primitive.name == "se_flax_grouped_conv":  # se_flax's convolution, HWIO
            kh, kw, cg, _ = eqn.invars[1].aval.shape
            total += 2 * out * cg * kh * kw
        for sub in _subjaxprs(eqn):
            total += _matmul_flops(sub)
    return total


def forward_matmul_flops(name: str, image_size: int) -> int:
    """The analytic cross-check: 2 x the multiply-adds of the convolutions and dense layers of
    one image's eval forward pass (from the traced program's shapes; no elementwise work)."""
    fn, args = _abstract_network("infer", name, 1, image_size)
    return _matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr)
