"""The batch directory: its id, its layout, the task inputs the workers read and the state read back from it.

A batch directory is created whole or not at all: it is assembled under a temporary name in the batch root
and renamed into place, so a crash while planning never leaves half a batch that a later submission would
mistake for a real one. The layout is documented in ``docs/internals.md``.
"""

from __future__ import annotations

import errno
import fcntl
import getpass
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from hpcqueue import __version__
from hpcqueue.errors import BatchNotFoundError
from hpcqueue.fileio import atomic_write_json, read_jsonl
from hpcqueue.requests import Rejected, write_rejects

TaskState = Literal["pending", "running", "completed", "failed"]

MANIFEST = "batch.json"
PLAN = "plan.parquet"
REJECTS = "rejects.jsonl"
JOBS = "jobs.json"

# Settings that change what a batch computes. Anything else (where the ledger lives, where batches are kept,
# the cache directory) must not change the batch id, or moving a ledger would re-run finished work.
_ID_SETTINGS = (
    "model",
    "policy",
    "lambda_",
    "deadline_s",
    "max_new_tokens",
    "max_new_tokens_limit",
    "max_line_bytes",
    "task_size",
    "batch_size",
)


def batch_id_for(
    input_sha256: str,
    settings: Mapping[str, Any],
    targets: Mapping[str, Mapping[str, Any]],
    model_fingerprint: str,
    *,
    skip_invalid: bool,
) -> str:
    """A stable id from the input's bytes and every setting that changes the result.

    The same file submitted again with the same settings gets the same id (and resumes the batch);
    a different model, policy, token default or target list gets a new one.
    """
    identity = {
        "input_sha256": input_sha256,
        "settings": {key: settings.get(key) for key in _ID_SETTINGS},
        "targets": {name: dict(sorted(t.items())) for name, t in sorted(targets.items())},
        "model_fingerprint": model_fingerprint,
        "skip_invalid": skip_invalid,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    return f"hq-{digest[:16]}"


def task_dir_name(task_index: int) -> str:
    return f"{task_index:06d}"


@dataclass(frozen=True)
class BatchDir:
    """A batch directory on disk and the questions asked of it."""

    path: Path

    @property
    def batch_id(self) -> str:
        return self.path.name

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    @property
    def rejects_path(self) -> Path:
        return self.path / REJECTS

    def task_dir(self, task_index: int) -> Path:
        return self.path / "tasks" / task_dir_name(task_index)

    def manifest(self) -> dict[str, Any]:
        with open(self.manifest_path, encoding="utf-8") as handle:
            return json.load(handle)

    def plan(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        return pd.read_parquet(self.path / PLAN, columns=list(columns) if columns else None)

    def task_indices(self) -> list[int]:
        return [task["task_index"] for task in self.manifest()["tasks"]]

    def task_state(self, task_index: int) -> TaskState:
        """``completed``/``failed`` once the worker wrote metrics.json, ``running`` while a worker holds the
        task's lock, else ``pending``."""
        task_dir = self.task_dir(task_index)
        metrics = task_dir / "metrics.json"
        if metrics.exists():
            state = json.loads(metrics.read_text(encoding="utf-8")).get("state")
            return "completed" if state == "completed" else "failed"
        return "running" if is_locked(task_dir / "lock") else "pending"

    def task_states(self) -> dict[int, TaskState]:
        return {index: self.task_state(index) for index in self.task_indices()}

    def metrics(self, task_index: int) -> dict[str, Any] | None:
        path = self.task_dir(task_index) / "metrics.json"
        if not path.exists():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def outputs(self, task_index: int) -> Iterator[dict[str, Any]]:
        path = self.task_dir(task_index) / "output.jsonl"
        if path.exists():
            yield from read_jsonl(path)

    def finished_lines(self, task_index: int) -> int:
        """Requests with an output so far (final output, else the partial file of a running task)."""
        task_dir = self.task_dir(task_index)
        for name in ("output.jsonl", "partial.jsonl"):
            path = task_dir / name
            if path.exists():
                return sum(1 for _ in read_jsonl(path))
        return 0

    def jobs(self) -> list[dict[str, Any]]:
        path = self.path / JOBS
        if not path.exists():
            return []
        return json.loads(path.read_text(encoding="utf-8"))

    def add_jobs(self, jobs: Sequence[Mapping[str, Any]]) -> None:
        atomic_write_json(self.path / JOBS, [*self.jobs(), *jobs])

    def latest_jobs(self) -> dict[int, dict[str, Any]]:
        """The most recent job record of each task (a retry's job replaces the failed attempt's)."""
        latest: dict[int, dict[str, Any]] = {}
        for record in self.jobs():
            for index in record.get("task_indices") or []:
                latest[int(index)] = record
        return latest

    def log_tail(self, task_index: int, lines: int = 30) -> str | None:
        """The last lines of the stderr log of the job that last ran the task (None when there is none).

        submitit writes ``logs/<target>/<job id>_<task>_log.err`` for local jobs and
        ``logs/<target>/<job id>/<job id>_<task>_log.err`` for Slurm jobs (the folder is ``%j``).
        """
        record = self.latest_jobs().get(task_index)
        if record is None:
            return None
        folder = self.logs_dir / str(record.get("target"))
        job_id = str(record["job_id"])
        for path in [
            *sorted(folder.glob(f"{job_id}/*_log.err")),
            *sorted(folder.glob(f"{job_id}_*_log.err")),
        ]:
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            return "\n".join(text.splitlines()[-lines:])
        return None


def is_locked(lock_path: Path) -> bool:
    """True while another process holds the worker's fcntl lock on ``lock_path``."""
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return True
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def open_batch(batch_root: Path, batch_id: str) -> BatchDir:
    batch = BatchDir(Path(batch_root) / batch_id)
    if not batch.manifest_path.exists():
        known = sorted(p.name for p in Path(batch_root).glob("hq-*") if (p / MANIFEST).exists())
        hint = (
            f"batches under {batch_root}: {', '.join(known[-5:])}"
            if known
            else f"no batches under {batch_root}"
        )
        raise BatchNotFoundError(
            f"no batch {batch_id!r} ({hint}); set batch_root / HPCQUEUE_BATCH_ROOT if it lives elsewhere"
        )
    return batch


def latest_batch(batch_root: Path) -> BatchDir:
    """The most recently created batch, for commands whose BATCH argument was left out."""
    candidates = [p for p in Path(batch_root).glob("hq-*") if (p / MANIFEST).exists()]
    if not candidates:
        raise BatchNotFoundError(f"no batches under {batch_root}; submit one with `hpcqueue submit FILE`")
    return BatchDir(max(candidates, key=lambda p: (p / MANIFEST).stat().st_mtime))


def create_batch(
    batch_root: Path,
    batch_id: str,
    *,
    manifest: Mapping[str, Any],
    plan: pd.DataFrame,
    task_specs: Sequence[Mapping[str, Any]],
    raw_lines: pd.Series,
    rejected: Sequence[Rejected] = (),
) -> BatchDir:
    """Write a complete batch directory under a temporary name, then rename it into place.

    ``plan`` has one row per valid request (``line``, ``task_index`` …) aligned with ``raw_lines``, the
    requests' JSON text; each task's ``input.jsonl`` gets its rows in planned order.
    """
    final = Path(batch_root) / batch_id
    staging = Path(batch_root) / f".{batch_id}.staging-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "tasks").mkdir(parents=True)
    (staging / "logs").mkdir()
    try:
        plan.reset_index(drop=True).to_parquet(staging / PLAN, index=False)
        _write_task_inputs(staging, plan, raw_lines, task_specs)
        if rejected:
            write_rejects(staging / REJECTS, list(rejected))
        atomic_write_json(staging / MANIFEST, dict(manifest))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        os.rename(staging, final)  # atomic; fails if ``final`` already exists and is not empty
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (final / MANIFEST).exists():
            raise
        # A concurrent submission of the same input and settings won the race: same id, same content.
    return BatchDir(final)


def _write_task_inputs(
    root: Path, plan: pd.DataFrame, raw_lines: pd.Series, task_specs: Sequence[Mapping[str, Any]]
) -> None:
    lines = plan["line"].to_numpy()
    raws = raw_lines.to_numpy()
    order = plan.reset_index(drop=True).groupby("task_index", sort=True).indices
    for spec in task_specs:
        index = int(spec["task_index"])
        task_dir = root / "tasks" / task_dir_name(index)
        task_dir.mkdir()
        rows = order.get(index, [])
        with open(task_dir / "input.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(f'{{"line":{int(lines[i])},"request":{raws[i]}}}\n' for i in rows)
        atomic_write_json(task_dir / "task.json", dict(spec))


def submitter_identity() -> dict[str, Any]:
    """Who and where: recorded with every batch so admins can group the ledger by user."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {
        "user": user,
        "host": socket.gethostname(),
        "created_at": time.time(),
        "hpcqueue_version": __version__,
    }
