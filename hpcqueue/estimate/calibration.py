"""Calibration of the analytic model's factors on measured profiles, their transfer to hardware without a
profile, and the prediction intervals that come with them.

**Which profiles.** Every profile on the profile search path whose figures are measurements of one model
with a known architecture. Left out, each with the reason (:attr:`Calibration.skipped`): profiles pooling
several models (``pooled-7b.*``: no single architecture), profiles whose energy is an estimate (``method``
``estimated``), revisions scaled to a target's ledger (``hpcqueue profiles calibrate``: not measurements of
their own), the demo model and other models under 100 M parameters (their passes are all framework
overhead), and profiles whose model, dtype, hardware class or KV-cache regime is unknown. Each profile is
predicted in its own regime — ``kv_cache`` false (the paper profiles: every step re-runs the sequence) or
true — so the factors describe the hardware, not the regime, and carry over from one to the other. Profiles
ran on one device (no tensor parallelism); their CPU figures cover ``torch_threads`` CPUs when the profile
records it, else :data:`~hpcqueue.estimate.analytic.DEFAULT_HOST_CPUS` (the paper's two cores). Where a
profile subtracted idle power, it is added back (idle power × runtime, per domain) so that every fit sees
gross figures.

**Fit, per hardware class**, by least squares on log error (a point of 40 J weighs as much as one of
400 kJ) over all the class's points:

1. the time factors on the runtimes: ``u_compute``, ``u_memory``, ``overhead_s_per_layer``, and
   ``convert_weight_reads`` where a profile ran a dtype the hardware has no native arithmetic for;
2. with them fixed, ``power_compute`` and ``power_memory`` on the device's energy column (GPU, or CPU on
   CPU hardware) and ``cpu_share`` on the host CPU column; the total where a profile has no split. A CPU
   figure ≤ 0, which an idle subtraction can leave, is not used.

The factors are fitted as logarithms with weak priors (:data:`PRIOR`, centre and spread in log units; a
point counts as a 10 % error): at batch size 1 with 7B models of 32 layers the per-pass overhead, the
conversion of a non-native dtype and the memory-bound time are all nearly constant per pass, so the data fix
their sum but not its split, and the priors decide it (a memory efficiency of 0.7, typical of eager PyTorch
matrix-vector kernels, held more firmly than the others). Where the data decide, the priors do not matter.
Utilisations and power shares are bounded to (0, 1]. A factor the points do not bear on keeps its prior
and is not in :attr:`ClassFit.fitted` (``convert_weight_reads`` of a class whose profiles all ran a native
dtype, ``cpu_share`` without a host CPU column).

**Transfer.** A hardware class without a profile takes, per factor, a weighted geometric mean over the
calibrated classes whose points bear on it, each class counting once (a pooled fit would be decided by the
class with the most profiles): classes of the same kind (GPU or CPU) when any has a profile, else all
(CPU-only hardware has no calibration data so far). Two refinements make the factors transfer:

* **the arithmetic path**: ``u_compute`` and ``convert_weight_reads`` (:data:`PATH_FACTORS`) come only from
  classes whose profiles took the same path as the target's dtype — native arithmetic (tensor cores) or a
  fallback (bfloat16 converted and computed at the float32 rate). They are different kernels, and a
  utilisation of one says nothing of the other. With no class on the target's path, the prior's centre;
* **identification**: each fit gives the standard error ``se`` of each log factor ((JᵀJ)⁻¹ of its
  least-squares problem, priors included), and a class weighs ``1 / (se² + τ²)``, ``τ²`` the between-class
  variance of the log factors (pooled over the factors two or more classes bear on, ``cpu_share`` left out:
  it describes the meters). Where every class's points decide a factor, ``se ≪ τ`` and the classes weigh
  equally; where a class's points barely bear on it — ``u_memory`` and the overhead on the fallback
  classes, compute-bound even at their shortest passes — its value is mostly its prior and it weighs less.

Without any calibrated class the priors' centres are used.

**Intervals** (90 %), multiplicative ``(low, high)``. For a class with its own profile: ``exp`` of the 5 %
and 95 % quantiles of its own fit's log residuals measured / predicted, widened where needed to hold 1. For
a class predicted by transfer, the spread of the factors between the classes, propagated to the prediction:
a new class's log factor varies about the transferred one with variance ``τ² + 1 / Σ weights`` (``2 τ²``
for a factor taken at its prior's centre); per point, the variance of the log prediction is the sum over
the factors of (∂ log prediction / ∂ log factor)² times that, plus the classes' own-fit residual variance;
the interval is ± t(0.95, dof) × its root mean square over reference requests (the paper profiles' sweeps,
:data:`REFERENCE_REQUESTS`, for the model being built; the held-out profiles' token counts in
leave-one-hardware-out). It widens where the classes disagree and where the prediction depends on the
factors they disagree on, and uses none of the target's measurements. The error being mostly one systematic
offset per class, the same factors apply to a sum of predictions.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import least_squares
from scipy.stats import norm
from scipy.stats import t as student_t

from hpcqueue.errors import ConfigError, HpcqueueError, ModelError
from hpcqueue.estimate.analytic import (
    DEFAULT_HOST_CPUS,
    DEFAULT_MAX_CONTEXT_TOKENS,
    FACTOR_NAMES,
    AnalyticModel,
    Factors,
    build_model,
)
from hpcqueue.estimate.architecture import DTYPE_BYTES, KNOWN, Architecture, architecture_of
from hpcqueue.meters.hardware import get_hardware
from hpcqueue.models import DEMO_MODEL
from hpcqueue.profiles.grid import domain_group
from hpcqueue.profiles.store import (
    META_FILE,
    POINTS_FILE,
    Profile,
    ProfileEntry,
    list_profiles,
    load_profile,
    profile_search_path,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: The level of the prediction intervals.
INTERVAL_LEVEL = 0.90
#: Prior (centre, spread in natural-log units) of each factor; see the module's docstring.
PRIOR: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "u_compute": (0.5, 1.0),
        "u_memory": (0.7, 0.3),
        "overhead_s_per_layer": (3e-4, 1.0),
        "convert_weight_reads": (4.0, 1.5),
        "power_compute": (0.7, 1.0),
        "power_memory": (0.3, 1.0),
        "cpu_share": (0.5, 1.0),
    }
)
#: The factors used when no class has a profile: the priors' centres.
PRIOR_FACTORS = Factors.from_dict({name: centre for name, (centre, _) in PRIOR.items()})
#: Bounds of the fitted factors: utilisations and power shares cannot exceed 1; the CPU share may (a package
#: meter sees more than the job's CPUs' share of the sockets' TDP).
_BOUNDS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "u_compute": (1e-4, 1.0),
        "u_memory": (1e-4, 1.0),
        "overhead_s_per_layer": (1e-8, 1.0),
        "convert_weight_reads": (1e-3, 1e3),
        "power_compute": (1e-4, 1.0),
        "power_memory": (1e-4, 1.0),
        "cpu_share": (1e-4, 100.0),
    }
)
#: The log error a point is assumed to have, against which the priors weigh (10 %).
_POINT_SIGMA = 0.1
#: The factors that describe the arithmetic path a dtype takes, native or a fallback: transferred only between
#: classes whose profiles took the same path (see the module's docstring).
PATH_FACTORS: tuple[str, ...] = ("u_compute", "convert_weight_reads")
#: Models smaller than this are not used: their passes are all framework overhead.
_MIN_PARAMETERS = 100_000_000


@dataclass(frozen=True)
class PointGroup:
    """The measured points of one profile at one batch size, per request, ready to be predicted.

    Energies are gross (idle power added back where the profile subtracted it); ``energy_gpu_j`` and
    ``energy_cpu_j`` are NaN where the profile has no such column.
    """

    profile: str
    hardware: str
    architecture: Architecture
    kv_cache: bool
    batch_size: int
    cpus: int
    input_tokens: IntArray
    output_tokens: IntArray
    runtime_s: FloatArray
    energy_j: FloatArray
    energy_gpu_j: FloatArray
    energy_cpu_j: FloatArray

    @functools.cached_property
    def model(self) -> AnalyticModel:
        """The analytic model of this group's runs (prior factors; replace them with ``with_factors``)."""
        return build_model(
            self.architecture,
            self.hardware,
            PRIOR_FACTORS,
            kv_cache=self.kv_cache,
            batch_size=self.batch_size,
            cpus=self.cpus,
            max_context_tokens=int((self.input_tokens + self.output_tokens).max()),
            tensor_parallel=1,
        )

    def predict(self, factors: Factors) -> tuple[FloatArray, FloatArray, dict[str, FloatArray]]:
        """Predicted energy (J), runtime (s) and energy by domain per request at these points."""
        estimate = self.model.with_factors(factors).predict(self.input_tokens, self.output_tokens)
        return estimate.energy_j, estimate.runtime_s, estimate.energy_by_domain_j

    @property
    def points(self) -> int:
        return int(self.input_tokens.size)


