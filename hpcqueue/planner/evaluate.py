"""How good are the cost models? Leave-one-bucket-out cross-validation of every profile.

For each measured point (a *bucket*: one sweep point at one batch size) the cost model is refitted on all
the other points of the same batch size and asked to predict the held-out one, for energy and runtime per
request. The held-out smallest and largest buckets of a sweep are extrapolations, the hardest cases; they
are kept. Two baselines are cross-validated on exactly the same training points:

* ``linear``: E = α0·n_in + α1·n_out + α2·n_in·n_out (the form of the paper's later revision); runtime
  likewise;
* ``per_token``: a constant J/token, E = c·(n_in + n_out); s/token for runtime;

both fitted by least squares on the relative error, the loss our model is fitted with, so the comparison
is between forms.

Reported per profile: the mean absolute percentage error (``*_mape``, a fraction) and the shares of
predictions within 10 % and 30 % of the measured value, for energy and runtime, and the worst bucket of
our model. ``docs/cost-models.md`` discusses the results.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from hpcqueue.errors import PlanningError
from hpcqueue.planner.costs import KIND, fit_batch
from hpcqueue.profiles.store import Profile

#: The accuracy the cost models aim at: energy MAPE at most 10 % on each imported paper profile.
ENERGY_MAPE_TARGET = 0.10
METHODS = ("ours", "linear", "per_token")
QUANTITIES = {"energy": "energy_j_mean", "runtime": "runtime_s_mean"}


def evaluate_profile(profile: Profile) -> dict[str, Any]:
    """Leave-one-bucket-out cross-validation of one profile (see the module docstring).

    Returns ``{"profile", "model", "hardware", "points", "evaluated", "kind", "form", "ours", "linear",
    "per_token", "worst", "meets_energy_target", "skipped"}``; each method's entry holds ``energy_mape``,
    ``runtime_mape``, ``energy_within_10``, ``energy_within_30``, ``runtime_within_10`` and
    ``runtime_within_30`` (fractions; None when no bucket could be evaluated). A bucket whose remaining
    points cannot determine the model (too few left) is skipped for all three methods and listed in
    ``skipped`` with the reason.
    """
    table, skipped, forms = _held_out(profile)
    points = profile.points
    result: dict[str, Any] = {
        "profile": profile.name,
        "model": profile.meta.model,
        "hardware": profile.meta.hardware,
        "points": len(points),
        "evaluated": len(table),
        "kind": KIND,
        "form": "/".join(sorted(forms)) or None,
        "kv_cache": profile.meta.kv_cache,
    }
    for method in METHODS:
        result[method] = _metrics(table, method)
    result["worst"] = _worst(table)
    mape = result["ours"]["energy_mape"]
    result["meets_energy_target"] = None if mape is None else bool(mape <= ENERGY_MAPE_TARGET)
    result["skipped"] = skipped
    return result


def held_out_log_ratios(profile: Profile) -> dict[str, np.ndarray]:
    """log(measured / predicted) of our model at every held-out bucket of ``profile``, for ``energy`` and
    ``runtime`` per request: the residuals a prediction interval for this profile's model is built from."""
    table, _, _ = _held_out(profile)
    if table.empty:
        return {quantity: np.array([]) for quantity in QUANTITIES}
    return {
        quantity: -np.log1p(table[f"ours_{quantity}_error"].to_numpy(dtype=float)) for quantity in QUANTITIES
    }


