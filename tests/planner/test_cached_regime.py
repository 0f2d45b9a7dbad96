"""The KV-cache regime derived from profiles measured without a cache: the derivation, its check against a
public measurement, and which regime plan and simulate predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpcqueue.config import Target
from hpcqueue.errors import PlanningError
from hpcqueue.planner import CostModel, PlanOptions, plan_requests, resolve_cost_models
from hpcqueue.planner.costs import TokenCounts
from hpcqueue.profiles import Profile, find_profile, list_profiles
from tests.conftest import EXAMPLES, SHIPPED_PROFILES, run_cli
from tests.planner.test_costs import KV_E, KV_R, NO_KV_R, synthetic_profile

SHIPPED = [SHIPPED_PROFILES]
PAPER = [e.name for e in list_profiles(SHIPPED) if e.name.endswith(".wilkins2024")]
LLAMA = "meta-llama/Llama-2-7b-chat-hf"
SWING = "llama-2-7b-chat.swing-a100.wilkins2024"
PALMETTO = "llama-2-7b-chat.palmetto-a100.wilkins2024"
M1 = "llama-2-7b-chat.m1-pro.wilkins2024"

# A public measurement of 7B Llama-family models on an A100 with a KV cache (one prompt per call, chat
# prompts of about 180 tokens): the no-cache prediction of these profiles is this many times the energy
# measured per response, at these output lengths.
PROMPT_TOKENS = 180
PUBLISHED_RATIOS = {60: 1.8, 130: 2.1, 285: 2.4}


def _model(name: str, kv_cache: bool | None) -> CostModel:
    return CostModel.from_profile(find_profile(name, SHIPPED), kv_cache=kv_cache)


def _ratios(name: str) -> np.ndarray:
    """No-cache prediction / derived cached prediction of the energy at the published output lengths."""
    outputs = np.array(list(PUBLISHED_RATIOS))
    prompts = np.full(outputs.shape, PROMPT_TOKENS)
    no_cache = _model(name, None).predict(prompts, outputs).energy_j
    cached = _model(name, True).predict(prompts, outputs).energy_j
    return no_cache / cached


@pytest.mark.parametrize("name", [SWING, PALMETTO])
def test_the_derived_regime_matches_the_published_ratios_within_a_factor_1_5(name: str) -> None:
    ratios = _ratios(name)
    published = np.array(list(PUBLISHED_RATIOS.values()))
    # The derivation gives 2.49 / 2.78 / 3.40 (Swing) and 2.30 / 2.54 / 3.02 (Palmetto) against the published
    # 1.8 / 2.1 / 2.4: 1.2-1.45 times the published ratio, i.e. the derived cached regime predicts 17-29 %
    # less energy than was measured with a cache. A cached step there cost about 5.3 J, where the derivation
    # charges f0 plus one token's increment, 3.8 J on Swing (another machine and software stack).
    # A band of a factor 1.5 either way holds that and fails where the derivation would be wrong: a ratio
    # near 1 (nothing removed, or the prompt re-paid at every step) or near 5 and above (f0 dropped too,
    # or the whole sequence removed). The exact form is pinned by the telescoping test below; this one checks
    # level and growth against a measurement made independently of the profiles.
    assert np.all(ratios > published / 1.5), ratios
    assert np.all(ratios < published * 1.5), ratios
    # The ratio grows with the output length, and as fast as the published one does: from 60 to 285 output
    # tokens by 1.37 (Swing) and 1.31 (Palmetto) against 2.4 / 1.8 = 1.33 published.
    assert np.all(np.diff(ratios) > 0), ratios
    assert ratios[-1] / ratios[0] == pytest.approx(published[-1] / published[0], rel=0.1)


@pytest.mark.parametrize("name", PAPER)
def test_one_output_token_costs_the_same_and_more_cost_less(name: str) -> None:
    measured, cached = _model(name, None), _model(name, True)
    assert measured.regime == "measured" and cached.regime == "derived-kv"
    prompts = np.unique(np.geomspace(8, 2048, 60).astype(int))
    # m = 1: one forward pass over the prompt with or without a cache, on every surface
    n_one, m_one = TokenCounts(prompts.astype(float)), TokenCounts(np.ones(prompts.shape))
    for fit_measured, fit_cached in zip(measured.fits, cached.fits, strict=True):
        for quantity in ("energy", "runtime"):
            np.testing.assert_allclose(
                getattr(fit_cached, quantity)(n_one, m_one),
                getattr(fit_measured, quantity)(n_one, m_one),
                rtol=1e-12,
            )
    # and so are the predictions, where neither regime's positivity floor was used (m = 1 lies below the
    # measured outputs, and the measured regime's floor, set on its far dearer tokens, is used there
    # for long prompts)
    one_measured = measured.predict(prompts, np.ones_like(prompts))
    one_cached = cached.predict(prompts, np.ones_like(prompts))
    plain = ~(one_measured.floored | one_cached.floored)
    assert plain[:10].all()
    np.testing.assert_allclose(one_cached.energy_j[plain], one_measured.energy_j[plain], rtol=1e-12)
    np.testing.assert_allclose(one_cached.runtime_s[plain], one_measured.runtime_s[plain], rtol=1e-12)
    # m > 1: every later step stops re-running the sequence
    outputs = np.unique(np.geomspace(2, 4096, 60).astype(int))
    n, m = (a.ravel() for a in np.meshgrid(prompts, outputs))
    more_measured, more_cached = measured.predict(n, m), cached.predict(n, m)
    assert np.all(more_cached.energy_j < more_measured.energy_j)
    assert np.all(more_cached.runtime_s < more_measured.runtime_s)
    # the flags of the measured ranges are the same, and the derived regime stays above its floor there
    np.testing.assert_array_equal(more_cached.extrapolated, more_measured.extrapolated)
    assert not more_cached.floored[~more_cached.extrapolated].any()


@pytest.mark.parametrize("name", PAPER)
def test_the_derived_regime_never_falls_as_tokens_grow(name: str) -> None:
    model = _model(name, True)
    grid = np.unique(np.geomspace(1, 100_000, 300).astype(int))
    for fixed in (1, 38, 500, 4096, 50_000):
        for prediction in (
            model.predict(grid, np.full(grid.shape, fixed)),
            model.predict(np.full(grid.shape, fixed), grid),
        ):
            for values in (prediction.energy_j, prediction.runtime_s):
                assert np.all(np.isfinite(values)) and np.all(values > 0)
                assert np.all(np.diff(values) >= -1e-12 * values[1:]), (name, fixed)


C0, F0, F1, F2 = 20.0, 4.0, 0.02, 5e-6


def _no_kv_energy(n: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Σ_{t<m} F(n + t), term by term: what a profile measured without a cache measures."""
    return np.array(
        [C0 + sum(_pass(n_i + t) for t in range(int(m_i))) for n_i, m_i in zip(n, m, strict=True)]
    )


