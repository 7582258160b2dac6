"""The PyTorch side of the schedule mapping: built-in schedulers, assembled as ``se_flax.optim``
expects (see the table in README.md)."""

from __future__ import annotations

import torch

__all__ = ["warmup_cosine_lr"]


def warmup_cosine_lr(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    start_factor: float = 1e-3,
    eta_min: float = 0.0,
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up from ``start_factor * lr`` to ``lr``, then cosine decay to ``eta_min``.

    The twin of ``se_flax.optim.warmup_cosine_lr``; call ``step()`` after each optimizer step.
    """
    sched = torch.optim.lr_scheduler
    return sched.SequentialLR(
        optimizer,
        [
            sched.LinearLR(optimizer, start_factor, 1.0, total_iters=warmup_steps),
            sched.CosineAnnealingLR(optimizer, total_steps - warmup_steps, eta_min=eta_min),
        ],
        milestones=[warmup_steps],
    )
