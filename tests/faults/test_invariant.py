"""The exactly-once checker catches what it is for: a line answered twice, a line never answered, a ledger
that disagrees with the files. The batch is made by the real submission code (plan, batch directory, ledger
rows) and "run" by a worker that writes the protocol's files by hand; collect is the real one. No Slurm and
no generation."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, delete, insert, select, update

from hpcqueue import submission
from hpcqueue.config import resolve
from hpcqueue.dispatch.batchdir import BatchDir
from hpcqueue.fileio import atomic_write_json, atomic_write_jsonl, read_jsonl
from hpcqueue.ledger import Ledger
from hpcqueue.ledger.collect import collect_batch
from hpcqueue.ledger.schema import RequestRow
from tests.faults.invariant import Outcome, assert_exactly_once, inspect_batch

# Six lines: line 4 is invalid (rejected with --skip-invalid), line 6 will get a per-request error record.
PROMPTS = [{"id": f"q{n}", "prompt": f"Say {n}.", "max_new_tokens": 2} for n in range(1, 7)]
PROMPTS[3] = {"id": "q4", "prompt": 4}


def _run_task(batch: BatchDir, index: int, *, errors: frozenset[int] = frozenset()) -> None:
    """What a worker leaves behind for a finished task: output.jsonl, then metrics.json."""
    now = time.time()
    records = []
    for item in read_jsonl(batch.task_dir(index) / "input.jsonl"):
        line, request = item["line"], item["request"]
        failed = line in errors
        records.append(
            {
                "line": line,
                "id": request["id"],
                "text": None if failed else f"answer {line}",
                "input_tokens": 3,
                "output_tokens": None if failed else 2,
                "finish_reason": None if failed else "length",
                "error": {"code": "generation", "message": "out of memory"} if failed else None,
                "started_at": now,
                "ended_at": now,
                "energy_j": 0.5,
            }
        )
    atomic_write_jsonl(batch.task_dir(index) / "output.jsonl", records)
    n_failed = sum(1 for r in records if r["error"])
    atomic_write_json(
        batch.task_dir(index) / "metrics.json",
        {
            "batch_id": batch.batch_id,
            "task_index": index,
            "state": "completed",
            "started_at": now,
            "ended_at": now,
            "n_requests": len(records),
            "n_succeeded": len(records) - n_failed,
            "n_failed": n_failed,
            "n_resumed": 0,
            "energy_j": 0.5 * len(records),
            "energy_method": "estimated",
            "meter": "estimate",
            "measurements": [],
            "error": None,
        },
    )


@pytest.fixture()
def made(tmp_path: Path, hq_cache: Path) -> tuple[Path, BatchDir, str]:
    """A planned batch of three tasks (two requests each, one line rejected), in its directory and ledger."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    settings = resolve(
        None,
        flags={
            "batch_root": str(tmp_path / "batches"),
            "db_url": url,
            "cache_dir": str(hq_cache),
            "task_size": 2,
        },
        environ={},
    )
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    prepared = submission.prepare(prompts, settings, skip_invalid=True)
    with Ledger(url) as ledger:
        batch, created = submission.create_or_open(prepared, ledger)
    assert created and batch.task_indices() == [0, 1, 2]
    return prompts, batch, url


@pytest.fixture()
def finished(made: tuple[Path, BatchDir, str]) -> tuple[Path, BatchDir, str]:
    """The batch run to the end and collected."""
    prompts, batch, url = made
    for index in batch.task_indices():
        _run_task(batch, index, errors=frozenset({6}))
    with Ledger(url) as ledger:
        assert collect_batch(ledger, batch.path).collected == 3
    return prompts, batch, url


def _records(batch: BatchDir, index: int) -> list[dict[str, Any]]:
    return list(read_jsonl(batch.task_dir(index) / "output.jsonl"))


def _task_of(batch: BatchDir, line: int) -> int:
    plan = batch.plan(["line", "task_index"])
    return int(plan.loc[plan["line"] == line, "task_index"].iloc[0])


def test_a_finished_batch_passes_with_every_line_accounted_for(finished: tuple[Path, BatchDir, str]) -> None:
    prompts, batch, url = finished
    outcome = assert_exactly_once(prompts, batch.path, url)
    assert outcome == Outcome(lines=6, succeeded=4, failed=2, pending=0, duplicates=0, lost=0)
    assert outcome.summary() == "6 lines: 4 succeeded, 2 failed, 0 pending, 0 duplicated, 0 lost"


