"""The ledger database: opening (and migrating) it, and the writes that fill it.

Only the driver side writes here: ``submit`` records a batch and its plan (in time, with its baselines),
``dispatch`` records submissions, ``collect`` copies each finished task's files (``metrics.json``,
``output.jsonl``) into it, and accounting records what each task's energy cost at the hours it really ran.
Workers on the nodes never open the database; see docs/ledger.md for why.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import platformdirs
from sqlalchemy import create_engine, delete, event, func, insert, select, update
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError

from hpcqueue.errors import AccessError, BatchNotFoundError, LedgerError
from hpcqueue.fileio import PRIVATE_FILE_MODE, is_private, make_private_dir, tighten
from hpcqueue.ledger import accuracy, queries
from hpcqueue.ledger.accuracy import AccuracyKey
from hpcqueue.ledger.filters import LedgerFilter
from hpcqueue.ledger.rows import (
    ACCOUNTING_COLUMNS,
    REQUEST_COLUMNS,
    REQUEST_FOOTPRINT_UPDATE,
    REQUEST_UPDATE,
    REQUESTS_TABLE,
    TASK_COLUMNS,
    BatchInfo,
    accounting_values,
    bulk_insert,
    column_values,
    epoch_or_none,
    error_text,
    float_or_none,
    footprint_share_params,
    int_or_none,
    json_text,
    measurement_rows,
    optional_task_columns,
    output_params,
    plan_cost_row,
    rejected_row,
    request_columns,
    require_columns,
    row_dicts,
    str_or_none,
    utc_from_epoch,
)
from hpcqueue.ledger.schema import (
    FOOTPRINT_COLUMNS,
    BatchRow,
    MeasurementRow,
    PlanCostRow,
    RequestRow,
    TaskRow,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

#: The newest migration in ``migrations/versions``; a test keeps the two in step. Opening a ledger whose
#: ``alembic_version`` already says this skips loading Alembic altogether.
SCHEMA_REVISION = "0005"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
_INSERT_CHUNK_ROWS = 20_000
#: Task states whose planned start no longer matters: the task runs or ran.
_STARTED_STATES = ("running", "completed", "failed")
#: What a new attempt of a task clears: the accounting of the previous one, on the task and its requests.
_TASK_ACCOUNTING_CLEARED = dict.fromkeys((*ACCOUNTING_COLUMNS, "accounted_at"))
_REQUEST_ACCOUNTING_CLEARED = dict.fromkeys(FOOTPRINT_COLUMNS)


def default_db_url() -> str:
    """The SQLite ledger used when neither ``db_url`` nor ``HPCQUEUE_DB_URL`` names another database."""
    return f"sqlite:///{data_dir() / 'ledger.sqlite'}"


def mask_url(url: str | URL) -> str:
    """``url`` with its password replaced by ``***``, safe to print in an error message."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))


@dataclass(frozen=True)
class _TaskState:
    state: str
    ended_at: datetime | None
    collected_at: datetime | None


