"""Collect: copy the finished tasks of a batch directory into the ledger, and record where the others stand.

A worker's last act is to write ``tasks/<NNNNNN>/metrics.json`` atomically (docs/internals.md), so a task is
finished exactly when that file exists. ``collect_batch`` reads each such file, and for a completed task its
``output.jsonl``, and records them with :meth:`Ledger.collect_task`, one transaction per task. It is the only
writer of task results: workers never open the database. Running it again changes nothing.

``refresh`` is what every look at a batch does (``status``, ``wait``, ``submit`` resuming): collect, then
record each unfinished task's job, node and state from :mod:`hpcqueue.dispatch.status`, then account the
collected tasks at the hours they really ran (:mod:`hpcqueue.ledger.accounting`). ``collect_job`` is
what the collect job runs on a compute node after a batch's arrays.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcqueue.dispatch.batchdir import MANIFEST, METRICS, OUTPUT, BatchDir
from hpcqueue.dispatch.status import TaskView, task_views
from hpcqueue.errors import BatchNotFoundError, LedgerError
from hpcqueue.fileio import read_jsonl
from hpcqueue.ledger.accounting import account_batch
from hpcqueue.ledger.db import Ledger
from hpcqueue.ledger.rows import utc_from_epoch


@dataclass(frozen=True)
class CollectReport:
    """What one ``collect_batch`` run found, counted in tasks.

    ``collected``: recorded by this run (completed or failed); ``already``: their metrics were already in
    the ledger; ``pending``: no metrics.json yet; ``failed``: tasks whose metrics.json says ``failed``
    (whether collected now or before; each is also counted in ``collected`` or ``already``).
    """

    collected: int = 0
    already: int = 0
    pending: int = 0
    failed: int = 0

    @property
    def done(self) -> bool:
        """True when every task has finished (none pending)."""
        return self.pending == 0


def batch_id_of(batch_dir: Path) -> str:
    """The batch id of a batch directory: ``batch_id`` in its batch.json, else the directory's name."""
    manifest = batch_dir / MANIFEST
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise LedgerError(f"cannot read {manifest}: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("batch_id"), str):
            return data["batch_id"]
    return batch_dir.name


def collect_batch(ledger: Ledger, batch_dir: Path, *, batch_id: str | None = None) -> CollectReport:
    """Record every finished, not yet collected task of ``batch_dir`` in ``ledger``.

    Tasks are those the ledger planned for the batch plus any ``tasks/<NNNNNN>/`` directory. Safe to run
    at any time and any number of times (a collect job after the arrays, ``hpcqueue status``, by hand).
    """
    batch_dir = Path(batch_dir)
    batch = BatchDir(batch_dir)
    batch_id = batch_id or batch_id_of(batch_dir)
    states = ledger.task_states(batch_id)
    if not states and ledger.get_batch(batch_id) is None:
        raise BatchNotFoundError(
            f"batch {batch_id} (directory {batch_dir}) is not in the ledger {ledger.masked_url}; "
            "was it submitted with another HPCQUEUE_DB_URL?"
        )
    collected = already = pending = failed = 0
    for index in sorted(set(states) | batch.task_dirs_on_disk()):
        task_dir = batch.task_dir(index)
        metrics_path = task_dir / METRICS
        if not metrics_path.is_file():
            pending += 1
            continue
        metrics = _read_metrics(metrics_path)
        state = metrics.get("state")
        if state == "failed":
            failed += 1
        known = states.get(index)
        if (
            known is not None
            and known.collected_at is not None
            and (known.state == "completed" or known.ended_at == utc_from_epoch(metrics.get("ended_at")))
        ):
            already += 1  # cheap check first: no need to read output.jsonl
            continue
        outputs = read_jsonl(task_dir / OUTPUT) if state == "completed" else iter(())
        log_tail = batch.log_tail(index) if state == "failed" and "log_tail" not in metrics else None
        try:
            new = ledger.collect_task(batch_id, index, metrics, outputs, log_tail=log_tail)
        except FileNotFoundError as exc:
            raise LedgerError(
                f"{metrics_path} says the task completed but {task_dir / OUTPUT} is missing; "
                "delete metrics.json to have the task run again"
            ) from exc
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise LedgerError(
                f"cannot collect {task_dir}: malformed output.jsonl or metrics.json ({exc})"
            ) from exc
        if new:
            collected += 1
        else:
            already += 1
    return CollectReport(collected=collected, already=already, pending=pending, failed=failed)


def _read_metrics(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LedgerError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise LedgerError(f"{path} is not a JSON object (see docs/internals.md for the metrics.json format)")
    return data


# The ledger's task states (its check constraint) for each status.
_LEDGER_STATE = {
    "pending": "planned",
    "queued": "submitted",
    "deferred": "submitted",
    "running": "running",
    "completed": "completed",
    "failed": "failed",
    "expired": "failed",
    "lost": "failed",
    "cancelled": "cancelled",
}


def refresh(
    batch: BatchDir,
    ledger: Ledger,
    *,
    poller: Any = None,
    previous: Mapping[int, TaskView] | None = None,
) -> dict[int, TaskView]:
    """Collect finished tasks into the ledger and record where the others stand (Slurm ids, nodes, times,
    states; lost tasks with their Slurm state and log tail). Idempotent.

    With ``previous`` (the views of the last refresh, when polling) only tasks whose view changed are
    written, so a poll of a large batch does not rewrite every task row.
    """
    views = task_views(batch, poller=poller)
    if previous is None or any(
        v.status in ("completed", "failed") and previous.get(i, v).status != v.status
        for i, v in views.items()
    ):
        collect_batch(ledger, batch.path)
    updates = []
    for view in views.values():
        if view.status in ("completed", "failed"):
            continue  # collect_batch recorded these from the worker's own metrics
        if previous is not None and previous.get(view.task_index) == view:
            continue
        update: dict[str, Any] = {
            "task_index": view.task_index,
            "state": _LEDGER_STATE[view.status],
            "node": view.node,
            "started_at": view.started_at,
            "ended_at": view.ended_at,
        }
        if view.executor == "slurm" and view.job_id:
            update["slurm_job_id"], _, array_index = view.job_id.partition("_")
            update["slurm_array_task_id"] = int(array_index) if array_index.isdigit() else None
        if view.status == "lost":
            update["error"] = (
                f"{view.executor} job {view.job_id} ended {view.slurm_state or 'without a result'} "
                "before the task finished; `hpcqueue retry` runs it again"
            )
            update["log_tail"] = batch.log_tail(view.task_index)
        elif view.status == "expired":
            update["error"] = (
                f"deadline: Slurm removed job {view.job_id} (state {view.slurm_state}) because it could no "
                "longer finish by the batch's deadline; `hpcqueue retry --deadline ...` re-plans it"
            )
        updates.append(update)
    if updates:
        ledger.update_tasks(batch.batch_id, updates)
    account_batch(ledger, batch, poller=poller)
    return views


def collect_job(batch_dir: str, db_url: str | None) -> dict[str, Any]:
    """What the collect job runs on a compute node after the batch's arrays: refresh the ledger."""
    batch = BatchDir(Path(batch_dir))
    with Ledger(db_url) as ledger:
        views = refresh(batch, ledger)
    counts: dict[str, int] = {}
    for view in views.values():
        counts[view.status] = counts.get(view.status, 0) + 1
    return {"batch_id": batch.batch_id, "tasks": counts}
