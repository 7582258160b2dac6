"""The weight converter: bit-exact round trips, strictness, and independence from torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from flax import nnx, traverse_util
from torch import nn

import se_flax
import se_torch
from se_convert import ConversionError, flax_to_torch, torch_to_flax, update_nnx
from se_flax import nnx as se_nnx
from se_weights._convert import _find_rule

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODULES = {
    "classic": lambda: se_torch.SELayer(48, 4),
    "se-bias": lambda: se_torch.SqueezeExcite(48),
    "se-nobias": lambda: se_torch.SqueezeExcite(48, rd_ratio=0.25, bias=False),
}


def random_bits_(module: nn.Module, dtype: torch.dtype, rng: np.random.Generator) -> nn.Module:
    """Fills every tensor with random bit patterns: subnormals, infinities and NaN payloads
    (signalling ones too, which a float32 detour would quieten) must all survive."""
    module.to(dtype)
    int_type = {2: torch.int16, 4: torch.int32}[dtype.itemsize]
    with torch.no_grad():
        for p in module.parameters():
            info = np.iinfo(np.int16 if dtype.itemsize == 2 else np.int32)
            bits = rng.integers(info.min, info.max, p.shape, endpoint=True)
            p.view(int_type).copy_(torch.from_numpy(bits.astype(info.dtype)))
    return module


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    int_type = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.dtype.itemsize]
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.view(int_type), b.view(int_type))
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", MODULES)
def test_torch_flax_torch_is_bit_exact(kind, dtype, rng):
    source = random_bits_(MODULES[kind](), DTYPES[dtype], rng)
    variables = torch_to_flax(source)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(dtype)}
    target = flax_to_torch(variables, MODULES[kind]().to(DTYPES[dtype]))
    for key, tensor in source.state_dict().items():
        assert same_bits(target.state_dict()[key], tensor), key


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", MODULES)
def test_flax_torch_flax_is_bit_exact(kind, dtype, rng):
    shapes = jax.eval_shape(lambda: torch_to_flax(MODULES[kind]()))
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    int_type = np.int16 if np.dtype(np_dtype).itemsize == 2 else np.int32
    variables = jax.tree.map(
        lambda s: jnp.asarray(
            rng.integers(
                np.iinfo(int_type).min, np.iinfo(int_type).max, s.shape, dtype=int_type
            ).view(np_dtype)
        ),
        shapes,
    )
    back = torch_to_flax(flax_to_torch(variables, MODULES[kind]().to(DTYPES[dtype])))
    flat_in, flat_out = (traverse_util.flatten_dict(v) for v in (variables, back))
    assert flat_in.keys() == flat_out.keys()
    for path, leaf in flat_in.items():
        assert flat_out[path].dtype == leaf.dtype
        np.testing.assert_array_equal(
            np.asarray(flat_out[path]).view(int_type), np.asarray(leaf).view(int_type)
        )


def test_batchnorm_counter_keeps_its_scalar_shape_and_value():
    bn = nn.BatchNorm2d(4)
    bn.num_batches_tracked.fill_(2**31 - 1)
    variables = torch_to_flax({f"bn.{k}": v for k, v in bn.state_dict().items()})
    count = variables["batch_stats"]["bn"]["num_batches_tracked"]
    assert count.shape == () and count.dtype == jnp.int32 and int(count) == 2**31 - 1
    bn.num_batches_tracked.fill_(2**31)  # does not fit in JAX's int32: refused, not wrapped
    with pytest.raises(ConversionError, match=r"bn.num_batches_tracked: counter value 2147483648"):
        torch_to_flax({f"bn.{k}": v for k, v in bn.state_dict().items()})


def test_gradients_convert_with_params_collection_only():
    model = nn.Sequential()
    model.add_module("bn1", nn.BatchNorm2d(3))
    model.add_module("conv1", nn.Conv2d(3, 4, 3))
    grads = {k: torch.randn_like(p) for k, p in model.named_parameters()}
    with pytest.raises(ConversionError, match=r"bn1.running_mean \(rule 'batchnorm' requires it"):
        torch_to_flax(grads)
    flat = traverse_util.flatten_dict(torch_to_flax(grads, collections=["params"]))
    assert set(flat) == {
        ("params", "bn1", "bias"),
        ("params", "bn1", "scale"),
        ("params", "conv1", "kernel"),
        ("params", "conv1", "bias"),
    }
    with pytest.raises(ConversionError, match=r"bn1.running_mean: goes to 'batch_stats'"):
        torch_to_flax(model, collections=["params"])


def test_classic_recipe_maps_to_flax_names():
    variables = torch_to_flax(se_torch.SELayer(64))
    assert jax.tree.map(jnp.shape, variables) == {
        "params": {"fc1": {"kernel": (64, 4)}, "fc2": {"kernel": (4, 64)}}
    }


def test_grads_dict_and_numpy_dict_convert(rng):
    state = {k: v.numpy() for k, v in se_torch.SqueezeExcite(32).state_dict().items()}
    variables = torch_to_flax(state)
    np.testing.assert_array_equal(
        variables["params"]["fc1"]["kernel"], state["fc1.weight"][:, :, 0, 0].T
    )


NO_TORCH_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # any attempt to import torch now raises ImportError
    import ml_dtypes, numpy as np, safetensors.numpy
    import se_flax, se_flax.convert, se_flax.nnx
    from se_convert import torch_to_flax
    rng = np.random.default_rng(0)
    state = {
        "fc1.weight": rng.standard_normal((8, 32, 1, 1)).astype(np.float32),
        "fc1.bias": rng.standard_normal(8).astype(np.float32),
        "fc2.weight": rng.standard_normal((32, 8, 1, 1)).astype(np.float32),
        "fc2.bias": rng.standard_normal(32).astype(np.float32),
    }
    path = sys.argv[1]
    safetensors.numpy.save_file(state, path)
    loaded = safetensors.numpy.load_file(path)
    v = torch_to_flax(loaded)
    assert (np.asarray(v["params"]["fc2"]["kernel"]) == state["fc2.weight"][:, :, 0, 0].T).all()
    bf = {k: a.astype(ml_dtypes.bfloat16) for k, a in state.items()}
    vb = torch_to_flax(bf)
    assert vb["params"]["fc1"]["bias"].dtype == ml_dtypes.bfloat16
    bias = np.asarray(vb["params"]["fc1"]["bias"])
    assert (bias.view(np.int16) == bf["fc1.bias"].view(np.int16)).all()
    x = np.asarray(rng.standard_normal((2, 3, 3, 32)), np.float32)
    se_flax.SqueezeExcite().apply(v, x)
    print("ok", "torch" in sys.modules and sys.modules["torch"] is not None)
    """
)


