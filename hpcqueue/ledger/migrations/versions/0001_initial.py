"""Initial ledger schema: batches, tasks, requests, measurements.

Revision ID: 0001
Revises:
Create Date: 2024-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written by hand from hpcqueue/ledger/schema.py (frozen here: a later schema change needs a new
# revision). tests/ledger/test_db.py checks that this schema and the ORM classes agree. A column is
# nullable unless it says nullable=False (SQLAlchemy's default).
_BIGINT_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TASK_STATES = "state IN ('planned', 'submitted', 'running', 'completed', 'failed', 'cancelled')"
_REQUEST_STATUSES = "status IN ('pending', 'succeeded', 'failed', 'rejected')"
_SCOPES = "scope IN ('task', 'model_load', 'generation_batch')"


def _energy(meter: str) -> list[sa.Column]:
    """A task's or a request's energy: joules, how they were obtained, by which meter, split by which rule."""
    return [
        sa.Column("energy_j", sa.Float()),
        sa.Column("energy_method", sa.String(16)),
        sa.Column(meter, sa.String(64)),
        sa.Column("attribution_rule", sa.Text()),
    ]


def _prediction() -> list[sa.Column]:
    """The planner's prediction for a task or a request."""
    return [
        sa.Column("predicted_energy_j", sa.Float()),
        sa.Column("predicted_runtime_s", sa.Float()),
    ]


def _span() -> list[sa.Column]:
    """When a task or a request started and ended."""
    return [
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
    ]


def _create_batch_part(
    table: str, *columns: sa.Column, unique: tuple[str, ...], check_name: str, check: str
) -> None:
    """Create a table of a batch's parts: a key, the batch's id (deleted with the batch), then ``columns``.

    Constraint names follow ``hpcqueue.ledger.schema.NAMING_CONVENTION``.
    """
    op.create_table(
        table,
        sa.Column("id", _BIGINT_KEY, autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.String(128), nullable=False),
        *columns,
        sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
        sa.UniqueConstraint(*unique, name=f"uq_{table}_{'_'.join(unique)}"),
        sa.CheckConstraint(check, name=f"ck_{table}_{check_name}"),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name=f"fk_{table}_batch_id_batches", ondelete="CASCADE"
        ),
    )


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("input_path", sa.Text(), nullable=False),
        sa.Column("input_sha256", sa.String(64), nullable=False),
        sa.Column("input_format", sa.String(32), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("policy", sa.String(255), nullable=False),
        sa.Column("settings_json", sa.Text(), nullable=False),
        sa.Column("batch_dir", sa.Text(), nullable=False),
        sa.Column("n_requests", sa.Integer(), nullable=False),
        sa.Column("n_rejected", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_batches"),
    )
    _create_batch_part(
        "tasks",
        sa.Column("task_index", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("executor", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(64)),
        sa.Column("slurm_job_id", sa.String(64)),
        sa.Column("slurm_array_task_id", sa.Integer()),
        sa.Column("node", sa.String(255)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True)),
        *_span(),
        sa.Column("n_requests", sa.Integer(), nullable=False),
        sa.Column("n_succeeded", sa.Integer()),
        sa.Column("n_failed", sa.Integer()),
        *_prediction(),
        *_energy(meter="meter"),
        sa.Column("error", sa.Text()),
        sa.Column("log_tail", sa.Text()),
        sa.Column("collected_at", sa.DateTime(timezone=True)),
        unique=("batch_id", "task_index"),
        check_name="state",
        check=_TASK_STATES,
    )
    _create_batch_part(
        "requests",
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Text()),
        sa.Column("task_index", sa.Integer()),
        sa.Column("target", sa.String(128)),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("input_tokens", sa.Integer()),
        sa.Column("output_tokens", sa.Integer()),
        sa.Column("max_new_tokens", sa.Integer()),
        sa.Column("finish_reason", sa.String(32)),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.Text()),
        *_span(),
        *_energy(meter="energy_meter"),
        *_prediction(),
        sa.Column("extrapolated", sa.Boolean()),
        unique=("batch_id", "line"),
        check_name="status",
        check=_REQUEST_STATUSES,
    )
    op.create_index("ix_requests_target", "requests", ["target"])
    op.create_index("ix_requests_batch_id_task_index", "requests", ["batch_id", "task_index"])
    _create_batch_part(
        "measurements",
        sa.Column("task_index", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("domain", sa.String(32), nullable=False),
        sa.Column("energy_j", sa.Float(), nullable=False),
        sa.Column("duration_s", sa.Float()),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("meter", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("details_json", sa.Text()),
        unique=("batch_id", "task_index", "scope", "seq", "domain"),
        check_name="scope",
        check=_SCOPES,
    )


def downgrade() -> None:
    op.drop_table("measurements")
    op.drop_index("ix_requests_batch_id_task_index", table_name="requests")
    op.drop_index("ix_requests_target", table_name="requests")
    op.drop_table("requests")
    op.drop_table("tasks")
    op.drop_table("batches")
