"""se_flax._grouped.fusion_boundary: the identity, computed once into a buffer on CPUs (a custom
call XLA cannot fuse through), put after every block of the backbones."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import se_flax
import se_flax.nnx as se_nnx
from se_flax._grouped import fusion_boundary

TARGET = "custom_call @SeFlaxFusionBoundary("


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16", "int32"])
def test_values_are_the_input_bit_for_bit(dtype, rng):
    x = jnp.asarray(rng.standard_normal((3, 5, 4, 7)) * 100, dtype)
    for f in (fusion_boundary, jax.jit(fusion_boundary), jax.jit(lambda x: fusion_boundary(x * 1))):
        y = f(x)
        assert y.dtype == x.dtype and y.shape == x.shape
        np.testing.assert_array_equal(np.asarray(y, np.float64), np.asarray(x, np.float64))
    # inside a fusion's producer and consumer, where XLA would otherwise fuse the two
    both = jax.jit(lambda x: fusion_boundary(jnp.abs(x) + 1) * 2)(x)
    np.testing.assert_array_equal(np.asarray(both), np.asarray((jnp.abs(x) + 1) * 2))
    assert fusion_boundary(jnp.zeros((0, 3), dtype)).shape == (0, 3)


def test_derivatives_and_vmap_are_the_identitys(rng):
    x = jnp.asarray(rng.standard_normal((4, 6)))
    t = jnp.asarray(rng.standard_normal((4, 6)))

    def f(x):
        return jnp.sum(jnp.sin(fusion_boundary(x**2)))

    np.testing.assert_array_equal(jax.grad(f)(x), jax.grad(lambda x: jnp.sum(jnp.sin(x**2)))(x))
    y, dy = jax.jvp(fusion_boundary, (x,), (t,))
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dy, t)
    hvp = jax.jvp(jax.grad(f), (x,), (t,))[1]  # forward over reverse
    want = jax.jvp(jax.grad(lambda x: jnp.sum(jnp.sin(x**2))), (x,), (t,))[1]
    np.testing.assert_allclose(hvp, want, rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(jax.vmap(fusion_boundary)(x), x)
    np.testing.assert_array_equal(jax.vmap(jax.vmap(fusion_boundary), in_axes=1)(x), x.T)


def test_a_custom_call_on_cpus_in_place_and_nothing_elsewhere():
    x = jax.ShapeDtypeStruct((2, 8, 8, 16), jnp.float32)

    def step(x):  # a forward and a backward boundary
        return jax.grad(lambda x: jnp.sum(fusion_boundary(jnp.tanh(x)) ** 2))(x)

    cpu = jax.jit(step).trace(x).lower(lowering_platforms=("cpu",)).as_text()
    assert cpu.count(TARGET) == 2
    assert cpu.count("output_operand_aliases") == 2  # output aliased to the operand: no copy
    gpu = jax.jit(step).trace(x).lower(lowering_platforms=("cuda",)).as_text()
    assert "SeFlaxFusionBoundary" not in gpu


def test_programs_over_several_devices_get_the_identity():
    # XLA's SPMD partitioner would replicate the custom call (an all-gather of the batch-sharded
    # operand before it): over 4 devices, neither appears, and the values are the same.
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from se_flax._grouped import fusion_boundary
        mesh = Mesh(np.array(jax.devices()), ("data",))
        x = np.random.default_rng(0).standard_normal((8, 6, 6, 16)).astype(np.float32)
        def f(x):
            return jnp.sum(jnp.sin(fusion_boundary(jnp.tanh(x) * 2)))
        step = jax.jit(jax.grad(f))
        sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
        hlo = step.lower(sharded).compile().as_text()
        one = step.lower(x).as_text()
        assert jax.device_count() == 4
        assert "all-gather" not in hlo and "SeFlaxFusionBoundary" not in hlo
        assert "SeFlaxFusionBoundary" in one
        np.testing.assert_array_equal(np.asarray(step(sharded)), np.asarray(step(x)))
        print("ok")
        """
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


@pytest.mark.parametrize(
    ("name", "kwargs", "blocks"),
    [
        ("seresnext50_32x4d", {"layers": (1, 1, 1, 1)}, 4),
        ("regnety_002", {}, 13),
        ("efficientnet_b0", {}, 16),
    ],
)
def test_every_block_of_every_front_end_ends_in_one(name, kwargs, blocks):
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    linen = se_flax.create_model(name, **kwargs)
    variables = jax.eval_shape(linen.init, jax.random.key(0), x)
    text = jax.jit(linen.apply).trace(variables, x).lower(lowering_platforms=("cpu",)).as_text()
    assert text.count(TARGET) == blocks
    model = nnx.eval_shape(lambda: se_nnx.create_model(name, rngs=nnx.Rngs(0), **kwargs))
    model.eval()
    graphdef, state = nnx.split(model)
    nnx_text = (
        jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
        .trace(state, x)
        .lower(lowering_platforms=("cpu",))
        .as_text()
    )
    assert nnx_text.count(TARGET) == blocks
