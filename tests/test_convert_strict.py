"""se-convert's strictness from PyTorch (issue 26): whatever ``--model`` names, PyTorch tensors
must fit its state_dict exactly, in their own layout, torch-free; and a backbone's
``num_classes`` / ``in_chans`` come from ``--num-classes`` / ``--in-chans``, else the file's
record, else its weights (the classifier and the first convolution), each said in the report."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import se_torch
from se_common import ResNetConfig
from se_convert import FileError, Weights, convert_file, load, save
from se_convert._cli import main
from tests.helpers import randomize_, register
from tests.test_hostile_files import assert_clean_failure

ROOT = Path(__file__).resolve().parents[1]
TINY = ResNetConfig("basic", (1, 1, 1, 1), attn="se")  # a ResNet-10 with SE: the quick size


@pytest.fixture
def seresnet10(monkeypatch):
    register(monkeypatch, "seresnet10", TINY)


def random_state(module: torch.nn.Module, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every tensor of ``module`` random (counters included), as NumPy arrays."""
    randomize_(module, rng, torch.float32)
    return {k: v.numpy().copy() for k, v in module.state_dict().items()}


def pth(path: Path, state: dict[str, np.ndarray]) -> Path:
    save(Weights("torch", state), path)
    return path


def bits(tensors: dict[str, np.ndarray]) -> dict[str, tuple]:
    return {k: (str(v.dtype), v.shape, v.tobytes()) for k, v in tensors.items()}


def run(capfd, *argv: object) -> tuple[int, str, str]:
    """``se-convert ARGV`` in this process: its exit status, stdout and stderr."""
    capfd.readouterr()
    code = main([str(a) for a in argv])
    captured = capfd.readouterr()
    return code, captured.out, captured.err


# --- A: --model is enforced from PyTorch too ----------------------------------------------------


def test_selayer_refuses_an_se_modules_weights(tmp_path, capfd, rng):
    """timm's SEModule state_dict (fc1/fc2 1x1 convs with biases) is no classic SELayer (fc.0 /
    fc.2 Linear, no bias): to Flax and as a PyTorch copy, every key is listed, nothing written."""
    source = pth(tmp_path / "se.pth", random_state(se_torch.SqueezeExcite(32), rng))
    for out, extra in (("out.msgpack", ()), ("out.safetensors", ("--framework", "torch"))):
        code, _, err = run(capfd, source, tmp_path / out, "--model", "selayer", *extra)
        assert_clean_failure(
            code,
            err,
            tmp_path / out,
            "the weights do not fit --model selayer (they are a bare 'se' block's: --model se)",
            "6 problem(s)",
            "missing (2):",
            "fc.0.weight (rd, C) float32 (in the selayer model)",
            "fc.2.weight (C, rd) float32 (in the selayer model)",
            "unexpected (4):",
            "fc1.weight (8, 32, 1, 1) float32 (not in the selayer model)",
            "fc2.bias (32,) float32 (not in the selayer model)",
        )
    code, out, _ = run(capfd, source, tmp_path / "ok.msgpack", "--model", "se")
    assert code == 0 and "torch -> flax, se)" in out


def test_se_refuses_a_selayers_weights_which_round_trip_as_selayer(tmp_path, capfd, rng):
    state = random_state(se_torch.SELayer(64, reduction=16), rng)  # fc.0.weight (4, 64)
    source = pth(tmp_path / "selayer.pth", state)
    for out, extra in (("out.msgpack", ()), ("out.safetensors", ("--framework", "torch"))):
        code, _, err = run(capfd, source, tmp_path / out, "--model", "se", *extra)
        assert_clean_failure(
            code,
            err,
            tmp_path / out,
            "the weights do not fit --model se (they are a bare 'selayer' block's: --model "
            "selayer)",
            "fc1.weight (rd, C, 1, 1) float32 (in the se model)",
            "fc2.weight (C, rd, 1, 1) float32 (in the se model)",
            "fc.0.weight (4, 64) float32 (not in the se model)",
            "fc.2.weight (64, 4) float32 (not in the se model)",
        )
    flax = tmp_path / "selayer.msgpack"
    assert run(capfd, source, flax, "--model", "selayer")[0] == 0
    back = tmp_path / "back.pth"
    assert run(capfd, flax, back, "--model", "selayer")[0] == 0
    assert bits(load(back).tensors) == bits(state)


