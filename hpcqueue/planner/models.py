"""A cost model for every target: the planner's one answer to "what does a request cost there".

Three kinds, one interface (:class:`PlannerCostModel`):

* ``profile`` — :class:`ProfileCostModel`: the phase model fitted on a measured profile of the model on the
  target's hardware, measured with the target's engine (:mod:`hpcqueue.planner.costs`). Its 90 % interval
  comes from the profile's leave-one-point-out cross-validated residuals
  (:func:`hpcqueue.planner.evaluate.evaluate_profile`), and its energy split by domain from the profile's
  measured split.
* ``analytic`` — :class:`AnalyticCostModel`: no profile of this model on this hardware and engine; the
  roofline model of :mod:`hpcqueue.estimate.analytic`, calibrated on every measured profile and transferred
  to this hardware.
* ``calibrated`` — :class:`CalibratedCostModel`: one of the two above scaled, phase by phase, to the ledger's
  measured tasks of a target (``hpcqueue profiles calibrate``); stored as a profile revision.

hpcqueue's workers generate with a KV cache, so plans predict the cached regime (derived from profiles
measured without a cache, and said so in the model's notes); ``simulate`` keeps a profile's own regime.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

from hpcqueue.config import DEFAULT_ENGINE, Target
from hpcqueue.errors import HpcqueueError
from hpcqueue.planner.costs import CostModel, Prediction
from hpcqueue.profiles.store import Profile, find_profile, find_profiles_for, list_profiles, model_matches

FloatArray = npt.NDArray[np.float64]
Method = Literal["profile", "analytic", "calibrated"]
#: The coverage the prediction intervals are built for.
INTERVAL_LEVEL = 0.90
#: The context an analytic model is sized for at least (memory and tensor parallelism).
DEFAULT_CONTEXT_TOKENS = 4096


class PlannerCostModel(Protocol):
    """What the planner and the estimate ask of a cost model."""

    @property
    def profile_name(self) -> str: ...
    @property
    def method(self) -> Method: ...
    @property
    def input_range(self) -> tuple[float, float]: ...
    @property
    def output_range(self) -> tuple[float, float]: ...
    @property
    def energy_interval_factors(self) -> tuple[float, float]: ...
    @property
    def runtime_interval_factors(self) -> tuple[float, float]: ...
    @property
    def notes(self) -> tuple[str, ...]: ...

    def predict(
        self, n_in: npt.ArrayLike, n_out: npt.ArrayLike, batch_size: float | None = None
    ) -> Prediction:
        """Energy (J) and runtime (s) per request."""

    def energy_by_domain(
        self, n_in: npt.ArrayLike, n_out: npt.ArrayLike, batch_size: float | None = None
    ) -> dict[str, FloatArray]:
        """Energy per request split by domain (``gpu``, ``cpu``, ``dram``); empty when unknown."""


def combine_methods(methods: Iterable[str | None]) -> str | None:
    """One method for figures from several: the method when they agree, ``mixed`` when they differ."""
    seen = {m for m in methods if m is not None}
    if not seen:
        return None
    return seen.pop() if len(seen) == 1 else "mixed"


def log_interval(log_ratios: npt.ArrayLike, level: float = INTERVAL_LEVEL) -> tuple[float, float]:
    """Multiplicative bounds of a ``level`` prediction interval from held-out log ratios
    log(measured / predicted): a t prediction interval for one new log ratio,
    mean ± t_{(1+level)/2, n−1} · sd · √(1 + 1/n). Fewer than three ratios give no interval (NaN, NaN)."""
    values = np.asarray(log_ratios, dtype=float)
    values = values[np.isfinite(values)]
    n = values.size
    if n < 3:
        return (math.nan, math.nan)
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * float(values.std(ddof=1)) * math.sqrt(1 + 1 / n)
    centre = float(values.mean())
    return (math.exp(centre - half), math.exp(centre + half))


@dataclass(frozen=True)
class ProfileCostModel:
    """A profile's fitted cost model with its interval and domain split (see the module docstring)."""

    model: CostModel
    energy_interval_factors: tuple[float, float]
    runtime_interval_factors: tuple[float, float]
    domain_shares: dict[str, float] = field(default_factory=dict)
    method: Method = "profile"

    @property
    def profile_name(self) -> str:
        return self.model.profile_name

    @property
    def input_range(self) -> tuple[float, float]:
        return self.model.input_range

    @property
    def output_range(self) -> tuple[float, float]:
        return self.model.output_range

    @property
    def notes(self) -> tuple[str, ...]:
        return self.model.notes

    def predict(
        self, n_in: npt.ArrayLike, n_out: npt.ArrayLike, batch_size: float | None = None
    ) -> Prediction:
        return self.model.predict(n_in, n_out, batch_size)

    def energy_by_domain(
        self, n_in: npt.ArrayLike, n_out: npt.ArrayLike, batch_size: float | None = None
    ) -> dict[str, FloatArray]:
        if not self.domain_shares:
            return {}
        energy = self.predict(n_in, n_out, batch_size).energy_j
        return {domain: energy * share for domain, share in self.domain_shares.items()}

    def __getattr__(self, name: str) -> Any:
        # The fitted model's other attributes (fits, batch sizes, form …) read through.
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)


