"""optax twins of PyTorch optimizers and learning-rate schedules, argument for argument.

Each function takes the arguments of its PyTorch counterpart and returns the optax construction
that updates parameters identically (the mapping table is in README.md and each row is tested).
optax schedules are indexed by the number of updates already applied, which matches calling
``scheduler.step()`` once after every ``optimizer.step()`` in PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

__all__ = ["adamw", "multistep_lr", "sgd", "warmup_cosine_lr"]


def sgd(
    lr: float | optax.Schedule,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """``torch.optim.SGD(params, lr, momentum, dampening, weight_decay, nesterov)``.

    PyTorch adds ``weight_decay * param`` to the gradient before the momentum buffer
    (``buf = momentum * buf + grad``; Nesterov steps along ``grad + momentum * buf``): that is
    ``optax.add_decayed_weights`` followed by ``optax.sgd``.

    Raises:
        ValueError: for ``dampening != 0`` (no optax equivalent here), or Nesterov without
            momentum (PyTorch refuses it too).
    """
    if dampening:
        raise ValueError(f"dampening is not supported (optax's trace has none), got {dampening}")
    if nesterov and momentum <= 0:
        raise ValueError(f"nesterov needs momentum > 0, got momentum={momentum}")
    steps = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
    steps.append(optax.sgd(lr, momentum=momentum or None, nesterov=nesterov))
    return optax.chain(*steps)


def adamw(
    lr: float | optax.Schedule,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
) -> optax.GradientTransformation:
    """``torch.optim.AdamW(params, lr, betas, eps, weight_decay)``: decoupled weight decay.

    PyTorch scales the parameters by ``1 - lr * weight_decay`` and then takes the Adam step;
    ``optax.adamw`` adds ``weight_decay * param`` to the Adam direction before scaling by ``lr``:
    the same update. Note the defaults: PyTorch's ``weight_decay=1e-2``, optax's ``1e-4``.
    """
    return optax.adamw(lr, b1=betas[0], b2=betas[1], eps=eps, weight_decay=weight_decay)


def warmup_cosine_lr(
    lr: float, warmup_steps: int, total_steps: int, start_factor: float = 1e-3, eta_min: float = 0.0
) -> optax.Schedule:
    """``SequentialLR(opt, [LinearLR(opt, start_factor, 1.0, warmup_steps),
    CosineAnnealingLR(opt, total_steps - warmup_steps, eta_min)], milestones=[warmup_steps])``.

    Written out rather than ``optax.warmup_cosine_decay_schedule``, whose warm-up
    ``(init - peak) * frac + peak`` cancels when it starts near zero: in float32 its first rate
    is off by 4e-5 relative. Here the rate is ``lr`` times a factor, as in PyTorch. After
    ``total_steps`` the rate stays at ``eta_min`` (PyTorch's cosine would rise again).

    Raises:
        ValueError: unless ``0 < warmup_steps < total_steps``.
    """
    if not 0 < warmup_steps < total_steps:
        raise ValueError(
            f"need 0 < warmup_steps < total_steps, got warmup_steps={warmup_steps}, "
            f"total_steps={total_steps}"
        )

    def schedule(count: jax.Array) -> jax.Array:
        t = jnp.asarray(count, jnp.result_type(float))
        warm = lr * (start_factor + (1 - start_factor) * t / warmup_steps)
        progress = jnp.minimum((t - warmup_steps) / (total_steps - warmup_steps), 1)
        cosine = eta_min + (lr - eta_min) * (1 + jnp.cos(jnp.pi * progress)) / 2
        return jnp.where(t < warmup_steps, warm, cosine)

    return schedule


def multistep_lr(lr: float, milestones: Sequence[int], gamma: float = 0.1) -> optax.Schedule:
    """``MultiStepLR(opt, milestones, gamma)``: multiply the rate by ``gamma`` at each milestone."""
    if list(milestones) != sorted(set(milestones)) or any(m < 1 for m in milestones):
        raise ValueError(f"milestones must be increasing steps >= 1, got {list(milestones)}")
    return optax.piecewise_constant_schedule(lr, {int(m): gamma for m in milestones})
