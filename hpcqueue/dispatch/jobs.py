"""A batch's tasks → jobs: one job array per target and start time, the collect job after them, cancelling.

Jobs are submitted through :mod:`hpcqueue.dispatch.executor`. What they run is given by the caller (the
orchestrator passes the worker's ``TaskRunner`` and the ledger's collect job), so this module decides how work
is placed on the cluster, not what the work is.

The batch's schedule (``schedule.json``: each deferred task's begin time and the batch's deadline) says when
the work may run. Local targets run through submitit's local executor: ``array_parallelism`` worker processes,
each running its share of the tasks in order of begin time and waiting for each (so a two-core machine is not
asked to load the model eight times at once, and a worker reuses its loaded model across tasks). Slurm
targets get one job array per target and begin time per submission, one array element per task, throttled
by ``array_parallelism`` (per array: the planner keeps start slots within the target's capacity), split
into several arrays when the cluster's ``MaxArraySize`` is smaller than the number of tasks; Slurm holds a
deferred array until its ``--begin`` and removes work that can no longer end by the ``--deadline``. After
the arrays, a small **collect job** that depends on all of them (``afterany``) reads the results into the
ledger, so the ledger fills while the user is away.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hpcqueue.config import Target
from hpcqueue.dispatch.batchdir import BatchDir
from hpcqueue.dispatch.executor import JobSpec, executor_parameters, submit, submit_array, time_parameters

log = logging.getLogger(__name__)

#: A begin time at most this far ahead counts as now: its tasks are submitted without ``--begin``.
NOW_S = 10.0
#: The collect job reads files and writes the ledger: small and short.
COLLECT_JOB_TIMEOUT_MIN = 30
COLLECT_JOB_MEM_GB = 2.0

RunTasks = Callable[[list[str]], Any]
"""What an array element runs: called with the task directories of its tasks (the worker's
``TaskRunner()``)."""
CollectJob = Callable[[str, "str | None"], Any]
"""What the collect job runs: called with the batch directory and the ledger URL."""


def collect_job_parameters(
    partition: str, array_job_ids: Sequence[str], *, account: str | None = None, qos: str | None = None
) -> dict[str, Any]:
    """submitit parameters of the collect job: after every array of the submission, whatever their outcome."""
    params: dict[str, Any] = {
        "name": "hpcqueue-collect",
        "timeout_min": COLLECT_JOB_TIMEOUT_MIN,
        "nodes": 1,
        "tasks_per_node": 1,
        "cpus_per_task": 1,
        "mem_gb": COLLECT_JOB_MEM_GB,
        "slurm_partition": partition,
        "slurm_additional_parameters": {"dependency": "afterany:" + ":".join(array_job_ids)},
    }
    if account:
        params["slurm_account"] = account
    if qos:
        params["slurm_qos"] = qos
    return params


def batch_comment(batch_id: str) -> str:
    """The ``--comment`` of every Slurm job submitted for a batch: it finds the batch's jobs in the queue
    even when ``jobs.json`` does not record them (a submit killed between sbatch and writing its records)."""
    return f"hpcqueue:{batch_id}"


def cancel_unrecorded(batch: BatchDir) -> list[str]:
    """Cancel the batch's queued or running Slurm jobs that ``jobs.json`` does not record, and return them.

    A submit killed after an ``sbatch`` but before it wrote ``jobs.json`` leaves such arrays: nothing would
    follow them, and the next submission would run their tasks again beside them. Cancelled, their tasks are
    simply unsubmitted (a task they finished stays finished; one they were running resumes after its last
    finished generation batch). Call it only under the batch's submission lock
    (:func:`hpcqueue.dispatch.batchdir.submission_lock`): a live submission's jobs are not recorded yet.
    """
    if not any(t.get("executor") == "slurm" for t in batch.manifest()["targets"].values()):
        return []
    from hpcqueue.dispatch.slurm import queued_with_comment, scancel

    recorded = {str(record["job_id"]).split("_")[0] for record in batch.jobs()}
    orphans = sorted(queued_with_comment(batch_comment(batch.batch_id)) - recorded)
    if orphans:
        log.warning(
            "batch %s: cancelling Slurm job(s) %s, submitted by a submission that ended before recording "
            "them; their tasks are submitted again",
            batch.batch_id,
            ", ".join(orphans),
        )
        scancel(orphans)
    return orphans


def split_for_max_array_size(groups: Sequence[Sequence[int]], max_array_size: int) -> list[list[list[int]]]:
    """Cut the elements of one target's job array into arrays that Slurm accepts.

    Array indices run 0..n−1, and Slurm refuses an index ≥ ``MaxArraySize``, so each array holds at most
    ``max_array_size`` elements.
    """
    if max_array_size < 1:
        raise ValueError(f"MaxArraySize must be at least 1, not {max_array_size}")
    return [list(map(list, groups[i : i + max_array_size])) for i in range(0, len(groups), max_array_size)]


@dataclass
class SubmittedJobs:
    """Jobs submitted for one batch: records for the batch directory and the ledger.

    Progress is read from the batch directory and Slurm accounting (``hpcqueue.dispatch.status``), never from
    submitit's job objects, so any later process can follow the batch.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    sbatch_calls: int = 0
    collect_job_id: str | None = None


