"""Plans: each request's target (by policy, see ``policies``) and array task, with predicted costs.

Policies (``policies`` and ``thresholds`` hold the logic): ``threshold`` is the rule of Wilkins, Keshav and
Mortier (2024) with thresholds fitted to the workload; ``optimal`` the per-request minimum-cost assignment
within each target's capacity; ``unaware`` splits requests over the targets by their slots, ignoring token
counts; ``single:NAME`` sends everything to one target. Within a target, requests are cut into array tasks
that fit the partition's time limit.

Everything here is vectorised over the request table: the only Python loops run over targets and tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from hpcqueue.config import Target
from hpcqueue.errors import ConfigError, PlanningError
from hpcqueue.planner import schedule
from hpcqueue.planner.models import PlannerCostModel, prediction_columns
from hpcqueue.planner.options import PlanOptions
from hpcqueue.planner.policies import (
    POLICIES,
    Routing,
    check_policy,
    compare,
    prediction_warnings,
    route,
)
from hpcqueue.planner.schedule import TimePlan
from hpcqueue.planner.workload import CostTable, Workload, check_targets
from hpcqueue.sites import Site

__all__ = ["POLICIES", "TIME_LIMIT_SHARE", "Plan", "make_plan", "plan_requests"]

REQUIRED_COLUMNS = ("line", "input_tokens", "max_new_tokens")
#: Share of a target's time limit that a task's predicted runtime may fill; the rest is the margin for
#: loading the model, writing outputs and prediction error.
TIME_LIMIT_SHARE = 0.75


@dataclass
class Plan:
    """The assignment of every request to a target and a task, with predictions.

    ``assignments`` is aligned with the request table's index: ``target``, ``task_index``,
    ``predicted_energy_j``, ``predicted_runtime_s``, ``extrapolated`` (NaN / False where the target
    has no cost model). ``tasks`` has one row per task: ``task_index``, ``target``, ``n_requests``,
    ``input_tokens`` and ``max_new_tokens`` (sums), ``predicted_energy_j``, ``predicted_runtime_s``
    (sums; runtime as if the task's requests ran one after another, one per call, as profiled).
    ``thresholds`` is filled by the threshold policy with two or more targets (see
    :mod:`hpcqueue.planner.thresholds`), else ``{}``; ``solver`` by the optimal policy.
    ``profiles`` names the profile behind each target's predictions (None: no predictions).
    ``lam`` and ``deadline_s`` are the λ and deadline planned for.
    """

    assignments: pd.DataFrame
    tasks: pd.DataFrame
    policy: str
    targets: list[str]
    thresholds: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    profiles: dict[str, str | None] = field(default_factory=dict)
    lam: float = 1.0
    deadline_s: float | None = None
    solver: dict[str, Any] | None = None
    workload: Workload | None = field(default=None, repr=False)
    costs: CostTable | None = field(default=None, repr=False)
    routing: Routing | None = field(default=None, repr=False)
    in_time: TimePlan | None = field(default=None, repr=False)

    def time_report(self) -> dict[str, Any]:
        """Where and when the tasks run, what that costs, and the baselines in time (see
        :meth:`hpcqueue.planner.schedule.TimePlan.report`)."""
        if self.in_time is None:
            raise PlanningError("this plan was not placed in time")
        return self.in_time.report(self.tasks["target"].tolist(), self.tasks["n_requests"].tolist())

    def per_target(self) -> dict[str, dict[str, Any]]:
        """``{target: {"requests", "predicted_energy_j", "predicted_runtime_s"}}`` for every target
        (zero requests included); sums are NaN where the target has no cost model."""
        out: dict[str, dict[str, Any]] = {}
        grouped = self.tasks.groupby("target", sort=False)
        requests = grouped["n_requests"].sum()
        energy = grouped["predicted_energy_j"].sum(min_count=1)
        runtime = grouped["predicted_runtime_s"].sum(min_count=1)
        for name in self.targets:
            has_model = self.profiles.get(name) is not None
            n = int(requests.get(name, 0))
            out[name] = {
                "requests": n,
                "predicted_energy_j": float(energy.get(name, 0.0)) if has_model else float("nan"),
                "predicted_runtime_s": float(runtime.get(name, 0.0)) if has_model else float("nan"),
            }
        return out

    def compare(self) -> dict[str, Any]:
        """This plan against every other policy on the same requests (see :func:`policies.compare`), and,
        when it was placed in time, where and when it runs with the baselines in time (see
        :meth:`hpcqueue.planner.schedule.TimePlan.merge`)."""
        if self.workload is None or self.costs is None:
            raise PlanningError("this plan keeps no cost table to compare policies with")
        report = compare(
            self.workload,
            self.costs,
            self.policy,
            chosen=self.routing,
            lam=self.lam,
            deadline_s=self.deadline_s,
        )
        if self.in_time is not None:
            self.in_time.merge(report, self.tasks["target"].tolist(), self.tasks["n_requests"].tolist())
        return report


def make_plan(
    table: pd.DataFrame,
    targets: Sequence[Target],
    cost_models: Mapping[str, PlannerCostModel | None],
    *,
    policy: str = "threshold",
    task_size: int = 256,
    model: str | None = None,
    lam: float = 1.0,
    deadline_s: float | None = None,
    batch_size: int | None = None,
) -> Plan:
    """:func:`plan_requests` with the options given one by one (see :class:`PlanOptions`)."""
    options = PlanOptions(
        policy=policy, lam=lam, deadline_s=deadline_s, model=model, batch_size=batch_size, task_size=task_size
    )
    return plan_requests(table, targets, cost_models, options)


def plan_requests(
    table: pd.DataFrame,
    targets: Sequence[Target],
    cost_models: Mapping[str, PlannerCostModel | None],
    options: PlanOptions,
    sites: Mapping[str, Site] | None = None,
    *,
    scales: Mapping[str, float] | None = None,
) -> Plan:
    """Assign each request (row of ``table``) to a target and a task, and predict its cost.

    ``table`` needs ``line``, ``input_tokens`` and ``max_new_tokens`` (the output tokens planned for
    are the request's ``max_new_tokens``). ``cost_models`` maps target names to models (None: no
    profile). ``options.policy``, ``.lam`` (λ) and ``.deadline_s`` are those of
    :func:`hpcqueue.planner.policies.route`. ``options.model`` only improves error messages. Costs are
    predicted at each target's ``batch_size``, else ``options.batch_size`` (the prompts per ``generate``
    call its workers use).

    Within a target, requests are sorted by ``input_tokens`` then ``line`` (stable) and cut into tasks of
    ``target.task_size or options.task_size`` requests whose predicted runtime also fits
    ``TIME_LIMIT_SHARE`` of the target's time limit (the rest is the margin for loading the model and for
    prediction error); task indices run 0..K−1 over the targets in the order given.

    Then, when the plan is placed in time (sites in the config, or a start or an objective given; see
    :func:`hpcqueue.planner.schedule.wanted`), every task gets a start (:mod:`hpcqueue.planner.schedule`):
    its column ``start_s`` is seconds after the plan's start, with the predicted ``facility_energy_j``,
    ``carbon_g``, ``water_l`` and ``cost_usd`` at the sites (``sites``, by name; NaN where unknown) and
    hours where it runs.
    """
    policy, task_size = options.policy, options.task_size
    names = check_targets(targets)
    check_policy(policy, names)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise PlanningError(
            f"the request table lacks column(s) {', '.join(missing)}; count tokens before planning"
        )
    sizes = np.array([t.task_size or task_size for t in targets], dtype=np.int64)
    if np.any(sizes < 1):
        raise ConfigError(f"task_size must be >= 1, got {task_size}")
    n_in = table["input_tokens"].to_numpy(dtype=np.int64)
    n_out = table["max_new_tokens"].to_numpy(dtype=np.int64)
    line = table["line"].to_numpy(dtype=np.int64)

    sites = sites or {}
    start = options.start_time()
    deadline_s = options.deadline_after(start)
    if deadline_s is not None and deadline_s <= 0:
        raise ConfigError(
            f"the deadline {(start + timedelta(seconds=deadline_s)).isoformat()} is not after the start "
            f"{start.isoformat()}"
        )
    workload = Workload.from_tokens(n_in, n_out)
    costs = CostTable.build(workload, targets, cost_models, options.batch_size)
    view = schedule.routing_view(targets, sites, options, start, deadline_s)
    lam, routed = view.lam, costs.weighted(view.multiplier)
    if view.slots is not None and policy in ("threshold", "optimal"):  # the others ignore capacity
        routed = replace(routed, slots=view.slots)
    routing = route(
        workload,
        routed,
        policy,
        lam=lam,
        deadline_s=_routing_deadline(deadline_s, sites, options),
        model=options.model,
    )
    target_idx = routing.target_idx
    cls = workload.request_class
    energy = costs.energy_j[cls, target_idx]
    runtime = costs.runtime_s[cls, target_idx]
    extrapolated = costs.extrapolated[cls, target_idx]

    budgets = np.array([t.time_limit_min * 60.0 * TIME_LIMIT_SHARE for t in targets])
    task_index, task_target, n_tasks = _chunk(target_idx, n_in, line, sizes, runtime, budgets)
    assignments = pd.DataFrame(
        {
            "target": np.asarray(names, dtype=object)[target_idx],
            "task_index": task_index,
            "predicted_energy_j": energy,
            "predicted_runtime_s": runtime,
            "extrapolated": extrapolated,
        },
        index=table.index,
    )
    tasks = pd.DataFrame(
        {
            "task_index": np.arange(n_tasks, dtype=np.int64),
            "target": np.asarray(names, dtype=object)[task_target],
            "n_requests": np.bincount(task_index, minlength=n_tasks).astype(np.int64),
            "input_tokens": np.bincount(task_index, weights=n_in, minlength=n_tasks).astype(np.int64),
            "max_new_tokens": np.bincount(task_index, weights=n_out, minlength=n_tasks).astype(np.int64),
            "predicted_energy_j": np.bincount(task_index, weights=energy, minlength=n_tasks),
            "predicted_runtime_s": np.bincount(task_index, weights=runtime, minlength=n_tasks),
        }
    )
    for column, values in prediction_columns(tasks, targets, cost_models).items():
        tasks[column] = values
    tasks["account"] = tasks["target"].map({t.name: t.account for t in targets})
    in_time = None
    if schedule.wanted(sites, options):
        in_time = schedule.place_tasks(
            task_target,
            tasks["predicted_energy_j"].to_numpy(),
            tasks["predicted_runtime_s"].to_numpy(),
            targets,
            sites,
            options,
            start,
            deadline_s,
            scales=scales,
        )
        for column, values in in_time.task_columns().items():
            tasks[column] = values
    return Plan(
        assignments=assignments,
        tasks=tasks,
        policy=policy,
        targets=names,
        thresholds=routing.thresholds,
        warnings=list(routing.warnings) + prediction_warnings(workload, costs, target_idx),
        profiles=costs.profiles,
        lam=lam,
        deadline_s=deadline_s,
        in_time=in_time,
        solver=routing.solver,
        workload=workload,
        costs=costs,
        routing=routing,
    )


#: Share of the time to the deadline that routing may fill when the plan is placed in time: whole tasks
#: packed into slots (and into a site's power) leave some capacity unused, so routing keeps a margin.
ROUTING_SHARE = 0.9


def _routing_deadline(
    deadline_s: float | None, sites: Mapping[str, Site], options: PlanOptions
) -> float | None:
    if deadline_s is None or not schedule.wanted(sites, options):
        return deadline_s
    return ROUTING_SHARE * deadline_s


def _chunk(
    target_idx: np.ndarray,
    n_in: np.ndarray,
    line: np.ndarray,
    sizes: np.ndarray,
    runtime_s: np.ndarray | None = None,
    budgets_s: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Task index per request, target per task, number of tasks.

    Within each target, requests are ordered by prompt length then line (so a task holds similar
    lengths and batches pad little) and cut into consecutive chunks of at most the target's task size
    and, when ``budgets_s`` is given, at most that many seconds of predicted runtime (NaN counts as 0):
    a task must fit its partition's time limit. A request predicted to exceed the budget alone gets a
    task of its own.
    """
    n = len(target_idx)
    n_targets = len(sizes)
    order = np.lexsort((line, n_in, target_idx))
    sorted_target = target_idx[order]
    counts = np.bincount(target_idx, minlength=n_targets)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    chunk = np.empty(n, dtype=np.int64)  # chunk number within its target, in sorted order
    tasks_per_target = np.zeros(n_targets, dtype=np.int64)
    sorted_runtime = None
    if runtime_s is not None:
        sorted_runtime = np.nan_to_num(runtime_s[order], nan=0.0)
    for t in range(n_targets):
        lo, hi = int(starts[t]), int(starts[t] + counts[t])
        if lo == hi:
            continue
        size = int(sizes[t])
        budget = float(budgets_s[t]) if budgets_s is not None else np.inf
        if sorted_runtime is None or not np.isfinite(budget):
            chunk[lo:hi] = np.arange(hi - lo) // size
            tasks_per_target[t] = -(-(hi - lo) // size)
            continue
        cumulative = np.cumsum(sorted_runtime[lo:hi])
        start, k = 0, 0
        while start < hi - lo:  # one step per task, not per request
            spent = cumulative[start - 1] if start else 0.0
            end = int(np.searchsorted(cumulative, spent + budget, side="right"))
            end = min(max(end, start + 1), start + size, hi - lo)
            chunk[lo + start : lo + end] = k
            start, k = end, k + 1
        tasks_per_target[t] = k
    first_task = np.concatenate([[0], np.cumsum(tasks_per_target)[:-1]]).astype(np.int64)
    task_index = np.empty(n, dtype=np.int64)
    task_index[order] = first_task[sorted_target] + chunk
    task_target = np.repeat(np.arange(n_targets), tasks_per_target)
    return task_index, task_target, int(tasks_per_target.sum())
