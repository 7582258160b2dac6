"""NNX front-end: every module and backbone against its linen twin (same variables, same numbers),
NNX conventions (train/eval, transforms, split/merge, vmap), every model name, and bad input.

The NNX modules compute with the linen modules' functions, so the same variables must give the
same bits: executed and compared with ``assert_array_equal`` for every module, and, for the
backbones, shown cheaper and stronger by lowering both to XLA: the programs are identical, so
their results are identical for every input, on every backend.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import se_flax
from se_common import ResNetConfig, get_model, list_models
from se_convert import update_nnx
from se_flax import nnx as se_nnx
from tests.helpers import flatten
from tests.test_resnet_parity import TIMM_OPTIONS


def random_variables(variables: dict, rng: np.random.Generator) -> dict:
    """Every leaf random in its dtype: kernels N(0, 1/fan_in), BatchNorm scales N(1, 0.2^2),
    variances U(0.5, 2), counters in [1, 1000), the rest N(0, 0.5^2)."""

    def leaf(path, v):
        name = str(path[-1].key)
        shape, dtype = v.shape, v.dtype
        if name == "num_batches_tracked":
            return jnp.asarray(rng.integers(1, 1000), dtype)
        if name == "var":
            values = rng.uniform(0.5, 2.0, shape)
        elif name == "scale":
            values = rng.normal(1.0, 0.2, shape)
        elif len(shape) > 1:
            values = rng.normal(0.0, (1 / np.prod(shape[:-1])) ** 0.5, shape)
        else:
            values = rng.normal(0.0, 0.5, shape)
        return jnp.asarray(values, dtype)

    return jax.tree_util.tree_map_with_path(leaf, variables)


def abstract(make: Callable[[], nnx.Module]) -> nnx.Module:
    """An NNX module with abstract variables (no initialisation), to load variables into."""
    return nnx.eval_shape(make)


def assert_equal_trees(actual, expected, what: str) -> None:
    actual, expected = flatten(actual), flatten(expected)
    assert actual.keys() == expected.keys(), what
    for key in actual:
        assert actual[key].dtype == expected[key].dtype, f"{what} {key}"
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=f"{what} {key}")


@dataclass(frozen=True)
class ModuleCase:
    """A linen module and its NNX twin over the same input shape."""

    name: str
    linen: Callable[[bool], linen.Module]  # train -> module (BatchNorm's mode is an attribute)
    nnx: Callable[[nnx.Rngs], nnx.Module]
    shape: tuple[int, ...]
    takes_train: bool = True  # the linen module is called as module(x, train=...)


F64 = {"param_dtype": jnp.float64}
MODULE_CASES = [
    ModuleCase(
        "SqueezeExcite",
        lambda t: se_flax.SqueezeExcite(rd_channels=8, **F64),
        lambda r: se_nnx.SqueezeExcite(24, rd_channels=8, rngs=r, **F64),
        (2, 5, 6, 24),
    ),
    ModuleCase(
        "SqueezeExcite-hard-sigmoid-1d",
        lambda t: se_flax.SqueezeExcite(rd_ratio=0.25, gate_fn=jax.nn.hard_sigmoid, **F64),
        lambda r: se_nnx.SqueezeExcite(
            24, rd_ratio=0.25, gate_fn=jax.nn.hard_sigmoid, rngs=r, **F64
        ),
        (2, 9, 24),
    ),
    ModuleCase(
        "SELayer",
        lambda t: se_flax.SELayer(reduction=4, **F64),
        lambda r: se_nnx.SELayer(24, 4, rngs=r, **F64),
        (2, 5, 6, 24),
    ),
    ModuleCase(
        "EcaModule",
        lambda t: se_flax.EcaModule(**F64),
        lambda r: se_nnx.EcaModule(64, rngs=r, **F64),
        (2, 5, 6, 64),
    ),
    ModuleCase(
        "EffectiveSEModule-maxpool",
        lambda t: se_flax.EffectiveSEModule(add_maxpool=True, **F64),
        lambda r: se_nnx.EffectiveSEModule(24, add_maxpool=True, rngs=r, **F64),
        (2, 5, 6, 24),
    ),
    ModuleCase(
        "CbamModule",
        lambda t: se_flax.CbamModule(spatial_kernel_size=5, **F64),
        lambda r: se_nnx.CbamModule(24, spatial_kernel_size=5, rngs=r, **F64),
        (2, 5, 6, 24),
    ),
    ModuleCase(
        "SelectiveKernel-3-paths",
        lambda t: se_flax.SelectiveKernel(32, (3, 5, 7), stride=2, groups=4, **F64),
        lambda r: se_nnx.SelectiveKernel(24, 32, (3, 5, 7), stride=2, groups=4, rngs=r, **F64),
        (3, 8, 7, 24),
    ),
    ModuleCase(
        "SelectiveKernelAttn",
        lambda t: se_flax.SelectiveKernelAttn(3, 16, **F64),
        lambda r: se_nnx.SelectiveKernelAttn(24, 3, 16, rngs=r, **F64),
        (3, 3, 4, 5, 24),
    ),
    ModuleCase(
        "ConvNormAct",
        lambda t: se_flax.ConvNormAct(32, 3, stride=2, dilation=2, groups=2, **F64),
        lambda r: se_nnx.ConvNormAct(24, 32, 3, stride=2, dilation=2, groups=2, rngs=r, **F64),
        (2, 9, 8, 24),
    ),
    ModuleCase(
        "PointwiseConv",
        lambda t: se_flax.PointwiseConv(32, (2, 2), use_bias=True, **F64),
        lambda r: se_nnx.PointwiseConv(24, 32, (2, 2), use_bias=True, rngs=r, **F64),
        (2, 9, 8, 24),
        takes_train=False,
    ),
    ModuleCase(
        "BatchNorm-odd-momentum",
        lambda t: se_flax.BatchNorm(use_running_average=not t, momentum=0.7, epsilon=1e-3, **F64),
        lambda r: se_nnx.BatchNorm(24, momentum=0.7, epsilon=1e-3, rngs=r, **F64),
        (2, 5, 6, 24),
        takes_train=False,
    ),
]


@pytest.mark.parametrize("case", MODULE_CASES, ids=lambda c: c.name)
def test_module_matches_linen_bit_for_bit(case, rng):
    """Eval output; train output, updated statistics and every gradient: the same bits."""
    x = jnp.asarray(rng.standard_normal(case.shape))
    variables = random_variables(jax.eval_shape(case.linen(True).init, jax.random.key(0), x), rng)
    cot = jnp.asarray(
        rng.standard_normal(jax.eval_shape(case.linen(False).apply, variables, x).shape)
    )
    model = update_nnx(abstract(lambda: case.nnx(nnx.Rngs(0))), variables)
    mode = (lambda t: {"train": t}) if case.takes_train else (lambda t: {})

    # Everything is an argument: a constant closed over would be folded at compile time,
    # differently in two programs.
    def linen_loss(params, stats, x, cot, train):
        out = case.linen(train).apply(
            {"params": params, **stats}, x, mutable=["batch_stats"], **mode(train)
        )
        return jnp.sum(out[0] * cot), out

    def nnx_loss(model, x, cot):
        out = model(x)
        return jnp.sum(out * cot), out

    params, stats = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    model.eval()
    assert_equal_trees(
        nnx.jit(lambda m, x: m(x))(model, x),
        jax.jit(lambda *a: linen_loss(*a, False)[1][0])(params, stats, x, cot),
        f"{case.name} eval",
    )
    model.train()
    grads, (out, updates) = jax.jit(jax.grad(linen_loss, has_aux=True), static_argnums=4)(
        params, stats, x, cot, True
    )
    nnx_grads, nnx_out = nnx.jit(nnx.grad(nnx_loss, has_aux=True))(model, x, cot)
    assert_equal_trees(nnx_out, out, f"{case.name} train")
    assert_equal_trees(nnx.to_pure_dict(nnx_grads), grads, f"{case.name} grads")
    assert_equal_trees(
        nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)),
        updates.get("batch_stats", {}),
        f"{case.name} statistics",
    )
    if updates.get("batch_stats"):  # the update happened, in place
        counts = [v for k, v in flatten(updates["batch_stats"]).items() if "num_batches" in k]
        before = [v for k, v in flatten(variables["batch_stats"]).items() if "num_batches" in k]
        assert [int(a) - int(b) for a, b in zip(counts, before, strict=True)] == [1] * len(counts)


# ------------------------------------------------------------------ backbones: identical programs

RESNET10 = {a: ResNetConfig("basic", (1, 1, 1, 1), attn=a) for a in ("se", "eca", "cbam", "ese")}
BACKBONES = {
    "seresnet18": ("seresnet18", {}),
    "seresnet50": ("seresnet50", {}),
    "seresnext50_32x4d": ("seresnext50_32x4d", {}),
    "skresnet18": ("skresnet18", {}),
    **{f"resnet10+{a}": (RESNET10[a], {}) for a in RESNET10},
    "resnet10+se-features": (RESNET10["se"], {"features_only": True, "out_indices": (0, 2, 4)}),
    "resnet10+se-bfloat16": (RESNET10["se"], {"dtype": jnp.bfloat16}),
    # timm's options: the stem pool as a conv, blur, avg_down (rs-blur); the 3x3 shortcut,
    # halved first convs, the average-pool stem (senet-avg); a basic block's anti-aliasing
    **{f"timm-{k}": (TIMM_OPTIONS[k], {}) for k in ("rs-blur", "senet-avg", "blurpc-basic")},
}


def _models(spec, param_dtype):
    arch, kwargs = spec
    kwargs = {"param_dtype": param_dtype, **kwargs}
    if not kwargs.get("features_only"):
        kwargs["num_classes"] = 7
    if isinstance(arch, ResNetConfig):
        return se_flax.ResNet(arch, **kwargs), lambda: se_nnx.ResNet(
            arch, rngs=nnx.Rngs(0), **kwargs
        )
    return (
        se_flax.create_model(arch, **kwargs),
        lambda: se_nnx.create_model(arch, rngs=nnx.Rngs(0), **kwargs),
    )


def merged(split, variables: dict) -> nnx.Module:
    """``nnx.merge`` of a ``(graphdef, params, stats)`` split with linen-style ``variables``
    put in (what a restore does), inside the current trace."""
    graphdef, *states = split
    states = jax.tree.map(lambda a: a, states)  # fresh copies, owned by this trace
    for state, collection in zip(states, ("params", "batch_stats"), strict=True):
        nnx.replace_by_pure_dict(state, variables[collection])
    return nnx.merge(graphdef, *states)


def _program(fn, *args) -> str:
    """The StableHLO of ``jax.jit(fn)(*args)``, without the function's name and locations."""
    text = jax.jit(fn).lower(*args).as_text(debug_info=False)
    return re.sub(r"^module @\S+", "module", text)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_compiles_to_the_linen_program(name):
    """Eval logits (or features), and train logits + updated statistics + every gradient: the
    NNX model (``nnx.merge``d from the same variables, in ``eval()`` / ``train()``) lowers to
    the very program its linen twin does."""
    param_dtype = jnp.float32 if "bfloat16" in name else jnp.float64
    lin, make_nnx = _models(BACKBONES[name], param_dtype)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32 if "bfloat16" in name else jnp.float64)
    variables = jax.eval_shape(lin.init, jax.random.key(0), x)
    split = nnx.split(abstract(make_nnx), nnx.Param, nnx.BatchStat)
    cot = jax.eval_shape(lambda v, x: lin.apply(v, x), variables, x)

    def nnx_model(variables, train):
        model = merged(split, variables)
        model.train() if train else model.eval()
        return model

    def loss(out, cot):
        return sum(
            jnp.sum(o * c) for o, c in zip(jax.tree.leaves(out), jax.tree.leaves(cot), strict=True)
        )

    def linen_eval(v, x):
        return lin.apply(v, x)

    def nnx_eval(v, x):
        return nnx_model(v, False)(x)

    def linen_train(v, x, cot):
        def f(p):
            out, updates = lin.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"])
            return loss(out, cot), (out, updates["batch_stats"])

        return jax.grad(f, has_aux=True)(v["params"])

    def nnx_train(v, x, cot):
        def f(p):
            model = nnx_model({**v, "params": p}, True)
            out = model(x)
            return loss(out, cot), (out, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))

        return jax.grad(f, has_aux=True)(v["params"])

    assert _program(nnx_eval, variables, x) == _program(linen_eval, variables, x)
    assert _program(nnx_train, variables, x, cot) == _program(linen_train, variables, x, cot)