@dataclass(frozen=True)
class Residuals:
    """log(measured / predicted) at a set of points: energy and runtime per request."""

    energy: FloatArray
    runtime: FloatArray

    @property
    def points(self) -> int:
        return int(self.energy.size)

    def mape(self) -> tuple[float, float]:
        """Mean absolute percentage error (fractions) of energy and runtime: |predicted / measured − 1|."""
        return _mape(self.energy), _mape(self.runtime)

    @staticmethod
    def concat(parts: Iterable[Residuals]) -> Residuals:
        items = list(parts)
        if not items:
            return Residuals(np.zeros(0), np.zeros(0))
        return Residuals(
            np.concatenate([r.energy for r in items]), np.concatenate([r.runtime for r in items])
        )


@dataclass(frozen=True)
class Intervals:
    """Multiplicative bounds (low, high) of a 90 % prediction interval, for energy and runtime, and what
    they were built from."""

    energy: tuple[float, float]
    runtime: tuple[float, float]
    basis: str


@dataclass(frozen=True)
class ClassFit:
    """The factors fitted on one hardware class's profiles, and how well they reproduce them."""

    hardware: str
    kind: str
    factors: Factors
    fitted: tuple[str, ...]
    profiles: tuple[str, ...]
    residuals: Residuals
    log_sd: Mapping[str, float] = field(default_factory=dict)
    native: bool = True

    @property
    def points(self) -> int:
        return self.residuals.points


