"""Plans in time: the planning grid, each site's rates and power, and the report of when and where tasks run.

This module joins the sites (:mod:`hpcqueue.sites`) to the solver (:mod:`hpcqueue.planner.timing`): it
builds the grid from the plan's start, deadline and slot, prices every target's slots with its site's PUE,
carbon intensity, water and price, limits each site's targets to its available power, and turns the
placement into task columns and a JSON-ready report. It also weighs the targets for routing, so that the
routing policies see a site's mean rates over the horizon (where), and the placement its hourly ones (when).

With no ``[sites]`` in the config, every target sits at an unnamed site that states nothing: carbon, water
and cost are unknown (null), facility energy too, and the energy objective uses IT energy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from hpcqueue.config import Target
from hpcqueue.errors import ConfigError
from hpcqueue.planner import timing
from hpcqueue.planner.options import PlanOptions
from hpcqueue.planner.timing import Capacity, Placement, Schedule, Tasks, TimeGrid
from hpcqueue.sites import Site, SlotFactors

#: The baselines in time a report's ``baselines`` holds beside the routing policies'.
TIME_BASELINES = ("run_at_submit", "best_window", "best_single_site")
#: The per-task columns a placement adds to a plan's task table.
TASK_COLUMNS = ("start_s", "facility_energy_j", "carbon_g", "water_l", "cost_usd")


@dataclass
class TimePlan:
    """A plan's placement in time, with the names and sites it was made for."""

    placement: Placement
    targets: list[str]
    site_names: list[str]
    sites: dict[str, Site]

    @property
    def grid(self) -> TimeGrid:
        return self.placement.grid

    def task_columns(self) -> dict[str, np.ndarray]:
        """Per task: the planned start (seconds after the plan's start) and predicted facility energy,
        carbon, water and cost (NaN where unknown)."""
        return _columns(self.placement.plan, self.grid)

    def report(self, task_target: Sequence[str], task_requests: Sequence[int]) -> dict[str, Any]:
        """The plan's totals, per-target starts, baselines and how the placement was made, JSON-ready."""
        plan = self.placement.plan
        out: dict[str, Any] = _totals(plan)
        out["per_target"] = self._starts(plan, task_target, task_requests)
        out["baselines"] = {
            name: _totals(b) | {"per_target": self._starts(b, task_target, task_requests)}
            for name, b in self.placement.baselines.items()
        }
        grid = self.grid
        out["time"] = {
            "start": grid.start.isoformat(),
            "deadline": None if grid.deadline_s is None else grid.time_at(grid.deadline_s).isoformat(),
            "slot_s": grid.slot_s,
            "objective": self.placement.weights,
            "scales": self.placement.scales,
            "method": plan.method,
            "exact": plan.exact,
            "gap": plan.gap,
            "forecast": "the series as given, taken as known for the whole horizon",
            "notes": list(self.placement.notes),
        }
        out["sites"] = {name: site.describe() for name, site in self.sites.items()}
        return out

    def merge(self, report: dict[str, Any], task_target: Sequence[str], task_requests: Sequence[int]) -> None:
        """Add :meth:`report` to a policy comparison (:func:`hpcqueue.planner.policies.compare`): the
        totals in time at the top, ``site`` and ``starts`` in each ``per_target`` row, the baselines in time
        beside the policies' in ``baselines``, and ``time`` and ``sites``."""
        in_time = self.report(task_target, task_requests)
        for name, row in in_time.pop("per_target").items():
            report["per_target"].setdefault(name, {}).update(row)
        report["baselines"].update(in_time.pop("baselines"))
        report.update(in_time)

    def _starts(
        self, schedule: Schedule, task_target: Sequence[str], task_requests: Sequence[int]
    ) -> dict[str, dict[str, Any]]:
        frame = pd.DataFrame(
            {
                "target": np.asarray(task_target, dtype=object),
                "slot": schedule.start_slot,
                "requests": np.asarray(task_requests, dtype=np.int64),
            }
        )
        out: dict[str, dict[str, Any]] = {}
        for j, name in enumerate(self.targets):
            mine = frame[frame["target"] == name]
            groups = mine.groupby("slot", sort=True)
            starts = [
                {
                    "start": self.grid.time_at(int(slot) * self.grid.slot_s).isoformat(),
                    "tasks": len(rows),
                    "requests": int(rows["requests"].sum()),
                }
                for slot, rows in groups
            ]
            out[name] = {"site": self.site_names[j], "starts": starts}
        return out


