"""The ``optimal`` policy's solver: least-cost assignment of request classes to targets under capacity.

Requests with the same prompt and output token counts cost the same, so the planner groups them into K
*classes* and asks how many requests of each class go to each of T targets. With per-request costs
``cost[k, t]`` (``inf`` = forbidden pair), runtimes ``runtime[k, t]`` (s), class sizes ``counts[k]`` and
target capacities ``capacity_s[t]`` (concurrent slots × deadline, ``inf`` = unlimited), :func:`solve` finds
integer ``x[k, t] ≥ 0`` with ``Σ_t x[k, t] = counts[k]`` and ``Σ_k runtime[k, t]·x[k, t] ≤ capacity_s[t]``
minimising ``Σ cost·x`` — a generalised assignment problem with aggregated integer counts.

Three ways to the answer, picked by ``method="auto"`` and named in :attr:`Assignment.method`:

``argmin``
    Every class on its cheapest target already fits: that is optimal and needs no solver.
``lagrangian`` (the fast path, for millions of requests)
    The capacity rows are dualised with prices ``μ_t ≥ 0`` (s⁻¹): each class then simply picks
    ``argmin_t cost + μ_t·runtime``, and ``L(μ) = Σ_k counts_k·min_t(cost + μ·runtime) − Σ_t μ_t·cap_t`` is a
    lower bound on the optimum for every ``μ ≥ 0``. ``L`` is concave and piecewise linear in a handful of
    variables (one per target with finite capacity), so it is maximised by a cutting-plane method in a
    moving box (Marsten's *boxstep*), each step one vectorised pass over the classes (with many classes,
    first over a fixed subsample). The assignment at the best prices is made feasible by moving requests out
    of over-full targets where that costs least per second freed (splitting classes by whole requests), then
    improved by moving requests into spare capacity where that saves most per second used. The gap to
    ``L`` is reported with the result.
``milp`` (exact, up to ``max_exact_classes`` classes)
    The fast path gives an incumbent ``U`` and prices; every pair whose reduced cost exceeds ``U − L(μ)``
    is then provably unused by any better assignment (``_pair_limits``), which leaves HiGHS
    (:func:`scipy.optimize.milp`) a small integer programme over the near-indifferent classes. A first
    small MILP over the 300 classes nearest to indifference usually already brings ``U`` within
    ``EXACT_RTOL`` of ``L(μ)``; otherwise HiGHS searches everything the limits leave open. If its time
    limit stops it, the best assignment found is returned with the best bound proven.

``exact`` means proven within ``EXACT_RTOL`` (one part per million) of the optimum, whichever way proved
it; an exact result of the fast path keeps the method name ``lagrangian``. Capacities are honoured within
a relative tolerance of ``CAPACITY_RTOL`` (floating-point sums of runtimes, HiGHS's feasibility tolerance).
Ties are broken towards the lowest target index, so results are deterministic.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from hpcqueue.errors import ConfigError, PlanningError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

SolveMethod = Literal["auto", "milp", "fast"]
METHODS: tuple[str, ...] = ("auto", "milp", "fast")

#: A target counts as within capacity while its load is at most ``cap · (1 + CAPACITY_RTOL)`` (plus the same
#: amount in absolute seconds for tiny capacities): runtimes are floats, their sums round, and HiGHS accepts
#: rows violated by up to its MIP feasibility tolerance (1e-6 on rows scaled to capacity 1). Two parts per
#: million of a deadline are far below the accuracy of any runtime prediction.
CAPACITY_RTOL = 2e-6
#: The greedy passes of the fast path fill targets only to this much smaller tolerance.
BUILD_RTOL = 1e-9
#: An assignment is called exact once its objective is proven within this relative distance of the optimum
#: (HiGHS's ``mip_rel_gap``). Closing the last part per million can take minutes on instances with thousands
#: of nearly indifferent classes, for a difference far below the accuracy of any energy prediction.
EXACT_RTOL = 1e-6
#: Classes the exact path's polishing MILP re-solves, and the time it may take.
POLISH_CLASSES = 300
POLISH_TIME_S = 5.0
#: Classes of the subsample the fast path prices first when there are many more.
DUAL_SAMPLE = 50_000
_TINY = 1e-12


@dataclass(frozen=True)
class Assignment:
    """How many requests of each class go to each target, with the evidence of how good that is.

    ``counts`` is (K, T) int64 and its rows sum to the class sizes; ``objective`` is ``Σ cost · counts``;
    ``lower_bound`` is a proven lower bound on the best possible objective; ``method`` says what produced
    the assignment: ``"argmin"`` (no capacity binds), ``"milp"`` (HiGHS) or ``"lagrangian"`` (the fast path);
    ``exact`` is True when the assignment is proven optimal within ``EXACT_RTOL`` (relative), so
    ``lower_bound`` may sit below ``objective`` by up to that much even then: it is the bound actually proven.
    """

    counts: IntArray
    objective: float
    lower_bound: float
    method: str
    exact: bool

    @property
    def gap(self) -> float:
        """``(objective − lower_bound) / |lower_bound|``: how far from optimal the assignment can be (≥ 0)."""
        if self.objective == self.lower_bound:
            return 0.0
        return (self.objective - self.lower_bound) / max(abs(self.lower_bound), _TINY)

    def loads_s(self, runtime: npt.ArrayLike) -> FloatArray:
        """Seconds of work this assignment puts on each target (``runtime`` as given to :func:`solve`)."""
        run = np.asarray(runtime, dtype=float)
        return np.asarray(np.where(self.counts > 0, run, 0.0) * self.counts, dtype=float).sum(axis=0)


# --- the instance --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Instance:
    """Validated inputs. Forbidden pairs have cost ``inf`` and runtime 0 so sums need no masks."""

    cost: FloatArray  # (K, T), inf where not allowed
    run: FloatArray  # (K, T), 0 where not allowed
    counts: IntArray  # (K,)
    cap: FloatArray  # (T,)
    allowed: BoolArray  # (K, T)
    names: tuple[str, ...]
    usable: BoolArray  # (K, T) finite cost and runtime, whatever the capacity
    preferred: IntArray  # (K,) cheapest usable target (messages only)
    preferred_run_s: FloatArray  # (K,) runtime there

    @property
    def n_classes(self) -> int:
        return int(self.cost.shape[0])

    @property
    def n_targets(self) -> int:
        return int(self.cost.shape[1])

    @property
    def tol(self) -> FloatArray:
        """Per-target capacity tolerance in seconds (``inf`` for unlimited targets): what ``fits`` accepts."""
        return CAPACITY_RTOL * np.maximum(self.cap, 1.0)

    @property
    def build_tol(self) -> FloatArray:
        """The much smaller tolerance the greedy passes fill to, so their assignments stay inside the set
        HiGHS searches and a fast assignment does not beat the exact one by using the tolerance."""
        return BUILD_RTOL * np.maximum(self.cap, 1.0)

    def loads(self, x: IntArray) -> FloatArray:
        return np.asarray((self.run * x).sum(axis=0), dtype=float)

    def objective(self, x: IntArray) -> float:
        if np.any((x > 0) & ~self.allowed):  # pragma: no cover - an internal error, not a user error
            raise AssertionError("assignment uses a forbidden class-target pair")
        return float(np.where(x > 0, self.cost, 0.0).ravel() @ x.ravel().astype(float))

    def fits(self, x: IntArray) -> bool:
        return bool(np.all(self.loads(x) <= self.cap + self.tol))


def _instance(
    cost: npt.ArrayLike,
    runtime: npt.ArrayLike,
    counts: npt.ArrayLike,
    capacity_s: npt.ArrayLike,
    target_names: Sequence[str] | None,
) -> _Instance:
    cost_a = np.array(cost, dtype=float, ndmin=2, copy=True)
    run_a = np.array(runtime, dtype=float, ndmin=2, copy=True)
    counts_a = np.asarray(counts).reshape(-1)
    cap = np.array(capacity_s, dtype=float, copy=True).reshape(-1)
    if cost_a.size == 0 and counts_a.size == 0:
        cost_a = cost_a.reshape(0, cap.size)
        run_a = run_a.reshape(0, cap.size)
    n_classes, n_targets = cost_a.shape
    if run_a.shape != cost_a.shape or counts_a.shape != (n_classes,) or cap.shape != (n_targets,):
        raise ValueError(
            f"shape mismatch: cost {cost_a.shape}, runtime {run_a.shape}, counts {counts_a.shape}, "
            f"capacity_s {cap.shape}; expected (K, T), (K, T), (K,), (T,)"
        )
    if n_targets == 0:
        raise ValueError("at least one target is needed")
    whole = np.issubdtype(counts_a.dtype, np.integer) or bool(np.all(np.equal(np.mod(counts_a, 1), 0)))
    if not whole:
        raise ValueError("counts must be whole numbers of requests")
    counts_i = counts_a.astype(np.int64)
    if np.any(counts_i < 0):
        raise ValueError("counts must be ≥ 0")
    if np.isnan(cost_a).any() or np.isnan(run_a).any() or np.isnan(cap).any():
        raise ValueError("cost, runtime and capacity_s must not contain NaN (use inf for a forbidden pair)")
    if np.any(cost_a == -np.inf):
        raise ValueError("cost must not be -inf")
    if np.any(run_a < 0) or np.any(cap < 0):
        raise ValueError("runtime and capacity_s must be ≥ 0")
    # A pair is usable when its cost and runtime are finite and one request fits the target at all.
    usable = np.isfinite(cost_a) & np.isfinite(run_a)
    allowed = usable & (run_a <= cap + BUILD_RTOL * np.maximum(cap, 1.0))
    # for messages: each class's cheapest target and its runtime there, capacity aside
    preferred, _ = _argmin_columns(np.where(usable, cost_a, np.inf))
    preferred_run_s = np.where(usable, run_a, 0.0)[np.arange(n_classes), preferred]
    preferred_run_s = np.where(usable.any(axis=1), preferred_run_s, 0.0)
    names = (
        tuple(target_names) if target_names is not None else tuple(f"target {t}" for t in range(n_targets))
    )
    if len(names) != n_targets:
        raise ValueError(f"{len(names)} target names for {n_targets} targets")
    return _Instance(
        cost=np.where(allowed, cost_a, np.inf),
        run=np.where(allowed, run_a, 0.0),
        counts=counts_i,
        cap=cap,
        allowed=allowed,
        names=names,
        usable=usable,
        preferred=preferred,
        preferred_run_s=preferred_run_s,
    )


# --- infeasibility -----------------------------------------------------------------------------------

_FIX = (
    "To fix it: allow a longer deadline, give the full targets more concurrent slots (array_parallelism), "
    "add a target without a capacity limit, or submit fewer requests"
)


def _capacity_report(inst: _Instance) -> str:
    """Each finite target's capacity next to the work it would get if every request went to its cheapest."""
    wanted = np.bincount(inst.preferred, weights=inst.counts * inst.preferred_run_s, minlength=inst.n_targets)
    parts = []
    for t in range(inst.n_targets):
        if math.isfinite(inst.cap[t]):
            full = " (full)" if wanted[t] > inst.cap[t] + inst.tol[t] else ""
            parts.append(
                f"{inst.names[t]}: capacity {_seconds(inst.cap[t])}, the requests cheapest there need "
                f"{_seconds(wanted[t])}{full}"
            )
        else:
            parts.append(f"{inst.names[t]}: unlimited")
    return "; ".join(parts)


