"""Registries: a new block type, attention layer or model is one row per place (se_common's name,
each framework's class or factory), built and checked in both frameworks; names agree; a missing
row is a clear error."""

from __future__ import annotations

import functools

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

import se_common
import se_flax
import se_torch
from se_common import Attention, BlockType, ResNetConfig, SelectiveKernelConfig
from se_convert import torch_to_flax, update_nnx
from se_flax import nnx as se_nnx
from tests.helpers import assert_trees_close, flatten, nchw_to_nhwc, randomize_, register


def test_every_framework_maps_every_name():
    for blocks in (se_torch.BLOCKS, se_flax.BLOCKS, se_nnx.BLOCKS):
        assert set(blocks) == set(se_common.BLOCK_TYPES)
    for layers in (se_torch.ATTN_LAYERS, se_flax.ATTN_LAYERS, se_nnx.ATTN_LAYERS):
        assert set(layers) == set(se_common.ATTENTION)
    for blocks in (se_torch.MB_BLOCKS, se_flax.MB_BLOCKS, se_nnx.MB_BLOCKS):
        assert set(blocks) == set(se_common.BLOCK_KINDS)
    for name, row in se_common.MODELS.items():
        config = row.config
        if row.family in (se_common.EFFICIENTNET, se_common.MOBILENETV3):
            assert {b.block_type for b in config.blocks()} <= set(se_common.BLOCK_KINDS), name
            continue
        if row.family is se_common.REGNET:  # planned block by block, no block-type names
            assert {b.stage for b in config.blocks()} == {1, 2, 3, 4}, name
            continue
        assert row.family is se_common.RESNET, name
        assert config.block in se_common.BLOCK_TYPES, name
        assert config.attn is None or config.attn in se_common.ATTENTION, name


class TorchTinyBlock(se_torch.ResidualBlock):
    """A block type of the test's own: one 3x3 conv and its norm, then attention and shortcut."""

    def __init__(self, spec, attn_layer=None, act_layer=nn.ReLU, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = se_torch.conv2d(spec.in_channels, spec.out_channels, 3, spec.stride)
        self.bn1 = norm_layer(spec.out_channels)
        self.build_tail(spec, attn_layer, norm_layer)
        self.act = act_layer()

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn1.weight)

    def forward(self, x):
        return self.act(self.residual(self.bn1(self.conv1(x)), x))


class FlaxTinyBlock(se_flax.ResidualBlock):
    """Its Flax twin, built from the backbone's layers."""

    @linen.compact
    def __call__(self, x, train: bool = False):
        s, layers = self.spec, self.layers
        y = layers.conv(s.out_channels, 3, s.stride, name="conv1")(x)
        return self.residual(layers.norm(train, name="bn1", last=True)(y), x, train)


class NnxTinyBlock(se_nnx.ResidualBlock):
    """Its NNX twin, built from the backbone's layers."""

    def __init__(self, spec, layers, *, rngs):
        self.conv1 = layers.conv(spec.in_channels, spec.out_channels, 3, spec.stride, rngs=rngs)
        self.bn1 = layers.norm(spec.out_channels, last=True, rngs=rngs)
        super().__init__(spec, layers, rngs=rngs)

    def __call__(self, x):
        return self.residual(self.bn1(self.conv1(x)), x)


