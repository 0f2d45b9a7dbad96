"""Calibrating a target's cost model on what the ledger measured (``hpcqueue profiles calibrate TARGET``).

The target's current cost model (a profile's, or the analytic one) predicts each request's **prefill** (the
cost of its first token: :math:`E(n, 1)`) and its **decode** (the rest: :math:`E(n, m) − E(n, 1)`). Over the
ledger's tasks whose energy was *measured* — estimated tasks are never used: calibrating an estimate on an
estimate proves nothing — the measured generation energy of each task is fitted as ``a × prefill + b ×
decode`` of its requests (non-negative least squares on the relative error, one row per task), and its
measured generation time likewise. The four factors say how far the model was off, phase by phase.

The result is a new **profile revision** (``<model>.<target>.calibrated-rN``), a profile like any other: its
points are the calibrated model's predictions over the prompt and output lengths the ledger saw (labelled
``estimated``, in the KV-cache regime the workers run), and its ``meta.json`` keeps the provenance under
``calibration``: the base model, the factors, every task used (batch and index), when, and the interval.
The planner prefers a target's newest calibrated revision; removing its directory reverts to the one before.

The interval of a calibrated prediction comes from leave-one-task-out: each task predicted from the factors
fitted on the others (a t prediction interval of the log ratios,
:func:`hpcqueue.planner.models.log_interval`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.optimize import nnls

from hpcqueue.config import Target
from hpcqueue.errors import PlanningError
from hpcqueue.planner.models import PlannerCostModel, log_interval
from hpcqueue.profiles.store import POINT_COLUMNS, Profile, ProfileMeta, save_profile

FloatArray = npt.NDArray[np.float64]
#: Fewer measured tasks than this are refused: the leave-one-task-out interval needs at least three
#: held-out tasks, and one more keeps each fit on three.
MIN_TASKS = 4
#: Points of each sweep of a calibrated revision.
GRID_POINTS = 8
REQUEST_COLUMNS = ("batch_id", "task_index", "input_tokens", "output_tokens")
TASK_COLUMNS = ("batch_id", "task_index", "energy_j", "runtime_s")


@dataclass(frozen=True)
class Phases:
    """Per task: the base model's predicted prefill and decode energy (J) and runtime (s)."""

    energy_prefill_j: FloatArray
    energy_decode_j: FloatArray
    runtime_prefill_s: FloatArray
    runtime_decode_s: FloatArray


@dataclass(frozen=True)
class LedgerCalibration:
    """The fitted factors, the evidence and how well they hold out (see the module docstring)."""

    energy_factors: tuple[float, float]  # (prefill, decode)
    runtime_factors: tuple[float, float]
    tasks: pd.DataFrame  # batch_id, task_index, measured and predicted before/after
    energy_interval_factors: tuple[float, float]
    runtime_interval_factors: tuple[float, float]
    error_before: float  # mean |predicted / measured − 1| of the base model over the tasks
    error_after: float  # the same, leave-one-task-out with the calibrated factors


def phases(
    model: PlannerCostModel, requests: pd.DataFrame, batch_size: int | None
) -> tuple[pd.DataFrame, Phases]:
    """The base model's prefill and decode predictions summed per task (tasks in (batch_id, task_index)
    order, returned as the first value)."""
    n_in = requests["input_tokens"].to_numpy(dtype=float)
    n_out = np.maximum(requests["output_tokens"].to_numpy(dtype=float), 1.0)
    first = model.predict(n_in, np.ones_like(n_out), batch_size)
    full = model.predict(n_in, n_out, batch_size)
    frame = requests[["batch_id", "task_index"]].assign(
        ep=first.energy_j,
        ed=np.maximum(full.energy_j - first.energy_j, 0.0),
        rp=first.runtime_s,
        rd=np.maximum(full.runtime_s - first.runtime_s, 0.0),
    )
    sums = frame.groupby(["batch_id", "task_index"], sort=True).sum().reset_index()
    return sums[["batch_id", "task_index"]], Phases(
        sums["ep"].to_numpy(), sums["ed"].to_numpy(), sums["rp"].to_numpy(), sums["rd"].to_numpy()
    )


