"""The ledger database: schema and migration, recording batches and submissions, queries, errors."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from hpcqueue.errors import BatchNotFoundError, ConfigError, LedgerError
from hpcqueue.ledger import SCHEMA_REVISION, Ledger, default_db_url
from tests.conftest import REPO
from tests.ledger import make_info, many_requests, rows, tasks_of


def make_plan() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Lines 1-3 on task 0 (gpu), 5-6 on task 1 (cpu); line 4 is left for a rejected line."""
    requests = pd.DataFrame(
        {
            "line": [1, 2, 3, 5, 6],
            "id": ["q1", "q2", "q3", "q5", "q6"],
            "target": ["gpu", "gpu", "gpu", "cpu", "cpu"],
            "task_index": [0, 0, 0, 1, 1],
            "input_tokens": [10, 20, 30, 5, 7],
            "max_new_tokens": [64, 64, 32, 64, 16],
            "predicted_energy_j": [1.5, 2.5, float("nan"), 0.5, 0.7],
            "predicted_runtime_s": [0.1, 0.2, 0.3, 0.4, 0.5],
            "extrapolated": [False, False, True, False, False],
        }
    )
    tasks = pd.DataFrame(
        {
            "task_index": [0, 1],
            "target": ["gpu", "cpu"],
            "executor": ["slurm", "local"],
            "n_requests": [3, 2],
            "predicted_energy_j": [4.0, 1.2],
            "predicted_runtime_s": [0.6, 0.9],
        }
    )
    return tasks, requests


def ledger_error(url: str) -> str:
    """The message of the LedgerError that opening a ledger at ``url`` raises."""
    with pytest.raises(LedgerError) as info:
        Ledger(url)
    return str(info.value)


REJECTED = [
    {"line": 4, "id": None, "errors": [{"field": "max_new_tokens", "message": "must be > 0, got -3"}]}
]


