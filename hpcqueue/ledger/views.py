"""The admin report's view of the ledger: every figure ``hpcqueue report`` shows, as frames and dicts.

Each function takes the ledger and a :class:`~hpcqueue.ledger.filters.LedgerFilter` and reads only the rows
the filter selects, so every section of the report counts the same batches, tasks and requests. The totals
come from :func:`hpcqueue.ledger.queries.summary` itself — the query behind ``hpcqueue ledger summary`` — so
the report's total energy cannot drift from it. The database does the heavy aggregation: the request rows
(millions) are read in one ``GROUP BY`` per task, status, method and error code; everything else works on
task rows (one per array task), regrouped with pandas.

Honest data: a footprint figure is None (unknown) when no task has it, never 0; every energy figure keeps its
method (``measured``, ``estimated``, ``mixed``); plan costs are predictions of whole batches, so a filter by
target or account cannot narrow them (``savings`` says so).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import aliased

from hpcqueue.ledger.accuracy import accuracy_table, task_frame, task_outcomes
from hpcqueue.ledger.filters import LedgerFilter
from hpcqueue.ledger.queries import (
    NO_TARGET,
    LedgerReader,
    combine_methods,
    result_frame,
    summary,
)
from hpcqueue.ledger.schema import FOOTPRINT_COLUMNS, BatchRow, PlanCostRow, RequestRow, TaskRow

#: The key of tasks or requests without a value for it (no account, no hardware class, no site ...).
UNKNOWN = "(none)"
#: A task's energy method, or ``none`` when it has no energy figure (not run, or lost).
ENERGY_METHODS = ("measured", "estimated", "none")
#: What the totals add up: request counts and tokens, IT energy, then the footprint.
TOTAL_FIGURES = (
    "requests",
    "succeeded",
    "failed",
    "rejected",
    "input_tokens",
    "output_tokens",
    "energy_j",
    *FOOTPRINT_COLUMNS,
)
_PLAN_FIGURES = ("energy_j", "facility_energy_j", "carbon_g", "water_l", "cost_usd")


@dataclass(frozen=True)
class ReportData:
    """Everything the admin report shows, gathered for one filter by :func:`gather`."""

    where: LedgerFilter
    ledger_url: str
    totals: dict[str, Any]
    by_method: pd.DataFrame
    daily: pd.DataFrame
    j_per_token: pd.DataFrame
    savings: pd.DataFrame
    placement: pd.DataFrame
    accuracy: pd.DataFrame
    predictions: pd.DataFrame
    users: pd.DataFrame
    accounts: pd.DataFrame
    task_states: pd.DataFrame
    request_statuses: pd.DataFrame
    error_codes: pd.DataFrame
    problem_tasks: pd.DataFrame
    provenance: dict[str, pd.DataFrame]


def gather(ledger: LedgerReader, where: LedgerFilter) -> ReportData:
    """Every view of the report for ``where``: the ledger is read once per view, tasks once."""
    tasks = task_rows(ledger, where)
    request_groups = request_rows(ledger, where)
    tasks = _with_request_figures(tasks, request_groups)
    predicted = task_frame(ledger, where=where)
    return ReportData(
        where=where,
        ledger_url=ledger.masked_url,
        totals=totals(ledger, where),
        by_method=by_method(tasks, request_groups),
        daily=daily(tasks),
        j_per_token=j_per_token(tasks),
        savings=savings(ledger, where),
        placement=placement(tasks),
        accuracy=accuracy_by_target(predicted),
        predictions=predictions(predicted),
        users=users(ledger, where),
        accounts=accounts(tasks),
        task_states=task_states(tasks),
        request_statuses=request_statuses(request_groups),
        error_codes=error_codes(request_groups),
        problem_tasks=problem_tasks(tasks),
        provenance=provenance(tasks, predicted),
    )


# -- reading the ledger --------------------------------------------------------------------------------------


def totals(ledger: LedgerReader, where: LedgerFilter) -> dict[str, Any]:
    """The filter's totals, summed over the rows of ``ledger summary`` (the same query, so the same figures):
    ``TOTAL_FIGURES`` (footprint None when no task is accounted), ``batches``, ``energy_method`` (combined),
    ``meters``, ``accounted_tasks`` and ``tasks_with_assumed_inputs``."""
    frame = summary(ledger, "target", where=where)
    result: dict[str, Any] = {}
    for column in ("requests", "succeeded", "failed", "rejected", "input_tokens", "output_tokens"):
        result[column] = int(frame[column].sum())
    for column in ("energy_j", *FOOTPRINT_COLUMNS):
        result[column] = float(frame[column].sum()) if frame[column].notna().any() else None
    for column in ("accounted_tasks", "tasks_with_assumed_inputs"):
        result[column] = int(frame[column].sum())
    result["energy_method"] = combine_methods(frame["energy_method"].tolist())
    result["meters"] = sorted({meter for meters in frame["meters"] for meter in meters})
    result["j_per_output_token"] = (
        result["energy_j"] / result["output_tokens"]
        if result["energy_j"] is not None and result["output_tokens"] > 0
        else None
    )
    with ledger.connect() as conn:
        result["batches"] = int(
            conn.execute(
                select(func.count()).select_from(BatchRow).where(*where.batch_clauses())
            ).scalar_one()
        )
    return result


def task_rows(ledger: LedgerReader, where: LedgerFilter) -> pd.DataFrame:
    """One row per task the filter selects: where and when it was planned and ran, its energy, footprint,
    prediction and provenance columns, with its batch's ``user``, ``model`` and ``created_at``."""
    columns = [
        TaskRow.batch_id,
        TaskRow.task_index,
        TaskRow.target,
        TaskRow.executor,
        TaskRow.site,
        TaskRow.hardware,
        TaskRow.engine,
        TaskRow.account,
        TaskRow.state,
        TaskRow.n_requests,
        TaskRow.submitted_at,
        TaskRow.started_at,
        TaskRow.ended_at,
        TaskRow.collected_at,
        TaskRow.planned_start_at,
        TaskRow.planned_end_at,
        TaskRow.run_started_at,
        TaskRow.run_ended_at,
        TaskRow.run_times_source,
        TaskRow.energy_j,
        TaskRow.energy_method,
        TaskRow.meter,
        TaskRow.attribution_rule,
        *(getattr(TaskRow, column) for column in FOOTPRINT_COLUMNS),
        TaskRow.predicted_carbon_g,
        TaskRow.factor_kinds,
        TaskRow.factor_sources,
        TaskRow.accounted_at,
        TaskRow.error,
        BatchRow.user,
        BatchRow.model,
        BatchRow.created_at,
    ]
    with ledger.connect() as conn:
        frame = result_frame(
            conn.execute(
                select(*columns)
                .join(BatchRow, BatchRow.id == TaskRow.batch_id)
                .where(*where.batch_clauses(), *where.task_clauses())
                .order_by(TaskRow.batch_id, TaskRow.task_index)
            )
        )
    for column in (
        "submitted_at",
        "started_at",
        "ended_at",
        "collected_at",
        "planned_start_at",
        "planned_end_at",
        "run_started_at",
        "run_ended_at",
        "accounted_at",
        "created_at",
    ):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    for column in ("energy_j", *FOOTPRINT_COLUMNS, "predicted_carbon_g"):
        frame[column] = frame[column].astype("float64")
    return frame