def test_se_flax_converts_without_torch(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT, str(tmp_path / "se.safetensors")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok False"


# ---------------------------------------------------------------- strictness


def test_flax_to_torch_lists_every_problem_at_once(rng):
    module = se_torch.SqueezeExcite(32)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    variables = jax.tree.map(np.asarray, torch_to_flax(se_torch.SqueezeExcite(32)))
    del variables["params"]["fc2"]["bias"]  # missing
    variables["params"]["fc3"] = {"kernel": rng.standard_normal((8, 32))}  # unexpected
    variables["params"]["fc1"]["kernel"] = rng.standard_normal((31, 8)).astype(np.float32)  # shape
    with pytest.raises(ConversionError) as info:
        flax_to_torch(variables, module)
    error = info.value
    assert error.missing == ["params/fc2/bias (for fc2.bias)"]
    assert error.unexpected == ["params/fc3/kernel (no key of the module takes it)"]
    assert len(error.mismatched) == 1 and "params/fc1/kernel: (31, 8)" in error.mismatched[0]
    assert "(32, 8) float32" in error.mismatched[0]
    for text in ("fc2/bias", "fc3/kernel", "fc1/kernel", "3 problem(s)"):
        assert text in str(error)
    assert all(torch.equal(module.state_dict()[k], v) for k, v in before.items())  # untouched


def test_flax_to_torch_refuses_dtype_change():
    variables = torch_to_flax(se_torch.SqueezeExcite(32).to(torch.bfloat16))
    with pytest.raises(
        ConversionError,
        match=r"fc1/kernel: \(32, 8\) bfloat16, module fc1.weight "
        r"needs \(32, 8\) float32",
    ):
        flax_to_torch(variables, se_torch.SqueezeExcite(32))


def se_shapes(channels: int = 64, **options):
    """Abstract Flax variables of a linen SqueezeExcite on float32 channels."""
    x = jax.ShapeDtypeStruct((1, 2, 2, channels), jnp.float32)
    return jax.eval_shape(se_flax.SqueezeExcite(**options).init, jax.random.key(0), x)


def test_torch_to_flax_against_target():
    """A classic (bias-free) checkpoint cannot silently feed a Flax model that has biases."""
    with pytest.raises(ConversionError) as info:
        torch_to_flax(se_torch.SELayer(64), target=se_shapes(rd_channels=4))
    assert sorted(info.value.missing) == [
        "params/fc1/bias (in the target)",
        "params/fc2/bias (in the target)",
    ]
    with pytest.raises(
        ConversionError,
        match=r"params/fc1/kernel: \(64, 4\) float32, the target "
        r"has \(64, 8\) float32",
    ):
        torch_to_flax(se_torch.SELayer(64), target=se_shapes(rd_channels=8, use_bias=False))
    variables = torch_to_flax(se_torch.SELayer(64), target=se_shapes(rd_channels=4, use_bias=False))
    assert jax.tree.structure(variables) == jax.tree.structure(
        se_shapes(rd_channels=4, use_bias=False)
    )


def test_torch_to_flax_partial_and_unknown_keys(rng):
    state = dict(se_torch.SqueezeExcite(32).state_dict())
    del state["fc1.weight"]
    state["fc3.weight"] = torch.randn(3)
    state["fc2.running_mean"] = torch.randn(32)
    with pytest.raises(ConversionError) as info:
        torch_to_flax(state)
    assert info.value.missing == ["fc1.weight (rule 'se-fc (1x1 conv)' requires it)"]
    assert sorted(info.value.unexpected) == [
        "fc2.running_mean: rule 'se-fc (1x1 conv)' has no tensor 'running_mean'",
        "fc3.weight: no conversion rule for module 'fc3'; its name alone cannot decide: pass "
        "the torch.nn.Module itself (torch_to_flax(module)), whose layer types choose the rules, "
        "or rules=",
    ]


def test_rank_never_decides_the_rule():
    """A 2-D tensor named fc1.weight is not silently treated as a Linear: the name says 1x1 conv."""
    state = {"fc1.weight": torch.randn(8, 32), "fc2.weight": torch.randn(32, 8, 1, 1)}
    with pytest.raises(ConversionError, match=r"fc1.weight: shape \(8, 32\) is not a 1x1 Conv2d"):
        torch_to_flax(state)
    with pytest.raises(ConversionError, match=r"fc2.weight: shape \(32, 8, 3, 3\) is not a 1x1"):
        torch_to_flax({"fc2.weight": torch.randn(32, 8, 3, 3)})


class LinearNamedLikeConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 8)
        self.fc2 = nn.Conv2d(8, 32, 1)


