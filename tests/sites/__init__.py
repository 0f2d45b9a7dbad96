"""Helpers shared by the site tests: small synthetic files in each format hpcqueue.sites reads.

The real data (Electricity Maps, Open-Meteo, market prices) cannot ship with the repository; these writers
produce the same layouts with a handful of rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Electricity Maps headers: today's, and the older one (GreenDCC's files have it).
EM_HEADER_NEW = (
    "Datetime (UTC),Zone id,Carbon intensity gCO₂eq/kWh (direct),Carbon intensity gCO₂eq/kWh (Life cycle)"
)
EM_HEADER_OLD = (
    "Datetime (UTC),Country,Zone Name,Zone Id,Carbon Intensity gCO₂eq/kWh (direct),"
    "Carbon Intensity gCO₂eq/kWh (LCA),Low Carbon Percentage,Renewable Percentage,Data Source,"
    "Data Estimated,Data Estimation Method"
)


def hours(first: str, n: int, step_min: int = 60) -> list[str]:
    """``n`` times ``YYYY-MM-DD HH:MM:SS`` from ``first``, every ``step_min`` minutes."""
    start = np.datetime64(first, "s")
    return [str(start + np.timedelta64(i * step_min, "m")).replace("T", " ") for i in range(n)]


def write_em_csv(
    path: Path,
    direct: Sequence[float],
    lifecycle: Sequence[float] | None = None,
    *,
    header: str = "new",
    first: str = "2023-01-01 00:00:00",
    zone: str = "XX-TEST",
) -> Path:
    """An Electricity Maps hourly CSV (UTF-8, with ₂ in the header)."""
    lifecycle = lifecycle if lifecycle is not None else [v * 1.2 for v in direct]
    lines = [EM_HEADER_NEW if header == "new" else EM_HEADER_OLD]
    for t, d, lca in zip(hours(first, len(direct)), direct, lifecycle, strict=True):
        if header == "new":
            lines.append(f"{t},{zone},{d},{lca}")
        else:
            lines.append(f"{t},Testland,Test zone,{zone},{d},{lca},50.0,40.0,example.org,false,")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_csv(path: Path, header: str, rows: Sequence[Sequence[object]]) -> Path:
    """A CSV with ``header`` and ``rows`` (cells written as given)."""
    text = header + "\n" + "".join(",".join(str(c) for c in row) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8")
    return path


def write_open_meteo_json(
    path: Path,
    temperature: Sequence[float | None],
    *,
    humidity: Sequence[float | None] | None = None,
    wind: Sequence[float | None] | None = None,
    offset_s: int = -25200,
    first_local: str = "2023-01-01T00:00",
    wind_key: str = "windspeed_10m",
    units: dict[str, str] | None = None,
) -> Path:
    """An Open-Meteo archive response: local times without offset, ``utc_offset_seconds`` beside them."""
    start = np.datetime64(first_local, "m")
    times = [str(start + np.timedelta64(i, "h")) for i in range(len(temperature))]
    hourly: dict[str, object] = {"time": times, "temperature_2m": list(temperature)}
    hourly_units = {"time": "iso8601", "temperature_2m": "°C"}
    if humidity is not None:
        hourly["relative_humidity_2m"], hourly_units["relative_humidity_2m"] = list(humidity), "%"
    if wind is not None:
        hourly[wind_key], hourly_units[wind_key] = list(wind), "km/h"
    hourly_units.update(units or {})
    data = {
        "latitude": 37.434,
        "longitude": -121.955,
        "generationtime_ms": 1.5,
        "utc_offset_seconds": offset_s,
        "timezone": "America/Los_Angeles",
        "timezone_abbreviation": "PDT",
        "elevation": 10.0,
        "hourly_units": hourly_units,
        "hourly": hourly,
    }
    path.write_text(json.dumps(data, indent=4, ensure_ascii=False), encoding="utf-8")
    return path


def write_open_meteo_csv(
    path: Path,
    temperature: Sequence[float],
    humidity: Sequence[float],
    wind: Sequence[float],
    *,
    offset_s: int = 3600,
    first_local: str = "2023-01-01T00:00",
    daily_block: bool = True,
) -> Path:
    """Open-Meteo's CSV export: a metadata block, a blank line, the hourly table (units in the headers),
    and optionally a daily table after another blank line."""
    start = np.datetime64(first_local, "m")
    lines = [
        "latitude,longitude,elevation,utc_offset_seconds,timezone,timezone_abbreviation",
        f"52.52,13.419998,38.0,{offset_s},Europe/Berlin,CET",
        "",
        "time,temperature_2m (°C),relative_humidity_2m (%),wind_speed_10m (km/h)",
    ]
    for i, (t, rh, w) in enumerate(zip(temperature, humidity, wind, strict=True)):
        lines.append(f"{start + np.timedelta64(i, 'h')},{t},{rh},{w}")
    if daily_block:
        lines += ["", "time,temperature_2m_max (°C)", "2023-01-01,12.5"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