def request_rows(ledger: LedgerReader, where: LedgerFilter) -> pd.DataFrame:
    """The filter's requests in one ``GROUP BY``: per task (``task_index`` None for rejected lines), status,
    energy method and error code, the count, tokens, and how many ran in an earlier attempt of their task
    (``resumed``: started before the task's last attempt did)."""
    # An alias: the filter's own clauses on tasks (by account) stay a subquery of their own.
    task = aliased(TaskRow)
    resumed = func.sum(case((RequestRow.started_at < task.started_at, 1), else_=0))
    same_task = and_(task.batch_id == RequestRow.batch_id, task.task_index == RequestRow.task_index)
    with ledger.connect() as conn:
        frame = result_frame(
            conn.execute(
                select(
                    RequestRow.batch_id,
                    RequestRow.task_index,
                    RequestRow.status,
                    RequestRow.energy_method,
                    RequestRow.error_code,
                    func.count().label("requests"),
                    func.coalesce(func.sum(RequestRow.input_tokens), 0).label("input_tokens"),
                    func.coalesce(func.sum(RequestRow.output_tokens), 0).label("output_tokens"),
                    func.coalesce(resumed, 0).label("resumed"),
                )
                .select_from(RequestRow)
                .outerjoin(task, same_task)
                .where(*where.request_scope())
                .group_by(
                    RequestRow.batch_id,
                    RequestRow.task_index,
                    RequestRow.status,
                    RequestRow.energy_method,
                    RequestRow.error_code,
                )
            )
        )
    for column in ("requests", "input_tokens", "output_tokens", "resumed"):
        frame[column] = frame[column].astype("int64")
    return frame