def test_a_backbone_lists_every_missing_unexpected_and_misshaped_key_at_once(
    seresnet10, tmp_path, capfd, rng
):
    state = random_state(se_torch.create_model("seresnet10"), rng)
    del state["layer1.0.bn1.running_var"]
    state["layer1.0.extra.weight"] = rng.standard_normal(3).astype(np.float32)
    state["layer2.0.conv1.weight"] = rng.standard_normal((128, 64, 1, 3)).astype(np.float32)
    source = pth(tmp_path / "broken.pth", state)
    for out, extra in (("out.msgpack", ()), ("out.safetensors", ("--framework", "torch"))):
        code, _, err = run(capfd, source, tmp_path / out, "--model", "seresnet10", *extra)
        assert_clean_failure(
            code,
            err,
            tmp_path / out,
            "the weights do not fit --model seresnet10 (num_classes 1000 from fc.weight; "
            "in_chans 3 from conv1.weight): 3 problem(s)",
            "missing (1):\n    layer1.0.bn1.running_var (64,) float32 (in the seresnet10 model)",
            "unexpected (1):\n    layer1.0.extra.weight (3,) float32 (not in the seresnet10 model)",
            "mismatched (1):\n    layer2.0.conv1.weight: (128, 64, 1, 3) float32, the seresnet10 "
            "model has (128, 64, 3, 3) float32",
        )


