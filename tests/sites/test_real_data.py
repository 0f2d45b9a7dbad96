"""The real 2023 grid data (run with HPCQUEUE_GRID_DATA pointing at a copy; see the grid_data fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hpcqueue.config import SiteSpec
from hpcqueue.sites import load_site, read_carbon, read_price, read_weather

YEAR = (np.datetime64("2023-01-01T00:00:00", "s"), np.datetime64("2024-01-01T00:00:00", "s"))


def test_every_real_file_reads_as_a_2023_hourly_series(grid_data: Path) -> None:
    carbon_files = sorted((grid_data / "carbon_intensity").glob("*.csv"))
    price_files = sorted((grid_data / "electricity_prices").glob("*.csv"))
    weather_files = sorted((grid_data / "weather").glob("*/*.json"))
    assert carbon_files and price_files and weather_files
    for path in carbon_files:
        for column in ("direct", "lifecycle"):
            series = read_carbon(path, column)
            assert series.values.size == 8760 and series.step_s == 3600, path
            assert series.span() == YEAR, path
            assert series.values.min() >= 0, path
    for path in price_files:
        series = read_price(path)
        assert series.values.size == 8760 and series.span() == YEAR, path
    for path in weather_files:
        weather = read_weather(path)
        assert weather.temperature_c.values.size == 8760, path
        assert weather.relative_humidity_pct is not None and weather.wind_speed_kmh is not None, path


def test_open_meteo_times_become_utc_by_subtracting_the_offset(grid_data: Path) -> None:
    """README: UTC = local − utc_offset_seconds (local 00:00 at −25200 is 07:00 UTC). Checked twice: on the
    first time, and physically: the day's warmest hour, back on local time, is in the early afternoon."""
    for path in sorted((grid_data / "weather").glob("*/*.json")):
        raw = json.loads(path.read_text(encoding="utf-8"))
        offset = np.timedelta64(int(raw["utc_offset_seconds"]), "s")
        first_local = np.datetime64(raw["hourly"]["time"][0], "s")
        temperature = read_weather(path).temperature_c
        assert temperature.times[0] == first_local - offset, path
        local_hour = ((temperature.times + offset).astype("datetime64[h]").astype(np.int64)) % 24
        mean_by_hour = np.bincount(local_hour, weights=temperature.values) / np.bincount(local_hour)
        assert 12 <= int(mean_by_hour.argmax()) <= 16, (path, mean_by_hour.round(1))
    san_jose = read_weather(grid_data / "weather" / "US-CAL-CISO" / "2023.json").temperature_c
    assert san_jose.times[0] == np.datetime64("2023-01-01T07:00:00", "s")


def test_a_real_site_plans_over_2023(grid_data: Path) -> None:
    spec = SiteSpec(
        name="caiso",
        carbon=str(grid_data / "carbon_intensity" / "US-CAL-CISO_2023_hourly.csv"),
        weather=str(grid_data / "weather" / "US-CAL-CISO" / "2023.json"),
        price=str(grid_data / "electricity_prices" / "US-CAL-CISO_2023_hourly_usd.csv"),
        cooling="economizer",
        wue="wet-bulb",
        power="wind",
    )
    site = load_site(spec)
    span = site.span()
    assert span == (np.datetime64("2023-01-01T07:00:00", "s"), YEAR[1])
    starts = span[0] + np.arange(4 * 24 * 300) * np.timedelta64(900, "s")
    factors = site.factors(starts, 900)
    assert factors.carbon_g_per_kwh is not None
    assert float(np.mean(factors.carbon_g_per_kwh)) == pytest.approx(194.0, rel=0.05)  # README: CAISO 194.0
    assert 1.1 <= factors.pue.min() <= factors.pue.max() < 2.0
    assert factors.kinds["power"] == "derived"