def start_groups(
    tasks: Mapping[int, str], begin_times: Mapping[int, float], *, now: float
) -> dict[tuple[str, float | None], list[int]]:
    """Tasks ({task_index: target}) grouped by (target, begin time): one Slurm array per group.

    A begin time at or before ``now + NOW_S`` (or none) counts as now, ``None``: such tasks go out without
    ``--begin``. Groups come target by target (in the order of their first task), each target's starting
    now first, then by begin time; tasks in index order.
    """
    groups: dict[tuple[str, float | None], list[int]] = {}
    for index, name in sorted(tasks.items()):
        groups.setdefault((name, begin_or_now(begin_times.get(index), now)), []).append(index)
    targets = list(dict.fromkeys(name for name, _ in groups))
    return dict(
        sorted(
            groups.items(),
            key=lambda item: (targets.index(item[0][0]), item[0][1] is not None, item[0][1] or 0.0),
        )
    )


def begin_or_now(when: float | None, now: float) -> float | None:
    """A begin time, or ``None`` (as soon as submitted) when there is none or it is within ``NOW_S``."""
    return None if when is None or when <= now + NOW_S else float(when)


def _local_slots(
    task_indices: Sequence[int], parallelism: int, begin_at: Mapping[int, float | None] | None = None
) -> list[list[int]]:
    """Deal tasks round-robin onto at most ``parallelism`` worker processes, in order of begin time (then
    index), so each worker waits for its tasks in turn and starts none before an earlier one. Tasks are
    length-sorted within a begin time, so round-robin keeps the slots' work balanced."""
    begin_at = begin_at or {}
    ordered = sorted(task_indices, key=lambda i: (begin_at.get(i) or 0.0, i))
    slots = [ordered[i::parallelism] for i in range(min(parallelism, len(ordered)))]
    return [slot for slot in slots if slot]


