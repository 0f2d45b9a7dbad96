"""``hpcqueue sites list|show|plot``: the sites of the cluster config as the planner sees them — their carbon,
weather, price and power series, and their PUE and water models.

Every number is shown with its kind: ``series`` (read from a file), ``assumed`` (a constant of the config),
``derived`` (computed from other factors, e.g. PUE × carbon intensity) or ``model`` (a PUE or WUE model of the
weather), so nothing looks measured that is not. Times a person reads are in the site's time zone, and so is
a ``--start`` typed without an offset; the spans of the data files are in UTC, as the files state them.

The library does the work: :meth:`hpcqueue.sites.SlotFactors.per_it_kwh` (what an IT kWh costs per slot,
as the planner charges it), :func:`hpcqueue.sites.windows.best_windows` and
:func:`hpcqueue.sites.charts.plot_site`; this module parses, calls them and renders. Library modules are
imported inside the commands, so ``hpcqueue --help`` stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from hpcqueue.cli.common import add_row, fail, num, out, print_json, resolve_settings
from hpcqueue.cli.params import ConfigOpt, JsonOpt, SlotOpt
from hpcqueue.errors import ConfigError, HpcqueueError, SiteDataError

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    import numpy as np
    import numpy.typing as npt

    from hpcqueue.config import Settings, SiteSpec
    from hpcqueue.sites import Series, Site, SlotFactors
    from hpcqueue.sites.windows import Window

    FloatArray = npt.NDArray[np.float64]

sites_app = typer.Typer(
    help="The sites of the cluster config: their carbon, weather, price and power series, and their PUE and "
    "water models.",
    no_args_is_help=True,
)

#: The per-slot columns of ``sites show``: key, header, unit, digits. Keys name units, as the JSON does.
COLUMNS: tuple[tuple[str, str, str, int], ...] = (
    ("temperature_c", "temp", "°C", 1),
    ("pue", "PUE", "", 3),
    ("wue_l_per_kwh", "WUE", "L/IT kWh", 2),
    ("carbon_g_per_kwh", "carbon", "g/kWh", 0),
    ("carbon_g_per_it_kwh", "carbon", "g/IT kWh", 0),
    ("water_l_per_it_kwh", "water", "L/IT kWh", 2),
    ("price_usd_per_mwh", "price", "USD/MWh", 1),
    ("power_kw", "power", "kW", 0),
)
#: The keys of a slot in ``sites show --json``: the columns, and the cost per IT MWh before the power.
SLOT_KEYS = (*(key for key, *_ in COLUMNS[:-1]), "cost_usd_per_it_mwh", COLUMNS[-1][0])
#: The unit and digits of each objective of the best windows (:data:`hpcqueue.sites.windows.WINDOW_METRICS`).
WINDOW_UNITS: dict[str, tuple[str, int]] = {
    "carbon": ("gCO2 per IT kWh", 1),
    "water": ("L per IT kWh", 3),
    "cost": ("USD per IT MWh", 2),
}
#: The length of the best windows of ``sites show`` unless --window says otherwise.
DEFAULT_WINDOW_S = 4 * 3600.0
_SITES_DOC = "docs/sites.md"

SiteArg = Annotated[str, typer.Argument(help="Site name (see: hpcqueue sites list).")]
SiteStartOpt = Annotated[
    str | None,
    typer.Option(
        help='The first slot: an ISO 8601 time ("2023-06-01T18:00-04:00"), in the site\'s time zone when it '
        'has no offset, or "now". Default: the config\'s start, else now.'
    ),
]


# --- sites list ---------------------------------------------------------------------------------------


@sites_app.command("list")
def list_sites(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """One row per site: its time zone, targets, where each factor comes from, and its data's span (UTC)."""
    from hpcqueue.sites import load_sites

    try:
        settings = resolve_settings(config)
        sites = load_sites(settings.sites)
        rows = [_summary(site, _targets_at(settings, name)) for name, site in sites.items()]
    except HpcqueueError as exc:
        fail(exc)
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print(_no_sites(settings), markup=False, soft_wrap=True)
        return
    table = Table(
        "site", "timezone", "targets", "carbon", "cooling (PUE)", "WUE", "price", "power", "span (UTC)"
    )
    for column in table.columns:
        column.overflow = "fold"  # a file name is cut nowhere
    for row in rows:
        water = (
            row["wue"] if row["off_site_water"] == "-" else f"{row['wue']}\noff site: {row['off_site_water']}"
        )
        span = "all time (constants only)" if row["span_utc"] is None else " to\n".join(row["span_utc"])
        add_row(
            table,
            row["name"],
            row["timezone"],
            ", ".join(row["targets"]) or "-",
            row["carbon"],
            row["cooling"],
            water,
            row["price"],
            row["power"],
            span,
        )
    out.print(table)


