"""Input tokens: what text each request feeds the model, and how many tokens that is.

The driver counts with the model's light tokenizer (:class:`hpcqueue.models.Tokenizer`, no torch) and the
worker builds its input ids from the same :func:`request_text`, so planned and generated token counts agree. A
request whose prompt plus token limit does not fit the model's context is invalid input, found here before
anything is submitted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hpcqueue.config import Settings
from hpcqueue.errors import InputError, InputIssue
from hpcqueue.ingest.read import read_requests
from hpcqueue.ingest.records import ReadOptions, Rejected, Request, RequestSet
from hpcqueue.models import Tokenizer


@dataclass
class CountedRequests:
    """An input file's valid requests with their input token counts (``table["input_tokens"]``), the lines
    rejected, and the model whose tokenizer counted them."""

    requests: RequestSet
    table: pd.DataFrame
    rejected: list[Rejected]
    model: Any  # hpcqueue.models.ModelRef


def read_options(settings: Settings, *, skip_invalid: bool) -> ReadOptions:
    """How ``settings`` ask an input file to be read."""
    return ReadOptions(
        max_line_bytes=settings.max_line_bytes,
        max_input_bytes=settings.max_input_bytes,
        default_max_new_tokens=settings.max_new_tokens,
        max_new_tokens_limit=settings.max_new_tokens_limit,
        skip_invalid=skip_invalid,
    )


def read_and_count(
    path: str | os.PathLike[str], settings: Settings, *, skip_invalid: bool = False
) -> CountedRequests:
    """Read and validate ``path``, count every request's input tokens with ``settings.model``'s tokenizer
    and check that each fits the model's context. Raises :class:`InputError` on invalid lines (unless
    ``skip_invalid``) and :class:`hpcqueue.errors.ModelError` when the model or its tokenizer is missing."""
    from hpcqueue.models import resolve_model

    requests = read_requests(path, read_options(settings, skip_invalid=skip_invalid))
    model = resolve_model(settings.model, cache_dir=settings.cache_dir)
    tokenizer = Tokenizer.load(model.path)
    table = requests.table
    table["input_tokens"] = count_input_tokens(tokenizer, table)
    table, rejected = check_context_length(requests, table, tokenizer.context_length, skip_invalid)
    return CountedRequests(requests, table, rejected, model)


def request_text(tokenizer: Tokenizer, request: Request) -> tuple[str, bool]:
    """The text fed to the model for a request and whether the tokenizer adds its special tokens.

    A rendered chat template already holds its special tokens (e.g. the beginning-of-sequence token), so
    they are not added a second time; a prompt or a plain-format chat gets them from the tokenizer.
    """
    if request.kind == "chat":
        return tokenizer.render_chat(request.messages or ()), tokenizer.chat_template is None
    return request.prompt or "", True


def count_input_tokens(tokenizer: Tokenizer, table: pd.DataFrame) -> np.ndarray:
    """Input token counts (int64, one per row) of a request table (see docs/internals.md).

    Chat rows are rendered first and their ``text`` column is filled with the rendered conversation, so
    the planner and the results show what the model was given.
    """
    n = len(table)
    counts = np.zeros(n, dtype=np.int64)
    if n == 0:
        return counts
    is_chat = (table["kind"] == "chat").to_numpy()
    if is_chat.any():
        rendered = [tokenizer.render_chat(m) for m in table.loc[is_chat, "messages"]]
        table.loc[is_chat, "text"] = rendered
        counts[is_chat] = tokenizer.count(rendered, add_special_tokens=tokenizer.chat_template is None)
    prompts = ~is_chat
    if prompts.any():
        texts = table.loc[prompts, "text"].fillna("").astype(str).tolist()
        counts[prompts] = tokenizer.count(texts, add_special_tokens=True)
    return counts


def check_context_length(
    requests: RequestSet, table: pd.DataFrame, context_length: int | None, skip_invalid: bool
) -> tuple[pd.DataFrame, list[Rejected]]:
    """Requests whose prompt plus token limit do not fit the model's context are invalid input too."""
    rejected = list(requests.rejected)
    if not context_length:
        return table, rejected
    too_long = (table["input_tokens"] + table["max_new_tokens"]) > context_length
    if not too_long.any():
        return table, rejected
    path = str(requests.path)
    issues = [
        InputIssue(
            path,
            int(row.line),
            "max_new_tokens",
            f"{int(row.input_tokens)} prompt tokens + max_new_tokens {int(row.max_new_tokens)} "
            "exceed the model's "
            f"context length of {context_length} tokens; shorten the prompt or lower max_new_tokens",
        )
        for row in table.loc[too_long, ["line", "input_tokens", "max_new_tokens"]].itertuples(index=False)
    ]
    if not skip_invalid:
        raise InputError(
            f"{path}: {len(issues)} request(s) do not fit the model's context "
            f"(first: line {issues[0].line}); "
            "nothing was submitted",
            issues,
        )
    for issue, raw in zip(issues, table.loc[too_long, "raw"], strict=True):
        rejected.append(Rejected(issue.line, raw, [issue]))
    rejected.sort(key=lambda r: r.line)
    kept = table.loc[~too_long].reset_index(drop=True)
    if kept.empty:
        raise InputError(f"{path}: no request fits the model's context; nothing was submitted", issues)
    return kept, rejected