def _check_obviously_infeasible(inst: _Instance) -> None:
    """Raise PlanningError for the infeasibilities that cost no search to prove."""
    stranded = np.flatnonzero((inst.counts > 0) & ~inst.allowed.any(axis=1))
    if stranded.size:
        shown = ", ".join(str(int(k)) for k in stranded[:5]) + (" …" if stranded.size > 5 else "")
        too_long = inst.usable[stranded].any(axis=1)
        why = (
            "one such request takes longer than the whole capacity of every target it may run on"
            if too_long.all()
            else "their cost is forbidden on every target"
            if not too_long.any()
            else "their cost is forbidden everywhere, or one request takes longer than a target's capacity"
        )
        raise PlanningError(
            f"{int(inst.counts[stranded].sum())} request(s) in {stranded.size} class(es) (class {shown}) "
            f"cannot run on any target: {why}. {_capacity_report(inst)}. {_FIX}"
        )
    only = inst.allowed.sum(axis=1) == 1
    if only.any():
        target = np.argmax(inst.allowed[only], axis=1)
        forced = np.bincount(
            target, weights=inst.counts[only] * inst.run[only, target], minlength=inst.n_targets
        )
        over = np.flatnonzero(forced > inst.cap + inst.tol)
        if over.size:
            t = int(over[0])
            raise PlanningError(
                f"{inst.names[t]} is the only target some requests can run on (elsewhere their cost is "
                f"forbidden or one request is longer than the whole capacity), and those alone need "
                f"{_seconds(forced[t])} of work against its capacity of {_seconds(inst.cap[t])}. "
                f"{_capacity_report(inst)}. {_FIX}"
            )
    unlimited = ~np.isfinite(inst.cap)
    bound_only = ~(inst.allowed & unlimited).any(axis=1)  # classes that must use finite capacity
    if not bound_only.any():
        return
    min_run = np.where(inst.allowed, inst.run, np.inf).min(axis=1)
    need = float(inst.counts[bound_only] @ min_run[bound_only])
    have = float(inst.cap[~unlimited].sum())
    if need > have * (1 + CAPACITY_RTOL) + CAPACITY_RTOL:
        raise PlanningError(_infeasible_message(inst, need, have))


