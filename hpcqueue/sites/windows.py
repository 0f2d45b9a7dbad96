"""The best windows ahead: the run of consecutive slots in which a kWh of IT energy costs least on average.

For each rate of :class:`~hpcqueue.sites.site.PerItKwh` (carbon, water, cost: named as the planner's
objectives), :func:`best_windows` finds the ``slots``-long window with the lowest mean, and how that compares
with starting in the first slot. A window that touches an unknown value is never chosen: a gap in the data is
not a clean hour. Of equal means the earliest window wins, as the planner breaks ties. The means come from one
cumulative sum, so a year of 15-minute slots is searched in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hpcqueue.sites.site import PerItKwh
from hpcqueue.sites.tables import FloatArray

#: The rate of :class:`PerItKwh` behind each objective :func:`best_windows` searches.
WINDOW_METRICS: dict[str, str] = {
    "carbon": "carbon_g_per_it_kwh",
    "water": "water_l_per_it_kwh",
    "cost": "cost_usd_per_it_mwh",
}
#: Means closer than this share of the largest one are equal: a cumulative sum rounds in the last digits, and
#: the earliest of equal windows must win.
_TIE = 1e-9


@dataclass(frozen=True)
class Window:
    """The lowest-mean window: slots ``first_slot`` to ``first_slot + slots`` (exclusive) of the values
    searched. ``mean_at_start`` is the mean of the window that starts in the first slot, ``None`` when that
    window touches an unknown value."""

    first_slot: int
    slots: int
    mean: float
    mean_at_start: float | None

    @property
    def lower_than_at_start_pct(self) -> float | None:
        """How much lower :attr:`mean` is than :attr:`mean_at_start`, in percent of it; ``None`` when that
        says nothing: the mean at the start is unknown, or not positive (a negative price can make it so)."""
        if self.mean_at_start is None or not self.mean_at_start > 0:
            return None
        return 100.0 * (1.0 - self.mean / self.mean_at_start)


def window_means(values: npt.ArrayLike, slots: int) -> FloatArray:
    """The mean of every ``slots``-long window of ``values``, by its first slot (``len(values) - slots + 1``
    of them); NaN for a window that touches an unknown (NaN or infinite) value.

    Raises :class:`ValueError` when ``values`` is not one-dimensional or the window does not fit in it.
    """
    series = np.asarray(values, dtype=float)
    if series.ndim != 1:
        raise ValueError(f"window means need one value per slot, got an array of shape {series.shape}")
    if not 1 <= slots <= series.size:
        raise ValueError(
            f"a window of {slots} slot(s) does not fit in {series.size} slot(s); give 1 to {series.size}"
        )
    unknown = ~np.isfinite(series)
    total = np.concatenate(([0.0], np.cumsum(np.where(unknown, 0.0, series))))
    gaps = np.concatenate(([0], np.cumsum(unknown)))
    means = (total[slots:] - total[:-slots]) / slots
    return np.where(gaps[slots:] > gaps[:-slots], np.nan, means)


def best_window(values: npt.ArrayLike, slots: int) -> Window | None:
    """The ``slots``-long window of ``values`` with the lowest mean (the earliest of equals), or ``None`` when
    every window touches an unknown value. Raises :class:`ValueError` as :func:`window_means` does."""
    series = np.asarray(values, dtype=float)
    means = window_means(series, slots)
    known = ~np.isnan(means)
    if not known.any():
        return None
    lowest = float(means[known].min())
    tolerance = _TIE * float(np.abs(means[known]).max())
    first = int(np.argmax(known & (means <= lowest + tolerance)))
    # The reported means are summed afresh, so a window's mean does not carry the cumulative sum's rounding.
    return Window(
        first_slot=first,
        slots=slots,
        mean=float(series[first : first + slots].mean()),
        mean_at_start=float(series[:slots].mean()) if known[0] else None,
    )


def best_windows(rates: PerItKwh, slots: int) -> dict[str, Window]:
    """For each objective of :data:`WINDOW_METRICS` whose rate is known, its best ``slots``-long window
    (:func:`best_window`); an objective whose every window touches an unknown value is left out."""
    found: dict[str, Window] = {}
    for metric, rate in WINDOW_METRICS.items():
        values = getattr(rates, rate)
        window = None if values is None else best_window(values, slots)
        if window is not None:
            found[metric] = window
    return found
