"""Hostile ``config.json`` files of timm's pretrained layout (a directory or a hub repo): each
ends in the project's own error (``FileError`` / ``ConversionError``) naming the field, before any
front-end builds or allocates anything, and a seeded fuzz of configs ends in a load or in that
clean error. The file cases are in test_hostile_files.py."""

from __future__ import annotations

import collections.abc
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file, save_file

import se_flax
import se_torch
from se_common import PretrainedCfg
from se_common._pretrained import LIMITS
from se_convert import ConversionError, FileError, read_pretrained
from tests.helpers import randomize_

ARCH = "seresnet18"
LOADERS = {
    "linen": lambda source, **kw: se_flax.from_pretrained(source, verbose=False, **kw),
    "nnx": lambda source, **kw: se_flax.nnx.from_pretrained(source, verbose=False, **kw),
    "torch": lambda source, **kw: se_torch.from_pretrained(source, verbose=False, **kw),
}


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """A random seresnet18 in timm's layout, as se_torch.save_pretrained writes it."""
    directory = tmp_path_factory.mktemp("published") / "seresnet18"
    rng = np.random.default_rng(20261201)
    model = randomize_(se_torch.create_model(ARCH), rng, torch.float32).eval()
    se_torch.save_pretrained(model, directory, pretrained_cfg=PretrainedCfg(ARCH, tag="t_in1k"))
    return directory


def copy(tmp_path: Path, published: Path, *, config=None, text=None, tensors=None) -> Path:
    """The published directory with its config changed (a function of the dict, or raw text)."""
    out = tmp_path / "hostile"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(published, out)
    if config is not None:
        data = json.loads((out / "config.json").read_text())
        config(data)
        (out / "config.json").write_text(json.dumps(data))
    if text is not None:
        (out / "config.json").write_text(text(json.loads((out / "config.json").read_text())))
    if tensors is not None:
        data = load_file(out / "model.safetensors")
        tensors(data)
        save_file(data, out / "model.safetensors", metadata={"format": "pt"})
    return out


def never_built(monkeypatch) -> None:
    """Building any model (in any front-end) is a test failure from here on."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the weights were checked")

    for module in ("se_torch._pretrained", "se_flax._pretrained", "se_flax.nnx._pretrained"):
        monkeypatch.setattr(f"{module}.create_model", refuse)


# --- sizes from the config are checked against the weights before anything is built ----------


@pytest.mark.parametrize("front_end", sorted(LOADERS))
def test_a_config_s_sizes_are_checked_before_any_model_is_built(
    tmp_path, published, monkeypatch, front_end
):
    """200,000 classes (a 410 MB classifier for seresnet18) and 1,000 input channels over the
    weights of a 1,000-class, 3-channel model: refused from the plan, nothing allocated."""

    def bigger(c: dict) -> None:
        c["num_classes"] = c["pretrained_cfg"]["num_classes"] = 200_000
        c["model_args"].update(num_classes=200_000, in_chans=60)
        c["pretrained_cfg"].update(input_size=[60, 224, 224], mean=[0.5] * 60, std=[0.5] * 60)

    directory = copy(tmp_path, published, config=bigger)
    never_built(monkeypatch)
    with pytest.raises(ConversionError, match="the weights do not fit seresnet18") as error:
        LOADERS[front_end](directory)
    assert sorted(error.value.mismatched) == [
        "conv1.weight: stored (64, 3, 7, 7) float32, seresnet18 needs (64, 60, 7, 7)",
        "fc.bias: stored (1000,) float32, seresnet18 needs (200000,)",
        "fc.weight: stored (1000, 512) float32, seresnet18 needs (200000, 512)",
    ]


def test_two_million_classes_is_out_of_range(tmp_path, published, monkeypatch):
    """The attack's 1 KB config that made se_torch allocate a 16 GB classifier."""

    def huge(c: dict) -> None:
        c["num_classes"] = c["pretrained_cfg"]["num_classes"] = 2_000_000

    directory = copy(tmp_path, published, config=huge)
    never_built(monkeypatch)
    with pytest.raises(FileError, match=r"num_classes must be .*at most 1,000,000.*2000000"):
        se_torch.from_pretrained(directory, verbose=False)