def savings(ledger: LedgerReader, where: LedgerFilter) -> pd.DataFrame:
    """What each baseline would have cost against the plans actually chosen, over the filter's batches that
    recorded both: one row per baseline name (``run_at_submit``, ``best_window``, ``unaware``,
    ``single:<target>`` ...) with ``batches``, the plans' and the baseline's predicted ``_PLAN_FIGURES``
    (``plan_*``, ``baseline_*``; None where a batch lacks the figure) and the saving (``saved_*`` = baseline
    − plan, ``saved_*_pct`` of the baseline). Predictions of whole batches: ``whole_batches`` is True
    always, and the report says so when the filter selects tasks by target or account."""
    with ledger.connect() as conn:
        rows = result_frame(
            conn.execute(
                select(
                    PlanCostRow.batch_id,
                    PlanCostRow.name,
                    PlanCostRow.role,
                    *(getattr(PlanCostRow, figure) for figure in _PLAN_FIGURES),
                    PlanCostRow.meets_deadline,
                )
                .join(BatchRow, BatchRow.id == PlanCostRow.batch_id)
                .where(*where.batch_clauses())
            )
        )
    columns = [
        "baseline",
        "batches",
        *(f"{side}_{figure}" for figure in _PLAN_FIGURES for side in ("plan", "baseline", "saved")),
        *(f"saved_{figure}_pct" for figure in _PLAN_FIGURES),
        "baseline_meets_deadline",
    ]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    for figure in _PLAN_FIGURES:
        rows[figure] = rows[figure].astype("float64")
    plans = rows[rows["role"] == "plan"].drop_duplicates("batch_id").set_index("batch_id")
    baselines = rows[(rows["role"] == "baseline") & rows["batch_id"].isin(plans.index)]
    if baselines.empty:
        return pd.DataFrame(columns=columns)
    paired = baselines.merge(
        plans[list(_PLAN_FIGURES)].add_suffix("_plan"), left_on="batch_id", right_index=True, how="inner"
    )
    out: dict[str, Any] = {"batches": paired.groupby("name")["batch_id"].nunique()}
    groups = paired.groupby("name")
    for figure in _PLAN_FIGURES:
        both = paired[figure].notna() & paired[f"{figure}_plan"].notna()
        plan = paired[f"{figure}_plan"].where(both).groupby(paired["name"]).sum(min_count=1)
        base = paired[figure].where(both).groupby(paired["name"]).sum(min_count=1)
        out[f"plan_{figure}"] = plan
        out[f"baseline_{figure}"] = base
        out[f"saved_{figure}"] = base - plan
        out[f"saved_{figure}_pct"] = (base - plan) / base.where(base > 0) * 100.0
    out["baseline_meets_deadline"] = groups["meets_deadline"].agg(
        lambda s: None if s.isna().all() else int(s.fillna(False).astype(bool).sum())
    )
    table = pd.DataFrame(out).rename_axis("baseline").reset_index()
    return table[columns]


