"""The ``hpcqueue`` command: one typer app, one module per command group.

``batch`` (submit, status, collect, retry, cancel, results), ``planning`` (plan, simulate),
``estimating`` (estimate), ``ledger`` (ledger …), ``reporting`` (report: the admin's HTML report),
``profiles`` (profiles …, profile), ``meters`` (doctor) and ``sites`` (sites …); ``params`` holds the options
several commands take, ``common`` the consoles and the one place where errors become exit codes.
Commands parse, call the library and render; no logic lives here.
"""

from __future__ import annotations

import typer

from hpcqueue.cli import batch, estimating, meters, planning, profiles, reporting, sites
from hpcqueue.cli.ledger import ledger_app

app = typer.Typer(
    name="hpcqueue",
    help="Energy-aware batch queue for LLM inference on Slurm clusters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for command in (
    batch.submit,
    batch.status,
    batch.collect,
    batch.retry,
    batch.replan,
    batch.cancel,
    batch.results,
):
    app.command()(command)
app.add_typer(ledger_app, name="ledger")
app.command()(reporting.report)
app.command()(planning.plan)
app.command()(planning.simulate)
app.command()(estimating.estimate)
app.add_typer(profiles.profiles_app, name="profiles")
app.command()(profiles.profile)
app.command()(meters.doctor)
app.add_typer(sites.sites_app, name="sites")


def main() -> None:
    app()


__all__ = ["app", "main"]