def test_types_choose_and_a_name_that_claims_another_layout_needs_a_target(rng):
    """With the module at hand, types choose: ``fc1`` is a Linear (Dense), whatever its name.
    ``fc2``, a 1x1 Conv2d, is a Flax Conv kernel by its type but an SE layer's Dense kernel by
    its name: without a target that is an error naming both; a target settles it."""
    with pytest.raises(ConversionError) as info:
        torch_to_flax(LinearNamedLikeConv())
    [problem] = info.value.mismatched
    assert problem.startswith("fc2: ambiguous without a target")
    assert "'Conv2d' (kernel (1, 1, 8, 32), bias (32,))" in problem
    assert "'se-fc (1x1 conv)' (kernel (8, 32), bias (32,))" in problem
    assert info.value.missing == info.value.unexpected == []
    module = LinearNamedLikeConv()
    variables = torch_to_flax(module, target=se_shapes(rd_channels=8, channels=32))
    np.testing.assert_array_equal(
        variables["params"]["fc1"]["kernel"], module.fc1.weight.T.detach()
    )
    kernel = module.fc2.weight.detach()[:, :, 0, 0].T
    np.testing.assert_array_equal(variables["params"]["fc2"]["kernel"], kernel)
    back = flax_to_torch(variables, LinearNamedLikeConv())  # the variables' shapes decide
    assert torch.equal(back.fc2.weight, module.fc2.weight)


