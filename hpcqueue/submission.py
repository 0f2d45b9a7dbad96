"""The orchestrator: ingest → count tokens → plan → batch directory + ledger → dispatch → (wait → collect).

This is the library behind ``hpcqueue submit``, ``retry``, ``cancel`` and ``status --watch``; the CLI only
parses options and renders what comes back. It is the one module that wires the stages together: it hands
dispatch the worker's entry point and the ledger's collect job, so neither stage needs to know the other.
Submitting the same input with the same settings again finds the same batch id and resumes: finished tasks
are collected (if they were not yet), tasks held by a live job are left alone, and only the rest is submitted.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hpcqueue.config import Settings, Target
from hpcqueue.dispatch import batchdir
from hpcqueue.dispatch.jobs import begin_or_now, cancel_unrecorded
from hpcqueue.errors import PlanningError
from hpcqueue.fileio import json_safe, read_jsonl
from hpcqueue.ingest import Rejected, RequestSet, read_and_count, rejected_id

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Everything decided before anything is written: the validated requests, their tokens and the plan."""

    settings: Settings
    requests: RequestSet
    table: pd.DataFrame
    rejected: list[Rejected]
    model: Any  # hpcqueue.models.ModelRef
    plan: Any  # hpcqueue.planner.Plan
    batch_id: str
    skip_invalid: bool

    @property
    def warnings(self) -> list[str]:
        return [str(issue) for issue in self.requests.warnings] + list(self.plan.warnings)


def prepare(path: str | os.PathLike[str], settings: Settings, *, skip_invalid: bool = False) -> Prepared:
    """Validate, count tokens and plan. Raises :class:`InputError` (nothing written) on invalid lines."""
    from hpcqueue.planner import PlanOptions, plan_requests, resolve_cost_models
    from hpcqueue.profiles.store import profile_search_path
    from hpcqueue.sites import load_sites

    counted = read_and_count(path, settings, skip_invalid=skip_invalid)
    requests, table, rejected, model = counted.requests, counted.table, counted.rejected, counted.model

    targets = list(settings.targets.values())
    notes: list[str] = []
    search_path = profile_search_path(settings.profile_dirs)
    cost_models = resolve_cost_models(
        targets,
        model.name,
        search_path,
        notes=notes,
        model_path=model.path,
        cache_dir=settings.cache_dir,
        default_engine=settings.engine,
    )
    sites = load_sites(settings.sites)
    options = PlanOptions.from_settings(settings, model=model.name)
    plan = plan_requests(table, targets, cost_models, options, sites)
    plan.warnings.extend(notes)
    if len(targets) > 1 or any(m is not None and m.method != "analytic" for m in cost_models.values()):
        # Missing or stale profiles matter only when the plan uses profiles (one target needs none).
        from hpcqueue.profiles.staleness import profile_warnings

        warnings = profile_warnings(
            targets,
            model.name,
            search_path,
            settings.cache_dir,
            config_path=settings.config_path,
            default_engine=settings.engine,
        )
        plan.warnings.extend(warnings)
    identity = settings.model_dump(mode="json")
    if settings.deadline_at is not None:  # a deadline given as a time is part of what the batch is
        identity["deadline_at"] = settings.deadline_at.isoformat()
    batch_id = batchdir.batch_id_for(
        requests.sha256,
        identity,
        {name: target.model_dump(mode="json") for name, target in settings.targets.items()},
        model.fingerprint,
        skip_invalid=skip_invalid,
    )
    return Prepared(settings, requests, table, rejected, model, plan, batch_id, skip_invalid)


@dataclass
class SubmitOutcome:
    batch: batchdir.BatchDir
    created: bool
    submitted_tasks: list[int] = field(default_factory=list)
    already_running: list[int] = field(default_factory=list)
    jobs: Any = None  # hpcqueue.dispatch.jobs.SubmittedJobs


