"""The benchmark command: smoke runs on tiny shapes (record shape and completeness, never speed),
argument errors, and the timing and floor arithmetic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import _cli, _report
from benchmarks._cases import (
    BLOCK_WORKLOADS,
    MODES,
    NNX_MODES,
    QUICK_SK_STAGES,
    QUICK_STAGES,
    attention_pairs,
)
from benchmarks._timing import Runner, measure

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {
    "workload": str,
    "framework": str,
    "mode": str,
    "dtype": str,
    "name": str,
    "batch": int,
    "shape": list,
    "layout": str,
    "median_s": float,
    "iqr_s": float,
    "min_s": float,
    "throughput": float,
    "compile_s": float,
    "repeats": int,
    "number": int,
    "slots": int,
    "case_s": float,
}
FLOOR_FIELDS = {"floor_bytes", "achieved_GBps", "floor_fraction"}


def run_benchmarks(tmp_path: Path, *args: str) -> tuple[dict, str]:
    out = tmp_path / "bench"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    argv = [
        sys.executable,
        "-m",
        "benchmarks",
        "--quick",
        "--threads",
        "1",
        "--no-progress",
        "--out",
        str(out),
        *args,
    ]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), result.stdout


def check_results(results: dict, argv: list[str], out: Path) -> None:
    args = _cli.parse_args(["--quick", *argv])
    fields = ("workload", "framework", "mode", "dtype", "name", "batch", "shape")
    wanted = [tuple(getattr(c, k) for k in fields) for c in _cli.planned(args)]
    got = [(*(r[k] for k in fields[:-1]), tuple(r["shape"])) for r in results["records"]]
    assert len(set(wanted)) == len(wanted)
    assert sorted(got) == sorted(wanted)  # every requested record, once
    assert results["settings"]["threads"] == 1 and results["settings"]["quick"]
    machine = results["machine"]
    assert machine["threads"]["torch_intra_op"] == 1
    assert "intra_op_parallelism_threads=1" in machine["threads"]["XLA_FLAGS"]
    assert all(machine["versions"][p] for p in ("jax", "jaxlib", "flax", "torch", "numpy"))
    assert machine["cpu"] and machine["memory_gib"] > 0
    bandwidth = results["bandwidth"]["median_GBps"]
    runs = [results["bandwidth"][when] for when in ("start", "end")]
    assert bandwidth == max(run["median_GBps"] for run in runs) > 0
    assert all(len(run["samples_GBps"]) >= 5 for run in runs)
    for r in results["records"]:
        assert "error" not in r, r
        for key, kind in FIELDS.items():
            assert isinstance(r[key], kind), (key, r)
        assert r["framework"] == MODES[r["mode"]][0]
        assert r["median_s"] > 0 and r["iqr_s"] >= 0 and r["min_s"] <= r["median_s"]
        assert r["compile_s"] > 0 and r["repeats"] == args.repeats and r["number"] >= 1
        assert r["throughput"] == pytest.approx(r["batch"] / r["median_s"])
        n, h, w, c = r["shape"]
        assert n == r["batch"]
        if r["workload"].startswith("se_"):
            assert (h, w, c) == QUICK_STAGES[r["name"]]
            itemsize = 4 if r["dtype"] == "float32" else 2
            passes = {"se_fwd": 3, "se_fwdbwd": 4}[r["workload"]]
            assert r["floor_bytes"] == passes * n * h * w * c * itemsize
            assert r["floor_fraction"] == pytest.approx(
                r["floor_bytes"] / r["median_s"] / 1e9 / bandwidth
            )
        elif r["workload"].startswith("sk_"):
            assert (h, w, c) == QUICK_SK_STAGES[r["name"]] and n == args.sk_batch
            assert not FLOOR_FIELDS & r.keys()  # compute-bound: no floor, as for networks
        else:
            assert (h, w, c) == (args.image_size, args.image_size, 3)
            assert not FLOOR_FIELDS & r.keys()
    text = (out / "results.md").read_text()
    for workload in args.workloads:
        assert f"| {workload} |" in text
    if {"sk_fwd", "sk_fwdbwd"} & set(args.workloads):
        assert "## SK block: time per call" in text
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    expected_plots = {
        "se_block.png",
        "se_batch_sweep.png",
        "sk_block.png",
        "networks.png",
        "attention.png",
    }
    if not {"infer", "train"} & set(args.workloads):
        expected_plots -= {"networks.png", "attention.png"}
    if not attention_pairs(args.models):  # no SE or SK model next to its plain twin
        expected_plots.discard("attention.png")
    if not {"se_fwd", "se_fwdbwd"} & set(args.workloads):
        expected_plots -= {"se_block.png", "se_batch_sweep.png"}
    if not {"sk_fwd", "sk_fwdbwd"} & set(args.workloads):
        expected_plots.discard("sk_block.png")
    assert {p.name for p in out.glob("*.png")} == expected_plots


def test_quick_run_has_every_record(tmp_path):
    # Every quick mode but jit_donate, whose network train steps would compile every model
    # again (half of this run's 80 s); test_quick_run_compile_and_bfloat16 runs jit_donate.
    # and the SE pair of the quick models (the SK pair's networks compile as long again).
    argv = ["--modes", "jit,eager,channels_last", "--models", "resnet14,seresnet14"]
    results, stdout = run_benchmarks(tmp_path, *argv)
    check_results(results, argv, tmp_path / "bench")
    records = results["records"]
    assert {r["workload"] for r in records} == {
        "se_fwd",
        "se_fwdbwd",
        "sk_fwd",
        "sk_fwdbwd",
        "infer",
        "train",
    }
    # SK blocks: every stage in every mode; models: seresnet14 next to its plain twin
    sk = {(r["workload"], r["name"], r["mode"]) for r in records if r["workload"].startswith("sk")}
    assert len(sk) == 2 * len(QUICK_SK_STAGES) * 3
    assert {r["name"] for r in records if r["workload"] in ("infer", "train")} == {
        "resnet14",
        "seresnet14",
    }
    assert set(_cli.QUICK["models"]) == {"resnet14", "seresnet14", "resnet10", "skresnet10"}
    assert {r["mode"] for r in results["records"]} == {"jit", "eager", "channels_last"}
    assert set(_cli.QUICK["modes"]) == {"jit", "jit_donate", "eager", "channels_last"}
    targets = {t["target"] for t in results["targets"]}
    assert {
        "JAX SE / torch eager speed",
        "JAX SE share of memory floor",
        "SE/plain throughput",
        "JAX / torch channels_last speed",
        "JAX SK / torch eager speed",
    } <= targets
    # SE/plain: seresnet14's throughput over resnet14's, per workload and mode, in the report
    by_key = {(r["workload"], r["mode"], r["name"]): r for r in records}
    ratios = [
        t
        for t in results["targets"]
        if t["target"] == "SE/plain throughput" and t["case"].split()[0] in ("infer", "train")
    ]
    assert len(ratios) == 3 + 3  # infer and train: jit, eager, channels_last
    text = (tmp_path / "bench" / "results.md").read_text()
    assert "## Attention networks: throughput over the plain twin's" in text
    for row in ratios:
        workload, pair, _, mode = row["case"].split()
        assert pair == "seresnet14/resnet14", row
        se, plain = by_key[workload, mode, "seresnet14"], by_key[workload, mode, "resnet14"]
        assert row["value"] == pytest.approx(plain["median_s"] / se["median_s"])
        assert f"| {workload} | seresnet14/resnet14 |" in text
    assert "records in" in stdout


def test_quick_run_compile_and_bfloat16(tmp_path):
    argv = [
        "--workloads",
        "se_fwd,se_fwdbwd,sk_fwd,infer",
        "--modes",
        "jit_donate,eager,compile",
        "--dtypes",
        "bfloat16",
        "--stages",
        "stage4",
        "--sweep-stage",
        "none",
        "--models",
        "seresnet14",
    ]
    results, _ = run_benchmarks(tmp_path, *argv)
    check_results(results, argv, tmp_path / "bench")
    assert {r["dtype"] for r in results["records"]} == {"bfloat16"}
    # infer has no donated variant: nothing to reuse, so it is not planned
    assert not [
        r for r in results["records"] if (r["workload"], r["mode"]) == ("infer", "jit_donate")
    ]


def test_quick_run_nnx_modes(tmp_path):
    """The NNX twin under nnx.jit and split/merge: every network record, and the report's
    overhead table and speed ratios over linen jit. resnet10 only, and no linen jit case (the
    main quick run covers it): each train case compiles for seconds. The overhead rows are
    checked on this run's records plus linen jit records made from them."""
    # nnx_tree runs nnx_jit's code with graph=False: one of the two is enough here.
    modes = ("nnx_tree", "nnx_split")
    argv = ["--workloads", "infer,train", "--models", "resnet10", "--modes", ",".join(modes)]
    results, _ = run_benchmarks(tmp_path, *argv)
    check_results(results, argv, tmp_path / "bench")
    by_key = {(r["workload"], r["mode"]): r for r in results["records"]}
    assert set(by_key) == {(w, m) for w in ("infer", "train") for m in modes}
    assert {(r["framework"], r["layout"]) for r in results["records"]} == {("jax", "NHWC")}
    text = (tmp_path / "bench" / "results.md").read_text()
    assert text.count("| dtype | nnx_tree | nnx_split |") == 2  # networks, compile (MODES order)
    assert "## NNX networks" not in text and not results["targets"]  # no linen jit to compare

    for workload in ("infer", "train"):  # linen jit, 1.25x as fast as nnx_split
        split = by_key[workload, "nnx_split"]
        linen = {**split, "mode": "jit", "median_s": split["median_s"] / 1.25}
        results["records"].append(_report.derive(linen, results["bandwidth"]["median_GBps"]))
        by_key[workload, "jit"] = linen
    results["targets"] = _report.targets(results["records"], results["machine"], 2, 2)
    speeds = [t for t in results["targets"] if t["target"] == "NNX / linen jit speed"]
    assert sorted(t["case"] for t in speeds) == sorted(
        f"{w} resnet10 float32 {m}" for w in ("infer", "train") for m in modes
    )
    for row in speeds:
        workload, _, _, mode = row["case"].split()
        linen, nnx = by_key[workload, "jit"], by_key[workload, mode]
        assert row["value"] == pytest.approx(linen["median_s"] / nnx["median_s"])
        assert row["goal"] is None and row["met"] is None
    text = _report.markdown(results)
    assert text.count("| dtype | jit | nnx_tree | nnx_split |") == 2  # NNX next to jit
    section = text.split("## NNX networks: time per step over linen `jit`'s")[1].split("##")[0]
    assert section.count("| dtype | nnx_tree | nnx_split |") == 1
    for workload in ("infer", "train"):
        line = next(x for x in section.splitlines() if x.startswith(f"| {workload} | resnet10 |"))
        cells = [c.strip() for c in line.strip("|").split("|")][-2:]
        for cell, mode in zip(cells, modes, strict=True):
            nnx, linen = by_key[workload, mode], by_key[workload, "jit"]
            assert cell.startswith(f"{nnx['median_s'] / linen['median_s']:.2f}, ")
            assert cell.endswith(" ms")
        assert cells[1].startswith("1.25, +")


