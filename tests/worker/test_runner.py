"""The worker end to end on hand-made task directories, with the real demo model and the estimate meter
(asked for by name, or reached by ``auto`` on a machine whose energy counters are faked away)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import transformers

from hpcqueue.dispatch.batchdir import BatchDir
from hpcqueue.errors import StopRequested
from hpcqueue.models import DEMO_MODEL, ModelRef
from hpcqueue.worker import run_tasks, runner
from hpcqueue.worker.attribution import ATTRIBUTION_RULE, ATTRIBUTION_RULE_TEXT
from hpcqueue.worker.engine import Engine
from tests.conftest import REPO
from tests.fakes.machine import NoCounters
from tests.worker.test_engine import make_request


def start_worker(task: Path, *, stderr: int) -> subprocess.Popen[str]:
    """``python -m hpcqueue.worker TASK`` in a process of its own (offline, this checkout on the path)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "hpcqueue.worker", str(task)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )


def make_task(
    task_dir: Path,
    requests: list[dict[str, Any]],
    demo: ModelRef,
    *,
    batch_size: int = 4,
    task_index: int = 0,
    **spec: Any,
) -> Path:
    task_dir.mkdir(parents=True)
    task = {
        "batch_id": "hq-test",
        "task_index": task_index,
        "target": "local",
        "model": DEMO_MODEL,
        "model_path": str(demo.path),
        "input_format": "simple",
        "batch_size": batch_size,
        "meter": "estimate",
        "hardware": "cpu-generic",
        "nominal_power_w": None,
        "default_max_new_tokens": 8,
        "max_new_tokens_limit": 4096,
        "n_requests": len(requests),
        **spec,
    }
    (task_dir / "task.json").write_text(json.dumps(task))
    with open(task_dir / "input.jsonl", "w") as handle:
        for line, request in enumerate(requests, start=3):  # input lines need not start at 1
            handle.write(json.dumps({"line": line, "request": request}) + "\n")
    return task_dir


def prompts(n: int, max_new_tokens: int = 8) -> list[dict[str, Any]]:
    return [
        {
            "id": f"q{i}",
            "prompt": f"Prompt {i}: " + "the quiet node " * (1 + i % 4),
            "max_new_tokens": max_new_tokens,
        }
        for i in range(n)
    ]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_task_end_to_end(tmp_path: Path, demo: ModelRef, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4240")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    requests = [
        *prompts(9),
        {"id": "chat", "messages": [{"role": "user", "content": "Why does the queue wait?"}]},
        {"id": "too-long", "prompt": "the queue " * 20, "max_new_tokens": 4096},
    ]
    task = make_task(tmp_path / "000000", requests, demo, batch_size=4)

    (summary,) = run_tasks([str(task)])

    assert summary["state"] == "completed"
    outputs = read_jsonl(task / "output.jsonl")
    assert [o["line"] for o in outputs] == list(range(3, 3 + len(requests)))
    assert [o["id"] for o in outputs] == [r["id"] for r in requests]
    assert all(o["error"] is None and o["finish_reason"] in ("stop", "length") for o in outputs[:-1])
    assert outputs[9]["output_tokens"] == 8  # the default from task.json applies
    assert outputs[-1]["error"]["code"] == "context_length_exceeded"

    metrics = json.loads((task / "metrics.json").read_text())
    assert metrics["state"] == "completed" and metrics["error"] is None
    assert (metrics["batch_id"], metrics["task_index"], metrics["target"]) == ("hq-test", 0, "local")
    assert (metrics["slurm_job_id"], metrics["slurm_array_job_id"], metrics["slurm_array_task_id"]) == (
        "4242",
        "4240",
        "2",
    )
    assert metrics["pid"] == os.getpid()
    assert metrics["n_requests"] == 11 and metrics["n_succeeded"] == 10 and metrics["n_failed"] == 1
    assert metrics["input_tokens"] == sum(o["input_tokens"] for o in outputs)
    assert metrics["output_tokens"] == sum(o["output_tokens"] for o in outputs)
    assert metrics["energy_method"] == "estimated" and metrics["meter"] == "estimate"
    assert metrics["attribution_rule"] == ATTRIBUTION_RULE and metrics["attribution_rule"].startswith(
        "token-share-v1"
    )
    assert metrics["attribution_rule_text"] == ATTRIBUTION_RULE_TEXT
    # no engine named in task.json: transformers, with the version that generated
    assert (metrics["engine"], metrics["engine_version"]) == ("transformers", transformers.__version__)
    assert metrics["started_at"] <= metrics["ended_at"]

    scopes = [m["scope"] for m in metrics["measurements"]]
    assert scopes.count("task") == 1
    assert scopes.count("generation_batch") == 3  # 10 runnable requests in batches of 4
    task_j = next(m for m in metrics["measurements"] if m["scope"] == "task")["energy_j"]
    assert metrics["energy_j"] == pytest.approx(sum(task_j.values()))
    # the requests of a task add up to the task's energy, and bigger requests carry more of it
    assert sum(o["energy_j"] for o in outputs) == pytest.approx(metrics["energy_j"], rel=1e-9)
    assert all(o["energy_j"] > 0 for o in outputs)

    # a finished task is not run again
    before = (task / "output.jsonl").read_bytes()
    (again,) = run_tasks([str(task)])
    assert again["state"] == "skipped"
    assert (task / "output.jsonl").read_bytes() == before


