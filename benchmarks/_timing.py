"""Timing: first call (compile) apart, warm-up, calibrated repeats, median and spread."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Runner:
    """How to run one case, built by a framework module.

    ``step(i)`` launches call ``i`` (rotating through its input slots) and returns what
    ``sync`` must wait for; ``sync(outputs)`` blocks until all of them are computed
    (``block_until_ready``, or the device synchronised); ``refresh()`` does untimed
    housekeeping between repeats (refilling donated inputs). ``max_number`` caps the calls
    per repeat (donated inputs are chained through at most that many calls). ``budget_s``,
    where set, bounds the time of a case whose calls are slow (XLA's grouped convolution
    backward: seconds per call): its warm-up stops after one call when that call took a
    quarter of the budget, and its repeats are cut so that they fit in the budget, to no fewer
    than 3.
    """

    step: Callable[[int], Any]
    sync: Callable[[list], None]
    refresh: Callable[[], None] = lambda: None
    max_number: int = 1000
    extra: dict = field(default_factory=dict)
    budget_s: float | None = None


def measure(runner: Runner, repeats: int, min_time: float, warmup_time: float) -> dict:
    """Times ``runner``: its first call, then ``repeats`` timed repeats after a warm-up.

    Each repeat times ``number`` calls back to back and a final sync, with ``number``
    chosen in the warm-up so that a repeat lasts at least ``min_time`` seconds.

    Returns:
        ``compile_s`` (wall time of the first call: tracing, compilation, first run),
        ``median_s`` and ``iqr_s`` (per call, over repeats), ``min_s``, ``repeats`` (fewer
        than asked where ``runner.budget_s`` cut them), ``number``.
    """
    counter = 0

    def run(n: int) -> float:
        nonlocal counter
        start = time.perf_counter()
        outputs = []
        for _ in range(n):
            outputs.append(runner.step(counter))
            counter += 1
        runner.sync(outputs)
        return time.perf_counter() - start

    runner.refresh()
    compile_s = run(1)
    # Warm-up: at least two calls and warmup_time seconds; it also calibrates `number`.
    runner.refresh()
    warm, calls = 0.0, 0
    budget = runner.budget_s
    while calls < 2 or warm < warmup_time:
        warm += run(1)
        calls += 1
        if budget is not None and warm >= max(warmup_time, budget / 4):
            break  # a slow call: one warm-up call is enough
    per_call = warm / calls
    number = max(1, min(runner.max_number, math.ceil(min_time / max(per_call, 1e-9))))
    if budget is not None:
        fit = math.floor(budget / (per_call * number))
        repeats = max(min(repeats, 3), min(repeats, fit))
    times = []
    for _ in range(repeats):
        runner.refresh()
        times.append(run(number) / number)
    q25, median, q75 = np.percentile(times, [25, 50, 75])
    return {
        "compile_s": compile_s,
        "median_s": float(median),
        "iqr_s": float(q75 - q25),
        "min_s": float(min(times)),
        "repeats": repeats,
        "number": number,
    }


# A measurement whose interquartile range exceeds this share of its median is noisy: flagged in
# the tables and results.json (and, in a full run, measured once more).
NOISE_LIMIT = 0.25


def relative_iqr(timing: dict) -> float:
    """Interquartile range over median of a measurement (0 where either is missing)."""
    median, iqr = timing.get("median_s"), timing.get("iqr_s")
    return iqr / median if median and iqr is not None else 0.0


def is_noisy(timing: dict) -> bool:
    return relative_iqr(timing) > NOISE_LIMIT


def less_noisy(first: dict, second: dict) -> dict:
    """The measurement to keep after a noisy ``first`` was repeated as ``second``: the one with
    the smaller relative IQR (``first`` on a tie), marked ``remeasured``, keeping ``first``'s
    ``compile_s`` (the second ran compiled) and both measurements' median and IQR."""
    kept = second if relative_iqr(second) < relative_iqr(first) else first
    return {
        **kept,
        "compile_s": first["compile_s"],
        "remeasured": True,
        "kept": "second" if kept is second else "first",
        "measurements": [{k: t[k] for k in ("median_s", "iqr_s")} for t in (first, second)],
    }


def measure_checked(
    runner: Runner, repeats: int, min_time: float, warmup_time: float, remeasure: bool
) -> dict:
    """``measure``, and where the result is noisy and ``remeasure`` is set, ``measure`` once
    more on the same (compiled) runner, keeping the less noisy of the two (``less_noisy``)."""
    timing = measure(runner, repeats, min_time, warmup_time)
    if remeasure and is_noisy(timing):
        timing = less_noisy(timing, measure(runner, repeats, min_time, warmup_time))
    return timing