NO_TORCH = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # importing torch now raises ImportError
    import numpy as np
    from pathlib import Path
    from se_convert import ConversionError, Weights, convert_file, load, save
    tmp, rng = Path(sys.argv[1]), np.random.default_rng(int(sys.argv[2]))
    state = {
        "fc1.weight": rng.standard_normal((8, 32, 1, 1)).astype(np.float32),
        "fc1.bias": rng.standard_normal(8).astype(np.float32),
        "fc2.weight": rng.standard_normal((32, 8, 1, 1)).astype(np.float32),
        "fc2.bias": rng.standard_normal(32).astype(np.float32),
    }
    save(Weights("torch", state), tmp / "se.safetensors")
    try:
        convert_file(tmp / "se.safetensors", tmp / "selayer.msgpack", "selayer")
        raise SystemExit("an SEModule's weights were taken for an SELayer's")
    except ConversionError as e:
        assert "fc.0.weight (rd, C) float32 (in the selayer model)" in str(e), str(e)
    convert_file(tmp / "se.safetensors", tmp / "copy.safetensors", "se", framework="torch")
    copy = load(tmp / "copy.safetensors")
    assert copy.model == "se" and all((copy.tensors[k] == v).all() for k, v in state.items())
    print("ok", sys.modules["torch"] is None, (tmp / "selayer.msgpack").exists())
    """
)


def test_the_check_of_a_safetensors_file_needs_no_torch(tmp_path, rng):
    seed = str(rng.integers(2**31))
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(tmp_path), seed],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout
    assert result.stdout.strip() == "ok True False"


# --- B: a backbone's num_classes and in_chans ----------------------------------------------------


def test_a_fine_tuned_backbone_round_trips_with_its_classes_from_the_weights(
    seresnet10, tmp_path, capfd, rng
):
    state = random_state(se_torch.create_model("seresnet10", num_classes=10), rng)
    source = pth(tmp_path / "tuned.pth", state)
    flax = tmp_path / "tuned.msgpack"
    assert run(capfd, source, flax)[0] == 0  # no --model: names only
    back = tmp_path / "back.pth"
    code, out, err = run(capfd, flax, back, "--model", "seresnet10")
    assert code == 0, err
    assert "(flax -> torch, seresnet10, num_classes 10 from params/fc/kernel)" in out
    assert bits(load(back).tensors) == bits(state)
    checked = tmp_path / "checked.msgpack"
    code, out, err = run(capfd, source, checked, "--model", "seresnet10")
    assert code == 0, err
    assert "(torch -> flax, seresnet10, num_classes 10 from fc.weight)" in out
    assert bits(load(checked).tensors) == bits(load(flax).tensors)


def test_a_wrong_num_classes_names_the_option_that_fixes_it(seresnet10, tmp_path, capfd, rng):
    state = random_state(se_torch.create_model("seresnet10", num_classes=10), rng)
    source = pth(tmp_path / "tuned.pth", state)
    flax = tmp_path / "tuned.msgpack"
    assert run(capfd, source, flax)[0] == 0
    out = tmp_path / "out.msgpack"
    code, _, err = run(capfd, source, out, "--model", "seresnet10", "--num-classes", 5)
    assert_clean_failure(
        code,
        err,
        out,
        "num_classes 5 from --num-classes",
        "fc.weight (10, 512) shows num_classes 10: pass --num-classes 10",
        "fc.weight: (10, 512) float32, the seresnet10 model has (5, 512) float32",
    )
    back = tmp_path / "back.pth"
    code, _, err = run(capfd, flax, back, "--model", "seresnet10", "--num-classes", 5)
    assert_clean_failure(
        code, err, back, "params/fc/kernel (512, 10) shows num_classes 10: pass --num-classes 10"
    )


def test_headless_weights_need_num_classes_0(seresnet10, tmp_path, capfd, rng):
    state = random_state(se_torch.create_model("seresnet10", num_classes=0), rng)
    source = pth(tmp_path / "headless.pth", state)
    out = tmp_path / "out.msgpack"
    code, _, err = run(capfd, source, out, "--model", "seresnet10")
    assert_clean_failure(
        code,
        err,
        out,
        "num_classes 1000 by default",
        "the weights have no classifier (fc.weight): pass --num-classes 0 for weights without a "
        "classifier",
        "fc.weight (1000, 512) float32 (in the seresnet10 model)",
    )
    code, report, err = run(capfd, source, out, "--model", "seresnet10", "--num-classes", 0)
    assert code == 0, err
    assert "seresnet10, num_classes 0 from --num-classes)" in report


def test_one_input_channel_round_trips(seresnet10, tmp_path, capfd, rng):
    state = random_state(se_torch.create_model("seresnet10", in_chans=1), rng)
    source = pth(tmp_path / "gray.pth", state)
    flax = tmp_path / "gray.msgpack"
    code, out, err = run(capfd, source, flax, "--model", "seresnet10", "--in-chans", 1)
    assert code == 0, err
    assert "(torch -> flax, seresnet10, in_chans 1 from --in-chans)" in out
    back = tmp_path / "back.pth"
    code, out, err = run(capfd, flax, back, "--model", "seresnet10", "--verify")
    assert code == 0, err
    assert "(flax -> torch, seresnet10, in_chans 1 from params/conv1/kernel)" in out
    assert "verify: max |torch - flax|" in out
    assert bits(load(back).tensors) == bits(state)
    again = tmp_path / "again.msgpack"
    code, out, err = run(capfd, source, again, "--model", "seresnet10")
    assert code == 0 and "in_chans 1 from conv1.weight" in out, err
    wrong = tmp_path / "wrong.pth"
    code, _, err = run(capfd, flax, wrong, "--model", "seresnet10", "--in-chans", 3)
    assert_clean_failure(
        code, err, wrong, "params/conv1/kernel (7, 7, 1, 64) shows in_chans 1: pass --in-chans 1"
    )


def test_a_record_the_weights_contradict_is_an_error(seresnet10, tmp_path, capfd, rng):
    state = random_state(se_torch.create_model("seresnet10", num_classes=10), rng)
    recorded = tmp_path / "recorded.safetensors"
    save(Weights("torch", state, "seresnet10", options={"num_classes": 1000}), recorded)
    out = tmp_path / "out.safetensors"
    code, _, err = run(capfd, recorded, out)
    assert_clean_failure(
        code,
        err,
        out,
        "the file records num_classes 1000, but its fc.weight (10, 512) shows 10: pass "
        "--num-classes 10",
    )
    code, report, err = run(capfd, recorded, out, "--num-classes", 10)  # the option wins
    assert code == 0, err
    assert "(torch -> flax, seresnet10, num_classes 10 from --num-classes)" in report
    written = load(out)
    assert (written.model, written.options) == ("seresnet10", {"num_classes": 10})
    back = tmp_path / "back.safetensors"
    code, report, err = run(capfd, out, back)  # the record, now right
    assert code == 0, err
    assert "(flax -> torch, seresnet10, num_classes 10 as the file records)" in report
    assert bits(load(back).tensors) == bits(state)


def test_num_classes_and_in_chans_are_checked(seresnet10, tmp_path, capfd, rng):
    se = pth(tmp_path / "se.pth", random_state(se_torch.SqueezeExcite(16), rng))
    out = tmp_path / "out.msgpack"
    with pytest.raises(FileError, match=r"--num-classes applies to backbones, not to a bare 'se'"):
        convert_file(se, out, "se", num_classes=10)
    with pytest.raises(FileError, match=r"--in-chans needs --model \(or a file that records"):
        convert_file(se, out, in_chans=1)
    for options, message in (
        ({"num_classes": -1}, "num_classes must be an integer >= 0, got -1"),
        ({"num_classes": True}, "num_classes must be an integer >= 0, got True"),
        ({"in_chans": 0}, "in_chans must be an integer >= 1, got 0"),
        ({"in_chans": 1.0}, "in_chans must be an integer >= 1, got 1.0"),
    ):
        with pytest.raises(FileError, match=message):
            convert_file(se, out, "seresnet10", **options)
    for flag, value, message in (
        ("--num-classes", "-1", "expected an integer >= 0, got -1"),
        ("--in-chans", "0", "expected an integer >= 1, got 0"),
        ("--in-chans", "x", "expected an integer, got 'x'"),
    ):
        with pytest.raises(SystemExit) as info:
            run(capfd, se, out, "--model", "seresnet10", flag, value)
        assert info.value.code == 2 and message in capfd.readouterr().err
    assert not out.exists()
