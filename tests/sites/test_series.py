"""Series and the CSV readers: values, clocks, resampling to slots, and every bad-data error."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from hpcqueue.errors import SiteDataError
from hpcqueue.sites import Series, read_carbon, read_power, read_price
from tests.sites import EM_HEADER_NEW, hours, write_csv, write_em_csv


def utc(text: str) -> np.datetime64:
    return np.datetime64(text, "s")


def hourly(values: list[float], first: str = "2023-01-01T00:00") -> Series:
    times = utc(first) + np.arange(len(values)) * np.timedelta64(3600, "s")
    return Series("carbon intensity", "gCO2eq/kWh", "test.csv", "series", times, np.array(values), 3600.0)


# -- readers ---------------------------------------------------------------------------------------------


def test_carbon_from_todays_electricity_maps_header(tmp_path: Path) -> None:
    path = write_em_csv(tmp_path / "em.csv", [100.0, 150.5, 200.0], [120.0, 170.0, 230.0], zone="GB")
    series = read_carbon(path)
    assert series.values.tolist() == [100.0, 150.5, 200.0]
    assert series.times[0] == utc("2023-01-01T00:00") and series.step_s == 3600
    assert series.span() == (utc("2023-01-01T00:00"), utc("2023-01-01T03:00"))
    assert (series.kind, series.source, series.unit) == ("series", str(path), "gCO2eq/kWh")
    assert "Electricity Maps" in series.note and "zone GB" in series.note and "(direct)" in series.note
    lifecycle = read_carbon(path, "lifecycle")
    assert lifecycle.values.tolist() == [120.0, 170.0, 230.0]
    assert "Life cycle" in lifecycle.note


def test_carbon_from_the_older_header_picks_the_lca_column(tmp_path: Path) -> None:
    path = write_em_csv(
        tmp_path / "old.csv", [300.0, 310.0], [400.0, 410.0], header="old", zone="US-CAL-CISO"
    )
    assert read_carbon(path).values.tolist() == [300.0, 310.0]
    lca = read_carbon(path, column="lifecycle")
    assert lca.values.tolist() == [400.0, 410.0]
    assert "(LCA)" in lca.note and "US-CAL-CISO" in lca.note


def test_column_names_match_whatever_their_case(tmp_path: Path) -> None:
    header = EM_HEADER_NEW.upper()
    path = write_csv(
        tmp_path / "upper.csv",
        header,
        [["2023-01-01 00:00:00", "Z", 5, 6], ["2023-01-01 01:00:00", "Z", 7, 8]],
    )
    assert read_carbon(path).values.tolist() == [5.0, 7.0]


def test_time_value_carbon_converts_offsets_to_utc(tmp_path: Path) -> None:
    with_offset = write_csv(
        tmp_path / "offset.csv",
        "time,value",
        [["2023-06-01T02:00-04:00", 10], ["2023-06-01T02:30-04:00", 20], ["2023-06-01T03:00-04:00", 30]],
    )
    series = read_carbon(with_offset)
    assert series.times[0] == utc("2023-06-01T06:00") and series.step_s == 1800
    assert series.note.startswith("time,value CSV")
    naive = write_csv(
        tmp_path / "naive.csv", "time,value", [["2023-06-01T02:00", 1], ["2023-06-01T03:00", 2]]
    )
    assert read_carbon(naive).times[0] == utc("2023-06-01T02:00")  # no offset: UTC
    zulu = write_csv(tmp_path / "z.csv", "time,value", [["2023-06-01T02:00Z", 1], ["2023-06-01T03:00Z", 2]])
    assert read_carbon(zulu).times[0] == utc("2023-06-01T02:00")


def test_price_in_the_greendcc_format_may_be_negative(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "price.csv",
        "Datetime (UTC),Datetime (Local),Price (USD/MWh)",
        [
            ["2023-01-01 00:00:00+00:00", "2022-12-31 16:00:00-08:00", 114.9],
            ["2023-01-01 01:00:00+00:00", "2022-12-31 17:00:00-08:00", -19.0],
            ["2023-01-01 02:00:00+00:00", "2022-12-31 18:00:00-08:00", 0.0],
        ],
    )
    series = read_price(path)
    assert series.values.tolist() == [114.9, -19.0, 0.0]
    assert series.times[0] == utc("2023-01-01T00:00") and series.unit == "USD/MWh"
    plain = write_csv(tmp_path / "p.csv", "time,value", [["2023-01-01T00:00", -5], ["2023-01-01T01:00", 7]])
    assert read_price(plain).values.tolist() == [-5.0, 7.0]


@pytest.mark.parametrize("column", ["value", "power_kw"])
def test_power_from_a_csv(tmp_path: Path, column: str) -> None:
    path = write_csv(
        tmp_path / "p.csv", f"time,{column}", [["2023-01-01T00:00", 500], ["2023-01-01T00:15", 0]]
    )
    series = read_power(path)
    assert series.values.tolist() == [500.0, 0.0] and series.step_s == 900 and series.unit == "kW"


def test_a_year_of_hourly_data_reads_quickly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = write_em_csv(tmp_path / "year.csv", rng.uniform(50, 500, 8760).round(2).tolist())
    started = time.perf_counter()
    series = read_carbon(path)
    assert series.values.size == 8760
    assert time.perf_counter() - started < 2.0  # about 20 ms on a laptop; generous for slow CI machines


# -- bad files -------------------------------------------------------------------------------------------


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        SiteDataError, match=re.escape(f"{tmp_path / 'nope.csv'}: carbon intensity CSV not found")
    ):
        read_carbon(tmp_path / "nope.csv")


def test_wrong_columns_list_what_was_found_and_expected(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", "when,co2", [["2023-01-01T00:00", 1]])
    with pytest.raises(SiteDataError) as info:
        read_carbon(path)
    message = str(info.value)
    assert str(path) in message and "found 'when', 'co2'" in message
    assert "'Datetime (UTC)'" in message and "'time'" in message
    path = write_csv(tmp_path / "d.csv", "time,price", [["2023-01-01T00:00", 1]])
    with pytest.raises(SiteDataError, match=r"no column for carbon intensity: expected one of .*'value'"):
        read_carbon(path)


@pytest.mark.parametrize(
    ("cell", "problem"),
    [("", "is missing"), ("abc", "is not a finite number: 'abc'"), ("NaN", "is not a finite number: 'NaN'")],
)
def test_a_missing_value_names_its_line(tmp_path: Path, cell: str, problem: str) -> None:
    rows: list[list[object]] = [[t, 1.0] for t in hours("2023-01-01 00:00:00", 5)]
    rows[2][1] = cell
    path = write_csv(tmp_path / "c.csv", "time,value", rows)
    with pytest.raises(SiteDataError, match=re.escape(f"{path}: line 4: value {problem}")):
        read_carbon(path)


def test_a_bad_time_names_its_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", "time,value", [["2023-01-01T00:00", 1], ["yesterday", 2]])
    with pytest.raises(SiteDataError, match="line 3: time is not an ISO 8601 time: 'yesterday'"):
        read_carbon(path)


def test_a_gap_is_named(tmp_path: Path) -> None:
    times = hours("2023-01-01 00:00:00", 6)
    path = write_csv(
        tmp_path / "c.csv", "time,value", [[t, 1] for i, t in enumerate(times) if i not in (3, 4)]
    )
    with pytest.raises(SiteDataError) as info:
        read_carbon(path)
    assert str(info.value) == (
        f"{path}: line 5: carbon intensity gap: nothing from 2023-01-01 03:00 to 2023-01-01 05:00 (UTC); "
        "the step elsewhere is 1 h"
    )


def test_an_irregular_step_is_named(tmp_path: Path) -> None:
    rows = [["2023-01-01T00:00", 1], ["2023-01-01T01:00", 1], ["2023-01-01T02:30", 1]]
    with pytest.raises(
        SiteDataError, match="line 4: carbon intensity irregular step: 90 min after 2023-01-01 01:00"
    ):
        read_carbon(write_csv(tmp_path / "c.csv", "time,value", rows))


def test_duplicate_and_backward_times_are_named(tmp_path: Path) -> None:
    rows = [["2023-01-01T00:00", 1], ["2023-01-01T01:00", 1], ["2023-01-01T01:00", 2]]
    with pytest.raises(
        SiteDataError, match=r"line 4: .*2023-01-01 01:00 \(UTC\) is a duplicate of the one at line 3"
    ):
        read_carbon(write_csv(tmp_path / "dup.csv", "time,value", rows))
    rows[2][0] = "2023-01-01T00:30"
    with pytest.raises(SiteDataError, match=r"line 4: .* is earlier than the one at line 3"):
        read_carbon(write_csv(tmp_path / "back.csv", "time,value", rows))


def test_negative_carbon_and_power_are_errors(tmp_path: Path) -> None:
    rows = [["2023-01-01T00:00", 1], ["2023-01-01T01:00", -3]]
    path = write_csv(tmp_path / "c.csv", "time,value", rows)
    with pytest.raises(
        SiteDataError, match=re.escape(f"{path}: line 3: carbon intensity -3 must not be below 0")
    ):
        read_carbon(path)
    with pytest.raises(
        SiteDataError, match=re.escape(f"{path}: line 3: available power -3 must not be below 0")
    ):
        read_power(path)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the carbon intensity CSV is empty"),
        ("time,value\n", "has a header but no rows"),
        ("time,value\n2023-01-01T00:00,1\n", "has 1 time(s); a series needs at least two"),
        ("time,value\n2023-01-01T00:00,1\n2023-01-01T01:00,2,3,4\n", "cannot parse the carbon intensity CSV"),
        ("time,value\n2023-01-01T00:00,1\n\n2023-01-01T01:00,2\n", "line 3 is empty"),
    ],
    ids=["empty", "header-only", "one-row", "ragged", "blank-line"],
)
def test_unusable_files(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "c.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SiteDataError, match=re.escape(problem)) as info:
        read_carbon(path)
    assert str(path) in str(info.value)


def test_trailing_blank_lines_are_not_data(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("time,value\n2023-01-01T00:00,1\n2023-01-01T01:00,2\n\n\n", encoding="utf-8")
    assert read_carbon(path).values.tolist() == [1.0, 2.0]


# -- Series ----------------------------------------------------------------------------------------------


def test_on_slots_of_the_series_step_gives_the_values() -> None:
    series = hourly([10.0, 20.0, 30.0, 40.0])
    starts = series.times.copy()
    assert series.on_slots(starts, 3600) == pytest.approx([10, 20, 30, 40])


def test_a_shorter_slot_holds_the_sample_it_falls_in() -> None:
    series = hourly([10.0, 20.0])
    starts = utc("2023-01-01T00:00") + np.arange(8) * np.timedelta64(15, "m")
    assert series.on_slots(starts, 900) == pytest.approx([10] * 4 + [20] * 4)


def test_a_longer_slot_is_the_time_weighted_mean() -> None:
    series = hourly([10.0, 20.0, 30.0, 50.0])
    starts = np.array([utc("2023-01-01T00:00"), utc("2023-01-01T02:00")])
    assert series.on_slots(starts, 7200) == pytest.approx([15, 40])


def test_a_run_interval_that_starts_within_a_second_is_weighed_to_the_microsecond() -> None:
    # a task accounted from 00:59:59.750 for 1 s: a quarter of it at 10, three quarters at 20
    series = hourly([10.0, 20.0])
    start = utc("2023-01-01T00:59:59").astype("datetime64[us]") + np.timedelta64(750, "ms")
    assert series.on_slots(np.array([start]), 1.0) == pytest.approx([17.5])
    # 00:59:59.999 999 for 1 s: one microsecond at 10, the rest at 20 (a millisecond grid would miss it)
    start = utc("2023-01-01T00:59:59").astype("datetime64[us]") + np.timedelta64(999_999, "us")
    assert series.on_slots(np.array([start]), 1.0) == pytest.approx([20.0 - 10.0 * 1e-6], rel=1e-12)


def test_slots_not_aligned_with_the_series_weigh_the_overlap() -> None:
    series = hourly([10.0, 20.0, 30.0])
    starts = np.array([utc("2023-01-01T00:30"), utc("2023-01-01T00:45")])
    # [00:30, 01:30): half of 10, half of 20; [00:45, 01:45): a quarter of 10, three quarters of 20.
    assert series.on_slots(starts, 3600) == pytest.approx([15, 17.5])
    # [00:20, 02:20) over 40 min of 10, 60 of 20, 20 of 30.
    assert series.on_slots(np.array([utc("2023-01-01T00:20")]), 7200) == pytest.approx(
        [(400 + 1200 + 600) / 120]
    )


def test_on_slots_is_vectorised_for_large_grids() -> None:
    rng = np.random.default_rng(1)
    series = hourly(rng.uniform(0, 500, 8760).tolist())
    starts = utc("2023-01-01T00:00") + np.arange(35000) * np.timedelta64(900, "s")
    started = time.perf_counter()
    means = series.on_slots(starts, 900)
    assert time.perf_counter() - started < 0.5
    assert means == pytest.approx(np.repeat(series.values, 4)[:35000])


def test_a_slot_outside_the_span_names_the_file_and_both_spans() -> None:
    series = hourly([10.0, 20.0])
    late = np.array([utc("2023-01-01T01:00"), utc("2023-01-01T01:30")])
    with pytest.raises(SiteDataError) as info:
        series.on_slots(late, 3600)
    assert str(info.value) == (
        "test.csv: carbon intensity covers 2023-01-01 00:00 to 2023-01-01 02:00 (UTC); the plan needs "
        "2023-01-01 01:00 to 2023-01-01 02:30"
    )
    with pytest.raises(SiteDataError, match="the plan needs 2022-12-31 23:00 to 2023-01-01 00:00"):
        series.on_slots(np.array([utc("2022-12-31T23:00")]), 3600)
    assert series.on_slots(np.array([utc("2023-01-01T01:00")]), 3600) == pytest.approx(
        [20]
    )  # the last slot fits


def test_a_constant_covers_all_time() -> None:
    constant = Series.constant(250.0, "carbon intensity", "gCO2eq/kWh", note="stated in the config")
    assert (constant.kind, constant.source, constant.step_s) == ("assumed", "constant", float("inf"))
    starts = np.array([utc("1999-01-01T00:00"), utc("2090-06-01T12:00")])
    assert constant.on_slots(starts, 900).tolist() == [250.0, 250.0]
    first, last = constant.span()
    assert first < utc("1900-01-01T00:00") and last > utc("2999-01-01T00:00")
    assert constant.describe() == "assumed: carbon intensity (gCO2eq/kWh) = 250; stated in the config"


def test_describe_is_one_line_with_kind_source_note_and_unit(tmp_path: Path) -> None:
    series = read_carbon(write_em_csv(tmp_path / "em.csv", [1.0, 2.0], zone="GB"))
    line = series.describe()
    assert "\n" not in line
    assert line.startswith(f"series: carbon intensity (gCO2eq/kWh) from {tmp_path / 'em.csv'}")
    assert "2023-01-01 00:00 to 2023-01-01 02:00 UTC every 1 h" in line and "zone GB" in line


def test_a_series_is_read_only_and_checked() -> None:
    series = hourly([1.0, 2.0])
    with pytest.raises(ValueError):
        series.values[0] = 5.0
    with pytest.raises(SiteDataError, match="not a regular series"):
        times = np.array([utc("2023-01-01T00:00"), utc("2023-01-01T03:00")])
        Series("x", "u", "f.csv", "series", times, np.array([1.0, 2.0]), 3600.0)