def test_batch_energy_goes_to_the_batch_requests_by_tokens(tmp_path: Path, demo: ModelRef) -> None:
    task = make_task(tmp_path / "000000", prompts(4, max_new_tokens=6), demo, batch_size=4)
    run_tasks([str(task)])
    outputs = read_jsonl(task / "output.jsonl")
    metrics = json.loads((task / "metrics.json").read_text())
    tokens = [o["input_tokens"] + o["output_tokens"] for o in outputs]
    # one batch: every request gets the same share per token of the whole task energy
    per_token = [o["energy_j"] / t for o, t in zip(outputs, tokens, strict=True)]
    assert max(per_token) == pytest.approx(min(per_token), rel=1e-9)
    assert sum(o["energy_j"] for o in outputs) == pytest.approx(metrics["energy_j"], rel=1e-9)


def test_auto_meter_without_energy_counters_labels_every_figure_estimated(
    tmp_path: Path, demo: ModelRef, no_energy_counters: NoCounters
) -> None:
    """``meter = "auto"`` (the default) on a machine without energy counters, faked away in this process,
    where the worker runs: it falls back to the estimate and labels the task and every reading estimated."""
    task = make_task(tmp_path / "000000", prompts(3), demo, meter="auto")

    (summary,) = run_tasks([str(task)])

    assert summary["state"] == "completed"
    metrics = json.loads((task / "metrics.json").read_text())
    assert (metrics["energy_method"], metrics["meter"]) == ("estimated", "estimate")
    assert metrics["energy_j"] > 0
    readings = metrics["measurements"]
    assert {m["scope"] for m in readings} >= {"task", "generation_batch"}
    assert {(m["method"], m["meter"]) for m in readings} == {("estimated", "estimate")}
    assert all(o["energy_j"] > 0 for o in read_jsonl(task / "output.jsonl"))


def test_model_is_loaded_once_per_worker_process(tmp_path: Path, demo: ModelRef) -> None:
    first = make_task(tmp_path / "000000", prompts(2), demo, task_index=0)
    second = make_task(tmp_path / "000001", prompts(2), demo, task_index=1)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "hpcqueue.worker", str(first), str(second)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    summaries = json.loads(proc.stdout)
    assert [s["state"] for s in summaries] == ["completed", "completed"]
    scopes = [
        [m["scope"] for m in json.loads((task / "metrics.json").read_text())["measurements"]]
        for task in (first, second)
    ]
    assert scopes[0].count("model_load") == 1
    assert scopes[1].count("model_load") == 0