def _targets_at(settings: Settings, site: str) -> list[str]:
    return [name for name, target in settings.targets.items() if target.site == site]


def _where(settings: Settings) -> str:
    return str(settings.config_path) if settings.config_path else "the built-in defaults (no config file)"


def _no_sites(settings: Settings) -> str:
    return (
        f"no sites in {_where(settings)}: declare one with a [sites.NAME] table (timezone, carbon, weather, "
        f'cooling, wue, water_per_kwh, price, power) and set site = "NAME" on the targets there; see '
        f"{_SITES_DOC}"
    )


def _summary(site: Site, targets: list[str]) -> dict[str, Any]:
    """A site in one row: each factor in a few words with its kind, and the span of its data."""
    described = site.describe()
    spec = site.spec
    if site.power is None:
        power = "unlimited"
    elif site.power.kind == "derived":
        power = f"derived: wind, {spec.wind.turbines} × {spec.wind.rated_kw:g} kW"
    else:
        power = _series_text(site.power)
    return {
        "name": site.name,
        "timezone": spec.timezone,
        "targets": targets,
        "carbon": "-" if site.carbon is None else _series_text(site.carbon, f" ({spec.carbon_column})"),
        "cooling": _cooling_text(site),
        "wue": _wue_text(site),
        "off_site_water": "-" if spec.water_per_kwh is None else f"assumed {spec.water_per_kwh:g} L/kWh",
        "price": "no" if site.price is None else f"yes: {_series_text(site.price)}",
        "power": power,
        "span_utc": described["span"],
        "kinds": {factor: entry["kind"] for factor, entry in described["factors"].items()},
        "files": {
            factor: entry["source"]
            for factor, entry in described["factors"].items()
            if entry.get("source") not in (None, "constant")
        },
    }


def _series_text(series: Series, detail: str = "") -> str:
    if series.is_constant:
        return f"assumed {float(series.values[0]):g} {series.unit}"
    return f"{series.kind} {Path(series.source).name}{detail}"


def _cooling_text(site: Site) -> str:
    parameters = site.cooling.parameters()
    if parameters["model"] == "constant":
        return f"assumed PUE {parameters['value']:g}"
    if parameters["model"] == "table":
        return f"model: table {Path(parameters['source']).name}"
    return f"model: {parameters['model']}"


def _wue_text(site: Site) -> str:
    if site.wue is None:
        return "-"
    parameters = site.wue.parameters()
    if parameters["model"] == "constant":
        return f"assumed {parameters['value']:g} L/IT kWh"
    return f"model: {parameters['model']}"


# --- sites show ---------------------------------------------------------------------------------------


