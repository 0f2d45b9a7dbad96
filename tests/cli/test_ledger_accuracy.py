"""``hpcqueue ledger accuracy`` as a user runs it, on ledgers (SQLite and PostgreSQL) written through the real
record and collect paths (tests/ledger/predictions.py works the figures out by hand)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hpcqueue.cli import app
from hpcqueue.ledger import Ledger
from hpcqueue.ledger.accuracy import ACCURACY_COLUMNS
from tests.cli import run_app_in_subprocess
from tests.ledger import T0
from tests.ledger.predictions import Batch, Planned, Ran, record_and_collect, record_scenario

runner = CliRunner()


def accuracy(url: str, *args: str) -> Any:
    return runner.invoke(app, ["ledger", "accuracy", "--db-url", url, *args])


@pytest.fixture()
def url(ledger_url: str, tmp_path: Path, hq_env: dict[str, str]) -> str:
    """A ledger holding the two batches of tests/ledger/predictions.py, collected."""
    with Ledger(ledger_url) as ledger:
        record_scenario(ledger, tmp_path / "batches")
    return ledger_url


def test_the_table_shows_each_groups_errors_and_coverage(url: str) -> None:
    result = accuracy(url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any("prediction accuracy by target" in line for line in lines)
    (gpu,) = [line for line in lines if line.startswith("│ gpu ")]
    cells = [cell.strip() for cell in gpu.strip("│").split("│")]
    # 3 compared (b1's tasks 0, 1 and b2's task 0), one never ran; energy errors -0.2, +0.25, -0.2;
    # runtime errors +0.25, 0, -0.2; two of three tasks have intervals
    assert cells[:8] == ["gpu", "3", "1 unfinished", "21.7 %", "-20.0 %", "50.0 % of 2", "0.89", "15.0 %"]
    assert cells[-1] == "profile"
    assert "only measured energy is compared" in " ".join(result.stdout.split())


def test_json_has_every_figure_of_every_group(url: str) -> None:
    result = accuracy(url, "--by", "hardware", "--format", "json")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [list(r) for r in records] == [["hardware", *ACCURACY_COLUMNS]] * 4
    by_hardware = {r["hardware"]: r for r in records}
    assert list(by_hardware) == ["(none)", "a100-40g", "cpu-generic", "h100-80g"]
    h100 = by_hardware["h100-80g"]
    assert (h100["tasks"], h100["energy_with_interval"], h100["methods"]) == (2, 2, ["profile"])
    assert h100["energy_mape"] == pytest.approx(0.225) and h100["energy_coverage"] == pytest.approx(0.5)
    assert (h100["energy_predicted_j"], h100["energy_measured_j"]) == pytest.approx((150.0, 165.0))
    cpu = by_hardware["cpu-generic"]
    assert [cpu[k] for k in ("excluded_estimated", "excluded_unfinished", "excluded_failed")] == [1, 1, 1]
    assert cpu["runtime_coverage"] is None  # NaN: its one compared task has no runtime interval
    assert by_hardware["(none)"]["energy_mape"] is None


def test_batch_and_since_narrow_the_report(url: str) -> None:
    only_b2 = json.loads(accuracy(url, "--by", "batch", "--batch", "b2", "--format", "json").stdout)
    assert [r["batch"] for r in only_b2] == ["b2"]
    since = json.loads(
        accuracy(url, "--by", "day", "--since", "2024-11-22T00:00Z", "--format", "json").stdout
    )
    assert [(r["day"], r["tasks"]) for r in since] == [("(none)", 0), ("2024-11-23", 1)]


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["--by", "user"], 2, ["'target'", "'model'", "'hardware'", "'day'", "'batch'"]),
        (["--since", "last week"], 2, ["--since 'last week'", "7d", "2024-11-21"]),
        (["--batch", "hq-nope"], 1, ["hq-nope", "hpcqueue ledger batches"]),
    ],
    ids=["bad-by", "bad-since", "unknown-batch"],
)
def test_bad_options_say_what_is_valid(url: str, args: list[str], code: int, expected: list[str]) -> None:
    result = accuracy(url, *args)
    assert result.exit_code == code, result.output
    flat = " ".join(result.output.replace("│", " ").split())
    for text in expected:
        assert text in flat, flat


def test_estimated_energy_only_says_why_nothing_is_compared(
    ledger_url: str, tmp_path: Path, hq_env: dict[str, str]
) -> None:
    with Ledger(ledger_url) as ledger:
        record_and_collect(
            ledger,
            tmp_path,
            Batch(
                "laptop",
                "hpcqueue-demo",
                T0,
                planned={
                    i: Planned("cpu", 10.0, 1.0, (5.0, 20.0), None, "analytic", "m1-pro") for i in (0, 1, 2)
                },
                ran={i: Ran(calls=((12.0, 1.0),), method="estimated") for i in (0, 1)},
            ),
        )
    table = accuracy(ledger_url)
    assert table.exit_code == 0, table.output
    said = " ".join(table.stdout.split())
    assert said.startswith("no task has both a prediction and a measured energy yet:")
    assert "2 tasks excluded: energy estimated, not measured" in said
    assert "1 task excluded: no measurement yet" in said
    assert "┃" not in said  # no table of empty figures

    as_json = accuracy(ledger_url, "--format", "json")
    assert as_json.exit_code == 0, as_json.output
    (row,) = json.loads(as_json.stdout)  # stdout stays JSON; the explanation goes to stderr
    assert (row["tasks"], row["excluded_estimated"], row["excluded_unfinished"]) == (0, 2, 1)
    assert "2 tasks excluded: energy estimated" in " ".join(as_json.stderr.split())


def test_an_empty_ledger_says_no_task_has_a_prediction(ledger_url: str, hq_env: dict[str, str]) -> None:
    result = accuracy(ledger_url)
    assert result.exit_code == 0, result.output
    assert "the ledger records no task with a prediction" in " ".join(result.stdout.split())
    scoped = accuracy(ledger_url, "--since", "2024-11-21", "--format", "json")
    assert json.loads(scoped.stdout) == []
    assert "in batches submitted since 2024-11-21T00:00" in scoped.stderr


def test_accuracy_does_not_import_torch(hq_env: dict[str, str]) -> None:
    proc = run_app_in_subprocess(["ledger", "accuracy"], hq_env)
    assert "EXIT 0" in proc.stdout and proc.stdout.strip().endswith("NO-TORCH"), proc.stdout + proc.stderr
