"""Accounting in the ledger: which tasks await it, recording it (spread over requests by their energy), a
new attempt clearing it, and the totals reports show with how many tasks rest on assumed factors."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pandas as pd
import pytest

from hpcqueue.ledger import Ledger
from tests.ledger import T0, make_info, many_requests, rows, tasks_of

FOOTPRINT = ("facility_energy_j", "carbon_g", "water_onsite_l", "water_offsite_l", "cost_usd")
# Task 0 (gpu, Slurm): lines 1-3; task 1 (cpu, local): lines 4-5.
REQUESTS = pd.DataFrame(
    {
        "line": [1, 2, 3, 4, 5],
        "id": ["q1", "q2", "q3", "q4", "q5"],
        "target": ["gpu", "gpu", "gpu", "cpu", "cpu"],
        "task_index": [0, 0, 0, 1, 1],
        "input_tokens": 10,
        "max_new_tokens": 16,
        "predicted_energy_j": 1.0,
        "predicted_runtime_s": 0.1,
        "extrapolated": False,
    }
)
ACCOUNTING_0 = {
    "task_index": 0,
    "run_started_at": T0 + 30.0,
    "run_ended_at": T0 + 630.0,
    "run_times_source": "sacct",
    "pue": 1.25,
    "carbon_g_per_kwh": 400.0,
    "temperature_c": 18.5,
    "price_usd_per_mwh": 50.0,
    "wue_l_per_kwh": 1.8,
    "offsite_water_l_per_kwh": 3.1,
    "facility_energy_j": 3750.0,
    "carbon_g": 0.4166666666666667,
    "water_onsite_l": 0.0015,
    "water_offsite_l": 0.0032291666666666666,
    "cost_usd": 5.208333333333333e-05,
    "factor_kinds": {"pue": "assumed", "carbon": "series", "price": "series"},
    "factor_sources": {"pue": "constant 1.25 (site caiso)", "carbon": "carbon_intensity/CAISO.csv"},
}
ACCOUNTING_1 = {
    "task_index": 1,
    "run_started_at": T0 + 40.0,
    "run_ended_at": T0 + 100.0,
    "run_times_source": "worker",
    "carbon_g": 0.2,
    "factor_kinds": {"carbon": "series"},
}


def metrics(state: str, energy_j: float | None, ended_at: float = T0 + 600.0) -> dict[str, Any]:
    return {
        "state": state,
        "host": "node1",
        "started_at": T0 + 10.0,
        "ended_at": ended_at,
        "energy_j": energy_j,
        "energy_method": "estimated",
        "meter": "estimate",
        "attribution_rule": "token-share-v1",
        "error": None if state == "completed" else "boom",
    }


def output(line: int, energy_j: float | None, error: str | None = None) -> dict[str, Any]:
    return {"line": line, "input_tokens": 10, "output_tokens": 4, "energy_j": energy_j, "error": error}


def collected(ledger_url: str, batch_id: str = "b1", user: str = "alice") -> Ledger:
    """A batch whose task 0 completed (3000 J; line 3 failed without energy) and task 1 failed (metered)."""
    ledger = Ledger(ledger_url)
    info = make_info(batch_id, user=user)
    assert ledger.record_batch(info, tasks_of(REQUESTS, "slurm").assign(site="caiso"), REQUESTS)
    ledger.record_submission(batch_id, [0, 1], job_id="900", executor="slurm", submitted_at=T0)
    outputs = [output(1, 1000.0), output(2, 2000.0), output(3, None, error="too long")]
    assert ledger.collect_task(batch_id, 0, metrics("completed", 3000.0), outputs)
    assert ledger.collect_task(batch_id, 1, metrics("failed", 50.0), [])
    return ledger


def request_footprints(ledger: Ledger, batch_id: str = "b1") -> dict[int, dict[str, Any]]:
    columns = ", ".join(("line", "energy_j", *FOOTPRINT))
    found = rows(ledger, f"SELECT {columns} FROM requests WHERE batch_id = '{batch_id}'")
    return {row["line"]: row for row in found}


def task_row(ledger: Ledger, index: int) -> dict[str, Any]:
    (row,) = rows(ledger, f"SELECT * FROM tasks WHERE batch_id = 'b1' AND task_index = {index}")
    return row


def test_tasks_to_account_lists_collected_tasks_with_energy(ledger_url: str) -> None:
    ledger = collected(ledger_url)
    pending = ledger.tasks_to_account("b1")
    assert [t["task_index"] for t in pending] == [0, 1]  # the failed attempt's energy counts too
    first = pending[0]
    assert set(first) == {
        "task_index",
        "target",
        "site",
        "executor",
        "job_id",
        "slurm_job_id",
        "slurm_array_task_id",
        "state",
        "started_at",
        "ended_at",
        "energy_j",
        "energy_method",
        "collected_at",
    }
    assert (first["target"], first["site"], first["executor"], first["job_id"]) == (
        "gpu",
        "caiso",
        "slurm",
        "900",
    )
    assert (first["state"], first["energy_j"], first["energy_method"]) == ("completed", 3000.0, "estimated")
    assert first["started_at"] == T0 + 10.0 and first["ended_at"] == T0 + 600.0
    assert abs(first["collected_at"] - time.time()) < 600

    ledger.record_batch(make_info("b2"), tasks_of(REQUESTS, "local"), REQUESTS)
    assert ledger.tasks_to_account("b2") == []  # nothing collected yet


def test_record_accounting_spreads_the_footprint_by_request_energy(ledger_url: str) -> None:
    ledger = collected(ledger_url)
    assert ledger.record_accounting("b1", [ACCOUNTING_0, ACCOUNTING_1]) == 2

    task = task_row(ledger, 0)
    for key in ("pue", "carbon_g_per_kwh", "temperature_c", "price_usd_per_mwh", "wue_l_per_kwh", *FOOTPRINT):
        assert task[key] == pytest.approx(ACCOUNTING_0[key]), key
    assert task["run_times_source"] == "sacct" and task["accounted_at"] is not None
    assert json.loads(task["factor_kinds"]) == ACCOUNTING_0["factor_kinds"]
    assert json.loads(task["factor_sources"]) == ACCOUNTING_0["factor_sources"]
    assert ledger.tasks_to_account("b1") == []

    share = request_footprints(ledger)
    for key in FOOTPRINT:
        # Lines 1 and 2 hold 1000 J and 2000 J of the requests' 3000 J; line 3 has no energy, so no share.
        assert share[1][key] == pytest.approx(ACCOUNTING_0[key] / 3, rel=1e-12)
        assert share[2][key] == pytest.approx(ACCOUNTING_0[key] * 2 / 3, rel=1e-12)
        assert share[3][key] is None
        assert math.isclose(share[1][key] + share[2][key], ACCOUNTING_0[key], rel_tol=1e-9)
    # Task 1 failed: its requests ran nothing, have no energy and get no share of its 0.2 g.
    assert task_row(ledger, 1)["carbon_g"] == pytest.approx(0.2)
    assert task_row(ledger, 1)["pue"] is None  # left out of the row: NULL
    assert all(share[line][key] is None for line in (4, 5) for key in FOOTPRINT)

    before = request_footprints(ledger)
    assert ledger.record_accounting("b1", [ACCOUNTING_0, ACCOUNTING_1]) == 2  # again: the same figures
    assert request_footprints(ledger) == before
    assert ledger.record_accounting("b1", []) == 0
    with pytest.raises(ValueError, match="run_times_source 'guess'; expected one of sacct, worker"):
        ledger.record_accounting("b1", [{**ACCOUNTING_0, "run_times_source": "guess"}])
    assert request_footprints(ledger) == before


def test_a_new_attempt_clears_the_accounting_until_accounted_again(ledger_url: str) -> None:
    ledger = collected(ledger_url)
    ledger.record_accounting("b1", [ACCOUNTING_0, ACCOUNTING_1])
    ledger.record_submission("b1", [1], job_id="901", executor="slurm", submitted_at=T0 + 700)
    retried = metrics("completed", 80.0, ended_at=T0 + 900.0)
    assert ledger.collect_task("b1", 1, retried, [output(4, 30.0), output(5, 50.0)])

    task = task_row(ledger, 1)
    assert task["accounted_at"] is None and task["run_started_at"] is None and task["factor_kinds"] is None
    assert all(task[key] is None for key in FOOTPRINT)
    assert task_row(ledger, 0)["carbon_g"] == pytest.approx(ACCOUNTING_0["carbon_g"])  # untouched
    assert [t["task_index"] for t in ledger.tasks_to_account("b1")] == [1]

    ledger.record_accounting("b1", [{**ACCOUNTING_1, "carbon_g": 0.8}])
    share = request_footprints(ledger)
    assert (share[4]["carbon_g"], share[5]["carbon_g"]) == pytest.approx((0.3, 0.5))
    assert share[4]["cost_usd"] is None  # the task's cost is unknown


def test_reports_total_the_accounting_and_count_assumed_inputs(ledger_url: str) -> None:
    ledger = collected(ledger_url)
    report = ledger.batch_report("b1")
    assert all(report[key] is None for key in FOOTPRINT)
    assert (report["accounted_tasks"], report["tasks_with_assumed_inputs"]) == (0, 0)

    ledger.record_accounting("b1", [ACCOUNTING_0, ACCOUNTING_1])
    report = ledger.batch_report("b1")
    assert report["carbon_g"] == pytest.approx(ACCOUNTING_0["carbon_g"] + 0.2)
    assert report["cost_usd"] == pytest.approx(ACCOUNTING_0["cost_usd"])  # task 1's is unknown
    assert (report["accounted_tasks"], report["tasks_with_assumed_inputs"]) == (2, 1)

    collected(ledger_url, "b2", user="bob")  # collected, not accounted
    by_user = ledger.summary("user").set_index("user")
    assert by_user.loc["alice", "carbon_g"] == pytest.approx(report["carbon_g"])
    assert by_user.loc["alice", "water_onsite_l"] == pytest.approx(ACCOUNTING_0["water_onsite_l"])
    assert (by_user.loc["alice", "accounted_tasks"], by_user.loc["alice", "tasks_with_assumed_inputs"]) == (
        2,
        1,
    )
    assert math.isnan(by_user.loc["bob", "carbon_g"]) and by_user.loc["bob", "accounted_tasks"] == 0
    by_target = ledger.summary("target").set_index("target")
    assert by_target.loc["gpu", "facility_energy_j"] == pytest.approx(ACCOUNTING_0["facility_energy_j"])
    assert by_target.loc["cpu", "carbon_g"] == pytest.approx(0.2)
    assert math.isnan(by_target.loc["cpu", "facility_energy_j"])

    listed = ledger.list_batches().set_index("id")
    assert listed.loc["b1", "carbon_g"] == pytest.approx(report["carbon_g"])
    assert (listed.loc["b1", "accounted_tasks"], listed.loc["b2", "accounted_tasks"]) == (2, 0)
    assert listed.loc["b1", "tasks_with_assumed_inputs"] == 1


def test_the_shares_of_ten_thousand_requests_add_up_to_the_task(ledger_url: str) -> None:
    n = 10_000
    requests = many_requests(n, task_size=n, max_new_tokens=8)
    ledger = Ledger(ledger_url)
    ledger.record_batch(make_info(), tasks_of(requests, "local"), requests)
    outputs = [output(line, 0.5 + (line % 7) / 10) for line in range(1, n + 1)]
    assert ledger.collect_task("b1", 0, metrics("completed", 9000.0), outputs)

    ledger.record_accounting("b1", [{"task_index": 0, "carbon_g": 123.0, "cost_usd": 0.5}])
    (totals,) = rows(ledger, "SELECT SUM(carbon_g) AS carbon_g, SUM(cost_usd) AS cost_usd FROM requests")
    assert math.isclose(totals["carbon_g"], 123.0, rel_tol=1e-9)
    assert math.isclose(totals["cost_usd"], 0.5, rel_tol=1e-9)
