"""A plan in time, run for real on the local Slurm cluster: deferred arrays wait for their begin time, keep
the deadline, can be moved by ``replan``, and the ledger accounts each task at the hours it really ran.

The sites are synthetic and short: carbon intensity every 30 s, high for the first minute at site ``windy``
and low after, constant at site ``steady``; slots of 30 s. The ``unaware`` policy deals the requests to both
targets, so the plan runs ``gpu`` (steady) at once and defers ``lowpower`` (windy) to the low hours.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.faults.invariant import assert_exactly_once
from tests.helpers import ledger_db, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

if os.environ.get("HPCQUEUE_TEST_SLURM") != "1":
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true but HPCQUEUE_TEST_SLURM != 1: CI must start the local Slurm cluster")
    pytest.skip("local Slurm cluster not running: slurm/local-cluster.sh start", allow_module_level=True)

STEP_S = 30
HIGH, STEADY = 600.0, 300.0


def low(k: int) -> float:
    """Low carbon intensity that changes every step, so that averages over different intervals differ."""
    return 40.0 + 15.0 * (k % 4)


def write_carbon(path: Path, origin: dt.datetime, low_from_step: int, *, flat: bool = False) -> None:
    """``time,value`` every 30 s from 5 minutes before ``origin`` to an hour after it (``flat``: the low
    hours at one value, so that a plan in them starts at once)."""
    rows = ["time,value"]
    for k in range(-10, 120):
        moment = origin + dt.timedelta(seconds=k * STEP_S)
        value = HIGH if k < low_from_step else (low(0) if flat else low(k))
        rows.append(f"{moment.strftime('%Y-%m-%dT%H:%M:%SZ')},{value}")
    path.write_text("\n".join(rows) + "\n")


def mean_carbon(path: Path, start: float, end: float) -> float:
    """The series' time-weighted mean over [start, end): each sample holds for its 30 s (computed here
    from the file, independently of hpcqueue's resampling)."""
    samples = []
    for line in path.read_text().splitlines()[1:]:
        moment, value = line.split(",")
        when = dt.datetime.strptime(moment, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
        samples.append((when.timestamp(), float(value)))
    area = 0.0
    for when, value in samples:
        overlap = min(end, when + STEP_S) - max(start, when)
        area += max(0.0, overlap) * value
    return area / (end - start)


CONFIG = """
max_new_tokens = 16
task_size = 2
policy = "unaware"
slot = "30s"
deadline = "8m"
objective = "carbon=1,runtime=0.01"

[sites.steady]
carbon = {steady}
cooling = 1.2

[sites.windy]
carbon = "carbon.csv"
cooling = 1.1

[targets.gpu]
executor = "slurm"
partition = "gpu"
site = "steady"
hardware = "a100-40g"
profile = "llama-2-7b-chat.swing-a100.wilkins2024"
gres = "gpu:1"
cpus_per_task = 1
mem_gb = 2
time_limit_min = 30
array_parallelism = 2
meter = "estimate"

[targets.lowpower]
executor = "slurm"
partition = "lowpower"
site = "windy"
hardware = "m1-pro"
profile = "llama-2-7b-chat.m1-pro.wilkins2024"
cpus_per_task = 1
mem_gb = 2
time_limit_min = 30
array_parallelism = 2
meter = "estimate"
"""


def scontrol_job(job_id: str) -> list[dict[str, str]]:
    """``scontrol show job -o`` as one dict per record (an array shows one record per element)."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    records = []
    for line in out.splitlines():
        fields = {}
        for word in line.split():
            key, sep, value = word.partition("=")
            if sep:
                fields[key] = value
        records.append(fields)
    return records


def slurm_time(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()  # local time, as Slurm prints


def sacct_times(job_ids: list[str]) -> dict[str, tuple[float, float]]:
    """Start and End of each array element, once accounting has both."""
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-j", ",".join(job_ids), "--format=JobID,State,Start,End"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "SLURM_TIME_FORMAT": "standard"},
    ).stdout
    times = {}
    for line in out.splitlines():
        job_id, state, start, end = line.split("|")
        if state.startswith("COMPLETED") and start[:1].isdigit() and end[:1].isdigit():
            times[job_id] = (slurm_time(start), slurm_time(end))
    return times


def test_deferred_arrays_wait_keep_the_deadline_move_and_are_accounted_at_real_hours(
    hq_env: dict[str, str], tmp_path: Path
) -> None:
    origin = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    carbon = tmp_path / "carbon.csv"
    write_carbon(carbon, origin, low_from_step=2)
    config = tmp_path / "cluster.toml"
    config.write_text(CONFIG.format(steady=STEADY))
    prompts = tmp_path / "prompts.jsonl"
    with open(prompts, "w", encoding="utf-8") as handle:
        for i in range(8):
            prompt = "Explain how a batch scheduler shares nodes." + " Please be brief." * (i % 3)
            handle.write(json.dumps({"id": f"p{i}", "prompt": prompt, "max_new_tokens": 16}) + "\n")

    submitted = run_cli(["submit", str(prompts), "--config", str(config), "--json"], hq_env)
    assert submitted.returncode == 0, submitted.stderr
    info = json.loads(submitted.stdout)
    batch_id, batch_dir = info["batch_id"], Path(info["batch_dir"])
    deadline_at = info["deadline_at"]
    assert set(info["deferred"]) == {"lowpower"}, info["deferred"]
    begin_at = info["deferred"]["lowpower"][0]["begin_at"]
    assert begin_at >= origin.timestamp() + 2 * STEP_S - 1

    jobs = [r for r in json.loads((batch_dir / "jobs.json").read_text()) if r.get("kind") != "collect"]
    arrays = {r["target"]: r["job_id"].split("_")[0] for r in jobs}
    # The deferred array waits with its begin time and carries the deadline; the other starts at once.
    for record in scontrol_job(arrays["lowpower"]):
        assert record["JobState"] == "PENDING", record
        assert abs(slurm_time(record["EligibleTime"]) - begin_at) <= 1, record
        assert abs(slurm_time(record["Deadline"]) - deadline_at) <= 1, record
    for record in scontrol_job(arrays["gpu"]):
        assert abs(slurm_time(record["Deadline"]) - deadline_at) <= 1, record

    status = run_cli(["status", batch_id, "--json"], hq_env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["per_target"]["lowpower"]["deferred"] == 2

    # A new series (the low hours start later): replan moves the pending tasks, and only them.
    write_carbon(carbon, origin, low_from_step=4)
    replanned = run_cli(["replan", batch_id, "--config", str(config), "--json"], hq_env)
    assert replanned.returncode == 0, replanned.stderr
    moves = json.loads(replanned.stdout)
    moved = {m["task_index"]: m for m in moves["moved"]}
    assert moved and {m["target"] for m in moved.values()} == {"lowpower"}, moves
    new_begin = max(m["new_begin_at"] for m in moved.values())
    assert new_begin >= origin.timestamp() + 4 * STEP_S - 1
    for record in scontrol_job(arrays["lowpower"]):
        assert record["JobState"] == "PENDING", record
        assert abs(slurm_time(record["EligibleTime"]) - new_begin) <= 1, record

    finished = run_cli(["status", batch_id, "--watch", "--json"], hq_env, timeout=420)
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout)["done"]

    element_ids = sorted({r["job_id"] for r in jobs})

    def all_accounted() -> dict[str, tuple[float, float]] | None:
        times = sacct_times(element_ids)
        return times if len(times) == len(element_ids) else None

    real = wait_for(all_accounted, 60, "sacct to list every element's start and end", interval_s=2)
    for record in jobs:
        start, end = real[record["job_id"]]
        assert end <= deadline_at, record
        if record["target"] == "lowpower":
            assert start >= new_begin, (record, start, new_begin)

    run_cli(["collect", batch_id], hq_env)  # accounting needs sacct's end times; this look has them
    with ledger_db(hq_env) as db:
        rows = db.execute(
            "SELECT task_index, target, site, job_id, energy_j, pue, carbon_g_per_kwh, carbon_g, "
            "run_started_at, run_ended_at, run_times_source, factor_kinds, planned_start_at, planned_end_at "
            "FROM tasks ORDER BY task_index"
        ).fetchall()
        spread = db.execute(
            "SELECT task_index, SUM(carbon_g) FROM requests GROUP BY task_index ORDER BY task_index"
        ).fetchall()
    assert len(rows) == 4
    for row in rows:
        _index, _target, site, job_id, energy, pue, intensity, carbon_g, *times = row
        run_started, run_ended, source, kinds, planned_start, planned_end = times
        assert source == "sacct", row
        start, end = real[job_id]
        assert abs(_epoch(run_started) - start) < 1 and abs(_epoch(run_ended) - end) < 1, row
        expected = mean_carbon(carbon, start, end) if site == "windy" else STEADY
        assert intensity == pytest.approx(expected, rel=1e-9), row
        assert carbon_g == pytest.approx(energy * pue / 3.6e6 * expected, rel=1e-9), row
        assert pue == pytest.approx(1.1 if site == "windy" else 1.2)
        factor_kinds = json.loads(kinds)
        assert factor_kinds["pue"] == "assumed"
        assert factor_kinds["carbon"] == ("series" if site == "windy" else "assumed")
        # the accounted interval is the one Slurm ran, never earlier than the planned start
        assert start >= _epoch(planned_start) - 1 and _epoch(planned_end) > _epoch(planned_start), row
    for (index, total), row in zip(spread, rows, strict=True):
        assert total == pytest.approx(row[7], rel=1e-9), index

    batches = run_cli(["ledger", "batches", "--format", "json"], hq_env)
    assert batches.returncode == 0, batches.stderr
    (entry,) = [b for b in json.loads(batches.stdout) if b["id"] == batch_id]
    assert entry["plan"]["carbon_g"] > 0
    assert {"run_at_submit", "best_window", "unaware"} <= set(entry["baselines"])
    assert entry["baselines"]["run_at_submit"]["carbon_g"] > entry["plan"]["carbon_g"]


def _epoch(value: str | float) -> float:
    """A timestamp read back from SQLite (naive UTC text) as epoch seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    return dt.datetime.fromisoformat(str(value)).replace(tzinfo=dt.timezone.utc).timestamp()


def slurm_command(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}"
    return done.stdout


def restart_slurmctld() -> None:
    """Stop slurmctld (SIGTERM, as an admin's restart does) and start it again with the cluster's script;
    waiting jobs come back from its StateSaveLocation."""
    state = Path(os.environ.get("HPCQUEUE_SLURM_DIR", "/tmp/hpcqueue-local-slurm"))
    pid = int((state / "run" / "slurmctld.pid").read_text())
    os.kill(pid, 15)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 60, "slurmctld to stop")
    script = Path(__file__).resolve().parents[2] / "slurm" / "local-cluster.sh"
    subprocess.run([str(script), "start"], check=True, capture_output=True, timeout=120)


