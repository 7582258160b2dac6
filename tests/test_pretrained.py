"""``from_pretrained`` / ``save_pretrained``: timm's layout (a hub cache or a directory) into
linen, NNX and PyTorch models and back, offline, the Flax side without torch.

Every "published" checkpoint is a randomly initialised model saved here in timm's layout; hub ids
resolve from a Hugging Face cache the tests build (``HF_HUB_OFFLINE=1``, see conftest)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image
from safetensors.numpy import load_file, save_file

import se_common
import se_flax
import se_torch
from se_common import PretrainedCfg
from se_common._pretrained import IMAGENET_MEAN, IMAGENET_STD
from se_convert import (
    ConversionError,
    FileError,
    flax_to_state_dict,
    load,
    read_pretrained,
    torch_to_flax,
)
from se_convert._cli import main as se_convert_main
from tests.helpers import flatten, randomize_

ROOT = Path(__file__).resolve().parents[1]
ARCH = "seresnet18"  # the smallest SE architecture built here
# float32 parity of a seresnet18 at 64 x 64 with random O(1) weights: the logits are O(10);
# measured max |linen - torch| 1.9e-6 (CPU), bounds 10x that.
ATOL32, RTOL32 = 2e-5, 1e-5
ATOL64 = 1e-11  # float64: rounding level


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def torch_out(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(nchw(x)).numpy()


def publish(
    directory: Path, rng: np.random.Generator, dtype=torch.float32, **cfg
) -> torch.nn.Module:
    """A random seresnet18 in timm's layout at ``directory`` (as ``save_for_hf`` writes it)."""
    model = randomize_(se_torch.create_model(ARCH), rng, dtype).eval()
    cfg = PretrainedCfg(ARCH, **{"tag": "tst_in1k", "interpolation": "bicubic", **cfg})
    se_torch.save_pretrained(model, directory, pretrained_cfg=cfg)
    return model


def hub_cache(home: Path, repo: str, files: Path) -> None:
    """``files`` placed as huggingface_hub caches a download: ``HF_HOME/hub/models--owner--name``
    with ``snapshots/<commit>/``, and ``refs/main`` and ``refs/v1`` naming the commit."""
    commit = hashlib.sha1(repo.encode()).hexdigest()
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "snapshots" / commit).mkdir(parents=True)
    for f in files.iterdir():
        shutil.copy(f, root / "snapshots" / commit / f.name)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    (root / "refs" / "v1").write_text(commit)  # a tag, for ids with @v1


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    directory = tmp_path_factory.mktemp("published") / "seresnet18.tst_in1k"
    return directory, publish(directory, np.random.default_rng(20261126))


def images(rng: np.random.Generator, n: int = 2, size: int = 64) -> np.ndarray:
    return rng.standard_normal((n, size, size, 3)).astype(np.float32)


# --- the hub: offline, from the cache, in a process where torch cannot be imported ------------

NO_TORCH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["torch"] = None  # any `import torch` now fails
    sys.modules["se_torch"] = None
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_default_matmul_precision", "highest")
    import se_flax
    from se_convert._cli import main
    x, x64, out = np.load(sys.argv[1]), np.load(sys.argv[2]), sys.argv[3]
    model, variables = se_flax.from_pretrained("timm/seresnet18.tst_in1k")
    linen = jax.jit(model.apply)(variables, x)
    nnx_model = se_flax.nnx.from_pretrained("hf-hub:timm/seresnet18.tst_in1k@v1", verbose=False)
    nnx_out = nnx_model(x)
    m64, v64 = se_flax.from_pretrained("timm/seresnet18.f64", param_dtype=np.float64)
    out64 = jax.jit(m64.apply)(v64, x64)
    rc = main(["timm/seresnet18.tst_in1k", out + ".msgpack"])
    try:
        se_flax.from_pretrained("timm/seresnet50.absent")
        error = None
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    np.savez(out, linen=linen, nnx=nnx_out, out64=out64)
    print(json.dumps({
        "torch": sys.modules.get("torch") is not None,
        "cfg": model.pretrained_cfg == nnx_model.pretrained_cfg and model.pretrained_cfg.tag,
        "dtypes": sorted({str(v.dtype) for v in jax.tree.leaves(v64)}),
        "rc": rc,
        "error": error,
    }))
    """
)


def test_hub_ids_load_offline_from_the_cache_without_torch(tmp_path, rng, published):
    """The issue's acceptance test: a hub cache built from random weights, HF_HUB_OFFLINE=1,
    HF_HOME pointing at it, torch unimportable: linen, NNX and se-convert load by hub id and
    give the PyTorch model's logits (float32 tolerance; float64 at rounding level)."""
    directory, torch_model = published
    home = tmp_path / "hf"
    hub_cache(home, "timm/seresnet18.tst_in1k", directory)
    model64 = publish(tmp_path / "f64", rng, torch.float64)
    hub_cache(home, "timm/seresnet18.f64", tmp_path / "f64")
    x = images(rng)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "x64.npy", x.astype(np.float64))
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            NO_TORCH_SCRIPT,
            *(str(tmp_path / f) for f in ("x.npy", "x64.npy", "out")),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["torch"] is False  # torch was never imported
    assert report["cfg"] == "tst_in1k"
    assert report["dtypes"] == ["float64", "int32"]  # the counters are int32, as PyTorch's
    assert report["rc"] == 0
    assert "not in the Hugging Face cache" in report["error"]
    assert "HF_HUB_OFFLINE=1" in report["error"] and "hf download" in report["error"]
    parameters = sum(p.numel() for p in torch_model.parameters())
    assert f"loaded timm/seresnet18.tst_in1k: seresnet18, tag tst_in1k, {parameters:,}" in (
        result.stderr
    )
    out = np.load(tmp_path / "out.npz")
    expected = torch_out(torch_model, x)
    np.testing.assert_allclose(out["linen"], expected, rtol=RTOL32, atol=ATOL32)
    np.testing.assert_allclose(out["nnx"], expected, rtol=RTOL32, atol=ATOL32)
    expected64 = torch_out(model64, x.astype(np.float64))
    np.testing.assert_allclose(out["out64"], expected64, rtol=0, atol=ATOL64)
    # se-convert wrote the same variables from the hub id
    from flax import serialization

    written = serialization.msgpack_restore((tmp_path / "out.msgpack").read_bytes())
    _, variables = se_flax.from_pretrained(directory, verbose=False)
    assert flatten(written).keys() == flatten(variables).keys()
    for k, v in flatten(variables).items():
        assert np.array_equal(np.asarray(v), flatten(written)[k]), k


