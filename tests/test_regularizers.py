"""timm's training-only regularisers in every front-end: dropout before the classifier
(``drop_rate``), stochastic depth (``drop_path_rate``) and DropBlock (``drop_block_rate``).

Eval mode is exact (the model with them is the model without); training is tested by its
statistics (the keep rate each draws at, against its exact expectation) and by its gradient
(the mask it drew, read back from the output); against timm, with one seed, bit for bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import se_flax
import se_torch
from se_common import DropBlock, get_model
from se_convert import torch_to_flax, update_nnx
from se_flax import nnx as se_nnx
from se_flax._layers import drop_block, drop_path
from tests.helpers import nchw_to_nhwc, randomize_

RATES = {"drop_rate": 0.3, "drop_path_rate": 0.4, "drop_block_rate": 0.2}
NAME = "resnet10t"  # basic blocks: DropBlock after bn1 (stages 3, 4), the d/t shortcuts


def expected_keep(h: int, w: int, drop: DropBlock) -> float:
    """The exact expected kept fraction of an ``h x w`` map: a pixel is kept when no seed falls
    in the block-sized window around it (clipped to the map), each seed drawn at timm's rate
    (an even block, a map smaller than the block, is placed as timm places it)."""
    kh, kw = min(drop.block_size, h), min(drop.block_size, w)
    gamma = drop.gamma_scale * drop.rate * h * w / (kh * kw) / ((h - kh + 1) * (w - kw + 1))
    # the window around pixel i: rows i - (k - 1) // 2 to i + k // 2 (timm crops the first row
    # of an even size's max pool)
    rows = np.array([min(i + kh // 2, h - 1) - max(i - (kh - 1) // 2, 0) + 1 for i in range(h)])
    cols = np.array([min(j + kw // 2, w - 1) - max(j - (kw - 1) // 2, 0) + 1 for j in range(w)])
    return float(np.mean((1 - gamma) ** (rows[:, None] * cols[None, :])))


def check_drop_path(out: np.ndarray, rate: float, n: int) -> None:
    """Each sample kept whole (scaled by 1 / (1 - rate)) or zeroed, at the keep rate."""
    per_sample = out.reshape(n, -1)
    kept = np.all(per_sample == 1 / (1 - rate), axis=1)
    assert np.all(kept | np.all(per_sample == 0, axis=1))
    sigma = np.sqrt(rate * (1 - rate) / n)
    assert abs(kept.mean() - (1 - rate)) < 5 * sigma, kept.mean()


def check_drop_block(out: np.ndarray, drop: DropBlock, h: int, w: int) -> None:
    """Zeroed blocks shared by the channels, the rest scaled to keep the mean at 1, and the
    kept fraction of each sample at its exact expectation."""
    n = out.shape[0]
    nonzero = out != 0
    assert np.all(nonzero == nonzero[..., :1])  # one mask for every channel
    scale = np.unique(out[nonzero])
    assert scale.size == 1 and abs(out.mean() - 1) < 1e-5, (scale, out.mean())
    per_sample = nonzero[..., 0].reshape(n, -1).mean(axis=1)
    want = expected_keep(h, w, drop)
    assert abs(per_sample.mean() - want) < 5 * per_sample.std() / np.sqrt(n), (
        per_sample.mean(),
        want,
    )


def test_drop_path_keeps_samples_at_its_rate_and_its_gradient_is_its_mask():
    x = jnp.ones((4000, 2, 3, 5))
    out = drop_path(x, 0.3, jax.random.key(1))
    check_drop_path(np.asarray(out), 0.3, 4000)
    layer = se_torch.DropPath(0.3).train()
    torch.manual_seed(1)
    check_drop_path(layer(torch.ones(4000, 5, 2, 3)).numpy(), 0.3, 4000)
    assert torch.equal(layer.eval()(t := torch.randn(3, 4, 5, 5)), t)  # eval: the identity

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0.5, 2.0, (64, 3, 3, 4)))
    c = jnp.asarray(rng.standard_normal(x.shape))
    key = jax.random.key(2)
    y = drop_path(x, 0.5, key)
    grad = jax.grad(lambda x: jnp.sum(drop_path(x, 0.5, key) * c))(x)
    np.testing.assert_allclose(grad, c * y / x, rtol=1e-12)
    assert 0 < float(jnp.mean(y == 0)) < 1


@pytest.mark.parametrize(
    "shape,drop",
    [
        ((400, 14, 14, 3), DropBlock(0.2, 5, 0.25)),
        ((600, 7, 6, 2), DropBlock(0.3, 3, 1.0)),
        ((600, 4, 4, 2), DropBlock(0.1, 5, 1.0)),
    ],
)
def test_drop_block_drops_at_its_rate_and_its_gradient_is_its_mask(shape, drop):
    n, h, w, c = shape
    check_drop_block(np.asarray(drop_block(jnp.ones(shape), drop, jax.random.key(3))), drop, h, w)
    layer = se_torch.DropBlock2d(drop).train()
    torch.manual_seed(3)
    out = layer(torch.ones(n, c, h, w)).numpy().transpose(0, 2, 3, 1)
    check_drop_block(out, drop, h, w)

    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(0.5, 2.0, (8, h, w, c)))
    cot = jnp.asarray(rng.standard_normal(x.shape))
    key = jax.random.key(4)
    y = drop_block(x, drop, key)
    grad = jax.grad(lambda x: jnp.sum(drop_block(x, drop, key) * cot))(x)
    np.testing.assert_allclose(grad, cot * y / x, rtol=1e-12)


def models(rng: np.random.Generator, **rates):
    """The same random float64 weights in the three front-ends, with ``rates``."""
    torch_model = randomize_(
        se_torch.create_model(NAME, num_classes=5, **rates), rng, torch.float64
    )
    linen = se_flax.create_model(NAME, num_classes=5, param_dtype=jnp.float64, **rates)
    variables = torch_to_flax(torch_model)
    abstract = nnx.eval_shape(
        lambda: se_nnx.create_model(
            NAME, num_classes=5, param_dtype=jnp.float64, rngs=nnx.Rngs(0, dropout=7), **rates
        )
    )
    nnx_model = update_nnx(abstract, variables)
    nnx.reseed(nnx_model, dropout=7)  # the abstract model's dropout streams, made concrete
    return torch_model, linen, variables, nnx_model


def test_eval_is_exact_and_training_draws_in_every_front_end(rng):
    torch_model, linen, variables, nnx_model = models(rng, **RATES)
    plain_torch, plain_linen, _, plain_nnx = models(np.random.default_rng(0))
    plain_torch.load_state_dict(torch_model.state_dict())
    x = rng.standard_normal((4, 3, 64, 64))
    xt, xf = torch.from_numpy(x), nchw_to_nhwc(x)
    with torch.no_grad():  # eval: the rates change nothing, bit for bit
        assert torch.equal(torch_model.eval()(xt), plain_torch.eval()(xt))
    np.testing.assert_array_equal(
        jax.jit(linen.apply)(variables, xf), jax.jit(plain_linen.apply)(variables, xf)
    )
    forward = nnx.jit(lambda model, x: model(x))  # one program per model and mode
    nnx_model.eval()
    update_nnx(plain_nnx, variables).eval()
    np.testing.assert_array_equal(forward(nnx_model, xf), forward(plain_nnx, xf))

    @jax.jit
    def linen_train(key):
        out, _ = linen.apply(
            variables, xf, train=True, rngs={"dropout": key}, mutable=["batch_stats"]
        )
        return out

    a, b = linen_train(jax.random.key(0)), linen_train(jax.random.key(1))
    np.testing.assert_array_equal(a, linen_train(jax.random.key(0)))  # a key decides
    assert not np.allclose(a, b)
    with pytest.raises(Exception, match="dropout"):  # training asks for its rng
        linen.apply(variables, xf, train=True, mutable=["batch_stats"])
    nnx_model.train()
    first, second = np.asarray(forward(nnx_model, xf)), np.asarray(forward(nnx_model, xf))
    assert not np.allclose(first, second)  # the dropout stream moves on
    torch_model.train()
    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        outs.append(torch_model(xt).detach())
    assert torch.equal(*outs) and not torch.allclose(outs[0], torch_model(xt).detach())
    blocks = [m for m in torch_model.modules() if isinstance(m, se_torch.ResidualBlock)]
    assert [b.drop_path.drop_prob if b.drop_path else 0.0 for b in blocks] == pytest.approx(
        [0.4 * i / 3 for i in range(4)]
    )
    assert [type(b.drop_block).__name__ for b in blocks] == ["Identity"] * 2 + ["DropBlock2d"] * 2


@pytest.mark.parametrize(
    "options,message",
    [
        ({"drop_path_rate": 1.0}, r"drop_path_rate must be a number in \[0, 1\), got 1.0"),
        ({"drop_block_rate": -0.1}, r"drop_block_rate must be a number in \[0, 1\), got -0.1"),
        ({"drop_rate": "0.1"}, r"drop_rate must be a number in \[0, 1\), got '0.1'"),
        ({"drop_rate": True}, r"drop_rate must be a number in \[0, 1\), got True"),
    ],
)
def test_bad_rates_are_named_in_every_front_end(options, message):
    with pytest.raises(ValueError, match=message):
        se_torch.create_model(NAME, **options)
    with pytest.raises(ValueError, match=message):
        se_flax.create_model(NAME, **options)
    with pytest.raises(ValueError, match=message):
        se_nnx.create_model(NAME, rngs=nnx.Rngs(0), **options)


def test_drop_block_is_refused_for_selective_kernel_blocks():
    with pytest.raises(ValueError, match=r"drop_block_rate=0.1 is not built for sk_basic"):
        get_model("skresnet18").config.blocks(drop_block_rate=0.1)


def test_training_draws_as_timm_s_with_one_seed():
    """With the same torch seed, se_torch's training pass draws timm's masks: the outputs of
    timm's model and of se_torch's, on the same weights, are bit for bit equal."""
    timm = pytest.importorskip("timm")
    for name in ("seresnext26d_32x4d", "resnet10t"):
        ours = randomize_(
            se_torch.create_model(name, **RATES), np.random.default_rng(2), torch.float64
        )
        theirs = timm.create_model(name, **RATES).double()
        theirs.load_state_dict(ours.state_dict())
        x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
        outs = []
        for model in (ours.train(), theirs.train()):
            torch.manual_seed(11)
            outs.append(model(x))
        assert torch.equal(*outs), name