def _held_out(profile: Profile) -> tuple[pd.DataFrame, list[dict[str, Any]], set[str]]:
    """Every bucket predicted by the three methods fitted on the other points of its batch size: the table of
    predictions and errors, the buckets skipped (with the reason) and the forms our model chose."""
    where = f"profile {profile.name!r}"
    points = profile.points.reset_index(drop=True)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    forms: set[str] = set()
    for batch in sorted({int(b) for b in points["batch_size"]}):
        at_batch = points[points["batch_size"] == batch]
        for index in at_batch.index:
            held = points.loc[index]
            train = at_batch.drop(index=index)
            bucket = _bucket(held)
            try:
                fit = fit_batch(train, kv_cache=profile.meta.kv_cache, where=where)
            except PlanningError as exc:
                skipped.append({**bucket, "reason": str(exc)})
                continue
            forms.add(fit.energy.form)
            n_in = np.array([float(held["input_tokens"])])
            n_out = np.array([float(held["output_tokens"])])
            energy, runtime, _ = fit.evaluate(n_in, n_out)
            ours = {"energy": float(energy[0]), "runtime": float(runtime[0])}
            row: dict[str, Any] = {**bucket}
            for quantity, column in QUANTITIES.items():
                measured = float(held[column]) / batch
                train_y = train[column].to_numpy(dtype=float) / batch
                predictions = {
                    "ours": ours[quantity],
                    "linear": _linear_baseline(train, train_y, held),
                    "per_token": _per_token_baseline(train, train_y, held),
                }
                row[f"{quantity}_measured"] = measured
                for method, predicted in predictions.items():
                    row[f"{method}_{quantity}_predicted"] = predicted
                    row[f"{method}_{quantity}_error"] = predicted / measured - 1.0
            rows.append(row)
    return pd.DataFrame(rows), skipped, forms


def evaluate_profiles(profiles: Iterable[Profile]) -> list[dict[str, Any]]:
    """:func:`evaluate_profile` for each profile, in the given order."""
    return [evaluate_profile(p) for p in profiles]


def _bucket(row: pd.Series) -> dict[str, Any]:
    return {
        "sweep": str(row["sweep"]),
        "input_tokens": int(row["input_tokens"]),
        "output_tokens": int(row["output_tokens"]),
        "batch_size": int(row["batch_size"]),
    }


def _linear_baseline(train: pd.DataFrame, train_y: np.ndarray, held: pd.Series) -> float:
    """α0·n_in + α1·n_out + α2·n_in·n_out by least squares on the training points' relative error, the
    loss our model is fitted with (ordinary least squares would let the largest points decide alone)."""
    n = train["input_tokens"].to_numpy(dtype=float)
    m = train["output_tokens"].to_numpy(dtype=float)
    design = np.column_stack([n, m, n * m]) / train_y[:, None]
    alpha = np.linalg.lstsq(design, np.ones(len(train_y)), rcond=None)[0]
    n0, m0 = float(held["input_tokens"]), float(held["output_tokens"])
    return float(alpha @ np.array([n0, m0, n0 * m0]))


def _per_token_baseline(train: pd.DataFrame, train_y: np.ndarray, held: pd.Series) -> float:
    """A constant cost per token (n_in + n_out), by least squares on the training points' relative error."""
    tokens = (train["input_tokens"] + train["output_tokens"]).to_numpy(dtype=float)
    ratio = tokens / train_y
    rate = float(ratio.sum() / (ratio**2).sum())
    return rate * float(held["input_tokens"] + held["output_tokens"])


def _metrics(table: pd.DataFrame, method: str) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for quantity in QUANTITIES:
        if table.empty:
            errors = np.array([])
        else:
            errors = np.abs(table[f"{method}_{quantity}_error"].to_numpy(dtype=float))
        empty = errors.size == 0
        out[f"{quantity}_mape"] = None if empty else float(errors.mean())
        out[f"{quantity}_within_10"] = None if empty else float(np.mean(errors <= 0.10))
        out[f"{quantity}_within_30"] = None if empty else float(np.mean(errors <= 0.30))
    return out


def _worst(table: pd.DataFrame) -> dict[str, Any] | None:
    """The bucket our model predicted worst for energy, with its errors (signed fractions)."""
    if table.empty:
        return None
    i = int(np.argmax(np.abs(table["ours_energy_error"].to_numpy(dtype=float))))
    row = table.iloc[i]
    return {
        "sweep": row["sweep"],
        "input_tokens": int(row["input_tokens"]),
        "output_tokens": int(row["output_tokens"]),
        "batch_size": int(row["batch_size"]),
        "energy_j_measured": float(row["energy_measured"]),
        "energy_j_predicted": float(row["ours_energy_predicted"]),
        "energy_error": float(row["ours_energy_error"]),
        "runtime_error": float(row["ours_runtime_error"]),
    }