def _infeasible_message(inst: _Instance, need: float, have: float) -> str:
    scale = f" (at least ×{need / have:.2f} the capacity)" if have > 0 else ""
    return (
        f"the requests do not fit before the deadline: even on their fastest targets they need "
        f"{_seconds(need)} of work, and the targets with a capacity limit offer {_seconds(have)}{scale}. "
        f"{_capacity_report(inst)}. {_FIX}"
    )


def _not_found_message(inst: _Instance, time_limit_s: float | None = None) -> str:
    """Why no plan came out: proven infeasible, or (with ``time_limit_s``) none found in time."""
    min_run = np.where(inst.allowed, inst.run, np.inf).min(axis=1)
    need = float(inst.counts @ min_run)
    have = float(inst.cap[np.isfinite(inst.cap)].sum())
    if time_limit_s is None:
        head = "no assignment fits the targets' capacities"
        tail = "but whole requests do not pack into them"
        fix = _FIX
    else:
        head = f"no assignment that fits the targets' capacities was found within {time_limit_s:g} s"
        tail = "so the capacities are nearly exhausted"
        fix = f"{_FIX}, or allow the solver more time"
    return (
        f"{head}: each on its fastest target, the requests need {_seconds(need)} of work and the limited "
        f"targets offer {_seconds(have)}, {tail}. {_capacity_report(inst)}. {fix}"
    )


# --- building blocks -----------------------------------------------------------------------------------


def _argmin_columns(values: FloatArray) -> tuple[IntArray, FloatArray]:
    """Row-wise argmin and min of a (K, T) array; ties go to the lowest column. Column loops beat
    ``np.argmin(axis=1)`` for the few columns a plan has."""
    best = values[:, 0].copy()
    choice = np.zeros(values.shape[0], dtype=np.int64)
    for t in range(1, values.shape[1]):
        column = values[:, t]
        better = column < best
        best[better] = column[better]
        choice[better] = t
    return choice, best


def _one_hot(inst: _Instance, choice: IntArray) -> IntArray:
    x = np.zeros((inst.n_classes, inst.n_targets), dtype=np.int64)
    x[np.arange(inst.n_classes), choice] = inst.counts
    return x


def _fit_amounts(per_s: FloatArray, want: IntArray, room_s: float, tol_s: float) -> IntArray:
    """Whole requests that fit into ``room_s`` taking candidates in the given order (each ``want[i]``
    requests of ``per_s[i]`` seconds); after the first candidate that does not fully fit, none more."""
    if not math.isfinite(room_s):
        return want.copy()
    total = per_s * want
    before = np.cumsum(total) - total
    left = room_s + tol_s - before
    with np.errstate(divide="ignore", invalid="ignore"):
        fit = np.where(per_s > 0, np.floor(left / np.where(per_s > 0, per_s, 1.0)), want)
    fit = np.where(left < 0, 0, fit)
    amounts = np.clip(fit, 0, want).astype(np.int64)
    # conservative: once one candidate is cut short, later ones would reuse space counted for it
    short = np.flatnonzero(amounts < want)
    if short.size:
        amounts[short[0] + 1 :] = np.where(per_s[short[0] + 1 :] > 0, 0, want[short[0] + 1 :])
    return amounts


