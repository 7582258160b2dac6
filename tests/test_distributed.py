"""Multi-process data parallel: ``python -m se_flax.distributed`` on 2 processes x 2 CPU devices
(JAX's multi-controller runtime, gloo collectives over localhost) against one process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from se_flax.distributed import global_batch, initial_state, local_rows, synthetic_batch
from se_flax.training import Checkpoints, data_mesh, train_step

ROOT = Path(__file__).resolve().parents[1]
COMMAND = [sys.executable, "-m", "se_flax.distributed"]
BATCH = 4  # one sample per device: per-device (or per-process) BatchNorm could not match
# Cheaper LLVM passes: the programs compile in about half the time. Both multi-process runs
# use them, so the bit-for-bit resume compares like with like.
ENV = {
    **{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_llvm_disable_expensive_passes=true",
}
# |2 processes - 1| / (1 + |1 process|) after 4 float64 steps, measured: losses 2.8e-13,
# parameters 1.8e-13, BatchNorm statistics 6.4e-14, momentum (summed gradients) 3.0e-12.
TOL = 1e-10


def start(args: list[str], log: Path) -> subprocess.Popen:
    """Starts the command in its own process group (the launcher's workers with it)."""
    with open(log, "w") as f:
        return subprocess.Popen(
            COMMAND + args, stdout=f, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip


def stop(*processes: subprocess.Popen) -> None:
    for p in processes:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def metrics(out: Path) -> dict[int, dict]:
    """Process 0's record: step -> loss and accuracy."""
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return {m["step"]: m for m in map(json.loads, lines)}


def wait_for(condition, timeout: float, what: str, *logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {log}\n{log.read_text()[-3000:]}" for log in logs)
            raise AssertionError(f"no {what} after {timeout} s\n{tails}")
        time.sleep(0.05)


def arrays(state) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats, "opt_state": state.opt_state}


def worst(a, b) -> float:
    """Worst ``|a - b| / (1 + |b|)`` over the arrays of two states."""
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y)) / (1 + np.abs(np.asarray(y)))))
        for x, y in zip(jax.tree.leaves(arrays(a)), jax.tree.leaves(arrays(b)), strict=True)
    )


def assert_identical(a, b, what: str) -> None:
    leaves = jax.tree.leaves_with_path(arrays(a))
    assert len(leaves) == len(jax.tree.leaves(arrays(b)))
    for (path, x), y in zip(leaves, jax.tree.leaves(arrays(b)), strict=True):
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x), f"{what}: {path}")


