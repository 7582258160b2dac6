"""``python -m benchmarks.profile``: where a network's time goes, by kind of operation, in JAX
and in PyTorch, on the same threads, weights and inputs as the benchmark.

JAX: a ``jax.profiler`` trace of the compiled program (the benchmark's ``jit`` case), each op
classified from the optimized HLO (a fusion by what its computation holds: a dot, a
convolution, a reduction or elementwise ops only; a custom call by its target, se_flax's
convolution kernels by their ``groups`` attribute). PyTorch: ``torch.profiler``'s self
times per operator (``record_shapes``: a convolution is classified by its weight's shape and
groups); under ``torch.compile`` the code inductor generated (its fused elementwise and
reduction kernels) is one row. The per-kind times are sums over the ops of ``--calls`` calls,
divided by the calls: ops that run concurrently on different threads both count, so a sum
may exceed the wall time, which is given apart (median of 5 or more calls, not profiled).
Each case runs in a process of its own.

Example: ``python -m benchmarks.profile --models regnety_016 --workloads infer --modes
jit,channels_last,compile --out /tmp/profile``.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._cases import EXTRA_MODELS, MODEL_WORKLOADS, MODES, Case

# The kinds of operation, in the order of the tables.
MATMUL = "1x1 convolutions and dense layers"
GROUPED = "grouped and depthwise convolutions"
CONV = "other convolutions"
ELEMENTWISE = "elementwise (norms, activations, gates, adds)"
REDUCTION = "reductions and pooling"
COMPILED = "torch.compile's generated kernels"
OTHER = "other"
KINDS = (MATMUL, GROUPED, CONV, ELEMENTWISE, REDUCTION, COMPILED, OTHER)
# Modes profiled: the linen `jit` network and PyTorch's three.
PROFILED_MODES = ("jit", "eager", "channels_last", "compile")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.*?) ([a-z][a-z0-9-]*)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) .*\{$")
# Opcodes whose thunks run other computations' ops (not counted twice).
_CONTROL = {"while", "call", "conditional", "async-start", "async-done"}
# Opcodes that compute nothing: a fusion of only these moves data.
_MOVEMENT = {
    "parameter",
    "constant",
    "tuple",
    "get-tuple-element",
    "bitcast",
    "broadcast",
    "reshape",
    "copy",
    "transpose",
    "slice",
    "dynamic-slice",
    "dynamic-update-slice",
    "pad",
    "concatenate",
    "reverse",
    "iota",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    p.add_argument("--models", default="regnety_016", help="comma-separated registry names")
    p.add_argument("--workloads", default="infer", help="comma-separated: infer, train")
    modes = ", ".join(PROFILED_MODES)
    p.add_argument("--modes", default=",".join(PROFILED_MODES), help=f"comma-separated: {modes}")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--calls", type=int, default=5, help="profiled calls, after 3 warm-up calls")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=12, help="slowest ops listed per case")
    p.add_argument("--out", type=Path, default=None, help="writes results.md and results.json")
    p.add_argument("--one-case", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for field, allowed in (("workloads", MODEL_WORKLOADS), ("modes", PROFILED_MODES)):
        values = [v for v in getattr(args, field).split(",") if v]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            p.error(f"--{field}: {', '.join(bad) or 'nothing'} not in {', '.join(allowed)}")
        setattr(args, field, values)
    args.models = [m for m in args.models.split(",") if m]
    from se_common import list_models

    known = set(list_models()) | set(EXTRA_MODELS)
    for name in args.models or [""]:
        if name not in known:
            p.error(f"--models: {name!r} is not a registered model (se_common.list_models())")
    for name in ("batch", "image_size", "calls", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


# ------------------------------------------------------------------------------------------
# JAX: the optimized HLO's ops by kind, and a trace's events per op.


def hlo_kinds(hlo: str) -> dict[str, str]:
    """Kind of each instruction of an optimized HLO module (``compiled.as_text()``), by name."""
    bodies: dict[str, list[tuple[str, str, str, str]]] = collections.defaultdict(list)
    current = None
    for line in hlo.splitlines():
        if found := _COMPUTATION.match(line):
            current = found.group(1)
        elif current and (found := _INSTRUCTION.match(line)):
            bodies[current].append(found.groups())
    kinds = {}
    for body in bodies.values():
        for name, _type, opcode, rest in body:
            if opcode == "fusion":
                called = re.search(r"calls=%([^,\s]+)", rest)
                ops = {op for _, _, op, _ in bodies.get(called.group(1), [])} if called else set()
                kinds[name] = _kind_of_ops(ops)
            elif opcode == "custom-call":
                kinds[name] = _custom_call_kind(rest)
            elif opcode in _CONTROL:
                continue  # their events span the ops of their bodies, which count themselves
            else:
                kinds[name] = _kind_of_ops({opcode})
    return kinds


def _kind_of_ops(ops: set[str]) -> str:
    """Kind of a fusion (or a lone op) from the opcodes its computation holds."""
    if "dot" in ops:
        return MATMUL
    if "convolution" in ops:
        return CONV
    if ops & {"reduce", "reduce-window", "select-and-scatter"}:
        return REDUCTION
    if ops - _MOVEMENT:
        return ELEMENTWISE
    return OTHER  # copies, transposes, slices, pads: data movement only


def _custom_call_kind(rest: str) -> str:
    """se_flax's convolution kernels: grouped (groups > 1) or not (stems, first stages)."""
    target = re.search(r'custom_call_target="([^"]+)"', rest)
    if not target or not target.group(1).startswith("SeFlaxGroupedConv"):
        return OTHER
    groups = re.search(r"groups = (\d+)", rest)
    return GROUPED if groups and int(groups.group(1)) > 1 else CONV