def test_locked_task_is_left_to_its_worker(tmp_path: Path, demo: ModelRef) -> None:
    task = make_task(tmp_path / "000000", prompts(2), demo)
    with open(task / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        (summary,) = run_tasks([str(task)])
        assert summary["state"] == "locked"
        assert not (task / "metrics.json").exists()
        assert not (task / "output.jsonl").exists()
    (summary,) = run_tasks([str(task)])
    assert summary["state"] == "completed"


def test_resume_keeps_finished_lines(tmp_path: Path, demo: ModelRef) -> None:
    task = make_task(tmp_path / "000000", prompts(6), demo)
    earlier = [
        {
            "line": line,
            "id": f"q{line - 3}",
            "text": "written by an earlier attempt",
            "input_tokens": 7,
            "output_tokens": 8,
            "finish_reason": "length",
            "error": None,
            "started_at": 1.0,
            "ended_at": 2.0,
            "energy_j": 1.5,
        }
        for line in (3, 5)
    ]
    with open(task / "partial.jsonl", "w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in earlier)
        handle.write('{"line": 4, "id": "q1", "te')  # torn by a crash mid-append

    (summary,) = run_tasks([str(task)])

    assert summary["state"] == "completed"
    outputs = read_jsonl(task / "output.jsonl")
    assert [o["line"] for o in outputs] == [3, 4, 5, 6, 7, 8]
    assert outputs[0] == earlier[0] and outputs[2] == earlier[1]  # kept as they were, energy included
    assert all(o["text"] != "written by an earlier attempt" for o in outputs if o["line"] not in (3, 5))
    metrics = json.loads((task / "metrics.json").read_text())
    assert metrics["n_resumed"] == 2 and metrics["n_requests"] == 6
    assert sum(o["energy_j"] for o in outputs) == pytest.approx(metrics["energy_j"], rel=1e-9)
    task_j = sum(next(m for m in metrics["measurements"] if m["scope"] == "task")["energy_j"].values())
    assert metrics["energy_j"] == pytest.approx(task_j + 3.0)
    # the torn line was dropped and the new records appended after the kept ones
    partial = read_jsonl(task / "partial.jsonl")
    assert sorted(r["line"] for r in partial) == [3, 4, 5, 6, 7, 8]


def test_damaged_lines_inside_partial_are_dropped_and_their_requests_run_again(
    tmp_path: Path, demo: ModelRef, caplog: pytest.LogCaptureFixture
) -> None:
    """Lines of partial.jsonl damaged on disk (zeroed bytes, JSON that is no record) between whole records:
    the worker keeps the whole records, names the damaged lines in a warning, and runs their requests again;
    every request ends with exactly one output."""
    task = make_task(tmp_path / "000000", prompts(4), demo)
    earlier = [
        {
            "line": line, "id": f"q{line - 3}", "text": "written by an earlier attempt", "input_tokens": 7,
            "output_tokens": 8, "finish_reason": "length", "error": None, "started_at": 1.0, "ended_at": 2.0,
            "energy_j": 1.5,
        }
        for line in (3, 6)
    ]  # fmt: skip
    damaged = [b"\x00" * 40 + b"\n", b'[4, "q1"]\n']
    first, last = ((json.dumps(record) + "\n").encode() for record in earlier)
    (task / "partial.jsonl").write_bytes(first + b"".join(damaged) + last)

    with caplog.at_level(logging.WARNING, logger="hpcqueue.worker.runner"):
        (summary,) = run_tasks([str(task)])

    assert summary["state"] == "completed"
    assert "partial.jsonl: line 2, 3 damaged" in caplog.text
    outputs = read_jsonl(task / "output.jsonl")
    assert [o["line"] for o in outputs] == [3, 4, 5, 6]
    assert outputs[0] == earlier[0] and outputs[3] == earlier[1]
    assert all(o["error"] is None and o["text"] != "written by an earlier attempt" for o in outputs[1:3])
    assert json.loads((task / "metrics.json").read_text())["n_resumed"] == 2
    assert sorted(r["line"] for r in read_jsonl(task / "partial.jsonl")) == [3, 4, 5, 6]


def test_a_task_finished_by_an_earlier_attempt_completes_without_loading_the_model(
    tmp_path: Path, demo: ModelRef
) -> None:
    """Killed after its last record reached partial.jsonl: the rerun only writes the outputs, and the metrics
    still name the engine of the task."""
    task = make_task(tmp_path / "000000", prompts(2), demo, engine="transformers")
    earlier = [
        {
            "line": line, "id": f"q{line - 3}", "text": "done", "input_tokens": 5, "output_tokens": 8,
            "finish_reason": "length", "error": None, "started_at": 1.0, "ended_at": 2.0, "energy_j": 0.5,
        }
        for line in (3, 4)
    ]  # fmt: skip
    (task / "partial.jsonl").write_text("".join(json.dumps(r) + "\n" for r in earlier))

    (summary,) = run_tasks([str(task)])

    assert summary["state"] == "completed"
    metrics = json.loads((task / "metrics.json").read_text())
    assert metrics["n_resumed"] == 2
    assert [m["scope"] for m in metrics["measurements"]] == ["task"]  # no model load, no generation
    assert (metrics["engine"], metrics["engine_version"]) == ("transformers", transformers.__version__)
    assert read_jsonl(task / "output.jsonl") == earlier


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"engine": "tgi"}, "engine 'tgi' is not known; valid values: transformers, vllm"),
        ({"engine": "vllm", "tensor_parallel_size": 0}, "tensor_parallel_size must be a positive integer"),
        (
            {"engine": "vllm", "gpu_memory_utilization": 1.5},
            "gpu_memory_utilization must be a number in (0, 1]",
        ),
        ({"engine": "vllm", "max_model_len": "long"}, "max_model_len must be a positive integer or null"),
    ],
    ids=["unknown-engine", "tensor-parallel", "memory", "context"],
)
def test_a_task_with_invalid_engine_settings_fails_naming_them(
    tmp_path: Path, demo: ModelRef, spec: dict[str, Any], message: str
) -> None:
    task = make_task(tmp_path / "000000", prompts(2), demo, **spec)

    (summary,) = run_tasks([str(task)])

    metrics = json.loads((task / "metrics.json").read_text())
    assert summary["state"] == "failed"
    assert metrics["error"]["type"] == "ConfigError"
    assert metrics["error"]["message"].startswith(f"task.json: {message}")
    assert not (task / "partial.jsonl").exists()  # nothing was loaded or generated


