"""Leave-one-bucket-out evaluation of the cost models, and ``hpcqueue profiles evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from hpcqueue.cli.profiles import profiles_app
from hpcqueue.planner.evaluate import ENERGY_MAPE_TARGET, evaluate_profile, evaluate_profiles
from hpcqueue.profiles import Profile, find_profile, list_profiles
from tests.planner.test_costs import NO_KV_E, NO_KV_R, Cost, synthetic_profile

SHIPPED = [Path(__file__).resolve().parents[2] / "profiles"]
PAPER = [e.name for e in list_profiles(SHIPPED) if e.name.endswith(".wilkins2024")]
SWING = "llama-2-7b-chat.swing-a100.wilkins2024"
M1 = "llama-2-7b-chat.m1-pro.wilkins2024"
METRICS = {
    "energy_mape",
    "runtime_mape",
    "energy_within_10",
    "energy_within_30",
    "runtime_within_10",
    "runtime_within_30",
}

app = typer.Typer(no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")
runner = CliRunner()


def linear_cost(a0: float, a1: float, a2: float) -> Cost:
    def cost(n: np.ndarray, m: np.ndarray) -> np.ndarray:
        return a0 * n + a1 * m + a2 * n * m

    return cost


def test_the_linear_baseline_is_exact_on_a_linear_profile() -> None:
    profile = synthetic_profile(
        linear_cost(0.5, 3.0, 0.01), linear_cost(0.001, 0.02, 1e-5), kv_cache=False, batches={1: 1.0, 4: 0.5}
    )
    result = evaluate_profile(profile)
    assert result["points"] == result["evaluated"] == 38
    assert result["linear"]["energy_mape"] < 1e-9
    assert result["linear"]["runtime_mape"] < 1e-9
    assert result["linear"]["energy_within_10"] == 1.0
    # a constant J/token cannot follow the n_in·n_out term
    assert result["per_token"]["energy_mape"] > 0.3


def test_the_per_token_baseline_is_exact_when_cost_is_proportional_to_tokens() -> None:
    profile = synthetic_profile(linear_cost(2.0, 2.0, 0.0), linear_cost(0.01, 0.01, 0.0), kv_cache=None)
    result = evaluate_profile(profile)
    assert result["per_token"]["energy_mape"] < 1e-12
    assert result["per_token"]["runtime_within_10"] == 1.0


def test_our_model_is_near_exact_on_a_profile_of_its_own_form() -> None:
    result = evaluate_profile(synthetic_profile(NO_KV_E, NO_KV_R, kv_cache=False))
    assert result["kind"] == "phase-v1" and result["form"] == "no-kv"
    assert result["ours"]["energy_mape"] < 1e-4 and result["ours"]["runtime_mape"] < 1e-4
    assert result["linear"]["energy_mape"] > 0.1  # the quadratic decode is beyond the linear form


def test_a_bucket_the_others_cannot_fit_is_skipped_with_the_reason() -> None:
    profile = find_profile(SWING, SHIPPED)
    points = profile.points
    keep = (points["sweep"] == "input") | (points["output_tokens"] == 128)
    thin = Profile(meta=profile.meta, points=points[keep].reset_index(drop=True))
    result = evaluate_profile(thin)
    assert result["points"] == 10 and result["evaluated"] == 9
    (skipped,) = result["skipped"]
    assert (skipped["sweep"], skipped["output_tokens"]) == ("output", 128)
    assert "only one output length" in skipped["reason"]


def test_the_worst_bucket_is_reported() -> None:
    (result,) = evaluate_profiles([find_profile(M1, SHIPPED)])
    worst = result["worst"]
    assert {"sweep", "input_tokens", "output_tokens", "batch_size", "energy_error"} <= worst.keys()
    # it is the largest energy error: no MAPE can exceed it
    assert abs(worst["energy_error"]) >= result["ours"]["energy_mape"]
    assert worst["energy_j_predicted"] == pytest.approx(
        worst["energy_j_measured"] * (1 + worst["energy_error"])
    )


@pytest.mark.parametrize("name", PAPER)
def test_energy_mape_target_is_met_on_every_paper_profile(name: str) -> None:
    result = evaluate_profile(find_profile(name, SHIPPED))
    assert result["evaluated"] == result["points"]  # every bucket, endpoints included
    assert result["ours"]["energy_mape"] <= ENERGY_MAPE_TARGET, result["worst"]
    assert result["meets_energy_target"] is True
    for baseline in ("linear", "per_token"):
        assert result["ours"]["energy_mape"] < result[baseline]["energy_mape"]
        assert result["ours"]["runtime_mape"] < result[baseline]["runtime_mape"]


def test_cli_json_reports_mape_for_ours_and_both_baselines(hq_env: dict[str, str]) -> None:
    result = runner.invoke(app, ["profiles", "evaluate", SWING, M1, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["energy_mape_target"] == ENERGY_MAPE_TARGET
    rows = {row["profile"]: row for row in report["profiles"]}
    assert rows.keys() == {SWING, M1}
    for row in rows.values():
        assert {"profile", "model", "hardware", "points", "kind", "worst"} <= row.keys()
        for method in ("ours", "linear", "per_token"):
            assert set(row[method]) == METRICS
            assert all(row[method][k] >= 0 for k in METRICS)
            assert all(row[method][k] <= 1 for k in METRICS if "within" in k)
    assert rows[SWING]["hardware"] == "a100-40g" and rows[M1]["hardware"] == "m1-pro"
    direct = evaluate_profile(find_profile(SWING, SHIPPED))
    assert rows[SWING]["ours"]["energy_mape"] == pytest.approx(direct["ours"]["energy_mape"])


def test_cli_table_marks_the_target(hq_env: dict[str, str]) -> None:
    result = runner.invoke(app, ["profiles", "evaluate", SWING])
    assert result.exit_code == 0, result.output
    assert SWING in result.output
    mape = evaluate_profile(find_profile(SWING, SHIPPED))["ours"]["energy_mape"]
    assert f"{100 * mape:.1f} %" in result.output
    assert "energy MAPE ≤ 10 % on 1 of 1 profile(s)" in result.output


def test_cli_unknown_profile_is_an_error(hq_env: dict[str, str]) -> None:
    result = runner.invoke(app, ["profiles", "evaluate", SWING, "no-such-profile", "--json"])
    assert result.exit_code == 1  # a PlanningError, reported before any JSON is printed
    assert "profiles" not in result.stdout


def test_the_baselines_are_fitted_on_relative_error_like_our_model() -> None:
    """The Swing A100 profile spans 40 J to 590 kJ per request: fitted on absolute error the linear form is
    decided by its largest points and misses short requests many times over (MAPE above 1000 %); fitted on
    relative error, like our model, it misses by tens of percent."""
    from hpcqueue.profiles import find_profile

    result = evaluate_profile(find_profile("llama-2-7b-chat.swing-a100.wilkins2024"))
    assert 0.1 < result["linear"]["energy_mape"] < 0.6
    assert 0.1 < result["per_token"]["energy_mape"] < 1.0
    assert result["ours"]["energy_mape"] < result["linear"]["energy_mape"]