def _task_specs(prepared: Prepared) -> list[dict[str, Any]]:
    settings = prepared.settings
    specs = []
    for task in prepared.plan.tasks.itertuples(index=False):
        target = settings.targets[task.target]
        specs.append(
            {
                "batch_id": prepared.batch_id,
                "task_index": int(task.task_index),
                "target": target.name,
                "model": prepared.model.name,
                "model_path": str(prepared.model.path),
                "input_format": prepared.requests.format,
                "batch_size": target.batch_size or settings.batch_size,
                "max_batch_tokens": settings.max_batch_tokens,
                "meter": target.meter,
                "hardware": target.hardware,
                "nominal_power_w": target.nominal_power_w,
                "device": target.device,
                "dtype": target.dtype,
                "engine": settings.engine_of(target),
                "tensor_parallel_size": max(1, target.gpus_per_node),
                "gpu_memory_utilization": target.gpu_memory_utilization,
                "max_model_len": target.max_model_len,
                "default_max_new_tokens": settings.max_new_tokens,
                "max_new_tokens_limit": settings.max_new_tokens_limit,
                "max_line_bytes": settings.max_line_bytes,
                "n_requests": int(task.n_requests),
            }
        )
    return specs


def _manifest(prepared: Prepared, identity: Mapping[str, Any], schedule: Mapping[str, Any]) -> dict[str, Any]:
    plan = prepared.plan
    settings = prepared.settings
    return {
        "batch_id": prepared.batch_id,
        **identity,
        "input_path": str(Path(prepared.requests.path).resolve()),
        "input_sha256": prepared.requests.sha256,
        "input_format": prepared.requests.format,
        "model": prepared.model.name,
        "model_path": str(prepared.model.path),
        "model_fingerprint": prepared.model.fingerprint,
        "policy": plan.policy,
        "thresholds": plan.thresholds,
        "settings": settings.model_dump(mode="json", exclude={"targets"}),
        "targets": {name: t.model_dump(mode="json") for name, t in settings.targets.items()},
        "skip_invalid": prepared.skip_invalid,
        "n_requests": len(prepared.table),
        "n_rejected": len(prepared.rejected),
        "tasks": [json_safe(task._asdict()) for task in plan.tasks.itertuples(index=False)],
        "schedule": json_safe(schedule),
        "plan_report": json_safe(plan_report(plan)),
    }


def plan_report(plan: Any) -> dict[str, Any] | None:
    """The plan against its baselines (routing policies, and in time run-at-submit, best window, best single
    site), with the series and models used: what the ledger keeps so reports can compare plan, baseline and
    what really happened. None when the plan has no cost table to compare with."""
    if plan.workload is None or plan.costs is None:
        return None
    report: dict[str, Any] = plan.compare()
    return report


def plan_schedule(plan: Any, *, now: float) -> dict[str, Any]:
    """When the batch may start and must end, and each deferred task's begin time (epoch seconds).

    ``start_at`` is the plan's start (``now`` for a plan not placed in time), ``deadline_at`` the deadline
    (None without one), ``begin_at`` the tasks that start after the submission: ``{task_index: time}``.
    """
    start = now if plan.in_time is None else plan.in_time.grid.start.timestamp()
    deadline = None if plan.deadline_s is None else start + float(plan.deadline_s)
    begin: dict[str, float] = {}
    if plan.in_time is not None:
        for index, start_s in zip(plan.tasks["task_index"], plan.tasks["start_s"], strict=True):
            if start + float(start_s) > now:
                begin[str(int(index))] = start + float(start_s)
    return {"start_at": start, "deadline_at": deadline, "begin_at": begin}


def _plan_frame(prepared: Prepared) -> pd.DataFrame:
    frame = pd.concat([prepared.table, prepared.plan.assignments], axis=1)
    return frame[list(batchdir.PLAN_COLUMNS)]


def create_or_open(prepared: Prepared, ledger: Any) -> tuple[batchdir.BatchDir, bool]:
    """Write the batch directory and the ledger rows if this batch is new; otherwise open what exists."""
    settings = prepared.settings
    path = Path(settings.batch_root) / prepared.batch_id
    created = False
    if (path / batchdir.MANIFEST).exists():
        batch = batchdir.BatchDir(path)
    else:
        identity = batchdir.submitter_identity()
        schedule = plan_schedule(prepared.plan, now=identity["created_at"])
        batch = batchdir.create_batch(
            Path(settings.batch_root),
            prepared.batch_id,
            manifest=_manifest(prepared, identity, schedule),
            plan=_plan_frame(prepared),
            task_specs=_task_specs(prepared),
            raw_lines=prepared.table["raw"],
            rejected=prepared.rejected,
            schedule={"deadline_at": schedule["deadline_at"], "begin_at": schedule["begin_at"]},
        )
        created = True
    record_in_ledger(batch, ledger)
    return batch, created