def test_an_uncached_hub_id_offline_is_one_clear_error():
    with pytest.raises(FileError, match="HF_HUB_OFFLINE=1 allows no download") as e:
        se_flax.from_pretrained("timm/seresnet50.a1_in1k")
    assert "hf download timm/seresnet50.a1_in1k" in str(e.value)
    with pytest.raises(FileError, match="not in the Hugging Face cache"):
        se_torch.from_pretrained("hf-hub:timm/skresnet18.ra_in1k@main")


@pytest.mark.parametrize(
    ("error", "message"),
    [
        ("LocalEntryNotFoundError", r"cannot download config\.json \(no connection to the hub\?\)"),
        ("RepositoryNotFoundError", "no such repo on the hub"),
        ("RevisionNotFoundError", "the repo has no revision 'v9'"),
    ],
)
def test_hub_failures_online_are_one_clear_error_each(monkeypatch, error, message):
    """What huggingface_hub raises online (no connection, no repo, no revision), each mapped to
    one message; the client is stubbed: the tests have no network."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub import errors as hub_errors

    def download(repo_id, filename, **kwargs):
        message = f"stub: {repo_id} {filename} {kwargs}"
        if error == "LocalEntryNotFoundError":
            raise hub_errors.LocalEntryNotFoundError(message)
        response = SimpleNamespace(headers={}, request=None, status_code=404)  # an HTTP 404
        raise getattr(hub_errors, error)(message, response=response)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(FileError, match=message):
        read_pretrained("timm/seresnet50.a1_in1k@v9")


# --- local directories: every front-end, round trips ------------------------------------------


def test_every_front_end_loads_the_published_weights(rng, published, capsys):
    directory, torch_model = published
    x = images(rng)
    expected = torch_out(torch_model, x)
    model, variables = se_flax.from_pretrained(directory)
    np.testing.assert_allclose(model.apply(variables, x), expected, rtol=RTOL32, atol=ATOL32)
    nnx_model = se_flax.nnx.from_pretrained(directory)
    np.testing.assert_allclose(nnx_model(x), expected, rtol=RTOL32, atol=ATOL32)
    loaded = se_torch.from_pretrained(directory)
    assert not loaded.training and nnx_model.bn1.use_running_average  # eval mode
    for k, v in torch_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    cfg = model.pretrained_cfg
    assert cfg == nnx_model.pretrained_cfg == loaded.pretrained_cfg
    assert (cfg.architecture, cfg.tag, cfg.interpolation, cfg.crop_pct) == (
        ARCH,
        "tst_in1k",
        "bicubic",
        0.875,
    )
    assert cfg.source == str(directory)
    assert capsys.readouterr().err.count(f"loaded {directory}: seresnet18, tag tst_in1k") == 3


def test_save_pretrained_round_trips_bit_exactly(tmp_path, published):
    """Published -> each front-end -> save_pretrained: the same tensors (keys, dtypes, bits) and
    the same config.json."""
    directory, _ = published
    model, variables = se_flax.from_pretrained(directory, verbose=False)
    se_flax.save_pretrained(model, tmp_path / "linen", variables)
    se_flax.nnx.save_pretrained(
        se_flax.nnx.from_pretrained(directory, verbose=False), tmp_path / "nnx"
    )
    se_torch.save_pretrained(se_torch.from_pretrained(directory, verbose=False), tmp_path / "torch")
    original = load_file(directory / "model.safetensors")
    config = json.loads((directory / "config.json").read_text())
    for name in ("linen", "nnx", "torch"):
        saved = load_file(tmp_path / name / "model.safetensors")
        assert list(saved) == list(original), name
        for k, v in original.items():
            assert saved[k].dtype == v.dtype and saved[k].tobytes() == v.tobytes(), (name, k)
        assert json.loads((tmp_path / name / "config.json").read_text()) == config, name


def test_a_new_classifier_is_initialised_and_said(rng, published, capsys):
    directory, torch_model = published
    x = images(rng)
    _, full = se_flax.from_pretrained(directory, verbose=False)
    model, variables = se_flax.from_pretrained(directory, num_classes=10, rng=3)
    assert (
        "fc (1000 classes) is dropped: a new classifier for 10 classes" in capsys.readouterr().err
    )
    assert model.apply(variables, x).shape == (2, 10)
    fc = variables["params"].pop("fc")
    assert fc["kernel"].shape == (512, 10) and float(jnp.std(fc["kernel"])) > 0
    full["params"].pop("fc")
    for k, v in flatten(full).items():  # everything else as published
        assert np.array_equal(flatten(variables)[k], v), k
    nnx_model = se_flax.nnx.from_pretrained(directory, num_classes=10, verbose=False)
    assert nnx_model(x).shape == (2, 10) and float(jnp.std(nnx_model.fc.kernel[...])) > 0
    loaded = se_torch.from_pretrained(directory, num_classes=10, verbose=False)
    assert loaded.fc.weight.shape == (10, 512)
    assert torch.equal(loaded.conv1.weight, torch_model.conv1.weight)
    # num_classes=0: the pooled features, equal across frameworks
    pooled_model, pooled = se_flax.from_pretrained(directory, num_classes=0, verbose=False)
    pooled_torch = se_torch.from_pretrained(directory, num_classes=0, verbose=False)
    np.testing.assert_allclose(
        pooled_model.apply(pooled, x), torch_out(pooled_torch, x), rtol=RTOL32, atol=ATOL32
    )
    assert pooled_model.apply(pooled, x).shape == (2, 512)


def test_features_only_drops_the_classifier(rng, published):
    directory, _ = published
    x = images(rng)
    model, variables = se_flax.from_pretrained(directory, features_only=True, verbose=False)
    assert "fc" not in variables["params"]
    loaded = se_torch.from_pretrained(directory, features_only=True, verbose=False)
    with torch.no_grad():
        expected = [f.numpy().transpose(0, 2, 3, 1) for f in loaded(nchw(x))]
    ours = model.apply(variables, x)
    nnx_maps = se_flax.nnx.from_pretrained(directory, features_only=True, verbose=False)(x)
    assert [f.shape for f in ours] == [
        (2, 16, 16, 64),
        (2, 8, 8, 128),
        (2, 4, 4, 256),
        (2, 2, 2, 512),
    ]
    for a, b, e in zip(ours, nnx_maps, expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=RTOL32, atol=ATOL32)
        np.testing.assert_array_equal(a, b)


def test_dtypes_are_cast_from_the_stored_weights(published):
    directory, torch_model = published
    _, full = se_flax.from_pretrained(directory, verbose=False)
    _, variables = se_flax.from_pretrained(directory, param_dtype=jnp.bfloat16, verbose=False)
    for k, v in flatten(variables).items():
        want = flatten(full)[k]
        if jnp.issubdtype(want.dtype, jnp.floating):
            assert v.dtype == jnp.bfloat16, k
            assert np.array_equal(np.asarray(v), np.asarray(want.astype(jnp.bfloat16))), k
        else:
            assert v.dtype == want.dtype and np.array_equal(v, want), k
    loaded = se_torch.from_pretrained(directory, dtype=torch.float64, verbose=False)
    for k, v in torch_model.state_dict().items():
        got = loaded.state_dict()[k]
        assert got.dtype == (torch.float64 if v.is_floating_point() else v.dtype), k
        assert torch.equal(got, v.to(got.dtype)), k  # float32 -> float64 is exact


def test_se_convert_reads_a_pretrained_directory(tmp_path, published):
    directory, _ = published
    assert se_convert_main([str(directory), str(tmp_path / "out.safetensors")]) == 0
    written = load_file(tmp_path / "out.safetensors")
    _, variables = se_flax.from_pretrained(directory, verbose=False)
    assert written.keys() == flatten(variables).keys()
    assert all(np.array_equal(written[k], v) for k, v in flatten(variables).items())


def test_timm_config_files_with_model_args_and_legacy_layout_load(tmp_path, published):
    """timm 1.0's save_for_hf writes model_args (in_chans, num_classes, global_pool); timm's
    older single-dict configs have no pretrained_cfg."""
    directory, _ = published
    config = json.loads((directory / "config.json").read_text())
    assert config["model_args"] == {"in_chans": 3, "num_classes": 1000, "global_pool": "avg"}
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(directory / "model.safetensors", legacy)
    flat = {"architecture": ARCH, **config["pretrained_cfg"], "labels": ["a"] * 1000}
    (legacy / "config.json").write_text(json.dumps(flat))
    cfg = read_pretrained(legacy).cfg
    assert cfg == read_pretrained(directory).cfg and cfg.extra["labels"] == ["a"] * 1000


# --- bad input: one clear error each -----------------------------------------------------------

LOADERS = {
    "linen": lambda source: se_flax.from_pretrained(source, verbose=False),
    "nnx": lambda source: se_flax.nnx.from_pretrained(source, verbose=False),
    "torch": lambda source: se_torch.from_pretrained(source, verbose=False),
}


def broken(tmp_path: Path, published, *, config=None, tensors=None) -> Path:
    """A copy of the published directory with its config or tensors changed."""
    directory, _ = published
    out = tmp_path / "broken"
    shutil.copytree(directory, out)
    if config is not None:
        data = json.loads((out / "config.json").read_text())
        config(data)
        (out / "config.json").write_text(json.dumps(data))
    if tensors is not None:
        data = load_file(out / "model.safetensors")
        tensors(data)
        save_file(data, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.mark.parametrize("front_end", sorted(LOADERS))
def test_a_missing_config_is_named(tmp_path, published, front_end):
    directory = broken(tmp_path, published)
    (directory / "config.json").unlink()
    with pytest.raises(FileError, match=r"no config\.json: a timm model directory holds"):
        LOADERS[front_end](directory)


@pytest.mark.parametrize("front_end", sorted(LOADERS))
def test_an_unknown_architecture_lists_the_known_ones(tmp_path, published, front_end):
    directory = broken(tmp_path, published, config=lambda c: c.update(architecture="vit_base"))
    with pytest.raises(FileError, match="architecture 'vit_base' is not one se-flax builds") as e:
        LOADERS[front_end](directory)
    assert "seresnet50" in str(e.value) and "skresnet18" in str(e.value)


@pytest.mark.parametrize("front_end", sorted(LOADERS))
def test_weights_that_do_not_fit_are_listed_at_once(tmp_path, rng, published, front_end):
    def damage(t: dict) -> None:
        t["layer9.0.conv1.weight"] = t.pop("layer1.0.conv1.weight")  # unexpected + missing
        del t["layer2.1.se.fc2.bias"]  # missing
        t["layer3.0.bn1.weight"] = rng.standard_normal(7).astype(np.float32)  # mis-shaped

    directory = broken(tmp_path, published, tensors=damage)
    with pytest.raises(ConversionError, match=f"{directory}: the weights do not fit seresnet18"):
        LOADERS[front_end](directory)
    try:
        LOADERS[front_end](directory)
    except ConversionError as e:
        problems = {"missing": e.missing, "unexpected": e.unexpected, "mismatched": e.mismatched}
    names = {  # the file's keys, in every front-end: checked against the plan before building
        "missing": ["layer1.0.conv1.weight", "layer2.1.se.fc2.bias"],
        "unexpected": ["layer9.0.conv1.weight"],
        "mismatched": ["layer3.0.bn1.weight: stored (7,) float32, seresnet18 needs (256,)"],
    }
    for kind, expected in names.items():  # every problem, in one error
        assert len(problems[kind]) == len(expected), (kind, problems[kind])
        for name, problem in zip(expected, problems[kind], strict=True):
            assert problem.startswith(name), (kind, problem)


def test_mixed_floating_dtypes_are_widened_exactly_and_said(tmp_path, published, capsys):
    def halve(t: dict) -> None:
        for k in [k for k in t if "running_" not in k and t[k].dtype == np.float32]:
            t[k] = t[k].astype(np.float16)  # half weights, float32 statistics

    directory = broken(tmp_path, published, tensors=halve)
    stored = load_file(directory / "model.safetensors")
    _, variables = se_flax.from_pretrained(directory)
    assert "stored in float16, float32: widened to float32 (exact)" in capsys.readouterr().err
    assert np.array_equal(variables["params"]["fc"]["bias"], stored["fc.bias"].astype(np.float32))
    loaded = se_torch.from_pretrained(directory, verbose=False)
    assert torch.equal(loaded.fc.bias, torch.from_numpy(stored["fc.bias"].astype(np.float32)))


def test_a_missing_weight_file_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    """``owner/name`` reads as a hub id only where no such path exists and it does not end in
    a weight file's extension."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileError, match="no such file or directory"):
        load("checkpoints/seresnet50.safetensors")
    (tmp_path / "timm").mkdir()
    with pytest.raises(FileError, match="no such file or directory"):
        load("timm/seresnet50.pth")


