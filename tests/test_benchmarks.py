"""The benchmark command: smoke runs on tiny shapes (record shape and completeness, never speed),
argument errors, and the timing and floor arithmetic."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import _cli, _report, _timing
from benchmarks._cases import (
    BLOCK_WORKLOADS,
    CONV_SHAPES,
    CONV_WORKLOADS,
    MODES,
    NNX_MODES,
    QUICK_CONV_SHAPES,
    QUICK_ROOFLINE_SHAPES,
    QUICK_SK_STAGES,
    QUICK_STAGES,
    attention_pairs,
)
from benchmarks._timing import Runner, less_noisy, measure, measure_checked

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
    "noisy": bool,
}
FLOOR_FIELDS = {"floor_bytes", "achieved_GBps", "floor_fraction"}
ROOFLINE_FIELDS = {"flops_per_image", "roofline_fraction"}


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module args`` from the checkout, without the caller's XLA_FLAGS; it must
    succeed."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    argv = [sys.executable, "-m", module, *args]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def run_benchmarks(tmp_path: Path, *args: str) -> tuple[dict, str]:
    out = tmp_path / "bench"
    options = ["--quick", "--threads", "1", "--no-progress", "--out", str(out)]
    result = run_module("benchmarks", *options, *args)
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
    # Matmul roofline: every selected framework, dtype and (quick) shape; the best per dtype
    roofline = results["roofline"]
    assert roofline["smoke"] and set(roofline["GFLOPs"]) == set(args.dtypes)
    assert len(roofline["records"]) == len(args.frameworks) * len(args.dtypes) * len(
        QUICK_ROOFLINE_SHAPES
    )
    for r in roofline["records"]:
        assert "error" not in r, r
        assert r["GFLOPs"] == pytest.approx(r["flops"] / r["median_s"] / 1e9)
        m, k, n = r["shape"]
        assert r["flops"] == 2 * m * k * n and isinstance(r["noisy"], bool) and r["GFLOPs"] > 0
    for dtype, best in roofline["GFLOPs"].items():
        assert best == max(r["GFLOPs"] for r in roofline["records"] if r["dtype"] == dtype)
    # FLOPs per image: one row per network and workload measured, XLA's and the analytic count
    nets = {(r["workload"], r["name"]) for r in results["records"] if "roofline_fraction" in r}
    flops = {(f["workload"], f["name"]): f for f in results["flops"]}
    assert set(flops) == {
        (w, m) for w in ("infer", "train") if w in args.workloads for m in args.models
    }
    assert nets == set(flops)
    for row in flops.values():
        assert "error" not in row, row
        assert row["flops_per_image"] > 0 and row["forward_matmul_flops_per_image"] > 0
    train = [f["flops_per_image"] for (w, _), f in flops.items() if w == "train"]
    forward = [f["forward_matmul_flops_per_image"] for f in flops.values()]
    assert not train or min(train) > max(forward)  # forward, backward, update: more than forward
    assert results["settings"]["xla_flags"] == (
        next((a.split("=", 1)[1] for a in argv if a.startswith("--xla-flags=")), "")
    )
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
        elif r["workload"] in CONV_WORKLOADS:
            conv = CONV_SHAPES[r["name"]]
            assert (h, w, c) == (conv.h, conv.w, conv.c) and n == args.conv_batch
            assert r["name"] in args.conv_shapes and r["dtype"] == "float32"
            assert not FLOOR_FIELDS & r.keys()
            passes = {"conv_fwd": 1, "conv_fwdbwd": 3}[r["workload"]]
            assert r["flops"] == passes * conv.flops(n)
            assert r["GFLOPs"] == pytest.approx(r["flops"] / r["median_s"] / 1e9)
        else:
            assert (h, w, c) == (args.image_size, args.image_size, 3)
            assert not FLOOR_FIELDS & r.keys()
            per_image = flops[r["workload"], r["name"]]["flops_per_image"]
            assert r["flops_per_image"] == per_image
            assert r["roofline_fraction"] == pytest.approx(
                r["throughput"] * per_image / (roofline["GFLOPs"][r["dtype"]] * 1e9)
            )
        if r["workload"] not in ("infer", "train"):
            assert not ROOFLINE_FIELDS & r.keys()
        assert r["noisy"] == (r["iqr_s"] > 0.25 * r["median_s"])
        assert "remeasured" not in r  # --quick: no second measurement
    text = (out / "results.md").read_text()
    # a smoke run says so first, and judges no target
    assert text.startswith("# se-flax benchmarks\n\n**Smoke run (`--quick`)")
    assert "## Targets" not in text and "| goal | met |" not in text
    assert all(t["goal"] is None and t["met"] is None for t in results["targets"])
    assert "- matmul roofline: " in text and "## Matmul roofline" in text
    # a cell marked noisy comes with the footnote (the introduction names the mark once)
    assert text.count("†") == 1 or "† noisy: the interquartile range exceeds 25%" in text
    if results["settings"]["xla_flags"]:
        assert f"- `--xla-flags`: `{results['settings']['xla_flags']}`" in text
    for workload in args.workloads:
        for name in CONV_WORKLOADS if workload == "convs" else [workload]:
            assert f"| {name} |" in text
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
        "convs.png",
    }
    if "convs" not in args.workloads:
        expected_plots.discard("convs.png")
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
    # The convs workload runs its two quick shapes (grouped, depthwise) in its four modes.
    argv = ["--modes", "jit,xla_jit,eager,channels_last", "--models", "resnet14,seresnet14"]
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
        "conv_fwd",
        "conv_fwdbwd",
    }
    # SK blocks: every stage in every mode; models: seresnet14 next to its plain twin
    sk = {(r["workload"], r["name"], r["mode"]) for r in records if r["workload"].startswith("sk")}
    assert len(sk) == 2 * len(QUICK_SK_STAGES) * 3
    assert {r["name"] for r in records if r["workload"] in ("infer", "train")} == {
        "resnet14",
        "seresnet14",
    }
    assert set(_cli.QUICK["models"]) == {"resnet14", "seresnet14", "resnet10", "skresnet10"}
    assert {r["mode"] for r in results["records"]} == {"jit", "xla_jit", "eager", "channels_last"}
    assert set(_cli.QUICK["modes"]) == {"jit", "jit_donate", "xla_jit", "eager", "channels_last"}
    check_convs(results, tmp_path / "bench", QUICK_CONV_SHAPES)
    targets = {t["target"] for t in results["targets"]}
    assert {
        "JAX SE / torch eager speed",
        "JAX SE share of memory floor",
        "SE/plain throughput",
        "JAX / torch channels_last speed",
        "JAX SK / torch eager speed",
        "JAX conv / torch channels_last speed",
        "se_flax conv / XLA conv speed",
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


def check_convs(results: dict, out: Path, shapes) -> None:
    """The convs records of a quick run: every shape in both passes and the four modes, a
    positive time each, the table and the ratios."""
    convs = [r for r in results["records"] if r["workload"] in CONV_WORKLOADS]
    modes = ("jit", "xla_jit", "eager", "channels_last")
    by_key = {(r["workload"], r["name"], r["mode"]): r for r in convs}
    assert len(by_key) == len(convs)
    assert set(by_key) == {(w, s, m) for w in CONV_WORKLOADS for s in shapes for m in modes}
    assert all(r["median_s"] > 0 and r["compile_s"] > 0 and r["GFLOPs"] > 0 for r in convs)
    assert {(r["mode"], r["framework"], r["layout"]) for r in convs} == {
        ("jit", "jax", "NHWC"),
        ("xla_jit", "jax", "NHWC"),
        ("eager", "torch", "NCHW"),
        ("channels_last", "torch", "NCHW (channels_last)"),
    }
    # xla_jit measures the convolutions only
    assert {r["workload"] for r in results["records"] if r["mode"] == "xla_jit"} <= set(
        CONV_WORKLOADS
    )
    assert set(results["settings"]["conv_shapes"]) == set(shapes)
    text = (out / "results.md").read_text()
    section = text.split("## Grouped and depthwise convolutions: time per call")[1]
    section = section.split("\n## ")[0]
    header = "| fwd jit | fwd xla_jit | fwd eager | fwd channels_last | fwd+bwd jit |"
    assert header in section
    for name in shapes:
        row = next(x for x in section.splitlines() if x.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")][7:]
        assert len(cells) == 8, row
        assert all(re.fullmatch(r"[0-9.e+-]+ ms ±[0-9.e+-]+†?", c) for c in cells), row
    ratios = {
        (t["target"], t["case"]): t["value"]
        for t in results["targets"]
        if t["case"].split()[0] in CONV_WORKLOADS
    }
    for workload in CONV_WORKLOADS:
        for name in shapes:
            case = f"{workload} {name} b{convs[0]['batch']} float32"
            cl = by_key[workload, name, "channels_last"]["median_s"]
            ours, xla = (by_key[workload, name, m]["median_s"] for m in ("jit", "xla_jit"))
            target = "JAX conv / torch channels_last speed"
            assert ratios[target, f"{case} jit"] == pytest.approx(cl / ours)
            assert ratios[target, f"{case} xla_jit"] == pytest.approx(cl / xla)
            assert ratios["se_flax conv / XLA conv speed", f"{case} jit"] == pytest.approx(
                xla / ours
            )
    assert len(ratios) == 3 * len(CONV_WORKLOADS) * len(shapes)


def test_quick_run_compile_and_bfloat16(tmp_path):
    # Blocks only: inductor compiles a network for half a minute on 2 cores with a cold cache,
    # through the same runner as a block (benchmarks/_torch.py); networks run in the other runs.
    argv = [
        "--workloads",
        "se_fwd,se_fwdbwd,sk_fwd",
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
        "--xla-flags=--xla_cpu_multi_thread_eigen=true",
    ]
    results, _ = run_benchmarks(tmp_path, *argv)
    check_results(results, argv, tmp_path / "bench")
    assert {r["dtype"] for r in results["records"]} == {"bfloat16"}
    assert {r["mode"] for r in results["records"]} == {"jit_donate", "eager", "compile"}
    # infer has no donated variant: nothing to reuse, so it is not planned
    plan = _cli.planned(_cli.parse_args(["--quick", *argv[2:], "--workloads", "infer,train"]))
    assert {(c.workload, c.mode) for c in plan} == {
        ("infer", "eager"),
        ("infer", "compile"),
        ("train", "jit_donate"),
        ("train", "eager"),
        ("train", "compile"),
    }
    # --xla-flags reached XLA_FLAGS (after the inherited flags, before the thread flags)
    assert results["machine"]["threads"]["XLA_FLAGS"].startswith("--xla_cpu_multi_thread_eigen")


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
    assert "## Ratios (smoke run: no targets judged)" in text
    full = _report.markdown({**results, "settings": {**results["settings"], "quick": False}})
    assert "**Smoke run" not in full and "| target | case | value | goal | met |" in full
    assert text.count("| dtype | jit | nnx_tree | nnx_split |") == 2  # NNX next to jit
    section = text.split("## NNX networks: time per step over linen `jit`'s")[1].split("##")[0]
    assert section.count("| dtype | nnx_tree | nnx_split |") == 1
    for workload in ("infer", "train"):
        line = next(x for x in section.splitlines() if x.startswith(f"| {workload} | resnet10 |"))
        cells = [c.strip() for c in line.strip("|").split("|")][-2:]
        for cell, mode in zip(cells, modes, strict=True):
            nnx, linen = by_key[workload, mode], by_key[workload, "jit"]
            assert cell.startswith(f"{nnx['median_s'] / linen['median_s']:.2f}, ")
            assert cell.rstrip("†").endswith(" ms")  # † when a record was noisy
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


def test_convs_plan_float32_in_four_modes():
    args = _cli.parse_args(["--workloads", "convs"])  # the full defaults: every mode and dtype
    cases = _cli.planned(args)
    assert {c.workload for c in cases} == set(CONV_WORKLOADS)
    assert {c.mode for c in cases} == {"jit", "xla_jit", "eager", "channels_last"}
    assert {c.dtype for c in cases} == {"float32"} and {c.batch for c in cases} == {8}
    assert len(cases) == len(CONV_WORKLOADS) * len(CONV_SHAPES) * 4 == len(set(cases))
    assert {c.name for c in cases} == set(CONV_SHAPES) == set(_cli.FULL["conv_shapes"])
    dw = CONV_SHAPES["56x56x144_dw_k3_s2"]
    assert (dw.groups, dw.kernel, dw.stride, dw.padding, dw.output_hw()) == (144, 3, 2, 1, (28, 28))
    assert CONV_SHAPES["7x7x888_g37_k3_s1"].flops(2) == 2 * 2 * 7 * 7 * 888 * 24 * 9
    stem = CONV_SHAPES["224x224x3_g1_o32_k3_s2"]  # ungrouped, 32 outputs from 3 channels
    assert (stem.features, stem.output_hw()) == (32, (112, 112))
    assert stem.flops(2) == 2 * 2 * 112 * 112 * 32 * 3 * 9
    args = _cli.parse_args(["--quick", "--workloads", "se_fwd,convs", "--conv-batch", "3"])
    cases = _cli.planned(args)
    assert {c.name for c in cases if c.workload in CONV_WORKLOADS} == set(QUICK_CONV_SHAPES)
    assert {c.batch for c in cases if c.workload in CONV_WORKLOADS} == {3}
    assert not [c for c in cases if c.mode == "xla_jit" and c.workload not in CONV_WORKLOADS]
    assert not [c for c in cases if c.mode == "jit_donate" and c.workload in CONV_WORKLOADS]
    assert {"seresnext50_32x4d", "seresnext26d_32x4d", "ecaresnet50d"} <= set(_cli.FULL["models"])


def test_conv_targets_and_table():
    conv = {"workload": "conv_fwdbwd", "dtype": "float32", "name": "14x14x480_dw_k3_s1"}
    conv = {**conv, "batch": 8, "shape": [8, 14, 14, 480], "iqr_s": 0.0}
    times = {"jit": 3e-3, "xla_jit": 0.3, "eager": 5e-3, "channels_last": 2.5e-3}
    records = [
        _report.derive({**conv, "framework": MODES[m][0], "mode": m, "median_s": t}, 2.0)
        for m, t in times.items()
    ]
    flops = 3 * 2 * 8 * 14 * 14 * 480 * 9  # output, input and kernel gradients: 3 passes
    assert records[0]["flops"] == flops and records[0]["GFLOPs"] == pytest.approx(flops / 3e6)
    rows = {(t["target"], t["case"].split()[-1]): t for t in _report.targets(records, {}, 32)}
    assert set(rows) == {
        ("JAX conv / torch channels_last speed", "jit"),
        ("JAX conv / torch channels_last speed", "xla_jit"),
        ("se_flax conv / XLA conv speed", "jit"),
    }
    ours = rows["JAX conv / torch channels_last speed", "jit"]
    # within 1.5x of channels_last's time: 3.0 ms against 2.5 ms is met
    assert ours["value"] == pytest.approx(2.5 / 3) and ours["goal"] == pytest.approx(1 / 1.5)
    assert ours["met"]
    assert rows["JAX conv / torch channels_last speed", "xla_jit"]["goal"] is None
    assert rows["se_flax conv / XLA conv speed", "jit"]["value"] == pytest.approx(100)
    slow = _report.derive({**records[0], "median_s": 4e-3}, 2.0)  # 1.6x channels_last's time
    (row, *_) = _report.targets([slow, *records[1:]], {}, 32)
    assert row["met"] is False
    gpu = _report.targets(records, {"gpu": "H200"}, 32)
    assert all(t["goal"] is None for t in gpu)
    table = _report._conv_table(records)
    assert table[0].startswith("| case | from | input (NHWC) | groups | kernel | stride |")
    assert table[2].startswith("| 14x14x480_dw_k3_s1 | depthwise | 8x14x14x480 | 480 (depthwise)")
    # no forward records: 4 empty cells, then fwd+bwd's
    assert table[2].endswith("| float32 |  |  |  |  | 3 ms ±0 | 300 ms ±0 | 5 ms ±0 | 2.5 ms ±0 |")


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
        (["--stages", "stage4", "--sweep-stage", "stage3"], "--sweep-stage stage3 is not one of"),
        (["--conv-shapes", "9x9x9_g3_k3_s1"], "argument --conv-shapes: expected a comma-sep"),
        (["--workloads", "convs", "--dtypes", "bfloat16"], "nothing to run: no case of"),
        (["--workloads", "convs", "--modes", "compile"], "nothing to run: no case of"),
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


def test_a_budget_cuts_the_warm_up_and_repeats_of_slow_calls(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(_timing, "time", type("Clock", (), {"perf_counter": lambda: clock[0]}))

    def runner(budget_s):
        def step(i):
            clock[0] += 1.0  # every call takes a second
            return i

        calls = []
        return Runner(
            lambda i: calls.append(i) or step(i), lambda _: None, budget_s=budget_s
        ), calls

    slow, calls = runner(2.5)  # one warm-up call (over a quarter of the budget), 3 repeats
    result = measure(slow, repeats=7, min_time=0.0, warmup_time=0.1)
    assert (result["repeats"], result["number"], len(calls)) == (3, 1, 1 + 1 + 3)
    roomy, calls = runner(100.0)  # the budget fits: 2 warm-up calls, the 7 repeats
    assert measure(roomy, 7, 0.0, 0.1)["repeats"] == 7 and len(calls) == 1 + 2 + 7
    unbounded, calls = runner(None)
    assert measure(unbounded, 7, 0.0, 0.1)["repeats"] == 7 and len(calls) == 1 + 2 + 7
    assert measure(runner(2.5)[0], 2, 0.0, 0.1)["repeats"] == 2  # never more than asked


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


@pytest.mark.parametrize(
    "stages,sweep", [("stage4", "stage4"), ("stage1,stage2", "stage2"), ("stage3,stage4", "stage3")]
)
def test_sweep_stage_defaults_to_a_selected_stage(stages, sweep):
    """--stages without stage3 used to raise KeyError: the sweep runs at a selected stage."""
    args = _cli.parse_args(["--quick", "--stages", stages])
    assert args.sweep_stage == sweep
    cases = _cli.planned(args)
    se = {(c.name, c.batch) for c in cases if c.workload == "se_fwd"}
    assert se == {(s, args.se_batch) for s in stages.split(",")} | {
        (sweep, b) for b in args.sweep_batches
    }
    assert _cli.parse_args(["--stages", stages, "--sweep-stage", "none"]).sweep_stage is None


def test_xla_flags_are_appended_before_the_thread_flags(monkeypatch):
    for name in ("OMP_NUM_THREADS", "TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE"):
        monkeypatch.delenv(name, raising=False)  # restored afterwards
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    threads = len(os.sched_getaffinity(0))  # no affinity change
    assert _cli.parse_args(["--xla-flags", "--xla_foo=1 --xla_bar=2"]).xla_flags == (
        "--xla_foo=1 --xla_bar=2"
    )
    _cli._set_threads(threads, "--xla_foo=1")
    assert os.environ["XLA_FLAGS"] == (
        "--xla_dump_to=/tmp/x --xla_foo=1 --xla_cpu_multi_thread_eigen=true "
        f"intra_op_parallelism_threads={threads}"
    )
    monkeypatch.setenv("XLA_FLAGS", "")
    with pytest.raises(SystemExit, match="intra_op_parallelism_threads=999"):
        _cli._set_threads(threads, f"intra_op_parallelism_threads={999}")


def _net(mode, name, median_s, iqr_s, workload="infer"):
    record = {"workload": workload, "framework": MODES[mode][0], "mode": mode, "name": name}
    record = {**record, "dtype": "float32", "batch": 2, "shape": [2, 32, 32, 3]}
    return {**record, "median_s": median_s, "iqr_s": iqr_s}


def test_noisy_records_flag_their_cells_and_every_ratio_from_them():
    flops = {("infer", "resnet10"): 3e9, ("infer", "skresnet10"): 3e9}
    roofline = {"float32": 100.0}
    steady = _report.derive(_net("jit", "resnet10", 0.1, 0.02), 2.0, roofline, flops)
    noisy = _report.derive(_net("jit", "skresnet10", 0.1, 0.026), 2.0, roofline, flops)
    eager = _report.derive(_net("eager", "resnet10", 0.2, 0.0), 2.0, roofline, flops)
    twin = _report.derive(_net("eager", "skresnet10", 0.4, 0.01), 2.0, roofline, flops)
    assert not steady["noisy"] and noisy["noisy"] and not eager["noisy"]  # IQR > 25% of median
    # roofline share: images/s x FLOPs per image / roofline
    assert steady["roofline_fraction"] == pytest.approx(20 * 3e9 / 100e9)
    assert _report._model_cell(steady) == "20/s ±20%, 60%"
    assert _report._model_cell(noisy) == "20/s ±26%, 60%†"
    ratios = {r["mode"]: r for r in _report.attention_ratios([steady, noisy, eager, twin])}
    assert ratios["jit"]["noisy"] and not ratios["eager"]["noisy"]
    rows = _report.targets([steady, noisy, eager, twin], {"gpu": None}, se_batch=2)
    assert {(r["case"].split()[-1], r["noisy"]) for r in rows} == {("jit", True), ("eager", False)}
    table = _report._table(["| a |", "|---|", f"| {_report._model_cell(noisy)} |"])
    assert table[-2].startswith("† noisy: the interquartile range exceeds 25% of the median")
    assert _report._table(["| a |", "|---|", "| 1 |"]) == ["| a |", "|---|", "| 1 |", ""]
    # no FLOPs count or no roofline for the dtype: no share
    assert "roofline_fraction" not in _report.derive(_net("jit", "resnet18", 0.1, 0), 2.0)
    bf16 = _report.derive(
        {**_net("jit", "resnet10", 0.1, 0), "dtype": "bfloat16"}, 2.0, roofline, flops
    )
    assert "roofline_fraction" not in bf16 and bf16["flops_per_image"] == 3e9


def test_a_noisy_measurement_is_repeated_once_and_the_less_noisy_kept(monkeypatch):
    def timing(median, iqr, compile_s=1.0):
        return {"median_s": median, "iqr_s": iqr, "compile_s": compile_s, "min_s": median}

    queue = []
    monkeypatch.setattr(_timing, "measure", lambda *args: queue.pop(0))
    queue[:] = [timing(1.0, 0.5), timing(1.2, 0.1, 0.01)]
    kept = measure_checked(None, 3, 0.0, 0.0, remeasure=True)
    assert kept["median_s"] == 1.2 and kept["remeasured"] and kept["kept"] == "second"
    assert kept["compile_s"] == 1.0  # the first call of the first measurement
    assert kept["measurements"] == [
        {"median_s": 1.0, "iqr_s": 0.5},
        {"median_s": 1.2, "iqr_s": 0.1},
    ]
    queue[:] = [timing(1.0, 0.5), timing(1.0, 0.9)]  # noisier again: the first is kept, flagged
    kept = measure_checked(None, 3, 0.0, 0.0, remeasure=True)
    assert kept["median_s"] == 1.0 and kept["kept"] == "first"
    assert _report.derive({**_net("jit", "resnet10", 0, 0), **kept}, 2.0)["noisy"]
    queue[:] = [timing(1.0, 0.5)]  # --quick: never repeated
    assert "remeasured" not in measure_checked(None, 3, 0.0, 0.0, remeasure=False)
    queue[:] = [timing(1.0, 0.2)]  # steady: never repeated
    assert "remeasured" not in measure_checked(None, 3, 0.0, 0.0, remeasure=True)
    assert not queue
    assert less_noisy(timing(1.0, 0.3), timing(2.0, 0.6))["kept"] == "first"  # a tie: the first


def test_roofline_and_flops_helpers_count_what_they_say():
    from benchmarks import _jax, _machine

    roofline = _machine.matmul_roofline(["jax"], ["float32"], [(8, 16, 4)], 2, 0.0, 0.0)
    (record,) = roofline["records"]
    assert record["flops"] == 2 * 8 * 16 * 4 and record["GFLOPs"] > 0
    assert roofline["GFLOPs"] == {"float32": record["GFLOPs"]} and not roofline["smoke"]
    assert roofline["best"] == {"float32": {"framework": "jax", "shape": [8, 16, 4]}}
    # resnet10 at 32x32: its convolutions and dense layer, counted from the shapes
    stem = 16 * 16 * 64 * 7 * 7 * 3  # 7x7 stride 2, 3 -> 64 channels
    convs = [(8, 64, 64, 9)] * 2 + [(4, 64, 128, 9), (4, 128, 128, 9), (4, 64, 128, 1)]
    convs += [(2, 128, 256, 9), (2, 256, 256, 9), (2, 128, 256, 1)]
    convs += [(1, 256, 512, 9), (1, 512, 512, 9), (1, 256, 512, 1)]
    macs = stem + sum(s * s * i * o * k for s, i, o, k in convs) + 512 * 1000
    assert _jax.forward_matmul_flops("resnet10", 32) == 2 * macs
    # se_flax's kernels, which XLA's cost analysis counts as 0: each pass that runs them
    import functools

    import jax
    import jax.numpy as jnp

    import se_flax

    nhwc = ("NHWC", "HWIO", "NHWC")

    def step(x, k, groups):
        def loss(x, k):
            y = se_flax.conv_general_dilated(
                x, k, (1, 1), "SAME", dimension_numbers=nhwc, feature_group_count=groups
            )
            return jnp.sum(y**2)

        return jax.grad(loss, (0, 1))(x, k)

    x = jax.ShapeDtypeStruct((2, 6, 6, 16), jnp.float32)
    grouped = jax.ShapeDtypeStruct((3, 3, 4, 16), jnp.float32)  # 4 groups: all three passes
    jaxpr = jax.make_jaxpr(functools.partial(step, groups=4))(x, grouped).jaxpr
    assert _jax._kernel_flops(jaxpr) == 3 * 2 * (2 * 6 * 6 * 16) * 9 * 4
    wide = jax.ShapeDtypeStruct((3, 3, 16, 128), jnp.float32)  # 128 outputs: forward is XLA's
    jaxpr = jax.make_jaxpr(functools.partial(step, groups=1))(x, wide).jaxpr
    assert _jax._kernel_flops(jaxpr) == 2 * 2 * (2 * 6 * 6 * 128) * 9 * 16


def test_profile_classifies_xla_ops_by_what_their_fusions_hold():
    import jax
    import jax.numpy as jnp
    from jax import lax

    import se_flax
    from benchmarks import profile

    nhwc = ("NHWC", "HWIO", "NHWC")

    def program(a, w, x, k, g, z):
        return (
            a @ w,  # a dot
            lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=nhwc),  # XLA's
            se_flax.conv_general_dilated(  # se_flax's kernel where built, else XLA's
                x, g, (1, 1), "SAME", dimension_numbers=nhwc, feature_group_count=8
            ),
            jnp.sum(z, axis=0),  # a reduction
            jnp.exp(z) * 3.0,  # elementwise
        )

    shapes = [(64, 32), (32, 48), (2, 9, 9, 128), (3, 3, 128, 128), (3, 3, 16, 128), (64, 40)]
    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    hlo = jax.jit(program).lower(*args).compile().as_text()
    kinds = profile.hlo_kinds(hlo)
    found = set(kinds.values())
    assert {profile.MATMUL, profile.CONV, profile.REDUCTION, profile.ELEMENTWISE} <= found
    grouped = {n for n, k in kinds.items() if k == profile.GROUPED}
    if jax.default_backend() == "cpu" and se_flax.kernels_built():
        assert grouped and all(
            re.search(rf"%{re.escape(n)} = .*SeFlaxGroupedConv", hlo) for n in grouped
        )
    # every instruction of the entry computation is classified, its parameters as "other"
    entry = hlo[hlo.index("ENTRY") :]
    names = re.findall(r"^\s*(?:ROOT )?%(\S+) = ", entry, re.M)
    assert names and all(n in kinds for n in names)
    params = re.findall(r"^\s*%(\S+) = \S+ parameter\(", entry, re.M)
    assert len(params) == 6 and {kinds[n] for n in params} == {profile.OTHER}


@pytest.mark.parametrize(
    "name, shapes, kind",
    [
        ("aten::mkldnn_convolution", [[8, 64, 56, 56], [256, 64, 1, 1], []], "MATMUL"),
        ("aten::mkldnn_convolution", [[8, 128, 56, 56], [128, 4, 3, 3], []], "GROUPED"),
        ("aten::mkldnn_convolution", [[8, 144, 56, 56], [144, 1, 3, 3], []], "GROUPED"),
        ("aten::mkldnn_convolution", [[8, 3, 224, 224], [32, 3, 3, 3], []], "CONV"),
        ("aten::convolution_backward", [[8, 64, 56, 56], [8, 64, 56, 56], [64, 64, 3, 3]], "CONV"),
        ("aten::convolution_backward", [[8, 96, 7, 7], [8, 96, 7, 7], [96, 1, 5, 5]], "GROUPED"),
        ("aten::convolution_backward", [[8, 64, 7, 7], [8, 32, 7, 7], [64, 32, 1, 1]], "MATMUL"),
        ("aten::addmm", [[1000], [8, 2048], [2048, 1000]], "MATMUL"),
        ("## Call CompiledFxGraph abc ##", [], "COMPILED"),
        ("aten::native_batch_norm", [[8, 64, 56, 56]], "ELEMENTWISE"),
        ("aten::silu_", [[8, 64, 56, 56]], "ELEMENTWISE"),
        ("aten::mean", [[8, 64, 56, 56], [], []], "REDUCTION"),
        ("aten::max_pool2d_with_indices", [[8, 64, 112, 112]], "REDUCTION"),
        ("aten::empty", [[], []], "OTHER"),
        ("TorchDynamo Cache Lookup", [], "OTHER"),
    ],
)
def test_profile_classifies_torch_ops_by_weight_shape(name, shapes, kind):
    from benchmarks import profile

    assert profile.torch_kind(name, shapes) == getattr(profile, kind)


def test_profile_command_writes_every_case(tmp_path):
    out = tmp_path / "profile"
    run_module(
        "benchmarks.profile",
        "--models",
        "resnet10",
        "--workloads",
        "infer",
        "--modes",
        "jit,eager",
        "--image-size",
        "32",
        "--batch",
        "2",
        "--calls",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
    )
    from benchmarks import profile

    payload = json.loads((out / "results.json").read_text())
    labels = [r["label"] for r in payload["results"]]
    assert labels == ["resnet10 infer jit", "resnet10 infer eager"]
    for r in payload["results"]:
        assert r["wall_s"] > 0 and set(r["kinds"]) <= set(profile.KINDS)
        # resnet10's 3x3 convolutions and its 1x1 shortcuts and dense head, in both frameworks
        assert r["kinds"][profile.CONV] > 0 and r["kinds"][profile.MATMUL] > 0
        assert sum(t for _, _, t in r["ops"]) == pytest.approx(sum(r["kinds"].values()))
    text = (out / "results.md").read_text()
    assert text.count("| sum of the ops |") == 1 and "### resnet10, infer" in text
    assert "Slowest ops, resnet10 infer eager:" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workloads", "se_fwd"], "--workloads: se_fwd not in infer, train"),
        (["--modes", "jit,nnx_jit"], "--modes: nnx_jit not in jit, eager"),
        (["--calls", "0"], "--calls must be >= 1, got 0"),
        (["--models", "resnet50,nosuch"], "--models: 'nosuch' is not a registered model"),
    ],
)
def test_profile_bad_arguments(argv, message, capsys):
    from benchmarks import profile

    with pytest.raises(SystemExit):
        profile.parse_args(argv)
    assert message in capsys.readouterr().err


def test_profile_report_tables_and_marks_distorted_cases():
    from benchmarks import profile

    def result(mode, kinds, wall):
        ops = [(f"op_{k}", k, t) for k, t in kinds.items()]
        return {
            "model": "m",
            "workload": "infer",
            "mode": mode,
            "label": f"m infer {mode}",
            "wall_s": wall,
            "kinds": kinds,
            "ops": ops,
        }

    fine = result("jit", {profile.MATMUL: 0.004, profile.ELEMENTWISE: 0.001}, 0.005)
    off = result("eager", {profile.MATMUL: 0.009, profile.OTHER: 0.001}, 0.005)  # 2x the wall
    text = profile.report([fine, off], top=1)
    assert "| kind of operation | jit | eager |" in text
    assert f"| {profile.MATMUL} | 4.0 | 9.0 |" in text
    assert f"| {profile.ELEMENTWISE} | 1.0 | 0.0 |" in text
    assert profile.GROUPED not in text  # no case has one: no row
    assert (
        "| sum of the ops | 5.0 | 10.0† |" in text and "| wall time per call | 5.0 | 5.0 |" in text
    )
    assert "†: the profiled calls' ops sum to more than 1.25x" in text
    assert "- 9.00 op_" in text and text.count("- ") == 2  # top=1: one op per case
    assert "†" not in profile.report([fine], top=1)