def test_a_different_program_is_told_apart():
    """The comparison above can fail: another momentum changes the train program."""
    config = RESNET10["se"]
    lin = se_flax.ResNet(config, 7, norm_layer=functools.partial(se_flax.BatchNorm, momentum=0.8))
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lin.init, jax.random.key(0), x)
    split = nnx.split(
        abstract(lambda: se_nnx.ResNet(config, num_classes=7, rngs=nnx.Rngs(0))),
        nnx.Param,
        nnx.BatchStat,
    )

    def nnx_train(v, x):
        model = merged(split, v)
        return model(x), nnx.state(model, nnx.BatchStat)

    def linen_train(v, x):
        return lin.apply(v, x, train=True, mutable=["batch_stats"])

    assert _program(nnx_train, variables, x) != _program(linen_train, variables, x)


# ------------------------------------------------------------------ every model name


def test_every_model_name_builds_its_config(monkeypatch):
    """``se_flax.nnx.create_model`` takes every name ``se_flax.create_model`` takes, with the
    same config (``attn=`` applied); the structures are compared below, per block family."""
    built = {}
    monkeypatch.setattr(se_nnx._resnet, "ResNet", lambda config, **kw: built.setdefault(0, config))
    for family_class in ("EfficientNet", "MobileNetV3"):
        monkeypatch.setattr(
            se_nnx._efficientnet, family_class, lambda config, **kw: built.setdefault(0, config)
        )
    monkeypatch.setattr(se_nnx._regnet, "RegNet", lambda config, **kw: built.setdefault(0, config))
    for name in list_models():
        config = get_model(name).config
        built.clear()
        se_nnx.create_model(name, num_classes=3)
        assert built[0] == config == se_flax.create_model(name).config, name
    built.clear()
    se_nnx.create_model("resnet50", attn="eca")
    assert built[0] == dataclasses.replace(get_model("resnet50").config, attn="eca")


