"""The figure of ``hpcqueue sites plot``: a site's factors over the slots ahead, and its PUE and WUE models.

Time panels, top to bottom: carbon intensity and carbon per IT kWh; temperature and PUE; WUE and water per IT
kWh; price and available power. A curve the site does not state is left out, and a panel left with none.
Each slot's value is drawn as a step over the slot, as the planner holds it, and every curve is labelled with
its kind (series, assumed, derived, model). Below them, PUE and WUE (at :data:`CURVE_RH_PCT` relative
humidity) against the outdoor temperature. matplotlib is imported inside :func:`plot_site` with the Agg
backend, so importing this module is cheap and needs no display.
"""

from __future__ import annotations

import io
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from hpcqueue.fileio import atomic_write_bytes
from hpcqueue.sites.site import PerItKwh, Site, SlotFactors
from hpcqueue.sites.tables import FloatArray, TimeArray

#: The relative humidity at which the WUE curve is drawn against the temperature.
CURVE_RH_PCT = 60.0
CURVE_TEMPERATURES_C = (-10.0, 45.0)

#: A curve: the per-slot array of :class:`SlotFactors` or :class:`PerItKwh` it draws, what it is, and its
#: colour (an index into matplotlib's colour cycle).
_Curve = tuple[str, str, int]
#: An axis as drawn: its unit, and its known curves as (values, label, colour).
_Axis = tuple[str, list[tuple[FloatArray, str, int]]]
#: The time panels, top to bottom. A panel has one axis or two (a twin on the right), each its unit and its
#: curves; an axis whose curves are all unknown gives its place to its twin.
PANELS: tuple[tuple[tuple[str, tuple[_Curve, ...]], ...], ...] = (
    (
        (
            "gCO2eq per kWh",
            (
                ("carbon_g_per_kwh", "grid carbon intensity", 0),
                ("carbon_g_per_it_kwh", "carbon per IT kWh", 3),
            ),
        ),
    ),
    (("°C", (("temperature_c", "outdoor temperature", 1),)), ("PUE", (("pue", "PUE", 2),))),
    (
        (
            "L per IT kWh",
            (("wue_l_per_kwh", "WUE, on site", 9), ("water_l_per_it_kwh", "water per IT kWh", 0)),
        ),
    ),
    (
        ("USD/MWh", (("price_usd_per_mwh", "electricity price", 4),)),
        ("kW", (("power_kw", "available power", 2),)),
    ),
)


def plot_site(
    site: Site, starts: TimeArray, slot_s: float, path: str | os.PathLike[str], *, dpi: int = 110
) -> Path:
    """Write the figure of ``site`` on the slots ``[start, start + slot_s)`` (UTC) to ``path`` as a PNG,
    atomically; returns the path. Times on the axes are in the site's time zone.

    Raises :class:`~hpcqueue.errors.SiteDataError` naming the file when a series does not cover the slots
    (before anything is written).
    """
    starts = np.asarray(starts).astype("datetime64[s]").reshape(-1)
    if starts.size == 0:
        raise ValueError("no slots to plot: give at least one slot start")
    factors = site.factors(starts, slot_s)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    panels = _panels(_known_curves(factors))
    fig = plt.figure(figsize=(12, 2.7 * (len(panels) + 1.3)), layout="constrained")
    buffer = io.BytesIO()
    try:
        grid = fig.add_gridspec(len(panels) + 1, 1, height_ratios=[1.0] * len(panels) + [1.3])
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        _time_panels(fig, grid, panels, site, starts, slot_s, colours)
        _model_curves(fig.add_subplot(grid[len(panels)]), site, colours)
        first = datetime.fromtimestamp(int(starts[0].astype(np.int64)), tz=site.zone())
        fig.suptitle(
            f"site {site.name}: {starts.size * slot_s / 3600:g} h from {first:%Y-%m-%d %H:%M %Z} "
            f"({site.spec.timezone})"
        )
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buffer.getvalue())
    return out


