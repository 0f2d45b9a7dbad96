"""The optimal policy's solver: exact and fast paths against brute force, and what callers rely on."""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import ArrayLike

from hpcqueue.errors import ConfigError, PlanningError
from hpcqueue.planner import optimal
from hpcqueue.planner.optimal import (
    CAPACITY_RTOL,
    EXACT_RTOL,
    Assignment,
    SolveMethod,
    solve,
    spread,
)

INF = math.inf
METHODS: tuple[SolveMethod, ...] = ("auto", "milp", "fast")


# --- brute force --------------------------------------------------------------------------------------


def compositions(n: int, parts: int) -> list[tuple[int, ...]]:
    """Every way to split n requests over ``parts`` targets."""
    return [c for c in itertools.product(range(n + 1), repeat=parts) if sum(c) == n]


def brute_force(
    cost: np.ndarray, runtime: np.ndarray, counts: np.ndarray, capacity: np.ndarray
) -> float | None:
    """The optimum over every integer split (None when nothing fits), by enumeration."""
    options = [np.array(compositions(int(n), cost.shape[1])) for n in counts]
    grids = np.meshgrid(*[np.arange(len(o)) for o in options], indexing="ij")
    x = np.stack([options[k][g.ravel()] for k, g in enumerate(grids)], axis=1)  # (combos, K, T)
    used = x > 0
    allowed = ~(used & ~np.isfinite(cost)).any(axis=(1, 2))
    load = (np.where(used, runtime, 0.0) * x).sum(axis=1)
    fits = (load <= capacity).all(axis=1)
    total = (np.where(used, cost, 0.0) * x).sum(axis=(1, 2))
    ok = allowed & fits
    return float(total[ok].min()) if ok.any() else None


def check_feasible(
    a: Assignment, cost: np.ndarray, runtime: np.ndarray, counts: np.ndarray, capacity: ArrayLike
) -> None:
    """Rows sum to the class sizes, no forbidden pair, loads within capacity (to ``CAPACITY_RTOL``)."""
    assert a.counts.dtype == np.int64
    assert (a.counts >= 0).all()
    np.testing.assert_array_equal(a.counts.sum(axis=1), counts)
    assert not (a.counts > 0)[~np.isfinite(cost)].any(), "a forbidden pair is used"
    cap = np.asarray(capacity, dtype=float)
    assert (a.loads_s(runtime) <= cap + CAPACITY_RTOL * np.maximum(cap, 1.0)).all()
    assert a.objective == pytest.approx(float(np.where(a.counts > 0, cost, 0.0).ravel() @ a.counts.ravel()))
    assert a.lower_bound <= a.objective + 1e-9


# --- hypothesis: tiny instances, exact arithmetic (quarters and halves) -------------------------------