def record_in_ledger(batch: batchdir.BatchDir, ledger: Any) -> bool:
    """Record the batch, its tasks and requests in the ledger unless it is there already (idempotent)."""
    from hpcqueue.ledger import BatchInfo

    if ledger.get_batch(batch.batch_id) is not None:
        return False
    manifest = batch.manifest()
    schedule = manifest.get("schedule") or {}
    info = BatchInfo(
        id=manifest["batch_id"],
        created_at=manifest["created_at"],
        user=manifest["user"],
        host=manifest["host"],
        input_path=manifest["input_path"],
        input_sha256=manifest["input_sha256"],
        input_format=manifest["input_format"],
        model=manifest["model"],
        policy=manifest["policy"],
        settings_json=manifest["settings"],
        batch_dir=str(batch.path),
        n_requests=manifest["n_requests"],
        n_rejected=manifest["n_rejected"],
        plan_json=manifest.get("plan_report"),
        plan_start_at=schedule.get("start_at"),
        deadline_at=schedule.get("deadline_at"),
    )
    tasks = _ledger_tasks(manifest)
    requests = batch.plan()
    rejected = []
    if batch.rejects_path.exists():
        for record in read_jsonl(batch.rejects_path):
            rejected.append(
                {
                    "line": record["line"],
                    "id": rejected_id(record["raw"], record["line"]),
                    "errors": record["errors"],
                }
            )
    costs = plan_costs(manifest.get("plan_report"))
    return bool(ledger.record_batch(info, tasks, requests, rejected, plan_costs=costs))


def _ledger_tasks(manifest: Mapping[str, Any]) -> pd.DataFrame:
    """The manifest's tasks as the ledger records them: executor and site from their target, the planned
    start and end (epoch seconds) and the plan's predicted facility energy, carbon, water and cost."""
    tasks = pd.DataFrame(manifest["tasks"])
    targets = manifest["targets"]
    tasks["executor"] = tasks["target"].map(lambda name: targets[name]["executor"])
    tasks["site"] = tasks["target"].map(lambda name: targets[name].get("site"))
    start_at = (manifest.get("schedule") or {}).get("start_at")
    if "start_s" in tasks and start_at is not None:
        tasks["planned_start_at"] = float(start_at) + tasks["start_s"].astype(float)
        tasks["planned_end_at"] = tasks["planned_start_at"] + tasks["predicted_runtime_s"].astype(float)
    for planned, predicted in _PREDICTED_IN_TIME.items():
        if planned in tasks:
            tasks[predicted] = tasks[planned].astype(float)
    return tasks


# A plan's per-task column in time → the ledger's prediction column.
_PREDICTED_IN_TIME = {
    "facility_energy_j": "predicted_facility_energy_j",
    "carbon_g": "predicted_carbon_g",
    "water_l": "predicted_water_l",
    "cost_usd": "predicted_cost_usd",
}
_COST_KEYS = (
    "energy_j",
    "facility_energy_j",
    "carbon_g",
    "water_onsite_l",
    "water_offsite_l",
    "water_l",
    "cost_usd",
)


