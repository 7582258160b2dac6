"""Behaviour of the SE modules themselves: layouts, transforms, dtypes and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

import se_flax
import se_torch
from se_convert import flax_to_torch, torch_to_flax, update_nnx
from se_flax import nnx as se_nnx
from tests.helpers import assert_trees_close


class SeedSElayer(nn.Module):
    """The classic recipe, verbatim from ../shared/seed/ (the oracle for se_torch.SELayer)."""

    def __init__(self, channel, reduction=16):
        super(SeedSElayer, self).__init__()  # noqa: UP008 - verbatim
        self.avg_pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channel // reduction, channel, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


# ---------------------------------------------------------------- PyTorch layouts


@pytest.mark.parametrize("channel,reduction", [(64, 16), (96, 8), (20, 3)])
def test_selayer_reproduces_seed_recipe_exactly(channel, reduction):
    seed = SeedSElayer(channel, reduction)
    ours = se_torch.SELayer(channel, reduction)
    assert list(ours.state_dict()) == list(seed.state_dict()) == ["fc.0.weight", "fc.2.weight"]
    ours.load_state_dict(seed.state_dict(), strict=True)
    x = torch.randn(3, channel, 7, 5)
    assert torch.equal(ours(x), seed(x))  # bit-identical: same operations in the same order
    assert se_torch.SElayer is se_torch.SELayer


def test_squeeze_excite_has_timm_torchvision_layout():
    se = se_torch.SqueezeExcite(64)
    shapes = {k: tuple(v.shape) for k, v in se.state_dict().items()}
    assert shapes == {
        "fc1.weight": (8, 64, 1, 1),
        "fc1.bias": (8,),
        "fc2.weight": (64, 8, 1, 1),
        "fc2.bias": (64,),
    }
    assert list(se_torch.SqueezeExcite(64, bias=False).state_dict()) == ["fc1.weight", "fc2.weight"]


class TorchvisionStyleSE(nn.Module):
    """torchvision.ops.SqueezeExcitation's structure: avgpool, fc1, fc2, activations."""

    def __init__(self, input_channels: int, squeeze_channels: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Sigmoid()

    def forward(self, x):
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


def test_torchvision_layout_loads_and_matches():
    tv = TorchvisionStyleSE(48, 12)
    ours = se_torch.SqueezeExcite(48, rd_channels=12)
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 48, 6, 5)
    torch.testing.assert_close(ours(x), tv(x), rtol=1e-6, atol=1e-7)


def test_real_timm_semodule_loads_and_matches():
    timm_layers = pytest.importorskip("timm.layers")
    for channels in (64, 256, 20):
        ref = timm_layers.SEModule(channels)
        ours = se_torch.SqueezeExcite(channels)
        ours.load_state_dict(ref.state_dict(), strict=True)
        x = torch.randn(2, channels, 5, 7)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-6, atol=1e-7)


def test_real_torchvision_squeeze_excitation_loads_and_matches():
    ops = pytest.importorskip("torchvision.ops")
    ref = ops.SqueezeExcitation(48, 12)
    ours = se_torch.SqueezeExcite(48, rd_channels=12)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 48, 6, 5)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-6, atol=1e-7)


def test_torch_nd_inputs(rng):
    se = se_torch.SqueezeExcite(12, rd_channels=3).double()
    x3 = torch.from_numpy(rng.standard_normal((2, 12, 4, 5, 3)))
    # A 3-D input is the 2-D block applied to the pooled volume: compare with an explicit 2-D view.
    flat = x3.reshape(2, 12, 4, 15)
    assert torch.allclose(se(x3).reshape(2, 12, 4, 15), se(flat), rtol=0, atol=1e-12)
    assert se(x3[..., 0, 0]).shape == (2, 12, 4)


# ---------------------------------------------------------------- Flax: linen vs NNX, transforms


