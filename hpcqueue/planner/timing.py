"""Time placement: when each task starts, so that a batch costs least at the hours and sites where it runs,
within every target's capacity and every site's power, before the deadline.

The routing policies (:mod:`hpcqueue.planner.policies`) decide *where* each request runs and
:func:`hpcqueue.planner.plan.plan_requests` cuts a target's requests into array tasks; this module decides
*when* each task starts. Time is cut into slots of ``slot_s`` seconds from the plan's start.

The model
    A task with IT energy E (J) and runtime d (s) that starts in slot s runs from the slot's start for d
    seconds and draws its energy evenly: slot s + i receives the share oᵢ / d of it, where
    oᵢ = min(slot, d − i·slot) is the time it runs there. Per IT joule in a slot, a site charges its PUE
    (facility energy), PUE × carbon intensity (carbon), WUE (on-site water) plus PUE × the water of its
    electricity (off-site water) and PUE × price (cost): the *rates* of :func:`site_rates`.

Capacity and power
    Target t runs at most nₜ(u) ≤ ``array_parallelism`` tasks at once in slot u: the seconds of work placed
    there are at most nₜ(u) × the slot's length (an array element runs its tasks back to back; a task longer
    than a slot holds its element in every slot it spans). The targets of a site draw Σₜ nₜ(u) × ``power_w``
    in slot u, which must not exceed the site's available power there. nₜ(u) is a decision only at sites
    whose power is limited; elsewhere it is the array parallelism.

The objective
    Σₘ wₘ · Mₘ / scaleₘ over the weighted metrics m — ``energy`` (facility energy; IT energy where no site
    states a PUE), ``carbon``, ``water`` (on-site plus off-site), ``cost`` and ``runtime`` (the sum of the
    tasks' finish times after the start) — each divided by a yardstick: its total if every task started in
    the first slot, capacity aside (so that weights compare like with like; a single objective needs no
    scale). Among equal plans the earlier start wins.

The solution
    :func:`place` solves the integer programme — binary yⱼₛ (task j starts in slot s) and integer nₜ(u) —
    with HiGHS (:func:`scipy.optimize.milp`): first its LP relaxation, whose value bounds the optimum from
    below and which leaves only a few tasks split, then the integer programme over those few with the rest
    held where the LP puts them (*LP rounding*), improved by moving single tasks; when that is not proven
    within ``EXACT_RTOL`` (0.1 %) and the programme is small (``max_milp_vars``), the whole integer
    programme, within a time limit. A greedy pass (the longest tasks first, each into its cheapest slot that
    still fits) gives one more candidate. The method and the gap to the bound are reported with the plan.

    Two baselines are feasible plans of the same problem: ``run_at_submit`` (every task as soon as capacity
    allows, in task order: what Slurm does with the arrays submitted now) and ``best_window`` (that schedule
    moved as one block to the cheapest start before the deadline, as CATS does for a whole job). The plan
    returned is the cheapest of all these, so it is never worse than either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from hpcqueue.errors import ConfigError, PlanningError
from hpcqueue.planner.optimal import c_stdout_silenced

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

J_PER_KWH = 3.6e6
#: Metrics a schedule is priced in, per IT joule of a task (see :func:`site_rates`).
RATE_METRICS = ("facility_energy_j", "carbon_g", "water_onsite_l", "water_offsite_l", "cost_usd")
#: What each objective sums.
OBJECTIVE_METRICS: dict[str, tuple[str, ...]] = {
    "energy": ("facility_energy_j",),
    "carbon": ("carbon_g",),
    "water": ("water_onsite_l", "water_offsite_l"),
    "cost": ("cost_usd",),
    "runtime": ("finish_s",),
}
_RTOL = 1e-9
#: A plan proven within this relative distance of the optimum is called exact: a tenth of a percent is far
#: below the accuracy of the predictions and series it is made from, and proving more can take HiGHS seconds
#: on a few hundred tasks that pack tightly into their slots.
EXACT_RTOL = 1e-3


@dataclass(frozen=True)
class TimeGrid:
    """Planning slots from ``start`` (UTC): ``n_slots`` of ``slot_s`` seconds. ``deadline_s`` (seconds
    after the start; None: no deadline) may lie before the grid's end: the grid can reach past it so that
    the run-at-submit baseline and the earliest workable deadline can be found."""

    start: datetime
    slot_s: float
    n_slots: int
    deadline_s: float | None

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("the grid's start needs a time zone")
        if not self.slot_s > 0:
            raise ConfigError(f"the slot must be positive, got {self.slot_s} s")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ConfigError(f"the deadline must come after the start, got {self.deadline_s:g} s after it")

    @classmethod
    def covering(cls, start: datetime, slot_s: float, deadline_s: float | None, horizon_s: float) -> TimeGrid:
        """Slots from ``start`` to the later of the deadline and ``horizon_s`` seconds after the start."""
        end_s = max(deadline_s or 0.0, horizon_s, slot_s)
        return cls(start, float(slot_s), max(1, math.ceil(end_s / slot_s - _RTOL)), deadline_s)

    @property
    def offsets_s(self) -> FloatArray:
        return np.arange(self.n_slots, dtype=float) * self.slot_s

    @property
    def starts(self) -> npt.NDArray[np.datetime64]:
        """Slot starts as UTC ``datetime64[s]``."""
        first = np.datetime64(self.start.astimezone(timezone.utc).replace(tzinfo=None), "s")
        return first + (self.offsets_s).astype("timedelta64[s]")

    @property
    def end_s(self) -> float:
        return self.n_slots * self.slot_s

    def time_at(self, offset_s: float) -> datetime:
        return self.start + timedelta(seconds=float(offset_s))


@dataclass(frozen=True)
class Tasks:
    """The tasks to place: each one's target (index), predicted IT energy (J) and runtime (s). NaN energy
    or runtime (a target without a cost model) counts as 0: such tasks start as soon as they can.
    ``needs_s`` (default: the runtime) is the time each task must have between its start and the deadline,
    which on Slurm is more than the runtime (see :func:`hpcqueue.planner.schedule.deadline_needs`)."""

    target: IntArray
    energy_j: FloatArray
    runtime_s: FloatArray
    needs_s: FloatArray | None = None

    def __len__(self) -> int:
        return int(self.target.size)


@dataclass(frozen=True)
class Capacity:
    """What the targets can run at once: ``parallelism`` (T,) array elements, ``power_w`` (T,) a node's draw
    while busy (NaN: not stated), ``site`` (T,) the index of each target's site, and ``site_power_w``
    (sites, slots) the power available to each site's targets (inf: unlimited)."""

    parallelism: IntArray
    power_w: FloatArray
    site: IntArray
    site_power_w: FloatArray

    @property
    def limited(self) -> BoolArray:
        """(T,) targets at a site whose power is limited in some slot."""
        per_site = np.asarray(np.isfinite(self.site_power_w).any(axis=1), dtype=bool)
        return np.asarray(per_site[self.site], dtype=bool)