def test_only_pytorch_pickles_is_an_error_naming_safetensors(tmp_path, published):
    directory = broken(tmp_path, published)
    (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    with pytest.raises(FileError, match=r"no model\.safetensors \(it has pytorch_model\.bin"):
        se_flax.from_pretrained(directory)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c.update(model_args={"block_args": {}}),
            "model_args 'block_args' are not options",
        ),
        (lambda c: c.update(model_args={"global_pool": "max"}), "global_pool 'max'"),
        (lambda c: c["pretrained_cfg"].update(mean=[0.5, 0.5]), "mean must be 3 finite numbers"),
        (lambda c: c["pretrained_cfg"].update(interpolation="cubic"), "interpolation 'cubic'"),
        (lambda c: c.pop("architecture"), "no 'architecture'"),
    ],
)
def test_bad_configs_are_named(tmp_path, published, change, message):
    with pytest.raises(FileError, match=message):
        read_pretrained(broken(tmp_path, published, config=change))


def test_not_json_and_not_a_directory(tmp_path, published):
    directory = broken(tmp_path, published)
    (directory / "config.json").write_text("{'architecture': ")
    with pytest.raises(FileError, match="not valid JSON"):
        read_pretrained(directory)
    with pytest.raises(FileError, match=r"expected a directory holding config\.json"):
        read_pretrained(directory / "model.safetensors")
    with pytest.raises(FileError, match="no such directory, and not a hub id"):
        read_pretrained(tmp_path / "absent")


