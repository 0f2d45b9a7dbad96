"""The ledger database: opening (and migrating) it, and the writes that fill it.

Only the driver side writes here: ``submit`` records a batch and its plan, ``dispatch`` records submissions,
and ``collect`` copies each finished task's files (``metrics.json``, ``output.jsonl``) into it. Workers on the
nodes never open the database; see docs/ledger.md for why.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import platformdirs
from sqlalchemy import Table, bindparam, create_engine, delete, event, insert, select, update
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError

from hpcqueue.errors import BatchNotFoundError, LedgerError
from hpcqueue.ledger.models import Batch, Measurement, Request, Task

if TYPE_CHECKING:
    import pandas as pd

#: The newest migration in ``migrations/versions``; a test keeps the two in step. Opening a ledger whose
#: ``alembic_version`` already says this skips loading Alembic altogether.
SCHEMA_REVISION = "0001"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
_INSERT_CHUNK_ROWS = 20_000

_TASK_COLUMNS = (
    "task_index",
    "target",
    "executor",
    "n_requests",
    "predicted_energy_j",
    "predicted_runtime_s",
)
_REQUEST_COLUMNS = (
    "line",
    "id",
    "target",
    "task_index",
    "input_tokens",
    "max_new_tokens",
    "predicted_energy_j",
    "predicted_runtime_s",
    "extrapolated",
)


def default_db_url() -> str:
    """The SQLite ledger used when neither ``db_url`` nor ``HPCQUEUE_DB_URL`` names another database."""
    return f"sqlite:///{Path(platformdirs.user_data_dir('hpcqueue')) / 'ledger.sqlite'}"


def mask_url(url: str | URL) -> str:
    """``url`` with its password replaced by ``***``, safe to print in an error message."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))


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
                path.parent.mkdir(parents=True, exist_ok=True)
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
                conn.rollback()
            if current == SCHEMA_REVISION:
                return
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
    ) -> bool:
        """Record a new batch, its planned tasks and all its request lines (valid and rejected).

        One transaction. Returns False, changing nothing, when a batch with ``info.id`` is already recorded
        (submitting the same input again resumes the batch). ``tasks`` and ``requests`` are the planner's
        frames (columns in docs/ledger.md); NaN becomes NULL. ``rejected`` holds the invalid lines kept by
        ``--skip-invalid``: ``{"line", "id", "errors": [{"field", "message"}]}``.
        """
        _require_columns(tasks, _TASK_COLUMNS, "tasks")
        _require_columns(requests, _REQUEST_COLUMNS, "requests")
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
        }
        task_rows = _records(
            {
                "batch_id": info.id,
                "task_index": _values(tasks["task_index"], "int"),
                "target": _values(tasks["target"], "str"),
                "executor": _values(tasks["executor"], "str"),
                "state": "planned",
                "n_requests": _values(tasks["n_requests"], "int"),
                "predicted_energy_j": _values(tasks["predicted_energy_j"], "float"),
                "predicted_runtime_s": _values(tasks["predicted_runtime_s"], "float"),
            },
            len(tasks),
        )
        rejected_rows = [_rejected_row(info.id, info.model, item) for item in rejected]
        try:
            with self._write() as conn:
                if conn.execute(select(Batch.id).where(Batch.id == info.id)).first() is not None:
                    return False
                conn.execute(insert(Batch), [batch_row])
                if task_rows:
                    conn.execute(insert(Task), task_rows)
                for start in range(0, len(requests), _INSERT_CHUNK_ROWS):
                    chunk = requests.iloc[start : start + _INSERT_CHUNK_ROWS]
                    columns = _request_columns(info.id, info.model, chunk)
                    _bulk_insert(conn, _REQUESTS_TABLE, columns, len(chunk))
                if rejected_rows:
                    conn.execute(insert(Request), rejected_rows)
        except IntegrityError as exc:
            if self.get_batch(info.id) is not None:
                return False  # recorded by a concurrent submit between our check and our insert
            raise LedgerError(
                f"cannot record batch {info.id} in {self.masked_url}: {exc.orig}; the plan has duplicate "
                "lines or task indices, or a request names a task index that is not in the tasks frame"
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
            if conn.execute(select(Batch.id).where(Batch.id == batch_id)).first() is None:
                raise BatchNotFoundError(
                    f"batch {batch_id} is not in the ledger {self.masked_url}; record it (submit) first"
                )
            changed = 0
            for start in range(0, len(indices), 10_000):
                part = indices[start : start + 10_000]
                result = conn.execute(
                    update(Task)
                    .where(Task.batch_id == batch_id, Task.task_index.in_(part), Task.state != "completed")
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
                    update(Task)
                    .where(
                        Task.batch_id == batch_id,
                        Task.task_index == int(item["task_index"]),
                        Task.state != "completed",
                    )
                    .values(**values)
                )
                changed += result.rowcount
        return changed

    def task_states(self, batch_id: str) -> dict[int, _TaskState]:
        """State, end time and collection time of each task of a batch (what ``collect`` checks first)."""
        with self.connect() as conn:
            rows = conn.execute(
                select(Task.task_index, Task.state, Task.ended_at, Task.collected_at).where(
                    Task.batch_id == batch_id
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
        failed with its error and its requests stay pending, since a retry may still run them.
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
            "slurm_job_id": _str_or_none(metrics.get("slurm_job_id")),
            "slurm_array_task_id": _int_or_none(metrics.get("slurm_array_task_id")),
            "started_at": utc_from_epoch(metrics.get("started_at")),
            "ended_at": ended_at,
            "n_succeeded": _int_or_none(metrics.get("n_succeeded")),
            "n_failed": _int_or_none(metrics.get("n_failed")),
            "energy_j": _float_or_none(metrics.get("energy_j")),
            "energy_method": method,
            "meter": meter,
            "attribution_rule": rule,
            "error": _error_text(metrics.get("error")),
            "log_tail": log_tail if log_tail is not None else metrics.get("log_tail"),
            "collected_at": now,
        }
        measurement_rows = _measurement_rows(batch_id, task_index, metrics.get("measurements") or [])
        with self._write() as conn:
            row = conn.execute(
                select(Task.state, Task.ended_at, Task.collected_at).where(
                    Task.batch_id == batch_id, Task.task_index == task_index
                )
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
                        select(Request.line).where(
                            Request.batch_id == batch_id, Request.task_index == task_index
                        )
                    ).scalars()
                )
                for record in outputs:
                    params = _output_params(record, method, meter, rule)
                    if params["b_line"] not in task_lines:
                        raise LedgerError(
                            f"batch {batch_id} task {task_index}: output.jsonl has line {params['b_line']}, "
                            "which the plan puts in another task or not at all (check tasks/"
                            f"{task_index:06d}/output.jsonl)"
                        )
                    request_params.append(params)
            conn.execute(
                update(Task)
                .where(Task.batch_id == batch_id, Task.task_index == task_index)
                .values(**task_values)
            )
            if request_params:
                conn.execute(_REQUEST_UPDATE.where(Request.batch_id == batch_id), request_params)
            conn.execute(
                delete(Measurement).where(
                    Measurement.batch_id == batch_id, Measurement.task_index == task_index
                )
            )
            if measurement_rows:
                conn.execute(insert(Measurement), measurement_rows)
        return True

    # -- reads (see queries.py) ---------------------------------------------------------------------------

    def get_batch(self, batch_id: str) -> BatchInfo | None:
        """The recorded batch with this id, or None."""
        from hpcqueue.ledger import queries

        return queries.get_batch(self, batch_id)

    def batch_report(self, batch_id: str) -> dict[str, Any]:
        """Counts, tokens and energy of one batch; see :func:`hpcqueue.ledger.queries.batch_report`."""
        from hpcqueue.ledger import queries

        return queries.batch_report(self, batch_id)

    def summary(
        self, by: Literal["target", "model", "day", "user"] = "target", *, since: datetime | None = None
    ) -> pd.DataFrame:
        """Totals over all batches grouped by ``by``; see :func:`hpcqueue.ledger.queries.summary`."""
        from hpcqueue.ledger import queries

        return queries.summary(self, by, since=since)

    def list_batches(self, limit: int = 20) -> pd.DataFrame:
        """The newest batches first; see :func:`hpcqueue.ledger.queries.list_batches`."""
        from hpcqueue.ledger import queries

        return queries.list_batches(self, limit)

    def table_counts(self) -> dict[str, int]:
        """Row count of each ledger table."""
        from hpcqueue.ledger import queries

        return queries.table_counts(self)


# -- helpers ------------------------------------------------------------------------------------------------


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


def _current_revision(conn: Connection) -> str | None:
    """The ``alembic_version`` of the database, None for a new (empty) database."""
    from sqlalchemy import inspect, text

    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


_REQUESTS_TABLE: Table = Request.__table__  # type: ignore[assignment]
_REQUEST_UPDATE = (
    update(Request)
    .where(Request.line == bindparam("b_line"))
    .values(
        status=bindparam("b_status"),
        input_tokens=bindparam("b_input_tokens"),
        output_tokens=bindparam("b_output_tokens"),
        finish_reason=bindparam("b_finish_reason"),
        error_code=bindparam("b_error_code"),
        error_message=bindparam("b_error_message"),
        started_at=bindparam("b_started_at"),
        ended_at=bindparam("b_ended_at"),
        energy_j=bindparam("b_energy_j"),
        energy_method=bindparam("b_energy_method"),
        energy_meter=bindparam("b_energy_meter"),
        attribution_rule=bindparam("b_attribution_rule"),
    )
)


def _output_params(
    record: Mapping[str, Any], method: str | None, meter: str | None, rule: str | None
) -> dict[str, Any]:
    error = record.get("error")
    code: str | None = None
    message: str | None = None
    if error:
        if isinstance(error, Mapping):
            code = _str_or_none(error.get("code")) or "error"
            message = _str_or_none(error.get("message"))
        else:
            code, message = "error", str(error)
    energy_j = _float_or_none(record.get("energy_j"))
    return {
        "b_line": int(record["line"]),
        "b_status": "failed" if error else "succeeded",
        "b_input_tokens": _int_or_none(record.get("input_tokens")),
        "b_output_tokens": _int_or_none(record.get("output_tokens")),
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


def _measurement_rows(
    batch_id: str, task_index: int, measurements: Iterable[Mapping[str, Any]]
) -> list[dict]:
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
                    "duration_s": _float_or_none(item.get("duration_s")),
                    "method": item.get("method") or "estimated",
                    "meter": item.get("meter") or "unknown",
                    "started_at": utc_from_epoch(item.get("started_at")),
                    "details_json": None
                    if details is None
                    else json.dumps(details, sort_keys=True, default=str),
                }
            )
    return rows