@dataclass(frozen=True)
class Schedule:
    """A start slot for every task, with what that costs."""

    name: str
    start_slot: IntArray
    metrics: dict[str, FloatArray]  # per task: RATE_METRICS, "energy_j", "finish_s"
    objective: float
    nodes: IntArray  # (T, slots): array elements busy per slot
    site_power_w: FloatArray  # (sites, slots): the power the plan draws
    meets_deadline: bool
    method: str = ""
    exact: bool | None = None
    gap: float | None = None

    def total(self, metric: str) -> float | None:
        """The sum over tasks; None when unknown for some task that has energy."""
        values = self.metrics[metric]
        return None if np.isnan(values).any() else float(values.sum())

    def totals(self) -> dict[str, Any]:
        onsite, offsite = self.total("water_onsite_l"), self.total("water_offsite_l")
        finish = self.metrics["finish_s"]
        last = None if np.isnan(finish).any() else float(np.max(finish, initial=0.0))
        return {
            "energy_j": self.total("energy_j"),
            "facility_energy_j": self.total("facility_energy_j"),
            "carbon_g": self.total("carbon_g"),
            "water_l": None if onsite is None or offsite is None else onsite + offsite,
            "water_onsite_l": onsite,
            "water_offsite_l": offsite,
            "cost_usd": self.total("cost_usd"),
            "finish_s": last,
            "objective": self.objective,
            "meets_deadline": None if last is None else self.meets_deadline,
        }


@dataclass
class Placement:
    """The plan's schedule, its baselines and how it was found."""

    plan: Schedule
    baselines: dict[str, Schedule]
    grid: TimeGrid
    weights: dict[str, float]
    scales: dict[str, float]
    notes: list[str] = field(default_factory=list)
    inputs: Inputs | None = field(default=None, repr=False)

    @property
    def start_s(self) -> FloatArray:
        return self.plan.start_slot.astype(float) * self.grid.slot_s


