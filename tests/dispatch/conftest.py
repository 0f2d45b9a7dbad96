"""Fixtures shared by the dispatch tests."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest


@pytest.fixture()
def paris_time() -> Iterator[None]:
    """Run with the machine's local time zone set to Europe/Paris (Slurm reads and prints local times), for
    this process and the Slurm commands it starts."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Paris"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()