class Ledger:
    """An open ledger database (SQLite file or any SQLAlchemy URL, e.g. ``postgresql+psycopg://``).

    Opening migrates the schema to the newest revision. Every write method is one transaction.
    """

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_db_url()
        self.masked_url = mask_url(self.url)
        self.engine = self._create_engine()
        try:
            self._migrate()
        except BaseException:
            self.engine.dispose()
            raise

    # -- opening ------------------------------------------------------------------------------------------

    def _create_engine(self) -> Engine:
        try:
            parsed = make_url(self.url)
        except ArgumentError as exc:
            raise LedgerError(
                f"ledger URL {self.masked_url!r} is not a database URL ({exc}); expected for example "
                "'sqlite:////path/to/ledger.sqlite' or 'postgresql+psycopg://user:password@host:5432/db' "
                "(set HPCQUEUE_DB_URL or db_url in the config file)"
            ) from exc
        is_sqlite = parsed.get_backend_name() == "sqlite"
        if is_sqlite and parsed.database and parsed.database != ":memory:":
            path = Path(parsed.database).expanduser()
            try:
                _private_sqlite_file(path)
            except OSError as exc:
                raise LedgerError(
                    f"cannot create the directory {path.parent} for the ledger {self.masked_url}: {exc}; "
                    "choose a writable location with HPCQUEUE_DB_URL or db_url in the config file"
                ) from exc
        try:
            engine = create_engine(parsed)
        except (NoSuchModuleError, ModuleNotFoundError) as exc:
            hint = (
                "install the PostgreSQL driver: pip install 'hpcqueue[postgres]' (psycopg)"
                if parsed.get_backend_name() == "postgresql"
                else f"install the database driver for {parsed.drivername!r}"
            )
            raise LedgerError(f"cannot open the ledger {self.masked_url}: {exc}; {hint}") from exc
        if is_sqlite:
            _configure_sqlite(engine)
        return engine

    def _migrate(self) -> None:
        """Bring the schema to ``SCHEMA_REVISION``; an up-to-date database costs one small query."""
        with self._translate_errors("open"):
            with self.engine.connect() as conn:
                current = _current_revision(conn)
                owner = current is None or _owns_schema(conn)
                conn.rollback()
            if current == SCHEMA_REVISION:
                return
            if not owner:
                # A user of a shared ledger may not change its schema (and must not try: no DDL as a user).
                raise LedgerError(
                    f"the ledger {self.masked_url} is at revision {current}, this hpcqueue needs "
                    f"{SCHEMA_REVISION}, and only the owner of its tables may migrate it: ask the site's "
                    "database admin to run 'hpcqueue ledger init-site' with this hpcqueue (or, if the ledger "
                    "is newer than this hpcqueue, upgrade hpcqueue)"
                )
            from alembic import command
            from alembic.config import Config
            from alembic.util.exc import CommandError

            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
            with self._write() as conn:
                config.attributes["connection"] = conn
                try:
                    command.upgrade(config, "head")
                except CommandError as exc:
                    raise LedgerError(
                        f"cannot migrate the ledger {self.masked_url} (at revision {current!r}): {exc}; "
                        "a newer hpcqueue may have migrated it: upgrade hpcqueue, or point HPCQUEUE_DB_URL "
                        "at another database"
                    ) from exc

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({self.masked_url!r})"

    # -- transactions -------------------------------------------------------------------------------------

    @contextmanager
    def _translate_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except DBAPIError as exc:
            if isinstance(exc, IntegrityError):
                raise
            if getattr(exc.orig, "sqlstate", None) == "42501":  # insufficient_privilege, row-level security
                raise AccessError(_refusal(self.url, action, exc.orig)) from exc
            raise LedgerError(
                f"cannot {action} the ledger {self.masked_url}: {exc.orig}. Check that the database server "
                "is running and reachable from this host, the user name and password, that the database "
                "exists (and for SQLite that the file's directory is writable and not locked by a stuck "
                "process); the URL comes from HPCQUEUE_DB_URL or db_url in the config file"
            ) from exc

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A read transaction, for report queries and ad-hoc SQL (``conn.exec_driver_sql(...)``)."""
        with self._translate_errors("read"), self.engine.connect() as conn:
            try:
                yield conn
            finally:
                conn.rollback()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` on SQLite, so concurrent writers queue up)."""
        write_engine = self.engine.execution_options(hpcqueue_write=True)
        with self._translate_errors("write to"), write_engine.begin() as conn:
            yield conn

    # -- writes -------------------------------------------------------------------------------------------

    def record_batch(
        self,
        info: BatchInfo,
        tasks: pd.DataFrame,
        requests: pd.DataFrame,
        rejected: Sequence[Mapping[str, Any]] = (),
        plan_costs: Sequence[Mapping[str, Any]] = (),
    ) -> bool:
        """Record a new batch, its planned tasks and all its request lines (valid and rejected).

        One transaction. Returns False, changing nothing, when a batch with ``info.id`` is already recorded
        (submitting the same input again resumes the batch). ``tasks`` and ``requests`` are the planner's
        frames (columns in docs/ledger.md); NaN becomes NULL. A plan in time adds the optional task
        columns ``site``, ``planned_start_at``, ``planned_end_at`` (epoch seconds) and
        ``predicted_facility_energy_j``, ``predicted_carbon_g``, ``predicted_water_l``,
        ``predicted_cost_usd`` (absent: NULL). A prediction with its interval adds the optional task columns
        ``predicted_energy_low_j``, ``predicted_energy_high_j``, ``predicted_runtime_low_s``,
        ``predicted_runtime_high_s`` (the 90 % bounds), ``prediction_method`` (``profile``, ``analytic`` or
        ``calibrated``), ``prediction_basis`` (the profile, or the analytic model) and ``hardware`` (the
        target's hardware class); absent or NaN: NULL. ``rejected`` holds the invalid lines kept by
        ``--skip-invalid``: ``{"line", "id", "errors": [{"field", "message"}]}``. ``plan_costs`` holds the
        plan's predicted totals and its baselines': ``{"name", "role": "plan" | "baseline", "energy_j",
        "carbon_g", ...}`` (the columns of ``plan_costs``).
        """
        require_columns(tasks, TASK_COLUMNS, "tasks")
        require_columns(requests, REQUEST_COLUMNS, "requests")
        created_at = utc_from_epoch(info.created_at)
        settings = info.settings_json
        settings_text = settings if isinstance(settings, str) else json.dumps(dict(settings), sort_keys=True)
        batch_row = {
            "id": info.id,
            "created_at": created_at,
            "user": info.user,
            "host": info.host,
            "input_path": str(info.input_path),
            "input_sha256": info.input_sha256,
            "input_format": info.input_format,
            "model": info.model,
            "policy": info.policy,
            "settings_json": settings_text,
            "batch_dir": str(info.batch_dir),
            "n_requests": int(info.n_requests if info.n_requests is not None else len(requests)),
            "n_rejected": int(info.n_rejected if info.n_rejected is not None else len(rejected)),
            "plan_json": json_text(info.plan_json),
            "plan_start_at": utc_from_epoch(info.plan_start_at),
            "deadline_at": utc_from_epoch(info.deadline_at),
        }
        task_rows = row_dicts(
            {
                "batch_id": info.id,
                "task_index": column_values(tasks["task_index"], "int"),
                "target": column_values(tasks["target"], "str"),
                "executor": column_values(tasks["executor"], "str"),
                "state": "planned",
                "n_requests": column_values(tasks["n_requests"], "int"),
                "predicted_energy_j": column_values(tasks["predicted_energy_j"], "float"),
                "predicted_runtime_s": column_values(tasks["predicted_runtime_s"], "float"),
                **optional_task_columns(tasks),
            },
            len(tasks),
        )
        rejected_rows = [rejected_row(info.id, info.model, item) for item in rejected]
        cost_rows = [plan_cost_row(info.id, item) for item in plan_costs]
        try:
            with self._write() as conn:
                if conn.execute(select(BatchRow.id).where(BatchRow.id == info.id)).first() is not None:
                    return False
                conn.execute(insert(BatchRow), [batch_row])
                if task_rows:
                    conn.execute(insert(TaskRow), task_rows)
                for start in range(0, len(requests), _INSERT_CHUNK_ROWS):
                    chunk = requests.iloc[start : start + _INSERT_CHUNK_ROWS]
                    columns = request_columns(info.id, info.model, chunk)
                    bulk_insert(conn, REQUESTS_TABLE, columns, len(chunk))
                if rejected_rows:
                    conn.execute(insert(RequestRow), rejected_rows)
                if cost_rows:
                    conn.execute(insert(PlanCostRow), cost_rows)
        except IntegrityError as exc:
            if self.get_batch(info.id) is not None:
                return False  # recorded by a concurrent submit between our check and our insert
            raise LedgerError(
                f"cannot record batch {info.id} in {self.masked_url}: {exc.orig}; the plan has duplicate "
                "lines or task indices, a request names a task index that is not in the tasks frame, or "
                "plan_costs names a plan or baseline twice"
            ) from exc
        return True

    def record_submission(
        self,
        batch_id: str,
        task_indices: Iterable[int],
        *,
        job_id: str,
        executor: str,
        submitted_at: float | datetime,
        slurm_job_id: str | None = None,
    ) -> int:
        """Mark tasks as submitted under ``job_id``; returns how many task rows changed.

        Completed tasks are left alone. A failed or cancelled task that is submitted again (a retry) becomes
        ``submitted``; its previous attempt's end time is kept so that collecting that attempt's stale
        metrics.json again changes nothing.
        """
        indices = sorted({int(i) for i in task_indices})
        if not indices:
            return 0
        values = {
            "state": "submitted",
            "job_id": str(job_id),
            "executor": executor,
            "submitted_at": utc_from_epoch(submitted_at),
            "slurm_job_id": None if slurm_job_id is None else str(slurm_job_id),
            "error": None,
        }
        with self._write() as conn:
            if conn.execute(select(BatchRow.id).where(BatchRow.id == batch_id)).first() is None:
                raise BatchNotFoundError(
                    f"batch {batch_id} is not in the ledger {self.masked_url}; record it (submit) first"
                )
            changed = 0
            for start in range(0, len(indices), 10_000):
                part = indices[start : start + 10_000]
                result = conn.execute(
                    update(TaskRow)
                    .where(
                        TaskRow.batch_id == batch_id,
                        TaskRow.task_index.in_(part),
                        TaskRow.state != "completed",
                    )
                    .values(**values)
                )
                changed += result.rowcount
        return changed

    def update_tasks(self, batch_id: str, updates: Iterable[Mapping[str, Any]]) -> int:
        """Record where unfinished tasks stand: state, Slurm job and array ids, node, times, error, log tail.

        Each update is a mapping with ``task_index`` and any of those columns (times as epoch seconds).
        Completed tasks are never touched: their row comes from the worker's own metrics (``collect_task``).
        Returns the number of rows changed.
        """
        allowed = {
            "state",
            "slurm_job_id",
            "slurm_array_task_id",
            "node",
            "started_at",
            "ended_at",
            "error",
            "log_tail",
        }
        changed = 0
        with self._write() as conn:
            for item in updates:
                values = {k: v for k, v in item.items() if k in allowed and v is not None}
                for key in ("started_at", "ended_at"):
                    if key in values:
                        values[key] = utc_from_epoch(values[key])
                if not values:
                    continue
                result = conn.execute(
                    update(TaskRow)
                    .where(
                        TaskRow.batch_id == batch_id,
                        TaskRow.task_index == int(item["task_index"]),
                        TaskRow.state != "completed",
                    )
                    .values(**values)
                )
                changed += result.rowcount
        return changed

    def update_planned_starts(self, batch_id: str, starts: Mapping[int, tuple[float, float | None]]) -> int:
        """Move the planned start (and end) of tasks that have not started: ``{task_index: (start, end)}``, in
        epoch seconds (a re-plan, or a retry placed again in time).

        An end of None means the end is not known: ``planned_end_at`` becomes NULL rather than keep an end
        that belonged to the old start. Running, completed and failed tasks are never touched. One
        transaction; returns the number of task rows changed.
        """
        changed = 0
        with self._write() as conn:
            for index, (start, end) in sorted(starts.items()):
                result = conn.execute(
                    update(TaskRow)
                    .where(
                        TaskRow.batch_id == batch_id,
                        TaskRow.task_index == int(index),
                        TaskRow.state.not_in(_STARTED_STATES),
                    )
                    .values(planned_start_at=utc_from_epoch(start), planned_end_at=utc_from_epoch(end))
                )
                changed += result.rowcount
        return changed

    def task_states(self, batch_id: str) -> dict[int, _TaskState]:
        """State, end time and collection time of each task of a batch (what ``collect`` checks first)."""
        with self.connect() as conn:
            rows = conn.execute(
                select(TaskRow.task_index, TaskRow.state, TaskRow.ended_at, TaskRow.collected_at).where(
                    TaskRow.batch_id == batch_id
                )
            ).all()
        return {row.task_index: _TaskState(row.state, row.ended_at, row.collected_at) for row in rows}

    def collect_task(
        self,
        batch_id: str,
        task_index: int,
        metrics: Mapping[str, Any],
        outputs: Iterable[Mapping[str, Any]],
        *,
        log_tail: str | None = None,
    ) -> bool:
        """Copy one finished task (its metrics.json and output.jsonl records) into the ledger.

        One transaction. Returns False, changing nothing, when this attempt is already collected: a completed
        task, or a failed one whose metrics carry the same end time. A failed task (no outputs) is marked
        failed with its error and its requests stay pending, since a retry may still run them. The hardware
        class the worker ran as (``hardware`` in metrics.json) fills ``tasks.hardware`` where the plan did
        not record one.
        """
        state = metrics.get("state")
        if state not in ("completed", "failed"):
            raise LedgerError(
                f"batch {batch_id} task {task_index}: metrics.json has state {state!r}; "
                "expected 'completed' or 'failed'"
            )
        for key, expected in (("batch_id", batch_id), ("task_index", task_index)):
            if key in metrics and metrics[key] != expected:
                raise LedgerError(
                    f"batch {batch_id} task {task_index}: metrics.json says {key} {metrics[key]!r}; "
                    "the file belongs to another task (check the batch directory)"
                )
        ended_at = utc_from_epoch(metrics.get("ended_at"))
        method = metrics.get("energy_method")
        meter = metrics.get("meter")
        rule = metrics.get("attribution_rule")
        now = datetime.now(timezone.utc)
        task_values = {
            "state": state,
            "node": metrics.get("host"),
            "slurm_job_id": str_or_none(metrics.get("slurm_job_id")),
            "slurm_array_task_id": int_or_none(metrics.get("slurm_array_task_id")),
            "started_at": utc_from_epoch(metrics.get("started_at")),
            "ended_at": ended_at,
            "n_succeeded": int_or_none(metrics.get("n_succeeded")),
            "n_failed": int_or_none(metrics.get("n_failed")),
            "energy_j": float_or_none(metrics.get("energy_j")),
            "energy_method": method,
            "meter": meter,
            "attribution_rule": rule,
            "engine": str_or_none(metrics.get("engine")),
            "engine_version": str_or_none(metrics.get("engine_version")),
            "error": error_text(metrics.get("error")),
            "log_tail": log_tail if log_tail is not None else metrics.get("log_tail"),
            "collected_at": now,
            **_TASK_ACCOUNTING_CLEARED,  # a new attempt is accounted again (record_accounting)
        }
        hardware = str_or_none(metrics.get("hardware"))
        if hardware is not None:  # the plan's hardware, when it recorded one, stays
            task_values["hardware"] = func.coalesce(TaskRow.hardware, hardware)
        new_measurements = measurement_rows(batch_id, task_index, metrics.get("measurements") or [])
        with self._write() as conn:
            # FOR UPDATE: a concurrent collect of the same task waits here until this one commits, then
            # finds it collected (SQLite's write transaction already queues the writers).
            row = conn.execute(
                select(TaskRow.state, TaskRow.ended_at, TaskRow.collected_at, TaskRow.accounted_at)
                .where(TaskRow.batch_id == batch_id, TaskRow.task_index == task_index)
                .with_for_update()
            ).first()
            if row is None:
                raise LedgerError(
                    f"batch {batch_id} has no task {task_index} in the ledger {self.masked_url}; "
                    "was the batch recorded there (same HPCQUEUE_DB_URL as at submit)?"
                )
            if row.collected_at is not None and (row.state == "completed" or row.ended_at == ended_at):
                return False
            request_params: list[dict[str, Any]] = []
            if state == "completed":
                task_lines = set(
                    conn.execute(
                        select(RequestRow.line).where(
                            RequestRow.batch_id == batch_id, RequestRow.task_index == task_index
                        )
                    ).scalars()
                )
                for record in outputs:
                    params = output_params(record, method, meter, rule)
                    if params["b_line"] not in task_lines:
                        raise LedgerError(
                            f"batch {batch_id} task {task_index}: output.jsonl has line {params['b_line']}, "
                            "which the plan puts in another task or not at all (check tasks/"
                            f"{task_index:06d}/output.jsonl)"
                        )
                    request_params.append(params)
            conn.execute(
                update(TaskRow)
                .where(TaskRow.batch_id == batch_id, TaskRow.task_index == task_index)
                .values(**task_values)
            )
            if row.accounted_at is not None:
                conn.execute(
                    update(RequestRow)
                    .where(RequestRow.batch_id == batch_id, RequestRow.task_index == task_index)
                    .values(**_REQUEST_ACCOUNTING_CLEARED)
                )
            if request_params:
                conn.execute(REQUEST_UPDATE.where(RequestRow.batch_id == batch_id), request_params)
            conn.execute(
                delete(MeasurementRow).where(
                    MeasurementRow.batch_id == batch_id, MeasurementRow.task_index == task_index
                )
            )
            if new_measurements:
                conn.execute(insert(MeasurementRow), new_measurements)
        return True

    # -- accounting ---------------------------------------------------------------------------------------

    def tasks_to_account(self, batch_id: str) -> list[dict[str, Any]]:
        """The collected tasks of a batch with energy but no accounting yet (``accounted_at`` NULL).

        Each a dict of ``task_index``, ``target``, ``site``, ``executor``, ``job_id``, ``slurm_job_id``,
        ``slurm_array_task_id``, ``state``, ``started_at``, ``ended_at`` (the worker's clock), ``energy_j``,
        ``energy_method``, ``collected_at``; times as epoch seconds or None.
        """
        with self.connect() as conn:
            found = conn.execute(
                select(
                    TaskRow.task_index,
                    TaskRow.target,
                    TaskRow.site,
                    TaskRow.executor,
                    TaskRow.job_id,
                    TaskRow.slurm_job_id,
                    TaskRow.slurm_array_task_id,
                    TaskRow.state,
                    TaskRow.started_at,
                    TaskRow.ended_at,
                    TaskRow.energy_j,
                    TaskRow.energy_method,
                    TaskRow.collected_at,
                )
                .where(
                    TaskRow.batch_id == batch_id,
                    TaskRow.collected_at.is_not(None),
                    TaskRow.accounted_at.is_(None),
                    TaskRow.energy_j.is_not(None),
                )
                .order_by(TaskRow.task_index)
            ).mappings()
            return [
                {
                    **row,
                    **{key: epoch_or_none(row[key]) for key in ("started_at", "ended_at", "collected_at")},
                }
                for row in found
            ]

    def record_accounting(self, batch_id: str, rows: Sequence[Mapping[str, Any]]) -> int:
        """Record what each task's energy cost at the hours it really ran, and each request's share.

        Each row has ``task_index`` and the accounting: ``run_started_at``, ``run_ended_at`` (epoch
        seconds), ``run_times_source`` (``sacct`` or ``worker``), the site's factors over the run (``pue``,
        ``carbon_g_per_kwh``, ``temperature_c``, ``price_usd_per_mwh``, ``wue_l_per_kwh``,
        ``offsite_water_l_per_kwh``), the footprint (``facility_energy_j``, ``carbon_g``, ``water_onsite_l``,
        ``water_offsite_l``, ``cost_usd``) and ``factor_kinds`` / ``factor_sources`` (mappings stored as
        JSON). A row replaces the task's accounting whole: what it leaves out becomes NULL.
        ``accounted_at`` becomes now.

        The footprint is then spread over the task's requests as its energy was: a request's share is its
        ``energy_j`` over the summed ``energy_j`` of the task's requests (NULL where the request has no
        energy, the task's figure is unknown or the requests' energy sums to 0). One transaction; running it
        again with the same rows gives the same figures. Returns the number of task rows changed.
        """
        now = datetime.now(timezone.utc)
        values = {int(row["task_index"]): accounting_values(row) for row in rows}
        if not values:
            return 0
        changed = 0
        indices = sorted(values)
        with self._write() as conn:
            for index in indices:
                result = conn.execute(
                    update(TaskRow)
                    .where(TaskRow.batch_id == batch_id, TaskRow.task_index == index)
                    .values(**values[index], accounted_at=now)
                )
                changed += result.rowcount
            energy: dict[int, float | None] = {}
            for start in range(0, len(indices), 10_000):
                part = indices[start : start + 10_000]
                sums = conn.execute(
                    select(RequestRow.task_index, func.sum(RequestRow.energy_j))
                    .where(RequestRow.batch_id == batch_id, RequestRow.task_index.in_(part))
                    .group_by(RequestRow.task_index)
                )
                energy.update((index, joules) for index, joules in sums if index is not None)
            params = [footprint_share_params(i, values[i], energy.get(i)) for i in indices]
            conn.execute(REQUEST_FOOTPRINT_UPDATE.where(RequestRow.batch_id == batch_id), params)
        return changed

    # -- reads (see queries.py) ---------------------------------------------------------------------------

    def get_batch(self, batch_id: str) -> BatchInfo | None:
        """The recorded batch with this id, or None."""
        return queries.get_batch(self, batch_id)

    def batch_report(self, batch_id: str) -> dict[str, Any]:
        """Counts, tokens and energy of one batch; see :func:`hpcqueue.ledger.queries.batch_report`."""
        return queries.batch_report(self, batch_id)

    def summary(
        self,
        by: Literal["target", "model", "day", "user"] = "target",
        *,
        since: datetime | None = None,
        where: LedgerFilter | None = None,
    ) -> pd.DataFrame:
        """Totals over the batches ``where`` selects (default: all) grouped by ``by``; see
        :func:`hpcqueue.ledger.queries.summary`."""
        return queries.summary(self, by, since=since, where=where)

    def accuracy(
        self, by: AccuracyKey = "target", *, batch: str | None = None, since: datetime | None = None
    ) -> pd.DataFrame:
        """Predicted against measured energy and runtime of the completed, measured tasks, grouped by ``by``
        (target, model, hardware, day or batch); see :func:`hpcqueue.ledger.accuracy.accuracy`."""
        return accuracy.accuracy(self, by, batch=batch, since=since)

    def measured_tasks(
        self, target: str, model: str | None = None, engine: str | None = None
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The measured tasks of ``target`` and their requests, for a calibration; see
        :func:`hpcqueue.ledger.accuracy.measured_tasks`."""
        return accuracy.measured_tasks(self, target=target, model=model, engine=engine)

    def list_batches(self, limit: int = 20) -> pd.DataFrame:
        """The newest batches first; see :func:`hpcqueue.ledger.queries.list_batches`."""
        return queries.list_batches(self, limit)

    def plan_costs(self, batch_id: str) -> list[dict[str, Any]]:
        """The predicted totals of the batch's plan and of its baselines; see
        :func:`hpcqueue.ledger.queries.plan_costs`."""
        return queries.plan_costs(self, [batch_id]).get(batch_id, [])

    def plan_report(self, batch_id: str) -> dict[str, Any] | None:
        """The plan report recorded with the batch (``plan_json``, parsed); None without one."""
        return queries.plan_report(self, batch_id)

    def table_counts(self) -> dict[str, int]:
        """Row count of each ledger table."""
        return queries.table_counts(self)


# -- helpers ------------------------------------------------------------------------------------------------


def data_dir() -> Path:
    """hpcqueue's own data directory (the default ledger and batch root live in it)."""
    return Path(platformdirs.user_data_dir("hpcqueue"))


def _private_sqlite_file(path: Path) -> None:
    """Make the SQLite ledger owner-only before SQLite opens it: the file 0600 (SQLite gives its journal the
    same mode), created in a 0700 directory when hpcqueue creates the directory, and hpcqueue's own data
    directory 0700. A ledger an older hpcqueue left readable by others is tightened, with a one-line notice.
    A directory the user chose for the ledger keeps its own mode: the file is what is made private."""
    if not path.parent.exists():
        make_private_dir(path.parent)
    elif path.parent.resolve() == data_dir().resolve() and not is_private(path.parent):
        tighten(path.parent)
        log.warning(
            "made hpcqueue's data directory %s owner-only: it holds the ledger and batches", path.parent
        )
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
        return  # an empty file is a new database to SQLite
    except FileExistsError:
        pass
    loose = [p for p in _sqlite_files(path) if not is_private(p)]
    if loose and sum(tighten(p) for p in loose):
        log.warning(
            "the ledger %s was open to other users: made it owner-only (0600)",
            path,
        )


def _sqlite_files(path: Path) -> list[Path]:
    """The database file and the journal files SQLite keeps next to it."""
    return [path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))]