def test_save_pretrained_overwrites_only_with_force_and_only_its_files(tmp_path, published):
    _, torch_model = published
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("mine")
    se_torch.save_pretrained(torch_model, out)
    with pytest.raises(FileError, match=r"model\.safetensors exists"):
        se_torch.save_pretrained(torch_model, out)
    se_torch.save_pretrained(torch_model, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    assert (out / "README.md").read_text() == "mine"
    # no pretrained_cfg on the model: timm's ResNet defaults
    cfg = read_pretrained(out).cfg
    assert (cfg.tag, cfg.input_size, cfg.interpolation, cfg.mean) == (
        None,
        (3, 224, 224),
        "bilinear",
        IMAGENET_MEAN,
    )


def test_save_pretrained_needs_a_named_architecture(tmp_path):
    model = se_torch.create_model("resnet18", attn="eca")
    with pytest.raises(FileError, match="no model name has this config"):
        se_torch.save_pretrained(model, tmp_path / "eca")
    assert not (tmp_path / "eca").exists()


# --- the data config and preprocessing --------------------------------------------------------


def test_preprocess_of_an_image_at_the_input_size_is_the_normalised_pixels(rng):
    cfg = PretrainedCfg(ARCH, input_size=(3, 32, 48), crop_pct=1.0, crop_mode="squash")
    pixels = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    x = cfg.preprocess(pixels)
    expected = (pixels / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    assert x.dtype == np.float32 and x.shape == (1, 32, 48, 3)
    np.testing.assert_allclose(x[0], expected, rtol=0, atol=1e-6)
    nchw_x = cfg.preprocess([Image.fromarray(pixels)] * 2, layout="NCHW")
    assert nchw_x.shape == (2, 3, 32, 48)
    np.testing.assert_array_equal(nchw_x[1], x[0].transpose(2, 0, 1))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "lanczos", "nearest"])
