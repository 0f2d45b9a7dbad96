"""Plots of profiles in the style of Wilkins et al. (2024), Figs. 1–2.

For each sweep (input tokens varied, output tokens varied), one figure with three panels against the swept
token count on a log-2 axis: runtime (s), throughput (tokens/s) and energy per token (J/token), one line per
profile (and batch size, when a profile measured several), error bars from the profile's 95 % CIs.

Tokens per call are the point's nominal ``(input_tokens + output_tokens) × batch_size``, the same count the
planner's energy-per-token comparisons use (``docs/profiles.md``). matplotlib is imported inside
:func:`plot_profiles` with the Agg backend, so importing this module is cheap and needs no display.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hpcqueue.errors import PlanningError
from hpcqueue.fileio import atomic_write_bytes
from hpcqueue.profiles.store import SWEEPS, Profile, Sweep

PANELS: tuple[tuple[str, str], ...] = (
    ("runtime_s", "runtime (s)"),
    ("throughput_tokens_per_s", "throughput (tokens/s)"),
    ("energy_j_per_token", "energy per token (J/token)"),
)
SWEEP_TITLES = {
    "input": "input sweep: prompt length varied",
    "output": "output sweep: output length varied",
}


def sweep_series(profile: Profile, sweep: Sweep) -> pd.DataFrame:
    """The plotted quantities of one sweep of ``profile``, one row per point, sorted by the swept count.

    Columns: ``batch_size``, ``tokens`` (the swept count), ``fixed_tokens`` (the other count),
    ``tokens_per_call``, and for each of ``runtime_s``, ``throughput_tokens_per_s``, ``energy_j_per_token``
    the value and its ``_ci95`` half-width (NaN when the profile has no CI, e.g. one trial).
    Throughput's CI is propagated to first order from the runtime's: ``throughput · ci(R) / R``.
    """
    rows = profile.sweep(sweep)
    swept, other = (
        ("input_tokens", "output_tokens") if sweep == "input" else ("output_tokens", "input_tokens")
    )
    tokens_per_call = (rows["input_tokens"] + rows["output_tokens"]).to_numpy(float) * rows[
        "batch_size"
    ].to_numpy(float)
    runtime = rows["runtime_s_mean"].to_numpy(float)
    runtime_ci = rows["runtime_s_ci95"].to_numpy(float)
    throughput = tokens_per_call / runtime
    out = pd.DataFrame(
        {
            "batch_size": rows["batch_size"].to_numpy(np.int64),
            "tokens": rows[swept].to_numpy(np.int64),
            "fixed_tokens": rows[other].to_numpy(np.int64),
            "tokens_per_call": tokens_per_call,
            "runtime_s": runtime,
            "runtime_s_ci95": runtime_ci,
            "throughput_tokens_per_s": throughput,
            "throughput_tokens_per_s_ci95": throughput * runtime_ci / runtime,
            "energy_j_per_token": rows["energy_j_mean"].to_numpy(float) / tokens_per_call,
            "energy_j_per_token_ci95": rows["energy_j_ci95"].to_numpy(float) / tokens_per_call,
        }
    )
    return out.sort_values(["batch_size", "tokens"], kind="stable").reset_index(drop=True)


def plot_profiles(
    profiles: Sequence[Profile], out_dir: str | os.PathLike[str], *, dpi: int = 120
) -> list[Path]:
    """Write ``input-sweep.png`` and ``output-sweep.png`` (three panels each) to ``out_dir``; returns
    the paths written.

    A sweep that none of the profiles measured is not drawn. Files are written atomically.
    """
    if not profiles:
        raise PlanningError("no profiles to plot; name some (hpcqueue profiles list shows them)")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    labels = _labels(profiles)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for sweep in SWEEPS:
        series = [(label, sweep_series(p, sweep)) for p, label in zip(profiles, labels, strict=True)]
        series = [(label, frame) for label, frame in series if not frame.empty]
        if not series:
            continue
        fig, axes = plt.subplots(1, len(PANELS), figsize=(16, 5.2), layout="constrained")
        fixed = sorted({int(v) for _, frame in series for v in frame["fixed_tokens"].unique()})
        other = "output" if sweep == "input" else "input"
        fixed_text = ", ".join(str(v) for v in fixed[:6]) + (" …" if len(fixed) > 6 else "")
        fig.suptitle(f"{SWEEP_TITLES[sweep]} ({other} tokens fixed at {fixed_text})")
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        markers = "osD^v<>ph*"
        lines = [
            (label if frame["batch_size"].nunique() == 1 else f"{label}, batch {batch_size}", rows)
            for label, frame in series
            for batch_size, rows in frame.groupby("batch_size", sort=True)
        ]
        for i, (name, rows) in enumerate(lines):
            for ax, (column, _) in zip(axes, PANELS, strict=True):
                ci = rows[f"{column}_ci95"].to_numpy(float)
                ax.errorbar(
                    rows["tokens"],
                    rows[column],
                    yerr=np.where(np.isfinite(ci), ci, 0.0),
                    label=name,
                    color=colours[i % len(colours)],
                    marker=markers[(i // len(colours)) % len(markers)],
                    markersize=4,
                    linewidth=1.4,
                    capsize=3,
                )
        for ax, (_, ylabel) in zip(axes, PANELS, strict=True):
            ax.set_xscale("log", base=2)
            ax.set_xlabel(f"{sweep} tokens")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="major", alpha=0.3)
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncol=min(4, len(names)), fontsize="small")
        path = out / f"{sweep}-sweep.png"
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
        plt.close(fig)
        atomic_write_bytes(path, buffer.getvalue())
        written.append(path)
    return written


def _labels(profiles: Sequence[Profile]) -> list[str]:
    """Line labels: the system (or hardware) when all profiles are of one model, else model and system;
    the profile name where that would still be ambiguous."""
    one_model = len({p.meta.model for p in profiles}) == 1
    labels = []
    for p in profiles:
        where = p.meta.system or p.meta.hardware
        labels.append(where if one_model else f"{p.meta.model.rsplit('/', 1)[-1]} · {where}")
    if len(set(labels)) < len(labels):
        labels = [p.name for p in profiles]
    return labels
