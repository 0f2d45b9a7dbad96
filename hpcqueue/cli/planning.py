"""``hpcqueue plan`` and ``hpcqueue simulate``: what a policy would do with a batch or a trace, and what every
other policy would have done.

Library modules are imported inside the commands (no torch: token counting uses the light tokenizer). The
shared options, rendering and error handling live in :mod:`hpcqueue.cli.common`.
"""

from __future__ import annotations

import math
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
from hpcqueue.errors import HpcqueueError, PlanningError

#: A saving against the best single target below this is called negligible in the human report.
NEGLIGIBLE_SAVING = 0.01


@setting_options("model", "engine", "max_new_tokens", "task_size", *PLANNING)
def plan(
    prompts: Annotated[Path, typer.Argument(help="JSONL file of requests, as for submit.")],
    config: ConfigOpt = None,
    flags: SettingFlags = NO_FLAGS,
    skip_invalid: SkipInvalidOpt = False,
    as_json: JsonOpt = False,
    show_errors: ShowErrorsOpt = 20,
) -> None:
    """Show the plan `submit` would use for PROMPTS, compared with every other policy. Submits nothing."""
    from hpcqueue import submission

    try:
        settings = resolve_settings(config, **flags)
        prepared = submission.prepare(prompts, settings, skip_invalid=skip_invalid)
        report = prepared.plan.compare()
    except HpcqueueError as exc:
        fail(exc, show_errors)
    report = {
        "batch_id": prepared.batch_id,
        "input": str(prompts),
        "model": prepared.model.name,
        **report,
        "rejected": len(prepared.rejected),
        "tasks": len(prepared.plan.tasks),
        "tasks_per_target": {
            name: int((prepared.plan.tasks["target"] == name).sum()) for name in prepared.plan.targets
        },
        "warnings": prepared.warnings + [w for w in report["warnings"] if w not in prepared.warnings],
    }
    if as_json:
        print_json(report)
        return
    out.print(
        f"plan for [bold]{escape(str(prompts))}[/] (batch {report['batch_id']}, not submitted): "
        f"{report['tasks']} tasks" + (f", {report['rejected']} rejected lines" if report["rejected"] else "")
    )
    render_comparison(report)


def _column_option(kind: str, names: str) -> Any:
    """--input-column or --output-column: the trace's column of ``kind`` tokens, else one of ``names``."""
    return typer.Option(help=f"{kind}-token column. Default: found by name ({names}…).")


