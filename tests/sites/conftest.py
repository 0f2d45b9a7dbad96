"""Fixtures of the site tests: the real grid data, when a copy is named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Electricity Maps (ODbL), Open-Meteo (CC BY 4.0) and market prices cannot ship with the repository; the
# tests that read them take the directory this variable names. Read at start-up, before any test's
# monkeypatch removes HPCQUEUE_* variables.
GRID_DATA_VAR = "HPCQUEUE_GRID_DATA"
GRID_DATA_ENV = os.environ.get(GRID_DATA_VAR, "")


@pytest.fixture(scope="session")
def grid_data() -> Path:
    """The directory of the real 2023 grid data (``carbon_intensity/``, ``weather/``,
    ``electricity_prices/``), named by ``HPCQUEUE_GRID_DATA``. Without it the test is skipped with the
    reason, except under CI, where a skip would hide a test that did not run: there it fails."""
    reason = None
    if not GRID_DATA_ENV:
        reason = f"{GRID_DATA_VAR} is not set"
    elif not (Path(GRID_DATA_ENV) / "carbon_intensity").is_dir():
        reason = f"{GRID_DATA_VAR}={GRID_DATA_ENV} has no carbon_intensity/ folder"
    if reason is None:
        return Path(GRID_DATA_ENV).resolve()
    reason += (
        ": the real carbon, weather and price data (Electricity Maps ODbL, Open-Meteo CC BY 4.0, market "
        f"operators' terms) are not in the repository; point {GRID_DATA_VAR} at a copy (a directory like "
        "/work/shared/data/grid) to run this test"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)