def users(ledger: LedgerReader, where: LedgerFilter) -> pd.DataFrame:
    """Per user, heaviest IT energy first: the rows of ``ledger summary --by user``."""
    frame = summary(ledger, "user", where=where)
    return frame.sort_values(["energy_j", "requests"], ascending=False, na_position="last").reset_index(
        drop=True
    )


# -- views of the task and request rows (pure) --------------------------------------------------------------


def _with_request_figures(tasks: pd.DataFrame, requests: pd.DataFrame) -> pd.DataFrame:
    """``tasks`` with each task's request figures: ``output_tokens``, ``resumed_requests``."""
    planned = requests[requests["task_index"].notna()]
    per_task = planned.groupby(["batch_id", "task_index"], as_index=False).agg(
        output_tokens=("output_tokens", "sum"), resumed_requests=("resumed", "sum")
    )
    per_task["task_index"] = per_task["task_index"].astype("int64")
    merged = tasks.merge(per_task, on=["batch_id", "task_index"], how="left")
    for column in ("output_tokens", "resumed_requests"):
        merged[column] = merged[column].fillna(0).astype("int64")
    return merged


def _method(frame: pd.DataFrame) -> pd.Series:
    return frame["energy_method"].where(frame["energy_j"].notna()).fillna("none")


def by_method(tasks: pd.DataFrame, requests: pd.DataFrame) -> pd.DataFrame:
    """The totals split by how the energy was known: one row per ``ENERGY_METHODS`` value with the tasks,
    their IT energy and footprint (None when none has it), and the requests and tokens whose energy share has
    that method (``none``: no energy, such as rejected or pending lines)."""
    method = _method(tasks)
    rows = []
    request_method = requests["energy_method"].fillna("none")
    for name in ENERGY_METHODS:
        chosen = tasks[method == name]
        asked = requests[request_method == name]
        row: dict[str, Any] = {
            "energy_method": name,
            "tasks": len(chosen),
            "accounted_tasks": int(chosen["accounted_at"].notna().sum()),
            "requests": int(asked["requests"].sum()),
            "input_tokens": int(asked["input_tokens"].sum()),
            "output_tokens": int(asked["output_tokens"].sum()),
        }
        for column in ("energy_j", *FOOTPRINT_COLUMNS):
            row[column] = float(chosen[column].sum()) if chosen[column].notna().any() else None
        rows.append(row)
    return pd.DataFrame(rows)


def run_day(tasks: pd.DataFrame) -> pd.Series:
    """The UTC day each task ran: its accounted run start, else the worker's start, else its batch's
    submission (a task that has not run yet)."""
    when = tasks["run_started_at"].fillna(tasks["started_at"]).fillna(tasks["created_at"])
    return when.dt.strftime("%Y-%m-%d")


def daily(tasks: pd.DataFrame) -> pd.DataFrame:
    """IT energy and carbon per UTC day the tasks ran, per target: ``day``, ``target``, ``energy_j``,
    ``carbon_g`` (None where no task of the day and target is accounted), ``tasks``, ``energy_method``."""
    with_energy = tasks[tasks["energy_j"].notna()]
    columns = ["day", "target", "tasks", "energy_j", "carbon_g", "energy_method"]
    if with_energy.empty:
        return pd.DataFrame(columns=columns)
    frame = with_energy.assign(day=run_day(with_energy), target=with_energy["target"].fillna(NO_TARGET))
    groups = frame.groupby(["day", "target"])
    table = groups.agg(
        tasks=("task_index", "size"),
        energy_j=("energy_j", "sum"),
        carbon_g=("carbon_g", lambda s: s.sum(min_count=1)),
        energy_method=("energy_method", lambda s: combine_methods(s.tolist())),
    )
    return table.reset_index()[columns]


