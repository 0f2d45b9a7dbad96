"""A real batch submitted with hostile values everywhere a user can put one, then symbolic links planted in
its directory: values arrive as data, links are never followed.

The batch runs on the local executor with the demo model: request ids with ``$(...)``, backticks, quotes,
``;``, newlines and ``../``; an input path and a batch root with spaces, quotes and ``$(...)``; a target name
with spaces. A canary file shows that nothing ran. The finished batch is copied for each link test, so each
plants its link in a batch of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpcqueue.dispatch.batchdir import BatchDir, hold_task_lock, open_batch
from hpcqueue.errors import BatchNotFoundError, UnsafePathError
from tests.conftest import REPO, run_cli
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

TARGET = "my local box"


def _hostile_ids(canary: Path) -> list[str | int]:
    return [
        f"$(touch {canary})",
        f"`touch {canary}`",
        f"a'b\"c; touch {canary}",
        "../../etc/passwd",
        "line\nbreak\r\n",
        "tab\there \u202eright-to-left 日本",
        "-rf /",
        "x" * 1024,
        7,
    ]


@dataclass(frozen=True)
class Finished:
    """A batch whose tasks all finished and that was not collected yet, kept as it was."""

    env: dict[str, str]
    root: Path
    ledger: Path
    batch_id: str
    ids: list[str]
    canary: Path


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, hq_cache: Path) -> Finished:
    base = tmp_path_factory.mktemp("hostile")
    canary = base / "pwned-canary"
    # Path components cannot hold '/': these name the canary relative to the working directory.
    root = base / f"batch root 'q' \"$(touch {canary.name})\" ;"
    ledger = base / "ledger.sqlite"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCQUEUE_")}
    env.update(
        HPCQUEUE_CACHE_DIR=str(hq_cache),
        HPCQUEUE_BATCH_ROOT=str(root),
        HPCQUEUE_DB_URL=f"sqlite:///{ledger}",
        XDG_CONFIG_HOME=str(base / "config-home"),
        XDG_DATA_HOME=str(base / "data-home"),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    config = base / "config.toml"
    config.write_text(f'task_size = 3\n[targets."{TARGET}"]\nexecutor = "local"\narray_parallelism = 2\n')
    env["HPCQUEUE_CONFIG"] = str(config)
    ids = _hostile_ids(canary)
    prompts = base / f'in put\'s "x" `touch {canary.name}`.jsonl'
    with open(prompts, "w", encoding="utf-8") as handle:
        for i, rid in enumerate(ids):
            handle.write(json.dumps({"id": rid, "prompt": f"Say {i}", "max_new_tokens": 3}) + "\n")
    done = run_cli(["submit", str(prompts), "--json", "--meter", "estimate"], env)
    assert done.returncode == 0, done.stderr
    batch_id = json.loads(done.stdout)["batch_id"]
    batch = BatchDir(root / batch_id)
    n_tasks = len(batch.manifest()["tasks"])
    wait_for(
        lambda: all((batch.task_dir(i) / "metrics.json").exists() for i in range(n_tasks)),
        300,
        "the local workers to finish",
    )
    wait_for(lambda: not any(p.name == "lock" and _held(p) for p in root.rglob("lock")), 60, "locks to drop")
    return Finished(env, root, ledger, batch_id, [str(i) for i in ids], canary)


def _held(lock: Path) -> bool:
    from hpcqueue.dispatch.batchdir import is_locked

    return is_locked(lock)


@pytest.fixture()
def copy(finished: Finished, tmp_path: Path) -> Iterator[Finished]:
    """The finished batch and its ledger, copied (links and all) into this test's own directory."""
    root = tmp_path / "batches"
    shutil.copytree(finished.root, root, symlinks=True)
    ledger = tmp_path / "ledger.sqlite"
    shutil.copy2(finished.ledger, ledger)
    env = {**finished.env, "HPCQUEUE_BATCH_ROOT": str(root), "HPCQUEUE_DB_URL": f"sqlite:///{ledger}"}
    yield Finished(env, root, ledger, finished.batch_id, finished.ids, finished.canary)


