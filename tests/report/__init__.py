"""A realistic ledger for the admin report, written through the real paths: ``record_batch`` with a plan in
time (sites, planned starts, accounts, predictions with their intervals, the plan's and baselines' costs),
the worker's ``metrics.json`` and ``output.jsonl`` read by ``collect_batch``, a lost job recorded as status
records it (``update_tasks``), then ``record_accounting`` with each task's factors and their sources.

``populate`` writes ``n_batches`` such batches, deterministic for a seed; docs/img/report.png is rendered
from one (``python -m tests.report.screenshot``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hpcqueue.ledger import Ledger, collect_batch
from tests.ledger import T0, make_info

HOUR_S = 3600.0
RULE = "token-share-v1"


@dataclass(frozen=True)
class Target:
    name: str
    hardware: str
    site: str
    account: str | None
    method: str  # what its meter gives
    meter: str
    j_per_token: float  # the true energy per output token of its generate calls
    carbon_g_per_kwh: float
    pue: float


TARGETS = (
    Target("gpu", "h100-80g", "north", "physics", "measured", "nvml+rapl", 2.0, 120.0, 1.2),
    Target("lowpower", "a2-16g", "south", "chemistry", "measured", "nvml", 3.0, 380.0, 1.4),
    Target("cpu", "cpu-generic", "north", None, "estimated", "estimate", 9.0, 120.0, 1.2),
)
USERS = ("alice", "bob", "carol")
MODELS = ("hpcqueue-demo", "llama-3.1-8b")
TASK_REQUESTS = 4


def populate(ledger: Ledger, root: Path, n_batches: int = 6, seed: int = 7, start: float = T0) -> list[str]:
    """Write ``n_batches`` batches (a day apart from ``start``, epoch seconds; three targets, three users) and
    return their ids.

    Batch 1's cpu task fails (collected: the worker wrote its error), batch 2's lowpower task is lost (its job
    ended without a result), batch 3's gpu task resumed after an interruption, and one request of batch 0 ran
    out of memory. Everything that ran is accounted at its site's factors."""
    rng = np.random.default_rng(seed)
    ids = []
    for k in range(n_batches):
        ids.append(_one_batch(ledger, root, k, rng, start))
    return ids


