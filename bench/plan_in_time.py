"""Planning where and when at scale: 100k requests over 3 sites × 2 targets × 14 hourly slots, timed.

    HPCQUEUE_GRID_DATA=/path/to/grid python bench/plan_in_time.py
    python bench/plan_in_time.py --grid-data /path/to/grid --requests 20000 --repeat 1

The requests: the Azure LLM code trace shipped in ``examples/traces/`` (``--trace`` for another file with
``ContextTokens`` and ``GeneratedTokens`` columns) resampled with replacement to ``--requests`` rows with a
fixed seed. The sites: PJM (Philadelphia), ERCOT (Dallas) and CAISO (San Jose), each modelled as in
``bench/year_of_nights.py`` (Electricity Maps carbon, Open-Meteo weather, economizer PUE, wet-bulb WUE,
off-site water 1.8 L/kWh assumed, the zone's price). Each site has two targets: an A100 with the profile
``llama-2-7b-chat.swing-a100.wilkins2024`` (``power_w`` 400, the A100 SXM's TDP, assumed a node's draw) and a
V100 with ``llama-2-7b-chat.palmetto-v100.wilkins2024`` (``power_w`` 300, the V100 SXM2's TDP). The plan
starts at ``--start`` (default 2023-06-01 18:00 in Philadelphia) with a 14 h deadline, objective carbon,
slots of 1 h, tasks of 256 requests.

Cases: every target with each of ``--parallelism`` array elements (default 16 and 20); the sites' power
unlimited, and ``--limited-site`` (default PJM) limited to ``--site-power-kw`` (default 2 kW, five A100
nodes: the number of busy elements per slot there becomes a decision of the placement); the policies
``threshold`` and ``optimal``. With 16 elements the work does not fit one target, so ``optimal`` routes it to
two sites within capacity, and ``threshold`` (whose ladder over six targets does not plan around the
deadline, as it warns) sends it all to one and has no plan: the placement stops with the earliest deadline
that works, printed. With 20 elements both policies send everything to the A100 in California.

Timed, pinned to ``--cores`` CPUs, best of ``--repeat``: the whole
``plan_requests(requests, targets, cost_models, options, sites=sites)`` call, and its parts run one by one:
grouping the requests (``Workload.from_tokens``), predicting (``CostTable.build``), the sites' mean rates
for routing (``schedule.routing_view``), routing (``route``) and the placement in time of the plan's tasks
(``schedule.place_tasks``). Reading the sites' files (``load_sites``) happens once, before, and is timed
apart.

Columns: wall time, tasks, the routing's solver, the placement's method
(``plan.in_time.placement.plan.method``) and its gap to the lower bound, and carbon of the plan against
``run_at_submit`` and ``best_window``. Target: the whole ``plan_requests`` call under 10 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from _common import AZURE
from year_of_nights import grid_data, site_spec, table

A100 = "llama-2-7b-chat.swing-a100.wilkins2024"
V100 = "llama-2-7b-chat.palmetto-v100.wilkins2024"
SITES = {"pjm": "US-MIDA-PJM", "ercot": "US-TEX-ERCO", "caiso": "US-CAL-CISO"}
DEADLINE_S = 14 * 3600.0
T = TypeVar("T")


def sample(trace: Path, n: int, seed: int) -> pd.DataFrame:
    """``n`` rows of the trace drawn with replacement, as a request table."""
    from hpcqueue.planner.simulate import load_trace

    frame = load_trace(trace)
    rows = np.random.default_rng(seed).integers(0, len(frame), size=n)
    return pd.DataFrame(
        {
            "line": np.arange(1, n + 1, dtype=np.int64),
            "input_tokens": frame["input_tokens"].to_numpy(dtype=np.int64)[rows],
            "max_new_tokens": frame["output_tokens"].to_numpy(dtype=np.int64)[rows],
        }
    )


def targets_at(sites: dict[str, str], parallelism: int) -> list[Any]:
    from hpcqueue.config import Target

    kinds = (("a100", "a100-40g", A100, 400.0), ("v100", "v100-16g", V100, 300.0))
    return [
        Target(
            name=f"{kind}-{site}",
            hardware=hardware,
            profile=profile,
            array_parallelism=parallelism,
            site=site,
            power_w=power_w,
        )
        for site in sites
        for kind, hardware, profile, power_w in kinds
    ]


def best_of(repeat: int, fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()``'s result and its fastest wall time over ``repeat`` runs."""
    best, result = float("inf"), None
    for _ in range(max(1, repeat)):
        begun = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - begun)
    assert result is not None
    return result, best


