"""BatchNorm with PyTorch's statistics: the update rule and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import se_flax


def test_batchnorm_needs_two_values_per_channel_in_training():
    bn = se_flax.BatchNorm()
    variables = bn.init(jax.random.key(0), jnp.ones((4, 3), jnp.float32))
    with pytest.raises(
        ValueError, match=r"more than 1 value per channel, got input shape \(1, 1, 1, 3\)"
    ):
        bn.apply(variables, jnp.ones((1, 1, 1, 3), jnp.float32), mutable=["batch_stats"])


def test_statistics_update_with_the_momentum_and_unbiased_variance(rng):
    """One step by hand: running = m * running + (1 - m) * batch, the variance unbiased."""
    x = rng.standard_normal((4, 3, 5, 6))
    bn = se_flax.BatchNorm(momentum=0.7, param_dtype=jnp.float64)
    variables = {
        "params": {"scale": jnp.ones(6), "bias": jnp.zeros(6)},
        "batch_stats": {
            "mean": jnp.asarray(rng.standard_normal(6)),
            "var": jnp.asarray(rng.uniform(0.5, 2, 6)),
            "num_batches_tracked": jnp.asarray(7, jnp.int32),
        },
    }
    _, updates = bn.apply(variables, x, mutable=["batch_stats"])
    stats, old = updates["batch_stats"], variables["batch_stats"]
    flat = x.reshape(-1, 6)
    np.testing.assert_allclose(stats["mean"], 0.7 * old["mean"] + 0.3 * flat.mean(0), rtol=1e-13)
    np.testing.assert_allclose(
        stats["var"], 0.7 * old["var"] + 0.3 * flat.var(0, ddof=1), rtol=1e-13
    )
    assert int(stats["num_batches_tracked"]) == 8 and stats["mean"].dtype == jnp.float64
