"""Cost model v1 ("phase-v1"): energy and runtime of one request, fitted from a profile's two sweeps.

A profile measures an input sweep (prompt length varied, output fixed) and an output sweep (output
length varied, prompt fixed), possibly at several batch sizes. The model turns these two 1-D sweeps
into a 2-D surface E(n_in, n_out) (and R for runtime) with a form that follows what a decoder does:

* one forward pass over L tokens costs F(L) = f0 + f1·L + f2·L² (weights, linear layers, attention);
* **without a KV cache** (the shipped paper profiles, ``use_cache=False``) every one of the n_out steps
  re-runs the whole sequence: E = c0 + Σ_{t=0}^{n_out−1} F(n_in + t), so the prompt is paid once per
  output token and decode grows about quadratically with the output length;
* **with a KV cache** the prompt is processed once (prefill) and each later step handles one token that
  attends to the cache: E = c0 + p1·n_in + p2·n_in² + Σ_{t=1}^{n_out−1} (d0 + d1·(n_in + t)).

Both sums have closed forms, and both forms are linear in their non-negative coefficients, which are fitted
jointly on both sweeps by non-negative least squares on the relative error (each row divided by its
measured value), so both sweeps constrain one surface and small points weigh as much as large ones.

The form alone misses the measured shape in places (a GPU's cost is flat for short prompts, then grows),
so each surface is then evaluated at **warped token counts**: E(n_in, n_out) = form(φ(n_in), ψ(n_out)).
φ is an effective prompt length, n·exp(s(log n)), with s piecewise linear in log n and a knot at every
prompt length of the input sweep; ψ likewise with a knot at every output length of the output sweep.
Both are fitted jointly (bounded least squares on log error, with a small penalty that keeps the shifts at
zero where the form already fits) and kept non-decreasing, so measured points are reproduced closely
(exactly, except where the two sweeps measure nearly the same request and disagree: the surface goes
between them) and the surface never falls as either count grows, because the form does not. Between
points the surface follows the form's shape; beyond the measured range the shift s is held at its end
value, so the form alone decides the growth there, and ``extrapolated`` is set.

**The KV-cache regime derived from a profile measured without a cache.** hpcqueue's workers generate with a
KV cache, but the shipped paper profiles were measured without one. With a cache the prompt is processed once,
F(n_in), and each later step t = 1 … n_out − 1 processes one new token against the cache: it pays the
per-pass fixed cost f0 plus the increment F(n_in + t) − F(n_in + t − 1) of the token it adds (the linear
layers of one more token, its attention over the sequence so far). The increments telescope:

    E_kv = c0 + F(n_in) + Σ_{t=1}^{n_out−1} (f0 + F(n_in + t) − F(n_in + t − 1))
         = c0 + (n_out − 1)·f0 + F(n_in + n_out − 1),

which is the no-kv surface with its re-run term Σ_{t=1}^{n_out−1} (F(n_in + t − 1) − f0) removed: the same
fitted coefficients, no new ones. It is evaluated at the same warped counts (φ(n_in), ψ(n_out)); where the
fitted ψ puts one output token above one pass (ψ(1) > 1), the re-run term the no-kv surface charges there is
kept, so one output token costs the same in both regimes (one forward pass either way). It never exceeds the
no-kv surface, and it never falls as either count grows (f0, f1, f2 ≥ 0, φ and ψ non-decreasing).
:meth:`CostModel.from_profile` gives it with ``kv_cache=True`` on a profile measured without a cache
(``CostModel.regime`` is then ``derived-kv`` and ``notes`` says so); the reverse, the no-cache regime from a
profile measured with a cache, cannot be derived (the re-run cost was never measured).

Runtime is modelled the same way, as its own surface. Values are **per request**: a profile's figures are
per ``generate`` call, so they are divided by the call's batch size. Each measured batch size gets its own
surface; other batch sizes are interpolated linearly in (log batch, log cost) between the two nearest
measured ones and held at the nearest one outside them (flagged as extrapolated). With one measured batch
size, the batch size is ignored.

``docs/cost-models.md`` gives the reasoning, the missing-data rules and the cross-validated accuracy
(``hpcqueue profiles evaluate``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.optimize import least_squares, nnls

from hpcqueue.errors import PlanningError
from hpcqueue.profiles.store import Profile, Sweep

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Form = Literal["kv", "no-kv"]
#: ``measured``: the regime the profile was measured in; ``derived-kv``: the KV-cache regime derived from a
#: profile measured without a cache (see the module docstring).
Regime = Literal["measured", "derived-kv"]

KIND = "phase-v1"
#: The coefficients of each form, in the order of :func:`basis`.
FORM_PARAMETERS: dict[Form, tuple[str, ...]] = {
    "no-kv": ("c0", "f0", "f1", "f2"),
    "kv": ("c0", "p1", "p2", "d0", "d1"),
}
_WARP_PENALTY = 1e-4  # on squared log shifts: keeps the warps unique, and zero where the form fits
_RANK_TOL = 1e-9
_UNDERDETERMINED_RIDGE = 1e-6  # on unit-scaled coefficients, only when the points cannot fix them all
#: Predictions never fall below this share of the lowest measured cost per token (a positivity guard for
#: degenerate fits, e.g. a KV-cache form without prefill terms at one output token).
FLOOR_SHARE = 0.1


@dataclass(frozen=True)
class Prediction:
    """Per-request predictions, aligned with the token arrays given to :meth:`CostModel.predict`.

    ``extrapolated`` is True where the request lies outside the profile's measured range (prompt or
    output length, or batch size); ``floored`` is True where the fitted surface fell below
    ``FLOOR_SHARE`` × the profile's lowest measured cost per token and that floor was used instead (a
    positivity guard; it does not trigger inside the measured range of the shipped profiles).
    """

    energy_j: FloatArray
    runtime_s: FloatArray
    extrapolated: BoolArray
    floored: BoolArray


def basis(n_in: FloatArray, n_out: FloatArray, form: Form) -> list[FloatArray]:
    """The columns of the linear form at (n_in, n_out): E = Σ coefficient_k · column_k.

    ``no-kv``: [1, n_out, Σ L, Σ L²] with L = n_in + t over the n_out forward passes t = 0 … n_out − 1.
    ``kv``: [1, n_in, n_in², n_out − 1, Σ_{t=1}^{n_out−1} (n_in + t)] (prefill, then decode steps).
    """
    n, m = n_in, n_out
    if form == "no-kv":
        pairs = m * (m - 1) / 2
        sum_l = m * n + pairs
        sum_l2 = m * n * n + 2 * n * pairs + (m - 1) * m * (2 * m - 1) / 6
        return [np.ones_like(n), m, sum_l, sum_l2]
    steps = m - 1
    return [np.ones_like(n), n, n * n, steps, steps * n + m * steps / 2]


def basis_slopes(
    n_in: FloatArray, n_out: FloatArray, form: Form
) -> tuple[list[FloatArray], list[FloatArray]]:
    """The derivatives of :func:`basis`'s columns with respect to n_in and to n_out (for the warp fit)."""
    n, m = n_in, n_out
    zero, one = np.zeros_like(n), np.ones_like(n)
    if form == "no-kv":
        d_n = [zero, zero, m, 2 * m * n + m * (m - 1)]
        d_m = [zero, one, n + m - 0.5, n * n + n * (2 * m - 1) + (6 * m * m - 6 * m + 1) / 6]
        return d_n, d_m
    return [zero, one, 2 * n, zero, m - 1], [zero, zero, zero, one, n + m - 0.5]


