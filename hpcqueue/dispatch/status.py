"""Where every task of a batch stands, from the batch directory and the jobs that run it.

The batch directory says what the workers finished (``metrics.json``) and what a worker holds right now (the
task's lock). The jobs say the rest: a task whose Slurm job ended FAILED, CANCELLED, TIMEOUT or NODE_FAIL
before the worker wrote ``metrics.json`` is **lost** — recorded as failed with its Slurm state and the tail of
its log, and run again by ``hpcqueue retry``. Slurm is asked with one batched ``sacct`` call per look, rate
limited by :class:`hpcqueue.dispatch.slurm.SacctPoller` when polling. ``hpcqueue.ledger.collect.refresh``
writes these views to the ledger.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hpcqueue.dispatch.batchdir import BatchDir

TaskStatus = Literal["pending", "queued", "running", "completed", "failed", "lost", "cancelled"]
FINISHED: tuple[TaskStatus, ...] = ("completed", "failed", "lost", "cancelled")
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
        from hpcqueue.dispatch.slurm import sacct
        from hpcqueue.errors import SlurmError

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