def _totals(schedule: Schedule) -> dict[str, Any]:
    totals = schedule.totals()
    return {
        "energy_j": totals["energy_j"],
        "facility_energy_j": totals["facility_energy_j"],
        "carbon_g": totals["carbon_g"],
        "water_l": totals["water_l"],
        "water_onsite_l": totals["water_onsite_l"],
        "water_offsite_l": totals["water_offsite_l"],
        "cost_usd": totals["cost_usd"],
        "finish_s": totals["finish_s"],
        "objective": totals["objective"] if math.isfinite(totals["objective"]) else None,
        "meets_deadline": totals["meets_deadline"],
    }


def _columns(schedule: Schedule, grid: TimeGrid) -> dict[str, np.ndarray]:
    m = schedule.metrics
    return {
        "start_s": schedule.start_slot.astype(float) * grid.slot_s,
        "facility_energy_j": m["facility_energy_j"],
        "carbon_g": m["carbon_g"],
        "water_l": m["water_onsite_l"] + m["water_offsite_l"],
        "cost_usd": m["cost_usd"],
    }


# --- building the problem ---------------------------------------------------------------------------


def _site_names(targets: Sequence[Target], sites: Mapping[str, Site]) -> list[str]:
    names = []
    for target in targets:
        if sites and target.site not in sites:
            raise ConfigError(
                f"target {target.name!r} names site {target.site!r}, which the config does not declare; "
                f"sites: {', '.join(sites)}"
            )
        names.append(target.site)
    return names


def _factors(
    site_order: Sequence[str], sites: Mapping[str, Site], grid: TimeGrid
) -> list[SlotFactors | None]:
    return [sites[name].factors(grid.starts, grid.slot_s) if name in sites else None for name in site_order]


def _capacity(
    targets: Sequence[Target], site_index: Sequence[int], factors: Sequence[SlotFactors | None], n_slots: int
) -> Capacity:
    site_power = np.full((len(factors), n_slots), np.inf)
    for k, f in enumerate(factors):
        if f is not None and f.power_kw is not None:
            site_power[k] = np.asarray(f.power_kw, dtype=float) * 1000.0
    power_w = np.full(len(targets), np.nan)
    for j, target in enumerate(targets):
        draw = target.power_w or target.nominal_power_w
        if draw is not None:
            power_w[j] = draw
        elif np.isfinite(site_power[site_index[j]]).any():
            raise ConfigError(
                f"target {target.name!r} is at site {target.site!r}, whose power is limited, but states no "
                f"power_w: set power_w (a node's draw while busy, W) in [targets.{target.name}]"
            )
    return Capacity(
        parallelism=np.array([t.array_parallelism for t in targets], dtype=np.int64),
        power_w=power_w,
        site=np.asarray(site_index, dtype=np.int64),
        site_power_w=site_power,
    )


def _horizon_s(tasks: Tasks, targets: Sequence[Target], slot_s: float) -> float:
    """How long the tasks take run as soon as possible, at most, without power limits: per target its
    work over its array elements plus its longest task, and a slot of rounding."""
    runtime = np.nan_to_num(tasks.runtime_s, nan=0.0)
    longest = 0.0
    for j, target in enumerate(targets):
        mine = runtime[tasks.target == j]
        if mine.size:
            longest = max(longest, mine.sum() / target.array_parallelism + mine.max())
    return longest + slot_s


