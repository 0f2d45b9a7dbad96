"""The SQL ledger: batches, tasks, requests, energy measurements, and each batch's plan in time with its
baselines' costs (SQLAlchemy 2 + Alembic).

``schema`` defines the tables; ``db`` opens (and migrates) a database and holds the writes (``Ledger``), built
from the files by ``rows``; ``collect`` copies finished tasks' files into it (and is what the collect job
runs); ``accounting`` prices each collected task's energy at the hours it really ran
(``Ledger.record_accounting``); report queries live in ``queries``, and ``accuracy`` sets each task's
prediction against what it measured (``Ledger.accuracy``). See docs/ledger.md for the schema.
"""

from __future__ import annotations

from hpcqueue.ledger.collect import CollectReport, collect_batch, collect_job, refresh
from hpcqueue.ledger.db import SCHEMA_REVISION, Ledger, default_db_url, mask_url
from hpcqueue.ledger.rows import BatchInfo

__all__ = [
    "SCHEMA_REVISION",
    "BatchInfo",
    "CollectReport",
    "Ledger",
    "collect_batch",
    "collect_job",
    "default_db_url",
    "mask_url",
    "refresh",
]