@dataclass(frozen=True)
class Calibration:
    """Every calibrated hardware class, the points behind each, and the profiles left out (with why)."""

    classes: Mapping[str, ClassFit]
    groups: Mapping[str, tuple[PointGroup, ...]]
    skipped: tuple[tuple[str, str], ...]
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def transferred(
        self, hardware: str, exclude: Iterable[str] = (), *, native: bool | None = None
    ) -> tuple[Factors, tuple[str, ...]]:
        """The factors for ``hardware`` from the calibrated classes other than ``hardware`` and ``exclude``
        (see :meth:`transfer`). Returns the factors and the classes they come from."""
        transfer = self.transfer(hardware, exclude, native=native)
        return transfer.factors, transfer.sources

    def transfer(self, hardware: str, exclude: Iterable[str] = (), *, native: bool | None = None) -> Transfer:
        """The transfer of factors to ``hardware`` from the calibrated classes but ``hardware`` and
        ``exclude`` (see the module's docstring): classes of the same kind when any has a profile, else all;
        per factor, the classes whose points bear on it — for :data:`PATH_FACTORS`, only those whose
        profiles took the same arithmetic path (``native``: whether ``hardware`` runs the dtype natively,
        default its own profiles' path, else bfloat16's on its spec sheet) —, their log factors averaged
        with weights ``1 / (se² + τ²)``; a factor no class bears on takes its prior's centre."""
        exclude = tuple(sorted(set(exclude) | {hardware}))
        if native is None:
            own = self.classes.get(hardware)
            native = own.native if own is not None else _native(hardware, "bfloat16")
        key = ("transfer", hardware, exclude, native)
        if key not in self._cache:
            self._cache[key] = self._transfer(hardware, exclude, native)
        result: Transfer = self._cache[key]
        return result

    def _transfer(self, hardware: str, exclude: tuple[str, ...], native: bool) -> Transfer:
        left = [c for name, c in self.classes.items() if name not in exclude]
        kind = _kind(hardware)
        chosen = [c for c in left if c.kind == kind] or left
        donors: dict[str, list[ClassFit]] = {}
        for name in FACTOR_NAMES:
            bearing = [c for c in chosen if name in c.fitted]
            if name in PATH_FACTORS:
                bearing = [c for c in bearing if c.native == native]
            donors[name] = bearing
        tau2, dof = _between_class_variance(donors)
        values = PRIOR_FACTORS.as_dict()
        log_var: dict[str, float] = {}
        for name, bearing in donors.items():
            if not bearing:
                # the prior's centre, as uncertain as one class's value would be
                log_var[name] = 2 * tau2
                continue
            logs = np.array([math.log(getattr(c.factors, name)) for c in bearing])
            se2 = np.array([c.log_sd.get(name, 0.0) ** 2 for c in bearing])
            weights = 1.0 / (se2 + tau2) if tau2 > 0 else np.ones(len(bearing))
            values[name] = math.exp(float(np.sum(weights * logs) / np.sum(weights)))
            # a new class's log factor: the classes' spread around their mean, plus the mean's own error
            log_var[name] = tau2 + (1.0 / float(np.sum(weights)) if tau2 > 0 else 0.0)
        return Transfer(
            native=native,
            factors=Factors.from_dict(values),
            sources=tuple(sorted(c.hardware for c in chosen)),
            donors=MappingProxyType({n: tuple(c.hardware for c in d) for n, d in donors.items()}),
            log_var=MappingProxyType(log_var),
            tau2=tau2,
            dof=dof,
            fit_var=_fit_variance(chosen),
        )

    def factors_for(self, hardware: str, *, native: bool | None = None) -> tuple[Factors, str]:
        """The factors to predict ``hardware`` with and where they come from: its own fit when it has
        profiles, else transferred (:meth:`transfer`; ``native`` as there)."""
        own = self.classes.get(hardware)
        if own is not None:
            return own.factors, (
                f"calibrated on {len(own.profiles)} profile(s) of {hardware} ({own.points} points): "
                + ", ".join(own.profiles)
            )
        transfer = self.transfer(hardware, native=native)
        sources = transfer.sources
        if not sources:
            return transfer.factors, "no calibrated hardware class: the prior factors (uncalibrated)"
        kind = _kind(hardware)
        kinds = {self.classes[s].kind for s in sources}
        across = "" if kinds == {kind} else f" (no {kind} class has a profile: taken across kinds)"
        unused = {"cpu_share"} | ({"convert_weight_reads"} if transfer.native else set())
        from_prior = [n for n, d in transfer.donors.items() if not d and n not in unused]
        prior = f"; {', '.join(from_prior)} from the prior (no class bears on it)" if from_prior else ""
        return transfer.factors, (
            f"transferred: weighted geometric mean of the factors of {', '.join(sources)}{across}{prior}; "
            f"{hardware} has no profile of its own"
        )

    def residuals(self, hardware: str, factors: Factors) -> Residuals:
        """log(measured / predicted) of every point of ``hardware``'s profiles predicted with ``factors``."""
        parts = []
        for group in self.groups[hardware]:
            energy, runtime, _ = group.predict(factors)
            parts.append(Residuals(np.log(group.energy_j / energy), np.log(group.runtime_s / runtime)))
        return Residuals.concat(parts)

    def loho_residuals(self, exclude: Iterable[str] = ()) -> dict[str, Residuals]:
        """Leave one hardware out: each calibrated class (but ``exclude``) predicted from the transferred
        factors of the others (but ``exclude``)."""
        exclude = tuple(sorted(set(exclude)))
        key = ("loho", exclude)
        if key not in self._cache:
            self._cache[key] = {
                name: self.residuals(name, self.transferred(name, exclude)[0])
                for name in self.classes
                if name not in exclude
            }
        result: dict[str, Residuals] = self._cache[key]
        return result

    def interval_factors(
        self,
        hardware: str,
        exclude: Iterable[str] = (),
        *,
        model: AnalyticModel | None = None,
    ) -> Intervals:
        """The 90 % interval factors of an analytic prediction for ``hardware``: its own fit's residuals when
        it has profiles (and is not excluded); else the spread of the factors between the calibrated classes
        not excluded, propagated to the predictions of ``model`` (default: llama-2-7b in bfloat16 without a
        KV cache, as profiled; for an excluded class with profiles, its profiles' models) at
        :data:`REFERENCE_REQUESTS` — see the module's docstring."""
        exclude = set(exclude)
        own = self.classes.get(hardware)
        if own is not None and hardware not in exclude:
            return Intervals(
                _quantile_factors([own.residuals.energy]),
                _quantile_factors([own.residuals.runtime]),
                f"residuals of {hardware}'s own fit ({own.points} points)",
            )
        native = model.spec.native_dtype if model is not None else None
        transfer = self.transfer(hardware, exclude, native=native)
        if not transfer.sources:
            return Intervals(
                (math.nan, math.nan), (math.nan, math.nan), "no calibrated class to build an interval from"
            )
        if model is not None:
            cases = [_reference_case(model)]
        elif own is not None:  # held out: its profiles' models and regimes, at their token counts
            cases = [(g.model, g.input_tokens, g.output_tokens) for g in self.groups[hardware]]
        else:
            default = build_model(KNOWN["llama-2-7b"], hardware, transfer.factors, kv_cache=False)
            cases = [_reference_case(default)]
        energy, runtime = _propagated_factors(transfer, cases)
        return Intervals(
            energy,
            runtime,
            f"the spread of the factors between {', '.join(transfer.sources)} (τ = "
            f"{math.sqrt(transfer.tau2):.2f} in log units, {transfer.dof} degrees of freedom) and their "
            "fits' residuals, propagated to the prediction",
        )