@setting_options("model", "task_size", *PLANNING)
def simulate(
    trace: Annotated[
        Path,
        typer.Argument(help="CSV or JSONL of token counts, one request per row (e.g. an Azure LLM trace)."),
    ],
    config: ConfigOpt = None,
    flags: SettingFlags = NO_FLAGS,
    input_column: Annotated[str | None, _column_option("Prompt", "ContextTokens, input_tokens")] = None,
    output_column: Annotated[str | None, _column_option("Output", "GeneratedTokens, output_tokens")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Plan a token-count TRACE on the configured targets under every policy and compare them.

    Costs are each profile's own regime, as measured (the paper's profiles: without a KV cache); plan
    and submit predict the KV-cache regime the workers run. Runs nothing."""
    from hpcqueue.planner import PlanOptions, resolve_cost_models
    from hpcqueue.planner.simulate import load_trace
    from hpcqueue.planner.simulate import simulate as run_simulation
    from hpcqueue.profiles.store import profile_search_path
    from hpcqueue.sites import load_sites

    try:
        settings = resolve_settings(config, **flags)
        frame = load_trace(trace, input_column=input_column, output_column=output_column)
        targets = list(settings.targets.values())
        notes: list[str] = []
        # each profile's own regime, as measured: simulate reproduces the paper's results, measured without
        # a KV cache (plan and submit predict the cached regime the workers run)
        cost_models = resolve_cost_models(
            targets,
            settings.model,
            profile_search_path(settings.profile_dirs),
            notes=notes,
            kv_cache=None,
            analytic=False,
            default_engine=settings.engine,
        )
        _require_all_models(targets, cost_models, settings)
        sites = load_sites(settings.sites)
        report = run_simulation(frame, targets, cost_models, PlanOptions.from_settings(settings), sites)
    except HpcqueueError as exc:
        fail(exc)
    report = {"input": str(trace), **report, "warnings": notes + report["warnings"]}
    if as_json:
        print_json(report)
        return
    stats = report["trace"]
    out.print(f"simulated [bold]{escape(str(trace))}[/]")
    out.print(
        f"{stats['requests']:,} requests ({stats['classes']:,} distinct token pairs); prompt median "
        f"{stats['input_tokens']['median']:g}, output median {stats['output_tokens']['median']:g} tokens"
        if stats["requests"]
        else "empty trace"
    )
    render_comparison(report)


def _require_all_models(targets: list[Any], cost_models: dict[str, Any], settings: Any) -> None:
    missing = [t for t in targets if cost_models.get(t.name) is None]
    if missing:
        names = ", ".join(f"{t.name!r} (hardware {t.hardware!r})" for t in missing)
        raise PlanningError(
            f"simulate needs a cost model for every target, but {names} has no profile for model "
            f'{settings.model!r}. Set profile = "<name>" in the target\'s table (hpcqueue profiles list '
            "shows them) or pass a config that does, e.g. --config examples/paper.toml"
        )


def render_comparison(report: dict[str, Any]) -> None:
    """The human view of :func:`hpcqueue.planner.policies.compare`'s report."""
    from hpcqueue.planner.schedule import TIME_BASELINES

    deadline = report.get("deadline_s")
    out.print(
        f"policy [bold]{report['policy']}[/], λ = {report['lambda']:g}, "
        + (f"deadline {_duration(deadline)}" if deadline else "no deadline")
        + f": {report['requests']:,} requests"
    )
    thresholds = report.get("thresholds") or {}
    if thresholds:
        out.print(
            f"thresholds: [bold]{thresholds['low']}[/] takes prompts ≤ {_tokens(thresholds['input_tokens'])} "
            f"and outputs ≤ {_tokens(thresholds['output_tokens'])} tokens, {thresholds['high']} the rest "
            f"(one dimension only: prompt ≤ {_tokens(thresholds['input_only']['input_tokens'])}, or output ≤ "
            f"{_tokens(thresholds['output_only']['output_tokens'])})"
        )
    solver = report.get("solver")
    if solver:
        exact = "exact" if solver["exact"] else f"within {100 * solver['gap']:.3f} % of the optimum"
        out.print(f"optimal assignment: {solver['method']} ({exact})")
    table = Table("target", "requests", "share", "energy (kWh)", "runtime (h)", "makespan (h)")
    for name, row in report["per_target"].items():
        add_row(table, name, f"{row['requests']:,}", f"{100 * row['share']:.1f} %", *_work(row))
    add_row(table, "total", f"{report['requests']:,}", "", *_work(report))
    out.print(table)
    baselines = Table(
        "policy", "energy (kWh)", "runtime (h)", "makespan (h)", "meets deadline", "this plan saves"
    )
    for name, row in report["baselines"].items():
        if name in TIME_BASELINES:
            continue
        label = name + (" (this plan)" if name == report["policy"] else "")
        if "error" in row:
            add_row(baselines, label, "-", "-", "-", "-", row["error"])
            continue
        saving = None if name == report["policy"] else _fraction(report["cost"], row["cost"])
        meets = "-" if row["meets_deadline"] is None else ("yes" if row["meets_deadline"] else "no")
        add_row(baselines, label, *_work(row), meets, "-" if saving is None else f"{100 * saving:+.2f} %")
    out.print(baselines)
    what = "energy" if report["lambda"] == 1 else ("runtime" if report["lambda"] == 0 else "weighted cost")
    best, vs_best = report.get("best_single"), report.get("savings_vs_best_single")
    if best and vs_best is not None:
        verdict = ""
        if abs(vs_best) < NEGLIGIBLE_SAVING:
            verdict = ": negligible, splitting this workload over the targets gains next to nothing"
        saves = f"this plan saves {_percent(vs_best)} of the {what}"
        out.print(f"against the best single target ({best}) {saves}{verdict}")
    out.print(
        f"against the unaware split (requests dealt out by slots, token counts ignored) it saves "
        f"{_percent(report['savings_vs_unaware'])}"
    )
    if "time" in report:
        render_in_time(report)
    for warning in report.get("warnings", []):
        err.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)


