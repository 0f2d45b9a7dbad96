"""hpcqueue.profiles.sweep: measuring a profile the way the paper did, with exact lengths and idle subtracted.

Unit tests drive the stopping rule with scripted timings (the outside world: how long a call took); the
sweep itself runs for real on the demo model, on this machine and through submitit's local executor.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpcqueue.config import Target
from hpcqueue.errors import HpcqueueError, ProfileRunError
from hpcqueue.models import DEMO_MODEL, ModelRef
from hpcqueue.planner.costs import CostModel
from hpcqueue.profiles.grid import (
    SweepConfig,
    SweepPoint,
    Trial,
    enough_trials,
    grid_points,
    idle_energy_j,
    run_trials,
    shuffled,
    summarise,
    trials_table,
)
from hpcqueue.profiles.runs import ProfileRun, profile_target
from hpcqueue.profiles.store import ci95_half_width, load_profile, t_critical_95
from hpcqueue.profiles.sweep import exact_length_prompt, profile_name, run_sweep, save_sweep
from tests.fakes.machine import NoCounters

TINY = SweepConfig(
    input_tokens=(8, 32),
    output_tokens=(8,),
    batch_sizes=(1, 2),
    max_trials=3,
    idle_s=0.5,
    preset="test",
)


def scripted(durations: list[float]) -> tuple[list[float], Callable[[], Trial]]:
    """A trial that "takes" the next scripted duration; returns the list of calls made and the trial."""
    calls: list[float] = []
    source = iter(durations)

    def trial() -> Trial:
        duration = next(source)
        calls.append(duration)
        return Trial(
            duration_s=duration, energy_raw_j={"cpu": 10.0 * duration}, idle_j={"cpu": 0.0}, tokens=40
        )

    return calls, trial


def profile_tiny(target: Target, cache_dir: Path, tmp_path: Path, *, wait: bool = True) -> ProfileRun:
    """Profile the demo model on ``target`` over the TINY grid, into ``tmp_path``'s profiles/ and batches/."""
    return profile_target(
        target,
        model=DEMO_MODEL,
        quick=True,
        out_dir=tmp_path / "profiles",
        cache_dir=cache_dir,
        wait=wait,
        batch_root=tmp_path / "batches",
        config=TINY,
    )


# ------------------------------------------------------------------------------------ stopping rule


def test_a_steady_point_stops_at_min_trials_and_drops_the_warmup() -> None:
    config = SweepConfig(min_trials=3, max_trials=25, ci_half_width_s=0.5, warmup_trials=1)
    calls, trial = scripted([9.0, 1.00, 1.02, 0.98] + [1.0] * 30)  # the warm-up call is slow
    warmups, trials = run_trials(trial, config)
    assert [t.duration_s for t in warmups] == [9.0]
    assert [t.duration_s for t in trials] == [1.00, 1.02, 0.98]
    assert len(calls) == 4


def test_a_noisy_point_runs_until_max_trials() -> None:
    config = SweepConfig(min_trials=3, max_trials=7, ci_half_width_s=0.5, warmup_trials=0)
    noisy = [1.0, 6.0, 0.5, 9.0, 2.0, 7.0, 0.7, 8.0, 3.0, 5.0]
    _, trials = run_trials(scripted(noisy)[1], config)
    assert len(trials) == 7
    runtimes = np.array([t.duration_s for t in trials])
    assert ci95_half_width(runtimes.std(ddof=1), len(runtimes)) > 0.5


def test_the_rule_stops_as_soon_as_the_interval_is_narrow_enough() -> None:
    # Spread 2 s at first; then values at the mean narrow the interval until t·s/√n <= 0.5.
    config = SweepConfig(min_trials=3, max_trials=25, ci_half_width_s=0.5, warmup_trials=0)
    durations = [1.0, 3.0] + [2.0] * 30
    _, trials = run_trials(scripted(durations)[1], config)
    n = len(trials)
    runtimes = [t.duration_s for t in trials]
    assert enough_trials(runtimes, config) and not enough_trials(runtimes[:-1], config)
    s = np.std(runtimes, ddof=1)
    assert (
        t_critical_95(n - 1) * s / np.sqrt(n)
        <= 0.5
        < t_critical_95(n - 2) * np.std(runtimes[:-1], ddof=1) / (np.sqrt(n - 1))
    )
    assert 3 < n < 25


