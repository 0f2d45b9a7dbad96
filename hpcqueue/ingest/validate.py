"""Validation of input lines: one JSON value becomes a normalised ``Request``, or issues naming the field.

Two input formats are accepted, one per file, decided by the first line that parses as a JSON object:

* **simple**: ``{"id"?, "prompt" | "messages", "max_new_tokens"?, "temperature"?, "top_p"?, "top_k"?,
  "seed"?, "stop"?, "metadata"?}``;
* **openai**: OpenAI Batch API request lines (``{"custom_id", "method", "url", "body"}``), as read by
  OpenAI's batch endpoint and vLLM's ``run-batch``.

``parse_request`` is the one validation routine: the driver runs it over a whole file through
``scan_lines`` (called by ``hpcqueue.ingest.read.read_requests``) before anything is submitted, and the worker
uses it through ``load_task_input`` to rebuild the same ``Request`` on the node. ``scan_lines`` is the hot
loop of ingest: one JSON decode and a few type checks per line. docs/input-format.md describes every rule.
"""

from __future__ import annotations

import json
from typing import Any

from hpcqueue.errors import InputIssue, JSONConstantError
from hpcqueue.ingest.records import (
    CHAT_URL,
    COMPLETIONS_URL,
    ROLES,
    InputFormat,
    ReadOptions,
    Rejected,
    Request,
)

_ROLE_SET = frozenset(ROLES)
_SIMPLE_KEYS = frozenset(
    {
        "id",
        "prompt",
        "messages",
        "max_new_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop",
        "metadata",
    }
)
_OPENAI_KEYS = frozenset({"custom_id", "method", "url", "body"})
_BODY_KEYS = frozenset(
    {
        "model",
        "messages",
        "prompt",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop",
        "n",
    }
)
_MESSAGE_KEYS = frozenset({"role", "content"})
# Names other tools use for a field this format spells differently: the warning says which name to use.
_SIMPLE_HINTS = {
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
    "text": "prompt",
    "input": "prompt",
    "custom_id": "id",
}
_SEED_MIN = -(2**63)
_SEED_MAX = 2**64 - 1