@dataclass(frozen=True)
class Warp:
    """An effective token count φ(n) = n · exp(s(log n)): s is piecewise linear in log n between the
    knots (the measured counts of one sweep) and held at its end values beyond them.

    The fit keeps log φ non-decreasing from knot to knot, so φ never decreases: a surface evaluated at
    warped counts stays monotone wherever the form is.
    """

    log_knots: FloatArray
    shift: FloatArray

    def __call__(self, tokens: FloatArray, log_tokens: FloatArray) -> FloatArray:
        if self.log_knots.size == 1:
            return np.maximum(tokens * math.exp(float(self.shift[0])), 1.0)
        return np.maximum(tokens * np.exp(np.interp(log_tokens, self.log_knots, self.shift)), 1.0)

    def apply(self, counts: TokenCounts) -> FloatArray:
        """The warped counts; whole counts are looked up in a table of 0 … max (one pass, no logs)."""
        if counts.index is None:
            return self(counts.values, counts.log)
        grid = np.arange(counts.top + 1, dtype=float)
        grid[0] = 1.0
        return self(grid, np.log(grid))[counts.index]


class TokenCounts:
    """Token counts of many requests, at least 1, with integer indices when every count is whole and not
    huge (so functions of one count can be tabulated once and looked up)."""

    _TABLE_MAX = 1 << 22

    def __init__(self, values: FloatArray) -> None:
        self.values = np.maximum(values, 1.0)
        self.top = int(self.values.max()) if self.values.size else 0
        whole = self.values.astype(np.int64) if self.top <= self._TABLE_MAX else None
        self.index = whole if whole is not None and np.array_equal(whole, self.values) else None
        self._log: FloatArray | None = None

    @property
    def log(self) -> FloatArray:
        if self._log is None:
            self._log = np.log(self.values)
        return self._log