def test_migration_creates_exactly_the_models_schema(ledger_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from hpcqueue.ledger.db import MIGRATIONS_DIR
    from hpcqueue.ledger.schema import Base

    ledger = Ledger(ledger_url)
    with ledger.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        assert context.get_current_revision() == SCHEMA_REVISION
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_REVISION
    assert ledger.table_counts() == dict.fromkeys(
        ("batches", "tasks", "requests", "measurements", "plan_costs"), 0
    )


def test_reopening_an_up_to_date_ledger_does_not_load_alembic(ledger_url: str) -> None:
    Ledger(ledger_url).close()
    code = (
        "import sys; from hpcqueue.ledger import Ledger; l = Ledger(sys.argv[1]); "
        "print(l.table_counts()['batches'], 'alembic' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, ledger_url], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    assert out.split() == ["0", "False"]


def test_record_batch_stores_the_plan_once(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    tasks, requests = make_plan()
    assert ledger.record_batch(make_info(), tasks, requests, REJECTED) is True
    counts = ledger.table_counts()
    assert counts == {"batches": 1, "tasks": 2, "requests": 6, "measurements": 0, "plan_costs": 0}

    changed = requests.assign(target="cpu")
    assert ledger.record_batch(make_info(), tasks, changed, []) is False
    assert ledger.table_counts() == counts
    assert {r["target"] for r in rows(ledger, "SELECT target FROM requests WHERE line = 1")} == {"gpu"}

    info = ledger.get_batch("b1")
    assert info is not None
    assert info.created_at == datetime(2024, 11, 21, 20, 0, tzinfo=timezone.utc)
    assert info.created_at.utcoffset() == timedelta(0)
    assert (info.user, info.n_requests, info.n_rejected) == ("alice", 5, 1)
    assert info.settings_json == '{"max_new_tokens": 64}'
    assert ledger.get_batch("nope") is None


def test_request_rows_carry_the_plan_with_nan_as_null(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    ledger.record_batch(make_info(), *make_plan(), REJECTED)
    by_line = {r["line"]: r for r in rows(ledger, "SELECT * FROM requests")}
    assert by_line[3]["predicted_energy_j"] is None
    assert bool(by_line[3]["extrapolated"]) is True
    assert (by_line[2]["request_id"], by_line[2]["input_tokens"], by_line[2]["status"]) == (
        "q2",
        20,
        "pending",
    )
    assert by_line[2]["predicted_energy_j"] == pytest.approx(2.5)
    assert by_line[6]["max_new_tokens"] == 16 and by_line[6]["model"] == "hpcqueue-demo"


def test_rejected_lines_are_recorded_with_their_errors(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    ledger.record_batch(make_info(), *make_plan(), REJECTED)
    (row,) = rows(ledger, "SELECT * FROM requests WHERE status = 'rejected'")
    assert row["line"] == 4 and row["request_id"] is None and row["target"] is None
    assert row["error_code"] == "invalid_input"
    assert row["error_message"] == "max_new_tokens: must be > 0, got -3"
    report = ledger.batch_report("b1")
    assert (report["requests"], report["rejected"], report["pending"]) == (6, 1, 5)
    assert report["energy_j"] is None and report["energy_method"] is None
    assert report["tasks"] == {"planned": 2}


def test_a_large_batch_is_recorded_in_one_bulk_insert(ledger_url: str) -> None:
    n = 20_000
    requests = many_requests(n, task_size=256)
    ledger = Ledger(ledger_url)
    assert ledger.record_batch(make_info("big"), tasks_of(requests, "local"), requests, [])
    report = ledger.batch_report("big")
    assert (report["requests"], report["pending"], report["input_tokens"]) == (n, n, 12 * n)
    assert ledger.table_counts()["tasks"] == math.ceil(n / 256)


def test_record_submission_marks_tasks_submitted(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    ledger.record_batch(make_info(), *make_plan(), [])
    changed = ledger.record_submission(
        "b1", [1], job_id="4242_1", executor="slurm", submitted_at=1732219300.5, slurm_job_id="4243"
    )
    assert changed == 1
    task = {r["task_index"]: r for r in rows(ledger, "SELECT * FROM tasks")}
    assert (task[1]["state"], task[1]["job_id"], task[1]["slurm_job_id"]) == ("submitted", "4242_1", "4243")
    assert task[0]["state"] == "planned" and task[0]["job_id"] is None
    assert ledger.batch_report("b1")["tasks"] == {"planned": 1, "submitted": 1}
    with pytest.raises(BatchNotFoundError, match="b2"):
        ledger.record_submission("b2", [0], job_id="1", executor="local", submitted_at=0.0)


def test_collect_task_sets_utc_times_and_measurements(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    ledger.record_batch(make_info(), *make_plan(), [])
    metrics = {
        "batch_id": "b1",
        "task_index": 1,
        "state": "completed",
        "host": "lp01",
        "started_at": 1732219200.25,
        "ended_at": 1732219260.5,
        "n_requests": 2,
        "n_succeeded": 2,
        "n_failed": 0,
        "energy_j": 8.0,
        "energy_method": "estimated",
        "meter": "estimate",
        "attribution_rule": "token-share-v1",
        "measurements": [
            {
                "scope": "task",
                "seq": 0,
                "started_at": 1732219200.25,
                "duration_s": 60.25,
                "method": "estimated",
                "meter": "estimate",
                "energy_j": {"cpu": 6.0, "dram": 2.0},
                "details": {"power_w": 0.13},
            },
        ],
        "error": None,
    }
    outputs = [
        {
            "line": 5,
            "id": "q5",
            "text": "a",
            "input_tokens": 5,
            "output_tokens": 3,
            "finish_reason": "stop",
            "error": None,
            "started_at": 1732219201.0,
            "ended_at": 1732219202.0,
            "energy_j": 3.0,
        },
        {
            "line": 6,
            "id": "q6",
            "text": "b",
            "input_tokens": 7,
            "output_tokens": 5,
            "finish_reason": "length",
            "error": None,
            "started_at": 1732219201.0,
            "ended_at": 1732219203.0,
            "energy_j": 5.0,
        },
    ]
    assert ledger.collect_task("b1", 1, metrics, outputs) is True
    with ledger.connect() as conn:
        from sqlalchemy import select

        from hpcqueue.ledger.schema import MeasurementRow, RequestRow, TaskRow

        task = conn.execute(select(TaskRow).where(TaskRow.task_index == 1)).mappings().one()
        started = conn.execute(select(RequestRow.started_at).where(RequestRow.line == 5)).scalar_one()
        domains = conn.execute(select(MeasurementRow.domain, MeasurementRow.energy_j)).all()
    assert task["started_at"] == datetime.fromtimestamp(1732219200.25, tz=timezone.utc)
    assert task["ended_at"].tzinfo is not None and task["collected_at"].tzinfo is not None
    assert started == datetime(2024, 11, 21, 20, 0, 1, tzinfo=timezone.utc)
    assert (task["state"], task["node"], task["energy_j"], task["meter"]) == (
        "completed",
        "lp01",
        8.0,
        "estimate",
    )
    assert sorted(domains) == [("cpu", 6.0), ("dram", 2.0)]
    assert ledger.collect_task("b1", 1, metrics, outputs) is False


def test_summary_rejects_an_unknown_key(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    with pytest.raises(ConfigError, match="target, model, day, user"):
        ledger.summary("hostname")  # type: ignore[arg-type]
    assert list(ledger.summary("user").columns)[:3] == ["user", "batches", "requests"]


def test_list_batches_newest_first(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    tasks, requests = make_plan()
    for i, batch_id in enumerate(["old", "mid", "new"]):
        ledger.record_batch(make_info(batch_id, created_at=1732219200.0 + i * 3600), tasks, requests, [])
    listed = ledger.list_batches(limit=2)
    assert list(listed["id"]) == ["new", "mid"]
    assert list(listed["tasks"]) == [2, 2] and list(listed["tasks_completed"]) == [0, 0]
    assert listed["energy_j"].isna().all()


def test_default_ledger_is_a_sqlite_file_in_the_user_data_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    expected = tmp_path / "data" / "hpcqueue" / "ledger.sqlite"
    assert default_db_url() == f"sqlite:///{expected}"
    with Ledger() as ledger:
        assert ledger.table_counts()["batches"] == 0
    assert expected.is_file()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", "not a database URL"),
        ("nosuchdb://host/db", "nosuchdb"),
        ("postgresql+psycopg://alice:s3cret@127.0.0.1:1/ledger", "127.0.0.1:1/ledger"),
    ],
)
def test_a_bad_url_gives_a_ledger_error_without_the_password(url: str, expected: str) -> None:
    message = ledger_error(url)
    assert expected in message
    assert "s3cret" not in message
    assert "HPCQUEUE_DB_URL" in message or "install" in message


def test_an_unreachable_server_says_what_to_check() -> None:
    message = ledger_error("postgresql+psycopg://alice:s3cret@127.0.0.1:1/ledger")
    assert "alice:***@127.0.0.1:1/ledger" in message
    assert "running and reachable" in message


def test_a_sqlite_file_in_an_impossible_directory_gives_a_ledger_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(LedgerError, match="cannot create the directory"):
        Ledger(f"sqlite:///{blocker / 'sub' / 'ledger.sqlite'}")
