"""Rows: turning the batch directory's files and the planner's frames into ledger rows.

Pure functions of their inputs (no database access except ``bulk_insert``, which only executes): ``Ledger``
(:mod:`hpcqueue.ledger.db`) calls them inside its transactions. Values are converted to plain Python (no numpy
scalars, NaN as NULL, epoch seconds as timezone-aware UTC datetimes), which every DB-API driver binds
natively.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import pandas as pd
from sqlalchemy import Table, bindparam, insert, update
from sqlalchemy.engine import Connection

from hpcqueue.dispatch.batchdir import PLAN_COLUMNS
from hpcqueue.ledger.schema import RequestRow

TASK_COLUMNS = (
    "task_index",
    "target",
    "executor",
    "n_requests",
    "predicted_energy_j",
    "predicted_runtime_s",
)
#: What the ledger reads of a batch's plan (plan.parquet, less the request kind, which the worker records).
REQUEST_COLUMNS = tuple(column for column in PLAN_COLUMNS if column != "kind")


def utc_from_epoch(value: float | int | datetime | None) -> datetime | None:
    """An epoch-seconds float (as in metrics.json and output records) as a timezone-aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    return datetime.fromtimestamp(float(value), tz=timezone.utc)


@dataclass(frozen=True)
class BatchInfo:
    """One row of the ``batches`` table: what was submitted, by whom, where, and with which settings.

    ``created_at`` may be an epoch float or a datetime; ``settings_json`` is JSON text (a mapping is
    serialised). ``n_requests`` / ``n_rejected`` default to the sizes of the frames given to
    :meth:`Ledger.record_batch`.
    """

    id: str
    created_at: datetime | float
    user: str
    host: str
    input_path: str
    input_sha256: str
    input_format: str
    model: str
    policy: str
    settings_json: str | Mapping[str, Any]
    batch_dir: str
    n_requests: int | None = None
    n_rejected: int | None = None


REQUESTS_TABLE: Table = RequestRow.__table__  # type: ignore[assignment]
#: The request columns a task's output record fills (``output_params`` gives them, prefixed ``b_``).
OUTPUT_COLUMNS = (
    "status",
    "input_tokens",
    "output_tokens",
    "finish_reason",
    "error_code",
    "error_message",
    "started_at",
    "ended_at",
    "energy_j",
    "energy_method",
    "energy_meter",
    "attribution_rule",
)
REQUEST_UPDATE = (
    update(RequestRow)
    .where(RequestRow.line == bindparam("b_line"))
    .values(**{column: bindparam(f"b_{column}") for column in OUTPUT_COLUMNS})
)


def output_params(
    record: Mapping[str, Any], method: str | None, meter: str | None, rule: str | None
) -> dict[str, Any]:
    error = record.get("error")
    code: str | None = None
    message: str | None = None
    if error:
        if isinstance(error, Mapping):
            code = str_or_none(error.get("code")) or "error"
            message = str_or_none(error.get("message"))
        else:
            code, message = "error", str(error)
    energy_j = float_or_none(record.get("energy_j"))
    return {
        "b_line": int(record["line"]),
        "b_status": "failed" if error else "succeeded",
        "b_input_tokens": int_or_none(record.get("input_tokens")),
        "b_output_tokens": int_or_none(record.get("output_tokens")),
        "b_finish_reason": record.get("finish_reason"),
        "b_error_code": code,
        "b_error_message": message,
        "b_started_at": utc_from_epoch(record.get("started_at")),
        "b_ended_at": utc_from_epoch(record.get("ended_at")),
        "b_energy_j": energy_j,
        "b_energy_method": method if energy_j is not None else None,
        "b_energy_meter": meter if energy_j is not None else None,
        "b_attribution_rule": rule if energy_j is not None else None,
    }


def measurement_rows(batch_id: str, task_index: int, measurements: Iterable[Mapping[str, Any]]) -> list[dict]:
    rows: list[dict[str, Any]] = []
    for item in measurements:
        energy = item.get("energy_j")
        domains = energy.items() if isinstance(energy, Mapping) else [("total", energy)]
        details = item.get("details")
        for domain, joules in domains:
            if joules is None:
                continue
            rows.append(
                {
                    "batch_id": batch_id,
                    "task_index": task_index,
                    "scope": item["scope"],
                    "seq": int(item.get("seq", 0)),
                    "domain": str(domain),
                    "energy_j": float(joules),
                    "duration_s": float_or_none(item.get("duration_s")),
                    "method": item.get("method") or "estimated",
                    "meter": item.get("meter") or "unknown",
                    "started_at": utc_from_epoch(item.get("started_at")),
                    "details_json": None
                    if details is None
                    else json.dumps(details, sort_keys=True, default=str),
                }
            )
    return rows


