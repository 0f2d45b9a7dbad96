"""The ``optimal`` policy's solver: fast Lagrangian path against the exact MILP, objective gap and time.

    python bench/optimal_gap.py                          # 100k requests, then the 1M timing rows
    python bench/optimal_gap.py --requests 20000 --seed 3 --no-million
    python bench/optimal_gap.py --trace PATH             # resample another trace for the paper instances

Instances:

``paper``  Resamples the Azure LLM code trace shipped in ``examples/traces/`` (ContextTokens and
           GeneratedTokens; ``--trace`` for another file with those columns) to N requests and predicts
           energy and runtime with the shipped profiles ``llama-2-7b-chat.m1-pro.wilkins2024`` (low power,
           4 concurrent slots) and ``llama-2-7b-chat.swing-a100.wilkins2024`` (GPU, capacity not limiting).
           Cost is energy over the mean cheapest energy (λ = 1). The deadline is set so the low-power target
           can do 25 %, 50 % or 75 % of the work it would take if capacity were unlimited, so its capacity
           binds.
``synth3`` Three targets with linear prefill/decode runtime models and constant power (a low-power node, a
           mid GPU, a big GPU), each the cheapest for some requests, log-normal token counts (many classes).
           The low-power and mid targets get 50 % / 75 % (or 25 % / 50 %) of the work they would take; the big
           GPU has enough room for what they shed.

Columns: requests, classes, deadline case; the exact objective (``solve(method="milp")``: proven within
1e-6 of the optimum, by the fast path's own bound where that already suffices, else by HiGHS after the
fast path's reduced-cost fixing) and the gap it proved; the fast objective (``solve(method="fast")``), its
excess over the exact one and its own proven gap to its Lagrangian bound; wall times (grouping requests into
classes not included; it is timed separately on the 1M rows). Targets: fast path within 0.5 % of the exact
optimum at 100k requests, and well under 2 s for 1M requests with 3 targets.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from _common import AZURE, parse_with_trace, trace_parser

LOWPOWER = "llama-2-7b-chat.m1-pro.wilkins2024"
GPU = "llama-2-7b-chat.swing-a100.wilkins2024"
LOWPOWER_SLOTS = 4

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Instance:
    name: str
    case: str
    requests: int
    cost: FloatArray
    runtime_s: FloatArray
    counts: IntArray
    capacity_s: FloatArray


def group(n_in: IntArray, n_out: IntArray) -> tuple[IntArray, IntArray, IntArray]:
    """Distinct (prompt, output) token pairs: their token counts and how many requests each has."""
    key = n_in.astype(np.int64) * 1_000_000 + n_out.astype(np.int64)
    uniq, counts = np.unique(key, return_counts=True)
    return uniq // 1_000_000, uniq % 1_000_000, counts.astype(np.int64)


def azure_tokens(n: int, rng: np.random.Generator, path: Path = AZURE) -> tuple[IntArray, IntArray]:
    trace = pd.read_csv(path, usecols=["ContextTokens", "GeneratedTokens"])
    rows = rng.integers(0, len(trace), size=n)
    return (
        trace["ContextTokens"].to_numpy(dtype=np.int64)[rows],
        trace["GeneratedTokens"].to_numpy(dtype=np.int64)[rows],
    )


def paper_costs(n_in: IntArray, n_out: IntArray) -> tuple[FloatArray, FloatArray]:
    from hpcqueue.planner.costs import CostModel
    from hpcqueue.profiles.store import find_profile

    energy, runtime = [], []
    for name in (LOWPOWER, GPU):
        prediction = CostModel.from_profile(find_profile(name)).predict(n_in, n_out)
        energy.append(prediction.energy_j)
        runtime.append(prediction.runtime_s)
    return np.stack(energy, axis=1), np.stack(runtime, axis=1)


def normalised(energy_j: FloatArray, counts: IntArray) -> FloatArray:
    """λ = 1: cost is energy over the request-weighted mean of each class's cheapest energy."""
    return energy_j / float(np.average(energy_j.min(axis=1), weights=counts))


def argmin_need_s(cost: FloatArray, runtime_s: FloatArray, counts: IntArray) -> FloatArray:
    """Seconds of work each target gets when every class goes to its cheapest target."""
    choice = cost.argmin(axis=1)
    per = runtime_s[np.arange(len(counts)), choice] * counts
    return np.bincount(choice, weights=per, minlength=cost.shape[1]).astype(float)


def paper_instances(n: int, seed: int, trace: Path = AZURE) -> list[Instance]:
    rng = np.random.default_rng(seed)
    n_in, n_out, counts = group(*azure_tokens(n, rng, trace))
    energy, runtime = paper_costs(n_in, n_out)
    cost = normalised(energy, counts)
    need = argmin_need_s(cost, runtime, counts)
    out = []
    for share in (0.25, 0.50, 0.75):
        deadline_s = share * need[0] / LOWPOWER_SLOTS
        capacity = np.array([LOWPOWER_SLOTS * deadline_s, np.inf])
        out.append(
            Instance(
                "paper", f"lp {share:.0%} ({deadline_s / 3600:.2f} h)", n, cost, runtime, counts, capacity
            )
        )
    return out


# runtime_s = a + b·n_in + c·n_out and constant power (W), per synthetic target
SYNTH = {
    "lowpower": (0.05, 0.010, 0.080, 40.0),
    "mid-gpu": (0.50, 0.0004, 0.030, 200.0),
    "big-gpu": (1.00, 0.0001, 0.015, 330.0),
}


