"""The orchestrator: ingest → count tokens → plan → batch directory + ledger → dispatch → (wait → collect).

This is the library behind ``hpcqueue submit``, ``retry``, ``cancel`` and ``status --watch``; the CLI only
parses options and renders what comes back. It is the one module that wires the stages together: it hands
dispatch the worker's entry point and the ledger's collect job, so neither stage needs to know the other.
Submitting the same input with the same settings again finds the same batch id and resumes: finished tasks
are collected (if they were not yet), tasks held by a live job are left alone, and only the rest is submitted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hpcqueue.config import Settings, Target
from hpcqueue.dispatch import batchdir
from hpcqueue.fileio import json_safe, read_jsonl
from hpcqueue.ingest import (
    ReadOptions,
    Rejected,
    RequestSet,
    check_context_length,
    count_input_tokens,
    read_requests,
    rejected_id,
)


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


def read_options(settings: Settings, *, skip_invalid: bool) -> ReadOptions:
    return ReadOptions(
        max_line_bytes=settings.max_line_bytes,
        default_max_new_tokens=settings.max_new_tokens,
        max_new_tokens_limit=settings.max_new_tokens_limit,
        skip_invalid=skip_invalid,
    )


def prepare(path: str | os.PathLike[str], settings: Settings, *, skip_invalid: bool = False) -> Prepared:
    """Validate, count tokens and plan. Raises :class:`InputError` (nothing written) on invalid lines."""
    from hpcqueue.models import Tokenizer, resolve_model
    from hpcqueue.planner import PlanOptions, plan_requests, resolve_cost_models
    from hpcqueue.profiles.store import profile_search_path
    from hpcqueue.sites import load_sites

    requests = read_requests(path, read_options(settings, skip_invalid=skip_invalid))
    model = resolve_model(settings.model, cache_dir=settings.cache_dir)
    tokenizer = Tokenizer.load(model.path)
    table = requests.table
    table["input_tokens"] = count_input_tokens(tokenizer, table)
    table, rejected = check_context_length(requests, table, tokenizer.context_length, skip_invalid)

    targets = list(settings.targets.values())
    notes: list[str] = []
    search_path = profile_search_path(settings.profile_dirs)
    cost_models = resolve_cost_models(targets, model.name, search_path, notes=notes)
    sites = load_sites(settings.sites)
    options = PlanOptions.from_settings(settings, model=model.name)
    plan = plan_requests(table, targets, cost_models, options, sites)
    plan.warnings.extend(notes)
    if len(targets) > 1 or any(cost_models.values()):
        # Missing or stale profiles matter only when the plan uses profiles (one target needs none).
        from hpcqueue.profiles.staleness import profile_warnings

        warnings = profile_warnings(
            targets, model.name, search_path, settings.cache_dir, config_path=settings.config_path
        )
        plan.warnings.extend(warnings)
    batch_id = batchdir.batch_id_for(
        requests.sha256,
        settings.model_dump(mode="json"),
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
                "default_max_new_tokens": settings.max_new_tokens,
                "max_new_tokens_limit": settings.max_new_tokens_limit,
                "max_line_bytes": settings.max_line_bytes,
                "n_requests": int(task.n_requests),
            }
        )
    return specs


def _manifest(prepared: Prepared, identity: Mapping[str, Any]) -> dict[str, Any]:
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
    }


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
        batch = batchdir.create_batch(
            Path(settings.batch_root),
            prepared.batch_id,
            manifest=_manifest(prepared, identity),
            plan=_plan_frame(prepared),
            task_specs=_task_specs(prepared),
            raw_lines=prepared.table["raw"],
            rejected=prepared.rejected,
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
    )
    tasks = pd.DataFrame(manifest["tasks"])
    tasks["executor"] = tasks["target"].map(lambda name: manifest["targets"][name]["executor"])
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
    return bool(ledger.record_batch(info, tasks, requests, rejected))


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


def deferral_warning(prepared: Prepared) -> str | None:
    """A warning when the plan defers tasks: they are dispatched at submit all the same, since dispatch at
    a planned start time is not available in this version."""
    plan = prepared.plan
    if plan.in_time is None or "start_s" not in plan.tasks:
        return None
    later = plan.tasks[plan.tasks["start_s"] > 0]
    if later.empty:
        return None
    first = plan.in_time.grid.time_at(float(later["start_s"].min()))
    return (
        f"the plan defers {len(later)} of {len(plan.tasks)} tasks to later hours (the first to "
        f"{first.isoformat(timespec='minutes')}), but dispatch at planned start times is not available in "
        "this version: every task is submitted now, so the plan's predicted carbon, water and cost do not "
        "apply. Submit with --no-defer for a plan of what will run, or study the deferred plan with "
        "'hpcqueue plan'"
    )


def submit(prepared: Prepared, ledger: Any) -> SubmitOutcome:
    """Create (or resume) the batch and submit every task that is neither finished nor held by a live job."""
    from hpcqueue.dispatch.status import live_task_indices
    from hpcqueue.ledger.collect import refresh

    batch, created = create_or_open(prepared, ledger)
    views = refresh(batch, ledger)
    live = live_task_indices(views)
    to_run = {i: view.target for i, view in views.items() if view.status == "pending"}
    outcome = SubmitOutcome(batch, created, already_running=sorted(live))
    if to_run:
        outcome.jobs = _resubmit(batch, ledger, to_run, ledger_url(prepared.settings))
        outcome.submitted_tasks = sorted(to_run)
    return outcome


def retry(batch: batchdir.BatchDir, ledger: Any, settings: Settings) -> SubmitOutcome:
    """Run again only what did not finish: failed tasks, tasks whose job was lost or cancelled, and tasks
    never submitted. Finished outputs stay; a task resumes after its last finished generation batch."""
    from hpcqueue.dispatch.status import live_task_indices
    from hpcqueue.ledger.collect import refresh

    views = refresh(batch, ledger)
    to_run: dict[int, str] = {}
    for index, view in views.items():
        if view.status in ("failed", "lost", "cancelled", "pending"):
            batch.archive_attempt(index)
            to_run[index] = view.target
    outcome = SubmitOutcome(batch, created=False, already_running=sorted(live_task_indices(views)))
    if to_run:
        outcome.jobs = _resubmit(batch, ledger, to_run, ledger_url(settings))
        outcome.submitted_tasks = sorted(to_run)
    return outcome


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
