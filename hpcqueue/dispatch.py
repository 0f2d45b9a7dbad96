"""Plan → submitit: the one place where a target becomes executor parameters, and where work is submitted.

Local targets run through submitit's local executor: ``array_parallelism`` worker processes, each running its
share of the tasks in order (so a two-core machine is not asked to load the model eight times at once, and a
worker reuses its loaded model across tasks). Slurm targets get one job array per target per submission, one
array element per task, throttled by ``array_parallelism``, split into several arrays when the cluster's
``MaxArraySize`` is smaller than the number of tasks. After the arrays, a small **collect job** that depends
on all of them (``afterany``) reads the results into the ledger, so the ledger fills while the user is away.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hpcqueue.batch import BatchDir
from hpcqueue.config import Target
from hpcqueue.errors import DispatchError

# hpcqueue target field → submitit AutoExecutor parameter. Generic names first, then Slurm's own.
_SLURM_PARAMETERS = {
    "partition": "slurm_partition",
    "gres": "slurm_gres",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "constraint": "slurm_constraint",
    "array_parallelism": "slurm_array_parallelism",
}
#: The collect job reads files and writes the ledger: small and short.
COLLECT_JOB_TIMEOUT_MIN = 30
COLLECT_JOB_MEM_GB = 2.0


def executor_parameters(target: Target, *, tasks_in_job: int = 1) -> dict[str, Any]:
    """submitit parameters for one job of ``target`` that runs ``tasks_in_job`` tasks one after another.

    A pure function: the golden tests of the sbatch parameters go through here.
    """
    params: dict[str, Any] = {
        "name": f"hpcqueue-{target.name}",
        "timeout_min": int(target.time_limit_min * max(1, tasks_in_job)),
        "nodes": 1,
        "tasks_per_node": 1,
    }
    if target.gpus_per_node:
        params["gpus_per_node"] = target.gpus_per_node
    if target.cpus_per_task:
        params["cpus_per_task"] = target.cpus_per_task
    if target.mem_gb:
        params["mem_gb"] = target.mem_gb
    if target.executor == "slurm":
        for name, submitit_name in _SLURM_PARAMETERS.items():
            value = getattr(target, name)
            if value is not None:
                params[submitit_name] = value
        if target.exclusive:
            params["slurm_exclusive"] = True
        if target.extra_sbatch:
            params["slurm_additional_parameters"] = dict(target.extra_sbatch)
    return params


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


def split_for_max_array_size(groups: Sequence[Sequence[int]], max_array_size: int) -> list[list[list[int]]]:
    """Cut the elements of one target's job array into arrays that Slurm accepts.

    Array indices run 0..n−1, and Slurm refuses an index ≥ ``MaxArraySize``, so each array holds at most
    ``max_array_size`` elements.
    """
    if max_array_size < 1:
        raise ValueError(f"MaxArraySize must be at least 1, not {max_array_size}")
    return [list(map(list, groups[i : i + max_array_size])) for i in range(0, len(groups), max_array_size)]


@dataclass
class Submission:
    """Jobs submitted for one batch: records for the batch directory and the ledger.

    Progress is read from the batch directory and Slurm accounting (``hpcqueue.status``), never from
    submitit's job objects, so any later process can follow the batch.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    sbatch_calls: int = 0
    collect_job_id: str | None = None


def _local_slots(task_indices: Sequence[int], parallelism: int) -> list[list[int]]:
    """Deal tasks round-robin onto at most ``parallelism`` worker processes (tasks are already length-sorted,
    so round-robin keeps the slots' work balanced)."""
    slots = [list(task_indices[i::parallelism]) for i in range(min(parallelism, len(task_indices)))]
    return [slot for slot in slots if slot]


