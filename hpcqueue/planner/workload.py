"""The planner's two tables: requests grouped into token-count classes (``Workload``), and the predicted
energy and runtime of every class on every target with the scales of the cost (``CostTable``).

The cost of serving request *i* on target *t* is the paper's weighted sum

    C[i, t] = λ · E[i, t] / Ē + (1 − λ) · R[i, t] / R̄

where E and R are the cost model's predicted energy (J) and runtime (s) of the request on the target,
and Ē and R̄ are the workload's mean predicted energy and runtime per request, averaged over every target
that has a cost model. Dividing by these means makes both terms dimensionless and of the same size for a
typical request, so λ = 1 is pure energy, λ = 0 pure runtime, and λ = 0.5 weighs "one typical request's
energy" the same as "one typical request's runtime". Because Ē and R̄ do not depend on the policy, every
policy is judged by the same yardstick, and at λ = 1 (or 0) cost ratios equal energy (or runtime) ratios.

Requests with the same prompt and output token counts cost the same everywhere, so the planner works on these
*classes* (a 1M-request trace has far fewer): predictions, threshold search and the optimal assignment all run
per class, and only the final assignment is per request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from hpcqueue.config import Target
from hpcqueue.errors import ConfigError, PlanningError
from hpcqueue.planner.models import PlannerCostModel

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Workload:
    """Requests as token counts, grouped into classes of equal (prompt, output) counts.

    ``request_class[i]`` is the class of request *i*; class *k* has ``class_in[k]`` prompt and
    ``class_out[k]`` output tokens and ``counts[k]`` requests.
    """

    n_in: IntArray
    n_out: IntArray
    request_class: IntArray
    class_in: IntArray
    class_out: IntArray
    counts: IntArray

    @classmethod
    def from_tokens(cls, n_in: npt.ArrayLike, n_out: npt.ArrayLike) -> Workload:
        n_in_a = np.asarray(n_in, dtype=np.int64).ravel()
        n_out_a = np.asarray(n_out, dtype=np.int64).ravel()
        if n_in_a.shape != n_out_a.shape:
            raise PlanningError(f"{len(n_in_a)} prompt token counts but {len(n_out_a)} output token counts")
        if n_in_a.size and (n_in_a.min() < 0 or n_out_a.min() < 0):
            raise PlanningError("token counts must not be negative")
        if n_in_a.size and max(int(n_in_a.max()), int(n_out_a.max())) >= 2**31:
            raise PlanningError("token counts must be below 2**31")
        key = (n_in_a << 32) | n_out_a
        unique, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        return cls(
            n_in=n_in_a,
            n_out=n_out_a,
            request_class=inverse.astype(np.int64).ravel(),
            class_in=unique >> 32,
            class_out=unique & (2**32 - 1),
            counts=counts.astype(np.int64),
        )

    def __len__(self) -> int:
        return len(self.n_in)

    @property
    def n_classes(self) -> int:
        return len(self.counts)


@dataclass(frozen=True)
class CostTable:
    """Predicted energy and runtime of every class (rows) on every target (columns), and the scales of λ.

    Columns of targets without a cost model are NaN (``modelled`` is False there).
    """

    names: list[str]
    energy_j: FloatArray
    runtime_s: FloatArray
    extrapolated: BoolArray
    floored: BoolArray
    modelled: BoolArray
    slots: IntArray
    energy_scale_j: float
    runtime_scale_s: float
    profiles: dict[str, str | None] = field(default_factory=dict)
    ranges: dict[str, str] = field(default_factory=dict)
    hardware: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        workload: Workload,
        targets: Sequence[Target],
        cost_models: Mapping[str, PlannerCostModel | None],
        batch_size: int | None = None,
    ) -> CostTable:
        """Predict every class on every target, at each target's ``batch_size`` (else ``batch_size``, else
        the profile's own): the prompts per ``generate`` call a worker there will use."""
        names = check_targets(targets)
        k, t = workload.n_classes, len(targets)
        energy = np.full((k, t), np.nan)
        runtime = np.full((k, t), np.nan)
        extrapolated = np.zeros((k, t), dtype=bool)
        floored = np.zeros((k, t), dtype=bool)
        modelled = np.zeros(t, dtype=bool)
        profiles: dict[str, str | None] = {}
        ranges: dict[str, str] = {}
        for j, name in enumerate(names):
            model = cost_models.get(name)
            profiles[name] = model.profile_name if model is not None else None
            if model is None:
                continue
            modelled[j] = True
            (in_lo, in_hi), (out_lo, out_hi) = model.input_range, model.output_range
            ranges[name] = f"prompt {in_lo:g}-{in_hi:g}, output {out_lo:g}-{out_hi:g} tokens"
            if k:
                per_call = targets[j].batch_size or batch_size
                prediction = model.predict(workload.class_in, workload.class_out, batch_size=per_call)
                energy[:, j] = prediction.energy_j
                runtime[:, j] = prediction.runtime_s
                extrapolated[:, j] = prediction.extrapolated
                floored[:, j] = prediction.floored
        return cls(
            names=names,
            energy_j=energy,
            runtime_s=runtime,
            extrapolated=extrapolated,
            floored=floored,
            modelled=modelled,
            slots=np.array([t.array_parallelism for t in targets], dtype=np.int64),
            energy_scale_j=scale_of(energy[:, modelled], workload.counts),
            runtime_scale_s=scale_of(runtime[:, modelled], workload.counts),
            profiles=profiles,
            ranges=ranges,
            hardware={t.name: t.hardware for t in targets},
        )

    def weighted(self, multiplier: npt.ArrayLike) -> CostTable:
        """This table with each target's energy multiplied by ``multiplier`` (T,) — what the routing sees
        when a site's rates weigh its energy (see :func:`hpcqueue.planner.schedule.routing_view`). The
        energy scale stays this table's, so λ keeps its meaning; all ones returns ``self``."""
        factor = np.asarray(multiplier, dtype=float)
        if np.all(factor == 1.0):
            return self
        return replace(self, energy_j=self.energy_j * factor[None, :])

    def cost(self, lam: float) -> FloatArray:
        """C = λ·E/Ē + (1−λ)·R/R̄ per class and target (NaN where a target has no cost model)."""
        check_lambda(lam)
        energy_term = self.energy_j / self.energy_scale_j
        runtime_term = self.runtime_s / self.runtime_scale_s
        if lam == 1.0:
            return energy_term
        if lam == 0.0:
            return runtime_term
        return lam * energy_term + (1.0 - lam) * runtime_term


def check_targets(targets: Sequence[Target]) -> list[str]:
    if not targets:
        raise ConfigError("no targets to plan for: declare at least one [targets.NAME] table in the config")
    names = [t.name for t in targets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"target name(s) used twice: {', '.join(duplicates)}; target names must be unique")
    return names


def check_lambda(lam: float) -> None:
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"lambda must lie in [0, 1] (1: energy only, 0: runtime only), got {lam}")


def scale_of(values: FloatArray, counts: IntArray) -> float:
    """Mean per request over the given target columns; 1.0 when there is nothing to average."""
    if values.size == 0 or counts.sum() == 0:
        return 1.0
    mean = float(np.average(values.mean(axis=1), weights=counts))
    return mean if np.isfinite(mean) and mean > 0 else 1.0
