"""The SE block's fused Pallas kernels (se_flax._fused_se; interpret mode on CPU, Triton on GPU):
values and both gradients against the unfused SE module, in float64 at rounding level and in
float32 within tolerances, on shapes whose spatial size and channels are no powers of 2."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import se_flax
from se_flax._fused_se import fused_squeeze_excite, se_pool, se_scale

# (N, H, W, C) and dtype: an odd map (45 rows, looped over one at a time) with fewer channels than
# a tile (one tile of all 40), in float64; 256 rows in one chunk and three 128-channel tiles, in
# float32. (Interpret mode compiles each case for seconds on a CPU: two cases cover the paths.)
CASES = [((3, 5, 9, 40), "float64"), ((1, 16, 16, 384), "float32")]
TOLERANCE = {  # relative to each array's largest value
    "float64": {"out": 1e-13, "grad": 1e-12},
    "float32": {"out": 2e-6, "grad": 2e-5},
}


def close(got, want, rtol: float, what: str) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = float(np.abs(want).max())
    assert scale > 0, what
    error = float(np.abs(got - want).max()) / scale
    assert error <= rtol, f"{what}: {error:.3g} of its largest (bound {rtol:g})"


@pytest.mark.parametrize("shape, dtype", CASES)
def test_fused_se_is_the_se_module(shape, dtype, rng):
    """The linen SqueezeExcite with fused=True against fused=False on the same weights: output,
    and the gradients of the input and of every parameter."""
    x = jnp.asarray(rng.standard_normal(shape), dtype)
    cot = jnp.asarray(rng.standard_normal(shape), dtype)
    plain = se_flax.SqueezeExcite(rd_ratio=0.25, param_dtype=dtype)
    fused = se_flax.SqueezeExcite(rd_ratio=0.25, param_dtype=dtype, fused=True)
    params = plain.init(jax.random.key(0), x)["params"]
    params = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), dtype), params)

    def loss(module):
        return lambda p, x: jnp.sum(module.apply({"params": p}, x) * cot)

    tol = TOLERANCE[dtype]
    close(fused.apply({"params": params}, x), plain.apply({"params": params}, x), tol["out"], "out")
    want = jax.grad(loss(plain), (0, 1))(params, x)
    got = jax.jit(jax.grad(loss(fused), (0, 1)))(params, x)
    for (path, g), w in zip(
        jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True
    ):
        close(g, w, tol["grad"], f"gradient {jax.tree_util.keystr(path)}")


def test_kernels_alone_and_under_vmap(rng):
    """The pool is the float32-accumulated mean, the scale the broadcast product; both batch
    under vmap and differentiate twice (forward mode over the custom derivatives' primals)."""
    x = jnp.asarray(rng.standard_normal((2, 3, 49, 24)))
    g = jnp.asarray(rng.standard_normal((2, 3, 24)))
    np.testing.assert_allclose(jax.vmap(se_pool)(x), x.mean(axis=2), rtol=1e-13)
    np.testing.assert_allclose(jax.vmap(se_scale)(x, g), x * g[:, :, None, :], rtol=1e-15)
    cot = jnp.asarray(rng.standard_normal(x.shape))
    dx, dg = jax.grad(lambda x, g: jnp.sum(jax.vmap(se_scale)(x, g) * cot), (0, 1))(x, g)
    np.testing.assert_allclose(dx, cot * g[:, :, None, :], rtol=1e-15)
    np.testing.assert_allclose(dg, (cot * x).sum(axis=2), rtol=1e-12)


def test_bfloat16_pools_in_float32(rng):
    """16-bit inputs: the pool accumulates in float32 and rounds once, as the unfused module."""
    x = jnp.asarray(rng.standard_normal((2, 14, 14, 64)), jnp.bfloat16)
    pooled = se_pool(x.reshape(2, -1, 64))
    want = x.astype(jnp.float32).reshape(2, -1, 64).mean(axis=1).astype(jnp.bfloat16)
    assert pooled.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(pooled, np.float32), np.asarray(want, np.float32))


def test_nnx_module_takes_the_fused_kernels(rng):
    x = jnp.asarray(rng.standard_normal((2, 7, 7, 64)))
    plain = se_flax.nnx.SqueezeExcite(64, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    fused = se_flax.nnx.SqueezeExcite(64, param_dtype=jnp.float64, fused=True, rngs=nnx.Rngs(0))
    close(fused(x), plain(x), TOLERANCE["float64"]["out"], "nnx out")


def test_fused_se_function_takes_any_excitation(rng):
    x = jnp.asarray(rng.standard_normal((2, 4, 6, 16)))
    w = jnp.asarray(rng.standard_normal((16, 16)))
    got = fused_squeeze_excite(x, lambda z: jax.nn.sigmoid(z @ w), x.dtype)
    want = x * jax.nn.sigmoid(x.mean(axis=(1, 2)) @ w)[:, None, None, :]
    close(got, want, 1e-13, "fused_squeeze_excite")
