"""``hpcqueue sites list|show|plot`` as a user runs them, on small synthetic site data (no network, no real
grid files): one site of series and models, one of constants."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from hpcqueue.cli import app
from hpcqueue.config import resolve
from hpcqueue.sites import load_site
from tests.cli import COMMANDS
from tests.helpers import png_size
from tests.sites import write_csv, write_em_csv, write_open_meteo_json

runner = CliRunner()
N_HOURS = 48
#: The synthetic carbon intensity is clean from 10:00 to 14:00 UTC on the first day (02:00–06:00 in
#: Los Angeles), and electricity cheap from 20:00 to 24:00 UTC (12:00–16:00 there).
CLEAN_HOURS = range(10, 14)
CHEAP_HOURS = range(20, 24)
# 02:00 UTC on 2023-01-01, as a Los Angeles user types it.
START = "2022-12-31T18:00-08:00"


def invoke(*args: str | Path) -> Any:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def config(hq_env: dict[str, str], tmp_path: Path) -> Path:
    """A config with two sites: ``west`` (carbon, weather, price files; economizer PUE, wet-bulb WUE, wind
    power derived from the weather) and ``east`` (constants only, no price), and targets at both."""
    hour = np.arange(N_HOURS)
    carbon = 300.0 + 20.0 * (hour % 3)
    carbon[list(CLEAN_HOURS)] = 60.0
    write_em_csv(tmp_path / "carbon.csv", carbon.tolist(), first="2023-01-01 00:00:00")
    # Open-Meteo's local clock at UTC−8: local 16:00 on 2022-12-31 is 00:00 UTC on 2023-01-01.
    write_open_meteo_json(
        tmp_path / "weather.json",
        (15 + 12 * np.sin((hour - 9) / 24 * 2 * np.pi)).round(1).tolist(),
        humidity=[70.0] * N_HOURS,
        wind=(hour % 12 * 4.0).tolist(),
        offset_s=-28800,
        first_local="2022-12-31T16:00",
    )
    price = np.full(N_HOURS, 80.0)
    price[list(CHEAP_HOURS)] = 5.0
    times = np.datetime64("2023-01-01T00:00", "s") + hour * np.timedelta64(3600, "s")
    write_csv(
        tmp_path / "price.csv",
        "Datetime (UTC),Price (USD/MWh)",
        [[f"{str(t).replace('T', ' ')}+00:00", p] for t, p in zip(times, price, strict=True)],
    )
    path = tmp_path / "cluster.toml"
    path.write_text(
        """
[sites.west]
timezone = "America/Los_Angeles"
carbon = "carbon.csv"
weather = "weather.json"
cooling = "economizer"
wue = "wet-bulb"
water_per_kwh = 2.0
price = "price.csv"
power = "wind"
wind = { turbines = 2 }

[sites.east]
timezone = "America/New_York"
carbon = 400
cooling = 1.3
wue = 0.5
water_per_kwh = 1.0
power = 500

[targets.gpu]
site = "west"

[targets.cpu]
site = "west"

