"""Target → submitit parameters: the one mapping, checked against golden values."""

from __future__ import annotations

import pytest

from hpcqueue.config import Target
from hpcqueue.dispatch.executor import executor_parameters
from hpcqueue.dispatch.jobs import _local_slots, collect_job_parameters, split_for_max_array_size


def test_local_target_parameters() -> None:
    params = executor_parameters(Target(name="local", time_limit_min=30), tasks_in_job=3)
    assert params == {"name": "hpcqueue-local", "timeout_min": 90, "nodes": 1, "tasks_per_node": 1}


def test_slurm_target_parameters_golden() -> None:
    target = Target(
        name="gpu",
        executor="slurm",
        partition="gpu",
        gres="gpu:1",
        gpus_per_node=1,
        cpus_per_task=8,
        mem_gb=32,
        time_limit_min=120,
        array_parallelism=4,
        account="proj",
        qos="normal",
        constraint="a100",
        exclusive=True,
        extra_sbatch={"reservation": "maint"},
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
