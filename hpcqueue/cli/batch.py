"""The batch commands: ``submit``, ``status``, ``collect``, ``retry``, ``replan``, ``cancel``, ``results``.

They parse options, call :mod:`hpcqueue.submission` (and the stages under it) and render the answer.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from hpcqueue.cli.common import (
    add_row,
    err,
    fail,
    num,
    open_ledger,
    out,
    print_json,
    resolve_settings,
    with_meter,
)
from hpcqueue.cli.params import (
    NO_FLAGS,
    PLANNING,
    BatchArg,
    BatchIdArg,
    ConfigOpt,
    DbUrlOpt,
    EveryBatchArg,
    JsonOpt,
    MeterOpt,
    SettingFlags,
    ShowErrorsOpt,
    SkipInvalidOpt,
    flag,
    setting_options,
)
from hpcqueue.errors import HpcqueueError


def _open_recorded(config: Path | None, db_url: str | None, batch_id: str | None) -> tuple[Any, Any, Any]:
    """The settings, the batch (the most recent one when ``batch_id`` is None) and the ledger, with the batch
    recorded in it (a batch submitted against another ledger is added on first sight). A failure ends the
    command."""
    from hpcqueue.submission import record_in_ledger

    try:
        settings = resolve_settings(config, db_url=db_url)
        batch = _batch(settings, batch_id)
        ledger = open_ledger(settings)
        record_in_ledger(batch, ledger)
    except HpcqueueError as exc:
        fail(exc)
    return settings, batch, ledger


def _batch(settings: Any, batch_id: str | None) -> Any:
    from hpcqueue.dispatch.batchdir import latest_batch, open_batch

    return open_batch(settings.batch_root, batch_id) if batch_id else latest_batch(settings.batch_root)


@setting_options(
    "db_url", "model", "engine", "max_new_tokens", "task_size", "batch_size", "max_line_bytes", *PLANNING
)
def submit(
    prompts: Annotated[
        Path, typer.Argument(help="JSONL file of requests (simple records or OpenAI Batch lines).")
    ],
    config: ConfigOpt = None,
    flags: SettingFlags = NO_FLAGS,
    meter: MeterOpt = None,
    skip_invalid: SkipInvalidOpt = False,
    wait: Annotated[bool, flag("--wait", "Wait for the batch to finish, then print its summary.")] = False,
    dry_run: Annotated[bool, flag("--dry-run", "Validate and plan; submit and write nothing.")] = False,
    as_json: JsonOpt = False,
    show_errors: ShowErrorsOpt = 20,
) -> None:
    """Validate PROMPTS, plan where each request runs, and submit the batch."""
    from hpcqueue import submission

    try:
        settings = resolve_settings(config, **flags)
        if meter is not None:
            settings = _with_meter(settings, meter)
        prepared = submission.prepare(prompts, settings, skip_invalid=skip_invalid)
        for warning in prepared.warnings[:show_errors]:
            err.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
        if dry_run:
            _render_plan(prepared, as_json)
            return
        ledger = open_ledger(settings)
        outcome = submission.submit(prepared, ledger)
        if not wait:
            _render_submitted(prepared, outcome, as_json)
            return
        views = _wait_with_progress(outcome, ledger, quiet=as_json)
        report = _batch_summary(ledger, outcome.batch, prepared, outcome, views)
    except HpcqueueError as exc:
        fail(exc, show_errors)
    if as_json:
        print_json(report)
    else:
        _render_report(report)
    if report["failed"] or report["pending"]:
        raise typer.Exit(1)


def _with_meter(settings: Any, meter: str) -> Any:
    """Every target measured with ``meter``; local targets are checked now, before anything is submitted."""
    targets = {name: with_meter(t, meter) for name, t in settings.targets.items()}
    return settings.model_copy(update={"targets": targets})


def _render_plan(prepared: Any, as_json: bool) -> None:
    plan = prepared.plan
    summary = {
        "batch_id": prepared.batch_id,
        "dry_run": True,
        "requests": len(prepared.table),
        "rejected": len(prepared.rejected),
        "input_tokens": int(prepared.table["input_tokens"].sum()),
        "policy": plan.policy,
        "thresholds": plan.thresholds,
        "tasks": len(plan.tasks),
        "per_target": plan.per_target(),
    }
    if as_json:
        print_json(summary)
        return
    out.print(f"batch [bold]{prepared.batch_id}[/] (dry run: nothing submitted)")
    out.print(
        f"{summary['requests']} requests, {summary['input_tokens']} input tokens, {summary['tasks']} tasks, "
        f"policy {plan.policy}"
    )
    table = Table("target", "requests", "predicted energy (J)", "predicted runtime (s)")
    for name, row in summary["per_target"].items():
        add_row(
            table,
            name,
            str(row["requests"]),
            num(row.get("predicted_energy_j")),
            num(row.get("predicted_runtime_s")),
        )
    out.print(table)


def _render_submitted(prepared: Any, outcome: Any, as_json: bool) -> None:
    from hpcqueue import submission

    info = {
        "batch_id": outcome.batch.batch_id,
        "status": "submitted" if outcome.submitted_tasks else "nothing to submit",
        "created": outcome.created,
        "requests": len(prepared.table),
        "rejected": len(prepared.rejected),
        "tasks": len(prepared.plan.tasks),
        "submitted_tasks": len(outcome.submitted_tasks),
        "already_running_tasks": len(outcome.already_running),
        "batch_dir": str(outcome.batch.path),
        "deadline_at": outcome.batch.deadline_at(),
        "deferred": submission.deferred_starts(outcome.batch, outcome.submitted_tasks),
    }
    if as_json:
        print_json(info)
        return
    verb = "created" if outcome.created else "resumed"
    out.print(
        f"batch [bold]{info['batch_id']}[/] {verb}: {info['requests']} requests in {info['tasks']} tasks; "
        f"{info['submitted_tasks']} task(s) submitted"
    )
    _print_deferred(info["deferred"], info["deadline_at"])
    out.print(f"follow it with: hpcqueue status {info['batch_id']}")


def clock(when: float | None) -> str:
    """An epoch time as the local time a person reads: ``02:00`` today, ``Tue 01 Dec 02:00`` otherwise."""
    from datetime import datetime

    if when is None:
        return "-"
    moment = datetime.fromtimestamp(when).astimezone()
    today = datetime.now().astimezone().date()
    return moment.strftime("%H:%M" if moment.date() == today else "%a %d %b %H:%M")


def _print_deferred(deferred: dict[str, list[dict[str, Any]]], deadline_at: float | None) -> None:
    """``gpu: 4 task(s) deferred until 02:00, 2 until 03:00`` per target, and the deadline."""
    for name, starts in deferred.items():
        parts = [f"{s['tasks']} task(s) deferred until {clock(s['begin_at'])}" for s in starts[:1]]
        parts += [f"{s['tasks']} until {clock(s['begin_at'])}" for s in starts[1:6]]
        more = f", and {len(starts) - 6} later start(s)" if len(starts) > 6 else ""
        out.print(f"  {name}: {', '.join(parts)}{more}")
    if deadline_at is not None:
        out.print(f"  deadline {clock(deadline_at)}: Slurm removes work that can no longer finish by then")


def _wait_with_progress(outcome: Any, ledger: Any, *, quiet: bool) -> dict[int, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from hpcqueue import submission

    batch = outcome.batch
    targets_of = {t["task_index"]: t["target"] for t in batch.manifest()["tasks"]}
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tasks"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet or not err.is_terminal,
    )
    bars: dict[str, Any] = {}
    with progress:
        for name in sorted(set(targets_of.values())):
            bars[name] = progress.add_task(name, total=sum(1 for t in targets_of.values() if t == name))

        def update(views: dict[int, Any]) -> None:
            for name, bar in bars.items():
                done = sum(1 for v in views.values() if v.target == name and v.finished)
                progress.update(bar, completed=done)

        return submission.wait(batch, ledger, on_progress=update)


def _batch_summary(
    ledger: Any, batch: Any, prepared: Any, outcome: Any, views: dict[int, Any]
) -> dict[str, Any]:
    report = ledger.batch_report(batch.batch_id)
    return {
        "batch_id": batch.batch_id,
        "resumed": not outcome.created,
        "submitted_tasks": len(outcome.submitted_tasks),
        **report,
        "policy": prepared.plan.policy,
        "thresholds": prepared.plan.thresholds,
        "tasks": _task_counts(views),
        "batch_dir": str(batch.path),
    }


def _task_counts(views: dict[int, Any]) -> dict[str, int]:
    counts = {"total": len(views)}
    for view in views.values():
        counts[view.status] = counts.get(view.status, 0) + 1
    return counts


def _render_report(report: dict[str, Any]) -> None:
    out.print(
        f"batch [bold]{report['batch_id']}[/]: {report['succeeded']} succeeded, {report['failed']} failed, "
        f"{report['rejected']} rejected, {report['pending']} pending of {report['requests']} requests"
    )
    out.print(
        f"energy: {num(report['energy_j'])} J ({report['energy_method']}; meters: "
        f"{', '.join(report.get('meters') or []) or '-'}; "
        f"engines: {', '.join(report.get('engines') or []) or '-'})"
    )
    table = Table("target", "requests", "succeeded", "failed", "pending", "energy (J)")
    for name, row in sorted(report.get("per_target", {}).items()):
        counts = (str(row[key]) for key in ("requests", "succeeded", "failed", "pending"))
        add_row(table, name, *counts, num(row.get("energy_j")))
    out.print(table)
    out.print(f"results: hpcqueue results {report['batch_id']} -o results.jsonl")


def status(
    batch_id: BatchArg = None,
    config: ConfigOpt = None,
    db_url: DbUrlOpt = None,
    as_json: JsonOpt = False,
    watch: Annotated[bool, flag("--watch", "Show live progress until the batch finishes.")] = False,
) -> None:
    """Progress of a batch: tasks and requests per target, Slurm states, energy so far."""
    from hpcqueue import submission
    from hpcqueue.ledger.collect import refresh

    if not watch:
        _status_if_ledger_down(config, db_url, batch_id, as_json)
    _, batch, ledger = _open_recorded(config, db_url, batch_id)
    try:
        orphans = submission.cancel_orphans(batch)
        if orphans:
            err.print(f"cancelled Slurm job(s) {', '.join(orphans)}, which no record of the batch followed")
        if watch:
            views = submission.wait(batch, ledger, on_progress=_status_printer(batch, as_json))
        else:
            views = refresh(batch, ledger)
        info = _status_info(batch, ledger, views)
    except HpcqueueError as exc:
        fail(exc)
    if as_json:
        print_json(info)
        return
    out.print(
        f"batch [bold]{info['batch_id']}[/] ({info['model']}, {info['input_format']} input): "
        f"{info['requests']} requests, {info['rejected']} rejected"
    )
    table = Table(
        "target",
        "tasks done",
        "queued",
        "deferred",
        "running",
        "failed",
        "lost",
        "requests done",
        "energy (J)",
    )
    for name, row in sorted(info["per_target"].items()):
        add_row(
            table,
            name,
            f"{row['completed']}/{row['tasks']}",
            str(row["queued"] + row["pending"]),
            str(row["deferred"]),
            str(row["running"]),
            str(row["failed"] + row["expired"]),
            str(row["lost"] + row["cancelled"]),
            f"{row['requests_done']}/{row['requests']}",
            num(row.get("energy_j")),
        )
    out.print(table)
    out.print(f"energy so far: {num(info['energy_j'])} J ({info['energy_method'] or 'nothing measured yet'})")
    _print_deferred(info["deferred"], info["deadline_at"])
    problems = info["problems"]
    for task in problems[:10]:
        out.print(
            f"  task {task['task_index']} ({task['target']}): {task['status']}"
            + (f", Slurm {task['slurm_state']} on {task['node'] or '?'}" if task["slurm_state"] else "")
        )
    if any(task["status"] == "expired" for task in problems):
        out.print(
            f"the deadline cut some tasks: re-plan them before a new one with "
            f"hpcqueue retry {info['batch_id']} --deadline 8h"
        )
    elif problems:
        out.print(f"run them again with: hpcqueue retry {info['batch_id']}")


def _status_if_ledger_down(
    config: Path | None, db_url: str | None, batch_id: str | None, as_json: bool
) -> None:
    """When the ledger cannot be reached, show what the batch directory and the jobs say — how many tasks
    finished but are not collected — and exit with the ledger's error; otherwise return and let ``status``
    go on. The results are safe in the files: ``hpcqueue collect`` records them once the ledger is back."""
    from hpcqueue.dispatch.status import task_views
    from hpcqueue.errors import LedgerError
    from hpcqueue.ledger.collect import unreachable

    try:
        settings = resolve_settings(config, db_url=db_url)
        batch = _batch(settings, batch_id)
        open_ledger(settings).close()
        return
    except LedgerError as exc:
        if not unreachable(exc):
            fail(exc)
        error = exc
    except HpcqueueError as exc:
        fail(exc)
    counts = _task_counts(task_views(batch))
    finished = counts.get("completed", 0) + counts.get("failed", 0)
    if as_json:
        info = {"batch_id": batch.batch_id, "tasks": counts, "not_collected": finished}
        print_json({**info, "ledger_error": str(error)})
    else:
        parts = ", ".join(f"{n} {k}" for k, n in counts.items() if k != "total")
        out.print(f"batch {batch.batch_id}: {counts['total']} task(s): {parts}")
        out.print(
            f"{finished} finished task(s) not collected: the ledger is unreachable. Their results are kept "
            f"in {batch.path}; `hpcqueue collect {batch.batch_id}` records them once the ledger is back",
            soft_wrap=True,
        )
    fail(error)


def _status_printer(batch: Any, quiet: bool) -> Any:
    last: list[str] = []

    def show(views: dict[int, Any]) -> None:
        counts = _task_counts(views)
        line = ", ".join(
            f"{counts.get(k, 0)} {k}"
            for k in ("completed", "running", "queued", "deferred", "failed", "expired", "lost")
        )
        if not quiet and (not last or last[-1] != line):
            err.print(f"{batch.batch_id}: {line}")
            last.append(line)

    return show


_STATUSES = (
    "pending",
    "queued",
    "deferred",
    "running",
    "completed",
    "failed",
    "expired",
    "lost",
    "cancelled",
)


def _status_info(batch: Any, ledger: Any, views: dict[int, Any]) -> dict[str, Any]:
    from hpcqueue import submission

    manifest = batch.manifest()
    report = ledger.batch_report(batch.batch_id)
    per_target: dict[str, dict[str, Any]] = {}
    for task in manifest["tasks"]:
        row = per_target.setdefault(
            task["target"], {"tasks": 0, **dict.fromkeys(_STATUSES, 0), "requests": 0, "requests_done": 0}
        )
        view = views[task["task_index"]]
        row["tasks"] += 1
        row[view.status] += 1
        row["requests"] += task["n_requests"]
        if view.status == "running":
            row["requests_done"] += batch.finished_lines(task["task_index"])
        elif view.status == "completed":
            row["requests_done"] += task["n_requests"]
    for name, row in per_target.items():
        row["energy_j"] = report.get("per_target", {}).get(name, {}).get("energy_j")
    problems = [
        {
            "task_index": v.task_index,
            "target": v.target,
            "status": v.status,
            "job_id": v.job_id,
            "slurm_state": v.slurm_state,
            "node": v.node,
        }
        for v in views.values()
        if v.status in ("failed", "expired", "lost", "cancelled")
    ]
    return {
        "batch_id": batch.batch_id,
        "model": manifest["model"],
        "input_format": manifest["input_format"],
        "created_at": manifest["created_at"],
        "user": manifest["user"],
        "requests": manifest["n_requests"],
        "rejected": manifest["n_rejected"],
        "tasks": _task_counts(views),
        "per_target": per_target,
        "problems": problems,
        "succeeded": report["succeeded"],
        "failed": report["failed"],
        "pending": report["pending"],
        "energy_j": report["energy_j"],
        "energy_method": report["energy_method"],
        "done": all(v.finished for v in views.values()),
        "deadline_at": batch.deadline_at(),
        "deferred": submission.deferred_starts(
            batch, [v.task_index for v in views.values() if v.status == "deferred"]
        ),
    }


def collect(
    batch_id: EveryBatchArg = None,
    config: ConfigOpt = None,
    db_url: DbUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Read finished tasks' results into the ledger (idempotent: running it twice changes nothing)."""
    from hpcqueue.dispatch.batchdir import list_batches, open_batch
    from hpcqueue.ledger.collect import refresh
    from hpcqueue.submission import record_in_ledger

    try:
        settings = resolve_settings(config, db_url=db_url)
        ledger = open_ledger(settings)
        if batch_id:
            batches = [open_batch(settings.batch_root, batch_id)]
        else:
            batches = list_batches(settings.batch_root)
        reports = {}
        for batch in batches:
            record_in_ledger(batch, ledger)
            reports[batch.batch_id] = _task_counts(refresh(batch, ledger))
    except HpcqueueError as exc:
        fail(exc)
    if as_json:
        print_json(reports)
        return
    if not reports:
        out.print(f"no batches under {settings.batch_root}")
    for name, counts in reports.items():
        parts = ", ".join(f"{n} {k}" for k, n in counts.items() if k != "total")
        out.print(f"{name}: {counts['total']} task(s): {parts}")


