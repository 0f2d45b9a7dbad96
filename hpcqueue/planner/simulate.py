"""Simulation: plan a token-count trace under every policy and compare them, without running anything.

A trace is a CSV or JSONL file (optionally compressed) with one request per row and a prompt-token and an
output-token column, such as the Azure LLM inference traces (``ContextTokens``, ``GeneratedTokens``). The
columns are found by name (see :data:`INPUT_COLUMNS`, :data:`OUTPUT_COLUMNS`) unless given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hpcqueue.config import Target
from hpcqueue.errors import HpcqueueError, InputError, InputIssue
from hpcqueue.fileio import json_safe
from hpcqueue.planner import schedule
from hpcqueue.planner.models import PlannerCostModel
from hpcqueue.planner.options import PlanOptions
from hpcqueue.planner.plan import Plan, plan_requests
from hpcqueue.planner.policies import compare
from hpcqueue.planner.workload import CostTable, Workload
from hpcqueue.sites import Site

#: Column names recognised as prompt tokens and output tokens (case-insensitive), first match wins.
INPUT_COLUMNS = ("input_tokens", "ContextTokens", "prompt_tokens", "context_tokens", "n_in", "input")
OUTPUT_COLUMNS = (
    "output_tokens",
    "GeneratedTokens",
    "completion_tokens",
    "generated_tokens",
    "max_new_tokens",
    "n_out",
    "output",
)
_SHOW_ISSUES = 20


def load_trace(
    path: str | os.PathLike[str],
    *,
    input_column: str | None = None,
    output_column: str | None = None,
) -> pd.DataFrame:
    """``input_tokens`` and ``output_tokens`` (int64) of every row of a CSV or JSONL trace.

    JSONL is recognised by the suffix ``.jsonl``/``.ndjson`` (before any compression suffix), anything else is
    read as CSV. Raises :class:`InputError` naming the file, line and column of every bad value (missing,
    not a whole number, negative), and for a missing column the columns there are.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: trace file not found")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zst", ".zip"):
        suffixes = suffixes[:-1]
    is_jsonl = bool(suffixes) and suffixes[-1] in (".jsonl", ".ndjson")
    try:
        if is_jsonl:
            frame = pd.read_json(path, lines=True, dtype=False)
            first_line = 1
        else:
            frame = pd.read_csv(path, low_memory=False)
            first_line = 2  # line 1 is the header
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{path}: cannot read the trace as {'JSONL' if is_jsonl else 'CSV'}: {exc}"
        ) from None
    columns = {str(c).lower(): str(c) for c in frame.columns}
    chosen = {
        "input_tokens": _column(path, columns, input_column, INPUT_COLUMNS, "prompt", "--input-column"),
        "output_tokens": _column(path, columns, output_column, OUTPUT_COLUMNS, "output", "--output-column"),
    }
    result = {}
    issues: list[InputIssue] = []
    for name, column in chosen.items():  # two columns
        raw = frame[column]
        values = pd.to_numeric(raw, errors="coerce")
        bad = values.isna() | (values < 0) | (values != np.floor(values))
        for position in np.flatnonzero(bad.to_numpy())[:_SHOW_ISSUES]:
            issues.append(
                InputIssue(
                    path=str(path),
                    line=int(position) + first_line,
                    field=column,
                    message=f"{column} must be a whole number >= 0, got {json_safe(raw.iloc[position])!r}",
                )
            )
        result[name] = values.fillna(0).to_numpy(dtype=np.int64)
    if issues:
        issues.sort(key=lambda issue: issue.line)
        raise InputError(
            f"{path}: {len(issues)} bad token count(s) (first at line {issues[0].line}); "
            "fix or drop those rows",
            issues=issues,
        )
    return pd.DataFrame(result)


