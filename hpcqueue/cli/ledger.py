"""``hpcqueue ledger …``: reports from the ledger of batches, tasks, requests and energy."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from hpcqueue.cli.common import add_row, fail, num, open_ledger, out, print_json, resolve_settings
from hpcqueue.cli.params import ConfigOpt, DbUrlOpt
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
    config: ConfigOpt = None,
    db_url: DbUrlOpt = None,
) -> None:
    """Requests, tokens and energy in the ledger, grouped by target, model, day or user."""
    frame = _query(config, db_url, lambda ledger: ledger.summary(by))
    if _printed_as_data(frame, fmt):
        return
    _render_frame(_summary_for_humans(frame), title=f"ledger by {by}")


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