@sites_app.command("show")
def show(
    name: SiteArg,
    config: ConfigOpt = None,
    start: SiteStartOpt = None,
    hours: Annotated[int, typer.Option(help="How many hours to show from the start.", min=1)] = 24,
    slot: SlotOpt = None,
    window: Annotated[
        str | None,
        typer.Option(
            help='Length of the best windows ahead ("4h", "90m"), a whole number of slots. Default: 4h, or '
            "the hours shown when fewer."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """A site's factors (kind and source), slot by slot for the next --hours, and the best windows ahead.

    Per slot: temperature, PUE, WUE, carbon intensity, carbon per IT kWh (PUE × intensity), water per IT
    kWh (WUE + PUE × off-site water), price and available power; "-" where the site states nothing. Then the
    --window-long stretches with the lowest mean carbon (and water and cost, when known) per IT kWh, against
    starting at --start. Times are in the site's time zone.
    """
    from hpcqueue.sites.windows import best_windows

    try:
        settings, site, begin, slot_s, n_slots = _site_ahead(config, name, start, hours, slot)
        width = _window_slots(window, slot_s, n_slots, hours)
        described = site.describe()
        with _within_the_data():
            factors = site.factors(_slot_starts(begin, slot_s, n_slots), slot_s)
    except HpcqueueError as exc:
        fail(exc)
    rates = factors.per_it_kwh()
    values = {**{key: getattr(factors, key) for key in factors.FACTOR_OF}, **rates.rates()}
    columns = {key: values[key] for key in SLOT_KEYS}
    times = [(begin + timedelta(seconds=i * slot_s)).astimezone(site.zone()) for i in range(n_slots)]
    shown = {
        "site": described,
        "targets": _targets_at(settings, name),
        "start": times[0],
        "slot_s": slot_s,
        "hours": hours,
        "window_s": width * slot_s,
        "columns": {key: _origin(factors, key, known=v is not None) for key, v in columns.items()},
        "slots": [
            {"start": t, **{k: None if v is None else float(v[i]) for k, v in columns.items()}}
            for i, t in enumerate(times)
        ],
        "best_windows": {
            metric: _window_row(metric, found, times, slot_s)
            for metric, found in best_windows(rates, width).items()
        },
        "notes": _notes(site, columns),
    }
    if as_json:
        print_json(_isoformat(shown))
    else:
        _render_show(site, shown)


def _site_ahead(
    config: Path | None, name: str, start: str | None, hours: int, slot: str | None
) -> tuple[Settings, Site, datetime, float, int]:
    """The settings, the named site (loaded), the first slot's start (UTC), the slot length and how many
    slots cover ``hours`` (the last one may reach past them)."""
    from hpcqueue.sites import load_site

    settings = resolve_settings(config, start=start, slot=slot)
    site = load_site(_spec(settings, name))
    slot_s = float(settings.slot_s)
    n_slots = max(1, math.ceil(hours * 3600.0 / slot_s - 1e-9))
    return settings, site, _begin(settings, start, site.zone()), slot_s, n_slots


def _spec(settings: Settings, name: str) -> SiteSpec:
    """The named site's spec; an unknown name is an error listing the sites."""
    if name in settings.sites:
        return settings.sites[name]
    if not settings.sites:
        raise ConfigError(f"unknown site {name!r}: {_no_sites(settings)}")
    raise ConfigError(f"unknown site {name!r}; sites in {_where(settings)}: {', '.join(settings.sites)}")


def _begin(settings: Settings, start: str | None, zone: ZoneInfo) -> datetime:
    """The first slot's start, in UTC: --start, where a time typed without an offset is the site's (its
    ``timezone`` interprets times a person types for it); else the config's start; else now to the minute."""
    if settings.start is None:
        return datetime.now(timezone.utc).replace(second=0, microsecond=0)
    try:
        typed = datetime.fromisoformat((start or "").strip())
    except ValueError:  # no --start, or one Python reads otherwise: the settings have read it
        typed = settings.start
    return (settings.start if typed.tzinfo else typed.replace(tzinfo=zone)).astimezone(timezone.utc)


def _slot_starts(begin: datetime, slot_s: float, n_slots: int) -> npt.NDArray[np.datetime64]:
    """The starts of ``n_slots`` slots from ``begin``, in UTC, as :meth:`Site.factors` takes them."""
    import numpy as np

    first = np.datetime64(begin.astimezone(timezone.utc).replace(tzinfo=None), "s")
    return first + np.arange(n_slots) * np.timedelta64(round(slot_s), "s")


@contextmanager
def _within_the_data() -> Iterator[None]:
    """Data that do not cover the slots is an error that names the file, its span and what to change."""
    try:
        yield
    except SiteDataError as exc:
        raise SiteDataError(
            f"{exc}; choose --start and --hours within the data (hpcqueue sites list shows each site's span)"
        ) from None


def _window_slots(window: str | None, slot_s: float, n_slots: int, hours: int) -> int:
    """``--window`` in slots: a whole number of them, within the hours shown; by default
    :data:`DEFAULT_WINDOW_S`, or every slot shown when they are fewer."""
    from hpcqueue.durations import parse_duration
    from hpcqueue.sites.tables import format_step

    if window is None:
        return min(n_slots, max(1, round(DEFAULT_WINDOW_S / slot_s)))
    try:
        window_s = parse_duration(window, bare_unit="s")
    except ValueError as exc:
        raise ConfigError(f"option --window: {exc}") from None
    slots = window_s / slot_s
    if slots < 1 or abs(slots - round(slots)) > 1e-9:
        raise ConfigError(
            f"option --window: {window!r} is not a whole number of slots of {format_step(slot_s)}; give a "
            "multiple of the slot (or change --slot)"
        )
    if round(slots) > n_slots:
        raise ConfigError(
            f"option --window: {window!r} is longer than the {hours} h shown; raise --hours or shorten "
            "--window"
        )
    return round(slots)


def _origin(factors: SlotFactors, key: str, *, known: bool) -> dict[str, str | None]:
    """A column's kind (``None`` when unknown) and source: the factor's, or how a rate per IT kWh is
    derived."""
    from hpcqueue.sites import PerItKwh

    if key in PerItKwh.DERIVATIONS:
        return {"kind": "derived" if known else None, "source": PerItKwh.DERIVATIONS[key]}
    factor = factors.FACTOR_OF[key]
    return {"kind": factors.kinds.get(factor) if known else None, "source": factors.sources.get(factor)}


def _window_row(metric: str, window: Window, times: list[datetime], slot_s: float) -> dict[str, Any]:
    """A best window as ``sites show`` gives it: unit, start and end in the site's time, its mean, the mean
    when starting at the start, and how much lower it is."""
    start = times[window.first_slot]
    end = start.astimezone(timezone.utc) + timedelta(seconds=window.slots * slot_s)
    return {
        "unit": WINDOW_UNITS[metric][0],
        "start": start,
        "end": end.astimezone(start.tzinfo),
        "mean": window.mean,
        "mean_at_start": window.mean_at_start,
        "lower_than_at_start_pct": window.lower_than_at_start_pct,
    }


def _isoformat(obj: Any) -> Any:
    """``obj`` with its times in ISO 8601, as the JSON gives them."""
    if isinstance(obj, dict):
        return {key: _isoformat(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_isoformat(value) for value in obj]
    return obj.isoformat() if isinstance(obj, datetime) else obj


def _notes(site: Site, columns: dict[str, FloatArray | None]) -> list[str]:
    """Why a column is unknown, and what the planner assumes for it."""
    water = {
        "on-site WUE (wue = ...)": site.wue is None,
        "off-site water per kWh of electricity (water_per_kwh = ...)": site.spec.water_per_kwh is None,
    }
    notes = {
        "carbon_g_per_kwh": "carbon: unknown, the site states no carbon intensity (carbon = ...)",
        "water_l_per_it_kwh": "water per IT kWh: unknown, the site states no "
        + " and no ".join(what for what, absent in water.items() if absent),
        "price_usd_per_mwh": "price: none stated; the planner counts this site's electricity as free",
        "power_kw": "power: none stated; the planner counts this site's power as unlimited",
    }
    return [note for key, note in notes.items() if columns[key] is None]


def _render_show(site: Site, shown: dict[str, Any]) -> None:
    """``sites show`` as tables: the site and its factors, the slots, the notes, the best windows."""
    from hpcqueue.sites.tables import format_step

    targets = ", ".join(shown["targets"]) or "none"
    span = shown["site"]["span"]
    out.print(
        f"site [bold]{escape(site.name)}[/] ({site.spec.timezone}); targets: {escape(targets)}",
        soft_wrap=True,
    )
    out.print(
        "data span (UTC): " + ("all time (constants only)" if span is None else f"{span[0]} to {span[1]}"),
        markup=False,
    )
    factors = Table("factor", "kind", "source")
    for factor, entry in shown["site"]["factors"].items():
        text = entry.get("description") or (  # off-site water: a number of the config
            f"assumed: off-site water {entry['value']:g} {entry['unit']} of electricity (stated in the "
            "config)"
        )
        add_row(factors, factor, entry["kind"], text)
    out.print(factors)

    first, hours, step = shown["start"], shown["hours"], format_step(shown["slot_s"])
    out.print(
        f"next {hours} h from {first:%Y-%m-%d %H:%M %Z} (UTC{first:%z}), every {step}, "
        f"times in {site.spec.timezone}:",
        markup=False,
        soft_wrap=True,
    )
    kinds = {key: column["kind"] or "unknown" for key, column in shown["columns"].items()}
    table = Table("time", *[f"{header}\n{unit}\n{kinds[key]}" for key, header, unit, _ in COLUMNS])
    for slot in shown["slots"]:
        add_row(
            table, f"{slot['start']:%m-%d %H:%M}", *[num(slot[key], digits) for key, *_, digits in COLUMNS]
        )
    out.print(table)
    for note in shown["notes"]:
        out.print(note, markup=False, soft_wrap=True)

    window_text = format_step(shown["window_s"])
    if not shown["best_windows"]:
        out.print(f"best {window_text} windows ahead: none (the site states no carbon, water or price)")
        return
    best = Table(
        "objective", "unit", "window start", "end", "mean", f"starting {first:%m-%d %H:%M}", "lower by"
    )
    for metric, w in shown["best_windows"].items():
        digits, lower = WINDOW_UNITS[metric][1], w["lower_than_at_start_pct"]
        times = (f"{w['start']:%Y-%m-%d %H:%M %Z}", f"{w['end']:%m-%d %H:%M}")
        means = (num(w["mean"], digits), num(w["mean_at_start"], digits))
        add_row(best, metric, w["unit"], *times, *means, "-" if lower is None else f"{lower:.1f} %")
    out.print(f"best {window_text} windows ahead (lowest mean per IT kWh within the {hours} h):")
    out.print(best)


# --- sites plot ---------------------------------------------------------------------------------------


@sites_app.command("plot")
def plot(
    name: SiteArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="The PNG file to write.")],
    config: ConfigOpt = None,
    start: SiteStartOpt = None,
    hours: Annotated[int, typer.Option(help="How many hours to draw from the start.", min=1)] = 168,
) -> None:
    """Plot a site's factors over the next --hours, and its PUE and WUE curves against the temperature.

    Panels: carbon intensity and carbon per IT kWh; temperature and PUE; WUE and water per IT kWh (when
    known); price and available power (when given); PUE and WUE (at 60 % relative humidity) over −10…45 °C.
    Every curve is labelled with its kind (series, assumed, derived, model). Prints the path written.
    """
    from hpcqueue.sites.charts import plot_site

    try:
        _, site, begin, slot_s, n_slots = _site_ahead(config, name, start, hours, None)
        with _within_the_data():
            plot_site(site, _slot_starts(begin, slot_s, n_slots), slot_s, output)
    except HpcqueueError as exc:
        fail(exc)
    out.print(str(output), markup=False, soft_wrap=True)
