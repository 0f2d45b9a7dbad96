"""Faults of the scheduler and the nodes under a running batch, on the local Slurm cluster: a worker killed,
array elements and whole arrays cancelled, the node taken down, slurmctld restarted, slurmdbd down while
``status`` polls. Each case runs a real batch (the demo model, a handful of short requests), injects one fault
while it runs, lets hpcqueue recover (by itself, or through ``status`` and ``retry`` as the user would), and
checks that every request ended exactly once, in the files and in the ledger (:mod:`tests.faults.invariant`).

The cluster (slurm/local-cluster.sh) has one node per partition: ``lowpower`` on lp01 and ``gpu`` on gpu01,
two CPUs each. Deferred work through a cancel and a slurmctld restart is covered, with the same checker, by
tests/dispatch/test_time_integration.py; the cancelled element by tests/dispatch/test_slurm_integration.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from hpcqueue.dispatch.batchdir import is_locked
from tests.conftest import EXAMPLES, REPO, run_cli
from tests.faults.invariant import assert_exactly_once
from tests.helpers import wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

if os.environ.get("HPCQUEUE_TEST_SLURM") != "1":
    if os.environ.get("CI") == "true":
        pytest.fail(
            "CI=true but the local Slurm cluster is not running (HPCQUEUE_TEST_SLURM != 1)", pytrace=False
        )
    pytest.skip("local Slurm cluster not running: sudo slurm/local-cluster.sh start", allow_module_level=True)

CLUSTER = EXAMPLES / "cluster.toml"
CLUSTER_SCRIPT = REPO / "slurm" / "local-cluster.sh"
STATE_DIR = Path(os.environ.get("HPCQUEUE_SLURM_DIR", "/tmp/hpcqueue-local-slurm"))
#: Slurm states of a job that ended.
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "DEADLINE")


def write_prompts(path: Path, n: int, max_new_tokens: int) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            line = {
                "id": f"p{i}",
                "prompt": f"Count slowly from {i} to {i + 40}.",
                "max_new_tokens": max_new_tokens,
            }
            handle.write(json.dumps(line) + "\n")
    return path


def submit(env: dict[str, str], prompts: Path, target: str, task_size: int) -> tuple[str, Path]:
    """Submit without waiting: one request per generation batch, so a task's outputs arrive one by one."""
    args = ["--config", str(CLUSTER), "--policy", f"single:{target}", "--task-size", str(task_size)]
    result = run_cli(["submit", str(prompts), *args, "--batch-size", "1", "--json"], env)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    SUBMITTED.append((env, info["batch_id"]))
    return info["batch_id"], Path(info["batch_dir"])


#: Batches submitted by the running test; cancelled when it ends, so a failed case leaves no jobs behind.
SUBMITTED: list[tuple[dict[str, str], str]] = []


@pytest.fixture(autouse=True)
def _cancel_leftovers() -> Iterator[None]:
    yield
    while SUBMITTED:
        env, batch_id = SUBMITTED.pop()
        run_cli(["cancel", batch_id], env)


def elements(batch_dir: Path) -> dict[str, int]:
    """Every array element (``<array>_<index>``) submitted for the batch and the task it runs."""
    jobs = json.loads((batch_dir / "jobs.json").read_text())
    return {str(r["job_id"]): r["task_indices"][0] for r in jobs if r.get("kind") != "collect"}


