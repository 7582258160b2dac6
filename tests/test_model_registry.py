"""The one registry of architectures: a family registered from this file alone is served by
create_model, from_pretrained and save_pretrained of all three front-ends, se-convert and
list_models; saving from Flax plans timm's keys without torch; timm's names and pretrained
configs (the committed table, and timm's own where timm is installed)."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any
from unittest import mock

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file
from torch import nn

import se_common
import se_flax
import se_torch
from se_common import Family, FeatureInfo, TensorSpec
from se_convert import ConversionError, FileError, flax_to_state_dict, torch_to_flax
from se_convert._cli import main as se_convert_main
from tests.helpers import assert_trees_close, nchw_to_nhwc, randomize_, register

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- a toy family, this file only


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """One strided 3x3 conv, its BatchNorm and ReLU, then a classifier at ``head.fc`` (not a
    ResNet's ``fc``: the registry, not the code, knows where a family keeps it)."""

    width: int = 8

    @property
    def num_features(self) -> int:
        return self.width

    def feature_info(self) -> tuple[FeatureInfo, ...]:
        return (FeatureInfo(self.width, 2, "act1"),)

    def state_dict(self, num_classes: int, in_chans: int) -> dict[str, TensorSpec]:
        plan: dict[str, TensorSpec] = {}
        se_common.conv_keys(plan, "conv1", self.width, in_chans, 3)
        se_common.batchnorm_keys(plan, "bn1", self.width)
        if num_classes:
            se_common.linear_keys(plan, "head.fc", num_classes, self.width)
        return plan


class TorchToy(nn.Module):
    pretrained_cfg = None

    def __init__(self, config, num_classes=10, in_chans=3, features_only=False, out_indices=(0,)):
        super().__init__()
        self.config, self.num_classes, self.in_chans = config, num_classes, in_chans
        self.features_only, self.out_indices = features_only, tuple(out_indices)
        self.conv1 = nn.Conv2d(in_chans, config.width, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(config.width)
        self.act1 = nn.ReLU()
        if num_classes and not features_only:
            self.head = nn.ModuleDict({"fc": nn.Linear(config.width, num_classes)})

    @property
    def feature_info(self):
        return se_common.model_feature_info(self.config, self.features_only, self.out_indices)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        if self.features_only:
            return [x]
        x = x.mean((2, 3))
        return self.head["fc"](x) if hasattr(self, "head") else x


class LinenHead(linen.Module):
    num_classes: int
    param_dtype: Any = jnp.float32

    @linen.compact
    def __call__(self, x):
        return linen.Dense(self.num_classes, param_dtype=self.param_dtype, name="fc")(x)


class LinenToy(linen.Module):
    config: ToyConfig
    num_classes: int = 10
    in_chans: int = 3
    features_only: bool = False
    out_indices: tuple[int, ...] = (0,)
    dtype: Any = None
    param_dtype: Any = jnp.float32
    pretrained_cfg: Any = None

    @linen.compact
    def __call__(self, x, train: bool = False):
        x = linen.Conv(
            self.config.width,
            (3, 3),
            (2, 2),
            padding=((1, 1), (1, 1)),
            use_bias=False,
            param_dtype=self.param_dtype,
            name="conv1",
        )(x)
        x = se_flax.BatchNorm(
            use_running_average=not train, param_dtype=self.param_dtype, name="bn1"
        )(x)
        x = jax.nn.relu(x)
        if self.features_only:
            return [x]
        x = x.mean((1, 2))
        if self.num_classes:
            x = LinenHead(self.num_classes, self.param_dtype, name="head")(x)
        return x


class NnxHead(nnx.Module):
    def __init__(self, width, num_classes, param_dtype, rngs):
        self.fc = nnx.Linear(width, num_classes, param_dtype=param_dtype, rngs=rngs)


class NnxToy(nnx.Module):
    pretrained_cfg = None

    def __init__(
        self,
        config,
        *,
        num_classes=10,
        in_chans=3,
        features_only=False,
        out_indices=(0,),
        dtype=None,
        param_dtype=jnp.float32,
        rngs,
    ):
        self.config, self.num_classes, self.in_chans = config, num_classes, in_chans
        self.features_only, self.out_indices = features_only, tuple(out_indices)
        self.conv1 = nnx.Conv(
            in_chans,
            config.width,
            (3, 3),
            (2, 2),
            padding=((1, 1), (1, 1)),
            use_bias=False,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.bn1 = se_flax.nnx.BatchNorm(config.width, param_dtype=param_dtype, rngs=rngs)
        self.head = (
            NnxHead(config.width, num_classes, param_dtype, rngs)
            if num_classes and not features_only
            else None
        )

    def __call__(self, x):
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        if self.features_only:
            return [x]
        x = x.mean((1, 2))
        return x if self.head is None else self.head.fc(x)


TOY = Family(
    "toy",
    ToyConfig,
    builders={"torch": TorchToy, "linen": LinenToy, "nnx": NnxToy},
    classifier="head.fc",
)
PUBLISHED = {"tst_in1k": {"tag": "tst_in1k", "num_classes": 10, "hf_hub_id": "me/toynet.tst_in1k"}}


@pytest.fixture
def toy(monkeypatch):
    """``toynet`` (and ``toynet_wide``), registered for one test: the only edit."""
    monkeypatch.setitem(se_common.FAMILIES, "toy", TOY)
    for name, config, cfgs in (
        ("toynet", ToyConfig(), PUBLISHED),
        ("toynet_wide", ToyConfig(16), {}),
    ):
        monkeypatch.setitem(se_common.MODELS, name, se_common.Architecture(name, TOY, config, cfgs))


def test_a_family_registered_from_one_file_is_served_everywhere(toy, tmp_path, rng, capsys):
    x = rng.standard_normal((2, 3, 16, 16))
    # create_model and list_models
    assert se_common.list_models("toy*") == ["toynet", "toynet_wide"]
    assert se_torch.list_models("toy*", pretrained=True) == ["toynet.tst_in1k"]
    tmodel = randomize_(se_torch.create_model("toynet"), rng, torch.float64).eval()
    assert isinstance(tmodel, TorchToy) and tmodel.head["fc"].out_features == 10
    assert se_torch.create_model("toynet", width=4).conv1.out_channels == 4  # a config field
    fmodel = se_flax.create_model("toynet", param_dtype=jnp.float64)
    nnx_model = se_flax.nnx.create_model("toynet", param_dtype=jnp.float64)
    assert isinstance(fmodel, LinenToy) and isinstance(nnx_model, NnxToy)
    with torch.no_grad():
        expected = tmodel(torch.from_numpy(x)).numpy()

    # save_pretrained (PyTorch), then from_pretrained in all three front-ends
    published = tmp_path / "toynet.tst_in1k"
    se_torch.save_pretrained(tmodel, published)
    assert '"architecture": "toynet"' in (published / "config.json").read_text()
    assert '"classifier": "head.fc"' in (published / "config.json").read_text()
    m, variables = se_flax.from_pretrained(published, param_dtype=jnp.float64, verbose=False)
    assert_trees_close(m.apply(variables, nchw_to_nhwc(x)), expected, rtol=1e-12, atol=1e-12)
    n = se_flax.nnx.from_pretrained(published, param_dtype=jnp.float64, verbose=False)
    assert_trees_close(n(nchw_to_nhwc(x)), expected, rtol=1e-12, atol=1e-12)
    t = se_torch.from_pretrained(published, dtype=torch.float64, verbose=False)
    with torch.no_grad():
        assert torch.equal(t(torch.from_numpy(x)), torch.from_numpy(expected))

    # a new classifier at the family's head.fc, in each front-end
    capsys.readouterr()
    _, v3 = se_flax.from_pretrained(published, num_classes=3)
    assert "the weights' classifier head.fc (10 classes) is dropped" in capsys.readouterr().err
    assert v3["params"]["head"]["fc"]["kernel"].shape == (8, 3)
    assert se_flax.nnx.from_pretrained(
        published, num_classes=3, verbose=False
    ).head.fc.kernel.shape == (8, 3)
    assert (
        se_torch.from_pretrained(published, num_classes=3, verbose=False).head["fc"].out_features
        == 3
    )
    features = se_flax.nnx.from_pretrained(published, features_only=True, verbose=False)
    assert features.head is None and features(nchw_to_nhwc(x).astype(np.float32))[0].shape == (
        2,
        8,
        8,
        8,
    )

    # save_pretrained from linen and NNX writes PyTorch's file, bit for bit
    stored = load_file(published / "model.safetensors")
    for model, source, out in ((m, variables, "linen"), (n, None, "nnx")):
        args = (model, tmp_path / out) if source is None else (model, tmp_path / out, source)
        se_flax.save_pretrained(*args)
        written = load_file(tmp_path / out / "model.safetensors")
        assert list(written) == list(stored)
        for k in stored:
            assert (
                written[k].dtype == stored[k].dtype and written[k].tobytes() == stored[k].tobytes()
            ), k

    # se-convert: the timm layout by its recorded name, to Flax and back (the file records it),
    # and back again with --model naming it
    flax_file, back = tmp_path / "toy.safetensors", tmp_path / "toy.pth"
    assert se_convert_main([str(published), str(flax_file), "--verify"]) == 0
    assert se_convert_main([str(flax_file), str(back)]) == 0
    again = torch.load(back, weights_only=True)
    assert sorted(again) == sorted(stored)
    assert all(torch.equal(again[k], torch.from_numpy(v)) for k, v in stored.items())
    again = tmp_path / "again.pth"
    assert se_convert_main([str(flax_file), str(again), "--model", "toynet", "--verify"]) == 0
    assert torch.load(again, weights_only=True).keys() == torch.load(back, weights_only=True).keys()
    assert "toynet" in capsys.readouterr().out


def test_a_family_without_a_front_end_says_so(toy, monkeypatch):
    monkeypatch.setitem(
        se_common.MODELS,
        "toynet",
        se_common.Architecture(
            "toynet", dataclasses.replace(TOY, builders={"torch": TorchToy}), ToyConfig()
        ),
    )
    with pytest.raises(ValueError, match=r"family 'toy' has no nnx builder \(it has torch\)"):
        se_flax.nnx.create_model("toynet")
    with pytest.raises(ValueError, match=r"unknown model 'toynot'; known models: .*toynet"):
        se_flax.create_model("toynot")


@pytest.mark.parametrize("features_only", [False, True])
def test_feature_info_is_timms_in_every_front_end(features_only):
    options = {"features_only": features_only, "out_indices": (0, 2, 4)}
    expected = [
        {"num_chs": 64, "reduction": 2, "module": "act1"},
        {"num_chs": 256, "reduction": 4, "module": "layer1"},
        {"num_chs": 512, "reduction": 8, "module": "layer2"},
        {"num_chs": 1024, "reduction": 16, "module": "layer3"},
        {"num_chs": 2048, "reduction": 32, "module": "layer4"},
    ]
    if features_only:
        expected = [expected[i] for i in (0, 2, 4)]
    with torch.device("meta"):
        assert se_torch.create_model("seresnet50", **options).feature_info == expected
    assert se_flax.create_model("seresnet50", **options).feature_info == expected
    nnx_model = nnx.eval_shape(lambda: se_flax.nnx.create_model("seresnet50", **options))
    assert nnx_model.feature_info == expected
    if features_only:  # the maps returned are the levels described
        model = se_flax.create_model("seresnet18", **options)
        x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
        maps = jax.eval_shape(model.init_with_output, jax.random.key(0), x)[0]
        info = model.feature_info
        assert [(m.shape[1], m.shape[3]) for m in maps] == [
            (64 // f["reduction"], f["num_chs"]) for f in info
        ]


def test_config_options_change_the_config_and_bad_ones_name_the_value():
    model = se_flax.create_model("resnet50", layers=[1, 1, 1, 1], attn="se")
    assert model.config == dataclasses.replace(
        se_common.get_model("seresnet50").config, layers=(1, 1, 1, 1)
    )
    with torch.device("meta"):
        assert len(se_torch.create_model("resnext50_32x4d", layers=(1, 2, 1, 1)).layer2) == 2
    for options, message in (
        (
            {"layers": (1, 1, 1)},
            r"layers must be 4 block counts \(one per stage\), got \(1, 1, 1\)",
        ),
        ({"layers": (1, 0, 1, 1)}, r"layers\[1\] must be an integer >= 1, got 0"),
        ({"cardinality": 0}, r"cardinality must be an integer >= 1, got 0"),
        ({"base_width": 2.5}, r"base_width must be an integer >= 1, got 2.5"),
    ):
        with pytest.raises(ValueError, match=message):
            se_flax.nnx.create_model("resnext50_32x4d", **options)
    # zero_init_last is the builder's option (it overrides the config's default)
    assert se_common.get_model("resnet18").family.config_options is not None
    with torch.device("meta"):
        model = se_torch.create_model("resnet18", zero_init_last=False)
    assert model.config == se_common.get_model("resnet18").config


def test_list_models_matches_timm_style():
    names = se_common.list_models()  # timm 1.0.31's order (natural: digits as numbers)
    assert names[:6] == [
        "ecaresnet26t",
        "ecaresnet50d",
        "ecaresnet50t",
        "ecaresnet101d",
        "ecaresnet200d",
        "ecaresnet269d",
    ]
    assert se_common.list_models("seresnext*") == [
        "seresnext26d_32x4d",
        "seresnext26t_32x4d",
        "seresnext50_32x4d",
        "seresnext101_32x4d",
        "seresnext101_32x8d",
        "seresnext101_64x4d",
        "seresnext101d_32x8d",
        "seresnextaa101d_32x8d",
        "seresnextaa201d_32x8d",
    ]
    assert se_common.list_models(["sk*", "resnext*"], exclude="skresnet*") == [
        "resnext50_32x4d",
        "resnext50d_32x4d",
        "resnext101_32x4d",
        "resnext101_32x8d",
        "resnext101_32x16d",
        "resnext101_32x32d",
        "resnext101_64x4d",
        "skresnext50_32x4d",
    ]
    tagged = se_common.list_models("seresnet50*", pretrained=True)
    assert tagged == [
        "seresnet50.a1_in1k",
        "seresnet50.a2_in1k",
        "seresnet50.a3_in1k",
        "seresnet50.ra2_in1k",
    ]
    assert se_common.list_models("seresnet50.a1*", pretrained=True) == ["seresnet50.a1_in1k"]
    assert "seresnet18" in names and not se_common.list_models("seresnet18", pretrained=True)
    assert se_flax.list_models is se_common.list_models is se_flax.nnx.list_models


def test_every_name_has_timms_default_pretrained_cfg():
    cfg = se_common.get_model("seresnet50").pretrained_cfg()
    assert (cfg.tag, cfg.interpolation, cfg.crop_pct, cfg.test_input_size) == (
        "a1_in1k",
        "bicubic",
        0.95,
        (3, 288, 288),
    )
    assert se_common.get_model("resnet50").pretrained_cfg("tv_in1k").interpolation == "bilinear"
    with pytest.raises(ValueError, match=r"seresnet50 has no pretrained tag 'nope'"):
        se_common.get_model("seresnet50").pretrained_cfg("nope")
    for name in se_common.list_models():
        assert se_common.get_model(name).pretrained, name  # timm registers every name


# Every block type (basic, bottleneck, grouped, both SK kinds): each attention layer in each.
ONE_PER_BLOCK = ("resnet18", "resnet50", "resnext50_32x4d", "skresnet18", "skresnext50_32x4d")


@contextlib.contextmanager
def shapes_only():
    """Modules built on the meta device without their initialisers: on meta tensors those run
    through PyTorch's Python reference kernels: 12 of the 19 s that building every registered name
    took. The initialisers leave keys, shapes and dtypes as they found them."""
    keep = lambda tensor, *args, **kwargs: tensor  # noqa: E731
    with torch.device("meta"), contextlib.ExitStack() as stack:
        for name in dir(torch.nn.init):
            if name.endswith("_") and not name.startswith("_"):  # kaiming_uniform_, zeros_, ...
                stack.enter_context(mock.patch.object(torch.nn.init, name, keep))
        for name in ("uniform_", "normal_", "zero_", "fill_"):
            stack.enter_context(mock.patch.object(torch.Tensor, name, keep))
        yield


@pytest.mark.parametrize("attn", [None, "se", "eca", "cbam", "ese"])
def test_state_dict_plans_are_se_torchs_state_dicts(attn):
    """The framework-free plan of every name (and of each attention layer in every block type)
    is the PyTorch twin's state_dict: the same keys in the same order, shapes and dtypes."""
    options = {} if attn is None else {"attn": attn}
    with shapes_only():
        for name in se_common.list_models() if attn is None else ONE_PER_BLOCK:
            heads = ((1000, 3), (0, 2)) if name in ONE_PER_BLOCK else ((1000, 3),)
            for num_classes, in_chans in heads:
                model = se_torch.create_model(
                    name, num_classes=num_classes, in_chans=in_chans, **options
                )
                plan = model.config.state_dict(num_classes, in_chans)
                state = model.state_dict()
                assert list(plan) == list(state), name
                for k, v in state.items():
                    dtype = "int64" if v.dtype == torch.int64 else "float"
                    assert plan[k] == TensorSpec(tuple(v.shape), dtype), (name, k)


def random_variables(model: linen.Module, rng: np.random.Generator) -> Any:
    """Random values of every variable of ``model`` (float32; counters as ints)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 32, 32, 3), jnp.float32))
    return jax.tree.map(
        lambda s: (
            rng.standard_normal(s.shape).astype(s.dtype)
            if jnp.issubdtype(s.dtype, jnp.floating)
            else rng.integers(0, 100, s.shape).astype(s.dtype)
        ),
        shapes,
    )


def test_flax_to_state_dict_is_strict(rng):
    model = se_flax.create_model("resnet18", num_classes=4)
    variables = random_variables(model, rng)
    plan = model.config.state_dict(4, 3)
    extra = {**plan, "fc.extra": TensorSpec((3,))}
    wrong = {**plan, "fc.weight": TensorSpec((5, 512))}
    del plan["bn1.running_var"]
    with pytest.raises(ConversionError) as e:
        flax_to_state_dict(variables, plan)
    assert "batch_stats/bn1/var (no key of the state_dict plan takes it)" in str(e.value)
    with pytest.raises(ConversionError, match=r"fc\.extra"):
        flax_to_state_dict(variables, extra)
    with pytest.raises(ConversionError, match=r"params/fc/kernel: \(512, 4\) float32"):
        flax_to_state_dict(variables, wrong)
    mixed = jax.tree.map(lambda v: v.astype(jnp.float64) if v.ndim == 1 else v, variables)
    with pytest.raises(ConversionError, match=r"float32, float64 floating dtype"):
        flax_to_state_dict(mixed, model.config.state_dict(4, 3))


def test_saving_a_model_whose_weights_are_not_its_architectures_is_refused(tmp_path):
    import functools

    model = se_torch.create_model(
        "seresnet18", attn_layer=functools.partial(se_torch.SqueezeExcite, rd_ratio=0.25)
    )
    with pytest.raises(ConversionError, match=r"layer1\.0\.se\.fc1\.weight: \(16, 64, 1, 1\)"):
        se_torch.save_pretrained(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(FileError, match=r"no model name has this config"):
        se_torch.save_pretrained(se_torch.create_model("resnet18", layers=(1, 1, 1, 1)), tmp_path)


NO_TORCH_SAVE = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # any `import torch` now fails
    sys.modules["se_torch"] = None
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx, serialization
    import se_common, se_flax
    from se_convert import update_nnx
    se_common.register_model(
        "seresnet10", "resnet", se_common.ResNetConfig("basic", (1, 1, 1, 1), attn="se")
    )
    rng = np.random.default_rng(int(sys.argv[2]))
    model = se_flax.create_model("seresnet10", num_classes=5)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 32, 32, 3), jnp.float32))
    def draw():  # random values in every variable, counters too
        return jax.tree.map(
            lambda s: rng.standard_normal(s.shape).astype(s.dtype)
            if jnp.issubdtype(s.dtype, jnp.floating)
            else rng.integers(0, 2**31, s.shape).astype(s.dtype),
            shapes,
        )
    linen_variables, nnx_variables = draw(), draw()
    se_flax.save_pretrained(model, sys.argv[1] + "/linen", linen_variables)
    abstract = nnx.eval_shape(lambda: se_flax.nnx.create_model("seresnet10", num_classes=5))
    se_flax.save_pretrained(update_nnx(abstract, nnx_variables), sys.argv[1] + "/nnx")
    for side, variables in (("linen", linen_variables), ("nnx", nnx_variables)):
        with open(f"{sys.argv[1]}/{side}.msgpack", "wb") as f:
            f.write(serialization.to_bytes(variables))
    print(sorted(m for m in ("torch", "se_torch") if sys.modules.get(m)))
    """
)


def test_saving_from_flax_needs_no_torch(tmp_path, monkeypatch, rng):
    """Saved from linen and NNX with torch unimportable; PyTorch loads each bit for bit."""
    register(monkeypatch, "seresnet10", se_common.ResNetConfig("basic", (1, 1, 1, 1), attn="se"))
    seed = str(rng.integers(2**31))
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SAVE, str(tmp_path), seed],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
    from flax import serialization

    model = se_flax.create_model("seresnet10", num_classes=5)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 32, 32, 3), jnp.float32))
    for side in ("linen", "nnx"):
        variables = serialization.from_bytes(shapes, (tmp_path / f"{side}.msgpack").read_bytes())
        tmodel = se_torch.from_pretrained(tmp_path / side, verbose=False)
        assert_trees_close(torch_to_flax(tmodel), variables, rtol=0, atol=0, what=side)


