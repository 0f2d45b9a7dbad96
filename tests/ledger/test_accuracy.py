"""The accuracy report: each task's prediction against what was measured, on ledgers written through the real
paths (record_batch with the plan's tasks frame, collect_batch from the worker's files), on SQLite and
PostgreSQL. The expected figures are worked out by hand in tests/ledger/predictions.py."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from hpcqueue.errors import BatchNotFoundError, ConfigError
from hpcqueue.ledger import Ledger
from hpcqueue.ledger.accuracy import ACCURACY_COLUMNS, ACCURACY_KEYS, EXCLUSIONS
from tests.ledger import T0, rows
from tests.ledger.predictions import (
    B1,
    B2,
    DAY_S,
    Batch,
    Planned,
    Ran,
    record_and_collect,
    record_batch,
    record_scenario,
)


@pytest.fixture()
def ledger(ledger_url: str, tmp_path: Path) -> Ledger:
    """A ledger holding batches B1 and B2, collected."""
    ledger = Ledger(ledger_url)
    record_scenario(ledger, tmp_path / "batches")
    return ledger


def by_key(frame: pd.DataFrame, key: str) -> dict[str, dict[str, Any]]:
    assert list(frame.columns) == [key, *ACCURACY_COLUMNS]
    return {row[key]: row for row in frame.to_dict("records")}


def counts(row: dict[str, Any]) -> tuple[int, ...]:
    """Compared tasks, then each exclusion."""
    return tuple(int(row[c]) for c in ("tasks", *EXCLUSIONS))


def test_the_prediction_is_compared_with_the_measured_generation(ledger: Ledger) -> None:
    table = by_key(ledger.accuracy("target", batch="b1"), "target")
    assert list(table) == ["cpu", "gpu"]
    gpu = table["gpu"]
    # task 0: 100 J predicted, 75 + 50 J measured in its two generation batches (-0.2; 125 J is outside
    # [80, 120]); task 1: 50 J against 40 J (+0.25, inside [40, 60]).
    assert counts(gpu) == (2, 0, 0, 0, 0)
    assert gpu["energy_tasks"] == 2 and gpu["energy_with_interval"] == 2
    assert gpu["energy_mape"] == pytest.approx((0.2 + 0.25) / 2)
    assert gpu["energy_bias"] == pytest.approx((-0.2 + 0.25) / 2)  # the median of two
    assert gpu["energy_coverage"] == pytest.approx(0.5)
    assert (gpu["energy_predicted_j"], gpu["energy_measured_j"]) == pytest.approx((150.0, 165.0))
    assert gpu["energy_ratio"] == pytest.approx(150 / 165)
    # runtime: 10 s against 5 + 3 s (+0.25, inside [8, 12]); 5 s against 5 s (0, inside [4, 6]). Each
    # batch's duration counts once, though it was metered over two domains.
    assert gpu["runtime_mape"] == pytest.approx(0.125)
    assert gpu["runtime_bias"] == pytest.approx(0.125)
    assert (gpu["runtime_coverage"], gpu["runtime_with_interval"]) == (1.0, 2)
    assert (gpu["runtime_predicted_s"], gpu["runtime_measured_s"]) == pytest.approx((15.0, 13.0))
    # The whole tasks metered more: task 0 loaded the model (40 J) and spent 5 J besides; task 1 spent 2 J.
    assert gpu["task_energy_j"] == pytest.approx(125 + 40 + 5 + 40 + 2)
    assert gpu["task_runtime_s"] == pytest.approx(20 + 6)
    assert gpu["methods"] == ["profile"]


def test_estimated_unfinished_failed_and_partial_tasks_are_counted_apart(ledger: Ledger) -> None:
    cpu = by_key(ledger.accuracy("target", batch=B1.batch_id), "target")["cpu"]
    # task 5 compared; 2 estimated, 3 never ran, 4 failed, 6 resumed; 7 had no prediction at all
    assert counts(cpu) == (1, 1, 1, 1, 1)
    assert cpu["energy_mape"] == pytest.approx(0.25) and cpu["energy_bias"] == pytest.approx(0.25)
    assert (cpu["energy_coverage"], cpu["energy_with_interval"]) == (1.0, 1)  # 8 J within [8, 13]
    assert (cpu["energy_predicted_j"], cpu["energy_measured_j"]) == pytest.approx((10.0, 8.0))
    # task 5's runtime has no interval: its error counts, its coverage cannot
    assert cpu["runtime_mape"] == pytest.approx(1.0) and cpu["runtime_ratio"] == pytest.approx(2.0)
    assert math.isnan(cpu["runtime_coverage"]) and cpu["runtime_with_interval"] == 0
    assert cpu["methods"] == ["calibrated"]  # the estimated task's "analytic" is not among what was compared


def test_only_estimated_energy_compares_nothing(ledger_url: str, tmp_path: Path) -> None:
    ledger = Ledger(ledger_url)
    estimated = Batch(
        "est",
        "hpcqueue-demo",
        T0,
        planned={
            i: Planned("cpu", 10.0, 1.0, (5.0, 20.0), (0.5, 2.0), "profile", "cpu-generic") for i in (0, 1)
        },
        ran={i: Ran(calls=((10.0, 1.0),), method="estimated") for i in (0, 1)},
    )
    record_and_collect(ledger, tmp_path, estimated)
    (row,) = ledger.accuracy("target").to_dict("records")
    assert counts(row) == (0, 2, 0, 0, 0)
    assert row["energy_tasks"] == 0 and row["runtime_tasks"] == 0
    figures = [c for c in ACCURACY_COLUMNS if c.endswith(("mape", "bias", "coverage", "ratio", "_j", "_s"))]
    assert all(math.isnan(row[c]) for c in figures), {c: row[c] for c in figures}
    assert row["methods"] == []


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        # key -> (compared, estimated, unfinished, failed, partial), energy MAPE
        (
            "model",
            {
                "hpcqueue-demo": ((3, 1, 1, 1, 1), (0.2 + 0.25 + 0.25) / 3),
                "other-model": ((1, 0, 1, 0, 0), 0.2),
            },
        ),
        (
            "hardware",
            {
                "(none)": ((0, 0, 1, 0, 0), None),  # b2's task 1: an older submit, never ran
                "a100-40g": ((1, 0, 0, 0, 0), 0.2),  # b2's task 0: from its metrics.json
                "cpu-generic": ((1, 1, 1, 1, 1), 0.25),
                "h100-80g": ((2, 0, 0, 0, 0), 0.225),
            },
        ),
        (
            "day",
            {
                "(none)": ((0, 0, 2, 0, 0), None),  # tasks that never ran have no day
                "2024-11-21": ((3, 1, 0, 1, 1), (0.2 + 0.25 + 0.25) / 3),
                "2024-11-23": ((1, 0, 0, 0, 0), 0.2),
            },
        ),
        ("batch", {"b1": ((3, 1, 1, 1, 1), (0.2 + 0.25 + 0.25) / 3), "b2": ((1, 0, 1, 0, 0), 0.2)}),
        ("target", {"cpu": ((1, 1, 1, 1, 1), 0.25), "gpu": ((3, 0, 1, 0, 0), (0.2 + 0.25 + 0.2) / 3)}),
    ],
)
def test_grouping(ledger: Ledger, by: str, expected: dict[str, tuple[tuple[int, ...], float | None]]) -> None:
    table = by_key(ledger.accuracy(by), by)  # type: ignore[arg-type]
    assert list(table) == list(expected)
    for key, (expected_counts, mape) in expected.items():
        assert counts(table[key]) == expected_counts, key
        if mape is None:
            assert math.isnan(table[key]["energy_mape"])
        else:
            assert table[key]["energy_mape"] == pytest.approx(mape), key


def test_b2_without_intervals_has_errors_but_no_coverage(ledger: Ledger) -> None:
    (row,) = ledger.accuracy("batch", batch=B2.batch_id).to_dict("records")
    assert row["energy_bias"] == pytest.approx(-0.2) and row["runtime_bias"] == pytest.approx(-0.2)
    assert math.isnan(row["energy_coverage"]) and row["energy_with_interval"] == 0
    assert row["methods"] == []  # recorded before predictions said their method


def test_since_keeps_the_batches_submitted_from_then(ledger: Ledger) -> None:
    since = datetime.fromtimestamp(T0 + DAY_S, tz=timezone.utc)
    assert list(ledger.accuracy("batch", since=since)["batch"]) == ["b2"]
    assert ledger.accuracy("batch", since=datetime.fromtimestamp(T0 + 9 * DAY_S, tz=timezone.utc)).empty


def test_bad_key_and_unknown_batch_say_what_is_valid(ledger: Ledger) -> None:
    with pytest.raises(ConfigError, match=", ".join(ACCURACY_KEYS)):
        ledger.accuracy("user")  # type: ignore[arg-type]
    with pytest.raises(BatchNotFoundError, match=r"nope.*ledger batches"):
        ledger.accuracy(batch="nope")


def test_a_ledger_without_predictions_gives_an_empty_table(ledger_url: str) -> None:
    frame = Ledger(ledger_url).accuracy("day")
    assert frame.empty and list(frame.columns) == ["day", *ACCURACY_COLUMNS]


# -- the prediction columns ---------------------------------------------------------------------------------


def test_record_batch_keeps_the_interval_method_basis_and_hardware(ledger: Ledger) -> None:
    found = {
        (r["batch_id"], r["task_index"]): r
        for r in rows(
            ledger,
            "SELECT batch_id, task_index, predicted_energy_low_j, predicted_energy_high_j, "
            "predicted_runtime_low_s, predicted_runtime_high_s, prediction_method, prediction_basis, "
            "hardware FROM tasks",
        )
    }
    assert found["b1", 0] == {
        "batch_id": "b1",
        "task_index": 0,
        "predicted_energy_low_j": 80.0,
        "predicted_energy_high_j": 120.0,
        "predicted_runtime_low_s": 8.0,
        "predicted_runtime_high_s": 12.0,
        "prediction_method": "profile",
        "prediction_basis": "profile:h100-80g",
        "hardware": "h100-80g",
    }
    # NaN in the frame is NULL; the hardware comes from the plan
    assert (found["b1", 5]["predicted_runtime_low_s"], found["b1", 5]["predicted_runtime_high_s"]) == (
        None,
        None,
    )
    assert (found["b1", 7]["prediction_method"], found["b1", 7]["prediction_basis"]) == (None, None)
    # b2's frame had none of the columns: NULL, but collect records the hardware its worker ran as
    assert found["b2", 0]["predicted_energy_low_j"] is None and found["b2", 0]["prediction_method"] is None
    assert (found["b2", 0]["hardware"], found["b2", 1]["hardware"]) == ("a100-40g", None)


def test_collect_keeps_the_plans_hardware(ledger_url: str, tmp_path: Path) -> None:
    ledger = Ledger(ledger_url)
    batch = Batch(
        "hw",
        "hpcqueue-demo",
        T0,
        planned={0: Planned("gpu", 10.0, 1.0, hardware="h100-80g")},
        ran={0: Ran(calls=((10.0, 1.0),), hardware="cpu-generic")},
    )
    record_and_collect(ledger, tmp_path, batch)
    assert rows(ledger, "SELECT hardware FROM tasks") == [{"hardware": "h100-80g"}]


def test_an_unknown_prediction_method_is_refused(ledger_url: str, tmp_path: Path) -> None:
    ledger = Ledger(ledger_url)
    batch = Batch("bad", "hpcqueue-demo", T0, planned={0: Planned("gpu", 10.0, 1.0, method="guess")})
    with pytest.raises(ValueError, match=r"'guess'.*profile, analytic, calibrated"):
        record_batch(ledger, tmp_path, batch)
    assert ledger.table_counts()["batches"] == 0
