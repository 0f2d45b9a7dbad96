"""Time placement (hpcqueue.planner.timing): starts within capacity and power, never worse than the
baselines, and a clear error when the deadline cannot be met."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcqueue.errors import ConfigError, PlanningError
from hpcqueue.planner.timing import Capacity, Placement, Tasks, TimeGrid, place, site_rates

START = datetime(2023, 6, 1, 22, 0, tzinfo=timezone.utc)
HOUR = 3600.0


def _factors(carbon: np.ndarray, pue: float | np.ndarray = 1.2, power_kw: np.ndarray | None = None, **more):
    n = len(carbon)
    return SimpleNamespace(
        pue=np.broadcast_to(np.asarray(pue, dtype=float), (n,)).copy(),
        carbon_g_per_kwh=np.asarray(carbon, dtype=float),
        wue_l_per_kwh=more.get("wue"),
        water_l_per_kwh=more.get("water"),
        price_usd_per_mwh=more.get("price"),
        power_kw=power_kw,
    )


def _capacity(parallelism, site_power_w=None, power_w=None, n_slots=14, site=None) -> Capacity:
    n_targets = len(parallelism)
    return Capacity(
        parallelism=np.asarray(parallelism, dtype=np.int64),
        power_w=np.asarray(power_w if power_w is not None else [np.nan] * n_targets, dtype=float),
        site=np.asarray(site if site is not None else [0] * n_targets, dtype=np.int64),
        site_power_w=np.asarray(site_power_w, dtype=float)
        if site_power_w is not None
        else np.full((1, n_slots), np.inf),
    )


def _place(tasks, carbon, capacity, deadline_h=14.0, weights=None, defer=True, **factor_args) -> Placement:
    grid = TimeGrid.covering(START, HOUR, deadline_h * HOUR, len(carbon) * HOUR)
    factors = [_factors(carbon[: grid.n_slots], **factor_args)]
    rates = site_rates(factors, capacity.site, grid.n_slots)
    return place(tasks, grid, capacity, rates, weights or {"carbon": 1.0}, defer=defer)


def _tasks(runtime_s, energy_j=None, target=None) -> Tasks:
    runtime = np.asarray(runtime_s, dtype=float)
    return Tasks(
        target=np.asarray(target if target is not None else [0] * runtime.size, dtype=np.int64),
        energy_j=np.asarray(energy_j if energy_j is not None else runtime * 300.0, dtype=float),
        runtime_s=runtime,
    )


def test_tasks_go_to_the_cleanest_hours_within_capacity() -> None:
    carbon = np.array([400, 400, 100, 100, 300, 300, 300, 300], dtype=float)
    tasks = _tasks([HOUR] * 4)
    placement = _place(tasks, carbon, _capacity([2], n_slots=8), deadline_h=8)
    # two elements, one hour each: the four one-hour tasks fill the two clean hours
    assert sorted(placement.plan.start_slot.tolist()) == [2, 2, 3, 3]
    assert placement.baselines["run_at_submit"].start_slot.tolist() == [0, 0, 1, 1]
    plan = placement.plan.totals()
    at_submit = placement.baselines["run_at_submit"].totals()
    kwh = 4 * HOUR * 300.0 / 3.6e6
    assert plan["carbon_g"] == pytest.approx(kwh * 1.2 * 100)
    assert at_submit["carbon_g"] == pytest.approx(kwh * 1.2 * 400)
    assert placement.baselines["best_window"].totals()["carbon_g"] == pytest.approx(kwh * 1.2 * 100)
    assert plan["facility_energy_j"] == pytest.approx(1.2 * plan["energy_j"])


def test_a_task_longer_than_a_slot_is_priced_over_every_slot_it_spans() -> None:
    carbon = np.array([100, 500, 500, 100, 100, 100], dtype=float)
    tasks = _tasks([1.5 * HOUR], energy_j=[3.6e6])  # 1 kWh IT
    placement = _place(tasks, carbon, _capacity([1], n_slots=6), deadline_h=6, pue=1.0)
    assert placement.plan.start_slot.tolist() == [3]
    assert placement.plan.totals()["carbon_g"] == pytest.approx(100.0)
    # at submit: two thirds of the energy in hour 0 (100 g/kWh), one third in hour 1 (500 g/kWh)
    assert placement.baselines["run_at_submit"].totals()["carbon_g"] == pytest.approx(100 * 2 / 3 + 500 / 3)


def test_no_defer_and_no_deadline_run_at_submit() -> None:
    carbon = np.array([400, 100, 100, 100], dtype=float)
    tasks = _tasks([HOUR / 2] * 3)
    now = _place(tasks, carbon, _capacity([1], n_slots=4), deadline_h=4, defer=False)
    assert now.plan.start_slot.tolist() == now.baselines["run_at_submit"].start_slot.tolist() == [0, 0, 1]
    grid = TimeGrid.covering(START, HOUR, None, 4 * HOUR)
    rates = site_rates([_factors(carbon)], [0], grid.n_slots)
    open_ended = place(tasks, grid, _capacity([1], n_slots=4), rates, {"carbon": 1.0})
    assert open_ended.plan.start_slot.tolist() == [0, 0, 1]
    assert "no deadline" in open_ended.notes[0]


def test_power_drop_in_the_night_is_never_exceeded() -> None:
    carbon = np.full(10, 200.0)
    carbon[4:7] = 50.0  # the cleanest hours are exactly when the wind drops
    available_kw = np.array([3, 3, 3, 3, 1, 1, 0.4, 3, 3, 3], dtype=float)
    rng = np.random.default_rng(7)
    tasks = _tasks(rng.uniform(0.2, 2.5, 25) * HOUR, target=rng.integers(0, 2, 25))
    capacity = _capacity([3, 3], site_power_w=[available_kw * 1000], power_w=[400.0, 250.0], n_slots=10)
    placement = _place(tasks, carbon, capacity, deadline_h=10, power_kw=available_kw)
    for schedule in [placement.plan, *placement.baselines.values()]:
        assert np.all(schedule.site_power_w[0] <= available_kw * 1000 + 1e-6), schedule.name
        assert np.all(schedule.nodes <= capacity.parallelism[:, None])
    # some work runs in the clean, power-starved hours, but only as much as the power allows
    assert placement.plan.site_power_w[0][4:7].max() > 0
    assert placement.plan.totals()["carbon_g"] <= placement.baselines["run_at_submit"].totals()["carbon_g"]


def test_an_impossible_deadline_states_the_earliest_that_works() -> None:
    carbon = np.full(12, 100.0)
    tasks = _tasks([HOUR] * 6)
    with pytest.raises(
        PlanningError, match=r"earliest deadline that works is 2023-06-02T04:00\+00:00 \(6h00m"
    ):
        _place(tasks, carbon, _capacity([1], n_slots=12), deadline_h=3)


def test_objective_needs_data_at_every_site_that_runs_work() -> None:
    grid = TimeGrid.covering(START, HOUR, 4 * HOUR, 4 * HOUR)
    rates = site_rates([None], [0], grid.n_slots)
    with pytest.raises(ConfigError, match="objective carbon needs carbon intensity"):
        place(_tasks([HOUR]), grid, _capacity([1], n_slots=4), rates, {"carbon": 1.0})
    energy_only = place(_tasks([HOUR]), grid, _capacity([1], n_slots=4), rates, {"energy": 1.0})
    totals = energy_only.plan.totals()
    assert totals["carbon_g"] is None and totals["water_l"] is None and totals["cost_usd"] is None
    assert totals["facility_energy_j"] is None and totals["energy_j"] == pytest.approx(HOUR * 300)


def test_negative_prices_keep_the_objective_bounded() -> None:
    carbon = np.full(4, 100.0)
    price = np.array([50.0, -80.0, 20.0, 30.0])
    tasks = _tasks([HOUR] * 2, energy_j=[3.6e9, 3.6e9])  # 1 MWh each
    placement = _place(
        tasks, carbon, _capacity([1], n_slots=4), deadline_h=4, weights={"cost": 1}, pue=1.0, price=price
    )
    assert sorted(placement.plan.start_slot.tolist()) == [1, 2]
    assert placement.plan.totals()["cost_usd"] == pytest.approx(-80.0 + 20.0)


def test_weights_mix_carbon_and_water() -> None:
    carbon = np.array([100.0, 300.0])
    water = np.array([5.0, 0.0])  # off-site L per kWh
    tasks = _tasks([HOUR], energy_j=[3.6e6])
    grid = TimeGrid.covering(START, HOUR, 2 * HOUR, 2 * HOUR)
    cap = _capacity([1], n_slots=2)
    rates = site_rates([_factors(carbon, pue=1.0, water=water, wue=np.zeros(2))], [0], grid.n_slots)
    by_carbon = place(tasks, grid, cap, rates, {"carbon": 1.0})
    by_water = place(tasks, grid, cap, rates, {"water": 1.0})
    assert by_carbon.plan.start_slot.tolist() == [0]
    assert by_water.plan.start_slot.tolist() == [1]
    assert by_water.plan.totals()["water_l"] == pytest.approx(0.0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    n_tasks=st.integers(1, 30),
    n_slots=st.integers(2, 16),
    parallelism=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    limited=st.booleans(),
)
def test_plan_is_never_worse_than_best_window_nor_run_at_submit(seed, n_tasks, n_slots, parallelism, limited):
    rng = np.random.default_rng(seed)
    n_targets = len(parallelism)
    carbon = rng.uniform(0, 800, n_slots)
    runtime = rng.uniform(0.05, 2.5, n_tasks) * HOUR
    tasks = _tasks(
        runtime, energy_j=rng.uniform(1e5, 5e6, n_tasks), target=rng.integers(0, n_targets, n_tasks)
    )
    power_w = rng.uniform(200, 800, n_targets)
    available_kw = rng.uniform(0.5, 4.0, n_slots) if limited else None
    capacity = _capacity(
        parallelism,
        site_power_w=[available_kw * 1000] if limited else None,
        power_w=power_w,
        n_slots=n_slots,
    )
    work = np.bincount(tasks.target, weights=runtime, minlength=n_targets) / np.asarray(parallelism)
    enough_h = (work.max() + runtime.max()) / HOUR
    deadline_h = min(float(n_slots), enough_h + float(rng.uniform(0, n_slots)))
    try:
        placement = _place(tasks, carbon, capacity, deadline_h=deadline_h, power_kw=available_kw)
    except PlanningError as exc:
        assert "deadline" in str(exc)
        return
    plan = placement.plan.totals()["carbon_g"]
    if "run_at_submit" not in placement.baselines:
        # task order packs worse than the plan: the note says the baselines could not be made
        assert any("run at submit" in note for note in placement.notes)
        return
    window = placement.baselines["best_window"].totals()["carbon_g"]
    at_submit = placement.baselines["run_at_submit"]
    if at_submit.meets_deadline:
        assert plan <= window * (1 + 1e-9) + 1e-9
        assert window <= at_submit.totals()["carbon_g"] * (1 + 1e-9) + 1e-9
    schedule = placement.plan
    assert schedule.meets_deadline
    assert np.all(schedule.nodes <= capacity.parallelism[:, None])
    if limited:
        assert np.all(
            schedule.site_power_w[0][: len(available_kw)] <= available_kw * 1000 * (1 + 1e-9) + 1e-6
        )
    finish = schedule.start_slot * HOUR + runtime
    assert np.all(finish <= placement.grid.deadline_s * (1 + 1e-9) + 1e-6)


def _place_in_minutes(tasks: Tasks, carbon: np.ndarray, deadline_s: float) -> Placement:
    grid = TimeGrid.covering(START, 30.0, deadline_s, deadline_s)
    capacity = _capacity([4], n_slots=grid.n_slots)
    rates = site_rates([_factors(carbon[: grid.n_slots])], capacity.site, grid.n_slots)
    return place(tasks, grid, capacity, rates, {"carbon": 1.0})


def test_a_task_that_needs_more_than_its_runtime_keeps_that_time_before_the_deadline() -> None:
    # 30-s slots over 5 minutes, the last minute much cleaner: a 10-s task would go to the last slot, but a
    # task that needs 90 s from its start (a Slurm job's minimum time and scheduling delay) cannot start there
    carbon = np.array([400.0] * 6 + [300.0, 200.0, 150.0, 100.0])
    free = _place_in_minutes(_tasks([10.0]), carbon, 300.0)
    assert free.plan.start_slot.tolist() == [9]
    needy = Tasks(np.array([0]), np.array([3000.0]), np.array([10.0]), needs_s=np.array([90.0]))
    kept = _place_in_minutes(needy, carbon, 300.0)
    assert kept.plan.start_slot.tolist() == [7]  # 210 s + 90 s = the deadline: the last start that keeps it
    assert kept.plan.meets_deadline
    # the earliest workable deadline counts what the task needs, not only its runtime
    with pytest.raises(PlanningError, match="earliest deadline that works is 2023-06-01T22:02"):
        _place_in_minutes(needy, np.array([100.0, 100.0]), 60.0)
