"""The grid of a profile sweep and the statistics of its trials: what to measure, when a point has been
measured enough, and how the metered calls become a profile's points.

Pure functions and frozen dataclasses, no model: :mod:`hpcqueue.profiles.sweep` runs the model over the grid.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from hpcqueue.config import DEFAULT_ENGINE, ENGINES
from hpcqueue.errors import HpcqueueError
from hpcqueue.profiles.store import POINT_COLUMNS, ci95_half_width

if TYPE_CHECKING:
    from hpcqueue.meters.base import Measurement

SweepName = Literal["input", "output"]


def doubling(start: int, stop: int, factor: int = 2) -> tuple[int, ...]:
    """``start, start·factor, …`` up to ``stop`` inclusive: the sweeps' token grids (8, 16, …, 2048)."""
    values = []
    value = start
    while value <= stop:
        values.append(value)
        value *= factor
    return tuple(values)


@dataclass(frozen=True)
class SweepConfig:
    """What to measure and when a point has been measured enough.

    The input sweep varies the prompt (``input_tokens``) at ``input_sweep_output_tokens`` generated tokens.
    The output sweep varies the generated tokens (``output_tokens``) at a prompt of
    ``output_sweep_input_tokens``. Every point runs at every batch size in ``batch_sizes`` up to
    ``max_batch_size``. Sizes above the first one that runs out of memory are skipped for that point and
    for longer points of the same sweep. Points longer than the model's context are skipped, and the
    profile records every skipped point and why.

    Each point gets ``warmup_trials`` calls that are not counted. Then it is repeated until the 95 % CI
    half-width of its mean runtime is at most ``ci_half_width_s``, with at least ``min_trials`` and at most
    ``max_trials`` calls. ``idle_s`` seconds of idle are metered before the sweep.

    ``engine`` runs the model: ``transformers`` (a point's batch size is prompts per ``generate`` call) or
    ``vllm`` (sequences submitted together, running concurrently). ``tensor_parallel_size``,
    ``gpu_memory_utilization`` and ``max_model_len`` are vLLM's settings (None: vLLM's default).
    """

    model: str = "hpcqueue-demo"
    input_tokens: tuple[int, ...] = doubling(8, 2048)
    input_sweep_output_tokens: int = 32
    output_tokens: tuple[int, ...] = doubling(8, 4096)
    output_sweep_input_tokens: int = 32
    batch_sizes: tuple[int, ...] = (1, 4, 16, 64)
    max_batch_size: int | None = None
    max_trials: int = 25
    min_trials: int = 3
    ci_half_width_s: float = 0.5
    warmup_trials: int = 1
    idle_s: float = 10.0
    seed: int = 0
    meter: str = "auto"
    nominal_power_w: float | None = None
    device: str = "auto"
    dtype: str = "auto"
    kv_cache: bool = True
    preset: str = "full"
    engine: str = DEFAULT_ENGINE
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None

    def __post_init__(self) -> None:
        problems = []
        for name in ("input_tokens", "output_tokens", "batch_sizes"):
            values = getattr(self, name)
            if not values or any(int(v) < 1 for v in values):
                problems.append(f"{name} must list whole numbers >= 1, got {values!r}")
        for name in ("input_sweep_output_tokens", "output_sweep_input_tokens", "min_trials", "max_trials"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.min_trials > self.max_trials:
            problems.append(f"min_trials ({self.min_trials}) exceeds max_trials ({self.max_trials})")
        if self.warmup_trials < 0 or self.idle_s < 0 or self.ci_half_width_s <= 0:
            problems.append("warmup_trials and idle_s must be >= 0 and ci_half_width_s > 0")
        if self.engine not in ENGINES:
            problems.append(f"engine {self.engine!r} is not known; valid values: {', '.join(ENGINES)}")
        if self.engine == "vllm" and not self.kv_cache:
            problems.append(
                "vLLM always generates with its KV cache: kv_cache=False needs engine transformers"
            )
        if self.tensor_parallel_size < 1:
            problems.append(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size!r}")
        if problems:
            raise HpcqueueError("invalid sweep configuration: " + "; ".join(problems))

    @classmethod
    def quick(cls, model: str = "hpcqueue-demo", **overrides: Any) -> SweepConfig:
        """A small grid that finishes in minutes: prompts 8, 64 and 512 tokens, outputs 8 and 64,
        batch sizes 1 and 4, at most 5 trials per point, 2 s of idle."""
        settings: dict[str, Any] = {
            "model": model,
            "input_tokens": (8, 64, 512),
            "output_tokens": (8, 64),
            "batch_sizes": (1, 4),
            "max_trials": 5,
            "idle_s": 2.0,
            "preset": "quick",
        }
        return cls(**{**settings, **overrides})

    def effective_batch_sizes(self) -> tuple[int, ...]:
        """``batch_sizes`` sorted, without those above ``max_batch_size``."""
        sizes = sorted({int(b) for b in self.batch_sizes})
        return tuple(b for b in sizes if self.max_batch_size is None or b <= self.max_batch_size)

    def describe(self) -> str:
        """The grid in one line, for a profile's notes."""
        return (
            f"{self.preset} sweep: input sweep prompts {list(self.input_tokens)} tokens at "
            f"{self.input_sweep_output_tokens} output tokens; output sweep outputs "
            f"{list(self.output_tokens)} tokens at a {self.output_sweep_input_tokens}-token prompt; "
            "batch sizes "
            f"{list(self.effective_batch_sizes())}; {self.warmup_trials} warm-up call(s) per point dropped; "
            f"{self.min_trials}-{self.max_trials} trials per point until the 95 % CI half-width of runtime "
            f"<= {self.ci_half_width_s} s; idle metered for {self.idle_s} s; seed {self.seed}"
        )


@dataclass(frozen=True)
class SweepPoint:
    """One grid point: which sweep, the prompt and output token counts, and prompts per call."""

    sweep: SweepName
    input_tokens: int
    output_tokens: int
    batch_size: int

    @property
    def swept_tokens(self) -> int:
        return self.input_tokens if self.sweep == "input" else self.output_tokens

    def label(self) -> str:
        return f"{self.sweep} sweep in={self.input_tokens} out={self.output_tokens} batch={self.batch_size}"


def grid_points(config: SweepConfig) -> list[SweepPoint]:
    """Every point of both sweeps at every batch size, in grid order (not yet shuffled)."""
    points = [
        SweepPoint("input", int(n), config.input_sweep_output_tokens, b)
        for n in sorted(set(config.input_tokens))
        for b in config.effective_batch_sizes()
    ]
    points += [
        SweepPoint("output", config.output_sweep_input_tokens, int(m), b)
        for m in sorted(set(config.output_tokens))
        for b in config.effective_batch_sizes()
    ]
    return points


def shuffled(points: Sequence[SweepPoint], seed: int) -> list[SweepPoint]:
    """The points in a random order that depends only on ``seed``, so a sweep can be repeated exactly."""
    order = list(points)
    random.Random(seed).shuffle(order)
    return order


# ----------------------------------------------------------------------------------------- the trials


@dataclass(frozen=True)
class Trial:
    """One metered ``generate`` call.

    ``energy_raw_j`` holds what the meter reported, per domain. ``idle_j`` is the idle power of each domain
    times ``duration_s``. ``tokens`` counts prompt and generated tokens over all rows of the call.
    """

    duration_s: float
    energy_raw_j: dict[str, float]
    idle_j: dict[str, float]
    tokens: int
    method: str = "estimated"
    meter: str = ""
    started_at: float = 0.0

    @property
    def energy_j(self) -> dict[str, float]:
        """Energy per domain with idle power subtracted."""
        return {d: e - self.idle_j.get(d, 0.0) for d, e in self.energy_raw_j.items()}


def enough_trials(runtimes_s: Sequence[float], config: SweepConfig) -> bool:
    """Whether a point is measured enough: ``max_trials`` reached, or at least ``min_trials`` and the 95 %
    CI half-width of the mean runtime at most ``ci_half_width_s`` (the paper's rule)."""
    n = len(runtimes_s)
    if n >= config.max_trials:
        return True
    if n < max(config.min_trials, 2):
        return False
    std = float(np.std(np.asarray(runtimes_s, dtype=float), ddof=1))
    return float(ci95_half_width(std, n)) <= config.ci_half_width_s


def run_trials(trial: Callable[[], Trial], config: SweepConfig) -> tuple[list[Trial], list[Trial]]:
    """Call ``trial`` for the warm-up, then until ``enough_trials``; returns (warm-up trials, trials)."""
    warmups = [trial() for _ in range(config.warmup_trials)]
    trials: list[Trial] = []
    while not enough_trials([t.duration_s for t in trials], config):
        trials.append(trial())
    return warmups, trials


def idle_power_w(measurement: Measurement) -> dict[str, float]:
    """Idle power per domain from a measurement of an idle interval (joules / seconds)."""
    if measurement.duration_s <= 0:
        return {domain: 0.0 for domain in measurement.energy_j}
    return {domain: joules / measurement.duration_s for domain, joules in measurement.energy_j.items()}


def idle_energy_j(power_w: dict[str, float], domains: Iterable[str], duration_s: float) -> dict[str, float]:
    """The idle share of an interval per domain: idle power × ``duration_s`` (0 for a domain without an
    idle reading)."""
    return {domain: power_w.get(domain, 0.0) * duration_s for domain in domains}


# ------------------------------------------------------------------------------------- aggregation


def domain_group(domain: str) -> str:
    """``gpu:0``, ``gpu:1`` … → ``gpu``; other domains keep their name."""
    return "gpu" if domain.split(":")[0] == "gpu" else domain


def trials_table(rows: Sequence[tuple[SweepPoint, int, bool, Trial]]) -> pd.DataFrame:
    """One row per call: the point, the trial index, whether it was a warm-up, duration and tokens, raw and
    idle-subtracted energy (total and per domain group: ``cpu``, ``gpu``, ``dram`` …)."""
    records = []
    for point, index, warmup, trial in rows:
        record: dict[str, Any] = {
            **dataclasses.asdict(point),
            "trial": index,
            "warmup": warmup,
            "started_at": trial.started_at,
            "duration_s": trial.duration_s,
            "total_tokens": trial.tokens,
            "method": trial.method,
            "meter": trial.meter,
            "energy_raw_j": sum(trial.energy_raw_j.values()),
            "idle_j": sum(trial.idle_j.values()),
            "energy_j": sum(trial.energy_j.values()),
        }
        for domain, joules in trial.energy_raw_j.items():
            group = domain_group(domain)
            record[f"energy_{group}_raw_j"] = record.get(f"energy_{group}_raw_j", 0.0) + joules
            net = joules - trial.idle_j.get(domain, 0.0)
            record[f"energy_{group}_j"] = record.get(f"energy_{group}_j", 0.0) + net
        records.append(record)
    return pd.DataFrame.from_records(records)


def summarise(trials: pd.DataFrame) -> pd.DataFrame:
    """Per point (warm-ups dropped): trials, means and 95 % CI half-widths, in the columns of
    ``points.csv`` (``store.POINT_COLUMNS``), followed by ``energy_raw_j_*``, ``idle_j_mean`` and every
    other metered domain (``energy_dram_j_*`` …), which ``points.csv`` has no column for."""
    key = ["sweep", "input_tokens", "output_tokens", "batch_size"]
    measured = trials[~trials["warmup"].astype(bool)]
    grouped = measured.groupby(key, sort=True)
    out = grouped.size().rename("trials").reset_index()
    n = out["trials"].to_numpy()
    quantities = {"duration_s": "runtime_s", "energy_j": "energy_j", "energy_raw_j": "energy_raw_j"}
    for column in sorted(measured.columns):
        if column.startswith("energy_") and column.endswith("_j") and column not in quantities:
            quantities[column] = column  # energy_cpu_j, energy_cpu_raw_j, energy_gpu_j, energy_dram_j ...
    for column, name in quantities.items():
        out[f"{name}_mean"] = grouped[column].mean().to_numpy()
        out[f"{name}_ci95"] = ci95_half_width(grouped[column].std(ddof=1).to_numpy(), n)
    out["idle_j_mean"] = grouped["idle_j"].mean().to_numpy()
    out["total_tokens_mean"] = grouped["total_tokens"].mean().to_numpy()
    for column in POINT_COLUMNS:
        if column not in out:
            out[column] = np.nan
    extra = [c for c in out.columns if c not in POINT_COLUMNS]
    return out[[*POINT_COLUMNS, *extra]]
