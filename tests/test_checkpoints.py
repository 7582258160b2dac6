"""Checkpoints survive a crash: a run SIGKILLed during a save (while writing, just before the
commit, while deleting an old step) leaves the previous steps restorable and no step that
restores half-written; the newest complete one resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from se_flax.training import Checkpoints, TrainState

ROOT = Path(__file__).resolve().parents[1]
KEEP = 2
# A child saving steps 1, 2, ... of a ~24 MB state with Checkpoints(keep=2) (async saves, each
# waited for and then reported), killed during the save of step `at`: from outside once its
# temporary directory holds a file ("write"), or by itself once every array is written, just
# before orbax renames the item ("item") or then the step ("commit") into place, or once the
# removal of the step beyond `keep` has deleted two files ("delete").
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    from se_flax.training import Checkpoints
    from tests.test_checkpoints import KEEP, state_at

    directory, mode, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    armed = False

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    rename, unlink, remove = os.rename, os.unlink, os.remove
    committed, removed = False, 0

    def hooked_rename(src, dst, *args, **kwargs):
        global committed
        name = os.path.basename(os.fspath(dst))
        if armed and "orbax-checkpoint-tmp" in os.fspath(src):
            if (mode, name) in (("item", "default"), ("commit", str(at))):
                die()
        result = rename(src, dst, *args, **kwargs)
        committed = committed or (armed and name == str(at))
        return result

    def hooked_remove(remove_fn):
        def hooked(path, *args, dir_fd=None, **kwargs):
            global removed
            if mode == "delete" and committed:  # files that exist, after step `at` committed
                try:
                    os.lstat(path, dir_fd=dir_fd)
                    removed += 1
                except OSError:
                    pass
                if removed > 2:
                    die()
            return remove_fn(path, *args, dir_fd=dir_fd, **kwargs)
        return hooked

    os.rename, os.unlink, os.remove = hooked_rename, hooked_remove(unlink), hooked_remove(remove)
    checkpoints = Checkpoints(directory, keep=KEEP)
    step = 0
    while True:
        step += 1
        armed = step == at
        checkpoints.save(state_at(step))
        checkpoints.wait()
        print("complete", step, flush=True)
    """
)


def state_at(step: int) -> TrainState:
    """The state saved as ``step``: every array depends on the step."""

    def arrays(name: str, n: int, size: int) -> dict[str, np.ndarray]:
        return {
            f"{name}{i}": np.random.default_rng([step, len(name), i]).standard_normal(size)
            for i in range(n)
        }

    return TrainState(
        step=np.int32(step),
        apply_fn=None,
        params=arrays("w", 6, 250_000),
        tx=None,
        opt_state=arrays("trace", 4, 250_000),
        batch_stats={"mean": np.full(1000, step, np.float64)},
    )


def assert_state(got: TrainState, step: int) -> None:
    want = state_at(step)
    assert int(got.step) == step
    for what in ("params", "opt_state", "batch_stats"):
        for k, v in getattr(want, what).items():
            np.testing.assert_array_equal(np.asarray(getattr(got, what)[k]), v, f"{what}/{k}")


def tmp_dirs(directory: Path, step: int | str = "*") -> list[Path]:
    """orbax's temporary directories: saves begun, not committed."""
    return sorted(directory.glob(f"{step}.orbax-checkpoint-tmp*"))


def test_a_run_killed_during_a_save_resumes_from_the_newest_complete_step(tmp_path):
    at = 3
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    children, logs = {}, {}
    for mode in ("write", "item", "commit", "delete"):
        logs[mode] = tmp_path / f"{mode}.log"
        with open(logs[mode], "w") as log:
            children[mode] = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(tmp_path / mode), mode, str(at)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            )  # fmt: skip
    left = {}  # what each kill left on disk before the directory is opened again
    try:
        # "write": killed once the temporary directory of step 3 (or a later one, should the
        # poll miss it) holds a file, i.e. during the save.
        deadline, killed_at = time.monotonic() + 120, None
        while killed_at is None:
            for d in tmp_dirs(tmp_path / "write"):
                step = int(d.name.split(".")[0])
                if step >= at and any(p.is_file() for p in d.rglob("*")):
                    children["write"].send_signal(signal.SIGKILL)
                    killed_at = step
                    break
            if children["write"].poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no save of step {at} seen\n{logs['write'].read_text()[-3000:]}")
            time.sleep(0.001)
        for mode, child in children.items():
            child.wait(timeout=120)
            left[mode] = tmp_dirs(tmp_path / mode)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
            child.wait()
    for mode, child in children.items():
        assert child.returncode == -signal.SIGKILL, (mode, logs[mode].read_text()[-3000:])
        reported = [int(line.split()[1]) for line in logs[mode].read_text().splitlines()
                    if line.startswith("complete")]  # fmt: skip
        assert reported == list(range(1, len(reported) + 1)) and reported[-1] >= at - 1, mode

    # Killed before the commit: the step exists only as a temporary directory, with every array
    # written in "item" and "commit" (in "commit" even the item is committed); the step before
    # is the newest. In "delete", step 3 was committed before step 1 was removed. ("write" may
    # lose the race with the commit when the machine is loaded: then its step is complete.)
    assert left["item"] and left["commit"] and not left["delete"]
    assert (left["item"][0] / "default.orbax-checkpoint-tmp" / "_METADATA").is_file()
    assert (left["commit"][0] / "default" / "commit_success.txt").is_file()
    newest = killed_at - 1 if left["write"] else killed_at
    print(f"write: killed during the save of step {killed_at}, complete: {not left['write']}")
    expected = {
        "write": [newest - 1, newest],
        "item": [1, 2],
        "commit": [1, 2],
        "delete": [2, 3],
    }
    for mode, steps in expected.items():
        directory = tmp_path / mode
        checkpoints = Checkpoints(directory, keep=KEEP)
        assert checkpoints.all_steps() == steps, mode  # never a half-written one
        assert checkpoints.latest_step() == steps[-1]
        for step in steps:  # each restores exactly what was saved
            assert_state(checkpoints.restore(state_at(0), step), step)
        assert_state(checkpoints.restore(state_at(0)), steps[-1])  # the newest by default
        assert not tmp_dirs(directory), mode  # what the kill left is gone
        assert not list((directory / Checkpoints.DELETED).glob("*")), mode
        checkpoints.save(state_at(steps[-1] + 1))  # and saving goes on
        checkpoints.close()
        assert Checkpoints(directory, keep=KEEP).all_steps() == [steps[-1], steps[-1] + 1]
