"""Hostile and broken weight files: each ends as the README promises (one message on stderr, exit
2, no traceback, nothing written or deleted, bounded time and memory), and a seeded fuzz of byte
flips and truncations in every format ends in success with the same bits or in that clean exit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from flax import serialization
from safetensors.numpy import load_file, save_file

import se_torch
from se_convert import FileError, Weights, load, save
from se_convert._cli import main

ROOT = Path(__file__).resolve().parents[1]


def convert(capfd, *argv: object) -> tuple[int, str]:
    """``se-convert ARGV`` in this process: its exit status and everything it printed to stderr
    (file descriptor 2, where a reader's thread would print too)."""
    capfd.readouterr()
    code = main([str(a) for a in argv])
    return code, capfd.readouterr().err


def assert_clean_failure(code: int, err: str, output: Path, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("se-convert: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not output.exists(), f"{output} was written"
    leftovers = [p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.")]
    assert not leftovers, leftovers  # no temporary files left behind either


def se_block(rng: np.random.Generator) -> se_torch.SqueezeExcite:
    module = se_torch.SqueezeExcite(16, rd_channels=4)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(rng.standard_normal(p.shape).astype(np.float32)))
    return module


# --- the cases found by trying to break se-convert ---------------------------------------------


def dag_pickle(levels: int) -> bytes:
    """A dict keyed by t_levels, where t_0 = () and t_i = (t_(i-1), t_(i-1)), each level taken
    from the pickle's memo: a few bytes per level, 2**levels nodes when hashed."""
    ops = bytearray(b"\x80\x02})")  # PROTO 2, EMPTY_DICT, EMPTY_TUPLE
    for i in range(levels):
        ops += b"q" + bytes([i]) + b"h" + bytes([i]) + b"\x86"  # BINPUT i, BINGET i, TUPLE2
    return bytes(ops + b"K\x01s.")  # BININT1 1, SETITEM, STOP


def torch_zip(path: Path, pickle_bytes: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/byteorder", "little")
    return path


def test_a_pickle_dag_that_would_hash_forever_is_refused_in_bounded_time(tmp_path):
    small = torch_zip(tmp_path / "small.pth", dag_pickle(8))
    assert torch.load(small, weights_only=True)  # the construction is what torch.load takes
    hostile = torch_zip(tmp_path / "dag.pth", dag_pickle(64))
    assert hostile.stat().st_size < 1000
    result = subprocess.run(  # a subprocess: a regression hangs in C, where no signal lands
        [sys.executable, "-m", "se_convert", str(hostile), str(tmp_path / "out.msgpack")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert_clean_failure(
        result.returncode, result.stderr, tmp_path / "out.msgpack", "expand to more than"
    )
    assert result.stderr.count("\n") == 1


def test_a_stride_0_tensor_is_refused_before_it_is_materialised(tmp_path, capfd):
    path = tmp_path / "expand.pth"
    torch.save({"fc1.weight": torch.zeros(1).expand(16384, 16384, 1, 1)}, path)
    assert path.stat().st_size < 4096  # 1 GiB of float32 once materialised
    code, err = convert(capfd, path, tmp_path / "out.msgpack")
    assert_clean_failure(code, err, tmp_path / "out.msgpack", "stride-0", "1,073,741,824 bytes")


def test_the_byte_limit_is_enforced_and_can_be_raised(tmp_path, capfd, rng, monkeypatch):
    path = tmp_path / "se.pth"
    torch.save(se_block(rng).state_dict(), path)
    held = sum(v.nbytes for v in load(path).tensors.values())
    code, err = convert(capfd, path, tmp_path / "out.msgpack", "--max-bytes", held - 1)
    assert_clean_failure(code, err, tmp_path / "out.msgpack", "more than the limit")
    monkeypatch.setenv("SE_CONVERT_MAX_BYTES", str(held - 1))
    with pytest.raises(FileError, match="SE_CONVERT_MAX_BYTES"):
        load(tmp_path / "se.pth")
    assert convert(capfd, path, tmp_path / "out.msgpack", "--max-bytes", held)[0] == 0


def test_zero_size_widths_are_refused_before_any_width_inference(tmp_path, capfd):
    path = tmp_path / "zero.safetensors"
    save_file(
        {"params/fc1/kernel": np.zeros((10**12, 0), np.float32)},
        path,
        metadata={"framework": "flax", "model": "selayer"},
    )
    code, err = convert(capfd, path, tmp_path / "out.pth")
    assert_clean_failure(code, err, tmp_path / "out.pth", "widths (C, rd) are >= 1")


def msgpack_file(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Flax's msgpack layout with each array's dtype written as its full string (``>f4``), as a
    foreign writer may; flax.serialization itself writes names (``float32``)."""

    def ext(a: np.ndarray) -> msgpack.ExtType:
        payload = msgpack.packb((a.shape, a.dtype.str, a.tobytes()), use_bin_type=True)
        return msgpack.ExtType(1, payload)

    tree = {"params": {k: ext(v) for k, v in arrays.items()}}
    path.write_bytes(msgpack.packb(tree, use_bin_type=True))
    return path


@pytest.mark.parametrize("order", ["<", ">"])
def test_msgpack_arrays_of_either_byte_order_keep_their_values(tmp_path, capfd, rng, order):
    codes = ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8")
    values = {c: rng.uniform(0, 100, (3, 2)).astype(c) for c in codes}
    stored = {c: v.astype(np.dtype(c).newbyteorder(order)) for c, v in values.items()}
    assert all(np.array_equal(stored[c], values[c]) for c in codes)
    path = msgpack_file(tmp_path / f"in{order == '>'}.msgpack", stored)
    for out in ("out.msgpack", "out.safetensors"):
        assert convert(capfd, path, tmp_path / out, "--framework", "flax")[0] == 0
        back = load(tmp_path / out).tensors
        for c in codes:
            got = back[f"params/{c}"]
            assert got.dtype == np.dtype(c) and got.dtype.isnative, (out, c, got.dtype)
            np.testing.assert_array_equal(got, values[c], err_msg=f"{out} {c}")


def test_two_source_keys_for_one_variable_are_an_error(tmp_path, capfd, rng):
    conv = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    state = {"layer1.0.conv1.weight": conv, "layer1_0.conv1.weight": conv + 1}  # both layer1_0
    save_file(state, tmp_path / "dup.safetensors", metadata={"framework": "torch"})
    code, err = convert(capfd, tmp_path / "dup.safetensors", tmp_path / "out.msgpack")
    assert_clean_failure(code, err, tmp_path / "out.msgpack", "two source keys for one variable")
    assert "lands on params/layer1_0/conv1/kernel" in err


def test_a_leaf_where_a_subtree_is_is_an_error(tmp_path, capfd, rng):
    path = tmp_path / "clash.safetensors"
    tensors = {
        "params/fc1/kernel": rng.standard_normal((16, 4)).astype(np.float32),
        "params/fc1": rng.standard_normal(3).astype(np.float32),
    }
    save_file(tensors, path, metadata={"framework": "flax"})
    code, err = convert(capfd, path, tmp_path / "out.msgpack")
    assert_clean_failure(code, err, tmp_path / "out.msgpack", "a leaf or a subtree, not both")


def test_orbax_metadata_of_the_wrong_type_is_an_error_and_writes_nothing(tmp_path, capfd, rng):
    from se_convert import torch_to_flax
    from se_weights._formats import _flatten_flax

    variables = _flatten_flax(torch_to_flax(se_block(rng)), "se")
    save(Weights("flax", variables, model="se"), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "se_flax.json").write_text('{"framework": "flax", "model": 123}')
    code, err = convert(capfd, tmp_path / "ckpt", tmp_path / "out.pth")
    assert_clean_failure(code, err, tmp_path / "out.pth", "model must be a name, got 123")


def test_an_se_block_missing_a_tensor_is_an_error(tmp_path, capfd, rng):
    state = {k: v.numpy() for k, v in se_block(rng).state_dict().items()}
    del state["fc2.weight"]
    save_file(state, tmp_path / "se.safetensors", metadata={"framework": "torch"})
    out = tmp_path / "out.msgpack"
    code, err = convert(capfd, tmp_path / "se.safetensors", out, "--model", "se")
    assert_clean_failure(code, err, out, "missing (1):", "fc2.weight")


# --- writing: no silent replacement, no deletion of what se-convert did not write -------------


def test_an_output_that_appears_while_writing_is_not_replaced(tmp_path, rng):
    weights = Weights("torch", {k: v.numpy() for k, v in se_block(rng).state_dict().items()})
    for name in ("out.safetensors", "ckpt"):  # a file, and an orbax directory
        target = tmp_path / name

        def another_writer(_written: Path, target=target, name=name) -> None:
            if name == "ckpt":
                target.mkdir()
                (target / "theirs.txt").write_text("theirs")
            else:
                target.write_text("theirs")

        flax_weights = weights if name != "ckpt" else Weights("flax", {"params/w": np.ones(2)})
        with pytest.raises(FileError, match="appeared while writing it"):
            save(flax_weights, target, check=another_writer)
        theirs = target / "theirs.txt" if name == "ckpt" else target
        assert theirs.read_text() == "theirs"
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_two_processes_writing_one_output_one_wins(tmp_path, rng):
    torch.save(se_block(rng).state_dict(), tmp_path / "se.pth")
    out = tmp_path / "out.safetensors"
    command = [sys.executable, "-m", "se_convert", str(tmp_path / "se.pth"), str(out)]
    runs = [subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    results = [(p.returncode, err) for p in runs for _, err in [p.communicate(timeout=120)]]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "exists" in loser or "appeared while writing it" in loser, loser
    assert {k.split("/", 1)[1] for k in load_file(out)} == {
        "fc1/kernel",
        "fc1/bias",
        "fc2/kernel",
        "fc2/bias",
    }


def test_force_replaces_only_files_and_checkpoints_it_wrote(tmp_path, capfd, rng):
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    torch.save(se_block(rng).state_dict(), tmp_path / "se.pth")
    code, err = convert(capfd, tmp_path / "se.pth", project, "--force")
    assert code == 2 and "not a checkpoint se-flax wrote" in err, err
    assert (project / "notes.txt").read_text() == "mine"  # nothing deleted
    (tmp_path / "out.msgpack").mkdir()
    code, err = convert(capfd, tmp_path / "se.pth", tmp_path / "out.msgpack", "--force")
    assert code == 2 and "not a checkpoint se-flax wrote" in err, err
    assert convert(capfd, tmp_path / "se.pth", tmp_path / "ckpt")[0] == 0
    assert convert(capfd, tmp_path / "se.pth", tmp_path / "ckpt", "--force")[0] == 0  # its own
    assert load(tmp_path / "ckpt").framework == "flax"


# --- fuzz: random byte flips and truncations of valid files, every format --------------------


def fuzz_cases(
    rng: np.random.Generator, base: Path
) -> tuple[list[tuple[str, Path]], dict[Path, int]]:
    """Valid files of every format, and damaged copies of each (flipped bytes, cuts), with the
    number of bytes each copy had flipped (a cut: 0)."""
    from se_convert import torch_to_flax
    from se_weights._formats import _flatten_flax

    module = se_block(rng)
    state = {k: v.numpy() for k, v in module.state_dict().items()}
    flax = _flatten_flax(torch_to_flax(module), "se")
    originals = {
        "se.pth": lambda p: torch.save(module.state_dict(), p),
        "se.safetensors": lambda p: save_file(state, p, metadata={"framework": "torch"}),
        "flax.safetensors": lambda p: save_file(flax, p, metadata={"framework": "flax"}),
        "se.msgpack": lambda p: p.write_bytes(
            serialization.msgpack_serialize(Weights("flax", flax).variables())
        ),
        "ckpt": lambda p: save(Weights("flax", flax, model="se"), p),
    }
    cases, flips = [], {}
    for name, write in originals.items():
        write(base / name)
        files = sorted(f for f in (base / name).rglob("*") if f.is_file()) or [base / name]
        for i in range(6):
            copy = base / f"{i}-{name}"
            if (base / name).is_dir():
                shutil.copytree(base / name, copy)
                victim = copy / files[rng.integers(len(files))].relative_to(base / name)
            else:
                shutil.copy(base / name, copy)
                victim = copy
            data = bytearray(victim.read_bytes())
            flips[copy] = 0
            if i % 2 and data:  # cut at a random point
                data = data[: rng.integers(len(data))]
            else:  # flip 1-8 random bytes
                for at in rng.integers(0, max(len(data), 1), rng.integers(1, 9)):
                    if data:
                        data[at] ^= int(rng.integers(1, 256))
                        flips[copy] += 1
            victim.write_bytes(bytes(data))
            cases.append((name, copy))
    return cases, flips


def test_fuzzed_files_convert_to_the_same_bits_or_fail_cleanly(tmp_path, capfd, rng):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    cases, flips = fuzz_cases(rng, inputs)
    expected = {}
    for name in {name for name, _ in cases}:
        out = outputs / f"expected-{name}.safetensors"
        code, err = convert(capfd, inputs / name, out, "--framework", "flax")
        assert code == 0, err
        expected[name] = load_file(out)
    outcomes = {0: 0, 2: 0}
    for i, (name, damaged) in enumerate(cases):
        out = outputs / f"{i}.safetensors"
        code, err = convert(capfd, damaged, out, "--framework", "flax")
        if code == 0:  # the damage missed the structure: the same tensors, and values
            got = load_file(out)  # differ at most where a flipped byte landed in the data
            assert got.keys() == expected[name].keys(), damaged.name
            changed = 0
            for k, v in expected[name].items():
                assert (got[k].shape, got[k].dtype) == (v.shape, v.dtype), (damaged.name, k)
                changed += int(np.sum(got[k].view(np.uint8) != v.view(np.uint8)))
            assert changed <= flips[damaged], (damaged.name, changed)
        else:
            assert_clean_failure(code, err, out)
        outcomes[code] += 1
    assert sum(outcomes.values()) == 30 and outcomes[2] >= 15, outcomes  # every cut fails


def test_a_corrupted_orbax_checkpoint_prints_one_line_and_nothing_after(tmp_path, rng):
    """orbax's reader threads outlive a failed read; the command exits before they can print."""
    from se_convert import torch_to_flax
    from se_weights._formats import _flatten_flax

    flax = _flatten_flax(torch_to_flax(se_block(rng)), "se")
    save(Weights("flax", flax, model="se"), tmp_path / "ckpt")
    manifest = tmp_path / "ckpt" / "manifest.ocdbt"
    manifest.write_bytes(manifest.read_bytes()[: manifest.stat().st_size // 2])
    result = subprocess.run(
        [sys.executable, "-m", "se_convert", str(tmp_path / "ckpt"), str(tmp_path / "o.msgpack")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert_clean_failure(result.returncode, result.stderr, tmp_path / "o.msgpack", "orbax")
    assert result.stderr.count("\n") == 1, result.stderr
    assert os.listdir(tmp_path) == ["ckpt"] or sorted(os.listdir(tmp_path)) == ["ckpt"]
