"""Loading a site from its spec, and its factors on a planning grid."""

from __future__ import annotations

import json
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from pydantic import ValidationError

from hpcqueue.config import DEFAULT_PUE, SiteSpec, WindTurbines
from hpcqueue.errors import SiteDataError
from hpcqueue.sites import Site, load_site, load_sites, wind_power_kw
from tests.sites import write_csv, write_em_csv, write_open_meteo_json

N_HOURS = 48


def utc(text: str) -> np.datetime64:
    return np.datetime64(text, "s")


def grid(first: str, n: int, slot_s: int) -> np.ndarray:
    return utc(first) + np.arange(n) * np.timedelta64(slot_s, "s")


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    """Two days of hourly data in each format a site reads; the weather on UTC−7 local time, so its span
    starts at 07:00 UTC, after the carbon and price files' 00:00."""
    hour = np.arange(N_HOURS)
    temperature = (15 + 12 * np.sin((hour - 9) / 24 * 2 * np.pi)).round(1).tolist()
    return {
        "carbon": write_em_csv(
            tmp_path / "carbon.csv", (200 + 50 * np.cos(hour / 24 * 2 * np.pi)).round(1).tolist()
        ),
        "weather": write_open_meteo_json(
            tmp_path / "weather.json",
            temperature,
            humidity=[60.0] * N_HOURS,
            wind=(hour % 12 * 4.0).tolist(),
            offset_s=-25200,
        ),
        "price": write_csv(
            tmp_path / "price.csv",
            "Datetime (UTC),Price (USD/MWh)",
            [
                [f"{t}+00:00".replace("T", " "), p]
                for t, p in zip(grid("2023-01-01T00:00", N_HOURS, 3600), (hour % 5 - 1) * 20.0, strict=True)
            ],
        ),
    }


def full_site(files: dict[str, Path]) -> Site:
    spec = SiteSpec(
        name="sanjose",
        timezone="America/Los_Angeles",
        carbon=str(files["carbon"]),
        weather=str(files["weather"]),
        cooling="economizer",
        wue="wet-bulb",
        water_per_kwh=2.0,
        price=str(files["price"]),
        power="wind",
        wind=WindTurbines(turbines=2),
    )
    return load_site(spec)


def test_a_site_from_files_gives_every_factor_per_slot(files: dict[str, Path]) -> None:
    site = full_site(files)
    assert site.span() == (utc("2023-01-01T07:00"), utc("2023-01-03T00:00"))
    starts = grid("2023-01-01T08:00", 16, 900)
    factors = site.factors(starts, 900)
    assert factors.starts.tolist() == starts.tolist() and factors.slot_s == 900
    per_slot = (
        "pue",
        "carbon_g_per_kwh",
        "wue_l_per_kwh",
        "water_l_per_kwh",
        "price_usd_per_mwh",
        "power_kw",
    )
    for name in (*per_slot, "temperature_c"):
        values = getattr(factors, name)
        assert values is not None and values.shape == (16,), name
    assert site.weather is not None
    temperature = site.weather.temperature_c.on_slots(starts, 900)
    assert factors.temperature_c == pytest.approx(temperature)
    assert factors.pue == pytest.approx(site.cooling.pue(temperature))  # PUE of the slot's mean temperature
    assert factors.water_l_per_kwh is not None and set(factors.water_l_per_kwh) == {2.0}
    assert factors.kinds == {
        "carbon": "series",
        "temperature": "series",
        "price": "series",
        "power": "derived",
        "pue": "model",
        "wue": "model",
        "water": "assumed",
    }
    assert set(factors.sources) == set(factors.kinds)
    assert "Electricity Maps" in factors.sources["carbon"] and "economizer" in factors.sources["pue"]


def test_wind_power_is_derived_from_the_weather(files: dict[str, Path]) -> None:
    site = full_site(files)
    assert site.power is not None and site.weather is not None and site.weather.wind_speed_kmh is not None
    assert site.power.kind == "derived" and site.power.source == str(files["weather"])
    expected = wind_power_kw(site.weather.wind_speed_kmh.values, WindTurbines(turbines=2))
    assert site.power.values == pytest.approx(expected)
    assert site.power.times.tolist() == site.weather.wind_speed_kmh.times.tolist()
    assert site.power.note.startswith("derived: turbine power curve") and "2 × 2000 kW" in site.power.note


