"""Reading input files: a JSONL file becomes a table of valid requests, or an error listing every bad line;
a task's ``input.jsonl`` becomes its requests again on the worker; rejected lines go to ``rejects.jsonl``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from hpcqueue.errors import InputError, InputIssue
from hpcqueue.fileio import atomic_write_jsonl, read_bytes_nofollow
from hpcqueue.ingest.records import InputFormat, ReadOptions, Rejected, Request, RequestSet
from hpcqueue.ingest.validate import parse_request, scan_lines

DEFAULT_OPTIONS = ReadOptions()


def _summarise_warnings(warnings: list[InputIssue]) -> list[InputIssue]:
    """Keep one warning per (field, message), with how many more lines repeat it, so a million-line file
    with the same unknown field on every line gives one warning, not a million."""
    first: dict[tuple[str | None, str], InputIssue] = {}
    counts: dict[tuple[str | None, str], int] = {}
    for issue in warnings:
        key = (issue.field, issue.message)
        if key in first:
            counts[key] += 1
        else:
            first[key] = issue
            counts[key] = 0
    result = []
    for key, issue in first.items():
        more = counts[key]
        if more:
            suffix = f" (and on {more} more line{'s' if more != 1 else ''})"
            issue = InputIssue(issue.path, issue.line, issue.field, issue.message + suffix, issue.severity)
        result.append(issue)
    return result


def read_requests(path: str | os.PathLike[str], options: ReadOptions = DEFAULT_OPTIONS) -> RequestSet:
    """Read and validate a JSONL input file; return its valid requests as a table.

    Every line is checked and every problem collected (not only the first), so the user fixes the file
    once. Unless ``options.skip_invalid`` is set, any invalid line raises ``InputError`` listing all issues
    and nothing is submitted; with it, invalid lines become ``Rejected`` entries and the valid ones go on.
    The file is decoded once and split on newlines: one ``json`` decode and a few type checks per line,
    the table built from column lists, so a million short lines take seconds.
    """
    name = str(path)
    file_path = Path(path)
    limit = options.max_input_bytes
    try:
        with open(file_path, "rb") as handle:
            # Read at most one byte past the limit: a huge file (or an endless one, /dev/zero) is refused
            # before it fills memory.
            data = handle.read(limit + 1)
    except OSError as exc:
        raise InputError(f"{name}: cannot read the input file: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise InputError(
            f"{name}: the input file is larger than max_input_bytes ({limit} bytes): split it into several "
            "files, or raise the limit with max_input_bytes in the config file or HPCQUEUE_MAX_INPUT_BYTES"
        )
    sha256 = hashlib.sha256(data).hexdigest()
    if not data:
        raise InputError(f"{name}: no requests: the file is empty")
    # Decoding the whole file at once and splitting the text is faster than decoding line by line; a file
    # with bad bytes is decoded with surrogateescape so the scan can point at the lines that hold them.
    try:
        text = data.decode("utf-8")
        bad_utf8 = False
    except UnicodeDecodeError:
        text = data.decode("utf-8", "surrogateescape")
        bad_utf8 = True
    del data
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    del text
    if lines[-1] == "":
        lines.pop()
    n_lines = len(lines)

    # A million small dicts would trigger the cyclic garbage collector hundreds of times, each pass walking
    # every object allocated so far; nothing built here forms a cycle, so it is paused while we parse.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        scan = scan_lines(lines, bad_utf8, name, options)
        del lines
        if scan.n_nonblank == 0:
            raise InputError(f"{name}: no requests: the file has only blank lines")
        rejected = scan.rejected
        if rejected and not options.skip_invalid:
            count = len(rejected)
            raise InputError(
                f"{name}: {count} invalid line{'s' if count != 1 else ''} (first: line {rejected[0].line}); "
                "nothing was submitted (fix the lines listed, or use --skip-invalid to go on without them)",
                scan.errors,
            )
        if not scan.lines:
            raise InputError(
                f"{name}: no valid requests: all {len(rejected)} non-blank lines are invalid (first: line "
                f"{rejected[0].line}); nothing was submitted",
                scan.errors,
            )
        table = pd.DataFrame(
            {
                "line": np.asarray(scan.lines, dtype=np.int64),
                "id": pd.Series(scan.ids, dtype=str),
                "kind": pd.Series(scan.kinds, dtype=str),
                "max_new_tokens": np.asarray(scan.token_limits, dtype=np.int64),
                "text": pd.Series(scan.texts, dtype=object),
                "messages": pd.Series(scan.messages, dtype=object),
                "raw": pd.Series(scan.raws, dtype=str),
            }
        )
    finally:
        if gc_was_enabled:
            gc.enable()
    return RequestSet(
        path=file_path,
        format=scan.format or "simple",
        table=table,
        warnings=_summarise_warnings(scan.warnings),
        rejected=rejected,
        sha256=sha256,
        n_lines=n_lines,
        decided_by_line=scan.decided_by,
    )


def load_task_input(
    path: str | os.PathLike[str], fmt: InputFormat, options: ReadOptions = DEFAULT_OPTIONS
) -> list[Request]:
    """Read a task's ``input.jsonl`` (``{"line": n, "request": {...}}`` per line) back into ``Request``s.

    The requests were validated on the driver with the same ``parse_request``; an error here means the task
    input was damaged or the task was run with different limits, so it raises ``InputError`` rather than
    skipping lines (every request must end with a result). Issues name the original input line of each
    request.
    """
    name = str(path)
    try:
        data = read_bytes_nofollow(path)
    except OSError as exc:
        raise InputError(f"{name}: cannot read the task input: {exc.strerror or exc}") from exc
    requests: list[Request] = []
    errors: list[InputIssue] = []
    for record_no, chunk in enumerate(data.split(b"\n"), 1):
        if not chunk.strip():
            continue
        try:
            record = json.loads(chunk)
        except ValueError as exc:
            errors.append(InputIssue(name, record_no, None, f"damaged task input record: {exc}"))
            continue
        if type(record) is not dict or type(record.get("line")) is not int or "request" not in record:
            errors.append(
                InputIssue(name, record_no, None, 'damaged task input record: expected {"line", "request"}')
            )
            continue
        request, issues = parse_request(record["request"], fmt, record["line"], options, name)
        if request is None:
            errors.extend(issue for issue in issues if issue.severity == "error")
        else:
            requests.append(request)
    if errors:
        raise InputError(
            f"{name}: {len(errors)} problem{'s' if len(errors) != 1 else ''} in the task input "
            f"(first: {errors[0]}); resubmit the batch to rewrite its task inputs",
            errors,
        )
    return requests


def write_rejects(path: str | os.PathLike[str], rejected: list[Rejected]) -> None:
    """Write rejected lines as JSONL ``{"line", "raw", "errors": [{"field", "message"}]}``, atomically.

    ``hpcqueue results`` turns each into an error record with code ``invalid_input``, so no input line
    goes missing.
    """
    atomic_write_jsonl(
        path,
        (
            {
                "line": item.line,
                "raw": item.raw,
                "errors": [
                    {"field": issue.field, "message": issue.message}
                    for issue in item.issues
                    if issue.severity == "error"
                ],
            }
            for item in rejected
        ),
    )


def rejected_id(raw: str, line: int) -> str:
    """Best-effort id of a rejected line (it may not even be JSON).

    Its ``custom_id``/``id``, else ``line-<n>``: the id a valid line without one would have had.
    """
    try:
        obj = json.loads(raw)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        value = obj.get("custom_id", obj.get("id"))
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            return str(value)
    return f"line-{line}"