def _configure_sqlite(engine: Engine) -> None:
    """Foreign keys on, a 30 s busy timeout, and ``BEGIN IMMEDIATE`` for writes.

    pysqlite's own transaction handling is switched off so that SQLAlchemy's ``begin`` event decides how a
    transaction starts: a write transaction takes the write lock at once and waits (busy timeout) for another
    writer instead of failing on lock upgrade.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("hpcqueue_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _owns_schema(conn: Connection) -> bool:
    """Whether this connection may migrate the ledger: always on SQLite; on PostgreSQL, if its role is (or
    acts as) the owner of ``alembic_version``, as the one who created the tables is."""
    if conn.dialect.name != "postgresql":
        return True
    from sqlalchemy import text

    owns = conn.execute(
        text(
            "SELECT pg_has_role(current_user, tableowner, 'USAGE') FROM pg_tables"
            " WHERE schemaname = current_schema() AND tablename = 'alembic_version'"
        )
    ).scalar()
    return owns is not False


def _refusal(url: str, action: str, error: object) -> str:
    """Why PostgreSQL refused a user, and what to do: the role is not a ledger user, or (row-level security)
    the row names another user than the role."""
    import getpass

    role = make_url(url).username or os.environ.get("PGUSER") or getpass.getuser()
    message = f"cannot {action} the ledger {mask_url(url)} as role {role!r}: {error}".rstrip()
    if "row-level security" in str(error):
        return (
            f"{message}. On a shared ledger each user writes only rows whose batch names them: the batch's "
            f"user (the Unix user {getpass.getuser()!r}) must be the database role you connect as. Connect "
            "as your own role (peer authentication: a URL without a user name, host = the socket directory, "
            "for example 'postgresql+psycopg:///hpcqueue?host=/var/run/postgresql'), see docs/ledger.md, "
            "'Access on a shared cluster'"
        )
    return (
        f"{message}. The role is not a user of this shared ledger: the site's database admin adds it with "
        f"'hpcqueue ledger init-site --user {role}' (see docs/ledger.md, 'Access on a shared cluster')"
    )


def _current_revision(conn: Connection) -> str | None:
    """The ``alembic_version`` of the database, None for a new (empty) database."""
    from sqlalchemy import inspect, text

    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
