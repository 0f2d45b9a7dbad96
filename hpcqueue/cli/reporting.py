"""``hpcqueue report``: the cluster admin's report of the ledger, one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hpcqueue.cli.common import fail, ledger_filter, open_filtered_ledger, out, resolve_settings
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


def report(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The HTML file to write (replaced atomically).")
    ] = Path("report.html"),
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
    """The ledger as one self-contained HTML page for the cluster admin: totals (measured and estimated
    apart), energy and carbon per day, energy per token, the plans' savings, where and when the work ran,
    prediction accuracy, users and accounts, failures, and where every figure comes from. Your batches, or
    those the filters select; it opens offline in any browser."""
    from datetime import datetime, timezone

    from hpcqueue.fileio import atomic_write_text
    from hpcqueue.ledger.views import gather
    from hpcqueue.report.admin import render

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
            data = gather(ledger, where)
    except HpcqueueError as exc:
        fail(exc)
    atomic_write_text(output, render(data, datetime.now(timezone.utc)))
    totals = data.totals
    out.print(
        f"wrote {output}: {totals['requests']:,} requests in {totals['batches']:,} batches "
        f"({where.describe()})",
        markup=False,
        soft_wrap=True,
    )