def test_not_an_se_layer():
    with pytest.raises(ConversionError) as info:
        torch_to_flax(nn.LSTM(8, 16))
    assert len(info.value.unexpected) == 4 and not info.value.missing
    assert "weight_ih_l0: no conversion rule for a LSTM (module ''); pass rules=" in str(info.value)


def test_float64_needs_x64():
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ConversionError, match=r"fc1.weight: float64 needs jax_enable_x64"):
            torch_to_flax(se_torch.SqueezeExcite(16).double())
    finally:
        jax.config.update("jax_enable_x64", True)


def test_bad_argument_types():
    with pytest.raises(TypeError, match=r"torch.nn.Module or a state_dict-like mapping.*list"):
        torch_to_flax([1, 2])
    with pytest.raises(ConversionError, match=r"fc1.bias: expected a torch tensor.*got str"):
        torch_to_flax({"fc1.weight": torch.randn(8, 16, 1, 1), "fc1.bias": "oops"})
    with pytest.raises(TypeError, match=r"Flax variables .* got list"):
        flax_to_torch([1], se_torch.SqueezeExcite(16))


def test_nnx_both_ways(rng):
    model = se_nnx.SqueezeExcite(32, rngs=nnx.Rngs(0))
    torch_module = flax_to_torch(model, se_torch.SqueezeExcite(32))
    back = update_nnx(se_nnx.SqueezeExcite(32, rngs=nnx.Rngs(1)), torch_to_flax(torch_module))
    x = jnp.asarray(rng.standard_normal((2, 3, 3, 32)), jnp.float32)
    np.testing.assert_array_equal(back(x), model(x))
    with pytest.raises(ConversionError, match=r"params/fc1/bias \(in the NNX module\)"):
        update_nnx(
            se_nnx.SqueezeExcite(32, rngs=nnx.Rngs(1)),
            torch_to_flax(se_torch.SqueezeExcite(32, bias=False)),
        )


@pytest.mark.parametrize(
    "path,module_type,rule",
    [
        ("fc1", None, "se-fc (1x1 conv)"),
        ("layer1.0.se.fc2", nn.Conv2d, "se-fc (1x1 conv)"),
        ("fc.0", None, "classic se fc.0 (Linear)"),
        ("stage.fc.2", nn.Linear, "classic se fc.2 (Linear)"),
        # name and type: the classifier and a bare effective SE are both `fc`
        ("fc", None, "classifier (Linear)"),
        ("fc", nn.Linear, "classifier (Linear)"),
        ("fc", nn.Conv2d, "effective-se fc (1x1 conv, bare module)"),
        # the longer name wins: `se.fc` / `se.conv` over the classifier's `fc` / the backbone's
        # `conv`, with or without the module
        ("layer2.1.se.fc", None, "effective-se fc (1x1 conv)"),
        ("layer2.1.se.fc", nn.Conv2d, "effective-se fc (1x1 conv)"),
        ("layer2.1.se.conv", None, "eca conv (Conv1d)"),
        ("layer2.1.se.conv", nn.Conv1d, "eca conv (Conv1d)"),
        ("conv", nn.Conv1d, "eca conv (Conv1d, bare module)"),
        ("conv", None, "conv"),
        # ...but the module's type outranks the name: a Conv2d at se.conv is a conv
        ("layer2.1.se.conv", nn.Conv2d, "conv"),
        ("layer1.0.conv1.paths.1.conv", nn.Conv2d, "conv"),
        ("layer1.0.conv1.attn.fc_select", None, "sk attention fc (1x1 conv)"),
    ],
)
def test_rule_lookup_is_by_name_and_type(path, module_type, rule):
    found = _find_rule(path, module_type)
    assert isinstance(found, tuple) and found[0].name == rule
    assert not isinstance(_find_rule(path + "x", module_type), tuple)


