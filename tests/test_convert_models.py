"""Converting one's own models: PyTorch models with free names, nn.Sequential nesting, every layer
type the converter knows, and their Flax twins written the natural way (linen and NNX). Outputs
agree (float64 to rounding level, float32 within tolerances next to each case), round trips are
bit-exact, and ambiguity, strictness and dropped counters are errors or reports."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

import se_flax
import se_torch
from se_convert import (
    Child,
    Context,
    ConversionError,
    DroppedTensorsWarning,
    Rule,
    Tensor,
    flax_to_torch,
    torch_to_flax,
    update_nnx,
)
from se_flax import nnx as se_nnx
from tests.helpers import assert_trees_close, flatten, randomize_


@pytest.fixture(autouse=True)
def _standard_promotion():
    """Flax's own norms (linen and NNX) compute with float32 statistics whatever the input's
    dtype, which the suite's strict promotion refuses in float64."""
    with jax.numpy_dtype_promotion("standard"):
        yield


# ------------------------------------------------------------------ the models


class TorchNet(nn.Module):
    """A user's CNN, names of its own (the issue's example), with SE and SK inside."""

    def __init__(self, sk: bool = True):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(16)
        self.attn = se_torch.SqueezeExcite(16, rd_channels=4)
        self.sk = se_torch.SelectiveKernel(16, 16) if sk else None
        self.proj = nn.Conv2d(16, 32, 1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.attn(torch.relu(self.norm(self.stem(x))))
        if self.sk is not None:
            x = self.sk(x)
        return self.head(self.proj(x).mean((2, 3)))


class FlaxNet(linen.Module):
    """Its linen twin, written the natural way; the 1x1 ``proj`` as a Conv or a Dense."""

    norm_layer: Any = se_flax.BatchNorm
    proj_dense: bool = False
    param_dtype: Any = jnp.float32

    @linen.compact
    def __call__(self, x, train: bool = False):
        pd = {"param_dtype": self.param_dtype}
        x = linen.Conv(16, (3, 3), padding=1, use_bias=False, name="stem", **pd)(x)
        x = self.norm_layer(use_running_average=not train, name="norm", **pd)(x)
        x = se_flax.SqueezeExcite(rd_channels=4, name="attn", **pd)(linen.relu(x))
        x = se_flax.SelectiveKernel(16, name="sk", **pd)(x, train)
        if self.proj_dense:
            x = linen.Dense(32, name="proj", **pd)(x)
        else:
            x = linen.Conv(32, (1, 1), name="proj", **pd)(x)
        return linen.Dense(10, name="head", **pd)(x.mean((1, 2)))


class NnxNet(nnx.Module):
    """The NNX twin (no SK: its NNX twin comes with the NNX backbones)."""

    def __init__(self, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        pd = {"param_dtype": param_dtype, "rngs": rngs}
        self.stem = nnx.Conv(3, 16, (3, 3), padding=1, use_bias=False, **pd)
        self.norm = nnx.BatchNorm(16, **pd)
        self.attn = se_nnx.SqueezeExcite(16, rd_channels=4, **pd)
        self.proj = nnx.Conv(16, 32, (1, 1), **pd)
        self.head = nnx.Linear(32, 10, **pd)

    def __call__(self, x):
        x = self.attn(nnx.relu(self.norm(self.stem(x))))
        return self.head(self.proj(x).mean((1, 2)))


class TorchSequential(nn.Module):
    """nn.Sequential nesting with grouped, dilated and strided convolutions."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(4, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=4, bias=False),
            nn.Sequential(nn.Conv2d(8, 12, 1), nn.ReLU()),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(12 * 4 * 3, 5))

    def forward(self, x):
        y = self.features(x)  # NCHW: flatten in Flax's order (H, W, C) to share one Linear
        return self.classifier(y.permute(0, 2, 3, 1))


class FlaxSequential(linen.Module):
    """Linen's nn.Sequential, in setup as Flax recommends, names its children layers_0,
    layers_1, ... by their index (activations count)."""

    param_dtype: Any = jnp.float32

    def setup(self):
        pd = {"param_dtype": self.param_dtype}
        self.features = linen.Sequential(
            [
                linen.Conv(8, (3, 3), padding=1, **pd),
                linen.BatchNorm(use_running_average=True, **pd),
                linen.relu,
                linen.Conv(
                    8,
                    (3, 3),
                    strides=2,
                    padding=2,
                    kernel_dilation=2,
                    feature_group_count=4,
                    use_bias=False,
                    **pd,
                ),
                linen.Sequential([linen.Conv(12, (1, 1), **pd), linen.relu]),
            ]
        )
        self.classifier_1 = linen.Dense(5, **pd)

    def __call__(self, x):
        y = self.features(x)
        return self.classifier_1(y.reshape(y.shape[0], -1))


class TorchMixed(nn.Module):
    """Tokens and volumes: Embedding, LayerNorm, GroupNorm, Conv1d, Conv3d, ConvTranspose2d."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.ln = nn.LayerNorm(8)
        self.mix = nn.Conv1d(8, 12, 3, padding=2, dilation=2)
        self.gn = nn.GroupNorm(3, 12)
        self.vol = nn.Conv3d(2, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1)

    def forward(self, tokens, volume):
        t = self.ln(self.embed(tokens)).transpose(1, 2)  # (N, C, L)
        t = self.gn(self.mix(t))
        v = self.vol(volume)  # (N, 4, D, H, W)
        return t, self.up(v.mean(2))


class FlaxMixed(linen.Module):
    param_dtype: Any = jnp.float32

    @linen.compact
    def __call__(self, tokens, volume):
        pd = {"param_dtype": self.param_dtype}
        t = linen.Embed(20, 8, name="embed", **pd)(tokens)
        t = linen.LayerNorm(epsilon=1e-5, name="ln", **pd)(t)  # Flax's default eps is 1e-6
        t = linen.Conv(12, (3,), padding=2, kernel_dilation=2, name="mix", **pd)(t)
        t = linen.GroupNorm(num_groups=3, epsilon=1e-5, name="gn", **pd)(t)
        v = linen.Conv(4, (3, 3, 3), padding=1, name="vol", **pd)(volume)
        # PyTorch's padding p and output_padding q are (k - 1 - p, k - 1 - p + q) here
        up = linen.ConvTranspose(
            6, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)), transpose_kernel=True, **pd
        )
        return t, up(v.mean(1))


class TorchHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):  # x (N, 6)
        return self.fc(x)


class FlaxConvHead(linen.Module):
    """A Linear's twin as a 1x1 Conv on (N, 1, 1, C)."""

    param_dtype: Any = jnp.float32

    @linen.compact
    def __call__(self, x):
        y = linen.Conv(4, (1, 1), name="fc", param_dtype=self.param_dtype)(x[:, None, None, :])
        return y[:, 0, 0, :]


# ------------------------------------------------------------------ the cases


def nhwc(x):
    return np.moveaxis(x, 1, -1)


@dataclass(frozen=True)
class Case:
    """A PyTorch model, its Flax twin and how both are called; tolerances measured for it."""

    name: str
    torch_model: Callable[[], nn.Module]
    flax_model: Callable[[Any], linen.Module]  # takes param_dtype
    inputs: Callable[[np.random.Generator], tuple]  # PyTorch's inputs (NumPy)
    to_flax: Callable[[tuple], tuple]  # the same inputs in Flax's layout
    from_torch: Callable[[Any], Any]  # PyTorch's outputs in Flax's layout
    f32: float  # float32: |diff| <= f32 * (1 + |expected|)
    rename: Any = None
    dropped: tuple[str, ...] = ()  # counters a target without them drops (and reports)


def _images(rng):
    return (rng.standard_normal((2, 3, 9, 7)),)


