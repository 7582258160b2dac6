"""Weight files and ``se-convert``: the format/dtype round-trip matrix, refused pickles, bad
inputs (exit 2, one message, nothing written), --force, --verify, and Flax files without torch."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch

import se_torch
from se_common import ResNetConfig
from se_convert import FileError, Weights, convert_file, load, save
from se_convert._cli import main
from tests.helpers import randomize_, register

ROOT = Path(__file__).resolve().parents[1]
# (name, extension, framework it is written in)
FORMATS = [
    ("pth", ".pth", "torch"),
    ("safetensors-torch", ".safetensors", "torch"),
    ("safetensors-flax", ".safetensors", "flax"),
    ("msgpack", ".msgpack", "flax"),
    ("orbax", "", "flax"),
]
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def random_bits(shape, dtype, rng) -> np.ndarray:
    """Random values with every bit pattern class: normals, subnormals, inf, NaN payloads."""
    dtype = np.dtype(dtype)
    bits = rng.integers(0, 2 ** (8 * dtype.itemsize), size=shape, dtype=np.uint64)
    return bits.astype(f"u{dtype.itemsize}").view(dtype)


def se_state(dtype, rng) -> dict[str, np.ndarray]:
    module = se_torch.SqueezeExcite(48)
    return {
        k: random_bits(tuple(v.shape), DTYPES[dtype], rng) for k, v in module.state_dict().items()
    }


def bits(tensors: dict[str, np.ndarray]) -> dict[str, tuple]:
    return {
        k: (str(v.dtype), v.shape, v.view(f"u{v.dtype.itemsize}").tobytes())
        for k, v in tensors.items()
    }


def write(tmp: Path, name: str, ext: str, weights: Weights) -> Path:
    path = tmp / f"{name}{ext}"
    save(weights, path)
    return path


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_every_pair_of_formats_round_trips_bit_exactly(dtype, rng, tmp_path):
    torch_state = se_state(dtype, rng)
    flax_state = convert_file_weights(torch_state, tmp_path)
    originals = {"torch": torch_state, "flax": flax_state}
    for (a, ext_a, lay_a), (b, ext_b, lay_b) in itertools.permutations(FORMATS, 2):
        case = tmp_path / f"{a}-{b}"
        case.mkdir()
        source = write(case, "source", ext_a, Weights(lay_a, originals[lay_a], "se"))
        there = case / f"there{ext_b}"
        report = convert_file(source, there, "se", framework=lay_b)
        assert report["direction"] == f"{lay_a} -> {lay_b}"
        back = case / f"back{ext_a}"
        convert_file(there, back, "se", framework=lay_a)
        loaded = load(back)
        assert loaded.framework == lay_a
        assert bits(loaded.tensors) == bits(originals[lay_a]), (a, b)
        assert bits(load(there).tensors) == bits(originals[lay_b]), (a, b)


def convert_file_weights(torch_state, tmp_path) -> dict[str, np.ndarray]:
    """The Flax twin of a torch-layout state, through the API's own conversion."""
    source = write(tmp_path, "reference", ".pth", Weights("torch", torch_state))
    convert_file(source, tmp_path / "reference.msgpack", "se")
    flax = load(tmp_path / "reference.msgpack").tensors
    assert set(flax) == {
        "params/fc1/kernel",
        "params/fc1/bias",
        "params/fc2/kernel",
        "params/fc2/bias",
    }
    # the layouts differ by a transpose only: same bits
    np.testing.assert_array_equal(
        flax["params/fc2/kernel"].view(np.uint8),
        torch_state["fc2.weight"][:, :, 0, 0].T.copy().view(np.uint8),
    )
    return flax


