"""Collect: copy the finished tasks of a batch directory into the ledger, and record where the others stand.

A worker's last act is to write ``tasks/<NNNNNN>/metrics.json`` atomically (docs/internals.md), so a task is
finished exactly when that file exists. ``collect_batch`` reads each such file, and for a completed task its
``output.jsonl``, and records them with :meth:`Ledger.collect_task`, one transaction per task. It is the only
writer of task results: workers never open the database. Running it again changes nothing. An output.jsonl
damaged on disk (torn, corrupt or short) is refused, never recorded as complete: the attempt is set aside so
``hpcqueue retry`` runs that task again.

``refresh`` is what every look at a batch does (``status``, ``wait``, ``submit`` resuming): collect, then
record each unfinished task's job, node and state from :mod:`hpcqueue.dispatch.status`, then account the
collected tasks at the hours they really ran (:mod:`hpcqueue.ledger.accounting`). ``collect_job`` is
what the collect job runs on a compute node after a batch's arrays.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcqueue.dispatch.batchdir import (
    MANIFEST,
    METRICS,
    OUTPUT,
    BatchDir,
    attempt_metrics_name,
    refused_output_name,
)
from hpcqueue.dispatch.status import TaskView, task_views
from hpcqueue.errors import AccessError, BatchNotFoundError, LedgerError, UnsafePathError
from hpcqueue.fileio import read_bytes_nofollow, read_text_nofollow
from hpcqueue.ledger.accounting import account_batch
from hpcqueue.ledger.db import Ledger
from hpcqueue.ledger.rows import utc_from_epoch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollectReport:
    """What one ``collect_batch`` run found, counted in tasks.

    ``collected``: recorded by this run (completed or failed); ``already``: their metrics were already in
    the ledger; ``pending``: no metrics.json yet; ``failed``: tasks whose metrics.json says ``failed``
    (whether collected now or before; each is also counted in ``collected`` or ``already``); ``refused``:
    completed tasks whose output.jsonl was damaged, set aside to run again (see ``_read_outputs``).
    """

    collected: int = 0
    already: int = 0
    pending: int = 0
    failed: int = 0
    refused: int = 0

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
    collected = already = pending = failed = refused = 0
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
        outputs: list[dict[str, Any]] = []
        if state == "completed":
            outputs, problem = _read_outputs(task_dir / OUTPUT, metrics)
            if problem is not None:
                _refuse(ledger, batch, batch_id, index, problem)
                refused += 1
                continue
        log_tail = batch.log_tail(index) if state == "failed" and "log_tail" not in metrics else None
        try:
            new = ledger.collect_task(batch_id, index, metrics, outputs, log_tail=log_tail)
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerError(
                f"cannot collect {task_dir}: malformed output.jsonl or metrics.json ({exc})"
            ) from exc
        if new:
            collected += 1
        else:
            already += 1
    return CollectReport(
        collected=collected, already=already, pending=pending, failed=failed, refused=refused
    )


def _read_outputs(path: Path, metrics: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """The records of a completed task's output.jsonl, or why they cannot be trusted.

    The worker writes output.jsonl whole (atomically) before metrics.json, so a torn last line, a line that
    is not a JSON object with its ``line``, or fewer records than metrics.json's ``n_requests`` means the file
    was damaged on disk after the worker wrote it. ``read_jsonl`` forgives a torn last line (right for
    ``partial.jsonl``, which is appended to); here it would lose a request silently, so the file is read
    strictly.
    """
    try:
        data = read_bytes_nofollow(path)
    except FileNotFoundError:
        return [], "it is missing"
    except UnsafePathError as exc:  # a planted symbolic link: set aside like a damaged file, never read
        return [], str(exc)
    except OSError as exc:
        return [], f"it cannot be read ({exc})"
    if data and not data.endswith(b"\n"):
        return [], "its last line is cut short (the file was truncated)"
    records: list[dict[str, Any]] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            record = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return [], f"line {number} is not JSON ({exc})"
        if not isinstance(record, dict) or not isinstance(record.get("line"), int):
            return [], f"line {number} is not an output record with its input line number"
        records.append(record)
    expected = metrics.get("n_requests")
    if isinstance(expected, int) and len(records) != expected:
        return [], f"it has {len(records)} record(s) where metrics.json says the task produced {expected}"
    return records, None


def _refuse(ledger: Ledger, batch: BatchDir, batch_id: str, index: int, problem: str) -> None:
    """Refuse a completed task whose output.jsonl cannot be trusted: record nothing of it, set the attempt
    aside (:meth:`BatchDir.refuse_attempt`) so ``hpcqueue retry`` runs that task alone again, and say so on
    stderr and in the ledger's error for the task."""
    path = batch.task_dir(index) / OUTPUT
    attempt = batch.refuse_attempt(index)
    if attempt is None:
        return  # a concurrent collect refused it first (and said so)
    message = (
        f"refused {path}: {problem}. Nothing of task {index} was recorded; its files were set aside as "
        f"{refused_output_name(attempt)} and {attempt_metrics_name(attempt)}; "
        f"`hpcqueue retry {batch_id}` runs that task again"
    )
    log.warning("%s", message)
    ledger.update_tasks(batch_id, [{"task_index": index, "state": "failed", "error": message}])


def _read_metrics(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(read_text_nofollow(path))
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


#: How long the collect job waits before each new try while the ledger cannot be reached (seconds): about
#: 8 minutes in all, well inside the job's time limit (``dispatch.jobs.COLLECT_JOB_TIMEOUT_MIN``).
COLLECT_RETRY_DELAYS_S = (5.0, 15.0, 45.0, 120.0, 300.0)


def collect_job(
    batch_dir: str, db_url: str | None, *, retry_delays_s: Sequence[float] = COLLECT_RETRY_DELAYS_S
) -> dict[str, Any]:
    """What the collect job runs on a compute node after the batch's arrays: refresh the ledger.

    A ledger that cannot be reached (a database restarting, a network blip) is tried again after each of
    ``retry_delays_s``; each task is one transaction, so a try cut short leaves no task half-recorded and the
    next try collects what is left. When the ledger stays down the job fails with the last error: the
    results stay in the batch directory, ``hpcqueue status`` shows the tasks finished but not collected, and
    the next ``hpcqueue collect`` (or ``status``) records them.
    """
    batch = BatchDir(Path(batch_dir))
    for delay_s in [*retry_delays_s, None]:
        try:
            with Ledger(db_url) as ledger:
                views = refresh(batch, ledger)
            break
        except LedgerError as exc:
            if delay_s is None or not unreachable(exc):
                raise
            log.warning("collect: %s; trying again in %.0f s", exc, delay_s)
            time.sleep(delay_s)
    counts: dict[str, int] = {}
    for view in views.values():
        counts[view.status] = counts.get(view.status, 0) + 1
    return {"batch_id": batch.batch_id, "tasks": counts}


def unreachable(exc: BaseException) -> bool:
    """The ledger could not be reached or dropped the connection (worth trying again), as opposed to a
    refusal (permissions, a missing batch) or a malformed file, which a retry would only repeat."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    cause = exc.__cause__
    return isinstance(cause, (OperationalError, InterfaceError)) and not isinstance(exc, AccessError)