# One name per block family and attention layer (deeper names repeat the same blocks).
FAMILIES = {
    "resnet18": {"attn": "cbam"},
    "seresnet34": {},
    "resnet50": {"features_only": True, "out_indices": (1, 3)},
    "seresnet50": {"attn": "ese"},
    "resnext50_32x4d": {"attn": "eca"},
    "seresnext50_32x4d": {},
    "skresnet18": {},
    "skresnet50": {},
    "skresnext50_32x4d": {},
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_models_have_the_linen_variables(name):
    """Paths, shapes and dtypes of every variable equal the linen model's: the same converted
    weights fill both (``update_nnx(model, torch_to_flax(...))``); with options, outputs have
    its shapes."""
    options = {"in_chans": 4, "param_dtype": jnp.float64, **FAMILIES[name]}
    if not options.get("features_only"):
        options["num_classes"] = 11
    lin = se_flax.create_model(name, **dict(options))
    x = jax.ShapeDtypeStruct((1, 64, 64, 4), jnp.float64)
    want = jax.eval_shape(lin.init, jax.random.key(0), x)
    model = abstract(lambda: se_nnx.create_model(name, **dict(options)))
    got = {
        "params": nnx.to_pure_dict(nnx.state(model, nnx.Param)),
        "batch_stats": nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)),
    }
    shapes = lambda t: {k: (v.shape, v.dtype) for k, v in flatten(t).items()}  # noqa: E731
    assert shapes(got) == shapes(want)
    if not FAMILIES[name]:
        return
    model.eval()  # the options' outputs: CBAM logits, ECA/ESE logits, feature maps
    out = nnx.eval_shape(lambda m, x: m(x), model, x)
    assert jax.tree.map(lambda a: a.shape, out) == jax.tree.map(
        lambda a: a.shape, jax.eval_shape(lin.apply, want, x)
    )