def j_per_token(tasks: pd.DataFrame) -> pd.DataFrame:
    """Joules of IT energy per output token by hardware class × model × engine, over the tasks with energy:
    ``hardware``, ``model``, ``engine``, ``tasks``, ``energy_j``, ``output_tokens``, ``j_per_output_token``
    (None without output), ``energy_method``, ``meters``. Tasks recorded before engines were (ledger revision
    0005) have engine ``(unknown)``."""
    with_energy = tasks[tasks["energy_j"].notna()].assign(
        hardware=tasks["hardware"].fillna(UNKNOWN), engine=tasks["engine"].fillna(UNKNOWN)
    )
    columns = [
        "hardware",
        "model",
        "engine",
        "tasks",
        "energy_j",
        "output_tokens",
        "j_per_output_token",
        "energy_method",
        "meters",
    ]
    if with_energy.empty:
        return pd.DataFrame(columns=columns)
    table = with_energy.groupby(["hardware", "model", "engine"]).agg(
        tasks=("task_index", "size"),
        energy_j=("energy_j", "sum"),
        output_tokens=("output_tokens", "sum"),
        energy_method=("energy_method", lambda s: combine_methods(s.tolist())),
        meters=("meter", lambda s: sorted({m for m in s if isinstance(m, str)})),
    )
    table["j_per_output_token"] = table["energy_j"] / table["output_tokens"].where(table["output_tokens"] > 0)
    return table.reset_index()[columns]


def placement(tasks: pd.DataFrame) -> pd.DataFrame:
    """Where and when the work ran against where and when it was planned, per site × target: the tasks
    (``tasks``, ``ran``: with a known run start), the median hours from submission to the planned start
    (``planned_wait_h``: what the plan chose to wait; running at submission is 0) and to the real start
    (``wait_h``), the median hours the real start missed the planned one (``late_h``), the IT energy and the
    carbon predicted at the planned hours against the carbon accounted at the real ones (``carbon_g``)."""
    columns = [
        "site",
        "target",
        "tasks",
        "ran",
        "planned_wait_h",
        "wait_h",
        "late_h",
        "energy_j",
        "predicted_carbon_g",
        "carbon_g",
    ]
    if tasks.empty:
        return pd.DataFrame(columns=columns)
    started = tasks["run_started_at"].fillna(tasks["started_at"])
    hours = 3600.0
    frame = tasks.assign(
        site=tasks["site"].fillna(UNKNOWN),
        target=tasks["target"].fillna(NO_TARGET),
        ran=started.notna(),
        planned_wait_h=(tasks["planned_start_at"] - tasks["created_at"]).dt.total_seconds() / hours,
        wait_h=(started - tasks["created_at"]).dt.total_seconds() / hours,
        late_h=(started - tasks["planned_start_at"]).dt.total_seconds() / hours,
    )
    table = frame.groupby(["site", "target"]).agg(
        tasks=("task_index", "size"),
        ran=("ran", "sum"),
        planned_wait_h=("planned_wait_h", "median"),
        wait_h=("wait_h", "median"),
        late_h=("late_h", "median"),
        energy_j=("energy_j", lambda s: s.sum(min_count=1)),
        predicted_carbon_g=("predicted_carbon_g", lambda s: s.sum(min_count=1)),
        carbon_g=("carbon_g", lambda s: s.sum(min_count=1)),
    )
    table["ran"] = table["ran"].astype("int64")
    return table.reset_index()[columns]


def accuracy_by_target(predicted: pd.DataFrame) -> pd.DataFrame:
    """Prediction accuracy (``hpcqueue.ledger.accuracy``'s figures) per target, then over all targets (the
    row whose ``target`` is None)."""
    per_target = accuracy_table(predicted, "target")
    if predicted.empty:
        return per_target
    overall = accuracy_table(predicted.assign(target="all"), "target").assign(target=None)
    return pd.concat([per_target, overall], ignore_index=True)