def test_preprocess_resizes_crops_and_pads_as_timm(rng, interpolation):
    """A constant image stays constant through any resize; the center crop of a short side
    resized to size / crop_pct; with crop_pct > 1 the crop is larger than the image and
    torchvision's zero padding shows as (0 - mean) / std."""
    color = rng.integers(1, 255, 3).astype(np.uint8)
    h, w = rng.integers(40, 300, 2)
    image = np.broadcast_to(color, (h, w, 3)).copy()
    value = (color / 255 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    cfg = PretrainedCfg(ARCH, input_size=(3, 64, 64), interpolation=interpolation)
    x = cfg.preprocess(image)[0]
    assert x.shape == (64, 64, 3)
    np.testing.assert_allclose(x, np.broadcast_to(value, x.shape), atol=1e-6)
    padded = cfg.replace(crop_pct=2.0).preprocess(image)[0]  # resized to a short side of 32
    zero = -np.asarray(IMAGENET_MEAN) / np.asarray(IMAGENET_STD)
    short = np.argmin([h, w])
    border = padded[:15] if short == 0 else padded[:, :15]  # (64 - 32) // 2 = 16 rows padded
    np.testing.assert_allclose(border, np.broadcast_to(zero, border.shape), atol=1e-6)
    np.testing.assert_allclose(padded[31:33, 31:33], np.broadcast_to(value, (2, 2, 3)), atol=1e-6)


def test_preprocess_uses_the_test_size_on_request(rng):
    cfg = PretrainedCfg(ARCH, test_input_size=(3, 288, 288), test_crop_pct=1.0)
    image = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
    assert cfg.preprocess(image, use_test_size=True).shape == (1, 288, 288, 3)
    assert cfg.preprocess(image).shape == (1, 224, 224, 3)
    crop_only = PretrainedCfg(ARCH, input_size=(3, 8, 8), crop_pct=0.5, test_crop_pct=1.0)
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # at test_crop_pct 1: unchanged
    expected = (image / 255 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    np.testing.assert_allclose(
        crop_only.preprocess(image, use_test_size=True)[0], expected, atol=1e-6
    )


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (
            Image.new("L", (8, 8)),
            r"mode 'L' \(1 channel\(s\)\), the weights take 3.*convert\('RGB'\)",
        ),
        (np.ones((8, 8, 3), np.float32), "arrays must be uint8"),
        (np.ones((8, 8, 4), np.uint8), "has 4 channels, the weights take 3"),
        ([], "non-empty sequence"),
        ("cat.jpg", "non-empty sequence"),
    ],
)
def test_preprocess_rejects_what_it_cannot_take(images, message):
    with pytest.raises(ValueError, match=message):
        PretrainedCfg(ARCH).preprocess(images)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"input_size": (224, 224)}, "input_size must be 3 positive integers"),
        ({"crop_pct": 0}, r"crop_pct must be a number in \[0.25, 2\]"),
        ({"std": (0.2, 0.0, 0.2)}, r"std must be numbers in \[0.01, 10\], got 0.0"),
        ({"crop_mode": "zoom"}, "crop_mode 'zoom'"),
        ({"num_classes": -1}, "num_classes must be an integer >= 0"),
    ],
)
def test_pretrained_cfg_checks_its_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        PretrainedCfg(ARCH, **fields)


