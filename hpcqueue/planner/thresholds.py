"""The threshold policy of Wilkins, Keshav and Mortier (2024), with thresholds fitted to the workload.

The rule: a low-power target serves every request whose prompt has at most ``T_in`` tokens and whose output
at most ``T_out``; the other target serves the rest. The paper picks the thresholds by simulating the
workload's cost for each candidate threshold and keeping the cheapest (its Figs. 4–5), one dimension at a
time. Here the same search runs per dimension (``input_only``: ``T_out`` unbounded; ``output_only``:
``T_in`` unbounded, as in the paper) and jointly over (``T_in``, ``T_out``), and the policy applies the
cheapest of the three (the joint search contains the other two, so it is never worse).

The search is exact over its candidate thresholds: every distinct token count of the workload, or, when
there are more than :data:`MAX_CANDIDATES`, that many quantiles of the workload's distribution plus the
powers of two. With ``D[k] = counts[k]·(C_low[k] − C_high[k])`` the cost of thresholds (a, b) is
``Σ C_high + Σ_{in ≤ a, out ≤ b} D``: one 2-D histogram of D over the candidate bins and two cumulative
sums give the cost of every candidate pair at once. Which target is "low" is also searched (both ways
round). With a deadline, only thresholds whose plan fits both targets' capacity are kept when any does.

With three or more targets the rule becomes a ladder: targets ordered by their cost for the workload's
smallest request; each rung fits thresholds between its target and the next over the requests the rungs
before it left; the last target takes the rest.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from hpcqueue.errors import PlanningError
from hpcqueue.planner.workload import Workload

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: Most candidate thresholds per dimension (the joint search evaluates their square).
MAX_CANDIDATES = 1024
_NOTHING = -1  # a threshold below every token count: the low target takes nothing


@dataclass(frozen=True)
class _Cut:
    """Thresholds (-1: nothing) and the workload's cost when the low target takes the requests within both."""

    input_tokens: int
    output_tokens: int
    cost: float


@dataclass(frozen=True)
class _Best:
    """The cheapest cuts between the targets ``pair`` = (low, high): jointly, and along each dimension alone
    (the other unbounded)."""

    pair: tuple[int, int]
    joint: _Cut
    input_only: _Cut
    output_only: _Cut
    within_capacity: bool


def candidates(values: npt.ArrayLike, counts: npt.ArrayLike, limit: int = MAX_CANDIDATES) -> IntArray:
    """Candidate thresholds for one dimension: ``-1`` (nothing) then every distinct value, or, when there are
    more than ``limit``, ``limit`` weighted quantiles plus the powers of two inside the range (always
    including the largest value, so "everything" is a candidate)."""
    v = np.asarray(values, dtype=np.int64)
    if v.size == 0:
        return np.array([_NOTHING], dtype=np.int64)
    distinct = np.unique(v)
    if len(distinct) > limit:
        order = np.argsort(v, kind="stable")
        cumulative = np.cumsum(np.asarray(counts, dtype=np.int64)[order])
        positions = np.linspace(1, cumulative[-1], limit)
        quantiles = v[order][np.minimum(np.searchsorted(cumulative, positions), len(v) - 1)]
        powers = 2 ** np.arange(0, 40, dtype=np.int64)
        powers = powers[(powers >= distinct[0]) & (powers <= distinct[-1])]
        distinct = np.unique(np.concatenate([quantiles, powers, distinct[-1:]]))
    return np.concatenate([[_NOTHING], distinct]).astype(np.int64)


def route(
    workload: Workload,
    cost: FloatArray,
    runtime: FloatArray,
    capacity: FloatArray,
    names: Sequence[str],
    too_long: npt.NDArray[np.bool_] | None = None,
) -> tuple[IntArray, dict[str, Any], list[str]]:
    """Target per class, the thresholds found, and warnings. ``cost`` and ``runtime`` are (classes × targets);
    ``capacity`` is each target's seconds of work before the deadline (inf: none) and ``too_long`` marks the
    pairs where one request alone outlasts the deadline. Thresholds that respect both are preferred; when
    none do, the cheapest thresholds are used and a warning says the plan misses the deadline."""
    k, n_targets = cost.shape
    warnings: list[str] = []
    grid = _Grid.of(workload)
    if n_targets == 2:
        best = _search_pair(grid, workload, cost, runtime, capacity, (0, 1), too_long)
        other = _search_pair(grid, workload, cost, runtime, capacity, (1, 0), too_long)
        if (not best.within_capacity and other.within_capacity) or (
            best.within_capacity == other.within_capacity and other.joint.cost < best.joint.cost
        ):
            best = other
        if np.isfinite(capacity).any() and not best.within_capacity:
            warnings.append(
                "no threshold pair fits the deadline on both targets: the threshold plan below misses it; "
                "the optimal policy plans within capacity"
            )
        class_target = _apply(workload, best)
        return class_target, _describe(best, names, workload), warnings

    if np.isfinite(capacity).any():
        warnings.append(
            f"with {n_targets} targets the threshold ladder does not plan around the deadline; "
            "use the optimal policy for a plan within capacity"
        )
    smallest = int(np.argmin(workload.class_in + workload.class_out)) if k else 0
    order = sorted(range(n_targets), key=lambda t: (cost[smallest, t] if k else 0.0, t))
    class_target = np.full(k, order[-1], dtype=np.int64)
    open_classes = np.ones(k, dtype=bool)
    rungs: list[dict[str, Any]] = []
    unbounded = np.full(n_targets, np.inf)
    for low, high in itertools.pairwise(order):
        masked = np.where(open_classes[:, None], cost, 0.0)  # closed classes cost the same either way
        best = _search_pair(grid, workload, masked, runtime, unbounded, (low, high), None)
        takes = open_classes & _fits(workload, best)
        class_target[takes] = low
        open_classes &= ~takes
        rungs.append(_describe(best, names, workload))
    found = dict(rungs[0])
    found["ladder"] = rungs
    return class_target, found, warnings