def _linen_and_nnx(channels, rng, **options):
    linen = se_flax.SqueezeExcite(param_dtype=jnp.float64, **options)
    x = jnp.asarray(rng.standard_normal((2, 5, 6, channels)))
    variables = linen.init(jax.random.key(int(rng.integers(2**31))), x)
    variables = jax.tree.map(lambda a: a + jnp.asarray(rng.normal(0, 0.3, a.shape)), variables)
    model = se_nnx.SqueezeExcite(channels, rngs=nnx.Rngs(1), param_dtype=jnp.float64, **options)
    return linen, variables, update_nnx(model, variables), x


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"use_bias": False, "gate_fn": jax.nn.hard_sigmoid},
        {"rd_channels": 5, "act_fn": jax.nn.silu},
    ],
)
def test_linen_and_nnx_are_identical(options, rng):
    linen, variables, model, x = _linen_and_nnx(24, rng, **options)
    np.testing.assert_array_equal(model(x), linen.apply(variables, x))
    g_linen = jax.grad(lambda v: jnp.sum(linen.apply(v, x) ** 2))(variables)
    g_nnx = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
    assert_trees_close(
        {"params": nnx.to_pure_dict(g_nnx)}, g_linen, rtol=0, atol=1e-12, what="linen vs nnx grads"
    )


def test_jit_grad_vmap_linen(rng):
    linen, variables, _, x = _linen_and_nnx(16, rng)
    eager = linen.apply(variables, x)
    assert_trees_close(jax.jit(linen.apply)(variables, x), eager, rtol=0, atol=1e-12)
    batched = jax.vmap(linen.apply, in_axes=(None, 0))(variables, x[:, None])
    assert_trees_close(batched[:, 0], eager, rtol=0, atol=1e-12)
    g = jax.jit(jax.grad(lambda v, x: jnp.sum(linen.apply(v, x) * x)))(variables, x)
    # Central finite difference on one weight checks the gradient is the true one.
    eps, w = 1e-6, variables["params"]["fc1"]["kernel"]
    loss = lambda k: jnp.sum(  # noqa: E731
        linen.apply(
            {
                "params": {
                    **variables["params"],
                    "fc1": {"kernel": k, "bias": variables["params"]["fc1"]["bias"]},
                }
            },
            x,
        )
        * x
    )
    fd = (loss(w.at[3, 1].add(eps)) - loss(w.at[3, 1].add(-eps))) / (2 * eps)
    assert abs(fd - g["params"]["fc1"]["kernel"][3, 1]) < 1e-6


def test_jit_grad_vmap_nnx(rng):
    _, _, model, x = _linen_and_nnx(16, rng)
    eager = model(x)
    graphdef, state = nnx.split(model)
    apply = lambda s, x: nnx.merge(graphdef, s)(x)  # noqa: E731
    assert_trees_close(jax.jit(apply)(state, x), eager, rtol=0, atol=1e-12)
    assert_trees_close(
        jax.vmap(apply, in_axes=(None, 0))(state, x[:, None])[:, 0], eager, rtol=0, atol=1e-12
    )
    assert_trees_close(nnx.jit(lambda m, x: m(x))(model, x), eager, rtol=0, atol=1e-12)
    g = jax.jit(jax.grad(lambda s: jnp.sum(apply(s, x) ** 2)))(state)
    assert jax.tree.structure(g) == jax.tree.structure(state)


@pytest.mark.parametrize("spatial", [(7,), (4, 5), (3, 4, 5)])
def test_flax_any_spatial_rank(spatial, rng):
    linen = se_flax.SqueezeExcite(rd_channels=4)
    x = jnp.asarray(rng.standard_normal((2, *spatial, 12)), jnp.float32)
    variables = linen.init(jax.random.key(0), x)
    y = linen.apply(variables, x)
    assert y.shape == x.shape
    model = update_nnx(se_nnx.SqueezeExcite(12, rd_channels=4, rngs=nnx.Rngs(0)), variables)
    np.testing.assert_array_equal(model(x), y)


# ---------------------------------------------------------------- dtypes


