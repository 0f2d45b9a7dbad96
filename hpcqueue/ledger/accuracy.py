"""How good were the predictions? Each task's predicted energy and runtime against what the ledger measured.

At submit every task records its predicted energy and runtime, their 90 % prediction interval, the method
behind them (``profile``, ``analytic``, ``calibrated``) and its basis; collect records what the task measured.
:func:`accuracy` sets the two side by side, grouped by target, model, hardware class, day or batch.

**Which tasks count.** Only completed tasks whose energy was *measured* (``tasks.energy_method`` is
``measured``). A task whose energy was estimated (or mixed) is counted in ``excluded_estimated`` and never
compared: an estimate checked against an estimate proves nothing. The other tasks with a prediction are
counted by why they were left out: ``excluded_unfinished`` (no measurement yet: planned, submitted, running,
or completed without energy), ``excluded_failed`` (a failed or cancelled attempt measured only part of the
work) and ``excluded_partial`` (completed and measured, but its generation batches were not all measured in
this attempt: it resumed after an interruption, or its meter gave no per-batch readings).

**What is compared.** The prediction is the sum of the task's requests' predictions, and those are per
``generate`` call — a profile measures generate calls, divided by the call's batch size — so the prediction
covers the generation work, neither loading the model nor starting the worker. It is therefore compared with
the same quantity measured: the energy of the task's ``generation_batch`` measurements (all domains) and the
sum of their durations (each call's wall time, once per call whatever its number of domains). What the whole
task metered — model load and set-up included — is given beside it (``task_energy_j``, ``task_runtime_s``),
so what the prediction leaves out stays visible.

**The figures**, for energy and for runtime alike (``energy_*``, ``runtime_*``), over the compared tasks that
have both a prediction and a positive measurement:

- ``mape``: mean of |predicted / measured − 1|;
- ``bias``: median of predicted / measured − 1 (negative: predictions too low);
- ``coverage``: the share of tasks whose measurement lies within their interval [low, high], over the
  ``with_interval`` tasks that have one (about 0.9 when the 90 % intervals are honest);
- the totals predicted and measured, and their ``ratio``.

The database does the heavy work (the tasks' generation measurements summed in SQL); pandas regroups the
per-task rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

import numpy as np
import pandas as pd
from sqlalchemy import and_, func, or_, select
from sqlalchemy.sql import ColumnElement

from hpcqueue.errors import BatchNotFoundError, ConfigError
from hpcqueue.ledger.filters import LedgerFilter
from hpcqueue.ledger.queries import LedgerReader, result_frame
from hpcqueue.ledger.schema import BatchRow, MeasurementRow, RequestRow, TaskRow

AccuracyKey = Literal["target", "model", "hardware", "day", "batch"]
ACCURACY_KEYS: tuple[str, ...] = get_args(AccuracyKey)
#: Why a task with a prediction was not compared (see the module docstring), in the order reports list them.
EXCLUSIONS = ("excluded_estimated", "excluded_unfinished", "excluded_failed", "excluded_partial")
#: Each exclusion as a report says it.
EXCLUSION_REASONS = {
    "excluded_estimated": "energy estimated, not measured (an estimate checked against an estimate proves "
    "nothing: run on a node whose RAPL or NVML counters can be read)",
    "excluded_unfinished": "no measurement yet (not run, or not collected: `hpcqueue status` collects)",
    "excluded_failed": "a failed or cancelled attempt (it measured only part of the work)",
    "excluded_partial": "measured in part (resumed after an interruption, or no per-batch readings)",
}
#: The figures of one quantity (``energy_`` or ``runtime_`` prefixed), the totals ending in its unit.
_FIGURES = ("tasks", "mape", "bias", "coverage", "with_interval", "predicted", "measured", "ratio")
ACCURACY_COLUMNS: tuple[str, ...] = (
    "tasks",
    *EXCLUSIONS,
    *(f"energy_{f}" + ("_j" if f in ("predicted", "measured") else "") for f in _FIGURES),
    *(f"runtime_{f}" + ("_s" if f in ("predicted", "measured") else "") for f in _FIGURES),
    "task_energy_j",
    "task_runtime_s",
    "methods",
)
#: The key of tasks that have no value for it (a hardware class an older hpcqueue did not record, a day for a
#: task that has not run).
NO_VALUE = "(none)"
_NOT_RUN_STATES = ("planned", "submitted", "running")
_STOPPED_STATES = ("failed", "cancelled")
#: Each quantity: the prediction's column, its bounds' columns, the measurement's column (in the task frame).
_QUANTITIES = {
    "energy": (
        "predicted_energy_j",
        "predicted_energy_low_j",
        "predicted_energy_high_j",
        "generation_energy_j",
    ),
    "runtime": (
        "predicted_runtime_s",
        "predicted_runtime_low_s",
        "predicted_runtime_high_s",
        "generation_runtime_s",
    ),
}


def accuracy(
    ledger: LedgerReader,
    by: AccuracyKey = "target",
    *,
    batch: str | None = None,
    since: datetime | None = None,
    where: LedgerFilter | None = None,
) -> pd.DataFrame:
    """Predicted against measured energy and runtime, one row per ``by`` value (see the module docstring).

    ``by``: ``target``, ``model`` (the batch's model), ``hardware`` (the target's hardware class), ``day``
    (UTC date the task ended, else was collected) or ``batch`` (its id). ``batch`` keeps one batch (raises
    BatchNotFoundError for an unknown id); ``since`` keeps batches submitted at or after it; ``where`` keeps
    the tasks a report's filter selects (its batches, targets and accounts). Only tasks with a prediction
    (energy or runtime) are counted. Columns: the key, then ``ACCURACY_COLUMNS``: ``tasks``
    (compared), the ``EXCLUSIONS`` counts, the energy and runtime figures (NaN where no task gives one),
    ``task_energy_j`` and ``task_runtime_s`` (the compared tasks' whole metered energy and wall time) and
    ``methods`` (the prediction methods of the compared tasks, sorted). Rows are sorted by the key; a group
    whose tasks were all excluded has its counts and NaN figures.
    """
    if by not in ACCURACY_KEYS:
        raise ConfigError(f"cannot group accuracy by {by!r}; choose one of {', '.join(ACCURACY_KEYS)}")
    return accuracy_table(task_frame(ledger, batch=batch, since=since, where=where), by)


def task_frame(
    ledger: LedgerReader,
    *,
    batch: str | None = None,
    since: datetime | None = None,
    where: LedgerFilter | None = None,
) -> pd.DataFrame:
    """One row per task with a prediction: its key values, state, energy and method, the prediction with its
    interval and method, and, for completed measured tasks, the energy and duration of its generation batches
    (``generation_energy_j``, ``generation_runtime_s``, ``generation_calls``, ``untimed_calls``) and how many
    of its requests ran in an earlier attempt (``resumed_requests``). ``where`` narrows the tasks as a
    report's filter does. What :func:`accuracy_table` reads."""
    scope: list[ColumnElement[bool]] = [
        or_(TaskRow.predicted_energy_j.is_not(None), TaskRow.predicted_runtime_s.is_not(None))
    ]
    if batch is not None:
        scope.append(TaskRow.batch_id == batch)
    if since is not None:
        scope.append(BatchRow.created_at >= since)
    if where is not None:  # every query below joins the task to its batch
        scope.extend([*where.batch_clauses(), *where.task_clauses()])
    compared = [*scope, TaskRow.state == "completed", TaskRow.energy_method == "measured"]
    same_task = and_(
        TaskRow.batch_id == MeasurementRow.batch_id, TaskRow.task_index == MeasurementRow.task_index
    )
    # One row per generation batch: its domains' energy summed, its duration (the same in every domain) once.
    calls = (
        select(
            MeasurementRow.batch_id,
            MeasurementRow.task_index,
            func.sum(MeasurementRow.energy_j).label("energy_j"),
            func.max(MeasurementRow.duration_s).label("duration_s"),
        )
        .join(TaskRow, same_task)
        .join(BatchRow, BatchRow.id == TaskRow.batch_id)
        .where(MeasurementRow.scope == "generation_batch", *compared)
        .group_by(MeasurementRow.batch_id, MeasurementRow.task_index, MeasurementRow.seq)
        .subquery()
    )
    generation = select(
        calls.c.batch_id,
        calls.c.task_index,
        func.sum(calls.c.energy_j).label("generation_energy_j"),
        func.sum(calls.c.duration_s).label("generation_runtime_s"),
        func.count().label("generation_calls"),
        (func.count() - func.count(calls.c.duration_s)).label("untimed_calls"),
    ).group_by(calls.c.batch_id, calls.c.task_index)
    # A resumed attempt keeps the records of the interrupted one, whose generation batches it did not meter:
    # their requests started before this attempt did.
    resumed = (
        select(RequestRow.batch_id, RequestRow.task_index, func.count().label("resumed_requests"))
        .join(
            TaskRow,
            and_(TaskRow.batch_id == RequestRow.batch_id, TaskRow.task_index == RequestRow.task_index),
        )
        .join(BatchRow, BatchRow.id == TaskRow.batch_id)
        .where(RequestRow.started_at < TaskRow.started_at, *compared)
        .group_by(RequestRow.batch_id, RequestRow.task_index)
    )
    with ledger.connect() as conn:
        if (
            batch is not None
            and conn.execute(select(BatchRow.id).where(BatchRow.id == batch)).first() is None
        ):
            raise BatchNotFoundError(
                f"batch {batch} is not in the ledger {ledger.masked_url}; `hpcqueue ledger batches` "
                "lists the recorded batches"
            )
        tasks = result_frame(
            conn.execute(
                select(
                    TaskRow.batch_id,
                    TaskRow.task_index,
                    TaskRow.target,
                    BatchRow.model,
                    TaskRow.hardware,
                    TaskRow.engine,
                    TaskRow.state,
                    TaskRow.started_at,
                    TaskRow.ended_at,
                    TaskRow.collected_at,
                    TaskRow.energy_j,
                    TaskRow.energy_method,
                    TaskRow.predicted_energy_j,
                    TaskRow.predicted_energy_low_j,
                    TaskRow.predicted_energy_high_j,
                    TaskRow.predicted_runtime_s,
                    TaskRow.predicted_runtime_low_s,
                    TaskRow.predicted_runtime_high_s,
                    TaskRow.prediction_method,
                    TaskRow.prediction_basis,
                )
                .join(BatchRow, BatchRow.id == TaskRow.batch_id)
                .where(*scope)
                .order_by(TaskRow.batch_id, TaskRow.task_index)
            )
        )
        measured = result_frame(conn.execute(generation))
        earlier = result_frame(conn.execute(resumed))
    key = ["batch_id", "task_index"]
    tasks = tasks.merge(measured, on=key, how="left").merge(earlier, on=key, how="left")
    for column in ("generation_calls", "untimed_calls", "resumed_requests"):
        tasks[column] = tasks[column].fillna(0).astype("int64")
    for column in ("started_at", "ended_at", "collected_at"):
        tasks[column] = pd.to_datetime(tasks[column], utc=True)
    return tasks


def accuracy_table(tasks: pd.DataFrame, by: AccuracyKey) -> pd.DataFrame:
    """The accuracy rows of a :func:`task_frame` (pure: see :func:`accuracy` for the columns)."""
    if tasks.empty:
        return pd.DataFrame(columns=[by, *ACCURACY_COLUMNS])
    tasks = tasks.assign(**{by: _key(tasks, by)}, outcome=_outcomes(tasks))
    groups = tasks.groupby(by, sort=True)
    table = pd.DataFrame(index=groups.size().index)
    outcome = tasks["outcome"]
    for name in ("tasks", *EXCLUSIONS):
        table[name] = (outcome == name).groupby(tasks[by]).sum().astype("int64")
    used = tasks[outcome == "tasks"]
    for quantity, (predicted, low, high, measured) in _QUANTITIES.items():
        table = table.join(_figures(used, by, quantity, predicted, low, high, measured))
        for count in (f"{quantity}_tasks", f"{quantity}_with_interval"):  # groups with no compared task
            table[count] = table[count].fillna(0).astype("int64")
    wall_s = (used["ended_at"] - used["started_at"]).dt.total_seconds()
    table["task_energy_j"] = used["energy_j"].astype("float64").groupby(used[by]).sum(min_count=1)
    table["task_runtime_s"] = wall_s.groupby(used[by]).sum(min_count=1)
    methods = used.groupby(by)["prediction_method"].agg(
        lambda s: sorted({m for m in s if isinstance(m, str)})
    )
    table["methods"] = [methods.get(key, []) for key in table.index]
    return table.rename_axis(by).reset_index()[[by, *ACCURACY_COLUMNS]]


def task_outcomes(tasks: pd.DataFrame) -> np.ndarray:
    """For each row of a :func:`task_frame`: ``tasks`` when it is compared, else the ``EXCLUSIONS`` name of
    why not (what :func:`accuracy_table` counts)."""
    return _outcomes(tasks)


def _key(tasks: pd.DataFrame, by: AccuracyKey) -> pd.Series:
    if by == "batch":
        return tasks["batch_id"]
    if by == "day":
        when = tasks["ended_at"].fillna(tasks["collected_at"])
        return when.dt.strftime("%Y-%m-%d").fillna(NO_VALUE)
    return tasks[by].fillna(NO_VALUE).astype(str)


def _outcomes(tasks: pd.DataFrame) -> np.ndarray:
    """``tasks`` (compared) or the exclusion of each task, decided in this order: not run (or completed
    without energy), energy not measured, a failed or cancelled attempt, generation measured in part."""
    state = tasks["state"]
    has_energy = tasks["energy_j"].notna()
    unfinished = state.isin(_NOT_RUN_STATES) | ((state == "completed") & ~has_energy)
    estimated = has_energy & (tasks["energy_method"] != "measured")
    stopped = state.isin(_STOPPED_STATES)
    partial = (tasks["generation_calls"] == 0) | (tasks["resumed_requests"] > 0)
    return np.select(
        [unfinished, estimated, stopped, partial],
        ["excluded_unfinished", "excluded_estimated", "excluded_failed", "excluded_partial"],
        default="tasks",
    )


def _figures(
    used: pd.DataFrame, by: str, quantity: str, predicted: str, low: str, high: str, measured: str
) -> pd.DataFrame:
    """The ``quantity``'s figures per group over the compared tasks with a prediction and a positive
    measurement (a runtime with an untimed generation batch has none)."""
    unit = "_j" if quantity == "energy" else "_s"
    value = used[measured].astype("float64")
    if quantity == "runtime":
        value = value.where(used["untimed_calls"] == 0)
    guess = used[predicted].astype("float64")
    ok = guess.notna() & (value > 0)
    value, guess = value.where(ok), guess.where(ok)
    error = guess / value - 1.0
    lo, hi = used[low].astype("float64"), used[high].astype("float64")
    with_interval = ok & lo.notna() & hi.notna()
    inside = ((lo <= value) & (value <= hi)).astype("float64").where(with_interval)
    keys = used[by]
    figures = pd.DataFrame(
        {
            f"{quantity}_tasks": ok.groupby(keys).sum().astype("int64"),
            f"{quantity}_mape": error.abs().groupby(keys).mean(),
            f"{quantity}_bias": error.groupby(keys).median(),
            f"{quantity}_coverage": inside.groupby(keys).mean(),
            f"{quantity}_with_interval": with_interval.groupby(keys).sum().astype("int64"),
            f"{quantity}_predicted{unit}": guess.groupby(keys).sum(min_count=1),
            f"{quantity}_measured{unit}": value.groupby(keys).sum(min_count=1),
        }
    )
    figures[f"{quantity}_ratio"] = (
        figures[f"{quantity}_predicted{unit}"] / figures[f"{quantity}_measured{unit}"]
    )
    return figures


def measured_tasks(
    ledger: LedgerReader, *, target: str, model: str | None = None, engine: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The evidence a calibration of ``target`` fits on: the tasks :func:`accuracy` compares (completed,
    energy measured, every generation call metered) of that target (and ``model``, and ``engine``: tasks
    recorded without one ran before engines were recorded, with transformers), and their requests.

    Returns ``(tasks, requests)``: tasks with ``batch_id``, ``task_index``, ``energy_j`` and ``runtime_s``
    (the generation energy and time); requests with ``batch_id``, ``task_index``, ``input_tokens`` and
    ``output_tokens`` (generated), for the requests of those tasks that succeeded."""
    frame = task_frame(ledger)
    frame = frame[(frame["target"] == target) & (_outcomes(frame) == "tasks")]
    if model is not None:
        frame = frame[frame["model"] == model]
    if engine is not None:
        frame = frame[frame["engine"].fillna("transformers") == engine]
    frame = frame[frame["generation_runtime_s"].notna() & (frame["untimed_calls"] == 0)]
    tasks = pd.DataFrame(
        {
            "batch_id": frame["batch_id"].astype(str),
            "task_index": frame["task_index"].astype("int64"),
            "energy_j": frame["generation_energy_j"].astype(float),
            "runtime_s": frame["generation_runtime_s"].astype(float),
        }
    ).reset_index(drop=True)
    with ledger.connect() as conn:
        requests = result_frame(
            conn.execute(
                select(
                    RequestRow.batch_id,
                    RequestRow.task_index,
                    RequestRow.input_tokens,
                    RequestRow.output_tokens,
                )
                .join(
                    TaskRow,
                    and_(
                        TaskRow.batch_id == RequestRow.batch_id, TaskRow.task_index == RequestRow.task_index
                    ),
                )
                .where(TaskRow.target == target, RequestRow.status == "succeeded")
            )
        )
    keys = tasks[["batch_id", "task_index"]]
    requests = requests.astype({"batch_id": str}).merge(keys, on=["batch_id", "task_index"], how="inner")
    return tasks, requests.dropna(subset=["input_tokens", "output_tokens"]).reset_index(drop=True)