def test_deferred_work_through_a_cancel_a_slurmctld_restart_and_a_passed_deadline(
    hq_env: dict[str, str], tmp_path: Path
) -> None:
    """Every request ends with exactly one result: a deferred element cancelled while it waits is lost and
    run again; the waiting arrays survive a slurmctld restart with their begin times; work held past the
    deadline is removed by Slurm (DEADLINE), shown as expired, and retry asks for a new deadline and
    re-plans it."""
    origin = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    carbon = tmp_path / "carbon.csv"
    write_carbon(carbon, origin, low_from_step=2)
    config = tmp_path / "cluster.toml"
    config.write_text(CONFIG.format(steady=STEADY).replace('deadline = "8m"', 'deadline = "150s"'))
    prompts = tmp_path / "prompts.jsonl"
    with open(prompts, "w", encoding="utf-8") as handle:
        for i in range(8):
            handle.write(json.dumps({"id": f"p{i}", "prompt": f"Say {i}.", "max_new_tokens": 8}) + "\n")
    submitted = run_cli(["submit", str(prompts), "--config", str(config), "--json"], hq_env)
    assert submitted.returncode == 0, submitted.stderr
    info = json.loads(submitted.stdout)
    batch_id, batch_dir, deadline_at = info["batch_id"], Path(info["batch_dir"]), info["deadline_at"]
    jobs = [r for r in json.loads((batch_dir / "jobs.json").read_text()) if r.get("target") == "lowpower"]
    assert len(jobs) == 2 and all(r["begin_at"] for r in jobs), jobs
    cancelled, held = jobs
    begin = {r["job_id"]: slurm_time(scontrol_job(r["job_id"])[0]["EligibleTime"]) for r in jobs}

    slurm_command("scancel", cancelled["job_id"])  # someone cancels one waiting element
    restart_slurmctld()
    (record,) = scontrol_job(held["job_id"])
    assert record["JobState"] == "PENDING" and slurm_time(record["EligibleTime"]) == begin[held["job_id"]]
    slurm_command("scontrol", "hold", held["job_id"])  # held (say, for maintenance) past the deadline

    wait_for(lambda: time.time() > deadline_at + 2, 240, "the deadline to pass", interval_s=1)
    slurm_command("scontrol", "release", held["job_id"])
    wait_for(
        lambda: scontrol_job(held["job_id"])[0]["JobState"] == "DEADLINE",
        120,
        "Slurm to remove the job",
        interval_s=2,
    )
    status = json.loads(run_cli(["status", batch_id, "--json"], hq_env).stdout)
    states = {p["task_index"]: p["status"] for p in status["problems"]}
    assert sorted(states.values()) == ["expired", "lost"], status["problems"]
    assert status["per_target"]["gpu"]["completed"] == 2
    assert_exactly_once(prompts, batch_dir, hq_env["HPCQUEUE_DB_URL"], complete=False)

    refused = run_cli(["retry", batch_id], hq_env)
    assert refused.returncode != 0 and "deadline" in refused.stderr and "--deadline" in refused.stderr
    # the low hours have come: re-planned, the work starts at once (a start in the last minute before the
    # new deadline would leave Slurm no room for the job's minimum time)
    write_carbon(carbon, origin, low_from_step=0, flat=True)
    retried = run_cli(["retry", batch_id, "--deadline", "4m", "--json"], hq_env)
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["submitted_tasks"] == len(states)
    finished = run_cli(["status", batch_id, "--watch", "--json"], hq_env, timeout=360)
    assert json.loads(finished.stdout)["done"], finished.stdout

    out = tmp_path / "results.jsonl"
    assert run_cli(["results", batch_id, "-o", str(out)], hq_env).returncode == 0
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in results] == [f"p{i}" for i in range(8)]
    assert all(r.get("error") is None for r in results), results
    with ledger_db(hq_env) as db:
        statuses = db.execute("SELECT status, COUNT(*) FROM requests GROUP BY status").fetchall()
    assert statuses == [("succeeded", 8)]
    assert_exactly_once(prompts, batch_dir, hq_env["HPCQUEUE_DB_URL"])