def test_pretrained_cfg_round_trips_through_timm_s_dict():
    cfg = PretrainedCfg(
        "seresnext50_32x4d",
        tag="racm_in1k",
        test_input_size=(3, 288, 288),
        test_crop_pct=0.95,
        extra={"license": "apache-2.0", "pool_size": [7, 7]},
    )
    config = {
        "architecture": cfg.architecture,
        "num_classes": 1000,
        "pretrained_cfg": cfg.to_dict(),
    }
    again = PretrainedCfg.from_config(json.loads(json.dumps(config)))
    assert again == cfg and again.extra == cfg.extra and hash(again) == hash(cfg)


def test_pretrained_cfg_rides_on_nnx_jit(rng, published):
    """The NNX model carries its pretrained_cfg as static data through nnx.jit(graph=False)."""
    import optax
    from flax import nnx

    from se_flax.training import nnx_train_step

    directory, _ = published
    model = se_flax.nnx.from_pretrained(directory, num_classes=3, verbose=False)
    model.train()
    optimizer = nnx.Optimizer(model, optax.sgd(1e-3), wrt=nnx.Param)
    before = np.asarray(model.fc.kernel[...])
    metrics = nnx_train_step(model, optimizer, images(rng), np.array([0, 2]))
    assert np.isfinite(float(metrics["loss"])) and model.pretrained_cfg.tag == "tst_in1k"
    assert not np.array_equal(before, model.fc.kernel[...])
    assert jax.tree.leaves(nnx.state(model))  # still a whole model


def test_training_only_model_args_are_ignored_with_a_note(tmp_path, published, capfd):
    def dropout(c: dict) -> None:
        c["model_args"].update(drop_rate=0.2, drop_path_rate=0.05)

    directory = broken(tmp_path, published, config=dropout)
    se_flax.from_pretrained(directory, features_only=True)
    assert "model_args drop_path_rate, drop_rate ignored (training only" in capfd.readouterr().err


def test_headless_weights_with_num_classes_say_the_classifier_is_new(tmp_path, rng, capfd):
    directory = tmp_path / "headless"
    model = randomize_(se_torch.create_model(ARCH, num_classes=0), rng, torch.float32)
    se_torch.save_pretrained(model, directory)
    _, variables = se_flax.from_pretrained(directory, num_classes=4)
    assert "the weights have no classifier: a new classifier for 4 classes" in (
        capfd.readouterr().err
    )
    assert variables["params"]["fc"]["kernel"].shape == (512, 4)
    with pytest.raises(ValueError, match="features_only=True builds no classifier"):
        se_flax.from_pretrained(directory, features_only=True, num_classes=4)


