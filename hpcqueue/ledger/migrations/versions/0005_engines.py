"""Which inference engine ran a task: ``tasks.engine`` and ``tasks.engine_version``.

The worker's engine (``transformers`` or ``vllm``) and its library's version, as the worker wrote them in
``metrics.json``; NULL for a task not run yet and for every task recorded before this revision. Only nullable
columns: every row is kept.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written by hand from hpcqueue/ledger/schema.py (frozen here, as the revisions before it are).


def upgrade() -> None:
    op.add_column("tasks", sa.Column("engine", sa.String(32)))
    op.add_column("tasks", sa.Column("engine_version", sa.String(64)))


def downgrade() -> None:
    op.drop_column("tasks", "engine_version")
    op.drop_column("tasks", "engine")
