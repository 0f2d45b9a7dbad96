"""Task status from the batch directory and the jobs (Slurm's answers faked: this is the outside world)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from hpcqueue.dispatch.batchdir import BatchDir, create_batch
from hpcqueue.dispatch.slurm import JobState, SacctPoller
from hpcqueue.dispatch.status import ACCOUNTING_GRACE_S, FINISHED, live_task_indices, task_views
from hpcqueue.ledger import Ledger
from hpcqueue.ledger.collect import refresh
from tests.helpers import wait_for
from tests.ledger import make_info


class FakePoller:
    """Stands in for sacct: returns the given states for the ids asked about."""

    def __init__(self, states: dict[str, JobState], error: Exception | None = None) -> None:
        self.states_by_id = states
        self.asked: list[list[str]] = []
        self.last_error = error

    def states(self, job_ids: list[str], force: bool = False) -> dict[str, JobState]:
        self.asked.append(list(job_ids))
        return {i: s for i, s in self.states_by_id.items() if i in job_ids}


def _state(job_id: str, state: str, node: str | None = "lp01") -> JobState:
    base, _, index = job_id.partition("_")
    return JobState(
        job_id,
        base if index else None,
        int(index) if index else None,
        state,
        "lowpower",
        node,
        1000.0,
        1010.0 if state != "RUNNING" else None,
        10.0,
        "0:0",
    )


def _batch(tmp_path: Path, n_tasks: int = 6) -> BatchDir:
    plan = pd.DataFrame(
        {
            "line": list(range(1, n_tasks + 1)),
            "task_index": list(range(n_tasks)),
            "id": [f"r{i}" for i in range(n_tasks)],
        }
    )
    specs = [{"task_index": i, "target": "lowpower", "n_requests": 1} for i in range(n_tasks)]
    manifest = {"batch_id": "hq-status", "tasks": specs}
    return create_batch(
        tmp_path,
        "hq-status",
        manifest=manifest,
        plan=plan,
        task_specs=specs,
        raw_lines=pd.Series(['{"prompt":"x"}'] * n_tasks),
    )


def _jobs(batch: BatchDir, records: list[dict]) -> None:
    (batch.path / "jobs.json").write_text(json.dumps(records))


def _job(
    job_id: str,
    task_index: int,
    submitted_at: float,
    *,
    executor: str = "slurm",
    target: str = "lowpower",
    **extra: object,
) -> dict:
    """One record of jobs.json: the job submitted to run task ``task_index``."""
    return {
        "job_id": job_id,
        "executor": executor,
        "target": target,
        "task_indices": [task_index],
        "submitted_at": submitted_at,
        **extra,
    }


def test_statuses_combine_files_and_slurm_accounting(tmp_path: Path) -> None:
    batch = _batch(tmp_path)
    now = time.time()
    _jobs(
        batch, [_job(f"77_{i}", i, now) for i in range(5)] + [_job("78_0", 4, now - ACCOUNTING_GRACE_S - 1)]
    )
    (batch.task_dir(0) / "metrics.json").write_text('{"state": "completed"}')
    poller = FakePoller(
        {
            "77_1": _state("77_1", "RUNNING"),
            "77_2": _state("77_2", "PENDING", None),
            "77_3": _state("77_3", "CANCELLED"),
        }
    )
    views = task_views(batch, poller=poller)
    assert {i: v.status for i, v in views.items()} == {
        0: "completed",  # the worker's metrics.json settles it: Slurm is not asked
        1: "running",
        2: "queued",
        3: "lost",  # the job ended before the task did
        4: "lost",  # the retry's job has been missing from accounting for too long
        5: "pending",  # never submitted
    }
    assert poller.asked == [["77_1", "77_2", "77_3", "78_0"]]  # one batched question
    assert views[3].slurm_state == "CANCELLED" and views[3].node == "lp01"


def test_a_job_just_submitted_is_queued_and_a_cancelled_one_cancelled(tmp_path: Path) -> None:
    batch = _batch(tmp_path, 2)
    _jobs(batch, [_job("90_0", 0, time.time()), _job("90_1", 1, time.time(), cancelled=True)])
    views = task_views(batch, poller=FakePoller({}))
    assert views[0].status == "queued" and views[1].status == "cancelled"


def test_local_worker_that_died_leaves_its_task_lost(tmp_path: Path) -> None:
    batch = _batch(tmp_path, 1)
    _jobs(batch, [_job("999999999", 0, time.time(), executor="local", target="local")])
    assert task_views(batch)[0].status == "lost"


def test_refresh_records_lost_tasks_with_state_and_log_tail(tmp_path: Path) -> None:
    batch = _batch(tmp_path, 2)
    _jobs(batch, [_job(f"77_{i}", i, time.time()) for i in range(2)])
    log_dir = batch.logs_dir / "lowpower" / "77_1"
    log_dir.mkdir(parents=True)
    (log_dir / "77_1_0_log.err").write_text("loading model\nslurmstepd: *** JOB 77 CANCELLED ***\n")
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    info = make_info("hq-status", batch_dir=str(batch.path))
    tasks = pd.DataFrame(
        {
            "task_index": [0, 1],
            "target": ["lowpower"] * 2,
            "executor": ["slurm"] * 2,
            "n_requests": [1, 1],
            "predicted_energy_j": [1.0, 1.0],
            "predicted_runtime_s": [1.0, 1.0],
        }
    )
    requests = batch.plan().assign(
        target="lowpower",
        input_tokens=3,
        max_new_tokens=4,
        predicted_energy_j=1.0,
        predicted_runtime_s=1.0,
        extrapolated=False,
    )
    ledger.record_batch(info, tasks, requests)
    poller = FakePoller({"77_0": _state("77_0", "RUNNING"), "77_1": _state("77_1", "CANCELLED")})
    refresh(batch, ledger, poller=poller)
    with ledger.connect() as conn:
        rows = {
            r.task_index: r
            for r in conn.exec_driver_sql(
                "SELECT task_index, state, slurm_job_id, slurm_array_task_id, node, error, log_tail "
                "FROM tasks"
            )
        }
    assert rows[0].state == "running" and rows[0].slurm_job_id == "77" and rows[0].slurm_array_task_id == 0
    assert rows[1].state == "failed" and "CANCELLED" in rows[1].error and "retry" in rows[1].error
    assert "JOB 77 CANCELLED" in rows[1].log_tail and rows[1].node == "lp01"


def test_when_accounting_is_down_nothing_is_taken_for_lost(tmp_path: Path) -> None:
    from hpcqueue.dispatch.slurm import SlurmError

    batch = _batch(tmp_path, 1)
    _jobs(batch, [_job("78_0", 0, time.time() - ACCOUNTING_GRACE_S - 1)])
    views = task_views(batch, poller=FakePoller({}, error=SlurmError("sacct: slurmdbd not responding")))
    assert views[0].status == "queued"  # unknown, so not resubmitted by retry


# Recorded on the local Slurm 22.05 cluster: array 547 deferred with --begin, its element 2 moved later with
# `scontrol update` (so split out of the array); job 546 and array 541 removed by Slurm for their --deadline.
SACCT_DEFERRED_AND_DEADLINE = """\
547_2|PENDING|lowpower|None assigned|Unknown|Unknown|00:00:00|0:0
547_[0-1]|PENDING|lowpower|None assigned|Unknown|Unknown|00:00:00|0:0
546|DEADLINE|lowpower|None assigned|2026-11-30T17:51:00|2026-11-30T17:51:00|00:00:00|1:0
541_[0-2%2]|DEADLINE|lowpower|None assigned|None|2026-11-30T17:44:52|00:00:00|1:0
"""


class RecordedSacct:
    """Stands in for the ``sacct`` command: answers every call with recorded output, counts the calls."""

    def __init__(self, stdout: str) -> None:
        self.stdout = stdout
        self.calls: list[list[str]] = []

    def __call__(self, args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(args))
        return subprocess.CompletedProcess(args, 0, self.stdout, "")


def test_deferred_and_expired_tasks_from_recorded_sacct_output(tmp_path: Path) -> None:
    batch = _batch(tmp_path, 7)
    now = time.time()
    later = now + 3600
    batch.set_begin_times({0: later, 1: now - 60, 2: later + 600, 5: later, 6: later})
    _jobs(
        batch,
        [
            _job("547_0", 0, now),
            _job("547_1", 1, now),  # its begin time has passed: pending for another reason
            _job("547_2", 2, now),
            _job("541_1", 3, now),
            _job("546", 4, now),
            _job("549_0", 5, now),  # just submitted, not in accounting yet
            _job("999999999", 6, now, executor="local", target="local"),
        ],
    )
    (batch.task_dir(6) / "metrics.json").write_text(
        json.dumps({"state": "failed", "error": {"code": "deadline", "message": "the batch's deadline ..."}})
    )
    sacct = RecordedSacct(SACCT_DEFERRED_AND_DEADLINE)
    views = task_views(batch, poller=SacctPoller(runner=sacct))
    assert {i: v.status for i, v in views.items()} == {
        0: "deferred",
        1: "queued",
        2: "deferred",
        3: "expired",  # Slurm removed it: state DEADLINE
        4: "expired",
        5: "deferred",
        6: "expired",  # the worker found the deadline passed
    }
    assert len(sacct.calls) == 1  # one look, one sacct call
    assert views[0].begin_at == later and views[2].begin_at == later + 600 and views[3].begin_at is None
    assert views[3].slurm_state == "DEADLINE"
    assert all(views[i].finished for i in (3, 4, 6)) and not views[0].finished
    assert live_task_indices(views) == {0, 1, 2, 5}  # never submitted twice
    assert set(FINISHED) >= {"expired"}


def test_a_local_worker_waiting_for_a_begin_time_leaves_its_tasks_deferred(tmp_path: Path) -> None:
    batch = _batch(tmp_path, 2)
    batch.set_begin_times({0: time.time() + 3600})
    # a live process that looks like submitit's local controller (what status checks of a local job id)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "submitit"])
    cmdline = Path(f"/proc/{worker.pid}/cmdline")
    wait_for(lambda: b"submitit" in cmdline.read_bytes(), 10, "the process to exec")  # not the fork's
    try:
        _jobs(
            batch,
            [
                _job(str(worker.pid), 0, time.time(), executor="local", target="local"),
                _job(str(worker.pid), 1, time.time(), executor="local", target="local"),
            ],
        )
        views = task_views(batch)
    finally:
        worker.kill()
        worker.wait()
    assert views[0].status == "deferred" and views[1].status == "queued"
    assert task_views(batch)[0].status == "lost"  # the worker is gone: nothing will run it


def test_a_failed_task_is_expired_only_for_a_deadline_failure(tmp_path: Path) -> None:
    batch = _batch(tmp_path, 2)
    (batch.task_dir(0) / "metrics.json").write_text(
        json.dumps({"state": "failed", "error": {"type": "ModelError", "message": "boom"}})
    )
    (batch.task_dir(1) / "metrics.json").write_text(
        json.dumps({"state": "failed", "error": {"code": "deadline", "message": "too late"}})
    )
    views = task_views(batch)
    assert views[0].status == "failed" and views[1].status == "expired"


def test_an_element_neither_accounting_nor_slurmctld_holds_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pending element cancelled before its array was split vanishes from sacct (which lists only the
    array's rest): once slurmctld does not hold it either, it is lost, without waiting for the grace."""
    batch = _batch(tmp_path, 3)
    long_ago = time.time() - 120
    _jobs(batch, [_job("91_0", 0, long_ago), _job("91_1", 1, long_ago), _job("92_0", 2, time.time())])
    asked: list[list[str]] = []

    def show_jobs(job_ids: list[str]) -> dict[str, dict[str, str]]:
        asked.append(sorted(job_ids))
        return {"91_1": {"JobState": "PENDING"}}

    monkeypatch.setattr("hpcqueue.dispatch.slurm.show_jobs", show_jobs)
    views = task_views(batch, poller=FakePoller({}))
    assert [views[i].status for i in range(3)] == ["lost", "queued", "queued"]
    assert asked == [["91_0", "91_1"]]  # the one just submitted is not asked about