def run_case(
    requests: pd.DataFrame,
    targets: list[Any],
    models: dict[str, Any],
    sites: dict[str, Any],
    policy: str,
    start: datetime,
    repeat: int,
) -> tuple[list[str], list[str] | None]:
    """The whole ``plan_requests`` call, best of ``repeat``, then its parts one by one: the table rows
    (no parts when there is no plan)."""
    from hpcqueue.errors import PlanningError
    from hpcqueue.planner import CostTable, PlanOptions, Workload, route, schedule
    from hpcqueue.planner.plan import ROUTING_SHARE, plan_requests

    options = PlanOptions(
        policy=policy, start=start, deadline_s=DEADLINE_S, objective={"carbon": 1.0}, task_size=256
    )
    begun = time.perf_counter()
    try:
        plan, wall = best_of(repeat, lambda: plan_requests(requests, targets, models, options, sites=sites))
    except PlanningError as exc:
        seconds = time.perf_counter() - begun
        print(f"  {policy}, {targets[0].array_parallelism} elements: no plan ({seconds:.2f} s): {exc}")
        return [f"{seconds:.2f}", "no plan"] + ["—"] * 10, None
    assert plan.in_time is not None
    placement = plan.in_time.placement
    totals = placement.plan.totals()
    submit = placement.baselines["run_at_submit"].totals()
    window = placement.baselines["best_window"].totals()
    used = plan.tasks.groupby("target", sort=False).size()
    solver = plan.solver or {}
    row = [
        f"{wall:.2f}",
        str(len(plan.tasks)),
        ", ".join(f"{name} {n}" for name, n in used.items()),
        str(solver.get("method", "rule")),
        placement.plan.method,
        "n/a" if placement.plan.gap is None else f"{100 * placement.plan.gap:.3f}",
        f"{totals['carbon_g'] / 1000:,.1f}",
        f"{submit['carbon_g'] / 1000:,.1f}",
        f"{window['carbon_g'] / 1000:,.1f}",
        f"{100 * (1 - totals['carbon_g'] / submit['carbon_g']):.1f}",
        f"{100 * (1 - totals['carbon_g'] / window['carbon_g']):.1f}",
        "yes" if totals["meets_deadline"] else "NO",
    ]

    deadline_s = options.deadline_after(start)
    n_in, n_out = requests["input_tokens"], requests["max_new_tokens"]
    workload, t_group = best_of(repeat, lambda: Workload.from_tokens(n_in, n_out))
    costs, t_predict = best_of(repeat, lambda: CostTable.build(workload, targets, models))
    view, t_weights = best_of(
        repeat, lambda: schedule.routing_view(targets, sites, options, start, deadline_s)
    )
    lam, multiplier = view.lam, view.multiplier
    routing_deadline = ROUTING_SHARE * DEADLINE_S
    _, t_route = best_of(
        repeat,
        lambda: route(workload, costs.weighted(multiplier), policy, lam=lam, deadline_s=routing_deadline),
    )
    index = {t.name: i for i, t in enumerate(targets)}
    task_target = plan.tasks["target"].map(index).to_numpy(dtype=np.int64)
    energy = plan.tasks["predicted_energy_j"].to_numpy()
    runtime = plan.tasks["predicted_runtime_s"].to_numpy()
    _, t_place = best_of(
        repeat,
        lambda: schedule.place_tasks(
            task_target, energy, runtime, targets, sites, options, start, deadline_s
        ),
    )
    parts = [f"{t:.3f}" for t in (t_group, t_predict, t_weights, t_route, t_place)] + [f"{wall:.2f}"]
    return row, parts


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--grid-data", type=Path, default=None, help="default: $HPCQUEUE_GRID_DATA")
    parser.add_argument("--trace", type=Path, default=AZURE, help="trace to resample (default: Azure code)")
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--parallelism", default="16,20", help="array elements of every target, comma-separated cases"
    )
    parser.add_argument("--start", default="2023-06-01T18:00-04:00", help="ISO 8601 with an offset")
    parser.add_argument(
        "--limited-site", choices=list(SITES), default="pjm", help="the site whose power is limited"
    )
    parser.add_argument("--site-power-kw", type=float, default=2.0, help="its available power (kW)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2, help="CPUs to pin to (0: all)")
    args = parser.parse_args()
    grid_dir = grid_data(args.grid_data, parser)
    if not args.trace.is_file():
        parser.error(f"{args.trace}: trace not found")
    if args.cores:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cores]))
    cores = len(os.sched_getaffinity(0))

    from hpcqueue.config import parse_time
    from hpcqueue.planner import resolve_cost_models
    from hpcqueue.sites import load_sites

    start: datetime = parse_time(args.start)
    requests = sample(args.trace, args.requests, args.seed)
    unlimited_specs = {name: site_spec(grid_dir, zone, name=name) for name, zone in SITES.items()}
    limited_specs = dict(unlimited_specs)
    limited_specs[args.limited_site] = site_spec(
        grid_dir, SITES[args.limited_site], name=args.limited_site, power=args.site_power_kw
    )
    sites_unlimited, load_s = best_of(args.repeat, lambda: load_sites(unlimited_specs))
    sites_limited = load_sites(limited_specs)
    limited_label = f"{args.limited_site} {args.site_power_kw:g} kW"
    print(
        f"{len(requests):,} requests (seed {args.seed}, from {args.trace.name}), 6 targets at {len(SITES)} "
        f"sites ({', '.join(SITES.values())}); start {start.isoformat()}, deadline 14 h, 1 h slots, "
        f"objective carbon; {cores} cores; reading the sites' files (load_sites): {load_s:.2f} s"
    )

    rows, parts_rows = [], []
    for parallelism in (int(p) for p in args.parallelism.split(",")):
        targets = targets_at(SITES, parallelism)
        models = resolve_cost_models(targets, "llama-2-7b-chat")
        for power, sites in (("unlimited", sites_unlimited), (limited_label, sites_limited)):
            for policy in ("threshold", "optimal"):
                row, parts = run_case(requests, targets, models, sites, policy, start, args.repeat)
                rows.append([str(parallelism), power, policy, *row])
                if parts is not None:
                    parts_rows.append([str(parallelism), power, policy, *parts])

    case = ["elements", "site power", "policy"]
    whole = ["plan_requests s", "tasks", "tasks per target", "routing solver", "placement method", "gap %"]
    carbon = ["carbon kg: plan", "run_at_submit", "best_window", "plan vs submit %", "plan vs window %"]
    print()
    print(table([*case, *whole, *carbon, "meets deadline"], rows, [a == "r" for a in "rllrrlllrrrrrrl"]))
    parts = ["group s", "predict s", "routing weights s", "route s", "place_tasks s", "whole call s"]
    print()
    print(table([*case, *parts], parts_rows, [a == "r" for a in "rllrrrrrr"]))
    slowest = max(float(r[3]) for r in rows)
    verdict = "met" if slowest < 10 else "NOT met"
    print(
        f"\ntarget: plan_requests(..., sites=...) under 10 s on 2 cores — {verdict} (slowest {slowest:.2f} s "
        f"on {cores} cores, best of {args.repeat})"
    )


if __name__ == "__main__":
    main()
