"""Target → submitit parameters: the one mapping, checked against golden values; tasks → arrays in time."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest

from hpcqueue.config import Target
from hpcqueue.dispatch.batchdir import BatchDir, create_batch
from hpcqueue.dispatch.executor import executor_parameters, time_parameters
from hpcqueue.dispatch.jobs import (
    _local_slots,
    collect_job_parameters,
    split_for_max_array_size,
    start_groups,
    submit_tasks,
)

#: A GPU partition as a site describes it; the golden tests below start from it.
GPU = Target(
    name="gpu",
    executor="slurm",
    partition="gpu",
    gres="gpu:1",
    cpus_per_task=8,
    mem_gb=32,
    time_limit_min=120,
    array_parallelism=4,
    extra_sbatch={"reservation": "maint"},
)


def test_local_target_parameters() -> None:
    params = executor_parameters(Target(name="local", time_limit_min=30), tasks_in_job=3)
    assert params == {"name": "hpcqueue-local", "timeout_min": 90, "nodes": 1, "tasks_per_node": 1}


def test_slurm_target_parameters_golden() -> None:
    target = GPU.model_copy(
        update={
            "gpus_per_node": 1,
            "account": "proj",
            "qos": "normal",
            "constraint": "a100",
            "exclusive": True,
        }
    )
    assert executor_parameters(target) == {
        "name": "hpcqueue-gpu",
        "timeout_min": 120,
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": 1,
        "cpus_per_task": 8,
        "mem_gb": 32,
        "slurm_partition": "gpu",
        "slurm_gres": "gpu:1",
        "slurm_account": "proj",
        "slurm_qos": "normal",
        "slurm_constraint": "a100",
        "slurm_array_parallelism": 4,
        "slurm_exclusive": True,
        "slurm_additional_parameters": {"reservation": "maint"},
    }


def test_a_short_time_limit_gets_its_checkpoint_signal_within_the_last_quarter() -> None:
    # submitit's default is 90 s before the limit: a one-minute job would be requeued before it began
    short = executor_parameters(GPU.model_copy(update={"time_limit_min": 1}))
    assert short["slurm_signal_delay_s"] == 15
    assert executor_parameters(GPU.model_copy(update={"time_limit_min": 5}))["slurm_signal_delay_s"] == 75
    assert "slurm_signal_delay_s" not in executor_parameters(GPU.model_copy(update={"time_limit_min": 6}))


def test_local_slots_deal_tasks_round_robin() -> None:
    assert _local_slots([0, 1, 2, 3, 4], 2) == [[0, 2, 4], [1, 3]]
    assert _local_slots([7], 4) == [[7]]
    assert _local_slots([], 2) == []


def test_arrays_are_split_to_respect_max_array_size() -> None:
    groups = [[i] for i in range(10)]
    arrays = split_for_max_array_size(groups, 4)
    assert arrays == [[[0], [1], [2], [3]], [[4], [5], [6], [7]], [[8], [9]]]
    assert split_for_max_array_size(groups, 1001) == [groups]
    with pytest.raises(ValueError, match="MaxArraySize"):
        split_for_max_array_size(groups, 0)


def test_collect_job_depends_on_every_array_whatever_their_outcome() -> None:
    assert collect_job_parameters("lowpower", ["101", "102"], account="proj") == {
        "name": "hpcqueue-collect",
        "timeout_min": 30,
        "nodes": 1,
        "tasks_per_node": 1,
        "cpus_per_task": 1,
        "mem_gb": 2.0,
        "slurm_partition": "lowpower",
        "slurm_additional_parameters": {"dependency": "afterany:101:102"},
        "slurm_account": "proj",
    }


# -------------------------------------------------------------------------------------------- in time

# 2026-11-21T23:00:00 in Paris (22:00 UTC): the golden times below are Paris local time, as sbatch reads them.
NOW = 1795298400.0


def test_tasks_are_grouped_by_target_and_begin_time() -> None:
    tasks = {0: "gpu", 1: "gpu", 2: "lowpower", 3: "gpu", 4: "gpu", 5: "lowpower", 6: "gpu"}
    begins = {
        1: NOW + 7200,
        3: NOW + 3600,
        4: NOW + 7200,
        5: NOW + 10,  # within NOW_S: counts as now
        6: NOW - 600,  # already past: now
    }
    assert start_groups(tasks, begins, now=NOW) == {
        ("gpu", None): [0, 6],
        ("gpu", NOW + 3600): [3],
        ("gpu", NOW + 7200): [1, 4],
        ("lowpower", None): [2, 5],
    }
    assert start_groups(tasks, {}, now=NOW) == {("gpu", None): [0, 1, 3, 4, 6], ("lowpower", None): [2, 5]}


def test_local_workers_are_dealt_their_tasks_in_order_of_begin_time() -> None:
    begins = {0: NOW + 7200, 1: None, 2: NOW + 3600, 3: None, 4: NOW + 3600}
    # order of begin: 1, 3 (now), 2, 4 (+1 h), 0 (+2 h); dealt round-robin onto two workers
    assert _local_slots([0, 1, 2, 3, 4], 2, begins) == [[1, 2, 0], [3, 4]]
    assert _local_slots([0, 1, 2, 3, 4], 3, begins) == [[1, 4], [3, 0], [2]]


def test_deferred_array_with_a_deadline_golden(paris_time: None) -> None:
    params = time_parameters(
        executor_parameters(GPU),
        cluster="slurm",
        now=NOW,
        begin_at=NOW + 3 * 3600 + 0.4,  # rounded up: never start before the planned time
        deadline_at=NOW + 8 * 3600 + 0.7,  # rounded down: never promise after the deadline
        predicted_runtime_s=[600.0, 1500.0],
    )
    assert params == {
        **executor_parameters(GPU),
        "slurm_additional_parameters": {
            "reservation": "maint",
            "begin": "2026-11-22T02:00:01",
            "deadline": "2026-11-22T07:00:00",
            "time_min": 55,  # ⌈(2 × 1500 s + 300 s) / 60⌉
        },
    }


def test_deferred_array_renders_begin_deadline_and_time_min_in_the_sbatch_script(
    paris_time: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through submitit's own sbatch rendering, as the array of three elements would be submitted."""
    import submitit

    fake_bin = tmp_path / "bin"  # submitit's Slurm executor looks for srun on PATH; nothing runs it here
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    params = time_parameters(
        executor_parameters(GPU),
        cluster="slurm",
        now=NOW,
        begin_at=NOW + 3 * 3600,
        deadline_at=NOW + 8 * 3600,
        predicted_runtime_s=[600.0, None],
    )
    executor = submitit.AutoExecutor(folder=tmp_path / "logs" / "%j", cluster="slurm")
    executor.update_parameters(**params)
    slurm_executor = executor._executor
    slurm_executor.parameters["map_count"] = 3  # what map_array sets for three elements
    script = slurm_executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    flags = [
        line.replace(str(tmp_path), "<tmp>") for line in script.splitlines() if line.startswith("#SBATCH")
    ]
    assert flags == [
        "#SBATCH --array=0-2%3",
        "#SBATCH --begin=2026-11-22T02:00:00",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --deadline=2026-11-22T07:00:00",
        "#SBATCH --error=<tmp>/logs/%A_%a/%A_%a_0_log.err",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --job-name=hpcqueue-gpu",
        "#SBATCH --mem=32GB",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --open-mode=append",
        "#SBATCH --output=<tmp>/logs/%A_%a/%A_%a_0_log.out",
        "#SBATCH --partition=gpu",
        "#SBATCH --reservation=maint",
        "#SBATCH --signal=USR2@90",
        "#SBATCH --time=120",
        "#SBATCH --time-min=120",  # one prediction unknown: the whole time limit
        "#SBATCH --wckey=submitit",
    ]


