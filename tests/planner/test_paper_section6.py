"""The reproduction of the hybrid-cluster paper's §6 (``bench/paper_section6.py``): the paper's arithmetic,
the planner's threshold sweeps, and the script end to end."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO

SCRIPT = REPO / "bench" / "paper_section6.py"


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The script run as a user runs it, from the repository, with its output captured."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
        env=env,
    )


@pytest.fixture(scope="module")
def s6() -> Iterator[ModuleType]:
    """The script, imported as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("paper_section6", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def tables(s6: ModuleType, paper_data: Path) -> dict[str, Any]:
    return {sweep: s6.load_paper_tables(paper_data, sweep) for sweep in ("input", "output")}


@pytest.fixture(scope="module")
def short(azure: pd.DataFrame) -> pd.DataFrame:
    return azure[azure["input_tokens"] <= 128].reset_index(drop=True)


@pytest.fixture(scope="module")
def planned(s6: ModuleType, azure: pd.DataFrame, short: pd.DataFrame) -> dict[str, Any]:
    targets = s6.paper_targets()
    return {"full": s6.plan(azure, targets), "short": s6.plan(short, targets)}


def test_paper_tables_put_the_crossover_at_16_to_32_tokens(s6: ModuleType, tables: dict[str, Any]) -> None:
    for sweep in ("input", "output"):
        ept = tables[sweep].energy_per_token_j
        assert s6.crossover_tokens(tables[sweep]) in (16, 32), sweep
        # above 32 tokens Swing is cheaper per token at every bucket, in both sweeps
        above = ept.columns[ept.columns > 32]
        assert (ept.loc["a100", above] < ept.loc["m1", above]).all(), sweep
    assert s6.crossover_tokens(tables["input"]) == 16  # at 32 input tokens: 2.4485 (M1) vs 2.4019 (Swing)
    assert s6.crossover_tokens(tables["output"]) == 32


def test_paper_runtime_tables_are_the_published_means(tables: dict[str, Any]) -> None:
    # Values stated in the data's README (means per query after the paper's filter), to its digits.
    runtime_in, runtime_out = tables["input"].runtime_s, tables["output"].runtime_s
    np.testing.assert_allclose(runtime_in.loc["m1", [8, 32, 2048]], [9.63, 11.77, 353.6], rtol=6e-4)
    np.testing.assert_allclose(runtime_in.loc["a100", [8, 32, 2048]], [0.902, 0.908, 7.468], rtol=6e-4)
    np.testing.assert_allclose(runtime_out.loc[["m1", "a100"], 32], [11.69, 0.905], rtol=6e-4)
    np.testing.assert_allclose(runtime_out.loc[["m1", "a100"], 512], [747.9, 19.73], rtol=6e-4)
    assert list(tables["output"].buckets) == [8, 16, 32, 64, 128, 256, 512]  # the '0' filter drops 1024+


def test_nearest_bucket_is_the_papers_power_of_two_and_flags_missing_entries(s6: ModuleType) -> None:
    lengths = [1, 3, 5, 6, 11, 12, 23, 46, 700, 724, 725, 1500, 3000, 7437]
    buckets = [8 * 2**i for i in range(7)]  # 8 … 512, as the output tables
    key, clamped = s6.nearest_bucket(lengths, buckets)
    expected = [2 ** round(math.log2(n)) for n in lengths]
    assert key.tolist() == [min(max(e, 8), 512) for e in expected]
    assert clamped.tolist() == [e not in buckets for e in expected]


def test_paper_method_is_the_papers_sum(s6: ModuleType, tables: dict[str, Any]) -> None:
    """The vectorised curve against the script's arithmetic written out request by request."""
    lengths = np.array([7, 9, 9, 14, 20, 20, 20, 33, 64, 90, 130, 300, 1000, 2000])
    for sweep in ("input", "output"):
        tab = tables[sweep]
        curve = s6.paper_method(lengths, tab)
        ept, runtime = tab.energy_per_token_j, tab.runtime_s
        top = int(tab.buckets.max())
        for i, threshold in enumerate(curve.threshold):
            energy = token_s = 0.0
            for n in lengths:
                system = "m1" if n <= threshold else "a100"
                bucket = min(2 ** round(math.log2(n)), top)
                energy += float(ept.loc[system, bucket]) * n
                token_s += float(runtime.loc[system, bucket]) * n
            assert curve.energy_j[i] == pytest.approx(energy, rel=1e-12)
            assert curve.runtime_token_s[i] == pytest.approx(token_s, rel=1e-12)
        assert list(curve.threshold[1 : 1 + len(s6.PAPER_THRESHOLDS[sweep])]) == list(
            s6.PAPER_THRESHOLDS[sweep]
        )


def test_paper_method_saves_more_on_short_prompts_than_on_the_azure_trace(
    s6: ModuleType, tables: dict[str, Any], azure: pd.DataFrame, short: pd.DataFrame
) -> None:
    full = s6.paper_method(azure["input_tokens"].to_numpy(), tables["input"])
    small = s6.paper_method(short["input_tokens"].to_numpy(), tables["input"])
    at32 = s6.PAPER_T
    assert small.saving_vs_a100(small.at(at32)) > full.saving_vs_a100(full.at(at32)) + 0.005
    assert small.saving_vs_best_single(small.best()) > full.saving_vs_best_single(full.best())
    # On the long-prompt trace the paper's rule has almost nothing to route: < 0.1 % saved at T = 32.
    assert abs(full.saving_vs_a100(full.at(at32))) < 1e-3


def test_hybrid_at_its_best_threshold_is_never_worse_than_either_system(
    s6: ModuleType, tables: dict[str, Any], planned: dict[str, Any], azure: pd.DataFrame, short: pd.DataFrame
) -> None:
    for name, trace in (("full", azure), ("short", short)):
        curves = [
            s6.paper_method(trace["input_tokens"].to_numpy(), tables[d], d) for d in ("input", "output")
        ]
        curves += list(planned[name].curves.values())
        for curve in curves:
            best = curve.energy_j[curve.best()]
            assert best <= min(curve.m1_only[0], curve.a100_only[0]) * (1 + 1e-12), (name, curve.method)
            # the candidates run from "nothing on the M1" to "everything on the M1"
            assert curve.low_share[0] == 0.0 and curve.low_share[-1] == 1.0
            assert curve.energy_j[0] == pytest.approx(curve.a100_only[0], rel=1e-12)
            assert curve.energy_j[-1] == pytest.approx(curve.m1_only[0], rel=1e-12)
            assert np.all(np.diff(curve.low_share) >= 0)


def test_planner_sweep_end_points_are_the_single_target_plans(planned: dict[str, Any]) -> None:
    for run in planned.values():
        baselines = run.report["baselines"]
        for curve in run.curves.values():
            assert curve.energy_j[0] == pytest.approx(baselines["single:a100"]["energy_j"], rel=1e-9)
            assert curve.energy_j[-1] == pytest.approx(baselines["single:m1"]["energy_j"], rel=1e-9)
            assert curve.runtime_s[-1] == pytest.approx(baselines["single:m1"]["runtime_s"], rel=1e-9)


def test_planner_saves_more_on_short_prompts_than_on_the_azure_trace(planned: dict[str, Any]) -> None:
    full, small = planned["full"].report, planned["short"].report
    assert small["savings_vs_best_single"] > full["savings_vs_best_single"]
    # the optimal policy is a lower bound on the threshold policy's energy at λ = 1
    for report in (full, small):
        assert report["baselines"]["optimal"]["energy_j"] <= report["energy_j"] * (1 + 1e-9)


def test_script_runs_end_to_end_on_a_given_workload(tmp_path: Path, paper_data: Path) -> None:
    rng = np.random.default_rng(7)
    workload = tmp_path / "my-tokens.csv"
    pd.DataFrame(
        {"input_tokens": rng.integers(4, 400, 60), "output_tokens": rng.integers(1, 200, 60)}
    ).to_csv(workload, index=False)
    out = tmp_path / "figs"
    result = run_script(
        "--paper-data", str(paper_data), "--no-azure", "--workload", str(workload), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["paper-section6-my-tokens-paper-method.png", "paper-section6-my-tokens-planner.png"]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / name).stat().st_size > 20_000
    text = result.stdout
    assert "my-tokens.csv (60 requests)" in text
    assert "### (a) paper's arithmetic, input threshold" in text
    assert "### (b) planner, every policy" in text
    assert "## Summary" in text and "| M1-Pro only |" in text
    assert "Azure" not in text.split("## Summary")[1]  # --no-azure: no Azure workload or cut-off table


def test_script_without_the_papers_data_runs_the_planner_and_says_why(tmp_path: Path) -> None:
    """A fresh clone has no raw data: the planner's part runs on the shipped profiles, with a note."""
    workload = tmp_path / "my-tokens.csv"
    pd.DataFrame({"input_tokens": [5, 20, 300], "output_tokens": [4, 30, 100]}).to_csv(workload, index=False)
    env = {k: v for k, v in os.environ.items() if k != "HPCQUEUE_PAPER_DATA"}
    args = ["--no-azure", "--workload", str(workload), "--out", str(tmp_path)]
    result = run_script(*args, env=env)
    assert result.returncode == 0, result.stderr
    assert "HPCQUEUE_PAPER_DATA" in result.stdout and "no redistribution licence" in result.stdout
    assert "### (a)" not in result.stdout and "### (b) planner, every policy" in result.stdout
    assert [p.name for p in tmp_path.glob("*.png")] == ["paper-section6-my-tokens-planner.png"]

    given = run_script(*args, "--paper-data", str(tmp_path / "nowhere"), env=env)
    assert given.returncode == 2  # a directory given but without the data is an error, not a skip
    assert "all-input-stats.csv" in given.stderr and "HPCQUEUE_PAPER_DATA" in given.stderr


def test_script_reports_a_missing_workload_file(tmp_path: Path) -> None:
    result = run_script("--no-azure", "--workload", str(tmp_path / "nope.csv"), "--out", str(tmp_path))
    assert result.returncode == 2
    assert "nope.csv" in result.stderr and "not found" in result.stderr
    assert not list(tmp_path.glob("*.png"))
