"""Predictions with their intervals: what a task was predicted to cost, within which bounds, and on what.

Adds to ``tasks`` the 90 % prediction interval of the predicted energy and runtime, the method behind the
prediction (``profile``, ``analytic``, ``calibrated``) and its basis (the profile, or the analytic model and
hardware class), and the hardware class of the task's target, which the ledger did not record before. Only
nullable columns: every existing row is kept, its new columns NULL.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written by hand from hpcqueue/ledger/schema.py (frozen here, as 0001 and 0002 are). tests/ledger/test_db.py
# checks that the migrated schema and the ORM classes agree.


def _new_columns() -> list[sa.Column]:
    """The columns this revision adds to ``tasks`` (fresh objects: a Column joins one table)."""
    return [
        *(
            sa.Column(name, sa.Float())
            for name in (
                "predicted_energy_low_j",
                "predicted_energy_high_j",
                "predicted_runtime_low_s",
                "predicted_runtime_high_s",
            )
        ),
        sa.Column("prediction_method", sa.String(16)),
        sa.Column("prediction_basis", sa.String(255)),
        sa.Column("hardware", sa.String(64)),
    ]


def upgrade() -> None:
    # ALTER TABLE ... ADD COLUMN of a nullable column without a default: no table rebuild, on SQLite too.
    for column in _new_columns():
        op.add_column("tasks", column)


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not a batch-mode rebuild (see 0002).
    for column in reversed(_new_columns()):
        op.drop_column("tasks", column.name)
