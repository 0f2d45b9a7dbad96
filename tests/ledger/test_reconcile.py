"""hpcqueue.ledger.reconcile and its Slurm side (``slurm.sacct_energy``): the ledger's task energy beside
sacct's ConsumedEnergyRaw, with recorded Slurm output (tests/fixtures/slurm/) for a cluster with IPMI energy
accounting and for one without; and against the real local cluster, which has none."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from bench.ledger_queries import fill_ledger
from hpcqueue.dispatch import slurm
from hpcqueue.errors import BatchNotFoundError, SlurmError
from hpcqueue.ledger import Ledger
from hpcqueue.ledger.reconcile import reconcile, slurm_job_id_of
from tests.helpers import wait_for

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"


class RecordedSlurm:
    """A stand-in for ``subprocess.run`` that answers Slurm commands with recorded output."""

    def __init__(self, **outputs: str) -> None:
        self.outputs = outputs  # {"sacct": text, "config": text, "node": text}; missing: the command fails
        self.calls: list[list[str]] = []

    def __call__(self, args: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(args))
        key = "sacct" if args[0] == "sacct" else args[2]
        if key not in self.outputs:
            return subprocess.CompletedProcess(
                args, 1, "", "slurm_load_node error: Unable to contact slurm controller"
            )
        return subprocess.CompletedProcess(args, 0, self.outputs[key], "")


def recorded(name: str) -> str:
    return (FIXTURES / name).read_text()


IPMI = {
    "sacct": recorded("sacct_energy_ipmi.txt"),
    "config": recorded("scontrol_config_ipmi.txt"),
    "node": recorded("scontrol_nodes_ipmi.txt"),
}


@pytest.fixture()
def ledger(ledger_url: str) -> Iterator[Ledger]:
    """Two batches of three Slurm array tasks: jobs 1000_0..2 and 1001_0..2 (batch hq-0000000, hq-0000001)."""
    with Ledger(ledger_url) as opened:
        fill_ledger(opened, 600, task_size=100, batch_tasks=3, running_share=0.0, seed=1)
        yield opened


def ledger_energy(ledger: Ledger, batch: str) -> dict[int, float]:
    with ledger.connect() as conn:
        rows = conn.execute(text("SELECT task_index, energy_j FROM tasks WHERE batch_id = :b"), {"b": batch})
        return {int(i): float(e) for i, e in rows}


def test_sacct_energy_lines_are_parsed_with_their_steps() -> None:
    records = slurm.parse_sacct_energy(IPMI["sacct"])
    assert [(r.job_id, r.step) for r in records[:3]] == [
        ("1000_0", None),
        ("1000_0", "batch"),
        ("1000_0", "extern"),
    ]
    assert all(r.job_id != "1000_[3-5]" for r in records)  # never-started remainders have no energy
    assert records[0].energy_j == 1843211.0 and records[0].alloc_cpus == 64 and records[0].node == "gpu01"
    cancelled = [r for r in records if r.job_id == "1001_1"]
    assert (
        cancelled[0].state == "CANCELLED" and cancelled[0].energy_j is None and cancelled[1].energy_j == 0.0
    )


def test_one_sacct_call_with_every_step_for_all_the_jobs() -> None:
    fake = RecordedSlurm(**IPMI)
    records = slurm.sacct_energy(["1000_0", "1000_2", "1001"], runner=fake)
    (call,) = fake.calls
    assert call[:3] == ["sacct", "--parsable2", "--noheader"] and "-X" not in call
    assert call[-1] == "--jobs=1000,1001"
    assert {r.job_id for r in records} == {"1000_0", "1000_2", "1001_0", "1001_1"}


def test_energy_is_compared_per_task_with_exclusive_and_shared_allocations(ledger: Ledger) -> None:
    fake = RecordedSlurm(**IPMI)
    result = reconcile(ledger, batch="hq-0000000", runner=fake)
    assert result.energy_accounting and result.energy_plugin == "acct_gather_energy/ipmi"
    by_job = {task.job_id: task for task in result.tasks}
    assert sorted(by_job) == ["1000_0", "1000_1", "1000_2"]
    ours = ledger_energy(ledger, "hq-0000000")
    assert by_job["1000_0"].slurm_energy_j == 1843211.0
    assert by_job["1000_0"].ratio == pytest.approx(ours[0] / 1843211.0)
    assert by_job["1000_0"].allocation == by_job["1000_1"].allocation == "exclusive"
    assert by_job["1000_2"].allocation == "shared"  # 8 of gpu03's 128 CPUs
    assert "other jobs" in by_job["1000_2"].note
    notes = " ".join(result.notes)
    assert "whole node at its power supply (IPMI), GPUs included" in notes
    assert "exclusive" in notes and "1 task(s) shared their node" in notes
    assert [call[0] for call in fake.calls] == ["scontrol", "sacct", "scontrol"]  # config, one sacct, nodes


def test_a_job_line_without_energy_takes_its_longest_step(ledger: Ledger) -> None:
    result = reconcile(ledger, batch="hq-0000001", runner=RecordedSlurm(**IPMI))
    by_job = {task.job_id: task for task in result.tasks}
    assert by_job["1001_0"].slurm_energy_j == 902577.0  # the extern step spans the allocation
    assert by_job["1001_1"].slurm_energy_j is None and "no energy" in by_job["1001_1"].note
    assert result.not_in_sacct == ["1001_2"]


def test_without_node_sizes_it_says_it_cannot_tell(ledger: Ledger) -> None:
    outputs = {key: value for key, value in IPMI.items() if key != "node"}
    result = reconcile(ledger, batch="hq-0000000", runner=RecordedSlurm(**outputs))
    assert {task.allocation for task in result.tasks} == {"unknown"}
    assert any("cannot tell whether the allocation was exclusive" in note for note in result.notes)
    assert result.tasks[0].slurm_energy_j == 1843211.0


def test_a_cluster_without_energy_accounting_is_said_plainly(ledger: Ledger) -> None:
    fake = RecordedSlurm(sacct=recorded("sacct_energy_none.txt"), config=recorded("scontrol_config_none.txt"))
    result = reconcile(ledger, runner=fake)
    assert not result.energy_accounting and result.energy_plugin == "acct_gather_energy/none"
    assert all(task.slurm_energy_j is None and task.ratio is None for task in result.tasks)
    assert len(result.tasks) == 6
    (note,) = result.notes
    assert note.startswith(
        "This cluster has no energy accounting: AcctGatherEnergyType = acct_gather_energy/none"
    )


def test_a_plugin_that_gathered_nothing_is_no_energy_accounting_either(ledger: Ledger) -> None:
    zeros = "\n".join(
        f"1000_{i}|COMPLETED|gpu01|1|64|\n1000_{i}.batch|COMPLETED|gpu01|1|64|0" for i in range(3)
    )
    config = recorded("scontrol_config_ipmi.txt").replace("ipmi", "rapl")
    fake = RecordedSlurm(sacct=zeros, config=config, node=IPMI["node"])
    result = reconcile(ledger, batch="hq-0000000", runner=fake)
    assert not result.energy_accounting
    assert "ConsumedEnergyRaw is empty or 0 for every job and step" in result.notes[0]


def test_rapl_is_said_not_to_see_gpus(ledger: Ledger) -> None:
    config = recorded("scontrol_config_ipmi.txt").replace("ipmi", "rapl")
    result = reconcile(ledger, batch="hq-0000000", runner=RecordedSlurm(**{**IPMI, "config": config}))
    assert any("RAPL does not see GPUs" in note for note in result.notes)


def test_an_unknown_batch_and_a_failing_sacct_are_errors(ledger: Ledger) -> None:
    with pytest.raises(BatchNotFoundError, match="hq-nope"):
        reconcile(ledger, batch="hq-nope", runner=RecordedSlurm(**IPMI))
    with pytest.raises(SlurmError, match="sacct"):
        reconcile(ledger, runner=RecordedSlurm(config=IPMI["config"]))


def test_the_job_id_comes_from_the_submission_or_the_workers_record() -> None:
    assert slurm_job_id_of({"job_id": "77_3", "slurm_job_id": "80"}) == "77_3"
    assert slurm_job_id_of({"job_id": None, "slurm_job_id": "77", "slurm_array_task_id": 3}) == "77_3"
    assert slurm_job_id_of({"job_id": "local-12", "slurm_job_id": None}) is None


# ------------------------------------------------------------------------------------------- real Slurm


@pytest.mark.slurm
def test_the_local_cluster_has_no_energy_accounting(real_slurm: None, ledger: Ledger, tmp_path: Path) -> None:
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--array=0-2",
            "-p",
            "lowpower",
            "-o",
            str(tmp_path / "%A_%a.out"),
            "--wrap",
            "true",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    array_id = submitted.stdout.strip().split(";")[0]
    with ledger.engine.begin() as conn:  # the first batch's tasks ran as this array
        conn.execute(
            text("UPDATE tasks SET job_id = :a || '_' || task_index WHERE batch_id = 'hq-0000000'"),
            {"a": array_id},
        )
    # slurmctld hands finished jobs to slurmdbd asynchronously
    wait_for(
        lambda: len({r.job_id for r in slurm.sacct_energy([array_id]) if r.state == "COMPLETED"}) == 3,
        timeout_s=240,
        what=f"array {array_id} to finish in sacct",
    )
    result = reconcile(ledger, batch="hq-0000000")
    assert result.energy_plugin == "acct_gather_energy/none"
    assert not result.energy_accounting and result.not_in_sacct == []
    assert [task.job_id for task in result.tasks] == [f"{array_id}_{i}" for i in range(3)]
    assert "has no energy accounting" in result.notes[0]
