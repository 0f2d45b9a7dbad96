"""Helpers shared by the tests that write to a ledger: a batch's row and tasks, and query results as dicts.

``bench/ledger_insert.py`` plans its tasks with ``tasks_of`` too.
"""

from __future__ import annotations

import pandas as pd

from hpcqueue.ledger import BatchInfo, Ledger

T0 = 1732219200.0  # 2024-11-21 20:00 UTC


def make_info(
    batch_id: str = "b1",
    *,
    user: str = "alice",
    created_at: float = T0,
    model: str = "hpcqueue-demo",
    batch_dir: str | None = None,
) -> BatchInfo:
    """The batch row that submit records; ``batch_dir`` defaults to ``/scratch/batches/<batch_id>``."""
    return BatchInfo(
        id=batch_id,
        created_at=created_at,
        user=user,
        host="login01",
        input_path="/home/alice/prompts.jsonl",
        input_sha256="ab" * 32,
        input_format="simple",
        model=model,
        policy="threshold",
        settings_json={"max_new_tokens": 64},
        batch_dir=f"/scratch/batches/{batch_id}" if batch_dir is None else batch_dir,
    )


def tasks_of(requests: pd.DataFrame, executor: str) -> pd.DataFrame:
    """The tasks frame of a requests frame: one task per ``task_index``, its size and summed predictions."""
    tasks = requests.groupby("task_index", as_index=False).agg(
        target=("target", "first"),
        n_requests=("line", "size"),
        predicted_energy_j=("predicted_energy_j", "sum"),
        predicted_runtime_s=("predicted_runtime_s", "sum"),
    )
    tasks["executor"] = executor
    return tasks


def rows(ledger: Ledger, sql: str) -> list[dict]:
    """The rows ``sql`` selects, each as a dict of column → value."""
    with ledger.connect() as conn:
        return [dict(r) for r in conn.exec_driver_sql(sql).mappings()]
