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
