"""Hostile and broken weight files: each ends as the README promises (one message on stderr, exit
2, no traceback, nothing written or deleted, bounded time and memory), and a seeded fuzz of byte
flips, truncations and (in orbax directories) damaged structure in every format ends in success
with the same bits or in that clean exit."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
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
from se_weights import _formats
from se_weights._formats import is_leftover

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
    leftovers = [p.name for p in output.parent.iterdir() if is_leftover(p.name, output)]
    assert not leftovers, leftovers  # no temporary files left behind either


def run_convert(*argv: object) -> subprocess.CompletedProcess:
    """``se-convert ARGV`` in a subprocess: a regression that blocks (on a FIFO, in C, where no
    signal lands) fails the test at the timeout instead of hanging the suite."""
    return subprocess.run(
        [sys.executable, "-m", "se_convert", *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def assert_same_bits(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys(), (sorted(got), sorted(want))
    for k, v in want.items():
        assert (got[k].shape, got[k].dtype) == (v.shape, v.dtype), k
        assert got[k].tobytes() == v.tobytes(), k


def se_block(rng: np.random.Generator) -> se_torch.SqueezeExcite:
    module = se_torch.SqueezeExcite(16, rd_channels=4)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(rng.standard_normal(p.shape).astype(np.float32)))
    return module


def flax_se(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """An SE block's Flax variables, flat, with fresh random values."""
    from se_convert import torch_to_flax
    from se_weights._formats import _flatten_flax

    return _flatten_flax(torch_to_flax(se_block(rng)), "se")


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
    return msgpack_tree(path, {"params": arrays})


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


# --- orbax directories: walked before anything in them is opened ------------------------------


def orbax_se(rng: np.random.Generator, path: Path) -> dict[str, np.ndarray]:
    """An SE block saved as an orbax checkpoint directory at ``path``; its tensors."""
    tensors = flax_se(rng)
    save(Weights("flax", tensors, model="se"), path)
    return tensors


def special_entry(ckpt: Path, damage: str) -> tuple[Path, str]:
    """Puts a special file into the orbax directory ``ckpt``: the entry, and its kind as the
    refusal names it."""
    data = sorted((ckpt / "ocdbt.process_0" / "d").iterdir())[0]
    entry = {
        "fifo-metadata": ckpt / "_METADATA",
        "fifo-data": data,
        "fifo-se_flax.json": ckpt / "se_flax.json",
        "symlink-to-dev-zero": ckpt / "_METADATA",
        "symlink-to-a-fifo": data,
    }[damage]
    entry.unlink()
    if damage.startswith("fifo"):
        os.mkfifo(entry)
        return entry, "a FIFO (named pipe), not a regular file"
    if damage == "symlink-to-dev-zero":
        entry.symlink_to("/dev/zero")
        return entry, "a symlink to a character device (/dev/zero)"
    os.mkfifo(ckpt.parent / "pipe")
    entry.symlink_to(ckpt.parent / "pipe")
    return entry, "a symlink to a FIFO (named pipe)"


@pytest.mark.parametrize(
    "damage",
    ["fifo-metadata", "fifo-data", "fifo-se_flax.json", "symlink-to-dev-zero", "symlink-to-a-fifo"],
)
def test_special_files_in_an_orbax_checkpoint_are_refused_before_anything_opens_them(
    tmp_path, rng, damage
):
    ckpt = tmp_path / "ckpt"
    orbax_se(rng, ckpt)
    entry, kind = special_entry(ckpt, damage)
    out = tmp_path / "out.msgpack"
    result = run_convert(ckpt, out)  # before: orbax (or our own read) waited on it forever
    assert_clean_failure(result.returncode, result.stderr, out, f"{entry}: refused: {kind}")
    assert result.stderr.count("\n") == 1, result.stderr
    assert os.path.lexists(entry)  # nothing deleted


