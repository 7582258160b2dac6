"""Data-parallel training over several processes (hosts) with JAX's multi-controller runtime.

Every process runs the same program: :func:`initialize` first (before any other JAX call),
then a mesh over every process's devices (:func:`se_flax.training.data_mesh`), the state
replicated on it, and each step's batch assembled from the rows each process loads itself
(:func:`local_rows`, :func:`global_batch`). :func:`se_flax.training.train_step` then runs as it
is: XLA all-reduces the gradients and the BatchNorm statistics over the global batch, across
processes (gloo over TCP on CPUs, NCCL on GPUs). :class:`se_flax.training.Checkpoints` saves
and restores cooperatively.

The command trains a small SE-ResNet on synthetic data this way, checkpointing every step::

    # N processes on this machine (CPU devices), coordinator on 127.0.0.1:
    python -m se_flax.distributed --processes 2 --devices-per-process 2 --steps 20 --out run
    # or one process per host of a cluster, the same arguments on every host:
    python -m se_flax.distributed --coordinator 10.0.0.1:1234 --num-processes 4 \\
        --process-id $RANK --steps 20 --out /shared/run
    # (under Slurm or Open MPI the three cluster arguments are detected: leave them out)

Run again with the same ``--out`` and it resumes from the newest complete checkpoint, on any
number of processes and devices.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from se_common._cli import positive

COUNT = positive(int)  # argparse type: an integer >= 1


def non_negative(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


__all__ = [
    "COLLECTIVE_TIMEOUT_S",
    "HEARTBEAT_TIMEOUT_S",
    "INITIALIZATION_TIMEOUT_S",
    "SHUTDOWN_TIMEOUT_S",
    "global_batch",
    "initial_state",
    "initialize",
    "launch",
    "local_rows",
    "main",
    "synthetic_batch",
    "train",
]

# How long a process waits before it gives up on the others (seconds). JAX's coordination
# service declares a process dead when it has sent no heartbeat for HEARTBEAT_TIMEOUT_S and
# then terminates every other process with an error naming it; on CPUs a collective (gloo)
# that waits longer than COLLECTIVE_TIMEOUT_S for a peer fails with a Python exception (XLA's
# --xla_cpu_collective_timeout_seconds). Every argument of initialize() overrides its own.
INITIALIZATION_TIMEOUT_S = 300  # for every process to connect (JAX's default)
HEARTBEAT_TIMEOUT_S = 100  # JAX's default
COLLECTIVE_TIMEOUT_S = 300  # a step's all-reduce waiting for a slow or dead peer (CPU only)
SHUTDOWN_TIMEOUT_S = 300  # at exit, for every process to reach the end (JAX's default)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
    cpu_devices: int | None = None,
    initialization_timeout: int = INITIALIZATION_TIMEOUT_S,
    heartbeat_timeout: int = HEARTBEAT_TIMEOUT_S,
    collective_timeout: int | None = COLLECTIVE_TIMEOUT_S,
    shutdown_timeout: int = SHUTDOWN_TIMEOUT_S,
) -> None:
    """``jax.distributed.initialize`` with gloo collectives on CPUs and bounded waits.

    Call it on every process before any other JAX call. Left out, ``coordinator_address``,
    ``num_processes`` and ``process_id`` are detected where JAX can (Slurm, Open MPI, Cloud
    TPU, ``JAX_COORDINATOR_ADDRESS``).

    Args:
        coordinator_address: ``host:port`` of process 0, which runs the coordination service.
        num_processes: how many processes take part.
        process_id: this process's index, ``0 <= process_id < num_processes``.
        local_device_ids: the accelerators this process uses (default: all it sees).
        cpu_devices: on CPUs, how many devices this process simulates (``jax_num_cpu_devices``).
        initialization_timeout: seconds for every process to connect.
        heartbeat_timeout: seconds without a heartbeat after which a process counts as dead
            and every other one is terminated with an error.
        collective_timeout: seconds a CPU collective waits for a peer before it fails (sets
            ``--xla_cpu_collective_timeout_seconds`` unless ``XLA_FLAGS`` already does);
            ``None`` leaves XLA's default. No effect on GPUs (NCCL).
        shutdown_timeout: seconds a finishing process waits at exit for the others.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", cpu_devices)
    flags = os.environ.get("XLA_FLAGS", "")
    if collective_timeout is not None and "xla_cpu_collective_timeout_seconds" not in flags:
        # read when the backend starts, which jax.distributed.initialize has not done yet
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_cpu_collective_timeout_seconds={collective_timeout}"
        )
    jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout,
        shutdown_timeout_seconds=shutdown_timeout,
    )


