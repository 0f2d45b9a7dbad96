"""``hpcqueue estimate`` through the real CLI: a trace on any hardware with a model known only by its
config.json, the configured targets with their sites, and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from tests.cli.test_plan_in_time import _trace, _write_sites
from tests.conftest import EXAMPLES, run_cli

KEYS = {"energy_j", "runtime_s", "energy_interval_j", "method", "energy_by_domain_j", "requests"}
LLAMA_7B_CONFIG = {
    "model_type": "llama",
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 11008,
    "vocab_size": 32000,
    "torch_dtype": "float16",
}


def _model_dir(folder: Path, config: dict | None = None) -> Path:
    directory = folder / "model"
    directory.mkdir(exist_ok=True)
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def test_a_trace_on_a_hardware_class_with_only_a_config_json(hq_env: dict[str, str], tmp_path: Path) -> None:
    model = _model_dir(tmp_path, LLAMA_7B_CONFIG)
    per_request = tmp_path / "per-request.csv"
    args = ["estimate", str(_trace(tmp_path, 400)), "--hardware", "h100-80g", "--model", str(model)]
    result = run_cli([*args, "--batch-size", "64", "--json", "--per-request", str(per_request)], hq_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report.keys() >= KEYS
    assert report["requests"] == 400 and report["method"] == "analytic"
    low, high = report["energy_interval_j"]
    assert 0 < low < report["energy_j"] < high
    assert set(report["energy_by_domain_j"]) == {"gpu", "cpu"}
    assert sum(report["energy_by_domain_j"].values()) == pytest.approx(report["energy_j"], rel=1e-9)
    (row,) = report["per_target"].values()
    assert row.keys() >= KEYS and row["hardware"] == "h100-80g"
    rows = pd.read_csv(per_request)
    assert len(rows) == 400 and rows["energy_j"].sum() == pytest.approx(report["energy_j"], rel=1e-9)
    assert (rows["energy_low_j"] < rows["energy_j"]).all() and (rows["method"] == "analytic").all()

    # A larger batch shares each weight read among more requests: less energy per request.
    smaller = run_cli([*args, "--batch-size", "1", "--json"], hq_env)
    assert json.loads(smaller.stdout)["energy_j"] > report["energy_j"]


def test_configured_targets_with_sites_give_carbon_and_water(hq_env: dict[str, str], tmp_path: Path) -> None:
    config = _write_sites(tmp_path)
    args = ["estimate", str(_trace(tmp_path, 300)), "--config", str(config), "--model", "llama-2-7b-chat"]
    args += ["--start", "2023-06-01T00:00Z", "--deadline", "24h", "--json"]
    result = run_cli(args, hq_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["per_target"]) == {"gpu", "v100"}
    for row in report["per_target"].values():
        assert row["method"] == "profile"
        if row["requests"]:
            assert KEYS | {"carbon_g", "water_l"} <= row.keys()
            assert row["carbon_g"] > 0 and row["water_l"] > 0
            assert row["carbon_g_interval"][0] < row["carbon_g"] < row["carbon_g_interval"][1]
    assert report["carbon_g"] == pytest.approx(
        sum(r["carbon_g"] for r in report["per_target"].values() if r["requests"])
    )
    assert report["requests"] == 300 and report["time"]["start"].startswith("2023-06-01")

    only = run_cli([*args, "--target", "gpu"], hq_env)
    assert set(json.loads(only.stdout)["per_target"]) == {"gpu"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--hardware", "tpu-v9"], r"unknown hardware class 'tpu-v9'.*known classes: a100-40g"),
        (["--hardware", "h100-80g", "--model", "{empty}"], r"has no config\.json.*known by name"),
        (["--hardware", "h100-80g", "--model", "{partial}"], r"lacks the field\(s\).*hidden_size or n_embd"),
        (["--hardware", "h100-80g", "--batch-size", "0"], r"--batch-size.*(greater than or equal to 1|x>=1)"),
        (["--hardware", "v100-16g", "--dtype", "float8"], r"float8.*supported dtypes"),
        (["--target", "nowhere"], r"no target named 'nowhere'.*targets: local"),
    ],
)
def test_bad_input_names_what_is_missing(
    hq_env: dict[str, str], tmp_path: Path, extra: list[str], message: str
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    empty = _model_dir(tmp_path / "a")
    partial = _model_dir(tmp_path / "b", {"vocab_size": 10})
    extra = [e.format(empty=empty, partial=partial) for e in extra]
    trace = _trace(tmp_path, 10)
    if "--model" not in extra:
        extra += ["--model", "llama-2-7b"]
    result = run_cli(["estimate", str(trace), *extra], hq_env)
    assert result.returncode != 0
    assert re.search(message, " ".join((result.stderr + result.stdout).split())), result.stderr


def test_the_demo_batch_on_the_default_config(hq_env: dict[str, str]) -> None:
    result = run_cli(["estimate", str(EXAMPLES / "prompts.jsonl")], hq_env)
    assert result.returncode == 0, result.stderr
    assert "method analytic" in result.stdout and "local" in result.stdout
    assert "predicted by the analytic model" in result.stdout