def _reject_constant(name: str) -> Any:
    raise JSONConstantError(name)


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _shown(value: Any) -> str:
    """A value as JSON for an error message, shortened so one bad value cannot flood the terminal."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages such as "must be an integer, got a string"."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "a boolean"
    if type(value) is int:
        return "an integer"
    if type(value) is float:
        return "a number"
    if type(value) is str:
        return "a string"
    if type(value) is list:
        return "an array"
    if type(value) is dict:
        return "an object"
    return type(value).__name__


class _Line:
    """Collects the issues of one line, each located by path, line and field."""

    __slots__ = ("issues", "line", "path")

    def __init__(self, path: str, line: int) -> None:
        self.path = path
        self.line = line
        self.issues: list[InputIssue] = []

    def error(self, field_name: str | None, message: str) -> None:
        self.issues.append(InputIssue(self.path, self.line, field_name, message, "error"))

    def warn(self, field_name: str | None, message: str) -> None:
        self.issues.append(InputIssue(self.path, self.line, field_name, message, "warning"))

    @property
    def has_errors(self) -> bool:
        return any(issue.severity == "error" for issue in self.issues)


def _unknown_fields(
    obj: dict[str, Any], known: frozenset[str], prefix: str, out: _Line, hints: dict[str, str] | None = None
) -> None:
    for key in obj:
        if key not in known:
            hint = hints.get(key) if hints else None
            message = "not supported; it is ignored"
            if hint:
                message += f" (did you mean {hint!r}?)"
            out.warn(prefix + key, message)


def _token_limit(value: Any, name: str, options: ReadOptions, out: _Line) -> int | None:
    if type(value) is not int:
        out.error(name, f"must be an integer, got {_json_type(value)} ({_shown(value)})")
        return None
    if value < 1 or value > options.max_new_tokens_limit:
        out.error(
            name,
            f"must be between 1 and {options.max_new_tokens_limit} (max_new_tokens_limit), got {value}",
        )
        return None
    return value


def _sampling(
    obj: dict[str, Any], prefix: str, out: _Line
) -> tuple[float | None, float | None, int | None, int | None, tuple[str, ...]]:
    """Validate temperature, top_p, top_k, seed and stop (shared by both formats; null means absent)."""
    temperature = obj.get("temperature")
    if temperature is not None:
        if (type(temperature) is not float and type(temperature) is not int) or not temperature >= 0:
            out.error(
                prefix + "temperature",
                f"must be a number >= 0 (0 means greedy), got {_shown(temperature)}",
            )
            temperature = None
        else:
            temperature = float(temperature)
    top_p = obj.get("top_p")
    if top_p is not None:
        if (type(top_p) is not float and type(top_p) is not int) or not 0 < top_p <= 1:
            out.error(prefix + "top_p", f"must be a number with 0 < top_p <= 1, got {_shown(top_p)}")
            top_p = None
        else:
            top_p = float(top_p)
    top_k = obj.get("top_k")
    if top_k is not None and (type(top_k) is not int or top_k < 0):
        out.error(
            prefix + "top_k",
            f"must be an integer >= 0 (0 disables top-k, where vLLM uses -1), got {_shown(top_k)}",
        )
        top_k = None
    seed = obj.get("seed")
    if seed is not None and (type(seed) is not int or not _SEED_MIN <= seed <= _SEED_MAX):
        out.error(prefix + "seed", f"must be an integer between -2**63 and 2**64-1, got {_shown(seed)}")
        seed = None
    stop_value = obj.get("stop")
    stop: tuple[str, ...] = ()
    if stop_value is not None:
        if type(stop_value) is str:
            stop_value = [stop_value]
        if type(stop_value) is not list or any(type(s) is not str for s in stop_value):
            out.error(
                prefix + "stop", f"must be a string or a list of strings, got {_json_type(obj['stop'])}"
            )
        elif any(not s for s in stop_value):
            out.error(prefix + "stop", "must not contain empty strings")
        else:
            stop = tuple(stop_value)
    return temperature, top_p, top_k, seed, stop


def _content(value: Any, name: str, out: _Line) -> str | None:
    if type(value) is str:
        return value
    if type(value) is list:
        texts: list[str] = []
        for j, part in enumerate(value):
            part_name = f"{name}[{j}]"
            if type(part) is not dict:
                out.error(
                    part_name, f"must be a text part {{'type': 'text', 'text': ...}}, got {_json_type(part)}"
                )
            elif part.get("type") != "text":
                shown = _shown(part.get("type"))
                out.error(
                    part_name + ".type", f"only text parts ({{'type': 'text', 'text': ...}}), got {shown}"
                )
            elif type(part.get("text")) is not str:
                out.error(part_name + ".text", f"must be a string, got {_json_type(part.get('text'))}")
            else:
                texts.append(part["text"])
        return "\n".join(texts) if len(texts) == len(value) else None
    out.error(name, f"must be a string or a list of text parts, got {_json_type(value)}")
    return None


def _messages(value: Any, name: str, out: _Line) -> tuple[dict[str, str], ...] | None:
    """Validate a chat and normalise each message to ``{"role", "content"}`` with text content."""
    if type(value) is not list:
        out.error(name, f"must be a list of {{'role', 'content'}} objects, got {_json_type(value)}")
        return None
    if not value:
        out.error(name, "is empty: give at least one message")
        return None
    result: list[dict[str, str]] = []
    valid = True
    for i, message in enumerate(value):
        item = f"{name}[{i}]"
        if type(message) is not dict:
            out.error(item, f"must be an object with 'role' and 'content', got {_json_type(message)}")
            valid = False
            continue
        role = message.get("role")
        if type(role) is not str or role not in _ROLE_SET:
            shown = "missing" if "role" not in message else _shown(role)
            out.error(item + ".role", f"must be one of {', '.join(ROLES)}; got {shown}")
            valid = False
        if "content" not in message:
            out.error(item + ".content", "is missing")
            valid = False
            continue
        text = _content(message["content"], item + ".content", out)
        if text is None:
            valid = False
            continue
        if len(message) > 2:
            _unknown_fields(message, _MESSAGE_KEYS, item + ".", out)
        result.append({"role": str(role), "content": text})
    if not valid:
        return None
    if all(not m["content"] or m["content"].isspace() for m in result):
        out.error(name, "every message is empty: give some content")
        return None
    return tuple(result)


# The normalised fields of a request, in Request's order after ``line``.
_Fields = tuple[Any, ...]


#: The longest request id accepted, in characters: ids are kept in the ledger and every result record.
MAX_ID_CHARS = 1024


def _bad_id(rid: str) -> str:
    """Why a string id is refused. Ids are data only (JSON and ledger rows, never a path or a command), so
    any other character is kept as it is."""
    if len(rid) > MAX_ID_CHARS:
        return f"is {len(rid)} characters long; the limit is {MAX_ID_CHARS}: use a shorter id"
    return "holds a NUL character (\\u0000), which the ledger cannot store: remove it"


def _parse_simple(
    obj: dict[str, Any], line: int, options: ReadOptions, out: _Line
) -> tuple[_Fields | None, str | None]:
    rid = obj.get("id")
    if rid is None:
        rid = f"line-{line}"
    elif type(rid) is int:
        rid = str(rid)
    elif type(rid) is not str or not rid:
        out.error("id", f"must be a non-empty string or an integer, got {_shown(rid)}")
        rid = None
    elif len(rid) > MAX_ID_CHARS or "\x00" in rid:
        out.error("id", _bad_id(rid))
        rid = None

    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    kind = "prompt"
    n_read = ("id" in obj) + 1
    if "prompt" in obj:
        if "messages" in obj:
            out.error("prompt", "both 'prompt' and 'messages' are given; give exactly one")
            n_read += 1
        prompt = obj["prompt"]
        if type(prompt) is not str:
            out.error("prompt", f"must be a string, got {_json_type(prompt)}")
        elif not prompt or prompt.isspace():
            out.error("prompt", "is empty")
    elif "messages" in obj:
        kind = "chat"
        messages = _messages(obj["messages"], "messages", out)
    else:
        out.error("prompt", "missing: give 'prompt' (a string) or 'messages' (a list of chat messages)")
        n_read -= 1

    max_new_tokens = obj.get("max_new_tokens")
    if max_new_tokens is None:
        max_new_tokens = options.default_max_new_tokens
        n_read += "max_new_tokens" in obj
    else:
        n_read += 1
        if type(max_new_tokens) is not int or not 0 < max_new_tokens <= options.max_new_tokens_limit:
            max_new_tokens = _token_limit(max_new_tokens, "max_new_tokens", options, out)

    # The common line is {"id", "prompt", "max_new_tokens"}: only when it has more keys than were read
    # above are the other fields (sampling, metadata, unknown names) looked at.
    if len(obj) > n_read:
        if not obj.keys() <= _SIMPLE_KEYS:
            _unknown_fields(obj, _SIMPLE_KEYS, "", out, _SIMPLE_HINTS)
        temperature, top_p, top_k, seed, stop = _sampling(obj, "", out)
        metadata = obj.get("metadata")
        if metadata is not None and type(metadata) is not dict:
            out.error("metadata", f"must be an object, got {_json_type(metadata)}")
    else:
        temperature = top_p = top_k = seed = metadata = None
        stop = ()

    if out.issues and out.has_errors:
        return None, rid
    fields = (rid, kind, prompt, messages, max_new_tokens, temperature, top_p, top_k, seed, stop, metadata)
    return (*fields, None, None), rid


def _parse_openai(
    obj: dict[str, Any], line: int, options: ReadOptions, out: _Line
) -> tuple[_Fields | None, str | None]:
    if not obj.keys() <= _OPENAI_KEYS:
        _unknown_fields(obj, _OPENAI_KEYS, "", out)
    rid = obj.get("custom_id")
    if "custom_id" not in obj:
        out.error("custom_id", "missing: every OpenAI batch line needs a unique string custom_id")
    elif type(rid) is not str or not rid:
        out.error("custom_id", f"must be a non-empty string, got {_shown(rid)}")
        rid = None
    elif len(rid) > MAX_ID_CHARS or "\x00" in rid:
        out.error("custom_id", _bad_id(rid))
        rid = None
    method = obj.get("method", "POST")
    if method != "POST":
        out.error("method", f'must be "POST", got {_shown(method)}')
    url = obj.get("url")
    if url not in (CHAT_URL, COMPLETIONS_URL):
        shown = "missing" if "url" not in obj else _shown(url)
        out.error("url", f'must be "{CHAT_URL}" or "{COMPLETIONS_URL}"; got {shown}')
        url = None

    body = obj.get("body")
    if type(body) is not dict:
        out.error("body", "missing" if "body" not in obj else f"must be an object, got {_json_type(body)}")
        return None, rid
    if not body.keys() <= _BODY_KEYS:
        _unknown_fields(body, _BODY_KEYS, "body.", out)

    model = body.get("model")
    if model is not None and type(model) is not str:
        out.error("body.model", f"must be a string, got {_json_type(model)}")

    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    kind = "chat" if url == CHAT_URL else "prompt"
    if url is not None:
        # The two endpoints mirror each other: each needs its own field and rejects the other's.
        field, other, other_url = (
            ("messages", "prompt", COMPLETIONS_URL) if url == CHAT_URL else ("prompt", "messages", CHAT_URL)
        )
        if other in body:
            out.error(f"body.{other}", f"is not valid for {url}: use body.{field}, or url {other_url}")
        if field not in body:
            out.error(f"body.{field}", f"missing: {url} needs body.{field}")
        elif url == CHAT_URL:
            messages = _messages(body["messages"], "body.messages", out)
        else:
            prompt = body["prompt"]
            if type(prompt) is not str:
                out.error(
                    "body.prompt",
                    "must be a string (lists of prompts and token ids are not supported), "
                    f"got {_json_type(prompt)}",
                )
            elif not prompt or prompt.isspace():
                out.error("body.prompt", "is empty")

    max_tokens = body.get("max_tokens")
    max_completion = body.get("max_completion_tokens")
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        out.error(
            "body.max_tokens",
            f"max_tokens ({_shown(max_tokens)}) and max_completion_tokens ({_shown(max_completion)}) "
            "disagree: give one of them",
        )
        max_new_tokens = None
    elif max_completion is not None:
        max_new_tokens = _token_limit(max_completion, "body.max_completion_tokens", options, out)
    elif max_tokens is not None:
        max_new_tokens = _token_limit(max_tokens, "body.max_tokens", options, out)
    else:
        max_new_tokens = options.default_max_new_tokens

    n = body.get("n")
    if n is not None and (type(n) is not int or n != 1):
        out.error("body.n", f"must be 1 (one completion per request), got {_shown(n)}")

    temperature, top_p, top_k, seed, stop = _sampling(body, "body.", out)

    if out.has_errors:
        return None, rid
    return (
        rid,
        kind,
        prompt,
        messages,
        max_new_tokens,
        temperature,
        top_p,
        top_k,
        seed,
        stop,
        None,
        url,
        model,
    ), rid


def _parse(
    obj: Any, fmt: InputFormat, line: int, options: ReadOptions, out: _Line
) -> tuple[_Fields | None, str | None]:
    """Validate one parsed line: the normalised fields (None if invalid) and the id (None if unusable)."""
    if type(obj) is not dict:
        out.error(None, f"the line is {_json_type(obj)}, not a JSON object")
        return None, None
    if fmt == "simple":
        return _parse_simple(obj, line, options, out)
    if fmt == "openai":
        return _parse_openai(obj, line, options, out)
    raise ValueError(f"unknown input format {fmt!r}; valid formats: simple, openai")


def parse_request(
    obj: Any, fmt: InputFormat, line: int, options: ReadOptions, path: str = "<input>"
) -> tuple[Request | None, list[InputIssue]]:
    """Validate one input line's JSON value and normalise it into a ``Request``.

    This is the single validation routine: ``read_requests`` checks every line of a file with it before
    anything is submitted, and the worker rebuilds each request with it (``load_task_input``), so both sides
    agree on what a request means. Returns ``(None, issues)`` when the line has any error; warnings (unknown
    fields) come back with a valid request. Duplicate ids are a property of the file, checked by
    ``read_requests``.
    """
    out = _Line(path, line)
    fields, _ = _parse(obj, fmt, line, options, out)
    if fields is None:
        return None, out.issues
    return Request(line, *fields), out.issues


def _printable(text: str) -> str:
    """A line as valid text for the rejects file: bytes that are not UTF-8 become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _detect_format(obj: dict[str, Any]) -> InputFormat:
    return "openai" if ("custom_id" in obj or "body" in obj) else "simple"


