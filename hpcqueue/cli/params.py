"""The reusable options and arguments (sqlite-utils style): one definition, used by every command that takes
them, so that an option reads the same in every ``--help``.

Options that one command alone takes are declared in its signature; the batch-id arguments stand together
here, so that their three defaults read side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Cluster config (TOML). Default: $HPCQUEUE_CONFIG, else the user config."
    ),
]
DbUrlOpt = Annotated[
    str | None, typer.Option("--db-url", help="Ledger database URL. Default: $HPCQUEUE_DB_URL, else SQLite.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
# The batch id, by what a command does without one: the most recent batch, every batch, or it needs one.
BatchArg = Annotated[str | None, typer.Argument(help="Batch id (hq-…). Default: the most recent batch.")]
EveryBatchArg = Annotated[
    str | None, typer.Argument(help="Batch id. Default: every batch under the batch root.")
]
BatchIdArg = Annotated[str, typer.Argument(help="Batch id (hq-…).")]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Model id, alias or local path. Default: the config's model.")
]
MaxNewTokensOpt = Annotated[
    int | None, typer.Option(help="Token limit for requests that do not set one.", min=1)
]
TaskSizeOpt = Annotated[int | None, typer.Option(help="Requests per task (array element).", min=1)]
ShowErrorsOpt = Annotated[int, typer.Option(help="How many input errors to list.", min=1)]
PolicyOpt = Annotated[
    str | None,
    typer.Option(
        help="threshold | optimal | unaware | single:TARGET. Default: the config's policy (threshold)."
    ),
]
LambdaOpt = Annotated[
    float | None,
    typer.Option(
        "--lambda",
        help="Weight of energy in the cost λ·E + (1−λ)·R, both normalised by the workload's mean per "
        "request: 1 = energy only (default), 0 = runtime only.",
        min=0.0,
        max=1.0,
    ),
]
DeadlineOpt = Annotated[
    str | None,
    typer.Option(
        help='Finish by this time: a duration after the start (seconds or e.g. "90m", "14h", "1h30m") or an '
        "ISO 8601 time (2023-06-02T08:00-04:00). Bounds each target's work to slots (array_parallelism) × "
        "deadline, and the plan in time."
    ),
]
StartOpt = Annotated[
    str | None,
    typer.Option(
        help='When the batch may start: an ISO 8601 time with its offset (2023-06-01T18:00-04:00) or "now" '
        "(default)."
    ),
]
SlotOpt = Annotated[
    str | None, typer.Option(help='Planning slot: "1h" (default), "30m", "15m"; series are resampled to it.')
]
ObjectiveOpt = Annotated[
    str | None,
    typer.Option(
        help="What the plan minimises: energy (facility energy), carbon, water, cost, runtime, or weights "
        'such as "carbon=1,water=0.1". --lambda λ is shorthand for energy=λ,runtime=1−λ; give one of them.'
    ),
]
DeferOpt = Annotated[
    bool | None,
    typer.Option(
        "--defer/--no-defer",
        help="--no-defer: every task starts as soon as capacity allows (the run-now plan). Default: defer "
        "work to the hours and sites that cost least before the deadline.",
    ),
]
ProfileDirOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Profile directory to write into. Default: the user's profiles."),
]
