"""The admin report's data (hpcqueue.ledger.views) and HTML (hpcqueue.report.admin), without a browser."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from hpcqueue.ledger import Ledger
from hpcqueue.ledger.filters import LedgerFilter
from hpcqueue.ledger.views import gather
from hpcqueue.report.admin import render
from tests.ledger import rows
from tests.report import populate

NOW = datetime(2024, 12, 1, tzinfo=timezone.utc)


@pytest.fixture()
def ledger(ledger_url: str, tmp_path: Path) -> Ledger:
    ledger = Ledger(ledger_url)
    populate(ledger, tmp_path / "batches")
    return ledger


def _sql_total(ledger: Ledger, column: str, where_sql: str = "1=1") -> float | None:
    (row,) = rows(
        ledger,
        f"SELECT sum(t.{column}) AS total FROM tasks t JOIN batches b ON b.id = t.batch_id WHERE {where_sql}",
    )
    return row["total"]


@pytest.mark.parametrize(
    ("where", "where_sql"),
    [
        (LedgerFilter(), "1=1"),
        (LedgerFilter(targets=("gpu",)), "t.target = 'gpu'"),
        (LedgerFilter(accounts=("chemistry",)), "t.account = 'chemistry'"),
        (LedgerFilter(users=("bob",)), "b.user = 'bob'"),
    ],
    ids=["all", "target", "account", "user"],
)
def test_totals_and_their_split_add_up_to_the_tasks_rows(
    ledger: Ledger, where: LedgerFilter, where_sql: str
) -> None:
    data = gather(ledger, where)
    for column in ("energy_j", "carbon_g", "cost_usd"):
        expected = _sql_total(ledger, column, where_sql)
        assert expected is not None and expected > 0
        assert data.totals[column] == pytest.approx(expected, rel=1e-12)
        split = data.by_method.set_index("energy_method")[column]
        assert split.fillna(0).sum() == pytest.approx(expected, rel=1e-12)
    # Only the estimated targets' energy is labelled estimated.
    (estimated,) = rows(
        ledger,
        "SELECT count(*) AS n FROM tasks t JOIN batches b ON b.id = t.batch_id "
        f"WHERE t.energy_method = 'estimated' AND {where_sql}",
    )
    assert data.by_method.set_index("energy_method").at["estimated", "tasks"] == estimated["n"]


def test_a_filter_narrows_every_view(ledger: Ledger) -> None:
    data = gather(ledger, LedgerFilter(accounts=("physics",)))
    assert set(data.accounts["account"]) == {"physics"}
    assert set(data.daily["target"]) == {"gpu"}
    assert set(data.j_per_token["hardware"]) == {"h100-80g"}
    assert set(data.j_per_token["engine"]) == {"vllm"}  # the engine its worker recorded
    assert set(data.predictions["target"]) == {"gpu"}
    assert set(data.placement["site"]) == {"north"}
    # plan costs are whole batches: every batch has a plan and four baselines
    assert set(data.savings["baseline"]) == {"run_at_submit", "best_window", "unaware", "single:gpu"}
    assert (data.savings["batches"] == 6).all()
    run_at_submit = data.savings.set_index("baseline").loc["run_at_submit"]
    assert run_at_submit["saved_carbon_g"] == pytest.approx(0.35 * run_at_submit["plan_carbon_g"])


def test_failed_lost_and_retried_tasks_are_told_apart(ledger: Ledger) -> None:
    data = gather(ledger, LedgerFilter())
    problems = data.problem_tasks.set_index("batch_id")
    assert problems.at["batch-01", "problem"] == "failed"
    assert problems.at["batch-02", "problem"] == "lost"
    assert problems.at["batch-03", "problem"] == "retried"
    codes = data.error_codes.set_index("error_code")["requests"]
    assert codes["oom"] == 1 and codes["invalid_input"] == 3
    factors = data.provenance["factors"]
    assert set(factors[factors["kind"] == "assumed"]["factor"]) == {"pue"}


def test_the_page_escapes_ledger_text(ledger: Ledger) -> None:
    ledger.update_tasks("batch-02", [{"task_index": 1, "error": "<script>alert('x')</script> & more"}])
    html = render(gather(ledger, LedgerFilter()), NOW)
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in html
    assert 'id="generated-at">2024-12-01T00:00:00+00:00<' in html
