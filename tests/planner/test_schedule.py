"""Plans in time at configured sites (hpcqueue.planner.schedule through plan_requests and simulate), with
small synthetic series written here: the real grid data may not ship with the repository."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpcqueue.config import SiteSpec, Target
from hpcqueue.errors import ConfigError, PlanningError, SiteDataError
from hpcqueue.planner import PlanOptions, resolve_cost_models
from hpcqueue.planner.plan import plan_requests
from hpcqueue.planner.simulate import simulate
from hpcqueue.sites import load_site
from tests.sites import write_csv, write_em_csv

START = datetime(2023, 6, 1, 18, 0, tzinfo=timezone.utc)
A100 = "llama-2-7b-chat.swing-a100.wilkins2024"
V100 = "llama-2-7b-chat.palmetto-v100.wilkins2024"
# a dirty evening and a clean night: hours 18:00..17:00 UTC of 2023-06-01/02, then more of the same
NIGHT = [420, 410, 400, 380, 150, 120, 100, 110, 160, 300, 350, 390] * 8


def _site(tmp_path: Path, name: str, carbon, **spec) -> object:
    path = write_em_csv(tmp_path / f"{name}.csv", carbon, first="2023-06-01 18:00:00")
    return load_site(SiteSpec(name=name, carbon=str(path), cooling=1.2, **spec))


def _targets(*specs: tuple[str, str, str, int], power_w: float | None = None) -> list[Target]:
    return [
        Target(
            name=name, hardware="x", profile=profile, site=site, array_parallelism=parallel, power_w=power_w
        )
        for name, profile, site, parallel in specs
    ]


def _requests(n: int = 600, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "line": np.arange(1, n + 1),
            "input_tokens": rng.integers(20, 800, n),
            "max_new_tokens": rng.integers(20, 400, n),
        }
    )


def _options(**overrides) -> PlanOptions:
    base = {"start": START, "deadline_s": 14 * 3600.0, "objective": {"carbon": 1.0}, "task_size": 32}
    return PlanOptions(**(base | overrides))


def test_a_plan_at_a_site_starts_in_the_clean_hours(tmp_path: Path) -> None:
    sites = {"dc": _site(tmp_path, "dc", NIGHT)}
    targets = _targets(("gpu", A100, "dc", 2))
    plan = plan_requests(_requests(), targets, resolve_cost_models(targets, "x"), _options(), sites)
    assert {"start_s", "carbon_g", "facility_energy_j", "water_l", "cost_usd"} <= set(plan.tasks.columns)
    report = plan.time_report()
    at_submit = report["baselines"]["run_at_submit"]
    assert report["carbon_g"] <= report["baselines"]["best_window"]["carbon_g"] <= at_submit["carbon_g"]
    assert report["carbon_g"] < 0.7 * at_submit["carbon_g"]  # the night is less than half as dirty
    assert report["facility_energy_j"] == pytest.approx(1.2 * report["energy_j"])
    assert report["water_l"] is None and report["cost_usd"] is None  # not stated: unknown, never zero
    starts = report["per_target"]["gpu"]["starts"]
    assert sum(s["requests"] for s in starts) == 600
    first_hour = min(datetime.fromisoformat(s["start"]) for s in starts)
    assert first_hour >= datetime(2023, 6, 1, 22, tzinfo=timezone.utc)
    assert report["time"]["objective"] == {"carbon": 1.0}
    assert report["sites"]["dc"]["factors"]["carbon"]["kind"] == "series"
    assert report["sites"]["dc"]["factors"]["pue"]["kind"] == "assumed"


def test_without_sites_deadline_or_objective_a_plan_is_what_it_was(tmp_path: Path) -> None:
    targets = _targets(("gpu", A100, "default", 2))
    plan = plan_requests(_requests(), targets, resolve_cost_models(targets, "x"), PlanOptions(task_size=32))
    assert plan.in_time is None and "start_s" not in plan.tasks.columns


def test_a_deadline_without_sites_reports_unknown_carbon(tmp_path: Path) -> None:
    targets = _targets(("gpu", A100, "default", 2))
    plan = plan_requests(
        _requests(), targets, resolve_cost_models(targets, "x"), _options(objective=None), sites={}
    )
    report = plan.time_report()
    assert report["carbon_g"] is None and report["facility_energy_j"] is None
    assert report["energy_j"] == pytest.approx(plan.tasks["predicted_energy_j"].sum())
    with pytest.raises(ConfigError, match="objective carbon needs carbon intensity"):
        plan_requests(_requests(), targets, resolve_cost_models(targets, "x"), _options(), sites={})


def test_no_defer_starts_everything_at_submit(tmp_path: Path) -> None:
    sites = {"dc": _site(tmp_path, "dc", NIGHT)}
    targets = _targets(("gpu", A100, "dc", 8))
    plan = plan_requests(
        _requests(), targets, resolve_cost_models(targets, "x"), _options(defer=False), sites
    )
    report = plan.time_report()
    assert report["carbon_g"] == pytest.approx(report["baselines"]["run_at_submit"]["carbon_g"])
    assert plan.tasks["start_s"].min() == 0.0


def test_an_absolute_deadline_and_an_impossible_one(tmp_path: Path) -> None:
    sites = {"dc": _site(tmp_path, "dc", NIGHT)}
    targets = _targets(("gpu", A100, "dc", 1))
    models = resolve_cost_models(targets, "x")
    deadline = datetime(2023, 6, 2, 8, tzinfo=timezone.utc)
    by_time = _options(deadline_s=None, deadline_at=deadline)
    plan = plan_requests(_requests(), targets, models, by_time, sites)
    assert plan.time_report()["time"]["deadline"] == "2023-06-02T08:00:00+00:00"
    with pytest.raises(
        PlanningError, match=r"the earliest deadline that works is 2023-06-0.* after the start"
    ):
        # 1,200 requests take about 1.9 h on the one slot (the cached regime plans predict), not 1 h
        plan_requests(_requests(1200), targets, models, _options(deadline_s=3600.0), sites)
    with pytest.raises(ConfigError, match="is not after the start"):
        plan_requests(_requests(), targets, models, _options(deadline_s=None, deadline_at=START), sites)


def test_a_series_that_ends_before_the_deadline_is_named(tmp_path: Path) -> None:
    sites = {"dc": _site(tmp_path, "dc", NIGHT[:6])}
    targets = _targets(("gpu", A100, "dc", 2))
    with pytest.raises(
        SiteDataError,
        match=r"dc\.csv: carbon intensity covers 2023-06-01 18:00 to 2023-06-02 00:00 \(UTC\); the plan",
    ):
        plan_requests(_requests(), targets, resolve_cost_models(targets, "x"), _options(), sites)


def test_power_drop_in_the_night_is_respected_by_tasks_spanning_slots(tmp_path: Path) -> None:
    available = [1.4, 1.4, 1.4, 1.4, 1.4, 0.7, 0.7, 0.0, 1.4, 1.4, 1.4, 1.4, 1.4, 1.4] * 7
    first = np.datetime64("2023-06-01T18:00")
    rows = [[f"{first + np.timedelta64(i, 'h')}Z", kw] for i, kw in enumerate(available)]
    power = write_csv(tmp_path / "power.csv", "time,value", rows)
    sites = {"dc": _site(tmp_path, "dc", NIGHT, power=str(power))}
    targets = _targets(("gpu", A100, "dc", 4), power_w=700.0)
    options = _options(task_size=400, slot_s=1800.0)  # tasks longer than a half-hour slot
    plan = plan_requests(_requests(1500), targets, resolve_cost_models(targets, "x"), options, sites)
    placement = plan.in_time.placement
    assert (plan.tasks["predicted_runtime_s"] > 1800).any()
    grid_kw = np.repeat(np.asarray(available, dtype=float), 2)[: placement.grid.n_slots]
    for schedule in [placement.plan, *placement.baselines.values()]:
        assert np.all(schedule.site_power_w[0] <= grid_kw * 1000 + 1e-6), schedule.name
    # nothing runs while the power is gone (hour 7 = slots 14 and 15)
    assert placement.plan.site_power_w[0][14:16].max() == 0.0


def test_a_limited_site_needs_power_w(tmp_path: Path) -> None:
    sites = {"dc": _site(tmp_path, "dc", NIGHT, power=5.0)}
    targets = _targets(("gpu", A100, "dc", 2))
    with pytest.raises(ConfigError, match="states no power_w"):
        plan_requests(_requests(), targets, resolve_cost_models(targets, "x"), _options(), sites)


def test_simulate_reports_plan_and_baselines_with_the_same_keys(tmp_path: Path, azure: pd.DataFrame) -> None:
    clean_at_night = NIGHT
    clean_in_the_evening = list(reversed(NIGHT))
    sites = {
        "east": _site(tmp_path, "east", clean_at_night),
        "west": _site(tmp_path, "west", clean_in_the_evening),
    }
    targets = _targets(("a100", A100, "east", 4), ("v100", V100, "west", 4))
    trace = azure.head(2000)
    report = simulate(trace, targets, resolve_cost_models(targets, "x"), _options(task_size=64), sites)
    keys = {"energy_j", "facility_energy_j", "carbon_g", "water_l", "cost_usd"}
    assert keys <= set(report)
    for name in ("run_at_submit", "best_window", "best_single_site"):
        assert keys <= set(report["baselines"][name]), name
    assert report["baselines"]["best_single_site"]["site"] in ("east", "west")
    plan, window, at_submit = (
        report["carbon_g"],
        report["baselines"]["best_window"]["carbon_g"],
        report["baselines"]["run_at_submit"]["carbon_g"],
    )
    assert plan <= window * (1 + 1e-9) and window <= at_submit * (1 + 1e-9)
    assert plan <= report["baselines"]["best_single_site"]["carbon_g"] * (1 + 1e-9)
    assert {row["site"] for row in report["per_target"].values()} == {"east", "west"}
    assert all(row["starts"] for row in report["per_target"].values() if row["requests"])
    # the policy comparison of the routing stays in the same report
    assert "unaware" in report["baselines"] and report["requests"] == 2000
    assert math.isfinite(report["time"]["scales"]["carbon"])


def test_a_target_without_a_profile_leaves_its_figures_unknown_never_zero(tmp_path: Path) -> None:
    sites = {"dc": _site(tmp_path, "dc", NIGHT)}
    targets = [Target(name="cpu", hardware="no-profile-here", site="dc", array_parallelism=2)]
    models = resolve_cost_models(targets, "x")
    assert models == {"cpu": None}
    report = plan_requests(_requests(), targets, models, _options(objective=None), sites).time_report()
    for key in ("energy_j", "facility_energy_j", "carbon_g", "finish_s", "meets_deadline"):
        assert report[key] is None, key
        assert report["baselines"]["run_at_submit"][key] is None, key


def test_routing_sees_a_site_whose_power_is_limited(tmp_path: Path) -> None:
    """The cleaner site can run only one of its eight A100 elements at a time: routing gives it what one
    element can do before the deadline, and the placement then fits instead of failing."""
    clean = _site(tmp_path, "clean", [100.0] * 96, power=0.7)
    dirty = _site(tmp_path, "dirty", [500.0] * 96)
    targets = [
        Target(name="a100", hardware="x", profile=A100, site="clean", array_parallelism=8, power_w=700.0),
        Target(name="v100", hardware="x", profile=V100, site="dirty", array_parallelism=32, power_w=450.0),
    ]
    models = resolve_cost_models(targets, "x")
    options = _options(policy="optimal", deadline_s=4 * 3600.0)
    unlimited = plan_requests(
        _requests(3000),
        targets,
        models,
        options,
        {"clean": _site(tmp_path, "free", [100.0] * 96), "dirty": dirty},
    )
    limited = plan_requests(_requests(3000), targets, models, options, {"clean": clean, "dirty": dirty})
    on_clean = lambda plan: int((plan.assignments["target"] == "a100").sum())  # noqa: E731
    assert 0 < on_clean(limited) < on_clean(unlimited)
    placement = limited.in_time.placement
    assert np.all(placement.plan.site_power_w[0] <= 700.0 + 1e-6)
    assert placement.plan.meets_deadline


def test_a_slurm_task_keeps_slurms_minimum_time_and_scheduling_delay_before_the_deadline() -> None:
    from hpcqueue.planner.schedule import SLURM_MIN_TIME_S, SLURM_START_DELAY_S, deadline_needs

    targets = [
        Target(name="here", hardware="x", profile=A100),
        Target(name="cluster", hardware="x", profile=A100, executor="slurm", partition="gpu"),
    ]
    needs = deadline_needs(np.array([0, 1, 1, 0]), np.array([10.0, 10.0, 600.0, np.nan]), targets)
    assert needs.tolist() == [10.0, SLURM_START_DELAY_S + SLURM_MIN_TIME_S, SLURM_START_DELAY_S + 600.0, 0.0]
