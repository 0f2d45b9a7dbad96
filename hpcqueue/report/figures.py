"""The admin report's plots, as inline SVG text (matplotlib, no display, no files): the report stays one
self-contained HTML file.

Each function takes a frame of :mod:`hpcqueue.ledger.views` and returns the ``<svg>`` element, or None when
there is nothing to plot (the report then says so instead of drawing empty axes). Figures are built on
``matplotlib.figure.Figure`` directly, never through pyplot, so no global backend or state is touched.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd

#: One colour per target, in the order targets first appear (matplotlib's colour-blind-safe cycle).
_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
_RC: Any = {"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False}


def stacked_by_day(daily: pd.DataFrame, column: str, *, scale: float, unit: str, title: str) -> str | None:
    """Bars of ``column`` per day, stacked by target, in ``unit`` (``column`` / ``scale``). Days or targets
    whose figure is unknown are left out; None when no figure is known."""
    known = daily[daily[column].notna()]
    if known.empty:
        return None
    table = known.pivot_table(index="day", columns="target", values=column, aggfunc="sum").fillna(0.0)
    table = table / scale
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    with rc_context(_RC):
        figure = Figure(figsize=(7.0, 2.6), layout="constrained")
        axes = figure.add_subplot()
        x = np.arange(len(table.index))
        bottom = np.zeros(len(table.index))
        for i, target in enumerate(table.columns):
            values = table[target].to_numpy()
            axes.bar(
                x, values, bottom=bottom, label=str(target), color=_COLOURS[i % len(_COLOURS)], width=0.7
            )
            bottom += values
        axes.set_xticks(
            x, list(table.index), rotation=30 if len(x) > 6 else 0, ha="right" if len(x) > 6 else "center"
        )
        axes.set_ylabel(unit)
        axes.set_title(title, loc="left")
        axes.legend(title="target", fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return _svg(figure)


def predicted_vs_measured(predictions: pd.DataFrame) -> str | None:
    """Each compared task's predicted generation energy (with its 90 % interval) against what it measured, on
    log axes with the line predicted = measured; None when no task was compared."""
    if predictions.empty:
        return None
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    with rc_context(_RC):
        figure = Figure(figsize=(5.0, 3.6), layout="constrained")
        axes = figure.add_subplot()
        measured = predictions["measured_energy_j"].to_numpy(dtype=float)
        guess = predictions["predicted_energy_j"].to_numpy(dtype=float)
        low = predictions["predicted_energy_low_j"].to_numpy(dtype=float)
        high = predictions["predicted_energy_high_j"].to_numpy(dtype=float)
        for i, target in enumerate(sorted(predictions["target"].astype(str).unique())):
            chosen = (predictions["target"].astype(str) == target).to_numpy()
            has_interval = chosen & ~np.isnan(low) & ~np.isnan(high)
            colour = _COLOURS[i % len(_COLOURS)]
            if has_interval.any():
                axes.errorbar(
                    measured[has_interval],
                    guess[has_interval],
                    yerr=[guess[has_interval] - low[has_interval], high[has_interval] - guess[has_interval]],
                    fmt="none",
                    ecolor=colour,
                    alpha=0.4,
                    lw=1,
                )
            axes.scatter(measured[chosen], guess[chosen], s=14, color=colour, label=target, zorder=3)
        values = np.concatenate([measured, guess, low[~np.isnan(low)], high[~np.isnan(high)]])
        values = values[values > 0]
        lo, hi = float(values.min()) / 1.5, float(values.max()) * 1.5
        axes.plot([lo, hi], [lo, hi], color="#555555", lw=1, ls="--", label="predicted = measured")
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlim(lo, hi)
        axes.set_ylim(lo, hi)
        axes.set_xlabel("measured generation energy (J)")
        axes.set_ylabel("predicted (J), 90 % interval")
        axes.legend(fontsize=8, frameon=False)
        return _svg(figure)


def _svg(figure: Any) -> str:
    """The figure as an ``<svg>`` element (no XML prolog or doctype), scaled to its container."""
    buffer = io.StringIO()
    # No metadata: no RDF block, no creation date (the same data gives the same page).
    figure.savefig(buffer, format="svg", metadata=dict.fromkeys(("Creator", "Date", "Format", "Type")))
    text = buffer.getvalue()
    start = text.index("<svg")
    return text[start:]
