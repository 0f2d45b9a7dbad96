"""The batch-directory protocol: every file name, the task lock, the batch id, creating and reading a batch.

This is the one contract between the driver, which writes a batch directory and reads it back
(``submission``, ``dispatch.status``, ``ledger.collect``, ``report.results``), and the workers on the nodes,
which read their task directories and write outputs and metrics into them (``worker.runner``). No other module
spells a file name of a batch directory. The layout is documented in ``docs/internals.md``.

A batch directory is created whole or not at all: it is assembled under a temporary name in the batch root
and renamed into place, so a crash while planning never leaves half a batch that a later submission would
mistake for a real one. Batch directories hold prompts and outputs, so they are owner-only (0700 directories,
0600 files) whatever the umask; a batch root or batch left readable by others is tightened on first use.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import getpass
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import socket
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from hpcqueue import __version__
from hpcqueue.errors import BatchNotFoundError, TaskLocked, UnsafePathError
from hpcqueue.fileio import (
    atomic_write_json,
    is_private,
    make_private_dir,
    open_nofollow,
    private_umask,
    read_bytes_nofollow,
    read_jsonl,
    read_text_nofollow,
    tighten,
)
from hpcqueue.ingest import Rejected, write_rejects

log = logging.getLogger(__name__)

TaskState = Literal["pending", "running", "completed", "failed"]

# The batch directory.
MANIFEST = "batch.json"
PLAN = "plan.parquet"
REJECTS = "rejects.jsonl"
JOBS = "jobs.json"
SCHEDULE = "schedule.json"  # when each task may start and when the batch must end; re-planning rewrites it
SCHEDULE_LOCK = "schedule.lock"  # held while the schedule is rewritten, so two re-plans never lose an update
LOGS = "logs"
TASKS = "tasks"
#: The columns of plan.parquet: one row per valid request, where the planner put it and what it predicted.
PLAN_COLUMNS = (
    "line",
    "id",
    "kind",
    "target",
    "task_index",
    "input_tokens",
    "max_new_tokens",
    "predicted_energy_j",
    "predicted_runtime_s",
    "extrapolated",
)
# A task directory, tasks/<NNNNNN>/: what the driver writes, then what the worker writes, in order.
TASK_SPEC = "task.json"
INPUT = "input.jsonl"
LOCK = "lock"
PARTIAL = "partial.jsonl"
OUTPUT = "output.jsonl"
METRICS = "metrics.json"  # written last, atomically: the task is done when it exists

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


#: A batch id (:func:`batch_id_for` makes ``hq-`` and 16 hex digits); one given on the command line must
#: match, since it becomes a path: no '/', no '..', no spaces.
BATCH_ID_RE = re.compile(r"hq-[A-Za-z0-9_-]{1,64}")


def task_dir_name(task_index: int) -> str:
    return f"{task_index:06d}"


def task_location(task_dir: Path) -> tuple[BatchDir, int] | None:
    """The batch and task index of a task directory (``<batch>/tasks/<NNNNNN>``); None for a directory that
    is not in a batch (a task made by hand), which has no schedule."""
    task_dir = Path(task_dir)
    if task_dir.parent.name != TASKS or not task_dir.name.isdigit():
        return None
    return BatchDir(task_dir.parent.parent), int(task_dir.name)


def _epoch(value: Any, what: str) -> float:
    try:
        when = float(value)
    except (TypeError, ValueError):
        when = math.nan
    if not math.isfinite(when) or isinstance(value, bool):
        raise ValueError(f"{what} must be a time in epoch seconds, not {value!r}")
    return when


def _schedule(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """A schedule as written to ``schedule.json``: a float or null deadline, begin times keyed by the task
    index as text (JSON keys are text), null begin times dropped."""
    data = data or {}
    deadline = data.get("deadline_at")
    begins = data.get("begin_at") or {}
    return {
        "deadline_at": None if deadline is None else _epoch(deadline, "deadline_at"),
        "begin_at": {
            str(int(index)): _epoch(when, f"begin_at of task {index}")
            for index, when in begins.items()
            if when is not None
        },
    }


def attempt_metrics_name(attempt: int) -> str:
    """Where a failed attempt's metrics.json is kept when the task runs again (never read as its state)."""
    return f"metrics.attempt-{attempt}.json"


def submit_lock_name(batch_id: str) -> str:
    """The batch's submission lock, in the batch root beside its directory (:func:`submission_lock`)."""
    return f".{batch_id}.submit.lock"


def refused_output_name(attempt: int) -> str:
    """Where collect keeps an output.jsonl it refused (torn, corrupt or short), beside that attempt's
    ``metrics.attempt-N.json``: never read as a result."""
    return f"output.refused-{attempt}.jsonl"