def predictions(predicted: pd.DataFrame) -> pd.DataFrame:
    """Each compared task's predicted against measured generation energy, with its 90 % interval, the relative
    error (predicted / measured − 1), whether the measurement lies inside the interval (None without one),
    and the prediction's method and basis."""
    columns = [
        "batch_id",
        "task_index",
        "target",
        "model",
        "predicted_energy_j",
        "predicted_energy_low_j",
        "predicted_energy_high_j",
        "measured_energy_j",
        "error",
        "inside",
        "prediction_method",
        "prediction_basis",
    ]
    if predicted.empty:
        return pd.DataFrame(columns=columns)
    used = predicted[task_outcomes(predicted) == "tasks"]
    used = used[used["predicted_energy_j"].notna() & (used["generation_energy_j"] > 0)]
    frame = used.assign(measured_energy_j=used["generation_energy_j"].astype("float64"))
    frame["predicted_energy_j"] = frame["predicted_energy_j"].astype("float64")
    frame["error"] = frame["predicted_energy_j"] / frame["measured_energy_j"] - 1.0
    low, high = frame["predicted_energy_low_j"], frame["predicted_energy_high_j"]
    known = low.notna() & high.notna()
    inside = (low <= frame["measured_energy_j"]) & (frame["measured_energy_j"] <= high)
    frame["inside"] = np.where(known, inside, None)
    return frame[columns].reset_index(drop=True)


def accounts(tasks: pd.DataFrame) -> pd.DataFrame:
    """Per Slurm account (``(none)``: none recorded), heaviest IT energy first: tasks, their planned
    requests, output tokens, IT energy (with method), carbon and cost (None when none is accounted)."""
    columns = ["account", "tasks", "requests", "output_tokens", "energy_j", "energy_method", "carbon_g"]
    columns.append("cost_usd")
    if tasks.empty:
        return pd.DataFrame(columns=columns)
    frame = tasks.assign(account=tasks["account"].fillna(UNKNOWN))
    table = frame.groupby("account").agg(
        tasks=("task_index", "size"),
        requests=("n_requests", "sum"),
        output_tokens=("output_tokens", "sum"),
        energy_j=("energy_j", lambda s: s.sum(min_count=1)),
        energy_method=("energy_method", lambda s: combine_methods(s.tolist())),
        carbon_g=("carbon_g", lambda s: s.sum(min_count=1)),
        cost_usd=("cost_usd", lambda s: s.sum(min_count=1)),
    )
    table = table.reset_index().sort_values(["energy_j", "tasks"], ascending=False, na_position="last")
    return table[columns].reset_index(drop=True)


def lost(tasks: pd.DataFrame) -> pd.Series:
    """Tasks whose job ended without the worker's result: failed, yet never collected from a worker's
    ``metrics.json`` (status recorded them from the scheduler)."""
    return (tasks["state"] == "failed") & tasks["collected_at"].isna()


def task_states(tasks: pd.DataFrame) -> pd.DataFrame:
    """How many tasks are in each state, with the failed ones split into ``lost`` (no result from the worker)
    and the rest, and ``retried`` (tasks some of whose requests ran in an earlier attempt)."""
    counts = tasks["state"].value_counts()
    rows = [{"state": state, "tasks": int(count)} for state, count in counts.sort_index().items()]
    rows.append({"state": "of which lost", "tasks": int(lost(tasks).sum())})
    rows.append({"state": "retried (resumed)", "tasks": int((tasks["resumed_requests"] > 0).sum())})
    return pd.DataFrame(rows, columns=["state", "tasks"])


def request_statuses(requests: pd.DataFrame) -> pd.DataFrame:
    """How many requests have each status (pending, succeeded, failed, rejected)."""
    table = requests.groupby("status")["requests"].sum().astype("int64")
    return table.rename_axis("status").reset_index()