def test_the_transformers_engine_stops_between_batches_when_asked(demo: ModelRef) -> None:
    """The worker passes its stop flag to the engine, which checks it before each generation batch."""
    engine = Engine(demo, device="cpu", batch_size=2)
    requests = [make_request(i, f"Prompt {i}") for i in range(1, 7)]
    handed: list[list[int]] = []
    with pytest.raises(StopRequested):
        engine.generate(
            requests,
            on_batch=lambda records, m: handed.append([r["line"] for r in records]),
            should_stop=lambda: len(handed) == 2,
        )
    assert len(handed) == 2 and sorted(line for lines in handed for line in lines) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("signum", "exit_code"),
    [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 128 + signal.SIGTERM)],
    ids=["SIGKILL", "SIGTERM"],
)
def test_killed_worker_leaves_no_output_and_the_rerun_resumes(
    tmp_path: Path, demo: ModelRef, signum: int, exit_code: int
) -> None:
    """SIGKILL (a crash) and SIGTERM (scancel: the worker stops after its current generation batch) both
    leave the task unfinished with its finished batches kept; the rerun resumes after them."""
    task = make_task(tmp_path / "000000", prompts(60, max_new_tokens=48), demo, batch_size=1)
    proc = start_worker(task, stderr=subprocess.DEVNULL)
    partial = task / "partial.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if partial.exists() and partial.read_text().count("\n") >= 2:
                break
            assert proc.poll() is None, "the worker finished before it could be interrupted"
            time.sleep(0.05)
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == exit_code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    done_before = read_jsonl(partial)
    assert 2 <= len(done_before) < 60
    # nothing final appears before the task completes
    assert not (task / "output.jsonl").exists()
    assert not (task / "metrics.json").exists()
    assert not [p for p in task.iterdir() if p.name.startswith(".")]

    (summary,) = run_tasks([str(task)])

    assert summary["state"] == "completed"
    outputs = {o["line"]: o for o in read_jsonl(task / "output.jsonl")}
    assert sorted(outputs) == list(range(3, 63))
    for record in done_before:
        assert outputs[record["line"]] == record
    assert json.loads((task / "metrics.json").read_text())["n_resumed"] == len(done_before)


