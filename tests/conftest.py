"""Shared fixtures: an isolated hpcqueue environment (cache, batch root, ledger, config) per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="session")
def hq_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for the whole session: the demo model is built once."""
    return tmp_path_factory.mktemp("hq-cache")


@pytest.fixture()
def hq_env(tmp_path: Path, hq_cache: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for the real CLI in a subprocess: private batch root, SQLite ledger and config dir."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("HPCQUEUE_") or key == "HPCQUEUE_TEST_PG_URL"
    }
    env.update(
        HPCQUEUE_CACHE_DIR=str(hq_cache),
        HPCQUEUE_BATCH_ROOT=str(tmp_path / "batches"),
        HPCQUEUE_DB_URL=f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        XDG_CONFIG_HOME=str(tmp_path / "config-home"),
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in list(os.environ):
        if key.startswith("HPCQUEUE_") and key not in env:
            monkeypatch.delenv(key)
    return env


def run_cli(
    args: list[str], env: dict[str, str], cwd: Path = REPO, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the real ``hpcqueue`` command (as a user would) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "hpcqueue", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
