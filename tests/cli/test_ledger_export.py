"""``hpcqueue ledger export``, ``ledger metrics`` and ``ledger reconcile`` as an admin runs them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from typer.testing import CliRunner

from bench.ledger_queries import fill_ledger
from hpcqueue.cli import app
from hpcqueue.ledger import Ledger
from hpcqueue.ledger.filters import LedgerFilter, current_user
from tests.helpers import wait_for

runner = CliRunner()


@pytest.fixture()
def url(ledger_url: str, hq_env: dict[str, str]) -> str:
    """1,000 requests of the current user and of bob."""
    with Ledger(ledger_url) as ledger:
        fill_ledger(ledger, 1000, task_size=100, batch_tasks=2, users=(current_user(), "bob"), seed=5)
    return ledger_url


def test_export_writes_the_filtered_rows_in_the_format_of_the_suffix(url: str, tmp_path: Path) -> None:
    out = tmp_path / "requests.parquet"
    result = runner.invoke(
        app, ["ledger", "export", "--db-url", url, "--all-users", "--target", "gpu", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    with Ledger(url) as ledger:
        summary = ledger.summary("target", where=LedgerFilter(targets=("gpu",)))
    assert len(frame) == int(summary["requests"].sum()) > 0 and set(frame["target"]) == {"gpu"}
    assert f"wrote {len(frame)} requests rows" in result.stderr
    # default scope: your own batches only
    mine = tmp_path / "mine.jsonl"
    result = runner.invoke(app, ["ledger", "export", "--db-url", url, "--table", "batches", "-o", str(mine)])
    assert result.exit_code == 0, result.output
    assert set(pd.read_json(mine, lines=True)["user"]) == {current_user()}


def test_export_refuses_bad_input_with_the_valid_choices(url: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["ledger", "export", "--db-url", url, "-o", str(tmp_path / "x.xlsx")])
    assert result.exit_code == 2 and "give --format csv, json or parquet" in result.stderr
    result = runner.invoke(
        app, ["ledger", "export", "--db-url", url, "--table", "jobs", "-o", str(tmp_path / "x.csv")]
    )
    assert result.exit_code == 2 and "batches" in result.output and "requests" in result.output
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = runner.invoke(app, ["ledger", "export", "--db-url", url, "-o", str(blocker / "x.csv")])
    assert result.exit_code == 2 and "cannot write the export" in result.stderr


def test_metrics_writes_counters_a_collector_reads(url: str, tmp_path: Path) -> None:
    out = tmp_path / "textfile" / "hpcqueue.prom"
    result = runner.invoke(app, ["ledger", "metrics", "--db-url", url, "--all-users", "-o", str(out)])
    assert result.exit_code == 0, result.output
    families = {f.name: f for f in text_string_to_metric_families(out.read_text())}
    requests = families["hpcqueue_requests"]
    assert sum(s.value for s in requests.samples) == 1000
    assert {s.labels["user"] for s in requests.samples} == {current_user(), "bob"}
    assert "--since" not in runner.invoke(app, ["ledger", "metrics", "--help"]).output  # counters: all time


def test_reconcile_names_an_unknown_batch(url: str) -> None:
    result = runner.invoke(app, ["ledger", "reconcile", "hq-nope", "--db-url", url])
    assert result.exit_code != 0 and "batch hq-nope is not in the ledger" in result.stderr


@pytest.mark.slurm
def test_reconcile_on_the_local_cluster_says_it_has_no_energy_accounting(
    real_slurm: None, url: str, tmp_path: Path
) -> None:
    submitted = subprocess.run(
        ["sbatch", "--parsable", "-p", "lowpower", "-o", str(tmp_path / "%j.out"), "--wrap", "true"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    job_id = submitted.stdout.strip().split(";")[0]
    with Ledger(url) as ledger, ledger.engine.begin() as conn:
        conn.execute(text("UPDATE tasks SET job_id = :j WHERE batch_id = 'hq-0000000'"), {"j": job_id})
    wait_for(
        lambda: (
            "COMPLETED"
            in subprocess.run(
                ["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True
            ).stdout
        ),
        timeout_s=240,
        what=f"job {job_id} to finish in sacct",
    )
    result = runner.invoke(app, ["ledger", "reconcile", "hq-0000000", "--all-users", "--db-url", url])
    assert result.exit_code == 0, result.output
    output = " ".join(result.stdout.split())
    assert "This cluster has no energy accounting: AcctGatherEnergyType = acct_gather_energy/none" in output
