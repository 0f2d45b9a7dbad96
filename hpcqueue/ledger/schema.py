"""The ledger's schema: its tables as SQLAlchemy classes, one ``*Row`` class per table (batches, tasks,
requests, energy measurements, and the costs of a batch's plan and of its baselines).

The ``Row`` suffix keeps them apart from the things they record: ``hpcqueue.ingest.Request`` is a request as
read from the input, ``RequestRow`` its row in the ledger; ``hpcqueue.meters.Measurement`` a reading,
``MeasurementRow`` its rows.

The schema is portable (SQLite and PostgreSQL): strings, integers, floats, booleans and timezone-aware UTC
timestamps only. The revisions in ``migrations/versions`` (0001, 0002, then 0003 ...) create exactly these
tables; a test compares the two, so a change here needs a new migration. The columns the tables share come
from mixins, so a class lists them in another order than its table (the migration's order), which no query
depends on.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

TASK_STATES = ("planned", "submitted", "running", "completed", "failed", "cancelled")
REQUEST_STATUSES = ("pending", "succeeded", "failed", "rejected")
MEASUREMENT_SCOPES = ("task", "model_load", "generation_batch")
PLAN_COST_ROLES = ("plan", "baseline")
#: Where a task's run interval (``tasks.run_started_at`` / ``run_ended_at``) came from.
RUN_TIMES_SOURCES = ("sacct", "worker")
#: What a task's prediction rests on (``tasks.prediction_method``): a fitted profile of the model on the
#: target's hardware, the analytic model of the transformer's work, or a profile calibrated on the ledger's
#: measured tasks.
PREDICTION_METHODS = ("profile", "analytic", "calibrated")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT keys on PostgreSQL (a site-wide ledger outgrows 2**31 request rows); SQLite only
# auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigIntKey = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL keeps the zone (``timestamp with time zone``); SQLite has no zone type, so values are
    stored as naive UTC text and given ``tzinfo=UTC`` again when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: ledger timestamps must be timezone-aware (UTC)")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), float: Float(), str: Text()}


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class BatchRow(Base):
    """One submission of an input file: who, where, what model and policy, and its batch directory."""

    __tablename__ = "batches"
    __table_args__ = (Index(None, "user"), Index(None, "created_at"))

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime]
    user: Mapped[str] = mapped_column(String(255))
    host: Mapped[str] = mapped_column(String(255))
    input_path: Mapped[str]
    input_sha256: Mapped[str] = mapped_column(String(64))
    input_format: Mapped[str] = mapped_column(String(32))
    model: Mapped[str]
    policy: Mapped[str] = mapped_column(String(255))
    settings_json: Mapped[str]
    batch_dir: Mapped[str]
    n_requests: Mapped[int]
    n_rejected: Mapped[int]
    plan_json: Mapped[str | None]
    plan_start_at: Mapped[datetime | None]
    deadline_at: Mapped[datetime | None]


class _BatchPart:
    """The leading columns of a batch's tasks, requests and measurements: a key, and the batch's id.

    ``sort_order`` puts them first, as in the tables the migration creates.
    """

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True, sort_order=-1)
    batch_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("batches.id", ondelete="CASCADE"), sort_order=-1
    )


class _Accounted:
    """What a task and a request both record: the planner's prediction, when it ran, and its energy.

    The energy's meter is each table's own column (``tasks.meter``, ``requests.energy_meter``).
    """

    predicted_energy_j: Mapped[float | None]
    predicted_runtime_s: Mapped[float | None]
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    energy_j: Mapped[float | None]
    energy_method: Mapped[str | None] = mapped_column(String(16))
    attribution_rule: Mapped[str | None]


class _Footprint:
    """What energy cost at a site and hour: the facility's energy, carbon, water on and off site, money.

    A task's figures come from its site's factors over the hours it ran; a request's are its share of its
    task's; a plan's and a baseline's are the planner's prediction (``plan_costs``).
    """

    facility_energy_j: Mapped[float | None]
    carbon_g: Mapped[float | None]
    water_onsite_l: Mapped[float | None]
    water_offsite_l: Mapped[float | None]
    cost_usd: Mapped[float | None]


class _SiteFactors:
    """A site's factors averaged over the interval a task really ran (what turned its energy into a
    footprint)."""

    pue: Mapped[float | None]
    carbon_g_per_kwh: Mapped[float | None]
    temperature_c: Mapped[float | None]
    price_usd_per_mwh: Mapped[float | None]
    wue_l_per_kwh: Mapped[float | None]
    offsite_water_l_per_kwh: Mapped[float | None]


FOOTPRINT_COLUMNS: tuple[str, ...] = tuple(_Footprint.__annotations__)
SITE_FACTOR_COLUMNS: tuple[str, ...] = tuple(_SiteFactors.__annotations__)


class TaskRow(_BatchPart, _Accounted, _Footprint, _SiteFactors, Base):
    """One array task (or local job): a chunk of a batch's requests run by one worker on one target."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("batch_id", "task_index"),
        CheckConstraint(_in("state", TASK_STATES), name="state"),
    )

    task_index: Mapped[int]
    target: Mapped[str] = mapped_column(String(128))
    executor: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[str | None] = mapped_column(String(64))
    slurm_job_id: Mapped[str | None] = mapped_column(String(64))
    slurm_array_task_id: Mapped[int | None]
    node: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16))
    submitted_at: Mapped[datetime | None]
    n_requests: Mapped[int]
    n_succeeded: Mapped[int | None]
    n_failed: Mapped[int | None]
    meter: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None]
    log_tail: Mapped[str | None]
    collected_at: Mapped[datetime | None]
    # The plan in time: where and when the task should run, and what the planner predicted that costs.
    site: Mapped[str | None] = mapped_column(String(128))
    planned_start_at: Mapped[datetime | None]
    planned_end_at: Mapped[datetime | None]
    predicted_facility_energy_j: Mapped[float | None]
    predicted_carbon_g: Mapped[float | None]
    predicted_water_l: Mapped[float | None]
    predicted_cost_usd: Mapped[float | None]
    # Accounting (with the _SiteFactors and _Footprint columns): when it really ran, and what that cost.
    run_started_at: Mapped[datetime | None]
    run_ended_at: Mapped[datetime | None]
    run_times_source: Mapped[str | None] = mapped_column(String(16))
    factor_kinds: Mapped[str | None]
    factor_sources: Mapped[str | None]
    accounted_at: Mapped[datetime | None]
    # The prediction's 90 % interval, the method and basis behind it, and the hardware class it is for.
    predicted_energy_low_j: Mapped[float | None]
    predicted_energy_high_j: Mapped[float | None]
    predicted_runtime_low_s: Mapped[float | None]
    predicted_runtime_high_s: Mapped[float | None]
    prediction_method: Mapped[str | None] = mapped_column(String(16))
    prediction_basis: Mapped[str | None] = mapped_column(String(255))
    hardware: Mapped[str | None] = mapped_column(String(64))
    # The Slurm account the task's target charges (NULL: none, or recorded before revision 0004).
    account: Mapped[str | None] = mapped_column(String(255))
    # The inference engine that ran the task and its version (NULL: not run, or before revision 0005).
    engine: Mapped[str | None] = mapped_column(String(32))
    engine_version: Mapped[str | None] = mapped_column(String(64))