def _one_batch(ledger: Ledger, root: Path, k: int, rng: np.random.Generator, start: float) -> str:
    batch_id = f"batch-{k:02d}"
    created = start + k * 24 * HOUR_S + 3 * HOUR_S * (k % 3)
    user = USERS[k % len(USERS)]
    model = MODELS[k % len(MODELS)]
    tasks_rows: list[dict[str, Any]] = []
    request_rows: list[dict[str, Any]] = []
    plan: dict[int, tuple[Target, list[tuple[int, int]]]] = {}
    line = 1
    for index, target in enumerate(TARGETS):
        lines = []
        for _ in range(TASK_REQUESTS):
            lines.append((line, int(rng.integers(20, 400))))
            line += 1
        plan[index] = (target, lines)
        predicted_j = float(TASK_REQUESTS * 64 * target.j_per_token * rng.uniform(0.8, 1.2))
        wait_s = float(rng.choice([0.0, 2 * HOUR_S, 5 * HOUR_S]))
        tasks_rows.append(
            {
                "task_index": index,
                "target": target.name,
                "executor": "local" if target.name == "cpu" else "slurm",
                "n_requests": TASK_REQUESTS,
                "predicted_energy_j": predicted_j,
                "predicted_runtime_s": 30.0,
                "predicted_energy_low_j": predicted_j * 0.75,
                "predicted_energy_high_j": predicted_j * 1.3,
                "predicted_runtime_low_s": 20.0,
                "predicted_runtime_high_s": 45.0,
                "prediction_method": "profile" if target.method == "measured" else "analytic",
                "prediction_basis": f"{model}@{target.hardware}"
                if target.method == "measured"
                else f"analytic:{target.hardware}",
                "hardware": target.hardware,
                "site": target.site,
                "account": target.account,
                "planned_start_at": created + wait_s,
                "planned_end_at": created + wait_s + 60.0,
                "predicted_carbon_g": predicted_j * target.pue / 3.6e6 * target.carbon_g_per_kwh * 0.9,
            }
        )
        for number, n_in in lines:
            request_rows.append(
                {
                    "line": number,
                    "id": f"{batch_id}-q{number}",
                    "target": target.name,
                    "task_index": index,
                    "input_tokens": n_in,
                    "max_new_tokens": 64,
                    "predicted_energy_j": predicted_j / TASK_REQUESTS,
                    "predicted_runtime_s": 7.5,
                    "extrapolated": False,
                }
            )
    plan_j = sum(row["predicted_energy_j"] for row in tasks_rows)
    plan_g = sum(row["predicted_carbon_g"] for row in tasks_rows)
    costs = [
        {"name": "plan", "role": "plan", "energy_j": plan_j, "carbon_g": plan_g, "cost_usd": plan_j * 2e-8},
        {"name": "run_at_submit", "role": "baseline", "energy_j": plan_j, "carbon_g": plan_g * 1.35},
        {"name": "best_window", "role": "baseline", "energy_j": plan_j, "carbon_g": plan_g * 0.97},
        {"name": "unaware", "role": "baseline", "energy_j": plan_j * 1.25, "carbon_g": plan_g * 1.6},
        {"name": "single:gpu", "role": "baseline", "energy_j": plan_j * 0.9, "carbon_g": plan_g * 1.2},
    ]
    batch_dir = root / batch_id
    info = make_info(batch_id, user=user, created_at=created, model=model, batch_dir=str(batch_dir))
    assert ledger.record_batch(
        info,
        pd.DataFrame(tasks_rows),
        pd.DataFrame(request_rows),
        rejected=[
            {"line": line, "id": f"{batch_id}-bad", "errors": [{"field": "prompt", "message": "empty"}]}
        ]
        if k % 2 == 0
        else [],
        plan_costs=costs,
    )
    for index, (target, lines) in plan.items():
        if k == 2 and target.name == "lowpower":
            continue  # lost below: the worker never wrote a result
        start = tasks_rows[index]["planned_start_at"] + float(rng.uniform(0, 600))
        _finish(
            batch_dir,
            batch_id,
            index,
            target,
            lines,
            start,
            model=model,
            failed=k == 1 and target.name == "cpu",
            resumed=k == 3 and target.name == "gpu",
            oom_line=lines[-1][0] if k == 0 and target.name == "gpu" else None,
            rng=rng,
        )
    collect_batch(ledger, batch_dir)
    if k == 2:
        lost = next(i for i, (t, _) in plan.items() if t.name == "lowpower")
        ledger.update_tasks(
            batch_id,
            [
                {
                    "task_index": lost,
                    "state": "failed",
                    "started_at": created + HOUR_S,
                    "ended_at": created + 2 * HOUR_S,
                    "error": f"slurm job 9{k}_{lost} ended NODE_FAIL before the task finished; "
                    "`hpcqueue retry` runs it again",
                }
            ],
        )
    _account(ledger, batch_id)
    return batch_id