@dataclass(frozen=True)
class Transfer:
    """Factors transferred to a hardware class without a profile of its own (:meth:`Calibration.transfer`):
    the arithmetic path they are for (``native``), the factors, the classes they come from (all, and per
    factor), the variance of each log factor for a new class (``log_var``), the between-class variance
    ``tau2`` of log factors and its degrees of freedom, and the classes' own-fit residual variance of log
    energy and log runtime (``fit_var``)."""

    native: bool
    factors: Factors
    sources: tuple[str, ...]
    donors: Mapping[str, tuple[str, ...]]
    log_var: Mapping[str, float]
    tau2: float
    dof: int
    fit_var: tuple[float, float]


def _native(hardware: str, dtype: str) -> bool:
    """Whether ``hardware`` has native arithmetic for ``dtype`` (a dtype it cannot run counts as not)."""
    try:
        return get_hardware(hardware).compute_spec(dtype).native_dtype
    except ConfigError:
        return False


def _between_class_variance(donors: Mapping[str, Sequence[ClassFit]]) -> tuple[float, int]:
    """The variance of log factors between classes, pooled over the factors borne on by two classes or more
    (each contributing its sum of squares about its mean and one degree of freedom less than its classes),
    and the pooled degrees of freedom. ``cpu_share`` is left out: it describes the meters (two cores, whole
    sockets, a process's share) more than the hardware."""
    squares, dof = 0.0, 0
    for name, bearing in donors.items():
        if name == "cpu_share" or len(bearing) < 2:
            continue
        logs = np.log([getattr(c.factors, name) for c in bearing])
        squares += float(np.sum((logs - logs.mean()) ** 2))
        dof += len(bearing) - 1
    return (squares / dof if dof else 0.0), dof