def trace_op_times(trace_dir: str, names: dict[str, str]) -> collections.Counter:
    """Total duration in seconds per op name over a ``jax.profiler`` trace, for the ops of
    ``names`` (other events: Python, the runtime's own)."""
    from jax.profiler import ProfileData

    times: collections.Counter = collections.Counter()
    for path in Path(trace_dir).rglob("*.xplane.pb"):
        for plane in ProfileData.from_file(str(path)).planes:
            for line in plane.lines:
                for event in line.events:
                    if event.name in names:
                        times[event.name] += event.duration_ns * 1e-9
    return times


# ------------------------------------------------------------------------------------------
# PyTorch: profiler self times by kind.


def torch_kind(name: str, shapes: list) -> str:
    """Kind of one PyTorch profiler event (``shapes``: its ``input_shapes``): a convolution by
    its weight's shape and groups (input channels over the weight's)."""
    if "CompiledFxGraph" in name or "Torch-Compiled Region" in name:
        return COMPILED
    if "conv" in name:
        x, w = ((shapes[1:3] if "backward" in name else shapes[0:2]) + [[], []])[:2]
        if len(x) != 4 or len(w) != 4 or not w[1]:
            return CONV
        if x[1] // w[1] > 1:
            return GROUPED
        return MATMUL if list(w[2:]) == [1, 1] else CONV
    if re.fullmatch(r"aten::(mm|addmm|bmm|matmul|linear|baddbmm|addmv|mv)", name):
        return MATMUL
    if re.fullmatch(r"aten::\w*(pool\w*|mean|sum|amax|max|var\w*|std\w*)", name):
        return REDUCTION
    if name in _TORCH_BOOKKEEPING or not name.startswith("aten::"):
        return OTHER
    return ELEMENTWISE


# PyTorch operators that allocate, view or copy (no arithmetic): "other".
_TORCH_BOOKKEEPING = {
    f"aten::{op}"
    for op in (
        "empty",
        "empty_like",
        "empty_strided",
        "resize_",
        "as_strided",
        "as_strided_",
        "view",
        "reshape",
        "_reshape_alias",
        "t",
        "transpose",
        "permute",
        "expand",
        "contiguous",
        "clone",
        "copy_",
        "to",
        "_to_copy",
        "detach",
        "detach_",
        "zero_",
        "fill_",
        "zeros",
        "zeros_like",
        "ones_like",
        "select",
        "slice",
        "unsqueeze",
        "squeeze",
        "flatten",
        "lift_fresh",
        "alias",
        "result_type",
        "item",
        "_local_scalar_dense",
        "set_",
    )
}


# ------------------------------------------------------------------------------------------


def profile_jax(runner, calls: int) -> dict:
    """Times per op kind of a JAX runner's calls (its ``extra['hlo']`` classifies the ops)."""
    import jax

    wall = _wall(runner, calls)
    kinds = hlo_kinds(runner.extra["hlo"]())
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            runner.sync([runner.step(i) for i in range(calls)])
        times = trace_op_times(trace_dir, kinds)
    by_kind = collections.Counter()
    for name, t in times.items():
        by_kind[kinds[name]] += t / calls
    ops = [(name, kinds[name], t / calls) for name, t in times.most_common()]
    return {"wall_s": wall, "kinds": dict(by_kind), "ops": ops}


def profile_torch(runner, calls: int) -> dict:
    """Times per op kind of a PyTorch runner's calls (profiler self times)."""
    from torch.profiler import profile

    wall = _wall(runner, calls)
    with profile(record_shapes=True) as prof:
        runner.sync([runner.step(i) for i in range(calls)])
    by_kind: collections.Counter = collections.Counter()
    ops: collections.Counter = collections.Counter()
    for event in prof.events():
        shapes = [list(s) if isinstance(s, list | tuple) else [] for s in event.input_shapes or []]
        kind = torch_kind(event.name, shapes)
        t = event.self_cpu_time_total * 1e-6 / calls
        by_kind[kind] += t
        ops[(event.name, kind)] += t
    return {
        "wall_s": wall,
        "kinds": dict(by_kind),
        "ops": [(name, kind, t) for (name, kind), t in ops.most_common()],
    }