class Payload:
    """A pickle that creates a file when unpickled with weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"fc1.weight": torch.zeros(1), "payload": Payload(marker)}, evil)
    # the payload is real: an unsafe load creates the file
    probe = tmp_path / "probe.pth"
    torch.save({"payload": Payload(tmp_path / "probe-ran")}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "probe-ran").exists()

    out = tmp_path / "out.msgpack"
    assert main([str(evil), str(out)]) == 2
    err = capsys.readouterr().err
    assert "refused: the pickle holds code" in err and "global io.open" in err, err
    assert "weights_only" not in err and "Traceback" not in err  # never the advice to unguard
    assert not marker.exists() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pth", "probe-ran", "probe.pth"]


def seresnet18_pth(tmp_path: Path) -> tuple[Path, dict]:
    state = se_torch.create_model("seresnet18").state_dict()
    path = tmp_path / "seresnet18.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture
def se_pth(tmp_path, rng) -> Path:
    path = tmp_path / "se.pth"
    torch.save(se_torch.SqueezeExcite(32).state_dict(), path)
    return path


def _bad_inputs(tmp: Path, se_pth: Path) -> dict[str, tuple[list[str], str]]:
    data = se_pth.read_bytes()
    (tmp / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp / "garbage.pth").write_bytes(os.urandom(4096))
    save(
        Weights("flax", {"params/fc1/kernel": np.ones((4, 2), np.float32)}),
        tmp / "good.safetensors",
    )
    st = (tmp / "good.safetensors").read_bytes()
    (tmp / "truncated.safetensors").write_bytes(st[: len(st) - 7])
    (tmp / "text.safetensors").write_text("not a safetensors file")
    (tmp / "corrupt.msgpack").write_bytes(b"\xc1\xff\x00garbage")
    (tmp / "empty_dir").mkdir()
    (tmp / "weights.txt").write_text("hello")
    torch.save([1, 2, 3], tmp / "list.pth")
    state = se_torch.create_model("seresnet18").state_dict()
    del state["layer1.0.bn1.weight"]
    for i in range(3):  # 5 problems in all, no kind more than 4: listed in full
        state[f"layer9.{i}.conv1.weight"] = torch.zeros(3)
    state["fc.weight"] = torch.zeros(10, 512)
    torch.save(state, tmp / "broken.pth")
    return {
        "truncated pth": (["truncated.pth", "o.msgpack"], "cannot read as torch"),
        "random bytes": (["garbage.pth", "o.msgpack"], "cannot read as torch"),
        "truncated safetensors": (["truncated.safetensors", "o.msgpack"], "cannot read"),
        "not safetensors": (["text.safetensors", "o.msgpack"], "cannot read as safetensors"),
        "corrupt msgpack": (["corrupt.msgpack", "o.safetensors"], "cannot read as msgpack"),
        "empty orbax dir": (["empty_dir", "o.msgpack"], "cannot read as orbax"),
        "wrong format": (["weights.txt", "o.msgpack"], "unknown extension '.txt'"),
        "not a state_dict": (["list.pth", "o.msgpack"], "expected a state_dict, got list"),
        "missing file": (["nope.pth", "o.msgpack"], "no such file"),
        "keys": (
            ["broken.pth", "o.msgpack", "--model", "seresnet18"],
            "layer9.0.conv1.weight",
        ),
        "flax to torch without model": (["good.safetensors", "o.pth"], "needs --model"),
        "framework a format cannot hold": (
            ["se.pth", "o.msgpack", "--framework", "torch"],
            "msgpack files hold the flax framework's tensors, not torch's",
        ),
    }


def test_bad_inputs_exit_2_with_one_message_and_write_nothing(tmp_path, se_pth, capsys):
    cases = _bad_inputs(tmp_path, se_pth)
    before = sorted(p.name for p in tmp_path.iterdir())
    for name, (argv, message) in cases.items():
        code = main([str(tmp_path / a) if i < 2 else a for i, a in enumerate(argv)])
        err = capsys.readouterr().err
        assert code == 2, name
        assert err.startswith("se-convert: error:") and message in err, (name, err)
        assert "Traceback" not in err, name
        assert sorted(p.name for p in tmp_path.iterdir()) == before, name  # no output, no temp


def test_key_errors_are_listed_together(tmp_path, se_pth, capsys):
    _bad_inputs(tmp_path, se_pth)
    assert (
        main([str(tmp_path / "broken.pth"), str(tmp_path / "o.msgpack"), "--model", "seresnet18"])
        == 2
    )
    err = capsys.readouterr().err
    # in the source's own (PyTorch) layout; the classifier's classes come from fc.weight
    for key in ("layer1.0.bn1.weight", "layer9.0.conv1.weight", "fc.bias: (1000,)"):
        assert key in err, err
    assert "--verbose" not in err and "... and" not in err  # nothing was left out


def test_unknown_architecture_is_a_usage_error(tmp_path, se_pth, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(se_pth), str(tmp_path / "o.msgpack"), "--model", "resnet51"])
    assert info.value.code == 2
    assert "invalid choice: 'resnet51'" in capsys.readouterr().err


def test_existing_output_needs_force(tmp_path, se_pth, capsys):
    out = tmp_path / "out.msgpack"
    out.write_bytes(b"keep me")
    assert main([str(se_pth), str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main([str(se_pth), str(out), "--force"]) == 0
    assert load(out).framework == "flax"
    ckpt = tmp_path / "ckpt"
    assert main([str(se_pth), str(ckpt)]) == 0
    assert main([str(out), str(ckpt)]) == 2  # directories too
    assert main([str(out), str(ckpt), "--force"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out.msgpack", "se.pth"]


def test_verify_seresnet18_both_directions(tmp_path):
    pth, state = seresnet18_pth(tmp_path)
    command = [sys.executable, "-m", "se_flax.convert"]
    msgpack = tmp_path / "seresnet18.msgpack"
    result = subprocess.run(
        [*command, str(pth), str(msgpack), "--model", "seresnet18", "--verify"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "torch -> flax, seresnet18" in result.stdout and "154 tensors" in result.stdout
    diff = float(result.stdout.split("max |torch - flax| = ")[1].split()[0])
    assert diff <= 1e-4
    back = tmp_path / "back.pth"
    assert main([str(msgpack), str(back), "--model", "seresnet18", "--verify"]) == 0
    reloaded = torch.load(back, weights_only=True)
    assert reloaded.keys() == state.keys()
    for k, v in state.items():  # counters (int64 -> int32 -> int64) included
        assert reloaded[k].dtype == v.dtype and torch.equal(reloaded[k], v), k
    # a tolerance no float32 run can meet: --verify fails, nothing is written
    strict = tmp_path / "strict.msgpack"
    assert (
        main([str(pth), str(strict), "--model", "seresnet18", "--verify", "--tolerance", "1e-30"])
        == 2
    )
    assert not strict.exists()


NO_TORCH = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # importing torch now raises ImportError
    import ml_dtypes, numpy as np
    from pathlib import Path
    from se_convert import Weights, convert_file, load, save
    tmp = Path(sys.argv[1])
    rng = np.random.default_rng(0)
    torch_state = {
        "fc1.weight": rng.standard_normal((8, 32, 1, 1)).astype(ml_dtypes.bfloat16),
        "fc1.bias": rng.standard_normal(8).astype(ml_dtypes.bfloat16),
        "fc2.weight": rng.standard_normal((32, 8, 1, 1)).astype(ml_dtypes.bfloat16),
        "fc2.bias": rng.standard_normal(32).astype(ml_dtypes.bfloat16),
    }
    save(Weights("torch", torch_state), tmp / "torch.safetensors")
    convert_file(tmp / "torch.safetensors", tmp / "flax.msgpack")
    convert_file(tmp / "flax.msgpack", tmp / "flax.safetensors", framework="flax")
    flax = load(tmp / "flax.safetensors")
    assert flax.framework == "flax" and flax.tensors["params/fc1/bias"].dtype == ml_dtypes.bfloat16
    k = flax.tensors["params/fc2/kernel"]
    assert (k.view(np.int16) == torch_state["fc2.weight"][:, :, 0, 0].T.view(np.int16)).all()
    print("ok", sys.modules["torch"] is None)
    """
)


