"""The policies: which target serves each request, and what every policy's result costs.

``route`` applies one policy to a workload's cost table (:mod:`hpcqueue.planner.workload`): ``threshold`` (the
rule of Wilkins, Keshav and Mortier 2024, searched in :mod:`hpcqueue.planner.thresholds`), ``optimal``
(:mod:`hpcqueue.planner.optimal`), ``unaware`` and ``single:NAME``; ``summarize`` prices a routing and
``compare`` sets every policy side by side, with the savings against the unaware split and the best single
target.

Capacity: a target runs ``array_parallelism`` tasks at once (its *slots*); before a deadline it can do
``slots × deadline`` seconds of (predicted) work, and no single request may take longer than the deadline.
The makespan of a target is its total predicted runtime divided by its slots (or its longest request, if
longer): an idealised figure that assumes the work packs evenly into the slots.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hpcqueue.errors import ConfigError, PlanningError
from hpcqueue.planner import optimal, thresholds
from hpcqueue.planner.workload import (
    CostTable,
    FloatArray,
    IntArray,
    Workload,
    check_lambda,
)

POLICIES = ("threshold", "optimal", "unaware", "single:<target>")


@dataclass
class Routing:
    """The target of every request under one policy, and how it was found.

    ``thresholds`` is filled by the threshold policy; ``solver`` by the optimal policy (``method``, ``exact``,
    ``gap``: the relative gap between the plan's cost and a proven lower bound on the optimum).
    """

    policy: str
    target_idx: IntArray
    thresholds: dict[str, Any] = field(default_factory=dict)
    solver: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)


def check_policy(policy: str, names: Sequence[str]) -> None:
    if policy in ("threshold", "optimal", "unaware"):
        return
    if policy.startswith("single:"):
        wanted = policy.removeprefix("single:")
        if wanted not in names:
            raise ConfigError(
                f"policy {policy!r} names target {wanted!r}, which is not configured; "
                f"targets: {', '.join(names)}"
            )
        return
    raise ConfigError(
        f"unknown policy {policy!r}; valid policies: {', '.join(POLICIES)} (targets: {', '.join(names)})"
    )


def route(
    workload: Workload,
    table: CostTable,
    policy: str,
    *,
    lam: float = 1.0,
    deadline_s: float | None = None,
    model: str | None = None,
) -> Routing:
    """Assign every request of ``workload`` to a target of ``table`` under ``policy``.

    ``threshold`` and ``optimal`` need a cost model for every target (when there are several); ``unaware``
    and ``single:NAME`` need none. ``deadline_s`` bounds the optimal policy's plan (each target's predicted
    work fits ``slots × deadline``) and the threshold policy's search (it keeps to thresholds whose plan
    fits, when any does); the other policies ignore it and :func:`summarize` says whether they meet it.
    ``model`` only improves error messages.
    """
    names = table.names
    check_policy(policy, names)
    check_lambda(lam)
    if deadline_s is not None and not deadline_s > 0:
        raise ConfigError(f"deadline must be positive, got {deadline_s} s")
    n, n_targets = len(workload), len(names)
    if policy.startswith("single:"):
        return Routing(policy, np.full(n, names.index(policy.removeprefix("single:")), dtype=np.int64))
    if policy == "unaware":
        # Weighted round robin over the slots, in input order: token counts play no part.
        wheel = np.repeat(np.arange(n_targets, dtype=np.int64), table.slots)
        return Routing(policy, wheel[np.arange(n, dtype=np.int64) % len(wheel)])
    if n_targets == 1:
        return Routing(policy, np.zeros(n, dtype=np.int64))
    _require_models(table, policy, model)
    cost = table.cost(lam)
    capacity = _capacity(table, deadline_s)
    too_long = table.runtime_s > deadline_s if deadline_s is not None else None
    if policy == "threshold":
        class_target, found, warnings = thresholds.route(
            workload, cost, table.runtime_s, capacity, names, too_long
        )
        return Routing(policy, class_target[workload.request_class], thresholds=found, warnings=warnings)
    if too_long is not None:
        cost = np.where(too_long, np.inf, cost)
    result = optimal.solve(cost, table.runtime_s, workload.counts, capacity, target_names=names)
    solver = {
        "method": result.method,
        "exact": result.exact,
        "gap": result.gap,
        "objective": result.objective,
        "lower_bound": result.lower_bound,
    }
    warnings = []
    if not result.exact:
        warnings.append(
            f"the optimal plan was found by the fast {result.method} method: its cost is within "
            f"{100 * result.gap:.3f} % of the proven lower bound on the optimum"
        )
    return Routing(
        policy, optimal.spread(workload.request_class, result.counts), solver=solver, warnings=warnings
    )


def summarize(
    workload: Workload,
    table: CostTable,
    target_idx: IntArray | Routing,
    *,
    lam: float = 1.0,
    deadline_s: float | None = None,
) -> dict[str, Any]:
    """Predicted totals of an assignment: ``energy_j``, ``runtime_s`` (sum over requests, as if run one after
    another), ``makespan_s`` (the latest target's: the larger of its runtime / its slots and its longest
    request), ``cost`` (Σ C), ``meets_deadline`` (None without a deadline), ``extrapolated_share`` and
    ``per_target``. Energy, runtime and cost are NaN when a request is assigned to a target without a cost
    model. ``target_idx`` is the target of every request, or a :class:`Routing` that holds them."""
    if isinstance(target_idx, Routing):
        target_idx = target_idx.target_idx
    k, t = workload.n_classes, len(table.names)
    if len(target_idx) != len(workload):
        raise PlanningError(f"{len(target_idx)} targets for {len(workload)} requests")
    counts = np.bincount(workload.request_class * t + target_idx, minlength=k * t).reshape(k, t)
    used = counts > 0
    cost = table.cost(lam)
    energy = _weighted_sum(counts, table.energy_j)
    runtime = _weighted_sum(counts, table.runtime_s)
    cost_t = _weighted_sum(counts, cost)
    longest = np.where(used, np.nan_to_num(table.runtime_s), 0.0).max(axis=0) if k else np.zeros(t)
    makespan = np.maximum(runtime / table.slots, longest)
    per_target = {
        name: {
            "requests": int(counts[:, j].sum()),
            "energy_j": float(energy[j]),
            "runtime_s": float(runtime[j]),
            "makespan_s": float(makespan[j]),
            "share": float(counts[:, j].sum() / max(len(workload), 1)),
        }
        for j, name in enumerate(table.names)
    }
    makespan_s = float(makespan.max()) if t else 0.0
    return {
        "requests": len(workload),
        "energy_j": float(energy.sum()),
        "runtime_s": float(runtime.sum()),
        "makespan_s": makespan_s,
        "cost": float(cost_t.sum()),
        # unknown (None) without a deadline, or when a target without a cost model has work
        "meets_deadline": None
        if deadline_s is None or not np.isfinite(makespan_s)
        else bool(makespan_s <= deadline_s * (1 + 1e-9)),
        "extrapolated_share": float((counts * table.extrapolated).sum() / max(len(workload), 1))
        if used.any()
        else 0.0,
        "per_target": per_target,
    }


def compare(
    workload: Workload,
    table: CostTable,
    policy: str,
    *,
    chosen: Routing | None = None,
    lam: float = 1.0,
    deadline_s: float | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """The plan of ``policy`` against every other policy on the same workload, as one JSON-ready report.

    Keys: ``policy``, ``lambda``, ``deadline_s``, the totals of :func:`summarize`, ``thresholds``, ``solver``,
    ``baselines`` (``{name: totals}`` for ``unaware``, each ``single:NAME``, ``threshold`` and ``optimal``; a
    policy that cannot plan this workload has ``{"error": ...}``), ``savings_vs_unaware`` and
    ``savings_vs_best_single`` (fractions of the baseline's cost saved: at λ = 1 the energy saved; negative
    when the plan costs more), ``best_single`` (the cheapest single-target plan, among those meeting the
    deadline when any does), ``savings`` (the same comparisons for energy, runtime and cost separately) and
    ``warnings``. ``chosen`` reuses an already computed routing of ``policy``.
    """
    if chosen is None:
        chosen = route(workload, table, policy, lam=lam, deadline_s=deadline_s, model=model)
    report: dict[str, Any] = {
        "policy": policy,
        "lambda": lam,
        "deadline_s": deadline_s,
        **summarize(workload, table, chosen, lam=lam, deadline_s=deadline_s),
        "thresholds": chosen.thresholds,
        "solver": chosen.solver,
        "scales": {"energy_j": table.energy_scale_j, "runtime_s": table.runtime_scale_s},
        "profiles": table.profiles,
    }
    baselines: dict[str, dict[str, Any]] = {}
    for other in ["unaware", *(f"single:{n}" for n in table.names), "threshold", "optimal"]:
        if other == policy:
            baselines[other] = _totals(report)
            continue
        try:
            routing = route(workload, table, other, lam=lam, deadline_s=deadline_s, model=model)
        except PlanningError as exc:
            baselines[other] = {"error": str(exc)}
            continue
        baselines[other] = _totals(summarize(workload, table, routing, lam=lam, deadline_s=deadline_s))
    report["baselines"] = baselines
    singles = {n: b for n, b in baselines.items() if n.startswith("single:") and "error" not in b}
    meeting = {n: b for n, b in singles.items() if b["meets_deadline"] is not False}
    pool = meeting or singles
    best = min(pool, key=lambda n: (np.nan_to_num(pool[n]["cost"], nan=np.inf), n)) if pool else None
    report["best_single"] = best
    report["savings_vs_unaware"] = _saving(report["cost"], baselines["unaware"].get("cost"))
    report["savings_vs_best_single"] = _saving(report["cost"], baselines[best]["cost"]) if best else None
    report["savings"] = {
        "vs_unaware": _savings_detail(report, baselines["unaware"]),
        "vs_best_single": _savings_detail(report, baselines[best]) if best else None,
    }
    report["warnings"] = list(chosen.warnings) + prediction_warnings(workload, table, chosen.target_idx)
    unknown = [n for j, n in enumerate(table.names) if not table.modelled[j]]
    if unknown:
        report["warnings"].append(
            f"no profile for target(s) {', '.join(unknown)}: their energy and runtime are unknown, so the "
            'totals and savings are too. Measure one (hpcqueue profile TARGET) or set profile = "<name>" '
            "in the target's table"
        )
    if deadline_s is not None and report["meets_deadline"] is False:
        late = [n for n, row in report["per_target"].items() if row["makespan_s"] > deadline_s]
        report["warnings"].append(
            f"the {policy} plan misses the deadline of {deadline_s:g} s: target(s) {', '.join(late)} need "
            f"up to "
            f"{report['makespan_s']:.0f} s; the optimal policy plans within capacity"
        )
    return report


def prediction_warnings(workload: Workload, table: CostTable, target_idx: IntArray) -> list[str]:
    """Which share of each target's requests lie outside its profile's measured range, or hit a floor."""
    out: list[str] = []
    cls = workload.request_class
    for j, name in enumerate(table.names):
        mask = target_idx == j
        n_here = int(mask.sum())
        if not n_here or not table.modelled[j]:
            continue
        n_extra = int(table.extrapolated[cls[mask], j].sum())
        if n_extra:
            out.append(
                f"{100 * n_extra / n_here:.1f} % of the requests on target {name!r} ({n_extra} of {n_here}) "
                f"lie outside the measured range of profile {table.profiles[name]!r} "
                f"({table.ranges[name]}): their predictions extrapolate"
            )
        n_floor = int(table.floored[cls[mask], j].sum())
        if n_floor:
            out.append(
                f"{100 * n_floor / n_here:.1f} % of the requests on target {name!r} ({n_floor} of {n_here}) "
                f"hit the cost model's floor of profile {table.profiles[name]!r}: treat those predictions "
                "as rough"
            )
    return out


def _require_models(table: CostTable, policy: str, model: str | None) -> None:
    for j, name in enumerate(table.names):
        if not table.modelled[j]:
            what = f"model {model!r}" if model else "the model"
            raise PlanningError(
                f"policy {policy!r} with {len(table.names)} targets needs a profile for every target, but "
                f"target {name!r} (hardware {table.hardware.get(name)!r}) has no profile for {what}. "
                f'Fix: set profile = "<profile name>" in [targets.{name}] of the config, or profile '
                f"{what} on that target's hardware "
                "(hpcqueue profile TARGET); or plan with policy 'unaware' or 'single:<target>'"
            )


def _capacity(table: CostTable, deadline_s: float | None) -> FloatArray:
    if deadline_s is None:
        return np.full(len(table.names), np.inf)
    return table.slots.astype(float) * deadline_s


def _weighted_sum(counts: IntArray, values: FloatArray) -> FloatArray:
    """Σ_k counts·values per target. Classes with no request there count 0, even where the value is NaN
    (no cost model) or inf; an assigned request with a NaN value makes the sum NaN."""
    return (counts * np.where(counts > 0, values, 0.0)).sum(axis=0)


def _totals(summary: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("energy_j", "runtime_s", "makespan_s", "cost", "meets_deadline")
    return {key: summary[key] for key in keys} | {
        "requests_per_target": {n: row["requests"] for n, row in summary["per_target"].items()}
    }


def _saving(value: float, baseline: float | None) -> float | None:
    if baseline is None or not np.isfinite(baseline) or baseline <= 0 or not np.isfinite(value):
        return None
    return float(1.0 - value / baseline)


def _savings_detail(report: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, float | None] | None:
    if "error" in baseline:
        return None
    return {key: _saving(report[key], baseline.get(key)) for key in ("energy_j", "runtime_s", "cost")}
