"""The one way hpcqueue hands work to submitit: a target's executor parameters, and submitting with them.

Every job hpcqueue starts goes through here — batch tasks and their collect job (``dispatch.jobs``), profile
sweeps (``profiles.runs``) and fingerprint checks (``profiles.staleness``) — so a target means the same
``sbatch`` options everywhere, submitit's plain exceptions become one :class:`DispatchError` (or the caller's
subclass) naming what could not be submitted, and work on prompts is submitted owner-only (``private``).

submitit is used as it is: ``AutoExecutor`` with the cluster named explicitly (``local`` or ``slurm``, never
guessed from whether ``srun`` is on PATH).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hpcqueue.config import Target
from hpcqueue.errors import DispatchError, HpcqueueError
from hpcqueue.fileio import private_umask

Cluster = Literal["local", "slurm"]

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


@dataclass(frozen=True)
class JobSpec:
    """Where and how a job runs, and what to say when it cannot be submitted.

    ``what`` names the job in the error ("the collect job after arrays 12, 13"); ``hint`` says what to check;
    ``error`` is the exception raised (a ``DispatchError`` unless the caller has its own). With ``private``
    everything the submission creates (submitit's pickles and logs, the job's own files) is owner-only.
    """

    folder: str | Path
    cluster: Cluster
    parameters: dict[str, Any]
    what: str
    hint: str = ""
    error: type[HpcqueueError] = DispatchError
    private: bool = False


def submit(fn: Callable[..., Any], *args: Any, job: JobSpec) -> Any:
    """Submit ``fn(*args)`` as one job; returns submitit's job."""
    with _executor(job) as executor:
        return executor.submit(fn, *args)


def submit_array(fn: Callable[..., Any], args: Sequence[Sequence[Any]], *, job: JobSpec) -> list[Any]:
    """Submit ``fn(*a)`` for each ``a`` in ``args`` as one job array (one ``sbatch`` call on Slurm, job ids
    ``<array>_<i>``; one process per element locally); returns submitit's jobs in the order of ``args``."""
    with _executor(job) as executor:
        return list(executor.map_array(fn, *zip(*args, strict=True)))


@contextlib.contextmanager
def _executor(job: JobSpec) -> Iterator[Any]:
    import submitit  # imported here: only commands that submit need it

    try:
        with private_umask() if job.private else contextlib.nullcontext():
            executor = submitit.AutoExecutor(folder=job.folder, cluster=job.cluster)
            executor.update_parameters(**job.parameters)
            yield executor
    except Exception as exc:  # submitit raises plain exceptions (sbatch output, missing binaries)
        raise job.error(f"could not submit {job.what}: {exc}{job.hint}") from exc
