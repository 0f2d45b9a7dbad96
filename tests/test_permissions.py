"""Prompts and outputs are private: the ledger and batch directories are owner-only whatever the umask.

Login nodes are shared by many users, and a batch directory holds every prompt and every output; the SQLite
ledger holds who ran what. Both are created owner-only (0600 files, 0700 directories) even under a umask of
022, and what an older hpcqueue left readable by others is tightened on first use, with a notice.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, run_cli


@pytest.fixture()
def umask_022() -> Iterator[None]:
    """The umask most systems give users: new files 0644, new directories 0755 unless hpcqueue says else."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture()
def default_places(hq_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The CLI's environment with the ledger and batch root in their default places (the user's data
    directory, redirected into the test's own directory)."""
    env = dict(hq_env)
    del env["HPCQUEUE_DB_URL"], env["HPCQUEUE_BATCH_ROOT"]
    env["XDG_DATA_HOME"] = str(tmp_path / "data-home")
    return env


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _open_to_others(root: Path) -> list[str]:
    return [
        f"{oct(_mode(p))} {p.relative_to(root)}"
        for p in [root, *root.rglob("*")]
        if not p.is_symlink() and _mode(p) & 0o077
    ]


@pytest.mark.slow
def test_the_demo_leaves_the_ledger_0600_and_batch_directories_0700_under_umask_022(
    default_places: dict[str, str], tmp_path: Path, umask_022: None
) -> None:
    """`make demo` runs these two commands; every file they leave is owner-only."""
    submitted = run_cli(["submit", str(EXAMPLES / "prompts.jsonl"), "--wait"], default_places)
    assert submitted.returncode == 0, submitted.stderr
    summary = run_cli(["ledger", "summary", "--by", "target"], default_places)
    assert summary.returncode == 0, summary.stderr

    data = tmp_path / "data-home" / "hpcqueue"
    ledger = data / "ledger.sqlite"
    assert _mode(ledger) == 0o600
    assert _mode(data) == 0o700
    batches = [p for p in (data / "batches").iterdir() if p.name.startswith("hq-")]
    assert len(batches) == 1
    assert _mode(data / "batches") == 0o700 and _mode(batches[0]) == 0o700
    # Everything inside, the workers' outputs and submitit's own logs and pickles included.
    assert (batches[0] / "tasks" / "000000" / "output.jsonl").exists()
    assert any((batches[0] / "logs").rglob("*_log.err"))
    assert _open_to_others(data) == []
    # Nothing was tightened after the fact: it was created private, so no notice was printed.
    assert "owner-only" not in submitted.stderr + summary.stderr


def test_an_open_ledger_and_batch_root_are_tightened_on_first_use_with_a_notice(
    default_places: dict[str, str], tmp_path: Path, umask_022: None
) -> None:
    """What an older hpcqueue left behind: a 0644 ledger, a 0755 batch root and batch directory."""
    data = tmp_path / "data-home" / "hpcqueue"
    batch = data / "batches" / "hq-0123456789abcdef"
    (batch / "tasks" / "000000").mkdir(parents=True)
    (batch / "tasks" / "000000" / "output.jsonl").write_text('{"line": 1, "text": "a secret answer"}\n')
    (data / "ledger.sqlite").touch()
    for path in [data, *data.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)

    result = run_cli(["collect", "--json"], default_places)
    assert result.returncode == 0, result.stderr
    notices = [line for line in result.stderr.splitlines() if "owner-only" in line]
    assert any(f"the batch root {data / 'batches'}" in line for line in notices), result.stderr
    assert any(f"the ledger {data / 'ledger.sqlite'}" in line for line in notices), result.stderr
    assert all(len(line) < 250 for line in notices)  # each a one-line notice
    assert _open_to_others(data) == []

    again = run_cli(["collect", "--json"], default_places)
    assert again.returncode == 0 and "owner-only" not in again.stderr  # tightened once, then quiet


def test_a_ledger_in_a_directory_the_user_chose_keeps_that_directory_s_mode(
    hq_env: dict[str, str], tmp_path: Path, umask_022: None
) -> None:
    """The file is made private; a directory the user picked (a project directory) is not chmod-ed."""
    project = tmp_path / "project"
    project.mkdir(mode=0o755)
    project.chmod(0o755)
    env = {**hq_env, "HPCQUEUE_DB_URL": f"sqlite:///{project / 'ledger.sqlite'}"}
    result = run_cli(["ledger", "batches"], env)
    assert result.returncode == 0, result.stderr
    assert _mode(project / "ledger.sqlite") == 0o600
    assert _mode(project) == 0o755
