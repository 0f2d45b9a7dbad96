"""The SQL ledger: batches, tasks, requests and energy measurements (SQLAlchemy 2 + Alembic).

``Ledger(url)`` opens (and migrates) the database; ``collect_batch`` copies finished tasks' files into it;
report queries live in ``queries``. See docs/ledger.md for the schema.
"""

from __future__ import annotations

from hpcqueue.ledger.collect import CollectReport, collect_batch
from hpcqueue.ledger.db import SCHEMA_REVISION, BatchInfo, Ledger, default_db_url, mask_url

__all__ = [
    "SCHEMA_REVISION",
    "BatchInfo",
    "CollectReport",
    "Ledger",
    "collect_batch",
    "default_db_url",
    "mask_url",
]
