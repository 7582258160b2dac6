"""The machine, the library versions, the memory bandwidth and the matmul roofline, recorded
with every run."""

from __future__ import annotations

import datetime
import itertools
import os
import platform
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from benchmarks._timing import Runner, is_noisy, measure

PACKAGES = ("se-flax", "jax", "jaxlib", "flax", "optax", "numpy", "torch")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def last_level_cache_bytes() -> int:
    """Size of the CPU's last cache level (sysfs), 32 MiB where it cannot be read."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1], 1)
        sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes, default=32 * 2**20)


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def describe(threads: int) -> dict:
    """Machine, devices, thread settings and versions."""
    import jax
    import torch

    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_used": len(os.sched_getaffinity(0)),
        "memory_gib": round(memory / 2**30, 1),
        "last_level_cache_mib": last_level_cache_bytes() / 2**20,
        "gpu": gpu,
        "jax_devices": [str(d) for d in jax.devices()],
        "torch_device": "cuda" if gpu else "cpu",
        "threads": {
            "requested": threads,
            "torch_intra_op": torch.get_num_threads(),
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        },
        "versions": versions,
        "git_commit": _git_commit(),
    }


def memory_bandwidth(nbytes: int, repeats: int = 10) -> dict:
    """Copy bandwidth: ``dst.copy_(src)`` of ``nbytes`` into a preallocated buffer (PyTorch,
    all intra-op threads, on the benchmark's device), counting 2 bytes moved per byte copied.

    Returns the median, the best, and every sample, in GB/s (1e9 bytes per second).
    """
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    src = torch.randn(nbytes // 4, device=dev)
    dst = torch.empty_like(src)
    samples = []
    for i in range(repeats + 2):
        if dev == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        if dev == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # two warm-up copies: page faults and first-touch happen there
            samples.append(2 * nbytes / (time.perf_counter() - start) / 1e9)
    return {
        "method": f"torch.Tensor.copy_ of {nbytes / 2**20:.0f} MiB float32 on {dev}, "
        "2 bytes moved per byte copied",
        "median_GBps": float(np.median(samples)),
        "best_GBps": float(max(samples)),
        "samples_GBps": samples,
    }


def _matmul_runner(framework: str, dtype: str, shape: tuple[int, int, int], seed: int):
    """A ``Runner`` of one (M x K) @ (K x N) matmul: ``jnp.matmul`` under ``jax.jit`` with
    precision HIGHEST (as the project pins it: no TF32 on GPUs), or ``torch.matmul`` (PyTorch's
    default precision, recorded by ``matmul_roofline``) on the benchmark's device."""
    m, k, n = shape
    rng = np.random.default_rng(seed)
    a, b = (rng.standard_normal(s, np.float32) for s in ((m, k), (k, n)))
    if framework == "jax":
        import jax
        import jax.numpy as jnp

        dt = jnp.dtype(dtype)
        x, y = (jax.device_put(v.astype(dt)) for v in (a, b))
        fn = jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST))
        return Runner(lambda i: fn(x, y), jax.block_until_ready)
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x, y = (torch.from_numpy(v).to(dev, getattr(torch, dtype)) for v in (a, b))

    @torch.no_grad()
    def step(i: int):
        return torch.matmul(x, y)

    def sync(outputs: list) -> None:
        if dev == "cuda":
            torch.cuda.synchronize()

    return Runner(step, sync)


def matmul_roofline(
    frameworks: list[str],
    dtypes: list[str],
    shapes: list[tuple[int, int, int]],
    repeats: int,
    min_time: float,
    warmup: float,
    smoke: bool = False,
    seed: int = 0,
) -> dict:
    """Matmul throughput per framework, dtype and shape (medians over timed repeats after a
    warm-up, ``block_until_ready`` / device synchronisation), and the roofline per dtype: the
    best median GFLOP/s over frameworks and shapes. 2*M*K*N FLOPs per matmul.
    """
    records = []
    for framework, dtype, shape in itertools.product(frameworks, dtypes, shapes):
        m, k, n = shape
        record = {"framework": framework, "dtype": dtype, "shape": list(shape)}
        record["flops"] = 2 * m * k * n
        try:
            timing = measure(
                _matmul_runner(framework, dtype, shape, seed), repeats, min_time, warmup
            )
        except Exception as error:  # a failed shape must not lose the run
            record["error"] = f"{type(error).__name__}: {error}".splitlines()[0][:500]
        else:
            record.update(median_s=timing["median_s"], iqr_s=timing["iqr_s"])
            record["GFLOPs"] = record["flops"] / timing["median_s"] / 1e9
            record["noisy"] = is_noisy(timing)
        records.append(record)
    best = {}
    for record in records:
        if "GFLOPs" in record and record["GFLOPs"] > best.get(record["dtype"], {}).get(
            "GFLOPs", 0.0
        ):
            best[record["dtype"]] = record
    method = (
        "Median time of (M x K) @ (K x N) matmuls, 2*M*K*N FLOPs each, inputs on the benchmark's "
        "device: jnp.matmul under jax.jit with precision HIGHEST (as the project pins it), "
        "torch.matmul (PyTorch's default precision); the roofline of a dtype is the best median "
        "over frameworks and shapes"
    )
    if smoke:
        method += "; --quick: small shapes, a smoke measurement, far from the machine's peak"
    torch_precision = None
    if "torch" in frameworks:
        import torch

        torch_precision = torch.get_float32_matmul_precision()
    return {
        "method": method,
        "smoke": smoke,
        "jax_precision": "HIGHEST",
        "torch_float32_matmul_precision": torch_precision,
        "GFLOPs": {dtype: r["GFLOPs"] for dtype, r in best.items()},
        "best": {
            dtype: {"framework": r["framework"], "shape": r["shape"]} for dtype, r in best.items()
        },
        "records": records,
    }
