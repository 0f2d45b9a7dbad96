"""The local Slurm cluster (slurm/local-cluster.sh) behaves like the real clusters hpcqueue targets.

These tests talk to the running cluster through the same commands hpcqueue uses (sbatch, sacct, scontrol,
sinfo) with SLURM_CONF from the environment, as `make test` sets it.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

if os.environ.get("HPCQUEUE_TEST_SLURM") != "1":
    if os.environ.get("CI") == "true":
        pytest.fail(
            "CI=true but HPCQUEUE_TEST_SLURM is not 1: CI must run the local Slurm cluster "
            "(tests/services/run.sh starts it with slurm/local-cluster.sh start)",
            pytrace=False,
        )
    pytest.skip("local Slurm cluster not running: slurm/local-cluster.sh start", allow_module_level=True)

pytestmark = pytest.mark.slurm

PARTITIONS = ("lowpower", "gpu")
MAX_ARRAY_SIZE = int(os.environ.get("HPCQUEUE_SLURM_MAX_ARRAY_SIZE", "16"))
JOB_TIMEOUT_S = 120


def slurm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one Slurm command with the environment's SLURM_CONF; fail with its output when it fails."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def sbatch(*args: str) -> str:
    """Submit a batch job and return its job id."""
    out = slurm("sbatch", "--parsable", "--time=5", *args).stdout.strip()
    return out.split(";")[0]


def sacct_rows(job_id: str, expected_rows: int) -> list[tuple[str, ...]]:
    """(JobID, Partition, State) of each allocation of the job, once accounting has them all in a final state.

    Polls rather than `sbatch --wait`, whose back-off adds seconds. slurmctld hands records to slurmdbd
    asynchronously: right after a job ends, sacct may list it COMPLETED with an empty partition for a moment.
    """
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        out = slurm("sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,Partition,State").stdout
        rows = [tuple(line.split("|")) for line in out.splitlines() if line.strip()]
        final = [r for r in rows if r[1] and r[2] not in ("PENDING", "RUNNING", "COMPLETING")]
        if len(final) >= expected_rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_both_partitions_are_up_and_usable() -> None:
    out = slurm("sinfo", "-h", "-o", "%P|%a|%T|%N").stdout
    seen = {}
    for line in out.splitlines():
        partition, avail, state, nodes = line.split("|")
        seen[partition.rstrip("*")] = (avail, state, nodes, partition.endswith("*"))
    assert set(seen) == set(PARTITIONS), out
    for partition in PARTITIONS:
        avail, state, _, _ = seen[partition]
        assert avail == "up", out
        assert state in ("idle", "mixed", "allocated", "completing"), out
    assert seen["gpu"][2] == "gpu01"
    assert seen["lowpower"][2] == "lp01"
    assert seen["lowpower"][3], "lowpower should be the default partition"


@pytest.mark.parametrize("partition", PARTITIONS)
def test_job_array_completes_and_sacct_lists_its_tasks(partition: str, tmp_path: Path) -> None:
    job_id = sbatch(
        f"--partition={partition}",
        "--array=0-2",
        f"--output={tmp_path}/%A_%a.out",
        "--wrap",
        'echo "task $SLURM_ARRAY_TASK_ID on $SLURMD_NODENAME"',
    )
    rows = sacct_rows(job_id, 3)
    assert sorted(rows) == [(f"{job_id}_{i}", partition, "COMPLETED") for i in range(3)], rows
    node = "gpu01" if partition == "gpu" else "lp01"
    for i in range(3):
        assert (tmp_path / f"{job_id}_{i}.out").read_text().strip() == f"task {i} on {node}"


def test_gpu_gres_is_allocated_on_the_gpu_partition(tmp_path: Path) -> None:
    out = tmp_path / "gpu.out"
    job_id = sbatch(
        "--partition=gpu", "--gres=gpu:1", f"--output={out}", "--wrap", "echo $SLURM_GPUS_ON_NODE"
    )
    assert sacct_rows(job_id, 1) == [(job_id, "gpu", "COMPLETED")]
    assert out.read_text().strip() == "1"


def test_more_gpus_than_the_node_has_are_refused() -> None:
    proc = slurm("sbatch", "--partition=gpu", "--gres=gpu:3", "--wrap", "true", check=False)
    assert proc.returncode != 0
    assert "Requested node configuration is not available" in proc.stderr


def test_scontrol_reports_the_small_max_array_size() -> None:
    out = slurm("scontrol", "show", "config").stdout
    values = dict(
        (key.strip(), value.strip()) for key, _, value in (line.partition("=") for line in out.splitlines())
    )
    assert values["MaxArraySize"] == str(MAX_ARRAY_SIZE)


def test_an_array_larger_than_max_array_size_is_refused() -> None:
    too_big = slurm("sbatch", f"--array=0-{MAX_ARRAY_SIZE}", "--wrap", "true", check=False)
    assert too_big.returncode != 0
    assert "Invalid job array specification" in too_big.stderr
    # The largest array that fits is accepted: held, then cancelled, so it never runs.
    fits = slurm("sbatch", "--parsable", "--hold", f"--array=0-{MAX_ARRAY_SIZE - 1}", "--wrap", "true")
    slurm("scancel", fits.stdout.strip().split(";")[0])
