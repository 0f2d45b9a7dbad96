"""The plan in time in the ledger: the batch's plan report, start and deadline, its plan and baseline
costs, each task's site, planned hours and predicted footprint; moving planned starts; the batch list."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from hpcqueue.cli import app
from hpcqueue.ledger import Ledger
from hpcqueue.ledger.schema import TaskRow
from tests.ledger import T0, make_info

HOUR = 3600.0
PLAN_REPORT = {
    "objective": "carbon",
    "carbon_g": 12.5,
    "deadline_s": 8 * HOUR,
    "baselines": {"run_at_submit": {"carbon_g": 20.0}, "unaware": {"error": "no series"}},
    "series": {"caiso": {"carbon": "series", "pue": "assumed"}},
    "nan_is_null": float("nan"),
}
PLAN_COSTS = [
    {
        "name": "plan",
        "role": "plan",
        "energy_j": 5000.0,
        "facility_energy_j": 6000.0,
        "carbon_g": 12.5,
        "water_onsite_l": 0.25,
        "water_offsite_l": 0.5,
        "water_l": 0.75,
        "cost_usd": 0.01,
        "finish_s": 5 * HOUR,
        "meets_deadline": True,
    },
    {"name": "run_at_submit", "role": "baseline", "carbon_g": 20.0, "cost_usd": float("nan")},
    {"name": "single:cpu", "role": "baseline", "carbon_g": 30.0, "finish_s": None, "meets_deadline": False},
]


def plan_in_time(n_tasks: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``n_tasks`` tasks of two lines each; task 0 at a site, starting an hour after T0; the rest without
    a site or planned hours (NaN, as the planner's frame has them)."""
    requests = pd.DataFrame(
        {
            "line": range(1, 2 * n_tasks + 1),
            "id": [f"q{i}" for i in range(2 * n_tasks)],
            "target": "gpu",
            "task_index": [i // 2 for i in range(2 * n_tasks)],
            "input_tokens": 10,
            "max_new_tokens": 32,
            "predicted_energy_j": 1.0,
            "predicted_runtime_s": 0.5,
            "extrapolated": False,
        }
    )
    nan = float("nan")
    rest = n_tasks - 1
    tasks = pd.DataFrame(
        {
            "task_index": range(n_tasks),
            "target": "gpu",
            "executor": "slurm",
            "n_requests": 2,
            "predicted_energy_j": 2.0,
            "predicted_runtime_s": 600.0,
            "site": ["caiso", *[None] * rest],
            "planned_start_at": [T0 + HOUR, *[nan] * rest],
            "planned_end_at": [T0 + HOUR + 600.0, *[nan] * rest],
            "predicted_facility_energy_j": [2.4, *[nan] * rest],
            "predicted_carbon_g": [0.3, *[nan] * rest],
            "predicted_water_l": [0.01, *[nan] * rest],
            "predicted_cost_usd": [1e-5, *[nan] * rest],
            "start_s": [HOUR, *[0.0] * rest],  # a planner column the ledger does not keep
        }
    )
    return tasks, requests


def planned_info(batch_id: str = "b1", **fields: Any):
    return replace(
        make_info(batch_id), plan_json=PLAN_REPORT, plan_start_at=T0, deadline_at=T0 + 8 * HOUR, **fields
    )


def task_rows(ledger: Ledger, batch_id: str = "b1") -> dict[int, dict[str, Any]]:
    """Each task's row as the ORM reads it (timestamps as UTC datetimes on every backend)."""
    with ledger.connect() as conn:
        found = conn.execute(select(TaskRow.__table__).where(TaskRow.batch_id == batch_id)).mappings()
        return {row["task_index"]: dict(row) for row in found}


def utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def test_the_plan_report_costs_and_task_plan_round_trip(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    assert ledger.record_batch(planned_info(), *plan_in_time(), plan_costs=PLAN_COSTS)

    info = ledger.get_batch("b1")
    assert info is not None
    assert (info.plan_start_at, info.deadline_at) == (T0, T0 + 8 * HOUR)
    report = ledger.plan_report("b1")
    assert report == {**PLAN_REPORT, "nan_is_null": None}  # stored as strict JSON
    assert isinstance(info.plan_json, str) and "NaN" not in info.plan_json

    costs = ledger.plan_costs("b1")
    assert [(c["name"], c["role"]) for c in costs] == [
        ("plan", "plan"),
        ("run_at_submit", "baseline"),
        ("single:cpu", "baseline"),
    ]
    assert costs[0] == PLAN_COSTS[0]
    assert costs[1]["carbon_g"] == 20.0 and costs[1]["cost_usd"] is None  # NaN → NULL
    assert costs[1]["energy_j"] is None and costs[1]["meets_deadline"] is None  # absent → NULL
    assert costs[2]["meets_deadline"] is False and costs[2]["finish_s"] is None

    task = task_rows(ledger)
    assert task[0]["site"] == "caiso"
    assert (task[0]["planned_start_at"], task[0]["planned_end_at"]) == (utc(T0 + HOUR), utc(T0 + HOUR + 600))
    assert task[0]["predicted_carbon_g"] == pytest.approx(0.3)
    assert task[0]["predicted_cost_usd"] == pytest.approx(1e-5)
    assert all(task[1][c] is None for c in ("site", "planned_start_at", "predicted_facility_energy_j"))
    assert ledger.table_counts()["plan_costs"] == 3


def test_a_caller_without_plan_columns_records_nulls(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    tasks, requests = plan_in_time()
    plain = tasks.drop(columns=[c for c in tasks if c.startswith(("site", "planned_", "predicted_c"))])
    plain = plain.drop(columns=["predicted_facility_energy_j", "predicted_water_l"])
    assert ledger.record_batch(make_info(), plain, requests)
    info = ledger.get_batch("b1")
    assert info is not None and (info.plan_json, info.plan_start_at, info.deadline_at) == (None, None, None)
    assert ledger.plan_report("b1") is None and ledger.plan_costs("b1") == []
    assert all(row["planned_start_at"] is None and row["site"] is None for row in task_rows(ledger).values())
    listed = ledger.list_batches()
    assert listed.loc[0, "plan"] is None and listed.loc[0, "baselines"] == {}


def test_a_bad_plan_cost_role_names_the_valid_ones(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    with pytest.raises(ValueError, match="role 'baseline-ish'; expected one of plan, baseline"):
        ledger.record_batch(
            planned_info(), *plan_in_time(), plan_costs=[{"name": "x", "role": "baseline-ish"}]
        )
    assert ledger.get_batch("b1") is None


def test_list_batches_shows_the_plan_and_its_baselines(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    ledger.record_batch(planned_info(), *plan_in_time(), plan_costs=PLAN_COSTS)
    row = ledger.list_batches().iloc[0]
    assert row["plan_start_at"] == utc(T0) and row["deadline_at"] == utc(T0 + 8 * HOUR)
    assert row["plan"]["carbon_g"] == 12.5 and row["plan"]["meets_deadline"] is True
    assert set(row["baselines"]) == {"run_at_submit", "single:cpu"}
    assert row["baselines"]["single:cpu"]["carbon_g"] == 30.0
    assert math.isnan(row["carbon_g"]) and row["accounted_tasks"] == 0  # nothing ran yet


def test_ledger_batches_json_and_table_carry_the_plan(hq_env: dict[str, str]) -> None:
    with Ledger(hq_env["HPCQUEUE_DB_URL"]) as ledger:
        ledger.record_batch(planned_info("planned"), *plan_in_time(), plan_costs=PLAN_COSTS)
        ledger.record_batch(make_info("plain", created_at=T0 - HOUR), *plan_in_time())
    runner = CliRunner()
    result = runner.invoke(app, ["ledger", "batches", "--format", "json"])
    assert result.exit_code == 0, result.output
    planned, plain = json.loads(result.output)
    assert planned["id"] == "planned" and planned["plan_start_at"].startswith("2024-11-21T20:00:00")
    assert planned["deadline_at"].startswith("2024-11-22T04:00:00")
    assert planned["plan"]["carbon_g"] == 12.5
    at_submit = dict.fromkeys(PLAN_COSTS[0], None) | {"name": "run_at_submit", "role": "baseline"}
    assert planned["baselines"]["run_at_submit"] == at_submit | {"carbon_g": 20.0}
    assert plain["plan"] is None and plain["baselines"] == {} and plain["deadline_at"] is None

    csv = runner.invoke(app, ["ledger", "batches", "--format", "csv"])
    assert csv.exit_code == 0, csv.output
    assert '"{""name"": ""plan""' in csv.output  # the plan as JSON in its cell

    table = runner.invoke(app, ["ledger", "batches"])
    assert table.exit_code == 0, table.output
    assert "plan carbon g" in table.output and "at submit" in table.output  # (headers may wrap)
    assert "│ 12.5 " in table.output and "│ 20.0 " in table.output


@pytest.mark.parametrize("end_known", [True, False])
def test_update_planned_starts_moves_only_tasks_that_have_not_started(
    ledger_url: str, end_known: bool
) -> None:
    ledger = Ledger(ledger_url)
    tasks, requests = plan_in_time(n_tasks=6)
    tasks["planned_start_at"] = T0 + HOUR
    tasks["planned_end_at"] = T0 + HOUR + 600
    ledger.record_batch(planned_info(), tasks, requests)
    ledger.record_submission("b1", [1, 2, 3, 4], job_id="77", executor="slurm", submitted_at=T0)
    ledger.update_tasks(
        "b1", [{"task_index": 2, "state": "running"}, {"task_index": 5, "state": "cancelled"}]
    )
    for index, state in ((3, "completed"), (4, "failed")):
        metrics = {"state": state, "started_at": T0, "ended_at": T0 + 60, "energy_j": 5.0, "error": None}
        outputs = [{"line": 2 * index + 1, "energy_j": 5.0}, {"line": 2 * index + 2, "energy_j": 0.0}]
        assert ledger.collect_task("b1", index, metrics, outputs if state == "completed" else [])

    new_start, new_end = T0 + 3 * HOUR, (T0 + 3 * HOUR + 900 if end_known else None)
    changed = ledger.update_planned_starts("b1", {i: (new_start, new_end) for i in range(6)})
    assert changed == 3  # planned, submitted, cancelled
    task = task_rows(ledger)
    for index in (0, 1, 5):
        assert task[index]["planned_start_at"] == utc(new_start)
        assert task[index]["planned_end_at"] == (utc(new_end) if new_end else None)
    for index in (2, 3, 4):  # running, completed, failed: their plan is history
        assert task[index]["planned_start_at"] == utc(T0 + HOUR)
        assert task[index]["planned_end_at"] == utc(T0 + HOUR + 600)
    assert ledger.update_planned_starts("b1", {}) == 0