def profile_cost_model(profile: Profile, *, kv_cache: bool | None) -> ProfileCostModel:
    """The fitted cost model of ``profile`` in the regime asked for (see :meth:`CostModel.from_profile`),
    with its cross-validated interval and the profile's measured energy split."""
    model = CostModel.from_profile(profile, kv_cache=kv_cache)
    energy, runtime = _cross_validated_factors(profile)
    return ProfileCostModel(model, energy, runtime, _domain_shares(profile))


def _cross_validated_factors(profile: Profile) -> tuple[tuple[float, float], tuple[float, float]]:
    """The interval factors from the profile's held-out residuals, computed once per profile version."""
    from hpcqueue.planner.evaluate import held_out_log_ratios

    key = (profile.name, str(profile.path), _mtime(profile.path))
    if key not in _FACTORS:
        ratios = held_out_log_ratios(profile)
        _FACTORS[key] = (log_interval(ratios["energy"]), log_interval(ratios["runtime"]))
    return _FACTORS[key]


_FACTORS: dict[tuple[str, str, float], tuple[tuple[float, float], tuple[float, float]]] = {}


def _mtime(path: Path | None) -> float:
    if path is None:
        return 0.0
    try:
        return max((p.stat().st_mtime for p in Path(path).iterdir()), default=0.0)
    except OSError:
        return 0.0


def _domain_shares(profile: Profile) -> dict[str, float]:
    """Each domain's share of the profile's measured energy (over every point), where the profile splits
    it."""
    points = profile.points
    parts = {}
    for domain in ("gpu", "cpu"):
        values = points[f"energy_{domain}_j_mean"].to_numpy(dtype=float)
        if values.size and np.all(np.isfinite(values)):
            parts[domain] = float(values.sum())
    total = sum(parts.values())
    if not parts or total <= 0:
        return {}
    return {domain: value / total for domain, value in parts.items()}