def _results(env: dict[str, str], batch_id: str) -> tuple[int, list[dict], str]:
    done = run_cli(["results", batch_id], env)
    records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, records, done.stderr


def test_hostile_values_arrive_intact_as_data_and_nothing_runs(copy: Finished) -> None:
    collected = run_cli(["collect", copy.batch_id, "--json"], copy.env)
    assert collected.returncode == 0, collected.stderr
    code, records, stderr = _results(copy.env, copy.batch_id)
    assert code == 0, stderr
    assert [r["id"] for r in records] == copy.ids
    assert all(r["error"] is None and isinstance(r["text"], str) for r in records)
    with sqlite3.connect(copy.ledger) as db:
        stored = [row[0] for row in db.execute("SELECT request_id FROM requests ORDER BY line")]
    assert stored == copy.ids
    # Only the names hpcqueue chose are paths: the batch id, task numbers and the (validated) target name.
    assert sorted(p.name for p in copy.root.iterdir() if not p.name.startswith(".")) == [copy.batch_id]
    batch = copy.root / copy.batch_id
    assert all(p.name.isdigit() for p in (batch / "tasks").iterdir())
    assert sorted(p.name for p in (batch / "logs").iterdir()) == [TARGET]
    assert not copy.canary.exists() and not (REPO / copy.canary.name).exists()


def test_results_refuse_an_output_file_replaced_by_a_link(copy: Finished, tmp_path: Path) -> None:
    """Someone else's file, linked where a task's output belongs, is never read as results."""
    secret = tmp_path / "someone-elses.jsonl"
    secret.write_text('{"line": 1, "id": "stolen", "text": "SECRET"}\n')
    output = copy.root / copy.batch_id / "tasks" / "000000" / "output.jsonl"
    output.unlink()
    output.symlink_to(secret)
    code, records, stderr = _results(copy.env, copy.batch_id)
    assert code != 0
    assert "SECRET" not in json.dumps(records)
    assert f"{output} is a symbolic link (to {secret})" in " ".join(stderr.split())


def test_a_task_directory_replaced_by_a_link_is_not_followed(copy: Finished, tmp_path: Path) -> None:
    task = copy.root / copy.batch_id / "tasks" / "000000"
    elsewhere = tmp_path / "elsewhere"
    shutil.move(task, elsewhere)
    task.symlink_to(elsewhere, target_is_directory=True)
    code, _, stderr = _results(copy.env, copy.batch_id)
    assert code != 0 and "is a symbolic link" in stderr and "000000" in stderr
    done = run_cli(["collect", copy.batch_id], copy.env)
    assert done.returncode != 0 and "000000 is a symbolic link" in " ".join(done.stderr.split())
    with sqlite3.connect(copy.ledger) as db:
        assert db.execute("SELECT count(*) FROM tasks WHERE collected_at IS NOT NULL").fetchone()[0] == 0


def test_a_batch_directory_replaced_by_a_link_is_refused(copy: Finished, tmp_path: Path) -> None:
    batch = copy.root / copy.batch_id
    elsewhere = tmp_path / "planted"
    shutil.move(batch, elsewhere)
    batch.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="is a symbolic link"):
        open_batch(copy.root, copy.batch_id)
    listed = run_cli(["collect", "--json"], copy.env)  # every batch under the root: the link is not one
    assert listed.returncode == 0, listed.stderr
    assert copy.batch_id not in listed.stdout