# --- rates -------------------------------------------------------------------------------------------


def site_rates(
    factors: Sequence[Any | None], site_of_target: Sequence[int], n_slots: int
) -> dict[str, FloatArray]:
    """Per target (T, slots) and per IT joule: facility energy (J), carbon (g), on-site and off-site water
    (L) and cost (USD), from each site's :class:`hpcqueue.sites.SlotFactors` (None: a site that states
    nothing). Unknown rates are NaN; facility energy without a PUE is NaN too (the objective then uses IT
    energy)."""
    rows: dict[str, list[FloatArray]] = {metric: [] for metric in RATE_METRICS}
    nan = np.full(n_slots, np.nan)
    for index in site_of_target:
        f = factors[index]
        if f is None:
            for metric in RATE_METRICS:
                rows[metric].append(nan)
            continue
        pue = np.asarray(f.pue, dtype=float)
        rows["facility_energy_j"].append(pue)
        rows["carbon_g"].append(_times(pue, f.carbon_g_per_kwh, 1 / J_PER_KWH))
        rows["water_onsite_l"].append(_times(np.ones_like(pue), f.wue_l_per_kwh, 1 / J_PER_KWH))
        rows["water_offsite_l"].append(_times(pue, f.water_l_per_kwh, 1 / J_PER_KWH))
        rows["cost_usd"].append(_times(pue, f.price_usd_per_mwh, 1 / (J_PER_KWH * 1000)))
    return {
        metric: np.vstack(values) if values else np.zeros((0, n_slots)) for metric, values in rows.items()
    }


def _times(pue: FloatArray, series: FloatArray | None, unit: float) -> FloatArray:
    return np.full_like(pue, np.nan) if series is None else pue * np.asarray(series, dtype=float) * unit


# --- the problem -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Problem:
    tasks: Tasks
    grid: TimeGrid
    cap: Capacity
    energy: FloatArray  # (J,) NaN → 0
    runtime: FloatArray  # (J,) NaN → 0
    needs: FloatArray  # (J,) the time before the deadline each task needs from its start (≥ runtime)
    occ: FloatArray  # (J, max span): seconds run in each spanned slot
    span: IntArray  # (J,)
    lengths: FloatArray  # (S,) seconds of each slot
    metrics: dict[
        str, FloatArray
    ]  # (J, S) per start slot; NaN where unknown or the task does not fit the grid
    cost: FloatArray  # (J, S) the weighted objective per start; inf where not allowed
    within: BoolArray  # (J, S) finishes by the deadline and within the grid

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def n_slots(self) -> int:
        return self.grid.n_slots


#: What a placement is made from: the tasks, the grid, the capacity, the rates and the objective's weights.
Inputs = tuple[Tasks, TimeGrid, Capacity, Mapping[str, FloatArray], Mapping[str, float]]


