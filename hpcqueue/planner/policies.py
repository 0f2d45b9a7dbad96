"""Policies: which target serves each request, and how requests are chunked into tasks.

``threshold`` is the rule of Wilkins, Keshav and Mortier (2024): a low-power target takes the
requests whose prompt and output are both at most a threshold, the other target takes the rest.
The thresholds come from the two targets' profiles: the largest measured token count up to which
the low-power target's energy per token stays at or below the other's, along each sweep.
``single:NAME`` sends everything to one target (a baseline, or a one-partition site).

Everything here is vectorised over the request table: the only Python loops run over targets.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hpcqueue.errors import ConfigError, PlanningError
from hpcqueue.planner.costs import CostModel
from hpcqueue.profiles.store import Sweep, find_profile, find_profiles_for

if TYPE_CHECKING:
    from hpcqueue.config import Target

POLICIES = ("threshold", "single:<target>")
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
    ``thresholds`` is ``{"input_tokens", "output_tokens", "low", "high"}`` for the threshold policy
    with two or more targets (plus ``"ladder"``, one such dict per step, with three or more), else ``{}``.
    ``profiles`` names the profile behind each target's predictions (None: no predictions).
    """

    assignments: pd.DataFrame
    tasks: pd.DataFrame
    policy: str
    targets: list[str]
    thresholds: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    profiles: dict[str, str | None] = field(default_factory=dict)

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


def resolve_cost_models(
    targets: Sequence[Target],
    model: str,
    search_path: Sequence[str | os.PathLike[str]] | None = None,
    notes: list[str] | None = None,
) -> dict[str, CostModel | None]:
    """The cost model of each target: from its ``profile`` setting when set (an unknown name is an
    error), else the best profile of ``model`` (id or alias) on the target's hardware (see
    ``find_profiles_for`` for the order), else None.

    When several profiles match a target, the choice is appended to ``notes`` (if given), so the
    caller can show which one was used and how to pick another.
    """
    result: dict[str, CostModel | None] = {}
    for target in targets:
        if target.profile:
            profile = find_profile(target.profile, search_path)
            result[target.name] = CostModel.from_profile(profile)
            continue
        matches = find_profiles_for(model, target.hardware, search_path)
        result[target.name] = CostModel.from_profile(matches[0]) if matches else None
        if len(matches) > 1 and notes is not None:
            notes.append(
                f"target {target.name!r}: {len(matches)} profiles match model {model!r} on hardware "
                f"{target.hardware!r} ({', '.join(p.name for p in matches)}); using {matches[0].name!r}. "
                f'Set profile = "<name>" in [targets.{target.name}] to choose another'
            )
    return result


def threshold_between(low: CostModel, high: CostModel) -> dict[str, int]:
    """The paper's thresholds for a low-power target against the next one.

    Along each sweep, over the low target's measured token counts inside both profiles' measured
    ranges, the threshold is the largest count up to which (every count up to it) the low target's
    energy per token is at most the high target's. 0 when the low target is not cheaper even at the
    smallest count (then it takes nothing).
    """
    return {
        "input_tokens": _crossover(low, high, "input"),
        "output_tokens": _crossover(low, high, "output"),
    }


def order_by_energy_per_token(models: Mapping[str, CostModel]) -> list[str]:
    """Target names, cheapest first, by energy per token at the smallest prompt length every
    profile measured (the input sweep's first common point). Ties keep the given order."""
    common = max(m.energy_in.low for m in models.values())
    names = list(models)
    costs = [float(models[n].energy_per_token("input", [common])[1][0]) for n in names]
    order = sorted(range(len(names)), key=lambda i: (costs[i], i))
    return [names[i] for i in order]


def make_plan(
    table: pd.DataFrame,
    targets: Sequence[Target],
    cost_models: Mapping[str, CostModel | None],
    *,
    policy: str = "threshold",
    task_size: int = 256,
    model: str | None = None,
) -> Plan:
    """Assign each request (row of ``table``) to a target and a task, and predict its cost.

    ``table`` needs ``line``, ``input_tokens`` and ``max_new_tokens`` (the output tokens planned for
    are the request's ``max_new_tokens``). ``cost_models`` maps target names to models (None: no
    profile). ``model`` only improves error messages. Within a target, requests are sorted by
    ``input_tokens`` then ``line`` (stable) and cut into tasks of ``target.task_size or task_size``
    requests whose predicted runtime also fits ``TIME_LIMIT_SHARE`` of the target's time limit (the rest
    is the margin for loading the model and for prediction error); task indices run 0..K−1 over the
    targets in the order given.
    """
    names = _check_targets(targets)
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

    thresholds: dict[str, Any] = {}
    warnings: list[str] = []
    if policy == "threshold":
        if len(targets) == 1:
            target_idx = np.zeros(len(table), dtype=np.int64)
        else:
            _require_cost_models(targets, cost_models, policy, model)
            models = {n: m for n in names if (m := cost_models.get(n)) is not None}
            target_idx, thresholds, ladder_warnings = _route_threshold(n_in, n_out, names, models)
            warnings += ladder_warnings
    elif policy.startswith("single:"):
        wanted = policy.removeprefix("single:")
        if wanted not in names:
            raise ConfigError(
                f"policy {policy!r} names target {wanted!r}, which is not configured; "
                f"targets: {', '.join(names)}"
            )
        target_idx = np.full(len(table), names.index(wanted), dtype=np.int64)
    else:
        raise ConfigError(
            f"unknown policy {policy!r}; valid policies: {', '.join(POLICIES)} (targets: {', '.join(names)})"
        )

    energy = np.full(len(table), np.nan)
    runtime = np.full(len(table), np.nan)
    extrapolated = np.zeros(len(table), dtype=bool)
    profiles: dict[str, str | None] = {}
    for i, name in enumerate(names):
        cost_model = cost_models.get(name)
        profiles[name] = cost_model.profile_name if cost_model is not None else None
        mask = target_idx == i
        n_here = int(mask.sum())
        if cost_model is None:
            continue  # no profile: predictions stay NaN (``profiles[name]`` is None says why)
        if not n_here:
            continue
        prediction = cost_model.predict(n_in[mask], n_out[mask])
        energy[mask] = prediction.energy_j
        runtime[mask] = prediction.runtime_s
        extrapolated[mask] = prediction.extrapolated
        warnings += _prediction_warnings(
            name, cost_model, n_here, prediction.extrapolated, prediction.floored
        )

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
    return Plan(
        assignments=assignments,
        tasks=tasks,
        policy=policy,
        targets=names,
        thresholds=thresholds,
        warnings=warnings,
        profiles=profiles,
    )


