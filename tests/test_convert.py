"""The weight converter: bit-exact round trips, strictness, and independence from torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
