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

# Written by hand from hpcqueue/ledger/models.py (frozen here: a later model change needs a new
# revision). tests/test_ledger.py checks that this schema and the models agree.
_BIGINT_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TASK_STATES = "state IN ('planned', 'submitted', 'running', 'completed', 'failed', 'cancelled')"
_REQUEST_STATUSES = "status IN ('pending', 'succeeded', 'failed', 'rejected')"
_SCOPES = "scope IN ('task', 'model_load', 'generation_batch')"


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
    op.create_table(
        "tasks",
        sa.Column("id", _BIGINT_KEY, autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("task_index", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("executor", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("slurm_job_id", sa.String(64), nullable=True),
        sa.Column("slurm_array_task_id", sa.Integer(), nullable=True),
        sa.Column("node", sa.String(255), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("n_requests", sa.Integer(), nullable=False),
        sa.Column("n_succeeded", sa.Integer(), nullable=True),
        sa.Column("n_failed", sa.Integer(), nullable=True),
        sa.Column("predicted_energy_j", sa.Float(), nullable=True),
        sa.Column("predicted_runtime_s", sa.Float(), nullable=True),
        sa.Column("energy_j", sa.Float(), nullable=True),
        sa.Column("energy_method", sa.String(16), nullable=True),
        sa.Column("meter", sa.String(64), nullable=True),
        sa.Column("attribution_rule", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("log_tail", sa.Text(), nullable=True),
        sa.Column("collected_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        sa.UniqueConstraint("batch_id", "task_index", name="uq_tasks_batch_id_task_index"),
        sa.CheckConstraint(_TASK_STATES, name="ck_tasks_state"),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name="fk_tasks_batch_id_batches", ondelete="CASCADE"
        ),
    )
    op.create_table(
        "requests",
        sa.Column("id", _BIGINT_KEY, autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("task_index", sa.Integer(), nullable=True),
        sa.Column("target", sa.String(128), nullable=True),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=True),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("max_new_tokens", sa.Integer(), nullable=True),
        sa.Column("finish_reason", sa.String(32), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("energy_j", sa.Float(), nullable=True),
        sa.Column("energy_method", sa.String(16), nullable=True),
        sa.Column("energy_meter", sa.String(64), nullable=True),
        sa.Column("attribution_rule", sa.Text(), nullable=True),
        sa.Column("predicted_energy_j", sa.Float(), nullable=True),
        sa.Column("predicted_runtime_s", sa.Float(), nullable=True),
        sa.Column("extrapolated", sa.Boolean(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_requests"),
        sa.UniqueConstraint("batch_id", "line", name="uq_requests_batch_id_line"),
        sa.CheckConstraint(_REQUEST_STATUSES, name="ck_requests_status"),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name="fk_requests_batch_id_batches", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_requests_target", "requests", ["target"])
    op.create_index("ix_requests_batch_id_task_index", "requests", ["batch_id", "task_index"])
    op.create_table(
        "measurements",
        sa.Column("id", _BIGINT_KEY, autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("task_index", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("domain", sa.String(32), nullable=False),
        sa.Column("energy_j", sa.Float(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("meter", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("details_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_measurements"),
        sa.UniqueConstraint(
            "batch_id",
            "task_index",
            "scope",
            "seq",
            "domain",
            name="uq_measurements_batch_id_task_index_scope_seq_domain",
        ),
        sa.CheckConstraint(_SCOPES, name="ck_measurements_scope"),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name="fk_measurements_batch_id_batches", ondelete="CASCADE"
        ),
    )


def downgrade() -> None:
    op.drop_table("measurements")
    op.drop_index("ix_requests_batch_id_task_index", table_name="requests")
    op.drop_index("ix_requests_target", table_name="requests")
    op.drop_table("requests")
    op.drop_table("tasks")
    op.drop_table("batches")