def rejected_row(batch_id: str, model: str, item: Mapping[str, Any]) -> dict[str, Any]:
    errors = item.get("errors") or []
    message = "; ".join(
        f"{err.get('field')}: {err.get('message')}" if err.get("field") else str(err.get("message"))
        for err in errors
    )
    row = dict.fromkeys(c.name for c in RequestRow.__table__.columns if c.name != "id")
    row.update(
        batch_id=batch_id,
        line=int(item["line"]),
        request_id=str_or_none(item.get("id")),
        model=model,
        status="rejected",
        error_code="invalid_input",
        error_message=message or "invalid input line",
    )
    return row


def request_columns(batch_id: str, model: str, frame: pd.DataFrame) -> dict[str, Any]:
    return {
        "batch_id": batch_id,
        "line": column_values(frame["line"], "int"),
        "request_id": column_values(frame["id"], "str"),
        "task_index": column_values(frame["task_index"], "int"),
        "target": column_values(frame["target"], "str"),
        "model": model,
        "status": "pending",
        "input_tokens": column_values(frame["input_tokens"], "int"),
        "max_new_tokens": column_values(frame["max_new_tokens"], "int"),
        "predicted_energy_j": column_values(frame["predicted_energy_j"], "float"),
        "predicted_runtime_s": column_values(frame["predicted_runtime_s"], "float"),
        "extrapolated": column_values(frame["extrapolated"], "bool"),
    }


def bulk_insert(conn: Connection, table: Table, columns: Mapping[str, Any], n_rows: int) -> None:
    """Insert many rows given as column lists (constants are repeated): ``executemany`` or PostgreSQL COPY.

    The values are plain Python ints, floats, strings, bools and None (no timestamps), which every DB-API
    driver binds natively, so SQLAlchemy's per-row parameter processing (half the time of a million-row
    insert) is skipped.
    """
    names = list(columns)
    lists = [value if isinstance(value, list) else [value] * n_rows for value in columns.values()]
    if conn.dialect.driver == "psycopg":
        # PostgreSQL's COPY is ten times faster than a pipelined executemany for a million rows.
        quote = conn.dialect.identifier_preparer.quote
        sql = f"COPY {quote(table.name)} ({', '.join(quote(n) for n in names)}) FROM STDIN"
        with conn.connection.driver_connection.cursor() as cursor, cursor.copy(sql) as copy:  # type: ignore[union-attr]
            for row in zip(*lists, strict=True):
                copy.write_row(row)
        return
    compiled = insert(table).compile(dialect=conn.dialect, column_keys=names)
    if compiled.positional:
        position = {name: i for i, name in enumerate(names)}
        order = [position[key] for key in compiled.positiontup or ()]
        params: list[Any] = [tuple(row[i] for i in order) for row in zip(*lists, strict=True)]
    else:
        params = [dict(zip(names, row, strict=True)) for row in zip(*lists, strict=True)]
    conn.exec_driver_sql(compiled.string, params)


def column_values(series: pd.Series, kind: Literal["int", "float", "str", "bool"]) -> list[Any]:
    """A column as Python values (no numpy scalars, which DB drivers reject), NaN/NA as None."""
    if kind == "int":
        series = series.astype("Int64")
    elif kind == "float":
        series = series.astype("float64")
    elif kind == "bool":
        series = series.astype("boolean")
    values = series.astype(object).where(series.notna(), None).tolist()
    return [None if v is None else str(v) for v in values] if kind == "str" else values


def row_dicts(columns: Mapping[str, Any], n_rows: int) -> list[dict[str, Any]]:
    """Row dicts from column lists (constants are repeated), built without per-cell pandas access."""
    names = list(columns)
    lists = [value if isinstance(value, list) else [value] * n_rows for value in columns.values()]
    return [dict(zip(names, row, strict=True)) for row in zip(*lists, strict=True)]


def require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"the {what} frame lacks columns {missing}; it needs {list(columns)}")


def error_text(error: Any) -> str | None:
    if not error:
        return None
    if isinstance(error, Mapping):
        code, message = error.get("code"), error.get("message")
        return f"{code}: {message}" if code and message else str(message or code or json.dumps(error))
    return str(error)


def str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)
