"""Profile plots: the plotted quantities are the profile's numbers, and the figures are written as PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpcqueue.errors import PlanningError
from hpcqueue.profiles import Profile, find_profile
from hpcqueue.profiles.plots import plot_profiles, sweep_series
from tests.helpers import png_size

M1 = "llama-2-7b-chat.m1-pro.wilkins2024"
SWING = "llama-2-7b-chat.swing-a100.wilkins2024"


def test_energy_per_token_matches_the_table_in_the_docs() -> None:
    # docs/profiles.md, "Thresholds derived from the shipped profiles": Llama-2 on the M1 Pro and on Swing.
    m1, swing = find_profile(M1), find_profile(SWING)
    m1_in = sweep_series(m1, "input")
    assert m1_in["tokens"].tolist() == [8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    np.testing.assert_allclose(
        m1_in["energy_j_per_token"],
        [2.446, 2.559, 2.470, 2.594, 2.663, 2.461, 2.544, 2.409, 2.847],
        atol=6e-4,
    )
    swing_out = sweep_series(swing, "output").set_index("tokens")["energy_j_per_token"]
    np.testing.assert_allclose(
        swing_out.loc[[8, 16, 32, 64, 128, 256, 512]],
        [0.858, 1.511, 2.332, 3.437, 4.838, 7.093, 10.909],
        atol=6e-4,
    )


def test_throughput_is_tokens_per_second_with_the_runtime_ci_carried_over() -> None:
    profile = find_profile(M1)
    series = sweep_series(profile, "output")
    points = profile.sweep("output")
    row, point = series.iloc[2], points.iloc[2]
    tokens = point["input_tokens"] + point["output_tokens"]
    assert row["tokens_per_call"] == tokens
    assert row["throughput_tokens_per_s"] == pytest.approx(tokens / point["runtime_s_mean"])
    relative = point["runtime_s_ci95"] / point["runtime_s_mean"]
    assert row["throughput_tokens_per_s_ci95"] == pytest.approx(row["throughput_tokens_per_s"] * relative)
    assert row["energy_j_per_token_ci95"] == pytest.approx(point["energy_j_ci95"] / tokens)


def test_plot_profiles_writes_both_sweeps_as_three_panel_pngs(tmp_path: Path) -> None:
    paths = plot_profiles([find_profile(M1), find_profile(SWING)], tmp_path / "plots")
    assert [p.name for p in paths] == ["input-sweep.png", "output-sweep.png"]
    for path in paths:
        width, height = png_size(path)
        assert width > 2 * height  # three panels side by side
        assert path.stat().st_size > 20_000  # lines, labels and a legend, not an empty canvas


def test_a_profile_with_one_sweep_gets_one_figure(tmp_path: Path) -> None:
    full = find_profile(M1)
    only_input = Profile(meta=full.meta, points=full.points[full.points["sweep"] == "input"])
    paths = plot_profiles([only_input], tmp_path)
    assert [p.name for p in paths] == ["input-sweep.png"]


def test_nothing_to_plot_says_where_to_look(tmp_path: Path) -> None:
    with pytest.raises(PlanningError, match="profiles list"):
        plot_profiles([], tmp_path)
