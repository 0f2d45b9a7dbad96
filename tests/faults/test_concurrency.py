"""Two processes at once on the same batch, and a submission killed between its sbatch calls and its records.

Real batches (the demo model; submitit's local executor, or the local Slurm cluster for the killed submit),
real ledgers (SQLite, and PostgreSQL where the suite has one), the real CLI in separate processes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from hpcqueue.dispatch.batchdir import is_locked
from tests.conftest import EXAMPLES, REPO
from tests.faults.invariant import assert_exactly_once
from tests.faults.test_disk_faults import finished_files, submit, write_prompts
from tests.helpers import wait_for

pytestmark = pytest.mark.slow


def start_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hpcqueue", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout_s: float = 300) -> str:
    stdout, stderr = process.communicate(timeout=timeout_s)
    assert process.returncode == 0, stderr
    return stdout


def test_submits_of_the_same_file_at_once_make_one_batch_and_run_each_task_once(
    hq_env: dict[str, str], tmp_path: Path
) -> None:
    """Each finds the batch (or creates it) and submits what no job holds yet, one after the other under the
    batch's submission lock: one submits every task, the others nothing, and each request runs once."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", 6)
    args = ["submit", str(prompts), "--json", "--task-size", "2"]
    # three at once: without the submission lock, two of them find the tasks unsubmitted often enough
    processes = [start_cli(args, hq_env) for _ in range(3)]
    infos = [json.loads(finish(process)) for process in processes]
    assert {info["batch_id"] for info in infos} == {infos[0]["batch_id"]}
    assert sorted(info["submitted_tasks"] for info in infos) == [0, 0, infos[0]["tasks"]]
    assert len(list(Path(hq_env["HPCQUEUE_BATCH_ROOT"]).glob("hq-*"))) == 1
    batch_dir = Path(infos[0]["batch_dir"])
    jobs = json.loads((batch_dir / "jobs.json").read_text())
    submitted = sorted(i for job in jobs for i in job["task_indices"])
    assert submitted == list(range(infos[0]["tasks"]))  # every task in exactly one job

    finished_files(batch_dir, infos[0]["tasks"])
    waited = finish(start_cli(["status", infos[0]["batch_id"], "--watch", "--json"], hq_env))
    assert json.loads(waited)["done"] is True
    for metrics_path in batch_dir.glob("tasks/*/metrics.json"):
        metrics = json.loads(metrics_path.read_text())
        assert metrics["state"] == "completed" and metrics["n_resumed"] == 0
    assert not list(batch_dir.glob("tasks/*/metrics.attempt-*.json"))
    assert_exactly_once(prompts, batch_dir, hq_env["HPCQUEUE_DB_URL"])


def _counts(url: str, batch_id: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                table: conn.execute(
                    text(f"SELECT count(*) FROM {table} WHERE batch_id = :b"), {"b": batch_id}
                ).scalar_one()
                for table in ("tasks", "requests", "measurements")
            } | {
                "collected": conn.execute(
                    text("SELECT count(*) FROM tasks WHERE batch_id = :b AND collected_at IS NOT NULL"),
                    {"b": batch_id},
                ).scalar_one(),
                "succeeded": conn.execute(
                    text("SELECT count(*) FROM requests WHERE batch_id = :b AND status = 'succeeded'"),
                    {"b": batch_id},
                ).scalar_one(),
            }
    finally:
        engine.dispose()