def prediction_columns(
    tasks: pd.DataFrame, targets: Sequence[Target], cost_models: Mapping[str, PlannerCostModel | None]
) -> dict[str, np.ndarray]:
    """Per task of a plan: the 90 % interval of its predicted energy and runtime (the model's factors times
    the prediction), the method and basis (profile or analytic model) behind it, and the target's hardware —
    what the ledger keeps to compare with what is measured."""
    names = tasks["target"].to_numpy(dtype=object)
    energy = tasks["predicted_energy_j"].to_numpy(dtype=float)
    runtime = tasks["predicted_runtime_s"].to_numpy(dtype=float)
    out: dict[str, np.ndarray] = {
        "predicted_energy_low_j": np.full(len(tasks), np.nan),
        "predicted_energy_high_j": np.full(len(tasks), np.nan),
        "predicted_runtime_low_s": np.full(len(tasks), np.nan),
        "predicted_runtime_high_s": np.full(len(tasks), np.nan),
        "prediction_method": np.full(len(tasks), None, dtype=object),
        "prediction_basis": np.full(len(tasks), None, dtype=object),
        "hardware": np.full(len(tasks), None, dtype=object),
    }
    for target in targets:
        mine = names == target.name
        out["hardware"][mine] = target.hardware
        model = cost_models.get(target.name)
        if model is None:
            continue
        (e_lo, e_hi), (r_lo, r_hi) = model.energy_interval_factors, model.runtime_interval_factors
        out["predicted_energy_low_j"][mine] = energy[mine] * e_lo
        out["predicted_energy_high_j"][mine] = energy[mine] * e_hi
        out["predicted_runtime_low_s"][mine] = runtime[mine] * r_lo
        out["predicted_runtime_high_s"][mine] = runtime[mine] * r_hi
        out["prediction_method"][mine] = model.method
        out["prediction_basis"][mine] = model.profile_name
    return out


def resolve_cost_models(
    targets: Sequence[Target],
    model: str,
    search_path: Sequence[str | os.PathLike[str]] | None = None,
    notes: list[str] | None = None,
    *,
    kv_cache: bool | None = True,
    analytic: bool = True,
    model_path: str | os.PathLike[str] | None = None,
    cache_dir: Path | None = None,
    dtype: str | None = None,
    calibrated: bool = True,
    default_engine: str = DEFAULT_ENGINE,
) -> dict[str, PlannerCostModel | None]:
    """The cost model of each target (see the module docstring).

    From the target's ``profile`` setting when set (an unknown name is an error), else the best profile of
    ``model`` (id or alias) on the target's hardware measured with the target's engine
    (``find_profiles_for``'s order, a calibrated revision of this target first; none with
    ``calibrated=False``), else — when ``analytic`` — the analytic model of ``model``'s architecture (read
    from ``model_path``'s config.json, else found by name), else None. A target's engine is its own
    ``engine``, else ``default_engine`` (pass ``Settings.engine``). ``kv_cache`` is the regime predicted
    (True: hpcqueue's workers; None: each profile's own, as ``simulate`` uses).

    What was chosen and why is appended to ``notes`` (if given): several matching profiles, a profile named
    by the target but measured with another engine, an analytic model (naming the engine that had no
    profile), an architecture that cannot be read.
    """
    result: dict[str, PlannerCostModel | None] = {}
    architecture: Any = None
    architecture_error: str | None = None
    for target in targets:
        engine = target.engine or default_engine
        if target.profile:
            profile = find_profile(target.profile, search_path)
            result[target.name] = _from_profile(profile, kv_cache)
            if profile.meta.engine != engine and notes is not None:
                notes.append(
                    f"target {target.name!r} runs {engine}, but its profile {profile.name!r} was measured "
                    f"with {profile.meta.engine}: its predictions may not hold. Measure a {engine} profile "
                    f"with: hpcqueue profile {target.name} --engine {engine}"
                )
            _note_regime(result[target.name], target, notes)
            continue
        matches = _ranked(
            find_profiles_for(model, target.hardware, search_path, engine=engine), target, calibrated
        )
        if matches:
            result[target.name] = _from_profile(matches[0], kv_cache)
            if len(matches) > 1 and notes is not None:
                notes.append(
                    f"target {target.name!r}: {len(matches)} profiles match model {model!r} on hardware "
                    f"{target.hardware!r} ({', '.join(p.name for p in matches)}); using {matches[0].name!r}. "
                    f'Set profile = "<name>" in [targets.{target.name}] to choose another'
                )
            _note_regime(result[target.name], target, notes)
            continue
        if not analytic:
            result[target.name] = None
            continue
        if architecture is None and architecture_error is None:
            try:
                architecture = _architecture(model, model_path, cache_dir)
            except HpcqueueError as exc:
                architecture_error = str(exc)
        if architecture is None:
            result[target.name] = None
            if notes is not None:
                notes.append(
                    f"target {target.name!r}: no {engine} profile of {model!r} on {target.hardware!r} and no "
                    f"analytic estimate: {architecture_error}"
                )
            continue
        cost_model = analytic_cost_model(
            architecture, target, kv_cache=True if kv_cache is None else kv_cache, dtype=dtype
        )
        result[target.name] = cost_model
        if notes is not None:
            notes.append(
                f"target {target.name!r}: no {engine} profile of {model!r} on {target.hardware!r}; predicted "
                f"by the analytic model ({cost_model.profile_name})"
                + _other_engines(model, target, engine, search_path)
            )
    return result


