"""``hpcqueue ledger …``: reports from the ledger of batches, tasks, requests and energy."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from hpcqueue.cli.common import (
    add_row,
    err,
    fail,
    ledger_filter,
    num,
    open_filtered_ledger,
    open_ledger,
    out,
    parse_when,
    print_json,
    resolve_settings,
)
from hpcqueue.cli.params import (
    AccountFilterOpt,
    AllUsersOpt,
    ConfigOpt,
    DbUrlOpt,
    ModelFilterOpt,
    SinceOpt,
    TargetFilterOpt,
    UntilOpt,
    UserFilterOpt,
)
from hpcqueue.errors import HpcqueueError

ledger_app = typer.Typer(
    help="Reports from the ledger of batches, tasks, requests and energy.", no_args_is_help=True
)


FormatOpt = Annotated[Literal["table", "csv", "json"], typer.Option("--format", help="Output format.")]


@ledger_app.command("summary")
def ledger_summary(
    by: Annotated[
        Literal["target", "model", "day", "user"], typer.Option(help="Group rows by this.")
    ] = "target",
    fmt: FormatOpt = "table",
    since: SinceOpt = None,
    until: UntilOpt = None,
    user: UserFilterOpt = None,
    account: AccountFilterOpt = None,
    target: TargetFilterOpt = None,
    model: ModelFilterOpt = None,
    all_users: AllUsersOpt = False,
    config: ConfigOpt = None,
    db_url: DbUrlOpt = None,
) -> None:
    """Requests, tokens and energy in the ledger, grouped by target, model, day or user: your batches, or
    those the filters select."""
    try:
        where = ledger_filter(
            since=since,
            until=until,
            users=user,
            accounts=account,
            targets=target,
            models=model,
            all_users=all_users,
        )
        ledger = open_filtered_ledger(resolve_settings(config, db_url=db_url), where)
        with ledger:
            frame = ledger.summary(by, where=where)
    except HpcqueueError as exc:
        fail(exc)
    if _printed_as_data(frame, fmt):
        return
    _render_frame(_summary_for_humans(frame), title=f"ledger by {by} ({where.describe()})")


@ledger_app.command("batches")
def ledger_batches(
    limit: Annotated[int, typer.Option(help="How many recent batches.", min=1)] = 20,
    fmt: FormatOpt = "table",
    config: ConfigOpt = None,
    db_url: DbUrlOpt = None,
) -> None:
    """The most recent batches in the ledger: progress, energy and carbon, and the plan's predicted carbon
    against running everything at submission (JSON and CSV: every plan and baseline figure)."""
    frame = _query(config, db_url, lambda ledger: ledger.list_batches(limit))
    if _printed_as_data(frame, fmt, iso_dates=True):
        return
    _render_frame(_batches_for_humans(frame), title="batches")


@ledger_app.command("accuracy")
def ledger_accuracy(
    by: Annotated[
        Literal["target", "model", "hardware", "day", "batch"],
        typer.Option(help="Group rows by this (day: the UTC date a task ended)."),
    ] = "target",
    batch: Annotated[str | None, typer.Option("--batch", help="Only this batch (its id).")] = None,
    since: SinceOpt = None,
    fmt: Annotated[Literal["table", "json"], typer.Option("--format", help="Output format.")] = "table",
    config: ConfigOpt = None,
    db_url: DbUrlOpt = None,
) -> None:
    """How close the predictions came: predicted against measured energy and runtime of the completed tasks
    whose energy was measured (MAPE, bias, share within the 90 % interval, totals), grouped by target, model,
    hardware, day or batch. Tasks whose energy was estimated are counted apart, never compared."""
    try:
        start = parse_when(since, "--since")
    except HpcqueueError as exc:
        fail(exc)
    frame = _query(config, db_url, lambda ledger: ledger.accuracy(by, batch=batch, since=start))
    compared = not frame.empty and int(frame["tasks"].sum()) > 0
    if fmt == "json":
        print_json(json.loads(frame.to_json(orient="records")))
    elif compared:
        out.print(_accuracy_table(frame, by))
    if not compared:  # beside JSON, on stderr: stdout stays JSON
        scope = f" in batch {batch}" if batch else ""
        if start is not None:
            scope += f" in batches submitted since {start.isoformat(timespec='minutes')}"
        console = err if fmt == "json" else out
        console.print(_nothing_compared(frame, scope), markup=False, soft_wrap=True)


def _accuracy_table(frame: Any, by: str) -> Table:
    table = Table(
        by,
        *_ACCURACY_HEADERS,
        title=f"prediction accuracy by {by}",
        caption="MAPE: mean |predicted/measured - 1|; bias: median predicted/measured - 1; in 90 %: share of "
        "measurements within their interval (of the tasks that have one). Measured: the generation batches "
        "(what the prediction covers); only measured energy is compared.",
    )
    for row in frame.to_dict("records"):
        add_row(table, *_accuracy_cells(row, by))
    return table


_ACCURACY_HEADERS = [
    "tasks",
    "excluded",
    "energy MAPE",
    "energy bias",
    "energy in 90 %",
    "energy pred/meas",
    "runtime MAPE",
    "runtime bias",
    "runtime in 90 %",
    "runtime pred/meas",
    "methods",
]


def _accuracy_cells(row: dict[str, Any], by: str) -> list[str]:
    """One table row: the group, the tasks compared and excluded, then per quantity MAPE, bias, coverage (of
    how many) and the ratio of the totals."""
    from hpcqueue.ledger.accuracy import EXCLUSIONS

    excluded = [f"{row[k]} {k.removeprefix('excluded_')}" for k in EXCLUSIONS if row[k]]
    cells = [str(row[by]), str(row["tasks"]), ", ".join(excluded) or "-"]
    for quantity in ("energy", "runtime"):
        coverage = row[f"{quantity}_coverage"]
        with_interval = row[f"{quantity}_with_interval"]
        cells += [
            _percent(row[f"{quantity}_mape"]),
            _percent(row[f"{quantity}_bias"], signed=True),
            f"{_percent(coverage)} of {with_interval}" if with_interval else "-",
            num(row[f"{quantity}_ratio"], 2),
        ]
    cells.append(", ".join(row["methods"]) or "-")
    return cells


def _percent(value: Any, *, signed: bool = False) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{100 * value:{'+' if signed else ''}.1f} %"


def _nothing_compared(frame: Any, scope: str) -> str:
    """Why no task (``scope``: of which batches) could be compared: the exclusions counted, or that no task
    has a prediction."""
    from hpcqueue.ledger.accuracy import EXCLUSION_REASONS

    head = f"no task{scope} has both a prediction and a measured energy yet"
    if frame.empty:
        return f"{head}: the ledger records no task with a prediction{scope}"
    lines = [f"{head}:"]
    for column, reason in EXCLUSION_REASONS.items():
        count = int(frame[column].sum())
        if count:
            lines.append(f"  {count} task{'s' if count != 1 else ''} excluded: {reason}")
    return "\n".join(lines)


#: The figures of ``ledger batches`` the table leaves to JSON and CSV.
_BATCH_DETAILS = [
    "host",
    "input_path",
    "plan_start_at",
    "facility_energy_j",
    "water_onsite_l",
    "water_offsite_l",
    "cost_usd",
    "plan",
    "baselines",
]


def _batches_for_humans(frame: Any) -> Any:
    """A compact batch table: times to the minute, actual carbon beside the plan's and running everything
    at submission's; the deadline, carbon and accounting columns only when some batch has them."""
    if frame.empty:
        return frame
    frame = frame.copy()
    frame["plan carbon g"] = [_carbon(plan) for plan in frame["plan"]]
    frame["at submit carbon g"] = [_carbon(b.get("run_at_submit")) for b in frame["baselines"]]
    frame = _without_unused(
        frame.drop(columns=_BATCH_DETAILS), ["deadline_at", "carbon_g", "plan carbon g", "at submit carbon g"]
    )
    for column in ("created_at", "deadline_at"):
        if column in frame:
            frame[column] = frame[column].map(_minute)
    headers = {"n_requests": "requests", "n_rejected": "rejected", "tasks_with_assumed_inputs": "assumed"}
    return frame.rename(columns=headers)