def plan_costs(report: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The plan's totals and each baseline's, as rows of the ledger's ``plan_costs`` (``name``, ``role``,
    energy, facility energy, carbon, water, cost in USD, finish time, whether it meets the deadline).
    Baselines that could not be planned (an ``error``) are left out."""
    if not report:
        return []
    rows = [_cost_row("plan", "plan", report)]
    for name, totals in (report.get("baselines") or {}).items():
        if "error" not in totals:
            rows.append(_cost_row(name, "baseline", totals))
    return rows


def _cost_row(name: str, role: str, totals: Mapping[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name, "role": role, **{k: totals.get(k) for k in _COST_KEYS}}
    row["finish_s"] = totals.get("finish_s", totals.get("makespan_s"))
    row["meets_deadline"] = totals.get("meets_deadline")
    return row


def _targets_of(batch: batchdir.BatchDir) -> dict[str, Target]:
    """The targets the batch was planned for (part of its id), whatever config is in use now."""
    return {name: Target(**spec) for name, spec in batch.manifest()["targets"].items()}


def _resubmit(batch: batchdir.BatchDir, ledger: Any, tasks: Mapping[int, str], db_url: str | None) -> Any:
    """Submit ``tasks`` of ``batch`` and record the jobs in the ledger."""
    from hpcqueue.dispatch.jobs import submit_tasks
    from hpcqueue.ledger.collect import collect_job
    from hpcqueue.worker import TaskRunner

    submitted = submit_tasks(
        batch, _targets_of(batch), tasks, run=TaskRunner(), collect=collect_job, db_url=db_url
    )
    for record in submitted.records:
        if not record["task_indices"]:
            continue  # the collect job runs no task
        ledger.record_submission(
            batch.batch_id,
            record["task_indices"],
            job_id=record["job_id"],
            executor=record["executor"],
            submitted_at=record["submitted_at"],
            slurm_job_id=record["job_id"].split("_")[0] if record["executor"] == "slurm" else None,
        )
    return submitted


def ledger_url(settings: Settings) -> str:
    """The ledger URL as workers and the collect job must see it (the default SQLite file made explicit)."""
    from hpcqueue.ledger import default_db_url

    return settings.db_url or default_db_url()


def deferred_starts(
    batch: batchdir.BatchDir, indices: Iterable[int], *, now: float | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Per target, each begin time still ahead among tasks ``indices`` and how many tasks wait for it:
    ``{target: [{"begin_at": epoch, "tasks": n}, ...]}`` in time order (targets with none are left out)."""
    now = time.time() if now is None else now
    begins = batch.begin_times()
    target_of = {int(t["task_index"]): t["target"] for t in batch.manifest()["tasks"]}
    counts: dict[str, dict[float, int]] = {}
    for index in indices:
        when = begins.get(int(index))
        if when is not None and when > now:
            per_target = counts.setdefault(target_of[int(index)], {})
            per_target[when] = per_target.get(when, 0) + 1
    return {
        name: [{"begin_at": when, "tasks": n} for when, n in sorted(times.items())]
        for name, times in sorted(counts.items())
    }


def submit(prepared: Prepared, ledger: Any) -> SubmitOutcome:
    """Create (or resume) the batch and submit every task that is neither finished nor held by a live job.

    Runs under the batch's submission lock (:func:`hpcqueue.dispatch.batchdir.submission_lock`), so two
    submissions of the same file at once make one batch and run each task once."""
    from hpcqueue.dispatch.status import live_task_indices
    from hpcqueue.ledger.collect import refresh

    # Under the batch's submission lock: a concurrent submit of the same file waits, then finds these jobs.
    with batchdir.submission_lock(prepared.settings.batch_root, prepared.batch_id):
        batch, created = create_or_open(prepared, ledger)
        if not created:
            cancel_unrecorded(batch)
        views = refresh(batch, ledger)
        live = live_task_indices(views)
        to_run = {i: view.target for i, view in views.items() if view.status == "pending"}
        outcome = SubmitOutcome(batch, created, already_running=sorted(live))
        if to_run:
            outcome.jobs = _resubmit(batch, ledger, to_run, ledger_url(prepared.settings))
            outcome.submitted_tasks = sorted(to_run)
    return outcome


def cancel_orphans(batch: batchdir.BatchDir) -> list[str]:
    """Cancel the batch's Slurm jobs that no record follows (a submit killed between ``sbatch`` and writing
    ``jobs.json``; :func:`hpcqueue.dispatch.jobs.cancel_unrecorded`) unless a submission of the batch is
    under way right now (its jobs are not recorded yet): what ``hpcqueue status`` does before it looks.
    A queue that cannot be asked is a warning here: the status is still worth showing."""
    from hpcqueue.errors import SlurmError

    with batchdir.submission_lock(batch.path.parent, batch.batch_id, blocking=False) as held:
        try:
            return cancel_unrecorded(batch) if held else []
        except SlurmError as exc:
            log.warning("cannot look for unrecorded jobs of batch %s: %s", batch.batch_id, exc)
            return []