def test_se_convert_keeps_a_fine_tuned_classifier_both_ways(tmp_path, rng, capfd):
    """A 10-class model saved in timm's layout converts with its config's num_classes, and the
    written file records it, so the way back needs no option either."""
    model = randomize_(se_torch.create_model(ARCH, num_classes=10), rng, torch.float32).eval()
    se_torch.save_pretrained(model, tmp_path / "tuned")
    flax_file, back = tmp_path / "tuned.safetensors", tmp_path / "back.pth"
    assert se_convert_main([str(tmp_path / "tuned"), str(flax_file)]) == 0
    assert load(flax_file).options == {"num_classes": 10}
    assert se_convert_main([str(flax_file), str(back)]) == 0, capfd.readouterr().err
    for k, v in model.state_dict().items():
        assert torch.equal(torch.load(back, weights_only=True)[k], v), k


def test_another_architecture_loads_too(tmp_path, rng):
    model = randomize_(se_torch.create_model("skresnet18"), rng, torch.float32).eval()
    se_torch.save_pretrained(model, tmp_path / "sk")
    x = images(rng)
    flax_model, variables = se_flax.from_pretrained(tmp_path / "sk", verbose=False)
    np.testing.assert_allclose(
        flax_model.apply(variables, x), torch_out(model, x), rtol=RTOL32, atol=ATOL32
    )


# timm's ResNet options in published architectures (issue 29), the smallest name of each:
# resnet10t (deep_tiered stem, avg_down shortcuts: `conv1.{0,1,3,4,6}`, `downsample.{1,2}`) and
# resnetblur18 (blur anti-aliasing: no tensors of its own); ResNet-RS's stem pool (`maxpool.*`)
# is the next test's, on a small config. And the EfficientNet family's smallest published name,
# test_efficientnet (`conv_stem`, `blocks.{i}.{j}` of cn, er and ir blocks with SE's
# `se.conv_reduce` / `se.conv_expand`, `conv_head`, `classifier`), and the MobileNetV3 family's
# smallest, mobilenetv3_small_050 (its head's `conv_head` with a bias, after the pool), and the
# RegNet family's, regnety_002 (`stem.conv`, `s{i}.b{j}.conv{k}.conv`, `se.fc1`, `head.fc`).
@pytest.mark.parametrize(
    "name",
    ["resnet10t", "resnetblur18", "test_efficientnet", "mobilenetv3_small_050", "regnety_002"],
)
def test_timm_s_stems_and_shortcuts_load_in_every_front_end_and_save_back(tmp_path, rng, name):
    """Weights in timm's layout (by key names alone, as from the hub) load into linen and NNX
    and PyTorch with the same outputs; each front-end's save_pretrained writes them back
    bit for bit."""
    model = randomize_(se_torch.create_model(name), rng, torch.float32).eval()
    se_torch.save_pretrained(model, tmp_path / "published")
    config = json.loads((tmp_path / "published" / "config.json").read_text())
    assert config["num_features"] == model.num_features  # timm's: what the pool takes
    x = images(rng, n=1)
    expected = torch_out(model, x)
    scale = float(np.abs(expected).max())
    linen, variables = se_flax.from_pretrained(tmp_path / "published", verbose=False)
    np.testing.assert_allclose(
        jax.jit(linen.apply)(variables, x), expected, rtol=RTOL32, atol=ATOL32 * scale
    )
    nnx_model = se_flax.nnx.from_pretrained(tmp_path / "published", verbose=False)
    forward = nnx.jit(lambda model, x: model(x))  # one program, not op by op
    np.testing.assert_allclose(forward(nnx_model, x), expected, rtol=RTOL32, atol=ATOL32 * scale)
    se_flax.save_pretrained(linen, tmp_path / "linen", variables)
    se_flax.nnx.save_pretrained(nnx_model, tmp_path / "nnx")
    if name == "resnet10t":  # with stochastic depth to fine-tune: its dropout streams are live
        tuned = se_flax.nnx.from_pretrained(
            tmp_path / "published", verbose=False, drop_path_rate=0.5
        )
        np.testing.assert_allclose(forward(tuned, x), expected, rtol=RTOL32, atol=ATOL32 * scale)
        tuned.train()
        first, second = forward(tuned, x), forward(tuned, x)  # the dropout streams move on
        assert np.all(np.isfinite(first)) and not np.allclose(first, second)
    se_torch.save_pretrained(
        se_torch.from_pretrained(tmp_path / "published", verbose=False), tmp_path / "torch"
    )
    original = load_file(tmp_path / "published" / "model.safetensors")
    for front_end in ("linen", "nnx", "torch"):
        saved = load_file(tmp_path / front_end / "model.safetensors")
        assert list(saved) == list(original), front_end
        for k, v in original.items():
            assert saved[k].tobytes() == v.tobytes(), (front_end, k)