def fit(
    model: PlannerCostModel,
    requests: pd.DataFrame,
    tasks: pd.DataFrame,
    *,
    batch_size: int | None,
    target: str,
    min_tasks: int = MIN_TASKS,
) -> LedgerCalibration:
    """Fit the phase factors of ``model`` to the measured ``tasks`` (``TASK_COLUMNS``: measured generation
    energy and time per task) from their ``requests`` (``REQUEST_COLUMNS``: each request's prompt and
    generated tokens). Raises :class:`PlanningError` below ``min_tasks`` tasks, saying how many there are."""
    if len(tasks) < min_tasks:
        raise PlanningError(
            f"target {target!r}: {len(tasks)} task(s) with measured energy in the ledger; calibrating needs "
            f"at least {min_tasks}. Run more batches on it with a meter that measures (see hpcqueue doctor), "
            "then calibrate again"
        )
    keys, predicted = phases(model, requests, batch_size)
    measured = keys.merge(tasks, on=["batch_id", "task_index"], how="left")
    energy = measured["energy_j"].to_numpy(dtype=float)
    runtime = measured["runtime_s"].to_numpy(dtype=float)
    usable = np.isfinite(energy) & (energy > 0) & np.isfinite(runtime) & (runtime > 0)
    if usable.sum() < min_tasks:
        raise PlanningError(
            f"target {target!r}: {int(usable.sum())} task(s) have a positive measured energy and time and "
            f"their requests' token counts; calibrating needs at least {min_tasks}"
        )
    e_cols = np.column_stack([predicted.energy_prefill_j, predicted.energy_decode_j])[usable]
    r_cols = np.column_stack([predicted.runtime_prefill_s, predicted.runtime_decode_s])[usable]
    energy, runtime = energy[usable], runtime[usable]
    e_factors, e_loo = _fit_factors(e_cols, energy)
    r_factors, r_loo = _fit_factors(r_cols, runtime)
    base_energy = e_cols.sum(axis=1)
    evidence = (
        keys[usable]
        .reset_index(drop=True)
        .assign(
            energy_j=energy,
            runtime_s=runtime,
            predicted_energy_j=base_energy,
            calibrated_energy_j=e_cols @ np.asarray(e_factors),
            held_out_energy_j=e_loo,
        )
    )
    return LedgerCalibration(
        energy_factors=e_factors,
        runtime_factors=r_factors,
        tasks=evidence,
        energy_interval_factors=log_interval(np.log(energy / e_loo)),
        runtime_interval_factors=log_interval(np.log(runtime / r_loo)),
        error_before=float(np.mean(np.abs(base_energy / energy - 1))),
        error_after=float(np.mean(np.abs(e_loo / energy - 1))),
    )


def _fit_factors(columns: FloatArray, measured: FloatArray) -> tuple[tuple[float, float], FloatArray]:
    """(prefill, decode) factors by NNLS on relative error, and each task's leave-one-out prediction.

    When the tasks' prefill and decode shares barely differ the two factors are not separately determined;
    a small ridge towards the one common factor (the ratio of the sums) keeps them at it then."""

    def solve(cols: FloatArray, y: FloatArray) -> FloatArray:
        common = float(y.sum() / max(cols.sum(), 1e-300))
        scaled = cols / y[:, None]
        ridge = 1e-3 * np.sqrt(len(y)) * np.eye(2)
        design = np.vstack([scaled, ridge])
        rhs = np.concatenate([np.ones(len(y)), ridge @ np.full(2, common)])
        solution, _ = nnls(design, rhs)
        if not np.any(solution > 0):
            solution = np.full(2, common)
        return solution

    factors = solve(columns, measured)
    held_out = np.empty(len(measured))
    for i in range(len(measured)):
        keep = np.arange(len(measured)) != i
        held_out[i] = float(columns[i] @ solve(columns[keep], measured[keep]))
    held_out = np.where(held_out > 0, held_out, np.nan)
    return (float(factors[0]), float(factors[1])), held_out


@dataclass(frozen=True)
class CalibratedCostModel:
    """A base cost model scaled phase by phase (see the module docstring); used to write a revision's points
    and, through the revision, by the planner."""

    base: PlannerCostModel
    energy_factors: tuple[float, float]
    runtime_factors: tuple[float, float]

    def predict(self, n_in: npt.ArrayLike, n_out: npt.ArrayLike, batch_size: float | None = None) -> Any:
        n = np.asarray(n_in, dtype=float)
        m = np.maximum(np.asarray(n_out, dtype=float), 1.0)
        first = self.base.predict(n, np.ones_like(m), batch_size)
        full = self.base.predict(n, m, batch_size)
        (ea, eb), (ra, rb) = self.energy_factors, self.runtime_factors
        energy = ea * first.energy_j + eb * np.maximum(full.energy_j - first.energy_j, 0.0)
        runtime = ra * first.runtime_s + rb * np.maximum(full.runtime_s - first.runtime_s, 0.0)
        return type(full)(energy, runtime, full.extrapolated, full.floored)