def _fit_variance(classes: Sequence[ClassFit]) -> tuple[float, float]:
    """The mean over ``classes`` of their own fit's residual variance, of log energy and of log runtime: what
    even a class's own factors leave unexplained."""
    if not classes:
        return 0.0, 0.0
    energy = [float(np.mean(c.residuals.energy**2)) for c in classes if c.points]
    runtime = [float(np.mean(c.residuals.runtime**2)) for c in classes if c.points]
    return float(np.mean(energy)), float(np.mean(runtime))


#: The requests an interval is propagated to when no held-out profile says which: the paper profiles' sweeps
#: (prompts of 8 to 2048 tokens with 32 output tokens; 8 to 1024 output tokens after a 32-token prompt).
REFERENCE_REQUESTS: tuple[tuple[int, int], ...] = (
    *((n, 32) for n in (8, 32, 128, 512, 1024, 2048)),
    *((32, m) for m in (8, 128, 512, 1024)),
)
#: The step, in log units, of the finite differences that give a prediction's sensitivity to each factor.
_LOG_STEP = 0.05


def _reference_case(model: AnalyticModel) -> tuple[AnalyticModel, IntArray, IntArray]:
    fits = [(n, m) for n, m in REFERENCE_REQUESTS if n + m <= model.max_context_tokens] or [(1, 1)]
    n_in, n_out = (np.array(column, dtype=np.int64) for column in zip(*fits, strict=True))
    return model, n_in, n_out


def _propagated_factors(
    transfer: Transfer, cases: Sequence[tuple[AnalyticModel, IntArray, IntArray]]
) -> tuple[tuple[float, float], tuple[float, float]]:
    """The 90 % interval factors of predictions with transferred factors: per point, the variance of the log
    prediction is Σ (∂ log prediction / ∂ log factor)² · var(log factor) (the sensitivities by central
    differences) plus the classes' own-fit residual variance; the interval is ± t(0.95, dof) × its root mean
    square over the points, dof the degrees of freedom of the between-class variance (a normal quantile
    when it has none)."""
    energy_var: list[FloatArray] = []
    runtime_var: list[FloatArray] = []
    base = transfer.factors.as_dict()
    for model, n_in, n_out in cases:
        var_e = np.full(n_in.size, transfer.fit_var[0])
        var_r = np.full(n_in.size, transfer.fit_var[1])
        for name, variance in transfer.log_var.items():
            if variance <= 0:
                continue
            up, down = (
                model.with_factors(
                    Factors.from_dict({**base, name: base[name] * math.exp(sign * _LOG_STEP)})
                ).predict(n_in, n_out)
                for sign in (1, -1)
            )
            var_e += (np.log(up.energy_j / down.energy_j) / (2 * _LOG_STEP)) ** 2 * variance
            var_r += (np.log(up.runtime_s / down.runtime_s) / (2 * _LOG_STEP)) ** 2 * variance
        energy_var.append(var_e)
        runtime_var.append(var_r)
    quantile = float(
        student_t.ppf(0.5 + INTERVAL_LEVEL / 2, transfer.dof)
        if transfer.dof
        else norm.ppf(0.5 + INTERVAL_LEVEL / 2)
    )

    def factors(variances: list[FloatArray]) -> tuple[float, float]:
        half = quantile * math.sqrt(float(np.mean(np.concatenate(variances))))
        return math.exp(-half), math.exp(half)

    return factors(energy_var), factors(runtime_var)


def _kind(hardware: str) -> str:
    """``gpu`` or ``cpu``: the kind of device that computes on ``hardware``."""
    return "gpu" if get_hardware(hardware).gpus > 0 else "cpu"


def _mape(log_ratio: FloatArray) -> float:
    """MAPE of predictions from log(measured / predicted): mean |exp(−r) − 1|."""
    return float(np.mean(np.abs(np.expm1(-log_ratio)))) if log_ratio.size else math.nan


def _quantile_factors(samples: Sequence[FloatArray]) -> tuple[float, float]:
    """exp of the 5 % and 95 % quantiles of the pooled samples, each sample (class) weighted equally."""
    samples = [s[np.isfinite(s)] for s in samples if s.size]
    if not samples:
        return (math.nan, math.nan)
    values = np.concatenate(samples)
    weights = np.concatenate([np.full(s.size, 1.0 / s.size) for s in samples])
    order = np.argsort(values)
    values, weights = values[order], weights[order]
    # the weighted empirical CDF at each value's midpoint (Hazen's plotting position, weighted)
    cdf = (np.cumsum(weights) - weights / 2) / weights.sum()
    tail = (1 - INTERVAL_LEVEL) / 2
    low, high = np.interp([tail, 1 - tail], cdf, values)
    # the interval always holds the prediction itself: a model biased one way widens it, never moves it
    return float(np.exp(min(low, 0.0))), float(np.exp(max(high, 0.0)))