@dataclass(frozen=True)
class Surface:
    """One quantity (energy per request in J, or runtime per request in s) at one batch size:
    the fitted form evaluated at warped prompt and output counts, in the profile's regime (``measured``) or,
    for a no-kv fit, in the KV-cache regime derived from it (``derived-kv``, see the module docstring)."""

    form: Form
    coef: FloatArray
    input_warp: Warp | None
    output_warp: Warp | None
    underdetermined: bool = False
    regime: Regime = "measured"

    def derived_kv(self) -> Surface:
        """This no-kv surface in the KV-cache regime: the same fit, the re-run term removed."""
        if self.form != "no-kv":
            raise ValueError(f"the KV-cache regime is derived from a no-kv fit, not from a {self.form} one")
        return replace(self, regime="derived-kv")

    def form_value(self, n_in: FloatArray, n_out: FloatArray | float) -> FloatArray:
        """The fitted linear form at (n_in, n_out), without warps (= Σ coef · :func:`basis`, regrouped
        to make few temporary arrays)."""
        n, m = n_in, n_out
        steps = m - 1.0
        if self.form == "no-kv":
            c0, f0, f1, f2 = (float(c) for c in self.coef)
            mean_l = n + 0.5 * steps  # mean sequence length over the n_out forward passes
            mean_l2 = n * (n + steps) + steps * (2.0 * m - 1.0) / 6.0  # mean squared length
            return c0 + m * (f0 + f1 * mean_l + f2 * mean_l2)
        c0, p1, p2, d0, d1 = (float(c) for c in self.coef)
        return c0 + n * (p1 + p2 * n) + steps * (d0 + d1 * (n + 0.5 * m))

    def cached_value(self, n_in: FloatArray, n_out: FloatArray | float) -> FloatArray:
        """The no-kv fit with the re-run term removed, without warps: the prompt's pass, then f0 and one
        token's increment of F per later step, c0 + (n_out − 1)·f0 + F(n_in + n_out − 1)."""
        c0, f0, f1, f2 = (float(c) for c in self.coef)
        last = n_in + (n_out - 1.0)  # the sequence length of the last forward pass
        return c0 + n_out * f0 + last * (f1 + f2 * last)

    def __call__(self, n_in: TokenCounts, n_out: TokenCounts) -> FloatArray:
        n_eff = n_in.values if self.input_warp is None else self.input_warp.apply(n_in)
        m_eff = n_out.values if self.output_warp is None else self.output_warp.apply(n_out)
        if self.regime == "measured":
            return self.form_value(n_eff, m_eff)
        value = self.cached_value(n_eff, m_eff)
        one = self._one_output()
        if one > 1.0:
            # ψ(1) > 1: the no-kv surface charges some re-running at one output token, which is one forward
            # pass in either regime; keep that share so both regimes agree there (and only there)
            value = value + (self.form_value(n_eff, one) - self.cached_value(n_eff, one))
        return value

    def _one_output(self) -> float:
        """ψ(1), the effective output count of one output token."""
        if self.output_warp is None:
            return 1.0
        return float(self.output_warp(np.ones(1), np.zeros(1))[0])