def test_two_collects_at_once_record_what_one_collect_records(
    hq_env: dict[str, str], ledger_url: str, tmp_path: Path
) -> None:
    """Both collects succeed, and the ledger holds each task, request and measurement once: what the batch
    directory's files say a single collect records."""
    env = {**hq_env, "HPCQUEUE_DB_URL": ledger_url}
    prompts = write_prompts(tmp_path / "prompts.jsonl", 6)
    info = submit(prompts, env)
    batch_dir = Path(info["batch_dir"])
    metrics = [json.loads(p.read_text()) for p in finished_files(batch_dir, info["tasks"])]
    assert _counts(ledger_url, info["batch_id"])["collected"] == 0

    collects = [start_cli(["collect", info["batch_id"], "--json"], env) for _ in range(2)]
    for process in collects:
        assert json.loads(finish(process))[info["batch_id"]]["completed"] == info["tasks"]
    expected = {
        "tasks": info["tasks"],
        "requests": info["requests"],
        "measurements": sum(len(m["measurements"]) for m in metrics),
        "collected": info["tasks"],
        "succeeded": info["requests"],
    }
    assert _counts(ledger_url, info["batch_id"]) == expected
    assert_exactly_once(prompts, batch_dir, ledger_url)


@pytest.mark.slurm
def test_submit_killed_between_sbatch_and_its_records(
    real_slurm: None, hq_env: dict[str, str], tmp_path: Path
) -> None:
    """``hpcqueue submit`` is SIGKILLed right after its first ``sbatch`` returned — the moment submitit files
    the new job's folder under ``logs/<target>/<job id>/`` —, before it wrote ``jobs.json``: that array is in
    the queue and nothing records it. ``status`` finds it by the batch's comment and cancels it; submitting
    the same file again runs every request once."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", 4)
    args = ["submit", str(prompts), "--config", str(EXAMPLES / "cluster.toml"), "--meter", "estimate"]
    args += ["--json", "--task-size", "2"]
    root = Path(hq_env["HPCQUEUE_BATCH_ROOT"])
    process = start_cli(args, hq_env)
    try:
        # Watched on the filesystem (microseconds per look), not in squeue (tens of milliseconds): the
        # submission's next sbatch calls and its records follow within milliseconds.
        deadline = time.monotonic() + 120
        while not any(p.name.isdigit() for p in root.glob("hq-*/logs/*/*")):
            assert process.poll() is None and time.monotonic() < deadline, "submit never reached sbatch"
            time.sleep(0.001)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    (batch_dir,) = root.glob("hq-*")
    assert not (batch_dir / "jobs.json").exists(), "the kill came after submit recorded its jobs"

    def batch_arrays() -> list[str]:
        """This batch's pending or running jobs, by their comment (other tests may have jobs there too)."""
        out = subprocess.run(
            ["squeue", "--noheader", "--states=PD,CF,R", "--format=%F|%k"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        mine = f"|hpcqueue:{batch_dir.name}"
        return sorted({line.split("|")[0] for line in out.splitlines() if line.strip().endswith(mine)})

    arrays = batch_arrays()
    assert arrays, "no array of the batch in the queue: the fault was not injected"

    status = subprocess.run(
        [sys.executable, "-m", "hpcqueue", "status", batch_dir.name],
        env=hq_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    # An element that started at once may already have finished its task (nothing lost, nothing to cancel);
    # whatever was still pending or running is cancelled: none of the batch's jobs runs unrecorded.
    if "cancelled Slurm job(s)" in status.stderr:
        assert arrays[0] in status.stderr
    assert not batch_arrays(), "a job that jobs.json does not record is still pending or running"
    # A worker cancelled mid-task gets SIGTERM and exits after its generation batch: the batch is submitted
    # again once no cancelled worker holds a task (a task still held would be left to its holder).
    locks = list((batch_dir / "tasks").glob("*/lock"))
    wait_for(lambda: not any(is_locked(lock) for lock in locks), 120, "the cancelled workers to exit")

    again = subprocess.run(
        [sys.executable, "-m", "hpcqueue", *args, "--wait"],
        env=hq_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["batch_id"] == batch_dir.name
    assert_exactly_once(prompts, batch_dir, hq_env["HPCQUEUE_DB_URL"])
    jobs = json.loads((batch_dir / "jobs.json").read_text())
    assert not {str(j["job_id"]).split("_")[0] for j in jobs} & set(arrays)  # the orphans were not adopted