def _without_unused(frame: Any, optional: list[str]) -> Any:
    """``frame`` without the ``optional`` columns no row fills, nor the accounting counts when all are zero
    (a ledger without sites keeps its compact table)."""
    unused = [c for c in optional if c in frame and frame[c].isna().all()]
    unused += [
        c for c in ("accounted_tasks", "tasks_with_assumed_inputs") if c in frame and (frame[c] == 0).all()
    ]
    return frame.drop(columns=unused)


def _carbon(costs: Any) -> float | None:
    return costs.get("carbon_g") if isinstance(costs, dict) else None


def _minute(when: Any) -> str:
    return "-" if when is None or when != when else f"{when:%Y-%m-%d %H:%M}"  # None or NaT


def _query(config: Path | None, db_url: str | None, query: Callable[[Any], Any]) -> Any:
    """The frame ``query`` reads from the ledger the settings name (a failure ends the command)."""
    try:
        return query(open_ledger(resolve_settings(config, db_url=db_url)))
    except HpcqueueError as exc:
        fail(exc)


def _printed_as_data(frame: Any, fmt: str, *, iso_dates: bool = False) -> bool:
    """CSV or JSON records on stdout (True), or nothing (False: the caller renders a table)."""
    if fmt == "csv":
        sys.stdout.write(frame.map(lambda v: json.dumps(v) if isinstance(v, dict) else v).to_csv(index=False))
    elif fmt == "json":
        dates = {"date_format": "iso"} if iso_dates else {}
        print_json(json.loads(frame.to_json(orient="records", **dates)))
    return fmt != "table"