def _other_engines(
    model: str, target: Target, engine: str, search_path: Sequence[str | os.PathLike[str]] | None
) -> str:
    """A clause naming the profiles of ``model`` on ``target``'s hardware measured with engines other than
    ``engine`` (the planner does not use them for the target), or "" when there are none."""
    others = [
        e
        for e in list_profiles(search_path)
        if e.meta.hardware == target.hardware and e.meta.engine != engine and model_matches(e.meta, model)
    ]
    if not others:
        return ""
    listed = ", ".join(f"{e.name} ({e.meta.engine})" for e in others)
    return (
        f". Not used, being of another engine: {listed}. Measure a {engine} profile with: hpcqueue profile "
        f'{target.name} --engine {engine}; or set profile = "<name>" in [targets.{target.name}] to use one'
    )


def _note_regime(model: Any, target: Target, notes: list[str] | None) -> None:
    """Say which regime a profile's model predicts when it is not simply what the profile measured."""
    if notes is not None and (model.regime != "measured" or model.kv_cache is None):
        notes.append(
            f"target {target.name!r}: profile {model.profile_name!r} predicts generation {model.regime_text}"
        )


def _ranked(profiles: list[Profile], target: Target, calibrated: bool = True) -> list[Profile]:
    """``profiles`` with this target's calibrated revisions first, newest first (left out unless
    ``calibrated``), then the others but calibrated revisions of other targets, in their order."""

    def revision(profile: Profile) -> int:
        calibration = profile.meta.extra.get("calibration") or {}
        return int(calibration.get("revision", 0)) if calibration.get("target") == target.name else 0

    own = sorted((p for p in profiles if revision(p)), key=revision, reverse=True) if calibrated else []
    return own + [p for p in profiles if p.meta.source != "calibrated"]


def _from_profile(profile: Profile, kv_cache: bool | None) -> PlannerCostModel:
    calibration = profile.meta.extra.get("calibration")
    if not calibration:
        return profile_cost_model(profile, kv_cache=kv_cache)
    # A calibrated revision (hpcqueue.planner.calibrate): fitted on its points like any profile, with the
    # interval of its calibration — not the fit of its own smooth points, which would claim too much.
    energy = [float(v) for v in calibration.get("energy_interval_factors", (math.nan, math.nan))]
    runtime = [float(v) for v in calibration.get("runtime_interval_factors", (math.nan, math.nan))]
    return ProfileCostModel(
        CostModel.from_profile(profile, kv_cache=kv_cache),
        (energy[0], energy[1]),
        (runtime[0], runtime[1]),
        _domain_shares(profile),
        method="calibrated",
    )


def _architecture(model: str, model_path: str | os.PathLike[str] | None, cache_dir: Path | None) -> Any:
    from hpcqueue.estimate import architecture_of, read_config

    if model_path is not None:
        return read_config(Path(model_path))
    return architecture_of(model, cache_dir=cache_dir)


