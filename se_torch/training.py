"""A small PyTorch training step, the twin of ``se_flax.training``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["eval_step", "train_step"]


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> dict[str, torch.Tensor]:
    """One step: train-mode forward, cross-entropy, backward, ``optimizer.step()``, then
    ``scheduler.step()``. Returns the batch's ``loss`` and ``accuracy`` (detached)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    logits = model(images)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return _metrics(loss, logits, labels)


@torch.no_grad()
def eval_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Loss and accuracy with the running statistics (eval mode)."""
    model.eval()
    logits = model(images)
    return _metrics(F.cross_entropy(logits, labels), logits, labels)


def _metrics(loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> dict:
    accuracy = (logits.argmax(-1) == labels).to(logits.dtype).mean()
    return {"loss": loss.detach(), "accuracy": accuracy.detach()}