class _Child:
    """A fixed file or folder inside a batch directory, read as an attribute: ``batch.logs_dir``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, batch: BatchDir, owner: type | None = None) -> Path:
        return batch.path / self.name


@dataclass(frozen=True)
class BatchDir:
    """A batch directory on disk and the questions asked of it."""

    path: Path

    @property
    def batch_id(self) -> str:
        return self.path.name

    manifest_path = _Child(MANIFEST)
    schedule_path = _Child(SCHEDULE)
    logs_dir = _Child(LOGS)
    tasks_dir = _Child(TASKS)
    rejects_path = _Child(REJECTS)

    def task_dir(self, task_index: int) -> Path:
        return self.tasks_dir / task_dir_name(task_index)

    def task_dirs_on_disk(self) -> set[int]:
        """Indices of the ``tasks/<NNNNNN>/`` directories present (whatever the manifest says)."""
        if not self.tasks_dir.is_dir():
            return set()
        return {int(p.name) for p in self.tasks_dir.iterdir() if p.is_dir() and p.name.isdigit()}

    def _read_text(self, path: Path) -> str:
        """A file of this batch, never through a symbolic link (:func:`fileio.open_nofollow`)."""
        return read_text_nofollow(path, below=self.path.parent)

    def manifest(self) -> dict[str, Any]:
        return json.loads(self._read_text(self.manifest_path))

    def plan(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        data = read_bytes_nofollow(self.path / PLAN, below=self.path.parent)
        return pd.read_parquet(io.BytesIO(data), columns=list(columns) if columns else None)

    def task_indices(self) -> list[int]:
        return [task["task_index"] for task in self.manifest()["tasks"]]

    def task_state(self, task_index: int) -> TaskState:
        """``completed``/``failed`` once the worker wrote metrics.json, ``running`` while a worker holds the
        task's lock, else ``pending``."""
        task_dir = self.task_dir(task_index)
        metrics = task_dir / METRICS
        if metrics.exists():
            state = json.loads(self._read_text(metrics)).get("state")
            return "completed" if state == "completed" else "failed"
        return "running" if is_locked(task_dir / LOCK) else "pending"

    def task_states(self) -> dict[int, TaskState]:
        return {index: self.task_state(index) for index in self.task_indices()}

    def metrics(self, task_index: int) -> dict[str, Any] | None:
        path = self.task_dir(task_index) / METRICS
        if not path.exists():
            return None
        return json.loads(self._read_text(path))

    def archive_attempt(self, task_index: int) -> None:
        """Keep a failed attempt's metrics.json for the record, under a name the task state does not read,
        so the task counts as not run and a new attempt can write its own."""
        metrics = self.task_dir(task_index) / METRICS
        if not metrics.exists():
            return
        attempt = 1
        while (metrics.parent / attempt_metrics_name(attempt)).exists():
            attempt += 1
        os.replace(metrics, metrics.parent / attempt_metrics_name(attempt))

    def refuse_attempt(self, task_index: int) -> int | None:
        """Set aside an attempt whose output.jsonl cannot be trusted (torn, corrupt, short): its metrics.json
        becomes ``metrics.attempt-N.json`` and its output ``output.refused-N.jsonl``, so the task reads as not
        finished and ``hpcqueue retry`` runs it again (resuming after its intact ``partial.jsonl``). Returns
        N, or None when another process set it aside first."""
        task_dir = self.task_dir(task_index)
        attempt = 1
        while (task_dir / attempt_metrics_name(attempt)).exists():
            attempt += 1
        try:
            os.replace(task_dir / METRICS, task_dir / attempt_metrics_name(attempt))
        except FileNotFoundError:
            return None  # a concurrent collect refused it already
        with contextlib.suppress(FileNotFoundError):
            os.replace(task_dir / OUTPUT, task_dir / refused_output_name(attempt))
        return attempt

    def outputs(self, task_index: int) -> Iterator[dict[str, Any]]:
        path = self.task_dir(task_index) / OUTPUT
        if path.exists():
            yield from read_jsonl(path, below=self.path.parent)

    def finished_lines(self, task_index: int) -> int:
        """Requests with an output so far (final output, else the partial file of a running task)."""
        task_dir = self.task_dir(task_index)
        for name in (OUTPUT, PARTIAL):
            path = task_dir / name
            if path.exists():
                return sum(1 for _ in read_jsonl(path, below=self.path.parent))
        return 0

    def schedule(self) -> dict[str, Any]:
        """``schedule.json``: ``{"deadline_at": epoch | None, "begin_at": {"<task_index>": epoch}}``.

        A batch created before schedules existed has no file: no deadline, every task starts when submitted.
        """
        try:
            text = self._read_text(self.schedule_path)
        except FileNotFoundError:
            return {"deadline_at": None, "begin_at": {}}
        try:
            return _schedule(json.loads(text))
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"{self.schedule_path} is not a batch schedule ({exc}); it should read "
                '{"deadline_at": <epoch seconds or null>, "begin_at": {"<task index>": <epoch seconds>}}'
            ) from exc

    def begin_times(self) -> dict[int, float]:
        """When each deferred task may start (epoch seconds); a task not listed starts when submitted."""
        return {int(index): when for index, when in self.schedule()["begin_at"].items()}

    def deadline_at(self) -> float | None:
        """When the batch's work must have ended (epoch seconds), None when it has no deadline."""
        deadline: float | None = self.schedule()["deadline_at"]
        return deadline

    def set_begin_times(self, updates: Mapping[int, float | None]) -> None:
        """Merge new begin times into the schedule; ``None`` removes a task's (it starts when submitted).

        Waiting workers read the schedule again while they wait, so a local task moves with this alone; a
        Slurm job's own begin time is moved with ``scontrol`` (``dispatch.slurm.scontrol_update_begin``).
        """
        with self._schedule_update() as schedule:
            for index, when in updates.items():
                key = str(int(index))
                if when is None:
                    schedule["begin_at"].pop(key, None)
                else:
                    schedule["begin_at"][key] = _epoch(when, f"the begin time of task {index}")

    def set_deadline(self, deadline_at: float | None) -> None:
        """Replace the batch's deadline (``hpcqueue retry --deadline``); None: no deadline."""
        with self._schedule_update() as schedule:
            schedule["deadline_at"] = None if deadline_at is None else _epoch(deadline_at, "the deadline")

    @contextmanager
    def _schedule_update(self) -> Iterator[dict[str, Any]]:
        """Read, change and atomically rewrite the schedule under its lock (owner-only files)."""
        with private_umask():
            fd = open_nofollow(self.path / SCHEDULE_LOCK, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                schedule = self.schedule()
                yield schedule
                atomic_write_json(self.schedule_path, schedule)
            finally:
                os.close(fd)  # closing drops the lock

    def jobs(self) -> list[dict[str, Any]]:
        path = self.path / JOBS
        if not path.exists():
            return []
        return json.loads(self._read_text(path))

    def add_jobs(self, jobs: Sequence[Mapping[str, Any]]) -> None:
        self.write_jobs([*self.jobs(), *jobs])

    def write_jobs(self, jobs: Sequence[Mapping[str, Any]]) -> None:
        """Replace the job records (``hpcqueue cancel`` marks the ones it cancelled)."""
        with private_umask():
            atomic_write_json(self.path / JOBS, list(jobs))

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
        ``logs/<target>/<job id>/<job id>_<task>_log.err`` for Slurm jobs (the folder is ``%j``). A log
        reached through a symbolic link is not read (it would copy another file into the ledger): the tail
        says so instead.
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
                data = read_bytes_nofollow(path, below=self.path)
            except UnsafePathError as exc:
                log.warning("%s", exc)
                return f"(log not read: {path} is a symbolic link or lies behind one)"
            except OSError:
                continue
            text = data.decode("utf-8", errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return None


@contextmanager
def hold_task_lock(task_dir: Path) -> Iterator[None]:
    """Hold the task's fcntl lock while running it; raises ``TaskLocked`` when another process holds it.

    The kernel drops the lock when the holder dies, so a lock held means a live worker (``is_locked``). The
    file says which host and process hold it, for someone reading the directory by hand.
    """
    # Never through a symbolic link: the lock file is truncated, and a planted link would truncate its target.
    fd = open_nofollow(task_dir / LOCK, os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise TaskLocked(str(task_dir)) from exc
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def submission_lock(root: str | os.PathLike[str], batch_id: str, *, blocking: bool = True) -> Iterator[bool]:
    """Hold the batch's submission lock (fcntl on ``<batch root>/.<batch id>.submit.lock``) while deciding
    what to submit and submitting it, and until the jobs are recorded in ``jobs.json``.

    Two ``hpcqueue submit`` of the same file at once (or a submit and a ``retry``) would otherwise both find
    the tasks unsubmitted and both submit them. The second waits, then finds the first one's jobs. The lock
    lives beside the batch directory, not in it, because the first submission creates the directory; the
    kernel drops it when its holder dies, so a killed submit blocks nobody. With ``blocking=False`` it yields
    False at once, holding nothing, while someone else holds it.
    """
    root = batch_root(root, create=True)
    with private_umask():
        fd = open_nofollow(root / submit_lock_name(batch_id), os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing drops the lock


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


def batch_root(path: str | os.PathLike[str], *, create: bool = False) -> Path:
    """The batch root (created owner-only with ``create``); one left open to other users by an older
    hpcqueue or a loose umask is tightened with everything under it, with a one-line notice."""
    root = Path(path)
    if not root.exists():
        return make_private_dir(root) if create else root
    _refuse_shared(root)
    _make_private(root, "the batch root")
    return root


def _refuse_shared(root: Path) -> None:
    """A batch root another user owns and others may write (``/tmp``, a shared scratch folder) is refused:
    batch ids are predictable, so anyone could plant a symbolic link or a directory of their own where
    a batch will be created. (A batch root this user owns is made owner-only by :func:`_make_private`.)"""
    info = root.stat()
    if info.st_uid != os.getuid() and info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePathError(
            f"the batch root {root} belongs to another user (uid {info.st_uid}) and others may write to it "
            f"(mode {stat.S_IMODE(info.st_mode):o}): set batch_root (or HPCQUEUE_BATCH_ROOT) to a directory "
            "of your own, such as a folder you create inside it"
        )


def _make_private(path: Path, what: str) -> None:
    if is_private(path):
        return
    changed = tighten(path, recursive=True)
    if changed:
        log.warning(
            "%s %s was open to other users and holds prompts and outputs: made it owner-only "
            "(%d files and directories)",
            what,
            path,
            changed,
        )


def open_batch(root: Path, batch_id: str) -> BatchDir:
    if not BATCH_ID_RE.fullmatch(batch_id):
        raise BatchNotFoundError(
            f"{batch_id!r} is not a batch id: a batch id is 'hq-' and up to 64 letters, digits, '-' or '_' "
            "(`hpcqueue ledger batches` lists yours)"
        )
    root = batch_root(root)
    batch = BatchDir(root / batch_id)
    if batch.path.is_symlink():
        raise UnsafePathError(
            f"the batch directory {batch.path} is a symbolic link (to {os.readlink(batch.path)}); "
            "hpcqueue reads only batch directories it created: remove the link"
        )
    if not batch.manifest_path.exists():
        known = sorted(b.batch_id for b in list_batches(root))
        hint = f"batches under {root}: {', '.join(known[-5:])}" if known else f"no batches under {root}"
        raise BatchNotFoundError(
            f"no batch {batch_id!r} ({hint}); set batch_root / HPCQUEUE_BATCH_ROOT if it lives elsewhere"
        )
    _make_private(batch.path, "the batch directory")
    return batch


def list_batches(root: Path) -> list[BatchDir]:
    """Every batch under the batch root, by id."""
    root = batch_root(root)
    return [BatchDir(p.parent) for p in sorted(root.glob(f"hq-*/{MANIFEST}")) if not p.parent.is_symlink()]


def latest_batch(root: Path) -> BatchDir:
    """The most recently created batch, for commands whose BATCH argument was left out."""
    candidates = list_batches(root)
    if not candidates:
        raise BatchNotFoundError(f"no batches under {root}; submit one with `hpcqueue submit FILE`")
    latest = max(candidates, key=lambda b: b.manifest_path.stat().st_mtime)
    _make_private(latest.path, "the batch directory")
    return latest


def create_batch(
    root: Path,
    batch_id: str,
    *,
    manifest: Mapping[str, Any],
    plan: pd.DataFrame,
    task_specs: Sequence[Mapping[str, Any]],
    raw_lines: pd.Series,
    rejected: Sequence[Rejected] = (),
    schedule: Mapping[str, Any] | None = None,
) -> BatchDir:
    """Write a complete batch directory under a temporary name, then rename it into place.

    ``plan`` has one row per valid request (``line``, ``task_index`` …) aligned with ``raw_lines``, the
    requests' JSON text; each task's ``input.jsonl`` gets its rows in planned order. ``schedule``
    (``{"deadline_at": epoch | None, "begin_at": {task_index: epoch}}``) becomes ``schedule.json``; without
    one the batch has no deadline and every task starts when submitted. Everything is written owner-only.
    """
    root = batch_root(root, create=True)
    final = root / batch_id
    staging = root / f".{batch_id}.staging-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        with private_umask():
            (staging / TASKS).mkdir(parents=True)
            (staging / LOGS).mkdir()
            plan.reset_index(drop=True).to_parquet(staging / PLAN, index=False)
            _write_task_inputs(staging, plan, raw_lines, task_specs)
            if rejected:
                write_rejects(staging / REJECTS, list(rejected))
            if schedule is not None:
                atomic_write_json(staging / SCHEDULE, _schedule(schedule))
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
        task_dir = root / TASKS / task_dir_name(index)
        task_dir.mkdir()
        rows = order.get(index, [])
        with open(task_dir / INPUT, "w", encoding="utf-8") as handle:
            handle.writelines(f'{{"line":{int(lines[i])},"request":{raws[i]}}}\n' for i in rows)
        atomic_write_json(task_dir / TASK_SPEC, dict(spec))


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