def submit_tasks(
    batch: BatchDir,
    targets: Mapping[str, Target],
    tasks: Mapping[int, str],
    *,
    run: RunTasks,
    collect: CollectJob | None = None,
    db_url: str | None = None,
    max_array_size: int | None = None,
) -> SubmittedJobs:
    """Submit ``tasks`` ({task_index: target name}) of ``batch`` to run ``run``; record the jobs in the batch
    directory.

    The batch's schedule (``schedule.json``) says when each task may start and when the batch must end:
    Slurm gets one array per target and begin time (:func:`start_groups`) with ``--begin``, ``--deadline``
    and ``--time-min`` (:func:`hpcqueue.dispatch.executor.time_parameters`); a local target keeps its
    ``array_parallelism`` workers, dealt the tasks in order of begin time, and each worker waits for its
    next task's time. Each job record carries its ``begin_at`` (None: at once; a local worker's first task).

    When Slurm arrays were submitted and ``collect`` is given, a collect job running ``collect`` follows them
    (``db_url`` is the ledger it writes; it must be reachable from the compute nodes).
    """
    now = time.time()
    begin_times = batch.begin_times()
    deadline_at = batch.deadline_at()
    runtime_s = {int(t["task_index"]): t.get("predicted_runtime_s") for t in batch.manifest()["tasks"]}
    by_target: dict[str, list[int]] = {}
    for index, name in sorted(tasks.items()):
        by_target.setdefault(name, []).append(index)

    submitted = SubmittedJobs()
    array_ids: list[str] = []
    slurm_groups = start_groups(tasks, begin_times, now=now)
    arrays: list[tuple[str, list[list[int]], float | None]] = []  # (target, elements, begin time)
    for name, indices in by_target.items():
        target = targets[name]
        if target.executor == "local":
            begins = {index: begin_or_now(begin_times.get(index), now) for index in indices}
            latest = max((when for when in begins.values() if when is not None), default=None)
            arrays.append((name, _local_slots(indices, target.array_parallelism, begins), latest))
            continue
        if max_array_size is None:
            from hpcqueue.dispatch.slurm import max_array_size as read_max_array_size

            max_array_size = read_max_array_size()
        for (group_target, begin_at), group in slurm_groups.items():
            if group_target == name:
                split = split_for_max_array_size([[index] for index in group], max_array_size)
                arrays += [(name, elements, begin_at) for elements in split]

    for name, groups, begin_at in arrays:
        target = targets[name]
        parameters = time_parameters(
            executor_parameters(target, tasks_in_job=max(len(group) for group in groups)),
            cluster=target.executor,
            now=now,
            begin_at=begin_at,
            deadline_at=deadline_at,
            predicted_runtime_s=[runtime_s.get(index) for group in groups for index in group],
        )
        if target.executor == "slurm":
            parameters["slurm_comment"] = batch_comment(batch.batch_id)
        jobs = submit_array(
            run,
            [([str(batch.task_dir(index)) for index in group],) for group in groups],
            job=JobSpec(
                folder=batch.logs_dir / name / ("%j" if target.executor == "slurm" else ""),
                cluster=target.executor,
                parameters=parameters,
                what=f"{len(groups)} task(s) to target {name!r}",
                hint=_slurm_hint(target, deadline_at) if target.executor == "slurm" else "",
                private=True,
                python=target.python,
            ),
        )
        submitted_at = time.time()
        if target.executor == "slurm":
            submitted.sbatch_calls += 1
            array_ids.append(str(jobs[0].job_id).split("_")[0])
        for job, group in zip(jobs, groups, strict=True):
            # a local worker's begin time is its first task's (its tasks are in order of begin time)
            first = begin_at if target.executor == "slurm" else begin_or_now(begin_times.get(group[0]), now)
            submitted.records.append(
                {
                    "job_id": str(job.job_id),
                    "executor": target.executor,
                    "target": name,
                    "task_indices": group,
                    "submitted_at": submitted_at,
                    "begin_at": first,
                }
            )
    if array_ids and collect is not None:
        submitted.collect_job_id = _submit_collect_job(batch, targets, by_target, array_ids, collect, db_url)
        submitted.sbatch_calls += 1
        submitted.records.append(
            {
                "job_id": submitted.collect_job_id,
                "executor": "slurm",
                "target": None,
                "task_indices": [],
                "kind": "collect",
                "submitted_at": time.time(),
                "begin_at": None,
            }
        )
    batch.add_jobs(submitted.records)
    return submitted


def _submit_collect_job(
    batch: BatchDir,
    targets: Mapping[str, Target],
    by_target: Mapping[str, list[int]],
    array_ids: list[str],
    collect: CollectJob,
    db_url: str | None,
) -> str:
    # The collect job runs on the partition of the first Slurm target of this submission: a partition the
    # user may use, and one whose nodes see the batch directory.
    first = next(targets[name] for name in by_target if targets[name].executor == "slurm")
    assert first.partition is not None  # a slurm target always has one (config validation)
    job = submit(
        collect,
        str(batch.path),
        db_url,
        job=JobSpec(
            folder=batch.logs_dir / "collect" / "%j",
            cluster="slurm",
            parameters={
                **collect_job_parameters(first.partition, array_ids, account=first.account, qos=first.qos),
                "slurm_comment": batch_comment(batch.batch_id),
            },
            what=f"the collect job after arrays {', '.join(array_ids)}",
            private=True,
        ),
    )
    return str(job.job_id)


def _slurm_hint(target: Target, deadline_at: float | None = None) -> str:
    hint = (
        f"; check that partition {target.partition!r} exists (`sinfo -p {target.partition}`), that sbatch "
        "works from this machine, and the target's gres/account/qos settings"
    )
    if deadline_at is not None:
        hint += (
            "; an 'Invalid time-min' error means the batch's deadline leaves too little time: re-plan before "
            "a later one with `hpcqueue retry BATCH --deadline ...`"
        )
    return hint


def cancel_jobs(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Cancel the given job records (Slurm jobs with one scancel call, local workers by signal).

    Returns the ids cancelled. Jobs that already ended are ignored.
    """
    import os
    import signal

    cancelled: list[str] = []
    slurm_ids = sorted({str(r["job_id"]).split("_")[0] for r in records if r["executor"] == "slurm"})
    if slurm_ids:
        from hpcqueue.dispatch.slurm import scancel

        scancel(slurm_ids)
        cancelled += slurm_ids
    for record in records:
        if record["executor"] != "local":
            continue
        try:
            os.kill(int(record["job_id"]), signal.SIGINT)  # what submitit's LocalJob.cancel sends
        except (ProcessLookupError, PermissionError, ValueError):
            continue
        cancelled.append(str(record["job_id"]))
    return cancelled
