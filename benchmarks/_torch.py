"""PyTorch runners: ``eager`` (NCHW), ``channels_last`` and ``compile`` (inductor, NCHW)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

import se_torch
from benchmarks._cases import (
    BLOCK_WORKLOADS,
    CONV_BUDGET_S,
    CONV_SHAPES,
    CONV_WORKLOADS,
    EVAL_WORKLOADS,
    SE_WORKLOADS,
    SK_WORKLOADS,
    Case,
    model_options,
    sk_options,
)
from benchmarks._timing import Runner
from se_torch.training import train_step


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(outputs: list) -> None:
    if device().type == "cuda":
        torch.cuda.synchronize()


def module(case: Case, seed: int) -> torch.nn.Module:
    """The case's SE or SK block or network, from ``seed``, in the case's dtype (CPU).

    Both frameworks run these weights: the JAX runner converts them with ``se_convert``.
    """
    torch.manual_seed(seed)
    if case.workload in SE_WORKLOADS:
        built = se_torch.SqueezeExcite(case.shape[-1])
    elif case.workload in SK_WORKLOADS:
        built = se_torch.SelectiveKernel(case.shape[-1], **sk_options())
    else:
        name, options = model_options(case.name)
        built = se_torch.create_model(name, **options)
    return built.to(getattr(torch, case.dtype))


def conv_kernel(case: Case, seed: int) -> np.ndarray:
    """The conv case's kernel, HWIO ``(k, k, c / groups, out)`` float32, from ``seed``: both
    frameworks run it (PyTorch's ``(out, c / groups, k, k)`` is its transpose)."""
    conv = CONV_SHAPES[case.name]
    shape = (conv.kernel, conv.kernel, conv.c // conv.groups, conv.features)
    rng = np.random.default_rng([seed, 1])
    return rng.standard_normal(shape, np.float32) / math.sqrt(math.prod(shape[:3]))


def _conv_runner(case: Case, slots: int, seed: int) -> Runner:
    """``F.conv2d(x, w, stride, padding=k // 2, groups)``: forward under ``no_grad``, or forward
    and ``y.backward(dy)`` with the gradients cleared first (output, input and kernel
    gradients), NCHW (``eager``) or channels_last."""
    conv = CONV_SHAPES[case.name]
    dev, dtype = device(), getattr(torch, case.dtype)
    memory_format = torch.channels_last if case.mode == "channels_last" else torch.contiguous_format
    generator = torch.Generator(dev).manual_seed(seed)
    n, h, w, c = case.shape
    ho, wo = conv.output_hw()

    def tensors(shape) -> list[torch.Tensor]:
        return [
            torch.randn(shape, generator=generator, device=dev, dtype=dtype).to(
                memory_format=memory_format
            )
            for _ in range(slots)
        ]

    kernel = torch.from_numpy(conv_kernel(case, seed)).permute(3, 2, 0, 1)  # HWIO -> OIHW
    weight = kernel.to(dev, dtype).contiguous(memory_format=memory_format)
    xs = tensors((n, c, h, w))

    def forward(x):
        return F.conv2d(x, weight, stride=conv.stride, padding=conv.padding, groups=conv.groups)

    if case.workload == "conv_fwd":

        @torch.no_grad()
        def step(i: int):
            return forward(xs[i % slots])

    else:
        cotangents = tensors((n, conv.features, ho, wo))
        weight.requires_grad_(True)
        for x in xs:
            x.requires_grad_(True)

        def step(i: int):
            x = xs[i % slots]
            x.grad = weight.grad = None  # fresh gradients, as JAX's vjp returns
            y = forward(x)
            y.backward(cotangents[i % slots])
            return y, x.grad, weight.grad

    return Runner(step, _sync, budget_s=CONV_BUDGET_S)


def runner(case: Case, slots: int, seed: int) -> Runner:
    """Builds the runner of one PyTorch case: module and ``slots`` rotated inputs on device."""
    if case.workload in CONV_WORKLOADS:
        return _conv_runner(case, slots, seed)
    torch._dynamo.reset()  # each compiled case compiles from scratch, timed as its first call
    dev, dtype = device(), getattr(torch, case.dtype)
    memory_format = torch.channels_last if case.mode == "channels_last" else torch.contiguous_format
    generator = torch.Generator(dev).manual_seed(seed)
    n, h, w, c = case.shape

    def inputs(shape=(n, c, h, w)) -> list[torch.Tensor]:
        return [
            torch.randn(shape, generator=generator, device=dev, dtype=dtype).to(
                memory_format=memory_format
            )
            for _ in range(slots)
        ]

    model = module(case, seed).to(dev, memory_format=memory_format)
    model.train(case.workload not in EVAL_WORKLOADS)  # BatchNorm: running or batch statistics
    call = torch.compile(model) if case.mode == "compile" else model
    xs = inputs()

    if case.workload in EVAL_WORKLOADS:

        @torch.no_grad()
        def step(i: int):
            return call(xs[i % slots])

    elif case.workload in BLOCK_WORKLOADS:  # forward + backward
        params = list(model.parameters())
        cotangents = inputs()
        for x in xs:
            x.requires_grad_(True)

        def step(i: int):
            x = xs[i % slots]  # fresh gradients, as JAX's vjp returns (no .grad accumulation)
            return torch.autograd.grad(call(x), [x, *params], cotangents[i % slots])

    else:
        labels = [torch.randint(0, 1000, (n,), generator=generator, device=dev) for _ in xs]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(i: int):
            return train_step(call, optimizer, xs[i % slots], labels[i % slots])

    return Runner(step, _sync)
