"""Profiling as a job on a target: submit the sweep to the target's partition (or this machine), wait for it.

``profile_target`` submits :func:`hpcqueue.profiles.sweep.sweep_job` through the one submitit helper
(:mod:`hpcqueue.dispatch.executor`), to the local executor or as an exclusive Slurm job on the target's
partition, so the profile describes the hardware the planner will send work to.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hpcqueue.config import DEFAULT_ENGINE, Target
from hpcqueue.errors import HpcqueueError, ProfileRunError
from hpcqueue.profiles.sweep import (
    FULL_TIMEOUT_MIN,
    QUICK_TIMEOUT_MIN,
    SweepConfig,
    profile_name,
    sweep_job,
)

logger = logging.getLogger(__name__)

_LOG_TAIL_LINES = 30


@dataclass
class ProfileRun:
    """A profiling job: submitted through submitit to a target, saving profile ``name`` (measured with
    ``engine``) under ``out_dir``."""

    job_id: str
    executor: Literal["local", "slurm"]
    out_dir: Path
    name: str
    log_dir: Path
    target: str
    job: Any = field(repr=False, default=None)
    engine: str = DEFAULT_ENGINE

    @property
    def profile_dir(self) -> Path:
        """Where the profile will be (or was) saved."""
        return self.out_dir / self.name

    def done(self) -> bool:
        return bool(self.job.done())

    def wait(self) -> Path:
        """Block until the job ends; return the saved profile directory, or raise ``ProfileRunError`` with
        the job's error and the last lines of its log."""
        try:
            return Path(self.job.result())
        except Exception as exc:
            tail = _log_tail(self.job)
            last = _error_line(str(exc)) or _error_line(tail) or type(exc).__name__
            raise ProfileRunError(
                f"profiling job {self.job_id} on target {self.target!r} ({self.executor}) failed: {last}\n"
                f"log directory: {self.log_dir}\n--- last lines of the job's log ---\n{tail}"
            ) from None


_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)(?::.*)?)$")


def _error_line(text: str) -> str | None:
    """The last ``SomeError: message`` line of a traceback (what went wrong, without the frames)."""
    for line in reversed(text.strip().splitlines()):
        match = _ERROR_LINE.match(line.strip())
        if match:
            return match.group(1)
    return None


def _log_tail(job: Any) -> str:
    texts = []
    for reader in ("stderr", "stdout"):
        try:
            text = getattr(job, reader)()
        except Exception:
            text = None
        if text:
            texts.append("\n".join(text.rstrip().splitlines()[-_LOG_TAIL_LINES:]))
    return "\n".join(texts) or "(the job wrote no log)"


def profile_target(
    target: Target,
    *,
    model: str,
    quick: bool,
    out_dir: Path,
    cache_dir: Path | None,
    wait: bool,
    batch_root: Path,
    config: SweepConfig | None = None,
    timeout_min: int | None = None,
    engine: str | None = None,
) -> ProfileRun:
    """Measure ``model`` on ``target`` as a job and save the profile ``<model slug>.<target>.<hardware>``
    (``…-vllm`` for vLLM: :func:`hpcqueue.profiles.sweep.profile_name`) under ``out_dir``.

    A local target runs through submitit's local executor. A Slurm target gets the target's submitit
    parameters (``dispatch.executor.executor_parameters``) and a whole node (``slurm_exclusive``), as the
    paper measured, so other jobs do not share the meters. ``config`` replaces the grid (default: the full
    grid, or ``SweepConfig.quick`` with ``quick``). The target's meter, nominal power, device and dtype always
    apply. ``engine`` is the engine to measure with (``Settings.engine_of(target)``; default: the target's
    own, else transformers); for vLLM the target's ``gpus_per_node`` (tensor parallel size),
    ``gpu_memory_utilization`` and ``max_model_len`` apply too. The job runs with the target's ``python``.
    The time limit is ``timeout_min``, else 24 h (1 h quick) or the target's own limit if longer, capped at
    the partition's ``MaxTime``. submitit's logs go under ``batch_root/profiles/``. With ``wait``
    the call returns after the job ended and raises ``ProfileRunError`` if it failed.
    """
    from hpcqueue.dispatch.executor import JobSpec, executor_parameters, submit
    from hpcqueue.meters.hardware import get_hardware
    from hpcqueue.models import resolve_model

    engine = engine or target.engine or DEFAULT_ENGINE
    base = config or (SweepConfig.quick(model) if quick else SweepConfig(model=model))
    vllm_options: dict[str, Any] = (
        {
            "tensor_parallel_size": max(1, target.gpus_per_node),
            "gpu_memory_utilization": target.gpu_memory_utilization,
            "max_model_len": target.max_model_len,
        }
        if engine == "vllm"
        else {}
    )
    sweep_config = dataclasses.replace(
        base,
        model=model,
        meter=target.meter,
        nominal_power_w=target.nominal_power_w,
        device=target.device,
        dtype=target.dtype,
        engine=engine,
        **vllm_options,
    )
    get_hardware(target.hardware)  # an unknown class fails here, not after the job waited in the queue
    name = profile_name(model, target.name, target.hardware, engine)
    ref = resolve_model(model, cache_dir=cache_dir)
    params = executor_parameters(target)
    params["name"] = f"hpcqueue-profile-{target.name}"
    limit = timeout_min or max(
        target.time_limit_min, QUICK_TIMEOUT_MIN if base.preset == "quick" else FULL_TIMEOUT_MIN
    )
    if target.executor == "slurm":
        params["slurm_exclusive"] = True
        if timeout_min is None:
            limit = _cap_to_partition(limit, target)
    params["timeout_min"] = int(limit)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    log_dir = Path(batch_root) / "profiles" / f"{name}-{stamp}"
    folder = log_dir / "%j" if target.executor == "slurm" else log_dir
    out_dir = Path(out_dir).resolve()
    hint = (
        f"; check that partition {target.partition!r} exists (`sinfo -p {target.partition}`) and that "
        "sbatch works from this machine"
        if target.executor == "slurm"
        else ""
    )
    job = submit(
        sweep_job,
        sweep_config,
        target.hardware,
        name,
        model,
        str(ref.path),
        str(cache_dir) if cache_dir else None,
        str(out_dir),
        job=JobSpec(
            folder=folder,
            cluster=target.executor,
            parameters=params,
            what=f"the profiling job to target {target.name!r}",
            hint=hint,
            error=ProfileRunError,
            python=target.python,
        ),
    )
    run = ProfileRun(
        job_id=str(job.job_id),
        executor=target.executor,
        out_dir=out_dir,
        name=name,
        log_dir=log_dir,
        target=target.name,
        job=job,
        engine=engine,
    )
    if wait:
        run.wait()
    return run


def _cap_to_partition(limit_min: int, target: Target) -> int:
    from hpcqueue.dispatch.slurm import partition_time_limit_min

    try:
        cap = partition_time_limit_min(str(target.partition))
    except HpcqueueError as exc:
        logger.warning(
            "cannot read the time limit of partition %r (%s); asking for %d min",
            target.partition,
            exc,
            limit_min,
        )
        return limit_min
    if cap is not None and cap < limit_min:
        logger.warning(
            "partition %r allows %d min, less than the %d min asked for the profiling job; a full sweep may "
            "not finish: use --quick or a partition with a longer limit",
            target.partition,
            cap,
            limit_min,
        )
        return cap
    return limit_min