# ---------------------------------------------------------------- the real timm (skipped in CI)


def test_the_committed_pretrained_table_is_timms():
    timm = pytest.importorskip("timm")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from timm_pretrained_cfgs import timm_table
    finally:
        sys.path.pop(0)
    import json

    table = json.loads(se_common._registry.PRETRAINED_CFGS.read_text())
    assert table["models"] == json.loads(json.dumps(timm_table(se_common.list_models()))), (
        f"regenerate with scripts/timm_pretrained_cfgs.py (table: timm {table['timm']}, "
        f"installed: {timm.__version__})"
    )


@pytest.mark.parametrize(
    "name",
    [
        "seresnet18",
        "skresnet18",
        "seresnext50_32x4d",
        "resnet10t",
        "resnetrs50",
        "resnetaa34d",
        "test_efficientnet",
        "tf_mixnet_s",
        "mobilenetv1_100",
        "tf_mobilenetv3_small_minimal_100",
        "lcnet_050",
        "regnety_002",
        "regnetv_064",
        "regnetz_005",
    ],
)
def test_timm_loads_what_flax_saves_bit_for_bit(name, tmp_path, rng):
    timm = pytest.importorskip("timm")
    model = se_flax.create_model(name, num_classes=7)
    variables = jax.jit(model.init)(
        jax.random.key(int(rng.integers(2**31))), jnp.ones((1, 32, 32, 3), jnp.float32)
    )
    variables = jax.tree.map(
        lambda v: (
            rng.standard_normal(v.shape).astype(v.dtype)
            if jnp.issubdtype(v.dtype, jnp.floating)
            else v
        ),
        variables,
    )
    se_flax.save_pretrained(model, tmp_path, variables)
    reference = timm.create_model(
        name,
        pretrained=True,
        num_classes=7,
        pretrained_cfg_overlay={"file": str(tmp_path / "model.safetensors"), "num_classes": 7},
    )
    written = flax_to_state_dict(variables, model.config.state_dict(7, 3))
    state = reference.state_dict()
    assert list(state) == list(written)
    for k, v in state.items():
        assert v.numpy().tobytes() == written[k].tobytes(), k
