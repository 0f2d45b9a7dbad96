"""Where every task of a batch stands, from the batch directory and the jobs that run it.

The batch directory says what the workers finished (``metrics.json``) and what a worker holds right now (the
task's lock). The jobs say the rest: a task whose Slurm job ended FAILED, CANCELLED, TIMEOUT or NODE_FAIL
before the worker wrote ``metrics.json`` is **lost** — recorded as failed with its Slurm state and the tail of
its log, and run again by ``hpcqueue retry``. Slurm is asked with one batched ``sacct`` call per look, rate
limited by :class:`hpcqueue.slurm.SacctPoller` when polling.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hpcqueue.batch import BatchDir

TaskStatus = Literal["pending", "queued", "running", "completed", "failed", "lost", "cancelled"]
FINISHED: tuple[TaskStatus, ...] = ("completed", "failed", "lost", "cancelled")
# The ledger's task states (its check constraint) for each status.
_LEDGER_STATE = {
    "pending": "planned",
    "queued": "submitted",
    "running": "running",
    "completed": "completed",
    "failed": "failed",
    "lost": "failed",
    "cancelled": "cancelled",
}
log = logging.getLogger(__name__)
#: A submitted Slurm job missing from accounting for longer than this is taken as gone.
ACCOUNTING_GRACE_S = 600.0


@dataclass(frozen=True)
class TaskView:
    """One task: its status and, when a job ran it, which job, where and when."""

    task_index: int
    target: str
    status: TaskStatus
    executor: str | None = None
    job_id: str | None = None
    slurm_state: str | None = None
    node: str | None = None
    started_at: float | None = None
    ended_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def _pid_alive(pid: int) -> bool:
    """A local worker controller is alive (a reused pid that is not a submitit controller does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"submitit" in cmdline


def task_views(batch: BatchDir, *, poller: Any = None) -> dict[int, TaskView]:
    """Every task's :class:`TaskView`, asking Slurm (one sacct call, through ``poller`` if given) only about
    tasks that the batch directory cannot settle by itself."""
    manifest = batch.manifest()
    targets_of = {t["task_index"]: t["target"] for t in manifest["tasks"]}
    file_states = batch.task_states()
    jobs = batch.latest_jobs()
    slurm_ids = sorted(
        {
            str(jobs[i]["job_id"])
            for i, state in file_states.items()
            if i in jobs and jobs[i]["executor"] == "slurm" and state in ("pending", "running")
        }
    )
    slurm_states: Mapping[str, Any] = {}
    accounting_ok = True
    if slurm_ids:
        from hpcqueue.slurm import SlurmError, sacct

        if poller is not None:
            slurm_states = poller.states(slurm_ids)
            accounting_ok = poller.last_error is None
        else:
            try:
                slurm_states = sacct(slurm_ids)
            except SlurmError as exc:  # slurmdbd down: say so, and take nothing for lost
                log.warning("cannot read Slurm accounting, task states may be stale: %s", exc)
                accounting_ok = False

    views: dict[int, TaskView] = {}
    for index, file_state in file_states.items():
        record = jobs.get(index)
        target = targets_of[index]
        if record is None:
            views[index] = TaskView(index, target, "running" if file_state == "running" else file_state)
            continue
        job_id = str(record["job_id"])
        base = {"executor": record["executor"], "job_id": job_id}
        if file_state in ("completed", "failed"):
            views[index] = TaskView(index, target, file_state, **base)
        elif record["executor"] == "slurm":
            job = slurm_states.get(job_id)
            if job is None:
                # Not in accounting: just submitted, or a pending element that was cancelled (sacct may drop
                # those). Accounting lists a queued job within seconds, so a long absence means it is gone.
                if file_state == "running":
                    status: TaskStatus = "running"
                elif record.get("cancelled"):
                    status = "cancelled"
                elif (
                    accounting_ok
                    and time.time() - float(record.get("submitted_at") or 0) > ACCOUNTING_GRACE_S
                ):
                    status = "lost"
                else:
                    status = "queued"
                views[index] = TaskView(index, target, status, **base)
                continue
            if file_state == "running" or job.state == "RUNNING":
                status = "running"
            elif job.finished:
                status = "cancelled" if job.state == "CANCELLED" and record.get("cancelled") else "lost"
            else:
                status = "queued"
            views[index] = TaskView(
                index,
                target,
                status,
                slurm_state=job.state,
                node=job.node,
                started_at=job.start,
                ended_at=job.end,
                **base,
            )
        else:
            alive = _pid_alive(int(job_id))
            if file_state == "running":
                status = "running"
            elif alive:
                status = "queued"
            else:
                status = "cancelled" if record.get("cancelled") else "lost"
            views[index] = TaskView(index, target, status, **base)
    return views


def live_task_indices(views: Mapping[int, TaskView]) -> set[int]:
    """Tasks that a job submitted earlier may still run: never submit those twice."""
    return {i for i, view in views.items() if view.status in ("queued", "running")}


def refresh(
    batch: BatchDir,
    ledger: Any,
    *,
    poller: Any = None,
    previous: Mapping[int, TaskView] | None = None,
) -> dict[int, TaskView]:
    """Collect finished tasks into the ledger and record where the others stand (Slurm ids, nodes, times,
    states; lost tasks with their Slurm state and log tail). Idempotent.

    With ``previous`` (the views of the last refresh, when polling) only tasks whose view changed are
    written, so a poll of a large batch does not rewrite every task row.
    """
    from hpcqueue.ledger.collect import collect_batch

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
        updates.append(update)
    if updates:
        ledger.update_tasks(batch.batch_id, updates)
    return views


def collect_job(batch_dir: str, db_url: str | None) -> dict[str, Any]:
    """What the collect job runs on a compute node after the batch's arrays: refresh the ledger."""
    from hpcqueue.ledger import Ledger

    batch = BatchDir(Path(batch_dir))
    with Ledger(db_url) as ledger:
        views = refresh(batch, ledger)
    counts: dict[str, int] = {}
    for view in views.values():
        counts[view.status] = counts.get(view.status, 0) + 1
    return {"batch_id": batch.batch_id, "tasks": counts}
