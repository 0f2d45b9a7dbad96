"""Faults of the ledger database under ``collect``: the server down, the collect process killed mid-write.

These run against a PostgreSQL server of their own (tests/services/postgres.sh on another port and data
directory), so stopping it leaves the server other tests use alone. Batches are real (the demo model,
submitit's local executor); the workers never open the database, so their results wait in the batch
directory until a collect records them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from tests.conftest import REPO, run_cli
from tests.faults.invariant import assert_exactly_once
from tests.faults.test_disk_faults import finished_files, submit, write_prompts
from tests.helpers import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

POSTGRES_SH = REPO / "tests" / "services" / "postgres.sh"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class OwnPostgres:
    """A PostgreSQL server this module starts, stops and starts again (pg_ctl on its data directory)."""

    url: str
    directory: Path
    port: int

    def _pg_ctl(self, *args: str) -> None:
        bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
        command = [str(bindir / "pg_ctl"), "-D", str(self.directory / "data"), "-w", *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c fsync=off"
        self._pg_ctl("-l", str(self.directory / "server.log"), "-o", options, "start")


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnPostgres]:
    """Skipped where PostgreSQL is not in use (no HPCQUEUE_TEST_PG_URL) outside CI; under CI a server that
    cannot start is a failure."""
    if not os.environ.get("HPCQUEUE_TEST_PG_URL") and os.environ.get("CI") != "true":
        pytest.skip("PostgreSQL tests run with HPCQUEUE_TEST_PG_URL set (make test)")
    # Not under pytest's tmp_path: the server runs as the postgres user, who may not enter it.
    directory = Path(tempfile.mkdtemp(prefix="hpcqueue-faults-pg-"))
    port = _free_port()
    env = {**os.environ, "HPCQUEUE_TEST_PG_DIR": str(directory), "HPCQUEUE_TEST_PG_PORT": str(port)}
    started = subprocess.run(
        ["bash", str(POSTGRES_SH), "start"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    if started.returncode != 0:
        pytest.fail(f"could not start a PostgreSQL server of the test's own: {started.stderr}")
    server = OwnPostgres(started.stdout.strip().splitlines()[-1], directory, port)
    try:
        yield server
    finally:
        subprocess.run(["bash", str(POSTGRES_SH), "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture()
def pg_ledger(own_postgres: OwnPostgres, hq_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """``hq_env`` with its ledger in a fresh schema of the module's own server."""
    schema = f"hpcq_fault_{uuid.uuid4().hex[:12]}"
    admin = create_engine(own_postgres.url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(own_postgres.url).update_query_dict({"options": f"-csearch_path={schema}"})
    env = {**hq_env, "HPCQUEUE_DB_URL": url.render_as_string(hide_password=False)}
    try:
        yield env
    finally:
        admin.dispose()


def ledger_rows(engine: Engine, batch_id: str) -> dict[str, int]:
    """What the ledger holds of a batch's results: collected tasks, requests with a result or error,
    measurements."""
    with engine.connect() as conn:
        return {
            "collected_tasks": conn.execute(
                text("SELECT count(*) FROM tasks WHERE batch_id = :b AND collected_at IS NOT NULL"),
                {"b": batch_id},
            ).scalar_one(),
            "finished_requests": conn.execute(
                text("SELECT count(*) FROM requests WHERE batch_id = :b AND status <> 'pending'"),
                {"b": batch_id},
            ).scalar_one(),
            "measurements": conn.execute(
                text("SELECT count(*) FROM measurements WHERE batch_id = :b"), {"b": batch_id}
            ).scalar_one(),
        }


NOTHING_COLLECTED = {"collected_tasks": 0, "finished_requests": 0, "measurements": 0}


def collect_job_process(
    batch_dir: Path, env: dict[str, str], delays_s: tuple[float, ...]
) -> subprocess.Popen[str]:
    """The collect job's entry point (what the Slurm collect job runs), in its own process, with short
    backoff delays."""
    code = (
        "import sys; from hpcqueue.ledger.collect import collect_job; "
        f"print(collect_job(sys.argv[1], sys.argv[2], retry_delays_s={delays_s!r}))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(batch_dir), env["HPCQUEUE_DB_URL"]],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ledger_down_during_collect(
    own_postgres: OwnPostgres, pg_ledger: dict[str, str], tmp_path: Path
) -> None:
    """With the database stopped, the collect job tries again with backoff and, the database staying down,
    fails having recorded nothing; ``status`` then shows the tasks finished but not collected. When the
    database comes back during the collect job's backoff, the job completes the batch."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", 4)
    info = submit(prompts, pg_ledger)
    batch_dir = Path(info["batch_dir"])
    finished_files(batch_dir, info["tasks"])
    engine = create_engine(pg_ledger["HPCQUEUE_DB_URL"])

    own_postgres.stop()
    try:
        started = time.monotonic()
        job = collect_job_process(batch_dir, pg_ledger, (0.5, 1.0))
        _, stderr = job.communicate(timeout=120)
        assert job.returncode != 0
        assert time.monotonic() - started >= 1.5  # it waited out its backoff before giving up
        assert stderr.count("trying again in") == 2, stderr
        assert "Check that the database server is running" in stderr

        status = run_cli(["status", info["batch_id"]], pg_ledger)
        assert status.returncode != 0
        assert f"{info['tasks']} finished task(s) not collected" in status.stdout, status.stdout
        assert f"hpcqueue collect {info['batch_id']}" in status.stdout

        job = collect_job_process(batch_dir, pg_ledger, (2.0, 4.0, 8.0, 16.0))
        assert job.stderr is not None
        first_try = ""
        while "trying again in" not in first_try:  # the job failed its first try and waits: start the server
            line = job.stderr.readline()
            assert line, f"the collect job ended before its first retry: {first_try}"
            first_try += line
    finally:
        own_postgres.start()
    assert ledger_rows(engine, info["batch_id"]) == NOTHING_COLLECTED  # nothing half-recorded by the failures
    stdout, stderr = job.communicate(timeout=120)
    assert job.returncode == 0, first_try + stderr
    assert f"'completed': {info['tasks']}" in stdout
    assert_exactly_once(prompts, batch_dir, pg_ledger["HPCQUEUE_DB_URL"])
    after = ledger_rows(engine, info["batch_id"])
    again = run_cli(["collect", info["batch_id"]], pg_ledger)  # the next collect changes nothing
    assert again.returncode == 0, again.stderr
    assert ledger_rows(engine, info["batch_id"]) == after
    engine.dispose()


def test_collect_killed_inside_its_transaction_leaves_the_ledger_untouched(
    pg_ledger: dict[str, str], tmp_path: Path
) -> None:
    """The collect process is SIGKILLed while its transaction is open: it has updated a task and its requests
    and waits for a lock this test holds on the measurements table. Its work is rolled back whole, and the
    next collect records everything once."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", 4)
    info = submit(prompts, pg_ledger)
    batch_dir = Path(info["batch_dir"])
    finished_files(batch_dir, info["tasks"])
    engine = create_engine(pg_ledger["HPCQUEUE_DB_URL"])

    blocker = engine.connect()
    blocker.execute(text("LOCK TABLE measurements IN ACCESS EXCLUSIVE MODE"))
    collect = subprocess.Popen(
        [sys.executable, "-m", "hpcqueue", "collect", info["batch_id"]],
        env=pg_ledger,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def writer_waiting() -> int | None:
        """The collect's backend, once it has written a task's rows and waits for the measurements lock."""
        with engine.connect() as conn:
            return conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query ILIKE 'DELETE FROM measurements%' AND xact_start IS NOT NULL"
                )
            ).scalar()

    try:
        backend = wait_for(writer_waiting, 120, "collect to write its first task and wait for the lock")
        with engine.connect() as conn:  # inside its open transaction, the task row is already changed
            locks = conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE pid = :p AND mode = 'RowExclusiveLock'"),
                {"p": backend},
            ).scalar_one()
        assert locks >= 2  # tasks and requests written, uncommitted
        collect.send_signal(signal.SIGKILL)
        collect.wait(timeout=30)
    finally:
        blocker.rollback()
        blocker.close()

    def backend_gone() -> bool:
        with engine.connect() as conn:
            alive = conn.execute(text("SELECT 1 FROM pg_stat_activity WHERE pid = :p"), {"p": backend})
            return alive.first() is None

    wait_for(backend_gone, 60, "the killed collect's server process to end")
    assert collect.returncode == -signal.SIGKILL
    assert ledger_rows(engine, info["batch_id"]) == NOTHING_COLLECTED

    again = run_cli(["collect", info["batch_id"], "--json"], pg_ledger)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)[info["batch_id"]]["completed"] == info["tasks"]
    assert_exactly_once(prompts, batch_dir, pg_ledger["HPCQUEUE_DB_URL"])
    engine.dispose()