_SUMMARY_HEADERS = {
    "succeeded": "ok",
    "rejected": "rejected",
    "input_tokens": "in tokens",
    "output_tokens": "out tokens",
    "energy_j": "energy J",
    "j_per_output_token": "J/out token",
    "energy_method": "method",
    "facility_energy_j": "facility J",
    "carbon_g": "carbon g",
    "water_onsite_l": "water on-site L",
    "water_offsite_l": "water off-site L",
    "cost_usd": "cost USD",
    "accounted_tasks": "accounted",
    "tasks_with_assumed_inputs": "assumed",
}


def _summary_for_humans(frame: Any) -> Any:
    """Short headers, and the meters folded into the method column ("estimated (estimate)")."""
    if frame.empty or "meters" not in frame:
        return frame
    frame = frame.copy()
    meters = frame.pop("meters").map(lambda m: ", ".join(m) if isinstance(m, (list, tuple)) else (m or ""))
    frame["energy_method"] = [
        f"{method} ({names})" if method and names else (method or "-")
        for method, names in zip(frame["energy_method"], meters, strict=True)
    ]
    from hpcqueue.ledger.schema import FOOTPRINT_COLUMNS

    return _without_unused(frame, list(FOOTPRINT_COLUMNS)).rename(columns=_SUMMARY_HEADERS)


def _render_frame(frame: Any, *, title: str) -> None:
    if frame.empty:
        out.print(f"{title}: the ledger has no rows yet")
        return
    table = Table(*[str(c) for c in frame.columns], title=title)
    for row in frame.itertuples(index=False):
        add_row(table, *[_cell(v) for v in row])
    out.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return num(value, 3 if abs(value) < 10 else 1)
    return "-" if value is None else str(value)


@ledger_app.command("init-site")
def ledger_init_site(
    admin: Annotated[
        list[str] | None,
        typer.Option("--admin", help="A role (Unix user name) that may read every user's rows. Repeatable."),
    ] = None,
    user: Annotated[
        list[str] | None,
        typer.Option("--user", help="A role (Unix user name) that may use the ledger. Repeatable."),
    ] = None,
    sql: Annotated[bool, typer.Option("--sql", help="Print the SQL instead of applying it.")] = False,
    config: ConfigOpt = None,
    db_url: DbUrlOpt = None,
) -> None:
    """Set up a shared PostgreSQL ledger (run as its database owner): migrate it, enable row-level
    security so that each role reads and writes only its own batches, and grant the --user and --admin roles
    (created with no password, for peer authentication, when missing). Safe to run again."""
    try:
        from hpcqueue.ledger.access import init_site, render_sql, site_sql

        if sql:
            sys.stdout.write(render_sql(site_sql(users=user or (), admins=admin or ())))
            return
        with open_ledger(resolve_settings(config, db_url=db_url)) as ledger:
            done = init_site(ledger, users=user or (), admins=admin or ())
    except HpcqueueError as exc:
        fail(exc)
    for line in done:
        out.print(line, markup=False, soft_wrap=True)


OutputFileOpt = Annotated[
    Path, typer.Option("-o", "--output", help="The file to write (replaced atomically).")
]