def _repair(inst: _Instance, x: IntArray, max_rounds: int = 50) -> IntArray | None:
    """Move requests out of over-full targets, cheapest extra cost per second freed first, into targets
    with room. Returns the feasible assignment, or None if this greedy cannot find one."""
    x = x.copy()
    for _ in range(max_rounds):
        load = inst.loads(x)
        over = np.flatnonzero(load > inst.cap + inst.build_tol)
        if over.size == 0:
            return x
        moved = False
        for t in over:
            excess = load[t] - inst.cap[t]
            if excess <= inst.build_tol[t]:
                continue
            spare = inst.cap - load
            ks = np.flatnonzero((x[:, t] > 0) & (inst.run[:, t] > 0))
            if ks.size == 0:
                continue
            ratio = np.full((ks.size, inst.n_targets), np.inf)
            for s in range(inst.n_targets):
                if s == t:
                    continue
                ok = inst.allowed[ks, s] & (inst.run[ks, s] <= spare[s] + inst.build_tol[s])
                ratio[ok, s] = (inst.cost[ks[ok], s] - inst.cost[ks[ok], t]) / inst.run[ks[ok], t]
            dest, best = _argmin_columns(ratio)
            keep = np.isfinite(best)
            order = np.argsort(best[keep], kind="stable")
            ks, dest = ks[keep][order], dest[keep][order]
            if ks.size == 0:
                continue
            amount = x[ks, t].copy()
            for s in np.unique(dest):
                sel = np.flatnonzero(dest == s)
                amount[sel] = _fit_amounts(inst.run[ks[sel], s], amount[sel], spare[s], inst.build_tol[s])
            per_t = inst.run[ks, t]
            freed = np.cumsum(amount * per_t)
            j = int(np.searchsorted(freed, excess - inst.build_tol[t], side="left"))
            if j < ks.size:
                # the cheapest-per-second candidates before j go whole; the rest of the excess is freed by
                # the one later candidate that does it at the least total extra cost (whole requests
                # overshoot, so the best ratio is not always the best last move)
                rest = excess - inst.build_tol[t] - (freed[j - 1] if j > 0 else 0.0)
                tail = np.arange(j, ks.size)
                need = np.ceil(np.maximum(rest, 0.0) / per_t[tail]).astype(np.int64)
                extra = need * (inst.cost[ks[tail], dest[tail]] - inst.cost[ks[tail], t])
                extra = np.where(need <= amount[tail], extra, np.inf)
                last = int(tail[np.argmin(extra)])
                take = min(int(amount[last]), int(need[last - j]))
                amount[j:] = 0
                amount[last] = take
            if not amount.any():
                continue
            x[ks, t] -= amount
            x[ks, dest] += amount  # (k, dest) pairs are distinct: each class appears once per source t
            load = inst.loads(x)
            moved = True
        if not moved:
            return None
    return x if inst.fits(x) else None


def _improve(inst: _Instance, x: IntArray, max_rounds: int = 20) -> IntArray:
    """Move requests into spare capacity where that lowers the cost, best saving per second used first."""
    x = x.copy()
    n_t = inst.n_targets
    if n_t == 1:
        return x
    for _ in range(max_rounds):
        spare = inst.cap - inst.loads(x)
        # each (class, source) pair proposes its single best destination that has room for one request
        src_k: list[IntArray] = []
        src_t: list[IntArray] = []
        dst: list[IntArray] = []
        gains: list[FloatArray] = []
        for t in range(n_t):
            ks = np.flatnonzero(x[:, t] > 0)
            if ks.size == 0:
                continue
            gain = np.full((ks.size, n_t), -np.inf)
            for s in range(n_t):
                if s == t:
                    continue
                ok = inst.allowed[ks, s] & (inst.run[ks, s] <= spare[s] + inst.build_tol[s])
                gain[ok, s] = inst.cost[ks[ok], t] - inst.cost[ks[ok], s]
            dest, best = _argmin_columns(-gain)
            best = -best
            good = best > _TINY * np.maximum(1.0, np.abs(inst.cost[ks, t]))
            src_k.append(ks[good])
            src_t.append(np.full(int(good.sum()), t, dtype=np.int64))
            dst.append(dest[good])
            gains.append(best[good])
        if not src_k:
            break
        k_all: IntArray = np.concatenate(src_k)
        t_all: IntArray = np.concatenate(src_t)
        s_all: IntArray = np.concatenate(dst)
        g_all: FloatArray = np.concatenate(gains)
        if k_all.size == 0:
            break
        amount = x[k_all, t_all].copy()
        for s in np.unique(s_all):
            sel = np.flatnonzero(s_all == s)
            per = inst.run[k_all[sel], s]
            with np.errstate(divide="ignore"):
                density = np.where(per > 0, g_all[sel] / np.where(per > 0, per, 1.0), np.inf)
            order = sel[np.argsort(-density, kind="stable")]
            amount[order] = _fit_amounts(
                inst.run[k_all[order], s], amount[order], spare[s], inst.build_tol[s]
            )
        if not amount.any():
            break
        np.subtract.at(x, (k_all, t_all), amount)
        np.add.at(x, (k_all, s_all), amount)
    return x


