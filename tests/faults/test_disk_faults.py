"""Faults of the disk under a batch directory: a result damaged after the worker wrote it, a full filesystem.

Each case runs a real batch (the demo model, submitit's local executor, a real SQLite ledger) through the real
CLI, injects one fault, lets the product recover by the documented command and checks that every request
ends with exactly one result or one recorded error, in the files and the ledger alike.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.faults.invariant import assert_exactly_once
from tests.helpers import wait_for

pytestmark = pytest.mark.slow


def write_prompts(path: Path, n: int) -> Path:
    """``n`` short prompts with tiny outputs (the demo model generates 8 tokens each)."""
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            record = {"id": f"q{i}", "prompt": f"Question {i}: why?", "max_new_tokens": 8}
            handle.write(json.dumps(record) + "\n")
    return path


def submit(prompts: Path, env: dict[str, str], *extra: str) -> dict:
    result = run_cli(["submit", str(prompts), "--json", "--task-size", "2", *extra], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def finished_files(batch_dir: Path, n_tasks: int, timeout_s: float = 180) -> list[Path]:
    """Wait until every task wrote its metrics.json (nothing collected yet: no command looked)."""

    def done() -> list[Path]:
        found = sorted(batch_dir.glob("tasks/*/metrics.json"))
        return found if len(found) == n_tasks else []

    return wait_for(done, timeout_s, f"{n_tasks} task(s) of {batch_dir.name} to finish")


def test_damaged_result_is_refused_and_retry_redoes_only_that_task(
    hq_env: dict[str, str], tmp_path: Path
) -> None:
    """One output.jsonl cut inside its last line (``read_jsonl`` would forgive that torn line and the request
    would silently go missing) and one with bytes overwritten: collect records neither, says which files and
    why, and ``retry`` runs those two tasks again while the intact one is left alone."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", 6)
    info = submit(prompts, hq_env)
    batch_dir = Path(info["batch_dir"])
    assert info["tasks"] == 3
    finished_files(batch_dir, 3)
    truncated, corrupted, intact = (batch_dir / "tasks" / f"{i:06d}" for i in range(3))
    data = (truncated / "output.jsonl").read_bytes()
    (truncated / "output.jsonl").write_bytes(data[: len(data) - 10])
    data = bytearray((corrupted / "output.jsonl").read_bytes())
    data[5:15] = b"\x00garbage\xff\x00"
    (corrupted / "output.jsonl").write_bytes(bytes(data))
    intact_metrics = (intact / "metrics.json").read_bytes()

    collected = run_cli(["collect", info["batch_id"], "--json"], hq_env)
    assert collected.returncode == 0, collected.stderr
    for task_dir in (truncated, corrupted):
        assert f"refused {task_dir / 'output.jsonl'}" in collected.stderr
        assert not (task_dir / "metrics.json").exists()
        assert (task_dir / "output.refused-1.jsonl").exists()
    assert "truncated" in collected.stderr and "is not JSON" in collected.stderr
    assert f"hpcqueue retry {info['batch_id']}" in collected.stderr
    # nothing of the damaged tasks is in the ledger, and nothing is recorded twice
    assert_exactly_once(prompts, batch_dir, hq_env["HPCQUEUE_DB_URL"], complete=False)

    retried = run_cli(["retry", info["batch_id"], "--wait", "--json"], hq_env)
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["submitted_tasks"] == 2
    jobs = json.loads((batch_dir / "jobs.json").read_text())
    assert sorted(i for job in jobs[1:] for i in job["task_indices"]) == [0, 1]  # only the damaged tasks
    assert (intact / "metrics.json").read_bytes() == intact_metrics
    for task_dir in (truncated, corrupted):
        metrics = json.loads((task_dir / "metrics.json").read_text())
        assert metrics["state"] == "completed" and metrics["n_resumed"] == 2  # kept from partial.jsonl
    assert_exactly_once(prompts, batch_dir, hq_env["HPCQUEUE_DB_URL"])


@pytest.fixture()
def small_filesystem(tmp_path: Path) -> Path:
    """A 16 MiB tmpfs mounted for the test (needs root, as ``make test`` runs), unmounted afterwards."""
    mount = tmp_path / "small-fs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        reason = "mounting a small tmpfs needs root and mount(8)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Write one file until the filesystem refuses (ENOSPC); return it (delete it to give the space back)."""
    filler = directory / "filler"
    chunk = b"\0" * (256 * 1024)
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    with open(filler, "ab", buffering=0) as handle:  # the last partial chunk's room too
        try:
            while True:
                handle.write(b"\0" * 512)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def test_full_filesystem_fails_the_worker_cleanly_and_retry_finishes(
    hq_env: dict[str, str], tmp_path: Path, small_filesystem: Path
) -> None:
    """The batch directory's filesystem fills up right after submission, before the workers (which load the
    model first) write a result: they fail without leaving any output that reads as complete, and ``retry``
    finishes the batch once the space is back."""
    env = {**hq_env, "HPCQUEUE_BATCH_ROOT": str(small_filesystem / "batches")}
    prompts = write_prompts(tmp_path / "prompts.jsonl", 4)
    info = submit(prompts, env)
    batch_dir = Path(info["batch_dir"])
    filler = fill(small_filesystem)

    def workers_gone() -> bool:
        status = run_cli(["status", info["batch_id"], "--json"], env)
        tasks = json.loads(status.stdout)["tasks"] if status.returncode == 0 else {}
        return bool(tasks) and tasks.get("queued", 0) + tasks.get("running", 0) == 0

    wait_for(workers_gone, 180, "the workers to stop on the full filesystem", interval_s=1.0)
    status = json.loads(run_cli(["status", info["batch_id"], "--json"], env).stdout)
    assert status["tasks"].get("completed", 0) < 2, "the filesystem filled too late: no worker saw it"
    for task_dir in sorted(batch_dir.glob("tasks/*")):
        if (task_dir / "metrics.json").exists():
            metrics = json.loads((task_dir / "metrics.json").read_text())
            if metrics["state"] == "completed":  # only a task that really finished before the fill
                assert len((task_dir / "output.jsonl").read_text().splitlines()) == metrics["n_requests"]
        else:
            assert not (task_dir / "output.jsonl").exists()
        assert not list(task_dir.glob(".*.tmp")), "a temporary file was left behind"
    assert_exactly_once(prompts, batch_dir, env["HPCQUEUE_DB_URL"], complete=False)

    filler.unlink()
    retried = run_cli(["retry", info["batch_id"], "--wait", "--json"], env)
    assert retried.returncode == 0, retried.stderr
    assert_exactly_once(prompts, batch_dir, env["HPCQUEUE_DB_URL"])