def test_an_unfinished_batch_passes_only_when_incompleteness_is_allowed(
    made: tuple[Path, BatchDir, str],
) -> None:
    prompts, batch, url = made
    _run_task(batch, 0)
    with Ledger(url) as ledger:
        collect_batch(ledger, batch.path)
    outcome = assert_exactly_once(prompts, batch.path, url, complete=False)
    assert (outcome.succeeded, outcome.failed, outcome.pending) == (2, 1, 3)  # the rejected line failed
    with pytest.raises(AssertionError, match=r"task 1 \(tasks/000001\) has not finished"):
        assert_exactly_once(prompts, batch.path, url)


def _duplicate_in_files(batch: BatchDir, url: str) -> int:
    """Line 1's result also turns up in another task's output (as if two workers had run it)."""
    line = 1
    home, other = _task_of(batch, line), _task_of(batch, 5)
    stray = next(r for r in _records(batch, home) if r["line"] == line)
    atomic_write_jsonl(batch.task_dir(other) / "output.jsonl", [*_records(batch, other), stray])
    return line


def _lost_in_files(batch: BatchDir, url: str) -> int:
    """Line 3's record vanishes from its task's output, metrics.json counts adjusted to match."""
    line = 3
    task = _task_of(batch, line)
    kept = [r for r in _records(batch, task) if r["line"] != line]
    atomic_write_jsonl(batch.task_dir(task) / "output.jsonl", kept)
    metrics = batch.metrics(task) or {}
    metrics.update(n_requests=len(kept), n_succeeded=len(kept))
    atomic_write_json(batch.task_dir(task) / "metrics.json", metrics)
    return line


def _phantom_in_ledger(batch: BatchDir, url: str) -> int:
    """The ledger holds a result for a line the batch does not have. (Two rows for one line cannot happen:
    the requests table is unique on batch and line, so the checker's count of them guards older ledgers.)"""
    line = 99
    engine = create_engine(url)
    with engine.begin() as conn:
        row = conn.execute(
            select(RequestRow).where(RequestRow.batch_id == batch.batch_id, RequestRow.line == 2)
        ).one()
        values = {k: v for k, v in row._mapping.items() if k != "id"}
        conn.execute(insert(RequestRow).values(**{**values, "line": line}))
    engine.dispose()
    return line


def _lost_in_ledger(batch: BatchDir, url: str) -> int:
    line = 5
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(delete(RequestRow).where(RequestRow.batch_id == batch.batch_id, RequestRow.line == line))
    engine.dispose()
    return line


def _ledger_disagrees(batch: BatchDir, url: str) -> int:
    line = 2
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            update(RequestRow)
            .where(RequestRow.batch_id == batch.batch_id, RequestRow.line == line)
            .values(status="pending")
        )
    engine.dispose()
    return line


@pytest.mark.parametrize(
    ("damage", "counts", "message"),
    [
        (_duplicate_in_files, (1, 0), r"line 1 has 2 output records \(in tasks \[0, 1\]\)"),
        (_lost_in_files, (0, 1), r"task 1 \(tasks/000001\): completed, but output.jsonl has no .*line 3"),
        (_phantom_in_ledger, (0, 0), r"the ledger has a request row for line 99, which the batch does not"),
        (_lost_in_ledger, (0, 1), r"the ledger has no request row for line 5"),
        (_ledger_disagrees, (0, 0), r"line 2 \(task 0\): output.jsonl says succeeded, the ledger 'pending'"),
    ],
    ids=["duplicate-in-files", "lost-in-files", "phantom-in-ledger", "lost-in-ledger", "ledger-disagrees"],
)
def test_the_checker_catches_a_duplicate_a_loss_and_a_disagreement(
    finished: tuple[Path, BatchDir, str],
    damage: Callable[[BatchDir, str], int],
    counts: tuple[int, int],
    message: str,
) -> None:
    prompts, batch, url = finished
    damage(batch, url)
    outcome, problems = inspect_batch(prompts, batch.path, url, complete=False)
    assert (outcome.duplicates, outcome.lost) == counts, problems
    with pytest.raises(AssertionError, match=message) as caught:
        assert_exactly_once(prompts, batch.path, url, complete=False)
    assert f"batch {batch.batch_id} breaks exactly-once" in str(caught.value)
