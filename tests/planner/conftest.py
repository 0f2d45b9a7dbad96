"""Fixtures of the planner tests."""

from __future__ import annotations

import pandas as pd
import pytest

from hpcqueue.planner.simulate import load_trace
from tests.conftest import AZURE_TRACE


@pytest.fixture(scope="module")
def azure() -> pd.DataFrame:
    """The Azure LLM code trace shipped in examples/traces/ (8819 requests), read as ``simulate`` reads it."""
    return load_trace(AZURE_TRACE)
