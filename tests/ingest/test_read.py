"""Input ingest and validation: what a user sees for good files, bad lines and the two formats."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from hpcqueue.errors import InputError, InputIssue
from hpcqueue.ingest import (
    ReadOptions,
    Rejected,
    Request,
    load_task_input,
    parse_request,
    read_requests,
    write_rejects,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def write_lines(tmp_path: Path, lines: list[str | dict[str, Any]], name: str = "prompts.jsonl") -> Path:
    """Write a JSONL file; dicts are dumped as JSON, strings written as they are."""
    path = tmp_path / name
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def input_error(path: Path, **options: Any) -> InputError:
    with pytest.raises(InputError) as info:
        read_requests(path, ReadOptions(**options))
    return info.value


def only_issue(path: Path, **options: Any) -> InputIssue:
    """The single issue of a file with one bad line, checked to be located at that line."""
    issues = input_error(path, **options).issues
    assert len(issues) == 1, [str(i) for i in issues]
    return issues[0]


def chat(*turns: tuple[str, Any]) -> list[dict[str, Any]]:
    return [{"role": role, "content": content} for role, content in turns]


# ---------------------------------------------------------------- good input, simple format


def test_simple_file_becomes_the_documented_table(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path,
        [
            {"id": "a", "prompt": "Name three rivers.", "max_new_tokens": 12},
            {"prompt": "Why is the sky blue?"},
            {"id": 7, "messages": chat(("system", "Be brief."), ("user", "Hello"))},
        ],
    )
    result = read_requests(path, ReadOptions(default_max_new_tokens=40))

    table = result.table
    assert list(table.columns) == ["line", "id", "kind", "max_new_tokens", "text", "messages", "raw"]
    assert str(table["line"].dtype) == "int64"
    assert str(table["max_new_tokens"].dtype) == "int64"
    assert table["line"].tolist() == [1, 2, 3]
    assert table["id"].tolist() == ["a", "line-2", "7"]
    assert table["kind"].tolist() == ["prompt", "prompt", "chat"]
    assert table["max_new_tokens"].tolist() == [12, 40, 40]
    assert table["text"].tolist() == ["Name three rivers.", "Why is the sky blue?", None]
    assert table["messages"].tolist()[:2] == [None, None]
    assert table["messages"][2] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]
    assert json.loads(table["raw"][0]) == {"id": "a", "prompt": "Name three rivers.", "max_new_tokens": 12}
    assert result.format == "simple"
    assert result.n_lines == 3
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert result.warnings == [] and result.rejected == []


def test_parse_request_normalises_every_simple_field() -> None:
    obj = {
        "id": "q1",
        "messages": [
            {
                "role": "developer",
                "content": [{"type": "text", "text": "Answer"}, {"type": "text", "text": "tersely."}],
            },
            {"role": "user", "content": "2+2?"},
        ],
        "max_new_tokens": 5,
        "temperature": 1,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 3,
        "stop": "\n\n",
        "metadata": {"team": "nlp"},
    }
    request, issues = parse_request(obj, "simple", 4, ReadOptions())
    assert issues == []
    assert request == Request(
        line=4,
        id="q1",
        kind="chat",
        prompt=None,
        messages=({"role": "developer", "content": "Answer\ntersely."}, {"role": "user", "content": "2+2?"}),
        max_new_tokens=5,
        temperature=1.0,
        top_p=0.9,
        top_k=40,
        seed=3,
        stop=("\n\n",),
        metadata={"team": "nlp"},
        openai_url=None,
        openai_model=None,
    )


def test_null_optional_fields_mean_absent() -> None:
    obj = {"id": None, "prompt": "hi", "max_new_tokens": None, "temperature": None, "stop": None}
    request, issues = parse_request(obj, "simple", 9, ReadOptions(default_max_new_tokens=33))
    assert issues == []
    assert request is not None
    assert (request.id, request.max_new_tokens, request.temperature, request.stop) == ("line-9", 33, None, ())


# ---------------------------------------------------------------- line endings, BOM, blank lines


def test_bom_crlf_and_blank_lines_are_handled(tmp_path: Path) -> None:
    path = tmp_path / "windows.jsonl"
    body = '{"prompt": "first"}\r\n\r\n   \r\n{"prompt": "second"}\r\n'
    data = b"\xef\xbb\xbf" + body.encode()
    path.write_bytes(data)

    result = read_requests(path)

    assert result.table["line"].tolist() == [1, 4]
    assert result.table["text"].tolist() == ["first", "second"]
    assert result.table["raw"].tolist() == ['{"prompt": "first"}', '{"prompt": "second"}']
    assert result.n_lines == 4
    assert result.sha256 == hashlib.sha256(data).hexdigest()


def test_bom_on_a_later_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n\xef\xbb\xbf{"prompt": "b"}\n')
    issue = only_issue(path)
    assert issue.line == 2 and "invalid JSON" in issue.message


def test_whitespace_around_the_object_is_allowed(tmp_path: Path) -> None:
    path = write_lines(tmp_path, ['   {"prompt": "indented"}', '{"prompt": "trailing"}\t  '])
    result = read_requests(path)
    assert result.table["text"].tolist() == ["indented", "trailing"]
    assert json.loads(result.table["raw"][0]) == {"prompt": "indented"}


def test_last_line_without_newline_is_read(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}', encoding="utf-8")
    assert read_requests(path).table["text"].tolist() == ["a", "b"]


def test_empty_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    assert str(input_error(path)) == f"{path}: no requests: the file is empty"


def test_blank_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_bytes(b"\xef\xbb\xbf\n  \n\t\r\n")
    assert str(input_error(path)) == f"{path}: no requests: the file has only blank lines"


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    error = input_error(tmp_path / "nope.jsonl")
    assert "nope.jsonl: cannot read the input file" in str(error)
    assert error.exit_code == 2


# ---------------------------------------------------------------- line-level errors


def test_invalid_json_reports_line_and_column(tmp_path: Path) -> None:
    path = write_lines(tmp_path, [{"prompt": "ok"}, '{"prompt": "broken" "max_new_tokens": 3}'])
    issue = only_issue(path)
    assert issue.line == 2 and issue.field is None
    assert str(issue) == f"{path}:2: invalid JSON at column 21: Expecting ',' delimiter"


def test_trailing_garbage_is_invalid_json(tmp_path: Path) -> None:
    path = write_lines(tmp_path, ['{"prompt": "a"} x'])
    issue = only_issue(path)
    assert (issue.line, issue.field) == (1, None)
    assert "invalid JSON at column 17: Extra data" in str(issue)


def test_nan_is_not_json(tmp_path: Path) -> None:
    path = write_lines(tmp_path, ['{"prompt": "a", "temperature": NaN}'])
    issue = only_issue(path)
    assert issue.line == 1
    assert "NaN is not a JSON value" in str(issue)


@pytest.mark.parametrize(
    ("line", "kind"),
    [('["a", "b"]', "an array"), ('"just text"', "a string"), ("42", "an integer"), ("null", "null")],
)
def test_line_that_is_not_an_object(tmp_path: Path, line: str, kind: str) -> None:
    path = write_lines(tmp_path, [{"prompt": "ok"}, line])
    issue = only_issue(path)
    assert issue.line == 2
    assert str(issue) == f"{path}:2: the line is {kind}, not a JSON object"


def test_invalid_utf8_is_reported_on_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n{"prompt": "fine"}\n')
    error = input_error(path)
    assert [(i.line, i.field) for i in error.issues] == [(2, None)]
    assert f"{path}:2: not valid UTF-8" in str(error.issues[0])

    kept = read_requests(path, ReadOptions(skip_invalid=True))
    assert kept.table["line"].tolist() == [1, 3]
    assert kept.rejected[0].raw == '{"prompt": "caf\ufffd"}'


def test_over_long_line_is_rejected_without_parsing(tmp_path: Path) -> None:
    long_broken = '{"prompt": "' + "x" * 200 + '"'  # also invalid JSON: must not be parsed
    path = write_lines(tmp_path, [{"prompt": "short"}, long_broken])
    issue = only_issue(path, max_line_bytes=100)
    assert issue.line == 2 and issue.field is None
    assert "213 bytes, more than max_line_bytes (100)" in str(issue)
    assert "--max-line-bytes" in issue.message


def test_line_length_counts_bytes_not_characters(tmp_path: Path) -> None:
    line = '{"prompt": "' + "é" * 30 + '"}'  # 44 characters, 74 bytes
    path = write_lines(tmp_path, [line])
    assert read_requests(path, ReadOptions(max_line_bytes=74)).table["text"][0] == "é" * 30
    assert "74 bytes" in str(only_issue(path, max_line_bytes=60))


# ---------------------------------------------------------------- field errors, simple format


def test_missing_prompt_and_messages(tmp_path: Path) -> None:
    path = write_lines(tmp_path, [{"prompt": "a"}, {"id": "x", "max_new_tokens": 3}])
    issue = only_issue(path)
    assert (issue.line, issue.field) == (2, "prompt")
    assert str(issue).startswith(f"{path}:2: prompt: missing: give 'prompt'")


def test_prompt_and_messages_both_given(tmp_path: Path) -> None:
    path = write_lines(tmp_path, [{"prompt": "a", "messages": chat(("user", "b"))}])
    issue = only_issue(path)
    assert (issue.line, issue.field) == (1, "prompt")
    assert "both 'prompt' and 'messages' are given" in str(issue)


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt(tmp_path: Path, prompt: str) -> None:
    path = write_lines(tmp_path, [{"prompt": "a"}, {"prompt": "b"}, {"prompt": prompt}])
    issue = only_issue(path)
    assert (issue.line, issue.field) == (3, "prompt")
    assert str(issue) == f"{path}:3: prompt: is empty"


@pytest.mark.parametrize(
    ("record", "field", "fragment"),
    [
        ({"id": True, "prompt": "a"}, "id", "must be a non-empty string or an integer, got true"),
        ({"id": "", "prompt": "a"}, "id", "must be a non-empty string"),
        ({"id": 1.5, "prompt": "a"}, "id", "got 1.5"),
        ({"prompt": 12}, "prompt", "must be a string, got an integer"),
        ({"prompt": ["a", "b"]}, "prompt", "must be a string, got an array"),
        (
            {"prompt": "a", "max_new_tokens": True},
            "max_new_tokens",
            "must be an integer, got a boolean (true)",
        ),
        (
            {"prompt": "a", "max_new_tokens": "64"},
            "max_new_tokens",
            'must be an integer, got a string ("64")',
        ),
        (
            {"prompt": "a", "max_new_tokens": 64.0},
            "max_new_tokens",
            "must be an integer, got a number (64.0)",
        ),
        ({"prompt": "a", "temperature": "hot"}, "temperature", "must be a number >= 0"),
        ({"prompt": "a", "temperature": False}, "temperature", "got false"),
        ({"prompt": "a", "top_p": "0.5"}, "top_p", "0 < top_p <= 1"),
        ({"prompt": "a", "top_k": 1.5}, "top_k", "must be an integer >= 0"),
        ({"prompt": "a", "top_k": True}, "top_k", "got true"),
        ({"prompt": "a", "seed": True}, "seed", "must be an integer"),
        ({"prompt": "a", "seed": "42"}, "seed", 'got "42"'),
        ({"prompt": "a", "stop": 5}, "stop", "must be a string or a list of strings, got an integer"),
        ({"prompt": "a", "stop": ["ok", 3]}, "stop", "must be a string or a list of strings"),
        ({"prompt": "a", "stop": [""]}, "stop", "must not contain empty strings"),
        ({"prompt": "a", "metadata": ["x"]}, "metadata", "must be an object, got an array"),
        ({"messages": "hello"}, "messages", "must be a list of {'role', 'content'} objects, got a string"),
        ({"messages": []}, "messages", "is empty"),
        ({"messages": ["hello"]}, "messages[0]", "must be an object with 'role' and 'content'"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "system, user, assistant"),
        ({"messages": [{"content": "x"}]}, "messages[0].role", "got missing"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "is missing"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content", "got null"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content[0].type",
            "only text parts ({'type': 'text', 'text': ...}), got \"image_url\"",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
            "messages[0].content[0].text",
            "must be a string, got an integer",
        ),
        ({"messages": chat(("system", ""), ("user", " "))}, "messages", "every message is empty"),
    ],
)
def test_wrong_field_types_name_line_and_field(
    tmp_path: Path, record: dict[str, Any], field: str, fragment: str
) -> None:
    path = write_lines(tmp_path, [{"prompt": "fine"}, record])
    issue = only_issue(path)
    assert (issue.line, issue.field, issue.severity) == (2, field, "error")
    assert str(issue).startswith(f"{path}:2: {field}: ")
    assert fragment in issue.message


@pytest.mark.parametrize("value", [0, -1, 32769, 10**30])
def test_token_limit_out_of_range(tmp_path: Path, value: int) -> None:
    path = write_lines(tmp_path, [{"prompt": "a", "max_new_tokens": value}])
    issue = only_issue(path)
    assert (issue.line, issue.field) == (1, "max_new_tokens")
    assert f"must be between 1 and 32768 (max_new_tokens_limit), got {value}" in str(issue)


def test_token_limit_follows_the_configured_limit(tmp_path: Path) -> None:
    path = write_lines(tmp_path, [{"prompt": "a", "max_new_tokens": 600}])
    assert "between 1 and 512" in str(only_issue(path, max_new_tokens_limit=512))
    assert read_requests(path, ReadOptions(max_new_tokens_limit=600)).table["max_new_tokens"][0] == 600


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": -1}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"seed": 2**64}, "seed"),
    ],
)
def test_sampling_values_out_of_range(tmp_path: Path, record: dict[str, Any], field: str) -> None:
    path = write_lines(tmp_path, [{"prompt": "a", **record}])
    issue = only_issue(path)
    assert (issue.line, issue.field) == (1, field)
    assert str(issue).startswith(f"{path}:1: {field}: must be")


def test_sampling_edge_values_are_valid() -> None:
    request, issues = parse_request(
        {"prompt": "a", "temperature": 0, "top_p": 1, "top_k": 0, "seed": 0}, "simple", 1, ReadOptions()
    )
    assert issues == [] and request is not None
    assert (request.temperature, request.top_p, request.top_k, request.seed) == (0.0, 1.0, 0, 0)


def test_every_issue_of_a_line_is_reported(tmp_path: Path) -> None:
    record = {"id": False, "max_new_tokens": 0, "temperature": -1, "top_p": 2}
    path = write_lines(tmp_path, [record])
    fields = [issue.field for issue in input_error(path).issues]
    assert fields == ["id", "prompt", "max_new_tokens", "temperature", "top_p"]


# ---------------------------------------------------------------- duplicate ids


def test_duplicate_id_names_the_earlier_line(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path, [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}, {"id": "a", "prompt": "z"}]
    )
    issue = only_issue(path)
    assert (issue.line, issue.field) == (3, "id")
    assert str(issue) == f"{path}:3: id: duplicate id 'a': line 1 has the same id; ids must be unique"


def test_integer_and_string_ids_collide(tmp_path: Path) -> None:
    path = write_lines(tmp_path, [{"id": 7, "prompt": "x"}, {"id": "7", "prompt": "y"}])
    issue = only_issue(path)
    assert (issue.line, issue.field) == (2, "id") and "line 1" in issue.message


def test_generated_ids_collide_like_any_other(tmp_path: Path) -> None:
    path = write_lines(tmp_path, [{"prompt": "x"}, {"id": "line-1", "prompt": "y"}])
    issue = only_issue(path)
    assert (issue.line, issue.field) == (2, "id")
    assert "duplicate id 'line-1': line 1 has the same id" in issue.message
    assert "generated as line-<n>" in issue.message


def test_id_of_an_invalid_line_still_counts(tmp_path: Path) -> None:
    # The rejected line becomes an error record with that id in the results: ids must stay unique.
    path = write_lines(
        tmp_path, [{"id": "a", "prompt": ""}, {"id": "a", "prompt": "y"}, {"id": "b", "prompt": "z"}]
    )
    error = input_error(path)
    assert [(i.line, i.field) for i in error.issues] == [(1, "prompt"), (2, "id")]
    result = read_requests(path, ReadOptions(skip_invalid=True))
    assert [r.line for r in result.rejected] == [1, 2]
    assert result.table["id"].tolist() == ["b"]


# ---------------------------------------------------------------- whole-file behaviour


def test_all_errors_are_collected_in_line_order(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path,
        [
            {"prompt": "fine"},
            {"prompt": "fine too"},
            "{not json",
            {"prompt": ""},
            {"prompt": "ok"},
            {"prompt": "x", "top_p": 3},
        ],
    )
    error = input_error(path)
    assert str(error).startswith(f"{path}: 3 invalid lines (first: line 3); nothing was submitted")
    assert "--skip-invalid" in str(error)
    assert [(i.line, i.field) for i in error.issues] == [(3, None), (4, "prompt"), (6, "top_p")]
    assert all(str(i).startswith(f"{path}:{i.line}: ") for i in error.issues)


def test_one_invalid_line_is_singular(tmp_path: Path) -> None:
    path = write_lines(tmp_path, [{"prompt": ""}])
    assert str(input_error(path)).startswith(f"{path}: 1 invalid line (first: line 1)")


def test_skip_invalid_keeps_the_valid_lines_and_rejects_the_rest(tmp_path: Path) -> None:
    lines: list[str | dict[str, Any]] = [
        {"id": "a", "prompt": "one"},
        "[1, 2]",
        {"id": "b", "prompt": "two", "max_new_tokens": -5},
        {"id": "c", "prompt": "three"},
        {"id": "a", "prompt": "again"},
    ]
    path = write_lines(tmp_path, lines)
    result = read_requests(path, ReadOptions(skip_invalid=True))

    assert result.table["id"].tolist() == ["a", "c"]
    assert result.table["line"].tolist() == [1, 4]
    assert [r.line for r in result.rejected] == [2, 3, 5]
    assert result.rejected[0].raw == "[1, 2]"
    assert json.loads(result.rejected[1].raw)["max_new_tokens"] == -5
    assert [i.field for i in result.rejected[1].issues] == ["max_new_tokens"]
    assert result.rejected[2].issues[0].field == "id"

    rejects = tmp_path / "batch" / "rejects.jsonl"
    write_rejects(rejects, result.rejected)
    records = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()]
    assert [r["line"] for r in records] == [2, 3, 5]
    assert records[0] == {
        "line": 2,
        "raw": "[1, 2]",
        "errors": [{"field": None, "message": "the line is an array, not a JSON object"}],
    }
    assert records[1]["errors"][0]["field"] == "max_new_tokens"
    assert "between 1 and 32768" in records[1]["errors"][0]["message"]


def test_skip_invalid_with_nothing_valid_is_still_an_error(tmp_path: Path) -> None:
    path = write_lines(tmp_path, ["{", {"prompt": ""}])
    error = input_error(path, skip_invalid=True)
    assert str(error).startswith(
        f"{path}: no valid requests: all 2 non-blank lines are invalid (first: line 1)"
    )
    assert [i.line for i in error.issues] == [1, 2]


def test_write_rejects_is_atomic_and_keeps_unicode(tmp_path: Path) -> None:
    target = tmp_path / "rejects.jsonl"
    target.write_text("old content\n", encoding="utf-8")
    issue = InputIssue("p.jsonl", 4, "prompt", "is empty")
    write_rejects(target, [Rejected(4, '{"prompt": "", "note": "naïve"}', [issue])])
    assert target.read_text(encoding="utf-8") == (
        '{"line":4,"raw":"{\\"prompt\\": \\"\\", \\"note\\": \\"naïve\\"}",'
        '"errors":[{"field":"prompt","message":"is empty"}]}\n'
    )
    assert [p.name for p in tmp_path.iterdir()] == ["rejects.jsonl"]


# ---------------------------------------------------------------- warnings


def test_unknown_simple_field_is_a_warning_with_a_hint(tmp_path: Path) -> None:
    path = write_lines(tmp_path, [{"prompt": "a", "max_tokens": 20}, {"prompt": "b", "colour": "red"}])
    result = read_requests(path)
    assert len(result.table) == 2
    assert result.table["max_new_tokens"].tolist() == [64, 64]
    assert [(w.line, w.field, w.severity) for w in result.warnings] == [
        (1, "max_tokens", "warning"),
        (2, "colour", "warning"),
    ]
    assert str(result.warnings[0]) == (
        f"{path}:1: max_tokens: not supported; it is ignored (did you mean 'max_new_tokens'?)"
    )


def test_unknown_message_keys_are_warnings() -> None:
    obj = {"messages": [{"role": "user", "content": "hi", "name": "ann"}]}
    request, issues = parse_request(obj, "simple", 2, ReadOptions(), path="p.jsonl")
    assert request is not None and request.messages == ({"role": "user", "content": "hi"},)
    assert [str(i) for i in issues] == ["p.jsonl:2: messages[0].name: not supported; it is ignored"]


def test_repeated_warnings_are_summarised(tmp_path: Path) -> None:
    path = write_lines(tmp_path, [{"prompt": str(i), "colour": "red"} for i in range(5)])
    result = read_requests(path)
    assert len(result.warnings) == 1
    assert str(result.warnings[0]) == f"{path}:1: colour: not supported; it is ignored (and on 4 more lines)"


# ---------------------------------------------------------------- OpenAI batch format


def openai_line(custom_id: str, url: str = "/v1/chat/completions", **body: Any) -> dict[str, Any]:
    if "messages" not in body and "prompt" not in body:
        if url == "/v1/chat/completions":
            body["messages"] = chat(("user", "Hello"))
        else:
            body["prompt"] = "Once upon a time"
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": "demo", **body}}


def test_openai_batch_file(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path,
        [
            openai_line("req-1", max_tokens=16, temperature=0.2),
            openai_line("req-2", "/v1/completions", max_completion_tokens=8, stop=["\n"]),
            openai_line("req-3", max_tokens=10, max_completion_tokens=10, n=1, seed=5, top_k=20),
        ],
        name="batch.jsonl",
    )
    result = read_requests(path, ReadOptions(default_max_new_tokens=50))
    assert result.format == "openai"
    assert result.table["id"].tolist() == ["req-1", "req-2", "req-3"]
    assert result.table["kind"].tolist() == ["chat", "prompt", "chat"]
    assert result.table["max_new_tokens"].tolist() == [16, 8, 10]
    assert result.table["text"][1] == "Once upon a time"
    assert result.table["messages"][0] == [{"role": "user", "content": "Hello"}]
    assert result.warnings == []

    request, _ = parse_request(json.loads(result.table["raw"][1]), "openai", 2, ReadOptions())
    assert request is not None
    assert (request.openai_url, request.openai_model, request.stop) == ("/v1/completions", "demo", ("\n",))


def test_openai_max_tokens_default(tmp_path: Path) -> None:
    request, issues = parse_request(openai_line("x"), "openai", 1, ReadOptions(default_max_new_tokens=21))
    assert issues == [] and request is not None and request.max_new_tokens == 21


@pytest.mark.parametrize(
    ("record", "field", "fragment"),
    [
        ({"method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}, "custom_id", "missing"),
        ({**openai_line("x"), "custom_id": 5}, "custom_id", "must be a non-empty string, got 5"),
        ({**openai_line("x"), "method": "GET"}, "method", 'must be "POST", got "GET"'),
        ({**openai_line("x"), "url": "/v1/embeddings"}, "url", '"/v1/chat/completions" or "/v1/completions"'),
        ({"custom_id": "x", "method": "POST", "url": "/v1/completions"}, "body", "missing"),
        (
            {"custom_id": "x", "url": "/v1/completions", "body": "text"},
            "body",
            "must be an object, got a string",
        ),
        (openai_line("x", max_tokens=10, max_completion_tokens=12), "body.max_tokens", "disagree"),
        (openai_line("x", max_tokens=0), "body.max_tokens", "between 1 and 32768"),
        (openai_line("x", max_completion_tokens=True), "body.max_completion_tokens", "got a boolean"),
        (openai_line("x", n=2), "body.n", "must be 1"),
        (openai_line("x", temperature=-2), "body.temperature", "must be a number >= 0"),
        (openai_line("x", top_p=0), "body.top_p", "0 < top_p <= 1"),
        (openai_line("x", top_k=-1), "body.top_k", "vLLM uses -1"),
        (openai_line("x", seed=1.5), "body.seed", "must be an integer"),
        (openai_line("x", model=3), "body.model", "must be a string"),
        (openai_line("x", "/v1/completions", prompt=["a", "b"]), "body.prompt", "lists of prompts"),
        (openai_line("x", "/v1/completions", prompt=""), "body.prompt", "is empty"),
        (
            openai_line("x", "/v1/completions", messages=chat(("user", "a"))),
            "body.messages",
            "not valid for /v1/completions",
        ),
        (openai_line("x", prompt="a"), "body.prompt", "not valid for /v1/chat/completions"),
        (
            {"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}},
            "body.messages",
            "missing",
        ),
        (openai_line("x", messages=[{"role": "bot", "content": "a"}]), "body.messages[0].role", "one of"),
    ],
)
def test_openai_errors_name_line_and_field(
    tmp_path: Path, record: dict[str, Any], field: str, fragment: str
) -> None:
    path = write_lines(tmp_path, [openai_line("first"), record])
    issues = input_error(path).issues
    assert issues[0].line == 2
    assert issues[0].field == field, [str(i) for i in issues]
    assert str(issues[0]).startswith(f"{path}:2: {field}: ")
    assert fragment in issues[0].message


def test_openai_duplicate_custom_id(tmp_path: Path) -> None:
    path = write_lines(tmp_path, [openai_line("r"), openai_line("s"), openai_line("r")])
    issue = only_issue(path)
    assert (issue.line, issue.field) == (3, "custom_id")
    assert "duplicate id 'r': line 1 has the same id" in issue.message


def test_openai_unknown_fields_are_warnings(tmp_path: Path) -> None:
    record = openai_line("a", presence_penalty=0.5, logprobs=True)
    record["priority"] = "low"
    path = write_lines(tmp_path, [record, openai_line("b", presence_penalty=0.1)])
    result = read_requests(path)
    assert len(result.table) == 2
    assert [(w.line, w.field, w.severity) for w in result.warnings] == [
        (1, "priority", "warning"),
        (1, "body.presence_penalty", "warning"),
        (1, "body.logprobs", "warning"),
    ]
    assert str(result.warnings[1]) == (
        f"{path}:1: body.presence_penalty: not supported; it is ignored (and on 1 more line)"
    )


def test_openai_method_may_be_omitted() -> None:
    record = openai_line("a")
    del record["method"]
    request, issues = parse_request(record, "openai", 1, ReadOptions())
    assert issues == [] and request is not None and request.openai_url == "/v1/chat/completions"


# ---------------------------------------------------------------- one format per file


def test_format_is_decided_by_the_first_object_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path, ["", "not json", "[1]", openai_line("a"), {"prompt": "simple"}])
    error = input_error(path)
    assert [(i.line, i.field) for i in error.issues] == [(2, None), (3, None), (5, "custom_id")]
    assert "this line is a simple-format request" in error.issues[2].message
    assert "line 4 is an OpenAI batch request and decided the file's format" in error.issues[2].message


def test_openai_line_in_a_simple_file(tmp_path: Path) -> None:
    path = write_lines(tmp_path, [{"prompt": "a"}, {"prompt": "b"}, openai_line("x")])
    issue = only_issue(path)
    assert (issue.line, issue.field) == (3, "custom_id")
    assert str(issue).startswith(f"{path}:3: custom_id: this line is an OpenAI batch request, but line 1")


def test_body_without_custom_id_is_openai(tmp_path: Path) -> None:
    record = openai_line("x")
    del record["custom_id"]
    path = write_lines(tmp_path, [record])
    issue = only_issue(path)
    assert (issue.line, issue.field) == (1, "custom_id")
    assert "missing" in issue.message


# ---------------------------------------------------------------- the worker's side


def dispatch_task_input(path: Path, result: Any) -> None:
    """What the dispatcher writes: one {"line", "request"} record per request, the raw line verbatim."""
    rows = zip(result.table["line"], result.table["raw"], strict=True)
    path.write_text("".join(f'{{"line":{line},"request":{raw}}}\n' for line, raw in rows), encoding="utf-8")


@pytest.mark.parametrize("fmt", ["simple", "openai"])
def test_task_input_round_trip(tmp_path: Path, fmt: str) -> None:
    if fmt == "simple":
        records: list[dict[str, Any]] = [
            {"id": "a", "prompt": "One", "max_new_tokens": 3, "stop": ["."], "metadata": {"k": 1}},
            {
                "messages": chat(("system", "S"), ("user", [{"type": "text", "text": "U"}])),
                "temperature": 0.5,
            },
            {"id": 9, "prompt": "Ünïcode ✓", "seed": 11, "top_k": 5, "top_p": 0.5},
        ]
    else:
        records = [
            openai_line("a", max_tokens=4),
            openai_line("b", "/v1/completions", seed=1, stop="END"),
        ]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + ("\r\n\n".join(json.dumps(r) for r in records) + "\r\n").encode())
    options = ReadOptions(default_max_new_tokens=17)
    result = read_requests(path, options)

    task_input = tmp_path / "tasks" / "000000" / "input.jsonl"
    task_input.parent.mkdir(parents=True)
    dispatch_task_input(task_input, result)
    loaded = load_task_input(task_input, result.format, options)

    expected = [parse_request(r, result.format, 2 * i + 1, options)[0] for i, r in enumerate(records)]
    assert loaded == expected
    assert [r.line for r in loaded] == [1, 3, 5][: len(records)]
    assert [r.id for r in loaded] == result.table["id"].tolist()
    assert [r.max_new_tokens for r in loaded] == result.table["max_new_tokens"].tolist()
    assert loaded[1].max_new_tokens == 17  # the default, applied the same way on both sides


def test_damaged_task_input_is_an_error_not_a_skip(tmp_path: Path) -> None:
    task_input = tmp_path / "input.jsonl"
    task_input.write_text(
        '{"line": 1, "request": {"prompt": "ok"}}\n'
        '{"line": 2, "request": {"prompt": ""}}\n'
        '{"line": 3, "requ\n',
        encoding="utf-8",
    )
    with pytest.raises(InputError) as info:
        load_task_input(task_input, "simple", ReadOptions())
    issues = info.value.issues
    assert [(i.line, i.field) for i in issues] == [(2, "prompt"), (3, None)]
    assert "resubmit the batch" in str(info.value)


def test_task_input_is_checked_with_the_task_limits(tmp_path: Path) -> None:
    task_input = tmp_path / "input.jsonl"
    task_input.write_text(
        '{"line": 8, "request": {"prompt": "ok", "max_new_tokens": 100}}\n', encoding="utf-8"
    )
    with pytest.raises(InputError) as info:
        load_task_input(task_input, "simple", ReadOptions(max_new_tokens_limit=50))
    assert str(info.value.issues[0]) == (
        f"{task_input}:8: max_new_tokens: must be between 1 and 50 (max_new_tokens_limit), got 100"
    )


def test_parse_request_rejects_non_objects() -> None:
    request, issues = parse_request(["a"], "simple", 5, ReadOptions(), path="f.jsonl")
    assert request is None
    assert [str(i) for i in issues] == ["f.jsonl:5: the line is an array, not a JSON object"]


# ---------------------------------------------------------------- shipped examples


def test_example_prompts_parse_cleanly() -> None:
    result = read_requests(EXAMPLES / "prompts.jsonl")
    assert result.format == "simple"
    assert len(result.table) >= 60
    assert result.warnings == [] and result.rejected == []
    table = result.table
    assert set(table["kind"]) == {"prompt", "chat"}
    assert table["max_new_tokens"].max() <= 64
    lengths = [len(t) for t in table["text"].dropna()]
    assert min(lengths) < 60 and max(lengths) > 2500
    assert table["id"].str.startswith("line-").any() and not table["id"].str.startswith("line-").all()


def test_example_openai_batch_parses_cleanly() -> None:
    result = read_requests(EXAMPLES / "openai-batch.jsonl")
    assert result.format == "openai"
    assert len(result.table) >= 8
    assert result.warnings == [] and result.rejected == []
    assert set(result.table["kind"]) == {"prompt", "chat"}


def test_examples_together_hold_at_least_fifty_requests() -> None:
    total = sum(len(read_requests(EXAMPLES / name).table) for name in ("prompts.jsonl", "openai-batch.jsonl"))
    assert total >= 50
