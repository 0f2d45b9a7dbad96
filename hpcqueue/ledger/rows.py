"""Rows: turning the batch directory's files and the planner's frames into ledger rows.

Pure functions of their inputs (no database access except ``bulk_insert``, which only executes): ``Ledger``
(:mod:`hpcqueue.ledger.db`) calls them inside its transactions. Values are converted to plain Python (no numpy
scalars, NaN as NULL, epoch seconds as timezone-aware UTC datetimes), which every DB-API driver binds
natively.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import pandas as pd
from sqlalchemy import Float, Table, bindparam, insert, update
from sqlalchemy.engine import Connection

from hpcqueue.dispatch.batchdir import PLAN_COLUMNS
from hpcqueue.fileio import json_safe
from hpcqueue.ledger.schema import (
    FOOTPRINT_COLUMNS,
    PLAN_COST_ROLES,
    PREDICTION_METHODS,
    RUN_TIMES_SOURCES,
    SITE_FACTOR_COLUMNS,
    RequestRow,
)

TASK_COLUMNS = (
    "task_index",
    "target",
    "executor",
    "n_requests",
    "predicted_energy_j",
    "predicted_runtime_s",
)
#: Task columns a plan in time adds (each optional: a frame without one records NULL), and their kinds;
#: ``time`` columns are epoch seconds.
TASK_PLAN_COLUMNS: dict[str, Literal["float", "str", "time"]] = {
    "site": "str",
    "planned_start_at": "time",
    "planned_end_at": "time",
    "predicted_facility_energy_j": "float",
    "predicted_carbon_g": "float",
    "predicted_water_l": "float",
    "predicted_cost_usd": "float",
    "account": "str",
}
#: Task columns of a prediction with its interval (each optional, as above): the 90 % bounds, the method and
#: basis behind the prediction, and the target's hardware class.
TASK_PREDICTION_COLUMNS: dict[str, Literal["float", "str", "time"]] = {
    "predicted_energy_low_j": "float",
    "predicted_energy_high_j": "float",
    "predicted_runtime_low_s": "float",
    "predicted_runtime_high_s": "float",
    "prediction_method": "str",
    "prediction_basis": "str",
    "hardware": "str",
}
#: What the ledger reads of a batch's plan (plan.parquet, less the request kind, which the worker records).
REQUEST_COLUMNS = tuple(column for column in PLAN_COLUMNS if column != "kind")
#: The figures of a ``plan_costs`` row besides its ``name`` and ``role`` (all floats but ``meets_deadline``).
PLAN_COST_FIGURES = ("energy_j", *FOOTPRINT_COLUMNS, "water_l", "finish_s", "meets_deadline")
#: What :meth:`Ledger.record_accounting` writes of a task, besides ``accounted_at``: its run interval and
#: where that came from, the site's factors over it, the footprint, and each factor's kind and source.
ACCOUNTING_TIMES = ("run_started_at", "run_ended_at")
ACCOUNTING_JSON = ("factor_kinds", "factor_sources")
ACCOUNTING_COLUMNS = (
    *ACCOUNTING_TIMES,
    "run_times_source",
    *SITE_FACTOR_COLUMNS,
    *FOOTPRINT_COLUMNS,
    *ACCOUNTING_JSON,
)


def utc_from_epoch(value: float | int | datetime | None) -> datetime | None:
    """An epoch-seconds float (as in metrics.json and output records) as a timezone-aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    return datetime.fromtimestamp(float(value), tz=timezone.utc)


def epoch_or_none(value: datetime | None) -> float | None:
    """A ledger timestamp as epoch seconds (the inverse of :func:`utc_from_epoch`)."""
    return None if value is None else value.timestamp()