def retry(
    batch_id: BatchIdArg,
    config: ConfigOpt = None,
    db_url: DbUrlOpt = None,
    wait: Annotated[bool, flag("--wait", "Wait for the retried tasks, then print the summary.")] = False,
    deadline: Annotated[
        str | None,
        typer.Option(
            help='A new deadline: a duration from now ("8h") or an ISO 8601 time. The tasks to run are '
            "placed again in time before it (needed once the batch's deadline has passed)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run again only what did not finish: failed, lost or cut tasks (finished outputs are kept)."""
    import time

    from hpcqueue import submission
    from hpcqueue.config import deadline_from

    settings, batch, ledger = _open_recorded(config, db_url, batch_id)
    try:
        deadline_at = None if deadline is None else deadline_from(deadline, now=time.time())
        outcome = submission.retry(batch, ledger, settings, deadline_at=deadline_at)
        info: dict[str, Any] = {
            "batch_id": batch.batch_id,
            "submitted_tasks": len(outcome.submitted_tasks),
            "already_running_tasks": len(outcome.already_running),
        }
        if wait and outcome.submitted_tasks:
            views = _wait_with_progress(outcome, ledger, quiet=as_json)
            info.update(ledger.batch_report(batch.batch_id), tasks=_task_counts(views))
    except HpcqueueError as exc:
        fail(exc)
    if as_json:
        print_json(info)
    elif not outcome.submitted_tasks:
        out.print(
            f"batch {batch.batch_id}: nothing to retry ({len(outcome.already_running)} task(s) still running)"
        )
    else:
        out.print(f"batch {batch.batch_id}: {len(outcome.submitted_tasks)} task(s) submitted again")
        _print_deferred(submission.deferred_starts(batch, outcome.submitted_tasks), batch.deadline_at())
        if wait:
            _render_report({**info, **ledger.batch_report(batch.batch_id)})
    if wait and (info.get("failed") or info.get("pending")):
        raise typer.Exit(1)


def replan(
    batch_id: BatchIdArg,
    config: ConfigOpt = None,
    db_url: DbUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Place again in time the tasks that have not started (with the config's site series now), and move
    them: Slurm jobs by their begin time. Running and finished tasks stay; nothing moves past the
    deadline, and no task changes target."""
    from hpcqueue import submission

    settings, batch, ledger = _open_recorded(config, db_url, batch_id)
    try:
        outcome = submission.replan(batch, ledger, settings)
    except HpcqueueError as exc:
        fail(exc)
    info = {
        "batch_id": batch.batch_id,
        "deadline_at": outcome.deadline_at,
        "moved": [vars(move) for move in outcome.moved],
        "unchanged_tasks": len(outcome.unchanged),
        "left_alone": outcome.left_alone,
        "refused": {str(i): why for i, why in outcome.refused.items()},
    }
    if as_json:
        print_json(info)
        return
    alone = ", ".join(f"{n} {status}" for status, n in sorted(outcome.left_alone.items())) or "none"
    out.print(
        f"batch {batch.batch_id}: {len(outcome.moved)} task(s) moved, {len(outcome.unchanged)} keep their "
        f"start; left alone: {alone}"
    )
    if outcome.moved:
        table = Table("task", "target", "was", "now")
        for move in outcome.moved:
            was = clock(move.old_begin_at) if move.old_begin_at else "at once"
            now = clock(move.new_begin_at) if move.new_begin_at else "at once"
            add_row(table, str(move.task_index), move.target, was, now)
        out.print(table)
    for index, why in sorted(outcome.refused.items()):
        out.print(f"  task {index} not moved: {escape(why)}")


def cancel(
    batch_id: BatchIdArg,
    config: ConfigOpt = None,
    db_url: DbUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel the batch's queued and running jobs (Slurm arrays, local workers, the collect job)."""
    from hpcqueue import submission

    _, batch, ledger = _open_recorded(config, db_url, batch_id)
    try:
        cancelled = submission.cancel(batch, ledger)
    except HpcqueueError as exc:
        fail(exc)
    if as_json:
        print_json({"batch_id": batch.batch_id, "cancelled_jobs": cancelled})
    else:
        out.print(
            f"batch {batch.batch_id}: cancelled {len(cancelled)} job(s)"
            + (f" ({', '.join(cancelled[:10])})" if cancelled else "")
        )


def results(
    batch_id: BatchIdArg,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
    config: ConfigOpt = None,
    allow_partial: Annotated[
        bool, flag("--allow-partial", "Write unfinished requests as 'pending' errors.")
    ] = False,
) -> None:
    """Outputs of a batch merged in input order: one line per input line, in the input's format."""
    from hpcqueue.dispatch.batchdir import open_batch
    from hpcqueue.fileio import atomic_open
    from hpcqueue.report.results import write_results

    try:
        settings = resolve_settings(config)
        batch = open_batch(settings.batch_root, batch_id)
        if output is None:
            count = write_results(batch, sys.stdout, allow_partial=allow_partial)
        else:
            with atomic_open(output, "w") as handle:
                count = write_results(batch, handle, allow_partial=allow_partial)
            err.print(f"wrote {count} results to {output}")
    except HpcqueueError as exc:
        fail(exc)