def analytic_cost_model(
    architecture: Any, target: Target, *, kv_cache: bool = True, dtype: str | None = None
) -> AnalyticCostModel:
    """The analytic model of ``architecture`` on ``target``'s hardware: its GPUs (``gpus_per_node``, else the
    class's), CPUs (``cpus_per_task``) and dtype (``dtype``, else the target's; ``auto`` as a worker takes it:
    float32 on CPUs, the model's own dtype on GPUs). Errors (an unknown class, a dtype the hardware cannot
    run, a model that does not fit the node) are raised now, before anything is planned."""
    from hpcqueue.estimate import analytic_model
    from hpcqueue.meters.hardware import get_hardware

    hardware = get_hardware(target.hardware)
    wanted = dtype or target.dtype
    if wanted == "auto":
        wanted = architecture.dtype if hardware.gpus else "float32"
    options: dict[str, Any] = {
        "dtype": wanted,
        "kv_cache": kv_cache,
        "gpus": target.gpus_per_node or None,
        "cpus": target.cpus_per_task,
    }
    first = analytic_model(architecture, target.hardware, batch_size=1, **options)
    energy = first.energy_interval_factors or (math.nan, math.nan)
    runtime = first.runtime_interval_factors or (math.nan, math.nan)
    notes = list(first.notes)
    if first.tensor_parallel > 1:
        notes.append(f"split over {first.tensor_parallel} GPUs (tensor parallel): it does not fit one")
    regime = "with a KV cache" if kv_cache else "without a KV cache"
    name = f"analytic:{architecture.name}@{target.hardware}/{wanted}"
    return AnalyticCostModel(
        name=name,
        build=functools.partial(analytic_model, architecture, target.hardware, **options),
        energy_interval_factors=(float(energy[0]), float(energy[1])),
        runtime_interval_factors=(float(runtime[0]), float(runtime[1])),
        notes=(f"analytic roofline model {regime}", *notes),
        tensor_parallel=first.tensor_parallel,
        models={(1, DEFAULT_CONTEXT_TOKENS): first},
    )


@dataclass(frozen=True)
class AnalyticCostModel:
    """The analytic roofline model (:mod:`hpcqueue.estimate.analytic`) behind the planner's interface: one
    model per batch size asked for, built on first use."""

    name: str
    build: Any  # batch_size=... -> hpcqueue.estimate.AnalyticModel
    energy_interval_factors: tuple[float, float]
    runtime_interval_factors: tuple[float, float]
    notes: tuple[str, ...] = ()
    tensor_parallel: int = 1
    models: dict[tuple[int, int], Any] = field(default_factory=dict, compare=False, repr=False)
    method: Method = "analytic"

    @property
    def profile_name(self) -> str:
        return self.name

    @property
    def input_range(self) -> tuple[float, float]:
        return (1.0, math.inf)

    @property
    def output_range(self) -> tuple[float, float]:
        return (1.0, math.inf)

    def _estimate(self, n_in: npt.ArrayLike, n_out: npt.ArrayLike, batch_size: float | None) -> Any:
        """The analytic estimate at this batch size, from a model sized (memory, tensor parallel) for the
        longest context asked for, at least the default 4096 tokens (rounded up to a power of two)."""
        n, m = np.broadcast_arrays(np.asarray(n_in, dtype=float), np.asarray(n_out, dtype=float))
        n, m = np.maximum(n, 1.0), np.maximum(m, 1.0)
        longest = int((n + m).max()) if n.size else 1
        context = max(DEFAULT_CONTEXT_TOKENS, 1 << max(0, longest - 1).bit_length())
        key = (max(1, round(batch_size or 1)), context)
        if key not in self.models:
            self.models[key] = self.build(batch_size=key[0], max_context_tokens=context)
        return self.models[key].predict(n, m)

    def predict(
        self, n_in: npt.ArrayLike, n_out: npt.ArrayLike, batch_size: float | None = None
    ) -> Prediction:
        estimate = self._estimate(n_in, n_out, batch_size)
        none = np.zeros(estimate.energy_j.shape, dtype=bool)
        return Prediction(estimate.energy_j, estimate.runtime_s, none, none.copy())

    def energy_by_domain(
        self, n_in: npt.ArrayLike, n_out: npt.ArrayLike, batch_size: float | None = None
    ) -> dict[str, FloatArray]:
        return dict(self._estimate(n_in, n_out, batch_size).energy_by_domain_j)