def test_broken_task_fails_and_the_worker_goes_on(tmp_path: Path, demo: ModelRef) -> None:
    broken = make_task(tmp_path / "000000", prompts(2), demo, task_index=0)
    with open(broken / "input.jsonl", "a") as handle:
        handle.write("{this is not json\n")
    missing_model = make_task(
        tmp_path / "000001",
        prompts(2),
        demo,
        task_index=1,
        model="hpcqueue-tests/no-such-model",
        model_path=None,
    )
    good = make_task(tmp_path / "000002", prompts(2), demo, task_index=2)

    summaries = run_tasks([str(broken), str(missing_model), str(good)])

    assert [s["state"] for s in summaries] == ["failed", "failed", "completed"]
    first = json.loads((broken / "metrics.json").read_text())
    assert first["state"] == "failed"
    assert "damaged task input record" in first["error"]["message"]
    assert first["error"]["type"] == "InputError"
    assert "Traceback" in first["error"]["traceback"]
    assert not (broken / "output.jsonl").exists()
    second = json.loads((missing_model / "metrics.json").read_text())
    assert "hf download hpcqueue-tests/no-such-model" in second["error"]["message"]
    assert second["energy_method"] == "estimated"  # energy spent before failing is still reported


def test_preempted_worker_is_requeued_and_resumes(tmp_path: Path, demo: ModelRef) -> None:
    """A time-out/pre-emption signal (USR2) makes submitit checkpoint TaskRunner and requeue it; the requeued
    worker keeps the generation batches already in partial.jsonl and runs only the rest."""
    import submitit

    from hpcqueue.worker import TaskRunner

    task_dir = make_task(tmp_path / "task", prompts(48, max_new_tokens=48), demo, batch_size=4)
    executor = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="local")
    executor.update_parameters(timeout_min=10)
    job = executor.submit(TaskRunner(), [str(task_dir)])
    partial = task_dir / "partial.jsonl"
    deadline = time.monotonic() + 120
    while not (partial.exists() and len(read_jsonl(partial)) >= 8):
        assert time.monotonic() < deadline, "the worker never wrote a generation batch"
        assert not (task_dir / "metrics.json").exists(), "the task finished before it could be pre-empted"
        time.sleep(0.05)
    # What Slurm's --signal does before a time limit or a pre-emption: USR2 to the job's processes (submitit's
    # local controller would not forward it, so it goes to the worker directly).
    controller = int(job.job_id)
    workers = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    assert workers, "no worker process under the local controller"
    for pid in workers:
        os.kill(int(pid), signal.SIGUSR2)
    job.result()  # the requeued worker finishes the task

    metrics = json.loads((task_dir / "metrics.json").read_text())
    outputs = read_jsonl(task_dir / "output.jsonl")
    assert metrics["state"] == "completed"
    assert metrics["n_resumed"] >= 8  # kept from the interrupted attempt, not generated again
    assert len(outputs) == 48 and len({o["line"] for o in outputs}) == 48
    log_text = "".join(p.read_text() for p in (tmp_path / "logs").glob("*_log.err"))
    assert "requeueing" in log_text or "Requeued" in log_text


# ------------------------------------------------------------------------------------ begin time, deadline


def batch_task(tmp_path: Path, demo: ModelRef, task_index: int = 0, n: int = 2) -> tuple[BatchDir, Path]:
    """A task directory where a batch keeps it (``<batch>/tasks/<NNNNNN>``), so the worker reads the batch's
    schedule."""
    batch = BatchDir(tmp_path / "hq-sched")
    task = make_task(batch.task_dir(task_index), prompts(n), demo, task_index=task_index)
    return batch, task


def test_worker_waits_for_the_begin_time_then_runs_the_task(
    tmp_path: Path, demo: ModelRef, caplog: pytest.LogCaptureFixture
) -> None:
    batch, task = batch_task(tmp_path, demo)
    begin_at = time.time() + 0.6
    batch.set_begin_times({0: begin_at})
    with caplog.at_level(logging.INFO, logger="hpcqueue.worker.runner"):
        (summary,) = run_tasks([str(task)])
    metrics = json.loads((task / "metrics.json").read_text())
    assert summary["state"] == "completed"
    assert metrics["started_at"] >= begin_at  # not a moment before its planned start
    assert "waits for its begin time" in caplog.text