def test_nnx_modes_plan_networks_only():
    args = _cli.parse_args(["--quick", "--modes", "jit,nnx_jit,nnx_tree,nnx_split"])
    cases = _cli.planned(args)
    nnx = [c for c in cases if c.mode in NNX_MODES]
    assert {c.mode for c in nnx} == set(NNX_MODES)
    assert all(c.workload in ("infer", "train") for c in nnx)
    assert {c.framework for c in nnx} == {"jax"} and {c.layout for c in nnx} == {"NHWC"}
    assert [c for c in cases if c.workload in BLOCK_WORKLOADS and c.mode == "jit"]
    assert not set(NNX_MODES) & set(_cli.QUICK["modes"])  # --quick runs them when asked
    assert set(NNX_MODES) <= set(_cli.FULL["modes"])


def test_nnx_overhead_arithmetic():
    net = {"workload": "train", "framework": "jax", "dtype": "float32", "name": "seresnet14"}
    net = {**net, "batch": 2, "shape": [2, 32, 32, 3]}
    linen = _report.derive({**net, "mode": "jit", "median_s": 0.1}, 2.0)
    split = _report.derive({**net, "mode": "nnx_split", "median_s": 0.1}, 2.0)
    jitted = _report.derive({**net, "mode": "nnx_jit", "median_s": 0.125}, 2.0)
    other = _report.derive({**net, "mode": "nnx_jit", "dtype": "bfloat16", "median_s": 1.0}, 2.0)
    rows = {r["mode"]: r for r in _report.nnx_overheads([linen, split, jitted, other])}
    assert set(rows) == {"nnx_jit", "nnx_split"}  # no bfloat16 jit record: no ratio
    assert rows["nnx_jit"]["ratio"] == pytest.approx(1.25)
    assert rows["nnx_jit"]["extra_s"] == pytest.approx(0.025)
    assert rows["nnx_split"]["ratio"] == pytest.approx(1.0)
    targets = _report.targets([linen, split, jitted, other], {"gpu": None}, se_batch=4)
    assert [(t["case"], t["value"]) for t in targets] == [
        ("train seresnet14 float32 nnx_split", pytest.approx(1.0)),
        ("train seresnet14 float32 nnx_jit", pytest.approx(0.8)),
    ]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--modes", "fast"], "argument --modes: expected a comma-separated subset of"),
        (["--frameworks", "jax", "--modes", "eager"], "none of --modes belongs to"),
        (["--dtypes", "float16"], "argument --dtypes: expected a comma-separated subset"),
        (["--sweep-batches", "0,4"], "expected positive integers like 1,8,32, got '0,4'"),
        (["--repeats", "0"], "argument --repeats: expected a value > 0, got 0"),
        (["--threads", "100000"], "--threads 100000 exceeds the"),
        (["--models", "resnet51"], "argument --models: expected a comma-separated subset"),
    ],
)
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        _cli.parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_measure_separates_first_call_and_refreshes_each_repeat():
    events = []
    runner = Runner(
        step=lambda i: events.append(("step", i)) or i,
        sync=lambda outputs: events.append(("sync", tuple(outputs))),
        refresh=lambda: events.append(("refresh",)),
        max_number=5,
    )
    result = measure(runner, repeats=4, min_time=10.0, warmup_time=0.0)
    assert events[:3] == [("refresh",), ("step", 0), ("sync", (0,))]  # the first call, alone
    assert result["number"] == 5  # min_time asks for more, max_number caps it
    assert result["repeats"] == 4 and result["compile_s"] > 0
    timed = events[[i for i, e in enumerate(events) if e == ("refresh",)][-4] :]
    assert [e[0] for e in timed].count("refresh") == 4  # before each timed repeat
    steps = [e[1] for e in timed if e[0] == "step"]
    assert len(steps) == 4 * 5
    assert [e for e in timed if e[0] == "sync"][-1][1] == tuple(steps[-5:])  # one sync per repeat
    all_steps = [e[1] for e in events if e[0] == "step"]
    assert all_steps == list(range(len(all_steps)))  # one counter: inputs rotate across all calls


