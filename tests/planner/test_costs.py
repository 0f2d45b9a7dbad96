"""Cost model v1 (phase-v1): synthetic profiles with known coefficients and the shipped paper profiles."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from hpcqueue.errors import PlanningError
from hpcqueue.planner.costs import CostModel
from hpcqueue.profiles import Profile, ProfileMeta, find_profile, list_profiles
from hpcqueue.profiles.store import POINT_COLUMNS
from tests.conftest import SHIPPED_PROFILES

SHIPPED = [SHIPPED_PROFILES]
PAPER = [e.name for e in list_profiles(SHIPPED) if e.name.endswith(".wilkins2024")]
SWING = "llama-2-7b-chat.swing-a100.wilkins2024"

Cost = Callable[[np.ndarray, np.ndarray], np.ndarray]


def no_kv_cost(c0: float, f0: float, f1: float, f2: float) -> Cost:
    """Σ_{t<m} F(n + t) with F(L) = f0 + f1 L + f2 L², summed term by term (not the closed form)."""

    def cost(n: np.ndarray, m: np.ndarray) -> np.ndarray:
        out = []
        for n_i, m_i in zip(np.atleast_1d(n), np.atleast_1d(m), strict=True):
            lengths = n_i + np.arange(int(m_i), dtype=float)
            out.append(c0 + np.sum(f0 + f1 * lengths + f2 * lengths**2))
        return np.array(out)

    return cost


def kv_cost(c0: float, p1: float, p2: float, d0: float, d1: float) -> Cost:
    """Prefill p1·n + p2·n², then decode steps t = 1 … m−1 of d0 + d1·(n + t), summed term by term."""

    def cost(n: np.ndarray, m: np.ndarray) -> np.ndarray:
        out = []
        for n_i, m_i in zip(np.atleast_1d(n), np.atleast_1d(m), strict=True):
            context = n_i + np.arange(1, int(m_i), dtype=float)
            out.append(c0 + p1 * n_i + p2 * n_i**2 + np.sum(d0 + d1 * context))
        return np.array(out)

    return cost


def synthetic_profile(
    energy: Cost,
    runtime: Cost,
    *,
    kv_cache: bool | None,
    batches: dict[int, float] | None = None,
    inputs: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024, 2048),
    outputs: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
    fixed_out: int = 32,
    fixed_in: int = 38,
) -> Profile:
    """A profile measured exactly on the given cost functions. ``batches`` maps batch size → per-request
    cost factor (energy and runtime per call = factor × batch × per-request cost)."""
    rows = []
    for batch, factor in (batches or {1: 1.0}).items():
        grid = [("input", n, fixed_out) for n in inputs] + [("output", fixed_in, m) for m in outputs]
        for sweep, n, m in grid:
            e = float(energy(np.array([n]), np.array([m]))[0]) * factor * batch
            r = float(runtime(np.array([n]), np.array([m]))[0]) * factor * batch
            rows.append((sweep, n, m, batch, 5, r, 0.0, e, 0.0, None, None, None, None, batch * (n + m)))
    points = pd.DataFrame(
        rows,
        columns=list(POINT_COLUMNS),
    )
    meta = ProfileMeta(
        name="synthetic.test",
        model="test/model",
        hardware="test-hw",
        source="measured",
        method="measured",
        kv_cache=kv_cache,
    )
    return Profile(meta=meta, points=points)


NO_KV_E = no_kv_cost(c0=20.0, f0=4.0, f1=0.02, f2=5e-6)
NO_KV_R = no_kv_cost(c0=0.05, f0=0.03, f1=1e-4, f2=2e-8)
KV_E = kv_cost(c0=15.0, p1=0.3, p2=1e-4, d0=4.0, d1=2e-3)
KV_R = kv_cost(c0=0.02, p1=2e-4, p2=5e-8, d0=0.025, d1=1e-5)
OFF_GRID_IN = np.array([1, 5, 20, 100, 300, 700, 1500, 3000, 20000, 38, 600])
OFF_GRID_OUT = np.array([1, 3, 50, 900, 10, 33, 3000, 100, 7, 6000, 20000])


@pytest.mark.parametrize(
    ("energy", "runtime", "kv_cache", "form"),
    [(NO_KV_E, NO_KV_R, False, "no-kv"), (KV_E, KV_R, True, "kv"), (KV_E, KV_R, None, "kv")],
)
def test_a_synthetic_profile_is_reproduced_everywhere(
    energy: Cost, runtime: Cost, kv_cache: bool | None, form: str
) -> None:
    model = CostModel.from_profile(synthetic_profile(energy, runtime, kv_cache=kv_cache))
    assert model.form == form  # kv_cache=None: the fit picks the form that explains the data
    prediction = model.predict(OFF_GRID_IN, OFF_GRID_OUT)
    np.testing.assert_allclose(prediction.energy_j, energy(OFF_GRID_IN, OFF_GRID_OUT), rtol=1e-4)
    np.testing.assert_allclose(prediction.runtime_s, runtime(OFF_GRID_IN, OFF_GRID_OUT), rtol=1e-4)
    assert not prediction.floored.any()


def test_the_forms_are_not_interchangeable() -> None:
    """Fitting a KV-cache profile with the no-KV form misses: the form is not a free curve fit."""
    profile = synthetic_profile(KV_E, KV_R, kv_cache=False)
    model = CostModel.from_profile(profile)
    far = model.predict(np.array([20000]), np.array([20000])).energy_j
    assert abs(far[0] / KV_E(np.array([20000]), np.array([20000]))[0] - 1) > 0.5


@pytest.mark.parametrize("name", PAPER)
def test_measured_points_are_reproduced(name: str) -> None:
    profile = find_profile(name, SHIPPED)
    points = profile.points
    prediction = CostModel.from_profile(profile).predict(points["input_tokens"], points["output_tokens"])
    for values, column in ((prediction.energy_j, "energy_j_mean"), (prediction.runtime_s, "runtime_s_mean")):
        error = np.abs(values / points[column].to_numpy() - 1)
        # exact except near the request both sweeps measure, where their two measurements disagree
        assert np.median(error) < 1e-3, name
        assert error.max() < 0.10, name
    assert not prediction.extrapolated.any()
    assert not prediction.floored.any()


@pytest.mark.parametrize("name", PAPER)
def test_costs_never_fall_as_tokens_grow(name: str) -> None:
    model = CostModel.from_profile(find_profile(name, SHIPPED))
    grid = np.unique(np.geomspace(1, 100_000, 400).astype(int))
    for fixed in (1, 8, 38, 500, 4096, 50_000):
        along_in = model.predict(grid, np.full(grid.shape, fixed))
        along_out = model.predict(np.full(grid.shape, fixed), grid)
        for prediction in (along_in, along_out):
            for values in (prediction.energy_j, prediction.runtime_s):
                # flat stretches (a GPU's memory-bound short prompts) may wobble by rounding only
                assert np.all(np.diff(values) >= -1e-12 * values[1:]), (name, fixed)


def test_the_extrapolation_flag_follows_the_measured_ranges() -> None:
    model = CostModel.from_profile(find_profile(SWING, SHIPPED))
    assert model.input_range == (8.0, 2048.0)
    assert model.output_range == (8.0, 4096.0)
    inside = model.predict([8, 2048, 38, 38, 500], [8, 32, 4096, 8, 3000])
    assert not inside.extrapolated.any()
    outside = model.predict([7, 2049, 38, 38], [32, 32, 7, 4097])
    assert outside.extrapolated.all()


def test_predictions_are_finite_and_positive_at_extreme_counts() -> None:
    for name in (SWING, "llama-2-7b-chat.m1-pro.wilkins2024"):
        model = CostModel.from_profile(find_profile(name, SHIPPED))
        n = np.array([0, 0, 1, 100_000, 100_000, 0, 3.5])
        m = np.array([0, 100_000, 1, 0, 100_000, 1, 2.25])
        prediction = model.predict(n, m)
        for values in (prediction.energy_j, prediction.runtime_s):
            assert np.all(np.isfinite(values)) and np.all(values > 0)
        assert prediction.extrapolated.tolist() == [True, True, True, True, True, True, True]
        # longer is dearer even far outside the measured range
        assert prediction.energy_j[4] > prediction.energy_j[3] > prediction.energy_j[2]
    with pytest.raises(PlanningError, match="finite"):
        model.predict([np.nan], [3])


def test_batch_sizes_are_interpolated_in_log_space() -> None:
    # per-request cost at batch 1, 4, 16 is the base cost × 1, 0.5, 0.25
    profile = synthetic_profile(KV_E, KV_R, kv_cache=True, batches={1: 1.0, 4: 0.5, 16: 0.25})
    model = CostModel.from_profile(profile)
    assert model.batch_sizes == (1, 4, 16) and model.batch_size == 1
    n, m = np.array([100, 700]), np.array([50, 300])
    base = KV_E(n, m)
    np.testing.assert_allclose(model.predict(n, m).energy_j, base, rtol=1e-4)
    np.testing.assert_allclose(model.predict(n, m, batch_size=4).energy_j, 0.5 * base, rtol=1e-4)
    # halfway between 4 and 16 in log b: halfway between 0.5 and 0.25 in log cost
    np.testing.assert_allclose(model.predict(n, m, batch_size=8).energy_j, np.sqrt(0.125) * base, rtol=1e-4)
    assert not model.predict(n, m, batch_size=8).extrapolated.any()
    beyond = model.predict(n, m, batch_size=64)
    np.testing.assert_allclose(beyond.energy_j, 0.25 * base, rtol=1e-4)  # held at the largest measured
    assert beyond.extrapolated.all()
    # the default batch size comes from from_profile
    at_16 = CostModel.from_profile(profile, batch_size=16)
    np.testing.assert_allclose(at_16.predict(n, m).runtime_s, 0.25 * KV_R(n, m), rtol=1e-4)


def test_one_batch_size_means_batch_is_ignored() -> None:
    model = CostModel.from_profile(find_profile(SWING, SHIPPED))
    a = model.predict([100], [100])
    b = model.predict([100], [100], batch_size=64)
    assert a.energy_j[0] == b.energy_j[0] and not b.extrapolated.any()


def _subset(profile: Profile, keep: pd.Series) -> Profile:
    return Profile(meta=profile.meta, points=profile.points[keep].reset_index(drop=True))


def test_one_output_point_is_enough_for_the_no_kv_form() -> None:
    profile = find_profile(SWING, SHIPPED)
    points = profile.points
    thin = _subset(profile, (points["sweep"] == "input") | (points["output_tokens"] == 128))
    model = CostModel.from_profile(thin)
    assert model.output_range == (32.0, 128.0)
    full = CostModel.from_profile(profile)
    prediction = model.predict([38, 38], [64, 1024])
    assert prediction.extrapolated.tolist() == [False, True]
    # inside the measured outputs it stays close to the full model
    assert prediction.energy_j[0] == pytest.approx(full.predict([38], [64]).energy_j[0], rel=0.15)


def test_an_output_sweep_alone_gives_a_flagged_model() -> None:
    profile = find_profile(SWING, SHIPPED)
    only_output = _subset(profile, profile.points["sweep"] == "output")
    model = CostModel.from_profile(only_output)
    assert model.input_range == (38.0, 38.0)
    prediction = model.predict([38, 512], [64, 64])
    assert prediction.extrapolated.tolist() == [False, True]
    assert prediction.energy_j[1] > prediction.energy_j[0] > 0


def test_missing_sweeps_and_single_points_are_refused_with_the_reason() -> None:
    profile = find_profile(SWING, SHIPPED)
    points = profile.points
    with pytest.raises(PlanningError, match=r"llama-2-7b-chat\.swing-a100.*only one output length \(32\)"):
        CostModel.from_profile(_subset(profile, points["sweep"] == "input"))
    with pytest.raises(PlanningError, match=r"only one output length.*only one prompt length"):
        CostModel.from_profile(_subset(profile, points.index == 0))


def test_a_batch_size_without_enough_points_is_left_out() -> None:
    profile = synthetic_profile(KV_E, KV_R, kv_cache=True, batches={1: 1.0, 4: 0.5})
    points = profile.points
    keep = (points["batch_size"] == 1) | ((points["sweep"] == "input") & (points["input_tokens"] == 8))
    model = CostModel.from_profile(_subset(profile, keep))
    assert model.batch_sizes == (1,)
    assert any("batch size 4 left out" in note for note in model.notes)


def test_non_positive_energy_is_refused_naming_the_point() -> None:
    profile = find_profile(SWING, SHIPPED)
    points = profile.points.copy()
    points.loc[3, "energy_j_mean"] = -1.0
    with pytest.raises(
        PlanningError, match=r"energy_j_mean is -1\.0 at the input sweep point input_tokens=64"
    ):
        CostModel.from_profile(Profile(meta=profile.meta, points=points))


def test_float_counts_predict_the_same_as_integer_counts() -> None:
    # How fast a million requests are predicted is measured by bench/cost_models.py, not asserted here.
    model = CostModel.from_profile(find_profile(SWING, SHIPPED))
    rng = np.random.default_rng(0)
    n = rng.integers(1, 8000, 1000)
    m = rng.integers(1, 4000, 1000)
    # float counts take the interpolation path: same numbers
    np.testing.assert_allclose(
        model.predict(n[:1000].astype(float) + 0.0, m[:1000]).energy_j,
        model.predict(n[:1000], m[:1000]).energy_j,
    )


def test_too_few_combinations_give_a_usable_model_with_a_note() -> None:
    # two prompt lengths and three output lengths: four points cannot fix the five KV coefficients
    profile = synthetic_profile(KV_E, KV_R, kv_cache=True, inputs=(8, 64), outputs=(8, 16))
    assert len(profile.points) == 4
    model = CostModel.from_profile(profile)
    assert any("do not fix every coefficient" in note for note in model.notes)
    points = profile.points
    prediction = model.predict(points["input_tokens"], points["output_tokens"])
    np.testing.assert_allclose(prediction.energy_j, points["energy_j_mean"], rtol=0.05)
    far = model.predict([5000], [5000])
    assert far.extrapolated.all() and np.isfinite(far.energy_j).all() and (far.energy_j > 0).all()
