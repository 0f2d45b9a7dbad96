"""Weather files: Open-Meteo JSON and CSV (their own clock governs), plain CSVs, and their errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from hpcqueue.errors import SiteDataError
from hpcqueue.sites import read_weather
from tests.sites import write_csv, write_open_meteo_csv, write_open_meteo_json


def utc(text: str) -> np.datetime64:
    return np.datetime64(text, "s")


def test_open_meteo_json_local_clock_becomes_utc(tmp_path: Path) -> None:
    path = write_open_meteo_json(
        tmp_path / "w.json",
        [10.0, 11.5, 13.0],
        humidity=[80, 70, 60],
        wind=[0.0, 18.0, 36.0],
        offset_s=-25200,
    )
    weather = read_weather(path)
    temperature = weather.temperature_c
    # UTC = local − offset: local 00:00 at −25200 s (UTC−7) is 07:00 UTC.
    assert temperature.times[0] == utc("2023-01-01T07:00") and temperature.step_s == 3600
    assert temperature.values.tolist() == [10.0, 11.5, 13.0]
    assert weather.relative_humidity_pct is not None and weather.wind_speed_kmh is not None
    assert weather.relative_humidity_pct.values.tolist() == [80, 70, 60]
    assert weather.wind_speed_kmh.values.tolist() == [0, 18, 36]
    assert weather.relative_humidity_pct.times[0] == temperature.times[0]
    assert (temperature.unit, weather.relative_humidity_pct.unit, weather.wind_speed_kmh.unit) == (
        "°C",
        "%",
        "km/h",
    )
    assert (
        "temperature_2m of Open-Meteo" in temperature.note and "UTC-7 h converted to UTC" in temperature.note
    )
    assert weather.source == str(path) and temperature.kind == "series"


def test_an_east_of_greenwich_offset_goes_back_a_day(tmp_path: Path) -> None:
    path = write_open_meteo_json(tmp_path / "w.json", [20.0, 21.0], offset_s=39600)  # Sydney in summer
    weather = read_weather(path)
    assert weather.temperature_c.times[0] == utc("2022-12-31T13:00")
    assert weather.relative_humidity_pct is None and weather.wind_speed_kmh is None


def test_wind_speed_is_converted_to_kmh(tmp_path: Path) -> None:
    path = write_open_meteo_json(
        tmp_path / "w.json",
        [1.0, 2.0],
        wind=[5.0, 10.0],
        wind_key="wind_speed_10m",
        units={"wind_speed_10m": "m/s"},
    )
    wind = read_weather(path).wind_speed_kmh
    assert wind is not None and wind.values.tolist() == pytest.approx([18.0, 36.0])


def test_open_meteo_csv_with_its_metadata_block(tmp_path: Path) -> None:
    path = write_open_meteo_csv(
        tmp_path / "w.csv", [1.5, 2.5, 3.5], [90, 95, 100], [3.6, 7.2, 0], offset_s=3600
    )
    weather = read_weather(path)
    # utc_offset_seconds 3600 in the metadata: local 00:00 is 23:00 UTC the day before.
    assert weather.temperature_c.times[0] == utc("2022-12-31T23:00")
    assert weather.temperature_c.values.tolist() == [1.5, 2.5, 3.5]  # the daily block after it is not read
    assert weather.relative_humidity_pct is not None and weather.relative_humidity_pct.values.tolist() == [
        90,
        95,
        100,
    ]
    assert weather.wind_speed_kmh is not None and weather.wind_speed_kmh.values.tolist() == [3.6, 7.2, 0]
    assert "Open-Meteo CSV" in weather.temperature_c.note


def test_a_plain_weather_csv_is_utc_unless_a_time_says_otherwise(tmp_path: Path) -> None:
    plain = write_csv(
        tmp_path / "p.csv", "time,temperature", [["2023-07-01T12:00", 30], ["2023-07-01T13:00", 31]]
    )
    assert read_weather(plain).temperature_c.times[0] == utc("2023-07-01T12:00")
    offset = write_csv(
        tmp_path / "o.csv",
        "time,temperature_2m,relative_humidity_2m,windspeed_10m",
        [["2023-07-01T12:00+02:00", 30, 40, 5], ["2023-07-01T13:00+02:00", 31, 41, 6]],
    )
    weather = read_weather(offset)
    assert weather.temperature_c.times[0] == utc("2023-07-01T10:00")
    assert weather.wind_speed_kmh is not None and weather.wind_speed_kmh.values.tolist() == [5, 6]


def test_a_missing_weather_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SiteDataError, match=re.escape(f"{tmp_path / 'w.json'}: weather file not found")):
        read_weather(tmp_path / "w.json")


def test_a_null_in_open_meteo_names_its_element(tmp_path: Path) -> None:
    path = write_open_meteo_json(tmp_path / "w.json", [1.0, None, 3.0])
    with pytest.raises(
        SiteDataError, match=re.escape(f"{path}: hourly.temperature_2m[1] (2023-01-01T01:00) is null")
    ):
        read_weather(path)


def test_no_temperature_lists_what_the_file_has(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    path.write_text(
        json.dumps(
            {
                "utc_offset_seconds": 0,
                "hourly": {"time": ["2023-01-01T00:00", "2023-01-01T01:00"], "cloudcover": [5, 6]},
            }
        )
    )
    with pytest.raises(
        SiteDataError,
        match=r"no temperature: expected 'temperature_2m' or 'temperature'.*found 'time', 'cloudcover'",
    ):
        read_weather(path)
    csv = write_csv(tmp_path / "w.csv", "time,cloudcover", [["2023-01-01T00:00", 5], ["2023-01-01T01:00", 5]])
    with pytest.raises(SiteDataError, match="found 'time', 'cloudcover'"):
        read_weather(csv)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "cannot read the weather file as JSON"),
        ('{"latitude": 1}', "not an Open-Meteo response: expected 'utc_offset_seconds' and 'hourly'"),
        (
            '{"utc_offset_seconds": 0, "hourly": {"time": ["2023-01-01T00:00", "2023-01-01T01:00"], '
            '"temperature_2m": [1.0]}}',
            "hourly.temperature_2m has 1 values but hourly.time has 2 times",
        ),
        (
            '{"utc_offset_seconds": 0, "hourly": {"time": ["2023-01-01T00:00", "2023-01-01T01:00"], '
            '"temperature_2m": [1.0, 2.0], "relative_humidity_2m": [50, 101]}}',
            "hourly.time[1] (2023-01-01T01:00): hourly.relative_humidity_2m 101 must be within 0..100",
        ),
        (
            '{"utc_offset_seconds": 0, "hourly_units": {"temperature_2m": "°F"}, "hourly": {"time": '
            '["2023-01-01T00:00", "2023-01-01T01:00"], "temperature_2m": [50.0, 52.0]}}',
            "hourly.temperature_2m is in '°F'; hpcqueue reads '°C'",
        ),
        (
            '{"utc_offset_seconds": 0, "hourly": {"time": ["2023-01-01T00:00", "2023-01-01T00:00"], '
            '"temperature_2m": [1.0, 2.0]}}',
            "hourly.time[1] (2023-01-01T00:00): hourly.time time 2023-01-01 00:00 (UTC) is a duplicate",
        ),
    ],
    ids=["not-json", "not-open-meteo", "length", "humidity", "fahrenheit", "duplicate"],
)
def test_bad_open_meteo_files(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "w.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SiteDataError, match=re.escape(problem)) as info:
        read_weather(path)
    assert str(info.value).startswith(f"{path}: ")


def test_negative_humidity_in_a_csv_names_its_line(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "w.csv",
        "time,temperature_2m,relative_humidity_2m",
        [["2023-01-01T00:00", 1, 50], ["2023-01-01T01:00", 1, -2]],
    )
    with pytest.raises(
        SiteDataError, match=re.escape(f"{path}: line 3: relative_humidity_2m -2 must be within 0..100")
    ):
        read_weather(path)