def test_flax_files_need_no_torch(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(tmp_path)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok True"


def test_api_raises_file_error(tmp_path):
    with pytest.raises(FileError, match="unknown extension"):
        load(tmp_path / "x.npz")
    with pytest.raises(FileError, match="msgpack files hold the flax framework's tensors, not"):
        save(Weights("torch", {"a": np.ones(2, np.float32)}), tmp_path / "x.msgpack")


# ------------------------------------------------------------------ backbones, counters included

# Backbones small enough for every pair of formats: a ResNet-10 with SE, and a plain one for --attn
TINY = {
    "seresnet10": ResNetConfig("basic", (1, 1, 1, 1), attn="se"),
    "resnet10": ResNetConfig("basic", (1, 1, 1, 1)),
}


@pytest.fixture
def tiny_models(monkeypatch):
    for name, config in TINY.items():
        register(monkeypatch, name, config)


def backbone_state(name: str, dtype, rng, *, values: bool = False, **options) -> dict:
    """Random bits in every float tensor (or, with ``values``, random weights a network can
    run), random values in every BatchNorm counter."""
    model = se_torch.create_model(name, **options)
    state = randomize_(model, rng, torch.float32).state_dict() if values else model.state_dict()
    return {
        k: (
            np.asarray(rng.integers(0, 2**31), np.int64)
            if k.endswith("num_batches_tracked")
            else v.numpy().astype(DTYPES[dtype])
            if values
            else random_bits(tuple(v.shape), DTYPES[dtype], rng)
        )
        for k, v in state.items()
    }


def test_every_pair_of_formats_round_trips_a_backbone_bit_exactly(tiny_models, rng, tmp_path):
    """A backbone's every tensor, 0-d int64 counters included (they were written as shape
    (1,) to safetensors), keeps its shape, dtype and bits through every ordered pair of formats."""
    torch_state = backbone_state("seresnet10", "bfloat16", rng)
    counters = [k for k in torch_state if k.endswith("num_batches_tracked")]
    assert counters and all(torch_state[k].shape == () for k in counters)
    reference = write(tmp_path, "reference", ".pth", Weights("torch", torch_state))
    convert_file(reference, tmp_path / "reference.msgpack", "seresnet10")
    originals = {"torch": torch_state, "flax": load(tmp_path / "reference.msgpack").tensors}
    for (a, ext_a, lay_a), (b, ext_b, lay_b) in itertools.permutations(FORMATS, 2):
        case = tmp_path / f"{a}-{b}"
        case.mkdir()
        source = write(case, "source", ext_a, Weights(lay_a, originals[lay_a], "seresnet10"))
        there = case / f"there{ext_b}"
        convert_file(source, there, "seresnet10", framework=lay_b)
        back = case / f"back{ext_a}"
        convert_file(there, back, "seresnet10", framework=lay_a)
        assert bits(load(there).tensors) == bits(originals[lay_b]), (a, b)
        assert bits(load(back).tensors) == bits(originals[lay_a]), (a, b)


def test_verify_checks_the_file_it_wrote(tiny_models, rng, tmp_path, monkeypatch, capsys):
    """--verify reads the written file back: a writer that changes a tensor (here the earlier
    safetensors bug, 0-d counters as shape (1,)) fails it, and nothing is written."""
    import safetensors.numpy

    source = write(
        tmp_path,
        "model",
        ".pth",
        Weights("torch", backbone_state("seresnet10", "float32", rng, values=True)),
    )
    real = safetensors.numpy.save_file
    monkeypatch.setattr(
        safetensors.numpy,
        "save_file",
        lambda tensors, path, metadata=None: real(
            {k: np.atleast_1d(v) for k, v in tensors.items()}, path, metadata=metadata
        ),
    )
    out = tmp_path / "model.safetensors"
    argv = [str(source), str(out), "--model", "seresnet10", "--framework", "torch", "--verify"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "does not hold what was converted" in err
    assert "bn1.num_batches_tracked: (1,) int64, meant () int64" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]
    monkeypatch.setattr(safetensors.numpy, "save_file", real)
    assert main(argv) == 0
    assert load(out).tensors["bn1.num_batches_tracked"].shape == ()


def test_attn_converts_a_backbone_with_another_attention_layer(tiny_models, rng, tmp_path, capsys):
    torch_state = backbone_state("resnet10", "float32", rng, values=True, attn="eca")
    source = write(tmp_path, "eca", ".pth", Weights("torch", torch_state))
    st = tmp_path / "eca.safetensors"
    assert main([str(source), str(st), "--model", "resnet10", "--attn", "eca", "--verify"]) == 0
    assert "verify: max |torch - flax|" in capsys.readouterr().out
    flax = load(st)
    assert (flax.model, flax.attn) == ("resnet10", "eca")
    assert flax.tensors["params/layer1_0/se/conv/kernel"].shape == (3, 1, 1)
    back = tmp_path / "back.pth"
    assert main([str(st), str(back)]) == 0  # model and attn come from the file
    assert bits(load(back).tensors) == bits(torch_state)
    wrong = tmp_path / "wrong.msgpack"
    assert main([str(source), str(wrong), "--model", "resnet10", "--attn", "cbam"]) == 2
    err = capsys.readouterr().err  # ECA's weights where CBAM's are expected, PyTorch's keys
    assert "layer1.0.se.conv.weight (1, 1, 3) float32 (not in the resnet10 model)" in err
    assert not wrong.exists()
    assert main([str(source), str(wrong), "--attn", "eca"]) == 2
    assert "--attn needs --model" in capsys.readouterr().err


def test_a_wrong_model_lists_a_few_problems_of_each_kind(tmp_path, capsys):
    """seresnet18's weights as resnet50: hundreds of problems; a screenful by default, every one
    with --verbose."""
    pth, _ = seresnet18_pth(tmp_path)
    out = str(tmp_path / "o.msgpack")
    assert main([str(pth), out, "--model", "resnet50"]) == 2
    short = capsys.readouterr().err.splitlines()
    assert 10 <= len(short) <= 20 and "(--verbose lists every problem)" in short[-1]
    assert sum("... and" in line and "more" in line for line in short) >= 2
    assert main([str(pth), out, "--model", "resnet50", "--verbose"]) == 2
    full = capsys.readouterr().err.splitlines()
    assert len(full) > 200 and not any(line.strip().startswith("... and") for line in full)


def test_layout_is_the_framework_option_under_its_earlier_name(tmp_path, se_pth):
    from se_convert._cli import parse_args

    assert parse_args(["a.pth", "b.safetensors", "--layout", "torch"]).framework == "torch"
    out = tmp_path / "o.safetensors"
    assert main([str(se_pth), str(out), "--layout", "torch"]) == 0
    assert load(out).framework == "torch"


def test_architectures_by_name_are_checked():
    from se_convert import Model

    with pytest.raises(FileError, match=r"unknown model 'resnet51'; known: .*seresnet50"):
        Model("resnet51")
    with pytest.raises(FileError, match=r"--attn applies to backbones, not to a bare 'se'"):
        Model("se", attn="eca")
    with pytest.raises(FileError, match=r"unknown attn 'sk'; known: cbam, eca, ese, se"):
        Model("resnet18", attn="sk")
    with pytest.raises(FileError, match=r"the widths come from the weights"):
        Model("selayer").torch({})
    kernel = {"params/fc1/kernel": np.ones((64, 4), np.float32)}
    assert isinstance(Model("selayer").torch(kernel), se_torch.SELayer)
    with pytest.raises(FileError, match=r"fc1 \(64, 4\) with a bias is no classic SELayer"):
        Model("selayer").torch({**kernel, "params/fc1/bias": np.ones(4, np.float32)})
