"""Another Unix user on the same login node: they cannot read a user's batch directory, ledger or results,
cannot plant a link in the user's batch root, and a batch root they own and leave writable is refused.

Root ignores file permissions, so these checks run as two temporary Unix users (``useradd``, commands through
``runuser``), with the batch root and the ledger in a directory both may enter (mode 1777, like ``/tmp`` or a
shared scratch folder): only hpcqueue's own modes keep one user out of the other's files. Needs root and
useradd: outside CI the test is skipped without them; under CI it fails.
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

from hpcqueue.models import ModelRef
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}: CI must run the tests between Unix users", pytrace=False)
    pytest.skip(reason)


def _python_for_others() -> tuple[str, str]:
    """An interpreter other users may run and the PYTHONPATH giving it hpcqueue and its dependencies: this
    one when they may execute it, else the same Python version from the system (as in
    tests/ledger/test_access.py: this interpreter may live in a directory only root can enter)."""
    paths = f"{REPO}{os.pathsep}{sysconfig.get_paths()['purelib']}"
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, shutil.which(version), f"/usr/bin/{version}"):
        if (
            candidate
            and subprocess.run(
                ["runuser", "-u", "nobody", "--", candidate, "-c", "pass"], capture_output=True
            ).returncode
            == 0
        ):
            return candidate, paths
    _unavailable(f"no {version} that other users may run (this one is {sys.executable})")
    raise AssertionError  # unreachable: _unavailable raises


@dataclass(frozen=True)
class Users:
    alice: str
    bob: str
    shared: Path  # mode 1777: both may enter and create files, as in /tmp
    python: str
    pythonpath: str

    def run(
        self, user: str, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        home = self.shared / f"home-{user}"
        base = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(home),
            "PYTHONPATH": self.pythonpath,
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "HPCQUEUE_CACHE_DIR": str(home / "cache"),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        command = [
            "runuser",
            "-u",
            user,
            "--",
            "env",
            "-i",
            *(f"{k}={v}" for k, v in {**base, **(env or {})}.items()),
        ]
        # umask 022, the usual default: hpcqueue must make its files private by itself.
        shell = ["sh", "-c", 'umask 022 && exec "$@"', "sh"]
        return subprocess.run(
            [*command, *shell, *args], capture_output=True, text=True, timeout=600, cwd="/", check=False
        )

    def hpcqueue(self, user: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        return self.run(user, [self.python, "-m", "hpcqueue", *args], env)


@pytest.fixture(scope="module")
def users(hq_cache: Path, demo: ModelRef) -> Iterator[Users]:
    if os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("runuser") is None:
        _unavailable("creating Unix users needs root, useradd and runuser")
    python, pythonpath = _python_for_others()
    tag = uuid.uuid4().hex[:6]
    alice, bob = f"hqsa_{tag}", f"hqsb_{tag}"
    shared = Path(tempfile.mkdtemp(prefix="hpcq-shared-"))
    shared.chmod(0o1777)
    created: list[str] = []
    try:
        for name in (alice, bob):
            subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True)
            created.append(name)
            home = shared / f"home-{name}"
            home.mkdir(mode=0o700)
            # Each user's own copy of the session's demo model (built once by the ``demo`` fixture).
            shutil.copytree(hq_cache, home / "cache")
            for path in [home, *home.rglob("*")]:
                shutil.chown(path, name, name)
        yield Users(alice, bob, shared, python, pythonpath)
    finally:
        for name in created:
            subprocess.run(["userdel", name], check=False)
        shutil.rmtree(shared, ignore_errors=True)


def test_another_user_cannot_read_a_batch_its_results_or_the_ledger(users: Users) -> None:
    root = users.shared / "alice-batches"
    ledger = users.shared / "alice-ledger.sqlite"
    env = {"HPCQUEUE_BATCH_ROOT": str(root), "HPCQUEUE_DB_URL": f"sqlite:///{ledger}"}
    prompts = users.shared / f"home-{users.alice}" / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "q1", "prompt": "private prompt", "max_new_tokens": 3}) + "\n")
    shutil.chown(prompts, users.alice)
    done = users.hpcqueue(
        users.alice, ["submit", str(prompts), "--wait", "--json", "--meter", "estimate"], env
    )
    assert done.returncode == 0, done.stderr
    batch = Path(json.loads(done.stdout)["batch_dir"])
    assert users.hpcqueue(users.alice, ["results", batch.name], env).returncode == 0  # the owner can

    output = batch / "tasks" / "000000" / "output.jsonl"
    for path in (root, batch, output, ledger):
        peek = users.run(users.bob, ["cat", str(path)] if path.suffix else ["ls", str(path)])
        assert peek.returncode != 0 and "Permission denied" in peek.stderr, (path, peek.stdout)
    theirs = users.hpcqueue(users.bob, ["results", batch.name], env)
    assert theirs.returncode != 0 and "private prompt" not in theirs.stdout
    assert "Permission denied" in theirs.stderr
    ledger_peek = users.run(
        users.bob,
        [users.python, "-c", f"import sqlite3; print(sqlite3.connect({str(ledger)!r}).execute('select 1'))"],
    )
    assert ledger_peek.returncode != 0 and "unable to open" in ledger_peek.stderr

    # Nor can they plant a link where one of the batch's files is, or a batch of their own in the root.
    plant = users.run(users.bob, ["ln", "-s", "/etc/passwd", str(root / "hq-planted")])
    assert plant.returncode != 0 and "Permission denied" in plant.stderr


def test_a_batch_root_another_user_owns_and_leaves_writable_is_refused(users: Users) -> None:
    """In a folder anyone can write, batch ids being predictable, another user could create the batch's
    directory or a link in its place before the owner submits."""
    theirs = users.shared / "bobs-open-root"
    made = users.run(users.bob, ["sh", "-c", f"mkdir -m 777 '{theirs}' && chmod 777 '{theirs}'"])
    assert made.returncode == 0, made.stderr
    prompts = users.shared / f"home-{users.alice}" / "p.jsonl"
    prompts.write_text('{"prompt": "hello"}\n')
    shutil.chown(prompts, users.alice)
    env = {"HPCQUEUE_BATCH_ROOT": str(theirs), "HPCQUEUE_DB_URL": f"sqlite:///{users.shared}/alice2.sqlite"}
    done = users.hpcqueue(users.alice, ["submit", str(prompts), "--json", "--meter", "estimate"], env)
    assert done.returncode != 0
    message = " ".join(done.stderr.split())
    assert (
        f"the batch root {theirs} belongs to another user" in message and "others may write to it" in message
    )
    assert list(theirs.iterdir()) == []  # nothing was written there


def test_a_batch_root_the_user_owns_and_left_open_is_made_private_with_a_notice(users: Users) -> None:
    mine = users.shared / "alice-open-root"
    made = users.run(users.alice, ["sh", "-c", f"mkdir '{mine}' && chmod 777 '{mine}'"])
    assert made.returncode == 0, made.stderr
    env = {"HPCQUEUE_BATCH_ROOT": str(mine), "HPCQUEUE_DB_URL": f"sqlite:///{users.shared}/alice3.sqlite"}
    done = users.hpcqueue(users.alice, ["collect", "--json"], env)
    assert done.returncode == 0, done.stderr
    assert "was open to other users" in done.stderr
    assert mine.stat().st_mode & 0o777 == 0o700