@pytest.mark.parametrize("front_end", sorted(LOADERS))
def test_headless_weights_under_a_config_with_classes_are_an_error(
    tmp_path, published, monkeypatch, front_end
):
    """Weights without fc under a 1000-class config: before, a random classifier was built
    silently; now the missing keys are listed, with the options that fix it."""
    directory = copy(tmp_path, published, tensors=lambda t: [t.pop("fc.weight"), t.pop("fc.bias")])
    never_built(monkeypatch)
    with pytest.raises(ConversionError, match=r"pass num_classes=0 for pooled features") as error:
        LOADERS[front_end](directory)
    assert error.value.missing == ["fc.weight", "fc.bias"]


# --- numbers JSON can hold and no field needs -------------------------------------------------


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        ("num_classes", "9" * 5000, r"num_classes: a number of 5,000 characters"),
        ("pretrained_cfg.input_size.1", "1" * 5000, r"pretrained_cfg\.input_size\[1\]: a number"),
        ("model_args.in_chans", "-" + "3" * 4400, r"model_args\.in_chans: a number of 4,400"),
        ("pretrained_cfg.license", "1" * 5000, r"pretrained_cfg\.license: a number of 5,000"),
        ("pretrained_cfg.crop_pct", "0." + "9" * 200, r"pretrained_cfg\.crop_pct: a number of"),
        ("pretrained_cfg.mean.0", "NaN", r"pretrained_cfg\.mean\[0\]: NaN is not a number JSON"),
        ("pretrained_cfg.std.2", "-Infinity", r"pretrained_cfg\.std\[2\]: -Infinity is not"),
        ("pretrained_cfg.crop_pct", "1e999", r"pretrained_cfg\.crop_pct: 1e999 is not finite"),
    ],
)
def test_numbers_no_field_needs_are_named(tmp_path, published, where, value, message):
    """A 5,000-digit integer used to raise Python's own 'Exceeds the limit (4300 digits)'."""

    def place(c: dict) -> str:
        *parents, leaf = where.split(".")
        node = c
        for name in parents:
            node = node[name]
        marker = "__VALUE__"
        node[int(leaf) if isinstance(node, list) else leaf] = marker
        return json.dumps(c).replace(f'"{marker}"', value)

    directory = copy(tmp_path, published, text=place)
    with pytest.raises(FileError, match=message):
        read_pretrained(directory)


def test_a_duplicate_key_is_an_error(tmp_path, published):
    directory = copy(tmp_path, published, text=lambda c: json.dumps(c)[:-1] + ', "num_classes": 7}')
    with pytest.raises(FileError, match="duplicate key 'num_classes'"):
        read_pretrained(directory)


# --- every pretrained_cfg field in its range, at load ------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"input_size": [3, 1_000_000, 1_000_000]}, r"input_size height must be an integer in"),
        (
            {"input_size": [3, 4096, 4096 * 2]},
            r"input_size width must be an integer in \[1, 4096\]",
        ),
        ({"input_size": [65, 32, 32]}, r"input_size channels must be an integer in \[1, 64\]"),
        ({"input_size": [64, 4096, 4096]}, r"input_size C \* H \* W must be a count in"),
        ({"input_size": [3.0, 224, 224]}, "input_size must be 3 positive integers"),
        ({"input_size": "3x224x224"}, "input_size must be 3 positive integers"),
        ({"test_input_size": [3, 224, 100_000]}, "test_input_size width must be"),
        ({"test_input_size": [1, 224, 224]}, "test_input_size .* has other channels"),
        ({"crop_pct": 1e-9}, r"crop_pct must be a number in \[0.25, 2\]"),
        ({"crop_pct": "0.9"}, "crop_pct must be a finite number"),
        ({"test_crop_pct": 40}, r"test_crop_pct must be a number in \[0.25, 2\]"),
        ({"mean": [0.5, 0.5, 1e300]}, r"mean must be numbers in \[0, 1\], got 1e\+300"),
        ({"std": [0.2, 1e-30, 0.2]}, r"std must be numbers in \[0.01, 10\]"),
        ({"std": [0.2, True, 0.2]}, "std must be 3 finite numbers"),
        ({"tag": "a1\x1b[2J_in1k"}, r"tag must be a name of letters.*'a1\\x1b\[2J_in1k'"),
        ({"tag": "x" * 1000}, r"tag must be a name .* \(at most 128\)"),
        ({"num_classes": 1_000_001}, r"num_classes 1000 but its pretrained_cfg's 1000001"),
        ({"interpolation": ["bicubic"]}, r"interpolation \['bicubic'\] is not one of"),
        ({"crop_mode": 7}, "crop_mode 7 is not one of"),
        ({"label_names": ["cat", "dog"]}, "label_names must be 1000 strings .* got 2 entries"),
        ({"label_descriptions": {"n01": 3}}, "label_descriptions must map strings to strings"),
        ({"pool_size": [7, 10**9]}, "pool_size must be 2 sides"),
        ({"fixed_input_size": "yes"}, "fixed_input_size must be true or false"),
        ({"min_input_size": [3, 0, 224]}, "min_input_size must be 3 positive integers"),
        ({"label_offset": 5000}, r"label_offset must be an integer in \[0, 1000\]"),
    ],
)
def test_pretrained_cfg_fields_out_of_range_are_named(tmp_path, published, fields, message):
    def change(c: dict) -> None:
        c["pretrained_cfg"].update(fields)

    with pytest.raises(FileError, match=message):
        read_pretrained(copy(tmp_path, published, config=change))