def _problem(inputs: Inputs, scales: Mapping[str, float] | None) -> tuple[_Problem, dict[str, float]]:
    tasks, grid, cap, rates, weights = inputs
    n, s = len(tasks), grid.n_slots
    energy = np.nan_to_num(np.asarray(tasks.energy_j, dtype=float), nan=0.0)
    runtime = np.nan_to_num(np.asarray(tasks.runtime_s, dtype=float), nan=0.0)
    if np.any(runtime < 0) or np.any(energy < 0):
        raise PlanningError("task energy and runtime must not be negative")
    span = np.maximum(1, np.ceil(runtime / grid.slot_s - _RTOL)).astype(np.int64)
    width = int(span.max()) if n else 1
    steps = np.arange(width) * grid.slot_s
    occ = np.clip(runtime[:, None] - steps[None, :], 0.0, grid.slot_s)
    occ[np.arange(width)[None, :] >= span[:, None]] = 0.0
    share = np.where(runtime[:, None] > 0, occ / np.where(runtime > 0, runtime, 1.0)[:, None], 0.0)
    share[:, 0] = np.where(runtime > 0, share[:, 0], 1.0)  # a task of no length is counted in its slot

    offsets = grid.offsets_s
    finish = offsets[None, :] + runtime[:, None]
    fits_grid = np.arange(s)[None, :] + span[:, None] <= s
    deadline = grid.deadline_s if grid.deadline_s is not None else grid.end_s
    needs = runtime if tasks.needs_s is None else np.maximum(runtime, np.nan_to_num(tasks.needs_s, nan=0.0))
    due = offsets[None, :] + needs[:, None]
    within = fits_grid & (due <= deadline * (1 + _RTOL) + 1e-6)

    # a task on a target without a cost model: it takes room as a task of no length, its figures unknown
    known = np.isfinite(np.asarray(tasks.energy_j, dtype=float))[:, None]
    metrics: dict[str, FloatArray] = {
        "energy_j": np.where(known, np.repeat(energy[:, None], s, axis=1), np.nan),
        "finish_s": np.where(np.isfinite(np.asarray(tasks.runtime_s, dtype=float))[:, None], finish, np.nan),
    }
    for metric in RATE_METRICS:
        rate = np.asarray(rates[metric], dtype=float)
        padded = np.concatenate([rate, np.full((rate.shape[0], width), np.nan)], axis=1)
        total = np.zeros((n, s))
        for i in range(width):
            part = padded[tasks.target, i : i + s] * share[:, i : i + 1]
            total += np.where(share[:, i : i + 1] > 0, part, 0.0)
        total = total * energy[:, None]
        # a task whose energy is known but whose site does not state the rate: unknown
        unknown = np.isnan(rate).any(axis=1)[tasks.target]
        total[unknown] = np.nan
        total[~fits_grid | ~known] = np.nan
        metrics[metric] = total

    lengths = np.minimum(grid.slot_s, grid.end_s - offsets)
    problem = _Problem(
        tasks, grid, cap, energy, runtime, needs, occ, span, lengths, metrics, np.zeros((n, s)), within
    )
    scales = dict(scales) if scales is not None else _scales(problem, weights)
    return _with_cost(problem, weights, scales), scales


def _objective_terms(problem: _Problem, name: str) -> FloatArray:
    """(J, S) values of one objective; energy falls back to IT energy where no PUE is stated."""
    parts = [problem.metrics[m] for m in OBJECTIVE_METRICS[name]]
    value = parts[0] if len(parts) == 1 else parts[0] + parts[1]
    if name == "energy":
        value = np.where(np.isnan(value), problem.metrics["energy_j"], value)
    return value


def _scales(problem: _Problem, weights: Mapping[str, float]) -> dict[str, float]:
    """Each weighted objective's total when every task starts in the first slot (a yardstick only)."""
    out = {}
    for name in weights:
        first = _objective_terms(problem, name)[:, 0]
        total = float(np.nansum(np.abs(first)))
        out[name] = total if total > 0 else 1.0
    return out


def _with_cost(problem: _Problem, weights: Mapping[str, float], scales: Mapping[str, float]) -> _Problem:
    n, s = problem.n_tasks, problem.n_slots
    cost = np.zeros((n, s))
    has_energy = problem.energy > 0
    for name, weight in weights.items():
        if name not in OBJECTIVE_METRICS:
            raise ConfigError(f"unknown objective {name!r}; objectives: {', '.join(OBJECTIVE_METRICS)}")
        value = _objective_terms(problem, name)
        missing = np.isnan(value) & problem.within & has_energy[:, None]
        if missing.any():
            raise ConfigError(
                f"objective {name} needs {'carbon intensity' if name == 'carbon' else name} data at every "
                f"site that runs work; {int(missing.any(axis=1).sum())} task(s) run where none is stated: "
                f"set it in the [sites.NAME] table of their target's site"
            )
        cost += weight * np.nan_to_num(value, nan=0.0) / scales[name]
    # ties go to the earlier start: far below any real difference
    typical = float(np.abs(cost).max()) if cost.size else 0.0
    cost += (typical if typical > 0 else 1.0) * 1e-9 * np.arange(s)[None, :] / max(s, 1)
    cost = np.where(problem.within, cost, np.inf)
    return _Problem(**{**problem.__dict__, "cost": cost})


# --- feasibility and schedules ----------------------------------------------------------------------