@dataclass(frozen=True)
class BatchFit:
    """The energy and runtime surfaces fitted on the points of one batch size, and what they cover."""

    batch_size: int
    energy: Surface
    runtime: Surface
    input_range: tuple[float, float]
    output_range: tuple[float, float]
    energy_floor_j_per_token: float
    runtime_floor_s_per_token: float
    points: int

    def evaluate(
        self, n_in: FloatArray | TokenCounts, n_out: FloatArray | TokenCounts
    ) -> tuple[FloatArray, FloatArray, BoolArray]:
        """Energy and runtime per request (floored) and where the floor was used; counts below 1 are 1."""
        n = n_in if isinstance(n_in, TokenCounts) else TokenCounts(np.asarray(n_in, dtype=float))
        m = n_out if isinstance(n_out, TokenCounts) else TokenCounts(np.asarray(n_out, dtype=float))
        energy = self.energy(n, m)
        runtime = self.runtime(n, m)
        tokens = n.values + m.values
        energy_floor = self.energy_floor_j_per_token * tokens
        runtime_floor = self.runtime_floor_s_per_token * tokens
        floored = (energy < energy_floor) | (runtime < runtime_floor)
        return np.maximum(energy, energy_floor), np.maximum(runtime, runtime_floor), floored

    def derived_kv(self, n_in: FloatArray, n_out: FloatArray) -> BatchFit:
        """This no-kv fit's surfaces in the KV-cache regime derived from them, at the same measured ranges.

        The floors keep their rule, ``FLOOR_SHARE`` × the lowest cost per token at the measured points
        (``n_in``, ``n_out``), in the regime predicted: the cached regime costs far less per token than the
        measured one where prompts are long, so the measured regime's floor would cut into real predictions.
        """
        energy, runtime = self.energy.derived_kv(), self.runtime.derived_kv()
        n, m = TokenCounts(n_in), TokenCounts(n_out)
        tokens = n.values + m.values
        return replace(
            self,
            energy=energy,
            runtime=runtime,
            energy_floor_j_per_token=FLOOR_SHARE * float(np.min(energy(n, m) / tokens)),
            runtime_floor_s_per_token=FLOOR_SHARE * float(np.min(runtime(n, m) / tokens)),
        )

    def outside(self, n_in: FloatArray, n_out: FloatArray) -> BoolArray:
        lo_in, hi_in = self.input_range
        lo_out, hi_out = self.output_range
        return (n_in < lo_in) | (n_in > hi_in) | (n_out < lo_out) | (n_out > hi_out)