def retry(
    batch: batchdir.BatchDir, ledger: Any, settings: Settings, *, deadline_at: float | None = None
) -> SubmitOutcome:
    """Run again only what did not finish: failed tasks, tasks whose job was lost or cancelled, tasks the
    deadline cut, and tasks never submitted. Finished outputs stay; a task resumes after its last finished
    generation batch.

    Once the batch's deadline has passed, nothing can run before it: a new ``deadline_at`` (epoch seconds)
    is needed, and the tasks to run are placed again in time before it (as ``hpcqueue replan`` does), so the
    work the deadline cut is re-planned rather than run at whatever hour. Without a new deadline this raises
    :class:`PlanningError` saying so. Runs under the batch's submission lock, like ``submit``.
    """
    with batchdir.submission_lock(batch.path.parent, batch.batch_id):
        return _retry(batch, ledger, settings, deadline_at=deadline_at)


def _retry(
    batch: batchdir.BatchDir, ledger: Any, settings: Settings, *, deadline_at: float | None
) -> SubmitOutcome:
    from hpcqueue.dispatch.status import live_task_indices
    from hpcqueue.ledger.collect import refresh

    cancel_unrecorded(batch)
    views = refresh(batch, ledger)
    to_run = {
        index: view.target
        for index, view in views.items()
        if view.status in ("failed", "lost", "cancelled", "expired", "pending")
    }
    now = time.time()
    current = batch.deadline_at()
    if to_run and deadline_at is None and current is not None and current <= now:
        expired = sum(1 for i in to_run if views[i].status == "expired")
        raise PlanningError(
            f"batch {batch.batch_id}: its deadline {_clock(current)} has passed"
            + (f" and cut {expired} task(s)" if expired else "")
            + f"; {len(to_run)} task(s) would run again. Re-plan them before a new deadline: "
            f"hpcqueue retry {batch.batch_id} --deadline 8h (a duration from now, or a time)"
        )
    if to_run and deadline_at is not None:
        if deadline_at <= now:
            raise PlanningError(f"the new deadline {_clock(deadline_at)} is not in the future")
        begins = place_again(batch, settings, sorted(to_run), now=now, deadline_at=deadline_at)
        batch.set_deadline(deadline_at)
        batch.set_begin_times(begins)
    for index in to_run:
        batch.archive_attempt(index)
    outcome = SubmitOutcome(batch, created=False, already_running=sorted(live_task_indices(views)))
    if to_run:
        outcome.jobs = _resubmit(batch, ledger, to_run, ledger_url(settings))
        outcome.submitted_tasks = sorted(to_run)
    if to_run and deadline_at is not None:  # once submitted: the ledger moves no failed task's plan
        ledger.update_planned_starts(batch.batch_id, _planned(batch, begins, now))
    return outcome


#: Re-planning moves a task only when its begin time changes by more than this.
MOVE_S = 30.0


@dataclass(frozen=True)
class Move:
    """A task whose begin time a re-plan changed (``None``: as soon as possible)."""

    task_index: int
    target: str
    old_begin_at: float | None
    new_begin_at: float | None


@dataclass
class ReplanOutcome:
    """What ``replan`` did: the tasks it moved, those whose time stays, those it may not touch (running or
    finished, by status), and moves Slurm refused (the job started meanwhile)."""

    batch: batchdir.BatchDir
    deadline_at: float | None
    moved: list[Move] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)
    left_alone: dict[str, int] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)