def error_codes(requests: pd.DataFrame) -> pd.DataFrame:
    """The failed and rejected requests by error code, most frequent first."""
    failed = requests[requests["status"].isin(("failed", "rejected"))]
    if failed.empty:
        return pd.DataFrame(columns=["status", "error_code", "requests"])
    table = (
        failed.assign(error_code=failed["error_code"].fillna(UNKNOWN))
        .groupby(["status", "error_code"])["requests"]
        .sum()
        .astype("int64")
        .reset_index()
    )
    return table.sort_values("requests", ascending=False).reset_index(drop=True)


def problem_tasks(tasks: pd.DataFrame, limit: int = 50) -> pd.DataFrame:
    """The failed, cancelled, lost and retried tasks (newest batches first, at most ``limit``): which, where,
    what happened (``problem``) and the recorded error."""
    columns = ["batch_id", "task_index", "target", "user", "state", "problem", "error"]
    flagged = tasks.assign(
        problem=np.select(
            [lost(tasks), tasks["state"].isin(("failed", "cancelled")), tasks["resumed_requests"] > 0],
            ["lost", tasks["state"], "retried"],
            default="",
        )
    )
    flagged = flagged[flagged["problem"] != ""]
    flagged = flagged.sort_values(["created_at", "task_index"], ascending=[False, True])
    return flagged[columns].head(limit).reset_index(drop=True)


def provenance(tasks: pd.DataFrame, predicted: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Where every figure comes from: ``meters`` (meter × energy method × attribution rule: tasks, energy),
    ``factors`` (each footprint factor's kind and source: tasks), ``run_times`` (where run intervals came
    from), ``predictions`` (prediction method × basis: tasks)."""
    with_energy = tasks[tasks["energy_j"].notna()]
    meters = (
        with_energy.assign(
            meter=with_energy["meter"].fillna(UNKNOWN),
            attribution_rule=with_energy["attribution_rule"].fillna(UNKNOWN),
        )
        .groupby(["meter", "energy_method", "attribution_rule"])
        .agg(tasks=("task_index", "size"), energy_j=("energy_j", "sum"))
        .reset_index()
    )
    factor_counts: Counter[tuple[str, str, str]] = Counter()
    accounted = tasks[tasks["accounted_at"].notna()]
    for kinds_text, sources_text in zip(accounted["factor_kinds"], accounted["factor_sources"], strict=True):
        kinds = _json_map(kinds_text)
        sources = _json_map(sources_text)
        for factor in sorted(set(kinds) | set(sources)):
            factor_counts[(factor, str(kinds.get(factor, UNKNOWN)), str(sources.get(factor, UNKNOWN)))] += 1
    factors = pd.DataFrame(
        [
            {"factor": factor, "kind": kind, "source": source, "tasks": count}
            for (factor, kind, source), count in sorted(factor_counts.items())
        ],
        columns=["factor", "kind", "source", "tasks"],
    )
    run_times = (
        accounted.assign(run_times_source=accounted["run_times_source"].fillna(UNKNOWN))
        .groupby("run_times_source")
        .size()
        .rename("tasks")
        .reset_index()
    )
    if predicted.empty:
        methods = pd.DataFrame(columns=["prediction_method", "prediction_basis", "tasks"])
    else:
        methods = (
            predicted.assign(
                prediction_method=predicted["prediction_method"].fillna(UNKNOWN),
                prediction_basis=predicted["prediction_basis"].fillna(UNKNOWN),
            )
            .groupby(["prediction_method", "prediction_basis"])
            .size()
            .rename("tasks")
            .reset_index()
        )
    return {"meters": meters, "factors": factors, "run_times": run_times, "predictions": methods}


def _json_map(text: Any) -> dict[str, Any]:
    if not isinstance(text, str) or not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