# -- which profiles and their points -------------------------------------------------------------------------


def profile_architecture(profile: Profile | ProfileEntry) -> Architecture:
    """The architecture of a profile's model, in the dtype it ran in: a name of :data:`KNOWN` that the
    model's id or an alias starts with (``meta-llama/Llama-2-7b-chat-hf`` → ``llama-2-7b``), else
    :func:`~hpcqueue.estimate.architecture.architecture_of` the model id. Raises :class:`ModelError`."""
    meta = profile.meta
    arch: Architecture | None = None
    for candidate in (meta.model, *meta.model_aliases):
        base = candidate.strip().lower().rsplit("/", 1)[-1]
        matches = [k for k in KNOWN if base == k or base.startswith(k + "-")]
        if matches:
            arch = KNOWN[max(matches, key=len)]
            break
    if arch is None:
        arch = architecture_of(meta.model)
    dtype = meta.software.get("dtype") or arch.dtype
    if dtype not in DTYPE_BYTES:
        raise ModelError(
            f"profile {meta.name!r} ran in dtype {dtype!r}, which the analytic model does not know "
            f"(valid: {', '.join(DTYPE_BYTES)})"
        )
    return replace(arch, dtype=str(dtype))


def _skip_reason(profile: Profile | ProfileEntry) -> str | None:
    meta = profile.meta
    if "pooled" in meta.model.lower() or "pooled over" in meta.notes.lower():
        return "pools several models' measurements: no single architecture to predict"
    if meta.method != "measured":
        return f"its energy figures are {meta.method}, not measured"
    if meta.source not in ("imported", "measured") or meta.extra.get("calibration"):
        return "a revision scaled to a target's ledger, not a measurement of its own"
    if meta.kv_cache is None:
        return "meta.json does not say whether a KV cache was used (kv_cache)"
    if meta.engine != "transformers":
        return f"measured with {meta.engine}: the analytic model predicts the transformers engine's passes"
    if meta.model == DEMO_MODEL:
        return "the demo model's passes are all framework overhead: it does not measure the hardware"
    device = str(meta.software.get("device") or "")
    if device.startswith("cpu") and _kind(meta.hardware) == "gpu":
        return f"ran on the CPU of a GPU node ({meta.hardware}): not the device the class is predicted for"
    return None


def _point_groups(profile: Profile, arch: Architecture) -> tuple[PointGroup, ...]:
    meta = profile.meta
    points = profile.points
    cpus = meta.software.get("torch_threads")
    cpus = int(cpus) if isinstance(cpus, int) and not isinstance(cpus, bool) and cpus >= 1 else None
    idle_w: dict[str, float] = {}
    by_domain = meta.extra.get("idle_power_w_by_domain")
    if isinstance(by_domain, dict):
        for domain, watts in by_domain.items():
            if isinstance(watts, (int, float)) and meta.idle_subtracted.get(domain_group(domain)):
                group = domain_group(domain)
                idle_w[group] = idle_w.get(group, 0.0) + float(watts)
    groups = []
    for batch in sorted({int(b) for b in points["batch_size"]}):
        rows = points[points["batch_size"] == batch]
        runtime = rows["runtime_s_mean"].to_numpy(dtype=float)
        columns = {}
        for name in ("energy_j_mean", "energy_gpu_j_mean", "energy_cpu_j_mean"):
            columns[name] = rows[name].to_numpy(dtype=float).copy()
        for group, watts in idle_w.items():  # back to gross figures
            column = f"energy_{group}_j_mean"
            if column in columns:
                columns[column] += watts * runtime
            columns["energy_j_mean"] += watts * runtime
        groups.append(
            PointGroup(
                profile=profile.name,
                hardware=meta.hardware,
                architecture=arch,
                kv_cache=bool(meta.kv_cache),
                batch_size=batch,
                cpus=cpus or DEFAULT_HOST_CPUS,
                input_tokens=rows["input_tokens"].to_numpy(dtype=np.int64),
                output_tokens=rows["output_tokens"].to_numpy(dtype=np.int64),
                runtime_s=runtime / batch,
                energy_j=columns["energy_j_mean"] / batch,
                energy_gpu_j=columns["energy_gpu_j_mean"] / batch,
                energy_cpu_j=columns["energy_cpu_j_mean"] / batch,
            )
        )
    return tuple(groups)


# -- the fit ----------------------------------------------------------------------------------------------