def test_a_type_no_rule_of_that_name_takes_is_a_mismatch():
    found = _find_rule("layer1.0.conv1.attn.fc_select", nn.Linear)
    assert not isinstance(found, tuple) and found.wrong_type
    assert "is a Linear" in found.reason and "expect Conv2d" in found.reason
    found = _find_rule("layer1.0.conv1.attn.fc_select", None)
    assert isinstance(found, tuple)  # without the module, the name alone decides


def test_se_flax_convert_is_the_converter_under_its_earlier_name():
    """``se_flax.convert`` is the core (``se_weights``), the same objects ``se_convert`` gives;
    the command layer (``convert_file``) sits above both twins, in ``se_convert`` only."""
    import se_convert
    import se_flax.convert
    import se_weights

    assert se_flax.convert.__all__ == se_weights.__all__
    for name in se_weights.__all__:
        assert getattr(se_flax.convert, name) is getattr(se_convert, name), name
    assert set(se_convert.__all__) - set(se_weights.__all__) == {
        "Model",
        "convert_file",
        "model_names",
    }
    assert not hasattr(se_flax.convert, "convert_file")


# ------------------------------------------------------------------ module and state_dict agree


class OwnClassicSE(nn.Module):
    """The classic recipe's layers in a class of one's own, inside a Sequential: no Context."""

    def __init__(self, channel: int = 32, reduction: int = 4):
        super().__init__()
        gate = nn.Module()
        gate.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction, bias=False),
            nn.ReLU(),
            nn.Linear(channel // reduction, channel, bias=False),
        )
        self.body = nn.Sequential(nn.Identity(), gate)


def test_the_name_table_names_an_own_class_s_layers_as_its_state_dict_gets_them(rng):
    """No Context knows the class: the name table's classic rows give both paths fc1/fc2 (below
    the same prefix, through the same rename=), and a target under the PyTorch names (fc_0,
    fc_2, what the module path gave before) is still taken."""
    module = random_bits_(OwnClassicSE(), torch.float32, rng)
    for rename in (None, [(r"^body_1/", "gate/")]):
        from_module = traverse_util.flatten_dict(torch_to_flax(module, rename=rename))
        from_state_dict = traverse_util.flatten_dict(
            torch_to_flax(module.state_dict(), rename=rename)
        )
        prefix = ("body_1",) if rename is None else ("gate",)
        assert (
            sorted(from_module)
            == sorted(from_state_dict)
            == [
                ("params", *prefix, "fc1", "kernel"),
                ("params", *prefix, "fc2", "kernel"),
            ]
        )
        for path, leaf in from_state_dict.items():
            assert np.asarray(from_module[path]).tobytes() == np.asarray(leaf).tobytes(), path
    old_names = {
        "params": {
            "body_1": {
                "fc_0": {"kernel": module.body[1].fc[0].weight.detach().numpy().T},
                "fc_2": {"kernel": module.body[1].fc[2].weight.detach().numpy().T},
            }
        }
    }
    back = flax_to_torch(old_names, OwnClassicSE())
    for key, tensor in module.state_dict().items():
        assert same_bits(back.state_dict()[key], tensor), key
    again = traverse_util.flatten_dict(torch_to_flax(module, target=old_names))
    assert sorted(again) == sorted(traverse_util.flatten_dict(old_names))