def _cached_energy(n: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The prompt's pass, then per later step f0 plus the increment of the token it adds, term by term."""
    return np.array(
        [
            C0 + _pass(n_i) + sum(F0 + _pass(n_i + t) - _pass(n_i + t - 1) for t in range(1, int(m_i)))
            for n_i, m_i in zip(n, m, strict=True)
        ]
    )


def _pass(length: float) -> float:
    return F0 + F1 * length + F2 * length**2


def test_the_derived_regime_is_the_telescoped_sum() -> None:
    # measured without a cache on an exact F, so the no-kv fit reproduces the profile everywhere
    profile = synthetic_profile(_no_kv_energy, NO_KV_R, kv_cache=False)
    model = CostModel.from_profile(profile, kv_cache=True)
    assert model.regime == "derived-kv" and model.form == "no-kv" and model.predicts_kv_cache is True
    n = np.array([1, 5, 38, 100, 180, 700, 1500, 3000, 20000, 38])
    m = np.array([1, 3, 60, 900, 285, 33, 3000, 100, 7, 6000])
    expected = _cached_energy(n, m)
    # the telescoped closed form the model evaluates
    np.testing.assert_allclose(expected, C0 + (m - 1) * F0 + np.array([_pass(x) for x in n + m - 1]))
    prediction = model.predict(n, m)
    np.testing.assert_allclose(prediction.energy_j, expected, rtol=1e-4)  # the fit's tolerance
    assert not prediction.floored.any()
    # and the same fit in its measured regime is the no-cache sum
    np.testing.assert_allclose(
        CostModel.from_profile(profile).predict(n, m).energy_j, _no_kv_energy(n, m), rtol=1e-4
    )


def test_the_regimes_of_each_kind_of_profile() -> None:
    cached_profile = synthetic_profile(KV_E, KV_R, kv_cache=True)
    with pytest.raises(PlanningError, match="no-cache regime cannot be derived from a cached profile"):
        CostModel.from_profile(cached_profile, kv_cache=False)
    for kv_cache in (None, True):  # a cached profile predicts what it measured
        model = CostModel.from_profile(cached_profile, kv_cache=kv_cache)
        assert model.regime == "measured" and model.form == "kv" and model.predicts_kv_cache is True
        assert model.notes == ()
    as_measured = _model(SWING, False)  # a no-cache profile asked for its own regime
    assert as_measured.regime == "measured" and as_measured.predicts_kv_cache is False
    assert as_measured.notes == ()
    derived = _model(SWING, True)
    assert any("KV-cache regime derived from a profile measured without one" in n for n in derived.notes)
    # a profile that does not say: the form its fit chose, as measured, and a note that says so
    unknown = Profile(
        meta=cached_profile.meta.model_copy(update={"kv_cache": None}), points=cached_profile.points
    )
    model = CostModel.from_profile(unknown, kv_cache=True)
    assert model.regime == "measured" and model.form == "kv" and model.predicts_kv_cache is None
    assert any("does not say whether it was measured with a KV cache" in n for n in model.notes)
    assert "kv_cache" in model.regime_text


def _requests(pairs: list[tuple[int, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "line": np.arange(1, len(pairs) + 1),
            "input_tokens": [p[0] for p in pairs],
            "max_new_tokens": [p[1] for p in pairs],
        }
    )


def test_plans_predict_the_cached_regime_and_say_so() -> None:
    targets = [
        Target(name="gpu", hardware="a100-40g", profile=SWING),
        Target(name="laptop", hardware="m1-pro"),
    ]
    notes: list[str] = []
    models = resolve_cost_models(targets, LLAMA, SHIPPED, notes)
    assert {name: m.regime for name, m in models.items() if m is not None} == {
        "gpu": "derived-kv",
        "laptop": "derived-kv",
    }
    for name, profile in (("gpu", SWING), ("laptop", M1)):
        assert any(
            note.startswith(f"target {name!r}: profile {profile!r} predicts generation with a KV cache")
            for note in notes
        ), notes
    table = _requests([(180, 60), (180, 285), (1000, 8)])
    plan = plan_requests(table, targets, models, PlanOptions(policy="single:gpu"))
    expected = _model(SWING, True).predict(table["input_tokens"], table["max_new_tokens"])
    np.testing.assert_allclose(plan.assignments["predicted_energy_j"], expected.energy_j)

    as_measured_notes: list[str] = []
    as_measured = resolve_cost_models(targets, LLAMA, SHIPPED, as_measured_notes, kv_cache=None)
    assert all(m is not None and m.regime == "measured" for m in as_measured.values())
    assert not any("KV cache" in note for note in as_measured_notes)


def test_simulate_keeps_the_measured_regime(hq_env: dict[str, str], tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("ContextTokens,GeneratedTokens\n180,60\n180,285\n1000,8\n")
    config = EXAMPLES / "paper.toml"
    result = run_cli(
        ["simulate", str(trace), "--config", str(config), "--policy", "single:a100", "--json"], hq_env
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    n, m = np.array([180, 180, 1000]), np.array([60, 285, 8])
    measured = _model(SWING, None).predict(n, m).energy_j.sum()
    cached = _model(SWING, True).predict(n, m).energy_j.sum()
    assert report["energy_j"] == pytest.approx(measured, rel=1e-9)
    assert report["energy_j"] > 2 * cached  # not the cached regime plans predict
    assert not any("KV cache" in warning for warning in report["warnings"])
