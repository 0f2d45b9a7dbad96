"""Helpers shared by tests of different stages (fixtures live in tests/conftest.py)."""

from __future__ import annotations

import json
import sqlite3
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def input_ids(path: Path) -> list[str]:
    """The request ids of an input file, in order, as a user reads them off the lines: ``custom_id`` (OpenAI
    batch), else ``id``, else ``line-N`` (blank lines skipped, numbered as lines of the file)."""
    ids = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            obj = json.loads(line)
            ids.append(str(obj.get("custom_id", obj.get("id", f"line-{n}"))))
    return ids


def ledger_db(env: dict[str, str]) -> sqlite3.Connection:
    """The SQLite ledger of an ``hq_env`` environment, opened directly (as a user's ``sqlite3`` would)."""
    return sqlite3.connect(env["HPCQUEUE_DB_URL"].removeprefix("sqlite:///"))


def png_size(path: Path) -> tuple[int, int]:
    """The width and height in pixels of a PNG file, read from its header; fails when it is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.3) -> T:
    """Poll ``predicate`` until it returns something true and return that; fail naming ``what`` after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
