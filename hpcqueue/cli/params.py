"""The reusable options and arguments (sqlite-utils style): one definition, used by every command that takes
them, so that an option reads the same in every ``--help``.

Options that one command alone takes are declared in its signature; the batch-id arguments stand together
here, so that their three defaults read side by side.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

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


@dataclass(frozen=True)
class PlanningFlags:
    """The options of how a batch is planned, shared by submit, plan and simulate (see
    :func:`planning_options`)."""

    policy: str | None = None
    lam: float | None = None
    objective: str | None = None
    start: str | None = None
    deadline: str | None = None
    slot: str | None = None
    defer: bool | None = None

    def settings(self) -> dict[str, Any]:
        """These flags named as :func:`hpcqueue.config.resolve` reads them (None: not given)."""
        return {
            "policy": self.policy,
            "lambda": self.lam,
            "objective": self.objective,
            "start": self.start,
            "deadline": self.deadline,
            "slot": self.slot,
            "defer": self.defer,
        }


NO_PLANNING = PlanningFlags()

_PLANNING_OPTIONS = {
    "policy": PolicyOpt,
    "lam": LambdaOpt,
    "objective": ObjectiveOpt,
    "start": StartOpt,
    "deadline": DeadlineOpt,
    "slot": SlotOpt,
    "defer": DeferOpt,
}


def planning_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command the planning options (--policy, --lambda, --objective, --start, --deadline, --slot,
    --defer/--no-defer), declared once here, right after its ``config`` option; the command takes them as
    one keyword ``planning: PlanningFlags``."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "planning"]
    added = [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=annotation)
        for name, annotation in _PLANNING_OPTIONS.items()
    ]
    at = next((i + 1 for i, p in enumerate(own) if p.name == "config"), len(own))
    parameters = own[:at] + added + own[at:]

    @functools.wraps(command)
    def with_planning(**values: Any) -> None:
        flags = PlanningFlags(**{name: values.pop(name) for name in _PLANNING_OPTIONS})
        command(planning=flags, **values)

    with_planning.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    with_planning.__annotations__ = {p.name: p.annotation for p in parameters}
    return with_planning