def render_in_time(report: dict[str, Any]) -> None:
    """Where and when the plan runs, and what it costs against the baselines in time."""
    from hpcqueue.planner.schedule import TIME_BASELINES

    time = report["time"]
    objective = ", ".join(f"{name}={weight:g}" for name, weight in time["objective"].items())
    exact = (
        "exact"
        if time["exact"]
        else ("gap unknown" if time["gap"] is None else f"gap {100 * time['gap']:.3f} %")
    )
    out.print(
        f"in time: from {time['start']} to "
        + (time["deadline"] or "no deadline")
        + f", slots of {_duration(time['slot_s'])}, objective {objective} ({time['method']}, {exact})"
    )
    starts = Table("target", "site", "tasks start at (tasks/requests)")
    for name, row in report["per_target"].items():
        add_row(starts, name, str(row.get("site", "-")), _starts(row.get("starts", [])))
    out.print(starts)
    columns = (
        "facility energy (kWh)",
        "carbon (kg)",
        "water (L)",
        "cost (USD)",
        "finish (h)",
        "meets deadline",
    )
    table = Table("plan", *columns)
    rows = [("this plan", report)] + [
        (name, report["baselines"][name]) for name in TIME_BASELINES if name in report["baselines"]
    ]
    for label, row in rows:
        if "error" in row:
            add_row(table, label, *["-"] * (len(columns) - 1), row["error"])
            continue
        add_row(
            table,
            label + (f" ({row['site']})" if row.get("site") else ""),
            _kwh(row["facility_energy_j"]),
            _scaled(row["carbon_g"], 1e-3, "{:,.3f}"),
            _scaled(row["water_l"], 1.0, "{:,.2f}"),
            _scaled(row["cost_usd"], 1.0, "{:,.2f}"),
            _hours(row["finish_s"]),
            "-" if row["meets_deadline"] is None else ("yes" if row["meets_deadline"] else "no"),
        )
    out.print(table)
    unknown = [
        name for name in ("facility_energy_j", "carbon_g", "water_l", "cost_usd") if report[name] is None
    ]
    if unknown:
        out.print(
            f"unknown: {', '.join(unknown)} (a target without a profile, or a site that runs work and states "
            "no such data; see docs/sites.md)",
            markup=False,
        )


def _starts(starts: list[dict[str, Any]], shown: int = 6) -> str:
    """``02:00 (5/673), 03:00 (10/2,428)``; past ``shown`` start hours, the first and last and a count."""
    if not starts:
        return "-"
    if len(starts) <= shown:
        return ", ".join(f"{s['start'][11:16]} ({s['tasks']}/{s['requests']:,})" for s in starts)
    tasks = sum(s["tasks"] for s in starts)
    requests = sum(s["requests"] for s in starts)
    return (
        f"{len(starts)} start hours from {starts[0]['start'][11:16]} to {starts[-1]['start'][11:16]} "
        f"({tasks}/{requests:,})"
    )


def _scaled(value: float | None, factor: float, form: str) -> str:
    return "-" if value is None or value != value else form.format(value * factor)


def _work(row: dict[str, Any]) -> tuple[str, str, str]:
    """Energy (kWh), runtime (h) and makespan (h) of a report or one of its rows."""
    return _kwh(row["energy_j"]), _hours(row["runtime_s"]), _hours(row["makespan_s"])


def _fraction(value: float, baseline: float) -> float | None:
    if not (math.isfinite(value) and math.isfinite(baseline)) or baseline <= 0:
        return None
    return 1.0 - value / baseline


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _tokens(value: int) -> str:
    return "none" if value < 0 else f"{value:,}"


def _kwh(joules: float) -> str:
    return "-" if joules is None or joules != joules else f"{joules / 3.6e6:,.3f}"


def _hours(seconds: float) -> str:
    return "-" if seconds is None or seconds != seconds else f"{seconds / 3600:,.2f}"


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds:g} s"