def _data_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(mesh, P("data"))


def local_rows(global_size: int, mesh: jax.sharding.Mesh) -> slice:
    """The rows of a global batch of ``global_size`` that this process loads: those its own
    devices hold when the batch is split over the ``"data"`` axis of ``mesh``.

    Raises:
        ValueError: if ``global_size`` does not divide over the mesh's devices.
    """
    n = mesh.shape["data"]
    if global_size % n:
        raise ValueError(f"batch size {global_size} does not divide over {n} devices")
    indices = _data_sharding(mesh).addressable_devices_indices_map((global_size,)).values()
    starts = sorted((index[0].start or 0, index[0].stop or global_size) for index in indices)
    rows = slice(starts[0][0], starts[-1][1])
    if sum(stop - start for start, stop in starts) != rows.stop - rows.start:
        raise ValueError(f"this process's devices hold no contiguous rows: {starts}")
    return rows


def global_batch(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Assembles global arrays split over the ``"data"`` axis of ``mesh`` from the rows this
    process loaded (every leaf: ``local_rows(global_size, mesh)`` of the global batch).

    ``jax.make_array_from_process_local_data`` on each leaf: no process ever holds the global
    batch. With one process it is :func:`se_flax.training.shard_batch`.
    """
    sharding = _data_sharding(mesh)
    local = len(mesh.local_devices)
    for leaf in jax.tree.leaves(tree):
        if np.shape(leaf)[0] % local:
            raise ValueError(
                f"local batch size {np.shape(leaf)[0]} does not divide over this process's "
                f"{local} devices"
            )
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
    )


# --- the command's model and data --------------------------------------------------------------

CLASSES, SIZE = 5, 32


def initial_state(
    seed: int, dtype: str = "float32", lr: float = 0.05, mesh: jax.sharding.Mesh | None = None
) -> Any:
    """The command's starting point: an SE-ResNet-10 (one basic block per stage, SE) for
    ``CLASSES`` classes in ``dtype``, SGD with momentum 0.9.

    The weights come from NumPy, seeded: identical on every process and accelerator, with no
    init program to compile. Kernels are He-normal (``N(0, 2 / fan_in)``), biases zero,
    BatchNorm scales one (every block, its last too) and statistics zero mean, unit variance.

    Args:
        mesh: place every array replicated on it (each process transfers only to its own
            devices); default: the default device.
    """
    import se_flax
    from se_common import ResNetConfig
    from se_flax import optim
    from se_flax.training import TrainState

    model = se_flax.ResNet(
        ResNetConfig("basic", (1, 1, 1, 1), attn="se"), num_classes=CLASSES, param_dtype=dtype
    )
    x = jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), np.dtype(dtype))
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)

    def init(path: tuple, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.standard_normal(leaf.shape) * np.sqrt(2 / fan_in)).astype(leaf.dtype)
        return np.full(leaf.shape, 1 if name in ("scale", "var") else 0, leaf.dtype)

    variables = jax.tree_util.tree_map_with_path(init, shapes)
    tx = optim.sgd(lr, momentum=0.9)
    opt_state = jax.tree.map(  # SGD's momentum starts at zero
        lambda a: np.zeros(a.shape, a.dtype), jax.eval_shape(tx.init, variables["params"])
    )
    state = TrainState(
        step=np.zeros((), np.int32),  # as train_step returns it: one signature, one compile
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=tx,
        opt_state=opt_state,
    )
    if mesh is None:
        place = jax.device_put
    else:
        replicated = jax.sharding.NamedSharding(mesh, P())

        def place(a: np.ndarray) -> jax.Array:
            return jax.make_array_from_callback(a.shape, replicated, lambda index: a[index])

    return state.replace(**{k: jax.tree.map(place, v) for k, v in _arrays(state).items()})


def _arrays(state: Any) -> dict[str, Any]:
    return {k: getattr(state, k) for k in ("step", "params", "batch_stats", "opt_state")}


def synthetic_batch(
    seed: int, step: int, rows: slice, dtype: str = "float32"
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``rows`` of step ``step``'s global batch: images ``(n, SIZE, SIZE, 3)`` and labels.

    Each row comes from its own generator (seed, step, row), so a process makes only its rows
    and any split of a batch over processes gives the same data.
    """
    images, labels = [], []
    for row in range(rows.start, rows.stop):
        rng = np.random.default_rng([seed, step, row])
        images.append(rng.standard_normal((SIZE, SIZE, 3)).astype(dtype))
        labels.append(rng.integers(0, CLASSES))
    return np.stack(images), np.asarray(labels, jax.dtypes.canonicalize_dtype(np.int64))


def _log(message: str) -> None:
    print(f"[process {jax.process_index()}/{jax.process_count()}] {message}", flush=True)


def train(
    out: str | os.PathLike,
    steps: int,
    *,
    batch: int = 8,
    seed: int = 0,
    dtype: str = "float32",
    keep: int = 3,
    save_every: int = 1,
    lr: float = 0.05,
) -> None:
    """Trains on every process of the (initialised) runtime to step ``steps``, resuming from
    the newest complete checkpoint in ``out/checkpoints``; process 0 appends each step's loss
    and accuracy to ``out/metrics.jsonl``."""
    from se_flax.training import Checkpoints, data_mesh, train_step

    out = Path(out)
    mesh = data_mesh()
    rows = local_rows(batch, mesh)
    # A small state: one replica writes each array, no slicing programs to compile (README)
    with Checkpoints(out / "checkpoints", keep=keep, replica_parallel=False) as checkpoints:
        state = initial_state(seed, dtype, lr, mesh)
        if checkpoints.latest_step() is not None:
            state = checkpoints.restore(state, mesh=mesh)
            _log(f"resumed from step {checkpoints.latest_step()}")
        _log(f"{jax.device_count()} devices, {jax.local_device_count()} here; rows {rows}")
        for step in range(int(state.step), steps):
            images, labels = synthetic_batch(seed, step, rows, dtype)
            state, metrics = train_step(state, *global_batch((images, labels), mesh))
            done = step + 1
            if done == steps or (save_every and done % save_every == 0):
                checkpoints.save(state)
            metrics = {k: float(v) for k, v in metrics.items()}  # all-reduced: the same on all
            _log(f"step {done} loss {metrics['loss']:.6f} accuracy {metrics['accuracy']:.3f}")
            if jax.process_index() == 0:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps({"step": done, **metrics}) + "\n")