class RequestRow(_BatchPart, _Accounted, _Footprint, Base):
    """One input line: its plan (target, task, prediction) and, once collected, its outcome and energy; once
    accounted, its share of its task's footprint."""

    __tablename__ = "requests"
    __table_args__ = (
        UniqueConstraint("batch_id", "line"),
        Index(None, "target"),
        Index(None, "batch_id", "task_index"),
        CheckConstraint(_in("status", REQUEST_STATUSES), name="status"),
    )

    line: Mapped[int]
    request_id: Mapped[str | None]
    task_index: Mapped[int | None]
    target: Mapped[str | None] = mapped_column(String(128))
    model: Mapped[str]
    status: Mapped[str] = mapped_column(String(16))
    input_tokens: Mapped[int | None]
    output_tokens: Mapped[int | None]
    max_new_tokens: Mapped[int | None]
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None]
    energy_meter: Mapped[str | None] = mapped_column(String(64))
    extrapolated: Mapped[bool | None]


class MeasurementRow(_BatchPart, Base):
    """One meter reading: the joules of one domain (cpu, dram, gpu:0 ...) over one metered interval."""

    __tablename__ = "measurements"
    __table_args__ = (
        UniqueConstraint("batch_id", "task_index", "scope", "seq", "domain"),
        CheckConstraint(_in("scope", MEASUREMENT_SCOPES), name="scope"),
    )

    task_index: Mapped[int]
    scope: Mapped[str] = mapped_column(String(32))
    seq: Mapped[int]
    domain: Mapped[str] = mapped_column(String(32))
    energy_j: Mapped[float]
    duration_s: Mapped[float | None]
    method: Mapped[str] = mapped_column(String(16))
    meter: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime | None]
    details_json: Mapped[str | None]


class PlanCostRow(_BatchPart, _Footprint, Base):
    """The predicted totals of a batch's plan (role ``plan``) or of one baseline it was compared with (role
    ``baseline``: ``run_at_submit``, ``best_window``, ``single:cpu`` ...)."""

    __tablename__ = "plan_costs"
    __table_args__ = (
        UniqueConstraint("batch_id", "name"),
        CheckConstraint(_in("role", PLAN_COST_ROLES), name="role"),
    )

    name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    energy_j: Mapped[float | None]
    water_l: Mapped[float | None]
    finish_s: Mapped[float | None]
    meets_deadline: Mapped[bool | None]