# float32 bounds: |diff| <= f32 * (1 + |expected|); measured worst over 10 seeds in the comment.
CASES = [
    # Measured 3.5e-7.
    Case(
        "cnn",
        TorchNet,
        lambda dt: FlaxNet(param_dtype=dt),
        _images,
        lambda xs: (nhwc(xs[0]),),
        lambda y: y,
        f32=1e-5,
    ),
    # Measured 3.4e-7.
    Case(
        "cnn-flax-batchnorm-dense-proj",
        TorchNet,
        lambda dt: FlaxNet(linen.BatchNorm, proj_dense=True, param_dtype=dt),
        _images,
        lambda xs: (nhwc(xs[0]),),
        lambda y: y,
        f32=1e-5,
        dropped=("norm.num_batches_tracked",),
    ),
    # Measured 1.4e-7.
    Case(
        "sequential",
        TorchSequential,
        lambda dt: FlaxSequential(param_dtype=dt),
        lambda rng: (rng.standard_normal((2, 4, 8, 6)),),
        lambda xs: (nhwc(xs[0]),),
        lambda y: y,
        f32=1e-5,
        # numbered children join their parent's name (features.4.0 is features_4_0 by
        # default); linen's Sequential calls them features/layers_4/layers_0
        rename=[
            (r"^features_(\d+)_(\d+)$", r"features/layers_\1/layers_\2"),
            (r"^features_(\d+)$", r"features/layers_\1"),
        ],
        dropped=("features.1.num_batches_tracked",),
    ),
    # Measured 4.2e-7.
    Case(
        "embedding-norms-conv1d-conv3d-transpose",
        TorchMixed,
        lambda dt: FlaxMixed(param_dtype=dt),
        lambda rng: (rng.integers(0, 20, (2, 11)), rng.standard_normal((2, 2, 5, 6, 7))),
        lambda xs: (xs[0], np.moveaxis(xs[1], 1, -1)),
        lambda ys: (ys[0].transpose(0, 2, 1), nhwc(ys[1])),
        f32=1e-5,
        rename=lambda path: "ConvTranspose_0" if path == "up" else path,
    ),
    # Measured 0: the same single dot product on both sides.
    Case(
        "linear-as-1x1-conv",
        TorchHead,
        lambda dt: FlaxConvHead(param_dtype=dt),
        lambda rng: (rng.standard_normal((3, 6)),),
        lambda xs: xs,
        lambda y: y,
        f32=1e-6,
    ),
]


def torch_outputs(model: nn.Module, inputs: tuple, dtype: torch.dtype):
    args = [
        torch.from_numpy(a) if a.dtype.kind == "i" else torch.from_numpy(a).to(dtype)
        for a in inputs
    ]
    with torch.no_grad():
        return jax.tree.map(lambda t: t.numpy(), model.eval()(*args))


def flax_inputs(case: Case, inputs: tuple, dtype) -> tuple:
    return tuple(a if a.dtype.kind == "i" else a.astype(dtype) for a in case.to_flax(inputs))


def convert(case: Case, tmodel: nn.Module, target: Any) -> dict:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        variables = torch_to_flax(tmodel, target=target, rename=case.rename)
    reports = [w for w in caught if issubclass(w.category, DroppedTensorsWarning)]
    if case.dropped:  # one report naming every dropped counter, and nothing else
        [report] = reports
        message = str(report.message)
        assert message.endswith(", ".join(case.dropped)), message
    else:
        assert not reports
    return variables


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_own_models_convert_and_compute_the_same(case, dtype, rng):
    tmodel = randomize_(case.torch_model(), rng, getattr(torch, dtype))
    fmodel = case.flax_model(jnp.dtype(dtype))
    inputs = case.inputs(rng)
    target = jax.eval_shape(fmodel.init, jax.random.key(0), *flax_inputs(case, inputs, dtype))
    # Flax's own BatchNorm creates float32 statistics whatever its param_dtype; a float64 model
    # is given float64 ones (the converter never changes a dtype)
    target = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, dtype) if s.dtype == jnp.float32 else s, target
    )
    variables = convert(case, tmodel, target)
    assert jax.tree.structure(variables) == jax.tree.structure(target)
    expected = case.from_torch(torch_outputs(tmodel, inputs, getattr(torch, dtype)))
    got = jax.jit(fmodel.apply)(variables, *flax_inputs(case, inputs, dtype))
    tol = 1e-12 if dtype == "float64" else case.f32
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        assert_trees_close(g, e, rtol=tol, atol=tol, what=case.name)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_own_models_round_trip_bit_exactly(case, rng):
    """torch -> flax -> torch and flax -> torch -> flax: every tensor, every bit (Flax's own
    BatchNorm has no counter: the module keeps its own, as asked)."""
    source = randomize_(case.torch_model(), rng, torch.float32)
    fmodel = case.flax_model(jnp.float32)
    inputs = flax_inputs(case, case.inputs(rng), np.float32)
    target = jax.eval_shape(fmodel.init, jax.random.key(0), *inputs)
    variables = convert(case, source, target)
    back = flax_to_torch(
        variables, case.torch_model(), rename=case.rename, keep_counters=bool(case.dropped)
    )
    for key, tensor in source.state_dict().items():
        if key not in case.dropped:
            assert torch.equal(back.state_dict()[key], tensor), key
    again = convert(case, back, target)
    for key, leaf in flatten(variables).items():
        np.testing.assert_array_equal(np.asarray(flatten(again)[key]), np.asarray(leaf), key)