# ------------------------------------------------------------------ NNX conventions


def test_import_se_flax_reaches_nnx_lazily():
    """``import se_flax; se_flax.nnx.X`` works, and plain ``import se_flax`` does not import
    ``flax.nnx`` (a linen user does not pay for it)."""
    code = (
        "import sys, se_flax\n"
        "assert 'flax.nnx' not in sys.modules and 'se_flax.nnx' not in sys.modules\n"
        "print(se_flax.nnx.SqueezeExcite.__name__, 'nnx' in dir(se_flax))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["SqueezeExcite", "True"]
    with pytest.raises(AttributeError, match="no attribute 'nxn'"):
        se_flax.nxn  # noqa: B018


def test_train_and_eval_switch_every_norm(rng):
    """A new model trains (as NNX's and PyTorch's); ``eval()`` freezes every statistic,
    ``train()`` updates them all; a per-call override works on a BatchNorm."""
    model = abstract(lambda: se_nnx.ResNet(RESNET10["cbam"], num_classes=3, rngs=nnx.Rngs(0)))
    norms = [m for _, m in nnx.iter_modules(model) if isinstance(m, se_nnx.BatchNorm)]
    assert len(norms) == 16 and not any(n.use_running_average for n in norms)  # 3 in CBAMs
    model.eval()
    assert all(n.use_running_average for n in norms)
    model.train()
    assert not any(n.use_running_average for n in norms)

    # The statistics themselves, on a small model: an SK unit and a CBAM in a Sequential.
    r = nnx.Rngs(1)
    small = nnx.Sequential(se_nnx.SelectiveKernel(8, 16, rngs=r), se_nnx.CbamModule(16, rngs=r))
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 8)), jnp.float32)
    forward = nnx.jit(lambda m, x: m(x))
    before = nnx.to_pure_dict(nnx.state(small, nnx.BatchStat))
    small.eval()
    forward(small, x)
    assert_equal_trees(nnx.to_pure_dict(nnx.state(small, nnx.BatchStat)), before, "eval")
    small.train()
    forward(small, x)
    after = flatten(nnx.to_pure_dict(nnx.state(small, nnx.BatchStat)))
    assert len(after) == 4 * 3  # two SK paths, the SK attention, CBAM's spatial conv
    for key, value in flatten(before).items():
        if key.endswith("num_batches_tracked"):
            assert int(after[key]) == int(value) + 1, key
        else:
            assert not np.array_equal(after[key], value), key
    bn = small.layers[1].spatial.conv.bn
    y = jnp.asarray(rng.standard_normal((4, 3, 3, 1)), jnp.float32)
    stats = (np.asarray(bn.mean[...]), np.asarray(bn.var[...]), int(bn.num_batches_tracked[...]))
    bn(y, use_running_average=True)
    np.testing.assert_array_equal(bn.mean[...], stats[0])
    np.testing.assert_array_equal(bn.var[...], stats[1])
    assert int(bn.num_batches_tracked[...]) == stats[2]
    bn(y)
    assert int(bn.num_batches_tracked[...]) == stats[2] + 1
    assert not np.array_equal(bn.mean[...], stats[0])