def latest_jobs(batch_dir: Path) -> dict[int, str]:
    """The job that runs each task now (the latest record of it)."""
    return {task: job for job, task in elements(batch_dir).items()}


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """Accounting's state of each job (a failed call, slurmdbd briefly busy, is tried again)."""
    for attempt in range(5):
        proc = subprocess.run(
            ["sacct", "-X", "-P", "-n", "-j", ",".join(job_ids), "--format=JobID,State"],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode == 0:
            return {
                job: state.split()[0] for job, state in (line.split("|") for line in proc.stdout.splitlines())
            }
        time.sleep(1 + attempt)
    raise AssertionError(f"sacct kept failing: {proc.stderr}")


def _array_indices(row_id: str) -> tuple[str, set[int]]:
    """The array and element indices an accounting row stands for: ``12_3`` → 12, {3}; a range of elements
    still pending (or cancelled before they ran) is one row, ``12_[1-2,5%4]`` → 12, {1, 2, 5}."""
    array, _, rest = row_id.partition("_")
    if not rest.startswith("["):
        return array, {int(rest)} if rest.isdigit() else set()
    indices: set[int] = set()
    for part in rest.strip("[]").split("%")[0].split(","):
        low, _, high = part.partition("-")
        indices.update(range(int(low), int(high or low) + 1))
    return array, indices


def all_ended(job_ids: list[str]) -> bool:
    """Whether every one of these array elements ended, by its own accounting row or its range's."""
    arrays = sorted({job.split("_")[0] for job in job_ids})
    ended: set[str] = set()
    for row_id, state in sacct_states(arrays).items():
        if state.startswith(ENDED):
            array, indices = _array_indices(row_id)
            ended.update(f"{array}_{i}" for i in indices)
    return ended >= set(job_ids)


def mid_generation(task_dir: Path) -> int | None:
    """The pid of the worker running the task once it has written at least one output to partial.jsonl
    and not yet its metrics.json (None before that). The lock file names the holder: ``<host> <pid>``."""
    partial = task_dir / "partial.jsonl"
    if (task_dir / "metrics.json").exists() or not partial.exists() or not partial.read_text().count("\n"):
        return None
    holder = (task_dir / "lock").read_text().split()
    return int(holder[1]) if len(holder) == 2 else None


def task_dir(batch_dir: Path, index: int) -> Path:
    return batch_dir / "tasks" / f"{index:06d}"


def status(env: dict[str, str], batch_id: str) -> dict[str, Any]:
    result = run_cli(["status", batch_id, "--json"], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def watch(env: dict[str, str], batch_id: str) -> dict[str, Any]:
    """``status --watch``: polls until every task finished (completed, or lost and waiting for retry)."""
    result = run_cli(["status", batch_id, "--watch", "--json"], env, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def retry(env: dict[str, str], batch_id: str) -> dict[str, Any]:
    result = run_cli(["retry", batch_id, "--wait", "--json"], env, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def stop_daemon(name: str) -> None:
    """Stop one of the cluster's daemons as an admin would (SIGTERM) and wait until it is gone."""
    pid = int((STATE_DIR / "run" / f"{name}.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 60, f"{name} to stop")


def start_cluster() -> None:
    """Start whatever daemon of the cluster is not running (the cluster script is idempotent)."""
    subprocess.run([str(CLUSTER_SCRIPT), "start"], check=True, capture_output=True, timeout=180)


@pytest.fixture()
def node_back() -> Iterator[list[str]]:
    """Nodes a test takes down are resumed afterwards, whatever happened."""
    nodes: list[str] = []
    yield nodes
    for node in nodes:
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], check=False)


@pytest.fixture()
def daemons_back() -> Iterator[None]:
    """Daemons a test stops are started again afterwards, whatever happened."""
    yield
    start_cluster()


def test_worker_killed_mid_generation_is_retried_alone_and_resumes(
    hq_env: dict[str, str], tmp_path: Path
) -> None:
    """SIGKILL on a worker that is generating: no handler runs, the lock dies with it, Slurm ends the
    element FAILED; status calls the task lost, retry runs that task alone, keeping its partial outputs."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", 6, max_new_tokens=24)
    batch_id, batch_dir = submit(hq_env, prompts, "lowpower", task_size=3)
    first = elements(batch_dir)
    victim_job = next(job for job, task in first.items() if task == 0)
    pid = wait_for(lambda: mid_generation(task_dir(batch_dir, 0)), 120, "task 0 to be generating", 0.02)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: all_ended(list(first)), 120, "both elements to end")
    assert not (task_dir(batch_dir, 0) / "metrics.json").exists(), "the killed worker finished anyway"
    assert sacct_states([victim_job])[victim_job] == "FAILED"

    seen = status(hq_env, batch_id)
    assert [(p["task_index"], p["status"], p["slurm_state"]) for p in seen["problems"]] == [
        (0, "lost", "FAILED")
    ]
    kept = task_dir(batch_dir, 0).joinpath("partial.jsonl").read_text().count("\n")
    assert kept >= 1
    assert_exactly_once(prompts, batch_dir, hq_env["HPCQUEUE_DB_URL"], complete=False)

    before = latest_jobs(batch_dir)
    report = retry(hq_env, batch_id)
    assert report["submitted_tasks"] == 1
    after = latest_jobs(batch_dir)
    assert after[1] == before[1] and after[0] != before[0]  # the killed task alone ran again
    metrics = json.loads(task_dir(batch_dir, 0).joinpath("metrics.json").read_text())
    assert metrics["n_resumed"] == kept  # the outputs written before the kill were kept, not produced again
    assert_exactly_once(prompts, batch_dir, hq_env["HPCQUEUE_DB_URL"])


def test_whole_array_cancelled_then_retried(hq_env: dict[str, str], tmp_path: Path) -> None:
    """scancel of the whole array while its first elements run and the rest wait: every unfinished task is
    lost (CANCELLED), none is taken for done; retry finishes the batch."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", 6, max_new_tokens=16)
    batch_id, batch_dir = submit(hq_env, prompts, "lowpower", task_size=2)
    first = elements(batch_dir)
    (array,) = {job.split("_")[0] for job in first}
    wait_for(lambda: mid_generation(task_dir(batch_dir, 0)), 120, "task 0 to be generating", 0.05)
    subprocess.run(["scancel", array], check=True)
    wait_for(lambda: all_ended(list(first)), 120, "the array to end")

    seen = status(hq_env, batch_id)
    unfinished = {i for i in first.values() if not (task_dir(batch_dir, i) / "metrics.json").exists()}
    assert unfinished, "every task finished before the cancel"
    assert {p["task_index"]: p["status"] for p in seen["problems"]} == dict.fromkeys(unfinished, "lost")
    assert_exactly_once(prompts, batch_dir, hq_env["HPCQUEUE_DB_URL"], complete=False)

    report = retry(hq_env, batch_id)
    assert report["submitted_tasks"] == len(unfinished)
    assert report["succeeded"] == 6 and report["pending"] == 0
    assert_exactly_once(prompts, batch_dir, hq_env["HPCQUEUE_DB_URL"])


def node_state(node: str) -> str:
    proc = subprocess.run(
        ["sinfo", "-h", "-N", "-n", node, "-o", "%T"], capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


def steps_on_host(jobs: list[str], node: str) -> list[str]:
    """What is left on this host (the local cluster's nodes share it) of these jobs' steps on ``node``: their
    slurmstepd processes, and the step sockets in the node's spool directory. slurmd refuses to launch a job
    again while either remains ("already running, do not launch second copy"), and Slurm then holds it."""
    raw_ids = set()
    for array in sorted({job.split("_")[0] for job in jobs}):
        shown = subprocess.run(["scontrol", "show", "job", "-o", array], capture_output=True, text=True)
        raw_ids |= {field.split("=", 1)[1] for field in shown.stdout.split() if field.startswith("JobId=")}
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            title = cmdline.read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith("slurmstepd: [") and title[13:].split(".")[0] in raw_ids:
            found.append(title)
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    spool = next(line.split("=", 1)[1].strip() for line in config.splitlines() if "SlurmdSpoolDir" in line)
    sockets = Path(spool.replace("%n", node)).glob(f"{node}_*")
    found += [str(path) for path in sockets if path.name.split("_", 1)[1].split(".")[0] in raw_ids]
    return found


def test_node_down_under_a_running_task(
    hq_env: dict[str, str], tmp_path: Path, node_back: list[str], daemons_back: None
) -> None:
    """An admin sets the node DOWN while a task generates: Slurm kills its job, ends it NODE_FAIL and requeues
    it. status shows the requeued tasks queued, not lost; once the node is back the requeued task resumes
    after its last finished output, and the batch completes without a retry."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", 4, max_new_tokens=24)
    batch_id, batch_dir = submit(hq_env, prompts, "gpu", task_size=2)
    jobs = list(elements(batch_dir))
    wait_for(lambda: mid_generation(task_dir(batch_dir, 0)), 120, "task 0 to be generating", 0.02)
    node_back.append("gpu01")
    down = ["scontrol", "update", "NodeName=gpu01", "State=DOWN", "Reason=hpcqueue-fault-test"]
    subprocess.run(down, check=True)
    wait_for(lambda: not is_locked(task_dir(batch_dir, 0) / "lock"), 60, "the worker on the down node to die")
    assert not (task_dir(batch_dir, 0) / "metrics.json").exists(), "task 0 finished before the node went down"
    kept = task_dir(batch_dir, 0).joinpath("partial.jsonl").read_text().count("\n")

    requeued = wait_for(
        lambda: (states := sacct_states(jobs)) and all(states.get(j) == "PENDING" for j in jobs) and states,
        60,
        "Slurm to requeue the node's jobs",
    )
    seen = status(hq_env, batch_id)
    assert not seen["problems"] and seen["tasks"].get("queued", 0) >= 1, (requeued, seen)
    assert_exactly_once(prompts, batch_dir, hq_env["HPCQUEUE_DB_URL"], complete=False)
    # The admin restarts the node's slurmd before bringing it back, as after any repair: a slurmd that lived
    # through the failure may still count a killed job as its own (slurmctld could not tell it the job ended),
    # refuse to launch it again ("already running, do not launch second copy"), and get the node drained.
    wait_for(lambda: not steps_on_host(jobs, "gpu01"), 60, "the killed job steps to end")
    stop_daemon("slurmd-gpu01")
    start_cluster()
    # The node comes back (ReturnToService=2 returns it when its slurmd registers; RESUME otherwise).
    if node_state("gpu01").startswith(("down", "drain")):
        subprocess.run(["scontrol", "update", "NodeName=gpu01", "State=RESUME"], check=True)
    # Slurm holds a requeued job for two minutes; an admin may let it start at once, as here.
    subprocess.run(["scontrol", "update", f"JobId={','.join(jobs)}", "StartTime=now"], check=True)

    finished = watch(hq_env, batch_id)
    assert finished["done"] and not finished["problems"], finished
    assert len(elements(batch_dir)) == len(jobs)  # no retry was needed: the same jobs ran again
    metrics = json.loads(task_dir(batch_dir, 0).joinpath("metrics.json").read_text())
    assert metrics["n_resumed"] == kept >= 1
    assert_exactly_once(prompts, batch_dir, hq_env["HPCQUEUE_DB_URL"])


def test_slurmdbd_down_while_status_polls(hq_env: dict[str, str], tmp_path: Path, daemons_back: None) -> None:
    """Accounting gaps are not losses: with slurmdbd down, sacct fails; status says the states may be stale
    and calls no task lost, also once the tasks finish; when slurmdbd returns, everything completes."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", 4, max_new_tokens=8)
    batch_id, batch_dir = submit(hq_env, prompts, "lowpower", task_size=2)
    stop_daemon("slurmdbd")
    looked = run_cli(["status", batch_id, "--json"], hq_env)
    assert looked.returncode == 0, looked.stderr
    assert "task states may be stale" in looked.stderr
    seen = json.loads(looked.stdout)
    assert not seen["problems"], seen["problems"]
    wait_for(
        lambda: all((task_dir(batch_dir, i) / "metrics.json").exists() for i in (0, 1)),
        120,
        "both tasks to end",
    )
    seen = status(hq_env, batch_id)
    assert not seen["problems"] and seen["tasks"]["completed"] == 2, seen
    assert_exactly_once(prompts, batch_dir, hq_env["HPCQUEUE_DB_URL"])
    start_cluster()
    finished = watch(hq_env, batch_id)
    assert finished["done"] and not finished["problems"]
    assert_exactly_once(prompts, batch_dir, hq_env["HPCQUEUE_DB_URL"])


def test_slurmctld_restarted_mid_batch(hq_env: dict[str, str], tmp_path: Path, daemons_back: None) -> None:
    """slurmctld stops while both tasks generate, and starts again: the running jobs keep running without it,
    status meanwhile calls nothing lost, and the batch completes with no retry. (Jobs waiting through a
    restart are the deferred case of tests/dispatch/test_time_integration.py.)"""
    prompts = write_prompts(tmp_path / "prompts.jsonl", 4, max_new_tokens=48)
    # On the gpu node: a job that ends while slurmctld is away stays COMPLETING for most of a minute after it
    # returns, and would hold up whatever runs next on the default partition.
    batch_id, batch_dir = submit(hq_env, prompts, "gpu", task_size=2)
    # Each worker is paused (SIGSTOP) as soon as it generates, and stays paused through the restart, however
    # fast this machine generates or late the other job starts: both jobs certainly run across it, and go on
    # where they were once slurmctld is back.
    workers: list[int] = []
    try:
        for i in (0, 1):
            generating = partial(mid_generation, task_dir(batch_dir, i))
            pid = wait_for(generating, 120, f"task {i} to generate", 0.01)
            os.kill(pid, signal.SIGSTOP)
            workers.append(pid)
        stop_daemon("slurmctld")
        seen = status(hq_env, batch_id)  # slurmctld down: accounting answers, scontrol does not
        assert not seen["problems"], seen["problems"]
        assert seen["tasks"].get("running") == 2, seen["tasks"]
        start_cluster()
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    finished = watch(hq_env, batch_id)
    assert finished["done"] and not finished["problems"], finished
    assert len(elements(batch_dir)) == 2  # nothing was submitted again
    assert_exactly_once(prompts, batch_dir, hq_env["HPCQUEUE_DB_URL"])


def test_time_limit_signal_requeues_the_task_which_resumes(hq_env: dict[str, str], tmp_path: Path) -> None:
    """A task running into its time limit: Slurm sends the job the signal submitit asked for
    (``--signal=USR2@<delay>``) before the limit, submitit checkpoints the worker and requeues the job, and
    the requeued worker resumes after its finished outputs. The signal is sent here (``scancel --signal``)
    instead of after the target's 30 minutes: what follows is the same. status shows the task queued, not
    lost, and no retry is needed."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", 8, max_new_tokens=48)
    batch_id, batch_dir = submit(hq_env, prompts, "lowpower", task_size=8)
    (job,) = elements(batch_dir)
    wait_for(lambda: mid_generation(task_dir(batch_dir, 0)), 120, "task 0 to be generating", 0.02)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)

    def requeued() -> bool:
        shown = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True)
        return shown.stdout.strip() == "PENDING"

    wait_for(requeued, 120, "submitit to requeue the job")
    assert not (task_dir(batch_dir, 0) / "metrics.json").exists(), "the task finished before the signal"
    kept = task_dir(batch_dir, 0).joinpath("partial.jsonl").read_text().count("\n")
    assert kept >= 1
    seen = status(hq_env, batch_id)
    assert not seen["problems"] and seen["tasks"].get("queued") == 1, seen
    # Slurm holds a requeued job before it may start again; let it start now, as an admin may.
    wait_for(lambda: not steps_on_host([job], "lp01"), 60, "the signalled job's steps to end")
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)

    finished = watch(hq_env, batch_id)
    assert finished["done"] and not finished["problems"], finished
    assert list(elements(batch_dir)) == [job]  # the same job ran again: no retry
    metrics = json.loads(task_dir(batch_dir, 0).joinpath("metrics.json").read_text())
    assert metrics["n_resumed"] >= kept  # the outputs written before the signal were kept

    def job_history() -> list[str]:
        shown = ["sacct", "-D", "-X", "-P", "-n", "-j", job, "--format=State"]
        return subprocess.run(shown, capture_output=True, text=True, check=True).stdout.split()

    # Accounting hears of the job's end a little after the task's files: wait for it.
    wait_for(lambda: job_history()[-1:] == ["COMPLETED"], 60, "accounting to record the job's end")
    assert job_history() == ["REQUEUED", "COMPLETED"]  # requeued once, then done
    assert_exactly_once(prompts, batch_dir, hq_env["HPCQUEUE_DB_URL"])
