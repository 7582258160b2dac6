"""Derived numbers (floor fractions, ratios, targets), the Markdown report and the plots."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from benchmarks._cases import (
    BLOCK_WORKLOADS,
    CONV_BUDGET_S,
    CONV_SHAPES,
    CONV_WORKLOADS,
    ITEMSIZE,
    MODEL_WORKLOADS,
    MODES,
    NNX_MODES,
    SE_WORKLOADS,
    SK_WORKLOADS,
    attention_pairs,
)
from benchmarks._timing import NOISE_LIMIT, is_noisy

NOISY = "†"  # marks a noisy record, and every ratio or share computed from one

# Passes over the feature map that any SE implementation must make (the memory floor):
# forward: read x to pool, read x again to scale, write y. Forward + backward (returning
# dx and parameter gradients): read x and g once (pooling and sum(g * x) share a pass),
# read g again and write dx.
FLOOR_PASSES = {"se_fwd": 3, "se_fwdbwd": 4}
# A convolution's FLOPs per call over its forward's: forward + backward computes the output,
# the input gradient and the kernel gradient, each as many multiply-adds as the forward.
CONV_PASSES = {"conv_fwd": 1, "conv_fwdbwd": 3}
# The convolutions' goal: JAX (se_flax.conv_general_dilated) within 1.5x of PyTorch's
# channels_last time, i.e. at least 1 / 1.5 of its speed (CPU).
CONV_GOAL = 1 / 1.5


def derive(
    record: dict,
    bandwidth_GBps: float,
    roofline_GFLOPs: dict | None = None,
    flops: dict | None = None,
) -> dict:
    """Adds throughput (images per second), the noise flag and, for SE blocks, the memory-floor
    numbers (SK blocks and networks are compute-bound: no floor); for networks whose FLOPs per
    image are in ``flops`` (``(workload, name) -> FLOPs``), the share of the matmul roofline of
    the record's dtype (``roofline_GFLOPs``: dtype -> GFLOP/s); for convolutions, their FLOPs
    per call (2 x multiply-adds, taps on padding included) and GFLOP/s."""
    if record.get("median_s") is None:
        return record
    record["throughput"] = record["batch"] / record["median_s"]
    record["noisy"] = is_noisy(record)
    if record["workload"] in FLOOR_PASSES:
        n, h, w, c = record["shape"]
        floor = FLOOR_PASSES[record["workload"]] * n * h * w * c * ITEMSIZE[record["dtype"]]
        record["floor_bytes"] = floor
        record["achieved_GBps"] = floor / record["median_s"] / 1e9
        record["floor_fraction"] = record["achieved_GBps"] / bandwidth_GBps
    if record["workload"] in CONV_PASSES:
        conv = CONV_SHAPES[record["name"]]
        record["flops"] = CONV_PASSES[record["workload"]] * conv.flops(record["batch"])
        record["GFLOPs"] = record["flops"] / record["median_s"] / 1e9
    per_image = (flops or {}).get((record["workload"], record["name"]))
    if record["workload"] in MODEL_WORKLOADS and per_image is not None:
        record["flops_per_image"] = per_image
        roofline = (roofline_GFLOPs or {}).get(record["dtype"])
        if roofline:
            record["roofline_fraction"] = record["throughput"] * per_image / (roofline * 1e9)
    return record


def _noisy(*records: dict) -> bool:
    """Whether any of the records a number comes from is noisy."""
    return any(r.get("noisy", False) for r in records)


def _index(records: list[dict]) -> dict:
    return {
        (r["workload"], r["mode"], r["dtype"], r["name"], r["batch"]): r
        for r in records
        if r.get("median_s") is not None
    }


def attention_ratios(records: list[dict]) -> list[dict]:
    """Throughput of each attention network over its plain twin's (same workload, mode, dtype
    and batch), one row per pair measured on both sides, shaped like a record for ``_pivot``."""
    index = _index(records)
    nets = [r for r in index.values() if r["workload"] in MODEL_WORKLOADS]
    rows = []
    for model, plain, label in attention_pairs(sorted({r["name"] for r in nets})):
        for r in nets:
            base = index.get((r["workload"], r["mode"], r["dtype"], plain, r["batch"]))
            if r["name"] == model and base is not None:
                keep = ("workload", "mode", "dtype", "batch", "shape")
                rows.append(
                    {
                        **{k: r[k] for k in keep},
                        "name": f"{model}/{plain}",
                        "label": label,
                        "ratio": base["median_s"] / r["median_s"],
                        "noisy": _noisy(r, base),
                    }
                )
    return rows


def nnx_overheads(records: list[dict]) -> list[dict]:
    """Each NNX network record's time per step over the linen ``jit`` record's (same workload,
    network, dtype and batch: same weights and inputs), and the difference in seconds; one row
    per pair, shaped like a record for ``_pivot``."""
    index = _index(records)
    rows = []
    for r in index.values():
        if r["mode"] not in NNX_MODES or r["workload"] not in MODEL_WORKLOADS:
            continue
        linen = index.get((r["workload"], "jit", r["dtype"], r["name"], r["batch"]))
        if linen is not None:
            keep = ("workload", "mode", "dtype", "name", "batch", "shape")
            rows.append(
                {
                    **{k: r[k] for k in keep},
                    "ratio": r["median_s"] / linen["median_s"],
                    "extra_s": r["median_s"] - linen["median_s"],
                    "noisy": _noisy(r, linen),
                }
            )
    return rows


def targets(
    records: list[dict],
    machine: dict,
    se_batch: int,
    sk_batch: int | None = None,
    judge: bool = True,
) -> list[dict]:
    """The issue's targets, evaluated on this run's records (ratios within one run).

    CPU: JAX SE block >= 1.5x PyTorch eager and >= 50% of the memory floor at every stage;
    JAX SE-ResNet inference >= PyTorch eager channels_last; JAX grouped and depthwise
    convolutions (``jit``: se_flax's) within 1.5x of PyTorch channels_last's time
    (speed ratio >= 1 / 1.5; XLA's own, ``xla_jit``, and se_flax over XLA listed). GPU: SE
    block >= 85% of the memory floor, JAX SE/plain >= 0.90, JAX within 10% of torch.compile.
    Other ratios (the SK block's speed, SK/plain, the NNX networks' speed over linen ``jit``'s)
    are listed with no goal. ``judge=False`` (a ``--quick`` smoke run) lists every value with
    no goal or verdict. Each row is ``noisy`` when a record it comes from is.
    """
    gpu = machine.get("gpu") is not None
    index, rows = _index(records), []

    def add(target, case, value, goal, *sources):
        goal = goal if judge else None
        met = None if goal is None else bool(value >= goal)
        row = {"target": target, "case": case, "value": value, "goal": goal, "met": met}
        rows.append({**row, "noisy": _noisy(*sources)})

    models = sorted({r["name"] for r in records if r["workload"] in MODEL_WORKLOADS})
    dtypes = sorted({r["dtype"] for r in records})
    jax_modes = ("jit", "jit_donate")
    for workload in BLOCK_WORKLOADS:
        se = workload in SE_WORKLOADS
        block, batch = ("SE", se_batch) if se else ("SK", sk_batch)
        stages = sorted({r["name"] for r in records if r["workload"] == workload})
        for dtype in dtypes:
            for stage in stages:
                eager = index.get((workload, "eager", dtype, stage, batch))
                for mode in jax_modes:
                    jax_ = index.get((workload, mode, dtype, stage, batch))
                    if jax_ is None:
                        continue
                    case = f"{workload} {stage} b{batch} {dtype} {mode}"
                    if eager is not None:
                        ratio = eager["median_s"] / jax_["median_s"]
                        goal = 1.5 if se and not gpu else None
                        add(f"JAX {block} / torch eager speed", case, ratio, goal, jax_, eager)
                    if not se:
                        continue
                    goal = 0.85 if gpu else 0.5
                    add(
                        "JAX SE share of memory floor",
                        case,
                        jax_["floor_fraction"],
                        goal if workload == "se_fwd" else None,
                        jax_,
                    )
    for workload in MODEL_WORKLOADS:
        for dtype in dtypes:
            for model in models:
                batch = next(
                    r["batch"]
                    for r in records
                    if r["name"] == model and r["workload"] in MODEL_WORKLOADS
                )
                for mode in jax_modes:
                    jax_ = index.get((workload, mode, dtype, model, batch))
                    if jax_ is None:
                        continue
                    case = f"{workload} {model} {dtype} {mode}"
                    cl = index.get((workload, "channels_last", dtype, model, batch))
                    if cl is not None:
                        goal = 1.0 if workload == "infer" and not gpu else None
                        add(
                            "JAX / torch channels_last speed",
                            case,
                            cl["median_s"] / jax_["median_s"],
                            goal,
                            jax_,
                            cl,
                        )
                    compiled = index.get((workload, "compile", dtype, model, batch))
                    if compiled is not None:
                        add(
                            "JAX / torch.compile speed",
                            case,
                            compiled["median_s"] / jax_["median_s"],
                            0.9 if gpu else None,
                            jax_,
                            compiled,
                        )
    for r in records:  # convolutions: JAX against PyTorch channels_last, se_flax against XLA
        if r["workload"] not in CONV_WORKLOADS or r["mode"] not in ("jit", "xla_jit"):
            continue
        jax_ = index.get((r["workload"], r["mode"], r["dtype"], r["name"], r["batch"]))
        if jax_ is None:
            continue
        case = f"{r['workload']} {r['name']} b{r['batch']} {r['dtype']} {r['mode']}"
        cl = index.get((r["workload"], "channels_last", r["dtype"], r["name"], r["batch"]))
        if cl is not None:
            goal = CONV_GOAL if r["mode"] == "jit" and not gpu else None
            ratio = cl["median_s"] / jax_["median_s"]
            add("JAX conv / torch channels_last speed", case, ratio, goal, jax_, cl)
        xla = index.get((r["workload"], "xla_jit", r["dtype"], r["name"], r["batch"]))
        if r["mode"] == "jit" and xla is not None:
            ratio = xla["median_s"] / jax_["median_s"]
            add("se_flax conv / XLA conv speed", case, ratio, None, jax_, xla)
    for row in attention_ratios(records):
        goal = 0.9 if gpu and row["mode"] in jax_modes and row["label"] == "SE" else None
        add(
            f"{row['label']}/plain throughput",
            f"{row['workload']} {row['name']} {row['dtype']} {row['mode']}",
            row["ratio"],
            goal,
            row,
        )
    for row in nnx_overheads(records):
        add(
            "NNX / linen jit speed",
            f"{row['workload']} {row['name']} {row['dtype']} {row['mode']}",
            1 / row["ratio"],
            None,
            row,
        )
    return rows


def _pivot(records: list[dict], workloads, cell) -> list[str]:
    modes = [m for m in MODES if any(r["mode"] == m for r in records)]
    rows = defaultdict(dict)
    for r in records:
        if r["workload"] in workloads:
            key = (r["workload"], r["name"], r["batch"], tuple(r["shape"]), r["dtype"])
            rows[key][r["mode"]] = cell(r)
    lines = [
        "| workload | case | batch | input (NHWC) | dtype | " + " | ".join(modes) + " |",
        "|---" * (5 + len(modes)) + "|",
    ]
    for (workload, name, batch, shape, dtype), cells in rows.items():
        shape_text = "x".join(map(str, shape))
        lines.append(
            f"| {workload} | {name} | {batch} | {shape_text} | {dtype} | "
            + " | ".join(cells.get(m, "") for m in modes)
            + " |"
        )
    return lines


def _conv_table(records: list[dict]) -> list[str]:
    """The convolutions: one row per shape (and batch, dtype), the forward's time per mode,
    then forward + backward's, in ms."""
    modes = [m for m in MODES if any(r["mode"] == m for r in records)]
    rows = defaultdict(dict)
    for r in records:
        rows[r["name"], r["batch"], r["dtype"]][r["workload"], r["mode"]] = r
    columns = [(w, m) for w in CONV_WORKLOADS for m in modes]
    label = {"conv_fwd": "fwd", "conv_fwdbwd": "fwd+bwd"}
    lines = [
        "| case | from | input (NHWC) | groups | kernel | stride | dtype | "
        + " | ".join(f"{label[w]} {m}" for w, m in columns)
        + " |",
        "|---" * (7 + len(columns)) + "|",
    ]
    for (name, batch, dtype), cells in rows.items():
        conv = CONV_SHAPES[name]
        groups = f"{conv.groups} (depthwise)" if conv.groups == conv.c else str(conv.groups)
        if conv.features != conv.c:
            groups += f", {conv.features} outputs"
        lines.append(
            f"| {name} | {conv.source} | {batch}x{conv.h}x{conv.w}x{conv.c} | {groups} | "
            f"{conv.kernel}x{conv.kernel} | {conv.stride} | {dtype} | "
            + " | ".join(_time_cell(cells[c]) if c in cells else "" for c in columns)
            + " |"
        )
    return lines


def _mark(r: dict) -> str:
    return NOISY if r.get("noisy") else ""


def _se_cell(r: dict) -> str:
    if r.get("median_s") is None:
        return "error"
    return (
        f"{r['median_s'] * 1e3:.3g} ms ±{r['iqr_s'] * 1e3:.2g}, {r['floor_fraction']:.0%}{_mark(r)}"
    )


def _time_cell(r: dict) -> str:
    if r.get("median_s") is None:
        return "error"
    return f"{r['median_s'] * 1e3:.3g} ms ±{r['iqr_s'] * 1e3:.2g}{_mark(r)}"


def _model_cell(r: dict) -> str:
    if r.get("median_s") is None:
        return "error"
    share = r.get("roofline_fraction")
    share = "" if share is None else f", {share:.0%}"
    return f"{r['throughput']:.3g}/s ±{r['iqr_s'] / r['median_s']:.0%}{share}{_mark(r)}"


def _compile_cell(r: dict) -> str:
    return "error" if r.get("compile_s") is None else f"{r['compile_s']:.3g}"


def _table(lines: list[str]) -> list[str]:
    """A table, a footnote when a cell is marked noisy, and a blank line."""
    if any(NOISY in line for line in lines):
        lines = [
            *lines,
            "",
            f"{NOISY} noisy: the interquartile range exceeds {NOISE_LIMIT:.0%} of the median "
            "(or a record this number comes from does).",
        ]
    return [*lines, ""]


def _shape(shape) -> str:
    m, k, n = shape
    return f"{m}x{k} @ {k}x{n}"


def _roofline_lines(roofline: dict) -> list[str]:
    if not roofline.get("GFLOPs"):
        return ["- matmul roofline: not measured"]
    best = [
        f"{dtype} {value:.4g} GFLOP/s ({roofline['best'][dtype]['framework']}, "
        f"{_shape(roofline['best'][dtype]['shape'])})"
        for dtype, value in roofline["GFLOPs"].items()
    ]
    smoke = " (--quick: small shapes, a smoke measurement)" if roofline.get("smoke") else ""
    return [
        "- matmul roofline: " + ", ".join(best) + smoke + "; the best median over "
        "frameworks and shapes (all of them below)"
    ]


def markdown(results: dict) -> str:
    """The run as Markdown: machine, bandwidth, roofline, tables per workload, compile times,
    targets."""
    m, bw, records = results["machine"], results["bandwidth"], results["records"]
    settings = results["settings"]
    quick = settings.get("quick", False)
    roofline = results.get("roofline", {})
    v = m["versions"]
    lines = ["# se-flax benchmarks", ""]
    if quick:
        lines += [
            "**Smoke run (`--quick`): tiny shapes and models, few repeats, a small-shape matmul "
            "roofline. It shows that every case runs, not how fast this machine is; no targets "
            "are judged.**",
            "",
        ]
    lines += [
        f"- machine: {m['cpu']}, {m['cpus_used']} of {m['cpu_count']} CPUs used, "
        f"{m['memory_gib']} GiB, last-level cache {m['last_level_cache_mib']:g} MiB; "
        f"GPU: {m['gpu'] or 'none'}; {m['platform']}",
        f"- threads: {m['threads']['requested']} for both frameworks "
        f"(torch intra-op {m['threads']['torch_intra_op']}, "
        f"XLA_FLAGS `{m['threads']['XLA_FLAGS']}`)",
    ]
    if settings.get("xla_flags"):
        lines.append(f"- `--xla-flags`: `{settings['xla_flags']}` (appended to XLA_FLAGS)")
    lines += [
        f"- versions: python {v['python']}, jax {v['jax']}, jaxlib {v['jaxlib']}, "
        f"flax {v['flax']}, torch {v['torch']}, numpy {v['numpy']}, "
        f"se-flax {v['se-flax']} ({m['git_commit']})",
        f"- memory bandwidth: {bw['median_GBps']:.1f} GB/s (copy medians: "
        f"{bw['start']['median_GBps']:.1f} at the start, "
        f"{bw['end']['median_GBps']:.1f} at the end; "
        f"{bw['end']['method']})",
        *_roofline_lines(roofline),
        f"- date: {m['date']}; command: `{results['command']}`",
        "",
        "Times are medians per call over repeats (± interquartile range). Inputs rotate through "
        "2-8 buffers (`slots`), enough to exceed twice the last-level cache unless 8 small "
        "inputs fit in it. Percentages are the "
        "SE block's memory floor (forward: 2 reads + 1 write of the feature map; forward + "
        "backward: 3 reads + 1 write) over the measured copy bandwidth, and a network's "
        "FLOPs per second (images/s x FLOPs per image) over the matmul roofline of its dtype. "
        f"{NOISY} marks a noisy record, whose interquartile range exceeds {NOISE_LIMIT:.0%} of "
        "its median"
        + ("" if quick else " after it was measured once more (the less noisy measurement is kept)")
        + ", and every ratio computed from one.",
        "",
    ]
    se = [r for r in records if r["workload"] in SE_WORKLOADS]
    if se:
        lines += ["## SE block: time per call, share of the memory floor", ""]
        lines += _table(_pivot(se, SE_WORKLOADS, _se_cell))
    sk = [r for r in records if r["workload"] in SK_WORKLOADS]
    if sk:
        lines += [
            "## SK block: time per call (compute-bound: no memory floor)",
            "",
            "skresnet18's Selective Kernel unit at stride 1 (in = out channels) on each ResNet-18 "
            "stage's feature map. Forward in eval mode; forward + backward in train mode (batch "
            "statistics, running statistics updated).",
            "",
        ]
        lines += _table(_pivot(sk, SK_WORKLOADS, _time_cell))
    convs = [r for r in records if r["workload"] in CONV_WORKLOADS]
    if convs:
        lines += [
            "## Grouped and depthwise convolutions: time per call",
            "",
            "One convolution, C in and C out channels, padding k // 2, under `jax.jit`: `jit` is "
            "`se_flax.conv_general_dilated` (se_flax's CPU kernels where built), `xla_jit` "
            "`jax.lax.conv_general_dilated` with the same arguments (XLA's own grouped "
            "convolution); PyTorch's `torch.nn.functional.conv2d`, NCHW (`eager`) and "
            "`channels_last`. fwd: the forward (PyTorch under `no_grad`); fwd+bwd: the output "
            "and the input and kernel gradients at a fixed random cotangent (`jax.vjp`; "
            "PyTorch's `y.backward(dy)`, the gradients cleared first). Same kernel in both "
            f"frameworks, float32. A case whose repeats would take over {CONV_BUDGET_S:g} s "
            "runs fewer of them, 3 at least (`repeats` in results.json); GFLOP/s are in "
            "results.json.",
            "",
        ]
        lines += _table(_conv_table(convs))
    nets = [r for r in records if r["workload"] in MODEL_WORKLOADS]
    if nets:
        lines += [
            "## Networks: images per second (± relative IQR), share of the matmul roofline",
            "",
        ]
        lines += _table(_pivot(nets, MODEL_WORKLOADS, _model_cell))
        flops = results.get("flops", [])
        if flops:
            lines += [
                "FLOPs per image: " + results.get("flops_method", "") + ".",
                "",
                "| workload | network | input | GFLOP per image (XLA) | "
                "forward conv + dense, 2 x multiply-adds |",
                "|---|---|---|---|---|",
            ]
            for row in flops:
                size = row["image_size"]
                analytic = row.get("forward_matmul_flops_per_image")
                analytic = "" if analytic is None else f"{analytic / 1e9:.4g}"
                xla = row.get("flops_per_image")
                xla = row.get("error", "error") if xla is None else f"{xla / 1e9:.4g}"
                lines.append(
                    f"| {row['workload']} | {row['name']} | {size}x{size} | {xla} | {analytic} |"
                )
            lines.append("")
    ratios = attention_ratios(records)
    if ratios:
        lines += [
            "## Attention networks: throughput over the plain twin's (SE/plain, SK/plain)",
            "",
        ]
        lines += _table(_pivot(ratios, MODEL_WORKLOADS, lambda r: f"{r['ratio']:.2f}{_mark(r)}"))
    overheads = nnx_overheads(records)
    if overheads:
        lines += [
            "## NNX networks: time per step over linen `jit`'s (1.00: no overhead)",
            "",
            "The se_flax.nnx twin with the same weights and inputs: `nnx_jit` calls an `nnx.jit` "
            "function of the model (and optimizer) each step, `nnx_tree` the same with "
            "`graph=False` (modules flattened as pytrees); `nnx_split` splits them once and "
            "calls a pure `jax.jit` function of their state. Each cell: the ratio of median "
            "times per step, then their difference.",
            "",
        ]
        lines += _table(
            _pivot(
                overheads,
                MODEL_WORKLOADS,
                lambda r: f"{r['ratio']:.2f}, {r['extra_s'] * 1e3:+.3g} ms{_mark(r)}",
            )
        )
    lines += ["## First call (compile) in seconds", ""]
    lines += [*_pivot(records, [r["workload"] for r in records], _compile_cell), ""]
    rows = results["targets"]
    if rows and quick:
        lines += ["## Ratios (smoke run: no targets judged)", ""]
        table = ["| ratio | case | value |", "|---|---|---|"]
        table += [
            f"| {row['target']} | {row['case']} | {row['value']:.2f}{_mark(row)} |" for row in rows
        ]
        lines += _table(table)
    elif rows:
        lines += ["## Targets (reported, not asserted)", ""]
        table = ["| target | case | value | goal | met |", "|---|---|---|---|---|"]
        for row in rows:
            goal = "" if row["goal"] is None else f"{row['goal']:.3g}"
            met = {None: "", True: "yes", False: "**no**"}[row["met"]]
            table.append(
                f"| {row['target']} | {row['case']} | {row['value']:.2f}{_mark(row)} | {goal} "
                f"| {met} |"
            )
        lines += _table(table)
    if roofline.get("records"):
        lines += [
            "## Matmul roofline: GFLOP/s per framework, dtype and shape",
            "",
            roofline["method"] + ".",
            "",
        ]
        table = ["| framework | dtype | matmul | GFLOP/s | ms per call |", "|---|---|---|---|---|"]
        for r in roofline["records"]:
            if "GFLOPs" not in r:
                cells = f"{r.get('error', 'error')} | "
            else:
                time = f"{r['median_s'] * 1e3:.3g} ±{r['iqr_s'] * 1e3:.2g}"
                cells = f"{r['GFLOPs']:.4g}{_mark(r)} | {time}"
            table.append(f"| {r['framework']} | {r['dtype']} | {_shape(r['shape'])} | {cells} |")
        lines += _table(table)
    errors = [r for r in records if r.get("error")]
    if errors:
        lines += ["## Errors", ""]
        lines += [
            f"- {r['workload']} {r['name']} {r['mode']} {r['dtype']}: {r['error']}" for r in errors
        ]
        lines.append("")
    return "\n".join(lines)


def plots(results: dict, out: Path) -> list[Path]:
    """PNG plots: SE floor share per stage, SE batch sweep, SK time per stage, network
    throughput, attention networks' throughput over their plain twins', convolution times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in results["records"] if r.get("median_s") is not None]
    written = []
    dtypes = sorted({r["dtype"] for r in records})
    modes = [m for m in MODES if any(r["mode"] == m for r in records)]
    se_batch = results["settings"]["se_batch"]

    def grid(workloads):
        fig, axes = plt.subplots(
            len(workloads),
            len(dtypes),
            squeeze=False,
            figsize=(5.5 * len(dtypes), 3.6 * len(workloads)),
        )
        return fig, axes

    def color(mode: str) -> str:  # one colour per mode in every plot
        return f"C{modes.index(mode)}"

    def bars(ax, groups, value):
        values = {m: [value(g, m) for g in groups] for m in modes}
        shown = [m for m in modes if any(y is not None for y in values[m])]  # NNX: networks only
        width = 0.8 / max(len(shown), 1)
        for j, mode in enumerate(shown):
            xs = [i + (j - (len(shown) - 1) / 2) * width for i in range(len(groups))]
            ax.bar(xs, [y or 0 for y in values[mode]], width, label=mode, color=color(mode))
        ax.set_xticks(range(len(groups)), groups)

    def finish(fig, axes, name: str) -> None:
        handles = {}  # every mode drawn in any panel, in MODES order
        for ax in axes.flat:
            handles.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
        if handles:
            shown = [m for m in modes if m in handles]
            axes[0][0].legend([handles[m] for m in shown], shown, fontsize=8)
        fig.tight_layout()
        written.append(out / name)
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    index = _index(records)
    se_work = [w for w in SE_WORKLOADS if any(r["workload"] == w for r in records)]
    if se_work:
        fig, axes = grid(se_work)
        for i, w in enumerate(se_work):
            for j, dtype in enumerate(dtypes):
                ax = axes[i][j]
                stages = sorted(
                    {r["name"] for r in records if r["workload"] == w and r["batch"] == se_batch}
                )

                def value(stage, mode, w=w, dtype=dtype):
                    r = index.get((w, mode, dtype, stage, se_batch))
                    return r and 100 * r["floor_fraction"]

                bars(ax, stages, value)
                ax.axhline(100, color="k", lw=0.8, ls="--")
                ax.set_title(f"{w}, {dtype}, batch {se_batch}", fontsize=10)
                ax.set_ylabel("% of copy bandwidth (floor)")
        finish(fig, axes, "se_block.png")

        sweep = results["settings"]["sweep_stage"]
        fig, axes = grid(se_work)
        for i, w in enumerate(se_work):
            for j, dtype in enumerate(dtypes):
                ax = axes[i][j]
                for mode in modes:
                    pts = sorted(
                        (r["batch"], r["achieved_GBps"])
                        for r in records
                        if (r["workload"], r["mode"], r["dtype"], r["name"])
                        == (w, mode, dtype, sweep)
                    )
                    if pts:
                        ax.plot(*zip(*pts, strict=True), marker="o", label=mode, color=color(mode))
                ax.axhline(results["bandwidth"]["median_GBps"], color="k", lw=0.8, ls="--")
                ax.set_xscale("log", base=2)
                ax.set_xlabel("batch")
                ax.set_ylabel("floor bytes / time (GB/s)")
                ax.set_title(f"{w}, {dtype}, {sweep}", fontsize=10)
        finish(fig, axes, "se_batch_sweep.png")

    sk_work = [w for w in SK_WORKLOADS if any(r["workload"] == w for r in records)]
    if sk_work:
        sk_batch = results["settings"]["sk_batch"]
        fig, axes = grid(sk_work)
        for i, w in enumerate(sk_work):
            for j, dtype in enumerate(dtypes):
                ax = axes[i][j]
                stages = sorted({r["name"] for r in records if r["workload"] == w})

                def value(stage, mode, w=w, dtype=dtype):
                    r = index.get((w, mode, dtype, stage, sk_batch))
                    return r and 1e3 * r["median_s"]

                bars(ax, stages, value)
                ax.set_title(f"{w}, {dtype}, batch {sk_batch}", fontsize=10)
                ax.set_ylabel("ms per call")
        finish(fig, axes, "sk_block.png")

    nets = [w for w in MODEL_WORKLOADS if any(r["workload"] == w for r in records)]
    if nets:
        fig, axes = grid(nets)
        for i, w in enumerate(nets):
            for j, dtype in enumerate(dtypes):
                ax = axes[i][j]
                names = sorted({r["name"] for r in records if r["workload"] == w})

                def value(name, mode, w=w, dtype=dtype):
                    r = index.get((w, mode, dtype, name, results["settings"]["model_batch"]))
                    return r and r["throughput"]

                bars(ax, names, value)
                ax.set_title(f"{w}, {dtype}", fontsize=10)
                ax.set_ylabel("images / s")
        finish(fig, axes, "networks.png")

    ratios = {
        (r["workload"], r["mode"], r["dtype"], r["name"]): r for r in attention_ratios(records)
    }
    ratio_work = [w for w in MODEL_WORKLOADS if any(k[0] == w for k in ratios)]
    if ratio_work:
        fig, axes = grid(ratio_work)
        for i, w in enumerate(ratio_work):
            for j, dtype in enumerate(dtypes):
                ax = axes[i][j]
                pairs = sorted({k[3] for k in ratios if k[0] == w})

                def value(pair, mode, w=w, dtype=dtype):
                    r = ratios.get((w, mode, dtype, pair))
                    return r and r["ratio"]

                bars(ax, pairs, value)
                ax.axhline(1, color="k", lw=0.8, ls="--")
                ax.set_title(f"{w}, {dtype}", fontsize=10)
                ax.set_ylabel("throughput / plain twin's")
        finish(fig, axes, "attention.png")

    conv_work = [w for w in CONV_WORKLOADS if any(r["workload"] == w for r in records)]
    if conv_work:
        conv_records = [r for r in records if r["workload"] in CONV_WORKLOADS]
        names = list(dict.fromkeys(r["name"] for r in conv_records))
        fig, axes = plt.subplots(
            len(conv_work),
            1,
            squeeze=False,
            figsize=(max(6.0, 0.9 * len(names)), 4.2 * len(conv_work)),
        )
        for i, w in enumerate(conv_work):
            ax = axes[i][0]
            times = {
                (r["name"], r["mode"]): 1e3 * r["median_s"]
                for r in conv_records
                if r["workload"] == w and r["dtype"] == "float32"
            }
            bars(ax, names, lambda name, mode, times=times: times.get((name, mode)))
            ax.set_yscale("log")
            ax.tick_params(axis="x", labelrotation=60, labelsize=7)
            ax.set_title(f"{w}, float32, batch {results['settings']['conv_batch']}", fontsize=10)
            ax.set_ylabel("ms per call (log)")
        finish(fig, axes, "convs.png")
    return written
