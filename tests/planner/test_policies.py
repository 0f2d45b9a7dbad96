"""Policies on the paper's profiles: the cost C = λ·E + (1−λ)·R, thresholds fitted to the workload, the
optimal assignment under capacity, the unaware and single-target baselines, and their comparison on the
Azure trace."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcqueue.config import Target
from hpcqueue.errors import ConfigError, PlanningError
from hpcqueue.planner import CostModel, CostTable, PlanOptions, Workload, compare, route, summarize
from hpcqueue.planner.simulate import load_trace, simulate
from hpcqueue.profiles import find_profile
from tests.conftest import SHIPPED_PROFILES
from tests.planner import REPORT_KEYS

SHIPPED = [SHIPPED_PROFILES]
M1 = "llama-2-7b-chat.m1-pro.wilkins2024"
SWING = "llama-2-7b-chat.swing-a100.wilkins2024"
PALMETTO = "llama-2-7b-chat.palmetto-a100.wilkins2024"
POLICY_NAMES = ("threshold", "optimal", "unaware", "single:a100", "single:m1")

_MODELS: dict[str, CostModel] = {}


def _model(name: str) -> CostModel:
    if name not in _MODELS:
        _MODELS[name] = CostModel.from_profile(find_profile(name, SHIPPED))
    return _MODELS[name]


def _paper_targets(a100_slots: int = 1, m1_slots: int = 1) -> tuple[list[Target], dict[str, CostModel]]:
    targets = [
        Target(name="a100", hardware="a100-40g", profile=SWING, array_parallelism=a100_slots),
        Target(name="m1", hardware="m1-pro", profile=M1, array_parallelism=m1_slots),
    ]
    return targets, {"a100": _model(SWING), "m1": _model(M1)}


def _table(
    n_in: list[int] | np.ndarray, n_out: list[int] | np.ndarray, **slots: int
) -> tuple[Workload, CostTable]:
    workload = Workload.from_tokens(n_in, n_out)
    targets, models = _paper_targets(**slots)
    return workload, CostTable.build(workload, targets, models)


# --- workload and cost ---------------------------------------------------------------------------------


def test_requests_with_equal_token_counts_share_a_class() -> None:
    workload = Workload.from_tokens([5, 7, 5, 5, 3_000_000], [2, 2, 2, 9, 1])
    assert workload.n_classes == 4
    assert workload.counts.sum() == 5
    k = workload.request_class
    assert k[0] == k[2] and len({k[0], k[1], k[3], k[4]}) == 4
    assert (workload.class_in[k] == workload.n_in).all() and (workload.class_out[k] == workload.n_out).all()
    with pytest.raises(PlanningError, match="negative"):
        Workload.from_tokens([-1], [3])


def test_lambda_weighs_energy_and_runtime_normalised_by_the_workload_means() -> None:
    _, table = _table([8, 100, 2000], [8, 64, 300])
    energy_only, runtime_only, half = table.cost(1.0), table.cost(0.0), table.cost(0.5)
    mean_energy = table.energy_j.mean()  # three classes of one request each, two targets
    assert table.energy_scale_j == pytest.approx(mean_energy)
    assert table.runtime_scale_s == pytest.approx(table.runtime_s.mean())
    np.testing.assert_allclose(energy_only, table.energy_j / mean_energy)
    np.testing.assert_allclose(runtime_only, table.runtime_s / table.runtime_s.mean())
    np.testing.assert_allclose(half, 0.5 * energy_only + 0.5 * runtime_only)
    # a typical request weighs 1 in both terms
    assert np.average(energy_only.mean(axis=1)) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match=r"lambda must lie in \[0, 1\]"):
        table.cost(1.5)


# --- threshold policy ----------------------------------------------------------------------------------


def _brute_force_thresholds(workload: Workload, cost: np.ndarray) -> float:
    """The cheapest threshold rule by trying every pair of distinct token counts, both ways round."""
    best = np.inf
    ins = [-1, *np.unique(workload.n_in)]
    outs = [-1, *np.unique(workload.n_out)]
    for low, high in ((0, 1), (1, 0)):
        for t_in, t_out in itertools.product(ins, outs):
            box = (workload.class_in <= t_in) & (workload.class_out <= t_out)
            total = (workload.counts * np.where(box, cost[:, low], cost[:, high])).sum()
            best = min(best, total)
    return float(best)


def test_threshold_search_finds_the_cheapest_rule_over_every_candidate() -> None:
    rng = np.random.default_rng(3)
    n_in = rng.integers(1, 3000, 300)
    n_out = rng.integers(1, 600, 300)
    workload, table = _table(n_in, n_out)
    for lam in (1.0, 0.5, 0.0):
        cost = table.cost(lam)
        routing = route(workload, table, "threshold", lam=lam)
        planned = summarize(workload, table, routing.target_idx, lam=lam)["cost"]
        assert planned == pytest.approx(_brute_force_thresholds(workload, cost), rel=1e-9)
        found = routing.thresholds
        assert found["cost"] == pytest.approx(planned, rel=1e-9)
        # the joint search contains both one-dimensional ones
        assert found["cost"] <= found["input_only"]["cost"] + 1e-9
        assert found["cost"] <= found["output_only"]["cost"] + 1e-9


def test_threshold_rule_is_applied_as_reported() -> None:
    rng = np.random.default_rng(5)
    workload, table = _table(rng.integers(1, 400, 500), rng.integers(1, 200, 500))
    routing = route(workload, table, "threshold")
    found = routing.thresholds
    low = table.names.index(found["low"])
    box = (workload.n_in <= found["input_tokens"]) & (workload.n_out <= found["output_tokens"])
    assert ((routing.target_idx == low) == box).all()
    assert found["low_requests"] == int(box.sum())


def test_thresholds_on_short_requests_send_the_short_ones_to_the_m1() -> None:
    """Short prompts and answers (Alpaca-like) are where the M1 Pro's energy per token beats the A100's."""
    rng = np.random.default_rng(11)
    workload, table = _table(rng.integers(4, 200, 2000), rng.integers(4, 120, 2000))
    routing = route(workload, table, "threshold")
    assert routing.thresholds["low"] == "m1"
    assert 0 < routing.thresholds["low_requests"] < 2000
    assert 8 <= routing.thresholds["output_tokens"] <= 128  # tens of tokens, as the paper found
    totals = compare(workload, table, "threshold", chosen=routing)
    assert totals["savings_vs_best_single"] > 0


def test_fewer_than_two_targets_or_no_requests() -> None:
    workload, table = _table([], [])
    for policy in POLICY_NAMES:
        routing = route(workload, table, policy)
        assert len(routing.target_idx) == 0
        totals = summarize(workload, table, routing.target_idx)
        assert totals["energy_j"] == 0 and totals["makespan_s"] == 0
    one = [Target(name="only", hardware="m1-pro", profile=M1)]
    w = Workload.from_tokens([8, 900], [8, 100])
    t = CostTable.build(w, one, {"only": _model(M1)})
    for policy in ("threshold", "optimal", "unaware", "single:only"):
        assert route(w, t, policy).target_idx.tolist() == [0, 0]


# --- unaware and single --------------------------------------------------------------------------------


def test_unaware_splits_by_slots_in_input_order_ignoring_tokens() -> None:
    n = 12
    workload, table = _table(np.full(n, 50), np.full(n, 50), a100_slots=3, m1_slots=1)
    targets = route(workload, table, "unaware").target_idx
    assert np.bincount(targets, minlength=2).tolist() == [9, 3]
    assert targets[:4].tolist() == [0, 0, 0, 1]
    # the same split whatever the token counts
    _, other = _table(np.arange(1, n + 1) * 100, np.full(n, 7), a100_slots=3, m1_slots=1)
    assert (
        route(Workload.from_tokens(np.arange(1, n + 1) * 100, np.full(n, 7)), other, "unaware").target_idx
        == targets
    ).all()


def test_unknown_policy_and_unknown_single_target() -> None:
    workload, table = _table([8], [8])
    with pytest.raises(ConfigError, match="valid policies: threshold, optimal, unaware, single:<target>"):
        route(workload, table, "cheapest")
    with pytest.raises(ConfigError, match="'tpu', which is not configured; targets: a100, m1"):
        route(workload, table, "single:tpu")


# --- optimal policy and capacity -----------------------------------------------------------------------


def test_optimal_without_deadline_is_each_requests_cheapest_target() -> None:
    rng = np.random.default_rng(2)
    workload, table = _table(rng.integers(1, 3000, 400), rng.integers(1, 500, 400))
    for lam in (1.0, 0.3, 0.0):
        routing = route(workload, table, "optimal", lam=lam)
        cost = table.cost(lam)
        chosen = cost[workload.request_class, routing.target_idx]
        assert np.allclose(chosen, cost[workload.request_class].min(axis=1))
        assert routing.solver == pytest.approx(routing.solver | {"exact": True, "gap": 0.0})


def test_a_short_deadline_keeps_every_target_within_its_capacity() -> None:
    """The M1 would take every short request; one M1 against eight A100 slots cannot before the deadline."""
    rng = np.random.default_rng(9)
    n_in = np.concatenate([rng.integers(4, 40, 300), rng.integers(500, 3000, 300)])
    n_out = np.concatenate([rng.integers(4, 32, 300), rng.integers(32, 400, 300)])
    workload, table = _table(n_in, n_out, a100_slots=8, m1_slots=1)
    free = route(workload, table, "optimal")
    m1 = table.names.index("m1")
    wanted_s = summarize(workload, table, free.target_idx)["per_target"]["m1"]["runtime_s"]
    a100_alone_s = summarize(workload, table, np.zeros(len(workload), dtype=np.int64))["makespan_s"]
    deadline = max(wanted_s / 3, a100_alone_s)  # the A100 slots could take everything, the M1 a third
    assert deadline < wanted_s
    bound = route(workload, table, "optimal", deadline_s=deadline)
    totals = summarize(workload, table, bound.target_idx, deadline_s=deadline)
    assert totals["meets_deadline"] is True
    for j, name in enumerate(table.names):
        assert totals["per_target"][name]["runtime_s"] <= table.slots[j] * deadline * (1 + 1e-9)
    assert 0 < (bound.target_idx == m1).sum() < (free.target_idx == m1).sum()
    # less freedom never costs less; but it beats sending everything to the A100
    assert totals["cost"] >= summarize(workload, table, free.target_idx)["cost"] - 1e-9
    assert (
        totals["cost"] <= summarize(workload, table, np.zeros(len(workload), dtype=np.int64))["cost"] + 1e-9
    )
    # the threshold policy also keeps to thresholds that fit, when some do
    threshold = route(workload, table, "threshold", deadline_s=deadline)
    assert threshold.thresholds["within_capacity"] is True
    assert summarize(workload, table, threshold.target_idx, deadline_s=deadline)["meets_deadline"] is True


def test_an_impossible_deadline_is_an_error_that_says_how_much_is_needed() -> None:
    workload, table = _table([2000] * 50, [400] * 50)
    with pytest.raises(PlanningError) as info:
        route(workload, table, "optimal", deadline_s=10.0)
    assert "deadline" in str(info.value) or "capacity" in str(info.value)
    report = compare(workload, table, "threshold", deadline_s=10.0)
    assert "error" in report["baselines"]["optimal"]
    assert report["meets_deadline"] is False
    assert any("misses the deadline" in w for w in report["warnings"])


# --- the issue's acceptance checks on the Azure trace --------------------------------------------------


def test_azure_trace_energy_order_of_the_policies(azure: pd.DataFrame) -> None:
    targets, models = _paper_targets()
    report = simulate(azure, targets, models, PlanOptions(policy="optimal", lam=1.0))
    energy = {name: row["energy_j"] for name, row in report["baselines"].items()}
    assert report["requests"] == len(azure) == 8819
    assert energy["optimal"] <= energy["threshold"] * (1 + 1e-12)
    assert energy["threshold"] <= energy["unaware"]
    for name in ("single:a100", "single:m1"):
        assert energy["optimal"] <= energy[name] * (1 + 1e-12)
    # the honest comparison is with the best single target, not with the unaware split
    assert report["best_single"] == "single:a100"
    assert 0 <= report["savings_vs_best_single"] < report["savings_vs_unaware"]
    assert set(report) >= REPORT_KEYS


def test_azure_trace_with_a_deadline_too_short_for_the_m1(azure: pd.DataFrame) -> None:
    targets, models = _paper_targets(a100_slots=64, m1_slots=1)
    free = simulate(azure, targets, models, PlanOptions(policy="optimal"))
    wanted_s = free["per_target"]["m1"]["runtime_s"]
    # long enough for the A100 slots to take everything, too short for the M1 to take all it would like
    deadline = max(wanted_s / 4, free["baselines"]["single:a100"]["makespan_s"] * 1.05)
    assert deadline < wanted_s, "the M1 must not be able to take all it would like"
    bound = simulate(azure, targets, models, PlanOptions(policy="optimal", deadline_s=deadline))
    assert bound["meets_deadline"] is True
    assert bound["per_target"]["m1"]["runtime_s"] <= deadline * (1 + 1e-9)
    assert bound["per_target"]["a100"]["runtime_s"] <= 64 * deadline * (1 + 1e-9)
    assert bound["per_target"]["m1"]["requests"] < free["per_target"]["m1"]["requests"]
    assert bound["energy_j"] >= free["energy_j"] * (1 - 1e-12)


# --- properties ----------------------------------------------------------------------------------------

_pairs = st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 2000)), min_size=0, max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs=_pairs, lam=st.sampled_from([0.0, 1.0, 0.25, 0.5, 0.9]), copies=st.integers(1, 3))
def test_optimal_is_never_worse_than_any_other_policy(
    pairs: list[tuple[int, int]], lam: float, copies: int
) -> None:
    pairs = pairs * copies  # identical requests
    workload, table = _table([p[0] for p in pairs], [p[1] for p in pairs], a100_slots=2, m1_slots=1)
    best = summarize(workload, table, route(workload, table, "optimal", lam=lam).target_idx, lam=lam)["cost"]
    for policy in POLICY_NAMES:
        other = summarize(workload, table, route(workload, table, policy, lam=lam).target_idx, lam=lam)
        assert best <= other["cost"] * (1 + 1e-9) + 1e-12, policy


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pairs=st.lists(st.tuples(st.integers(1, 3000), st.integers(1, 600)), min_size=1, max_size=30),
    share=st.floats(0.05, 1.5),
)
def test_optimal_under_a_deadline_beats_every_plan_that_meets_it(
    pairs: list[tuple[int, int]], share: float
) -> None:
    workload, table = _table([p[0] for p in pairs], [p[1] for p in pairs], a100_slots=2, m1_slots=1)
    a100_alone = summarize(workload, table, np.zeros(len(workload), dtype=np.int64))["makespan_s"]
    deadline = a100_alone * (0.6 + share)
    try:
        routing = route(workload, table, "optimal", deadline_s=deadline)
    except PlanningError:
        # then no assignment fits: no policy's plan meets the deadline
        for policy in (p for p in POLICY_NAMES if p != "optimal"):
            other = route(workload, table, policy, deadline_s=deadline).target_idx
            assert summarize(workload, table, other, deadline_s=deadline)["meets_deadline"] is False
        return
    totals = summarize(workload, table, routing.target_idx, deadline_s=deadline)
    assert totals["meets_deadline"] is True
    for policy in POLICY_NAMES:
        other = summarize(
            workload,
            table,
            route(workload, table, policy, deadline_s=deadline).target_idx,
            deadline_s=deadline,
        )
        if other["meets_deadline"]:
            assert totals["cost"] <= other["cost"] * (1 + 1e-6) + 1e-9, policy


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 50), n_in=st.integers(1, 4000), n_out=st.integers(1, 1000))
def test_identical_requests_all_go_where_they_are_cheapest(n: int, n_in: int, n_out: int) -> None:
    workload, table = _table([n_in] * n, [n_out] * n)
    for lam in (0.0, 1.0):
        cheapest = int(np.argmin(table.cost(lam)[0]))
        for policy in ("threshold", "optimal"):
            assert (route(workload, table, policy, lam=lam).target_idx == cheapest).all()


# --- traces --------------------------------------------------------------------------------------------


def test_a_trace_is_read_from_csv_or_jsonl_by_column_name(tmp_path: Path, azure: pd.DataFrame) -> None:
    assert list(azure.columns) == ["input_tokens", "output_tokens"]
    assert azure["input_tokens"].iloc[:2].tolist() == [4808, 3180]
    assert azure["output_tokens"].iloc[:2].tolist() == [10, 8]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(
        '{"prompt_tokens": 5, "completion_tokens": 7}\n{"prompt_tokens": 9, "completion_tokens": 1}\n'
    )
    assert load_trace(jsonl).to_dict("list") == {"input_tokens": [5, 9], "output_tokens": [7, 1]}
    custom = tmp_path / "t.csv"
    custom.write_text("a,b\n1,2\n3,4\n")
    assert load_trace(custom, input_column="A", output_column="b")["output_tokens"].tolist() == [2, 4]


def test_bad_trace_values_are_reported_by_line_and_column(tmp_path: Path) -> None:
    from hpcqueue.errors import InputError

    bad = tmp_path / "bad.csv"
    bad.write_text("ContextTokens,GeneratedTokens\n10,5\n-3,4\n7,x\n8,2.5\n")
    with pytest.raises(InputError) as info:
        load_trace(bad)
    issues = [str(i) for i in info.value.issues]
    assert issues == [
        f"{bad}:3: ContextTokens: ContextTokens must be a whole number >= 0, got -3",
        f"{bad}:4: GeneratedTokens: GeneratedTokens must be a whole number >= 0, got 'x'",
        f"{bad}:5: GeneratedTokens: GeneratedTokens must be a whole number >= 0, got '2.5'",
    ]
    missing = tmp_path / "missing.csv"
    missing.write_text("tokens,other\n1,2\n")
    with pytest.raises(InputError, match=r"no prompt-token column.*columns: tokens, other.*--input-column"):
        load_trace(missing)


def test_a_target_without_a_profile_leaves_totals_unknown_and_says_so() -> None:
    workload = Workload.from_tokens([8, 900], [8, 100])
    table = CostTable.build(workload, [Target(name="local")], {"local": None})
    report = compare(workload, table, "threshold")
    assert report["per_target"]["local"]["requests"] == 2
    assert np.isnan(report["energy_j"]) and report["savings_vs_unaware"] is None
    assert any("no profile for target(s) local" in w for w in report["warnings"])