def test_a_state_dict_whose_names_tie_asks_for_the_module():
    """Two rows claim one name: the state_dict path is an error saying to pass the module; the
    module's types convert it."""
    from se_convert import Rule, Tensor
    from se_weights._rules import LINEAR

    rules = [
        Rule("gate a", r"gate", ("Linear",), {"weight": Tensor("params", "kernel", LINEAR)}),
        Rule("gate b", r"gate", ("Linear",), {"weight": Tensor("params", "w", LINEAR)}),
    ]
    module = nn.Module()
    module.gate = nn.Linear(4, 3, bias=False)
    with pytest.raises(ConversionError) as info:
        torch_to_flax(module.state_dict(), rules=rules)
    [problem] = info.value.unexpected
    assert problem.startswith("gate.weight: module 'gate' matches several rules: ['gate a', 'gate")
    assert "pass the torch.nn.Module itself (torch_to_flax(module))" in problem
    variables = torch_to_flax(module, rules=rules)
    assert variables["params"]["gate"]["kernel"].shape == (4, 3)


# ------------------------------------------------------------------ meta modules and tied tensors


def random_variables(module: nn.Module, rng: np.random.Generator) -> dict:
    """The Flax variables ``module`` converts to, each leaf fresh random data of its shape and
    dtype (variances positive, counters non-negative), leaves independent of each other."""

    def fill(path, leaf):
        dtype = np.dtype(leaf.dtype)
        if dtype.kind in "iu":
            return rng.integers(0, 1000, leaf.shape).astype(dtype)
        values = rng.standard_normal(leaf.shape)
        return (np.abs(values) + 0.5 if path[-1] == "var" else values).astype(dtype)

    flat = traverse_util.flatten_dict(torch_to_flax(module))
    return traverse_util.unflatten_dict({path: fill(path, leaf) for path, leaf in flat.items()})


def fill_random_(module: nn.Module, rng: np.random.Generator) -> nn.Module:
    """Random values in every floating tensor of the module's state_dict, buffers included."""
    with torch.no_grad():
        for tensor in module.state_dict(keep_vars=True).values():
            if tensor.is_floating_point():
                tensor.copy_(torch.from_numpy(rng.standard_normal(tensor.shape)).to(tensor.dtype))
    return module


def assert_holds(module: nn.Module, variables: dict) -> None:
    """The module converts back to exactly ``variables``, bit for bit."""
    back = traverse_util.flatten_dict(torch_to_flax(module))
    given = traverse_util.flatten_dict(variables)
    assert back.keys() == given.keys()
    for path, leaf in given.items():
        assert np.asarray(back[path]).tobytes() == np.asarray(leaf).tobytes(), path


META_MODULES = {
    "se": (lambda: se_torch.SqueezeExcite(32), (2, 32, 5, 5)),
    "seresnet18": (
        lambda: se_torch.create_model("seresnet18", layers=(1, 1, 1, 1)),
        (2, 3, 32, 32),
    ),
}


@pytest.mark.parametrize("kind", META_MODULES)
def test_flax_to_torch_loads_a_meta_module_for_real(kind, rng):
    """Built on the meta device, the module gets every value (PyTorch's own load is a no-op
    there, with a warning): the same bits a normally built module gets, CPU tensors,
    Parameters with the module's requires_grad, and a forward pass that agrees."""
    build, input_shape = META_MODULES[kind]
    variables = random_variables(build(), rng)
    expected = flax_to_torch(variables, build())
    with torch.device("meta"):
        module = build()
    frozen, param = next(iter(module.named_parameters()))
    param.requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "copying ... to a meta parameter is a no-op"
        loaded = flax_to_torch(variables, module)
    assert loaded is module
    state = loaded.state_dict()
    assert state.keys() == expected.state_dict().keys()
    for key, tensor in expected.state_dict().items():
        assert not state[key].is_meta and state[key].device.type == "cpu", key
        assert same_bits(state[key], tensor), key
    for name, param in loaded.named_parameters():
        assert type(param) is nn.Parameter, name
        assert param.requires_grad == (name != frozen), name
    x = torch.from_numpy(rng.standard_normal(input_shape).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), expected.eval()(x))


def test_flax_to_torch_into_a_partly_meta_module_keeps_its_real_tensors(rng):
    """Only the meta tensors are replaced; a real one is copied into, the same Parameter."""
    variables = random_variables(se_torch.SqueezeExcite(32), rng)
    with torch.device("meta"):
        module = se_torch.SqueezeExcite(32)
    bias = module.fc2.bias = nn.Parameter(torch.from_numpy(rng.standard_normal(32)).float())
    flax_to_torch(variables, module)
    assert module.fc2.bias is bias
    expected = flax_to_torch(variables, se_torch.SqueezeExcite(32)).state_dict()
    for key, tensor in module.state_dict().items():
        assert not tensor.is_meta and same_bits(tensor, expected[key]), key


