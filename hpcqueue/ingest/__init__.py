"""Ingest: an input file becomes validated requests with their token counts, before anything is planned.

``read`` reads a JSONL file (and a task's input on the worker), ``validate`` checks each line, ``records``
holds the request types, and ``tokens`` counts each request's input tokens with the model's light tokenizer.
"""

from __future__ import annotations

from hpcqueue.ingest.read import load_task_input, read_requests, rejected_id, write_rejects
from hpcqueue.ingest.records import ReadOptions, Rejected, Request, RequestSet
from hpcqueue.ingest.tokens import (
    CountedRequests,
    check_context_length,
    count_input_tokens,
    read_and_count,
    read_options,
    request_text,
)
from hpcqueue.ingest.validate import parse_request

__all__ = [
    "CountedRequests",
    "ReadOptions",
    "Rejected",
    "Request",
    "RequestSet",
    "check_context_length",
    "count_input_tokens",
    "load_task_input",
    "parse_request",
    "read_and_count",
    "read_options",
    "read_requests",
    "rejected_id",
    "request_text",
    "write_rejects",
]