def _finish(
    batch_dir: Path,
    batch_id: str,
    index: int,
    target: Target,
    lines: list[tuple[int, int]],
    start: float,
    *,
    model: str,
    failed: bool,
    resumed: bool,
    oom_line: int | None,
    rng: np.random.Generator,
) -> None:
    """What a worker leaves for one task (docs/internals.md): output.jsonl, then metrics.json."""
    task_dir = batch_dir / "tasks" / f"{index:06d}"
    task_dir.mkdir(parents=True)
    (task_dir / "task.json").write_text(json.dumps({"batch_id": batch_id, "task_index": index}))
    outputs = []
    calls = []
    for seq, (number, n_in) in enumerate(lines):
        error = {"code": "oom", "message": "CUDA out of memory"} if number == oom_line else None
        n_out = 0 if error else int(rng.integers(16, 65))
        energy_j = n_out * target.j_per_token * float(rng.uniform(0.85, 1.15))
        calls.append((energy_j, 1.0 + n_out / 32))
        outputs.append(
            {
                "line": number,
                "id": f"{batch_id}-q{number}",
                "text": None if error else "x" * n_out,
                "input_tokens": n_in,
                "output_tokens": n_out,
                "finish_reason": None if error else "length",
                "error": error,
                "started_at": start - HOUR_S if resumed and seq == 0 else start + 5 + seq,
                "ended_at": start + 6 + seq,
                "energy_j": energy_j,
            }
        )
    load_j = 20.0 * target.j_per_token
    total_j = load_j + sum(e for e, _ in calls)
    if failed:
        total_j = load_j
        outputs = []
    else:
        (task_dir / "output.jsonl").write_text("".join(json.dumps(o) + "\n" for o in outputs))
    readings = [_reading("model_load", 0, start, 4.0, load_j, target)]
    if not failed:
        readings += [
            _reading("generation_batch", seq, start + 5 + seq, duration_s, energy_j, target)
            for seq, (energy_j, duration_s) in enumerate(calls)
        ]
    readings.append(_reading("task", 0, start, 60.0, total_j, target))
    metrics = {
        "batch_id": batch_id,
        "task_index": index,
        "state": "failed" if failed else "completed",
        "host": f"{target.name}-node01",
        "started_at": start,
        "ended_at": start + 60.0,
        "n_requests": len(lines),
        "n_succeeded": sum(1 for o in outputs if not o["error"]),
        "n_failed": sum(1 for o in outputs if o["error"]),
        "model": model,
        "hardware": target.hardware,
        "energy_j": total_j,
        "energy_method": target.method,
        "meter": target.meter,
        "engine": "vllm" if target.name == "gpu" else "transformers",
        "engine_version": "0.32.0" if target.name == "gpu" else "5.24.0",
        "attribution_rule": None if failed else RULE,
        "measurements": readings,
        "error": f"ModelError: cannot load model {model!r}" if failed else None,
    }
    (task_dir / "metrics.json").write_text(json.dumps(metrics))


def _reading(
    scope: str, seq: int, start: float, duration_s: float, energy_j: float, target: Target
) -> dict[str, Any]:
    return {
        "scope": scope,
        "seq": seq,
        "started_at": start,
        "duration_s": duration_s,
        "method": target.method,
        "meter": target.meter,
        "energy_j": {"cpu": energy_j / 4, "gpu:0": energy_j * 3 / 4}
        if target.name != "cpu"
        else {"cpu": energy_j},
    }


def _account(ledger: Ledger, batch_id: str) -> None:
    """Account every collected task at its site's factors, as ``hpcqueue.ledger.accounting`` records them."""
    by_name = {t.name: t for t in TARGETS}
    rows = []
    for task in ledger.tasks_to_account(batch_id):
        target = by_name[task["target"]]
        facility_kwh = task["energy_j"] / 3.6e6 * target.pue
        assumed_pue = target.site == "south"
        rows.append(
            {
                "task_index": task["task_index"],
                "run_started_at": task["started_at"],
                "run_ended_at": task["ended_at"],
                "run_times_source": "worker" if task["executor"] == "local" else "sacct",
                "pue": target.pue,
                "carbon_g_per_kwh": target.carbon_g_per_kwh,
                "price_usd_per_mwh": 85.0,
                "wue_l_per_kwh": 0.4,
                "offsite_water_l_per_kwh": 1.8,
                "facility_energy_j": facility_kwh * 3.6e6,
                "carbon_g": facility_kwh * target.carbon_g_per_kwh,
                "water_onsite_l": task["energy_j"] / 3.6e6 * 0.4,
                "water_offsite_l": facility_kwh * 1.8,
                "cost_usd": facility_kwh * 85.0 / 1000.0,
                "factor_kinds": {
                    "pue": "assumed" if assumed_pue else "model",
                    "carbon_g_per_kwh": "series",
                    "price_usd_per_mwh": "series",
                },
                "factor_sources": {
                    "pue": "constant 1.4 (site config)"
                    if assumed_pue
                    else "pue model at outdoor temperature",
                    "carbon_g_per_kwh": f"grid/{target.site}.csv",
                    "price_usd_per_mwh": f"prices/{target.site}.csv",
                },
            }
        )
    ledger.record_accounting(batch_id, rows)
