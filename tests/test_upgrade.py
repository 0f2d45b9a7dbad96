"""Upgrades keep queued work running: jobs pickled by an older hpcqueue still run, requeue and collect.

submitit pickles what a job runs by module path. The files under tests/fixtures/entrypoints/ were pickled by
earlier layouts of the package (hpcqueue 0.1.0's flat modules, then the stage packages; see the README there);
each is loaded with today's code, as a job that waited in the queue across an upgrade would be, and run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from submitit.core.utils import DelayedSubmission

from hpcqueue import submission
from hpcqueue.config import resolve
from hpcqueue.ledger import Ledger
from tests.conftest import EXAMPLES, REPO

PICKLED = REPO / "tests" / "fixtures" / "entrypoints"
GENERATIONS = ["", "stages-"]  # file-name prefixes: 0.1.0's flat modules, the stage packages


def _load(name: str) -> DelayedSubmission:
    return DelayedSubmission.load(PICKLED / name)


@pytest.mark.parametrize("generation", GENERATIONS, ids=["0.1-flat", "stages"])
def test_every_pickled_entry_point_resolves_to_today_s_code(generation: str) -> None:
    from hpcqueue.ledger.collect import collect_job
    from hpcqueue.profiles.sweep import SweepConfig, sweep_job
    from hpcqueue.worker import TaskRunner

    assert isinstance(_load(f"{generation}worker-task-runner.pkl").function, TaskRunner)
    assert _load(f"{generation}collect-job.pkl").function is collect_job
    sweep = _load(f"{generation}profile-sweep.pkl")
    assert sweep.function is sweep_job
    assert sweep.args[0] == SweepConfig.quick("hpcqueue-demo")  # the pickled config still means the same


def test_the_old_fingerprint_job_runs() -> None:
    from hpcqueue.profiles.fingerprint import fingerprint

    job = _load("fingerprint.pkl")
    assert job.function is fingerprint
    assert {"cpu_model", "cpu_count", "gpus"} <= set(job.result())


@pytest.mark.slow
@pytest.mark.parametrize("generation", GENERATIONS, ids=["0.1-flat", "stages"])
def test_a_queued_task_and_its_collect_job_run_requeue_and_collect(
    generation: str, hq_cache: Path, tmp_path: Path
) -> None:
    settings = resolve(
        None,
        flags={
            "batch_root": str(tmp_path / "batches"),
            "db_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
            "cache_dir": str(hq_cache),
            "max_new_tokens": 4,
        },
        environ={},
    )
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(EXAMPLES.joinpath("prompts.jsonl").read_text().splitlines(True)[:3]))
    prepared = submission.prepare(prompts, settings)
    with Ledger(settings.db_url) as ledger:
        batch, created = submission.create_or_open(prepared, ledger)
    assert created and len(batch.task_indices()) == 1
    task_dir = str(batch.task_dir(0))

    runner = _load(f"{generation}worker-task-runner.pkl")
    runner.args = ([task_dir],)  # the queued job's own task directory
    assert [s["state"] for s in runner.result()] == ["completed"]
    assert json.loads((batch.task_dir(0) / "metrics.json").read_text())["n_succeeded"] == 3
    # Requeued after a time-out or pre-emption: submitit pickles the checkpoint with today's code, and the
    # requeued job finds the task done and runs nothing twice.
    runner.function.checkpoint(*runner.args).dump(tmp_path / "requeued.pkl")
    assert [s["state"] for s in DelayedSubmission.load(tmp_path / "requeued.pkl").result()] == ["skipped"]

    collect = _load(f"{generation}collect-job.pkl")
    collect.args = (str(batch.path), settings.db_url)
    assert collect.result() == {"batch_id": batch.batch_id, "tasks": {"completed": 1}}
    with Ledger(settings.db_url) as ledger:
        report = ledger.batch_report(batch.batch_id)
    assert (report["succeeded"], report["failed"], report["pending"]) == (3, 0, 0)
    assert report["energy_method"] in ("measured", "estimated")