def test_floor_and_targets_arithmetic():
    base = {
        "framework": "jax",
        "dtype": "bfloat16",
        "name": "stage1",
        "batch": 4,
        "shape": [4, 8, 8, 16],
    }
    jit = _report.derive({**base, "workload": "se_fwd", "mode": "jit", "median_s": 1e-3}, 2.0)
    assert jit["floor_bytes"] == 3 * 4 * 8 * 8 * 16 * 2
    assert jit["floor_fraction"] == pytest.approx(jit["floor_bytes"] / 1e-3 / 1e9 / 2.0)
    eager = _report.derive(
        {**base, "framework": "torch", "workload": "se_fwd", "mode": "eager", "median_s": 4e-3}, 2.0
    )
    rows = _report.targets([jit, eager], {"gpu": None}, se_batch=4)
    speed = next(r for r in rows if r["target"] == "JAX SE / torch eager speed")
    assert speed["value"] == pytest.approx(4.0) and speed["goal"] == 1.5 and speed["met"]
    floor = next(r for r in rows if r["target"] == "JAX SE share of memory floor")
    assert floor["value"] == pytest.approx(jit["floor_fraction"])
    assert floor["met"] == (jit["floor_fraction"] >= 0.5)


def test_sk_records_have_no_floor_and_give_speed_and_ratio_targets():
    sk = {"workload": "sk_fwd", "dtype": "float32", "name": "stage2", "batch": 2}
    sk = {**sk, "shape": [2, 4, 4, 32], "median_s": 2e-3}
    jit = _report.derive({**sk, "framework": "jax", "mode": "jit"}, 2.0)
    eager = _report.derive({**sk, "framework": "torch", "mode": "eager", "median_s": 3e-3}, 2.0)
    assert jit["throughput"] == pytest.approx(1000) and not FLOOR_FIELDS & jit.keys()
    net = {"workload": "train", "framework": "torch", "mode": "eager", "dtype": "float32"}
    net = {**net, "batch": 2, "shape": [2, 32, 32, 3]}
    plain = _report.derive({**net, "name": "resnet10", "median_s": 1.0}, 2.0)
    skresnet = _report.derive({**net, "name": "skresnet10", "median_s": 1.25}, 2.0)
    rows = _report.targets([jit, eager, plain, skresnet], {"gpu": None}, se_batch=4, sk_batch=2)
    assert [(r["target"], r["case"]) for r in rows] == [
        ("JAX SK / torch eager speed", "sk_fwd stage2 b2 float32 jit"),
        ("SK/plain throughput", "train skresnet10/resnet10 float32 eager"),
    ]
    assert rows[0]["value"] == pytest.approx(1.5) and rows[1]["value"] == pytest.approx(0.8)
    assert all(r["goal"] is None and r["met"] is None for r in rows)