def test_timm_s_ranges_are_inside_the_limits():
    """Every pretrained config timm publishes for the registered names loads (the limits are
    ranges of real configs, not of these tests)."""
    from se_common import MODELS

    checked = 0
    for arch in MODELS.values():
        for tag in arch.pretrained:
            cfg = arch.pretrained_cfg(tag)
            for name in ("input_size", "test_input_size"):
                size = getattr(cfg, name)
                if size is not None:
                    assert max(size[1:]) <= LIMITS["side"][1]
            checked += 1
    assert checked >= 60


# --- model_args and the config's other claims about the model ----------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["model_args"].update(in_chans="3"), r"in_chans \(input channels\) must be"),
        (lambda c: c["model_args"].update(in_chans=True), "in_chans .* must be an integer"),
        (lambda c: c["model_args"].update(in_chans=0), r"an integer in \[1, 64\], got 0"),
        (lambda c: c["model_args"].update(num_classes=10), "model_args num_classes 10 but the"),
        (
            lambda c: c["model_args"].update(global_pool=None),
            "global_pool .* must be a string, got None",
        ),
        (lambda c: c["model_args"].update({"a\nb": 1}), r"model_args 'a\\nb' are not options"),
        (lambda c: c.update(num_features=2048), "num_features 2048, but seresnet18 has 512"),
        (lambda c: c.update(global_pool="max"), "global_pool 'max': se-flax pools by 'avg'"),
        (lambda c: c["pretrained_cfg"].update(classifier="head.fc"), "classifier 'head.fc', but"),
        (lambda c: c["pretrained_cfg"].update(first_conv="stem.0"), "first_conv 'stem.0', but"),
        (lambda c: c.update(model_args=[1, 2]), r"model_args must be an object, got \[1, 2\]"),
    ],
)
def test_model_args_and_claims_are_checked_against_the_family(tmp_path, published, change, message):
    with pytest.raises(FileError, match=message):
        read_pretrained(copy(tmp_path, published, config=change))


def test_non_regular_config_and_weights_are_refused_without_reading(tmp_path, published):
    """A FIFO config.json or model.safetensors would block a reader forever."""
    for name in ("config.json", "model.safetensors"):
        directory = copy(tmp_path, published)
        (directory / name).unlink()
        os.mkfifo(directory / name)
        with pytest.raises(FileError, match="not a regular file"):
            read_pretrained(directory)


# --- preprocess: never an output or an intermediate it cannot hold ------------------------------


def test_preprocess_refuses_a_resize_beyond_pillow_s_bound(monkeypatch, rng):
    """A 1 x 4000 strip at crop_pct 0.25 would be resized to 896 x 3,584,000 pixels (9.6 GB)."""
    cfg = PretrainedCfg(ARCH, crop_pct=0.25)
    strip = rng.integers(0, 256, (4000, 1, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"image 0: 1 x 4000 would be resized to 896 x 3584000"):
        cfg.preprocess(strip)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)  # the user's own bound, obeyed
    with pytest.raises(ValueError, match=r"MAX_IMAGE_PIXELS \(10,000 pixels\)"):
        PretrainedCfg(ARCH, input_size=(3, 96, 96)).preprocess(strip[:200, :150])