def assert_twins_agree(tmodel: nn.Module, fmodel: linen.Module, rng, nnx_model=None) -> dict:
    """Random float64 weights: the strict conversion fills the Flax model's exact structure
    (and the NNX model's, if given), and eval logits, train logits and statistics agree to
    rounding level. Returns Flax's init."""
    x = rng.standard_normal((2, 3, 32, 32))
    target = jax.eval_shape(
        functools.partial(fmodel.init, train=False),
        jax.random.key(0),
        jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float64),
    )
    init = jax.jit(fmodel.init)(jax.random.key(0, impl="rbg"), nchw_to_nhwc(x))
    tmodel = randomize_(tmodel, rng, torch.float64)
    variables = torch_to_flax(tmodel, target=target)

    @jax.jit
    def run(variables, x):
        train = fmodel.apply(variables, x, train=True, mutable=["batch_stats"])
        return fmodel.apply(variables, x), train

    flax_eval, (flax_train, updates) = run(variables, nchw_to_nhwc(x))
    with torch.no_grad():
        torch_eval = tmodel.eval()(torch.from_numpy(x))
        torch_train = tmodel.train()(torch.from_numpy(x))
    assert_trees_close(flax_eval, torch_eval, rtol=1e-12, atol=1e-12, what="eval")
    assert_trees_close(flax_train, torch_train, rtol=1e-12, atol=1e-12, what="train")
    t_stats = torch_to_flax(tmodel)["batch_stats"]
    assert_trees_close(updates["batch_stats"], t_stats, rtol=1e-12, atol=1e-12, what="stats")
    if nnx_model is not None:
        update_nnx(nnx_model, variables)
        forward = nnx.jit(lambda m, x: m(x))
        nnx_model.eval()
        nnx_eval = forward(nnx_model, nchw_to_nhwc(x))
        nnx_model.train()
        nnx_train = forward(nnx_model, nchw_to_nhwc(x))
        assert_trees_close(nnx_eval, torch_eval, rtol=1e-12, atol=1e-12, what="NNX eval")
        assert_trees_close(nnx_train, torch_train, rtol=1e-12, atol=1e-12, what="NNX train")
        nnx_stats = nnx.to_pure_dict(nnx.state(nnx_model, nnx.BatchStat))
        assert_trees_close(nnx_stats, t_stats, rtol=1e-12, atol=1e-12, what="NNX stats")
    return init


