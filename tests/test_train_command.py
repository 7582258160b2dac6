"""The training command: a few steps on tiny inputs (the full run is the command, not a test)."""

from __future__ import annotations

import json

import pytest

from examples import train_digits as train


def test_quick_run_writes_log_and_plot(tmp_path, capsys):
    out = tmp_path / "run"
    code = train.main(
        [
            "--epochs",
            "2",
            "--max-steps",
            "3",
            "--batch-size",
            "32",
            "--size",
            "8",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    log = json.loads((out / "log.json").read_text())
    assert {"model", "settings", "machine", "versions", "epochs", "seconds"} <= log.keys()
    assert {e["framework"] for e in log["epochs"]} == {"flax", "torch"}
    for record in log["epochs"]:
        assert 0 <= record["test_accuracy"] <= 1 and record["train_loss"] > 0
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--epochs", "0"], "argument --epochs: expected a value > 0, got 0"),
        (["--lr", "fast"], "argument --lr: expected a float, got 'fast'"),
        (["--size", "12"], "argument --size: invalid choice: 12"),
        (["--weight-decay", "-1"], "--weight-decay must be >= 0, got -1.0"),
    ],
)
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        train.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_out_must_be_a_directory(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(SystemExit):
        train.main(["--out", str(file)])
    assert f"--out {file} exists and is not a directory" in capsys.readouterr().err
