"""The request types of ingest: what one input line becomes, and what reading a file returns.

``Request`` is one validated, normalised request, the same on the driver and on the worker; ``RequestSet`` is
a whole input file read into a table (columns in docs/internals.md); ``Rejected`` is a line that failed
validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from hpcqueue.errors import InputIssue

InputFormat = Literal["simple", "openai"]

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
ROLES = ("system", "user", "assistant", "tool", "developer")


@dataclass(frozen=True)
class ReadOptions:
    """Limits and behaviour of input validation (from settings and command-line flags)."""

    max_line_bytes: int = 1_048_576
    max_input_bytes: int = 2**31  # 2 GiB: the file is held in memory while it is checked
    default_max_new_tokens: int = 64
    max_new_tokens_limit: int = 32768
    skip_invalid: bool = False


@dataclass(frozen=True)
class Request:
    """One normalised request: what the worker generates from, whatever the input format was."""

    line: int
    id: str
    kind: Literal["prompt", "chat"]
    prompt: str | None
    messages: tuple[dict[str, str], ...] | None
    max_new_tokens: int
    temperature: float | None
    top_p: float | None
    top_k: int | None
    seed: int | None
    stop: tuple[str, ...]
    metadata: dict[str, Any] | None
    openai_url: str | None  # CHAT_URL or COMPLETIONS_URL for OpenAI-batch input, else None
    openai_model: str | None


@dataclass
class Rejected:
    """An input line that failed validation (kept with ``skip_invalid``; written to ``rejects.jsonl``)."""

    line: int
    raw: str
    issues: list[InputIssue]


@dataclass
class RequestSet:
    """The result of reading an input file: the valid requests as a table, and what was wrong."""

    path: Path
    format: InputFormat
    table: pd.DataFrame
    warnings: list[InputIssue]
    rejected: list[Rejected]
    sha256: str
    n_lines: int
    decided_by_line: int = field(default=0)

    def __len__(self) -> int:
        return len(self.table)