[targets.m1]
site = "east"
""",
        encoding="utf-8",
    )
    return path


def test_the_commands_exist() -> None:
    for command in ("list", "show", "plot"):
        assert ("sites", command) in COMMANDS


def test_list_names_each_site_its_targets_factors_and_span(config: Path) -> None:
    result = invoke("sites", "list", "--config", config, "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert list(rows) == ["west", "east"]
    west, east = rows["west"], rows["east"]
    assert west["targets"] == ["gpu", "cpu"] and east["targets"] == ["m1"]
    assert west["timezone"] == "America/Los_Angeles"
    assert west["carbon"] == "series carbon.csv (direct)"
    assert (west["cooling"], west["wue"], west["off_site_water"]) == (
        "model: economizer",
        "model: wet-bulb",
        "assumed 2 L/kWh",
    )
    assert west["price"] == "yes: series price.csv" and west["power"] == "derived: wind, 2 × 2000 kW"
    assert west["span_utc"] == ["2023-01-01 00:00", "2023-01-03 00:00"]
    assert west["kinds"] | {} == {
        "carbon": "series",
        "price": "series",
        "power": "derived",
        "temperature": "series",
        "relative humidity": "series",
        "pue": "model",
        "wue": "model",
        "water": "assumed",
    }
    assert west["files"]["carbon"] == str(config.parent / "carbon.csv")
    assert east["carbon"] == "assumed 400 gCO2eq/kWh" and east["cooling"] == "assumed PUE 1.3"
    assert (east["price"], east["power"], east["span_utc"]) == ("no", "assumed 500 kW", None)
    assert set(east["kinds"].values()) == {"assumed"}

    table = invoke("sites", "list", "--config", config)
    assert table.exit_code == 0, table.output
    for text in (
        "west",
        "east",
        "gpu, cpu",
        "carbon.csv",
        "model: economizer",
        "derived: wind",
        "constants only",
    ):
        assert text in table.stdout, text


def test_list_without_sites_says_how_to_declare_one(hq_env: dict[str, str], tmp_path: Path) -> None:
    bare = tmp_path / "bare.toml"
    bare.write_text("[targets.gpu]\nhardware = 'a100-40g'\n", encoding="utf-8")
    result = invoke("sites", "list", "--config", bare)
    assert result.exit_code == 0, result.output
    said = " ".join(result.stdout.split())
    assert f"no sites in {bare.resolve()}" in said and "[sites.NAME]" in said and "docs/sites.md" in said
    as_json = invoke("sites", "list", "--config", bare, "--json")
    assert as_json.exit_code == 0 and json.loads(as_json.stdout) == []


def _show(config: Path, site: str, *args: str) -> dict[str, Any]:
    result = invoke("sites", "show", site, "--config", config, "--start", START, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_show_gives_the_library_s_numbers_hour_by_hour_in_the_site_s_time(config: Path) -> None:
    shown = _show(config, "west")
    assert set(shown) >= {"site", "targets", "start", "slot_s", "columns", "slots", "best_windows", "notes"}
    assert shown["site"]["factors"]["carbon"]["kind"] == "series"
    assert shown["targets"] == ["gpu", "cpu"] and shown["notes"] == []
    assert shown["start"] == "2022-12-31T18:00:00-08:00" and shown["slot_s"] == 3600
    slots = shown["slots"]
    assert len(slots) == 24 and slots[1]["start"] == "2022-12-31T19:00:00-08:00"
    assert {key: c["kind"] for key, c in shown["columns"].items()} == {
        "temperature_c": "series",
        "pue": "model",
        "wue_l_per_kwh": "model",
        "carbon_g_per_kwh": "series",
        "carbon_g_per_it_kwh": "derived",
        "water_l_per_it_kwh": "derived",
        "price_usd_per_mwh": "series",
        "cost_usd_per_it_mwh": "derived",
        "power_kw": "derived",
    }
    assert "economizer" in shown["columns"]["pue"]["source"]

    site = load_site(resolve(config).sites["west"])
    starts = np.datetime64("2023-01-01T02:00", "s") + np.arange(24) * np.timedelta64(3600, "s")
    f = site.factors(starts, 3600)
    assert f.carbon_g_per_kwh is not None and f.wue_l_per_kwh is not None and f.water_l_per_kwh is not None
    assert f.price_usd_per_mwh is not None and f.power_kw is not None and f.temperature_c is not None
    for i in (0, 9, 17):
        slot = slots[i]
        assert slot["temperature_c"] == pytest.approx(f.temperature_c[i])
        assert slot["pue"] == pytest.approx(f.pue[i])
        assert slot["wue_l_per_kwh"] == pytest.approx(f.wue_l_per_kwh[i])
        assert slot["carbon_g_per_kwh"] == pytest.approx(f.carbon_g_per_kwh[i])
        assert slot["carbon_g_per_it_kwh"] == pytest.approx(f.pue[i] * f.carbon_g_per_kwh[i])
        assert slot["water_l_per_it_kwh"] == pytest.approx(f.wue_l_per_kwh[i] + f.pue[i] * 2.0)
        assert slot["price_usd_per_mwh"] == pytest.approx(f.price_usd_per_mwh[i])
        assert slot["power_kw"] == pytest.approx(f.power_kw[i])


def test_show_finds_the_clean_and_the_cheap_hours(config: Path) -> None:
    shown = _show(config, "west", "--window", "4h")
    carbon = shown["best_windows"]["carbon"]
    # 10:00–14:00 UTC, the synthetic clean hours, are 02:00–06:00 in Los Angeles.
    assert (carbon["start"], carbon["end"]) == ("2023-01-01T02:00:00-08:00", "2023-01-01T06:00:00-08:00")
    per_it_kwh = [s["carbon_g_per_it_kwh"] for s in shown["slots"]]
    assert carbon["mean"] == pytest.approx(np.mean(per_it_kwh[8:12]))  # slots from 02:00 UTC
    assert carbon["mean_at_start"] == pytest.approx(np.mean(per_it_kwh[0:4]))
    assert carbon["lower_than_at_start_pct"] == pytest.approx(
        100 * (1 - carbon["mean"] / carbon["mean_at_start"])
    )
    assert carbon["lower_than_at_start_pct"] > 70
    cost = shown["best_windows"]["cost"]
    assert cost["start"] == "2023-01-01T12:00:00-08:00"  # 20:00 UTC
    assert set(shown["best_windows"]) == {"carbon", "water", "cost"}

    shorter = _show(config, "west", "--window", "2h", "--hours", "12")
    assert len(shorter["slots"]) == 12 and shorter["window_s"] == 7200
    assert shorter["best_windows"]["carbon"]["start"] == "2023-01-01T02:00:00-08:00"


def test_show_of_a_site_of_constants_says_what_it_does_not_know(config: Path) -> None:
    shown = _show(config, "east", "--slot", "30m", "--hours", "3")
    assert len(shown["slots"]) == 6 and shown["slots"][0]["start"] == "2022-12-31T21:00:00-05:00"
    assert [s["carbon_g_per_it_kwh"] for s in shown["slots"]] == pytest.approx([400 * 1.3] * 6)
    assert [s["water_l_per_it_kwh"] for s in shown["slots"]] == pytest.approx([0.5 + 1.3 * 1.0] * 6)
    assert shown["window_s"] == 3 * 3600  # the default 4 h, cut to the hours shown
    assert all(s["price_usd_per_mwh"] is None and s["temperature_c"] is None for s in shown["slots"])
    assert shown["columns"]["price_usd_per_mwh"]["kind"] is None
    assert {shown["columns"][k]["kind"] for k in ("pue", "carbon_g_per_kwh", "power_kw")} == {"assumed"}
    assert "cost" not in shown["best_windows"]
    assert shown["best_windows"]["carbon"]["lower_than_at_start_pct"] == 0
    assert any("free" in note for note in shown["notes"])


def test_show_as_tables_labels_every_column_with_its_kind(config: Path) -> None:
    result = invoke("sites", "show", "west", "--config", config, "--start", START)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "site west (America/Los_Angeles); targets: gpu, cpu" in text
    assert "next 24 h from 2022-12-31 18:00 PST" in text
    for kind in ("series", "assumed", "derived", "model"):
        assert kind in text, kind
    assert "12-31 18:00" in text and "01-01 17:00" in text  # the first and last slot, local time
    assert "best 4 h windows ahead" in text and "2023-01-01 02:00 PST" in text

    east = invoke("sites", "show", "east", "--config", config, "--start", START)
    assert east.exit_code == 0, east.output
    price_cells = [line.split("│")[8].strip() for line in east.stdout.splitlines() if "│ 12-31 21:00" in line]
    assert price_cells == ["-"]  # unknown, not zero


@pytest.fixture()
def machine_in_tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This machine's local time zone is Tokyo's, far from the sites', so a time read in it would show."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("machine_in_tokyo")
def test_show_reads_a_start_without_an_offset_in_the_site_s_time_zone(config: Path) -> None:
    # The same wall-clock time is a different moment at each site: 18:00 in Los Angeles, 18:00 in New York.
    assert _show(config, "west", "--hours", "2")["start"] == "2022-12-31T18:00:00-08:00"
    east = invoke("sites", "show", "east", "--config", config, "--start", "2022-12-31T18:00", "--json")
    assert east.exit_code == 0, east.output
    assert json.loads(east.stdout)["start"] == "2022-12-31T18:00:00-05:00"
    # With an offset, the time is as given, shown in the site's time.
    given = invoke("sites", "show", "west", "--config", config, "--start", "2023-01-01T02:00Z", "--json")
    assert given.exit_code == 0, given.output
    assert json.loads(given.stdout)["start"] == "2022-12-31T18:00:00-08:00"
    table = invoke("sites", "show", "west", "--config", config, "--start", "2022-12-31T18:00")
    assert table.exit_code == 0, table.output
    assert "next 24 h from 2022-12-31 18:00 PST" in table.stdout


def test_show_steps_through_a_change_of_the_clocks_an_hour_at_a_time(config: Path) -> None:
    # New York moves its clocks from 02:00 EST to 03:00 EDT on 2023-03-12: slots stay an hour apart.
    result = invoke(
        "sites", "show", "east", "--config", config, "--start", "2023-03-12T00:00", "--hours", "4", "--json"
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert [slot["start"] for slot in shown["slots"]] == [
        "2023-03-12T00:00:00-05:00",
        "2023-03-12T01:00:00-05:00",
        "2023-03-12T03:00:00-04:00",
        "2023-03-12T04:00:00-04:00",
    ]
    assert shown["best_windows"]["carbon"]["end"] == "2023-03-12T05:00:00-04:00"  # 4 h after the start


def test_show_beyond_the_data_names_the_file_and_exits_2(config: Path) -> None:
    result = invoke("sites", "show", "west", "--config", config, "--start", "2023-01-02T12:00Z")
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert any(str(config.parent / name) in said for name in ("weather.json", "carbon.csv", "price.csv")), (
        said
    )
    assert "2023-01-03 00:00" in said and "--start" in said


def test_show_errors_name_what_is_valid(config: Path) -> None:
    unknown = invoke("sites", "show", "north", "--config", config)
    assert unknown.exit_code == 2
    assert "unknown site 'north'" in unknown.output and "west, east" in unknown.output
    window = invoke("sites", "show", "west", "--config", config, "--start", START, "--window", "90m")
    assert window.exit_code == 2 and "--window" in window.output and "whole number of slots" in window.output


def test_plot_writes_a_png_and_prints_its_path(config: Path, tmp_path: Path) -> None:
    for site, hours in (("west", "40"), ("east", "24")):
        path = tmp_path / "plots" / f"{site}.png"
        result = invoke(
            "sites", "plot", site, "-o", path, "--config", config, "--start", START, "--hours", hours
        )
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == str(path)
        width, height = png_size(path)
        assert width > 1000 and height > 800  # the time panels and the curves below them
    beyond = invoke(
        "sites", "plot", "west", "-o", tmp_path / "late.png", "--config", config, "--start", START
    )
    assert beyond.exit_code == 2  # 168 h from the start: past the 48 h of data
    assert not (tmp_path / "late.png").exists()