def _rejected_row(batch_id: str, model: str, item: Mapping[str, Any]) -> dict[str, Any]:
    errors = item.get("errors") or []
    message = "; ".join(
        f"{err.get('field')}: {err.get('message')}" if err.get("field") else str(err.get("message"))
        for err in errors
    )
    row = dict.fromkeys(c.name for c in Request.__table__.columns if c.name != "id")
    row.update(
        batch_id=batch_id,
        line=int(item["line"]),
        request_id=_str_or_none(item.get("id")),
        model=model,
        status="rejected",
        error_code="invalid_input",
        error_message=message or "invalid input line",
    )
    return row


def _request_columns(batch_id: str, model: str, frame: pd.DataFrame) -> dict[str, Any]:
    return {
        "batch_id": batch_id,
        "line": _values(frame["line"], "int"),
        "request_id": _values(frame["id"], "str"),
        "task_index": _values(frame["task_index"], "int"),
        "target": _values(frame["target"], "str"),
        "model": model,
        "status": "pending",
        "input_tokens": _values(frame["input_tokens"], "int"),
        "max_new_tokens": _values(frame["max_new_tokens"], "int"),
        "predicted_energy_j": _values(frame["predicted_energy_j"], "float"),
        "predicted_runtime_s": _values(frame["predicted_runtime_s"], "float"),
        "extrapolated": _values(frame["extrapolated"], "bool"),
    }