class _Loads:
    """Seconds of work per target and slot; the busy elements and each site's draw follow from them."""

    def __init__(self, problem: _Problem) -> None:
        self.p = problem
        t, s = len(problem.cap.parallelism), problem.n_slots
        self.seconds = np.zeros((t, s))
        self.power = np.nan_to_num(problem.cap.power_w, nan=0.0)
        self.site_w = np.zeros((problem.cap.site_power_w.shape[0], s))

    @property
    def nodes(self) -> IntArray:
        return self._nodes(self.seconds, self.p.lengths[None, :])

    @staticmethod
    def _nodes(seconds: Any, lengths: Any) -> Any:
        return np.ceil(seconds / np.maximum(lengths, 1e-9) - 1e-9).astype(np.int64)

    def fits(self, j: int, starts: IntArray) -> BoolArray:
        """Which of ``starts`` task j could take now."""
        p, t = self.p, int(self.p.tasks.target[j])
        ok = np.ones(starts.size, dtype=bool)
        site = int(p.cap.site[t])
        for i in range(int(p.span[j])):
            u = starts + i
            inside = u < p.n_slots
            ok &= inside
            u = np.where(inside, u, 0)
            now = self._nodes(self.seconds[t, u], p.lengths[u])
            need = self._nodes(self.seconds[t, u] + p.occ[j, i], p.lengths[u])
            ok &= need <= p.cap.parallelism[t]
            extra = (need - now) * self.power[t]
            ok &= self.site_w[site, u] + extra <= p.cap.site_power_w[site, u] * (1 + _RTOL) + 1e-6
        return ok

    def add(self, j: int, start: int, sign: float = 1.0) -> None:
        p, t = self.p, int(self.p.tasks.target[j])
        site = int(p.cap.site[t])
        u = start + np.arange(int(p.span[j]))
        before = self._nodes(self.seconds[t, u], p.lengths[u])
        self.seconds[t, u] = np.maximum(self.seconds[t, u] + sign * p.occ[j, : u.size], 0.0)
        after = self._nodes(self.seconds[t, u], p.lengths[u])
        self.site_w[site, u] += (after - before) * self.power[t]

    def remove(self, j: int, start: int) -> None:
        self.add(j, start, sign=-1.0)


def _schedule(problem: _Problem, name: str, start: IntArray, **how: Any) -> Schedule | None:
    """Price a start per task; None when it breaks a capacity or power limit."""
    loads = _Loads(problem)
    for j in np.argsort(start, kind="stable"):
        if not loads.fits(int(j), np.array([start[j]]))[0]:
            return None
        loads.add(int(j), int(start[j]))
    rows = np.arange(problem.n_tasks)
    metrics = {m: v[rows, start] for m, v in problem.metrics.items()}
    within = bool(problem.within[rows, start].all()) if problem.n_tasks else True
    objective = float(problem.cost[rows, start].sum()) if within else math.inf
    return Schedule(name, start, metrics, objective, loads.nodes, loads.site_w, within, **how)


def _as_soon_as_possible(problem: _Problem) -> IntArray | None:
    """Every task, in task order, at the first slot where it fits (whatever the deadline)."""
    loads = _Loads(problem)
    start = np.zeros(problem.n_tasks, dtype=np.int64)
    every = np.arange(problem.n_slots, dtype=np.int64)
    for j in range(problem.n_tasks):
        ok = np.flatnonzero(loads.fits(j, every))
        if ok.size == 0:
            return None
        start[j] = ok[0]
        loads.add(j, int(ok[0]))
    return start


def _greedy(problem: _Problem) -> IntArray | None:
    """The longest tasks first (then the most energy), each into its cheapest slot that still fits."""
    loads = _Loads(problem)
    start = np.zeros(problem.n_tasks, dtype=np.int64)
    order = np.lexsort((-problem.energy, -problem.runtime))
    every = np.arange(problem.n_slots, dtype=np.int64)
    for j in order:
        cost = np.where(loads.fits(int(j), every), problem.cost[j], np.inf)
        best = int(np.argmin(cost))
        if not np.isfinite(cost[best]):
            return None
        start[j] = best
        loads.add(int(j), best)
    return start


def _improve(problem: _Problem, start: IntArray, max_rounds: int = 5) -> IntArray:
    """Move single tasks to cheaper slots that have room, the ones that would save most first, until no
    move saves anything (or ``max_rounds`` passes)."""
    start = start.copy()
    loads = _Loads(problem)
    for j in range(problem.n_tasks):
        loads.add(j, int(start[j]))
    every = np.arange(problem.n_slots, dtype=np.int64)
    rows = np.arange(problem.n_tasks)
    for _ in range(max_rounds):
        regret = problem.cost[rows, start] - problem.cost.min(axis=1)
        moved = False
        for j in np.argsort(-regret, kind="stable"):
            if regret[j] <= 0:
                break
            loads.remove(int(j), int(start[j]))
            cost = np.where(loads.fits(int(j), every), problem.cost[j], np.inf)
            best = int(np.argmin(cost))
            if cost[best] < problem.cost[j, start[j]]:
                start[j], moved = best, True
            loads.add(int(j), int(start[j]))
        if not moved:
            break
    return start


