"""Collect: copy the finished tasks of a batch directory into the ledger.

A worker's last act is to write ``tasks/<NNNNNN>/metrics.json`` atomically (docs/internals.md), so a task is
finished exactly when that file exists. ``collect_batch`` reads each such file, and for a completed task its
``output.jsonl``, and records them with :meth:`Ledger.collect_task`, one transaction per task. It is the only
writer of task results: workers never open the database. Running it again changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcqueue.batch import BatchDir
from hpcqueue.errors import BatchNotFoundError, LedgerError
from hpcqueue.fileio import read_jsonl
from hpcqueue.ledger.db import Ledger, utc_from_epoch


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
    manifest = batch_dir / "batch.json"
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
    batch_id = batch_id or batch_id_of(batch_dir)
    states = ledger.task_states(batch_id)
    if not states and ledger.get_batch(batch_id) is None:
        raise BatchNotFoundError(
            f"batch {batch_id} (directory {batch_dir}) is not in the ledger {ledger.masked_url}; "
            "was it submitted with another HPCQUEUE_DB_URL?"
        )
    tasks_dir = batch_dir / "tasks"
    on_disk = (
        {int(p.name) for p in tasks_dir.iterdir() if p.is_dir() and p.name.isdigit()}
        if tasks_dir.is_dir()
        else set()
    )
    collected = already = pending = failed = 0
    for index in sorted(set(states) | on_disk):
        task_dir = tasks_dir / f"{index:06d}"
        metrics_path = task_dir / "metrics.json"
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
        outputs = read_jsonl(task_dir / "output.jsonl") if state == "completed" else iter(())
        log_tail = (
            BatchDir(batch_dir).log_tail(index) if state == "failed" and "log_tail" not in metrics else None
        )
        try:
            new = ledger.collect_task(batch_id, index, metrics, outputs, log_tail=log_tail)
        except FileNotFoundError as exc:
            raise LedgerError(
                f"{metrics_path} says the task completed but {task_dir / 'output.jsonl'} is missing; "
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