def submit_tasks(
    batch: BatchDir,
    targets: Mapping[str, Target],
    tasks: Mapping[int, str],
    *,
    db_url: str | None = None,
    collect_job: bool = True,
    max_array_size: int | None = None,
) -> Submission:
    """Submit ``tasks`` ({task_index: target name}) of ``batch``; record the jobs in the batch directory.

    When Slurm arrays were submitted and ``collect_job`` is true, a collect job follows them (``db_url`` is
    the ledger it writes; it must be reachable from the compute nodes).
    """
    import submitit  # imported here: it is only needed when something is submitted

    from hpcqueue.worker import TaskRunner

    by_target: dict[str, list[int]] = {}
    for index, name in sorted(tasks.items()):
        by_target.setdefault(name, []).append(index)

    submission = Submission()
    array_ids: list[str] = []
    for name, indices in by_target.items():
        target = targets[name]
        if target.executor == "local":
            arrays = [_local_slots(indices, target.array_parallelism)]
        else:
            if max_array_size is None:
                from hpcqueue.slurm import max_array_size as read_max_array_size

                max_array_size = read_max_array_size()
            arrays = split_for_max_array_size([[index] for index in indices], max_array_size)
        for groups in arrays:
            tasks_in_job = max(len(group) for group in groups)
            folder = batch.logs_dir / name / ("%j" if target.executor == "slurm" else "")
            try:
                executor = submitit.AutoExecutor(folder=folder, cluster=target.executor)
                executor.update_parameters(**executor_parameters(target, tasks_in_job=tasks_in_job))
                dirs = [[str(batch.task_dir(index)) for index in group] for group in groups]
                jobs = executor.map_array(TaskRunner(), dirs)
            except Exception as exc:  # submitit raises plain exceptions (sbatch output, missing binaries)
                raise DispatchError(
                    f"could not submit {len(groups)} task(s) to target {name!r}: {exc}"
                    + (_slurm_hint(target) if target.executor == "slurm" else "")
                ) from exc
            submitted_at = time.time()
            if target.executor == "slurm":
                submission.sbatch_calls += 1
                array_ids.append(str(jobs[0].job_id).split("_")[0])
            for job, group in zip(jobs, groups, strict=True):
                submission.records.append(
                    {
                        "job_id": str(job.job_id),
                        "executor": target.executor,
                        "target": name,
                        "task_indices": group,
                        "submitted_at": submitted_at,
                    }
                )
    if array_ids and collect_job:
        submission.collect_job_id = _submit_collect_job(batch, targets, by_target, array_ids, db_url)
        submission.sbatch_calls += 1
        submission.records.append(
            {
                "job_id": submission.collect_job_id,
                "executor": "slurm",
                "target": None,
                "task_indices": [],
                "kind": "collect",
                "submitted_at": time.time(),
            }
        )
    batch.add_jobs(submission.records)
    return submission


def _submit_collect_job(
    batch: BatchDir,
    targets: Mapping[str, Target],
    by_target: Mapping[str, list[int]],
    array_ids: list[str],
    db_url: str | None,
) -> str:
    import submitit

    from hpcqueue.status import collect_job

    # The collect job runs on the partition of the first Slurm target of this submission: a partition the
    # user may use, and one whose nodes see the batch directory.
    first = next(targets[name] for name in by_target if targets[name].executor == "slurm")
    assert first.partition is not None  # a slurm target always has one (config validation)
    executor = submitit.AutoExecutor(folder=batch.logs_dir / "collect" / "%j", cluster="slurm")
    executor.update_parameters(
        **collect_job_parameters(first.partition, array_ids, account=first.account, qos=first.qos)
    )
    try:
        job = executor.submit(collect_job, str(batch.path), db_url)
    except Exception as exc:
        raise DispatchError(
            f"could not submit the collect job after arrays {', '.join(array_ids)}: {exc}"
        ) from exc
    return str(job.job_id)


def _slurm_hint(target: Target) -> str:
    return (
        f"; check that partition {target.partition!r} exists (`sinfo -p {target.partition}`), that sbatch "
        "works from this machine, and the target's gres/account/qos settings"
    )


def cancel_jobs(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Cancel the given job records (Slurm jobs with one scancel call, local workers by signal).

    Returns the ids cancelled. Jobs that already ended are ignored.
    """
    import os
    import signal

    cancelled: list[str] = []
    slurm_ids = sorted({str(r["job_id"]).split("_")[0] for r in records if r["executor"] == "slurm"})
    if slurm_ids:
        from hpcqueue.slurm import scancel

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