def test_the_walk_of_an_orbax_checkpoint_is_bounded(tmp_path, capfd, rng, monkeypatch):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.safetensors"
    tensors = orbax_se(rng, ckpt)
    meta = tmp_path / "elsewhere.json"  # a symlink to a regular file may stay
    meta.write_text((ckpt / "se_flax.json").read_text())
    (ckpt / "se_flax.json").unlink()
    (ckpt / "se_flax.json").symlink_to(meta)
    assert convert(capfd, ckpt, out, "--framework", "flax")[0] == 0
    assert_same_bits(load_file(out), tensors)
    assert load(ckpt).model == "se"
    out.unlink()

    held = sum(v.nbytes for v in tensors.values())
    with (ckpt / "padding").open("wb") as f:  # sparse: bytes a reader could be made to take in
        f.truncate(_formats.ORBAX_METADATA_ALLOWANCE + 2 * held)
    code, err = convert(capfd, ckpt, out, "--max-bytes", held)
    assert_clean_failure(
        code, err, out, f"{ckpt}: refused: its files hold more than", "--max-bytes"
    )
    (ckpt / "padding").unlink()

    pad = "x" * _formats.METADATA_MAX_BYTES
    meta.write_text(json.dumps({"framework": "flax", "model": "se", "pad": pad}))
    code, err = convert(capfd, ckpt, out)
    assert_clean_failure(code, err, out, "se_flax.json: refused: more than 1,048,576 bytes")
    meta.write_text(json.dumps({"framework": "flax", "model": "se"}))

    entries = sum(1 for _ in ckpt.rglob("*"))
    monkeypatch.setattr(_formats, "ORBAX_MAX_ENTRIES", entries)
    assert convert(capfd, ckpt, out, "--framework", "flax")[0] == 0
    out.unlink()
    (ckpt / "one-more").write_bytes(rng.bytes(10))
    code, err = convert(capfd, ckpt, out)
    assert_clean_failure(code, err, out, f"more than {entries:,} files and directories")
    (ckpt / "one-more").unlink()

    monkeypatch.setattr(_formats, "ORBAX_MAX_DEPTH", 2)  # ocdbt.process_0/d is 2 deep
    assert convert(capfd, ckpt, out, "--framework", "flax")[0] == 0
    out.unlink()
    (ckpt / "a" / "b" / "c").mkdir(parents=True)
    code, err = convert(capfd, ckpt, out)
    assert_clean_failure(code, err, out, f"{ckpt / 'a' / 'b' / 'c'}: refused: directories nested")


# --- names: every tensor keeps its own, in the layout the file claims ------------------------


def msgpack_tree(path: Path, tree: dict) -> Path:
    """``tree`` (nested dicts of arrays, any keys) in Flax's msgpack layout, each array's dtype
    written as its full string (``>f4``), as a foreign writer may."""

    def pack(node: object) -> object:
        if isinstance(node, dict):
            return {k: pack(v) for k, v in node.items()}
        payload = msgpack.packb((node.shape, node.dtype.str, node.tobytes()), use_bin_type=True)
        return msgpack.ExtType(1, payload)

    path.write_bytes(msgpack.packb(pack(tree), use_bin_type=True, strict_types=False))
    return path


def nested(tensors: dict[str, np.ndarray]) -> dict:
    return Weights("flax", tensors).variables()


@pytest.mark.parametrize("flat_first", [True, False])
def test_two_entries_on_one_flax_path_in_a_msgpack_are_an_error(tmp_path, capfd, rng, flat_first):
    tree = nested(flax_se(rng))
    flat = {"fc1/kernel": rng.standard_normal((16, 4)).astype(np.float32)}
    tree["params"] = {**flat, **tree["params"]} if flat_first else {**tree["params"], **flat}
    path, out = msgpack_tree(tmp_path / "both.msgpack", tree), tmp_path / "out.pth"
    code, err = convert(capfd, path, out, "--model", "se")  # was: 4 of 5 tensors, exit 0
    assert_clean_failure(
        code,
        err,
        out,
        "two entries are one Flax path, params/fc1/kernel",
        "['params']['fc1/kernel']",
        "['params']['fc1']['kernel']",
    )


@pytest.mark.parametrize(
    "key, needle",
    [
        ("", "['params']['']: the name '' is empty"),
        (7, "['params'][7]: a Flax name must be a string, got int 7"),
        ("fc3/kernel", "['params']['fc3/kernel']: the name 'fc3/kernel' holds /"),
    ],
    ids=["empty", "int", "slash"],
)
def test_flax_names_that_are_empty_not_strings_or_hold_a_slash_are_refused(
    tmp_path, capfd, rng, key, needle
):
    tree = nested(flax_se(rng))
    tree["params"][key] = rng.standard_normal(3).astype(np.float32)
    path, out = msgpack_tree(tmp_path / "names.msgpack", tree), tmp_path / "out.safetensors"
    code, err = convert(capfd, path, out, "--framework", "flax")
    assert_clean_failure(code, err, out, needle)