def fit_factors(groups: Sequence[PointGroup]) -> tuple[Factors, tuple[str, ...]]:
    """The factors of one hardware class, fitted on its points (see the module's docstring), and the names
    of those the points bear on (the others keep their prior: ``convert_weight_reads`` where every dtype is
    native, ``cpu_share`` without a CPU column or on CPU hardware)."""
    factors, fitted, _ = _fit(groups)
    return factors, fitted


def _fit(groups: Sequence[PointGroup]) -> tuple[Factors, tuple[str, ...], dict[str, float]]:
    """:func:`fit_factors`, with the standard error of each fitted factor's logarithm."""
    if not groups:
        raise ValueError("no points to fit")
    values = PRIOR_FACTORS.as_dict()
    log_sd: dict[str, float] = {}
    time_names = ["u_compute", "u_memory", "overhead_s_per_layer"]
    if any(not g.model.spec.native_dtype for g in groups):
        time_names.append("convert_weight_reads")
    measured_runtime = np.concatenate([g.runtime_s for g in groups])

    def time_residuals(x: FloatArray) -> FloatArray:
        factors = Factors.from_dict({**values, **dict(zip(time_names, np.exp(x), strict=True))})
        runtime = np.concatenate([g.predict(factors)[1] for g in groups])
        return np.concatenate(
            [np.log(runtime / measured_runtime) / _POINT_SIGMA, _prior_residuals(time_names, x)]
        )

    x, sd = _solve(time_residuals, time_names)
    values.update(zip(time_names, np.exp(x), strict=True))
    log_sd.update(zip(time_names, sd.tolist(), strict=True))

    # energy columns: the split where measured (a CPU figure must be > 0), else the total
    masks = []
    for g in groups:
        device = "gpu" if g.model.spec.kind == "gpu" else "cpu"
        measured_device = g.energy_gpu_j if device == "gpu" else g.energy_cpu_j
        device_ok = np.isfinite(measured_device) & (measured_device > 0)
        host_ok = (
            np.isfinite(g.energy_cpu_j) & (g.energy_cpu_j > 0)
            if device == "gpu"
            else np.zeros(g.points, dtype=bool)
        )
        total_only = ~(np.isfinite(g.energy_gpu_j) | np.isfinite(g.energy_cpu_j))
        masks.append((device, measured_device, device_ok, host_ok, total_only))
    power_names = ["power_compute", "power_memory"]
    if any(m[3].any() for m in masks):
        power_names.append("cpu_share")

    def power_residuals(x: FloatArray) -> FloatArray:
        factors = Factors.from_dict({**values, **dict(zip(power_names, np.exp(x), strict=True))})
        parts = []
        for g, (device, measured_device, device_ok, host_ok, total_only) in zip(groups, masks, strict=True):
            energy, _, domains = g.predict(factors)
            parts.append(np.log(domains[device][device_ok] / measured_device[device_ok]))
            if device == "gpu":
                parts.append(np.log(domains["cpu"][host_ok] / g.energy_cpu_j[host_ok]))
            parts.append(np.log(energy[total_only] / g.energy_j[total_only]))
        return np.concatenate([np.concatenate(parts) / _POINT_SIGMA, _prior_residuals(power_names, x)])

    x, sd = _solve(power_residuals, power_names)
    values.update(zip(power_names, np.exp(x), strict=True))
    log_sd.update(zip(power_names, sd.tolist(), strict=True))
    return Factors.from_dict(values), (*time_names, *power_names), log_sd


def _prior_residuals(names: Sequence[str], x: FloatArray) -> FloatArray:
    return np.array([(x[i] - math.log(PRIOR[n][0])) / PRIOR[n][1] for i, n in enumerate(names)])


def _solve(residuals: Any, names: Sequence[str]) -> tuple[FloatArray, FloatArray]:
    """Minimise the sum of squared residuals over the log factors, within :data:`_BOUNDS`. Returns the log
    factors and their standard errors: the square roots of the diagonal of (JᵀJ)⁻¹, J the Jacobian of the
    residuals (points and priors) at the optimum. A factor the points do not bear on keeps its prior's
    spread; one they decide gets a small error."""
    low = np.log([_BOUNDS[n][0] for n in names])
    high = np.log([_BOUNDS[n][1] for n in names])
    start = np.clip(np.log([PRIOR[n][0] for n in names]), low + 1e-9, high - 1e-9)
    result = least_squares(residuals, start, bounds=(low, high), x_scale=1.0, method="trf")
    jac = np.asarray(result.jac, dtype=float)
    covariance = np.linalg.pinv(jac.T @ jac)
    return np.asarray(result.x, dtype=float), np.sqrt(np.clip(np.diag(covariance), 0.0, None))


# -- calibrate on the profiles found ----------------------------------------------------------------------


