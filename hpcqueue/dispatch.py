"""Plan → submitit: the one place where a target becomes executor parameters, and where work is submitted.

Local targets run through submitit's local executor: ``array_parallelism`` worker processes, each running its
share of the tasks in order (so a two-core machine is not asked to load the model eight times at once, and a
worker reuses its loaded model across tasks). Slurm targets get one job array per target per submission, one
array element per task, throttled by ``array_parallelism``.
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


@dataclass
class Submission:
    """Jobs submitted for one batch: records for the batch directory and the ledger, and the live jobs."""

    records: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[Any] = field(default_factory=list)

    def done(self) -> bool:
        return all(job.done() for job in self.jobs)


def _local_slots(task_indices: Sequence[int], parallelism: int) -> list[list[int]]:
    """Deal tasks round-robin onto at most ``parallelism`` worker processes (tasks are already length-sorted,
    so round-robin keeps the slots' work balanced)."""
    slots = [list(task_indices[i::parallelism]) for i in range(min(parallelism, len(task_indices)))]
    return [slot for slot in slots if slot]


def submit_tasks(batch: BatchDir, targets: Mapping[str, Target], tasks: Mapping[int, str]) -> Submission:
    """Submit ``tasks`` ({task_index: target name}) of ``batch``; record the jobs in the batch directory."""
    import submitit  # imported here: it is only needed when something is submitted

    from hpcqueue.worker import run_tasks

    by_target: dict[str, list[int]] = {}
    for index, name in sorted(tasks.items()):
        by_target.setdefault(name, []).append(index)

    submission = Submission()
    for name, indices in by_target.items():
        target = targets[name]
        if target.executor == "local":
            groups = _local_slots(indices, target.array_parallelism)
        else:
            groups = [[index] for index in indices]
        tasks_in_job = max(len(group) for group in groups)
        folder = batch.logs_dir / name / ("%j" if target.executor == "slurm" else "")
        try:
            executor = submitit.AutoExecutor(folder=folder, cluster=target.executor)
            executor.update_parameters(**executor_parameters(target, tasks_in_job=tasks_in_job))
            dirs = [[str(batch.task_dir(index)) for index in group] for group in groups]
            jobs = executor.map_array(run_tasks, dirs)
        except Exception as exc:  # submitit raises plain exceptions (sbatch output, missing binaries)
            raise DispatchError(f"could not submit {len(indices)} task(s) to target {name!r}: {exc}") from exc
        submitted_at = time.time()
        for job, group in zip(jobs, groups, strict=True):
            submission.jobs.append(job)
            submission.records.append(
                {
                    "job_id": str(job.job_id),
                    "executor": target.executor,
                    "target": name,
                    "task_indices": group,
                    "submitted_at": submitted_at,
                }
            )
    batch.add_jobs(submission.records)
    return submission
