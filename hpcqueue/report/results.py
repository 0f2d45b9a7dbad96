"""Merge a batch's outputs into one file in input order, in the input's own format.

Every valid input line has exactly one output record; lines rejected by ``--skip-invalid`` come back as error
records (code ``invalid_input``), so the output has one line per input line. OpenAI-batch input gives
OpenAI-batch output lines (``custom_id``, ``response``, ``error``), which is what tools reading hosted batch
results expect.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import IO, Any

from hpcqueue.dispatch.batchdir import BatchDir
from hpcqueue.errors import IncompleteBatchError
from hpcqueue.fileio import read_jsonl
from hpcqueue.ingest import rejected_id


def iter_records(batch: BatchDir, *, allow_partial: bool = False) -> Iterator[dict[str, Any]]:
    """Yield one internal output record per input line, in line order.

    Requests of unfinished tasks are an error unless ``allow_partial``, in which case they are yielded as
    error records with code ``pending``.
    """
    plan = batch.plan(["line", "id", "kind", "task_index"])
    states = batch.task_states()
    unfinished = sorted(i for i, s in states.items() if s in ("pending", "running"))
    if unfinished and not allow_partial:
        raise IncompleteBatchError(
            f"batch {batch.batch_id}: {len(unfinished)} of {len(states)} task(s) have not finished "
            f"(first: task {unfinished[0]}); wait with `hpcqueue status {batch.batch_id}`, "
            "or pass --allow-partial to write what exists"
        )
    by_line: dict[int, dict[str, Any]] = {}
    for index, state in states.items():
        if state == "completed":
            for record in batch.outputs(index):
                by_line[int(record["line"])] = record
    meta = {
        int(line): (rid, kind, int(task)) for line, rid, kind, task in plan.itertuples(index=False, name=None)
    }
    rejected: dict[int, dict[str, Any]] = {}
    if batch.rejects_path.exists():
        for record in read_jsonl(batch.rejects_path):
            rejected[int(record["line"])] = record
    for line in sorted(set(meta) | set(rejected)):
        if line in rejected:
            record = rejected[line]
            message = "; ".join(
                f"{e['field']}: {e['message']}" if e.get("field") else e["message"] for e in record["errors"]
            )
            rid = rejected_id(record["raw"], line)
            yield _error_record(line, rid, "prompt", "invalid_input", message)
            continue
        rid, kind, task = meta[line]
        if line in by_line:
            yield {**by_line[line], "kind": kind}
        elif states.get(task) == "failed":
            metrics = batch.metrics(task) or {}
            error = metrics.get("error")
            failure: Any = error.get("message") if isinstance(error, dict) else error
            yield _error_record(
                line, rid, kind, "task_failed", f"task {task} failed: {failure or 'unknown error'}"
            )
        else:
            yield _error_record(line, rid, kind, "pending", f"task {task} has not finished")


def _error_record(line: int, rid: str | None, kind: str, code: str, message: str) -> dict[str, Any]:
    return {
        "line": line,
        "id": rid,
        "kind": kind,
        "text": None,
        "input_tokens": None,
        "output_tokens": None,
        "finish_reason": None,
        "error": {"code": code, "message": message},
    }


def render_simple(record: dict[str, Any]) -> dict[str, Any]:
    out = {
        "id": record["id"],
        "text": record.get("text"),
        "input_tokens": record.get("input_tokens"),
        "output_tokens": record.get("output_tokens"),
        "finish_reason": record.get("finish_reason"),
        "error": record.get("error"),
    }
    if record.get("energy_j") is not None:
        out["energy_j"] = record["energy_j"]
    return out


def render_openai(record: dict[str, Any], *, batch_id: str, model: str, created: int) -> dict[str, Any]:
    """One line of OpenAI Batch API output for one request."""
    custom_id = record["id"]
    request_hash = hashlib.sha256(f"{batch_id}:{record['line']}".encode()).hexdigest()[:24]
    if record.get("error"):
        return {
            "id": f"batch_req_{request_hash}",
            "custom_id": custom_id,
            "response": None,
            "error": {"code": record["error"]["code"], "message": record["error"]["message"]},
        }
    usage = {
        "prompt_tokens": record["input_tokens"],
        "completion_tokens": record["output_tokens"],
        "total_tokens": record["input_tokens"] + record["output_tokens"],
    }
    if record["kind"] == "chat":
        body: dict[str, Any] = {
            "id": f"chatcmpl-{request_hash}",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": record["text"]},
                    "finish_reason": record["finish_reason"],
                }
            ],
            "usage": usage,
        }
    else:
        body = {
            "id": f"cmpl-{request_hash}",
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "text": record["text"], "finish_reason": record["finish_reason"]}],
            "usage": usage,
        }
    return {
        "id": f"batch_req_{request_hash}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": request_hash, "body": body},
        "error": None,
    }


def write_results(batch: BatchDir, out: IO[str], *, allow_partial: bool = False) -> int:
    """Write the merged results to ``out``; returns the number of lines written."""
    manifest = batch.manifest()
    fmt = manifest["input_format"]
    created = int(manifest["created_at"])
    count = 0
    for record in iter_records(batch, allow_partial=allow_partial):
        if fmt == "openai":
            rendered = render_openai(
                record, batch_id=batch.batch_id, model=manifest["model"], created=created
            )
        else:
            rendered = render_simple(record)
        out.write(json.dumps(rendered, ensure_ascii=False) + "\n")
        count += 1
    return count
