"""A real submission on the local Slurm cluster with hostile values: a target name with spaces, request ids
with ``$(...)``, backticks, quotes and newlines, and a batch root and input path with spaces, quotes and
``$(...)``. sbatch reads the script submitit wrote, the workers run, and everything arrives as data."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TARGET = "low power"


def test_hostile_values_through_sbatch_arrive_intact_and_run_nothing(
    real_slurm: None, hq_env: dict[str, str], tmp_path: Path
) -> None:
    canary = f"pwned-{os.getpid()}"
    root = tmp_path / f"batch root 'q' \"$(touch {canary})\" ;"
    config = tmp_path / "cluster.toml"
    config.write_text(
        f'task_size = 2\n[targets."{TARGET}"]\nexecutor = "slurm"\npartition = "lowpower"\n'
        'hardware = "m1-pro"\nprofile = "llama-2-7b-chat.m1-pro.wilkins2024"\ncpus_per_task = 1\n'
        "mem_gb = 2\ntime_limit_min = 30\narray_parallelism = 2\n"
    )
    ids = [f"$(touch {canary})", f"`touch {canary}`", f"a'b\"c; touch {canary}", "new\nline", "../../etc"]
    prompts = tmp_path / f"in put's `touch {canary}`.jsonl"
    lines = [json.dumps({"id": i, "prompt": "Hi", "max_new_tokens": 3}) + "\n" for i in ids]
    prompts.write_text("".join(lines))
    env = {**hq_env, "HPCQUEUE_BATCH_ROOT": str(root)}

    submit = ["submit", str(prompts), "--config", str(config), "--meter", "estimate", "--wait", "--json"]
    done = run_cli(submit, env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["succeeded"] == len(ids) and list(report["per_target"]) == [TARGET]

    results = run_cli(["results", report["batch_id"], "--config", str(config)], env)
    assert results.returncode == 0, results.stderr
    assert [json.loads(line)["id"] for line in results.stdout.splitlines()] == ids

    batch = Path(report["batch_dir"])
    assert batch.parent == root
    scripts = sorted((batch / "logs" / TARGET).glob("*/*_submission.sh"))
    assert scripts, f"no sbatch script under {batch / 'logs' / TARGET}"
    assert f"#SBATCH --job-name='hpcqueue-{TARGET}'" in scripts[0].read_text()
    jobs = json.loads((batch / "jobs.json").read_text())
    array = jobs[0]["job_id"].split("_")[0]
    sacct = ["sacct", "-X", "-n", "-P", "-j", array, "--format=JobName%80"]
    names = subprocess.run(sacct, capture_output=True, text=True, check=True).stdout.split("\n")
    assert f"hpcqueue-{TARGET}" in names
    for where in (REPO, tmp_path, root, batch, Path.home()):
        assert not (where / canary).exists(), f"{where / canary} was created"
