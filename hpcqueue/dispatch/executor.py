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
import math
import os
import shlex
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hpcqueue.config import SBATCH_KEY_RE, Target, check_sbatch_value
from hpcqueue.dispatch.slurm import format_slurm_time
from hpcqueue.errors import ConfigError, DispatchError, HpcqueueError
from hpcqueue.fileio import private_umask

Cluster = Literal["local", "slurm"]

#: How long before the time limit submitit's Slurm jobs get their checkpoint signal (submitit's default).
SUBMITIT_SIGNAL_DELAY_S = 90

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
        # submitit asks Slurm for its checkpoint signal 90 s before the time limit; with a limit of a few
        # minutes that would requeue every job before it produced anything. A quarter of the limit at most.
        limit_s = params["timeout_min"] * 60
        if limit_s < 4 * SUBMITIT_SIGNAL_DELAY_S:
            params["slurm_signal_delay_s"] = max(1, limit_s // 4)
        if target.extra_sbatch:
            params["slurm_additional_parameters"] = dict(target.extra_sbatch)
    return params


#: Where submitit's local controllers write what they print (in the job folder; see ``_controller_output``).
LOCAL_CONTROLLER_LOG = "controller.log"
#: The margin ``--time-min`` gives a job over twice its predicted runtime (model load, a slow node).
TIME_MIN_MARGIN_S = 300.0
#: A job without ``--begin`` reaches sbatch a little after ``now``: its deadline window counts from then.
SUBMIT_SLACK_S = 30.0


def time_parameters(
    params: Mapping[str, Any],
    *,
    cluster: Cluster,
    now: float,
    begin_at: float | None = None,
    deadline_at: float | None = None,
    predicted_runtime_s: Sequence[float | None] = (),
) -> dict[str, Any]:
    """``params`` (one job's :func:`executor_parameters`) with when the job may start and by when it must end.

    A pure function of its arguments (``now`` included), so the golden tests cover it.

    Slurm (``begin_at``: the array's begin time, None to start when submitted): ``--begin`` holds a deferred
    array until its time, and with a deadline ``--deadline`` makes Slurm remove work that can no longer
    finish by then (state DEADLINE) instead of running it late. Slurm removes a job that cannot *end* before
    the deadline with its minimum time, which without ``--time-min`` is the whole time limit — a job with a
    long limit would be removed as soon as it became eligible. So ``--time-min`` (minutes) is
    ``max(1, min(time limit, ⌈(2 × longest predicted runtime + 300 s) / 60⌉, ⌊(deadline − begin) / 60⌋))``;
    an unknown prediction (None or NaN) counts as the time limit, and a job that starts at once counts its
    begin as ``now + SUBMIT_SLACK_S``. Times are the submitting machine's local time, which is how sbatch
    reads them; the begin is rounded up and the deadline down to the second. (sbatch refuses a job whose
    deadline leaves less than its ``--time-min``.)

    Local (``begin_at``: the latest begin time among the job's tasks): the worker waits for each task's
    begin time itself, so submitit's time limit for the worker grows by the wait — until the deadline when
    there is one (a re-plan never moves a task past it), else until the latest begin time.
    """
    out = dict(params)
    limit_min = int(params["timeout_min"])
    if cluster == "local":
        wait_until = deadline_at if deadline_at is not None else begin_at
        if wait_until is not None and wait_until > now:
            out["timeout_min"] = limit_min + math.ceil((wait_until - now) / 60)
        return out
    extra: dict[str, Any] = {}
    if begin_at is not None:
        extra["begin"] = format_slurm_time(math.ceil(begin_at))
    if deadline_at is not None:
        # sbatch refuses a --time-min longer than the time left, which it measures when it runs: a job that
        # starts at once counts from a little after now; the window is taken from the times as formatted.
        start = math.ceil(begin_at) if begin_at is not None else now + SUBMIT_SLACK_S
        extra["deadline"] = format_slurm_time(math.floor(deadline_at))
        extra["time_min"] = time_min_minutes(limit_min, start, deadline_at, predicted_runtime_s)
    if extra:
        out["slurm_additional_parameters"] = {**params.get("slurm_additional_parameters", {}), **extra}
    return out


def time_min_minutes(
    limit_min: int, start: float, deadline_at: float, predicted_runtime_s: Sequence[float | None]
) -> int:
    """A job's ``--time-min`` (minutes) when it may start at ``start`` and must end by ``deadline_at``:
    ``max(1, min(limit_min, ⌈(2 × longest predicted runtime + 300 s) / 60⌉, ⌊(deadline − start) / 60⌋))``, an
    unknown prediction (None or NaN) counting as the time limit (see :func:`time_parameters`)."""
    runtimes = [float("nan") if r is None else float(r) for r in predicted_runtime_s]
    if runtimes and all(math.isfinite(r) for r in runtimes):
        needed_min = math.ceil((2 * max(runtimes) + TIME_MIN_MARGIN_S) / 60)
    else:
        needed_min = limit_min
    window_min = math.floor((math.floor(deadline_at) - start) / 60)
    return max(1, min(limit_min, needed_min, window_min))


@dataclass(frozen=True)
class JobSpec:
    """Where and how a job runs, and what to say when it cannot be submitted.

    ``what`` names the job in the error ("the collect job after arrays 12, 13"); ``hint`` says what to check;
    ``error`` is the exception raised (a ``DispatchError`` unless the caller has its own). With ``private``
    everything the submission creates (submitit's pickles and logs, the job's own files) is owner-only.
    ``python`` is the interpreter the job runs ``submitit``'s entry point with (it must have hpcqueue and
    submitit installed); None runs it with the submitting process's own.
    """

    folder: str | Path
    cluster: Cluster
    parameters: dict[str, Any]
    what: str
    hint: str = ""
    error: type[HpcqueueError] = DispatchError
    private: bool = False
    python: str | None = None  # the interpreter the job runs with (a target's ``python``); None: this one


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

    if job.cluster == "slurm":
        check_script_values(job)
    try:
        with private_umask() if job.private else contextlib.nullcontext():
            # submitit writes the interpreter into the job's command line as it is: quoted here
            interpreter = {f"{job.cluster}_python": shlex.quote(job.python)} if job.python else {}
            executor = submitit.AutoExecutor(folder=job.folder, cluster=job.cluster, **interpreter)
            executor.update_parameters(**job.parameters)
            with _controller_output(job) if job.cluster == "local" else contextlib.nullcontext():
                yield executor
    except Exception as exc:  # submitit raises plain exceptions (sbatch output, missing binaries)
        raise job.error(f"could not submit {job.what}: {exc}{job.hint}") from exc


def check_script_values(job: JobSpec) -> None:
    """Refuse what cannot be written into an sbatch script safely; raises :class:`ConfigError`.

    submitit writes each parameter as an ``#SBATCH --key=<value>`` line, the value quoted for the shell
    (``shlex.quote``), and the job folder into those lines and the command. Quoting keeps ``$(...)``,
    backticks, quotes and spaces as data, but a control character — a newline above all — would end the
    ``#SBATCH`` comment and run the rest of the value as a shell command; and a key becomes ``--key``
    unquoted. The config's checks refuse such values first (:class:`hpcqueue.config.Target`); this is the
    last check before the script is written, for every value however it got here.
    """
    extra = job.parameters.get("slurm_additional_parameters") or {}
    values: dict[str, Any] = {"the job folder": str(job.folder)}
    if job.python:
        values["python"] = job.python
    values.update({k: v for k, v in job.parameters.items() if k != "slurm_additional_parameters"})
    values.update({f"slurm_additional_parameters.{k}": v for k, v in extra.items()})
    try:
        for key in extra:
            if not SBATCH_KEY_RE.fullmatch(str(key)):
                raise ValueError(f"{key!r} is not an sbatch option name")
        for key, value in values.items():
            check_sbatch_value(value, key)
    except ValueError as exc:
        raise ConfigError(f"cannot submit {job.what}: {exc}") from None


@contextlib.contextmanager
def _controller_output(job: JobSpec) -> Iterator[None]:
    """Send what submitit's local controllers print to ``LOCAL_CONTROLLER_LOG`` in the job folder.

    A local controller outlives the submitting process and inherits its stdout and stderr; a worker that
    waits hours for a begin time would keep the pipe of whoever reads ``hpcqueue submit``'s output
    (``| jq``, a subprocess capturing it) open, and the reader would wait with it. The workers' own output
    goes to submitit's log files as before.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    folder = Path(job.folder)
    folder.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(folder / LOCAL_CONTROLLER_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no stdout or stderr to protect (a daemon)
        os.close(log_fd)
        yield
        return
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log_fd):
            os.close(fd)