@pytest.mark.parametrize("aa_layer", [None, "avg"])
def test_resnet_rs_stem_pool_keys_convert_by_name_alone(rng, aa_layer):
    """ResNet-RS's stem pool (`maxpool.0` conv, then `maxpool.1` norm, or `maxpool.2` after
    anti-aliasing) and avg_down shortcuts from a bare state_dict: the names alone give the
    module's tree, strictly against the Flax model's shapes, and back."""
    config = se_common.get_model("resnetrs50").config
    config = dataclasses.replace(config, layers=(1, 1, 1, 1), stem_width=8, aa_layer=aa_layer)
    model = randomize_(se_torch.ResNet(config, num_classes=3), rng, torch.float32)
    state = model.state_dict()
    assert f"maxpool.{2 if aa_layer else 1}.running_var" in state
    flax_model = se_flax.ResNet(config, num_classes=3)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    shapes = jax.eval_shape(flax_model.init, jax.random.key(0), x)
    by_name = torch_to_flax(state, target=shapes)
    by_type = torch_to_flax(model, target=shapes)
    assert jax.tree.map(np.array_equal, by_name, by_type) == jax.tree.map(lambda _: True, by_type)
    back = flax_to_state_dict(by_name, config.state_dict(3, 3))
    assert all(np.array_equal(back[k], v.numpy()) for k, v in state.items())


def test_a_typo_under_an_existing_folder_stays_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileError, match="no such directory, and not a hub id"):
        read_pretrained("runs/seresnet50")
    with pytest.raises(FileError, match="not in the Hugging Face cache"):
        read_pretrained("timm/seresnet50")  # no local timm/: a hub id


def test_labels_at_the_top_of_timm_s_config_round_trip(tmp_path, published):
    names = [f"class {i}" for i in range(1000)]
    directory = broken(tmp_path, published, config=lambda c: c.update(label_names=names))
    model, variables = se_flax.from_pretrained(directory, verbose=False)
    assert model.pretrained_cfg.extra["label_names"] == names
    se_flax.save_pretrained(model, tmp_path / "again", variables)
    assert json.loads((tmp_path / "again" / "config.json").read_text())["label_names"] == names


# --- against timm itself (its own venv: torchvision has no CPU build here; skipped in CI) ------


@pytest.mark.parametrize(
    "fields",
    [
        {"interpolation": "bicubic", "crop_pct": 0.95},  # seresnet50.a1_in1k
        {"interpolation": "bilinear", "crop_pct": 0.875},  # timm's ResNet default
        {"interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "squash"},
        {"interpolation": "lanczos", "crop_pct": 1.25, "input_size": (3, 96, 96)},  # padded
    ],
)
def test_preprocess_equals_timm_s_eval_transform(rng, fields):
    timm_data = pytest.importorskip("timm.data")
    cfg = PretrainedCfg(ARCH, **fields)
    transform = timm_data.create_transform(
        **timm_data.resolve_data_config(pretrained_cfg=cfg.to_dict()), is_training=False
    )
    pictures = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in ((300, 400), (500, 333), (224, 224), (37, 50))
    ]
    theirs = torch.stack([transform(p) for p in pictures]).numpy()
    np.testing.assert_array_equal(cfg.preprocess(pictures, layout="NCHW"), theirs)


def test_timm_loads_save_pretrained_and_we_load_timm_s_save_for_hf(tmp_path, rng, published):
    timm = pytest.importorskip("timm")
    from timm.models._hub import save_for_hf

    directory, torch_model = published
    x = images(rng)
    expected = torch_out(torch_model, x)
    for name, kwargs in {
        "pretrained_cfg_overlay": {
            "pretrained_cfg_overlay": {"file": str(directory / "model.safetensors")}
        },
        "local-dir": {},
    }.items():
        arch = ARCH if kwargs else f"local-dir:{directory}"
        theirs = timm.create_model(arch, pretrained=True, **kwargs).eval()
        np.testing.assert_allclose(
            torch_out(theirs, x), expected, rtol=RTOL32, atol=ATOL32, err_msg=name
        )
    assert theirs.pretrained_cfg["tag"] == "tst_in1k"
    timm_model = randomize_(timm.create_model("skresnet18"), rng, torch.float32).eval()
    save_for_hf(timm_model, tmp_path / "timm", safe_serialization=True)
    model, variables = se_flax.from_pretrained(tmp_path / "timm", verbose=False)
    np.testing.assert_allclose(
        model.apply(variables, x), torch_out(timm_model, x), rtol=RTOL32, atol=ATOL32
    )
    np.testing.assert_allclose(
        torch_out(se_torch.from_pretrained(tmp_path / "timm", verbose=False), x),
        torch_out(timm_model, x),
        rtol=RTOL32,
        atol=ATOL32,
    )
