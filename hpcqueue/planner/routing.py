"""Routing: which target serves each request under a policy, and what the result costs.

The cost of serving request *i* on target *t* is the paper's weighted sum

    C[i, t] = λ · E[i, t] / Ē + (1 − λ) · R[i, t] / R̄

where E and R are the cost model's predicted energy (J) and runtime (s) of the request on the target,
and Ē and R̄ are the workload's mean predicted energy and runtime per request, averaged over every target
that has a cost model. Dividing by these means makes both terms dimensionless and of the same size for a
typical request, so λ = 1 is pure energy, λ = 0 pure runtime, and λ = 0.5 weighs "one typical request's
energy" the same as "one typical request's runtime". Because Ē and R̄ do not depend on the policy, every
policy is judged by the same yardstick, and at λ = 1 (or 0) cost ratios equal energy (or runtime) ratios.

Requests with the same prompt and output token counts cost the same everywhere, so the planner works on these
*classes* (a 1M-request trace has far fewer): predictions, threshold search and the optimal assignment all run
per class, and only the final assignment is per request.

Capacity: a target runs ``array_parallelism`` tasks at once (its *slots*); before a deadline it can do
``slots × deadline`` seconds of (predicted) work, and no single request may take longer than the deadline.
The makespan of a target is its total predicted runtime divided by its slots (or its longest request, if
longer): an idealised figure that assumes the work packs evenly into the slots.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from hpcqueue.errors import ConfigError, PlanningError
from hpcqueue.planner import optimal, thresholds
from hpcqueue.planner.costs import CostModel

if TYPE_CHECKING:
    from hpcqueue.config import Target

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

POLICIES = ("threshold", "optimal", "unaware", "single:<target>")


@dataclass(frozen=True)
class Workload:
    """Requests as token counts, grouped into classes of equal (prompt, output) counts.

    ``request_class[i]`` is the class of request *i*; class *k* has ``class_in[k]`` prompt and
    ``class_out[k]`` output tokens and ``counts[k]`` requests.
    """

    n_in: IntArray
    n_out: IntArray
    request_class: IntArray
    class_in: IntArray
    class_out: IntArray
    counts: IntArray

    @classmethod
    def from_tokens(cls, n_in: npt.ArrayLike, n_out: npt.ArrayLike) -> Workload:
        n_in_a = np.asarray(n_in, dtype=np.int64).ravel()
        n_out_a = np.asarray(n_out, dtype=np.int64).ravel()
        if n_in_a.shape != n_out_a.shape:
            raise PlanningError(f"{len(n_in_a)} prompt token counts but {len(n_out_a)} output token counts")
        if n_in_a.size and (n_in_a.min() < 0 or n_out_a.min() < 0):
            raise PlanningError("token counts must not be negative")
        if n_in_a.size and max(int(n_in_a.max()), int(n_out_a.max())) >= 2**31:
            raise PlanningError("token counts must be below 2**31")
        key = (n_in_a << 32) | n_out_a
        unique, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        return cls(
            n_in=n_in_a,
            n_out=n_out_a,
            request_class=inverse.astype(np.int64).ravel(),
            class_in=unique >> 32,
            class_out=unique & (2**32 - 1),
            counts=counts.astype(np.int64),
        )

    def __len__(self) -> int:
        return len(self.n_in)

    @property
    def n_classes(self) -> int:
        return len(self.counts)


@dataclass(frozen=True)
class CostTable:
    """Predicted energy and runtime of every class (rows) on every target (columns), and the scales of λ.

    Columns of targets without a cost model are NaN (``modelled`` is False there).
    """

    names: list[str]
    energy_j: FloatArray
    runtime_s: FloatArray
    extrapolated: BoolArray
    floored: BoolArray
    modelled: BoolArray
    slots: IntArray
    energy_scale_j: float
    runtime_scale_s: float
    profiles: dict[str, str | None] = field(default_factory=dict)
    ranges: dict[str, str] = field(default_factory=dict)
    hardware: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        workload: Workload,
        targets: Sequence[Target],
        cost_models: Mapping[str, CostModel | None],
        batch_size: int | None = None,
    ) -> CostTable:
        """Predict every class on every target, at each target's ``batch_size`` (else ``batch_size``, else
        the profile's own): the prompts per ``generate`` call a worker there will use."""
        names = check_targets(targets)
        k, t = workload.n_classes, len(targets)
        energy = np.full((k, t), np.nan)
        runtime = np.full((k, t), np.nan)
        extrapolated = np.zeros((k, t), dtype=bool)
        floored = np.zeros((k, t), dtype=bool)
        modelled = np.zeros(t, dtype=bool)
        profiles: dict[str, str | None] = {}
        ranges: dict[str, str] = {}
        for j, name in enumerate(names):
            model = cost_models.get(name)
            profiles[name] = model.profile_name if model is not None else None
            if model is None:
                continue
            modelled[j] = True
            (in_lo, in_hi), (out_lo, out_hi) = model.input_range, model.output_range
            ranges[name] = f"prompt {in_lo:g}-{in_hi:g}, output {out_lo:g}-{out_hi:g} tokens"
            if k:
                per_call = targets[j].batch_size or batch_size
                prediction = model.predict(workload.class_in, workload.class_out, batch_size=per_call)
                energy[:, j] = prediction.energy_j
                runtime[:, j] = prediction.runtime_s
                extrapolated[:, j] = prediction.extrapolated
                floored[:, j] = prediction.floored
        return cls(
            names=names,
            energy_j=energy,
            runtime_s=runtime,
            extrapolated=extrapolated,
            floored=floored,
            modelled=modelled,
            slots=np.array([t.array_parallelism for t in targets], dtype=np.int64),
            energy_scale_j=_scale(energy[:, modelled], workload.counts),
            runtime_scale_s=_scale(runtime[:, modelled], workload.counts),
            profiles=profiles,
            ranges=ranges,
            hardware={t.name: t.hardware for t in targets},
        )

    def cost(self, lam: float) -> FloatArray:
        """C = λ·E/Ē + (1−λ)·R/R̄ per class and target (NaN where a target has no cost model)."""
        check_lambda(lam)
        energy_term = self.energy_j / self.energy_scale_j
        runtime_term = self.runtime_s / self.runtime_scale_s
        if lam == 1.0:
            return energy_term
        if lam == 0.0:
            return runtime_term
        return lam * energy_term + (1.0 - lam) * runtime_term


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