def _best_window(problem: _Problem, asap: IntArray) -> Schedule | None:
    """The run-at-submit schedule moved as one block to its cheapest feasible start."""
    best: Schedule | None = None
    last = int((asap + problem.span).max()) if asap.size else 0
    for shift in range(problem.n_slots - last + 1):
        moved = asap + shift
        rows = np.arange(problem.n_tasks)
        if not problem.within[rows, moved].all():
            continue
        candidate = _schedule(problem, "best_window", moved)
        if candidate is not None and (best is None or candidate.objective < best.objective):
            best = candidate
    return best


# --- the exact programme ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Exact:
    start: IntArray | None
    bound: float
    optimal: bool


def _solve_milp(
    problem: _Problem, time_limit_s: float, allowed: BoolArray | None = None, integral: bool = True
) -> _Exact:
    """yⱼₛ for ``allowed`` pairs (default: those within the deadline), nₜᵤ for targets at power-limited
    sites; capacity rows per target and slot, power rows per limited site and slot, scaled to 1. With
    ``integral=False`` the LP relaxation: ``start`` is then each task's slot where y is integral, else −1."""
    p, cap = problem, problem.cap
    n_t, n_s = len(cap.parallelism), p.n_slots
    allowed = p.within if allowed is None else allowed
    if not allowed.any(axis=1).all():  # some task has no slot it could finish in
        return _Exact(None, -math.inf, False)
    task_idx, slot_idx = np.nonzero(allowed)
    n_y = task_idx.size
    limited = np.flatnonzero(cap.limited)
    node_of = np.full(n_t, -1)
    node_of[limited] = np.arange(limited.size)
    n_n = limited.size * n_s
    n_var = n_y + n_n

    # each task starts once
    a_one = sparse.csr_array((np.ones(n_y), (task_idx, np.arange(n_y))), shape=(p.n_tasks, n_var))

    # capacity: Σ occupancy − length·n ≤ 0 (limited) or ≤ parallelism·length (others), per (target, slot)
    rows, cols, vals = [], [], []
    targets = p.tasks.target[task_idx]
    for i in range(p.occ.shape[1]):
        used = i < p.span[task_idx]
        u = slot_idx + i
        used &= u < n_s
        rows.append(targets[used] * n_s + u[used])
        cols.append(np.flatnonzero(used))
        vals.append(p.occ[task_idx[used], i])
    scale = np.maximum(np.repeat(cap.parallelism.astype(float), n_s) * np.tile(p.lengths, n_t), 1e-9)
    rhs = np.repeat(cap.parallelism.astype(float), n_s) * np.tile(p.lengths, n_t)
    for t in limited:
        rows.append(t * n_s + np.arange(n_s))
        cols.append(n_y + node_of[t] * n_s + np.arange(n_s))
        vals.append(-p.lengths)
    rhs[np.repeat(cap.limited, n_s)] = 0.0
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    a_cap = sparse.csr_array((v / scale[r], (r, c)), shape=(n_t * n_s, n_var))
    constraints = [
        LinearConstraint(a_one, np.ones(p.n_tasks), np.ones(p.n_tasks)),
        LinearConstraint(a_cap, -np.inf, rhs / scale),
    ]

    # power: Σ_t power_w·n ≤ available, per limited site and slot
    upper = np.concatenate([np.ones(n_y), np.repeat(cap.parallelism[limited].astype(float), n_s)])
    if limited.size:
        sites = np.unique(cap.site[limited])
        p_rows, p_cols, p_vals, p_rhs = [], [], [], []
        for k, site in enumerate(sites):
            available = cap.site_power_w[site]
            for t in limited[cap.site[limited] == site]:
                p_rows.append(k * n_s + np.arange(n_s))
                p_cols.append(n_y + node_of[t] * n_s + np.arange(n_s))
                p_vals.append(np.full(n_s, float(np.nan_to_num(cap.power_w[t], nan=0.0))))
            p_rhs.append(np.where(np.isfinite(available), available, 1e18))
        pr, pc, pv = np.concatenate(p_rows), np.concatenate(p_cols), np.concatenate(p_vals)
        bound_w = np.maximum(np.concatenate(p_rhs), 1.0)
        a_pow = sparse.csr_array((pv / bound_w[pr], (pr, pc)), shape=(sites.size * n_s, n_var))
        constraints.append(LinearConstraint(a_pow, -np.inf, np.concatenate(p_rhs) / bound_w))

    c = np.concatenate([p.cost[task_idx, slot_idx], np.zeros(n_n)])
    with c_stdout_silenced():
        res = milp(
            c=c,
            integrality=np.ones(n_var) if integral else np.zeros(n_var),
            bounds=Bounds(np.zeros(n_var), upper),
            constraints=constraints,
            options={"time_limit": float(time_limit_s), "mip_rel_gap": EXACT_RTOL},
        )
    if integral:
        raw = getattr(res, "mip_dual_bound", None)
        bound = float(raw) if raw is not None and np.isfinite(raw) else -math.inf
    else:
        bound = float(res.fun) if res.status == 0 and res.fun is not None else -math.inf
    if res.x is None:
        return _Exact(None, bound, False)
    start = np.full(p.n_tasks, -1, dtype=np.int64)
    chosen = res.x[:n_y] > 1 - 1e-7
    start[task_idx[chosen]] = slot_idx[chosen]
    if integral and (start < 0).any():  # pragma: no cover - HiGHS returned a point that is not integral
        return _Exact(None, bound, False)
    return _Exact(start, bound, res.status == 0)


