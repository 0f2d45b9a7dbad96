"""The browser session the report's browser tests share (one per module: starting Chromium takes seconds)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.report import browser


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    session = browser.start()
    try:
        yield session
    finally:
        session.quit()