def test_two_processes_train_like_one_resume_bit_identically_and_fail_fast(tmp_path, rng):
    """2 processes x 2 CPU devices, each loading its own rows of every batch:

    1. the launcher trains 4 float64 steps, checkpointing each and keeping 3, and both processes
       exit cleanly; losses, parameters, optimizer state and BatchNorm statistics equal one
       process on one device (which restores the 2-process checkpoint) to rounding level;
    2. 2 workers started as on a cluster resume from step 2 (next to a half-written step 3, as
       a crash leaves it) and reach A's step 4 bit for bit; then one is SIGKILLed and the other
       fails with an error naming the cause within its timeouts, instead of hanging.
    """
    seed = int(rng.integers(2**31))
    common = f"--dtype float64 --batch {BATCH} --seed {seed}".split()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    local = ["--processes", "2", "--devices-per-process", "2", "--steps", "4", "--keep", "3"]
    launcher = start([*local, "--out", str(a), *common], a / "log")
    try:
        launcher.wait(timeout=240)
    finally:
        stop(launcher)
    log = (a / "log").read_text()
    assert launcher.returncode == 0, log[-5000:]
    for i in (0, 1):  # both trained to the end and exited with status 0
        assert f"[process {i}/2] step 4 loss" in log, log[-5000:]
        assert f"[process {i}/2] 4 devices, 2 here; rows slice({2 * i}, {2 * i + 2}" in log
    recorded = metrics(a)
    assert sorted(recorded) == [1, 2, 3, 4]
    checkpoints = Checkpoints(a / "checkpoints")
    assert checkpoints.all_steps() == [2, 3, 4]  # the newest 3 kept
    two_process = checkpoints.restore(initial_state(seed, "float64"))  # 4 devices -> 1
    assert int(two_process.step) == 4

    # 2. Resume from step 2 after a crash during the save of step 3.
    (b / "checkpoints").mkdir(parents=True)
    shutil.copytree(a / "checkpoints" / "2", b / "checkpoints" / "2")
    partial = b / "checkpoints" / "3.orbax-checkpoint-tmp-1234567"
    shutil.copytree(a / "checkpoints" / "3", partial)
    for f in sorted(p for p in partial.rglob("*") if p.is_file())[::2]:
        f.unlink()  # half of its files
    port = str(_free_port())
    # As on a cluster: one command per process, each told the coordinator and its rank.
    cluster = f"--coordinator 127.0.0.1:{port} --num-processes 2 --cpu-devices 2".split()
    run = ["--steps", "1000", "--keep", "10", "--heartbeat-timeout", "6"]
    workers = [
        start([*cluster, "--process-id", str(i), *run, "--out", str(b), *common], b / f"log{i}")
        for i in (0, 1)
    ]
    logs = [b / "log0", b / "log1"]
    try:
        # Step 4 complete (renamed into place), then process 1 dies.
        wait_for(lambda: (b / "checkpoints" / "4").is_dir(), 240, "step 4", *logs)
        workers[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        # Meanwhile, the same 4 steps in this process, on one device.
        reference, losses = initial_state(seed, "float64"), []
        for step in range(4):
            images, labels = synthetic_batch(seed, step, slice(0, BATCH), "float64")
            reference, m = train_step(reference, images, labels)
            losses.append(float(m["loss"]))
        try:
            workers[0].wait(timeout=max(1, 90 - (time.monotonic() - killed)))
        except subprocess.TimeoutExpired:
            pytest.fail("process 0 still runs 90 s after process 1 was killed")
        waited = time.monotonic() - killed
    finally:
        stop(*workers)
    survivor = logs[0].read_text()
    assert workers[0].returncode != 0 and workers[1].returncode == -signal.SIGKILL
    assert "resumed from step 2" in survivor, survivor[-3000:]
    # JAX's (no heartbeat from process 1), or ours (a collective timed out).
    assert "If another process died or hangs" in survivor or "another task died" in survivor, (
        survivor[-5000:]
    )
    print(f"process 0 failed {waited:.1f} s after process 1 was killed")

    # 1 process on 1 device = 2 processes on 4 devices, to rounding level.
    loss_error = max(abs(recorded[s + 1]["loss"] - losses[s]) for s in range(4))
    error = worst(two_process, reference)
    print(f"2 processes vs 1: losses {loss_error:.2g}, state {error:.2g}")
    assert loss_error <= TOL and error <= TOL, (loss_error, error)
    # Not trivially equal: every BatchNorm statistic moved away from its initial value.
    initial = initial_state(seed, "float64").batch_stats
    moved = jax.tree.map(lambda x, y: float(np.max(abs(x - y))), two_process.batch_stats, initial)
    assert min(jax.tree.leaves(moved)) > 1e-6, moved

    # The resumed run: the same bits.
    resumed = Checkpoints(b / "checkpoints")
    assert not partial.exists()  # removed, never restored
    assert {3, 4} <= set(resumed.all_steps())
    assert_identical(resumed.restore(initial_state(seed, "float64"), 4), two_process, "step 4")
    assert [metrics(b)[s] for s in (3, 4)] == [recorded[s] for s in (3, 4)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_rows_and_global_batch_on_one_process():
    mesh = data_mesh()
    n = mesh.shape["data"]
    assert local_rows(4 * n, mesh) == slice(0, 4 * n)
    x = np.arange(4.0 * n)
    g = global_batch({"x": x}, mesh)["x"]
    np.testing.assert_array_equal(np.asarray(g), x)