def test_train_mode_statistics_of_an_own_model(rng):
    """se_flax.BatchNorm in one's own model keeps PyTorch's statistics through a train pass."""
    tmodel = randomize_(TorchNet(), rng, torch.float64).train()
    fmodel = FlaxNet(param_dtype=jnp.float64)
    x = rng.standard_normal((3, 3, 9, 7))
    variables = torch_to_flax(
        tmodel, target=jax.eval_shape(fmodel.init, jax.random.key(0), nhwc(x))
    )
    train = functools.partial(fmodel.apply, train=True, mutable=["batch_stats"])
    y, updates = jax.jit(train)(variables, nhwc(x))
    with torch.no_grad():
        expected = tmodel(torch.from_numpy(x)).numpy()
    assert_trees_close(y, expected, rtol=1e-12, atol=1e-12, what="train logits")
    t_stats = torch_to_flax(tmodel)["batch_stats"]
    assert_trees_close(updates["batch_stats"], t_stats, rtol=1e-12, atol=1e-12, what="stats")


# ------------------------------------------------------------------ NNX models


def test_nnx_models_convert_both_ways(rng):
    """nnx.Conv / nnx.BatchNorm / nnx.Linear with an NNX SE: the NNX module is the target and
    the source; nnx.BatchNorm has no counter, so PyTorch -> NNX drops (and reports) it and
    NNX -> PyTorch keeps the module's own only when asked."""
    tmodel = randomize_(TorchNet(sk=False), rng, torch.float32)  # nnx.BatchNorm: float32 stats
    model = NnxNet(rngs=nnx.Rngs(0))
    with pytest.warns(DroppedTensorsWarning, match=r"norm.num_batches_tracked"):
        variables = torch_to_flax(tmodel, target=model)
    update_nnx(model, variables)
    model.eval()
    x = rng.standard_normal((2, 3, 9, 7)).astype(np.float32)
    with torch.no_grad():
        expected = tmodel.eval()(torch.from_numpy(x)).numpy()
    # float32, measured worst 2.1e-7 over 10 seeds
    assert_trees_close(model(nhwc(x).astype(np.float32)), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConversionError, match=r"norm.num_batches_tracked \(the variables'"):
        flax_to_torch(model, TorchNet(sk=False))
    back = flax_to_torch(model, TorchNet(sk=False), keep_counters=True)
    for key, tensor in tmodel.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(back.state_dict()[key], tensor), key


def test_nnx_sequential_children_by_rename(rng):
    """nnx.Sequential keeps its children under ``layers/<i>``: one rename maps PyTorch's."""
    torch_seq = randomize_(
        nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)), rng, torch.float64
    )
    nnx_seq = nnx.Sequential(
        nnx.Linear(5, 7, param_dtype=jnp.float64, rngs=nnx.Rngs(0)),
        nnx.relu,
        nnx.Linear(7, 3, param_dtype=jnp.float64, rngs=nnx.Rngs(1)),
    )
    rename = [(r"^(\d+)$", r"layers/\1")]
    update_nnx(nnx_seq, torch_to_flax(torch_seq, target=nnx_seq, rename=rename))
    x = rng.standard_normal((4, 5))
    with torch.no_grad():
        expected = torch_seq(torch.from_numpy(x)).numpy()
    assert_trees_close(nnx_seq(x), expected, rtol=1e-12, atol=1e-12, what="nnx sequential")
    back = flax_to_torch(
        nnx_seq, nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double(), rename=rename
    )
    assert torch.equal(back[2].weight, torch_seq[2].weight)


