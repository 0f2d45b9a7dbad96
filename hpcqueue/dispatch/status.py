"""Where every task of a batch stands, from the batch directory and the jobs that run it.

The batch directory says what the workers finished (``metrics.json``), what a worker holds right now (the
task's lock) and when each task may start (``schedule.json``). The jobs say the rest: a task whose Slurm job
ended FAILED, CANCELLED, TIMEOUT or NODE_FAIL before the worker wrote ``metrics.json`` is **lost** — recorded
as failed with its Slurm state and the tail of its log, and run again by ``hpcqueue retry``. A queued task
whose begin time is ahead is **deferred**; one that the batch's deadline cut (Slurm removed its job with state
DEADLINE, or the worker found the deadline passed and wrote a ``deadline`` failure) is **expired**. Slurm is
asked with one batched ``sacct`` call per look, rate limited by :class:`hpcqueue.dispatch.slurm.SacctPoller`
when polling. ``hpcqueue.ledger.collect.refresh`` writes these views to the ledger.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hpcqueue.dispatch.batchdir import BatchDir

if TYPE_CHECKING:
    from hpcqueue.dispatch.slurm import JobState

TaskStatus = Literal[
    "pending", "queued", "deferred", "running", "completed", "failed", "expired", "lost", "cancelled"
]
FINISHED: tuple[TaskStatus, ...] = ("completed", "failed", "expired", "lost", "cancelled")
log = logging.getLogger(__name__)
#: A submitted Slurm job missing from accounting for longer than this is taken as gone.
ACCOUNTING_GRACE_S = 600.0


@dataclass(frozen=True)
class TaskView:
    """One task: its status, when it may start (``begin_at``, epoch seconds from the batch's schedule; None
    when it starts as soon as it is submitted) and, when a job ran it, which job, where and when."""

    task_index: int
    target: str
    status: TaskStatus
    executor: str | None = None
    job_id: str | None = None
    slurm_state: str | None = None
    node: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    begin_at: float | None = None

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
    begin_times = batch.begin_times()
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
    gone = _forgotten(
        [i for i in slurm_ids if i not in slurm_states], jobs.values(), accounting_ok=accounting_ok
    )

    now = time.time()
    views: dict[int, TaskView] = {}
    for index, file_state in file_states.items():
        record = jobs.get(index)
        begin_at = begin_times.get(index)
        job: JobState | None = None
        status: TaskStatus
        if file_state == "failed" and _cut_by_deadline(batch.metrics(index)):
            status = "expired"
        elif record is None or file_state in ("completed", "failed"):
            status = file_state
        elif record["executor"] == "slurm":
            job = slurm_states.get(str(record["job_id"]))
            status = _slurm_status(file_state, record, job, accounting_ok)
            if status == "queued" and str(record["job_id"]) in gone:
                status = "cancelled" if record.get("cancelled") else "lost"
        else:
            status = _local_status(file_state, record)
        if status == "queued" and begin_at is not None and begin_at > now:
            status = "deferred"
        fields = _job_fields(record, job)
        views[index] = TaskView(index, targets_of[index], status, begin_at=begin_at, **fields)
    return views


#: A job submitted this long ago that neither accounting nor slurmctld knows is gone.
FORGOTTEN_AFTER_S = 30.0


def _forgotten(job_ids: list[str], records: Iterable[Mapping[str, Any]], *, accounting_ok: bool) -> set[str]:
    """Of the jobs accounting does not list, those slurmctld does not hold either (one ``scontrol`` look
    per array): gone. A pending element cancelled before its array was split leaves no record in
    accounting (sacct lists the array's rest), so without this it would pass for queued until
    :data:`ACCOUNTING_GRACE_S`. Jobs submitted in the last :data:`FORGOTTEN_AFTER_S` are never gone."""
    submitted = {str(r["job_id"]): float(r.get("submitted_at") or 0) for r in records}
    now = time.time()
    old = [i for i in job_ids if now - submitted.get(i, now) > FORGOTTEN_AFTER_S]
    if not old or not accounting_ok:
        return set()
    from hpcqueue.dispatch.slurm import show_jobs
    from hpcqueue.errors import SlurmError

    try:
        held = show_jobs(old)
    except SlurmError as exc:  # slurmctld down: take nothing for gone
        log.warning("cannot ask slurmctld about jobs missing from accounting: %s", exc)
        return set()
    return {i for i in old if i not in held}


def _cut_by_deadline(metrics: Mapping[str, Any] | None) -> bool:
    """The worker found the batch's deadline passed and did not run the task (``error.code`` deadline)."""
    error = (metrics or {}).get("error")
    return isinstance(error, Mapping) and error.get("code") == "deadline"


def _slurm_status(
    file_state: str, record: Mapping[str, Any], job: JobState | None, accounting_ok: bool
) -> TaskStatus:
    """The status of an unfinished task run by the Slurm job of ``record`` (``job``: what accounting says
    of it, None when it lists no such job)."""
    if job is None:
        # Not in accounting: just submitted, or a pending element that was cancelled (sacct may drop
        # those). Accounting lists a queued job within seconds, so a long absence means it is gone.
        if file_state == "running":
            return "running"
        if record.get("cancelled"):
            return "cancelled"
        if accounting_ok and time.time() - float(record.get("submitted_at") or 0) > ACCOUNTING_GRACE_S:
            return "lost"
        return "queued"
    if file_state == "running" or job.state == "RUNNING":
        return "running"
    if job.state == "DEADLINE":
        return "expired"  # Slurm removed it: it could no longer end by the batch's deadline
    if job.finished:
        return "cancelled" if job.state == "CANCELLED" and record.get("cancelled") else "lost"
    return "queued"


def _local_status(file_state: str, record: Mapping[str, Any]) -> TaskStatus:
    """The status of an unfinished task run by the local worker of ``record`` (its pid is the job id)."""
    alive = _pid_alive(int(record["job_id"]))
    if file_state == "running":
        return "running"
    if alive:
        return "queued"
    return "cancelled" if record.get("cancelled") else "lost"


def _job_fields(record: Mapping[str, Any] | None, job: JobState | None) -> dict[str, Any]:
    """What a task's view says of the job that ran it: nothing without one; else its executor and id, and
    for a Slurm job in accounting its state, node and times."""
    if record is None:
        return {}
    fields: dict[str, Any] = {"executor": record["executor"], "job_id": str(record["job_id"])}
    if job is not None:
        fields.update(slurm_state=job.state, node=job.node, started_at=job.start, ended_at=job.end)
    return fields


def live_task_indices(views: Mapping[int, TaskView]) -> set[int]:
    """Tasks that a job submitted earlier may still run: never submit those twice."""
    return {i for i, view in views.items() if view.status in ("queued", "deferred", "running")}