def test_flax_dtypes(rng):
    x = jnp.asarray(rng.standard_normal((2, 4, 4, 32)), jnp.bfloat16)
    se = se_flax.SqueezeExcite(dtype=jnp.bfloat16)
    variables = se.init(jax.random.key(0), x)
    assert jax.tree.leaves(variables)[0].dtype == jnp.float32  # param_dtype default
    assert se.apply(variables, x).dtype == jnp.bfloat16
    se16 = se_flax.SqueezeExcite(dtype=jnp.float16, param_dtype=jnp.float16)
    v16 = se16.init(jax.random.key(0), x.astype(jnp.float16))
    assert all(leaf.dtype == jnp.float16 for leaf in jax.tree.leaves(v16))
    assert se16.apply(v16, x.astype(jnp.float16)).dtype == jnp.float16


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_pooling_accumulates_in_float32(dtype, rng):
    """With identity excitation, out / x is the pooled mean: it must be the float32-accurate mean
    of 4096 values near 1, which a 16-bit running sum gets badly wrong (it stalls)."""
    c, hw = 8, 64
    x = (1 + 0.1 * rng.standard_normal((1, hw, hw, c))).astype(np.float32)
    eye = {"kernel": jnp.eye(c, dtype=dtype)}
    identity = lambda v: v  # noqa: E731
    se = se_flax.SqueezeExcite(
        rd_channels=c,
        use_bias=False,
        act_fn=identity,
        gate_fn=identity,
        dtype=dtype,
        param_dtype=dtype,
    )
    x16 = jnp.asarray(x, dtype)
    exact = np.asarray(x16, np.float64).mean(axis=(1, 2))
    y = se.apply({"params": {"fc1": eye, "fc2": eye}}, x16)
    pooled = np.asarray(y[0, 0, 0], np.float64) / np.asarray(x16[0, 0, 0], np.float64)
    eps = float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(pooled, exact[0], rtol=2 * eps)
    # the PyTorch twin does the same
    tse = se_torch.SqueezeExcite(
        c,
        rd_channels=c,
        bias=False,
        act_layer=nn.Identity,
        gate_layer=nn.Identity,
        dtype=getattr(torch, dtype),
    )
    with torch.no_grad():
        for conv in (tse.fc1, tse.fc2):
            conv.weight.copy_(torch.eye(c)[:, :, None, None])
    xt = torch.from_numpy(np.moveaxis(np.asarray(x16, np.float32), -1, 1)).to(getattr(torch, dtype))
    yt = tse(xt).double().detach().numpy()
    np.testing.assert_allclose(
        yt[0, :, 0, 0] / xt[0, :, 0, 0].double().numpy(), exact[0], rtol=2 * eps
    )


# ---------------------------------------------------------------- bad input


def _torch_modules():
    return [se_torch.SqueezeExcite(8), se_torch.SELayer(8, 2)]


@pytest.mark.parametrize("module", _torch_modules(), ids=["SqueezeExcite", "SELayer"])
def test_torch_bad_input(module):
    with pytest.raises(ValueError, match=r"rank .*got rank 2 \(shape \(2, 8\)\)"):
        module(torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"input has 6 channels .* weights are for 8 channels"):
        module(torch.randn(2, 6, 4, 4))
    with pytest.raises(TypeError, match=r"floating-point input, got dtype torch.int64"):
        module(torch.randint(0, 5, (2, 8, 4, 4)))


def test_selayer_is_2d_only():
    with pytest.raises(ValueError, match=r"rank 4 .* got rank 5"):
        se_torch.SELayer(8, 2)(torch.randn(2, 8, 3, 3, 3))


def test_flax_bad_input(rng):
    se = se_flax.SqueezeExcite()
    x = jnp.asarray(rng.standard_normal((2, 4, 4, 8)), jnp.float32)
    variables = se.init(jax.random.key(0), x)
    model = se_nnx.SqueezeExcite(8, rngs=nnx.Rngs(0))
    for call in (lambda x: se.apply(variables, x), model, lambda x: se.init(jax.random.key(0), x)):
        with pytest.raises(ValueError, match=r"rank >= 3 .*got rank 2 \(shape \(2, 8\)\)"):
            call(x[:, 0, 0])
        with pytest.raises(TypeError, match=r"floating-point input, got dtype int32"):
            call(x.astype(jnp.int32))
    for call in (lambda x: se.apply(variables, x), model):
        with pytest.raises(ValueError, match=r"input has 6 channels .* weights are for 8 channels"):
            call(x[..., :6])
    with pytest.raises(ValueError, match=r"input has 6 channels"):  # also under jit
        jax.jit(se.apply)(variables, x[..., :6])