def torch_state(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in se_block(rng).state_dict().items()}


@pytest.mark.parametrize(
    "case", ["framework=flax", "layout=flax", "framework=torch", "pth", "msgpack", "orbax"]
)
def test_keys_that_are_not_names_of_the_layout_the_file_claims_are_an_error(
    tmp_path, capfd, rng, case
):
    out = tmp_path / "out.msgpack"
    if case.endswith("=flax"):  # PyTorch keys under a claim of Flax's layout
        state = torch_state(rng)
        state.update({f"extra{i}.weight": rng.standard_normal(2).astype(np.float32) for i in "abc"})
        path = tmp_path / "claim.safetensors"
        save_file(state, path, metadata=dict([case.split("=")]))
        needles = ["not Flax paths", "'fc1.weight'", "(and 2 more) (7 of 7)", f"says {case}"]
    elif case == "framework=torch":
        path = tmp_path / "claim.safetensors"
        save_file(flax_se(rng), path, metadata={"framework": "torch"})
        needles = ["not PyTorch state_dict keys", "'params/fc1/kernel'", "(4 of 4)"]
        needles.append("the file's metadata says framework=torch")
    elif case == "pth":
        state = {**torch_state(rng), "fc3/weight": rng.standard_normal(2).astype(np.float32)}
        path = tmp_path / "slash.pth"
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
        needles = ["not PyTorch state_dict keys", "'fc3/weight' (1 of 5)", "a PyTorch file"]
    else:  # a leaf beside the collections: a path of one name
        tensors = {**flax_se(rng), "kernel": rng.standard_normal(2).astype(np.float32)}
        if case == "msgpack":
            path = msgpack_tree(tmp_path / "one.msgpack", nested(tensors))
            out = tmp_path / "out.safetensors"
        else:
            path = tmp_path / "ckpt"
            save(Weights("flax", tensors), path)
        needles = [
            "not Flax paths",
            "'kernel' (1 of 5)",
            f"{'an' if case == 'orbax' else 'a'} {case}",
        ]
    code, err = convert(capfd, path, out)
    assert_clean_failure(code, err, out, f"{path}: keys that are not ", *needles)


# --- pickles that hold code: refused before torch.load, in our words --------------------------


class Payload:
    """Pickles as a call of ``os.system`` that would create ``marker``: an attacker's file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch '{self.marker}'",))


def code_pickle(path: Path, case: str, marker: Path, rng: np.random.Generator) -> Path:
    state = se_block(rng).state_dict()
    if case == "reduce":
        torch.save({**state, "evil": Payload(marker)}, path)
    elif case == "legacy":
        torch.save({**state, "evil": Payload(marker)}, path, _use_new_zipfile_serialization=False)
    elif case == "handcrafted-legacy":  # one pickle, no torch framing at all
        path.write_bytes(pickle.dumps(Payload(marker)))
    else:  # a real zip checkpoint whose data.pkl was swapped
        torch.save(state, path.with_suffix(".orig"))
        with (
            zipfile.ZipFile(path.with_suffix(".orig")) as original,
            zipfile.ZipFile(path, "w") as archive,
        ):
            for member in original.infolist():
                data = original.read(member)
                if member.filename.endswith("data.pkl"):
                    data = pickle.dumps(Payload(marker), protocol=2)
                archive.writestr(member, data)
        path.with_suffix(".orig").unlink()
    return path


@pytest.mark.parametrize("precheck", [True, False], ids=["ours", "torch-refuses"])
@pytest.mark.parametrize("case", ["reduce", "tampered-zip", "legacy", "handcrafted-legacy"])
def test_pickles_that_hold_code_are_refused_in_our_words(
    tmp_path, capfd, rng, monkeypatch, case, precheck
):
    marker = tmp_path / "the-payload-ran"
    path, out = code_pickle(tmp_path / f"{case}.pth", case, marker, rng), tmp_path / "out.msgpack"
    if not precheck:  # as with a torch without the allowlist tables: torch.load refuses it
        monkeypatch.setattr(_formats, "_allowed_globals", lambda: None)
    code, err = convert(capfd, path, out)
    named = f"{os.system.__module__}.system"  # posix.system
    assert_clean_failure(
        code,
        err,
        out,
        f"{path}: refused: the pickle holds code or objects that are not tensors",
        named,
        "nothing in it was run",
    )
    assert "weights_only" not in err and "safe_globals" not in err, err
    assert err.count("\n") == 1, err
    assert not marker.exists()  # the command it holds did not run


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_files_torch_save_writes_still_load_bit_for_bit(tmp_path, rng, zip_format):
    state = {
        "fc1.weight": torch.from_numpy(rng.standard_normal((4, 16, 1, 1)).astype(np.float32)),
        "fc1.bias": torch.from_numpy(rng.standard_normal(4)).to(torch.bfloat16),
        "fc2.weight": torch.from_numpy(rng.standard_normal((16, 4)).astype(np.float16)),
        "bn.num_batches_tracked": torch.tensor(int(rng.integers(1 << 40))),
    }
    path = tmp_path / "se.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    weights = load(path)
    assert weights.framework == "torch"
    from se_weights._arrays import to_numpy

    assert_same_bits(weights.tensors, {k: to_numpy(v) for k, v in state.items()})


@dataclass
class TrainConfig:
    """A training script's own object, saved beside the state_dict."""

    lr: float