def test_split_merge_value_and_grad_and_jit(rng):
    """The pure-function pattern (split once, ``jax.jit`` over the state) and ``nnx.jit`` +
    ``nnx.value_and_grad`` give the same loss, gradients and statistics."""
    r = nnx.Rngs(2)
    f64 = {"param_dtype": jnp.float64, "rngs": r}
    model = nnx.Sequential(
        se_nnx.ConvNormAct(3, 16, 3, stride=2, **f64),
        se_nnx.EcaModule(16, **f64),
        se_nnx.EffectiveSEModule(16, **f64),
        lambda x: jnp.mean(x, axis=(1, 2)),
        nnx.Linear(16, 3, **f64),
    )
    x = jnp.asarray(rng.standard_normal((4, 8, 8, 3)))
    labels = jnp.asarray(rng.integers(0, 3, 4))

    def loss_fn(m):
        logits = m(x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def pure(params, rest):
        def f(p):
            m = nnx.merge(graphdef, p, rest, copy=True)  # fresh variables of this trace
            return loss_fn(m), nnx.state(m, nnx.BatchStat)

        (loss, stats), grads = jax.value_and_grad(f, has_aux=True)(params)
        return loss, grads, stats

    loss, grads, stats = pure(params, rest)
    nnx_loss, nnx_grads = nnx.jit(nnx.value_and_grad(loss_fn))(model)
    np.testing.assert_array_equal(nnx_loss, loss)
    assert_equal_trees(nnx.to_pure_dict(nnx_grads), nnx.to_pure_dict(grads), "grads")
    assert_equal_trees(
        nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)), nnx.to_pure_dict(stats), "stats"
    )
    assert float(loss) > 0 and len(flatten(nnx.to_pure_dict(grads))) == 8