# --- the Lagrangian dual -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dual:
    """Evaluates ``L(μ)`` and a supergradient, prices only on the targets with finite capacity (``free``).

    Arrays are stored per target (``(T, K)``, contiguous) because every pass walks one target's column.
    ``weight`` is the class sizes as floats: a subsample of classes is a ``_Dual`` with scaled weights.
    Capacities include their tolerance, so the bound holds for every assignment that ``fits``.
    """

    cost: FloatArray  # (T, K), inf where not allowed
    run: FloatArray  # (T, K), 0 where not allowed
    weight: FloatArray  # (K,)
    room: FloatArray  # (F,) capacity + tolerance of the free targets
    free: IntArray  # (F,) their indices
    work: FloatArray  # (T, K) seconds a target gets from a whole class: run × weight

    @classmethod
    def of(cls, inst: _Instance, rows: IntArray | None = None) -> _Dual:
        free = np.flatnonzero(np.isfinite(inst.cap)).astype(np.int64)
        cost, run, weight = inst.cost, inst.run, inst.counts.astype(float)
        room = inst.cap[free] + inst.tol[free]
        if rows is not None:
            # a subsample stands in for the whole: weights scaled so total work and cost keep their size
            factor = float(weight.sum()) / max(float(weight[rows].sum()), _TINY)
            cost, run, weight = cost[rows], run[rows], weight[rows] * factor
        run_t = np.ascontiguousarray(run.T)
        return cls(np.ascontiguousarray(cost.T), run_t, weight, room, free, run_t * weight)

    def _reduced(self, mu: FloatArray, t: int) -> FloatArray:
        return self.cost[t] + mu[t] * self.run[t] if mu[t] != 0.0 else self.cost[t]

    def __call__(self, mu_free: FloatArray) -> tuple[float, FloatArray]:
        n_t = self.cost.shape[0]
        mu = np.zeros(n_t)
        mu[self.free] = mu_free
        best = np.array(self._reduced(mu, 0), copy=True)
        work = self.work[0].copy()  # seconds the chosen target gets from each class
        choice = np.zeros(best.size, dtype=np.int8)
        for t in range(1, n_t):
            column = self._reduced(mu, t)
            better = column < best  # strict: ties stay with the lowest target index
            np.copyto(best, column, where=better)
            np.copyto(work, self.work[t], where=better)
            choice[better] = t
        value = float(self.weight @ best) - float(mu_free @ self.room)
        load = np.bincount(choice, weights=work, minlength=n_t)
        return value, load[self.free] - self.room

    def best_response(self, mu_free: FloatArray, i: int) -> float:
        """The smallest price for free target ``i`` at which its load fits, others held fixed: the exact
        maximiser of ``L`` along that coordinate."""
        n_t = self.cost.shape[0]
        t = int(self.free[i])
        mu = np.zeros(n_t)
        mu[self.free] = mu_free
        alt = np.full(self.weight.size, np.inf)
        for s in range(n_t):
            if s != t:
                np.minimum(alt, self._reduced(mu, s), out=alt)
        run_t = self.run[t]
        uses = (run_t > 0) & (self.cost[t] < alt)
        if not uses.any():
            return 0.0
        with np.errstate(invalid="ignore"):
            breakpoint_ = (alt[uses] - self.cost[t][uses]) / run_t[uses]  # above it, the class leaves t
        order = np.argsort(-breakpoint_, kind="stable")
        cum = np.cumsum(self.work[t][uses][order])
        j = int(np.searchsorted(cum, self.room[i], side="right"))
        if j >= order.size:
            return 0.0
        level = float(breakpoint_[order[j]])
        if math.isfinite(level):
            return level
        finite = breakpoint_[np.isfinite(breakpoint_)]
        return float(finite.max()) if finite.size else 0.0


def _boxstep(
    dual: _Dual, scale: FloatArray, start: FloatArray | None, delta: float, max_iter: int = 200
) -> tuple[FloatArray, float]:
    """Maximise the concave, piecewise-linear ``L`` by cutting planes in a box around the best point.

    Every evaluation gives a cut ``L(μ) ≤ L_i + g_i·(μ − μ_i)``; the next point maximises the cuts' minimum
    inside the box (a linear programme in F + 1 variables). A point that gains at least a tenth of what the
    cuts promised becomes the centre (the box doubles when the point was on its edge); one that loses
    shrinks the box. Stops when the cuts promise no gain inside the box: by concavity the centre is then
    the maximum, to ``rtol``.
    """
    n_free = dual.free.size
    value0, g0 = dual(np.zeros(n_free))
    points, values, grads = [np.zeros(n_free)], [value0], [g0]
    if start is None:
        if np.all(g0 <= 0):
            return points[0], value0
        # one round of exact coordinate maximisations over the over-full targets
        start = np.zeros(n_free)
        for i in np.flatnonzero(g0 > 0):
            start[i] = dual.best_response(start, int(i))
    scale = np.maximum(scale, start)
    value, g = dual(start)
    points.append(np.asarray(start, dtype=float))
    values.append(value)
    grads.append(g)
    best_i = int(np.argmax(values))
    magnitude = max(abs(values[best_i]), _TINY)
    rtol = 1e-10

    for _ in range(max_iter):
        center = points[best_i]
        lo = np.maximum(center - delta * scale, 0.0)
        hi = center + delta * scale
        cuts = np.array(grads)
        res = linprog(
            c=np.r_[np.zeros(n_free), -1.0],
            A_ub=np.hstack([-cuts, np.ones((len(grads), 1))]),
            b_ub=np.array(values) - np.einsum("ij,ij->i", cuts, np.array(points)),
            bounds=[*zip(lo, hi, strict=True), (None, None)],
            method="highs",
        )
        if res.status != 0 or res.x is None:  # pragma: no cover - a bounded LP with a feasible box
            break
        candidate = np.asarray(res.x[:-1], dtype=float)
        predicted = float(-res.fun) - values[best_i]
        if predicted <= rtol * magnitude:
            break
        value, g = dual(candidate)
        points.append(candidate)
        values.append(value)
        grads.append(g)
        if value >= values[best_i] + 0.1 * predicted:
            edge = 1e-9 * scale
            on_edge = bool(np.any((candidate >= hi - edge) | ((candidate <= lo + edge) & (lo > 0))))
            best_i = len(values) - 1
            if on_edge:
                delta = min(delta * 2.0, 1e6)
        elif value < values[best_i]:
            delta = max(delta * 0.5, 1e-12)
    return points[best_i], values[best_i]


def _maximise_dual(inst: _Instance) -> tuple[FloatArray, float]:
    """Prices ``μ`` (length T, zero on unlimited targets) and the bound ``L(μ)`` on the whole instance.

    With many classes the prices are first found on a fixed subsample (``DUAL_SAMPLE`` classes, weights
    scaled up), which costs a fraction of a pass over all of them, and then refined on the whole from there.
    """
    full = _Dual.of(inst)
    mu_full = np.zeros(inst.n_targets)
    if full.free.size == 0:
        value, _ = full(np.zeros(0))
        return mu_full, value
    allowed_cost = inst.cost[inst.allowed]
    cost_span = max(float(allowed_cost.max() - allowed_cost.min()), _TINY)
    n_allowed = inst.allowed[:, full.free].sum(axis=0)
    mean_run = np.where(n_allowed > 0, inst.run[:, full.free].sum(axis=0) / np.maximum(n_allowed, 1), 1.0)
    scale = cost_span / np.maximum(mean_run, _TINY) * 1e-3  # a price step that matters, per target
    start: FloatArray | None = None
    delta = 0.5
    if inst.n_classes > 4 * DUAL_SAMPLE:
        rows = np.sort(np.random.default_rng(0).choice(inst.n_classes, DUAL_SAMPLE, replace=False))
        start, _ = _boxstep(_Dual.of(inst, rows), scale, None, delta)
        delta = 0.05
    mu, value = _boxstep(full, scale, start, delta)
    mu_full[full.free] = mu
    return mu_full, value