# ------------------------------------------------------------------ rules= and rename=


class Scale(nn.Module):
    """A layer of one's own: a learned per-channel scale."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x):
        return x * self.weight[:, None, None]


class TorchScaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 6, 3)
        self.gain = Scale(6)

    def forward(self, x):
        return self.gain(self.body(x))


class FlaxScaled(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = linen.Conv(6, (3, 3), padding="VALID", name="body", param_dtype=jnp.float64)(x)
        return x * self.param("scale", linen.initializers.ones, (6,), jnp.float64)


SCALE_RULE = Rule("scale", None, ("Scale",), {"weight": Tensor("params", "scale")})


def test_a_layer_of_ones_own_needs_a_rule_and_converts_with_it(rng):
    tmodel = randomize_(TorchScaled(), rng, torch.float64)
    with pytest.raises(ConversionError, match=r"gain.weight: no conversion rule for a Scale"):
        torch_to_flax(tmodel)
    x = rng.standard_normal((2, 3, 7, 8))
    target = jax.eval_shape(FlaxScaled().init, jax.random.key(0), nhwc(x))
    # the Flax model keeps its scale at the top level: rename the module path "gain" to ""
    variables = torch_to_flax(tmodel, target=target, rules=[SCALE_RULE], rename=[("^gain$", "")])
    with torch.no_grad():
        expected = nhwc(tmodel(torch.from_numpy(x)).numpy())
    assert_trees_close(FlaxScaled().apply(variables, nhwc(x)), expected, rtol=1e-12, atol=1e-12)
    back = flax_to_torch(
        variables, TorchScaled().double(), rules=[SCALE_RULE], rename=[("^gain$", "")]
    )
    assert torch.equal(back.gain.weight, tmodel.gain.weight)


class MySE(nn.Module):
    """An SE clone of one's own: 1x1 convs named like timm's."""

    def __init__(self, c: int, rd: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, rd, 1), nn.Conv2d(rd, c, 1)


def test_a_context_settles_an_own_layer_without_a_target(rng):
    module = randomize_(MySE(16, 4), rng, torch.float32)
    with pytest.raises(ConversionError, match=r"fc1: ambiguous without a target"):
        torch_to_flax(module)
    dense = Child(rule="Conv2d as Dense (1x1)")
    context = Context("my SE", ("MySE",), {"fc1": dense, "fc2": dense})
    variables = torch_to_flax(module, rules=[context])
    assert variables["params"]["fc1"]["kernel"].shape == (16, 4)
    x = jnp.asarray(rng.standard_normal((2, 5, 5, 16)), jnp.float32)
    se_flax.SqueezeExcite(rd_channels=4).apply(variables, x)  # the SE twin takes them


def test_a_context_asking_for_a_rule_of_another_type_is_an_error():
    class LinearSE(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(4, 2)

    dense = Child(rule="Conv2d as Dense (1x1)")
    with pytest.raises(ConversionError, match=r"fc1: its parent's context asks for rule"):
        torch_to_flax(LinearSE(), rules=[Context("linear se", ("LinearSE",), {"fc1": dense})])


def test_rename_and_rules_arguments_are_checked():
    with pytest.raises(TypeError, match=r"rules= takes Rule and Context objects"):
        torch_to_flax(TorchHead(), rules=["scale"])
    with pytest.raises(TypeError, match=r"rename must return a str path"):
        torch_to_flax(TorchHead(), rename=lambda path: None)


# ------------------------------------------------------------------ strictness


def test_every_missing_unexpected_and_misshaped_leaf_is_listed():
    """Against a target, one error lists everything: a layer the target lacks, one it has that
    the model lacks, and a shape that fits none of the layer's layouts."""
    target = jax.eval_shape(
        FlaxNet(proj_dense=True).init, jax.random.key(0), jnp.ones((1, 9, 7, 3))
    )
    target["params"]["extra"] = {"kernel": jax.ShapeDtypeStruct((2, 2), jnp.float32)}
    del target["params"]["head"]
    target["params"]["proj"]["kernel"] = jax.ShapeDtypeStruct((16, 31), jnp.float32)
    with pytest.raises(ConversionError) as info:
        torch_to_flax(TorchNet(), target=target)
    error = info.value
    assert error.missing == ["params/extra/kernel (in the target)"]
    assert sorted(error.unexpected) == [
        "params/head/bias (not in the target)",
        "params/head/kernel (not in the target)",
    ]
    [mismatch] = error.mismatched
    assert mismatch.startswith(
        "params/proj/kernel: (1, 1, 16, 32) float32, the target has (16, 31)"
    )


