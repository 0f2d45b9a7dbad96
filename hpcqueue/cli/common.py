"""What every command shares: the consoles, settings, and the one place where library errors become messages
and exit codes (:func:`fail`). The reusable options live in :mod:`hpcqueue.cli.params`.

No logic lives in ``hpcqueue.cli``: commands parse options, call the library and render. Library modules are
imported inside the commands so that ``--help`` and the commands that run no model start fast and never import
torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from hpcqueue.errors import HpcqueueError, InputError

# Piped output is not cut to 80 columns: a report redirected to a file keeps every column readable.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False)


def resolve_settings(config: Path | None, **flags: Any) -> Any:
    from hpcqueue.config import resolve

    return resolve(config, flags=flags)


def open_ledger(settings: Any) -> Any:
    from hpcqueue.ledger import Ledger

    return Ledger(settings.db_url)


def parse_when(text: str | None, option: str) -> Any:
    """``--since`` / ``--until``: an ISO 8601 date or time, or a duration back from now (None: unbounded)."""
    if text is None:
        return None
    from datetime import datetime, timedelta, timezone

    from hpcqueue.config import parse_time
    from hpcqueue.durations import parse_duration
    from hpcqueue.errors import ConfigError

    try:
        return parse_time(text)
    except ValueError:
        pass
    try:
        return datetime.now(timezone.utc) - timedelta(seconds=parse_duration(text, bare_unit="s"))
    except ValueError:
        raise ConfigError(
            f"{option} {text!r} is neither a time nor a duration; use an ISO 8601 date or time "
            "(2024-11-21, 2024-11-21T18:00Z) or a duration back from now (7d, 12h, 90m)"
        ) from None


def ledger_filter(
    *,
    since: str | None = None,
    until: str | None = None,
    users: list[str] | None = None,
    accounts: list[str] | None = None,
    targets: list[str] | None = None,
    models: list[str] | None = None,
    all_users: bool = False,
    batch: str | None = None,
) -> Any:
    """The :class:`~hpcqueue.ledger.filters.LedgerFilter` the filter options ask for: the current user's
    batches unless ``--user`` or ``--all-users`` say otherwise (both at once is an error)."""
    from hpcqueue.errors import ConfigError
    from hpcqueue.ledger.filters import LedgerFilter, current_user

    if all_users and users:
        raise ConfigError("--all-users and --user exclude each other: give one")
    return LedgerFilter(
        since=parse_when(since, "--since"),
        until=parse_when(until, "--until"),
        users=None if all_users else tuple(dict.fromkeys(users or [current_user()])),
        accounts=tuple(dict.fromkeys(accounts or ())),
        targets=tuple(dict.fromkeys(targets or ())),
        models=tuple(dict.fromkeys(models or ())),
        batch=batch,
    )


def open_filtered_ledger(settings: Any, where: Any) -> Any:
    """The ledger, once ``where`` is checked against what this connection may read
    (:func:`hpcqueue.ledger.access.check_filter`); closed again if it is refused."""
    from hpcqueue.ledger.access import check_filter

    ledger = open_ledger(settings)
    try:
        check_filter(ledger, where)
    except BaseException:
        ledger.close()
        raise
    return ledger


def print_json(obj: Any) -> None:
    from hpcqueue.fileio import json_safe

    sys.stdout.write(json.dumps(json_safe(obj), indent=2, default=str, allow_nan=False) + "\n")


def fail(exc: HpcqueueError, show_errors: int = 20) -> NoReturn:
    """The one place where library errors become messages and exit codes."""
    err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, soft_wrap=True)
    if isinstance(exc, InputError) and exc.issues:
        errors = [i for i in exc.issues if i.severity == "error"]
        for issue in errors[:show_errors]:
            err.print(f"  {issue}", markup=False, soft_wrap=True)
        if len(errors) > show_errors:
            err.print(f"  … and {len(errors) - show_errors} more (--show-errors N shows more)", markup=False)
    raise typer.Exit(exc.exit_code)


def with_meter(target: Any, meter: str) -> Any:
    """``target`` measured with ``meter`` (the ``--meter`` option). A local target's meter is checked here,
    before any work: a named meter that cannot work on this node is an error now, not a failed job later."""
    from hpcqueue.meters import get_meter

    target = target.model_copy(update={"meter": meter})
    if target.executor == "local":
        get_meter(meter, hardware=target.hardware, nominal_power_w=target.nominal_power_w)
    return target


def add_row(table: Table, *cells: Any) -> None:
    """Add a row whose cells are data, never markup: a reason such as "pip install 'hpcqueue[zeus]'" must
    print as written, not lose its "[zeus]" to rich's markup parser."""
    table.add_row(*[Text(cell) if isinstance(cell, str) else cell for cell in cells])


def num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if number != number:  # NaN
        return "-"
    return f"{number:,.{digits}f}"
