"""hpcqueue.ledger.export: a ledger table read back from CSV, JSON Lines and Parquet equals the table's rows
(a direct SELECT with the same filter), NULLs, unicode and timestamps included, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.ledger_queries import START, fill_ledger
from hpcqueue.errors import ConfigError, LedgerError
from hpcqueue.ledger import Ledger
from hpcqueue.ledger.export import column_kinds, export_query, export_table
from hpcqueue.ledger.filters import LedgerFilter

USERS = ("alice", "zoë 🚀", 'o"brien, jr.')
MODELS = ("modèle-ü", "Qwen/Qwen2.5-0.5B-Instruct")
NARROW = LedgerFilter(users=("alice", "zoë 🚀"), targets=("gpu",), since=START + timedelta(days=3))


@pytest.fixture()
def ledger(ledger_url: str) -> Iterator[Ledger]:
    """A ledger with 3,000 requests in 6 batches: running tasks (NULL energy), rejected requests (NULL
    target and task), unicode and a quote in user and model names."""
    with Ledger(ledger_url) as opened:
        fill_ledger(
            opened,
            3000,
            task_size=100,
            batch_tasks=5,
            users=USERS,
            models=MODELS,
            days=10,
            seed=7,
            running_share=0.2,
        )
        yield opened


def expected(ledger: Ledger, table: Any, where: LedgerFilter) -> pd.DataFrame:
    with ledger.connect() as conn:
        result = conn.execute(export_query(table, where))
        return pd.DataFrame(result.all(), columns=list(result.keys()))


def typed(frame: pd.DataFrame, table: Any) -> pd.DataFrame:
    """``frame`` with one dtype per column kind, whatever a reader made of it."""
    frame = frame.copy()
    for name, kind in column_kinds(table).items():
        column = frame[name]
        if kind == "int":
            frame[name] = pd.to_numeric(column).astype("Int64")
        elif kind == "float":
            frame[name] = pd.to_numeric(column).astype("float64")
        elif kind == "bool":
            frame[name] = column.astype("boolean")
        elif kind == "timestamp":
            frame[name] = pd.to_datetime(column, utc=True, format="ISO8601").astype("datetime64[us, UTC]")
        else:
            frame[name] = column.astype("string")
    return frame


def read_back(path: Path, fmt: str, table: Any) -> pd.DataFrame:
    if fmt == "csv":
        text = [name for name, kind in column_kinds(table).items() if kind == "text"]
        return pd.read_csv(
            path,
            dtype=dict.fromkeys(text, "string"),
            keep_default_na=False,
            na_values=[""],
        )
    if fmt == "json":
        return pd.read_json(path, lines=True, dtype=False)
    return pd.read_parquet(path)


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
@pytest.mark.parametrize("table", ["batches", "tasks", "requests"])
@pytest.mark.parametrize("where", [LedgerFilter(), NARROW], ids=["all", "filtered"])
def test_an_export_reads_back_as_the_tables_rows(
    ledger: Ledger, tmp_path: Path, table: Any, fmt: str, where: LedgerFilter
) -> None:
    path = tmp_path / f"{table}.{fmt}"
    done = export_table(ledger, table, fmt, path, where=where, chunk_rows=700)  # several chunks
    want = typed(expected(ledger, table, where), table)
    got = read_back(path, fmt, table)
    assert list(got.columns) == list(column_kinds(table))  # every column, in the schema's order
    assert done.rows == len(want) > 0
    # JSON floats carry 15 significant digits; CSV and Parquet every digit
    pd.testing.assert_frame_equal(typed(got, table), want, check_exact=fmt != "json", rtol=1e-13)
    if table == "requests" and where == LedgerFilter():
        assert want["target"].isna().any() and want["energy_j"].isna().any()  # NULLs were exported
    if table == "batches":
        assert set(want["user"]) <= set(USERS) and (fmt == "parquet" or "zoë 🚀" in path.read_text("utf-8"))


def test_the_filter_narrows_the_export_as_it_narrows_a_summary(ledger: Ledger, tmp_path: Path) -> None:
    everything = export_table(ledger, "requests", "parquet", tmp_path / "all.parquet")
    narrowed = export_table(ledger, "requests", "parquet", tmp_path / "some.parquet", where=NARROW)
    assert 0 < narrowed.rows < everything.rows == 3000
    summary = ledger.summary("target", where=NARROW)
    assert narrowed.rows == int(summary["requests"].sum())
    frame = pd.read_parquet(tmp_path / "some.parquet")
    assert set(frame["target"]) == {"gpu"}


def test_parquet_has_a_fixed_schema_with_utc_timestamps(ledger: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "tasks.parquet"
    export_table(ledger, "tasks", "parquet", path, chunk_rows=7)
    schema = pq.read_schema(path)
    assert schema.field("started_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("energy_j").type == pa.float64()
    assert schema.field("task_index").type == pa.int64()
    assert schema.field("target").type == pa.string()
    assert pq.ParquetFile(path).metadata.num_row_groups == -(-30 // 7)  # one row group per chunk
    timestamps = pd.read_parquet(path)["started_at"]
    assert str(timestamps.dt.tz) == "UTC"


def test_csv_timestamps_are_iso_8601_utc_and_nulls_empty(ledger: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "tasks.csv"
    export_table(ledger, "tasks", "csv", path)
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert raw["started_at"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z").all()
    running = raw[raw["state"] == "running"]
    assert len(running) > 0 and (running["energy_j"] == "").all() and (running["ended_at"] == "").all()


def test_an_empty_selection_writes_the_header_only(ledger: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "none.csv"
    done = export_table(ledger, "batches", "csv", path, where=LedgerFilter(users=("nobody",)))
    assert done.rows == 0
    assert path.read_text().splitlines() == [",".join(column_kinds("batches"))]


def test_bad_input_is_refused_with_the_valid_choices(ledger: Ledger, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batches, tasks, requests"):
        export_table(ledger, "jobs", "csv", tmp_path / "x.csv")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="csv, json, parquet"):
        export_table(ledger, "tasks", "xlsx", tmp_path / "x.xlsx")  # type: ignore[arg-type]
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(ConfigError, match="cannot write the export"):
        export_table(ledger, "tasks", "csv", not_a_dir / "tasks.csv")


def test_a_failed_export_leaves_the_previous_file_and_no_temporary(ledger: Ledger, tmp_path: Path) -> None:
    # a damaged row near the end, so that the export fails after some chunks: SQLite stores text in an integer
    # column; PostgreSQL stores a time past the year 9999, which no Python datetime can hold
    damage = {
        "sqlite": "UPDATE requests SET input_tokens = 'many' WHERE id = 2900",
        "postgresql": "UPDATE requests SET started_at = '12000-01-01 00:00:00+00' WHERE id = 2900",
    }
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql(damage[ledger.engine.dialect.name])
    path = tmp_path / "requests.parquet"
    path.write_bytes(b"previous export")
    with pytest.raises((ValueError, TypeError, LedgerError)):
        export_table(ledger, "requests", "parquet", path, chunk_rows=500)
    assert path.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir() if "requests.parquet" in p.name] == ["requests.parquet"]