def _wall(runner, calls: int) -> float:
    """Median wall time of a call, not profiled (at least 5 calls), after 3 warm-up calls."""
    for i in range(3):
        runner.sync([runner.step(i)])
    times = []
    for i in range(max(calls, 5)):
        start = time.perf_counter()
        runner.sync([runner.step(i)])
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def report(results: list[dict], top: int) -> str:
    """Markdown: per network and workload, ms per call by kind (a column per mode), then each
    case's slowest ops."""
    lines: list[str] = []
    groups = dict.fromkeys((r["model"], r["workload"]) for r in results)
    for model, workload in groups:
        cases = [r for r in results if (r["model"], r["workload"]) == (model, workload)]
        lines += [f"### {model}, {workload} (ms per call)", ""]
        lines.append("| kind of operation | " + " | ".join(r["mode"] for r in cases) + " |")
        lines.append("|---" * (len(cases) + 1) + "|")
        for kind in KINDS:
            if any(r["kinds"].get(kind) for r in cases):
                cells = [f"{r['kinds'].get(kind, 0) * 1e3:.1f}" for r in cases]
                lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        sums = [f"{sum(r['kinds'].values()) * 1e3:.1f}{_mark(r)}" for r in cases]
        walls = [f"{r['wall_s'] * 1e3:.1f}" for r in cases]
        lines.append("| sum of the ops | " + " | ".join(sums) + " |")
        lines.append("| wall time per call | " + " | ".join(walls) + " |")
        for r in cases:
            lines += ["", f"Slowest ops, {r['label']}:", ""]
            lines += [f"- {t * 1e3:.2f} {name} ({kind})" for name, kind, t in r["ops"][:top]]
        lines.append("")
    if any(_mark(r) for r in results):
        lines.append(
            f"†: the profiled calls' ops sum to more than {DISTORTED:g}x or less than "
            f"1/{DISTORTED:g} of the unprofiled wall time (the profiler's overhead, noise, or "
            "for JAX ops run concurrently): compare that column's shares, not its times."
        )
    return "\n".join(lines)


# A case whose ops sum to more than this factor of its wall time, or less than its inverse,
# is marked in the report.
DISTORTED = 1.25


def _mark(result: dict) -> str:
    ratio = sum(result["kinds"].values()) / result["wall_s"]
    return "†" if not 1 / DISTORTED <= ratio <= DISTORTED else ""


def profile_case(args: argparse.Namespace) -> dict:
    """Profiles the one case of ``args`` (one model, workload and mode) in this process."""
    from benchmarks._cli import _set_threads

    _set_threads(args.threads)
    import torch

    from benchmarks import _jax, _torch

    torch.set_num_threads(args.threads)
    (name,), (workload,), (mode,) = args.models, args.workloads, args.modes
    framework = MODES[mode][0]
    shape = (args.batch, args.image_size, args.image_size, 3)
    case = Case(workload, framework, mode, "float32", name, args.batch, shape)
    runner = (_jax.runner if framework == "jax" else _torch.runner)(case, 2, args.seed)
    result = (profile_jax if framework == "jax" else profile_torch)(runner, args.calls)
    return {
        "model": name,
        "workload": workload,
        "mode": mode,
        "label": f"{name} {workload} {mode}",
    } | result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one_case is not None:  # a case's own process, started below
        args.one_case.write_text(json.dumps(profile_case(args)))
        return 0
    results = []
    options = ["--batch", str(args.batch), "--image-size", str(args.image_size), "--calls"]
    options += [str(args.calls), "--threads", str(args.threads), "--seed", str(args.seed)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "case.json"
        for workload in args.workloads:
            for name in args.models:
                for mode in args.modes:
                    # Each case in a fresh process: no state (threads, caches, memory) from
                    # the cases before it.
                    case = ["--models", name, "--workloads", workload, "--modes", mode]
                    command = [sys.executable, "-m", "benchmarks.profile", *case, *options]
                    subprocess.run([*command, "--one-case", str(out)], check=True)
                    results.append(json.loads(out.read_text()))
                    wall = results[-1]["wall_s"] * 1e3
                    print(f"profiled {results[-1]['label']}: {wall:.1f} ms a call", flush=True)
    text = report(results, args.top)
    print(text)
    if args.out is not None:
        from benchmarks._cli import _set_threads

        _set_threads(args.threads)
        from benchmarks import _machine

        args.out.mkdir(parents=True, exist_ok=True)
        machine = _machine.describe(args.threads)
        command = "python -m benchmarks.profile " + " ".join(sys.argv[1:] if argv is None else argv)
        header = (
            f"# Profile\n\n- command: `{command}`\n- machine: {machine['cpu']}, "
            f"{args.threads} threads, batch {args.batch}, float32; {machine['date']}; "
            f"git {machine['git_commit']}\n\n"
        )
        (args.out / "results.md").write_text(header + text + "\n")
        payload = {"command": command, "machine": machine, "results": results}
        (args.out / "results.json").write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