@dataclass(frozen=True)
class _FastOutcome:
    x: IntArray | None  # None when the greedy repair could not pack the requests
    bound: float  # L(μ) at the best prices found
    mu: FloatArray  # (T,) those prices


def _solve_fast(inst: _Instance) -> _FastOutcome:
    """The Lagrangian fast path: best prices, their bound, and the repaired and improved assignment."""
    mu, bound = _maximise_dual(inst)
    choice, _ = _argmin_columns(inst.cost + mu * inst.run)
    x = _repair(inst, _one_hot(inst, choice))
    return _FastOutcome(None if x is None else _improve(inst, x), bound, mu)


# --- the exact MILP -----------------------------------------------------------------------------------


@contextlib.contextmanager
def c_stdout_silenced() -> Iterator[None]:
    """Discard what C code writes to file descriptor 1 while the block runs.

    The HiGHS inside scipy 1.17 (HiGHS 1.12) prints a stray debug line
    (``HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();``) with ``printf`` even with
    output switched off, which would land in the middle of a plan table or a JSON document on stdout.
    Python's own ``sys.stdout`` is flushed first and is not touched otherwise.
    """
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no usable descriptor 1: nothing to protect
        yield
        return
    libc: ctypes.CDLL | None
    try:
        libc = ctypes.CDLL(None)
    except OSError:  # pragma: no cover - platforms without a process-wide C library handle
        libc = None
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        if libc is not None:
            libc.fflush(None)  # C stdio buffers what it printed; drop it before descriptor 1 comes back
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


@dataclass(frozen=True)
class _MilpOutcome:
    x: IntArray | None
    bound: float
    optimal: bool
    infeasible: bool


def _pair_limits(inst: _Instance, mu: FloatArray, bound: float, upper: float) -> IntArray:
    """Upper bounds on ``x[k, t]`` that every assignment with objective ≤ ``upper`` obeys.

    For prices ``μ ≥ 0`` and any feasible ``x`` (integer or not): ``cost·x ≥ L(μ) + Σ x[k,t]·d[k,t]`` with
    the reduced costs ``d[k,t] = cost + μ·runtime − min_s(cost + μ·runtime)`` ≥ 0. An assignment no worse
    than an incumbent of objective ``U`` therefore has ``x[k,t] ≤ (U − L(μ)) / d[k,t]``: with a small gap
    almost every pair but each class's cheapest at the prices is fixed to zero, and what is left is small.
    """
    limits = np.where(inst.allowed, inst.counts[:, None], 0).astype(np.int64)
    if not math.isfinite(upper):
        return limits
    reduced = inst.cost + mu * inst.run
    _, best = _argmin_columns(reduced)
    d = reduced - best[:, None]
    # slack for float rounding (the bound already counts the capacity tolerance)
    slack = (upper - bound) + 1e-9 * max(1.0, abs(upper))
    with np.errstate(divide="ignore", invalid="ignore"):
        most = np.where(d > 0, np.floor(slack / np.where(d > 0, d, 1.0)), np.inf)
    return np.where(inst.allowed, np.minimum(limits, most), 0).astype(np.int64)


@dataclass(frozen=True)
class _Restricted:
    """The programme over the pairs with ``limits > 0``. Classes left a single pair are fixed in
    ``x_fixed``; the others become variables ``(k_idx, t_idx)`` bounded by ``upper``, each class's summing
    to its size (``a_eq``), with the capacity left after the fixed classes as rows ``a_cap ≤ cap_rhs``,
    scaled to capacity 1 so HiGHS's absolute feasibility tolerance acts as a relative one."""

    x_fixed: IntArray
    k_idx: IntArray
    t_idx: IntArray
    upper: FloatArray
    a_eq: sparse.csr_array
    b_eq: FloatArray
    a_cap: sparse.csr_array | None
    cap_rhs: FloatArray
    constant: float  # objective of the fixed part

    @property
    def n_var(self) -> int:
        return int(self.k_idx.size)

    def full(self, values: FloatArray) -> IntArray:
        x = self.x_fixed.copy()
        x[self.k_idx, self.t_idx] = np.rint(values).astype(np.int64)
        return x


def _restrict(inst: _Instance, limits: IntArray) -> _Restricted | None:
    """Build the restricted programme, or None when the limits leave some class nowhere to go."""
    n_pairs = (limits > 0).sum(axis=1)
    if np.any((n_pairs == 0) & (inst.counts > 0)):
        return None
    x = np.zeros((inst.n_classes, inst.n_targets), dtype=np.int64)
    fixed = n_pairs == 1
    fixed_k = np.flatnonzero(fixed)
    x[fixed_k, np.argmax(limits[fixed_k] > 0, axis=1)] = inst.counts[fixed_k]
    if np.any(x > limits):
        return None
    free_k = np.flatnonzero(~fixed & (inst.counts > 0))
    row, t_idx = np.nonzero(limits[free_k] > 0)
    k_idx = free_k[row]
    n_var = k_idx.size
    columns = np.arange(n_var)
    a_eq = sparse.csr_array((np.ones(n_var), (row, columns)), shape=(free_k.size, n_var))
    finite = np.flatnonzero(np.isfinite(inst.cap))
    a_cap = None
    cap_rhs = np.zeros(0)
    if finite.size:
        row_of = np.full(inst.n_targets, -1)
        row_of[finite] = np.arange(finite.size)
        scale = np.where(inst.cap > 0, inst.cap, 1.0)
        sel = row_of[t_idx] >= 0
        coef = inst.run[k_idx[sel], t_idx[sel]] / scale[t_idx[sel]]
        a_cap = sparse.csr_array((coef, (row_of[t_idx[sel]], columns[sel])), shape=(finite.size, n_var))
        cap_rhs = (inst.cap[finite] - inst.loads(x)[finite]) / scale[finite]
    return _Restricted(
        x_fixed=x,
        k_idx=k_idx,
        t_idx=t_idx,
        upper=limits[k_idx, t_idx].astype(float),
        a_eq=a_eq,
        b_eq=inst.counts[free_k].astype(float),
        a_cap=a_cap,
        cap_rhs=cap_rhs,
        constant=inst.objective(x),
    )


