"""A site, loaded: its series and models, and what a kWh of IT energy costs there slot by slot.

:func:`load_site` reads the files a :class:`~hpcqueue.config.SiteSpec` names, once; :meth:`Site.factors`
resamples every series to a planning grid and evaluates the PUE and WUE models on each slot's mean weather.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import numpy as np

from hpcqueue.config import SiteSpec
from hpcqueue.errors import SiteDataError
from hpcqueue.sites.cooling import CoolingModel, cooling_model
from hpcqueue.sites.power import describe_turbines, wind_power_kw
from hpcqueue.sites.series import Series, read_carbon, read_power, read_price
from hpcqueue.sites.tables import FloatArray, TimeArray, format_time
from hpcqueue.sites.water import WueModel, wue_model
from hpcqueue.sites.weather import Weather, read_weather


@dataclass(frozen=True, eq=False)
class SlotFactors:
    """Per slot of a planning grid, what a kWh of IT energy costs at a site.

    Energy drawn from the grid is IT energy × ``pue``; its carbon is that × ``carbon_g_per_kwh``, its
    off-site water that × ``water_l_per_kwh``, its price that × ``price_usd_per_mwh`` / 1000; on-site water
    is IT energy × ``wue_l_per_kwh``. ``None`` means unknown (no price: free; no power: unlimited).
    ``sources`` and ``kinds`` have an entry for every factor that is known.
    """

    starts: TimeArray
    slot_s: float
    pue: FloatArray
    carbon_g_per_kwh: FloatArray | None
    wue_l_per_kwh: FloatArray | None
    water_l_per_kwh: FloatArray | None
    price_usd_per_mwh: FloatArray | None
    power_kw: FloatArray | None
    temperature_c: FloatArray | None
    sources: dict[str, str]
    kinds: dict[str, str]

    #: The entry of ``sources`` and ``kinds`` for each per-slot array.
    FACTOR_OF: ClassVar[dict[str, str]] = {
        "pue": "pue",
        "carbon_g_per_kwh": "carbon",
        "wue_l_per_kwh": "wue",
        "water_l_per_kwh": "water",
        "price_usd_per_mwh": "price",
        "power_kw": "power",
        "temperature_c": "temperature",
    }

    def per_it_kwh(self) -> PerItKwh:
        """What a kWh of IT energy costs per slot, as the planner charges it
        (:func:`hpcqueue.planner.timing.site_rates`); each rate is ``None`` unless all its parts are known."""
        carbon = None if self.carbon_g_per_kwh is None else self.pue * self.carbon_g_per_kwh
        water = None  # on site and off site, or unknown: half of it would look like all of it
        if self.wue_l_per_kwh is not None and self.water_l_per_kwh is not None:
            water = self.wue_l_per_kwh + self.pue * self.water_l_per_kwh
        cost = None if self.price_usd_per_mwh is None else self.pue * self.price_usd_per_mwh
        return PerItKwh(carbon_g_per_it_kwh=carbon, water_l_per_it_kwh=water, cost_usd_per_it_mwh=cost)


@dataclass(frozen=True, eq=False)
class PerItKwh:
    """Per slot, what a kWh of IT energy costs at a site, from :meth:`SlotFactors.per_it_kwh`; ``None`` where
    unknown. :attr:`DERIVATIONS` says how each rate follows from the factors (all are kind ``"derived"``)."""

    carbon_g_per_it_kwh: FloatArray | None
    water_l_per_it_kwh: FloatArray | None
    cost_usd_per_it_mwh: FloatArray | None

    DERIVATIONS: ClassVar[dict[str, str]] = {
        "carbon_g_per_it_kwh": "PUE × carbon intensity",
        "water_l_per_it_kwh": "WUE (on site) + PUE × off-site water per kWh of electricity",
        "cost_usd_per_it_mwh": "PUE × price",
    }

    def rates(self) -> dict[str, FloatArray | None]:
        """The rates by name (the keys of :attr:`DERIVATIONS`)."""
        return {name: getattr(self, name) for name in self.DERIVATIONS}


@dataclass(frozen=True, eq=False)
class Site:
    """A site's series and models, as loaded from its spec by :func:`load_site`."""

    name: str
    spec: SiteSpec
    carbon: Series | None
    weather: Weather | None
    cooling: CoolingModel
    wue: WueModel | None
    price: Series | None
    power: Series | None

    def _series(self) -> dict[str, Series]:
        """Every series the site uses, by factor name."""
        found = {"carbon": self.carbon, "price": self.price, "power": self.power}
        if self.weather is not None:
            found["temperature"] = self.weather.temperature_c
            if self.wue is not None and self.wue.needs_weather:
                found["relative humidity"] = self.weather.relative_humidity_pct
        return {name: series for name, series in found.items() if series is not None}

    def factors(self, starts: TimeArray, slot_s: float) -> SlotFactors:
        """Every factor on the slots ``[start, start + slot_s)`` (UTC): series as slot means
        (:meth:`Series.on_slots`), PUE and WUE from the slot's mean temperature (and humidity).

        Raises :class:`SiteDataError` naming the file when a series does not cover the slots.
        """
        starts = np.asarray(starts).reshape(-1)
        # whole seconds (the planner's slots), or microseconds (a task's real run interval, when accounted)
        if starts.dtype != np.dtype("datetime64[us]"):
            starts = starts.astype("datetime64[s]")
        series = self._series()
        sources: dict[str, str] = {}
        kinds: dict[str, str] = {}

        def on_slots(factor: str, key: str | None = None) -> FloatArray | None:
            found = series.get(key or factor)
            if found is None:
                return None
            sources[factor], kinds[factor] = found.describe(), found.kind
            return found.on_slots(starts, slot_s)

        temperature = on_slots("temperature")
        humidity = on_slots("humidity", "relative humidity")
        sources.pop("humidity", None)
        kinds.pop("humidity", None)
        weather_c = temperature if temperature is not None else np.full(starts.size, np.nan)
        pue = self.cooling.pue(weather_c)
        sources["pue"], kinds["pue"] = self.cooling.describe(), self.cooling.kind
        wue = None
        if self.wue is not None:
            wue = self.wue.wue(weather_c, humidity)
            sources["wue"], kinds["wue"] = self.wue.describe(), self.wue.kind
        water = None
        if self.spec.water_per_kwh is not None:
            water = np.full(starts.size, float(self.spec.water_per_kwh))
            sources["water"] = (
                f"assumed: off-site water {self.spec.water_per_kwh:g} L per kWh of electricity "
                f"(stated in site {self.name}'s config)"
            )
            kinds["water"] = "assumed"
        return SlotFactors(
            starts=starts,
            slot_s=float(slot_s),
            pue=pue,
            carbon_g_per_kwh=on_slots("carbon"),
            wue_l_per_kwh=wue,
            water_l_per_kwh=water,
            price_usd_per_mwh=on_slots("price"),
            power_kw=on_slots("power"),
            temperature_c=temperature,
            sources=sources,
            kinds=kinds,
        )

    def span(self) -> tuple[np.datetime64, np.datetime64] | None:
        """The time every series covers (the intersection of their spans), or ``None`` when all are
        constants. An empty intersection is an error naming the series."""
        spans = {name: s.span() for name, s in self._series().items() if not s.is_constant}
        if not spans:
            return None
        first = max(begin for begin, _ in spans.values())
        last = min(end for _, end in spans.values())
        if first >= last:
            listed = "; ".join(
                f"{name} {format_time(b)} to {format_time(e)}" for name, (b, e) in spans.items()
            )
            raise SiteDataError(f"site {self.name}: its series cover no common time (UTC): {listed}")
        return first, last

    def zone(self) -> ZoneInfo:
        """The site's time zone (for times a person types)."""
        return ZoneInfo(self.spec.timezone)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly: every factor's source and kind, the models' parameters, the spans."""
        span = self.span()

        def series_entry(series: Series) -> dict[str, Any]:
            entry: dict[str, Any] = {
                "kind": series.kind,
                "source": series.source,
                "unit": series.unit,
                "description": series.describe(),
            }
            if not series.is_constant:
                begin, end = series.span()
                entry |= {"span": [format_time(begin), format_time(end)], "step_s": series.step_s}
            else:
                entry["value"] = float(series.values[0])
            return entry

        factors = {name: series_entry(s) for name, s in self._series().items()}
        factors["pue"] = {
            "kind": self.cooling.kind,
            "description": self.cooling.describe(),
            "parameters": self.cooling.parameters(),
        }
        if self.wue is not None:
            factors["wue"] = {
                "kind": self.wue.kind,
                "description": self.wue.describe(),
                "parameters": self.wue.parameters(),
            }
        if self.spec.water_per_kwh is not None:
            factors["water"] = {"kind": "assumed", "value": self.spec.water_per_kwh, "unit": "L/kWh"}
        return {
            "name": self.name,
            "timezone": self.spec.timezone,
            "span": None if span is None else [format_time(span[0]), format_time(span[1])],
            "weather": None if self.weather is None else self.weather.source,
            "factors": factors,
        }


def load_site(spec: SiteSpec) -> Site:
    """Read every file ``spec`` names (once) and build the site's models.

    A number becomes a constant series (kind ``"assumed"``); ``power = "wind"`` becomes available power
    derived from the weather's wind speed by :func:`~hpcqueue.sites.power.wind_power_kw` (kind
    ``"derived"``, its note giving the turbine's parameters).
    """
    return _load_site(spec, _Reader())


def load_sites(specs: Mapping[str, SiteSpec]) -> dict[str, Site]:
    """Every site of a config, by name; a file several sites name is read once."""
    reader = _Reader()
    return {name: _load_site(spec, reader) for name, spec in specs.items()}


class _Reader:
    """Reads each (reader, file, option) once."""

    def __init__(self) -> None:
        self._read: dict[tuple[str, str, str], Any] = {}

    def __call__(self, read: Callable[..., Any], path: str, *options: str) -> Any:
        key = (read.__name__, str(Path(path)), ",".join(options))
        if key not in self._read:
            self._read[key] = read(path, *options)
        return self._read[key]


def _load_site(spec: SiteSpec, read: _Reader) -> Site:
    weather = None if spec.weather is None else read(read_weather, spec.weather)
    carbon = _number_or_file(
        spec,
        spec.carbon,
        "carbon intensity",
        "gCO2eq/kWh",
        lambda p: read(read_carbon, p, spec.carbon_column),
    )
    price = _number_or_file(spec, spec.price, "price", "USD/MWh", lambda p: read(read_price, p))
    if spec.power == "wind":
        power: Series | None = _wind_power(spec, weather)
    else:
        power = _number_or_file(spec, spec.power, "available power", "kW", lambda p: read(read_power, p))
    cooling = cooling_model(spec)
    if cooling.needs_weather and weather is None:
        raise SiteDataError(
            f"site {spec.name}: cooling = {spec.cooling!r} gives the PUE as a function of the outdoor "
            'temperature, and the site has no weather file: set weather = "..." or a constant PUE'
        )
    wue = wue_model(spec)
    if wue is not None and wue.needs_weather and (weather is None or weather.relative_humidity_pct is None):
        raise SiteDataError(
            f"{spec.weather}: site {spec.name} has wue = 'wet-bulb', which needs the relative humidity "
            "(relative_humidity_2m), and the weather file has none"
        )
    return Site(spec.name, spec, carbon, weather, cooling, wue, price, power)


def _number_or_file(
    spec: SiteSpec, value: float | str | None, name: str, unit: str, read: Callable[[str], Series]
) -> Series | None:
    """``None``, a constant (kind ``"assumed"``) for a number, or the series the file holds."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return Series.constant(float(value), name, unit, note=f"stated in site {spec.name}'s config")
    return read(value)


def _wind_power(spec: SiteSpec, weather: Weather | None) -> Series:
    wind = None if weather is None else weather.wind_speed_kmh
    if wind is None:
        raise SiteDataError(
            f"{spec.weather}: site {spec.name} has power = 'wind', which needs the wind speed "
            "(windspeed_10m or wind_speed_10m), and the weather file has none"
        )
    values = wind_power_kw(wind.values, spec.wind)
    note = (
        f"derived: turbine power curve from the wind speed of {wind.source} ({wind.note}); hub speed by the "
        + describe_turbines(spec.wind)
    )
    return Series("available power", "kW", wind.source, "derived", wind.times, values, wind.step_s, note)
