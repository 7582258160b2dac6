"""Shared test set-up: precision pinned so the suite holds on GPUs too, strict dtype promotion,
float64 enabled for rounding-level parity, and a seeded random generator per test."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import zlib

# Tests never touch the network: hub ids resolve offline, in an empty cache unless a test builds
# one (set before huggingface_hub is imported: it reads these once).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="se-flax-test-hf-")

# On a GPU: deterministic reductions (the bit-for-bit tests compare two runs), and no Triton GEMM
# fusion (jax 0.11.2's XLA aborts compiling some of these programs in GemmFusion on an H200).
# CPU builds accept and ignore both.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_gpu_deterministic_ops=true --xla_gpu_enable_triton_gemm=false"
)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One intra-op thread per xdist worker: N workers on N cores, no oversubscription.
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )

import jax
import numpy as np
import pytest
import torch

atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)  # the one it made
# One compilation cache per test run, shared by its xdist workers (they inherit the variable
# from the process that made the directory, which removes it at exit): tests compile the same
# programs (a model's train step at the same shapes) again and again, and the suite is mostly
# compile time. It caches compiled programs only, keyed by their HLO: results are unchanged.
if "SE_FLAX_TEST_JAX_CACHE" not in os.environ:
    os.environ["SE_FLAX_TEST_JAX_CACHE"] = tempfile.mkdtemp(prefix="se-flax-test-jax-")
    atexit.register(shutil.rmtree, os.environ["SE_FLAX_TEST_JAX_CACHE"], ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", os.environ["SE_FLAX_TEST_JAX_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_default_matmul_precision", "highest")  # no TF32 on Ampere+ GPUs
jax.config.update("jax_numpy_dtype_promotion", "strict")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A NumPy generator seeded from the test's id: fresh data per test, reproducible per run."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def _seed_torch(request: pytest.FixtureRequest) -> None:
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