# --- the command -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    processes: int, devices_per_process: int, worker_args: Sequence[str], grace: float
) -> int:
    """Runs ``processes`` workers of this command on this machine (CPU devices, coordinator on
    127.0.0.1 at a free port) and returns the first non-zero exit status, or 0.

    When a worker fails, the others fail on their own within the timeouts; any still running
    ``grace`` seconds later are killed.
    """
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "se_flax.distributed", *worker_args]
    workers = [
        subprocess.Popen(
            [
                *command,
                *("--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes)),
                *("--process-id", str(i), "--cpu-devices", str(devices_per_process)),
            ],
            env=env,
        )
        for i in range(processes)
    ]
    status, deadline = 0, None
    try:
        while any(w.poll() is None for w in workers):
            failed = [w.returncode for w in workers if w.returncode not in (None, 0)]
            if failed and deadline is None:
                status, deadline = failed[0], time.monotonic() + grace
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
            w.wait()
    return status or next((w.returncode for w in workers if w.returncode), 0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m se_flax.distributed",
        description="Data-parallel training of an SE-ResNet-10 on synthetic data over several "
        "processes, with checkpoints it resumes from (--out).",
    )
    p.add_argument("--out", required=True, help="checkpoints/ and metrics.jsonl go here")
    p.add_argument("--steps", type=COUNT, required=True, help="train up to this step")
    p.add_argument("--batch", type=COUNT, default=8, help="global batch size (default 8)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data (default 0)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--lr", type=float, default=0.05, help="SGD, momentum 0.9 (default 0.05)")
    p.add_argument("--keep", type=COUNT, default=3, help="newest checkpoints kept (default 3)")
    p.add_argument("--save-every", type=non_negative, default=1, help="steps; 0: only the last")
    local = p.add_argument_group("on this machine")
    local.add_argument("--processes", type=COUNT, help="launch this many local CPU processes")
    local.add_argument("--devices-per-process", type=COUNT, default=1, help="CPU devices each")
    cluster = p.add_argument_group("one process of a cluster (detected where JAX can)")
    cluster.add_argument("--coordinator", help="host:port of process 0")
    cluster.add_argument("--num-processes", type=COUNT)
    cluster.add_argument("--process-id", type=int)
    cluster.add_argument("--cpu-devices", type=COUNT, help="CPU devices this process simulates")
    limits = p.add_argument_group("timeouts (seconds)")
    limits.add_argument("--init-timeout", type=COUNT, default=INITIALIZATION_TIMEOUT_S)
    limits.add_argument("--heartbeat-timeout", type=COUNT, default=HEARTBEAT_TIMEOUT_S)
    limits.add_argument("--collective-timeout", type=COUNT, default=COLLECTIVE_TIMEOUT_S)
    limits.add_argument("--shutdown-timeout", type=COUNT, default=SHUTDOWN_TIMEOUT_S)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.processes is not None:  # the launcher: this command again, once per process
        if args.processes < 1:
            raise SystemExit("--processes must be >= 1")
        worker_args = [
            *("--out", args.out, "--steps", str(args.steps), "--batch", str(args.batch)),
            *("--seed", str(args.seed), "--dtype", args.dtype, "--lr", repr(args.lr)),
            *("--keep", str(args.keep), "--save-every", str(args.save_every)),
            *("--init-timeout", str(args.init_timeout)),
            *("--heartbeat-timeout", str(args.heartbeat_timeout)),
            *("--collective-timeout", str(args.collective_timeout)),
            *("--shutdown-timeout", str(args.shutdown_timeout)),
        ]
        grace = max(args.heartbeat_timeout, args.collective_timeout) + 30
        return launch(args.processes, args.devices_per_process, worker_args, grace)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    initialize(
        args.coordinator,
        args.num_processes,
        args.process_id,
        cpu_devices=args.cpu_devices,
        initialization_timeout=args.init_timeout,
        heartbeat_timeout=args.heartbeat_timeout,
        collective_timeout=args.collective_timeout,
        shutdown_timeout=args.shutdown_timeout,
    )
    try:
        train(
            args.out,
            args.steps,
            batch=args.batch,
            seed=args.seed,
            dtype=args.dtype,
            keep=args.keep,
            save_every=args.save_every,
            lr=args.lr,
        )
    except Exception as e:  # a clear line, and no wait at the shutdown barrier
        print(
            f"[process {jax.process_index()}/{jax.process_count()}] failed: "
            f"{type(e).__name__}: {e}\nIf another process died or hangs, this one gives up "
            f"after --collective-timeout={args.collective_timeout} s in a collective, or "
            f"--heartbeat-timeout={args.heartbeat_timeout} s without its heartbeat.",
            file=sys.stderr,
            flush=True,
        )
        sys.stdout.flush()
        os._exit(1)
    jax.distributed.shutdown()  # waits for every process: all leave together
    return 0


if __name__ == "__main__":
    sys.exit(main())
