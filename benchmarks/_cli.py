"""``python -m benchmarks``: SE and SK blocks, grouped convs, networks, JAX vs PyTorch, one run.

Writes ``DIR/results.json`` (one record per measurement, plus machine, versions, settings, the
measured memory bandwidth, the matmul roofline and the networks' FLOPs), ``DIR/results.md`` and
PNG plots. ``--workloads convs`` times grouped and depthwise convolutions alone
(``se_flax.conv_general_dilated`` and XLA's, against PyTorch's ``conv2d``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shlex
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from benchmarks._cases import (
    CONV_BUDGET_S,
    CONV_DTYPES,
    CONV_SHAPES,
    DTYPES,
    EXTRA_MODELS,
    MODEL_WORKLOADS,
    MODES,
    NNX_MODES,
    QUICK_CONV_SHAPES,
    QUICK_ROOFLINE_SHAPES,
    QUICK_SK_STAGES,
    QUICK_STAGES,
    RESNET18_STAGES,
    RESNET50_STAGES,
    ROOFLINE_SHAPES,
    WORKLOADS,
    plan,
)
from se_common._cli import positive

FULL = {
    "stages": RESNET50_STAGES,
    "se_batch": 32,
    "sweep_batches": [1, 4, 16, 64, 256],
    "sk_stages": RESNET18_STAGES,
    "sk_batch": 32,
    "models": [
        "resnet50",
        "seresnet50",
        "resnet18",
        "skresnet18",
        "seresnext50_32x4d",
        "seresnext26d_32x4d",
        "ecaresnet50d",
        "efficientnet_b0",
        "efficientnetv2_rw_t",
        "mobilenetv3_large_100",
        "regnety_016",
        "regnety_040",
    ],
    "model_batch": 8,
    "conv_shapes": list(CONV_SHAPES),
    "conv_batch": 8,
    "image_size": 224,
    "repeats": 7,
    "min_time": 0.05,
    "warmup": 0.2,
    "bandwidth_mib": 256,
    "roofline_shapes": ROOFLINE_SHAPES,
    "modes": list(MODES),
    "dtypes": list(DTYPES),
}
QUICK = {
    "stages": QUICK_STAGES,
    "se_batch": 2,
    "sweep_batches": [1, 4],
    "sk_stages": QUICK_SK_STAGES,
    "sk_batch": 2,
    "models": ["resnet14", "seresnet14", "resnet10", "skresnet10"],
    "model_batch": 2,
    "conv_shapes": list(QUICK_CONV_SHAPES),
    "conv_batch": 2,
    "image_size": 32,
    "repeats": 3,
    "min_time": 0.002,
    "warmup": 0.01,
    "bandwidth_mib": 16,
    "roofline_shapes": QUICK_ROOFLINE_SHAPES,
    # torch.compile's first call takes seconds to minutes, and the NNX modes compile the
    # networks again (each train step several seconds): ask for them with --modes.
    "modes": [m for m in MODES if m != "compile" and m not in NNX_MODES],
    "dtypes": ["float32"],
}


# The durations, as docs/benchmarks.md states them. The full run's is an estimate: 35 minutes
# were measured before the convs workload, seresnext50_32x4d, seresnext26d_32x4d,
# ecaresnet50d, efficientnet_b0, efficientnetv2_rw_t, mobilenetv3_large_100, regnety_016 and
# regnety_040 joined the defaults (efficientnet_b0 and efficientnetv2_rw_t: 16 minutes measured,
# every mode and dtype; mobilenetv3_large_100: 4 minutes at batch 8; the two RegNets: 5 minutes
# in float32, every mode, so about 10 with bfloat16).
DURATIONS = (
    "Durations on 2 CPU cores: the full run (the defaults) about 90 minutes, "
    "estimated (35 min measured, 32 and 35.5 min on a 2-core Xeon, before the convs workload, "
    "about 6 min, seresnext50_32x4d, seresnext26d_32x4d, ecaresnet50d, efficientnet_b0, "
    "efficientnetv2_rw_t, mobilenetv3_large_100, regnety_016 and regnety_040, 16 min for "
    "efficientnet_b0 and "
    "efficientnetv2_rw_t, 4 for mobilenetv3_large_100 and about 10 for regnety_016 and "
    "regnety_040, joined the defaults); "
    "--workloads convs alone about 6 minutes, most of "
    "it XLA's grouped backward (xla_jit); --quick about 1 minute when the cores are idle (63 s "
    "measured before convs, which add about 5 s), 2-3 minutes while other jobs share them."
)


def _list(choices):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {', '.join(choices)}, got {text!r}"
            )
        return list(dict.fromkeys(items))

    return parse


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,8,32, got {text!r}")
    return list(dict.fromkeys(values))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from se_common import list_models

    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.split("\n")[0] + " " + DURATIONS,
    )
    p.add_argument(
        "--workloads",
        type=_list(list(WORKLOADS)),
        default=list(WORKLOADS),
        help="comma-separated: " + ", ".join(f"{k} ({v})" for k, v in WORKLOADS.items()),
    )
    p.add_argument(
        "--frameworks",
        type=_list(["jax", "torch"]),
        default=["jax", "torch"],
        help="comma-separated: jax, torch (default: both). Only the modes of these frameworks "
        "run, and the matmul roofline is measured in these frameworks",
    )
    p.add_argument(
        "--modes",
        type=_list(list(MODES)),
        default=None,
        help="comma-separated: "
        + ", ".join(f"{k} ({v[1]})" for k, v in MODES.items())
        + " (default: all; --quick: all but compile and the NNX modes)",
    )
    p.add_argument(
        "--dtypes",
        type=_list(list(DTYPES)),
        default=None,
        help="bfloat16 means parameters and activations in bfloat16, in both "
        "frameworks (default: both; --quick: float32); convs run in float32 only",
    )
    p.add_argument(
        "--stages",
        type=_list(list(RESNET50_STAGES)),
        default=None,
        help="stages whose block shapes to run: SE at ResNet-50's feature maps, SK at "
        "ResNet-18's (default: all four)",
    )
    p.add_argument(
        "--se-batch",
        type=positive(int),
        default=None,
        help=f"batch of the per-stage SE cases (default {FULL['se_batch']})",
    )
    p.add_argument(
        "--sweep-stage",
        choices=[*list(RESNET50_STAGES), "none"],
        default=None,
        help="stage shape of the SE batch sweep, one of --stages ('none' to skip it; default: "
        "stage3, or the selected stage nearest to it)",
    )
    p.add_argument(
        "--sweep-batches",
        type=_positive_ints,
        default=None,
        help=f"batches of the SE sweep (default {FULL['sweep_batches']})",
    )
    p.add_argument(
        "--sk-batch",
        type=positive(int),
        default=None,
        help=f"batch of the per-stage SK cases (default {FULL['sk_batch']})",
    )
    names = list_models() + sorted(EXTRA_MODELS)
    p.add_argument(
        "--models",
        type=_list(names),
        default=None,
        help="networks for infer/train; an SE or SK model next to its plain twin gives the "
        "SE/plain or SK/plain throughput ratio (default " + ",".join(FULL["models"]) + ")",
    )
    p.add_argument(
        "--model-batch",
        type=positive(int),
        default=None,
        help=f"batch of the network cases (default {FULL['model_batch']})",
    )
    p.add_argument(
        "--image-size",
        type=positive(int),
        default=None,
        help=f"network input resolution (default {FULL['image_size']})",
    )
    p.add_argument(
        "--conv-shapes",
        type=_list(list(CONV_SHAPES)),
        default=None,
        help="convolutions of the convs workload, named HxWxC_gGROUPS_kK_sSTRIDE (dw: "
        "depthwise), of "
        + ", ".join(CONV_SHAPES)
        + " (default: all; --quick: "
        + ",".join(QUICK_CONV_SHAPES)
        + ")",
    )
    p.add_argument(
        "--conv-batch",
        type=positive(int),
        default=None,
        help=f"batch of the convs cases (default {FULL['conv_batch']}; --quick: "
        f"{QUICK['conv_batch']})",
    )
    p.add_argument(
        "--repeats",
        type=positive(int),
        default=None,
        help=f"timed repeats per case (default {FULL['repeats']}; a convs case whose repeats "
        f"would take over {CONV_BUDGET_S:g} s runs fewer, 3 at least)",
    )
    p.add_argument(
        "--min-time",
        type=positive(float),
        default=None,
        help=f"seconds per repeat at least (default {FULL['min_time']})",
    )
    p.add_argument(
        "--threads",
        type=positive(int),
        default=len(os.sched_getaffinity(0)),
        help="threads for both frameworks (default: every CPU this process may use)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny shapes and models (resnet14/seresnet14, resnet10/skresnet10; two small "
        "convs at batch 2), few repeats, small roofline matmuls: a smoke run (results.md says "
        "so, and judges no target)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/benchmarks"),
        help="output directory (default runs/benchmarks)",
    )
    p.add_argument(
        "--xla-flags",
        default="",
        metavar="FLAGS",
        help="appended to XLA_FLAGS before jax is imported, e.g. "
        "--xla-flags='--xla_cpu_use_thunk_runtime=false' (XLA aborts on a flag it does not "
        "know); recorded in results.json and results.md: measures a flag set without touching "
        "the library",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for name in (
        "se_batch",
        "sweep_batches",
        "sk_batch",
        "models",
        "model_batch",
        "conv_shapes",
        "conv_batch",
        "image_size",
        "repeats",
        "min_time",
        "modes",
        "dtypes",
    ):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    all_stages = defaults["stages"]
    args.stage_shapes = {s: all_stages[s] for s in (args.stages or all_stages)}
    args.sk_stage_shapes = {s: defaults["sk_stages"][s] for s in args.stage_shapes}
    args.sweep_stage = _sweep_stage(p, args.sweep_stage, list(args.stage_shapes))
    args.modes = [m for m in args.modes if MODES[m][0] in args.frameworks]
    if not args.modes:
        p.error(f"none of --modes belongs to --frameworks {','.join(args.frameworks)}")
    if not planned(args):
        p.error(
            "nothing to run: no case of --workloads in these --modes and --dtypes (convs: "
            f"{', '.join(CONV_DTYPES)} only; modes jit, xla_jit, eager, channels_last)"
        )
    if args.threads > len(os.sched_getaffinity(0)):
        p.error(
            f"--threads {args.threads} exceeds the {len(os.sched_getaffinity(0))} CPUs "
            "this process may use"
        )
    return args


def _sweep_stage(p: argparse.ArgumentParser, asked: str | None, stages: list[str]) -> str | None:
    """The SE sweep's stage: ``--sweep-stage`` if it is one of ``--stages``, None for 'none';
    when not given, stage3 or the selected stage nearest to it (the later one on a tie)."""
    if asked == "none":
        return None
    if asked is None:
        order = list(RESNET50_STAGES)
        middle = order.index("stage3")
        return min(stages, key=lambda s: (abs(order.index(s) - middle), -order.index(s)))
    if asked not in stages:
        p.error(
            f"--sweep-stage {asked} is not one of --stages {','.join(stages)}: add it to "
            "--stages, or pass --sweep-stage none"
        )
    return asked


def _set_threads(threads: int, xla_flags: str = "") -> None:
    """The same thread count for both frameworks, and ``xla_flags`` appended to XLA_FLAGS; call
    before importing jax or torch."""
    cpus = sorted(os.sched_getaffinity(0))
    if threads < len(cpus):
        os.sched_setaffinity(0, cpus[:threads])  # XLA sizes its thread pool from the affinity
    flags = f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip()
    os.environ["XLA_FLAGS"] = flags
    found = re.search(r"intra_op_parallelism_threads=(\d+)", flags)
    if found and int(found.group(1)) != threads:
        raise SystemExit(
            f"XLA_FLAGS sets intra_op_parallelism_threads={found.group(1)}, "
            f"but --threads is {threads}: both frameworks must use the same count"
        )
    if not found:
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_cpu_multi_thread_eigen=true "
            f"intra_op_parallelism_threads={threads}".strip()
        )
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    # Compile times are cold: no on-disk inductor caches from earlier runs.
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")


def _slots(case, cache_bytes: int) -> int:
    """Input buffers to rotate through: together at least twice the last-level cache."""
    return max(2, min(8, math.ceil(2 * cache_bytes / case.input_bytes)))


def planned(args: argparse.Namespace) -> list:
    """The cases that parsed arguments ask for."""
    return plan(
        args.workloads,
        args.modes,
        args.dtypes,
        args.stage_shapes,
        args.se_batch,
        args.sweep_stage,
        args.sweep_batches,
        args.sk_stage_shapes,
        args.sk_batch,
        args.models,
        args.model_batch,
        args.image_size,
        args.conv_shapes,
        args.conv_batch,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _set_threads(args.threads, args.xla_flags)

    import torch
    from tqdm import tqdm

    from benchmarks import _jax, _machine, _report, _torch
    from benchmarks._timing import NOISE_LIMIT, measure_checked

    torch.set_num_threads(args.threads)
    defaults = QUICK if args.quick else FULL
    cases = planned(args)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = _machine.describe(args.threads)
    cache = _machine.last_level_cache_bytes() if machine["gpu"] is None else 0
    bandwidth = {"start": _machine.memory_bandwidth(defaults["bandwidth_mib"] * 2**20)}
    bandwidth["median_GBps"] = bandwidth["start"]["median_GBps"]
    roofline = _machine.matmul_roofline(
        args.frameworks,
        args.dtypes,
        defaults["roofline_shapes"],
        args.repeats,
        args.min_time,
        defaults["warmup"],
        smoke=args.quick,
        seed=args.seed,
    )
    results = {
        "schema": 2,
        "command": shlex.join(
            ["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)]
        ),
        "settings": {
            "quick": args.quick,
            "threads": args.threads,
            "xla_flags": args.xla_flags,
            "repeats": args.repeats,
            "min_time_s": args.min_time,
            "warmup_s": defaults["warmup"],
            "noise_limit": NOISE_LIMIT,
            "remeasure_noisy": not args.quick,
            "seed": args.seed,
            "se_batch": args.se_batch,
            "sweep_stage": args.sweep_stage,
            "sweep_batches": args.sweep_batches,
            "stages": args.stage_shapes,
            "sk_batch": args.sk_batch,
            "sk_stages": args.sk_stage_shapes,
            "models": args.models,
            "model_batch": args.model_batch,
            "image_size": args.image_size,
            "conv_batch": args.conv_batch,
            "conv_shapes": {
                name: {**asdict(CONV_SHAPES[name]), "padding": CONV_SHAPES[name].padding}
                for name in args.conv_shapes
            },
            "conv_budget_s": CONV_BUDGET_S,
        },
        "machine": machine,
        "bandwidth": bandwidth,
        "roofline": roofline,
        "flops_method": FLOPS_METHOD,
        "flops": [],
        "records": [],
        "targets": [],
    }
    print(
        f"{len(cases)} cases; copy bandwidth {bandwidth['median_GBps']:.1f} GB/s; matmul "
        + ", ".join(f"{d} {g:.4g} GFLOP/s" for d, g in roofline["GFLOPs"].items())
        + (" (smoke)" if args.quick else "")
        + f"; {args.threads} threads; writing to {args.out}",
        flush=True,
    )
    start = time.perf_counter()
    xla_flops = {}  # (workload, network) -> FLOPs of one float32 call, from a JAX runner
    bar = tqdm(cases, disable=args.no_progress, unit="case", dynamic_ncols=True)
    for case in bar:
        bar.set_description(f"{case.workload} {case.name} b{case.batch} {case.dtype} {case.mode}")
        record = case.as_record()
        record["slots"] = _slots(case, cache)
        case_start, runner = time.perf_counter(), None
        try:
            build = _jax.runner if case.framework == "jax" else _torch.runner
            runner = build(case, record["slots"], args.seed)
            # A noisy case is measured once more in a full run; the less noisy result is kept.
            timing = measure_checked(
                runner, args.repeats, args.min_time, defaults["warmup"], not args.quick
            )
            record.update(timing)
        except Exception as error:  # one failed case must not lose the others
            record.update(
                median_s=None,
                compile_s=None,
                error=f"{type(error).__name__}: {error}".splitlines()[0][:500],
            )
            bar.write(f"FAILED {case.key()}:\n{traceback.format_exc(limit=3)}")
        record["case_s"] = time.perf_counter() - case_start  # set-up and all calls
        # The network's FLOPs from the program just compiled and timed (jit's cache: no
        # compilation); failing that, counted after the loop.
        key = (case.workload, case.name)
        count = runner and runner.extra.get("xla_flops")
        if count and record["median_s"] is not None and case.dtype == "float32":
            with contextlib.suppress(Exception):
                xla_flops.setdefault(key, count() / case.batch)
        results["records"].append(
            _report.derive(record, bandwidth["median_GBps"], roofline["GFLOPs"])
        )
        _write_json(results, args.out)
    results["seconds"] = time.perf_counter() - start
    # Measured again at the end; floor shares use the higher of the two (the stricter floor).
    bandwidth["end"] = _machine.memory_bandwidth(defaults["bandwidth_mib"] * 2**20)
    bandwidth["median_GBps"] = max(
        bandwidth["start"]["median_GBps"], bandwidth["end"]["median_GBps"]
    )
    bandwidth["method"] = (
        bandwidth["end"]["method"] + "; the higher median of two runs, at the start and at the end"
    )
    results["flops"] = _network_flops(results["records"], xla_flops, args)
    per_image = {
        (row["workload"], row["name"]): row["flops_per_image"]
        for row in results["flops"]
        if row.get("flops_per_image") is not None
    }
    for record in results["records"]:
        _report.derive(record, bandwidth["median_GBps"], roofline["GFLOPs"], per_image)
    results["targets"] = _report.targets(
        results["records"], machine, args.se_batch, args.sk_batch, judge=not args.quick
    )
    _write_json(results, args.out)
    (args.out / "results.md").write_text(_report.markdown(results))
    written = _report.plots(results, args.out)
    failed = [r for r in results["records"] if r.get("error")]
    print(
        f"{len(results['records'])} records in {results['seconds']:.0f} s -> "
        f"{args.out / 'results.json'}, results.md, " + ", ".join(p.name for p in written)
    )
    if failed:
        print(f"{len(failed)} cases failed: see the errors in results.md", file=sys.stderr)
    return 1 if failed else 0


FLOPS_METHOD = (
    "XLA's cost analysis (`flops`) of the compiled float32 JAX program "
    "(`jax.jit(f).lower(...).compile().cost_analysis()`), divided by the batch: every operation "
    "counted (a multiply-add as 2, an elementwise operation as 1; convolution taps that fall on "
    "padding are not), plus 2 x the multiply-adds of the passes that ran se_flax's CPU kernels "
    "(XLA counts a custom call as 0); the same count serves bfloat16 and both frameworks, which "
    "run the same "
    "math. The cross-check counts 2 x the multiply-adds of the forward pass's convolutions and "
    "dense layers from the traced shapes, padding included"
)


def _network_flops(records: list[dict], xla_flops: dict, args: argparse.Namespace) -> list[dict]:
    """FLOPs per image of each network and workload measured: XLA's count from a JAX runner's
    compiled float32 program (compiled here where no runner compiled it), and the analytic
    forward count."""
    from benchmarks import _jax

    rows, forward = [], {}
    for key in dict.fromkeys(
        (r["workload"], r["name"]) for r in records if r["workload"] in MODEL_WORKLOADS
    ):
        workload, name = key
        row = {"workload": workload, "name": name, "image_size": args.image_size}
        try:
            if key not in xla_flops:
                total = _jax.network_flops(workload, name, args.model_batch, args.image_size)
                xla_flops[key] = total / args.model_batch
            row["flops_per_image"] = xla_flops[key]
            if name not in forward:
                forward[name] = _jax.forward_matmul_flops(name, args.image_size)
            row["forward_matmul_flops_per_image"] = forward[name]
        except Exception as error:  # no count: no roofline share, the records are kept
            row["error"] = f"{type(error).__name__}: {error}".splitlines()[0][:500]
        rows.append(row)
    return rows


def _write_json(results: dict, out: Path) -> None:
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out / "results.json")