def fit_batch(points: pd.DataFrame, *, kv_cache: bool | None, where: str = "profile") -> BatchFit:
    """Fit the energy and runtime surfaces on the points of one batch size (rows of ``Profile.points``).

    ``kv_cache`` picks the form (None: both forms are fitted and the one with the smaller squared log
    error on energy and runtime is kept). Raises :class:`PlanningError`, naming ``where``, the batch size
    and what is missing, when the points cannot determine the form and cover fewer than two prompt or
    output lengths (for example the input sweep alone, or one point), or when a mean is not positive.
    """
    if points.empty:
        raise PlanningError(f"{where}: no measured points to fit a cost model on")
    batch = int(points["batch_size"].iloc[0])
    if (points["batch_size"] != batch).any():
        raise ValueError("fit_batch takes the points of one batch size")
    n_in = points["input_tokens"].to_numpy(dtype=float)
    n_out = points["output_tokens"].to_numpy(dtype=float)
    sweep = points["sweep"].to_numpy(dtype=str)
    values: dict[str, FloatArray] = {}
    for quantity in ("energy_j_mean", "runtime_s_mean"):
        per_call = points[quantity].to_numpy(dtype=float)
        bad = ~(np.isfinite(per_call) & (per_call > 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise PlanningError(
                f"{where}: {quantity} is {float(per_call[i])} at the {sweep[i]} sweep point input_tokens="
                f"{int(n_in[i])} output_tokens={int(n_out[i])} batch_size={batch}; the cost model fits "
                "relative errors and needs positive means: fix or remove that row of points.csv"
            )
        values[quantity] = per_call / batch
    forms: tuple[Form, ...] = ("no-kv", "kv") if kv_cache is None else ("kv" if kv_cache else "no-kv",)
    candidates: list[tuple[float, BatchFit]] = []
    errors: list[PlanningError] = []
    for form in forms:
        try:
            energy, sse_e = _fit_surface(n_in, n_out, sweep, values["energy_j_mean"], form, where, batch)
            runtime, sse_r = _fit_surface(n_in, n_out, sweep, values["runtime_s_mean"], form, where, batch)
        except PlanningError as exc:
            errors.append(exc)
            continue
        tokens = n_in + n_out
        candidates.append(
            (
                sse_e + sse_r,
                BatchFit(
                    batch_size=batch,
                    energy=energy,
                    runtime=runtime,
                    input_range=(float(n_in.min()), float(n_in.max())),
                    output_range=(float(n_out.min()), float(n_out.max())),
                    energy_floor_j_per_token=FLOOR_SHARE * float(np.min(values["energy_j_mean"] / tokens)),
                    runtime_floor_s_per_token=FLOOR_SHARE * float(np.min(values["runtime_s_mean"] / tokens)),
                    points=len(points),
                ),
            )
        )
    if not candidates:
        raise errors[0]
    return min(candidates, key=lambda c: c[0])[1]


def _fit_surface(
    n_in: FloatArray,
    n_out: FloatArray,
    sweep: npt.NDArray[np.str_],
    y: FloatArray,
    form: Form,
    where: str,
    batch: int,
) -> tuple[Surface, float]:
    """Fit one quantity: NNLS on relative error for the form, then the warps.

    When the points cover at least two prompt and two output lengths but not enough combinations to fix
    every coefficient, a small ridge picks the smallest coefficients that fit (the model is usable and
    ``Surface.underdetermined`` says so). Fewer distinct lengths than that is a :class:`PlanningError`.
    Returns the surface and the sum of squared log errors (to compare forms)."""
    columns = np.column_stack(basis(n_in, n_out, form))
    scaled = columns / y[:, None]
    norms = np.linalg.norm(scaled, axis=0)
    unit = scaled / norms
    n_params = columns.shape[1]
    singular = np.linalg.svd(unit, compute_uv=False)
    rank = int(np.sum(singular > _RANK_TOL * singular[0]))
    prompts = sorted({int(v) for v in n_in})
    outputs = sorted({int(v) for v in n_out})
    underdetermined = rank < n_params
    if underdetermined and (len(prompts) < 2 or len(outputs) < 2):
        missing = []
        if len(outputs) < 2:
            missing.append(f"only one output length ({outputs[0]}): measure the output sweep")
        if len(prompts) < 2:
            missing.append(f"only one prompt length ({prompts[0]}): measure the input sweep")
        if not missing:
            missing.append(
                f"{len(y)} point(s) over {len(prompts)} prompt and {len(outputs)} output length(s) do not "
                "determine them: measure more points of both sweeps"
            )
        kv_text = "with" if form == "kv" else "without"
        raise PlanningError(
            f"{where}: at batch size {batch} the cost model ({KIND}, {kv_text} KV cache) needs "
            f"{n_params} independent coefficients ({', '.join(FORM_PARAMETERS[form])}) but the points give "
            f"{rank}: {'; '.join(missing)}"
        )
    if underdetermined:
        ridge = np.vstack([unit, math.sqrt(_UNDERDETERMINED_RIDGE) * np.eye(n_params)])
        solution, _ = nnls(ridge, np.r_[np.ones(len(y)), np.zeros(n_params)], maxiter=50 * n_params)
    else:
        solution, _ = nnls(unit, np.ones(len(y)), maxiter=50 * n_params)
    coef = solution / norms
    if not np.all(columns @ coef > 0):  # cannot happen with positive data and non-negative columns
        raise PlanningError(f"{where}: the cost model fit failed at batch size {batch} (non-positive form)")
    input_warp, output_warp, sse = _fit_warps(n_in, n_out, sweep, y, form, coef)
    return Surface(form, coef, input_warp, output_warp, underdetermined), sse


def _fit_warps(
    n_in: FloatArray,
    n_out: FloatArray,
    sweep: npt.NDArray[np.str_],
    y: FloatArray,
    form: Form,
    coef: FloatArray,
) -> tuple[Warp | None, Warp | None, float]:
    """Fit the prompt warp (knots: the input sweep's prompt lengths) and the output warp (knots: the output
    sweep's output lengths) jointly, minimising the squared log error of the warped form at every point.

    Each warp's log values at its knots are a start value plus non-negative increments (bounded least
    squares), so the warps never decrease; a small penalty on the shifts keeps them unique and at zero
    wherever the form already fits. Returns the warps and the sum of squared log errors.
    """
    log_n, log_m = np.log(n_in), np.log(n_out)
    knots = [np.log(np.unique(n_in[sweep == "input"])), np.log(np.unique(n_out[sweep == "output"]))]
    hats = [_hat_columns(log_n, knots[0]), _hat_columns(log_m, knots[1])]
    cumulative = [np.tril(np.ones((k.size, k.size))) for k in knots]
    sizes = [k.size for k in knots]
    log_y = np.log(y)
    penalty = math.sqrt(_WARP_PENALTY)

    def split(theta: FloatArray) -> tuple[FloatArray, FloatArray]:
        shift_in = cumulative[0] @ theta[: sizes[0]] - knots[0]
        shift_out = cumulative[1] @ theta[sizes[0] :] - knots[1]
        return shift_in, shift_out

    def warped(theta: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        shift_in, shift_out = split(theta)
        n_eff = np.maximum(n_in * np.exp(hats[0] @ shift_in), 1.0)
        m_eff = np.maximum(n_out * np.exp(hats[1] @ shift_out), 1.0)
        return n_eff, m_eff, shift_in, shift_out

    def residuals(theta: FloatArray) -> FloatArray:
        n_eff, m_eff, shift_in, shift_out = warped(theta)
        value = np.column_stack(basis(n_eff, m_eff, form)) @ coef
        return np.concatenate([np.log(value) - log_y, penalty * shift_in, penalty * shift_out])

    def jacobian(theta: FloatArray) -> FloatArray:
        n_eff, m_eff, _, _ = warped(theta)
        value = np.column_stack(basis(n_eff, m_eff, form)) @ coef
        d_n, d_m = basis_slopes(n_eff, m_eff, form)
        # d log value / d log n_eff (0 where the count is clamped at 1)
        elasticity_n = np.where(n_eff > 1.0, n_eff * (np.column_stack(d_n) @ coef) / value, 0.0)
        elasticity_m = np.where(m_eff > 1.0, m_eff * (np.column_stack(d_m) @ coef) / value, 0.0)
        top = np.hstack(
            [
                elasticity_n[:, None] * (hats[0] @ cumulative[0]),
                elasticity_m[:, None] * (hats[1] @ cumulative[1]),
            ]
        )
        reg = penalty * np.block(
            [
                [cumulative[0], np.zeros((sizes[0], sizes[1]))],
                [np.zeros((sizes[1], sizes[0])), cumulative[1]],
            ]
        )
        return np.vstack([top, reg])

    start = np.concatenate([np.diff(k, prepend=0.0) for k in knots])
    lower = np.concatenate([np.r_[-np.inf, np.zeros(k.size - 1)] if k.size else k for k in knots])
    result = least_squares(
        residuals,
        start,
        jac=jacobian,
        bounds=(lower, np.full(start.shape, np.inf)),
        method="trf",
        x_scale=1.0,
    )
    shift_in, shift_out = split(result.x)
    log_error = residuals(result.x)[: len(y)]
    return (
        Warp(knots[0], shift_in) if sizes[0] else None,
        Warp(knots[1], shift_out) if sizes[1] else None,
        float(np.sum(log_error**2)),
    )


def _hat_columns(log_tokens: FloatArray, knots: FloatArray) -> FloatArray:
    """Column j interpolates the j-th unit vector over ``knots``, piecewise linearly, held at the ends."""
    if knots.size <= 1:
        return np.ones((log_tokens.size, knots.size))
    eye = np.eye(knots.size)
    return np.column_stack([np.interp(log_tokens, knots, eye[j]) for j in range(knots.size)])


@dataclass(frozen=True)
class CostModel:
    """Energy and runtime per request of one profile (model × hardware); see the module docstring.

    ``fits`` holds one :class:`BatchFit` per usable measured batch size, smallest first; ``batch_size``
    is the batch size :meth:`predict` uses when given none; ``kv_cache`` is whether the profile was measured
    with a KV cache (None: it does not say); ``regime`` is what the predictions are: ``measured`` (the
    profile's own regime) or ``derived-kv`` (the KV-cache regime derived from a profile measured without
    one); ``notes`` says what was left out, which regime is predicted when it is not plainly the measured
    one, and why.
    """

    profile_name: str
    model: str
    hardware: str
    fits: tuple[BatchFit, ...]
    batch_size: int
    kv_cache: bool | None
    input_sweep_output_tokens: int
    output_sweep_input_tokens: int
    notes: tuple[str, ...] = ()
    kind: str = KIND
    regime: Regime = "measured"

    @classmethod
    def from_profile(
        cls, profile: Profile, batch_size: int | None = None, *, kv_cache: bool | None = None
    ) -> CostModel:
        """Fit the model on a profile's points, one surface per measured batch size.

        ``batch_size`` is the default batch size of :meth:`predict` (default: the smallest usable measured
        one). A batch size whose points cannot determine the model is left out (and said so in ``notes``)
        as long as another one can; otherwise the :class:`PlanningError` names the profile and what is
        missing.

        ``kv_cache`` is the regime to predict: None, the profile's own (as measured); True, generation with
        a KV cache: as measured for a profile measured with one, else derived from the no-kv fit with the
        re-run term removed (``regime`` ``derived-kv``, see the module docstring); False, generation
        without a cache: a :class:`PlanningError` for a profile measured with one, since that regime cannot
        be derived from it. A profile that does not say (``meta.kv_cache`` unset) is predicted in the form
        its fit chose, whatever ``kv_cache`` asks, and ``notes`` says so.
        """
        where = f"profile {profile.name!r}" + (f" ({profile.path})" if profile.path else "")
        if batch_size is not None and batch_size < 1:
            raise PlanningError(f"{where}: batch_size must be >= 1, got {batch_size}")
        measured_kv = profile.meta.kv_cache
        if kv_cache is False and measured_kv is True:
            raise PlanningError(
                f"{where} was measured with a KV cache (kv_cache = true in its meta.json): the no-cache "
                "regime cannot be derived from a cached profile, because the cost of re-running the sequence "
                "at every step was never measured. Use a profile measured without a cache for that regime, "
                "or predict this profile's own (kv_cache=None or True)"
            )
        points = profile.points
        if points.empty:
            raise PlanningError(f"{where}: no measured points; measure the profile's sweeps first")
        fits: list[BatchFit] = []
        notes: list[str] = []
        failures: list[PlanningError] = []
        for batch in sorted({int(b) for b in points["batch_size"]}):
            rows = points[points["batch_size"] == batch]
            try:
                fit = fit_batch(rows, kv_cache=profile.meta.kv_cache, where=where)
            except PlanningError as exc:
                failures.append(exc)
                notes.append(f"batch size {batch} left out: {exc}")
                continue
            fits.append(fit)
            if fit.energy.underdetermined or fit.runtime.underdetermined:
                notes.append(
                    f"batch size {batch}: {fit.points} point(s) do not fix every coefficient of the "
                    f"{fit.energy.form} form; the smallest coefficients that fit them were taken, so "
                    "predictions away from the measured points are rough: measure more points of both sweeps"
                )
        if not fits:
            raise failures[0]
        regime: Regime = "measured"
        if kv_cache is True and measured_kv is False:
            fits = [fit.derived_kv(*_counts(points, fit.batch_size)) for fit in fits]
            regime = "derived-kv"
            notes.append(DERIVED_KV_NOTE)
        elif measured_kv is None:
            notes.append(_unknown_regime_note(fits[0].energy.form, kv_cache))
        default = fits[0].batch_size if batch_size is None else int(batch_size)
        at_default = points[points["batch_size"] == _nearest(fits, default).batch_size]
        return cls(
            profile_name=profile.name,
            model=profile.meta.model,
            hardware=profile.meta.hardware,
            fits=tuple(fits),
            batch_size=default,
            kv_cache=profile.meta.kv_cache,
            input_sweep_output_tokens=_fixed_count(at_default, "input", "output_tokens"),
            output_sweep_input_tokens=_fixed_count(at_default, "output", "input_tokens"),
            notes=tuple(notes),
            regime=regime,
        )

    @property
    def form(self) -> Form:
        """The fitted form: ``kv`` or ``no-kv`` (chosen by the fit when the profile does not say). With
        ``regime`` ``derived-kv`` it is ``no-kv``, evaluated with the re-run term removed."""
        return self.fits[0].energy.form

    @property
    def predicts_kv_cache(self) -> bool | None:
        """Whether the predictions are of generation with a KV cache (None: the profile does not say)."""
        return True if self.regime == "derived-kv" else self.kv_cache

    @property
    def regime_text(self) -> str:
        """The regime predicted, in words that complete "profile P predicts generation …"."""
        if self.regime == "derived-kv":
            return "with a KV cache, derived from its measurements without one (re-run term removed)"
        if self.kv_cache is None:
            return (
                f"as measured, with or without a KV cache unknown (its fit chose the {self.form} form; set "
                "kv_cache in its meta.json)"
            )
        return f"{'with' if self.kv_cache else 'without'} a KV cache, as measured"

    #: The fitted model alone carries no interval: :func:`hpcqueue.planner.models.profile_cost_model` adds the
    #: profile's cross-validated one. These are what the planner's interface reads from a bare fit.
    method = "profile"
    energy_interval_factors = (math.nan, math.nan)
    runtime_interval_factors = (math.nan, math.nan)

    def energy_by_domain(
        self, n_in: npt.ArrayLike, n_out: npt.ArrayLike, batch_size: float | None = None
    ) -> dict[str, FloatArray]:
        """Unknown for a bare fit (the profile's split is added by ``profile_cost_model``)."""
        return {}

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The measured batch sizes the model has a surface for."""
        return tuple(f.batch_size for f in self.fits)

    @property
    def input_range(self) -> tuple[float, float]:
        """The measured prompt lengths (lowest, highest) at the default batch size."""
        return self._ranges(self.batch_size)[0]

    @property
    def output_range(self) -> tuple[float, float]:
        """The measured output lengths (lowest, highest) at the default batch size."""
        return self._ranges(self.batch_size)[1]

    def _ranges(self, batch_size: float) -> tuple[tuple[float, float], tuple[float, float]]:
        lo, hi, _ = _bracket(self.fits, batch_size)
        return (
            (max(lo.input_range[0], hi.input_range[0]), min(lo.input_range[1], hi.input_range[1])),
            (max(lo.output_range[0], hi.output_range[0]), min(lo.output_range[1], hi.output_range[1])),
        )

    def predict(
        self, n_in: npt.ArrayLike, n_out: npt.ArrayLike, batch_size: float | None = None
    ) -> Prediction:
        """Energy (J) and runtime (s) per request with ``n_in`` prompt and ``n_out`` output tokens.

        Vectorised over arrays (broadcast together). ``batch_size`` (default: the model's) is the number
        of requests per ``generate`` call; between measured batch sizes the two nearest surfaces are
        interpolated in (log batch, log cost). Token counts below 1 are costed as 1. ``extrapolated``
        marks requests outside the measured prompt or output range, or at a batch size outside the
        measured ones. Results are finite and positive.
        """
        n_raw, m_raw = np.broadcast_arrays(np.asarray(n_in, dtype=float), np.asarray(n_out, dtype=float))
        if not (np.isfinite(n_raw).all() and np.isfinite(m_raw).all()):
            raise PlanningError(
                f"profile {self.profile_name!r}: token counts must be finite numbers (got NaN or infinity)"
            )
        b = float(self.batch_size if batch_size is None else batch_size)
        if not b >= 1:
            raise PlanningError(f"profile {self.profile_name!r}: batch_size must be >= 1, got {batch_size}")
        n = TokenCounts(n_raw)
        m = TokenCounts(m_raw)
        lo, hi, weight = _bracket(self.fits, b)
        energy, runtime, floored = lo.evaluate(n, m)
        extrapolated = lo.outside(n_raw, m_raw)
        if hi is not lo and weight > 0:
            energy_hi, runtime_hi, floored_hi = hi.evaluate(n, m)
            energy = np.exp((1 - weight) * np.log(energy) + weight * np.log(energy_hi))
            runtime = np.exp((1 - weight) * np.log(runtime) + weight * np.log(runtime_hi))
            floored |= floored_hi
            extrapolated |= hi.outside(n_raw, m_raw)
        if b < self.fits[0].batch_size or b > self.fits[-1].batch_size:
            extrapolated = extrapolated | (len(self.fits) > 1)
        return Prediction(
            energy_j=energy,
            runtime_s=runtime,
            extrapolated=np.asarray(extrapolated, dtype=bool),
            floored=np.asarray(floored, dtype=bool),
        )


#: The note of a model in the ``derived-kv`` regime.
DERIVED_KV_NOTE = (
    "predicts the KV-cache regime derived from a profile measured without one (re-run term removed: the "
    "prompt is processed once, and each later output token costs one pass's fixed cost plus the token's own "
    "increment); the profile never measured this regime, so its error is the fit's plus the derivation's"
)


def _unknown_regime_note(form: Form, kv_cache: bool | None) -> str:
    asked = ""
    if kv_cache is not None:
        regime = "with" if kv_cache else "without"
        asked = f", not necessarily the regime asked for (generation {regime} a KV cache)"
    return (
        "the profile does not say whether it was measured with a KV cache (kv_cache is unset in its "
        f"meta.json); the fit chose the {form} form, and predictions follow it as measured{asked}: set "
        "kv_cache in the profile's meta.json to make the regime certain"
    )


def _counts(points: pd.DataFrame, batch_size: int) -> tuple[FloatArray, FloatArray]:
    """The prompt and output counts of the points at one batch size."""
    rows = points[points["batch_size"] == batch_size]
    return rows["input_tokens"].to_numpy(dtype=float), rows["output_tokens"].to_numpy(dtype=float)


def _fixed_count(points: pd.DataFrame, sweep: Sweep, column: str) -> int:
    """The fixed token count of a sweep (its median if it varies; 0 when the sweep was not measured)."""
    values = points.loc[points["sweep"] == sweep, column]
    return round(float(values.median())) if len(values) else 0


def _nearest(fits: Sequence[BatchFit], batch_size: float) -> BatchFit:
    return min(fits, key=lambda f: (abs(math.log(f.batch_size) - math.log(batch_size)), f.batch_size))


def _bracket(fits: Sequence[BatchFit], batch_size: float) -> tuple[BatchFit, BatchFit, float]:
    """The measured batch sizes around ``batch_size`` and the weight of the upper one (log-linear);
    outside the measured ones, the nearest with weight 0."""
    if batch_size <= fits[0].batch_size or len(fits) == 1:
        return fits[0], fits[0], 0.0
    if batch_size >= fits[-1].batch_size:
        return fits[-1], fits[-1], 0.0
    upper = next(i for i, f in enumerate(fits) if f.batch_size >= batch_size)
    lo, hi = fits[upper - 1], fits[upper]
    if hi.batch_size == batch_size:
        return hi, hi, 0.0
    weight = (math.log(batch_size) - math.log(lo.batch_size)) / (
        math.log(hi.batch_size) - math.log(lo.batch_size)
    )
    return lo, hi, weight