def replan(batch: batchdir.BatchDir, ledger: Any, settings: Settings) -> ReplanOutcome:
    """Place again in time the tasks of ``batch`` that have not started, from now to the batch's deadline,
    with the sites of ``settings`` (a new series file, a site's changed power) — else the batch's own —, and
    move them: Slurm jobs with ``scontrol update`` (their begin time), local ones through the batch's
    schedule, which their waiting worker reads. Running and finished tasks are never touched, no task is
    moved past the deadline, and each task stays on its target.
    """
    from hpcqueue.ledger.collect import refresh

    views = refresh(batch, ledger)
    movable = sorted(i for i, v in views.items() if v.status in ("pending", "queued", "deferred"))
    outcome = ReplanOutcome(batch, batch.deadline_at())
    for view in views.values():
        if view.task_index not in movable:
            outcome.left_alone[view.status] = outcome.left_alone.get(view.status, 0) + 1
    if not movable:
        return outcome
    now = time.time()
    if outcome.deadline_at is not None and outcome.deadline_at <= now:
        raise PlanningError(
            f"batch {batch.batch_id}: its deadline {_clock(outcome.deadline_at)} has passed; nothing can be "
            f"placed before it. Re-plan with a new deadline: hpcqueue retry {batch.batch_id} --deadline 8h"
        )
    new = place_again(batch, settings, movable, now=now, deadline_at=outcome.deadline_at)
    old = batch.begin_times()
    changes: dict[int, float | None] = {}
    for index in movable:
        before = begin_or_now(old.get(index), now)
        after = new[index]
        if before == after or (before and after and abs(before - after) <= MOVE_S):
            outcome.unchanged.append(index)
            continue
        changes[index] = after
    moved = _move_jobs(batch, views, changes, outcome.refused)
    batch.set_begin_times({i: changes[i] for i in moved})
    ledger.update_planned_starts(batch.batch_id, _planned(batch, {i: changes[i] for i in moved}, now))
    outcome.moved = [
        Move(i, views[i].target, begin_or_now(old.get(i), now), changes[i]) for i in sorted(moved)
    ]
    return outcome


def place_again(
    batch: batchdir.BatchDir,
    settings: Settings,
    indices: list[int],
    *,
    now: float,
    deadline_at: float | None,
) -> dict[int, float | None]:
    """New begin times for tasks ``indices`` of ``batch`` on their own targets, placed in time from ``now``
    to ``deadline_at`` by the planner (:func:`hpcqueue.planner.schedule.place_tasks`) with the batch's
    objective and slot and the sites of ``settings`` (else the batch's). ``None``: as soon as possible.

    Raises PlanningError when they cannot all finish by the deadline. Tasks already running are not counted
    against the targets' capacity.
    """
    from datetime import datetime, timezone

    from hpcqueue.planner import PlanOptions
    from hpcqueue.planner.schedule import place_tasks
    from hpcqueue.sites import load_sites

    manifest = batch.manifest()
    planned = Settings(**manifest["settings"], targets=manifest["targets"])
    targets = list(planned.targets.values())
    names = [t.name for t in targets]
    by_index = {int(t["task_index"]): t for t in manifest["tasks"]}
    rows = [by_index[i] for i in indices]
    sites = load_sites(settings.sites or planned.sites)
    start = datetime.fromtimestamp(int(now), timezone.utc)
    deadline = None if deadline_at is None else datetime.fromtimestamp(deadline_at, timezone.utc)
    options = replace(PlanOptions.from_settings(planned), start=start, deadline_at=deadline, deadline_s=None)
    placed = place_tasks(
        np.array([names.index(r["target"]) for r in rows], dtype=np.int64),
        np.array([_number(r.get("predicted_energy_j")) for r in rows]),
        np.array([_number(r.get("predicted_runtime_s")) for r in rows]),
        targets,
        sites,
        options,
        start,
        options.deadline_after(start),
    )
    starts = placed.task_columns()["start_s"]
    return {i: begin_or_now(int(now) + float(s), now) for i, s in zip(indices, starts, strict=True)}


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _move_jobs(
    batch: batchdir.BatchDir,
    views: Mapping[int, Any],
    changes: Mapping[int, float | None],
    refused: dict[int, str],
) -> list[int]:
    """Move the Slurm jobs of the tasks in ``changes`` (one ``scontrol update`` per new time and minimum
    time); tasks not yet in a Slurm job move with the schedule alone. Returns the tasks moved; a refusal is
    noted per task."""
    from hpcqueue.dispatch.executor import time_min_minutes
    from hpcqueue.dispatch.slurm import parse_time, scontrol_update_begin, show_jobs
    from hpcqueue.errors import SlurmError

    manifest = batch.manifest()
    runtime = predicted_runtimes(manifest)
    limit = {name: int(t["time_limit_min"]) for name, t in manifest["targets"].items()}
    deadline_at = batch.deadline_at()
    now = time.time()
    moved = []
    groups: dict[tuple[float, int | None], list[int]] = {}
    for index, when in changes.items():
        view = views[index]
        if view.executor != "slurm" or not view.job_id or view.status == "pending":
            moved.append(index)
            continue
        start = when or now
        time_min = None
        if deadline_at is not None:
            time_min = time_min_minutes(limit[view.target], start, deadline_at, [runtime.get(index)])
        groups.setdefault((start, time_min), []).append(index)
    for (start, time_min), indices in groups.items():
        job_ids = [str(views[i].job_id) for i in indices]
        try:
            scontrol_update_begin(job_ids, start, time_min=time_min)
        except SlurmError as exc:
            # scontrol moves the ids it can and fails for the rest (a job that started meanwhile): ask
            # slurmctld which ones now wait for the new time.
            jobs = show_jobs(job_ids)
            for index in indices:
                job = jobs.get(str(views[index].job_id), {})
                eligible = parse_time(job.get("EligibleTime"))
                if job.get("JobState") == "PENDING" and eligible is not None and abs(eligible - start) <= 1:
                    moved.append(index)
                else:
                    refused[index] = str(exc)
            continue
        moved.extend(indices)
    return moved


