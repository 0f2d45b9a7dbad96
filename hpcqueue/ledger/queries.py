"""Report queries over the ledger: one batch's report, totals by target/model/day/user, the batch list, a
batch's plan and baselines.

The database does the heavy aggregation (one ``GROUP BY`` over the request rows per query); pandas only
regroups the small per-batch results. Energy figures come from the tasks' metered totals, so the energy of
a failed attempt is counted too, and every figure says its method: ``measured``, ``estimated``, or
``mixed`` when both went into it. Footprint figures (facility energy, carbon, water, cost) come from the
tasks' accounting at the hours they ran; ``accounted_tasks`` says how many tasks they cover and
``tasks_with_assumed_inputs`` how many of those rest on an assumed factor (a constant PUE, a default
carbon intensity ...).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Literal, Protocol, get_args

import pandas as pd
from sqlalchemy import case, func, select
from sqlalchemy.engine import Connection, Result

from hpcqueue.errors import BatchNotFoundError, ConfigError
from hpcqueue.ledger.filters import LedgerFilter
from hpcqueue.ledger.rows import PLAN_COST_FIGURES, BatchInfo, epoch_or_none
from hpcqueue.ledger.schema import (
    FOOTPRINT_COLUMNS,
    BatchRow,
    MeasurementRow,
    PlanCostRow,
    RequestRow,
    TaskRow,
)


class LedgerReader(Protocol):
    """What a query needs of :class:`hpcqueue.ledger.db.Ledger`: read transactions, and a URL to name."""

    masked_url: str

    def connect(self) -> AbstractContextManager[Connection]: ...


SummaryKey = Literal["target", "model", "day", "user"]
#: The request counts of a summary row; a batch report counts ``pending`` lines too.
REQUEST_COUNTS = ("requests", "succeeded", "failed", "rejected", "input_tokens", "output_tokens")
#: Totals of the tasks' accounting: the footprint, how many tasks it covers and how many rest on assumptions.
ACCOUNTING_TOTALS = (*FOOTPRINT_COLUMNS, "accounted_tasks", "tasks_with_assumed_inputs")
SUMMARY_COLUMNS = (
    "batches",
    *REQUEST_COUNTS,
    "energy_j",
    "j_per_output_token",
    "energy_method",
    "meters",
    *ACCOUNTING_TOTALS,
)
#: ``tasks.factor_kinds`` (JSON written by ``rows.json_text``) with some factor whose kind is ``assumed``.
_ASSUMED_KIND = '%: "assumed"%'
NO_TARGET = "(none)"
"""The ``target`` of rejected lines in a summary by target: they were never planned onto one."""


def combine_methods(methods: Iterable[str | None]) -> str | None:
    """``measured`` or ``estimated`` when all energy figures share that method, ``mixed`` otherwise.

    None when there is no energy figure at all.
    """
    found = {m for m in methods if m is not None and not (isinstance(m, float) and pd.isna(m))}
    if not found:
        return None
    if len(found) == 1:
        return found.pop()
    return "mixed"


def _status_count(status: str) -> Any:
    return func.coalesce(func.sum(case((RequestRow.status == status, 1), else_=0)), 0)


def _request_counts(statuses: Iterable[str]) -> list[Any]:
    """Aggregates over request rows, labelled: ``requests``, one count per status, then the token sums."""
    return [
        func.count().label("requests"),
        *(_status_count(status).label(status) for status in statuses),
        func.coalesce(func.sum(RequestRow.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(RequestRow.output_tokens), 0).label("output_tokens"),
    ]


def _accounting_totals() -> list[Any]:
    """Aggregates over task rows, labelled as ``ACCOUNTING_TOTALS``: the summed footprint (NULL when no task
    has that figure), the accounted tasks, and those of them with an assumed factor."""
    assumed = case((TaskRow.factor_kinds.like(_ASSUMED_KIND), 1), else_=0)
    return [
        *(func.sum(getattr(TaskRow, column)).label(column) for column in FOOTPRINT_COLUMNS),
        func.count(TaskRow.accounted_at).label("accounted_tasks"),
        func.coalesce(func.sum(assumed), 0).label("tasks_with_assumed_inputs"),
    ]


def _add_totals(into: dict[str, Any], rows: Iterable[Any]) -> None:
    """Add ``ACCOUNTING_TOTALS`` of ``rows`` (``_accounting_totals`` results) to ``into``: the footprint
    summed over the rows that have it (None when none has), the counts as ints."""
    rows = list(rows)
    for column in FOOTPRINT_COLUMNS:
        known = [getattr(row, column) for row in rows if getattr(row, column) is not None]
        into[column] = float(sum(known)) if known else None
    for column in ("accounted_tasks", "tasks_with_assumed_inputs"):
        into[column] = int(sum(getattr(row, column) for row in rows))


def result_frame(result: Result[Any]) -> pd.DataFrame:
    """A query's rows as a DataFrame, its columns named as the query labels them."""
    columns = list(result.keys())
    return pd.DataFrame(result.all(), columns=columns)


