"""What a kWh of IT energy costs per slot, and the best windows ahead, on small arrays worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from hpcqueue.sites import PerItKwh, SlotFactors, best_window, best_windows, window_means

NAN = float("nan")


def factors(**given: list[float] | None) -> SlotFactors:
    """Four hourly slots: PUE 1.5, then 1.2, and whatever else ``given`` states."""
    values = {key: None if v is None else np.array(v, dtype=float) for key, v in given.items()}
    return SlotFactors(
        starts=np.datetime64("2023-01-01T00:00", "s") + np.arange(4) * np.timedelta64(3600, "s"),
        slot_s=3600.0,
        pue=np.array([1.5, 1.5, 1.2, 1.2]),
        carbon_g_per_kwh=values.get("carbon"),
        wue_l_per_kwh=values.get("wue"),
        water_l_per_kwh=values.get("water"),
        price_usd_per_mwh=values.get("price"),
        power_kw=None,
        temperature_c=None,
        sources={},
        kinds={},
    )


def test_per_it_kwh_charges_the_facility_s_energy_as_the_planner_does() -> None:
    rates = factors(carbon=[400, 400, 100, 100], wue=[0.5] * 4, water=[2.0] * 4, price=[80, -10, 0, 50])
    expected = {
        "carbon_g_per_it_kwh": [600, 600, 120, 120],  # PUE × intensity
        "water_l_per_it_kwh": [3.5, 3.5, 2.9, 2.9],  # WUE on site + PUE × water of the electricity
        "cost_usd_per_it_mwh": [120, -15, 0, 60],  # PUE × price
    }
    found = rates.per_it_kwh().rates()
    assert list(found) == list(expected) == list(PerItKwh.DERIVATIONS)
    for name, values in expected.items():
        np.testing.assert_allclose(found[name], values, err_msg=name)


def test_a_rate_with_an_unknown_part_is_unknown() -> None:
    # Half of the water would look like all of it: on-site WUE without the electricity's water is unknown.
    rates = factors(wue=[0.5] * 4).per_it_kwh()
    assert rates.rates() == {
        "carbon_g_per_it_kwh": None,
        "water_l_per_it_kwh": None,
        "cost_usd_per_it_mwh": None,
    }
    assert factors(water=[2.0] * 4).per_it_kwh().water_l_per_it_kwh is None


def test_window_means_are_the_means_of_each_run_of_slots() -> None:
    values = [4.0, 2.0, 6.0, 0.0, 8.0]
    np.testing.assert_allclose(window_means(values, 2), [3.0, 4.0, 3.0, 4.0])
    np.testing.assert_allclose(window_means(values, 5), [4.0])
    np.testing.assert_allclose(window_means(values, 1), values)


def test_the_clean_window_is_found_and_compared_with_starting_now() -> None:
    carbon = [300, 320, 340, 60, 60, 60, 300, 320]
    window = best_window(carbon, 3)
    assert window is not None
    assert (window.first_slot, window.slots, window.mean) == (3, 3, 60.0)
    assert window.mean_at_start == pytest.approx(320.0)
    assert window.lower_than_at_start_pct == pytest.approx(100 * (1 - 60 / 320))


def test_windows_that_touch_an_unknown_value_are_not_chosen() -> None:
    # The lowest values sit beside a gap: no window holding the gap counts, however low the rest.
    values = [4.0, 4.0, 1.0, NAN, 1.0, 4.0]
    np.testing.assert_allclose(window_means(values, 2), [4.0, 2.5, NAN, NAN, 2.5])
    window = best_window(values, 2)
    assert window is not None and (window.first_slot, window.mean) == (1, 2.5)
    assert best_window([1.0, NAN, 1.0], 2) is None  # every window touches the gap
    late = best_window([NAN, 9.0, 1.0, 1.0], 2)
    assert late is not None and late.first_slot == 2
    assert late.mean_at_start is None and late.lower_than_at_start_pct is None  # starting now: unknown


def test_a_window_longer_than_the_horizon_is_an_error() -> None:
    with pytest.raises(ValueError, match="does not fit in 3 slot"):
        best_window([1.0, 2.0, 3.0], 4)
    with pytest.raises(ValueError, match="give 1 to 3"):
        window_means([1.0, 2.0, 3.0], 0)


def test_ties_go_to_the_earliest_window() -> None:
    window = best_window([3.0, 1.0, 1.0, 3.0, 1.0, 1.0], 2)
    assert window is not None and window.first_slot == 1
    # Every window of this series has the mean 1/3, but a cumulative sum rounds them apart in the last
    # digits; the first is still the one chosen, and starting now is "0 % lower", not a rounding error.
    repeating = np.tile([0.1, 0.7, 0.2], 1000)
    window = best_window(repeating, 3)
    assert window is not None and window.first_slot == 0
    assert window.lower_than_at_start_pct == 0


def test_a_share_of_a_mean_that_is_not_positive_says_nothing() -> None:
    window = best_window([-5.0, -20.0, 10.0], 1)  # negative prices
    assert window is not None and window.first_slot == 1 and window.mean == -20.0
    assert window.mean_at_start == -5.0 and window.lower_than_at_start_pct is None


def test_best_windows_searches_each_known_rate_by_objective() -> None:
    rates = factors(carbon=[400, 400, 100, 100], price=[10, 90, 90, 90]).per_it_kwh()
    found = best_windows(rates, 2)
    assert list(found) == ["carbon", "cost"]  # no water: the site states none
    assert found["carbon"].first_slot == 2 and found["carbon"].mean == pytest.approx(120)
    assert found["cost"].first_slot == 0 and found["cost"].mean == pytest.approx(75)