def _polish(
    inst: _Instance, x: IntArray, mu: FloatArray, time_limit_s: float, size: int = POLISH_CLASSES
) -> IntArray | None:
    """A better incumbent: re-solve exactly the ``size`` classes nearest to indifference at the prices
    (smallest gap between their two cheapest reduced costs, and every class ``x`` splits), the rest held
    where ``x`` puts them. Whole requests leave a little capacity unused or force a costly last move; the
    integer programme over the near-indifferent classes packs the capacity the way the greedy cannot.
    """
    if inst.n_targets < 2:
        return None
    reduced = np.sort(np.where(inst.allowed, inst.cost + mu * inst.run, np.inf), axis=1)
    margin = reduced[:, 1] - reduced[:, 0]
    split = (x > 0).sum(axis=1) > 1
    chosen = np.argsort(np.where(split, -1.0, margin), kind="stable")[:size]
    limits = np.where(x > 0, inst.counts[:, None], 0).astype(np.int64)
    limits[chosen] = np.where(inst.allowed[chosen], inst.counts[chosen, None], 0)
    model = _restrict(inst, limits)
    if model is None:  # pragma: no cover - x itself satisfies the limits
        return None
    outcome = _solve_milp(inst, time_limit_s, model, presolve=False, upper=inst.objective(x))
    return outcome.x


def _solve_milp(
    inst: _Instance, time_limit_s: float, model: _Restricted, presolve: bool, upper: float
) -> _MilpOutcome:
    """Exact integer programme over the restricted pairs, to within ``EXACT_RTOL`` of the whole objective.

    HiGHS measures its gap against the objective of the variables it sees, which leaves out the fixed
    classes' cost; its ``mip_rel_gap`` is scaled so that the absolute gap it closes is ``EXACT_RTOL`` of the
    whole objective (``upper`` estimates it), not of that much smaller part. HiGHS's presolve pays off on
    the full programme but, on one already cut down by ``_pair_limits`` (thousands of near-indifferent
    classes, a few capacity rows), it costs several times the search.
    """
    if model.n_var == 0:
        ok = inst.fits(model.x_fixed)
        return _MilpOutcome(model.x_fixed if ok else None, model.constant, ok, not ok)
    rel_gap = EXACT_RTOL
    if math.isfinite(upper) and upper - model.constant > _TINY:
        # 0.9: a margin so that the gap HiGHS proves also passes ``_result``'s check on the whole objective
        rel_gap = min(1e-2, max(EXACT_RTOL, 0.9 * EXACT_RTOL * abs(upper) / (upper - model.constant)))
    constraints = [LinearConstraint(model.a_eq, model.b_eq, model.b_eq)]
    if model.a_cap is not None:
        constraints.append(LinearConstraint(model.a_cap, -np.inf, model.cap_rhs))
    with c_stdout_silenced():
        res = milp(
            c=inst.cost[model.k_idx, model.t_idx],
            integrality=np.ones(model.n_var),
            bounds=Bounds(np.zeros(model.n_var), model.upper),
            constraints=constraints,
            options={"time_limit": float(time_limit_s), "mip_rel_gap": rel_gap, "presolve": presolve},
        )
    if res.status == 2:
        return _MilpOutcome(None, np.inf, False, True)
    raw_bound = getattr(res, "mip_dual_bound", None)
    bound = -np.inf
    if raw_bound is not None and np.isfinite(raw_bound):
        bound = float(raw_bound) + model.constant
    if res.x is None:
        return _MilpOutcome(None, bound, False, False)
    x = model.full(np.asarray(res.x))
    if not np.array_equal(x.sum(axis=1), inst.counts):  # pragma: no cover - HiGHS returned a bad point
        return _MilpOutcome(None, bound, False, False)
    if not inst.fits(x):
        # rounding HiGHS's near-integral point overshot a capacity: repair it and stop claiming optimality
        return _MilpOutcome(_repair(inst, x), bound, False, False)
    return _MilpOutcome(x, bound, res.status == 0, False)


