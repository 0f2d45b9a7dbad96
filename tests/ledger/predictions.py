"""A ledger of predicted and measured tasks, written through the real paths: ``record_batch`` with a plan's
tasks frame (with or without the prediction-interval columns), then ``collect_batch`` reading the
``metrics.json`` and ``output.jsonl`` a worker leaves (formats of docs/internals.md).

``record_scenario`` writes two batches whose accuracy figures the tests work out by hand; see ``B1`` and
``B2``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hpcqueue.ledger import Ledger, collect_batch
from tests.ledger import T0, make_info

DAY_S = 86_400.0


@dataclass(frozen=True)
class Planned:
    """A task as the plan predicts it: where, how much, within which 90 % bounds, by which method."""

    target: str
    energy_j: float | None
    runtime_s: float | None
    energy_interval_j: tuple[float, float] | None = None
    runtime_interval_s: tuple[float, float] | None = None
    method: str | None = None
    hardware: str | None = None


@dataclass(frozen=True)
class Ran:
    """What the worker metered: each generate call's (energy J, duration s), the model load, the rest."""

    calls: tuple[tuple[float, float], ...] = ()
    method: str = "measured"
    state: str = "completed"
    load_j: float = 0.0
    other_j: float = 0.0
    wall_s: float = 10.0
    resumed: bool = False
    hardware: str = "cpu-generic"
    failed_energy_j: float | None = None


@dataclass(frozen=True)
class Batch:
    batch_id: str
    model: str
    created_at: float
    planned: dict[int, Planned]
    ran: dict[int, Ran] = field(default_factory=dict)
    with_prediction_columns: bool = True


# Batch b1: tasks of every kind. Hand figures (gpu: tasks 0 and 1; cpu: task 5):
#   0: energy 100 against 125 measured (-0.2, outside [80, 120]); runtime 10 against 8 (+0.25, inside)
#   1: energy 50 against 40 (+0.25, inside [40, 60]); runtime 5 against 5 (0, inside)
#   5: energy 10 against 8 (+0.25, inside [8, 13]); runtime 2 against 1 (+1.0, no interval)
#   2 estimated, 3 never ran, 4 failed, 6 resumed, 7 no prediction.
B1 = Batch(
    "b1",
    "hpcqueue-demo",
    T0,
    planned={
        0: Planned("gpu", 100.0, 10.0, (80.0, 120.0), (8.0, 12.0), "profile", "h100-80g"),
        1: Planned("gpu", 50.0, 5.0, (40.0, 60.0), (4.0, 6.0), "profile", "h100-80g"),
        2: Planned("cpu", 30.0, 3.0, (20.0, 45.0), (2.0, 4.0), "analytic", "cpu-generic"),
        3: Planned("cpu", 10.0, 1.0, (5.0, 20.0), (0.5, 2.0), "analytic", "cpu-generic"),
        4: Planned("cpu", 10.0, 1.0, (5.0, 20.0), (0.5, 2.0), "analytic", "cpu-generic"),
        5: Planned("cpu", 10.0, 2.0, (8.0, 13.0), None, "calibrated", "cpu-generic"),
        6: Planned("cpu", 10.0, 2.0, (8.0, 13.0), (1.0, 3.0), "calibrated", "cpu-generic"),
        7: Planned("cpu", None, None),
    },
    ran={
        0: Ran(calls=((75.0, 5.0), (50.0, 3.0)), load_j=40.0, other_j=5.0, wall_s=20.0, hardware="h100-80g"),
        1: Ran(calls=((40.0, 5.0),), other_j=2.0, wall_s=6.0, hardware="h100-80g"),
        2: Ran(calls=((25.0, 3.0),), method="estimated"),
        4: Ran(state="failed", failed_energy_j=4.0),
        5: Ran(calls=((8.0, 1.0),)),
        6: Ran(calls=((6.0, 1.0),), resumed=True),
        7: Ran(calls=((3.0, 1.0),)),
    },
)
# Batch b2, two days later, another model, recorded by an older submit (no interval, method or hardware
# columns): task 0 ran (energy 20 against 25, runtime 2 against 2.5: both -0.2; hardware from metrics.json),
# task 1 never ran.
B2 = Batch(
    "b2",
    "other-model",
    T0 + 2 * DAY_S,
    planned={0: Planned("gpu", 20.0, 2.0), 1: Planned("gpu", 20.0, 2.0)},
    ran={0: Ran(calls=((25.0, 2.5),), hardware="a100-40g")},
    with_prediction_columns=False,
)


def lines_of(index: int) -> list[int]:
    """Each task's two input lines."""
    return [10 * index + 1, 10 * index + 2]


