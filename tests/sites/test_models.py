"""PUE(T), wet-bulb and WUE, and the wind power curve."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from hpcqueue.config import DEFAULT_PUE, SiteSpec, WindTurbines
from hpcqueue.errors import SiteDataError
from hpcqueue.sites import (
    ChillerPUE,
    ConstantPUE,
    ConstantWUE,
    EconomizerPUE,
    TablePUE,
    WetBulbWUE,
    cooling_model,
    wet_bulb_c,
    wind_power_kw,
    wue_model,
)
from hpcqueue.sites.cooling import moore_cop
from tests.sites import write_csv

TEMPS = np.linspace(-20.0, 50.0, 281)


def non_decreasing(values: np.ndarray) -> bool:
    return bool(np.all(np.diff(values) >= -1e-12))


# -- cooling ---------------------------------------------------------------------------------------------


def test_a_constant_pue() -> None:
    model = ConstantPUE(1.3, "measured 2022")
    assert model.pue(TEMPS).tolist() == [1.3] * TEMPS.size
    assert (model.kind, model.needs_weather) == ("assumed", False)
    assert model.describe() == "constant PUE 1.3 (measured 2022)"


def test_a_pue_table_interpolates_and_holds_its_ends(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "pue.csv", "temperature_c,pue", [[0, 1.1], [20, 1.2], [30, 1.5]])
    model = TablePUE.from_csv(path)
    assert model.pue(np.array([-10.0, 0.0, 10.0, 25.0, 30.0, 45.0])) == pytest.approx(
        [1.1, 1.1, 1.15, 1.35, 1.5, 1.5]
    )
    assert (model.kind, model.needs_weather) == ("model", True)
    assert str(path) in model.describe()
    other = write_csv(tmp_path / "t.csv", "T,PUE", [[10, 1.2], [20, 1.4]])
    assert TablePUE.from_csv(other).pue(np.array([15.0])) == pytest.approx([1.3])


def test_a_pue_table_rejects_pue_below_one_and_unsorted_rows(tmp_path: Path) -> None:
    below = write_csv(tmp_path / "b.csv", "temperature,pue", [[0, 1.1], [10, 0.9]])
    with pytest.raises(SiteDataError, match=re.escape(f"{below}: line 3: PUE 0.9 is below 1")):
        TablePUE.from_csv(below)
    unsorted = write_csv(tmp_path / "u.csv", "t,pue", [[10, 1.1], [5, 1.2]])
    with pytest.raises(SiteDataError, match="line 3: temperature 5 does not increase on 10"):
        TablePUE.from_csv(unsorted)
    wrong = write_csv(tmp_path / "w.csv", "celsius,ratio", [[10, 1.1]])
    with pytest.raises(
        SiteDataError, match="expected one of 'temperature_c', 'temperature', 't'; found 'celsius', 'ratio'"
    ):
        TablePUE.from_csv(wrong)


def test_moores_cop_fit() -> None:
    assert float(moore_cop(18.0)) == pytest.approx(0.0068 * 18**2 + 0.0008 * 18 + 0.458)
    assert float(moore_cop(18.0)) == pytest.approx(2.6756)


def test_the_chiller_matches_moore_at_the_design_ambient_and_improves_when_colder() -> None:
    chiller = ChillerPUE(supply_temperature_c=18.0, facility_overhead=0.1)
    at_design = chiller.pue(np.array([35.0]))[0]
    assert at_design == pytest.approx(1 + 0.1 + 1 / moore_cop(18.0))
    pue = chiller.pue(TEMPS)
    assert non_decreasing(pue)
    assert chiller.pue(np.array([25.0]))[0] < at_design < chiller.pue(np.array([40.0]))[0]
    assert pue.min() == pytest.approx(1 + 0.1 + 1 / 20)  # the COP cap when the lift is small
    assert (chiller.kind, chiller.needs_weather) == ("model", True)
    assert "Moore et al. 2005" in chiller.describe()


def test_the_chiller_needs_a_design_ambient_above_its_supply() -> None:
    with pytest.raises(ValidationError, match="must be below its design ambient"):
        SiteSpec(name="hot", cooling="chiller", weather="w.json", supply_temperature_c=36.0)
    with pytest.raises(ValidationError, match=r"mechanical_above_c .* is below free_cooling_below_c"):
        SiteSpec(name="odd", cooling="economizer", weather="w.json", free_cooling_below_c=30.0)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        SiteSpec(name="odd", cooling="economizer", weather="w.json", free_cooling_pue=0.9)


@pytest.mark.parametrize("free_pue", [1.05, 1.1, 1.3])
def test_the_economizer_is_free_below_chiller_above_and_blends_between(free_pue: float) -> None:
    chiller = ChillerPUE(supply_temperature_c=18.0, facility_overhead=0.1)
    model = EconomizerPUE(
        free_cooling_below_c=18.0, mechanical_above_c=27.0, free_cooling_pue=free_pue, chiller=chiller
    )
    cold, hot = np.array([-5.0, 10.0, 18.0]), np.array([27.0, 35.0, 45.0])
    assert model.pue(cold) == pytest.approx([free_pue] * 3)
    assert model.pue(hot) == pytest.approx(np.maximum(chiller.pue(hot), free_pue))
    middle = model.pue(np.array([22.5]))[0]
    assert middle == pytest.approx(
        free_pue + 0.5 * (max(chiller.pue(np.array([22.5]))[0], free_pue) - free_pue)
    )
    assert non_decreasing(model.pue(TEMPS))


def test_cooling_model_follows_the_spec(tmp_path: Path) -> None:
    default = cooling_model(SiteSpec(name="a"))
    assert isinstance(default, ConstantPUE) and default.value == DEFAULT_PUE
    assert default.note == "Uptime Institute Global Data Center Survey 2023 average"
    stated = cooling_model(SiteSpec(name="b", cooling=1.2))
    assert isinstance(stated, ConstantPUE) and stated.value == 1.2 and "config" in stated.note
    for keyword in ("economizer", "economiser"):
        model = cooling_model(SiteSpec(name="c", cooling=keyword, weather="w.json", free_cooling_pue=1.05))
        assert isinstance(model, EconomizerPUE) and model.free_cooling_pue == 1.05
    chiller = cooling_model(SiteSpec(name="d", cooling="chiller", weather="w.json", supply_temperature_c=20))
    assert isinstance(chiller, ChillerPUE) and chiller.supply_temperature_c == 20
    table = write_csv(tmp_path / "pue.csv", "t,pue", [[0, 1.1], [30, 1.4]])
    assert isinstance(cooling_model(SiteSpec(name="e", cooling=str(table), weather="w.json")), TablePUE)
    with pytest.raises(SiteDataError, match="not found"):
        cooling_model(SiteSpec(name="f", cooling=str(tmp_path / "missing.csv"), weather="w.json"))


# -- water -----------------------------------------------------------------------------------------------


def test_wet_bulb_matches_reference_values() -> None:
    # Stull (2011)'s own example, and a psychrometric-chart value at sea level.
    assert wet_bulb_c(20.0, 50.0) == pytest.approx(13.7, abs=0.3)
    assert wet_bulb_c(30.0, 50.0) == pytest.approx(22.0, abs=0.4)
    # Saturated air: the wet bulb is the dry bulb.
    assert wet_bulb_c(np.array([0.0, 15.0, 30.0]), 100.0) == pytest.approx([0.0, 15.0, 30.0], abs=0.5)


def test_wet_bulb_is_never_above_the_dry_bulb() -> None:
    t, rh = np.meshgrid(TEMPS, np.linspace(5, 100, 96))
    assert np.all(wet_bulb_c(t, rh) <= t)


def test_wet_bulb_wue_is_zero_when_cool_capped_when_hot_and_monotone() -> None:
    model = WetBulbWUE(free_below_wb_c=10.0, full_above_wb_c=20.0, cycles_of_concentration=5.0)
    maximum = 3.6 / 2.45 * 5 / 4
    assert model.max_l_per_kwh == pytest.approx(maximum)
    assert model.wue(np.array([5.0]), np.array([50.0])) == pytest.approx([0.0])
    assert model.wue(np.array([35.0]), np.array([60.0])) == pytest.approx([maximum])
    wue = model.wue(TEMPS, np.full(TEMPS.size, 60.0))
    assert non_decreasing(wue) and wue.min() == 0 and wue.max() == pytest.approx(maximum)
    assert 0 < model.wue(np.array([20.0]), np.array([50.0]))[0] < maximum  # 13.7 °C wet-bulb: partly
    assert non_decreasing(model.wue(np.full(96, 22.0), np.linspace(5, 100, 96)))  # more humid: more water
    assert (model.kind, model.needs_weather) == ("model", True)
    assert "not a fitted one" in model.describe()


def test_wue_model_follows_the_spec() -> None:
    assert wue_model(SiteSpec(name="a")) is None
    constant = wue_model(SiteSpec(name="b", wue=1.8))
    assert isinstance(constant, ConstantWUE) and constant.kind == "assumed"
    assert constant.wue(np.zeros(3), None).tolist() == [1.8] * 3
    model = wue_model(SiteSpec(name="c", wue="wet-bulb", weather="w.json", cycles_of_concentration=3))
    assert isinstance(model, WetBulbWUE) and model.max_l_per_kwh == pytest.approx(3.6 / 2.45 * 1.5)


# -- wind ------------------------------------------------------------------------------------------------


def farm_kw(speed_ms: list[float] | np.ndarray, hub_height_m: float = 10.0) -> np.ndarray:
    """Three 2 MW turbines (cut-in 3, rated 12, cut-out 25 m/s) at a 10 m wind of ``speed_ms``; with the
    hub at 10 m the hub speed is the 10 m speed."""
    turbines = WindTurbines(turbines=3, rated_kw=2000.0, hub_height_m=hub_height_m)
    return wind_power_kw(np.asarray(speed_ms, dtype=float) * 3.6, turbines)


def test_the_wind_power_curve() -> None:
    assert farm_kw([0.0, 2.9, 3.0, 12.0, 20.0, 25.0, 25.1, 40.0]).tolist() == pytest.approx(
        [0, 0, 0, 6000, 6000, 6000, 0, 0]
    )
    assert np.all(np.diff(farm_kw(np.linspace(3.0, 12.0, 50))) > 0)
    assert farm_kw([((3.0**3 + 12.0**3) / 2) ** (1 / 3)]) == pytest.approx([3000.0])  # cubic in the speed


def test_a_taller_hub_sees_more_wind() -> None:
    assert farm_kw([6.0], hub_height_m=80.0)[0] > farm_kw([6.0])[0]
    # 80 m with α = 0.14: v_h = v_10 · 8^0.14 ≈ 1.338 v_10, so 9.5 m/s at 10 m is past the 12 m/s rating.
    assert farm_kw([9.5], hub_height_m=80.0) == pytest.approx([6000.0])
