"""Plans (policy → targets → array tasks) on the shipped profiles of Wilkins et al. (2024)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpcqueue.config import Target
from hpcqueue.errors import ConfigError, PlanningError
from hpcqueue.planner import CostModel, PlanOptions, make_plan, plan_requests, resolve_cost_models
from hpcqueue.profiles import Profile, find_profile

SHIPPED = [Path(__file__).resolve().parents[2] / "profiles"]
LLAMA = "meta-llama/Llama-2-7b-chat-hf"
M1 = "llama-2-7b-chat.m1-pro.wilkins2024"
SWING = "llama-2-7b-chat.swing-a100.wilkins2024"
PALMETTO = "llama-2-7b-chat.palmetto-a100.wilkins2024"
V100 = "llama-2-7b-chat.palmetto-v100.wilkins2024"


def _profile(name: str) -> Profile:
    return find_profile(name, SHIPPED)


def _model(name: str) -> CostModel:
    return CostModel.from_profile(_profile(name))


def _requests(pairs: list[tuple[int, int]], start_line: int = 1) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "line": np.arange(start_line, start_line + len(pairs)),
            "input_tokens": [p[0] for p in pairs],
            "max_new_tokens": [p[1] for p in pairs],
        }
    )


# --- plans ---------------------------------------------------------------------------------------


def test_one_target_takes_everything_without_a_profile() -> None:
    table = _requests([(10, 5), (300, 64), (2, 1)])
    plan = make_plan(table, [Target(name="local")], {"local": None})
    assert plan.assignments["target"].tolist() == ["local"] * 3
    assert plan.assignments["predicted_energy_j"].isna().all()
    assert not plan.assignments["extrapolated"].any()
    assert plan.thresholds == {}
    assert plan.per_target()["local"]["requests"] == 3
    assert plan.profiles == {"local": None}


def test_two_targets_send_small_requests_to_the_low_power_one() -> None:
    targets = [
        Target(name="gpu", hardware="a100-40g", profile=SWING),
        Target(name="laptop", hardware="m1-pro"),
    ]
    # the paper's no-cache regime, where the two machines cross over (with a KV cache the laptop's cheaper
    # decode steps win every one of these requests)
    models = resolve_cost_models(targets, LLAMA, SHIPPED, kv_cache=None)
    table = _requests([(8, 8), (2000, 500), (12, 8), (1500, 300), (8, 16), (900, 64)])
    table.index = table["line"] * 10  # the plan keeps the caller's index
    plan = make_plan(table, targets, models, model=LLAMA)

    assert plan.thresholds["low"] == "laptop" and plan.thresholds["high"] == "gpu"
    assert 12 <= plan.thresholds["input_tokens"] < 900
    assert 16 <= plan.thresholds["output_tokens"] < 64
    assert plan.assignments["target"].tolist() == ["laptop", "gpu", "laptop", "gpu", "laptop", "gpu"]
    assert plan.assignments.index.equals(table.index)
    assert plan.profiles == {"gpu": SWING, "laptop": M1}
    assert plan.assignments["predicted_energy_j"].notna().all()
    per_target = plan.per_target()
    assert per_target["laptop"]["requests"] == 3
    assert per_target["gpu"]["predicted_energy_j"] == pytest.approx(
        plan.assignments.loc[plan.assignments["target"] == "gpu", "predicted_energy_j"].sum()
    )
    # each request's predicted energy is the lower of the two targets' (λ = 1)
    for (n_in, n_out), target in zip(
        table[["input_tokens", "max_new_tokens"]].itertuples(index=False),
        plan.assignments["target"],
        strict=True,
    ):
        energy = {n: models[n].predict([n_in], [n_out]).energy_j[0] for n in ("gpu", "laptop")}
        assert energy[target] == min(energy.values())


def test_three_targets_form_a_ladder() -> None:
    names = {"v100": V100, "laptop": M1, "a100": SWING}
    targets = [Target(name=n, hardware="x", profile=p) for n, p in names.items()]
    models = resolve_cost_models(targets, LLAMA, SHIPPED, kv_cache=None)  # the paper's regime, as above
    table = _requests([(16, 16), (100, 100), (3000, 64)])
    plan = make_plan(table, targets, models)
    assert [r["low"] for r in plan.thresholds["ladder"]] == ["laptop", "a100"]
    # the V100 costs more than the A100 for every request: the ladder's last rung gets nothing
    assert plan.assignments["target"].tolist() == ["laptop", "a100", "a100"]


def test_single_policy_sends_everything_to_the_named_target() -> None:
    targets = [Target(name="gpu", hardware="a100-40g"), Target(name="laptop", hardware="m1-pro")]
    plan = make_plan(
        _requests([(8, 8), (900, 900)]), targets, {"gpu": None, "laptop": None}, policy="single:gpu"
    )
    assert plan.assignments["target"].tolist() == ["gpu", "gpu"]
    assert plan.per_target()["laptop"]["requests"] == 0
    with pytest.raises(ConfigError, match="'tpu', which is not configured; targets: gpu, laptop"):
        make_plan(_requests([(8, 8)]), targets, {}, policy="single:tpu")


def test_unknown_policy_lists_the_valid_ones() -> None:
    with pytest.raises(
        ConfigError,
        match=r"unknown policy 'fastest'; valid policies: threshold, optimal, unaware, single:<target>",
    ):
        make_plan(_requests([(8, 8)]), [Target(name="local")], {}, policy="fastest")


def test_missing_profile_with_two_targets_says_which_and_how_to_fix() -> None:
    targets = [Target(name="gpu", hardware="a100-40g"), Target(name="lp", hardware="arm-n1")]
    models = resolve_cost_models(targets, LLAMA, SHIPPED)
    assert models["lp"] is None
    with pytest.raises(PlanningError) as info:
        make_plan(_requests([(8, 8)]), targets, models, model=LLAMA)
    message = str(info.value)
    assert "target 'lp' (hardware 'arm-n1')" in message
    assert LLAMA in message
    assert 'profile = "<profile name>" in [targets.lp]' in message


def test_resolving_profiles_by_name_and_by_model_and_hardware() -> None:
    notes: list[str] = []
    targets = [
        Target(name="a", hardware="a100-40g"),
        Target(name="b", hardware="m1-pro", profile="mistral-7b.m1-pro.wilkins2024"),
        Target(name="c", hardware="m1-pro"),
    ]
    models = resolve_cost_models(targets, "Llama-2 (7B)", SHIPPED, notes)
    assert {k: m.profile_name if m else None for k, m in models.items()} == {
        "a": PALMETTO,  # two A100 profiles match; the choice is reported
        "b": "mistral-7b.m1-pro.wilkins2024",
        "c": M1,
    }
    choice, *regimes = notes
    assert SWING in choice and "[targets.a]" in choice
    # and the regime each predicts: the workers' KV cache, derived from these no-cache profiles
    assert [note.split(":")[0] for note in regimes] == ["target 'a'", "target 'b'", "target 'c'"]
    assert all("predicts generation with a KV cache, derived" in note for note in regimes)
    with pytest.raises(PlanningError, match="no profile named 'typo'"):
        resolve_cost_models([Target(name="x", profile="typo")], LLAMA, SHIPPED)


def test_chunking_puts_each_request_in_one_task_sorted_by_length_within_target() -> None:
    rng = np.random.default_rng(7)
    n = 1000
    table = pd.DataFrame(
        {
            "line": rng.permutation(n) + 1,
            "input_tokens": rng.integers(1, 200, n),
            "max_new_tokens": rng.integers(1, 64, n),
        }
    )
    targets = [
        Target(name="gpu", hardware="a100-40g", profile=SWING, task_size=64),
        Target(name="laptop", hardware="m1-pro", profile=M1),
    ]
    plan = make_plan(table, targets, resolve_cost_models(targets, LLAMA, SHIPPED), task_size=100)
    a, tasks = plan.assignments, plan.tasks

    assert tasks["task_index"].tolist() == list(range(len(tasks)))
    assert tasks["n_requests"].sum() == n
    assert (a.groupby("task_index").size() == tasks.set_index("task_index")["n_requests"]).all()
    # targets in the order given: all of gpu's tasks, then the laptop's
    assert tasks["target"].tolist() == sorted(tasks["target"].tolist(), key=["gpu", "laptop"].index)
    for name, size in (("gpu", 64), ("laptop", 100)):
        sizes = tasks.loc[tasks["target"] == name, "n_requests"].to_numpy()
        assert (sizes[:-1] == size).all() and 0 < sizes[-1] <= size
        mine = pd.concat([table, a], axis=1)[a["target"] == name]
        ordered = mine.sort_values(["input_tokens", "line"])
        assert ordered["task_index"].is_monotonic_increasing
    sums = pd.concat([table, a], axis=1).groupby("task_index")[["input_tokens", "max_new_tokens"]].sum()
    assert (sums["input_tokens"].to_numpy() == tasks["input_tokens"].to_numpy()).all()
    assert (sums["max_new_tokens"].to_numpy() == tasks["max_new_tokens"].to_numpy()).all()
    np.testing.assert_allclose(
        a.groupby("task_index")["predicted_energy_j"].sum().to_numpy(), tasks["predicted_energy_j"]
    )


def test_extrapolated_share_is_reported() -> None:
    targets = [Target(name="gpu", hardware="a100-40g", profile=SWING)]
    models = resolve_cost_models(targets, LLAMA, SHIPPED)
    plan = make_plan(_requests([(100, 32), (5000, 32), (100, 9000), (64, 64)]), targets, models)
    assert plan.assignments["extrapolated"].tolist() == [False, True, True, False]
    assert any(w.startswith("50.0 % of the requests on target 'gpu' (2 of 4)") for w in plan.warnings)


def test_empty_table_plans_no_tasks() -> None:
    plan = make_plan(_requests([]), [Target(name="local")], {"local": None})
    assert len(plan.assignments) == 0 and len(plan.tasks) == 0


def test_tasks_fit_the_partition_time_limit_with_a_margin() -> None:
    """On the M1-Pro profile a 512-token answer takes minutes: a 10-minute partition gets small tasks."""
    from hpcqueue.planner.plan import TIME_LIMIT_SHARE

    pairs = [(64, 512)] * 12 + [(8, 8)] * 40
    target = Target(name="laptop", hardware="m1-pro", profile=M1, time_limit_min=10)
    plan = make_plan(_requests(pairs), [target], {"laptop": _model(M1)}, task_size=256)
    budget_s = 10 * 60 * TIME_LIMIT_SHARE
    per_task = plan.tasks.set_index("task_index")["predicted_runtime_s"]
    single = plan.tasks["n_requests"] == 1
    assert len(plan.tasks) > 1  # 256 per task would have made one task
    assert (per_task[~single.to_numpy()] <= budget_s + 1e-9).all()
    assert plan.tasks["n_requests"].sum() == len(pairs)
    # each request is in exactly one task and the tasks still run in prompt-length order
    assert sorted(plan.assignments["task_index"].unique()) == list(range(len(plan.tasks)))

    roomy = make_plan(
        _requests(pairs),
        [target.model_copy(update={"time_limit_min": 100_000})],
        {"laptop": _model(M1)},
        task_size=256,
    )
    assert len(roomy.tasks) == 1


def test_a_request_longer_than_the_budget_runs_alone() -> None:
    target = Target(name="laptop", hardware="m1-pro", profile=M1, time_limit_min=1)
    plan = make_plan(_requests([(2048, 4096), (8, 8)]), [target], {"laptop": _model(M1)})
    assert list(plan.tasks["n_requests"]) == [1, 1]


def test_costs_are_predicted_at_the_batch_size_the_workers_use() -> None:
    """A profile measured at batch 1 and 16, where a request costs 4× less per call of 16: the plan uses the
    target's batch_size, else the batch_size given, else the profile's smallest."""
    from .test_costs import no_kv_cost, synthetic_profile

    profile = synthetic_profile(
        no_kv_cost(5.0, 1.0, 0.01, 0.0),
        no_kv_cost(0.1, 0.01, 1e-4, 0.0),
        kv_cache=False,
        batches={1: 1.0, 16: 0.25},
    )
    model = CostModel.from_profile(profile)
    table = _requests([(100, 20)])
    energy = {}
    for label, target_batch, default_batch in (
        ("profile", None, None),
        ("given", None, 16),
        ("target", 16, 1),
    ):
        target = Target(name="t", hardware="x", batch_size=target_batch)
        plan = make_plan(table, [target], {"t": model}, batch_size=default_batch)
        energy[label] = float(plan.assignments["predicted_energy_j"].iloc[0])
    assert energy["given"] == pytest.approx(energy["profile"] / 4, rel=1e-3)
    assert energy["target"] == pytest.approx(energy["given"], rel=1e-9)


# --- options ---------------------------------------------------------------------------------------


def test_plan_options_are_taken_from_the_settings_once() -> None:
    from hpcqueue.config import Settings

    settings = Settings(
        model="llama", policy="optimal", lambda_=0.5, deadline="2h", task_size=64, batch_size=4
    )
    options = PlanOptions.from_settings(settings)
    assert options == PlanOptions(
        policy="optimal", lam=0.5, deadline_s=7200.0, model="llama", batch_size=4, task_size=64
    )
    assert PlanOptions.from_settings(settings, model=LLAMA).model == LLAMA


def test_make_plan_is_plan_requests_with_the_options_one_by_one() -> None:
    targets = [
        Target(name="gpu", hardware="a100-40g", profile=SWING),
        Target(name="laptop", hardware="m1-pro", task_size=2),
    ]
    models = resolve_cost_models(targets, LLAMA, SHIPPED)
    table = _requests([(8, 8), (2000, 500), (12, 8), (1500, 300), (8, 16), (900, 64), (9, 9)])
    options = PlanOptions(
        policy="optimal", lam=0.25, deadline_s=3600.0, model=LLAMA, batch_size=1, task_size=3
    )
    by_options = plan_requests(table, targets, models, options)
    by_keywords = make_plan(
        table,
        targets,
        models,
        policy="optimal",
        lam=0.25,
        deadline_s=3600.0,
        model=LLAMA,
        batch_size=1,
        task_size=3,
    )
    pd.testing.assert_frame_equal(by_options.assignments, by_keywords.assignments)
    pd.testing.assert_frame_equal(by_options.tasks, by_keywords.tasks)
    assert (by_keywords.policy, by_keywords.lam, by_keywords.deadline_s) == ("optimal", 0.25, 3600.0)
    assert by_options.compare() == by_keywords.compare()
