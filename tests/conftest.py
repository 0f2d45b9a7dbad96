"""Shared fixtures: an isolated hpcqueue environment (cache, batch root, ledger, config) per test session."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from hpcqueue.models import ModelRef

# Fixtures faking the outside world's energy hardware (no RAPL, no GPU, ...) live with the other fakes.
pytest_plugins = ["tests.fakes.machine"]

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SHIPPED_PROFILES = REPO / "profiles"
# The Azure LLM code trace (CC BY 4.0) ships with the repository; see examples/traces/README.md.
AZURE_TRACE = EXAMPLES / "traces" / "AzureLLMInferenceTrace_code.csv"
# The raw measurements of Wilkins et al. (2024) have no redistribution licence, and the grid data (carbon
# intensity under ODbL, market prices under their operators' terms) may not ship either: tests that need them
# read the directories these variables name (see the paper_data and grid_data fixtures).
PAPER_DATA_VAR = "HPCQUEUE_PAPER_DATA"
GRID_DATA_VAR = "HPCQUEUE_GRID_DATA"
# Read once at start-up, before any test's monkeypatch (hq_env) removes HPCQUEUE_* variables.
EXTERNAL_DATA_ENV = {var: os.environ.get(var, "") for var in (PAPER_DATA_VAR, GRID_DATA_VAR)}
PG_URL = os.environ.get("HPCQUEUE_TEST_PG_URL")
# PostgreSQL runs whenever a server is given (make test starts one), and always under CI, where a missing
# server is a failure rather than a silent skip.
LEDGER_BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL or os.environ.get("CI") == "true" else [])


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use the local Slurm cluster share its two nodes, and some stop its daemons or take a node
    down: under ``pytest -n N --dist loadgroup`` (``make test``) they all run on one worker, one after
    another, while the other workers run the rest."""
    for item in items:
        if "slurm" in item.keywords or "real_slurm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm"))


@pytest.fixture(params=LEDGER_BACKENDS)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty ledger database: a SQLite file, and a private schema on PostgreSQL when one is given."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite'}"
        return
    if not PG_URL:
        pytest.fail(
            "CI=true but HPCQUEUE_TEST_PG_URL is not set: CI must provide a PostgreSQL server for the ledger"
        )
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    schema = f"hpcq_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


#: Data that may not ship: the variable naming a copy, a file or folder the copy holds, and what it is.
EXTERNAL_DATA = {
    "paper": (
        PAPER_DATA_VAR,
        "all-input-stats.csv",
        "the paper's raw measurements (Wilkins et al. 2024, no redistribution licence)",
    ),
    "grid": (
        GRID_DATA_VAR,
        "carbon_intensity",
        "the real carbon, weather and price data (Electricity Maps ODbL, Open-Meteo CC BY 4.0, market "
        "operators' terms)",
    ),
}


def _external_data(var: str, marker: str, what: str) -> Path:
    """The directory ``var`` names (it must hold ``marker``) for data that may not ship with the repository.
    Without it the test is skipped with the reason, except under CI, where a skip would hide a test that did
    not run: there it fails."""
    value = EXTERNAL_DATA_ENV[var]
    reason = None
    if not value:
        reason = f"{var} is not set"
    elif not (Path(value) / marker).exists():
        reason = f"{var}={value} has no {marker}"
    if reason is None:
        return Path(value).resolve()
    reason += f": {what} are not in the repository; point {var} at a copy to run this test"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def paper_data() -> Path:
    """The paper's raw measurements (``all-input-stats.csv``, ``all-output-stats.csv``), named by
    ``HPCQUEUE_PAPER_DATA``."""
    return _external_data(*EXTERNAL_DATA["paper"])


@pytest.fixture(scope="session")
def grid_data() -> Path:
    """The real hourly 2023 grid data (``carbon_intensity/``, ``weather/``, ``electricity_prices/``), named by
    ``HPCQUEUE_GRID_DATA``."""
    return _external_data(*EXTERNAL_DATA["grid"])


@pytest.fixture(scope="session")
def hq_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for the whole session: the demo model is built once."""
    return tmp_path_factory.mktemp("hq-cache")


@pytest.fixture(scope="session")
def demo(hq_cache: Path) -> ModelRef:
    """The demo model, resolved (built the first time) in the session's cache."""
    from hpcqueue.models import DEMO_MODEL, resolve_model

    return resolve_model(DEMO_MODEL, cache_dir=hq_cache)


@pytest.fixture(scope="session")
def hf_tokenizer(demo: ModelRef) -> Any:
    """The demo model's tokenizer as transformers loads it, from the local files only."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo.path, local_files_only=True)


@pytest.fixture()
def real_slurm() -> None:
    """For tests that run the real Slurm commands: skipped unless the local cluster runs
    (``HPCQUEUE_TEST_SLURM=1``, set by ``make test``); under CI, which must start it, a failure."""
    if os.environ.get("HPCQUEUE_TEST_SLURM") != "1":
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but HPCQUEUE_TEST_SLURM != 1: CI must start the local Slurm cluster")
        pytest.skip("local Slurm cluster not running")


#: A Python with vLLM and hpcqueue installed (``make vllm`` makes one; ``make test`` sets this to it).
VLLM_PYTHON_ENV = "HPCQUEUE_TEST_VLLM_PYTHON"


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The interpreter of the vLLM tests, named by ``HPCQUEUE_TEST_VLLM_PYTHON``: vLLM pins its own
    transformers, so it lives in a venv of its own. Skipped without one, except under CI: there a failure."""
    value = os.environ.get(VLLM_PYTHON_ENV, "")
    reason = None
    if not value:
        reason = f"{VLLM_PYTHON_ENV} is not set (`make vllm` builds .venv-vllm; `make test` sets it)"
    elif not os.access(value, os.X_OK):
        reason = f"{VLLM_PYTHON_ENV}={value} is not an executable"
    if reason is None:
        return value
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture()
def hq_env(tmp_path: Path, hq_cache: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for the real CLI in a subprocess: private batch root, SQLite ledger and config dir."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("HPCQUEUE_") or key in ("HPCQUEUE_TEST_PG_URL", VLLM_PYTHON_ENV)
    }
    env.update(
        HPCQUEUE_CACHE_DIR=str(hq_cache),
        HPCQUEUE_BATCH_ROOT=str(tmp_path / "batches"),
        HPCQUEUE_DB_URL=f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        XDG_CONFIG_HOME=str(tmp_path / "config-home"),
        XDG_DATA_HOME=str(tmp_path / "data-home"),
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
    args: list[str], env: dict[str, str], cwd: Path = REPO, timeout: float = 600, python: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``hpcqueue`` command (as a user would) and capture its output; ``python``: the
    interpreter whose hpcqueue runs it (default: the tests' own)."""
    command = [python or sys.executable, "-m", "hpcqueue", *args]
    return subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
