"""The plan in time and its baselines; accounting at the hours work really ran.

Adds the plan's report, start and deadline to ``batches``; a ``plan_costs`` table (the plan's predicted totals
and its baselines'); to ``tasks`` the site, planned start and end, predicted footprint, and the accounting of
the actual run (its interval, the site's factors over it, the footprint they give); to ``requests`` their
share of that footprint. Only nullable columns and a new table: every existing row is kept, its new columns
NULL.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written by hand from hpcqueue/ledger/schema.py (frozen here, as 0001 is). tests/ledger/test_db.py checks
# that the migrated schema and the ORM classes agree.
_BIGINT_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_FOOTPRINT = ("facility_energy_j", "carbon_g", "water_onsite_l", "water_offsite_l", "cost_usd")
_SITE_FACTORS = (
    "pue",
    "carbon_g_per_kwh",
    "temperature_c",
    "price_usd_per_mwh",
    "wue_l_per_kwh",
    "offsite_water_l_per_kwh",
)


def _floats(*names: str) -> list[sa.Column]:
    return [sa.Column(name, sa.Float()) for name in names]


def _times(*names: str) -> list[sa.Column]:
    return [sa.Column(name, sa.DateTime(timezone=True)) for name in names]


def _new_columns() -> dict[str, list[sa.Column]]:
    """The columns this revision adds to each existing table (fresh objects: a Column joins one table)."""
    return {
        "batches": [sa.Column("plan_json", sa.Text()), *_times("plan_start_at", "deadline_at")],
        "tasks": [
            sa.Column("site", sa.String(128)),
            *_times("planned_start_at", "planned_end_at"),
            *_floats(
                "predicted_facility_energy_j", "predicted_carbon_g", "predicted_water_l", "predicted_cost_usd"
            ),
            *_times("run_started_at", "run_ended_at"),
            sa.Column("run_times_source", sa.String(16)),
            *_floats(*_SITE_FACTORS),
            *_floats(*_FOOTPRINT),
            sa.Column("factor_kinds", sa.Text()),
            sa.Column("factor_sources", sa.Text()),
            *_times("accounted_at"),
        ],
        "requests": _floats(*_FOOTPRINT),
    }


def upgrade() -> None:
    # ALTER TABLE ... ADD COLUMN of a nullable column without a default: no table rebuild, on SQLite too.
    for table, columns in _new_columns().items():
        for column in columns:
            op.add_column(table, column)
    op.create_table(
        "plan_costs",
        sa.Column("id", _BIGINT_KEY, autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        *_floats("energy_j", *_FOOTPRINT, "water_l", "finish_s"),
        sa.Column("meets_deadline", sa.Boolean()),
        sa.PrimaryKeyConstraint("id", name="pk_plan_costs"),
        sa.UniqueConstraint("batch_id", "name", name="uq_plan_costs_batch_id_name"),
        sa.CheckConstraint("role IN ('plan', 'baseline')", name="ck_plan_costs_role"),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name="fk_plan_costs_batch_id_batches", ondelete="CASCADE"
        ),
    )


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35+): a batch-mode rebuild of ``batches`` would drop the old
    # table, and with foreign keys on, its ON DELETE CASCADE would empty the tasks and requests.
    op.drop_table("plan_costs")
    for table, columns in _new_columns().items():
        for column in reversed(columns):
            op.drop_column(table, column.name)