@dataclass(frozen=True)
class BatchInfo:
    """One row of the ``batches`` table: what was submitted, by whom, where, and with which settings.

    ``created_at`` may be an epoch float or a datetime; ``settings_json`` is JSON text (a mapping is
    serialised). ``n_requests`` / ``n_rejected`` default to the sizes of the frames given to
    :meth:`Ledger.record_batch`. A plan in time adds its report (``plan_json``: the plan against its
    baselines, JSON text or a mapping), when it starts and its deadline (epoch seconds).
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
    plan_json: Mapping[str, Any] | str | None = None
    plan_start_at: float | None = None
    deadline_at: float | None = None


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


def optional_task_columns(frame: pd.DataFrame) -> dict[str, Any]:
    """The tasks frame's plan-in-time and prediction columns (``TASK_PLAN_COLUMNS``,
    ``TASK_PREDICTION_COLUMNS``) as column lists; an absent column is NULL, and so is NaN.

    Raises ValueError for a ``prediction_method`` the ledger does not know.
    """
    columns: dict[str, Any] = {}
    for name, kind in {**TASK_PLAN_COLUMNS, **TASK_PREDICTION_COLUMNS}.items():
        if name not in frame:
            columns[name] = None
        elif kind == "time":
            columns[name] = [utc_from_epoch(v) for v in column_values(frame[name], "float")]
        else:
            columns[name] = column_values(frame[name], kind)
    methods = columns["prediction_method"]
    unknown = sorted({m for m in methods or () if m is not None and m not in PREDICTION_METHODS})
    if unknown:
        raise ValueError(
            f"the tasks frame has prediction_method {', '.join(map(repr, unknown))}; expected one of "
            f"{', '.join(PREDICTION_METHODS)}, or NaN/None for a task without a prediction"
        )
    return columns


def plan_cost_row(batch_id: str, item: Mapping[str, Any]) -> dict[str, Any]:
    """A ``plan_costs`` row from ``{"name", "role", <figures>...}``; absent, None or NaN figures are NULL."""
    role = item.get("role")
    if role not in PLAN_COST_ROLES:
        raise ValueError(
            f"plan cost {item.get('name')!r} has role {role!r}; expected one of {', '.join(PLAN_COST_ROLES)}"
        )
    row: dict[str, Any] = {"batch_id": batch_id, "name": str(item["name"]), "role": role}
    for column in PLAN_COST_FIGURES:
        value = number_or_none(item.get(column))
        row[column] = bool(value) if column == "meets_deadline" and value is not None else value
    return row


def accounting_values(row: Mapping[str, Any]) -> dict[str, Any]:
    """A task's accounting columns from one row given to :meth:`Ledger.record_accounting` (absent: NULL)."""
    values: dict[str, Any] = {}
    for column in ACCOUNTING_COLUMNS:
        value = row.get(column)
        if column in ACCOUNTING_TIMES:
            values[column] = utc_from_epoch(number_or_none(value))
        elif column in ACCOUNTING_JSON:
            values[column] = json_text(value)
        elif column == "run_times_source":
            if value is not None and value not in RUN_TIMES_SOURCES:
                raise ValueError(
                    f"task {row.get('task_index')}: run_times_source {value!r}; expected one of "
                    f"{', '.join(RUN_TIMES_SOURCES)} or None"
                )
            values[column] = value
        else:
            values[column] = number_or_none(value)
    return values


#: A request's share of its task's footprint: its energy times the task's figure per joule of its requests
#: (``b_<column>``, NULL where the figure or the requests' energy is unknown).
REQUEST_FOOTPRINT_UPDATE = (
    update(RequestRow)
    .where(RequestRow.task_index == bindparam("b_task_index"))
    .values(
        **{
            column: RequestRow.energy_j * bindparam(f"b_{column}", type_=Float())
            for column in FOOTPRINT_COLUMNS
        }
    )
)


def footprint_share_params(
    task_index: int, values: Mapping[str, Any], requests_energy_j: float | None
) -> dict[str, Any]:
    """The parameters of ``REQUEST_FOOTPRINT_UPDATE`` for one task: each figure per joule of its requests."""
    params: dict[str, Any] = {"b_task_index": task_index}
    for column in FOOTPRINT_COLUMNS:
        value = values.get(column)
        params[f"b_{column}"] = None if value is None or not requests_energy_j else value / requests_energy_j
    return params


def json_text(value: Any) -> str | None:
    """JSON text for a JSON column: strict JSON (NaN as null), keys sorted, the default ``", "`` / ``": "``
    separators (which the report queries match on). Text is parsed first, so it is checked and stored in the
    same form."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"expected JSON text or a mapping, got {value[:80]!r} ({exc})") from exc
    if isinstance(value, Mapping):
        value = dict(value)
    return json.dumps(json_safe(value), sort_keys=True, default=str, allow_nan=False)


def bulk_insert(conn: Connection, table: Table, columns: Mapping[str, Any], n_rows: int) -> None:
    """Insert many rows given as column lists (constants are repeated): ``executemany`` or PostgreSQL COPY.

    The values are plain Python ints, floats, strings, bools and None (no timestamps), which every DB-API
    driver binds natively, so SQLAlchemy's per-row parameter processing (half the time of a million-row
    insert) is skipped.
    """
    names = list(columns)
    lists = [value if isinstance(value, list) else [value] * n_rows for value in columns.values()]
    if conn.dialect.driver == "psycopg" and not _row_security_active(conn, table):
        # PostgreSQL's COPY is ten times faster than a pipelined executemany for a million rows; it refuses
        # a table whose row-level security applies to this role (a user of a shared ledger).
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


def _row_security_active(conn: Connection, table: Table) -> bool:
    """Whether row-level security restricts this role on ``table`` (PostgreSQL: hpcqueue.ledger.access)."""
    return bool(conn.exec_driver_sql("SELECT row_security_active(%(t)s)", {"t": table.name}).scalar())


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


def number_or_none(value: Any) -> float | None:
    """A float, with None and NaN (missing in a frame or a JSON report) as None."""
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number
