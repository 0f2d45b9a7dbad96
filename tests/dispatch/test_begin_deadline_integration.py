"""Begin times and deadlines on the real local Slurm cluster: an array held until its ``--begin`` and carrying
its ``--deadline`` and ``--time-min``, and a pending element's begin time moved with ``scontrol update``.

The submitting process runs in the Europe/Paris time zone while the cluster runs in its own: sbatch and
scontrol read the times hpcqueue writes as the submitting machine's local time, and the round trip shows it.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pandas as pd
import pytest

from hpcqueue.config import Target
from hpcqueue.dispatch import slurm
from hpcqueue.dispatch.batchdir import create_batch
from hpcqueue.dispatch.executor import JobSpec, executor_parameters, submit_array, time_parameters
from hpcqueue.dispatch.status import task_views
from tests.helpers import wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

if os.environ.get("HPCQUEUE_TEST_SLURM") != "1":
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true but HPCQUEUE_TEST_SLURM != 1: CI must start the local Slurm cluster")
    pytest.skip("local Slurm cluster not running: slurm/local-cluster.sh start", allow_module_level=True)

LOWPOWER = Target(
    name="lowpower",
    executor="slurm",
    partition="lowpower",
    time_limit_min=10,
    cpus_per_task=1,
    mem_gb=1,
    array_parallelism=2,  # both elements in one scheduling pass: the test stays short
)


def _submit(tmp_path: Path, n: int, *, begin_at: float, deadline_at: float | None) -> str:
    """An array of ``n`` elements that run ``len`` (the smallest job there is); its array id."""
    params = time_parameters(
        executor_parameters(LOWPOWER),
        cluster="slurm",
        now=time.time(),
        begin_at=begin_at,
        deadline_at=deadline_at,
        predicted_runtime_s=[5.0] * n,
    )
    jobs = submit_array(
        len,
        [([f"task-{i}"],) for i in range(n)],
        job=JobSpec(folder=tmp_path / "logs" / "%j", cluster="slurm", parameters=params, what="a test array"),
    )
    return str(jobs[0].job_id).split("_")[0]


def test_a_deferred_array_waits_for_its_begin_time_and_carries_its_deadline(
    real_slurm: None, paris_time: None, tmp_path: Path
) -> None:
    begin_at, deadline_at = time.time() + 20, time.time() + 15 * 60
    array_id = _submit(tmp_path, 2, begin_at=begin_at, deadline_at=deadline_at)
    try:
        jobs = slurm.show_jobs([array_id])
        assert sorted(jobs) == [f"{array_id}_0", f"{array_id}_1"]
        for job in jobs.values():
            assert job["JobState"] == "PENDING", job
            assert slurm.parse_time(job["EligibleTime"]) == math.ceil(begin_at), job
            assert slurm.parse_time(job["Deadline"]) == math.floor(deadline_at), job
            assert job["TimeMin"] == "00:06:00", job  # ⌈(2 × 5 s + 300 s) / 60⌉ minutes
            assert job["TimeLimit"] == "00:10:00", job

        def both_completed() -> dict[str, slurm.JobState] | None:
            states = slurm.sacct([array_id])
            done = len(states) == 2 and all(s.finished and s.start for s in states.values())
            return states if done else None

        states = wait_for(both_completed, 55, "both elements to run after their begin time")
    finally:
        slurm.scancel([array_id])
    for state in states.values():
        assert state.succeeded, state
        assert state.start is not None and state.start >= math.ceil(begin_at), (state, begin_at)


def test_a_pending_element_s_begin_time_moves_and_the_task_reads_deferred(
    real_slurm: None, paris_time: None, tmp_path: Path
) -> None:
    begin_at = time.time() + 300
    array_id = _submit(tmp_path, 3, begin_at=begin_at, deadline_at=None)
    try:
        later, latest = begin_at + 300, begin_at + 600
        # one element of an array not yet split into elements, then two at once
        slurm.scontrol_update_begin([f"{array_id}_1"], later)
        slurm.scontrol_update_begin([f"{array_id}_0", f"{array_id}_2"], latest)
        jobs = slurm.show_jobs([array_id])
        eligible = {job_id: slurm.parse_time(job["EligibleTime"]) for job_id, job in jobs.items()}
        assert eligible == {
            f"{array_id}_0": math.ceil(latest),
            f"{array_id}_1": math.ceil(later),
            f"{array_id}_2": math.ceil(latest),
        }
        assert {job["JobState"] for job in jobs.values()} == {"PENDING"}
        assert "Deadline" not in jobs[f"{array_id}_1"] or jobs[f"{array_id}_1"]["Deadline"] == "N/A"

        # the status of a batch whose tasks these elements run: deferred, with the schedule's begin time
        specs = [{"task_index": i, "target": "lowpower", "n_requests": 1} for i in range(3)]
        batch = create_batch(
            tmp_path / "batches",
            "hq-moved",
            manifest={"batch_id": "hq-moved", "tasks": specs},
            plan=pd.DataFrame({"line": [1, 2, 3], "task_index": [0, 1, 2]}),
            task_specs=specs,
            raw_lines=pd.Series(["{}"] * 3),
            schedule={"deadline_at": None, "begin_at": {"0": latest, "1": later, "2": latest}},
        )
        batch.add_jobs(
            [
                {
                    "job_id": f"{array_id}_{i}",
                    "executor": "slurm",
                    "target": "lowpower",
                    "task_indices": [i],
                    "submitted_at": time.time(),
                    "begin_at": begin_at,
                }
                for i in range(3)
            ]
        )
        views = task_views(batch)
        assert {v.status for v in views.values()} == {"deferred"}
        assert views[1].begin_at == later
    finally:
        slurm.scancel([array_id])