def _bulk_insert(conn: Connection, table: Table, columns: Mapping[str, Any], n_rows: int) -> None:
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


def _values(series: pd.Series, kind: Literal["int", "float", "str", "bool"]) -> list[Any]:
    """A column as Python values (no numpy scalars, which DB drivers reject), NaN/NA as None."""
    if kind == "int":
        series = series.astype("Int64")
    elif kind == "float":
        series = series.astype("float64")
    elif kind == "bool":
        series = series.astype("boolean")
    values = series.astype(object).where(series.notna(), None).tolist()
    return [None if v is None else str(v) for v in values] if kind == "str" else values


def _records(columns: Mapping[str, Any], n_rows: int) -> list[dict[str, Any]]:
    """Row dicts from column lists (constants are repeated), built without per-cell pandas access."""
    names = list(columns)
    lists = [value if isinstance(value, list) else [value] * n_rows for value in columns.values()]
    return [dict(zip(names, row, strict=True)) for row in zip(*lists, strict=True)]


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"the {what} frame lacks columns {missing}; it needs {list(columns)}")


def _error_text(error: Any) -> str | None:
    if not error:
        return None
    if isinstance(error, Mapping):
        code, message = error.get("code"), error.get("message")
        return f"{code}: {message}" if code and message else str(message or code or json.dumps(error))
    return str(error)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)
