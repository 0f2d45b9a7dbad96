"""What a batch will cost before it runs: the plan's predictions summed per target and in total, each with a
90 % prediction interval, the method behind it, and the energy split by domain.

A target's figures come from its cost model (:mod:`hpcqueue.planner.models`): a fitted profile
(``profile``: the interval from the profile's cross-validated residuals), the analytic model (``analytic``:
no profile for this model and hardware; the interval from leave-one-hardware-out residuals) or a profile
calibrated on the ledger's measured tasks (``calibrated``). A total over targets of different methods is
``mixed``.

**Intervals of sums.** A cost model's error is systematic — the same hardware, software and model make every
request of a target too cheap or too dear together — so a target's interval is its total times the model's
interval factors (not the much narrower interval independent errors would give), and the interval of a sum
over targets is the sum of their bounds. Facility energy, carbon, water and cost scale with the energy at the
hours planned, so their intervals are the energy's factors applied to them: the grid and weather series are
taken as given, and their own uncertainty is not in the interval.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from hpcqueue.config import Settings, Target
from hpcqueue.errors import ConfigError, InputError
from hpcqueue.fileio import atomic_write_text
from hpcqueue.planner.models import PlannerCostModel, combine_methods, resolve_cost_models
from hpcqueue.planner.options import PlanOptions
from hpcqueue.planner.plan import Plan, plan_requests

#: The coverage the intervals are built for.
INTERVAL_LEVEL = 0.90
#: Footprint columns of a plan placed in time, and the report keys they become.
FOOTPRINT = ("facility_energy_j", "carbon_g", "water_l", "cost_usd")
#: Keys of a JSONL record that make it a request (a prompt) rather than a row of token counts.
_PROMPT_KEYS = ("prompt", "messages", "body", "text", "input")
InputKind = Literal["prompts", "trace"]


@dataclass(frozen=True)
class EstimateRequest:
    """What to estimate on: configured ``targets`` by name (empty: all), or one node of ``hardware`` (no
    config needed); ``dtype`` overrides the targets' dtypes; ``skip_invalid`` as for submit."""

    targets: tuple[str, ...] = ()
    hardware: str | None = None
    dtype: str | None = None
    skip_invalid: bool = False


@dataclass
class EstimateResult:
    """The report (JSON-ready) and the per-request table behind it."""

    report: dict[str, Any]
    requests: pd.DataFrame = field(repr=False)