def check_targets(targets: Sequence[Target]) -> list[str]:
    if not targets:
        raise ConfigError("no targets to plan for: declare at least one [targets.NAME] table in the config")
    names = [t.name for t in targets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"target name(s) used twice: {', '.join(duplicates)}; target names must be unique")
    return names


def check_lambda(lam: float) -> None:
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"lambda must lie in [0, 1] (1: energy only, 0: runtime only), got {lam}")


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
    target_idx: IntArray,
    *,
    lam: float = 1.0,
    deadline_s: float | None = None,
) -> dict[str, Any]:
    """Predicted totals of an assignment: ``energy_j``, ``runtime_s`` (sum over requests, as if run one after
    another), ``makespan_s`` (the latest target's: the larger of its runtime / its slots and its longest
    request), ``cost`` (Σ C), ``meets_deadline`` (None without a deadline), ``extrapolated_share`` and
    ``per_target``. Energy, runtime and cost are NaN when a request is assigned to a target without a cost
    model."""
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
        "meets_deadline": None if deadline_s is None else bool(makespan_s <= deadline_s * (1 + 1e-9)),
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
    lam: float = 1.0,
    deadline_s: float | None = None,
    model: str | None = None,
    chosen: Routing | None = None,
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
        **summarize(workload, table, chosen.target_idx, lam=lam, deadline_s=deadline_s),
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
        baselines[other] = _totals(
            summarize(workload, table, routing.target_idx, lam=lam, deadline_s=deadline_s)
        )
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
            "totals and savings are too. Measure one (hpcqueue profile TARGET) or set profile = \"<name>\" "
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


def _scale(values: FloatArray, counts: IntArray) -> float:
    """Mean per request over the given target columns; 1.0 when there is nothing to average."""
    if values.size == 0 or counts.sum() == 0:
        return 1.0
    mean = float(np.average(values.mean(axis=1), weights=counts))
    return mean if np.isfinite(mean) and mean > 0 else 1.0


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
