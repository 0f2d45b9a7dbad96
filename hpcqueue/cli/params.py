"""The reusable options and arguments (sqlite-utils style): one definition, used by every command that takes
them, so that an option reads the same in every ``--help``.

Options that one command alone takes are declared in its signature; the batch-id arguments stand together
here, so that their three defaults read side by side.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

#: Options that set one setting each: parameter name → (the setting's name as :func:`hpcqueue.config.resolve`
#: reads it, the option). Filled by :func:`setting` as the options are declared below; commands take them
#: with :func:`setting_options`.
SETTING_OPTIONS: dict[str, tuple[str, Any]] = {}


def setting(key: str, option: Any, *, param: str | None = None) -> Any:
    """Declare ``option`` as the one that sets the setting ``key``; commands name it ``param`` (default:
    ``key``). Returns the option, to bind to its alias."""
    SETTING_OPTIONS[param or key] = (key, option)
    return option


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Cluster config (TOML). Default: $HPCQUEUE_CONFIG, else the user config."
    ),
]
DbUrlOpt = setting(
    "db_url",
    Annotated[
        str | None,
        typer.Option("--db-url", help="Ledger database URL. Default: $HPCQUEUE_DB_URL, else SQLite."),
    ],
)


def flag(name: str, help: str) -> Any:
    """An on/off option a command takes alone: ``wait: Annotated[bool, flag("--wait", "...")] = False``."""
    return typer.Option(name, help=help)


JsonOpt = Annotated[bool, flag("--json", "Print one JSON object instead of tables.")]
# The batch id, by what a command does without one: the most recent batch, every batch, or it needs one.
BatchArg = Annotated[str | None, typer.Argument(help="Batch id (hq-…). Default: the most recent batch.")]
EveryBatchArg = Annotated[
    str | None, typer.Argument(help="Batch id. Default: every batch under the batch root.")
]
BatchIdArg = Annotated[str, typer.Argument(help="Batch id (hq-…).")]
ModelOpt = setting(
    "model",
    Annotated[
        str | None,
        typer.Option("--model", help="Model id, alias or local path. Default: the config's model."),
    ],
)
EngineOpt = setting(
    "engine",
    Annotated[
        str | None,
        typer.Option(
            "--engine",
            help="transformers | vllm: the engine every target's workers run. Default: each target's "
            "engine, else the config's (transformers).",
        ),
    ],
)
MaxNewTokensOpt = setting(
    "max_new_tokens",
    Annotated[int | None, typer.Option(help="Token limit for requests that do not set one.", min=1)],
)
TaskSizeOpt = setting(
    "task_size", Annotated[int | None, typer.Option(help="Requests per task (array element).", min=1)]
)
ShowErrorsOpt = Annotated[int, typer.Option(help="How many input errors to list.", min=1)]
PolicyOpt = setting(
    "policy",
    Annotated[
        str | None,
        typer.Option(
            help="threshold | optimal | unaware | single:TARGET. Default: the config's policy (threshold)."
        ),
    ],
)
LambdaOpt = setting(
    "lambda",
    Annotated[
        float | None,
        typer.Option(
            "--lambda",
            help="Weight of energy in the cost λ·E + (1−λ)·R, both normalised by the workload's mean per "
            "request: 1 = energy only (default), 0 = runtime only.",
            min=0.0,
            max=1.0,
        ),
    ],
    param="lam",
)
DeadlineOpt = setting(
    "deadline",
    Annotated[
        str | None,
        typer.Option(
            help='Finish by this time: a duration after the start (seconds or e.g. "90m", "14h", "1h30m") '
            "or an ISO 8601 time (2023-06-02T08:00-04:00). Bounds each target's work to slots "
            "(array_parallelism) × deadline, and the plan in time."
        ),
    ],
)
StartOpt = setting(
    "start",
    Annotated[
        str | None,
        typer.Option(
            help="When the batch may start: an ISO 8601 time with its offset (2023-06-01T18:00-04:00) or "
            '"now" (default).'
        ),
    ],
)
SlotOpt = setting(
    "slot",
    Annotated[
        str | None,
        typer.Option(help='Planning slot: "1h" (default), "30m", "15m"; series are resampled to it.'),
    ],
)
ObjectiveOpt = setting(
    "objective",
    Annotated[
        str | None,
        typer.Option(
            help="What the plan minimises: energy (facility energy), carbon, water, cost, runtime, or "
            'weights such as "carbon=1,water=0.1". --lambda λ is shorthand for energy=λ,runtime=1−λ; give '
            "one of them."
        ),
    ],
)
DeferOpt = setting(
    "defer",
    Annotated[
        bool | None,
        typer.Option(
            "--defer/--no-defer",
            help="--no-defer: every task starts as soon as capacity allows (the run-now plan). Default: "
            "defer work to the hours and sites that cost least before the deadline.",
        ),
    ],
)
ProfileDirOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Profile directory to write into. Default: the user's profiles."),
]


MeterOpt = Annotated[
    str | None,
    typer.Option(
        help="Energy meter (auto, rapl, nvml, pyjoules, powermetrics, zeus, estimate, a+b); a named meter "
        "that cannot work is an error, never a silent fallback."
    ),
]
SkipInvalidOpt = Annotated[
    bool,
    typer.Option(
        "--skip-invalid",
        help="Go on with the valid lines and report the invalid ones (submit keeps them in rejects.jsonl).",
    ),
]
BatchSizeOpt = setting(
    "batch_size", Annotated[int | None, typer.Option(help="Prompts per generation batch in a worker.", min=1)]
)
MaxLineBytesOpt = setting(
    "max_line_bytes", Annotated[int | None, typer.Option(help="Longest accepted input line, in bytes.")]
)

#: How a batch is planned: the options submit, plan and simulate share.
PLANNING = ("policy", "lam", "objective", "start", "deadline", "slot", "defer")
#: What a command decorated with :func:`setting_options` receives: the values of its setting options.
SettingFlags = dict[str, Any]
NO_FLAGS: SettingFlags = {}


_ANY_WAY = inspect.Parameter.POSITIONAL_OR_KEYWORD


def setting_options(*names: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the options ``names`` of :data:`SETTING_OPTIONS`, right after its ``config`` option.
    The command takes their values as one keyword, ``flags``: a dict keyed by setting name, ready for
    ``resolve_settings(config, **flags)`` (options not given are None, which ``resolve`` ignores)."""
    unknown = sorted(set(names) - set(SETTING_OPTIONS))
    if unknown:
        raise ValueError(f"no setting option(s) {', '.join(unknown)}")

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "flags"]
        added = [
            inspect.Parameter(
                name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=None,
                annotation=SETTING_OPTIONS[name][1],
            )
            for name in names
        ]
        at = next((i + 1 for i, p in enumerate(own) if p.name == "config"), len(own))
        parameters = own[:at] + added + own[at:]

        @functools.wraps(command)
        def with_settings(**values: Any) -> None:
            flags = {SETTING_OPTIONS[name][0]: values.pop(name) for name in names}
            command(flags=flags, **values)

        with_settings.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        with_settings.__annotations__ = {p.name: p.annotation for p in parameters}
        return with_settings

    return decorate


