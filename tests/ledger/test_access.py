"""A shared PostgreSQL ledger keeps users apart in the database itself: two Unix users (and an admin), each
connecting as the role of their own name by peer authentication, see and write only their own batches, through
hpcqueue and through plain ``psql``; ``--all-users`` works for the admin and is refused to the others.

Needs root (to create the Unix users; commands then run as them, since root ignores permissions) and the test
PostgreSQL (``HPCQUEUE_TEST_PG_URL``, started by tests/services/postgres.sh, whose socket uses peer
authentication when started as root). Outside CI the test is skipped without them; under CI it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from hpcqueue.errors import ConfigError, LedgerError
from hpcqueue.ledger import Ledger
from hpcqueue.ledger.access import SITE_SQL, check_filter, init_site, member_sql, render_sql, site_sql
from hpcqueue.ledger.filters import LedgerFilter
from tests.conftest import PG_URL, REPO

ON_CI = os.environ.get("CI") == "true"


def _unavailable(reason: str) -> None:
    if ON_CI:
        pytest.fail(f"{reason}: CI must run the shared-ledger access test")
    pytest.skip(reason)


@dataclass(frozen=True)
class Site:
    """A shared ledger in a private schema, its owner's URL, and the Unix users (and roles) using it."""

    owner_url: str
    user_url: str
    socket_dir: str
    port: int
    database: str
    schema: str
    alice: str
    bob: str
    boss: str
    homes: Path
    python: str
    pythonpath: str


def _python_for_others() -> tuple[str, str]:
    """An interpreter the test's Unix users may run, and the PYTHONPATH that gives it hpcqueue and its
    dependencies: this one when others can execute it, else the same Python version from the system (this
    interpreter may live in a directory only root can enter)."""
    paths = f"{REPO}{os.pathsep}{sysconfig.get_paths()['purelib']}"
    probe = subprocess.run(
        ["runuser", "-u", "nobody", "--", sys.executable, "-c", "pass"], capture_output=True
    )
    if probe.returncode == 0:
        return sys.executable, paths
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (shutil.which(version), f"/usr/bin/{version}"):
        if (
            candidate
            and subprocess.run(["runuser", "-u", "nobody", "--", candidate, "-c", "pass"]).returncode == 0
        ):
            return candidate, paths
    _unavailable(f"no {version} that other users may run (this one is {sys.executable})")
    raise AssertionError  # unreachable: _unavailable raises


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    if not PG_URL:
        _unavailable("HPCQUEUE_TEST_PG_URL is not set (tests/services/postgres.sh start prints it)")
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        _unavailable("creating Unix users needs root and useradd")
    assert PG_URL is not None
    python, pythonpath = _python_for_others()
    tag = uuid.uuid4().hex[:6]
    alice, bob, boss = f"hqa_{tag}", f"hqb_{tag}", f"hqadm_{tag}"
    schema = f"hpcq_access_{tag}"
    superuser = create_engine(PG_URL)
    with superuser.begin() as conn:
        socket_dir = str(conn.execute(text("SHOW unix_socket_directories")).scalar()).split(",")[0].strip()
        port = int(conn.execute(text("SHOW port")).scalar() or 5432)
        database = str(conn.execute(text("SELECT current_database()")).scalar())
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    owner_url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    # The form docs/ledger.md recommends: no user, no password, host = the socket directory (peer auth).
    user_url = make_url(f"postgresql+psycopg:///{database}").update_query_dict(
        {"host": socket_dir, "port": str(port), "options": f"-csearch_path={schema}"}
    )
    homes = Path(tempfile.mkdtemp(prefix="hpcq-access-"))
    homes.chmod(0o711)
    created: list[str] = []
    try:
        for name in (alice, bob, boss):
            home = homes / name
            subprocess.run(
                ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh", name],
                check=True,
            )
            created.append(name)
            home.mkdir()
            shutil.chown(home, name, name)
            home.chmod(0o700)
        yield Site(
            owner_url=owner_url.render_as_string(hide_password=False),
            user_url=user_url.render_as_string(hide_password=False),
            socket_dir=socket_dir,
            port=port,
            database=database,
            schema=schema,
            alice=alice,
            bob=bob,
            boss=boss,
            homes=homes,
            python=python,
            pythonpath=pythonpath,
        )
    finally:
        with superuser.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            for name in created:
                if conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": name}).first():
                    conn.execute(text(f'DROP OWNED BY "{name}"'))
                    conn.execute(text(f'DROP ROLE "{name}"'))
        superuser.dispose()
        for name in created:
            subprocess.run(["userdel", name], check=False, capture_output=True)
        shutil.rmtree(homes, ignore_errors=True)