def test_min_trials_is_respected_even_when_identical() -> None:
    config = SweepConfig(min_trials=5, max_trials=25, warmup_trials=0)
    _, trials = run_trials(scripted([1.0] * 10)[1], config)
    assert len(trials) == 5


# --------------------------------------------------------------------------------- order and grid


def test_points_run_in_a_seeded_random_order() -> None:
    config = SweepConfig.quick()
    grid = grid_points(config)
    assert len(grid) == (3 + 2) * 2
    first = shuffled(grid, seed=7)
    assert shuffled(grid, seed=7) == first  # the same sweep can be repeated exactly
    assert sorted(first, key=repr) == sorted(grid, key=repr)  # every point, once
    orders = {tuple(shuffled(grid, seed=s)) for s in range(5)}
    assert len(orders) > 1 and tuple(grid) not in orders


def test_grid_follows_the_paper_sweeps() -> None:
    config = SweepConfig()
    points = grid_points(config)
    inputs = sorted({p.input_tokens for p in points if p.sweep == "input"})
    outputs = sorted({p.output_tokens for p in points if p.sweep == "output"})
    assert inputs == [8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    assert outputs == [8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    assert {p.output_tokens for p in points if p.sweep == "input"} == {32}
    assert {p.input_tokens for p in points if p.sweep == "output"} == {32}
    capped = SweepConfig(batch_sizes=(1, 4, 16, 64), max_batch_size=16)
    assert {p.batch_size for p in grid_points(capped)} == {1, 4, 16}


def test_bad_configuration_is_refused_with_the_reason() -> None:
    with pytest.raises(HpcqueueError, match="min_trials"):
        SweepConfig(min_trials=10, max_trials=5)
    with pytest.raises(HpcqueueError, match="batch_sizes"):
        SweepConfig(batch_sizes=())
    with pytest.raises(HpcqueueError, match="engine 'tgi' is not known; valid values: transformers, vllm"):
        SweepConfig(engine="tgi")
    with pytest.raises(HpcqueueError, match="vLLM always generates with its KV cache"):
        SweepConfig(engine="vllm", kv_cache=False)


# ------------------------------------------------------------------------------- idle subtraction


def test_idle_power_is_subtracted_per_domain_and_raw_figures_are_kept() -> None:
    idle_w = {"cpu": 20.0, "gpu:0": 50.0, "gpu:1": 40.0}
    point = SweepPoint("input", 8, 32, 1)
    trials = []
    for duration, cpu, gpu0, gpu1 in [(2.0, 100.0, 300.0, 90.0), (4.0, 180.0, 500.0, 170.0)]:
        raw = {"cpu": cpu, "gpu:0": gpu0, "gpu:1": gpu1}
        trials.append(Trial(duration, raw, idle_energy_j(idle_w, raw, duration), tokens=40))
    # 2 s: cpu 100 - 40 = 60, gpu (300 - 100) + (90 - 80) = 210; 4 s: cpu 180 - 80 = 100, gpu 300 + 10 = 310
    assert trials[0].energy_j == {"cpu": 60.0, "gpu:0": 200.0, "gpu:1": 10.0}
    table = trials_table(
        [(point, 0, True, trials[1]), (point, 0, False, trials[0]), (point, 1, False, trials[1])]
    )
    row = summarise(table).iloc[0]
    assert row["trials"] == 2  # the warm-up is not counted
    assert row["energy_cpu_j_mean"] == pytest.approx(80.0)
    assert row["energy_gpu_j_mean"] == pytest.approx(260.0)
    assert row["energy_j_mean"] == pytest.approx(340.0)
    assert row["energy_raw_j_mean"] == pytest.approx((490.0 + 850.0) / 2)
    assert row["energy_cpu_raw_j_mean"] == pytest.approx(140.0)
    assert row["idle_j_mean"] == pytest.approx((220.0 + 440.0) / 2)
    assert row["runtime_s_mean"] == pytest.approx(3.0)
    assert row["runtime_s_ci95"] == pytest.approx(t_critical_95(1) * np.std([2.0, 4.0], ddof=1) / np.sqrt(2))
    assert row["energy_gpu_j_ci95"] == pytest.approx(
        t_critical_95(1) * np.std([210.0, 310.0], ddof=1) / np.sqrt(2)
    )


def test_a_domain_that_was_not_metered_stays_empty() -> None:
    point = SweepPoint("output", 32, 8, 1)
    trials = [
        Trial(1.0, {"cpu": 5.0}, {"cpu": 1.0}, tokens=40),
        Trial(1.2, {"cpu": 6.0}, {"cpu": 1.2}, tokens=40),
    ]
    row = summarise(trials_table([(point, i, False, t) for i, t in enumerate(trials)])).iloc[0]
    assert np.isnan(row["energy_gpu_j_mean"]) and np.isnan(row["energy_gpu_j_ci95"])
    assert row["energy_cpu_j_mean"] == pytest.approx(4.4)


# ------------------------------------------------------------------------------ the real model


@pytest.mark.parametrize("n_tokens", [1, 2, 3, 8, 33, 100, 512, 2048])
def test_prompts_have_exactly_the_nominal_token_count(hf_tokenizer, n_tokens: int) -> None:
    spec = exact_length_prompt(hf_tokenizer, n_tokens)
    assert spec.exact
    assert len(hf_tokenizer.encode(spec.text, add_special_tokens=True)) == n_tokens
    assert spec.ids == hf_tokenizer.encode(spec.text, add_special_tokens=True)


def test_an_impossible_length_is_reported_with_the_length_achieved(hf_tokenizer) -> None:
    # Every encoding of this tokenizer starts with <s>: a prompt of 0 tokens cannot exist.
    spec = exact_length_prompt(hf_tokenizer, 0)
    assert not spec.exact and spec.tokens == 1


def test_profile_names_follow_the_convention() -> None:
    assert (
        profile_name("meta-llama/Llama-2-7b-chat-hf", "gpu", "a100-40g") == "llama-2-7b-chat-hf.gpu.a100-40g"
    )
    assert profile_name("/models/Mistral-7B-v0.1/", "lowpower", "m1-pro") == "mistral-7b-v0.1.lowpower.m1-pro"
    assert profile_name(DEMO_MODEL, "local", "cpu-generic") == "hpcqueue-demo.local.cpu-generic"
    # another engine's profile of the same model on the same target never overwrites this one
    assert profile_name(DEMO_MODEL, "local", "cpu-generic", "vllm") == "hpcqueue-demo.local.cpu-generic-vllm"
    assert (
        profile_name(DEMO_MODEL, "local", "cpu-generic", "transformers") == "hpcqueue-demo.local.cpu-generic"
    )


@pytest.mark.slow
def test_a_real_sweep_on_the_demo_model_gives_a_loadable_profile(
    demo: ModelRef, tmp_path: Path, no_energy_counters: NoCounters
) -> None:
    """A sweep with the default meter (``auto``) on a machine without energy counters and without GPUs
    (faked away, in this process): everything is estimated, on the CPU only."""
    config = SweepConfig(
        input_tokens=(8, 32, 4096),  # 4096 + 32 outputs do not fit the demo model's 4096-token context
        output_tokens=(8, 16),
        batch_sizes=(1, 2),
        max_trials=3,
        idle_s=0.5,
        preset="test",
    )
    lines: list[str] = []
    profile = run_sweep(
        config, hardware="cpu-generic", model_ref=demo, name="demo.test.cpu-generic", log=lines.append
    )
    directory = save_sweep(profile, tmp_path)
    loaded = load_profile(directory)

    meta = loaded.meta
    assert meta.source == "measured" and meta.method == "estimated"  # no energy counter (faked)
    assert meta.hardware == "cpu-generic" and meta.model == DEMO_MODEL
    assert meta.engine == "transformers" and meta.batch_size_semantics.startswith(
        "identical prompts per generate"
    )
    assert meta.kv_cache is True and meta.idle_subtracted == {"cpu": True}
    assert meta.idle_power_w is not None and meta.idle_power_w >= 0
    assert meta.fingerprint["cpu_count"] >= 1 and meta.fingerprint["gpus"] == []
    assert meta.software["torch"] and meta.software["generation"]["use_cache"] is True
    assert "estimate" in meta.meters["cpu"]
    assert meta.extra["load_time_s"] > 0 and meta.extra["load_energy_j"] >= 0
    skipped = meta.extra["skipped_points"]
    assert sorted((s["input_tokens"], s["batch_size"]) for s in skipped) == [(4096, 1), (4096, 2)]
    assert all("context" in s["reason"] for s in skipped)
    assert meta.extra["inexact_prompts"] == []

    points = loaded.points
    assert len(points) == (2 + 2) * 2
    assert set(points["trials"]) == {3}
    assert points["runtime_s_ci95"].notna().all() and points["energy_j_ci95"].notna().all()
    assert (points["runtime_s_mean"] > 0).all() and (points["energy_j_mean"] > 0).all()
    # exactly the nominal prompt and output lengths, per call of batch_size rows
    expected = points["batch_size"] * (points["input_tokens"] + points["output_tokens"])
    assert (points["total_tokens_mean"] == expected).all()
    assert points["energy_cpu_j_mean"].to_numpy() == pytest.approx(points["energy_j_mean"].to_numpy())

    trials = pd.read_csv(directory / "trials.csv")
    assert len(trials) == len(points) * (3 + 1)  # three trials and one warm-up per point
    assert trials["warmup"].sum() == len(points)
    net = trials["energy_raw_j"] - trials["idle_j"]
    assert trials["energy_j"].to_numpy() == pytest.approx(net.to_numpy())
    assert any("skipped" in line for line in lines)

    # the planner can build a cost model from it
    model = CostModel.from_profile(loaded)
    assert model.input_sweep_output_tokens == 32 and model.output_sweep_input_tokens == 32
    assert json.loads((directory / "meta.json").read_text())["created"].endswith("+00:00")


@pytest.mark.slow
def test_profile_target_runs_a_local_job_and_saves_the_profile(
    hq_cache: Path, demo: ModelRef, tmp_path: Path
) -> None:
    """The sweep runs in a job (a subprocess of submitit's local executor), which no fake of this process
    reaches: the target asks for the estimate meter, so the profile is estimated on any machine."""
    target = Target(name="bench", executor="local", hardware="cpu-generic", meter="estimate")
    run = profile_tiny(target, hq_cache, tmp_path)
    assert run.executor == "local" and run.job_id and run.name == "hpcqueue-demo.bench.cpu-generic"
    assert run.engine == "transformers"
    assert run.done()
    directory = run.wait()
    assert directory == tmp_path / "profiles" / "hpcqueue-demo.bench.cpu-generic" == run.profile_dir
    profile = load_profile(directory)
    assert profile.meta.method == "estimated" and profile.meta.extra["sweep_config"]["preset"] == "test"
    assert set(profile.meta.meters) == {"cpu"} and profile.meta.meters["cpu"].startswith(
        "estimate (estimated)"
    )
    assert len(profile.points) == (2 + 1) * 2
    assert (directory / "trials.csv").is_file()
    assert any(run.log_dir.iterdir())  # submitit's logs are kept for the user


@pytest.mark.slow
def test_a_failing_profile_job_raises_with_its_log(hq_cache: Path, tmp_path: Path) -> None:
    target = Target(name="bench", executor="local", hardware="cpu-generic", meter="no-such-meter")
    with pytest.raises(ProfileRunError) as info:
        profile_tiny(target, hq_cache, tmp_path)
    message = str(info.value)
    first_line = message.splitlines()[0]
    assert (
        "target 'bench'" in first_line
        and "MeterUnavailableError" in first_line
        and "no-such-meter" in first_line
    )
    assert "last lines of the job's log" in message
    assert not (tmp_path / "profiles" / "hpcqueue-demo.bench.cpu-generic").exists()


def test_an_unknown_hardware_class_is_refused_before_submitting(tmp_path: Path) -> None:
    target = Target(name="bench", executor="local", hardware="no-such-class")
    with pytest.raises(HpcqueueError, match="known classes"):
        profile_tiny(target, tmp_path, tmp_path)
    assert not (tmp_path / "profiles").exists() and not (tmp_path / "batches").exists()


# ------------------------------------------------------------------------------------ real Slurm


@pytest.mark.slurm
@pytest.mark.slow
def test_profile_target_on_a_slurm_partition(real_slurm: None, hq_cache: Path, tmp_path: Path) -> None:
    import subprocess

    target = Target(name="lowpower", executor="slurm", partition="lowpower", hardware="cpu-generic")
    run = profile_tiny(target, hq_cache, tmp_path, wait=False)
    assert run.executor == "slurm" and run.job_id.isdigit()
    shown = subprocess.run(
        ["scontrol", "show", "job", run.job_id], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert "Partition=lowpower" in shown
    assert "OverSubscribe=NO" in shown  # --exclusive: the node is the job's alone, as the paper measured
    directory = run.wait()
    profile = load_profile(directory)
    assert profile.name == "hpcqueue-demo.lowpower.cpu-generic"
    assert profile.meta.fingerprint["hostname"]
    assert len(profile.points) == (2 + 1) * 2