# The ledger's filters (hpcqueue.ledger.filters.LedgerFilter), the same on every command that reads it;
# :func:`hpcqueue.cli.common.ledger_filter` turns them into a filter.
_WHEN = (
    "an ISO 8601 date or time (2024-11-21, 2024-11-21T18:00Z; without an offset, local time) or a duration "
    "back from now (7d, 12h)"
)
SinceOpt = Annotated[str | None, typer.Option(help=f"Only batches submitted at or after this: {_WHEN}.")]
UntilOpt = Annotated[str | None, typer.Option(help=f"Only batches submitted before this: {_WHEN}.")]
UserFilterOpt = Annotated[
    list[str] | None,
    typer.Option("--user", help="Only this user's batches (repeatable; another user's: admins only)."),
]
AccountFilterOpt = Annotated[
    list[str] | None, typer.Option("--account", help="Only tasks charged to this Slurm account (repeatable).")
]
TargetFilterOpt = Annotated[
    list[str] | None, typer.Option("--target", help="Only tasks on this target (repeatable).")
]
ModelFilterOpt = Annotated[
    list[str] | None, typer.Option("--model", help="Only batches of this model (repeatable).")
]
AllUsersOpt = Annotated[
    bool,
    flag("--all-users", "Every user's batches (default: yours). On a shared ledger, for ledger admins only."),
]