def predicted_runtimes(manifest: Mapping[str, Any]) -> dict[int, float | None]:
    """Each task's predicted runtime (seconds; None where unknown) as the batch's manifest records it."""
    return {int(t["task_index"]): t.get("predicted_runtime_s") for t in manifest["tasks"]}


def _planned(
    batch: batchdir.BatchDir, begins: Mapping[int, float | None], now: float
) -> dict[int, tuple[float, float | None]]:
    """Planned start and end per task for the ledger (end: start + predicted runtime, when predicted)."""
    runtime = predicted_runtimes(batch.manifest())
    out: dict[int, tuple[float, float | None]] = {}
    for index, when in begins.items():
        start = now if when is None else when
        seconds = runtime.get(index)
        out[index] = (start, None if seconds is None else start + float(seconds))
    return out


def _clock(when: float) -> str:
    """An epoch time as the user's local time, to the minute."""
    from datetime import datetime

    return datetime.fromtimestamp(when).astimezone().isoformat(timespec="minutes")


def cancel(batch: batchdir.BatchDir, ledger: Any) -> list[str]:
    """Cancel every live job of the batch (its arrays, local workers and collect job)."""
    from hpcqueue.dispatch.jobs import cancel_jobs
    from hpcqueue.dispatch.status import live_task_indices
    from hpcqueue.ledger.collect import refresh

    views = refresh(batch, ledger)
    live = live_task_indices(views)
    records = batch.jobs()
    live_ids = {views[i].job_id for i in live}
    chosen = [r for r in records if str(r["job_id"]) in live_ids or (r.get("kind") == "collect")]
    cancelled = cancel_jobs(chosen)
    for record in records:
        if record in chosen:
            record["cancelled"] = True
    batch.write_jobs(records)
    ledger.update_tasks(batch.batch_id, [{"task_index": i, "state": "cancelled"} for i in sorted(live)])
    return cancelled


ProgressCallback = Callable[[dict[int, Any]], None]


def wait(
    batch: batchdir.BatchDir,
    ledger: Any,
    *,
    on_progress: ProgressCallback | None = None,
    poll_s: float | None = None,
    timeout_s: float | None = None,
) -> dict[int, Any]:
    """Wait until every task has finished, collecting each into the ledger as it finishes.

    Returns the final task views (``hpcqueue.dispatch.status.TaskView``). Slurm is asked through a
    rate-limited poller (one sacct call for all jobs, backing off while nothing changes). A task whose job
    ended before the task did is *lost*; ``hpcqueue retry`` runs it again.
    """
    from hpcqueue.dispatch.slurm import SacctPoller
    from hpcqueue.ledger.collect import refresh

    poller = SacctPoller()
    started = time.monotonic()
    views = None
    while True:
        views = refresh(batch, ledger, poller=poller, previous=views)
        if on_progress is not None:
            on_progress(views)
        if all(view.finished for view in views.values()):
            return views
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            return views
        # Reading every task's files costs more as batches grow: look less often at large ones.
        time.sleep(poll_s if poll_s is not None else min(5.0, 0.5 + len(views) / 1000))
