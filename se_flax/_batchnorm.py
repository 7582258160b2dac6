"""BatchNorm in Flax linen keeping PyTorch's running statistics, the twin of ``nn.BatchNorm2d``."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from se_flax._dtypes import Dtype, accumulation_dtype, compute_dtype

__all__ = ["BatchNorm", "batch_norm"]


class BatchNorm(nn.Module):
    """Batch normalisation over the last (channel) axis with PyTorch's statistics.

    Differences from ``flax.linen.BatchNorm``, all to match PyTorch exactly:

    * the running variance is updated with the *unbiased* batch variance (``n / (n - 1)``) while
      the batch is normalised with the biased one;
    * the variance is computed in two passes, ``mean((x - mean)^2)``, as PyTorch does;
    * ``batch_stats/num_batches_tracked`` (int32) counts training steps like PyTorch's buffer.

    Attributes:
        use_running_average: normalise with the running statistics (eval) instead of the batch's.
        momentum: Flax's convention, ``running = momentum * running + (1 - momentum) * batch``;
            PyTorch's ``momentum=0.1`` is ``0.9`` here (the default).
        epsilon: added to the variance (PyTorch's ``eps``, default 1e-5).
        dtype: computation and output dtype (statistics are computed in at least float32).
        param_dtype: dtype of ``scale``, ``bias`` and the running statistics when they are
            created. Updated statistics keep the dtype of the stored ones (float64 statistics
            loaded into a model with the default ``param_dtype`` stay float64), as Flax's own
            ``BatchNorm`` does: a variable never changes dtype across an update.
        scale_init, bias_init: initialisers of ``scale`` (ones) and ``bias`` (zeros).

    Shapes:
        input ``(N, ..., C)``, output the same; ``N * prod(...)`` must be > 1 in training.

    Example:
        >>> bn = BatchNorm(use_running_average=False)
        >>> y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    """

    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    scale_init: nn.initializers.Initializer = nn.initializers.ones_init()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (c,), self.param_dtype)
        stats = lambda init: lambda: init((c,), self.param_dtype)  # noqa: E731
        ra_mean = self.variable("batch_stats", "mean", stats(jnp.zeros))
        ra_var = self.variable("batch_stats", "var", stats(jnp.ones))
        count = self.variable("batch_stats", "num_batches_tracked", jnp.zeros, (), jnp.int32)

        y, updated = batch_norm(
            x,
            scale,
            bias,
            ra_mean.value,
            ra_var.value,
            self.use_running_average,
            self.momentum,
            self.epsilon,
            self.dtype,
        )
        if updated is not None and not self.is_initializing():
            ra_mean.value, ra_var.value = updated
            count.value = count.value + 1
        return y


def batch_norm(
    x: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    running_mean: jax.Array,
    running_var: jax.Array,
    use_running_average: bool,
    momentum: float,
    epsilon: float,
    dtype: Dtype | None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """PyTorch's batch normalisation over the last axis, shared by the linen and NNX modules.

    Returns:
        the output (in ``dtype``, else the promotion of ``x`` and ``scale``) and, in training
        (``use_running_average=False``), the updated running mean and (unbiased) variance in the
        dtypes of the given ones; ``None`` in eval.
    """
    dtype = compute_dtype(x, dtype, scale.dtype)
    acc = accumulation_dtype(dtype)
    xf = x.astype(acc)
    if use_running_average:  # PyTorch's eval kernel: x * alpha + (bias - mean * alpha)
        alpha = jax.lax.rsqrt(running_var.astype(acc) + epsilon) * scale.astype(acc)
        y = xf * alpha + (bias.astype(acc) - running_mean.astype(acc) * alpha)
        return y.astype(dtype), None
    n = math.prod(x.shape[:-1])
    if n < 2:
        raise ValueError(
            f"BatchNorm in training needs more than 1 value per channel, got input shape {x.shape}"
        )
    y, mean, var = _normalize_batch(xf, scale.astype(acc), bias.astype(acc), epsilon)
    new = []
    for stat, batch in ((running_mean, mean), (running_var, var * (n / (n - 1)))):
        # In the wider of the accumulation and the statistic's dtype, stored back in the
        # statistic's own.
        work = max(acc, jnp.dtype(stat.dtype), key=lambda d: jnp.finfo(d).bits)
        m = momentum
        new.append((m * stat.astype(work) + (1 - m) * batch.astype(work)).astype(stat.dtype))
    return y.astype(dtype), (new[0], new[1])


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _normalize_batch(x, scale, bias, epsilon):
    """``(x - mean) / sqrt(var + epsilon) * scale + bias`` with the batch's ``mean`` and biased
    ``var`` over every axis but the last (two passes, as PyTorch), returned too:
    ``(y, mean, var)``.

    Its derivative is written out (below) rather than traced: transposed, it is BatchNorm's
    closed-form backward pass, which XLA runs 1.3-2.3x faster than the autodiff of the forward
    pass (forward + backward with a ReLU, float32, ResNet-50 shapes at batch 8, on a 2-core Intel
    Xeon); the two agree to rounding. A JVP, not a VJP, so forward-mode (``jax.jvp``,
    Hessian-vector products) works as before.
    """
    return _batch_forward(x, scale, bias, epsilon)[:3]


def _batch_forward(x, scale, bias, epsilon):
    """``(y, mean, var, x - mean, 1 / sqrt(var + epsilon))``: the forward pass of
    :func:`_normalize_batch`, shared by the function and its JVP."""
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    centred = x - mean
    var = jnp.mean(jnp.square(centred), axis=axes)
    rstd = jax.lax.rsqrt(var + epsilon)
    # Centred first: x * alpha - mean * alpha would cancel badly.
    return centred * (rstd * scale) + bias, mean, var, centred, rstd


@_normalize_batch.defjvp
def _normalize_batch_jvp(epsilon, primals, tangents):
    x, scale, bias = primals
    dx, dscale, dbias = tangents
    axes = tuple(range(x.ndim - 1))
    y, mean, var, centred, rstd = _batch_forward(x, scale, bias, epsilon)
    dmean = jnp.mean(dx, axis=axes)
    dcentred = dx - dmean
    dvar = 2 * jnp.mean(centred * dcentred, axis=axes)
    drstd = -0.5 * rstd**3 * dvar
    dy = dcentred * (rstd * scale) + centred * (drstd * scale + rstd * dscale) + dbias
    return (y, mean, var), (dy, dmean, dvar)