class ManyImages(collections.abc.Sequence):
    """A batch that claims 10**9 images (each the same small one), as a lazy dataset may."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, i):
        return self.image


def test_preprocess_refuses_an_output_it_cannot_hold(rng):
    image = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    want = 10**9 * 224 * 224 * 3 * 4
    with pytest.raises(ValueError, match=f"need {want:,} bytes of float32, more than this machine"):
        PretrainedCfg(ARCH).preprocess(ManyImages(image))


# --- a seeded fuzz of config.json: a load, or the project's own error ---------------------------

HOSTILE_VALUES = [
    None,
    True,
    -1,
    0,
    7,
    2**63,
    1e308,
    0.5,
    "",
    "bicubic",
    "\x1b[2J",
    "x" * 10_000,
    [],
    [3, 224],
    [3, 10**6, 10**6],
    [0.5] * 3,
    {},
    {"a": [1, {"b": None}]},
]
RAW_VALUES = ["9" * 5000, "NaN", "Infinity", "1e999", "[" * 50 + "]" * 50]


def _paths(tree, prefix=()):
    """Every (path, value) of a JSON tree, parents before children."""
    yield prefix, tree
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _paths(v, (*prefix, i))


def mutate(config: dict, rng: np.random.Generator) -> str:
    """One to three random changes: a value replaced (by a hostile one, or raw text JSON allows
    but no field needs), a key deleted, a key added; or bytes of the text flipped."""
    if rng.random() < 0.2:
        data = bytearray(json.dumps(config).encode())
        for at in rng.integers(0, len(data), rng.integers(1, 6)):
            data[at] = int(rng.integers(32, 127))
        return data.decode()
    config = json.loads(json.dumps(config))
    raw = {}
    for _ in range(rng.integers(1, 4)):
        paths = [p for p, _ in _paths(config) if p]
        path = paths[rng.integers(len(paths))]
        parent = config
        for name in path[:-1]:
            parent = parent[name]
        action = rng.random()
        if action < 0.15 and isinstance(parent, dict):
            del parent[path[-1]]
        elif action < 0.3 and isinstance(parent, dict):
            parent[f"extra{len(raw)}"] = HOSTILE_VALUES[rng.integers(len(HOSTILE_VALUES))]
        elif action < 0.45:
            marker = f"__RAW{len(raw)}__"
            raw[marker] = RAW_VALUES[rng.integers(len(RAW_VALUES))]
            parent[path[-1]] = marker
        else:
            parent[path[-1]] = HOSTILE_VALUES[rng.integers(len(HOSTILE_VALUES))]
    text = json.dumps(config)
    for marker, value in raw.items():
        text = text.replace(f'"{marker}"', value)
    return text


def test_fuzzed_configs_load_or_fail_cleanly(tmp_path, published, rng):
    """80 mutated configs: each loads (in PyTorch, the one front-end that allocates eagerly),
    its fields within the limits and its weights the published ones; or ends in FileError /
    ConversionError. Never another exception, never a model built from unchecked sizes."""
    original = json.loads((published / "config.json").read_text())
    stored = load_file(published / "model.safetensors")
    outcomes = collections.Counter()
    for i in range(80):
        text = mutate(original, rng)
        directory = copy(tmp_path, published, text=lambda _c, text=text: text)
        try:
            pretrained = read_pretrained(directory)
            options = pretrained.options(None, False)
            pretrained.check(options)
            model = se_torch.from_pretrained(directory, verbose=False)
        except (FileError, ConversionError):
            outcomes["refused"] += 1
            continue
        cfg = model.pretrained_cfg
        assert LIMITS["num_classes"][0] <= cfg.num_classes <= LIMITS["num_classes"][1], text
        assert math.prod(cfg.input_size) <= LIMITS["values"][1], text
        assert all(math.isfinite(v) for v in (*cfg.mean, *cfg.std, cfg.crop_pct)), text
        for k, v in model.state_dict().items():  # the same weights, whatever else changed
            assert np.array_equal(v.numpy(), stored[k]), (i, k, text)
        outcomes["loaded"] += 1
    assert outcomes["refused"] >= 20 and outcomes["loaded"] >= 5, outcomes
