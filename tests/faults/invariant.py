"""The promise every fault test checks: nothing lost, nothing twice, and the ledger agrees with the files.

Every valid line of the input file ends with exactly one output record (a result, or a per-request error
record) in exactly one task's ``output.jsonl``, or its task carries a recorded failure (``metrics.json``
``failed`` with an error) that ``hpcqueue retry`` can act on; rejected lines end as error records; the merged
results (``report.results.iter_records``) give exactly one record per input line, in order; and the ledger
holds one request row per line whose status says the same as the files, and one task row per task whose state
is the one ``metrics.json`` says. The checks read the real files and the real ledger; nothing is taken from
the product's own summaries.

The ledger must have been brought up to date (``status``, ``collect``, ``retry --wait``) before the check: a
task finished on disk and not yet collected is reported as a disagreement.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select

from hpcqueue.dispatch.batchdir import INPUT, OUTPUT, BatchDir
from hpcqueue.errors import IncompleteBatchError
from hpcqueue.ledger.schema import BatchRow, RequestRow, TaskRow
from hpcqueue.report.results import iter_records

#: Shown in a failure message; the rest are counted ("... and 12 more").
MAX_PROBLEMS_SHOWN = 40
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Outcome:
    """Where every input line of a batch ended.

    ``lines``: non-blank input lines. ``succeeded``: lines with a result. ``failed``: lines with a
    per-request error record (rejected lines included). ``pending``: lines with neither yet, their task
    unfinished or failed with its error recorded (``retry`` runs it again). ``duplicates``: lines with more
    than one output record or ledger row. ``lost``: lines that have no place to end: in no task, dropped from
    their completed task's output, or missing from the ledger.
    """

    lines: int
    succeeded: int
    failed: int
    pending: int
    duplicates: int
    lost: int

    def summary(self) -> str:
        return (
            f"{self.lines} lines: {self.succeeded} succeeded, {self.failed} failed, {self.pending} pending, "
            f"{self.duplicates} duplicated, {self.lost} lost"
        )


@dataclass
class _Findings:
    problems: list[str] = field(default_factory=list)
    duplicated: set[int] = field(default_factory=set)
    lost: set[int] = field(default_factory=set)

    def add(self, message: str) -> None:
        self.problems.append(message)

    def duplicate(self, line: int, message: str) -> None:
        self.duplicated.add(line)
        self.add(message)

    def loss(self, line: int, message: str) -> None:
        self.lost.add(line)
        self.add(message)


def assert_exactly_once(input_path: Path, batch_dir: Path, db_url: str, *, complete: bool = True) -> Outcome:
    """Check the exactly-once invariant of the batch in ``batch_dir`` against its input file and the ledger at
    ``db_url``; raise AssertionError naming every line, task and file that breaks it.

    With ``complete`` every task must have completed and every line must have a result or a per-request
    error; without it, tasks may be unfinished or failed (their lines pending everywhere), but nothing may be
    duplicated, lost, or disagree between the files and the ledger.
    """
    outcome, problems = inspect_batch(input_path, batch_dir, db_url, complete=complete)
    if problems:
        shown = "\n  - ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = len(problems) - MAX_PROBLEMS_SHOWN
        raise AssertionError(
            f"batch {Path(batch_dir).name} breaks exactly-once ({outcome.summary()}):\n  - {shown}"
            + (f"\n  ... and {more} more" if more > 0 else "")
        )
    return outcome


def inspect_batch(
    input_path: Path, batch_dir: Path, db_url: str, *, complete: bool = True
) -> tuple[Outcome, list[str]]:
    """The outcome and every problem found (none when the invariant holds): :func:`assert_exactly_once`."""
    batch = BatchDir(Path(batch_dir))
    found = _Findings()
    inputs = _input_lines(Path(input_path))
    plan = batch.plan(["line", "id", "task_index"])
    planned = {int(line): (rid, int(task)) for line, rid, task in plan.itertuples(index=False, name=None)}
    rejected = _rejected_lines(batch)
    _check_partition(inputs, planned, rejected, found)

    results, states = _check_tasks(batch, inputs, planned, found, complete=complete)
    _check_merged(batch, inputs, results, states, planned, found, complete=complete)
    _check_ledger(batch, db_url, planned, rejected, results, states, found)

    succeeded = sum(1 for record in results.values() if not record.get("error"))
    failed = sum(1 for record in results.values() if record.get("error"))
    failed += len(rejected.keys() & inputs.keys())
    pending = sum(
        1 for line, (_, task) in planned.items() if line not in results and states.get(task) != "completed"
    )
    outcome = Outcome(
        lines=len(inputs),
        succeeded=succeeded,
        failed=failed,
        pending=pending,
        duplicates=len(found.duplicated),
        lost=len(found.lost),
    )
    return outcome, found.problems


def _input_lines(path: Path) -> dict[int, bytes]:
    """The input's non-blank lines by 1-based line number, numbered as ``hpcqueue.ingest`` numbers them."""
    data = path.read_bytes().removeprefix(_BOM)
    return {number: chunk for number, chunk in enumerate(data.split(b"\n"), 1) if chunk.strip()}