def synth_tokens(n: int, rng: np.random.Generator) -> tuple[IntArray, IntArray]:
    n_in = np.clip(np.rint(rng.lognormal(6.5, 1.3, n)), 1, 8192).astype(np.int64)
    n_out = np.clip(np.rint(rng.lognormal(4.0, 1.2, n)), 1, 2048).astype(np.int64)
    return n_in, n_out


def synth_instances(n: int, seed: int, shares: list[tuple[float, float]]) -> list[Instance]:
    rng = np.random.default_rng(seed + 1)
    n_in, n_out, counts = group(*synth_tokens(n, rng))
    runtime = np.stack([a + b * n_in + c * n_out for a, b, c, _ in SYNTH.values()], axis=1)
    energy = runtime * np.array([power for *_, power in SYNTH.values()])
    cost = normalised(energy, counts)
    need = argmin_need_s(cost, runtime, counts)
    out = []
    for lp_share, mid_share in shares:
        capacity = np.array([lp_share * need[0], mid_share * need[1], 0.0])
        # the big GPU: its own share plus room for everything the others shed, at its runtimes, and 10 % more
        shed = (1 - lp_share) * need[0] + (1 - mid_share) * need[1]
        big_per_s = float(runtime[:, 2] @ counts) / float(runtime.min(axis=1) @ counts)
        capacity[2] = 1.1 * (need[2] + shed * big_per_s)
        out.append(
            Instance("synth3", f"lp {lp_share:.0%} mid {mid_share:.0%}", n, cost, runtime, counts, capacity)
        )
    return out


@dataclass(frozen=True)
class Row:
    instance: Instance
    exact_obj: float | None
    exact_s: float | None
    exact_proven: bool
    exact_gap: float | None
    fast_obj: float
    fast_gap: float
    fast_s: float
    fast_method: str


def run(instance: Instance, exact: bool, time_limit_s: float) -> Row:
    from hpcqueue.planner.optimal import solve

    args = (instance.cost, instance.runtime_s, instance.counts, instance.capacity_s)
    t0 = time.perf_counter()
    fast = solve(*args, method="fast")
    fast_s = time.perf_counter() - t0
    loads = fast.loads_s(instance.runtime_s)
    if np.any(loads > instance.capacity_s * (1 + 1e-5)):
        raise SystemExit(f"fast path broke a capacity on {instance.name} {instance.case}: {loads}")
    exact_obj = exact_s = exact_gap = None
    proven = False
    if exact:
        t0 = time.perf_counter()
        best = solve(*args, method="milp", time_limit_s=time_limit_s)
        exact_s = time.perf_counter() - t0
        exact_obj, proven, exact_gap = best.objective, best.exact, best.gap
    return Row(instance, exact_obj, exact_s, proven, exact_gap, fast.objective, fast.gap, fast_s, fast.method)


def print_rows(rows: list[Row]) -> None:
    header = (
        f"{'instance':<8} {'requests':>10} {'classes':>8} {'deadline case':<22} {'exact obj':>13} "
        f"{'its gap %':>9} {'fast obj':>13} {'vs exact %':>10} {'vs bound %':>10} "
        f"{'exact s':>8} {'fast s':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        i = r.instance
        exact = "—" if r.exact_obj is None else f"{r.exact_obj:,.3f}" + ("" if r.exact_proven else "*")
        versus = "—" if r.exact_obj is None else f"{100 * (r.fast_obj / r.exact_obj - 1):.5f}"
        exact_s = "—" if r.exact_s is None else f"{r.exact_s:.2f}"
        exact_gap = "—" if r.exact_gap is None else f"{100 * r.exact_gap:.5f}"
        print(
            f"{i.name:<8} {i.requests:>10,} {len(i.counts):>8,} {i.case:<22} {exact:>13} {exact_gap:>9} "
            f"{r.fast_obj:>13,.3f} {versus:>10} {100 * r.fast_gap:>10.5f} {exact_s:>8} {r.fast_s:>7.2f}"
        )


def main() -> None:
    parser = trace_parser(__doc__, requests=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=120.0, help="MILP time limit per instance (s)")
    parser.add_argument("--no-million", action="store_true", help="skip the 1M-request timing rows")
    args = parse_with_trace(parser, "trace resampled for the paper instances")

    print(
        f"optimal-policy solver (cpus: {len(os.sched_getaffinity(0))}, python {sys.version.split()[0]}, "
        f"seed {args.seed}); * = not proven within 1e-6 (time limit)"
    )
    rows = [
        run(inst, True, args.time_limit) for inst in paper_instances(args.requests, args.seed, args.trace)
    ]
    rows += [
        run(inst, True, args.time_limit)
        for inst in synth_instances(args.requests, args.seed, [(0.5, 0.75), (0.25, 0.5)])
    ]
    print_rows(rows)
    if args.no_million:
        return

    n = 1_000_000
    print(f"\n{n:,} requests (grouping into classes timed separately)")
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    group(*synth_tokens(n, rng))
    group_s = time.perf_counter() - t0
    million = [run(paper_instances(n, args.seed, args.trace)[1], True, args.time_limit)]
    million += [run(synth_instances(n, args.seed, [(0.5, 0.75)])[0], True, args.time_limit)]
    print_rows(million)
    print(f"grouping {n:,} synthetic requests into classes (np.unique on token pairs): {group_s:.2f} s")


if __name__ == "__main__":
    main()