class WithMetaOnlyBuffers(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.register_buffer("scale", torch.ones(4), persistent=False)


def test_meta_tensors_the_variables_cannot_fill_are_errors(rng):
    """A non-persistent meta buffer (in no state_dict) and a meta counter kept with
    keep_counters=True have no values to get: both listed, the module left as it was."""
    variables = random_variables(WithMetaOnlyBuffers(), rng)
    del variables["batch_stats"]["bn"]["num_batches_tracked"]  # Flax's own BatchNorm
    with torch.device("meta"):
        module = WithMetaOnlyBuffers()
    with pytest.raises(ConversionError) as info:
        flax_to_torch(variables, module, keep_counters=True)
    scale, counter = info.value.missing
    assert scale.startswith("scale (a non-persistent buffer on the meta device")
    assert counter.startswith("bn.num_batches_tracked (")
    assert "own is on the meta device: keep_counters=True has no value to keep" in counter
    assert not info.value.unexpected and not info.value.mismatched
    assert module.scale.is_meta and all(t.is_meta for t in module.state_dict().values())


def test_torch_to_flax_refuses_a_meta_module_naming_each_key():
    with torch.device("meta"):
        module = se_torch.SqueezeExcite(32)
    with pytest.raises(ConversionError) as info:
        torch_to_flax(module)
    assert sorted(info.value.mismatched) == sorted(
        f"{key}: on the meta device, it has no values to convert (load or materialize the "
        f"module first)"
        for key in module.state_dict()
    )


class TiedLinears(nn.Module):
    """Two Linear layers sharing one weight, biases their own."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)
        self.fc2.weight = self.fc1.weight


class TiedConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3)
        self.conv2.weight = self.conv1.weight


class TiedStatistics(nn.Module):
    """Two BatchNorms sharing one running-mean buffer."""

    def __init__(self):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.bn2.running_mean = self.bn1.running_mean


# module, its two tied keys, and their Flax variables
TIED = {
    "linear": (TiedLinears, "fc1.weight", "fc2.weight", ("params", "fc1", "kernel"), "fc2"),
    "conv": (TiedConvs, "conv1.weight", "conv2.weight", ("params", "conv1", "kernel"), "conv2"),
    "buffer": (
        TiedStatistics,
        "bn1.running_mean",
        "bn2.running_mean",
        ("batch_stats", "bn1", "mean"),
        "bn2",
    ),
}


FLAX_AXES = {"linear": (1, 0), "conv": (2, 3, 1, 0), "buffer": (0,)}  # PyTorch -> Flax


def tied_paths(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    first = TIED[kind][3]
    return first, (first[0], TIED[kind][4], first[2])


def set_leaf(variables: dict, path: tuple[str, ...], value: np.ndarray) -> None:
    variables[path[0]][path[1]][path[2]] = value


def get_leaf(variables: dict, path: tuple[str, ...]) -> np.ndarray:
    return variables[path[0]][path[1]][path[2]]


@pytest.mark.parametrize("kind", TIED)
def test_tied_tensors_load_equal_values_and_refuse_different_ones(kind, rng):
    """One tensor under two keys: the variables giving the two different values is an error
    naming both keys, listed with the other problems, the module untouched (it used to keep the
    second's values under both names); equal values load, and the tie is kept. torch_to_flax
    gives both Flax variables the shared value."""
    build, first, second = TIED[kind][:3]
    first_path, second_path = tied_paths(kind)
    module = fill_random_(build(), rng)
    shared = module.state_dict(keep_vars=True)[first]
    assert module.state_dict(keep_vars=True)[second] is shared
    from_module = traverse_util.flatten_dict(torch_to_flax(module))
    value = shared.detach().numpy().transpose(FLAX_AXES[kind])  # the shared value, Flax's way
    for path in (first_path, second_path):
        assert np.asarray(from_module[path]).tobytes() == np.ascontiguousarray(value).tobytes()

    before = {k: v.clone() for k, v in module.state_dict().items()}
    variables = random_variables(module, rng)  # the two tied leaves differ
    del variables["params"][first_path[1]]["bias"]  # and one more problem
    with pytest.raises(ConversionError) as info:
        flax_to_torch(variables, module)
    [problem] = info.value.mismatched
    assert problem.startswith(f"{first} and {second}: one tensor in the module (tied)")
    assert "/".join(first_path) in problem and "/".join(second_path) in problem
    assert info.value.missing == [f"params/{first_path[1]}/bias (for {first_path[1]}.bias)"]
    for key, tensor in module.state_dict().items():
        assert same_bits(tensor, before[key]), key
    assert module.state_dict(keep_vars=True)[second] is shared

    variables = random_variables(module, rng)
    set_leaf(variables, second_path, get_leaf(variables, first_path).copy())
    loaded = flax_to_torch(variables, module)
    tensors = loaded.state_dict(keep_vars=True)
    assert tensors[first] is tensors[second] is shared
    assert_holds(loaded, variables)


def test_tied_values_are_compared_bit_for_bit(rng):
    """The same NaN payload twice is equal and loads; 0.0 and -0.0 are not, however ==
    compares them."""
    module = TiedLinears()
    variables = random_variables(module, rng)
    kernel = variables["params"]["fc1"]["kernel"]
    kernel.flat[0] = np.array(0x7FA00001, np.uint32).view(np.float32)  # a signalling NaN
    variables["params"]["fc2"]["kernel"] = kernel.copy()
    flax_to_torch(variables, module)
    assert module.fc1.weight is module.fc2.weight
    assert module.fc1.weight.detach().numpy().T.view(np.uint32).flat[0] == 0x7FA00001
    kernel.flat[1], variables["params"]["fc2"]["kernel"].flat[1] = 0.0, -0.0
    with pytest.raises(ConversionError, match=r"fc1.weight and fc2.weight: one tensor"):
        flax_to_torch(variables, module)


def test_two_parameters_viewing_one_memory_are_tied_too(rng):
    """Two Parameter objects over the same memory (``nn.Parameter(w.data)``) are one tensor as
    much as one Parameter under two names: different values are refused, equal ones load."""
    module = TiedLinears()
    module.fc2.weight = nn.Parameter(module.fc1.weight.data)
    assert module.fc2.weight is not module.fc1.weight
    variables = random_variables(module, rng)
    with pytest.raises(ConversionError, match=r"fc1.weight and fc2.weight: one tensor"):
        flax_to_torch(variables, module)
    variables["params"]["fc2"]["kernel"] = variables["params"]["fc1"]["kernel"].copy()
    assert_holds(flax_to_torch(variables, module), variables)
    assert module.fc2.weight.data_ptr() == module.fc1.weight.data_ptr()


@pytest.mark.parametrize("kind", TIED)
def test_a_meta_module_s_tied_tensors_load_as_one(kind, rng):
    """Built on the meta device, a tied tensor becomes one real tensor under both keys, given
    equal values; different ones are an error and leave the module on the meta device."""
    build, first, second = TIED[kind][:3]
    first_path, second_path = tied_paths(kind)
    with torch.device("meta"):
        module = build()
    variables = random_variables(build(), rng)
    with pytest.raises(ConversionError, match=rf"{first} and {second}: one tensor"):
        flax_to_torch(variables, module)
    tensors = module.state_dict(keep_vars=True)
    assert tensors[first] is tensors[second]
    assert all(t.is_meta for t in tensors.values())
    set_leaf(variables, second_path, get_leaf(variables, first_path).copy())
    flax_to_torch(variables, module)
    tensors = module.state_dict(keep_vars=True)
    assert tensors[first] is tensors[second] and not tensors[first].is_meta
    assert not any(t.is_meta for t in tensors.values())
    for name, param in module.named_parameters():
        assert type(param) is nn.Parameter and param.requires_grad, name
    assert_holds(module, variables)