def test_factors_outside_a_file_name_it(files: dict[str, Path]) -> None:
    site = full_site(files)
    early = grid("2023-01-01T00:00", 4, 3600)  # before the weather's 07:00 UTC
    with pytest.raises(
        SiteDataError, match=re.escape(f"{files['weather']}: temperature covers 2023-01-01 07:00")
    ):
        site.factors(early, 3600)


def test_constants_are_assumed_and_cover_any_time() -> None:
    spec = SiteSpec(
        name="flat", carbon=300.0, price=50.0, power=1000.0, cooling=1.3, wue=1.8, water_per_kwh=3.1
    )
    site = load_site(spec)
    assert site.span() is None
    factors = site.factors(grid("2031-03-01T00:00", 3, 7200), 7200)
    assert factors.pue.tolist() == [1.3] * 3
    assert factors.carbon_g_per_kwh is not None and factors.carbon_g_per_kwh.tolist() == [300.0] * 3
    assert factors.price_usd_per_mwh is not None and factors.price_usd_per_mwh.tolist() == [50.0] * 3
    assert factors.power_kw is not None and factors.power_kw.tolist() == [1000.0] * 3
    assert factors.wue_l_per_kwh is not None and factors.wue_l_per_kwh.tolist() == [1.8] * 3
    assert factors.temperature_c is None
    assert set(factors.kinds.values()) == {"assumed"}


def test_a_bare_site_has_the_default_pue_and_nothing_else() -> None:
    site = load_site(SiteSpec(name="bare"))
    factors = site.factors(grid("2023-01-01T00:00", 2, 3600), 3600)
    assert factors.pue.tolist() == [DEFAULT_PUE] * 2
    assert (
        factors.sources["pue"]
        == f"constant PUE {DEFAULT_PUE:g} (Uptime Institute Global Data Center Survey 2023 average)"
    )
    assert factors.kinds == {"pue": "assumed"}
    unknown = ("carbon_g_per_kwh", "wue_l_per_kwh", "water_l_per_kwh", "price_usd_per_mwh", "power_kw")
    assert [getattr(factors, name) for name in (*unknown, "temperature_c")] == [None] * 6


def test_describe_is_json_friendly(files: dict[str, Path]) -> None:
    described = full_site(files).describe()
    assert {"name", "timezone", "span", "weather", "factors"} <= set(described)
    assert described["span"] == ["2023-01-01 07:00", "2023-01-03 00:00"]
    assert {"carbon", "price", "power", "temperature", "relative humidity", "pue", "wue", "water"} == set(
        described["factors"]
    )
    assert described["factors"]["power"]["kind"] == "derived"
    assert described["factors"]["pue"]["parameters"]["model"] == "economizer"
    assert described["factors"]["carbon"]["span"] == ["2023-01-01 00:00", "2023-01-03 00:00"]
    json.dumps(described)


def test_load_sites_reads_a_shared_file_once(files: dict[str, Path]) -> None:
    weather = str(files["weather"])
    sites = load_sites(
        {
            "a": SiteSpec(name="a", weather=weather, cooling="chiller"),
            "b": SiteSpec(name="b", weather=weather, cooling="economiser", timezone="Europe/London"),
        }
    )
    assert sites["a"].weather is sites["b"].weather
    assert sites["b"].zone() == ZoneInfo("Europe/London")


def test_models_without_their_inputs_are_errors(files: dict[str, Path], tmp_path: Path) -> None:
    dry = write_open_meteo_json(tmp_path / "dry.json", [10.0, 11.0])
    with pytest.raises(
        SiteDataError,
        match=re.escape(f"{dry}: site s has wue = 'wet-bulb', which needs the relative humidity"),
    ):
        load_site(SiteSpec(name="s", weather=str(dry), wue="wet-bulb"))
    with pytest.raises(SiteDataError, match="power = 'wind', which needs the wind speed"):
        load_site(SiteSpec(name="s", weather=str(dry), power="wind"))
    table = write_csv(tmp_path / "pue.csv", "t,pue", [[0, 1.1], [30, 1.4]])
    with pytest.raises(ValidationError, match="need\\(s\\) a weather file"):
        SiteSpec(name="s", cooling=str(table))


def test_a_bad_file_fails_the_load_naming_it(tmp_path: Path) -> None:
    bad = write_csv(tmp_path / "price.csv", "time,value", [["2023-01-01T00:00", 1], ["2023-01-01T01:00", ""]])
    with pytest.raises(SiteDataError, match=re.escape(f"{bad}: line 3: value is missing")):
        load_site(SiteSpec(name="s", price=str(bad)))
