"""collect: batch directories written as docs/internals.md says, read into the ledger, idempotently."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from hpcqueue.errors import BatchNotFoundError, LedgerError
from hpcqueue.ledger import CollectReport, Ledger, collect_batch
from tests.ledger import T0, make_info, rows

RULE = "token-share-v1: batch energy split by input+output tokens, the rest of the task likewise"

# -- a batch directory, written by hand in the formats of docs/internals.md ----------------------------------

# task -> (target, [(line, id, input_tokens)])
PLAN = {
    0: ("gpu", [(1, "q1", 10), (2, "q2", 20), (3, "q3", 30)]),
    1: ("cpu", [(5, "q5", 5), (6, "q6", 7)]),
    2: ("cpu", [(7, "q7", 9)]),
    3: ("cpu", [(8, "q8", 4)]),
}


def record(
    ledger: Ledger,
    batch_root: Path,
    batch_id: str = "b1",
    *,
    user: str = "alice",
    created_at: float = T0,
    model: str = "hpcqueue-demo",
) -> Path:
    batch_dir = batch_root / batch_id
    requests = pd.DataFrame(
        [
            {
                "line": line,
                "id": rid,
                "target": target,
                "task_index": index,
                "input_tokens": n_in,
                "max_new_tokens": 64,
                "predicted_energy_j": 1.0,
                "predicted_runtime_s": 0.1,
                "extrapolated": False,
            }
            for index, (target, lines) in PLAN.items()
            for line, rid, n_in in lines
        ]
    )
    tasks = pd.DataFrame(
        [
            {
                "task_index": index,
                "target": target,
                "executor": "slurm" if target == "gpu" else "local",
                "n_requests": len(lines),
                "predicted_energy_j": float(len(lines)),
                "predicted_runtime_s": 0.1,
            }
            for index, (target, lines) in PLAN.items()
        ]
    )
    rejected = [{"line": 4, "id": "q4", "errors": [{"field": "prompt", "message": "missing"}]}]
    info = make_info(batch_id, user=user, created_at=created_at, model=model, batch_dir=str(batch_dir))
    assert ledger.record_batch(info, tasks, requests, rejected)
    for index, (target, lines) in PLAN.items():
        task_dir = batch_dir / "tasks" / f"{index:06d}"
        task_dir.mkdir(parents=True)
        (task_dir / "task.json").write_text(
            json.dumps({"batch_id": batch_id, "task_index": index, "target": target})
        )
        (task_dir / "input.jsonl").write_text(
            "".join(
                json.dumps({"line": line, "request": {"id": rid, "prompt": "hi"}}) + "\n"
                for line, rid, _ in lines
            )
        )
    (batch_dir / "batch.json").write_text(json.dumps({"batch_id": batch_id}))
    return batch_dir


def output(line: int, rid: str, n_in: int, n_out: int, energy_j: float, error: dict | None = None) -> dict:
    return {
        "line": line,
        "id": rid,
        "text": None if error else "x" * n_out,
        "input_tokens": n_in,
        "output_tokens": n_out,
        "finish_reason": None if error else "length",
        "error": error,
        "started_at": T0 + 1,
        "ended_at": T0 + 2,
        "energy_j": energy_j,
    }


def finish(
    batch_dir: Path,
    index: int,
    *,
    state: str = "completed",
    energy: dict[str, float] | None = None,
    method: str = "estimated",
    meter: str = "estimate",
    outputs: list[dict] | None = None,
    error: Any = None,
    ended_at: float = T0 + 60,
) -> None:
    """Write what a worker leaves behind: output.jsonl (completed only), then metrics.json last."""
    task_dir = batch_dir / "tasks" / f"{index:06d}"
    outputs = outputs or []
    if state == "completed":
        (task_dir / "output.jsonl").write_text("".join(json.dumps(o) + "\n" for o in outputs))
    energy = energy or {}
    total = sum(energy.values()) if energy else None
    metrics = {
        "batch_id": batch_dir.name,
        "task_index": index,
        "target": PLAN[index][0],
        "state": state,
        "host": "node01",
        "pid": 1234,
        "slurm_job_id": "77" if PLAN[index][0] == "gpu" else None,
        "slurm_array_task_id": index if PLAN[index][0] == "gpu" else None,
        "started_at": T0,
        "ended_at": ended_at,
        "n_requests": len(PLAN[index][1]),
        "n_succeeded": sum(1 for o in outputs if not o["error"]),
        "n_failed": sum(1 for o in outputs if o["error"]),
        "input_tokens": sum(o["input_tokens"] for o in outputs),
        "output_tokens": sum(o["output_tokens"] for o in outputs),
        "model": "hpcqueue-demo",
        "hardware": "cpu-generic",
        "energy_j": total,
        "energy_method": method if energy else None,
        "meter": meter if energy else None,
        "attribution_rule": RULE if energy else None,
        "measurements": [
            {
                "scope": "task",
                "seq": 0,
                "started_at": T0,
                "duration_s": 60.0,
                "method": method,
                "meter": meter,
                "energy_j": energy,
                "details": {"note": "whole task"},
            },
            {
                "scope": "model_load",
                "seq": 0,
                "started_at": T0,
                "duration_s": 5.0,
                "method": method,
                "meter": meter,
                "energy_j": {domain: j / 10 for domain, j in energy.items()},
                "details": {},
            },
        ]
        if energy
        else [],
        "error": error,
    }
    (task_dir / "metrics.json").write_text(json.dumps(metrics))


def finish_gpu_task(batch_dir: Path) -> None:
    """Task 0: measured on the GPU node, 30 J; line 3 ran out of memory."""
    finish(
        batch_dir,
        0,
        energy={"cpu": 10.0, "gpu:0": 20.0},
        method="measured",
        meter="nvml+rapl",
        outputs=[
            output(1, "q1", 10, 20, 9.0),
            output(2, "q2", 20, 30, 15.0),
            output(3, "q3", 30, 0, 6.0, {"code": "oom", "message": "CUDA out of memory"}),
        ],
    )


def finish_cpu_task(batch_dir: Path) -> None:
    """Task 1: estimated on the local node, 8 J."""
    finish(
        batch_dir, 1, energy={"cpu": 8.0}, outputs=[output(5, "q5", 5, 3, 3.0), output(6, "q6", 7, 5, 5.0)]
    )


def fail_task(batch_dir: Path, ended_at: float = T0 + 30) -> None:
    """Task 2: the worker could not run it at all."""
    finish(
        batch_dir, 2, state="failed", error="ModelError: cannot load model 'hpcqueue-demo'", ended_at=ended_at
    )


def recorded(ledger_url: str, tmp_path: Path, *finished: Callable[[Path], None]) -> tuple[Ledger, Path]:
    """A new ledger with the batch of PLAN recorded, and its directory with the ``finished`` tasks' files."""
    ledger = Ledger(ledger_url)
    batch_dir = record(ledger, tmp_path)
    for finish_task in finished:
        finish_task(batch_dir)
    return ledger, batch_dir


