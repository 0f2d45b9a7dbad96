"""The closed loop through the real CLI, the real demo model and real worker processes: estimate a batch,
submit it with a meter that reports measured energy (RAPL counters advancing with the clock, in a fake
powercap tree that every process reads), collect, compare in `ledger accuracy`, calibrate, and estimate
again."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, REPO, run_cli
from tests.fakes.powercap import FakePowercap, RunningCounters, make_topology

RAPL_SITE = REPO / "tests" / "fakes" / "rapl_site"
# Constant package and DRAM power of the fake node: measured energy is this power times the time metered.
WATTS = {"intel-rapl:0": 24.0, "intel-rapl:0:0": 18.0, "intel-rapl:0:1": 4.0}


@pytest.fixture
def measured_node(hq_env: dict[str, str], tmp_path: Path) -> tuple[dict[str, str], FakePowercap]:
    """The CLI's environment with a fake powercap tree in place of the machine's (see rapl_site), and the
    tree, whose counters the test advances."""
    powercap = FakePowercap(tmp_path / "powercap")
    powercap.add_package(0)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    sysfs = make_topology(tmp_path / "sys", {cpu: 0 for cpu in range(max(cpus) + 1)})
    env = {
        **hq_env,
        "HPCQUEUE_FAKE_POWERCAP": str(powercap.root),
        "HPCQUEUE_FAKE_SYSFS": str(sysfs),
        "PYTHONPATH": os.pathsep.join([str(RAPL_SITE), str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HPCQUEUE_PROFILE_PATH": str(tmp_path / "profiles"),
    }
    return env, powercap


def _estimate(env: dict[str, str], prompts: Path) -> dict:
    result = run_cli(["estimate", str(prompts), "--json"], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_estimate_submit_measure_calibrate_estimate_again(
    measured_node: tuple[dict[str, str], FakePowercap],
) -> None:
    env, powercap = measured_node
    prompts = EXAMPLES / "prompts.jsonl"

    before = _estimate(env, prompts)
    assert before["method"] == "analytic" and before["requests"] == 62
    local = before["per_target"]["local"]
    assert local["energy_by_domain_j"].keys() == {"cpu"}
    low, high = local["energy_interval_j"]
    assert low < local["energy_j"] < high

    with RunningCounters(powercap, WATTS):
        submitted = run_cli(["submit", str(prompts), "--wait", "--json", "--task-size", "10"], env)
    assert submitted.returncode == 0, submitted.stderr
    report = json.loads(submitted.stdout)
    assert report["energy_method"] == "measured" and report["meters"] == ["rapl"]
    batch = report["batch_id"]

    accuracy = run_cli(["ledger", "accuracy", "--by", "batch", "--format", "json"], env)
    assert accuracy.returncode == 0, accuracy.stderr
    (row,) = [r for r in json.loads(accuracy.stdout) if r["batch"] == batch]
    assert row["tasks"] == 7 and row["excluded_estimated"] == 0
    assert row["methods"] == ["analytic"]
    error_before = row["energy_mape"]
    measured_j = row["energy_measured_j"]
    # The measured generation energy is the fake node's package and DRAM power times the time metered.
    watts = WATTS["intel-rapl:0"] + WATTS["intel-rapl:0:1"]
    assert measured_j == pytest.approx(watts * row["runtime_measured_s"], rel=0.25)

    calibrated = run_cli(["profiles", "calibrate", "local", "--json"], env)
    assert calibrated.returncode == 0, calibrated.stderr
    revision = json.loads(calibrated.stdout)
    assert revision["tasks"] == 7 and revision["batches"] == [batch]
    assert revision["base_method"] == "analytic"
    assert Path(revision["path"], "meta.json").is_file()
    meta = json.loads(Path(revision["path"], "meta.json").read_text())
    assert meta["source"] == "calibrated" and meta["method"] == "estimated"
    assert {t["batch_id"] for t in meta["calibration"]["tasks"]} == {batch}

    after = _estimate(env, prompts)
    target = after["per_target"]["local"]
    assert target["method"] == "calibrated" and target["basis"] == revision["revision"]
    error_after = abs(target["energy_j"] / measured_j - 1)
    assert error_after < error_before, (error_before, error_after)
    low, high = target["energy_interval_j"]
    assert low <= measured_j <= high, (low, measured_j, high)


def test_calibrate_refuses_without_enough_measured_tasks(hq_env: dict[str, str]) -> None:
    result = run_cli(["profiles", "calibrate", "local"], hq_env)
    assert result.returncode != 0
    assert re.search(r"0 task\(s\) with measured energy.*at least 4", result.stderr.replace("\n", " "))


def test_a_prompts_file_with_a_model_without_tokenizer_says_what_to_pass(
    hq_env: dict[str, str], tmp_path: Path
) -> None:
    config_only = tmp_path / "model"
    config_only.mkdir()
    (config_only / "config.json").write_text(
        json.dumps({"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 100})
    )
    result = run_cli(["estimate", str(EXAMPLES / "prompts.jsonl"), "--model", str(config_only)], hq_env)
    assert result.returncode != 0
    message = result.stderr.replace("\n", " ")
    assert "tokenizer" in message and "token trace" in message, message