def test_globals_registered_with_torch_safe_globals_stay_allowed(tmp_path, rng):
    state = se_block(rng).state_dict()
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": state, "config": TrainConfig(float(rng.uniform()))}, path)
    with pytest.raises(
        FileError, match=re.escape(f"global {TrainConfig.__module__}.TrainConfig")
    ) as e:
        load(path)
    assert "weights_only" not in str(e.value)
    with torch.serialization.safe_globals([TrainConfig]):
        weights = load(path)
    assert_same_bits(weights.tensors, {k: v.numpy() for k, v in state.items()})
    assert weights.notes == ["read the state_dict under the checkpoint's 'state_dict' key"]


# --- output names up to the file system's limit -----------------------------------------------


def name_of_255_bytes(char: str, ext: str) -> str:
    """A name of exactly 255 bytes in UTF-8 (NAME_MAX), ``char`` repeated, then ``ext``."""
    room = 255 - len(ext.encode())
    count, pad = divmod(room, len(char.encode()))
    name = char * count + "x" * pad + ext
    assert len(name.encode()) == 255
    return name


@pytest.mark.parametrize("char", ["w", "日"], ids=["ascii", "3-byte-utf8"])
@pytest.mark.parametrize("ext", [".pth", ".safetensors", ".msgpack", ""])
def test_an_output_name_of_255_bytes_is_written_in_every_format(tmp_path, rng, char, ext):
    if os.pathconf(tmp_path, "PC_NAME_MAX") != 255:
        pytest.skip("this file system's names are not limited to 255 bytes")
    path = tmp_path / name_of_255_bytes(char, ext)
    framework = "torch" if ext in (".pth", ".safetensors") else "flax"
    during = []

    def leftovers(_written: Path) -> None:
        during.append([p.name for p in tmp_path.iterdir() if is_leftover(p.name, path)])

    for force in (False, True):  # a new output, then replacing it
        tensors = torch_state(rng) if framework == "torch" else flax_se(rng)
        save(Weights(framework, tensors), path, force=force, check=leftovers)
        assert_same_bits(load(path).tensors, tensors)
    assert [len(found) for found in during] == [1, 1]  # the temporary directory, recognised
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # and gone


# --- a kill while --force replaces a checkpoint ------------------------------------------------

KILL_SCRIPT = """
import os, signal, sys
import numpy as np
from se_weights import _formats

destination, new_tensors, mode = sys.argv[1:]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "exchange":  # killed right after the one atomic exchange
    exchange = _formats._exchange
    def exchange_then_die(a, b):
        if not exchange(a, b):
            sys.exit("no RENAME_EXCHANGE here")
        die()
    _formats._exchange = exchange_then_die
else:  # the fallback of two renames, killed instead of the second
    _formats._exchange = lambda a, b: False
    rename, renames = _formats._rename, []
    def rename_or_die(src, dst):
        renames.append((src, dst))
        if len(renames) == 2:
            die()
        rename(src, dst)
    _formats._rename = rename_or_die
with np.load(new_tensors) as npz:
    tensors = {k: npz[k] for k in npz.files}
_formats.save(_formats.Weights("flax", tensors, model="se"), destination, force=True)
sys.exit("not killed")
"""