def test_vmap_builds_and_runs_an_ensemble(rng):
    """``nnx.vmap`` over split ``rngs`` builds 3 SE blocks at once; a vmapped call over the
    ensemble equals each member run on its own."""

    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=0, out_axes=0)
    def ensemble(rngs):
        return se_nnx.SqueezeExcite(16, rd_channels=4, rngs=rngs)

    models = ensemble(nnx.Rngs(0))
    assert models.fc1.kernel[...].shape == (3, 16, 4)
    x = jnp.asarray(rng.standard_normal((2, 5, 5, 16)), jnp.float32)
    out = nnx.vmap(lambda m, x: m(x), in_axes=(0, None))(models, x)
    graphdef, state = nnx.split(models)
    kernels = set()
    for i in range(3):
        member = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
        np.testing.assert_allclose(out[i], member(x), rtol=1e-6, atol=1e-6)
        kernels.add(float(member.fc1.kernel[...][0, 0]))
    assert len(kernels) == 3  # three different initialisations


def test_bad_input_is_named():
    r = nnx.Rngs(0)
    with pytest.raises(ValueError, match=r"input has 8 channels .* weights are for 16"):
        se_nnx.SqueezeExcite(16, rngs=r)(jnp.ones((1, 4, 4, 8)))
    with pytest.raises(ValueError, match=r"BatchNorm has 16 features, got input shape \(2, 8\)"):
        se_nnx.BatchNorm(16, rngs=r)(jnp.ones((2, 8)))
    with pytest.raises(ValueError, match=r"more than 1 value per channel, got input shape"):
        se_nnx.BatchNorm(4, rngs=r)(jnp.ones((1, 4), jnp.float32))
    with pytest.raises(ValueError, match=r"split_input needs in_channels divisible .* got "):
        se_nnx.SelectiveKernel(15, rngs=r)
    with pytest.raises(ValueError, match=r"channels must be an integer >= 1, got 0"):
        se_nnx.EcaModule(0, rngs=r)
    with pytest.raises(ValueError, match=r"input has 6 channels .* weights are for 8"):
        se_nnx.ChannelAttn(8, rngs=r)(jnp.ones((1, 4, 4, 6), jnp.float32))
    with pytest.raises(TypeError, match=r"floating-point input, got dtype int32"):
        se_nnx.SpatialAttn(rngs=r)(jnp.ones((1, 4, 4, 6), jnp.int32))
    with pytest.raises(ValueError, match=r"spatial_kernel_size must be odd"):
        se_nnx.CbamModule(16, spatial_kernel_size=4, rngs=r)
    with pytest.raises(TypeError, match=r"config must be a se_common.ResNetConfig, got 'resnet"):
        se_nnx.ResNet("resnet18", rngs=r)
    with pytest.raises(ValueError, match=r"unknown model 'resnet19'"):
        se_nnx.create_model("resnet19")
    with pytest.raises(ValueError, match=r"unknown attn 'nope'"):
        se_nnx.create_model("resnet18", attn="nope")
    model = abstract(lambda: se_nnx.create_model("resnet18", in_chans=1))
    with pytest.raises(ValueError, match=r"input has 3 channels .* weights are for 1 channels"):
        nnx.eval_shape(lambda m: m(jnp.ones((1, 32, 32, 3))), model)
