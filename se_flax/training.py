"""A small, jit-compiled Flax training step (the twin of ``se_torch.training``).

>>> state = TrainState.create(apply_fn=model.apply, params=v["params"],
...                           batch_stats=v["batch_stats"], tx=se_flax.optim.sgd(0.1, 0.9))
>>> state, metrics = train_step(state, images, labels)
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import train_state

__all__ = [
    "TrainState",
    "cross_entropy",
    "data_mesh",
    "eval_step",
    "replicate",
    "restore_checkpoint",
    "save_checkpoint",
    "shard_batch",
    "train_step",
]


class TrainState(train_state.TrainState):
    """Flax's TrainState (step, params, tx, opt_state) plus the BatchNorm statistics."""

    batch_stats: Any = None


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over the batch, as ``torch.nn.functional.cross_entropy``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _metrics(loss: jax.Array, logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    return {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


@jax.jit
def train_step(
    state: TrainState, images: jax.Array, labels: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One step: train-mode forward (BatchNorm on the batch), loss, gradients, optax update.

    Args:
        state: the training state; ``apply_fn`` takes ``train`` and ``mutable``.
        images: ``(N, H, W, C)`` batch; labels: ``(N,)`` integer classes.

    Returns:
        The new state (parameters, optimizer state, statistics, step + 1) and the batch's
        ``loss`` and ``accuracy``.
    """

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        logits, updates = state.apply_fn(variables, images, train=True, mutable=["batch_stats"])
        return cross_entropy(logits, labels), (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return state, _metrics(loss, logits, labels)


@jax.jit
def eval_step(state: TrainState, images: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Loss and accuracy with the running statistics (eval mode)."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits = state.apply_fn(variables, images, train=False)
    return _metrics(cross_entropy(logits, labels), logits, labels)


def _saved(state: TrainState) -> dict[str, Any]:
    return {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
    }


def save_checkpoint(directory: str | os.PathLike, state: TrainState, force: bool = False) -> None:
    """Saves the full training state (step, params, batch_stats, optimizer state) with orbax.

    Args:
        directory: the checkpoint directory to create.
        state: the state to save.
        force: overwrite an existing checkpoint; without it an existing one is an error.
    """
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.abspath(directory), _saved(state), force=force)
        checkpointer.wait_until_finished()


def restore_checkpoint(directory: str | os.PathLike, state: TrainState) -> TrainState:
    """Restores a checkpoint into the structure of ``state`` (e.g. a freshly created one).

    The optimizer state comes back with its own structure, so training resumes exactly where it
    stopped: a resumed run continues bit-identically to an uninterrupted one.
    """
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _saved(state))
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(os.path.abspath(directory), target)
    return state.replace(**restored)


def data_mesh(devices: Any = None) -> jax.sharding.Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all devices, every host)."""
    return jax.sharding.Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",))


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Places every leaf (e.g. a TrainState) fully on every device of ``mesh``."""
    return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def shard_batch(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Splits the leading (batch) axis of every leaf over the ``"data"`` axis of ``mesh``.

    With a replicated state and a sharded batch, :func:`train_step` runs data-parallel as it is:
    XLA partitions it, all-reduces the gradients, and computes BatchNorm statistics over the
    global batch, so results equal a single-device run up to the order of summation.

    Raises:
        ValueError: if a batch size does not divide evenly over the devices.
    """
    n = mesh.shape["data"]
    for leaf in jax.tree.leaves(tree):
        if np.shape(leaf)[0] % n:
            raise ValueError(f"batch size {np.shape(leaf)[0]} does not divide over {n} devices")
    spec = jax.sharding.PartitionSpec("data")
    return jax.device_put(tree, jax.sharding.NamedSharding(mesh, spec))