@pytest.mark.parametrize(
    ("begin_s", "deadline_s", "runtimes", "time_min"),
    [
        (3600, 8 * 3600, [60.0], 7),  # ⌈(120 + 300) / 60⌉
        (3600, 8 * 3600, [60.0, float("nan")], 120),  # an unknown prediction counts as the time limit
        (3600, 8 * 3600, [], 120),
        (3600, 8 * 3600, [4 * 3600.0], 120),  # never above the time limit
        (3600, 3600 + 20 * 60 + 30, [4 * 3600.0], 20),  # ⌊(deadline − begin) / 60⌋
        (3600, 3600 + 30, [60.0], 1),  # at least a minute (sbatch then refuses the job, saying why)
        (None, 10 * 60, [4 * 3600.0], 9),  # starting now: the window counts from a little after now
    ],
)
def test_time_min_lets_slurm_fit_the_job_before_the_deadline(
    begin_s: float | None, deadline_s: float, runtimes: list[float], time_min: int
) -> None:
    params = time_parameters(
        executor_parameters(GPU),
        cluster="slurm",
        now=NOW,
        begin_at=None if begin_s is None else NOW + begin_s,
        deadline_at=NOW + deadline_s,
        predicted_runtime_s=runtimes,
    )
    extra = params["slurm_additional_parameters"]
    assert extra["time_min"] == time_min
    assert ("begin" in extra) == (begin_s is not None)