def record_batch(ledger: Ledger, root: Path, batch: Batch) -> Path:
    """Record ``batch`` as submit does; returns its (empty) batch directory."""
    requests = pd.DataFrame(
        [
            {
                "line": line,
                "id": f"q{line}",
                "target": planned.target,
                "task_index": index,
                "input_tokens": 8,
                "max_new_tokens": 16,
                "predicted_energy_j": None if planned.energy_j is None else planned.energy_j / 2,
                "predicted_runtime_s": None if planned.runtime_s is None else planned.runtime_s / 2,
                "extrapolated": False,
            }
            for index, planned in batch.planned.items()
            for line in lines_of(index)
        ]
    )
    tasks = pd.DataFrame(
        [
            {
                "task_index": index,
                "target": planned.target,
                "executor": "slurm" if planned.target == "gpu" else "local",
                "n_requests": 2,
                "predicted_energy_j": planned.energy_j,
                "predicted_runtime_s": planned.runtime_s,
                **(_prediction_columns(planned) if batch.with_prediction_columns else {}),
            }
            for index, planned in batch.planned.items()
        ]
    )
    batch_dir = root / batch.batch_id
    info = make_info(batch.batch_id, created_at=batch.created_at, model=batch.model, batch_dir=str(batch_dir))
    assert ledger.record_batch(info, tasks, requests)
    return batch_dir


def _prediction_columns(planned: Planned) -> dict[str, object]:
    """The columns submit adds for a prediction with its interval (NaN where there is none)."""
    nan = float("nan")
    energy = planned.energy_interval_j or (nan, nan)
    runtime = planned.runtime_interval_s or (nan, nan)
    return {
        "predicted_energy_low_j": energy[0],
        "predicted_energy_high_j": energy[1],
        "predicted_runtime_low_s": runtime[0],
        "predicted_runtime_high_s": runtime[1],
        "prediction_method": planned.method if planned.method is not None else nan,
        "prediction_basis": nan if planned.method is None else f"{planned.method}:{planned.hardware}",
        "hardware": planned.hardware if planned.hardware is not None else nan,
    }


def started_at(batch: Batch, index: int) -> float:
    """When the worker started task ``index``: a minute apart, from the batch's submission."""
    return batch.created_at + 60.0 * (index + 1)


def finish(batch_dir: Path, batch: Batch, index: int) -> None:
    """Write what the worker leaves for task ``index``: output.jsonl (completed only), then metrics.json."""
    ran = batch.ran[index]
    start = started_at(batch, index)
    task_dir = batch_dir / "tasks" / f"{index:06d}"
    task_dir.mkdir(parents=True)
    lines = lines_of(index)
    measurements: list[dict[str, object]] = []
    if ran.load_j:
        measurements.append(_reading("model_load", 0, start, 1.0, ran.load_j, ran.method))
    for seq, (energy_j, duration_s) in enumerate(ran.calls):
        measurements.append(
            _reading("generation_batch", seq, start + 2 + seq, duration_s, energy_j, ran.method)
        )
    total_j = ran.load_j + sum(e for e, _ in ran.calls) + ran.other_j
    if ran.state == "failed":
        total_j = ran.failed_energy_j or 0.0
    measurements.append(_reading("task", 0, start, ran.wall_s, total_j, ran.method))
    if ran.state == "completed":
        outputs = [
            {
                "line": line,
                "id": f"q{line}",
                "text": "ok",
                "input_tokens": 8,
                "output_tokens": 4,
                "finish_reason": "length",
                "error": None,
                # a resumed attempt keeps the first line from the interrupted one, which started earlier
                "started_at": start - 3600.0 if ran.resumed and line == lines[0] else start + 2,
                "ended_at": start + 3,
                "energy_j": total_j / len(lines),
            }
            for line in lines
        ]
        (task_dir / "output.jsonl").write_text("".join(json.dumps(o) + "\n" for o in outputs))
    metrics = {
        "batch_id": batch.batch_id,
        "task_index": index,
        "state": ran.state,
        "host": "node01",
        "started_at": start,
        "ended_at": start + ran.wall_s,
        "n_requests": len(lines),
        "n_succeeded": len(lines) if ran.state == "completed" else 0,
        "n_failed": 0,
        "model": batch.model,
        "hardware": ran.hardware,
        "energy_j": total_j,
        "energy_method": ran.method,
        "meter": "nvml+rapl" if ran.method == "measured" else "estimate",
        "attribution_rule": "token-share-v1",
        "measurements": measurements,
        "error": "ModelError: out of memory" if ran.state == "failed" else None,
    }
    (task_dir / "metrics.json").write_text(json.dumps(metrics))


def _reading(
    scope: str, seq: int, start: float, duration_s: float, energy_j: float, method: str
) -> dict[str, object]:
    """One metered interval over two domains (a quarter on the CPU package): the report sums the domains
    and counts the duration once."""
    return {
        "scope": scope,
        "seq": seq,
        "started_at": start,
        "duration_s": duration_s,
        "method": method,
        "meter": "nvml+rapl" if method == "measured" else "estimate",
        "energy_j": {"cpu": energy_j / 4, "gpu:0": energy_j * 3 / 4},
    }


def record_and_collect(ledger: Ledger, root: Path, batch: Batch) -> None:
    """Record ``batch``, write its finished tasks' files and collect them."""
    batch_dir = record_batch(ledger, root, batch)
    for index in batch.ran:
        finish(batch_dir, batch, index)
    report = collect_batch(ledger, batch_dir)
    assert report.collected == len(batch.ran)


def record_scenario(ledger: Ledger, root: Path) -> None:
    """``B1`` and ``B2``, collected."""
    for batch in (B1, B2):
        record_and_collect(ledger, root, batch)
