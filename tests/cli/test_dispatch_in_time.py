"""A plan in time on the local executor, end to end through the real CLI (demo model, submitit's local
executor, a real SQLite ledger): the worker waits for its task's begin time, ``replan`` moves it, and the
ledger accounts the task at the hours it really ran (the worker's own clock: no Slurm here)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.helpers import ledger_db

STEP_S = 15
CONFIG = """
max_new_tokens = 8
task_size = 4
slot = "15s"
deadline = "5m"
objective = "carbon=1,runtime=0.01"

[sites.windy]
carbon = "carbon.csv"
cooling = 1.1

[targets.local]
executor = "local"
site = "windy"
hardware = "m1-pro"
profile = "llama-2-7b-chat.m1-pro.wilkins2024"
array_parallelism = 1
meter = "estimate"
"""


def write_carbon(path: Path, origin: float, low_from_step: int) -> None:
    rows = ["time,value"]
    for k in range(-8, 80):
        moment = dt.datetime.fromtimestamp(origin + k * STEP_S, dt.timezone.utc)
        value = 700.0 if k < low_from_step else 30.0 + 20.0 * (k % 3)
        rows.append(f"{moment.strftime('%Y-%m-%dT%H:%M:%SZ')},{value}")
    path.write_text("\n".join(rows) + "\n")


def mean_carbon(path: Path, start: float, end: float) -> float:
    area = 0.0
    for line in path.read_text().splitlines()[1:]:
        moment, value = line.split(",")
        when = dt.datetime.strptime(moment, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()
        area += max(0.0, min(end, when + STEP_S) - max(start, when)) * float(value)
    return area / (end - start)


def epoch(value: str) -> float:
    return dt.datetime.fromisoformat(value).replace(tzinfo=dt.timezone.utc).timestamp()


def test_the_local_worker_waits_for_its_begin_time_moves_with_replan_and_is_accounted(
    hq_env: dict[str, str], tmp_path: Path
) -> None:
    origin = float(int(dt.datetime.now(dt.timezone.utc).timestamp()))
    carbon = tmp_path / "carbon.csv"
    write_carbon(carbon, origin, low_from_step=2)
    config = tmp_path / "cluster.toml"
    config.write_text(CONFIG)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": f"Count to {i}."}) + "\n" for i in range(4))
    )

    submitted = run_cli(["submit", str(prompts), "--config", str(config), "--json"], hq_env)
    assert submitted.returncode == 0, submitted.stderr
    info = json.loads(submitted.stdout)
    (start,) = info["deferred"]["local"]
    assert start["tasks"] == 1 and start["begin_at"] >= origin + 2 * STEP_S - 1
    status = json.loads(run_cli(["status", info["batch_id"], "--json"], hq_env).stdout)
    assert status["per_target"]["local"]["deferred"] == 1

    write_carbon(carbon, origin, low_from_step=5)  # the clean hours come later than forecast
    replanned = run_cli(["replan", info["batch_id"], "--config", str(config), "--json"], hq_env)
    assert replanned.returncode == 0, replanned.stderr
    (move,) = json.loads(replanned.stdout)["moved"]
    assert move["old_begin_at"] == pytest.approx(start["begin_at"])
    assert move["new_begin_at"] >= origin + 5 * STEP_S - 1

    finished = run_cli(["status", info["batch_id"], "--watch", "--json"], hq_env, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout)["done"]
    metrics = json.loads((Path(info["batch_dir"]) / "tasks" / "000000" / "metrics.json").read_text())
    assert metrics["state"] == "completed"
    assert metrics["started_at"] >= move["new_begin_at"]  # it waited for the moved begin time

    with ledger_db(hq_env) as db:
        (row,) = db.execute(
            "SELECT energy_j, pue, carbon_g_per_kwh, carbon_g, run_started_at, run_ended_at, "
            "run_times_source, planned_start_at FROM tasks"
        ).fetchall()
        (request_carbon,) = db.execute("SELECT SUM(carbon_g) FROM requests").fetchone()
    energy, pue, intensity, carbon_g, run_started, run_ended, source, planned_start = row
    assert source == "worker"
    assert epoch(run_started) == pytest.approx(metrics["started_at"], abs=1e-3)
    expected = mean_carbon(carbon, epoch(run_started), epoch(run_ended))
    assert intensity == pytest.approx(expected, rel=1e-6)
    assert carbon_g == pytest.approx(energy * pue / 3.6e6 * expected, rel=1e-6)
    assert request_carbon == pytest.approx(carbon_g, rel=1e-9)
    assert epoch(planned_start) == pytest.approx(move["new_begin_at"], abs=1)  # the ledger has the move