def _check_targets(targets: Sequence[Target]) -> list[str]:
    if not targets:
        raise ConfigError("no targets to plan for: declare at least one [targets.NAME] table in the config")
    names = [t.name for t in targets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"target name(s) used twice: {', '.join(duplicates)}; target names must be unique")
    return names


def _require_cost_models(
    targets: Sequence[Target], cost_models: Mapping[str, CostModel | None], policy: str, model: str | None
) -> None:
    for target in targets:
        if cost_models.get(target.name) is None:
            what = f"model {model!r}" if model else "the model"
            raise PlanningError(
                f"policy {policy!r} with {len(targets)} targets needs a profile for every target, but target "
                f"{target.name!r} (hardware {target.hardware!r}) has no profile for {what}. Fix: set "
                f'profile = "<profile name>" in [targets.{target.name}] of the config, or profile '
                f"{what} on hardware {target.hardware!r} and add it to the profile path; or plan with "
                "policy 'single:<target>'"
            )


def _crossover(low: CostModel, high: CostModel, sweep: Sweep) -> int:
    lo_curve = low.energy_in if sweep == "input" else low.energy_out
    hi_curve = high.energy_in if sweep == "input" else high.energy_out
    start = max(lo_curve.low, hi_curve.low)
    stop = min(lo_curve.high, hi_curve.high)
    tokens = lo_curve.tokens[(lo_curve.tokens >= start) & (lo_curve.tokens <= stop)]
    if tokens.size == 0:
        return 0
    _, ept_low = low.energy_per_token(sweep, tokens)
    _, ept_high = high.energy_per_token(sweep, tokens)
    cheaper_so_far = np.logical_and.accumulate(ept_low <= ept_high)
    return int(tokens[cheaper_so_far][-1]) if cheaper_so_far.any() else 0


def _route_threshold(
    n_in: np.ndarray, n_out: np.ndarray, names: list[str], models: Mapping[str, CostModel]
) -> tuple[np.ndarray, dict[str, Any], list[str]]:
    """Ladder of thresholds: cheapest target first; each takes what fits under its thresholds
    against the next; the last takes the rest. With two targets this is the paper's rule."""
    order = order_by_energy_per_token(models)
    rungs: list[dict[str, Any]] = []
    warnings: list[str] = []
    for low, high in itertools.pairwise(order):
        limits = threshold_between(models[low], models[high])
        rungs.append({**limits, "low": low, "high": high})
        for key, sweep, lo_curve, hi_curve in (
            ("input_tokens", "prompt", models[low].energy_in, models[high].energy_in),
            ("output_tokens", "output", models[low].energy_out, models[high].energy_out),
        ):
            if limits[key] == 0:
                warnings.append(
                    f"target {low!r} is not cheaper per token than {high!r} even at the shortest {sweep} "
                    f"measured: the threshold policy sends it nothing"
                )
            elif limits[key] >= min(lo_curve.high, hi_curve.high):
                warnings.append(
                    f"target {low!r} is cheaper per token than {high!r} at every {sweep} length both "
                    f"profiles measured (up to {limits[key]} tokens); longer {sweep}s go to {high!r} "
                    "only because nothing was measured there"
                )
    target_idx = np.full(len(n_in), names.index(order[-1]), dtype=np.int64)
    for rung in reversed(rungs):
        fits = (n_in <= rung["input_tokens"]) & (n_out <= rung["output_tokens"])
        target_idx[fits] = names.index(rung["low"])
    thresholds: dict[str, Any] = dict(rungs[0])
    if len(rungs) > 1:
        thresholds["ladder"] = rungs
    return target_idx, thresholds, warnings


def _prediction_warnings(
    name: str, model: CostModel, n_here: int, extrapolated: np.ndarray, floored: np.ndarray
) -> list[str]:
    out: list[str] = []
    n_extra = int(extrapolated.sum())
    if n_extra:
        out.append(
            f"{100 * n_extra / n_here:.1f} % of the requests on target {name!r} ({n_extra} of {n_here}) lie "
            f"outside the measured range of profile {model.profile_name!r} (prompt {model.energy_in.low:g}-"
            f"{model.energy_in.high:g}, output {model.energy_out.low:g}-{model.energy_out.high:g} tokens): "
            "their predictions extrapolate"
        )
    n_floor = int(floored.sum())
    if n_floor:
        out.append(
            f"{100 * n_floor / n_here:.1f} % of the requests on target {name!r} ({n_floor} of {n_here}) hit "
            f"the cost model's floor (lowest measured cost per token of {model.profile_name!r}): the "
            "separable model undershoots there, so treat those predictions as rough"
        )
    return out


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
