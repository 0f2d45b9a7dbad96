"""Input size limits: each refusal names the file (and line and field) and the limit, and how to change it.

A file is held in memory while it is checked, so its size is capped (``max_input_bytes``); a line is capped
before it is parsed (``max_line_bytes``); an id is capped at ``MAX_ID_CHARS`` characters and may not hold
NUL; a prompt's tokens plus its output limit must fit the model's context.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcqueue.errors import InputError
from hpcqueue.ingest import ReadOptions, read_requests
from hpcqueue.ingest.validate import MAX_ID_CHARS
from tests.conftest import run_cli


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_a_file_above_max_input_bytes_is_refused_before_it_is_read_whole(tmp_path: Path) -> None:
    path = _write(tmp_path / "big.jsonl", [{"prompt": "hello there"}] * 20)
    size = path.stat().st_size
    assert len(read_requests(path, ReadOptions(max_input_bytes=size)).table) == 20  # at the limit: fine
    with pytest.raises(InputError) as caught:
        read_requests(path, ReadOptions(max_input_bytes=size - 1))
    message = str(caught.value)
    assert message.startswith(f"{path}: the input file is larger than max_input_bytes ({size - 1} bytes)")
    assert "HPCQUEUE_MAX_INPUT_BYTES" in message


def test_an_endless_input_is_refused_at_the_limit_instead_of_filling_memory() -> None:
    with pytest.raises(InputError, match="larger than max_input_bytes"):
        read_requests("/dev/zero", ReadOptions(max_input_bytes=1 << 20))


@pytest.mark.parametrize(
    ("record", "field", "why"),
    [
        ({"id": "x" * (MAX_ID_CHARS + 1), "prompt": "p"}, "id", f"the limit is {MAX_ID_CHARS}"),
        ({"id": "a\u0000b", "prompt": "p"}, "id", "holds a NUL character"),
        (
            {"custom_id": "y" * (MAX_ID_CHARS + 1), "url": "/v1/completions", "body": {"prompt": "p"}},
            "custom_id",
            f"the limit is {MAX_ID_CHARS}",
        ),
    ],
)
def test_an_over_long_id_or_one_holding_nul_is_refused_naming_line_and_field(
    tmp_path: Path, record: dict, field: str, why: str
) -> None:
    ok = {"id": "fine", "prompt": "p"} if field == "id" else {**record, "custom_id": "fine"}
    path = _write(tmp_path / "ids.jsonl", [ok, record])
    with pytest.raises(InputError) as caught:
        read_requests(path)
    (issue,) = caught.value.issues
    assert (issue.path, issue.line, issue.field) == (str(path), 2, field)
    assert why in issue.message


def test_an_id_of_exactly_the_limit_with_any_other_character_is_kept(tmp_path: Path) -> None:
    ids = ["z" * MAX_ID_CHARS, "$(id)\n`id`;'\"../..\t\u202e"]
    path = _write(tmp_path / "ids.jsonl", [{"id": rid, "prompt": "p"} for rid in ids])
    assert list(read_requests(path).table["id"]) == ids


@pytest.mark.slow
def test_limits_from_the_environment_reach_submit(hq_env: dict[str, str], tmp_path: Path) -> None:
    path = _write(tmp_path / "in.jsonl", [{"prompt": "hello"}] * 50)
    done = run_cli(["submit", str(path), "--dry-run"], {**hq_env, "HPCQUEUE_MAX_INPUT_BYTES": "100"})
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert f"{path}: the input file is larger than max_input_bytes (100 bytes)" in message


@pytest.mark.slow
def test_a_prompt_longer_than_the_model_s_context_is_refused_naming_line_field_and_limit(
    hq_env: dict[str, str], tmp_path: Path
) -> None:
    """The demo model's context is 4096 tokens; a prompt of about 5000 words does not fit."""
    path = _write(
        tmp_path / "long.jsonl",
        [{"prompt": "short"}, {"id": "long", "prompt": "word " * 5000, "max_new_tokens": 8}],
    )
    done = run_cli(["submit", str(path), "--dry-run"], hq_env)
    assert done.returncode == 2
    text = " ".join(done.stderr.split())
    assert f"{path}:2: max_new_tokens:" in text
    assert "exceed the model's context length of 4096 tokens" in text
    assert "shorten the prompt or lower max_new_tokens" in text
