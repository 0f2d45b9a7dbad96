"""hpcqueue on a real Slurm cluster: job arrays per partition, the collect job, retry, MaxArraySize splits.

These run against the local two-partition cluster that ``make test`` starts (slurm/local-cluster.sh); under
CI they must run, so a missing cluster fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, run_cli
from tests.faults.invariant import assert_exactly_once
from tests.helpers import input_ids, ledger_db, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

if os.environ.get("HPCQUEUE_TEST_SLURM") != "1":
    if os.environ.get("CI") == "true":
        pytest.fail(
            "CI=true but the local Slurm cluster is not running (HPCQUEUE_TEST_SLURM != 1)", pytrace=False
        )
    pytest.skip("local Slurm cluster not running: sudo slurm/local-cluster.sh start", allow_module_level=True)

CLUSTER = EXAMPLES / "cluster.toml"


def _sacct(job_ids: list[str]) -> list[dict[str, str]]:
    """sacct rows of these jobs; a failed call (slurmdbd briefly busy) is tried again."""
    for attempt in range(5):
        proc = subprocess.run(
            ["sacct", "-X", "-P", "-n", "-j", ",".join(job_ids), "--format=JobID,State,Partition,NodeList"],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode == 0:
            break
        time.sleep(1 + attempt)
    else:
        raise AssertionError(f"sacct kept failing: {proc.stderr}")
    rows = []
    for line in proc.stdout.splitlines():
        job_id, state, partition, node = line.split("|")
        rows.append({"job_id": job_id, "state": state.split()[0], "partition": partition, "node": node})
    return rows


def _jobs(batch_dir: Path) -> list[dict]:
    return json.loads((batch_dir / "jobs.json").read_text())


def _write_prompts(path: Path, n: int, words: int = 6) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            prompt = " ".join(
                ["Explain how a batch scheduler shares nodes."] + ["Please be brief."] * (i % words)
            )
            handle.write(json.dumps({"id": f"p{i}", "prompt": prompt, "max_new_tokens": 16}) + "\n")
    return path


def test_example_batch_splits_across_both_partitions(hq_env: dict[str, str], tmp_path: Path) -> None:
    """The example batch, with the estimate meter asked for by name: the workers run as Slurm jobs, which
    no fake reaches, and the nodes may have energy counters; named, the meter is the same on any cluster."""
    prompts = EXAMPLES / "prompts.jsonl"
    result = run_cli(
        ["submit", str(prompts), "--config", str(CLUSTER), "--meter", "estimate", "--wait", "--json"], hq_env
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    n = len(input_ids(prompts))
    assert report["succeeded"] == n and report["failed"] == 0
    assert report["per_target"]["gpu"]["requests"] > 0
    assert report["per_target"]["lowpower"]["requests"] > 0
    assert report["energy_method"] == "estimated" and report["meters"] == ["estimate"]

    batch_dir = Path(report["batch_dir"])
    arrays = {r["job_id"].split("_")[0] for r in _jobs(batch_dir) if r.get("kind") != "collect"}
    # The batch is done when every worker wrote its metrics; the jobs themselves may take a moment to end.
    rows = wait_for(
        lambda: (
            (r := _sacct(sorted(arrays)))
            and all(x["state"] == "COMPLETED" and x["partition"] for x in r)
            and r
        ),
        60,
        "the arrays to be COMPLETED in accounting",
    )
    assert {r["partition"] for r in rows} == {"gpu", "lowpower"}

    with ledger_db(hq_env) as db:
        tasks = db.execute(
            "SELECT target, slurm_job_id, node, started_at, ended_at, energy_j, state FROM tasks"
        ).fetchall()
        requests = db.execute("SELECT target, status, energy_j FROM requests").fetchall()
    assert len(requests) == n and all(r[1] == "succeeded" and r[2] > 0 for r in requests)
    assert {r[0] for r in requests} == {"gpu", "lowpower"}
    for target, slurm_job_id, node, started, ended, energy, state in tasks:
        assert state == "completed" and slurm_job_id and node and started and ended and energy > 0, target

    out = tmp_path / "out.jsonl"
    assert run_cli(["results", report["batch_id"], "-o", str(out)], hq_env).returncode == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == input_ids(prompts)


def test_cancelled_array_task_is_retried_without_loss_or_duplicates(
    hq_env: dict[str, str], tmp_path: Path
) -> None:
    prompts = _write_prompts(tmp_path / "prompts.jsonl", 24)
    args = ["--config", str(CLUSTER), "--policy", "single:lowpower", "--task-size", "6", "--batch-size", "2"]
    args.append("--json")
    result = run_cli(["submit", str(prompts), *args], hq_env)
    assert result.returncode == 0, result.stderr
    submitted = json.loads(result.stdout)
    batch_dir = Path(submitted["batch_dir"])
    elements = [r["job_id"] for r in _jobs(batch_dir) if r.get("kind") != "collect"]

    task_of = {r["job_id"]: r["task_indices"][0] for r in _jobs(batch_dir) if r.get("kind") != "collect"}

    def unfinished_running_element() -> str | None:
        """An element that runs but whose worker has not written metrics.json yet (still loading or
        generating): cancelling it loses the task."""
        for row in _sacct(elements):
            if row["state"] != "RUNNING" or row["job_id"] not in task_of:
                continue
            task_dir = batch_dir / "tasks" / f"{task_of[row['job_id']]:06d}"
            if not (task_dir / "metrics.json").exists():
                return row["job_id"]
        return None

    victim = wait_for(
        unfinished_running_element, 120, "an unfinished array task to be RUNNING", interval_s=0.1
    )
    subprocess.run(["scancel", victim], check=True)

    def array_ended() -> bool:
        # every element on its own row and ended: an empty answer (slurmdbd catching up) or a pending
        # range such as 123_[1-3] is not an end
        ended = {r["job_id"] for r in _sacct(elements) if r["state"] not in ("PENDING", "RUNNING")}
        return ended >= set(elements)

    wait_for(array_ended, 240, "the array to end")
    victim_dir = batch_dir / "tasks" / f"{task_of[victim]:06d}"
    assert not (victim_dir / "metrics.json").exists(), (
        "the cancelled task finished anyway: cancel came too late"
    )

    status = json.loads(run_cli(["status", submitted["batch_id"], "--json"], hq_env).stdout)
    assert status["tasks"].get("lost", 0) >= 1
    assert any(p["slurm_state"] == "CANCELLED" for p in status["problems"])
    assert_exactly_once(prompts, batch_dir, hq_env["HPCQUEUE_DB_URL"], complete=False)

    retried = run_cli(["retry", submitted["batch_id"], "--wait", "--json"], hq_env)
    assert retried.returncode == 0, retried.stderr
    report = json.loads(retried.stdout)
    assert report["submitted_tasks"] >= 1
    assert report["succeeded"] == 24 and report["pending"] == 0 and report["failed"] == 0

    out = tmp_path / "out.jsonl"
    assert run_cli(["results", submitted["batch_id"], "-o", str(out)], hq_env).returncode == 0
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == [f"p{i}" for i in range(24)]  # nothing lost, nothing twice
    outcome = assert_exactly_once(prompts, batch_dir, hq_env["HPCQUEUE_DB_URL"])
    assert (outcome.succeeded, outcome.duplicates, outcome.lost) == (24, 0, 0)


def test_collect_job_fills_the_ledger_without_the_user(hq_env: dict[str, str], tmp_path: Path) -> None:
    source = EXAMPLES / "openai-batch.jsonl"
    result = run_cli(
        ["submit", str(source), "--config", str(CLUSTER), "--json", "--max-new-tokens", "16"], hq_env
    )
    assert result.returncode == 0, result.stderr
    submitted = json.loads(result.stdout)
    n = submitted["requests"]
    collect = [r for r in _jobs(Path(submitted["batch_dir"])) if r.get("kind") == "collect"]
    assert len(collect) == 1

    def all_succeeded() -> bool:
        with ledger_db(hq_env) as db:
            (done,) = db.execute("SELECT count(*) FROM requests WHERE status = 'succeeded'").fetchone()
        return done == n

    # Nobody runs `hpcqueue collect` or `status` here: only the collect job can fill the ledger.
    wait_for(all_succeeded, 300, "the collect job to record every request", interval_s=1.0)
    wait_for(lambda: _sacct([collect[0]["job_id"]])[0]["state"] == "COMPLETED", 60, "the collect job to end")
    with ledger_db(hq_env) as db:
        (collected,) = db.execute("SELECT count(*) FROM tasks WHERE collected_at IS NOT NULL").fetchone()
        (tasks,) = db.execute("SELECT count(*) FROM tasks").fetchone()
    assert collected == tasks


def test_arrays_larger_than_max_array_size_are_split(hq_env: dict[str, str], tmp_path: Path) -> None:
    max_array_size = int(
        subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True)
        .stdout.split("MaxArraySize", 1)[1]
        .split("=", 1)[1]
        .split()[0]
    )
    n_tasks = max_array_size + 3
    prompts = _write_prompts(tmp_path / "many.jsonl", n_tasks)
    args = ["--config", str(CLUSTER), "--policy", "single:lowpower", "--task-size", "1", "--wait", "--json"]
    result = run_cli(["submit", str(prompts), *args], hq_env, timeout=900)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["succeeded"] == n_tasks
    records = [r for r in _jobs(Path(report["batch_dir"])) if r.get("kind") != "collect"]
    arrays = sorted({r["job_id"].split("_")[0] for r in records})
    assert len(arrays) == 2  # max_array_size elements, then 3
    sizes = sorted(sum(1 for r in records if r["job_id"].startswith(a + "_")) for a in arrays)
    assert sizes == [3, max_array_size]