def as_user(
    site: Site, name: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``args`` as the Unix user ``name``, in their home, with the shared ledger as their ledger."""
    home = str(site.homes / name)
    environment = {
        "PATH": "/usr/bin:/bin",
        "HOME": home,
        "USER": name,
        "LOGNAME": name,
        "PYTHONPATH": site.pythonpath,
        "HPCQUEUE_DB_URL": site.user_url,
        "XDG_CONFIG_HOME": f"{home}/.config",
        "XDG_DATA_HOME": f"{home}/.local/share",
        "XDG_CACHE_HOME": f"{home}/.cache",
        "PGOPTIONS": f"-csearch_path={site.schema}",
        **(env or {}),
    }
    command = ["runuser", "-u", name, "--", "env", "-i", *[f"{k}={v}" for k, v in environment.items()], *args]
    return subprocess.run(command, cwd=home, capture_output=True, text=True, timeout=120, check=False)


def hpcqueue(site: Site, name: str, *args: str) -> subprocess.CompletedProcess:
    return as_user(site, name, site.python, "-m", "hpcqueue", *args)


def psql(site: Site, name: str, sql: str, *extra: str) -> subprocess.CompletedProcess:
    return as_user(
        site,
        name,
        "psql",
        "-X",
        "-h",
        site.socket_dir,
        "-p",
        str(site.port),
        "-d",
        site.database,
        *extra,
        "-Atc",
        sql,
    )


#: Run as a user: record a batch (of two tasks, five requests) whose row names ``sys.argv[2]``.
RECORD = """
import os, sys
from hpcqueue.ledger import Ledger
from tests.ledger import make_info, many_requests, tasks_of
requests = many_requests(5, task_size=3)
with Ledger(os.environ["HPCQUEUE_DB_URL"]) as ledger:
    info = make_info(sys.argv[1], user=sys.argv[2])
    print(ledger.record_batch(info, tasks_of(requests, "local"), requests))
"""


def record(site: Site, name: str, batch_id: str, user: str | None = None) -> subprocess.CompletedProcess:
    return as_user(site, name, site.python, "-c", RECORD, batch_id, user or name)


def lines(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr
    return sorted(result.stdout.split())


def test_each_user_sees_and_writes_only_their_own_rows(site: Site) -> None:
    alice, bob, boss = site.alice, site.bob, site.boss
    setup = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpcqueue",
            "ledger",
            "init-site",
            "--db-url",
            site.owner_url,
            "--user",
            alice,
            "--user",
            bob,
            "--admin",
            boss,
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert setup.returncode == 0, setup.stderr
    assert f"{alice}: created LOGIN role" in setup.stdout and f"{boss}: created LOGIN role" in setup.stdout
    for name in (alice, bob):
        assert (result := record(site, name, f"hq-{name}")).returncode == 0, result.stderr
        assert result.stdout.strip() == "True"

    # Through hpcqueue: each user's ledger (no client-side filter at all) holds their own batch only ...
    listing = (
        "import os; from hpcqueue.ledger import Ledger; "
        "print(*Ledger(os.environ['HPCQUEUE_DB_URL']).list_batches(limit=100)['id'])"
    )
    for name in (alice, bob):
        assert lines(as_user(site, name, site.python, "-c", listing)) == [f"hq-{name}"]
        summary = hpcqueue(site, name, "ledger", "summary", "--by", "user", "--format", "json")
        assert summary.returncode == 0, summary.stderr
        assert [row["user"] for row in json.loads(summary.stdout)] == [name]

    # ... and through psql, with their own role: batches and every child table.
    for name in (alice, bob):
        assert lines(psql(site, name, "SELECT id FROM batches")) == [f"hq-{name}"]
        counts = psql(
            site,
            name,
            "SELECT (SELECT count(*) FROM tasks) || ' ' || (SELECT count(*) FROM requests) || ' '"
            " || (SELECT count(DISTINCT batch_id) FROM requests) || ' ' || (SELECT count(*) FROM plan_costs)",
        )
        assert counts.stdout.split() == ["2", "5", "1", "0"], counts.stderr
    # Peer authentication: alice cannot connect as bob.
    impostor = psql(site, alice, "SELECT id FROM batches", "-U", bob)
    assert impostor.returncode != 0 and "Peer authentication failed" in impostor.stderr

    # --all-users: refused to a user, with the reason; the admin sees both users' batches.
    for args in (["--all-users"], ["--user", bob]):
        refused = hpcqueue(site, alice, "ledger", "summary", "--format", "json", *args)
        assert refused.returncode != 0 and refused.stdout == ""
        assert "only ledger admins may read other users' rows" in refused.stderr
        assert f"role '{alice}'" in refused.stderr and "hpcqueue_admin" in " ".join(refused.stderr.split())
    everyone = hpcqueue(site, boss, "ledger", "summary", "--by", "user", "--all-users", "--format", "json")
    assert everyone.returncode == 0, everyone.stderr
    assert sorted(row["user"] for row in json.loads(everyone.stdout)) == sorted([alice, bob])
    assert lines(psql(site, boss, "SELECT id FROM batches")) == sorted([f"hq-{alice}", f"hq-{bob}"])
    assert psql(site, boss, "SELECT count(*) FROM requests").stdout.split() == ["10"]

    # Writes: a batch in another's name is refused with a message naming the role and the Unix user ...
    forged = record(site, alice, "hq-forged", user=bob)
    assert forged.returncode != 0
    assert "AccessError" in forged.stderr and "row-level security" in forged.stderr
    assert f"as role '{alice}'" in forged.stderr and f"the Unix user '{alice}'" in forged.stderr
    # ... and another's rows cannot be changed or removed, by a user nor by the admin (who reads only).
    for name in (alice, boss):
        for sql in (
            f"UPDATE batches SET host = 'x' WHERE id = 'hq-{bob}'",
            f"DELETE FROM batches WHERE id = 'hq-{bob}'",
            f"UPDATE tasks SET state = 'failed' WHERE batch_id = 'hq-{bob}'",
            f"DELETE FROM requests WHERE batch_id = 'hq-{bob}'",
        ):
            result = psql(site, name, sql)
            assert result.returncode == 0 and result.stdout.split()[-1] == "0", (sql, result.stdout)
    stolen = psql(
        site,
        alice,
        "INSERT INTO tasks (batch_id, task_index, target, executor, state, n_requests, predicted_energy_j,"
        f" predicted_runtime_s) VALUES ('hq-{bob}', 9, 'cpu', 'local', 'planned', 1, 0, 0)",
    )
    assert stolen.returncode != 0 and "row-level security" in stolen.stderr
    with Ledger(site.owner_url) as owner:
        with owner.connect() as conn:
            kept = conn.execute(
                text(
                    "SELECT host, (SELECT count(*) FROM tasks t WHERE t.batch_id = b.id),"
                    " (SELECT count(*) FROM requests r WHERE r.batch_id = b.id)"
                    " FROM batches b WHERE id = :id"
                ),
                {"id": f"hq-{bob}"},
            ).one()
        assert tuple(kept) == ("login01", 2, 5)
        # A user's own rows are theirs to change.
        mine = psql(site, alice, f"UPDATE batches SET host = 'login02' WHERE id = 'hq-{alice}'")
        assert mine.stdout.split()[-1] == "1", mine.stderr
        assert owner.get_batch(f"hq-{alice}").host == "login02"

        # A user never migrates a shared ledger: an older schema is the site admin's to upgrade.
        with owner.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0003'"))
        try:
            stale = hpcqueue(site, alice, "ledger", "summary")
            assert stale.returncode != 0 and "hpcqueue ledger init-site" in " ".join(stale.stderr.split())
            assert "revision 0003" in stale.stderr
        finally:
            with owner.engine.begin() as conn:
                conn.execute(text("UPDATE alembic_version SET version_num = '0005'"))

    # Running init-site again changes nothing and says so.
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpcqueue",
            "ledger",
            "init-site",
            "--db-url",
            site.owner_url,
            "--user",
            alice,
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert again.returncode == 0, again.stderr
    assert f"{alice}: existing role, member of hpcqueue_user" in again.stdout
    assert lines(psql(site, alice, "SELECT id FROM batches")) == [f"hq-{alice}"]


def test_the_docs_show_the_sql_init_site_runs() -> None:
    docs = (REPO / "docs" / "ledger.md").read_text()
    assert "```sql\n" + render_sql(SITE_SQL) + "```" in docs


def test_init_site_sql_names_each_member_once_and_refuses_bad_names() -> None:
    statements = site_sql(users=["alice", "bob", "alice"], admins=["carol"])
    assert statements[: len(SITE_SQL)] == list(SITE_SQL)
    grants = [s for s in statements if s.startswith("GRANT hpcqueue_")]
    assert grants[-3:] == [
        'GRANT hpcqueue_user TO "alice"',
        'GRANT hpcqueue_user TO "bob"',
        'GRANT hpcqueue_admin TO "carol"',
    ]
    for bad in ("", "x'; DROP TABLE batches; --", 'a"b', "1abc", "a" * 64):
        with pytest.raises(ConfigError, match="not a role name"):
            member_sql(users=[bad])


def test_on_sqlite_the_files_owner_reads_all_and_init_site_is_refused(tmp_path: Path) -> None:
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as ledger:
        check_filter(ledger, LedgerFilter(users=None))
        check_filter(ledger, LedgerFilter(users=("someone-else",)))
        with pytest.raises(LedgerError, match="SQLite ledger is one user's file"):
            init_site(ledger, users=["alice"])