def _rejected_lines(batch: BatchDir) -> dict[int, dict[str, Any]]:
    if not batch.rejects_path.exists():
        return {}
    return {int(r["line"]): r for r in _strict_jsonl(batch.rejects_path)}


def _strict_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSONL file; a torn or corrupt line raises (a loss must not hide behind leniency)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        raise AssertionError(f"{path}: the last line is cut short")
    return [json.loads(raw) for raw in data.splitlines() if raw.strip()]


def _check_partition(
    inputs: Mapping[int, bytes],
    planned: Mapping[int, tuple[str, int]],
    rejected: Mapping[int, Any],
    found: _Findings,
) -> None:
    """Every input line is planned into a task or rejected, never both, never neither."""
    for line in sorted(inputs):
        if line not in planned and line not in rejected:
            found.loss(line, f"input line {line} is neither in plan.parquet nor in rejects.jsonl")
        elif line in planned and line in rejected:
            found.duplicate(line, f"input line {line} is both planned (task {planned[line][1]}) and rejected")
    for line in sorted((planned.keys() | rejected.keys()) - inputs.keys()):
        found.add(f"the batch has line {line}, which the input file does not (blank or past its end)")


def _check_tasks(
    batch: BatchDir,
    inputs: Mapping[int, bytes],
    planned: Mapping[int, tuple[str, int]],
    found: _Findings,
    *,
    complete: bool,
) -> tuple[dict[int, dict[str, Any]], dict[int, str | None]]:
    """Each task's input holds its planned lines; a completed task's output holds exactly its input's lines;
    a failed task has its error. Returns the one result record per line and each task's metrics state
    (None: no metrics.json)."""
    indices = batch.task_indices()
    on_disk = batch.task_dirs_on_disk()
    for index in sorted(set(indices) - on_disk):
        found.add(f"task {index} is in batch.json but tasks/{index:06d}/ does not exist")
    for index in sorted(on_disk - set(indices)):
        found.add(f"tasks/{index:06d}/ exists but batch.json has no task {index}")

    by_task: dict[int, set[int]] = defaultdict(set)
    for line, (_, task) in planned.items():
        by_task[task].add(line)
    homes: dict[int, list[int]] = defaultdict(list)
    states: dict[int, str | None] = {}
    outputs: dict[int, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for index in sorted(indices):
        task_dir = batch.task_dir(index)
        where = f"task {index} (tasks/{index:06d})"
        task_input = _strict_jsonl(task_dir / INPUT) if (task_dir / INPUT).exists() else []
        counts = Counter(int(r["line"]) for r in task_input)
        for record in task_input:
            line = int(record["line"])
            homes[line].append(index)
            raw = inputs.get(line)
            if raw is not None and record["request"] != json.loads(raw):
                found.add(f"{where}: input.jsonl's request for line {line} differs from the input's line")
        for line in sorted(line for line, n in counts.items() if n > 1):
            found.duplicate(line, f"{where}: input.jsonl holds line {line} {counts[line]} times")
        if set(counts) != by_task[index]:
            found.add(f"{where}: input.jsonl has lines {sorted(counts)}, the plan {sorted(by_task[index])}")

        metrics = batch.metrics(index)
        state = None if metrics is None else metrics.get("state")
        states[index] = state
        if state == "completed":
            assert metrics is not None
            _check_completed(task_dir, where, metrics, set(counts), planned, outputs, index, found)
        elif state == "failed":
            assert metrics is not None
            if not metrics.get("error"):
                found.add(f"{where}: metrics.json says failed but records no error")
            if complete:
                found.add(f"{where} failed: {_error_text(metrics.get('error'))}")
        elif state is not None:
            found.add(f"{where}: metrics.json has state {state!r}, neither completed nor failed")
        elif complete:
            found.add(f"{where} has not finished: no metrics.json (lock held: {batch.task_state(index)})")

    for line, tasks in sorted(homes.items()):
        if len(tasks) > 1:
            found.duplicate(line, f"line {line} is in the input of tasks {tasks}")
    results: dict[int, dict[str, Any]] = {}
    for line, records in sorted(outputs.items()):
        tasks = [task for task, _ in records]
        if len(records) > 1:
            found.duplicate(line, f"line {line} has {len(records)} output records (in tasks {tasks})")
        results[line] = records[0][1]
    return results, states


def _check_completed(
    task_dir: Path,
    where: str,
    metrics: Mapping[str, Any],
    input_lines: set[int],
    planned: Mapping[int, tuple[str, int]],
    outputs: dict[int, list[tuple[int, dict[str, Any]]]],
    index: int,
    found: _Findings,
) -> None:
    path = task_dir / OUTPUT
    if not path.exists():
        for line in sorted(input_lines):
            found.loss(line, f"{where}: completed but has no output.jsonl: line {line} has no result")
        return
    records = _strict_jsonl(path)
    lines = [int(r["line"]) for r in records]
    for record in records:
        line = int(record["line"])
        outputs[line].append((index, record))
        expected_id = planned.get(line, (None, None))[0]
        if line in planned and record.get("id") != expected_id:
            found.add(f"{where}: the record of line {line} has id {record.get('id')!r}, not {expected_id!r}")
    for line in sorted(input_lines - set(lines)):
        found.loss(line, f"{where}: completed, but output.jsonl has no record of its input line {line}")
    for line in sorted(set(lines) - input_lines):
        found.add(f"{where}: output.jsonl has line {line}, which is not in its input.jsonl")
    errors = sum(1 for r in records if r.get("error"))
    expected = {"n_requests": len(records), "n_succeeded": len(records) - errors, "n_failed": errors}
    for key, value in expected.items():
        if metrics.get(key) != value:
            found.add(f"{where}: metrics.json says {key} {metrics.get(key)!r}, output.jsonl holds {value}")


def _error_text(error: Any) -> str:
    if isinstance(error, Mapping):
        return f"{error.get('code') or error.get('type')}: {error.get('message')}"
    return str(error)


def _check_merged(
    batch: BatchDir,
    inputs: Mapping[int, bytes],
    results: Mapping[int, dict[str, Any]],
    states: Mapping[int, str | None],
    planned: Mapping[int, tuple[str, int]],
    found: _Findings,
    *,
    complete: bool,
) -> None:
    """``hpcqueue results``' records: one per input line, in order, each the task's own record."""
    try:
        merged = list(iter_records(batch, allow_partial=not complete))
    except IncompleteBatchError as exc:
        found.add(f"the merged results are refused: {exc}")
        return
    lines = [int(r["line"]) for r in merged]
    if lines != sorted(inputs):
        counts = Counter(lines)
        for line in sorted(line for line, n in counts.items() if n > 1):
            found.duplicate(line, f"the merged results have {counts[line]} records of line {line}")
        for line in sorted(inputs.keys() - counts.keys()):
            found.loss(line, f"the merged results have no record of input line {line}")
        if len(counts) == len(lines) and counts.keys() == inputs.keys():
            found.add("the merged results are not in input order")
    for record in merged:
        line = int(record["line"])
        code = (record.get("error") or {}).get("code")
        if line in results:
            own = results[line]
            if (record.get("text"), record.get("error")) != (own.get("text"), own.get("error")):
                found.add(f"the merged record of line {line} differs from its task's output record")
        elif line in planned:
            task = planned[line][1]
            expected = "task_failed" if states.get(task) == "failed" else "pending"
            if states.get(task) == "completed":
                expected = "a result"
            if code != expected:
                found.add(f"the merged record of line {line} (task {task}) has {code!r}, expected {expected}")
        if complete and code in ("pending", "task_failed"):
            found.add(f"the merged record of line {line} is an error {code!r} in a complete batch")


def _check_ledger(
    batch: BatchDir,
    db_url: str,
    planned: Mapping[int, tuple[str, int]],
    rejected: Mapping[int, Any],
    results: Mapping[int, dict[str, Any]],
    states: Mapping[int, str | None],
    found: _Findings,
) -> None:
    """One request row per line whose status is what the files say; one task row per task in its state."""
    batch_id = batch.batch_id
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            batch_row = conn.execute(
                select(BatchRow.n_requests, BatchRow.n_rejected).where(BatchRow.id == batch_id)
            ).first()
            request_rows = conn.execute(
                select(
                    RequestRow.line,
                    RequestRow.status,
                    RequestRow.task_index,
                    RequestRow.error_code,
                    RequestRow.output_tokens,
                ).where(RequestRow.batch_id == batch_id)
            ).all()
            task_rows = conn.execute(
                select(TaskRow.task_index, TaskRow.state, TaskRow.n_succeeded, TaskRow.n_failed).where(
                    TaskRow.batch_id == batch_id
                )
            ).all()
    finally:
        engine.dispose()
    if batch_row is None:
        found.add(f"the ledger has no batch {batch_id}")
        return
    if (batch_row.n_requests, batch_row.n_rejected) != (len(planned), len(rejected)):
        found.add(
            f"the ledger's batch row counts {batch_row.n_requests} requests and {batch_row.n_rejected} "
            f"rejected; the batch directory has {len(planned)} and {len(rejected)}"
        )

    rows_by_line: dict[int, list[Any]] = defaultdict(list)
    for row in request_rows:
        rows_by_line[int(row.line)].append(row)
    for line in sorted(planned.keys() | rejected.keys()):
        rows = rows_by_line.get(line, [])
        if not rows:
            found.loss(line, f"the ledger has no request row for line {line}")
            continue
        if len(rows) > 1:
            found.duplicate(line, f"the ledger has {len(rows)} request rows for line {line}")
        row = rows[0]
        if line in rejected:
            if row.status != "rejected":
                found.add(f"the ledger says line {line} is {row.status!r}; rejects.jsonl has it rejected")
            continue
        task = planned[line][1]
        if row.task_index != task:
            found.add(f"the ledger puts line {line} in task {row.task_index}; the plan in task {task}")
        record = results.get(line)
        if record is None:
            if row.status != "pending":
                found.add(
                    f"the ledger says line {line} {row.status}, but no output file holds a record of it "
                    f"(task {task}: metrics state {states.get(task)!r})"
                )
            continue
        error = record.get("error")
        status = "failed" if error else "succeeded"
        if row.status != status:
            found.add(f"line {line} (task {task}): output.jsonl says {status}, the ledger {row.status!r}")
        elif error and isinstance(error, Mapping) and row.error_code != (error.get("code") or "error"):
            found.add(f"line {line}: output error code {error.get('code')!r}, ledger {row.error_code!r}")
        elif not error and row.output_tokens != record.get("output_tokens"):
            found.add(
                f"line {line}: output.jsonl has {record.get('output_tokens')} output tokens, "
                f"the ledger {row.output_tokens}"
            )
    for line in sorted(rows_by_line.keys() - planned.keys() - rejected.keys()):
        found.add(f"the ledger has a request row for line {line}, which the batch does not have")

    file_counts = Counter("failed" if r.get("error") else "succeeded" for r in results.values())
    ledger_counts = Counter(row.status for row in request_rows)
    for status in ("succeeded", "failed"):
        if ledger_counts[status] != file_counts[status]:
            found.add(
                f"the ledger counts {ledger_counts[status]} {status} requests, the output files "
                f"{file_counts[status]}"
            )

    task_rows_by_index: dict[int, list[Any]] = defaultdict(list)
    for row in task_rows:
        task_rows_by_index[int(row.task_index)].append(row)
    for index, state in sorted(states.items()):
        rows = task_rows_by_index.get(index, [])
        if len(rows) != 1:
            found.add(f"the ledger has {len(rows)} rows for task {index}")
            continue
        row = rows[0]
        if state in ("completed", "failed") and row.state != state:
            found.add(f"task {index}: metrics.json says {state}, the ledger says {row.state!r}")
        elif state is None and row.state == "completed":
            found.add(f"task {index}: the ledger says completed, but it has no metrics.json")
        if state == "completed":
            own = [r for line, r in results.items() if planned.get(line, (None, None))[1] == index]
            errors = sum(1 for r in own if r.get("error"))
            if (row.n_succeeded, row.n_failed) != (len(own) - errors, errors):
                found.add(
                    f"task {index}: the ledger counts {row.n_succeeded} succeeded and {row.n_failed} failed, "
                    f"output.jsonl {len(own) - errors} and {errors}"
                )
    for index in sorted(task_rows_by_index.keys() - states.keys()):
        found.add(f"the ledger has task {index}, which batch.json does not")
