"""Who a task ran for: the Slurm account of its target, and indexes for the reports' filters.

Adds ``tasks.account`` (the target's ``account``, NULL for a target without one and for every task recorded
before), and indexes on ``batches.user`` and ``batches.created_at``, which every filtered report and the
site-wide ledger's row-level security read. Only a nullable column and indexes: every row is kept.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written by hand from hpcqueue/ledger/schema.py (frozen here, as the revisions before it are).


def upgrade() -> None:
    op.add_column("tasks", sa.Column("account", sa.String(255)))
    op.create_index("ix_batches_user", "batches", ["user"])
    op.create_index("ix_batches_created_at", "batches", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_batches_created_at", table_name="batches")
    op.drop_index("ix_batches_user", table_name="batches")
    op.drop_column("tasks", "account")