def test_worker_reads_a_moved_begin_time_while_it_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "SCHEDULE_POLL_S", 0.05)
    batch = BatchDir(tmp_path / "hq-sched")
    batch.task_dir(3).mkdir(parents=True)
    first = time.time() + 0.4
    batch.set_begin_times({3: first})
    moved = first + 0.6

    def replan() -> None:  # what `hpcqueue replan` writes while the worker waits
        time.sleep(0.15)
        batch.set_begin_times({3: moved})

    mover = threading.Thread(target=replan)
    mover.start()
    runner.wait_for_begin(batch.task_dir(3))
    woke = time.time()
    mover.join()
    assert woke >= moved

    batch.set_begin_times({3: time.time() + 3600})
    mover = threading.Thread(target=lambda: (time.sleep(0.15), batch.set_begin_times({3: None})))
    mover.start()
    started = time.monotonic()
    runner.wait_for_begin(batch.task_dir(3))  # moved to "now": the wait ends at the next read
    mover.join()
    assert time.monotonic() - started < 5


def test_a_stop_ends_the_wait_at_once(tmp_path: Path) -> None:
    batch = BatchDir(tmp_path / "hq-sched")
    batch.task_dir(0).mkdir(parents=True)
    batch.set_begin_times({0: time.time() + 3600})
    threading.Timer(0.2, runner._stop.set).start()
    started = time.monotonic()
    try:
        with pytest.raises(StopRequested):
            runner.wait_for_begin(batch.task_dir(0))
    finally:
        runner._stop.clear()
    assert time.monotonic() - started < 3


def test_sigterm_stops_a_waiting_worker_promptly(tmp_path: Path, demo: ModelRef) -> None:
    """``scancel`` of a local worker holding a task for a later hour: it exits at once, the task untouched."""
    batch, task = batch_task(tmp_path, demo)
    batch.set_begin_times({0: time.time() + 3600})
    proc = start_worker(task, stderr=subprocess.PIPE)
    watchdog = threading.Timer(60, proc.kill)  # never hang on a worker that does not log
    watchdog.start()
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the worker logs what it waits for
            if "waits for its begin time" in line:
                break
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
        assert time.monotonic() - sent < 3
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    assert sorted(p.name for p in task.iterdir()) == ["input.jsonl", "task.json"]


def test_a_task_reached_after_the_deadline_fails_without_running(tmp_path: Path, demo: ModelRef) -> None:
    batch, late = batch_task(tmp_path, demo, task_index=1)
    deadline_at = time.time() - 5
    batch.set_deadline(deadline_at)
    input_before = (late / "input.jsonl").read_bytes()

    (summary,) = run_tasks([str(late)])

    metrics = json.loads((late / "metrics.json").read_text())
    assert summary["state"] == "failed" and "deadline" in summary["error"]
    assert metrics["state"] == "failed"
    assert metrics["batch_id"] == "hq-test" and metrics["task_index"] == 1
    when = datetime.fromtimestamp(deadline_at).astimezone().isoformat(timespec="seconds")
    assert metrics["error"] == {
        "code": "deadline",
        "message": f"the batch's deadline {when} passed before this task started; "
        "`hpcqueue retry` re-plans it",
    }
    assert metrics["energy_j"] is None and metrics["measurements"] == []  # nothing ran, nothing was metered
    assert (late / "input.jsonl").read_bytes() == input_before
    assert not (late / "output.jsonl").exists() and not (late / "partial.jsonl").exists()
    # collect and status read it as any failed task, cut by the deadline
    assert batch.task_state(1) == "failed"


def test_a_deadline_still_ahead_lets_the_task_run(tmp_path: Path, demo: ModelRef) -> None:
    batch, task = batch_task(tmp_path, demo)
    batch.set_deadline(time.time() + 3600)
    (summary,) = run_tasks([str(task)])
    assert summary["state"] == "completed"