def test_collect_sets_aside_a_linked_output_and_never_reads_it(copy: Finished, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"line": 1, "id": "stolen", "text": "SECRET"}\n' * 3)
    task = copy.root / copy.batch_id / "tasks" / "000000"
    (task / "output.jsonl").unlink()
    (task / "output.jsonl").symlink_to(secret)
    done = run_cli(["collect", copy.batch_id, "--json"], copy.env)
    assert done.returncode == 0, done.stderr
    assert "is a symbolic link" in " ".join(done.stderr.split())
    # Set aside as a refused attempt (the link itself is renamed), so `hpcqueue retry` runs the task again.
    assert (task / "output.refused-1.jsonl").is_symlink() and (task / "metrics.attempt-1.json").is_file()
    assert not (task / "metrics.json").exists()
    assert secret.read_text().count("SECRET") == 3  # the target is left as it was
    with sqlite3.connect(copy.ledger) as db:
        texts = [row[0] for row in db.execute("SELECT error FROM tasks WHERE task_index = 0")]
        assert db.execute("SELECT count(*) FROM requests WHERE request_id = 'stolen'").fetchone()[0] == 0
    assert any("symbolic link" in (t or "") for t in texts)


def test_collect_refuses_a_linked_metrics_file(copy: Finished, tmp_path: Path) -> None:
    forged = tmp_path / "forged-metrics.json"
    task = copy.root / copy.batch_id / "tasks" / "000001"
    shutil.move(task / "metrics.json", forged)
    (task / "metrics.json").symlink_to(forged)
    done = run_cli(["collect", copy.batch_id], copy.env)
    assert done.returncode != 0
    assert f"{task / 'metrics.json'} is a symbolic link" in " ".join(done.stderr.split())


def test_the_worker_never_writes_through_a_planted_link(copy: Finished, tmp_path: Path) -> None:
    """The task lock is truncated and partial.jsonl appended to by the worker (running as the batch's
    owner): a link planted there would let someone else make the worker overwrite the owner's files."""
    from hpcqueue.worker.runner import _resume

    victim = tmp_path / "victim-file"
    victim.write_text("precious\n")
    task = copy.root / copy.batch_id / "tasks" / "000000"
    (task / "lock").unlink()
    (task / "lock").symlink_to(victim)
    with pytest.raises(UnsafePathError, match="is a symbolic link"), hold_task_lock(task):
        pass
    (task / "partial.jsonl").unlink(missing_ok=True)
    (task / "partial.jsonl").symlink_to(victim)
    with pytest.raises(UnsafePathError, match="is a symbolic link"):
        _resume(task / "partial.jsonl")
    assert victim.read_text() == "precious\n"


def test_a_failed_tasks_log_tail_is_not_read_through_a_planted_link(copy: Finished, tmp_path: Path) -> None:
    """The ledger keeps the tail of a failed task's log for admins to read: a log replaced by a link (or a
    log folder replaced by one) must not copy the link's target into it."""
    secret = tmp_path / "someone-elses-file"
    secret.write_text("password=hunter2\n")
    batch = open_batch(copy.root, copy.batch_id)
    record = batch.latest_jobs()[0]
    logs = sorted((batch.logs_dir / str(record["target"])).glob(f"{record['job_id']}_*_log.err"))
    assert logs and batch.log_tail(0) is not None and "hunter2" not in str(batch.log_tail(0))
    logs[0].unlink()
    logs[0].symlink_to(secret)
    tail = batch.log_tail(0)
    assert tail is not None and "is a symbolic link" in tail and "hunter2" not in tail
    logs[0].unlink()
    target_logs = logs[0].parent
    moved = tmp_path / "logs"
    shutil.move(target_logs, moved)
    (moved / logs[0].name).write_text("password=hunter2\n")
    target_logs.symlink_to(moved)
    tail = batch.log_tail(0)
    assert tail is not None and "is a symbolic link" in tail and "hunter2" not in tail


@pytest.mark.parametrize("bad", ["../hq-x", "hq-a/../../b", "hq-x\n", "/etc", "hq-" + "a" * 65, "hq-$(id)"])
def test_a_batch_id_from_the_command_line_never_becomes_a_path_outside(copy: Finished, bad: str) -> None:
    with pytest.raises(BatchNotFoundError, match="is not a batch id"):
        open_batch(copy.root, bad)
    done = run_cli(["results", bad], copy.env)
    assert done.returncode != 0 and "is not a batch id" in done.stderr