def _solve_exact(inst: _Instance, time_limit_s: float) -> Assignment:
    """Fast path first (an incumbent and prices ``μ`` with their bound ``L(μ)``); then a small MILP over the
    classes nearest to indifference for a better incumbent (often enough to prove it within ``EXACT_RTOL``
    of ``L(μ)``); then the MILP over every pair the prices cannot rule out (``_pair_limits``)."""
    start = time.perf_counter()
    fast = _solve_fast(inst)
    x_best, name_best = fast.x, "lagrangian"
    upper = np.inf
    if fast.x is not None:
        upper = inst.objective(fast.x)
        if _result(inst, fast.x, fast.bound, name_best).exact:
            return _result(inst, fast.x, fast.bound, name_best)
    model = _restrict(inst, _pair_limits(inst, fast.mu, fast.bound, upper))
    # polishing pays where the MILP left by the limits is much larger than the polishing one
    if fast.x is not None and (model is None or model.n_var > 3 * POLISH_CLASSES):
        polished = _polish(inst, fast.x, fast.mu, min(POLISH_TIME_S, time_limit_s / 4))
        if polished is not None and inst.objective(polished) < upper:
            x_best, name_best, upper = polished, "milp", inst.objective(polished)
            if _result(inst, polished, fast.bound, name_best).exact:
                return _result(inst, polished, fast.bound, name_best)
            model = _restrict(inst, _pair_limits(inst, fast.mu, fast.bound, upper))
    left_s = max(time_limit_s - (time.perf_counter() - start), 0.05)
    if model is None:  # pragma: no cover - the limits always keep the incumbent
        outcome = _MilpOutcome(None, -np.inf, False, True)
    else:
        outcome = _solve_milp(inst, left_s, model, presolve=x_best is None, upper=upper)
    if outcome.infeasible and x_best is None:
        raise PlanningError(_not_found_message(inst))
    found = [
        (inst.objective(x), name, x)
        for x, name in ((outcome.x, "milp"), (x_best, name_best))
        if x is not None
    ]
    if not found:
        raise PlanningError(_not_found_message(inst, time_limit_s))
    # the incumbent wins only where the time limit stopped HiGHS, or by using capacity within the
    # tolerance that HiGHS does not see
    _, name, x = min(found, key=lambda item: item[0])
    return _result(inst, x, max(outcome.bound, fast.bound), name, proven=outcome.optimal)


# --- public API --------------------------------------------------------------------------------------


def solve(
    cost: npt.ArrayLike,
    runtime: npt.ArrayLike,
    counts: npt.ArrayLike,
    capacity_s: npt.ArrayLike,
    *,
    method: SolveMethod = "auto",
    max_exact_classes: int = 20_000,
    time_limit_s: float = 30.0,
    target_names: Sequence[str] | None = None,
) -> Assignment:
    """Least-cost assignment of ``counts[k]`` requests of each class to targets within their capacities.

    ``cost`` and ``runtime`` are (K, T) per-request values (``inf`` cost forbids a pair), ``counts`` is (K,)
    and ``capacity_s`` is (T,) seconds of work per target before the deadline (``inf`` = unlimited).
    ``method="auto"`` returns the per-class argmin when it fits, else solves the integer programme exactly
    (HiGHS) when K ≤ ``max_exact_classes``, else runs the Lagrangian fast path; ``"milp"`` and ``"fast"``
    force one of the two. ``time_limit_s`` bounds the exact path as a whole (HiGHS always gets at least
    0.05 s); past it the best assignment found is returned with ``exact=False`` and its proven gap.
    ``target_names`` only make error messages readable.

    Raises PlanningError when no assignment fits, saying which targets are full, how much work the requests
    need at best against the capacity, and what to change.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown solve method {method!r}; valid methods: {', '.join(METHODS)}")
    inst = _instance(cost, runtime, counts, capacity_s, target_names)
    if inst.n_classes == 0 or int(inst.counts.sum()) == 0:
        x = np.zeros((inst.n_classes, inst.n_targets), dtype=np.int64)
        return Assignment(counts=x, objective=0.0, lower_bound=0.0, method="argmin", exact=True)
    _check_obviously_infeasible(inst)

    if method == "auto":
        choice, _ = _argmin_columns(inst.cost)
        x = _one_hot(inst, choice)
        if inst.fits(x):
            value = inst.objective(x)
            return Assignment(counts=x, objective=value, lower_bound=value, method="argmin", exact=True)

    if method == "milp" or (method == "auto" and inst.n_classes <= max_exact_classes):
        return _solve_exact(inst, time_limit_s)
    fast = _solve_fast(inst)
    if fast.x is not None:
        return _result(inst, fast.x, fast.bound, "lagrangian")
    # the greedy repair could not pack the requests: only a search can tell whether anything fits
    return _solve_exact(inst, time_limit_s)


def _result(inst: _Instance, x: IntArray, bound: float, method: str, proven: bool = False) -> Assignment:
    """Package ``x`` with its bound; ``proven`` when HiGHS declared optimality (within ``EXACT_RTOL``)."""
    value = inst.objective(x)
    bound = min(bound, value)
    exact = proven or value - bound <= EXACT_RTOL * max(abs(value), _TINY)
    return Assignment(counts=x, objective=value, lower_bound=bound, method=method, exact=exact)


def spread(class_of_request: npt.ArrayLike, counts: npt.ArrayLike) -> IntArray:
    """Per-request target index from (K, T) class counts.

    Requests of a class are taken in their given order: the first ``counts[k, 0]`` go to target 0, the next
    ``counts[k, 1]`` to target 1, and so on. ``class_of_request`` is (N,) with values in ``0..K-1`` and each
    row of ``counts`` must sum to the number of requests of that class.
    """
    classes = np.asarray(class_of_request, dtype=np.int64).reshape(-1)
    x = np.asarray(counts, dtype=np.int64)
    if x.ndim != 2:
        raise ValueError(f"counts must be (K, T), got shape {x.shape}")
    n_classes, n_targets = x.shape
    if classes.size and (classes.min() < 0 or classes.max() >= n_classes):
        raise ValueError(f"class_of_request must lie in 0..{n_classes - 1}")
    sizes = np.bincount(classes, minlength=n_classes)
    if not np.array_equal(sizes, x.sum(axis=1)):
        bad = int(np.flatnonzero(sizes != x.sum(axis=1))[0])
        raise ValueError(
            f"class {bad} has {int(sizes[bad])} requests but its counts row sums to {int(x[bad].sum())}"
        )
    order = np.argsort(classes, kind="stable")
    targets_sorted = np.repeat(np.tile(np.arange(n_targets, dtype=np.int64), n_classes), x.ravel())
    out = np.empty(classes.size, dtype=np.int64)
    out[order] = targets_sorted
    return out


def _seconds(value: float) -> str:
    """Seconds for a message: whole seconds from 100 s on, three significant digits below."""
    return f"{value:,.0f} s" if abs(value) >= 100 else f"{value:.3g} s"
