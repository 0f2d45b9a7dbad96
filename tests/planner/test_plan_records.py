"""What submit keeps of a plan in time: each deferred task's begin time and the deadline (the batch's
schedule), and the plan's costs beside every baseline's (the ledger's plan_costs rows)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcqueue.planner import resolve_cost_models
from hpcqueue.planner.plan import plan_requests
from hpcqueue.submission import plan_costs, plan_report, plan_schedule
from tests.planner.test_schedule import A100, START, _options, _requests, _site, _targets

NIGHT = [420, 410, 400, 380, 150, 120, 100, 110, 160, 300, 350, 390] * 8


def test_the_schedule_holds_the_deferred_tasks_and_the_deadline(tmp_path: Path) -> None:
    sites = {"dc": _site(tmp_path, "dc", NIGHT)}
    targets = _targets(("gpu", A100, "dc", 2))
    plan = plan_requests(_requests(), targets, resolve_cost_models(targets, "x"), _options(), sites)
    now = START.timestamp() + 5
    schedule = plan_schedule(plan, now=now)
    assert schedule["start_at"] == START.timestamp()
    assert schedule["deadline_at"] == START.timestamp() + 14 * 3600
    starts = dict(zip(plan.tasks["task_index"], plan.tasks["start_s"], strict=True))
    deferred = {int(i): when for i, when in schedule["begin_at"].items()}
    # every task that starts after submission is in it, at the plan's start plus its offset; none other
    assert deferred == {i: START.timestamp() + s for i, s in starts.items() if START.timestamp() + s > now}
    assert deferred and min(deferred.values()) >= START.timestamp() + 4 * 3600  # the clean hours


def test_a_plan_not_placed_in_time_defers_nothing(tmp_path: Path) -> None:
    targets = _targets(("gpu", A100, "default", 2))
    plan = plan_requests(
        _requests(), targets, resolve_cost_models(targets, "x"), _options(start=None, objective=None)
    )
    schedule = plan_schedule(plan, now=1_000.0)
    assert schedule == {"start_at": 1_000.0, "deadline_at": 1_000.0 + 14 * 3600, "begin_at": {}}


def test_plan_costs_list_the_plan_and_every_baseline_that_could_be_planned(tmp_path: Path) -> None:
    sites = {"dc": _site(tmp_path, "dc", NIGHT)}
    targets = _targets(("gpu", A100, "dc", 2))
    plan = plan_requests(_requests(), targets, resolve_cost_models(targets, "x"), _options(), sites)
    report = plan_report(plan)
    assert report is not None
    rows = {row["name"]: row for row in plan_costs(report)}
    assert rows["plan"]["role"] == "plan"
    assert rows["plan"]["carbon_g"] == pytest.approx(report["carbon_g"])
    assert rows["plan"]["finish_s"] == report["finish_s"]
    at_submit = rows["run_at_submit"]
    assert at_submit["role"] == "baseline" and at_submit["carbon_g"] > rows["plan"]["carbon_g"]
    assert {"unaware", "single:gpu", "best_window"} <= set(rows)
    # a routing baseline has no USD cost: its weighted 'cost' is not money
    assert rows["unaware"]["cost_usd"] is None and rows["unaware"]["finish_s"] is not None
    broken = {"energy_j": 1.0, "baselines": {"optimal": {"error": "infeasible"}}}
    assert [row["name"] for row in plan_costs(broken)] == ["plan"]
    assert plan_costs(None) == []