def calibrate(search_path: Sequence[str | os.PathLike[str]] | None = None) -> Calibration:
    """The calibration on every usable profile of the search path (default: :func:`profile_search_path`).

    Cached per set of profiles (their directories and files' modification times), so repeated calls cost
    a directory listing.
    """
    dirs = profile_search_path() if search_path is None else [Path(d) for d in search_path]
    entries = list_profiles(dirs)
    key = tuple((str(e.directory), *_mtimes(e.directory)) for e in entries)
    return _calibrate(key)


def _mtimes(directory: Path) -> tuple[int, int]:
    stamps = []
    for name in (META_FILE, POINTS_FILE):
        try:
            stamps.append((directory / name).stat().st_mtime_ns)
        except OSError:
            stamps.append(-1)
    return stamps[0], stamps[1]


@functools.lru_cache(maxsize=8)
def _calibrate(key: tuple[tuple[str, int, int], ...]) -> Calibration:
    groups: dict[str, list[PointGroup]] = {}
    skipped: list[tuple[str, str]] = []
    for directory, _, _ in key:
        name = Path(directory).name
        try:
            profile = load_profile(directory)
            reason = _skip_reason(profile)
            if reason is None:
                arch = profile_architecture(profile)
                if arch.parameters() < _MIN_PARAMETERS:
                    reason = (
                        f"its model has {arch.parameters():,} parameters: its passes are all framework "
                        "overhead, not the hardware's"
                    )
        except (HpcqueueError, ValueError) as exc:
            reason = str(exc)
        if reason is not None:
            skipped.append((name, reason))
            continue
        try:
            found = _point_groups(profile, arch)
            for group in found:
                _ = group.model  # builds the model: a bad hardware class or dtype shows here
        except ConfigError as exc:
            skipped.append((name, str(exc)))
            continue
        groups.setdefault(profile.meta.hardware, []).extend(found)
    classes = {}
    for hardware in sorted(groups):
        class_groups = groups[hardware]
        factors, fitted, log_sd = _fit(class_groups)
        residuals = Residuals.concat(_group_residuals(g, factors) for g in class_groups)
        classes[hardware] = ClassFit(
            hardware=hardware,
            kind=_kind(hardware),
            factors=factors,
            fitted=fitted,
            profiles=tuple(sorted({g.profile for g in class_groups})),
            residuals=residuals,
            log_sd=MappingProxyType(log_sd),
            native=all(g.model.spec.native_dtype for g in class_groups),
        )
    return Calibration(
        classes=MappingProxyType(classes),
        groups=MappingProxyType({h: tuple(g) for h, g in sorted(groups.items())}),
        skipped=tuple(skipped),
    )


def _group_residuals(group: PointGroup, factors: Factors) -> Residuals:
    energy, runtime, _ = group.predict(factors)
    return Residuals(np.log(group.energy_j / energy), np.log(group.runtime_s / runtime))


# -- the calibrated model ---------------------------------------------------------------------------------


def analytic_model(
    model: str | Architecture,
    hardware: str,
    *,
    dtype: str | None = None,
    kv_cache: bool = True,
    batch_size: int = 1,
    gpus: int | None = None,
    cpus: int | None = None,
    max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS,
    search_path: Sequence[str | os.PathLike[str]] | None = None,
    calibration: Calibration | None = None,
) -> AnalyticModel:
    """The calibrated analytic model of ``model`` (a name :func:`architecture_of` knows, or an
    :class:`Architecture`) on ``hardware``: factors from the class's own profiles or transferred from the
    calibrated classes, with 90 % interval factors (see the module's docstring and
    :func:`~hpcqueue.estimate.analytic.build_model` for the other arguments and the errors).
    """
    arch = model if isinstance(model, Architecture) else architecture_of(model)
    get_hardware(hardware)  # an unknown class is an error before any calibration work
    cal = calibration if calibration is not None else calibrate(search_path)
    native = _native(hardware, dtype or arch.dtype)
    factors, basis = cal.factors_for(hardware, native=native)
    model_ = build_model(
        arch,
        hardware,
        factors,
        dtype=dtype,
        kv_cache=kv_cache,
        batch_size=batch_size,
        gpus=gpus,
        cpus=cpus,
        max_context_tokens=max_context_tokens,
        factors_basis=basis,
    )
    key = (
        "interval",
        hardware,
        model_.architecture,
        kv_cache,
        model_.batch_size,
        model_.tensor_parallel,
        model_.cpus,
        model_.max_context_tokens,
    )
    if key not in cal._cache:
        cal._cache[key] = cal.interval_factors(hardware, model=model_)
    intervals: Intervals = cal._cache[key]
    notes = [f"factors {basis}", f"90 % interval from {intervals.basis}"]
    if hardware not in cal.classes and _kind(hardware) == "cpu":
        notes.append(
            "no CPU-only hardware has a profile: the factors come from GPUs and the estimate is a rough "
            "order of magnitude"
        )
    return replace(
        model_,
        energy_interval_factors=intervals.energy,
        runtime_interval_factors=intervals.runtime,
        notes=(*notes, *model_.notes),
    )
