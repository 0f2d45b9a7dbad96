"""Ledger reads over a million requests: `ledger summary`, `ledger export` (Parquet), `ledger metrics` and
`report`, on SQLite and PostgreSQL.

    python bench/ledger_queries.py                                  # SQLite only, 1M requests
    python bench/ledger_queries.py --pg-url postgresql+psycopg://postgres@127.0.0.1:15432/hpcqueue_test
    HPCQUEUE_TEST_PG_URL=... python bench/ledger_queries.py --requests 200000

``fill_ledger`` (importable: ``from ledger_queries import fill_ledger`` with ``bench/`` on the path) fills a
ledger with a realistic spread: batches over users, accounts, targets, models and days, tasks of about
``task_size`` requests with measured or estimated energy and an accounted footprint, requests with tokens,
statuses and their share of their task's figures. On PostgreSQL each run uses a private schema that is
dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

START = datetime(2026, 1, 5, tzinfo=timezone.utc)
_CHUNK = 50_000


def fill_ledger(
    ledger: Any,
    n_requests: int,
    *,
    task_size: int = 1000,
    batch_tasks: int = 20,
    users: Sequence[str] = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"),
    accounts: Sequence[str] = ("physics", "chemistry", "linguistics"),
    targets: Sequence[str] = ("gpu", "lowpower", "cpu"),
    models: Sequence[str] = ("hpcqueue-demo", "Qwen/Qwen2.5-0.5B-Instruct", "meta-llama/Llama-3.2-1B"),
    days: int = 90,
    running_share: float = 0.05,
    seed: int = 0,
) -> dict[str, int]:
    """Fill ``ledger`` (an open :class:`hpcqueue.ledger.Ledger`) with ``n_requests`` requests in batches of
    ``batch_tasks`` tasks of ``task_size`` requests, spread over ``users``, ``accounts`` (by user),
    ``targets``, ``models`` and ``days`` days; bulk inserts through SQLAlchemy core (executemany), one
    transaction per chunk. ``running_share`` of the tasks are still running (no energy, no accounting), 30 %
    of the others estimated; 2 % of the requests are rejected (no target, no task), 1 % failed. Returns the
    row counts written."""
    from sqlalchemy import insert

    from hpcqueue.ledger.schema import BatchRow, RequestRow, TaskRow

    rng = np.random.default_rng(seed)
    n_tasks = -(-n_requests // task_size)
    n_batches = -(-n_tasks // batch_tasks)
    batch_user = rng.integers(0, len(users), n_batches)
    batch_model = rng.integers(0, len(models), n_batches)
    batch_created = [
        START + timedelta(seconds=float(s)) for s in np.sort(rng.uniform(0, days * 86400, n_batches))
    ]
    batch_ids = [f"hq-{i:07d}" for i in range(n_batches)]
    batches = [
        {
            "id": batch_ids[b],
            "created_at": batch_created[b],
            "user": users[batch_user[b]],
            "host": "login01",
            "input_path": f"/home/{users[batch_user[b]]}/prompts-{b}.jsonl",
            "input_sha256": f"{b:064x}",
            "input_format": "simple",
            "model": models[batch_model[b]],
            "policy": "threshold",
            "settings_json": "{}",
            "batch_dir": f"/scratch/batches/{batch_ids[b]}",
            "n_requests": 0,
            "n_rejected": 0,
            "plan_json": None,
            "plan_start_at": None,
            "deadline_at": None,
        }
        for b in range(n_batches)
    ]
    # tasks: task t of the whole ledger is task (t % batch_tasks) of batch t // batch_tasks
    task_batch = np.arange(n_tasks) // batch_tasks
    task_index = np.arange(n_tasks) % batch_tasks
    task_target = rng.integers(0, len(targets), n_tasks)
    task_n = np.full(n_tasks, task_size)
    task_n[-1] = n_requests - task_size * (n_tasks - 1)
    state_draw = rng.random(n_tasks)
    completed = state_draw >= running_share
    estimated = rng.random(n_tasks) < 0.3
    accounted = completed & (rng.random(n_tasks) < 0.9)
    energy_per_request = rng.uniform(20.0, 400.0, n_tasks)
    task_energy = energy_per_request * task_n
    runtime = task_n * rng.uniform(0.05, 0.5, n_tasks)
    carbon_per_j = rng.uniform(20, 450, n_tasks) / 3.6e6  # g/kWh → g/J
    tasks = []
    for t in range(n_tasks):
        b = int(task_batch[t])
        started = batch_created[b] + timedelta(minutes=5 + int(task_index[t]))
        user_account = accounts[int(batch_user[b]) % len(accounts)]
        facility = task_energy[t] * 1.3 if accounted[t] else None
        tasks.append(
            {
                "batch_id": batch_ids[b],
                "task_index": int(task_index[t]),
                "target": targets[task_target[t]],
                "executor": "slurm",
                "job_id": f"{1000 + b}_{int(task_index[t])}",
                "slurm_job_id": str(1000 + b),
                "slurm_array_task_id": int(task_index[t]),
                "node": f"{targets[task_target[t]]}{int(task_index[t]) % 4 + 1:02d}",
                "state": "completed" if completed[t] else "running",
                "submitted_at": batch_created[b],
                "n_requests": int(task_n[t]),
                "n_succeeded": int(task_n[t]) if completed[t] else None,
                "n_failed": 0 if completed[t] else None,
                "meter": ("estimate" if estimated[t] else "nvml") if completed[t] else None,
                "predicted_energy_j": float(task_energy[t] * rng.uniform(0.8, 1.2)),
                "predicted_runtime_s": float(runtime[t]),
                "started_at": started,
                "ended_at": started + timedelta(seconds=float(runtime[t])) if completed[t] else None,
                "energy_j": float(task_energy[t]) if completed[t] else None,
                "energy_method": ("estimated" if estimated[t] else "measured") if completed[t] else None,
                "attribution_rule": "tokens-v1" if completed[t] else None,
                "facility_energy_j": facility,
                "carbon_g": float(facility * carbon_per_j[t]) if facility is not None else None,
                "water_onsite_l": float(facility / 3.6e6 * 0.5) if facility is not None else None,
                "water_offsite_l": float(facility / 3.6e6 * 1.8) if facility is not None else None,
                "cost_usd": float(facility / 3.6e9 * 80) if facility is not None else None,
                "accounted_at": started + timedelta(hours=1) if accounted[t] else None,
                "factor_kinds": '{"pue": "assumed"}' if accounted[t] and t % 7 == 0 else None,
                "account": user_account,
            }
        )
    counts = {"batches": n_batches, "tasks": n_tasks, "requests": n_requests}
    with ledger.engine.begin() as conn:
        conn.execute(insert(BatchRow), batches)
        for start in range(0, n_tasks, _CHUNK):
            conn.execute(insert(TaskRow), tasks[start : start + _CHUNK])
    for rows in _request_chunks(
        n_requests,
        task_size,
        tasks,
        [models[batch_model[b]] for b in task_batch],
        completed,
        energy_per_request,
        rng,
    ):
        with ledger.engine.begin() as conn:
            conn.execute(insert(RequestRow), rows)
    return counts


def _request_chunks(
    n: int,
    task_size: int,
    tasks: list[dict[str, Any]],
    task_models: list[str],
    completed: np.ndarray,
    energy_per_request: np.ndarray,
    rng: np.random.Generator,
) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, n, _CHUNK):
        idx = np.arange(start, min(start + _CHUNK, n))
        task_of = idx // task_size
        status_draw = rng.random(len(idx))
        input_tokens = rng.integers(8, 4096, len(idx))
        output_tokens = rng.integers(1, 512, len(idx))
        rows = []
        for k, i in enumerate(idx):
            t = int(task_of[k])
            task = tasks[t]
            done = bool(completed[t])
            rejected = status_draw[k] < 0.02
            status = (
                "rejected"
                if rejected
                else (("failed" if status_draw[k] < 0.03 else "succeeded") if done else "pending")
            )
            share = float(energy_per_request[t]) if done and not rejected else None
            facility = task["facility_energy_j"]
            rows.append(
                {
                    "batch_id": task["batch_id"],
                    "line": int(i % task_size) + 1 + task["task_index"] * task_size,
                    "request_id": f"req-{i}",
                    "task_index": None if rejected else task["task_index"],
                    "target": None if rejected else task["target"],
                    "model": task_models[t],
                    "status": status,
                    "input_tokens": int(input_tokens[k]),
                    "output_tokens": int(output_tokens[k]) if status == "succeeded" else None,
                    "max_new_tokens": 512,
                    "finish_reason": "length" if status == "succeeded" else None,
                    "error_code": "too_long" if rejected else None,
                    "error_message": "prompt longer than the context" if rejected else None,
                    "energy_meter": task["meter"] if share is not None else None,
                    "extrapolated": bool(status_draw[k] > 0.97),
                    "predicted_energy_j": None if rejected else float(energy_per_request[t]),
                    "predicted_runtime_s": None if rejected else 0.2,
                    "started_at": None if rejected else task["started_at"],
                    "ended_at": None if rejected or not done else task["ended_at"],
                    "energy_j": share,
                    "energy_method": task["energy_method"] if share is not None else None,
                    "attribution_rule": task["attribution_rule"] if share is not None else None,
                    "facility_energy_j": share * 1.3 if share is not None and facility is not None else None,
                    "carbon_g": None,
                    "water_onsite_l": None,
                    "water_offsite_l": None,
                    "cost_usd": None,
                }
            )
        yield rows


@contextmanager
def bench_ledger(backend: str, pg_url: str | None, tmp: Path) -> Iterator[Any]:
    """An empty ledger on ``backend``: a SQLite file in ``tmp``, or a private PostgreSQL schema (dropped
    afterwards)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from hpcqueue.ledger import Ledger

    if backend == "sqlite":
        ledger = Ledger(f"sqlite:///{tmp / 'ledger.sqlite'}")
        try:
            yield ledger
        finally:
            ledger.close()
        return
    assert pg_url is not None
    schema = f"hpcq_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
    ledger = Ledger(url.render_as_string(hide_password=False))
    try:
        yield ledger
    finally:
        ledger.close()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def timed(operation: Callable[[], Any], repeat: int) -> float:
    """The best of ``repeat`` runs, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        operation()
        best = min(best, time.perf_counter() - start)
    return best


def operations(ledger: Any, out_dir: Path) -> dict[str, Callable[[], Any]]:
    """The timed reads: what ``ledger summary``, ``ledger export``, ``ledger metrics`` and ``report`` run."""
    from hpcqueue.fileio import atomic_write_text
    from hpcqueue.ledger.export import export_table
    from hpcqueue.ledger.filters import LedgerFilter
    from hpcqueue.ledger.metrics import write_metrics
    from hpcqueue.ledger.views import gather
    from hpcqueue.report.admin import render

    def report(where: LedgerFilter) -> None:
        atomic_write_text(out_dir / "report.html", render(gather(ledger, where), datetime.now(timezone.utc)))

    everyone = LedgerFilter()
    narrowed = LedgerFilter(
        users=("alice", "bob"),
        targets=("gpu",),
        since=START + timedelta(days=30),
        until=START + timedelta(days=60),
    )
    return {
        "summary by target": lambda: ledger.summary("target", where=everyone),
        "summary by user": lambda: ledger.summary("user", where=everyone),
        "summary by target, filtered": lambda: ledger.summary("target", where=narrowed),
        "summary by user, filtered": lambda: ledger.summary("user", where=narrowed),
        "export requests (parquet)": lambda: export_table(
            ledger, "requests", "parquet", out_dir / "requests.parquet", where=everyone
        ),
        "metrics": lambda: write_metrics(ledger, out_dir / "hpcqueue.prom"),
        "report": lambda: report(everyone),
        "report, filtered": lambda: report(narrowed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="Best of this many runs (default 3).")
    parser.add_argument("--pg-url", default=os.environ.get("HPCQUEUE_TEST_PG_URL"), help="PostgreSQL URL.")
    args = parser.parse_args()

    backends = ["sqlite"] + (["postgresql"] if args.pg_url else [])
    if not args.pg_url:
        print("no --pg-url nor HPCQUEUE_TEST_PG_URL: SQLite only", file=sys.stderr)
    results: dict[tuple[str, str], float] = {}
    for backend in backends:
        with tempfile.TemporaryDirectory() as tmp, bench_ledger(backend, args.pg_url, Path(tmp)) as ledger:
            start = time.perf_counter()
            counts = fill_ledger(ledger, args.requests)
            fill_s = time.perf_counter() - start
            print(f"{backend}: filled {counts} in {fill_s:.1f} s", file=sys.stderr)
            if backend == "postgresql":
                from sqlalchemy import text

                with ledger.engine.begin() as conn:
                    conn.execute(text("ANALYZE"))
            for name, operation in operations(ledger, Path(tmp)).items():
                results[(name, backend)] = timed(operation, args.repeat)
    fastest = {name: min(seconds for (n, _), seconds in results.items() if n == name) for name, _ in results}
    header = f"| {'operation':<30} | {'backend':<10} | {'seconds':>8} | {'× fastest':>9} |"
    print(f"\n{args.requests:,} requests, best of {args.repeat}\n")
    print(header)
    print(f"|{'-' * 32}|{'-' * 12}|{'-' * 9}:|{'-' * 10}:|")
    for (name, backend), seconds in results.items():
        print(f"| {name:<30} | {backend:<10} | {seconds:>8.2f} | {seconds / fastest[name]:>9.2f} |")


if __name__ == "__main__":
    main()
