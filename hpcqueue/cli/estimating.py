"""``hpcqueue estimate``: what a batch will cost — energy, runtime and, where the site is known, facility
energy, carbon, water and cost — before it runs, on the configured targets or on any hardware class, with 90 %
intervals and the method behind each figure. Runs no model and imports no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from hpcqueue.cli.common import add_row, err, fail, out, print_json, resolve_settings
from hpcqueue.cli.params import (
    NO_FLAGS,
    PLANNING,
    ConfigOpt,
    JsonOpt,
    SettingFlags,
    ShowErrorsOpt,
    SkipInvalidOpt,
    setting_options,
)
from hpcqueue.errors import HpcqueueError

TargetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--target", help="Estimate on this configured target (repeatable). Default: every configured target."
    ),
]
HardwareOpt = Annotated[
    str | None,
    typer.Option(
        "--hardware",
        help="Estimate on one node of this hardware class (a100-80g, h100-80g, m1-pro, cpu-generic, …) "
        "instead of the configured targets; needs no config.",
    ),
]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        help="float32 | float16 | bfloat16 | float8. Default: each target's dtype, else the model's."
    ),
]
PerRequestOpt = Annotated[
    Path | None,
    typer.Option(
        "--per-request", help="Also write every request's estimate to this CSV (one row per input line)."
    ),
]


@setting_options("model", "engine", "batch_size", "max_new_tokens", *PLANNING)
def estimate(
    input_file: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT",
            help="Prompts JSONL (as for submit; tokens counted with the model's tokenizer) or a token-count "
            "trace (CSV or JSONL with prompt and output token columns, as for simulate).",
        ),
    ],
    config: ConfigOpt = None,
    flags: SettingFlags = NO_FLAGS,
    target: TargetOpt = None,
    hardware: HardwareOpt = None,
    dtype: DtypeOpt = None,
    per_request: PerRequestOpt = None,
    skip_invalid: SkipInvalidOpt = False,
    as_json: JsonOpt = False,
    show_errors: ShowErrorsOpt = 20,
) -> None:
    """Estimate what INPUT will cost before it runs: per target and in total, with 90 % intervals. Runs
    nothing."""
    from hpcqueue.planner import forecast

    try:
        settings = resolve_settings(config, **flags)
        request = forecast.EstimateRequest(
            targets=tuple(target or ()), hardware=hardware, dtype=dtype, skip_invalid=skip_invalid
        )
        result = forecast.estimate_file(input_file, settings, request)
        if per_request is not None:
            forecast.write_per_request(result, per_request)
    except HpcqueueError as exc:
        fail(exc, show_errors)
    report = result.report
    if as_json:
        print_json(report)
        return
    render(report)


def render(report: dict[str, Any]) -> None:
    """The human view of an estimate."""
    out.print(
        f"estimate for [bold]{escape(report['input'])}[/] ({report['input_kind']}), model "
        f"[bold]{escape(report['model'])}[/]: {report['requests']:,} requests, method {report['method']}"
    )
    footprint = any(row.get("carbon_g") is not None for row in report["per_target"].values())
    columns = ["target", "hardware", "requests", "method", "energy [90 % interval]", "runtime [90 %]"]
    columns += ["energy by domain"]
    if footprint:
        columns += ["carbon (kg)", "water (L)", "cost (USD)"]
    table = Table(*columns)
    rows = [*report["per_target"].items(), ("total", report)]
    for name, row in rows:
        cells = [
            name,
            row.get("hardware", ""),
            f"{row['requests']:,}",
            str(row["method"] or "-"),
            _with_interval(row["energy_j"], row["energy_interval_j"], ENERGY_UNITS),
            _with_interval(row["runtime_s"], row["runtime_interval_s"], TIME_UNITS),
            ", ".join(f"{d} {_scaled(v, ENERGY_UNITS)}" for d, v in row["energy_by_domain_j"].items()) or "-",
        ]
        if footprint:
            cells += [
                _with_interval(row.get("carbon_g"), row.get("carbon_g_interval"), CARBON_UNITS),
                _with_interval(row.get("water_l"), row.get("water_l_interval"), WATER_UNITS),
                _with_interval(row.get("cost_usd"), row.get("cost_usd_interval"), COST_UNITS),
            ]
        add_row(table, *cells)
    out.print(table)
    for note in report.get("notes", []):
        out.print(f"note: {note}", markup=False, soft_wrap=True)
    for warning in report.get("warnings", []):
        err.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)


# (factor, unit) from the largest down: a figure is shown in the first unit it reaches one of.
ENERGY_UNITS = ((3.6e6, "kWh"), (3600.0, "Wh"), (1.0, "J"))
TIME_UNITS = ((3600.0, "h"), (60.0, "min"), (1.0, "s"))
CARBON_UNITS = ((1000.0, "kg"), (1.0, "g"))
WATER_UNITS = ((1.0, "L"),)
COST_UNITS = ((1.0, "USD"),)


def _unit(value: float, units: tuple[tuple[float, str], ...]) -> tuple[float, str]:
    return next(((f, u) for f, u in units if abs(value) >= f), units[-1])


def _scaled(value: float, units: tuple[tuple[float, str], ...]) -> str:
    factor, unit = _unit(value, units)
    return f"{value / factor:,.3g} {unit}"


def _with_interval(
    value: float | None, interval: list[float] | None, units: tuple[tuple[float, str], ...]
) -> str:
    """``1.23 kWh [0.61–2.4]``: the interval in the value's unit."""
    if value is None:
        return "-"
    factor, unit = _unit(value, units)
    text = f"{value / factor:,.3g} {unit}"
    if interval is None:
        return text
    return f"{text} [{interval[0] / factor:,.3g}–{interval[1] / factor:,.3g}]"