def _format_mismatch(obj: dict[str, Any], fmt: InputFormat, decided_by: int, out: _Line) -> bool:
    """One file holds one format: a line of the other format is an error naming the line that decided it."""
    if fmt == "simple":
        if "custom_id" in obj or "body" in obj:
            out.error(
                "custom_id" if "custom_id" in obj else "body",
                f"this line is an OpenAI batch request, but line {decided_by} is a simple-format request "
                "and decided the file's format; a file holds one format",
            )
            return True
    elif "custom_id" not in obj and "body" not in obj:
        out.error(
            "custom_id",
            f"this line is a simple-format request (no custom_id or body), but line {decided_by} is an "
            "OpenAI batch request and decided the file's format; a file holds one format",
        )
        return True
    return False


class LineScan:
    """What one pass over the lines of a file found: the columns of the valid rows, and the rest."""

    def __init__(self) -> None:
        self.lines: list[int] = []
        self.ids: list[str] = []
        self.kinds: list[str] = []
        self.token_limits: list[int] = []
        self.texts: list[str | None] = []
        self.messages: list[list[dict[str, str]] | None] = []
        self.raws: list[str] = []
        self.errors: list[InputIssue] = []
        self.warnings: list[InputIssue] = []
        self.rejected: list[Rejected] = []
        self.format: InputFormat | None = None
        self.decided_by = 0
        self.n_nonblank = 0

    def reject(self, line_no: int, raw: str, out: _Line) -> None:
        line_errors = [issue for issue in out.issues if issue.severity == "error"]
        self.warnings.extend(issue for issue in out.issues if issue.severity == "warning")
        self.errors.extend(line_errors)
        self.rejected.append(Rejected(line_no, raw, line_errors))