def can_exchange(directory: Path) -> bool:
    a, b = directory / "probe-a", directory / "probe-b"
    a.mkdir()
    b.mkdir()
    try:
        return _formats._exchange(a, b)
    finally:
        a.rmdir()
        b.rmdir()


@pytest.mark.parametrize("mode", ["exchange", "two-renames-then-read", "two-renames-then-save"])
def test_a_kill_while_force_replacing_a_checkpoint_leaves_the_old_or_the_new_one(
    tmp_path, capfd, rng, mode
):
    if mode == "exchange" and not can_exchange(tmp_path):
        pytest.skip("no renameat2(RENAME_EXCHANGE) here")
    ckpt = tmp_path / "ckpt"
    old = orbax_se(rng, ckpt)
    new = {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in old.items()}
    np.savez(tmp_path / "new.npz", **new)
    (tmp_path / "neighbour").mkdir()
    (tmp_path / "neighbour" / "notes.txt").write_text("mine")
    result = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(ckpt), str(tmp_path / "new.npz"), mode[:8]],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    expected = ["ckpt", "neighbour", "new.npz"]
    if mode == "exchange":  # atomic: the new one, whole (the old one in the killed run's leftover)
        assert_same_bits(load(ckpt).tensors, new)
        leftovers = [p.name for p in tmp_path.iterdir() if is_leftover(p.name, ckpt)]
        assert len(leftovers) == 1
        notes = []  # the next run writing it removes that leftover (the dead run's own), saying so
        save(Weights("flax", new), ckpt, force=True, log=notes.append)
        assert any(n.startswith(f"removed {leftovers[0]} next to {ckpt}") for n in notes), notes
        assert_same_bits(load(ckpt).tensors, new)
    else:
        assert not ckpt.exists()  # killed between the renames: the old one moved aside
        if mode.endswith("read"):  # the next run reading it puts it back, and says so
            capfd.readouterr()
            assert main([str(ckpt), str(tmp_path / "out.safetensors"), "--framework", "flax"]) == 0
            printed = capfd.readouterr().out
            assert_same_bits(load_file(tmp_path / "out.safetensors"), old)
            expected.append("out.safetensors")
        else:  # the next run writing it puts it back first, and says so
            notes = []
            with pytest.raises(FileError, match="exists; pass --force"):
                save(Weights("flax", new), ckpt, log=notes.append)
            printed = "".join(f"note: {n}\n" for n in notes)
        assert f"note: restored {ckpt}: a run replacing it" in printed, printed
        assert_same_bits(load(ckpt).tensors, old)
        assert load(ckpt).model == "se"
    assert (tmp_path / "neighbour" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)


def test_where_the_second_rename_fails_the_old_checkpoint_is_put_back(tmp_path, rng, monkeypatch):
    ckpt = tmp_path / "ckpt"
    old = orbax_se(rng, ckpt)
    monkeypatch.setattr(_formats, "_exchange", lambda a, b: False)  # the two-rename fallback
    rename, renames = _formats._rename, []

    def second_fails(src: Path, dst: Path) -> None:
        renames.append(src)
        if len(renames) == 2:
            raise PermissionError(13, "Permission denied", str(dst))
        rename(src, dst)

    monkeypatch.setattr(_formats, "_rename", second_fails)
    with pytest.raises(FileError, match=r"cannot move the new checkpoint there .* back in place"):
        save(Weights("flax", flax_se(rng)), ckpt, force=True)
    assert_same_bits(load(ckpt).tensors, old)  # not deleted with the temporary directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    monkeypatch.setattr(_formats, "_rename", rename)
    new = flax_se(rng)
    save(Weights("flax", new), ckpt, force=True)
    assert_same_bits(load(ckpt).tensors, new)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


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


# --- fuzz: random byte flips and truncations of valid files, every format; orbax structure ----

# How an orbax directory's structure is damaged: one random file each (or a new one).
STRUCTURE = ("fifo", "symlink", "symlink-to-directory", "deleted", "extra-file", "directory")