def get_batch(ledger: LedgerReader, batch_id: str) -> BatchInfo | None:
    """The recorded batch with this id, or None."""
    with ledger.connect() as conn:
        row = conn.execute(select(BatchRow).where(BatchRow.id == batch_id)).mappings().first()
    if row is None:
        return None
    fields = {field: row[field] for field in BatchInfo.__dataclass_fields__}
    for field in ("plan_start_at", "deadline_at"):
        fields[field] = epoch_or_none(fields[field])
    return BatchInfo(**fields)


def plan_report(ledger: LedgerReader, batch_id: str) -> dict[str, Any] | None:
    """The plan report recorded with the batch (``plan_json``, parsed); None without one or for an unknown
    batch."""
    with ledger.connect() as conn:
        text = conn.execute(select(BatchRow.plan_json).where(BatchRow.id == batch_id)).scalar()
    return None if text is None else dict(json.loads(text))


def plan_costs(ledger: LedgerReader, batch_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The ``plan_costs`` rows of each batch: the plan first, then its baselines in the order recorded.

    Each a dict of ``name``, ``role`` and the figures (``energy_j``, ``facility_energy_j``, ``carbon_g``,
    ``water_onsite_l``, ``water_offsite_l``, ``water_l``, ``cost_usd``, ``finish_s``, ``meets_deadline``).
    A batch without any is left out.
    """
    if not batch_ids:
        return {}
    figures = [getattr(PlanCostRow, column) for column in PLAN_COST_FIGURES]
    with ledger.connect() as conn:
        found = conn.execute(
            select(PlanCostRow.batch_id, PlanCostRow.name, PlanCostRow.role, *figures)
            .where(PlanCostRow.batch_id.in_(list(batch_ids)))
            .order_by(PlanCostRow.batch_id, case((PlanCostRow.role == "plan", 0), else_=1), PlanCostRow.id)
        ).mappings()
        by_batch: dict[str, list[dict[str, Any]]] = {}
        for row in found:
            item = dict(row)
            by_batch.setdefault(item.pop("batch_id"), []).append(item)
    return by_batch


def table_counts(ledger: LedgerReader) -> dict[str, int]:
    """Row count of each ledger table (batches, tasks, requests, measurements, plan_costs)."""
    with ledger.connect() as conn:
        return {
            model.__tablename__: int(conn.execute(select(func.count()).select_from(model)).scalar_one())
            for model in (BatchRow, TaskRow, RequestRow, MeasurementRow, PlanCostRow)
        }


def batch_report(ledger: LedgerReader, batch_id: str) -> dict[str, Any]:
    """Everything ``hpcqueue status`` shows about one batch.

    Keys: ``batch_id``, ``requests`` (all lines, = succeeded + failed + rejected + pending), ``succeeded``,
    ``failed``, ``rejected``, ``pending``, ``input_tokens``, ``output_tokens``, ``energy_j`` (None until a
    task reports energy), ``energy_method``, ``meters``, ``per_target`` ({target: {requests, succeeded,
    failed, pending, energy_j}}), ``tasks`` ({state: count}), then the accounting: ``facility_energy_j``,
    ``carbon_g``, ``water_onsite_l``, ``water_offsite_l``, ``cost_usd`` (None until a task is accounted with
    that figure), ``accounted_tasks`` and ``tasks_with_assumed_inputs``. Raises BatchNotFoundError for an
    unknown id.
    """
    with ledger.connect() as conn:
        if conn.execute(select(BatchRow.id).where(BatchRow.id == batch_id)).first() is None:
            raise BatchNotFoundError(
                f"batch {batch_id} is not in the ledger {ledger.masked_url}; `hpcqueue ledger batches` "
                "lists the recorded batches"
            )
        by_target = conn.execute(
            select(RequestRow.target, *_request_counts(("succeeded", "failed", "rejected", "pending")))
            .where(RequestRow.batch_id == batch_id)
            .group_by(RequestRow.target)
        ).all()
        task_energy = conn.execute(
            select(
                TaskRow.target,
                TaskRow.energy_method,
                TaskRow.meter,
                func.sum(TaskRow.energy_j).label("energy_j"),
            )
            .where(TaskRow.batch_id == batch_id, TaskRow.energy_j.is_not(None))
            .group_by(TaskRow.target, TaskRow.energy_method, TaskRow.meter)
        ).all()
        task_states = conn.execute(
            select(TaskRow.state, func.count()).where(TaskRow.batch_id == batch_id).group_by(TaskRow.state)
        ).all()
        engines = conn.execute(
            select(TaskRow.engine, TaskRow.engine_version)
            .where(TaskRow.batch_id == batch_id, TaskRow.engine.is_not(None))
            .distinct()
        ).all()
        accounting = conn.execute(select(*_accounting_totals()).where(TaskRow.batch_id == batch_id)).all()

    energy_by_target: dict[str, float] = {}
    for row in task_energy:
        energy_by_target[row.target] = energy_by_target.get(row.target, 0.0) + float(row.energy_j)
    report: dict[str, Any] = {"batch_id": batch_id}
    for key in ("requests", "succeeded", "failed", "rejected", "pending", "input_tokens", "output_tokens"):
        report[key] = int(sum(getattr(row, key) for row in by_target))
    report["energy_j"] = sum(energy_by_target.values()) if task_energy else None
    report["energy_method"] = combine_methods(row.energy_method for row in task_energy)
    report["meters"] = sorted({row.meter for row in task_energy if row.meter is not None})
    # the engines that ran the batch's tasks, with their versions ("vllm 0.32.0")
    report["engines"] = sorted(
        {f"{row.engine} {row.engine_version or '(version unknown)'}" for row in engines}
    )
    report["per_target"] = {
        row.target: {
            "requests": int(row.requests),
            "succeeded": int(row.succeeded),
            "failed": int(row.failed),
            "pending": int(row.pending),
            "energy_j": energy_by_target.get(row.target),
        }
        for row in sorted(by_target, key=lambda r: r.target or "")
        if row.target is not None
    }
    report["tasks"] = {state: int(count) for state, count in sorted(task_states)}
    _add_totals(report, accounting)
    return report


def summary(
    ledger: LedgerReader,
    by: SummaryKey = "target",
    *,
    since: datetime | None = None,
    where: LedgerFilter | None = None,
) -> pd.DataFrame:
    """Totals over the recorded batches ``where`` selects (default: all), one row per ``by`` value (target,
    model, day or user).

    ``day`` is the UTC date a batch was created; ``since`` keeps batches created at or after it (narrowing
    ``where``). A filter by target or account counts only those tasks and their requests. Columns:
    the key, then ``SUMMARY_COLUMNS``. ``j_per_output_token`` is the metered energy (model load and failed
    attempts included) over the output tokens produced; NaN when nothing was produced. The footprint columns
    (``facility_energy_j`` ... ``cost_usd``) sum the accounted tasks' figures (NaN when none has one);
    ``accounted_tasks`` and ``tasks_with_assumed_inputs`` say what they rest on.
    """
    if by not in get_args(SummaryKey):
        raise ConfigError(f"cannot summarise by {by!r}; choose one of {', '.join(get_args(SummaryKey))}")
    where = where or LedgerFilter()
    if since is not None:
        where = where.narrowed(since=max(since, where.since) if where.since is not None else since)
    task_scope = where.task_scope()
    with ledger.connect() as conn:
        batches = result_frame(
            conn.execute(
                select(
                    BatchRow.id.label("batch_id"), BatchRow.user, BatchRow.model, BatchRow.created_at
                ).where(*where.batch_clauses())
            )
        )
        requests = result_frame(
            conn.execute(
                select(
                    RequestRow.batch_id,
                    RequestRow.target,
                    *_request_counts(("succeeded", "failed", "rejected")),
                )
                .where(*where.request_scope())
                .group_by(RequestRow.batch_id, RequestRow.target)
            )
        )
        energy = result_frame(
            conn.execute(
                select(
                    TaskRow.batch_id,
                    TaskRow.target,
                    TaskRow.energy_method,
                    TaskRow.meter,
                    func.sum(TaskRow.energy_j).label("energy_j"),
                )
                .where(TaskRow.energy_j.is_not(None), *task_scope)
                .group_by(TaskRow.batch_id, TaskRow.target, TaskRow.energy_method, TaskRow.meter)
            )
        )
        accounting = result_frame(
            conn.execute(
                select(TaskRow.batch_id, TaskRow.target, *_accounting_totals())
                .where(TaskRow.accounted_at.is_not(None), *task_scope)
                .group_by(TaskRow.batch_id, TaskRow.target)
            )
        )
    if requests.empty:
        return pd.DataFrame(columns=[by, *SUMMARY_COLUMNS])

    def keyed(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.merge(batches, on="batch_id", how="inner")
        if by == "day":
            frame["day"] = pd.to_datetime(frame["created_at"], utc=True).dt.strftime("%Y-%m-%d")
        elif by == "target":
            frame["target"] = frame["target"].fillna(NO_TARGET)
        return frame

    requests, energy, accounting = keyed(requests), keyed(energy), keyed(accounting)
    counts = list(REQUEST_COUNTS)
    table = requests.groupby(by, sort=True).agg(
        batches=("batch_id", "nunique"), **{c: (c, "sum") for c in counts}
    )
    table[counts] = table[counts].astype("int64")
    energy_groups = energy.groupby(by)
    table["energy_j"] = energy_groups["energy_j"].sum().reindex(table.index).astype("float64")
    table["j_per_output_token"] = table["energy_j"] / table["output_tokens"].where(table["output_tokens"] > 0)
    methods = energy_groups["energy_method"].agg(lambda s: combine_methods(s.tolist()))
    table["energy_method"] = methods.reindex(table.index).astype(object).where(lambda s: s.notna(), None)
    meters = energy_groups["meter"].agg(lambda s: sorted({m for m in s if isinstance(m, str)}))
    table["meters"] = [meters.get(key, []) for key in table.index]
    accounted = accounting.groupby(by)
    for column in FOOTPRINT_COLUMNS:
        table[column] = accounted[column].sum(min_count=1).reindex(table.index).astype("float64")
    for column in ("accounted_tasks", "tasks_with_assumed_inputs"):
        table[column] = accounted[column].sum().reindex(table.index).fillna(0).astype("int64")
    return table.reset_index()[[by, *SUMMARY_COLUMNS]]


def list_batches(ledger: LedgerReader, limit: int = 20) -> pd.DataFrame:
    """The ``limit`` newest batches: id, when, who, model, policy, sizes, task progress and energy; when the
    plan starts and its deadline (``plan_start_at``, ``deadline_at``), the accounting totals
    (``ACCOUNTING_TOTALS``), and the plan's predicted totals: ``plan`` (the ``plan`` row of
    :func:`plan_costs`, None without one) and ``baselines`` ({name: row})."""
    task_totals = (
        select(
            TaskRow.batch_id,
            func.count().label("tasks"),
            func.coalesce(func.sum(case((TaskRow.state == "completed", 1), else_=0)), 0).label(
                "tasks_completed"
            ),
            func.coalesce(func.sum(case((TaskRow.state == "failed", 1), else_=0)), 0).label("tasks_failed"),
            func.sum(TaskRow.energy_j).label("energy_j"),
            *_accounting_totals(),
        )
        .group_by(TaskRow.batch_id)
        .subquery()
    )
    with ledger.connect() as conn:
        frame = result_frame(
            conn.execute(
                select(
                    BatchRow.id,
                    BatchRow.created_at,
                    BatchRow.user,
                    BatchRow.host,
                    BatchRow.model,
                    BatchRow.policy,
                    BatchRow.input_path,
                    BatchRow.n_requests,
                    BatchRow.n_rejected,
                    func.coalesce(task_totals.c.tasks, 0).label("tasks"),
                    func.coalesce(task_totals.c.tasks_completed, 0).label("tasks_completed"),
                    func.coalesce(task_totals.c.tasks_failed, 0).label("tasks_failed"),
                    task_totals.c.energy_j,
                    BatchRow.plan_start_at,
                    BatchRow.deadline_at,
                    *(task_totals.c[column] for column in FOOTPRINT_COLUMNS),
                    func.coalesce(task_totals.c.accounted_tasks, 0).label("accounted_tasks"),
                    func.coalesce(task_totals.c.tasks_with_assumed_inputs, 0).label(
                        "tasks_with_assumed_inputs"
                    ),
                )
                .outerjoin(task_totals, task_totals.c.batch_id == BatchRow.id)
                .order_by(BatchRow.created_at.desc(), BatchRow.id)
                .limit(int(limit))
            )
        )
        ids = frame["id"].tolist()
        methods = (
            conn.execute(
                select(TaskRow.batch_id, TaskRow.energy_method)
                .where(TaskRow.batch_id.in_(ids), TaskRow.energy_j.is_not(None))
                .distinct()
            ).all()
            if ids
            else []
        )
    by_batch: dict[str, list[str | None]] = {}
    for batch_id, method in methods:
        by_batch.setdefault(batch_id, []).append(method)
    methods_of = [combine_methods(by_batch.get(batch_id, [])) for batch_id in frame["id"]]
    frame.insert(frame.columns.get_loc("energy_j") + 1, "energy_method", methods_of)
    counts = ("n_requests", "n_rejected", "tasks", "tasks_completed", "tasks_failed", "accounted_tasks")
    for column in (*counts, "tasks_with_assumed_inputs"):
        frame[column] = frame[column].astype("int64")
    for column in ("energy_j", *FOOTPRINT_COLUMNS):
        frame[column] = frame[column].astype("float64")
    costs = plan_costs(ledger, ids)
    frame["plan"] = [
        next((row for row in costs.get(batch_id, []) if row["role"] == "plan"), None) for batch_id in ids
    ]
    frame["baselines"] = [
        {row["name"]: row for row in costs.get(batch_id, []) if row["role"] == "baseline"} for batch_id in ids
    ]
    return frame