def _solve_rounded(problem: _Problem, time_limit_s: float) -> tuple[_Exact, float]:
    """The LP relaxation (its value is a lower bound), then the integer programme over only the tasks the LP
    leaves split — at most about one per binding capacity or power row —, every other task held where the LP
    puts it. Returns the outcome and the LP bound."""
    relaxed = _solve_milp(problem, time_limit_s, integral=False)
    if relaxed.start is None:
        return relaxed, relaxed.bound
    held = relaxed.start >= 0
    allowed = problem.within.copy()
    allowed[held] = False
    allowed[np.flatnonzero(held), relaxed.start[held]] = True
    rounded = _solve_milp(problem, time_limit_s, allowed=allowed)
    start = _improve(problem, rounded.start) if rounded.start is not None else None
    return _Exact(start, relaxed.bound, False), relaxed.bound


# --- the entry point ---------------------------------------------------------------------------------


def place(
    tasks: Tasks,
    grid: TimeGrid,
    capacity: Capacity,
    rates: Mapping[str, FloatArray],
    weights: Mapping[str, float],
    *,
    defer: bool = True,
    time_limit_s: float = 4.0,
    max_exact_vars: int = 2_000_000,
    max_milp_vars: int = 5_000,
    scales: Mapping[str, float] | None = None,
) -> Placement:
    """Choose a start slot for every task (see the module's docstring), with the baselines.

    ``rates`` are those of :func:`site_rates` for the grid's slots; ``weights`` maps objectives
    (:data:`OBJECTIVE_METRICS`) to weights. ``defer=False`` (or no deadline) returns the run-at-submit
    schedule. ``scales`` fixes the yardsticks of the objectives (to compare placements made separately).

    Raises PlanningError when no schedule finishes by the deadline, stating the earliest deadline that works
    when the grid reaches far enough to find it.
    """
    if not weights:
        raise ConfigError("an objective needs at least one weight")
    inputs = (tasks, grid, capacity, rates, weights)
    problem, scales = _problem(inputs, scales)
    notes: list[str] = []
    asap_start = _as_soon_as_possible(problem)
    asap = _schedule(problem, "run_at_submit", asap_start) if asap_start is not None else None
    if asap is not None and not asap.meets_deadline:
        asap = Schedule(**{**asap.__dict__, "objective": math.inf})
    baselines: dict[str, Schedule] = {}
    if asap is None:
        notes.append(
            "run at submit, in task order, the tasks do not all fit before the end of the planning grid: "
            "the run_at_submit and best_window baselines are left out"
        )
    if asap is not None and asap_start is not None:
        baselines["run_at_submit"] = _with_method(asap, "as soon as possible, in task order", exact=None)
        window = _best_window(problem, asap_start) if grid.deadline_s is not None else None
        baselines["best_window"] = window if window is not None else _renamed(asap, "best_window")

    if not defer or grid.deadline_s is None:
        if asap is None or not asap.meets_deadline:
            raise PlanningError(_late_message(problem, asap))
        if grid.deadline_s is None and defer:
            notes.append(
                "no deadline: every task starts as soon as capacity allows; give --deadline to defer"
            )
        plan = _with_method(_renamed(asap, "plan"), "run at submit", exact=None)
        return Placement(plan, baselines, grid, dict(weights), scales, notes, inputs)

    candidates = [b for b in baselines.values() if b.meets_deadline]
    greedy_start = _greedy(problem)
    if greedy_start is not None:
        greedy_start = _improve(problem, greedy_start)
        greedy = _schedule(problem, "plan", greedy_start)
        if greedy is not None:
            candidates.append(_with_method(greedy, "greedy", exact=False))
    bound = -math.inf
    exact_done = False
    n_vars = int(problem.within.sum()) + int(capacity.limited.sum()) * grid.n_slots
    if n_vars <= max_exact_vars:
        rounded, bound = _solve_rounded(problem, time_limit_s / 2)
        if rounded.start is not None:
            found = _schedule(problem, "plan", rounded.start)
            if found is not None:
                candidates.append(_with_method(found, "lp-rounding", exact=False))
        best_so_far = min((c.objective for c in candidates), default=math.inf)
        if n_vars <= max_milp_vars and (_gap(best_so_far, bound) or 0.0) > EXACT_RTOL:
            outcome = _solve_milp(problem, time_limit_s / 2)
            bound = max(bound, outcome.bound)
            if outcome.start is not None:
                found = _schedule(problem, "plan", outcome.start)
                if found is not None:
                    candidates.append(_with_method(found, "milp", exact=outcome.optimal))
                    exact_done = outcome.optimal
    if not candidates:
        raise PlanningError(_late_message(problem, asap))
    best = min(candidates, key=lambda sched: sched.objective)
    gap = _gap(best.objective, bound)
    exact = exact_done or (gap is not None and gap <= EXACT_RTOL)
    plan = Schedule(**{**best.__dict__, "name": "plan", "exact": exact, "gap": gap})
    if best.method not in ("milp", "greedy", "lp-rounding"):
        plan = Schedule(**{**plan.__dict__, "method": f"{best.name} (no better schedule found)"})
    return Placement(plan, baselines, grid, dict(weights), scales, notes, inputs)


