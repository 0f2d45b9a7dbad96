"""A site's weather: temperature (for PUE), relative humidity (for the wet-bulb WUE) and wind speed (for wind
power), read from an Open-Meteo JSON response or a CSV.

Open-Meteo stamps its hourly values on the location's local clock (``timezone=auto``) and states the offset
in ``utc_offset_seconds``; the file's own clock governs: UTC = local − ``utc_offset_seconds`` (local 00:00
at −25200 s is 07:00 UTC). A CSV time with an explicit offset is converted with it; one without an offset
is on the clock of the Open-Meteo metadata block when there is one, else UTC.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcqueue.errors import SiteDataError
from hpcqueue.sites.series import Series
from hpcqueue.sites.tables import (
    FloatArray,
    check_range,
    read_table,
    regular_step_s,
    utc_times,
)

# name, unit, Open-Meteo variables (JSON keys and CSV headers, a trailing "(unit)" ignored), range.
_TEMPERATURE = ("temperature", "°C", ("temperature_2m", "temperature"), None, None)
_HUMIDITY = ("relative humidity", "%", ("relative_humidity_2m", "relative_humidity"), 0.0, 100.0)
_WIND = ("wind speed", "km/h", ("windspeed_10m", "wind_speed_10m"), 0.0, None)
#: Open-Meteo's wind speed units (``wind_speed_unit``) in km/h.
_KMH_PER = {"km/h": 1.0, "kmh": 1.0, "m/s": 3.6, "ms": 3.6, "mph": 1.609344, "kn": 1.852, "knots": 1.852}


@dataclass(frozen=True, eq=False)
class Weather:
    """A site's weather series, all on the same UTC times; humidity and wind are ``None`` when absent."""

    temperature_c: Series
    relative_humidity_pct: Series | None
    wind_speed_kmh: Series | None
    source: str


def read_weather(path: str | Path) -> Weather:
    """Read an Open-Meteo JSON response (``.json``, or any file starting with ``{``) or a CSV.

    The temperature (``temperature_2m`` or ``temperature``, in °C) is required; relative humidity
    (``relative_humidity_2m``) and wind speed (``windspeed_10m`` or ``wind_speed_10m``, converted to km/h
    from the unit the file states) are read when present.
    """
    path = Path(path)
    if not path.is_file():
        raise SiteDataError(f"{path}: weather file not found" + (" (a directory)" if path.is_dir() else ""))
    with open(path, "rb") as handle:
        head = handle.read(64).lstrip()
    if path.suffix.lower() == ".json" or head.startswith(b"{"):
        return _read_json(path)
    return _read_csv(path)


def _read_json(path: Path) -> Weather:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SiteDataError(f"{path}: cannot read the weather file as JSON: {e}") from None
    hourly = data.get("hourly") if isinstance(data, dict) else None
    if not isinstance(hourly, dict) or not isinstance(hourly.get("time"), list):
        found = ", ".join(map(repr, data)) if isinstance(data, dict) else type(data).__name__
        raise SiteDataError(
            f"{path}: not an Open-Meteo response: expected 'utc_offset_seconds' and 'hourly' with 'time' and "
            f"'temperature_2m'; found {found}"
        )
    offset_s = _offset(data.get("utc_offset_seconds", 0), path, "utc_offset_seconds")
    units: Mapping[str, Any] = data.get("hourly_units") or {}
    raw_times = hourly["time"]

    def where(i: int) -> str:
        return f"hourly.time[{i}] ({raw_times[i]})" if i < len(raw_times) else f"hourly.time[{i}]"

    if not raw_times:
        raise SiteDataError(f"{path}: hourly.time is empty")
    if all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in raw_times):  # timeformat=unixtime
        times = np.array(raw_times, dtype=np.int64).astype("datetime64[s]")
    else:
        times = utc_times([str(t) for t in raw_times], path, where, "hourly.time", local_offset_s=offset_s)
    step = regular_step_s(times, path, where, "hourly.time")

    def variable(spec: tuple[str, str, tuple[str, ...], float | None, float | None]) -> Series | None:
        name, unit, keys, low, high = spec
        key = next((k for k in keys if k in hourly), None)
        if key is None:
            return None
        try:
            values = np.array(hourly[key], dtype=np.float64)
        except (TypeError, ValueError):
            raise SiteDataError(f"{path}: hourly.{key} holds something that is not a number") from None
        if values.shape != times.shape:
            raise SiteDataError(
                f"{path}: hourly.{key} has {values.size} values but hourly.time has {times.size} times"
            )
        values = _in_unit(values, str(units.get(key, unit)), unit, path, f"hourly.{key}")
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise SiteDataError(f"{path}: hourly.{key}[{int(bad[0])}] ({raw_times[int(bad[0])]}) is null")
        check_range(values, path, where, f"hourly.{key}", minimum=low, maximum=high)
        note = f"{key} of Open-Meteo" + _place(data) + _clock(offset_s)
        return Series(name, unit, str(path), "series", times, values, step, note)

    return _weather(path, variable(_TEMPERATURE), variable(_HUMIDITY), variable(_WIND), list(hourly))