def test_without_a_deadline_a_deferred_array_only_gets_its_begin(paris_time: None) -> None:
    params = time_parameters(executor_parameters(GPU), cluster="slurm", now=NOW, begin_at=NOW + 3600)
    assert params["slurm_additional_parameters"] == {"reservation": "maint", "begin": "2026-11-22T00:00:00"}
    assert time_parameters(executor_parameters(GPU), cluster="slurm", now=NOW) == executor_parameters(GPU)


def test_a_local_worker_s_time_limit_covers_its_wait() -> None:
    local = executor_parameters(Target(name="local", time_limit_min=30), tasks_in_job=2)
    assert time_parameters(local, cluster="local", now=NOW) == local
    # waits until the latest begin time, then runs its two tasks
    assert time_parameters(local, cluster="local", now=NOW, begin_at=NOW + 3600.5)["timeout_min"] == 60 + 61
    # with a deadline, until the deadline (a re-plan may move a task up to it)
    waits = time_parameters(local, cluster="local", now=NOW, begin_at=NOW + 3600, deadline_at=NOW + 7200)
    assert waits["timeout_min"] == 60 + 120
    assert "slurm_additional_parameters" not in waits


def _batch(tmp_path: Path, n_tasks: int, schedule: dict) -> BatchDir:
    specs = [
        {"task_index": i, "target": "local", "n_requests": 1, "predicted_runtime_s": 1.0}
        for i in range(n_tasks)
    ]
    return create_batch(
        tmp_path,
        "hq-jobs",
        manifest={"batch_id": "hq-jobs", "tasks": specs},
        plan=pd.DataFrame({"line": range(1, n_tasks + 1), "task_index": range(n_tasks)}),
        task_specs=specs,
        raw_lines=pd.Series(["{}"] * n_tasks),
        schedule=schedule,
    )


def test_local_submission_keeps_its_workers_and_records_begin_times(tmp_path: Path) -> None:
    """Real local workers (submitit's local executor) running ``len``: two processes, not one per start."""
    now = time.time()
    later, latest = now + 3600.0, now + 7200.0
    batch = _batch(tmp_path, 4, {"deadline_at": None, "begin_at": {"0": latest, "2": later, "3": now + 5}})
    target = Target(name="local", time_limit_min=5, array_parallelism=2)
    submitted = submit_tasks(batch, {"local": target}, dict.fromkeys(range(4), "local"), run=len)
    records = json.loads((batch.path / "jobs.json").read_text())
    assert records == submitted.records
    # order of begin: 1 and 3 (now: 3's begin is within a minute), then 2, then 0
    assert [r["task_indices"] for r in records] == [[1, 2], [3, 0]]
    assert [r["begin_at"] for r in records] == [None, None]
    assert {r["executor"] for r in records} == {"local"} and submitted.sbatch_calls == 0
    for record in records:  # the workers (children of this process) run ``len`` and end: reap them
        pid, limit = int(record["job_id"]), time.monotonic() + 60
        while os.waitpid(pid, os.WNOHANG) == (0, 0) and time.monotonic() < limit:
            time.sleep(0.1)
