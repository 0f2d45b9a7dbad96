"""Leave one hardware class out on the shipped profiles: the per-class figures, the targets and the reasons
given where a target is missed (the figures themselves are discussed in docs/estimate.md)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from hpcqueue.estimate import ENERGY_MAPE_TARGET, calibrate, leave_one_hardware_out
from tests.estimate import SHIPPED, TRUE_FACTORS, synthetic_profile


@pytest.fixture(scope="module")
def loho() -> dict[str, dict[str, object]]:
    report = leave_one_hardware_out([SHIPPED])
    return {c.hardware: c.to_dict() for c in report.classes}


def test_every_class_with_profiles_is_held_out_once_with_all_its_points(
    loho: dict[str, dict[str, object]],
) -> None:
    assert set(loho) == {"a100-40g", "m1-pro", "v100-16g"}  # Swing and Palmetto A100s are one class
    cal = calibrate([SHIPPED])
    for hardware, row in loho.items():
        assert row["points"] == sum(g.points for g in cal.groups[hardware])
        assert hardware not in row["transferred_from"]  # type: ignore[operator]
    assert loho["a100-40g"]["points"] == 114 and loho["v100-16g"]["points"] == 52


def test_the_figures_are_finite_and_in_class_beats_held_out(loho: dict[str, dict[str, object]]) -> None:
    for row in loho.values():
        for key in ("energy_mape", "runtime_mape", "in_class_energy_mape", "in_class_runtime_mape"):
            assert math.isfinite(row[key])  # type: ignore[arg-type]
        for key in ("energy_coverage", "runtime_coverage"):
            assert 0 <= row[key] <= 1  # type: ignore[operator]
        assert row["in_class_energy_mape"] < row["energy_mape"]  # type: ignore[operator]
        assert row["in_class_runtime_mape"] < row["runtime_mape"]  # type: ignore[operator]


def test_the_v100_is_predicted_from_the_other_classes_within_the_energy_target(
    loho: dict[str, dict[str, object]],
) -> None:
    v100 = loho["v100-16g"]
    assert v100["energy_mape"] <= ENERGY_MAPE_TARGET  # type: ignore[operator]
    assert v100["meets_energy_target"] is True


def test_the_intervals_cover_most_held_out_points_without_their_measurements(
    loho: dict[str, dict[str, object]],
) -> None:
    """The interval of a held-out class is the other classes' factor spread propagated to its predictions:
    it covers at least 80 % of every held-out class's points (83 %, 81 % and 100 % with the shipped
    profiles), where quantiles of two classes' transfer errors covered 6-58 % of two of them."""
    for row in loho.values():
        low, high = row["energy_interval_factors"]  # type: ignore[misc]
        assert low < 1 < high
        assert row["energy_coverage"] >= 0.80  # type: ignore[operator]


def test_a_missed_target_comes_with_its_reasons(loho: dict[str, dict[str, object]]) -> None:
    for row in loho.values():
        missed = not row["meets_energy_target"] or not row["meets_coverage_target"]
        assert bool(row["reasons"]) == missed
    # the M1 Pro's bfloat16 fallback can only be learnt from the V100's, which is far costlier
    m1 = loho["m1-pro"]
    assert m1["meets_energy_target"] is False
    assert any("without native arithmetic" in r and "v100-16g" in r for r in m1["reasons"])  # type: ignore[attr-defined]


def test_the_report_is_json_with_the_targets_and_the_profiles_left_out() -> None:
    report = json.loads(json.dumps(leave_one_hardware_out([SHIPPED]).to_dict()))
    assert report["energy_mape_target"] == 0.25 and report["coverage_target"] == [0.85, 0.95]
    assert len(report["skipped"]) == 4 and all(
        s["profile"].startswith("pooled-7b") for s in report["skipped"]
    )


def test_a_class_the_others_describe_exactly_is_predicted_exactly(tmp_path: Path) -> None:
    """Two synthetic classes made with the same factors: each held out is predicted from the other's
    factors with (nearly) no error — what is transferred is the hardware's efficiency, and the spec sheets
    carry the difference between an H100 and an A100."""
    synthetic_profile(tmp_path, "llama.h100", hardware="h100-80g")
    synthetic_profile(tmp_path, "llama.a100-80g", hardware="a100-80g")
    report = leave_one_hardware_out([tmp_path])
    for row in report.classes:
        assert row.energy_mape < 0.02 and row.runtime_mape < 0.02
        assert row.meets_energy_target and row.transferred_from != (row.hardware,)
        # the classes agree and fit exactly: nothing to widen the interval
        low, high = row.energy_interval_factors
        assert 0.95 < low <= 1 <= high < 1.05


def test_the_transfer_interval_widens_where_the_classes_disagree(tmp_path: Path) -> None:
    """Three synthetic classes, exact in class; the one held out is predicted from two that differ only in
    their memory efficiency. The further apart they are, the wider its interval."""
    widths = []
    for u_memory in (0.7, 0.4):
        root = tmp_path / str(u_memory)
        synthetic_profile(root, "llama.h100", hardware="h100-80g")
        synthetic_profile(root, "llama.a100-80g", hardware="a100-80g")
        synthetic_profile(
            root, "llama.h200", hardware="h200", factors=replace(TRUE_FACTORS, u_memory=u_memory)
        )
        low, high = calibrate([root]).interval_factors("h100-80g", exclude={"h100-80g"}).energy
        widths.append(high / low)
    assert widths[0] < widths[1]