@st.composite
def tiny_instances(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    k = draw(st.integers(1, 4))
    t = draw(st.integers(1, 3))
    cost_cell = st.integers(0, 24).map(lambda v: INF if v > 20 else v / 4)
    cost = np.array(draw(st.lists(cost_cell, min_size=k * t, max_size=k * t)), dtype=float).reshape(k, t)
    run_cell = st.integers(0, 10).map(lambda v: v / 2)
    runtime = np.array(draw(st.lists(run_cell, min_size=k * t, max_size=k * t)), dtype=float).reshape(k, t)
    counts = np.array(draw(st.lists(st.integers(1, 3), min_size=k, max_size=k)), dtype=np.int64)
    cap_cell = st.integers(0, 34).map(lambda v: INF if v > 30 else v / 2)
    capacity = np.array(draw(st.lists(cap_cell, min_size=t, max_size=t)), dtype=float)
    return cost, runtime, counts, capacity


HYPOTHESIS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYPOTHESIS
@given(tiny_instances())
def test_exact_methods_match_brute_force(instance: tuple[np.ndarray, ...]) -> None:
    cost, runtime, counts, capacity = instance
    best = brute_force(cost, runtime, counts, capacity)
    exact_methods: tuple[SolveMethod, ...] = ("auto", "milp")
    for method in exact_methods:
        if best is None:
            with pytest.raises(PlanningError):
                solve(cost, runtime, counts, capacity, method=method)
            continue
        a = solve(cost, runtime, counts, capacity, method=method)
        check_feasible(a, cost, runtime, counts, capacity)
        assert a.exact
        assert a.objective == pytest.approx(best, rel=EXACT_RTOL, abs=1e-9)
        assert a.lower_bound <= best + 1e-9


@HYPOTHESIS
@given(tiny_instances())
def test_fast_path_is_feasible_and_brackets_the_optimum(instance: tuple[np.ndarray, ...]) -> None:
    cost, runtime, counts, capacity = instance
    best = brute_force(cost, runtime, counts, capacity)
    if best is None:
        with pytest.raises(PlanningError):
            solve(cost, runtime, counts, capacity, method="fast")
        return
    a = solve(cost, runtime, counts, capacity, method="fast")
    check_feasible(a, cost, runtime, counts, capacity)
    assert a.lower_bound <= best + 1e-9 <= a.objective + 2e-9
    assert a.gap >= 0
    if a.exact:
        assert a.objective == pytest.approx(best, rel=EXACT_RTOL, abs=1e-9)


# --- behaviour on hand-made instances ----------------------------------------------------------------


def two_target_instance(n_classes: int = 200, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Low power (cheap, slow) versus GPU (dearer, fast) with varied request sizes."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(1, 50, n_classes)
    runtime = np.column_stack([2.0 * size, 0.2 * size + 0.5])
    cost = np.column_stack([1.0 * size, 1.3 * size + rng.uniform(0, 5, n_classes)])
    counts = rng.integers(1, 20, n_classes)
    return cost, runtime, counts


def test_no_binding_capacity_gives_the_argmin_without_a_solver() -> None:
    cost, runtime, counts = two_target_instance()
    capacity = np.array([np.inf, 1e9])
    a = solve(cost, runtime, counts, capacity)
    assert a.method == "argmin"
    assert a.exact and a.gap == 0.0 and a.lower_bound == a.objective
    np.testing.assert_array_equal(a.counts[:, 0], counts)  # low power is cheapest for every class here
    assert a.objective == pytest.approx(float(counts @ cost.min(axis=1)))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("share", [0.25, 0.5, 0.9])
def test_binding_capacity_fills_the_cheap_target_and_moves_the_rest(
    method: SolveMethod, share: float
) -> None:
    cost, runtime, counts = two_target_instance()
    wanted = float(counts @ runtime[:, 0])
    capacity = np.array([share * wanted, np.inf])
    a = solve(cost, runtime, counts, capacity, method=method, max_exact_classes=1_000)
    check_feasible(a, cost, runtime, counts, capacity)
    load = a.loads_s(runtime)
    assert load[0] <= capacity[0] * (1 + CAPACITY_RTOL)
    # filled: what is left is less than the one request that would fit best
    assert capacity[0] - load[0] < runtime[:, 0].max()
    moved = int(a.counts[:, 1].sum())
    assert 0 < moved < counts.sum()
    assert a.method in ("milp", "lagrangian")
    assert a.objective > float(counts @ cost.min(axis=1))  # the deadline costs something


def test_fast_path_stays_close_to_the_exact_optimum_with_three_targets() -> None:
    """The 0.5 % target, on a mid-size instance where two of three targets' capacities bind."""
    rng = np.random.default_rng(7)
    n_in = rng.lognormal(6.5, 1.3, 5_000).clip(1, 8192)
    n_out = rng.lognormal(4.0, 1.2, 5_000).clip(1, 2048)
    runtime = np.column_stack(
        [
            0.05 + 0.01 * n_in + 0.08 * n_out,
            0.5 + 4e-4 * n_in + 0.03 * n_out,
            1.0 + 1e-4 * n_in + 0.015 * n_out,
        ]
    )
    cost = runtime * np.array([40.0, 200.0, 330.0])
    cost /= cost.min(axis=1).mean()
    counts = rng.integers(1, 4, n_in.size)
    choice = cost.argmin(axis=1)
    wanted = np.bincount(choice, weights=counts * runtime[np.arange(n_in.size), choice], minlength=3)
    assert (wanted > 0).all()
    capacity = np.array([0.4 * wanted[0], 0.6 * wanted[1], float(counts @ runtime[:, 2])])
    exact = solve(cost, runtime, counts, capacity, method="milp")
    fast = solve(cost, runtime, counts, capacity, method="fast")
    for a in (exact, fast):
        check_feasible(a, cost, runtime, counts, capacity)
    assert exact.exact and exact.gap <= EXACT_RTOL
    assert fast.objective >= exact.lower_bound
    assert fast.objective <= exact.objective * 1.005
    assert fast.gap <= 0.005


@pytest.mark.parametrize("method", METHODS)
def test_forbidden_pairs_are_never_used(method: SolveMethod) -> None:
    cost, runtime, counts = two_target_instance(seed=3)
    cost = np.column_stack([cost, cost[:, 1] * 0.5])  # a third target, cheapest of all where allowed
    runtime = np.column_stack([runtime, runtime[:, 1]])
    cost[::3, 2] = np.inf
    cost[1::3, 0] = np.inf
    capacity = np.array([0.3 * float(counts @ runtime[:, 0]), np.inf, 0.5 * float(counts @ runtime[:, 2])])
    a = solve(cost, runtime, counts, capacity, method=method, max_exact_classes=1_000)
    check_feasible(a, cost, runtime, counts, capacity)
    assert a.counts[::3, 2].sum() == 0 and a.counts[1::3, 0].sum() == 0


def test_a_request_longer_than_a_targets_capacity_goes_elsewhere() -> None:
    cost = np.array([[1.0, 5.0], [1.0, 5.0]])
    runtime = np.array([[100.0, 1.0], [10.0, 1.0]])  # class 0 alone exceeds target 0's capacity
    a = solve(cost, runtime, [1, 2], [50.0, np.inf])
    np.testing.assert_array_equal(a.counts, [[0, 1], [2, 0]])


@pytest.mark.parametrize("method", METHODS)
def test_empty_input(method: SolveMethod) -> None:
    a = solve(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, dtype=int), [1.0, 2.0, np.inf], method=method)
    assert a.counts.shape == (0, 3)
    assert a.objective == 0.0 and a.exact and a.gap == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_one_target(method: SolveMethod) -> None:
    a = solve([[2.0], [3.0]], [[1.0], [4.0]], [3, 2], [11.0], method=method)
    np.testing.assert_array_equal(a.counts, [[3], [2]])
    assert a.objective == 12.0 and a.exact
    with pytest.raises(PlanningError, match="11 s"):
        solve([[2.0], [3.0]], [[1.0], [4.0]], [3, 2], [10.0], method=method)


@pytest.mark.parametrize("method", METHODS)
def test_identical_and_zero_costs(method: SolveMethod) -> None:
    runtime = np.array([[1.0, 1.0], [2.0, 2.0]])
    counts = np.array([4, 3])
    # identical costs and room everywhere: every tie goes to the lowest target index
    a = solve(np.ones((2, 2)), runtime, counts, [np.inf, np.inf], method=method)
    np.testing.assert_array_equal(a.counts, [[4, 0], [3, 0]])
    # a binding target 0: the overflow moves, the objective does not change
    b = solve(np.ones((2, 2)), runtime, counts, [5.0, np.inf], method=method)
    check_feasible(b, np.ones((2, 2)), runtime, counts, [5.0, np.inf])
    assert b.objective == 7.0 and b.counts[:, 1].sum() > 0
    z = solve(np.zeros((2, 2)), runtime, counts, [5.0, 6.0], method=method)
    check_feasible(z, np.zeros((2, 2)), runtime, counts, [5.0, 6.0])
    assert z.objective == 0.0 and z.exact


def test_results_are_deterministic() -> None:
    cost, runtime, counts = two_target_instance(seed=5)
    capacity = np.array([0.5 * float(counts @ runtime[:, 0]), np.inf])
    for method in METHODS:
        first = solve(cost, runtime, counts, capacity, method=method)
        again = solve(cost, runtime, counts, capacity, method=method)
        np.testing.assert_array_equal(first.counts, again.counts)


# --- errors ------------------------------------------------------------------------------------------


def test_infeasible_message_names_full_targets_the_work_needed_and_the_fix() -> None:
    cost = np.array([[1.0, 2.0], [1.5, 2.0]])
    runtime = np.array([[10.0, 4.0], [10.0, 4.0]])
    with pytest.raises(PlanningError) as err:
        solve(cost, runtime, [5, 5], [30.0, 8.0], target_names=["m1-pro", "a100"])
    message = str(err.value)
    assert "m1-pro: capacity 30 s, the requests cheapest there need 100 s (full)" in message
    assert "need 40 s of work" in message and "offer 38 s" in message  # 10 requests × 4 s at best
    for fix in ("longer deadline", "array_parallelism", "fewer requests"):
        assert fix in message


def test_a_class_forbidden_everywhere_is_reported() -> None:
    cost = np.array([[np.inf, np.inf], [1.0, 2.0]])
    with pytest.raises(PlanningError, match=r"2 request\(s\) in 1 class\(es\) \(class 0\).*forbidden"):
        solve(cost, np.ones((2, 2)), [2, 1], [np.inf, np.inf])


def test_packing_infeasibility_is_found_by_search() -> None:
    # 3 requests of 2 s into two targets of 3 s each: 6 s ≤ 6 s in total, yet only one fits per target
    with pytest.raises(PlanningError, match="whole requests do not pack"):
        solve(np.ones((1, 2)), np.full((1, 2), 2.0), [3], [3.0, 3.0], method="fast")


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="auto, milp, fast"):
        solve(np.ones((1, 1)), np.ones((1, 1)), [1], [1.0], method="best")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape mismatch"):
        solve(np.ones((2, 2)), np.ones((2, 3)), [1, 1], [1.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        solve(np.array([[np.nan]]), np.ones((1, 1)), [1], [1.0])


# --- spread ------------------------------------------------------------------------------------------


def test_spread_round_trips_the_class_counts() -> None:
    rng = np.random.default_rng(11)
    cost, runtime, counts = two_target_instance(seed=11)
    classes = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    capacity = np.array([0.4 * float(counts @ runtime[:, 0]), np.inf])
    a = solve(cost, runtime, counts, capacity, method="fast")
    targets = spread(classes, a.counts)
    assert targets.shape == classes.shape
    per_class = np.zeros_like(a.counts)
    np.add.at(per_class, (classes, targets), 1)
    np.testing.assert_array_equal(per_class, a.counts)


def test_spread_keeps_request_order_within_a_class() -> None:
    classes = np.array([1, 0, 1, 1, 0, 1])
    counts = np.array([[1, 1], [2, 2]])
    # class 1's requests are positions 0, 2, 3, 5: the first two go to target 0, the last two to target 1
    np.testing.assert_array_equal(spread(classes, counts), [0, 0, 0, 1, 1, 1])


def test_spread_rejects_counts_that_do_not_match() -> None:
    with pytest.raises(ValueError, match="class 0 has 2 requests"):
        spread([0, 0, 1], np.array([[1, 0], [0, 1]]))


# --- HiGHS's stray output -----------------------------------------------------------------------------


def test_c_level_stdout_is_silenced_only_while_solving(capfd: pytest.CaptureFixture[str]) -> None:
    with optimal.c_stdout_silenced():
        os.write(1, b"HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();\n")
    os.write(1, b"after\n")
    assert capfd.readouterr().out == "after\n"