def _read_csv(path: Path) -> Weather:
    table = read_table(path, "weather CSV")
    offset_s = _offset(table.metadata.get("utc_offset_seconds", 0), path, "utc_offset_seconds")
    location = table.column("the location", ("location_id",), required=False)
    if location is not None and table.frame[location].nunique() > 1:
        raise SiteDataError(f"{path}: holds several locations (location_id); keep one location per file")
    time_column = table.column("the time", ("time", "Datetime (UTC)", "datetime", "timestamp"))
    assert time_column is not None
    times = table.times(time_column, local_offset_s=offset_s)
    step = regular_step_s(times, path, table.where, time_column)
    headers = [str(c) for c in table.frame.columns]

    def variable(spec: tuple[str, str, tuple[str, ...], float | None, float | None]) -> Series | None:
        name, unit, keys, low, high = spec
        column = table.column(name, keys, required=False)
        if column is None:
            return None
        stated = column[column.rfind("(") + 1 : -1] if column.endswith(")") else unit
        values = _in_unit(table.numbers(column), stated, unit, path, column)
        check_range(values, path, table.where, column, minimum=low, maximum=high)
        source = "Open-Meteo CSV" if table.metadata else "CSV"
        note = f"{column} of {source}" + _clock(offset_s, table.metadata != {})
        return Series(name, unit, str(path), "series", times, values, step, note)

    return _weather(path, variable(_TEMPERATURE), variable(_HUMIDITY), variable(_WIND), headers)


def _weather(
    path: Path,
    temperature: Series | None,
    humidity: Series | None,
    wind: Series | None,
    found: list[str],
) -> Weather:
    if temperature is None:
        raise SiteDataError(
            f"{path}: no temperature: expected 'temperature_2m' or 'temperature' (°C); found "
            f"{', '.join(map(repr, found))}"
        )
    return Weather(temperature, humidity, wind, str(path))


def _offset(value: Any, path: Path, key: str) -> float:
    try:
        offset = float(value)
    except (TypeError, ValueError):
        raise SiteDataError(f"{path}: {key} is not a number of seconds: {value!r}") from None
    if not abs(offset) <= 18 * 3600:
        raise SiteDataError(f"{path}: {key} = {value!r} is not a UTC offset (at most ±18 h)")
    return offset


def _in_unit(values: FloatArray, stated: str, unit: str, path: Path, what: str) -> FloatArray:
    """``values`` in ``unit``: wind speeds are converted from the unit the file states; a temperature that
    is not in °C is an error (ask Open-Meteo for ``temperature_unit=celsius``)."""
    stated = stated.strip()
    if unit == "km/h" and stated.lower() in _KMH_PER:
        return values * _KMH_PER[stated.lower()]
    if stated in (unit, "") or (unit == "°C" and stated.lower() in ("°c", "c", "celsius")):
        return values
    raise SiteDataError(f"{path}: {what} is in {stated!r}; hpcqueue reads {unit!r}")


def _place(data: Mapping[str, Any]) -> str:
    if "latitude" in data and "longitude" in data:
        zone = f", {data['timezone']}" if data.get("timezone") else ""
        return f" at {data['latitude']}, {data['longitude']}{zone}"
    return ""


def _clock(offset_s: float, stated: bool = True) -> str:
    if not stated:
        return "; times without an offset read as UTC"
    hours = offset_s / 3600
    return f"; local clock UTC{hours:+g} h converted to UTC" if offset_s else "; clock UTC"