def reprice(
    placement: Placement, rates: Mapping[str, FloatArray], start_slot: npt.ArrayLike | None = None
) -> Schedule | None:
    """What the plan of ``placement`` (or other starts, ``start_slot``) costs under other ``rates`` — a plan
    made with a forecast, judged on what happened — by the placement's own yardsticks. None when the starts
    break a capacity or power limit."""
    if placement.inputs is None:
        raise PlanningError("this placement keeps no inputs to price again")
    tasks, grid, capacity, _, weights = placement.inputs
    problem, _ = _problem((tasks, grid, capacity, rates, weights), placement.scales)
    starts = placement.plan.start_slot if start_slot is None else np.asarray(start_slot, dtype=np.int64)
    return _schedule(problem, "repriced", starts)


def _with_method(schedule: Schedule, method: str, exact: bool | None) -> Schedule:
    return Schedule(**{**schedule.__dict__, "method": method, "exact": exact})


def _renamed(schedule: Schedule, name: str) -> Schedule:
    return Schedule(**{**schedule.__dict__, "name": name})


def _gap(value: float, bound: float) -> float | None:
    if not math.isfinite(bound) or not math.isfinite(value):
        return None
    return max(0.0, (value - bound) / max(abs(value), 1e-12))


def _late_message(problem: _Problem, asap: Schedule | None) -> str:
    grid = problem.grid
    deadline = grid.time_at(grid.deadline_s or grid.end_s)
    if asap is None:
        return (
            f"no plan finishes by the deadline {deadline.isoformat(timespec='minutes')}: even run as soon as "
            f"possible the tasks do not fit before {grid.time_at(grid.end_s).isoformat(timespec='minutes')}, "
            "where the plan's time grid (or a site's data) ends; give a later deadline, more capacity "
            "(array_parallelism) or, at a site with limited power, more power"
        )
    due = grid.offsets_s[asap.start_slot] + problem.needs
    finish = float(np.max(due, initial=0.0))
    earliest = grid.time_at(math.ceil(finish / 60.0) * 60.0)
    return (
        f"no plan finishes by the deadline {deadline.isoformat(timespec='minutes')}: run as soon as possible "
        f"the tasks finish at {earliest.isoformat(timespec='minutes')} at the earliest; the earliest "
        f"deadline that works is {earliest.isoformat(timespec='minutes')} "
        f"({_hours(finish)} after the start)"
    )


def _hours(seconds: float) -> str:
    minutes = math.ceil(seconds / 60.0)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"