# ------------------------------------------------------------------ module or state_dict: one tree


# The seed article's own class, verbatim (its lowercase l in SElayer included; fmt: off keeps
# its spacing, the noqa is the only addition).
# fmt: off
class SElayer(nn.Module):
    def __init__(self, channel, reduction=16):
        super(SElayer,self).__init__()  # noqa: UP008 - verbatim
        self.avg_pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction, bias=False),
            nn.ReLU(inplace = True),
            nn.Linear(channel // reduction, channel, bias=False),
            nn.Sigmoid()
            )
    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)
# fmt: on


class ChannelGate(nn.Module):
    """The classic recipe under a name of one's own that no Context knows: only the name table's
    classic rows (``fc.0``, ``fc.2`` -> ``fc1``, ``fc2``) name its layers."""

    def __init__(self, channel: int, reduction: int = 16):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction, bias=False),
            nn.ReLU(),
            nn.Linear(channel // reduction, channel, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.fc(x.mean((2, 3)))[:, :, None, None]


class TorchClassicNet(nn.Module):
    """A user's net every name of which the name table knows (ResNet's conv1/bn1/fc, the classic
    SE's fc.0/fc.2 inside a class of one's own)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.se = ChannelGate(32, 4)
        self.fc = nn.Linear(32, 10)


CLASSIC = {  # the classic recipe's PyTorch classes, each taking (channel, reduction)
    "seed-SElayer": SElayer,
    "se_torch.SELayer": se_torch.SELayer,
    "se_torch.SElayer": se_torch.SElayer,
    "own-class-no-context": ChannelGate,
}


def assert_same_bits(got: Any, want: Any, what: str = "") -> None:
    """Same paths, and every leaf of the same dtype, shape and bits."""
    got, want = flatten(got), flatten(want)
    assert got.keys() == want.keys(), f"{what}: {sorted(got)} != {sorted(want)}"
    for key in want:
        g, w = np.asarray(got[key]), np.asarray(want[key])
        assert (g.dtype, g.shape) == (w.dtype, w.shape), f"{what}: {key}"
        assert g.tobytes() == w.tobytes(), f"{what}: {key}: the bits differ"


def assert_same_state_dict(got: nn.Module, want: dict[str, torch.Tensor], what: str) -> None:
    state = got.state_dict()
    assert list(state) == list(want), what
    for key, tensor in want.items():
        assert state[key].dtype == tensor.dtype, f"{what}: {key}"
        assert state[key].numpy().tobytes() == tensor.numpy().tobytes(), f"{what}: {key}"


@pytest.mark.parametrize("name", CLASSIC)
def test_a_classic_module_and_its_state_dict_convert_to_one_tree(name, rng):
    """The module path (types) and the state_dict path (names) give the same tree, bit for bit,
    in se_flax.SELayer's layout: it runs in linen and in NNX as the PyTorch module does."""
    make = CLASSIC[name]
    tmodule = randomize_(make(64, 16), rng, torch.float64)
    from_module = torch_to_flax(tmodule)
    from_state_dict = torch_to_flax(tmodule.state_dict())
    assert_same_bits(from_module, from_state_dict, name)
    assert sorted(flatten(from_module)) == ["params/fc1/kernel", "params/fc2/kernel"]
    # a target in se_flax.SELayer's layout (shapes, or the NNX twin) is met either way too
    x = rng.standard_normal((2, 64, 5, 6))
    linen_se = se_flax.SELayer(reduction=16, param_dtype=jnp.float64)
    shapes = jax.eval_shape(linen_se.init, jax.random.key(0), nhwc(x))
    nnx_se = se_nnx.SELayer(64, 16, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    for target in (shapes, nnx_se):
        assert_same_bits(torch_to_flax(tmodule, target=target), from_module, name)
        assert_same_bits(torch_to_flax(tmodule.state_dict(), target=target), from_module, name)
    with torch.no_grad():
        expected = nhwc(tmodule(torch.from_numpy(x)).numpy())
    got = jax.jit(linen_se.apply)(from_module, nhwc(x))
    assert_trees_close(got, expected, rtol=1e-12, atol=1e-12, what=f"{name} linen")
    update_nnx(nnx_se, from_state_dict)
    assert_trees_close(nnx_se(nhwc(x)), expected, rtol=1e-12, atol=1e-12, what=f"{name} nnx")


@pytest.mark.parametrize("name", CLASSIC)
def test_a_classic_module_round_trips_every_way_bit_for_bit(name, rng):
    """torch (module or state_dict) -> Flax -> a fresh module; Flax (linen variables or an NNX
    module) -> the module -> Flax (from the module or its state_dict): every bit comes back."""
    make = CLASSIC[name]
    tmodule = randomize_(make(64, 16), rng, torch.float64)
    original = {k: v.clone() for k, v in tmodule.state_dict().items()}
    for kind, source in (("module", tmodule), ("state_dict", tmodule.state_dict())):
        back = flax_to_torch(torch_to_flax(source), make(64, 16).double())
        assert_same_state_dict(back, original, f"{name} from the {kind}")
    x = jnp.zeros((1, 3, 3, 64), jnp.float64)
    linen_variables = se_flax.SELayer(16, param_dtype=jnp.float64).init(
        jax.random.key(int(rng.integers(2**31))), x
    )
    nnx_module = se_nnx.SELayer(
        64, 16, param_dtype=jnp.float64, rngs=nnx.Rngs(int(rng.integers(2**31)))
    )
    nnx_variables = {"params": nnx.to_pure_dict(nnx.state(nnx_module, nnx.Param))}
    for kind, variables, want in (
        ("linen", linen_variables, linen_variables),
        ("nnx", nnx_module, nnx_variables),
    ):
        filled = flax_to_torch(variables, make(64, 16).double())
        assert_same_bits(torch_to_flax(filled), want, f"{name} {kind} via the module")
        assert_same_bits(torch_to_flax(filled.state_dict()), want, f"{name} {kind} via state_dict")


ZOO = [(c.name, c.torch_model, c.rename) for c in CASES] + [
    ("classic-net", TorchClassicNet, None),
    ("seed-SElayer", lambda: SElayer(64), None),
]


@pytest.mark.parametrize("name,make,rename", ZOO, ids=[z[0] for z in ZOO])
def test_module_and_state_dict_give_one_tree_or_the_state_dict_asks_for_the_module(
    name, make, rename, rng
):
    """The tree never depends on whether the module or its state_dict was given: where the names
    decide, both give it bit for bit; where they cannot, the state_dict is an error that says to
    pass the module, and names every key it could not place."""
    tmodule = randomize_(make(), rng, torch.float64)
    from_module = torch_to_flax(tmodule, rename=rename)
    try:
        from_state_dict = torch_to_flax(tmodule.state_dict(), rename=rename)
    except ConversionError as error:
        assert error.unexpected and not error.missing and not error.mismatched, str(error)
        for problem in error.unexpected:
            assert "no conversion rule for module" in problem, problem
            assert "pass the torch.nn.Module itself (torch_to_flax(module))" in problem, problem
        placed = {p.partition(":")[0] for p in error.unexpected}
        assert placed <= set(tmodule.state_dict()), placed
    else:
        assert_same_bits(from_state_dict, from_module, name)