def test_a_new_block_type_is_one_row_per_place(monkeypatch, rng):
    monkeypatch.setitem(se_common.BLOCK_TYPES, "tiny", BlockType(expansion=1, grouped=False))
    monkeypatch.setitem(se_torch.BLOCKS, "tiny", TorchTinyBlock)
    monkeypatch.setitem(se_flax.BLOCKS, "tiny", FlaxTinyBlock)
    monkeypatch.setitem(se_nnx.BLOCKS, "tiny", NnxTinyBlock)
    config = ResNetConfig("tiny", (1, 2, 1, 1), attn="se")  # a downsampling and a plain block
    tmodel = se_torch.ResNet(config, num_classes=5)
    assert isinstance(tmodel.layer2[1], TorchTinyBlock) and tmodel.layer2[0].downsample
    blocks = [b for b in tmodel.modules() if isinstance(b, TorchTinyBlock)]
    assert len(blocks) == 5 and all(torch.all(b.bn1.weight == 0) for b in blocks)
    fmodel = se_flax.ResNet(config, num_classes=5, param_dtype=jnp.float64)
    nnx_model = se_nnx.ResNet(config, num_classes=5, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    assert isinstance(nnx_model.layer2_1, NnxTinyBlock) and nnx_model.layer2_0.downsample
    nnx_scales = [
        b.bn1.scale[...] for _, b in nnx.iter_modules(nnx_model) if isinstance(b, NnxTinyBlock)
    ]
    assert len(nnx_scales) == 5 and all(np.all(np.asarray(v) == 0) for v in nnx_scales)
    init = assert_twins_agree(tmodel, fmodel, rng, nnx_model)
    scales = {k: v for k, v in flatten(init["params"]).items() if k.endswith("bn1/scale")}
    assert len(scales) == 6  # the stem's is ones, each block's last is zero-initialised
    assert {k for k, v in scales.items() if np.all(np.asarray(v) == 0)} == set(scales) - {
        "bn1/scale"
    }


def test_a_new_attention_layer_is_one_row_per_place(monkeypatch, rng):
    """An SE with a hard-sigmoid gate, by name, in both frameworks' ResNets."""
    monkeypatch.setitem(se_common.ATTENTION, "hse", Attention("SE with a hard-sigmoid gate"))
    monkeypatch.setitem(
        se_torch.ATTN_LAYERS,
        "hse",
        functools.partial(se_torch.SqueezeExcite, gate_layer=nn.Hardsigmoid),
    )
    monkeypatch.setitem(
        se_flax.ATTN_LAYERS,
        "hse",
        functools.partial(se_flax.SqueezeExcite, gate_fn=jax.nn.hard_sigmoid),
    )
    monkeypatch.setitem(
        se_nnx.ATTN_LAYERS,
        "hse",
        functools.partial(se_nnx.SqueezeExcite, gate_fn=jax.nn.hard_sigmoid),
    )
    config = ResNetConfig("basic", (1, 1, 1, 1), attn="hse")
    tmodel = se_torch.ResNet(config, num_classes=5)
    assert isinstance(tmodel.layer1[0].se.gate, nn.Hardsigmoid)
    nnx_model = nnx.eval_shape(
        lambda: se_nnx.ResNet(config, num_classes=5, param_dtype="float64", rngs=nnx.Rngs(0))
    )
    assert nnx_model.layer1_0.se.gate_fn is jax.nn.hard_sigmoid
    fmodel = se_flax.ResNet(config, num_classes=5, param_dtype="float64")
    assert_twins_agree(tmodel, fmodel, rng, nnx_model)
    assert se_torch.create_model("resnet18", attn="hse").layer4[1].se is not None


def test_a_new_model_is_one_row(monkeypatch, rng):
    register(monkeypatch, "ecaresnet10", ResNetConfig("basic", (1, 1, 1, 1), attn="eca"))
    tmodel = se_torch.create_model("ecaresnet10", num_classes=5)
    assert isinstance(tmodel.layer3[0].se, se_torch.EcaModule)
    fmodel = se_flax.create_model("ecaresnet10", num_classes=5, param_dtype="float64")
    assert_twins_agree(tmodel, fmodel, rng)


def test_a_name_without_a_framework_row_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(se_common.BLOCK_TYPES, "tiny", BlockType(expansion=1, grouped=False))
    config = ResNetConfig("tiny", (1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"block 'tiny' has no entry in se_torch.BLOCKS"):
        se_torch.ResNet(config)
    with pytest.raises(ValueError, match=r"block 'tiny' has no entry in se_flax.BLOCKS"):
        jax.eval_shape(se_flax.ResNet(config).init, jax.random.key(0), jnp.ones((1, 32, 32, 3)))
    with pytest.raises(ValueError, match=r"block 'tiny' has no entry in se_flax.nnx.BLOCKS"):
        se_nnx.ResNet(config, rngs=nnx.Rngs(0))
    monkeypatch.setitem(se_common.ATTENTION, "hse", Attention("SE with a hard-sigmoid gate"))
    with pytest.raises(ValueError, match=r"attn 'hse' has no entry in se_torch.ATTN_LAYERS"):
        se_torch.create_model("resnet18", attn="hse")
    with pytest.raises(ValueError, match=r"attn 'hse' has no entry in se_flax.nnx.ATTN_LAYERS"):
        se_nnx.create_model("resnet18", attn="hse")


def test_a_block_without_zero_init_last_says_how_to_build_it(monkeypatch):
    class NoZeroInit(TorchTinyBlock):
        zero_init_last = se_torch.ResidualBlock.zero_init_last

    monkeypatch.setitem(se_common.BLOCK_TYPES, "tiny", BlockType(expansion=1, grouped=False))
    monkeypatch.setitem(se_torch.BLOCKS, "tiny", NoZeroInit)
    config = ResNetConfig("tiny", (1, 1, 1, 1))
    with pytest.raises(NotImplementedError, match=r"NoZeroInit does not define zero_init_last"):
        se_torch.ResNet(config)
    se_torch.ResNet(config, zero_init_last=False)


def test_config_names_are_checked():
    with pytest.raises(ValueError, match=r"unknown attn 'nope'; known: cbam, eca, ese, se$"):
        ResNetConfig("basic", (1, 1, 1, 1), attn="nope")
    with pytest.raises(ValueError, match=r"unknown block 'tiny'; known: basic, bottleneck"):
        ResNetConfig("tiny", (1, 1, 1, 1))


def test_selective_kernel_blocks_by_name_or_by_options(monkeypatch):
    """``sk=`` on a block type means its SK variant; an SK type alone gets default options."""
    sk = SelectiveKernelConfig(1 / 8, 16)
    by_options = ResNetConfig("basic", (2, 2, 2, 2), sk=sk, zero_init_last=False)
    assert by_options == se_common.get_model("skresnet18").config
    assert by_options.block == "sk_basic" and by_options.blocks()[0].sk == sk
    assert ResNetConfig("sk_bottleneck", (1, 1, 1, 1)).sk == SelectiveKernelConfig()
    assert ResNetConfig("bottleneck", (1, 1, 1, 1), 32, 4).blocks()[0].groups == 32
    monkeypatch.setitem(se_common.BLOCK_TYPES, "tiny", BlockType(expansion=1, grouped=False))
    with pytest.raises(ValueError, match=r"block 'tiny' has no Selective Kernel variant"):
        ResNetConfig("tiny", (1, 1, 1, 1), sk=sk)