def damage_structure(rng: np.random.Generator, ckpt: Path, how: str) -> str | None:
    """Damages the orbax directory ``ckpt``: a random file replaced by a FIFO, by a symlink to
    another of its files or to a directory, or by a directory; deleted; or a random file added.
    Returns what the refusal must say where the walk before reading must refuse it."""
    files = sorted(f for f in ckpt.rglob("*") if f.is_file())
    victim = files[rng.integers(len(files))]
    if how == "extra-file":
        folders = [ckpt, *sorted(d for d in ckpt.rglob("*") if d.is_dir())]
        extra = folders[rng.integers(len(folders))] / f"extra-{rng.integers(10**6)}"
        extra.write_bytes(rng.bytes(int(rng.integers(0, 512))))
        return None
    victim.unlink()
    if how == "fifo":
        os.mkfifo(victim)
        return f"{victim.name}: refused: a FIFO (named pipe)"
    if how == "symlink":
        others = [f for f in files if f != victim]
        victim.symlink_to(os.path.relpath(others[rng.integers(len(others))], victim.parent))
    elif how == "symlink-to-directory":
        victim.symlink_to(victim.parent)
        return f"{victim.name}: refused: a symlink to a directory"
    elif how == "directory":
        victim.mkdir()
    return None


@contextmanager
def unblocked_fifos(directory: Path) -> Iterator[None]:
    """A writer for each FIFO under ``directory`` that opens and closes it, again and again: a
    reader that opened one (a regression past the walk) would read end-of-file, not wait forever
    in this process."""
    fifos = [f for f in directory.rglob("*") if f.is_fifo()]
    stop = threading.Event()

    def write(fifo: Path) -> None:
        while not stop.is_set():
            os.close(os.open(fifo, os.O_WRONLY))  # waits for a reader
            time.sleep(0.01)

    threads = [threading.Thread(target=write, args=(f,), daemon=True) for f in fifos]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for fifo, thread in zip(fifos, threads, strict=True):
            while thread.is_alive():
                reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer's open end
                thread.join(0.05)
                os.close(reader)


def fuzz_cases(
    rng: np.random.Generator, base: Path
) -> tuple[list[tuple[str, Path]], dict[Path, int], dict[Path, str]]:
    """Valid files of every format, and damaged copies of each (flipped bytes, cuts; and for the
    orbax directory, damaged structure), with the number of bytes each copy had flipped (a cut
    or structure: 0), and what the refusal of a copy that must be refused says."""
    module = se_block(rng)
    state = {k: v.numpy() for k, v in module.state_dict().items()}
    flax = flax_se(rng)
    originals = {
        "se.pth": lambda p: torch.save(module.state_dict(), p),
        "se.safetensors": lambda p: save_file(state, p, metadata={"framework": "torch"}),
        "flax.safetensors": lambda p: save_file(flax, p, metadata={"framework": "flax"}),
        "se.msgpack": lambda p: p.write_bytes(
            serialization.msgpack_serialize(Weights("flax", flax).variables())
        ),
        "ckpt": lambda p: save(Weights("flax", flax, model="se"), p),
    }
    cases, flips, refusals = [], {}, {}
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
        if (base / name).is_dir():
            for how in STRUCTURE:
                copy = base / f"{how}-{name}"
                shutil.copytree(base / name, copy)
                flips[copy] = 0
                if (needle := damage_structure(rng, copy, how)) is not None:
                    refusals[copy] = needle
                cases.append((name, copy))
    return cases, flips, refusals


def test_fuzzed_files_convert_to_the_same_bits_or_fail_cleanly(tmp_path, capfd, rng):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    cases, flips, refusals = fuzz_cases(rng, inputs)
    expected = {}
    for name in {name for name, _ in cases}:
        out = outputs / f"expected-{name}.safetensors"
        code, err = convert(capfd, inputs / name, out, "--framework", "flax")
        assert code == 0, err
        expected[name] = load_file(out)
    outcomes = {0: 0, 2: 0}
    for i, (name, damaged) in enumerate(cases):
        out = outputs / f"{i}.safetensors"
        with unblocked_fifos(damaged) if damaged.is_dir() else nullcontext():
            code, err = convert(capfd, damaged, out, "--framework", "flax")
        if damaged in refusals:  # refused by the walk, before anything in it was opened
            assert_clean_failure(code, err, out, refusals[damaged])
        elif code == 0:  # the damage missed the structure: the same tensors, and values
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
    total = 30 + len(STRUCTURE)
    assert sum(outcomes.values()) == total and outcomes[2] >= 15 + len(refusals), outcomes


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