def scan_lines(lines: list[str], bad_utf8: bool, name: str, options: ReadOptions) -> LineScan:
    """Validate every line; the per-line fast path is one JSON decode and a few type checks.

    ``lines`` come from decoding the whole file; when it is not valid UTF-8 (``bad_utf8``) it was decoded
    with ``surrogateescape`` and each line is checked for the escaped bytes.
    """
    scan = LineScan()
    max_line_bytes = options.max_line_bytes
    max_line_chars = max_line_bytes // 4  # a line this short cannot be over the limit in UTF-8 bytes
    decode_json = _DECODER.decode
    raw_decode = _DECODER.raw_decode
    seen: dict[str, int] = {}
    append_line, append_id, append_kind = scan.lines.append, scan.ids.append, scan.kinds.append
    append_limit, append_text, append_messages = (
        scan.token_limits.append,
        scan.texts.append,
        scan.messages.append,
    )
    append_raw = scan.raws.append
    fmt: InputFormat | None = None
    parse = _parse_simple
    n_nonblank = 0
    out = _Line(name, 0)
    for line_no, text in enumerate(lines, 1):
        if text[-1:] == "\r":
            text = text[:-1]
        if not text or text.isspace():
            continue
        n_nonblank += 1
        if out.issues:  # the previous line's issues were handed over
            out.issues = []
        out.line = line_no
        if len(text) > max_line_chars:
            n_bytes = len(text.encode("utf-8", "surrogateescape"))
            if n_bytes > max_line_bytes:
                out.error(
                    None,
                    f"the line is {n_bytes} bytes, more than max_line_bytes ({max_line_bytes}); shorten it "
                    "or raise the limit with --max-line-bytes",
                )
                scan.reject(line_no, _printable(text), out)
                continue
        if bad_utf8:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                out.error(None, f"not valid UTF-8 (at character {exc.start + 1}): save the file as UTF-8")
                scan.reject(line_no, _printable(text), out)
                continue
        try:
            try:
                obj, end = raw_decode(text)
                if end != len(text) and not text[end:].isspace():
                    obj = decode_json(text)  # raises "Extra data" with its position
            except json.JSONDecodeError:
                obj = decode_json(text)  # leading whitespace, or a real error with its position
        except json.JSONDecodeError as exc:
            out.error(None, f"invalid JSON at column {exc.colno}: {exc.msg}")
            scan.reject(line_no, text, out)
            continue
        except JSONConstantError as exc:
            out.error(None, f"invalid JSON: {exc} is not a JSON value (use a number or null)")
            scan.reject(line_no, text, out)
            continue
        if type(obj) is not dict:
            out.error(None, f"the line is {_json_type(obj)}, not a JSON object")
            scan.reject(line_no, text, out)
            continue
        if fmt is None:
            fmt = scan.format = _detect_format(obj)
            scan.decided_by = line_no
            parse = _parse_simple if fmt == "simple" else _parse_openai
        elif _format_mismatch(obj, fmt, scan.decided_by, out):
            scan.reject(line_no, text, out)
            continue
        fields, rid = parse(obj, line_no, options, out)
        if rid is not None:
            first_line = seen.setdefault(rid, line_no)
            if first_line != line_no:
                generated = " (a missing id is generated as line-<n>)" if rid.startswith("line-") else ""
                out.error(
                    "id" if fmt == "simple" else "custom_id",
                    f"duplicate id {rid!r}: line {first_line} has the same id; ids must be unique{generated}",
                )
                fields = None
        if fields is None:
            scan.reject(line_no, text, out)
            continue
        if out.issues:
            scan.warnings.extend(out.issues)
        append_line(line_no)
        append_id(fields[0])
        append_kind(fields[1])
        append_text(fields[2])
        chat = fields[3]
        append_messages(None if chat is None else list(chat))
        append_limit(fields[4])
        append_raw(text)
    scan.n_nonblank = n_nonblank
    return scan
