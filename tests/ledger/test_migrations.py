"""Migrations keep data: a ledger an older hpcqueue filled (revision 0001, 0002 or 0003) opens with every row
and value intact, its new columns NULL, and can be accounted and reported on; going back down keeps the old
rows too. Each runs on SQLite and, with HPCQUEUE_TEST_PG_URL (always under CI), on PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, create_engine, inspect, select
from sqlalchemy.engine import Connection

from hpcqueue.ledger import SCHEMA_REVISION, Ledger
from hpcqueue.ledger.db import MIGRATIONS_DIR
from hpcqueue.ledger.schema import Base
from tests.ledger import T0, rows


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, tz=timezone.utc)


# Rows as hpcqueue wrote them at revision 0001: a batch with a completed task (three requests, two metered
# intervals) and a failed one (its request pending), and a rejected line.
OLD_ROWS: dict[str, list[dict[str, Any]]] = {
    "batches": [
        {
            "id": "old",
            "created_at": utc(0),
            "user": "alice",
            "host": "login01",
            "input_path": "/home/alice/prompts.jsonl",
            "input_sha256": "cd" * 32,
            "input_format": "simple",
            "model": "hpcqueue-demo",
            "policy": "threshold",
            "settings_json": '{"max_new_tokens": 8}',
            "batch_dir": "/scratch/batches/old",
            "n_requests": 4,
            "n_rejected": 1,
        }
    ],
    "tasks": [
        {
            "batch_id": "old",
            "task_index": 0,
            "target": "gpu",
            "executor": "slurm",
            "job_id": "4242_0",
            "slurm_job_id": "4243",
            "slurm_array_task_id": 0,
            "node": "gpu01",
            "state": "completed",
            "submitted_at": utc(5),
            "started_at": utc(10.25),
            "ended_at": utc(70.5),
            "n_requests": 3,
            "n_succeeded": 3,
            "n_failed": 0,
            "predicted_energy_j": 55.0,
            "predicted_runtime_s": 50.0,
            "energy_j": 60.0,
            "energy_method": "measured",
            "meter": "nvml",
            "attribution_rule": "token-share-v1",
            "collected_at": utc(80),
        },
        {
            "batch_id": "old",
            "task_index": 1,
            "target": "cpu",
            "executor": "local",
            "state": "failed",
            "n_requests": 1,
            "energy_j": 4.5,
            "energy_method": "estimated",
            "meter": "estimate",
            "error": "CUDA out of memory",
            "log_tail": "Traceback ...",
            "collected_at": utc(90),
        },
    ],
    "requests": [
        *(
            {
                "batch_id": "old",
                "line": line,
                "request_id": f"q{line}",
                "task_index": 0,
                "target": "gpu",
                "model": "hpcqueue-demo",
                "status": "succeeded",
                "input_tokens": 10 * line,
                "output_tokens": 4,
                "max_new_tokens": 8,
                "finish_reason": "stop",
                "started_at": utc(20),
                "ended_at": utc(30),
                "energy_j": energy,
                "energy_method": "measured",
                "energy_meter": "nvml",
                "attribution_rule": "token-share-v1",
                "predicted_energy_j": 18.0,
                "predicted_runtime_s": 16.0,
                "extrapolated": line == 3,
            }
            for line, energy in ((1, 10.0), (2, 20.0), (3, 30.0))
        ),
        {
            "batch_id": "old",
            "line": 4,
            "task_index": 1,
            "target": "cpu",
            "model": "hpcqueue-demo",
            "status": "pending",
            "input_tokens": 7,
            "max_new_tokens": 8,
        },
        {
            "batch_id": "old",
            "line": 5,
            "model": "hpcqueue-demo",
            "status": "rejected",
            "error_code": "invalid_input",
            "error_message": "prompt: missing",
        },
    ],
    "measurements": [
        {
            "batch_id": "old",
            "task_index": 0,
            "scope": "task",
            "seq": 0,
            "domain": domain,
            "energy_j": energy,
            "duration_s": 60.25,
            "method": "measured",
            "meter": "nvml",
            "started_at": utc(10.25),
            "details_json": '{"device": 0}',
        }
        for domain, energy in (("gpu:0", 50.0), ("cpu", 10.0))
    ],
}


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def snapshot(conn: Connection, tables: MetaData) -> dict[str, list[tuple]]:
    """Every row of ``tables`` (only the columns those tables have), in key order."""
    return {
        name: [tuple(row) for row in conn.execute(select(table).order_by(*table.primary_key.columns))]
        for name, table in tables.tables.items()
        if name != "alembic_version"
    }


def new_columns(conn: Connection, old: MetaData) -> dict[str, list[str]]:
    """The columns a table has now that it did not have at the old revision."""
    live = inspect(conn)
    return {
        name: sorted({c["name"] for c in live.get_columns(name)} - set(old.tables[name].columns.keys()))
        for name in ("batches", "tasks", "requests", "measurements")
    }


def filled_0001_ledger(url: str) -> tuple[MetaData, dict[str, list[tuple]]]:
    """A ledger at revision 0001 holding ``OLD_ROWS``; its tables as reflected then, and their rows."""
    from alembic import command

    command.upgrade(alembic_config(url), "0001")
    engine = create_engine(url)
    try:
        old = MetaData()
        old.reflect(engine)
        assert "plan_costs" not in old.tables and "site" not in old.tables["tasks"].columns
        with engine.begin() as conn:
            for name, table_rows in OLD_ROWS.items():
                table = old.tables[name]
                blank = dict.fromkeys(c.name for c in table.columns if not c.primary_key or name == "batches")
                conn.execute(table.insert(), [blank | row for row in table_rows])
        with engine.connect() as conn:
            return old, snapshot(conn, old)
    finally:
        engine.dispose()


def test_opening_a_0001_ledger_keeps_every_row_and_value(ledger_url: str) -> None:
    old, before = filled_0001_ledger(ledger_url)
    assert [len(before[name]) for name in OLD_ROWS] == [1, 2, 5, 2]

    ledger = Ledger(ledger_url)  # migrates to the newest revision
    with ledger.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []  # the schema the ORM classes describe
        assert snapshot(conn, old) == before
        added = new_columns(conn, old)
        for name, columns in added.items():
            for column in columns:
                values = conn.exec_driver_sql(f"SELECT {column} FROM {name}").scalars().all()
                assert values and all(v is None for v in values), f"{name}.{column}: {values}"
    assert "accounted_at" in added["tasks"] and "carbon_g" in added["requests"]
    assert added["measurements"] == []
    assert set(added["tasks"]) == set(Base.metadata.tables["tasks"].columns.keys()) - set(
        old.tables["tasks"].columns.keys()
    )
    assert ledger.table_counts()["plan_costs"] == 0

    # ... and reads as the new code expects.
    info = ledger.get_batch("old")
    assert info is not None and info.created_at == utc(0) and info.plan_json is None
    report = ledger.batch_report("old")
    assert (report["succeeded"], report["pending"], report["rejected"]) == (3, 1, 1)
    assert report["energy_j"] == 64.5 and report["energy_method"] == "mixed"
    assert report["carbon_g"] is None and report["accounted_tasks"] == 0
    listed = ledger.list_batches().iloc[0]
    assert listed["plan"] is None and listed["baselines"] == {}


def test_a_migrated_ledger_is_accounted(ledger_url: str) -> None:
    filled_0001_ledger(ledger_url)
    ledger = Ledger(ledger_url)
    pending = ledger.tasks_to_account("old")
    assert [(t["task_index"], t["energy_j"], t["site"]) for t in pending] == [(0, 60.0, None), (1, 4.5, None)]
    assert pending[0]["started_at"] == utc(10.25).timestamp()

    account = {
        "task_index": 0,
        "run_started_at": T0 + 10,
        "run_ended_at": T0 + 70,
        "run_times_source": "sacct",
    }
    assert (
        ledger.record_accounting("old", [account | {"pue": 1.5, "facility_energy_j": 90.0, "carbon_g": 6.0}])
        == 1
    )
    with ledger.connect() as conn:
        shares = dict(conn.exec_driver_sql("SELECT line, carbon_g FROM requests WHERE task_index = 0").all())
    assert shares == pytest.approx({1: 1.0, 2: 2.0, 3: 3.0})  # 10, 20, 30 J of the requests' 60 J
    report = ledger.batch_report("old")
    assert (report["carbon_g"], report["facility_energy_j"], report["accounted_tasks"]) == (6.0, 90.0, 1)


def test_downgrading_to_0001_keeps_the_old_rows(ledger_url: str) -> None:
    from alembic import command

    old, before = filled_0001_ledger(ledger_url)
    ledger = Ledger(ledger_url)
    ledger.record_accounting("old", [{"task_index": 0, "carbon_g": 6.0}])
    ledger.close()

    command.downgrade(alembic_config(ledger_url), "0001")
    engine = create_engine(ledger_url)
    try:
        with engine.connect() as conn:
            assert not inspect(conn).has_table("plan_costs")
            assert all(columns == [] for columns in new_columns(conn, old).values())
            assert snapshot(conn, old) == before
    finally:
        engine.dispose()
    with Ledger(ledger_url) as again:  # and up again
        assert again.batch_report("old")["carbon_g"] is None


# Rows as hpcqueue wrote them at revision 0002: those of 0001 with a plan in time (the batch's plan report,
# start and deadline; the tasks' site, planned hours and predicted footprint), task 0 accounted, and the
# plan's predicted totals with a baseline.
_PLANNED = {
    "site": "west",
    "planned_start_at": utc(3600),
    "planned_end_at": utc(3650),
    "predicted_facility_energy_j": 66.0,
    "predicted_carbon_g": 4.0,
    "predicted_water_l": 0.5,
    "predicted_cost_usd": 0.01,
}
ROWS_0002: dict[str, list[dict[str, Any]]] = {
    "batches": [
        OLD_ROWS["batches"][0]
        | {"plan_json": '{"policy": "threshold"}', "plan_start_at": utc(3600), "deadline_at": utc(86400)}
    ],
    "tasks": [
        OLD_ROWS["tasks"][0]
        | _PLANNED
        | {
            "run_started_at": utc(10),
            "run_ended_at": utc(70),
            "run_times_source": "sacct",
            "pue": 1.5,
            "carbon_g_per_kwh": 240.0,
            "facility_energy_j": 90.0,
            "carbon_g": 6.0,
            "factor_kinds": '{"carbon": "series", "pue": "assumed"}',
            "factor_sources": '{"carbon": "west.csv", "pue": "config"}',
            "accounted_at": utc(100),
        },
        OLD_ROWS["tasks"][1] | _PLANNED,
    ],
    "requests": [
        row | {"carbon_g": 2.0 * row["line"]} if row["status"] == "succeeded" else row
        for row in OLD_ROWS["requests"]
    ],
    "measurements": OLD_ROWS["measurements"],
    "plan_costs": [
        {"batch_id": "old", "name": "plan", "role": "plan", "energy_j": 60.0, "carbon_g": 4.0},
        {
            "batch_id": "old",
            "name": "run_at_submit",
            "role": "baseline",
            "energy_j": 60.0,
            "carbon_g": 9.0,
            "meets_deadline": True,
        },
    ],
}
#: What revisions 0003, 0004 and 0005 add to ``tasks``.
NEW_SINCE_0002 = [
    "account",
    "engine",
    "engine_version",
    "hardware",
    "predicted_energy_high_j",
    "predicted_energy_low_j",
    "predicted_runtime_high_s",
    "predicted_runtime_low_s",
    "prediction_basis",
    "prediction_method",
]


def filled_0002_ledger(url: str) -> tuple[MetaData, dict[str, list[tuple]]]:
    """A ledger at revision 0002 holding ``ROWS_0002``; its tables as reflected then, and their rows."""
    from alembic import command

    command.upgrade(alembic_config(url), "0002")
    engine = create_engine(url)
    try:
        old = MetaData()
        old.reflect(engine)
        assert "site" in old.tables["tasks"].columns and "hardware" not in old.tables["tasks"].columns
        with engine.begin() as conn:
            for name, table_rows in ROWS_0002.items():
                table = old.tables[name]
                blank = dict.fromkeys(c.name for c in table.columns if not c.primary_key or name == "batches")
                conn.execute(table.insert(), [blank | row for row in table_rows])
        with engine.connect() as conn:
            return old, snapshot(conn, old)
    finally:
        engine.dispose()


def test_opening_a_0002_ledger_keeps_every_row_and_value(ledger_url: str) -> None:
    old, before = filled_0002_ledger(ledger_url)
    assert [len(before[name]) for name in ROWS_0002] == [1, 2, 5, 2, 2]

    ledger = Ledger(ledger_url)  # migrates to the newest revision
    with ledger.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        assert context.get_current_revision() == SCHEMA_REVISION
        assert snapshot(conn, old) == before
        added = new_columns(conn, old)
    assert added == {"batches": [], "tasks": NEW_SINCE_0002, "requests": [], "measurements": []}
    assert (
        rows(ledger, f"SELECT {', '.join(NEW_SINCE_0002)} FROM tasks") == [dict.fromkeys(NEW_SINCE_0002)] * 2
    )

    # ... and reads as the new code expects: the accounting and the plan as before, and an accuracy report
    # that says why no old task can be compared.
    report = ledger.batch_report("old")
    assert (report["carbon_g"], report["accounted_tasks"], report["tasks_with_assumed_inputs"]) == (6.0, 1, 1)
    assert [c["name"] for c in ledger.plan_costs("old")] == ["plan", "run_at_submit"]
    (row,) = ledger.accuracy("hardware").to_dict("records")
    # task 0 (the one with a prediction) was measured, but its worker left no per-batch readings
    assert (row["hardware"], row["tasks"], row["excluded_partial"], row["excluded_estimated"]) == (
        "(none)",
        0,
        1,
        0,
    )


def test_downgrading_to_0002_keeps_its_rows(ledger_url: str) -> None:
    from alembic import command

    old, before = filled_0002_ledger(ledger_url)
    Ledger(ledger_url).close()
    command.downgrade(alembic_config(ledger_url), "0002")
    engine = create_engine(ledger_url)
    try:
        with engine.connect() as conn:
            assert all(columns == [] for columns in new_columns(conn, old).values())
            assert snapshot(conn, old) == before
            assert MigrationContext.configure(conn).get_current_revision() == "0002"
    finally:
        engine.dispose()
    with Ledger(ledger_url) as again:  # and up again
        assert again.batch_report("old")["carbon_g"] == 6.0


# Rows as hpcqueue wrote them at revision 0003: those of 0002 with each task's prediction interval, method,
# basis and hardware class.
_PREDICTED = {
    "predicted_energy_low_j": 40.0,
    "predicted_energy_high_j": 70.0,
    "predicted_runtime_low_s": 35.5,
    "predicted_runtime_high_s": 65.25,
    "prediction_method": "profile",
    "prediction_basis": "profiles/gpu-demo.json",
    "hardware": "a100",
}
ROWS_0003: dict[str, list[dict[str, Any]]] = ROWS_0002 | {
    "tasks": [
        ROWS_0002["tasks"][0] | _PREDICTED,
        ROWS_0002["tasks"][1]
        | _PREDICTED
        | {"prediction_method": "analytic", "prediction_basis": "cpu-model"},
    ]
}
#: The indexes revision 0004 adds, on ``batches``.
INDEXES_0004 = {"ix_batches_user": ["user"], "ix_batches_created_at": ["created_at"]}


def batch_indexes(conn: Connection) -> dict[str, list[str]]:
    return {index["name"]: list(index["column_names"]) for index in inspect(conn).get_indexes("batches")}


def filled_0003_ledger(url: str) -> tuple[MetaData, dict[str, list[tuple]]]:
    """A ledger at revision 0003 holding ``ROWS_0003``; its tables as reflected then, and their rows."""
    from alembic import command

    command.upgrade(alembic_config(url), "0003")
    engine = create_engine(url)
    try:
        old = MetaData()
        old.reflect(engine)
        assert "hardware" in old.tables["tasks"].columns and "account" not in old.tables["tasks"].columns
        with engine.begin() as conn:
            assert not set(INDEXES_0004) & set(batch_indexes(conn))
            for name, table_rows in ROWS_0003.items():
                table = old.tables[name]
                blank = dict.fromkeys(c.name for c in table.columns if not c.primary_key or name == "batches")
                conn.execute(table.insert(), [blank | row for row in table_rows])
        with engine.connect() as conn:
            return old, snapshot(conn, old)
    finally:
        engine.dispose()


def test_opening_a_0003_ledger_keeps_every_row_and_value(ledger_url: str) -> None:
    old, before = filled_0003_ledger(ledger_url)
    assert [len(before[name]) for name in ROWS_0003] == [1, 2, 5, 2, 2]
    # the prediction columns are filled, so the snapshot's equality below checks them too
    hardware = old.tables["tasks"].columns.keys().index("hardware")
    assert [row[hardware] for row in before["tasks"]] == ["a100", "a100"]

    ledger = Ledger(ledger_url)  # migrates to the newest revision
    with ledger.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        assert context.get_current_revision() == SCHEMA_REVISION
        assert snapshot(conn, old) == before
        assert new_columns(conn, old) == {
            "batches": [],
            "tasks": ["account", "engine", "engine_version"],
            "requests": [],
            "measurements": [],
        }
        assert batch_indexes(conn).items() >= INDEXES_0004.items()
    assert rows(ledger, "SELECT task_index, account FROM tasks ORDER BY task_index") == [
        {"task_index": 0, "account": None},
        {"task_index": 1, "account": None},
    ]

    # ... and reads as the new code expects: a filter by account finds none of the old tasks.
    from hpcqueue.ledger.filters import LedgerFilter

    assert ledger.summary("target", where=LedgerFilter(accounts=("physics",))).empty
    everything = ledger.summary("target", where=LedgerFilter(users=("alice",)))
    assert sorted(everything["target"]) == ["(none)", "cpu", "gpu"]  # (none): the rejected line
    (row,) = ledger.accuracy("hardware").to_dict("records")
    assert (row["hardware"], row["tasks"], row["excluded_partial"]) == ("a100", 0, 1)


def test_downgrading_to_0003_keeps_its_rows(ledger_url: str) -> None:
    from alembic import command

    old, before = filled_0003_ledger(ledger_url)
    with Ledger(ledger_url) as ledger, ledger.engine.begin() as conn:  # a value in the column 0003 lacks
        conn.exec_driver_sql("UPDATE tasks SET account = 'physics' WHERE task_index = 0")
    command.downgrade(alembic_config(ledger_url), "0003")
    engine = create_engine(ledger_url)
    try:
        with engine.connect() as conn:
            assert all(columns == [] for columns in new_columns(conn, old).values())
            assert not set(INDEXES_0004) & set(batch_indexes(conn))
            assert snapshot(conn, old) == before
            assert MigrationContext.configure(conn).get_current_revision() == "0003"
    finally:
        engine.dispose()
    with Ledger(ledger_url) as again:  # and up again
        assert rows(again, "SELECT DISTINCT account FROM tasks") == [{"account": None}]
        assert again.batch_report("old")["carbon_g"] == 6.0
