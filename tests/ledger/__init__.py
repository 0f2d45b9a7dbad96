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


def many_requests(n: int, *, task_size: int, max_new_tokens: int = 64) -> pd.DataFrame:
    """``n`` alike requests on target ``cpu``, ``task_size`` to a task, as the planner's requests frame."""
    return pd.DataFrame(
        {
            "line": range(1, n + 1),
            "id": [f"r{i}" for i in range(n)],
            "target": "cpu",
            "task_index": [i // task_size for i in range(n)],
            "input_tokens": 12,
            "max_new_tokens": max_new_tokens,
            "predicted_energy_j": 0.25,
            "predicted_runtime_s": 0.01,
            "extrapolated": False,
        }
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
