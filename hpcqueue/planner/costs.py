"""Cost model v0: predicted energy and runtime of one request from a profile's two sweeps.

A profile measures an input sweep (prompt length varied, output fixed) and an output sweep (output
length varied, prompt fixed). v0 treats prefill and decode as separable:

    E(n_in, n_out) = E_in(n_in) + E_out(n_out) − E_ref

where ``E_in`` interpolates the input sweep (at its fixed output count), ``E_out`` the output sweep
(at its fixed input count ``I_out``), and ``E_ref = E_in(I_out)`` removes the prompt cost counted
twice. Runtime uses the same form. Each 1-D curve is piecewise linear in log–log space through the
measured means and continues with its end segments' slopes beyond them (flagged as extrapolation).

Limits: the additive form has no interaction term, so it is wrong where prompt cost depends on the
output length. That is the case for the shipped paper profiles (``use_cache=False``: every decode
step re-runs the whole sequence, so decode grows quadratically and the prompt is paid once per
output token). The fitted models that replace v0 keep this class's interface: ``from_profile`` and
``predict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hpcqueue.errors import PlanningError
from hpcqueue.profiles.store import Profile, Sweep

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Prediction:
    """Per-request predictions, aligned with the token arrays given to :meth:`CostModel.predict`.

    ``extrapolated`` is True where a token count lies outside the profile's measured range;
    ``floored`` is True where the separable sum fell below the floor and the floor was used instead.
    """

    energy_j: FloatArray
    runtime_s: FloatArray
    extrapolated: BoolArray
    floored: BoolArray


@dataclass(frozen=True)
class LogLogCurve:
    """A quantity against a token count: piecewise linear in (log tokens, log value).

    Exact at the measured points, monotone between them wherever the points are, and continued
    beyond the ends with the first and last segments' slopes.
    """

    tokens: FloatArray
    values: FloatArray

    def __post_init__(self) -> None:
        if len(self.tokens) < 2:
            raise ValueError("a curve needs at least two points")
        if np.any(np.diff(self.tokens) <= 0):
            raise ValueError("curve token counts must be strictly increasing")
        if np.any(self.values <= 0) or np.any(self.tokens <= 0):
            raise ValueError("a log-log curve needs positive token counts and values")

    @property
    def low(self) -> float:
        return float(self.tokens[0])

    @property
    def high(self) -> float:
        return float(self.tokens[-1])

    def covers(self, n: npt.ArrayLike) -> BoolArray:
        """True where ``n`` lies inside the measured range (no extrapolation)."""
        n_a = np.asarray(n, dtype=float)
        return (n_a >= self.tokens[0]) & (n_a <= self.tokens[-1])

    def __call__(self, n: npt.ArrayLike) -> FloatArray:
        x_pts = np.log(self.tokens)
        y_pts = np.log(self.values)
        x = np.log(np.maximum(np.asarray(n, dtype=float), 1.0))
        y = np.interp(x, x_pts, y_pts)
        slope_low = (y_pts[1] - y_pts[0]) / (x_pts[1] - x_pts[0])
        slope_high = (y_pts[-1] - y_pts[-2]) / (x_pts[-1] - x_pts[-2])
        y = np.where(x < x_pts[0], y_pts[0] + slope_low * (x - x_pts[0]), y)
        y = np.where(x > x_pts[-1], y_pts[-1] + slope_high * (x - x_pts[-1]), y)
        return np.exp(y)


@dataclass(frozen=True)
class CostModel:
    """Separable prefill/decode model of one profile (see the module docstring for the formula)."""

    profile_name: str
    model: str
    hardware: str
    energy_in: LogLogCurve
    energy_out: LogLogCurve
    runtime_in: LogLogCurve
    runtime_out: LogLogCurve
    input_sweep_output_tokens: int
    output_sweep_input_tokens: int
    energy_floor_j_per_token: float
    runtime_floor_s_per_token: float
    batch_size: int = 1
    kind: str = "separable-loglog-v0"

    @property
    def energy_ref_j(self) -> float:
        """The input curve at the output sweep's prompt length: the prompt cost both sweeps contain."""
        return float(self.energy_in(self.output_sweep_input_tokens)[()])

    @property
    def runtime_ref_s(self) -> float:
        return float(self.runtime_in(self.output_sweep_input_tokens)[()])

    @classmethod
    def from_profile(cls, profile: Profile, batch_size: int | None = None) -> CostModel:
        """Build the model from a profile's points at one batch size (default: the smallest measured).

        Each sweep needs at least two points at that batch size, all at one fixed value of the
        other token count, with positive energy and runtime means.
        """
        points = profile.points
        where = f"profile {profile.name!r}" + (f" ({profile.path})" if profile.path else "")
        if batch_size is None:
            batch_size = int(points["batch_size"].min())
        curves: dict[str, LogLogCurve] = {}
        fixed: dict[str, int] = {}
        for sweep, swept, other in (
            ("input", "input_tokens", "output_tokens"),
            ("output", "output_tokens", "input_tokens"),
        ):
            rows = points[(points["sweep"] == sweep) & (points["batch_size"] == batch_size)]
            rows = rows.sort_values(swept, kind="stable")
            if len(rows) < 2:
                raise PlanningError(
                    f"{where}: the {sweep} sweep has {len(rows)} point(s) at batch_size {batch_size}; "
                    "the cost model needs at least 2 per sweep: measure more points"
                )
            others = sorted(set(rows[other].tolist()))
            if len(others) != 1:
                raise PlanningError(
                    f"{where}: the {sweep} sweep mixes {other} values {others} at batch_size {batch_size}; "
                    f"cost model v0 needs one fixed {other} per sweep"
                )
            fixed[sweep] = int(others[0])
            tokens = rows[swept].to_numpy(dtype=float)
            for quantity in ("energy_j_mean", "runtime_s_mean"):
                values = rows[quantity].to_numpy(dtype=float)
                if np.any(values <= 0):
                    bad = int(tokens[np.flatnonzero(values <= 0)[0]])
                    raise PlanningError(
                        f"{where}: {quantity} is not positive at {sweep} sweep point {swept}={bad}; "
                        "the cost model interpolates in log space and needs positive means"
                    )
                curves[f"{quantity.split('_')[0]}_{sweep}"] = LogLogCurve(tokens, values)
        at_batch = points[points["batch_size"] == batch_size]
        total_tokens = (at_batch["input_tokens"] + at_batch["output_tokens"]).to_numpy(dtype=float)
        return cls(
            profile_name=profile.name,
            model=profile.meta.model,
            hardware=profile.meta.hardware,
            energy_in=curves["energy_input"],
            energy_out=curves["energy_output"],
            runtime_in=curves["runtime_input"],
            runtime_out=curves["runtime_output"],
            input_sweep_output_tokens=fixed["input"],
            output_sweep_input_tokens=fixed["output"],
            energy_floor_j_per_token=float(np.min(at_batch["energy_j_mean"].to_numpy() / total_tokens)),
            runtime_floor_s_per_token=float(np.min(at_batch["runtime_s_mean"].to_numpy() / total_tokens)),
            batch_size=batch_size,
        )

    def predict(self, n_in: npt.ArrayLike, n_out: npt.ArrayLike) -> Prediction:
        """Energy (J) and runtime (s) of requests with ``n_in`` prompt and ``n_out`` output tokens.

        Vectorised over arrays. Never negative: where the separable sum falls below
        (the profile's lowest measured energy per token) × (n_in + n_out), that floor is used and
        ``floored`` is set; the same for runtime. The floor never changes a measured output-sweep
        point and keeps predictions monotone in each token count wherever the curves are.
        """
        n_in_a = np.asarray(n_in, dtype=float)
        n_out_a = np.asarray(n_out, dtype=float)
        tokens = n_in_a + n_out_a
        energy = self.energy_in(n_in_a) + self.energy_out(n_out_a) - self.energy_ref_j
        runtime = self.runtime_in(n_in_a) + self.runtime_out(n_out_a) - self.runtime_ref_s
        energy_floor = self.energy_floor_j_per_token * tokens
        runtime_floor = self.runtime_floor_s_per_token * tokens
        floored = (energy < energy_floor) | (runtime < runtime_floor)
        extrapolated = ~(self.energy_in.covers(n_in_a) & self.energy_out.covers(n_out_a))
        return Prediction(
            energy_j=np.maximum(energy, energy_floor),
            runtime_s=np.maximum(runtime, runtime_floor),
            extrapolated=np.asarray(extrapolated, dtype=bool),
            floored=np.asarray(floored, dtype=bool),
        )

    def measured_tokens(self, sweep: Sweep) -> FloatArray:
        """The swept token counts measured along ``sweep``."""
        return (self.energy_in if sweep == "input" else self.energy_out).tokens

    def energy_per_token(
        self, sweep: Sweep, tokens: Sequence[float] | npt.ArrayLike | None = None
    ) -> tuple[FloatArray, FloatArray]:
        """Energy per token (J) along one sweep: the sweep's curve / (swept + fixed token count).

        ``tokens`` defaults to the measured points. Along the input sweep the fixed count is the
        sweep's output count, along the output sweep its prompt length. Used to find where a
        low-power target stops being cheaper (the threshold policy).
        """
        curve = self.energy_in if sweep == "input" else self.energy_out
        fixed = self.input_sweep_output_tokens if sweep == "input" else self.output_sweep_input_tokens
        at = curve.tokens if tokens is None else np.asarray(tokens, dtype=float)
        return at, curve(at) / (at + fixed)