def simulate(
    trace: pd.DataFrame,
    targets: Sequence[Target],
    cost_models: Mapping[str, PlannerCostModel | None],
    options: PlanOptions,
    sites: Mapping[str, Site] | None = None,
) -> dict[str, Any]:
    """Plan ``trace`` (``input_tokens``, ``output_tokens``) with ``options.policy`` and compare it with every
    other policy: the report of :func:`hpcqueue.planner.policies.compare`, plus ``trace`` statistics. Costs
    are predicted at each target's ``batch_size``, else ``options.batch_size``.

    When the plan is placed in time (sites, or a start or an objective given), the trace is
    also cut into tasks of ``options.task_size`` (as ``submit`` would) and placed at the ``sites``: the
    report then gains the plan's ``facility_energy_j``, ``carbon_g``, ``water_l`` and ``cost_usd`` (None when
    unknown), each target's ``site`` and planned ``starts`` in ``per_target``, the baselines in time
    (``run_at_submit``, ``best_window`` and, with several sites, ``best_single_site``) in ``baselines``, and
    ``time`` and ``sites`` saying how the placement was made and from which data."""
    workload = Workload.from_tokens(trace["input_tokens"], trace["output_tokens"])
    table = CostTable.build(workload, targets, cost_models, options.batch_size)
    sites = sites or {}
    start = options.start_time()
    deadline_s = options.deadline_after(start)
    if not schedule.wanted(sites, options):
        report = compare(
            workload, table, options.policy, lam=options.lam, deadline_s=deadline_s, model=options.model
        )
        report["trace"] = describe(workload)
        return report
    requests = pd.DataFrame(
        {
            "line": np.arange(1, len(trace) + 1, dtype=np.int64),
            "input_tokens": trace["input_tokens"].to_numpy(dtype=np.int64),
            "max_new_tokens": trace["output_tokens"].to_numpy(dtype=np.int64),
        }
    )
    plan = plan_requests(requests, targets, cost_models, options, sites)
    report = plan.compare()
    report["trace"] = describe(workload)
    if len({t.site for t in targets}) > 1 and sites:
        report["baselines"]["best_single_site"] = _best_single_site(
            requests, targets, cost_models, options, sites, plan
        )
    return report


def _best_single_site(
    requests: pd.DataFrame,
    targets: Sequence[Target],
    cost_models: Mapping[str, PlannerCostModel | None],
    options: PlanOptions,
    sites: Mapping[str, Site],
    plan: Plan,
) -> dict[str, Any]:
    """The cheapest plan, by the same objective and yardsticks, that keeps the whole batch at one site (the
    same policy over that site's targets, placed in time the same way)."""
    assert plan.in_time is not None
    scales = plan.in_time.placement.scales
    best: dict[str, Any] | None = None
    errors = []
    for site in dict.fromkeys(t.site for t in targets):
        mine = [t for t in targets if t.site == site]
        policy = options.policy
        if policy.startswith("single:") and policy.removeprefix("single:") not in {t.name for t in mine}:
            policy = "optimal"
        try:
            at_site = plan_requests(
                requests, mine, cost_models, replace(options, policy=policy), sites, scales=scales
            )
        except HpcqueueError as exc:
            errors.append(f"{site}: {exc}")
            continue
        totals = at_site.time_report()
        row = {k: v for k, v in totals.items() if k not in ("baselines", "time", "sites")} | {"site": site}
        if best is None or (row["objective"] is not None and row["objective"] < best["objective"]):
            best = row
    return best if best is not None else {"error": "; ".join(errors)}


def describe(workload: Workload) -> dict[str, Any]:
    """Request count, distinct (prompt, output) pairs and the token distributions' quartiles."""
    stats: dict[str, Any] = {"requests": len(workload), "classes": workload.n_classes}
    for name, values in (("input_tokens", workload.n_in), ("output_tokens", workload.n_out)):
        if len(values):
            q = np.percentile(values, [0, 25, 50, 75, 100])
            stats[name] = {
                "mean": float(values.mean()),
                "min": int(q[0]),
                "p25": float(q[1]),
                "median": float(q[2]),
                "p75": float(q[3]),
                "max": int(q[4]),
            }
    return stats


def _column(
    path: Path,
    columns: Mapping[str, str],
    given: str | None,
    known: Sequence[str],
    what: str,
    option: str,
) -> str:
    if given is not None:
        if given.lower() in columns:
            return columns[given.lower()]
        raise InputError(f"{path}: no column {given!r}; columns: {', '.join(columns.values())}")
    for name in known:
        if name.lower() in columns:
            return columns[name.lower()]
    raise InputError(
        f"{path}: no {what}-token column; looked for {', '.join(known)}; columns: "
        f"{', '.join(columns.values()) or '(none)'}. Name it with {option}"
    )