@ledger_app.command("export")
def ledger_export(
    output: OutputFileOpt,
    table: Annotated[
        Literal["batches", "tasks", "requests"], typer.Option("--table", help="The ledger table to export.")
    ] = "requests",
    fmt: Annotated[
        Literal["csv", "json", "parquet"] | None,
        typer.Option("--format", help="File format (default: from the output's suffix). json: JSON Lines."),
    ] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    user: UserFilterOpt = None,
    account: AccountFilterOpt = None,
    target: TargetFilterOpt = None,
    model: ModelFilterOpt = None,
    all_users: AllUsersOpt = False,
    config: ConfigOpt = None,
    db_url: DbUrlOpt = None,
) -> None:
    """Every column of one ledger table (batches, tasks or requests) for the rows the filters select, as
    CSV, JSON Lines or Parquet: timestamps in UTC, NULL as empty (CSV) or null. Streams in chunks."""
    from hpcqueue.errors import ConfigError

    try:
        if fmt is None:
            suffix = output.suffix.lower().lstrip(".")
            fmt = {"csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet", "pq": "parquet"}.get(
                suffix
            )  # type: ignore[assignment]
            if fmt is None:
                raise ConfigError(
                    f"cannot tell the format of {output} from its suffix; give --format csv, json or parquet"
                )
        where = ledger_filter(
            since=since,
            until=until,
            users=user,
            accounts=account,
            targets=target,
            models=model,
            all_users=all_users,
        )
        from hpcqueue.ledger.export import export_table

        ledger = open_filtered_ledger(resolve_settings(config, db_url=db_url), where)
        with ledger:
            done = export_table(ledger, table, fmt, output, where=where)
    except HpcqueueError as exc:
        fail(exc)
    err.print(
        f"wrote {done.rows} {table} rows ({where.describe()}) to {done.path} as {done.fmt}",
        markup=False,
        soft_wrap=True,
    )


@ledger_app.command("metrics")
def ledger_metrics(
    output: OutputFileOpt,
    user: UserFilterOpt = None,
    all_users: AllUsersOpt = False,
    config: ConfigOpt = None,
    db_url: DbUrlOpt = None,
) -> None:
    """The ledger's all-time totals (energy, carbon, water, requests, tokens by user, account, target and
    model) as Prometheus counters, for node_exporter's textfile collector. Counters never shrink, so there
    is no time filter; the file is replaced atomically."""
    try:
        where = ledger_filter(users=user, all_users=all_users)
        from hpcqueue.ledger.metrics import write_metrics

        ledger = open_filtered_ledger(resolve_settings(config, db_url=db_url), where)
        with ledger:
            counters = write_metrics(ledger, output, users=where.users)
    except HpcqueueError as exc:
        fail(exc)
    series = sum(len(counter.samples) for counter in counters)
    err.print(f"wrote {series} series ({where.describe()}) to {output}", markup=False, soft_wrap=True)


@ledger_app.command("reconcile")
def ledger_reconcile(
    batch: Annotated[
        str | None, typer.Argument(help="Only this batch (its id); default: every batch.")
    ] = None,
    user: UserFilterOpt = None,
    all_users: AllUsersOpt = False,
    since: SinceOpt = None,
    fmt: Annotated[Literal["table", "json"], typer.Option("--format", help="Output format.")] = "table",
    config: ConfigOpt = None,
    db_url: DbUrlOpt = None,
) -> None:
    """Each Slurm task's energy in the ledger beside Slurm's own accounting of its job (sacct's
    ConsumedEnergyRaw), with what each measures: whole nodes, exclusive or shared allocations, GPUs or
    not; says plainly when the cluster gathers no energy."""
    try:
        where = ledger_filter(since=since, users=user, all_users=all_users)
        from hpcqueue.ledger.reconcile import reconcile

        ledger = open_filtered_ledger(resolve_settings(config, db_url=db_url), where)
        with ledger:
            result = reconcile(ledger, batch=batch, where=where)
    except HpcqueueError as exc:
        fail(exc)
    if fmt == "json":
        print_json(result.as_dict())
        return
    if result.tasks and result.energy_accounting:
        table = Table(
            "batch",
            "task",
            "job",
            "node",
            "ledger J",
            "method",
            "Slurm J",
            "ledger/Slurm",
            "allocation",
            "note",
            title=f"ledger against Slurm ({where.describe()})",
        )
        for task in result.tasks:
            add_row(
                table,
                task.batch_id,
                str(task.task_index),
                task.job_id,
                task.node or "-",
                num(task.ledger_energy_j),
                task.energy_method or "-",
                num(task.slurm_energy_j),
                num(task.ratio, 2),
                task.allocation,
                task.note or "-",
            )
        out.print(table)
    elif not result.tasks:
        out.print(f"no Slurm task in the ledger ({where.describe()}{', batch ' + batch if batch else ''})")
    else:
        out.print(f"{len(result.tasks)} Slurm task(s) in the ledger ({where.describe()})", markup=False)
    for note in result.notes:
        out.print(note, markup=False, soft_wrap=True)
    if result.not_in_sacct:
        shown = ", ".join(result.not_in_sacct[:10]) + (" ..." if len(result.not_in_sacct) > 10 else "")
        out.print(
            f"sacct does not know {len(result.not_in_sacct)} job(s): {shown}", markup=False, soft_wrap=True
        )
