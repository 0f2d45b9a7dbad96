"""`hpcqueue plan` and `hpcqueue simulate` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import AZURE_TRACE, EXAMPLES, run_cli
from tests.planner import REPORT_KEYS

PAPER = EXAMPLES / "paper.toml"


def test_simulate_the_azure_trace_as_json(hq_env: dict[str, str]) -> None:
    result = run_cli(["simulate", str(AZURE_TRACE), "--config", str(PAPER), "--json"], hq_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= REPORT_KEYS
    assert report["policy"] == "threshold" and report["lambda"] == 1.0
    assert report["trace"]["requests"] == 8819
    assert set(report["per_target"]) == {"a100", "m1"}
    assert sum(row["requests"] for row in report["per_target"].values()) == 8819
    assert set(report["baselines"]) == {"unaware", "single:a100", "single:m1", "threshold", "optimal"}
    for row in report["baselines"].values():
        assert {"energy_j", "runtime_s"} <= set(row)
    assert report["thresholds"]["low"] == "m1"
    unaware = report["baselines"]["unaware"]["energy_j"]
    assert report["savings_vs_unaware"] == pytest.approx(1 - report["energy_j"] / unaware)
    best = report["baselines"][report["best_single"]]["energy_j"]
    assert report["savings_vs_best_single"] == pytest.approx(1 - report["energy_j"] / best)


def test_simulate_with_policy_lambda_and_deadline(hq_env: dict[str, str]) -> None:
    args = ["simulate", str(AZURE_TRACE), "--config", str(PAPER), "--policy", "optimal", "--lambda", "0.5"]
    result = run_cli([*args, "--deadline", "400h", "--json"], hq_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["policy"] == "optimal" and report["lambda"] == 0.5
    assert report["deadline_s"] == 400 * 3600
    assert report["meets_deadline"] is True
    assert report["solver"]["method"] in ("argmin", "milp", "lagrangian")

    table = run_cli([*args, "--deadline", "400h"], hq_env)
    assert table.returncode == 0, table.stderr
    assert "optimal (this plan)" in table.stdout and "single:a100" in table.stdout
    assert "against the best single target (single:a100) this plan saves" in table.stdout
    assert "weighted cost" in table.stdout


def test_simulate_explains_what_is_missing(hq_env: dict[str, str], tmp_path: Path) -> None:
    no_profiles = run_cli(["simulate", str(AZURE_TRACE)], hq_env)  # the default config: one local target
    assert no_profiles.returncode == 1
    assert "needs a cost model for every target" in no_profiles.stderr
    assert "--config examples/paper.toml" in no_profiles.stderr

    bad = tmp_path / "trace.csv"
    bad.write_text("ContextTokens,GeneratedTokens\n5,5\n5,-1\n")
    result = run_cli(["simulate", str(bad), "--config", str(PAPER)], hq_env)
    assert result.returncode == 2
    assert f"{bad}:3: GeneratedTokens" in result.stderr

    late = run_cli(
        ["simulate", str(AZURE_TRACE), "--config", str(PAPER), "--policy", "optimal", "--deadline", "1h"],
        hq_env,
    )
    assert late.returncode == 1
    assert "deadline" in late.stderr

    wrong = run_cli(["simulate", str(AZURE_TRACE), "--config", str(PAPER), "--lambda", "2"], hq_env)
    assert wrong.returncode == 2


@pytest.mark.slow
def test_plan_shows_what_submit_would_do_and_submits_nothing(hq_env: dict[str, str]) -> None:
    prompts = EXAMPLES / "prompts.jsonl"
    result = run_cli(["plan", str(prompts), "--config", str(PAPER), "--json"], hq_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= REPORT_KEYS | {"batch_id", "tasks"}
    lines = sum(1 for line in prompts.read_text().splitlines() if line.strip())
    assert report["requests"] == lines
    dry = run_cli(["submit", str(prompts), "--config", str(PAPER), "--dry-run", "--json"], hq_env)
    assert dry.returncode == 0, dry.stderr
    dry_run = json.loads(dry.stdout)
    # the same plan submit would use
    assert dry_run["batch_id"] == report["batch_id"]
    assert dry_run["tasks"] == report["tasks"]
    assert {n: r["requests"] for n, r in dry_run["per_target"].items()} == {
        n: r["requests"] for n, r in report["per_target"].items()
    }
    assert not Path(hq_env["HPCQUEUE_BATCH_ROOT"]).exists() or not any(
        Path(hq_env["HPCQUEUE_BATCH_ROOT"]).iterdir()
    )
    optimal = run_cli(["plan", str(prompts), "--config", str(PAPER), "--policy", "optimal", "--json"], hq_env)
    assert json.loads(optimal.stdout)["batch_id"] != report["batch_id"]  # another policy is another batch