def revision_profile(
    base: PlannerCostModel,
    calibration: LedgerCalibration,
    requests: pd.DataFrame,
    *,
    model: str,
    target: Target,
    batch_size: int,
    revision: int,
    now: datetime | None = None,
    engine: str = "transformers",
) -> Profile:
    """The profile revision holding ``calibration`` (see the module docstring), for the tasks ``engine``
    ran."""
    now = now or datetime.now(timezone.utc)
    calibrated = CalibratedCostModel(base, calibration.energy_factors, calibration.runtime_factors)
    n_in = requests["input_tokens"].to_numpy(dtype=float)
    n_out = np.maximum(requests["output_tokens"].to_numpy(dtype=float), 1.0)
    prompts = _grid(n_in)
    outputs = _grid(n_out)
    fixed_out = max(2, round(float(np.median(n_out))))
    fixed_in = max(1, round(float(np.median(n_in))))
    rows = [("input", p, fixed_out) for p in prompts] + [("output", fixed_in, m) for m in outputs]
    sweep, pin, pout = zip(*rows, strict=True)
    pin_a, pout_a = np.array(pin, dtype=float), np.array(pout, dtype=float)
    predicted = calibrated.predict(pin_a, pout_a, batch_size)
    domains = base.energy_by_domain(pin_a, pout_a, batch_size)
    base_energy = base.predict(pin_a, pout_a, batch_size).energy_j
    points = pd.DataFrame(
        {
            "sweep": sweep,
            "input_tokens": pin_a.astype(np.int64),
            "output_tokens": pout_a.astype(np.int64),
            "batch_size": batch_size,
            "trials": 1,
            "runtime_s_mean": predicted.runtime_s * batch_size,
            "runtime_s_ci95": np.nan,
            "energy_j_mean": predicted.energy_j * batch_size,
            "energy_j_ci95": np.nan,
            "energy_cpu_j_mean": _domain(domains, "cpu", predicted.energy_j / base_energy) * batch_size,
            "energy_cpu_j_ci95": np.nan,
            "energy_gpu_j_mean": _domain(domains, "gpu", predicted.energy_j / base_energy) * batch_size,
            "energy_gpu_j_ci95": np.nan,
            "total_tokens_mean": pin_a + pout_a,
        }
    )[list(POINT_COLUMNS)]
    points = points.drop_duplicates(["sweep", "input_tokens", "output_tokens", "batch_size"])
    name = f"{_slug(model)}.{_slug(target.name)}.calibrated-r{revision}"
    tasks = calibration.tasks
    provenance = {
        "revision": revision,
        "target": target.name,
        "base": {"name": base.profile_name, "method": base.method},
        "fitted_at": now.isoformat(),
        "energy_factors": {"prefill": calibration.energy_factors[0], "decode": calibration.energy_factors[1]},
        "runtime_factors": {
            "prefill": calibration.runtime_factors[0],
            "decode": calibration.runtime_factors[1],
        },
        "energy_interval_factors": list(calibration.energy_interval_factors),
        "runtime_interval_factors": list(calibration.runtime_interval_factors),
        "interval": "leave-one-task-out t prediction interval of log(measured / predicted), 90 %",
        "error_before": calibration.error_before,
        "error_after_held_out": calibration.error_after,
        "tasks": [
            {"batch_id": str(b), "task_index": int(t)}
            for b, t in zip(tasks["batch_id"], tasks["task_index"], strict=True)
        ],
        "batches": sorted({str(b) for b in tasks["batch_id"]}),
    }
    meta = ProfileMeta(
        name=name,
        model=model,
        hardware=target.hardware,
        source="calibrated",
        method="estimated",
        engine=engine,
        created=now.date().isoformat(),
        kv_cache=True,
        notes=(
            f"{base.profile_name} ({base.method}) calibrated on {len(tasks)} measured task(s) of target "
            f"{target.name!r} from the ledger; points are the calibrated model's predictions over the prompt "
            "and output lengths seen"
        ),
        extra={"calibration": provenance},
    )
    return Profile(meta=meta, points=points.reset_index(drop=True))


def _domain(domains: Mapping[str, FloatArray], name: str, scale: FloatArray) -> FloatArray:
    values = domains.get(name)
    return np.full(scale.shape, np.nan) if values is None else values * scale


def _grid(values: FloatArray) -> list[int]:
    """Whole counts from the lowest to twice the highest seen, evenly in log, at least two."""
    lo = max(1.0, float(values.min()))
    hi = max(lo + 1.0, 2.0 * float(values.max()))
    grid = sorted({max(1, round(v)) for v in np.geomspace(lo, hi, GRID_POINTS)})
    return grid if len(grid) > 1 else [grid[0], grid[0] + 1]


def _slug(text: str) -> str:
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(text.rstrip("/")).name.lower())
    return slug.strip("-") or "model"


def next_revision(existing: list[Profile], target: str) -> int:
    """One more than the highest calibrated revision of ``target`` among ``existing``."""
    revisions = [
        int((p.meta.extra.get("calibration") or {}).get("revision", 0))
        for p in existing
        if (p.meta.extra.get("calibration") or {}).get("target") == target
    ]
    return max(revisions, default=0) + 1


def save_revision(profile: Profile, root: Path) -> Path:
    """Write the revision under ``root`` (the user's profiles by default)."""
    return save_profile(profile, root)