def _grid(
    start: datetime,
    deadline_s: float | None,
    options: PlanOptions,
    horizon_s: float,
    site_order: Sequence[str],
    sites: Mapping[str, Site],
) -> TimeGrid:
    """The slots the plan needs: to the deadline (a series that does not reach it is an error, raised by
    the series), and past it as far as the run-at-submit baseline may need while every series reaches."""
    if deadline_s is not None:
        horizon_s = min(horizon_s, HORIZON_FACTOR * deadline_s + options.slot_s)
    wanted = TimeGrid.covering(start, options.slot_s, deadline_s, horizon_s)
    ends = [
        span[1]
        for name in dict.fromkeys(site_order)
        if name in sites and (span := sites[name].span()) is not None
    ]
    if not ends:
        return wanted
    data_end = min(ends)
    first = np.datetime64(wanted.starts[0], "s")
    room = int((data_end - first) / np.timedelta64(1, "s") // options.slot_s)
    need = math.ceil((deadline_s or options.slot_s) / options.slot_s - 1e-9)
    return TimeGrid(start, options.slot_s, max(min(wanted.n_slots, room), need), deadline_s)


def wanted(sites: Mapping[str, Site], options: PlanOptions) -> bool:
    """Whether a plan is placed in time: when the config has sites, or a start or an objective is given.
    Without them a plan is what it was before plans had times (a deadline alone bounds the routing's
    capacity, as it always did)."""
    return bool(sites) or options.start is not None or options.objective is not None


#: The least ``--time-min`` sbatch takes (one minute) and how late after its begin time slurmctld's
#: scheduling pass may start a job (6-16 s measured on a 22.05 cluster, with room to spare). Slurm removes a
#: job that can no longer end by its deadline with its minimum time, so a Slurm task must start at least
#: this much before the deadline, however short it is.
SLURM_MIN_TIME_S = 60.0
SLURM_START_DELAY_S = 30.0


def deadline_needs(task_target: np.ndarray, runtime_s: np.ndarray, targets: Sequence[Target]) -> np.ndarray:
    """The time each task needs between its planned start and the deadline: its runtime on the local node;
    on Slurm, the scheduling delay plus the longer of its runtime and sbatch's least minimum time."""
    runtime = np.nan_to_num(np.asarray(runtime_s, dtype=float), nan=0.0)
    slurm = np.array([t.executor == "slurm" for t in targets] or [False], dtype=bool)
    on_slurm = slurm[np.asarray(task_target, dtype=np.int64)]
    return np.where(on_slurm, SLURM_START_DELAY_S + np.maximum(runtime, SLURM_MIN_TIME_S), runtime)


#: How far past the deadline the grid may reach to find the run-at-submit baseline and the earliest
#: workable deadline: this many times the deadline, at most.
HORIZON_FACTOR = 4.0


def place_tasks(
    task_target: np.ndarray,
    energy_j: np.ndarray,
    runtime_s: np.ndarray,
    targets: Sequence[Target],
    sites: Mapping[str, Site],
    options: PlanOptions,
    start: datetime,
    deadline_s: float | None,
    scales: Mapping[str, float] | None = None,
) -> TimePlan:
    """Place the tasks (target index, predicted IT energy and runtime each) in time, see
    :func:`hpcqueue.planner.timing.place`. A task on a Slurm target starts early enough to keep Slurm's
    margin before the deadline (:func:`deadline_needs`)."""
    tasks = Tasks(
        np.asarray(task_target, dtype=np.int64),
        np.asarray(energy_j, dtype=float),
        np.asarray(runtime_s, dtype=float),
        deadline_needs(task_target, runtime_s, targets),
    )
    names = _site_names(targets, sites)
    site_order = list(dict.fromkeys(names))
    site_index = [site_order.index(n) for n in names]
    grid = _grid(start, deadline_s, options, _horizon_s(tasks, targets, options.slot_s), site_order, sites)
    factors = _factors(site_order, sites, grid)
    capacity = _capacity(targets, site_index, factors, grid.n_slots)
    rates = timing.site_rates(factors, site_index, grid.n_slots)
    placement = timing.place(
        tasks, grid, capacity, rates, options.weights, defer=options.defer, scales=scales
    )
    used = {n: sites[n] for n in site_order if n in sites}
    return TimePlan(placement, [t.name for t in targets], names, used)


@dataclass(frozen=True)
class RoutingView:
    """What the routing policies see of the plan in time: λ, a per-target multiplier of energy, and each
    target's array elements for its capacity (None: its ``array_parallelism``)."""

    lam: float
    multiplier: np.ndarray
    slots: np.ndarray | None = None


def routing_view(
    targets: Sequence[Target],
    sites: Mapping[str, Site],
    options: PlanOptions,
    start: datetime,
    deadline_s: float | None,
) -> RoutingView:
    """The routing's view of the sites over the horizon (to the deadline, else one slot), read once:

    * λ: the share of the objective's weights that is not runtime (without an objective, the options' λ);
    * the multiplier: each weighted objective other than runtime contributes its mean rate at the target's
      site, relative to the mean over the targets, so that the routing cost favours sites that are cheaper in
      the objective (1 where rates are unknown);
    * the slots: at a site whose power is limited, the elements each target can keep busy on average before
      the deadline — the site's power shared among its targets in proportion to what they draw at full
      parallelism (None when no site limits power, or without a deadline).
    """
    weights = options.weights
    other = {k: w for k, w in weights.items() if k != "runtime"}
    lam = options.lam
    if options.objective is not None:
        lam = sum(other.values()) / sum(weights.values()) if other else 0.0
    multiplier = np.ones(len(targets))
    if not sites:
        return RoutingView(lam, multiplier)
    names = _site_names(targets, sites)
    order = list(dict.fromkeys(names))
    site_index = [order.index(n) for n in names]
    n_slots = max(1, math.ceil(deadline_s / options.slot_s - 1e-9)) if deadline_s is not None else 1
    grid = TimeGrid(start, options.slot_s, n_slots, None)
    factors = _factors(order, sites, grid)
    if other:
        rates = timing.site_rates(factors, site_index, grid.n_slots)
        total = np.zeros(len(targets))
        for name, weight in other.items():
            per_target = sum(np.nanmean(rates[metric], axis=1) for metric in timing.OBJECTIVE_METRICS[name])
            if name == "energy":
                per_target = np.where(np.isnan(per_target), 1.0, per_target)
            if np.isnan(per_target).any() or not np.nanmean(np.abs(per_target)) > 0:
                continue  # unknown somewhere: the placement says so; routing ignores it
            total += weight / sum(other.values()) * per_target / np.mean(np.abs(per_target))
        multiplier = np.where(total > 0, total, multiplier)
    limited = any(f is not None and f.power_kw is not None for f in factors)
    slots = (
        _busy_elements(_capacity(targets, site_index, factors, n_slots)) if limited and deadline_s else None
    )
    return RoutingView(lam, multiplier, slots)


def _busy_elements(capacity: Capacity) -> np.ndarray:
    """Per target, the elements its share of the site's power keeps busy, averaged over the slots."""
    draw = capacity.parallelism * np.nan_to_num(capacity.power_w, nan=0.0)
    site_draw = np.bincount(capacity.site, weights=draw, minlength=capacity.site_power_w.shape[0])
    share = np.divide(
        draw, site_draw[capacity.site], out=np.zeros_like(draw), where=site_draw[capacity.site] > 0
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        nodes = np.floor(capacity.site_power_w[capacity.site] * share[:, None] / capacity.power_w[:, None])
    nodes = np.minimum(np.nan_to_num(nodes, nan=np.inf, posinf=np.inf), capacity.parallelism[:, None])
    return np.asarray(np.floor(nodes.mean(axis=1)), dtype=np.int64)