def sweep(
    workload: Workload,
    low: int,
    high: int,
    dimension: str,
    thresholds: Sequence[int],
) -> list[IntArray]:
    """Per-request target index for each threshold along one dimension (``"input"`` or ``"output"``), the
    other unbounded: the paper's threshold sweep, for plotting cost against the threshold."""
    if dimension not in ("input", "output"):
        raise PlanningError(f"dimension must be 'input' or 'output', got {dimension!r}")
    tokens = workload.n_in if dimension == "input" else workload.n_out
    return [np.where(tokens <= t, low, high).astype(np.int64) for t in thresholds]


@dataclass(frozen=True)
class _Grid:
    """The candidate thresholds of a workload and each class's cell among them (the same for every pair of
    targets searched)."""

    cand_in: IntArray
    cand_out: IntArray
    flat: IntArray  # each class's cell, row-major

    @classmethod
    def of(cls, workload: Workload) -> _Grid:
        cand_in = candidates(workload.class_in, workload.counts)
        cand_out = candidates(workload.class_out, workload.counts)
        bin_in = np.searchsorted(cand_in, workload.class_in, side="left")
        bin_out = np.searchsorted(cand_out, workload.class_out, side="left")
        return cls(cand_in, cand_out, (bin_in * len(cand_out) + bin_out).astype(np.int64))

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.cand_in), len(self.cand_out)


def _search_pair(
    grid: _Grid,
    workload: Workload,
    cost: FloatArray,
    runtime: FloatArray,
    capacity: FloatArray,
    pair: tuple[int, int],
    too_long: npt.NDArray[np.bool_] | None,
) -> _Best:
    low, high = pair
    counts = workload.counts.astype(float)
    cand_in, cand_out, flat, shape = grid.cand_in, grid.cand_out, grid.flat, grid.shape

    def boxes(weights: FloatArray) -> FloatArray:
        """Σ weights over the requests with in ≤ cand_in[a] and out ≤ cand_out[b], for every (a, b)."""
        cells = np.bincount(flat, weights=weights, minlength=shape[0] * shape[1]).reshape(shape)
        return cells.cumsum(axis=0).cumsum(axis=1)

    def outside(weights: FloatArray) -> FloatArray:
        return weights.sum() - boxes(weights)

    total = float((counts * cost[:, high]).sum()) + boxes(counts * (cost[:, low] - cost[:, high]))
    fits = np.ones(shape, dtype=bool)
    if too_long is not None:
        fits &= boxes(counts * too_long[:, low]) == 0
        fits &= outside(counts * too_long[:, high]) == 0
    if np.isfinite(capacity[low]):
        fits &= boxes(counts * runtime[:, low]) <= capacity[low] * (1 + 1e-9)
    if np.isfinite(capacity[high]):
        fits &= outside(counts * runtime[:, high]) <= capacity[high] * (1 + 1e-9)
    within_capacity = bool(fits.any())
    masked = np.where(fits, total, np.inf) if within_capacity else total
    a, b = np.unravel_index(int(np.argmin(masked)), shape)
    a_in = int(np.argmin(masked[:, -1]))
    b_out = int(np.argmin(masked[-1, :]))

    def cut(i: int, j: int) -> _Cut:
        return _Cut(int(cand_in[i]), int(cand_out[j]), float(masked[i, j]))

    return _Best(
        pair=pair,
        joint=cut(int(a), int(b)),
        input_only=cut(a_in, shape[1] - 1),
        output_only=cut(shape[0] - 1, b_out),
        within_capacity=within_capacity,
    )


def _fits(workload: Workload, best: _Best) -> npt.NDArray[np.bool_]:
    return (workload.class_in <= best.joint.input_tokens) & (workload.class_out <= best.joint.output_tokens)


def _apply(workload: Workload, best: _Best) -> IntArray:
    low, high = best.pair
    return np.where(_fits(workload, best), low, high).astype(np.int64)


def _describe(best: _Best, names: Sequence[str], workload: Workload) -> dict[str, Any]:
    """JSON-ready thresholds: -1 means "nothing" (the low target takes no request along that dimension)."""
    taken = int(workload.counts[_fits(workload, best)].sum()) if workload.n_classes else 0
    low, high = best.pair
    return {
        "low": names[low],
        "high": names[high],
        "input_tokens": best.joint.input_tokens,
        "output_tokens": best.joint.output_tokens,
        "low_requests": taken,
        "cost": best.joint.cost,
        "input_only": {"input_tokens": best.input_only.input_tokens, "cost": best.input_only.cost},
        "output_only": {"output_tokens": best.output_only.output_tokens, "cost": best.output_only.cost},
        "within_capacity": best.within_capacity,
    }