def input_kind(path: str | os.PathLike[str]) -> InputKind:
    """``prompts`` for a JSONL file of requests, ``trace`` for a CSV, or a JSONL whose first record holds
    token counts and no prompt."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: input file not found")
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".bz2", ".xz", ".zst")]
    if not suffixes or suffixes[-1] not in (".jsonl", ".ndjson", ".json"):
        return "trace"
    with path.open("rb") as handle:
        for raw in handle:
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                return "prompts"  # the request reader names the bad line
            if isinstance(record, dict) and not any(key in record for key in _PROMPT_KEYS):
                return "trace"
            return "prompts"
    return "prompts"


def estimate_file(
    path: str | os.PathLike[str], settings: Settings, request: EstimateRequest = EstimateRequest()
) -> EstimateResult:
    """Estimate an input file (see :func:`input_kind`) on the targets ``request`` names: count its tokens
    (prompts with the model's tokenizer; a trace as given), predict each target's cost with its profile or
    the analytic model, plan as submit would (sites, start, deadline and objective from ``settings``), and
    report (:func:`forecast`). Runs no model.

    Raises :class:`ConfigError` for an unknown target or hardware class, :class:`InputError` for bad input
    and :class:`hpcqueue.errors.ModelError` when a prompts file's model has no tokenizer (the message says to
    pass a model with one, or a token trace).
    """
    from hpcqueue.errors import ModelError
    from hpcqueue.ingest import read_and_count
    from hpcqueue.planner.simulate import load_trace
    from hpcqueue.profiles.store import profile_search_path
    from hpcqueue.sites import load_sites

    targets = _targets(settings, request)
    kind = input_kind(path)
    warnings: list[str] = []
    if kind == "prompts":
        try:
            counted = read_and_count(path, settings, skip_invalid=request.skip_invalid)
        except ModelError as exc:
            raise ModelError(
                f"{path} holds prompts, which are counted with the model's tokenizer, but: {exc}. Pass a "
                "model that has one (--model), or a token trace (CSV or JSONL with prompt and output token "
                "counts)"
            ) from None
        table = counted.table[["line", "input_tokens", "max_new_tokens"]].copy()
        model_name, model_path = counted.model.name, counted.model.path
        warnings += [str(issue) for issue in counted.requests.warnings]
        rejected = len(counted.rejected)
    else:
        trace = load_trace(path)
        first_line = 1 if Path(path).suffix.lower() in (".jsonl", ".ndjson") else 2
        table = pd.DataFrame(
            {
                "line": np.arange(len(trace), dtype=np.int64) + first_line,
                "input_tokens": trace["input_tokens"].to_numpy(),
                "max_new_tokens": trace["output_tokens"].to_numpy(),
            }
        )
        model_name, model_path, rejected = settings.model, None, 0
    notes: list[str] = []
    cost_models = resolve_cost_models(
        targets,
        model_name,
        profile_search_path(settings.profile_dirs),
        notes=notes,
        analytic=True,
        model_path=model_path,
        cache_dir=settings.cache_dir,
        dtype=request.dtype,
        default_engine=settings.engine,
    )
    missing = [name for name, model in cost_models.items() if model is None]
    if missing:
        reasons = [note for note in notes if any(note.startswith(f"target {name!r}") for name in missing)]
        raise ModelError("; ".join(reasons) or f"no cost model for target(s) {', '.join(missing)}")
    sites = {} if request.hardware else load_sites(settings.sites)
    options = PlanOptions.from_settings(settings, model=model_name)
    plan = plan_requests(table, targets, cost_models, options, sites)
    report = {
        "input": str(path),
        "input_kind": kind,
        "model": model_name,
        "rejected": rejected,
        **forecast(plan, targets, cost_models, options.batch_size),
        "notes": notes,
        "warnings": warnings + list(plan.warnings),
    }
    if plan.in_time is not None:
        time = plan.time_report()["time"]
        report["time"] = {key: time[key] for key in ("start", "deadline", "slot_s", "objective", "method")}
    return EstimateResult(report, _per_request(table, plan, cost_models))


def _targets(settings: Settings, request: EstimateRequest) -> list[Target]:
    """The targets an estimate runs on (see :class:`EstimateRequest`)."""
    from hpcqueue.meters.hardware import get_hardware

    if request.hardware is not None:
        if request.targets:
            raise ConfigError("give --hardware or --target, not both")
        hardware = get_hardware(request.hardware)
        return [
            Target(
                name=request.hardware,
                hardware=request.hardware,
                gpus_per_node=hardware.gpus,
                batch_size=settings.batch_size,
                dtype=request.dtype or "auto",
            )
        ]
    configured = settings.targets
    unknown = [name for name in request.targets if name not in configured]
    if unknown:
        raise ConfigError(
            f"no target named {', '.join(map(repr, unknown))} in the config; targets: "
            f"{', '.join(configured)} "
            "(or estimate on a hardware class with --hardware)"
        )
    chosen = [configured[name] for name in request.targets] or list(configured.values())
    if request.dtype is not None:
        chosen = [t.model_copy(update={"dtype": request.dtype}) for t in chosen]
    return chosen


def _per_request(
    table: pd.DataFrame, plan: Plan, cost_models: Mapping[str, PlannerCostModel | None]
) -> pd.DataFrame:
    """One row per request: its line, target, token counts, predictions with their intervals, method."""
    assigned = plan.assignments
    targets = assigned["target"].to_numpy(dtype=object)
    low_e = np.full(len(assigned), np.nan)
    high_e = np.full(len(assigned), np.nan)
    method = np.full(len(assigned), None, dtype=object)
    for name, model in cost_models.items():
        if model is None:
            continue
        mine = targets == name
        lo, hi = model.energy_interval_factors
        energy = assigned["predicted_energy_j"].to_numpy(dtype=float)[mine]
        low_e[mine], high_e[mine] = energy * lo, energy * hi
        method[mine] = model.method
    return pd.DataFrame(
        {
            "line": table["line"].to_numpy(),
            "target": targets,
            "input_tokens": table["input_tokens"].to_numpy(),
            "output_tokens": table["max_new_tokens"].to_numpy(),
            "energy_j": assigned["predicted_energy_j"].to_numpy(dtype=float),
            "energy_low_j": low_e,
            "energy_high_j": high_e,
            "runtime_s": assigned["predicted_runtime_s"].to_numpy(dtype=float),
            "method": method,
        }
    )


def write_per_request(result: EstimateResult, path: str | os.PathLike[str]) -> None:
    """Write the per-request table as CSV, atomically."""
    atomic_write_text(Path(path), result.requests.to_csv(index=False))


def forecast(
    plan: Plan,
    targets: Sequence[Target],
    cost_models: Mapping[str, PlannerCostModel | None],
    batch_size: int | None = None,
) -> dict[str, Any]:
    """The report of ``plan`` (see the module docstring), JSON-ready.

    Keys, in total and in ``per_target[name]``: ``requests``, ``energy_j``, ``energy_interval_j`` ([low,
    high]), ``runtime_s``, ``runtime_interval_s``, ``energy_by_domain_j``, ``method``; per target also
    ``hardware``, ``basis`` (the profile or the analytic model's name) and ``notes``; and, when the plan is
    placed in time at known sites, ``facility_energy_j``, ``carbon_g``, ``water_l`` and ``cost_usd`` with
    their ``*_interval`` (None where a site does not state it). A target without a cost model has None
    figures and method None.
    """
    per_target: dict[str, dict[str, Any]] = {}
    workload = plan.workload
    assert workload is not None and plan.costs is not None
    target_of = {name: j for j, name in enumerate(plan.targets)}
    routing_idx = plan.routing.target_idx if plan.routing is not None else None
    by_name = {t.name: t for t in targets}
    for name in plan.targets:
        j = target_of[name]
        model = cost_models.get(name)
        target = by_name[name]
        mine = routing_idx == j if routing_idx is not None else np.zeros(0, dtype=bool)
        row: dict[str, Any] = {"requests": int(mine.sum()), "hardware": target.hardware}
        if model is None:
            row.update(
                method=None,
                basis=None,
                energy_j=None,
                energy_interval_j=None,
                runtime_s=None,
                runtime_interval_s=None,
                energy_by_domain_j={},
                notes=["no cost model"],
            )
            per_target[name] = row
            continue
        energy = float(plan.assignments.loc[mine, "predicted_energy_j"].sum())
        runtime = float(plan.assignments.loc[mine, "predicted_runtime_s"].sum())
        e_lo, e_hi = model.energy_interval_factors
        r_lo, r_hi = model.runtime_interval_factors
        classes, counts = np.unique(workload.request_class[mine], return_counts=True)
        per_call = target.batch_size or batch_size
        domains = model.energy_by_domain(workload.class_in[classes], workload.class_out[classes], per_call)
        row.update(
            method=model.method,
            basis=model.profile_name,
            energy_j=energy,
            energy_interval_j=[energy * e_lo, energy * e_hi],
            runtime_s=runtime,
            runtime_interval_s=[runtime * r_lo, runtime * r_hi],
            energy_by_domain_j={d: float(np.dot(v, counts)) for d, v in domains.items()},
            notes=list(model.notes),
        )
        per_target[name] = row
    _add_footprint(plan, per_target, cost_models)
    return {**_total(per_target), "interval_level": INTERVAL_LEVEL, "per_target": per_target}


def _add_footprint(
    plan: Plan, per_target: dict[str, dict[str, Any]], cost_models: Mapping[str, PlannerCostModel | None]
) -> None:
    if plan.in_time is None:
        return
    tasks = plan.tasks
    for name, row in per_target.items():
        model = cost_models.get(name)
        mine = tasks["target"] == name
        for key in FOOTPRINT:
            values = tasks.loc[mine, key].to_numpy(dtype=float)
            if model is None or not np.all(np.isfinite(values)):
                row[key], row[f"{key}_interval"] = None, None
                continue
            total = float(values.sum())
            lo, hi = model.energy_interval_factors
            row[key], row[f"{key}_interval"] = total, [total * lo, total * hi]


def _total(per_target: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    rows = list(per_target.values())
    out: dict[str, Any] = {"requests": sum(r["requests"] for r in rows)}
    used = [r for r in rows if r["requests"]]
    out["method"] = combine_methods(r["method"] for r in used) if used else None
    intervals = {"energy_j": "energy_interval_j", "runtime_s": "runtime_interval_s"}
    for key in ("energy_j", "runtime_s", *(k for k in FOOTPRINT if any(k in r for r in rows))):
        interval = intervals.get(key, f"{key}_interval")
        values = [r.get(key) for r in used]
        if any(v is None for v in values):
            out[key], out[interval] = None, None
            continue
        out[key] = float(sum(float(v) for v in values if v is not None))
        out[interval] = [float(sum(r[interval][0] for r in used)), float(sum(r[interval][1] for r in used))]
    domains: dict[str, float] = {}
    for r in used:
        for domain, value in r["energy_by_domain_j"].items():
            domains[domain] = domains.get(domain, 0.0) + value
    out["energy_by_domain_j"] = domains
    return out
