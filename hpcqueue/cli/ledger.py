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
    """The most recent batches in the ledger."""
    frame = _query(config, db_url, lambda ledger: ledger.list_batches(limit))
    if _printed_as_data(frame, fmt, iso_dates=True):
        return
    if not frame.empty:
        frame = frame.drop(columns=["host", "input_path"], errors="ignore")
        frame["created_at"] = frame["created_at"].map(
            lambda t: f"{t:%Y-%m-%d %H:%M}" if t is not None else "-"
        )
    _render_frame(frame.rename(columns={"n_requests": "requests", "n_rejected": "rejected"}), title="batches")


def _query(config: Path | None, db_url: str | None, query: Callable[[Any], Any]) -> Any:
    """The frame ``query`` reads from the ledger the settings name (a failure ends the command)."""
    try:
        return query(open_ledger(resolve_settings(config, db_url=db_url)))
    except HpcqueueError as exc:
        fail(exc)


def _printed_as_data(frame: Any, fmt: str, *, iso_dates: bool = False) -> bool:
    """CSV or JSON records on stdout (True), or nothing (False: the caller renders a table)."""
    if fmt == "csv":
        sys.stdout.write(frame.to_csv(index=False))
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
    return frame.rename(columns=_SUMMARY_HEADERS)


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