BAD_OPTIONS = [
    ({"rd_channels": 0}, r"rd_channels must be an integer >= 1, got 0"),
    ({"rd_channels": -3}, r"rd_channels must be an integer >= 1, got -3"),
    ({"rd_channels": 2.5}, r"rd_channels must be an integer >= 1, got 2.5"),
    ({"rd_channels": 4, "rd_ratio": 0.25}, r"not both: got rd_channels=4, rd_ratio=0.25"),
    ({"rd_channels": 4, "rd_divisor": 4}, r"not both: got rd_channels=4, .*rd_divisor=4"),
    ({"rd_ratio": 0.0}, r"rd_ratio must be a finite number > 0, got 0.0"),
    ({"rd_ratio": float("nan")}, r"rd_ratio must be a finite number > 0, got nan"),
    ({"rd_divisor": 0}, r"rd_divisor must be an integer >= 1, got 0"),
]


@pytest.mark.parametrize("options,message", BAD_OPTIONS)
def test_bad_width_options_all_frameworks(options, message):
    with pytest.raises(ValueError, match=message):
        se_torch.SqueezeExcite(16, **options)
    with pytest.raises(ValueError, match=message):
        se_nnx.SqueezeExcite(16, rngs=nnx.Rngs(0), **options)
    with pytest.raises(ValueError, match=message):
        se_flax.SqueezeExcite(**options).init(jax.random.key(0), jnp.ones((1, 2, 2, 16)))


def test_bad_channels_and_reduction():
    with pytest.raises(ValueError, match=r"channels must be an integer >= 1, got 0"):
        se_torch.SqueezeExcite(0)
    with pytest.raises(ValueError, match=r"channel // reduction must be >= 1, got 8 // 16 = 0"):
        se_torch.SELayer(8)
    with pytest.raises(ValueError, match=r"reduction must be an integer >= 1, got 0"):
        se_torch.SELayer(8, 0)


def test_flax_selayer_is_the_classic_recipe_twin(rng):
    """``se_flax.SELayer(r)`` holds exactly the classic state_dict's tensors (no bias), so
    weights move both ways with no options, bit for bit."""
    fmodule = se_flax.SELayer(4)
    x = jnp.asarray(rng.standard_normal((2, 5, 7, 48)), jnp.float32)
    variables = fmodule.init(jax.random.key(0), x)
    shapes = jax.tree.map(jnp.shape, variables)
    assert shapes == {"params": {"fc1": {"kernel": (48, 12)}, "fc2": {"kernel": (12, 48)}}}
    assert shapes == jax.tree.map(jnp.shape, torch_to_flax(se_torch.SELayer(48, 4)))
    tmodule = flax_to_torch(variables, se_torch.SELayer(48, 4))
    back = torch_to_flax(tmodule)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with torch.no_grad():
        y_torch = tmodule(torch.from_numpy(np.moveaxis(np.array(x), -1, 1).copy())).numpy()
    y_flax = np.moveaxis(np.asarray(fmodule.apply(variables, x)), -1, 1)
    np.testing.assert_allclose(y_flax, y_torch, rtol=1e-6, atol=1e-6)


def test_flax_selayer_bad_options_and_input(rng):
    x = jnp.asarray(rng.standard_normal((2, 4, 4, 8)), jnp.float32)
    with pytest.raises(ValueError, match=r"channels // reduction must be >= 1, got 8 // 16 = 0"):
        se_flax.SELayer().init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"reduction must be an integer >= 1, got 0"):
        se_flax.SELayer(0).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"rank 4 .* got rank 5"):  # 2-D maps, as the recipe
        se_flax.SELayer(2).init(jax.random.key(0), x[..., None, :])
    variables = se_flax.SELayer(2).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"input has 6 channels .* weights are for 8 channels"):
        se_flax.SELayer(2).apply(variables, x[..., :6])