def snapshot(ledger: Ledger) -> dict[str, list[tuple]]:
    with ledger.connect() as conn:
        return {
            table: [tuple(row) for row in conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY id")]
            for table in ("batches", "tasks", "requests", "measurements")
        }


# -- tests ------------------------------------------------------------------------------------------------


def test_collect_reads_finished_tasks_and_leaves_the_rest_pending(ledger_url: str, tmp_path: Path) -> None:
    ledger, batch_dir = recorded(ledger_url, tmp_path, finish_gpu_task, finish_cpu_task, fail_task)

    assert collect_batch(ledger, batch_dir) == CollectReport(collected=3, already=0, pending=1, failed=1)
    report = ledger.batch_report("b1")
    assert {k: report[k] for k in ("requests", "succeeded", "failed", "rejected", "pending")} == {
        "requests": 8,
        "succeeded": 4,
        "failed": 1,
        "rejected": 1,
        "pending": 2,
    }
    assert (report["input_tokens"], report["output_tokens"]) == (
        10 + 20 + 30 + 5 + 7 + 9 + 4,
        20 + 30 + 3 + 5,
    )
    assert report["energy_j"] == pytest.approx(38.0)
    assert report["energy_method"] == "mixed"
    assert report["meters"] == ["estimate", "nvml+rapl"]
    assert report["per_target"] == {
        "cpu": {"requests": 4, "succeeded": 2, "failed": 0, "pending": 2, "energy_j": pytest.approx(8.0)},
        "gpu": {"requests": 3, "succeeded": 2, "failed": 1, "pending": 0, "energy_j": pytest.approx(30.0)},
    }
    assert report["tasks"] == {"completed": 2, "failed": 1, "planned": 1}
    (oom,) = rows(ledger, "SELECT * FROM requests WHERE line = 3")
    assert (oom["status"], oom["error_code"], oom["error_message"]) == ("failed", "oom", "CUDA out of memory")
    (gpu_task,) = rows(ledger, "SELECT * FROM tasks WHERE task_index = 0")
    assert (gpu_task["node"], gpu_task["slurm_job_id"], gpu_task["n_failed"]) == ("node01", "77", 1)


def test_collect_twice_changes_nothing(ledger_url: str, tmp_path: Path) -> None:
    ledger, batch_dir = recorded(ledger_url, tmp_path, finish_gpu_task, fail_task)
    collect_batch(ledger, batch_dir)
    counts, before = ledger.table_counts(), snapshot(ledger)

    again = collect_batch(ledger, batch_dir)
    assert again == CollectReport(collected=0, already=2, pending=2, failed=1)
    assert ledger.table_counts() == counts
    assert snapshot(ledger) == before
    assert counts["measurements"] == 4  # task + model_load scopes, cpu and gpu:0 each


def test_request_energy_adds_up_to_the_task_measurement(ledger_url: str, tmp_path: Path) -> None:
    ledger, batch_dir = recorded(ledger_url, tmp_path, finish_gpu_task, finish_cpu_task)
    collect_batch(ledger, batch_dir)
    sums = rows(
        ledger,
        "SELECT t.task_index, t.energy_j AS task_j, SUM(r.energy_j) AS requests_j, "
        "COUNT(DISTINCT r.attribution_rule) AS rules, MIN(r.energy_method) AS method, "
        "MIN(r.energy_meter) AS meter "
        "FROM tasks t JOIN requests r ON r.batch_id = t.batch_id AND r.task_index = t.task_index "
        "WHERE t.state = 'completed' GROUP BY t.task_index, t.energy_j ORDER BY t.task_index",
    )
    assert [(s["task_index"], s["method"], s["meter"], s["rules"]) for s in sums] == [
        (0, "measured", "nvml+rapl", 1),
        (1, "estimated", "estimate", 1),
    ]
    for s in sums:
        assert s["requests_j"] == pytest.approx(s["task_j"])
    measured = rows(
        ledger, "SELECT domain, energy_j FROM measurements WHERE task_index = 0 AND scope = 'task'"
    )
    assert sorted((m["domain"], m["energy_j"]) for m in measured) == [("cpu", 10.0), ("gpu:0", 20.0)]
    (rule,) = rows(ledger, "SELECT DISTINCT attribution_rule FROM requests WHERE task_index = 1")
    assert rule["attribution_rule"] == RULE


def test_a_failed_task_keeps_its_requests_pending_until_a_retry_runs_them(
    ledger_url: str, tmp_path: Path
) -> None:
    ledger, batch_dir = recorded(ledger_url, tmp_path)
    (batch_dir / "jobs.json").write_text(
        json.dumps(
            [{"job_id": "901", "executor": "local", "target": "cpu", "task_indices": [2], "submitted_at": T0}]
        )
    )
    # where submitit's local executor writes the worker's stderr: logs/<target>/<job id>_<task>_log.err
    (batch_dir / "logs" / "cpu").mkdir(parents=True)
    (batch_dir / "logs" / "cpu" / "901_0_log.err").write_text("Traceback ...\nOSError: model files missing\n")
    fail_task(batch_dir)
    collect_batch(ledger, batch_dir)
    (task,) = rows(ledger, "SELECT * FROM tasks WHERE task_index = 2")
    assert task["state"] == "failed"
    assert task["error"] == "ModelError: cannot load model 'hpcqueue-demo'"
    assert "OSError: model files missing" in task["log_tail"]
    (request,) = rows(ledger, "SELECT status FROM requests WHERE line = 7")
    assert request["status"] == "pending"

    ledger.record_submission("b1", [2], job_id="902", executor="local", submitted_at=T0 + 100)
    assert collect_batch(ledger, batch_dir).already == 1  # the old attempt's metrics.json is still there
    assert rows(ledger, "SELECT state FROM tasks WHERE task_index = 2") == [{"state": "submitted"}]

    finish(batch_dir, 2, outputs=[output(7, "q7", 9, 4, 1.5)], energy={"cpu": 1.5}, ended_at=T0 + 200)
    assert collect_batch(ledger, batch_dir).collected == 1
    (task,) = rows(ledger, "SELECT state, error, energy_j FROM tasks WHERE task_index = 2")
    assert task == {"state": "completed", "error": None, "energy_j": 1.5}
    assert rows(ledger, "SELECT status, energy_j FROM requests WHERE line = 7") == [
        {"status": "succeeded", "energy_j": 1.5}
    ]


def test_energy_method_is_mixed_once_measured_and_estimated_meet(ledger_url: str, tmp_path: Path) -> None:
    ledger, batch_dir = recorded(ledger_url, tmp_path, finish_cpu_task)
    collect_batch(ledger, batch_dir)
    report = ledger.batch_report("b1")
    assert (report["energy_method"], report["meters"], report["energy_j"]) == ("estimated", ["estimate"], 8.0)
    finish_gpu_task(batch_dir)
    collect_batch(ledger, batch_dir)
    assert ledger.batch_report("b1")["energy_method"] == "mixed"
    assert ledger.list_batches()["energy_method"].tolist() == ["mixed"]


def test_summary_groups_by_target_model_day_and_user(ledger_url: str, tmp_path: Path) -> None:
    ledger = Ledger(ledger_url)
    first = record(ledger, tmp_path, "b1", user="alice", created_at=T0)
    second = record(ledger, tmp_path, "b2", user="bob", created_at=T0 + 86400, model="tiny-llama")
    for batch_dir in (first, second):
        finish_gpu_task(batch_dir)
        finish_cpu_task(batch_dir)
        collect_batch(ledger, batch_dir)

    by_target = ledger.summary("target").set_index("target")
    assert list(by_target.index) == ["(none)", "cpu", "gpu"]
    assert by_target.loc["gpu", ["batches", "requests", "succeeded", "failed"]].tolist() == [2, 6, 4, 2]
    assert by_target.loc["gpu", "energy_j"] == pytest.approx(60.0)
    assert by_target.loc["gpu", "j_per_output_token"] == pytest.approx(60.0 / 100)
    assert by_target.loc["gpu", "energy_method"] == "measured"
    assert by_target.loc["cpu", "meters"] == ["estimate"]
    assert by_target.loc["(none)", "rejected"] == 2 and pd.isna(by_target.loc["(none)", "energy_j"])

    by_user = ledger.summary("user").set_index("user")
    assert by_user.loc["alice", ["batches", "requests", "rejected", "output_tokens"]].tolist() == [
        1,
        8,
        1,
        58,
    ]
    assert by_user.loc["bob", "energy_j"] == pytest.approx(38.0)
    assert by_user.loc["bob", "energy_method"] == "mixed"
    assert by_user.loc["bob", "meters"] == ["estimate", "nvml+rapl"]

    by_day = ledger.summary("day")
    assert by_day["day"].tolist() == ["2024-11-21", "2024-11-22"]
    assert by_day["requests"].tolist() == [8, 8]
    by_model = ledger.summary("model").set_index("model")
    assert sorted(by_model.index) == ["hpcqueue-demo", "tiny-llama"]
    assert by_model.loc["tiny-llama", "input_tokens"] == 85

    from datetime import datetime, timezone

    recent = ledger.summary("user", since=datetime.fromtimestamp(T0 + 3600, tz=timezone.utc))
    assert recent["user"].tolist() == ["bob"]


def test_collect_of_an_unknown_batch_says_so(ledger_url: str, tmp_path: Path) -> None:
    ledger = Ledger(ledger_url)
    (tmp_path / "ghost" / "tasks").mkdir(parents=True)
    with pytest.raises(BatchNotFoundError, match="ghost"):
        collect_batch(ledger, tmp_path / "ghost")


def test_an_output_line_from_another_task_is_refused(ledger_url: str, tmp_path: Path) -> None:
    ledger, batch_dir = recorded(ledger_url, tmp_path)
    finish(
        batch_dir, 1, energy={"cpu": 1.0}, outputs=[output(5, "q5", 5, 3, 0.5), output(1, "q1", 10, 3, 0.5)]
    )
    before = snapshot(ledger)
    with pytest.raises(LedgerError, match="line 1"):
        collect_batch(ledger, batch_dir)
    assert snapshot(ledger) == before