def _time_panels(
    fig: Any,
    grid: Any,
    panels: list[list[_Axis]],
    site: Site,
    starts: TimeArray,
    slot_s: float,
    colours: list[str],
) -> None:
    """The panels over time, one above the other, sharing the time axis (in the site's time zone)."""
    import matplotlib.dates as mdates

    edges = np.append(starts, starts[-1] + np.timedelta64(round(slot_s), "s"))
    time_axes: list[Any] = []
    for row, axes in enumerate(panels):
        ax = fig.add_subplot(grid[row], sharex=time_axes[0] if time_axes else None)
        time_axes.append(ax)
        targets = [ax] if len(axes) == 1 else [ax, ax.twinx()]  # a second axis goes on the right
        for target, (unit, drawn) in zip(targets, axes, strict=True):
            for values, label, colour in drawn:
                target.step(
                    edges,
                    np.append(values, values[-1]),
                    where="post",
                    label=label,
                    linewidth=1.4,
                    color=colours[colour % len(colours)],
                )
            target.set_ylabel(unit)
        _legend(*targets)
        ax.grid(True, alpha=0.3)
    zone = site.zone()
    time_axes[0].xaxis.set_major_locator(mdates.AutoDateLocator(tz=zone))
    time_axes[0].xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=zone))
    time_axes[0].set_xlim(edges[0], edges[-1])
    for ax in time_axes[:-1]:
        ax.tick_params(labelbottom=False)
    time_axes[-1].set_xlabel(f"time ({site.spec.timezone})")


def _known_curves(factors: SlotFactors) -> dict[str, tuple[FloatArray, str]]:
    """Every per-slot array the site states, with the words of its label: its kind (and for a rate, how it
    is derived)."""
    rates = factors.per_it_kwh()
    found: dict[str, tuple[FloatArray, str]] = {}
    for name, factor in SlotFactors.FACTOR_OF.items():
        values = getattr(factors, name)
        if values is not None:
            found[name] = (values, factors.kinds[factor])
    for name, derivation in PerItKwh.DERIVATIONS.items():
        values = getattr(rates, name)
        if values is not None:
            found[name] = (values, f"derived: {derivation}")
    return found


def _panels(curves: dict[str, tuple[FloatArray, str]]) -> list[list[_Axis]]:
    """:data:`PANELS` with the known curves only, each as (values, label, colour); an axis left with none is
    left out, and a panel left with none."""
    panels = []
    for panel in PANELS:
        axes = []
        for unit, drawn in panel:
            known = [
                (curves[name][0], f"{what} ({curves[name][1]})", colour)
                for name, what, colour in drawn
                if name in curves
            ]
            if known:
                axes.append((unit, known))
        if axes:
            panels.append(axes)
    return panels


def _model_curves(ax: Any, site: Site, colours: list[str]) -> None:
    """PUE (and WUE, when the site has a model of it) against the outdoor temperature."""
    temperatures = np.linspace(*CURVE_TEMPERATURES_C, 221)
    cooling = site.cooling
    ax.plot(
        temperatures,
        cooling.pue(temperatures),
        color=colours[2],
        label=f"PUE ({cooling.kind}: {cooling.parameters()['model']})",
    )
    ax.set_xlabel("outdoor temperature (°C)")
    ax.set_ylabel("PUE")
    twins = []
    if site.wue is not None:
        twin = ax.twinx()
        twins.append(twin)
        humidity = np.full_like(temperatures, CURVE_RH_PCT)
        twin.plot(
            temperatures,
            site.wue.wue(temperatures, humidity),
            color=colours[9 % len(colours)],
            label=f"WUE at {CURVE_RH_PCT:g} % relative humidity ({site.wue.kind}: "
            f"{site.wue.parameters()['model']})",
        )
        twin.set_ylabel("WUE, L per IT kWh")
    ax.set_title("the site's PUE and WUE models against the outdoor temperature", fontsize="medium")
    _legend(ax, *twins)
    ax.grid(True, alpha=0.3)


def _legend(ax: Any, *twins: Any) -> None:
    """One legend for an axis and its twins."""
    handles, labels = ax.get_legend_handles_labels()
    for twin in twins:
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if handles:
        ax.legend(handles, labels, fontsize="small", loc="upper left", framealpha=0.8)
