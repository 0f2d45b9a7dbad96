"""Files: atomic writes (a reader never sees half a file), JSON that is strict, and owner-only places.

Atomic writes go to a temporary name in the same directory, are flushed and fsynced, then renamed over the
target (``os.replace`` is atomic on POSIX file systems, NFS included for a single client).

Prompts and outputs are private: batch directories and the SQLite ledger live on login nodes many users share,
so hpcqueue makes them owner-only whatever the umask (``private_umask``, ``make_private_dir``), and tightens
places an older version left readable by others (``tighten``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from hpcqueue.errors import UnsafePathError

log = logging.getLogger(__name__)

#: Owner-only: what batch directories, their files and the SQLite ledger get.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
_OTHERS = 0o077


@contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8"
) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success it replaces ``path`` atomically.

    If the block raises, the temporary file is removed and ``path`` is left untouched. The file gets the
    permissions a plain ``open`` would give it (those of the file it replaces, else 0666 less the umask), not
    the owner-only mode of a temporary file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', not {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            os.fchmod(handle.fileno(), _new_file_mode(target))
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(target.parent)


def _new_file_mode(target: Path) -> int:
    try:
        info = target.lstat()  # a symbolic link planted at ``target`` lends it no mode (it is replaced)
    except FileNotFoundError:
        info = None
    if info is None or stat.S_ISLNK(info.st_mode):
        return 0o666 & ~_umask()
    return info.st_mode & 0o7777


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (no window for other threads)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort: some file systems refuse it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that is strict JSON: NaN and infinities become null, numpy scalars Python numbers."""
    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()  # numpy scalar
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    text = json.dumps(json_safe(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
    atomic_write_text(path, text + "\n")


def atomic_write_jsonl(path: str | os.PathLike[str], records: Iterable[Any]) -> None:
    with atomic_open(path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
            handle.write("\n")


def open_nofollow(
    path: str | os.PathLike[str], flags: int = os.O_RDONLY, *, below: str | os.PathLike[str] | None = None
) -> int:
    """``os.open`` that never follows a symbolic link: not as ``path``'s last part, and, with ``below``, not
    as any directory between ``below`` and ``path`` either. Raises :class:`UnsafePathError` naming the link.

    Batch directories hold only regular files and directories that hpcqueue made; a symbolic link there
    was planted, and following it would read another user's file as a result, or append to one. New files
    are owner-only (0600).
    """
    target = Path(path)
    if below is not None:
        base = Path(below)
        for parent in reversed(target.relative_to(base).parents[:-1]):
            _refuse_link(base / parent)
    try:
        return os.open(target, flags | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(target):
            raise UnsafePathError(_link_message(target)) from None
        raise


def _refuse_link(path: Path) -> None:
    if path.is_symlink():
        raise UnsafePathError(_link_message(path))


def _link_message(path: Path) -> str:
    return (
        f"{path} is a symbolic link (to {os.readlink(path)}); hpcqueue never follows links inside a batch "
        "directory, where it writes only regular files: remove the link (someone with write access to the "
        "directory may have planted it) and check the directory's permissions"
    )


def read_bytes_nofollow(
    path: str | os.PathLike[str], *, below: str | os.PathLike[str] | None = None
) -> bytes:
    """The bytes of ``path``, refusing a symbolic link (see :func:`open_nofollow`)."""
    with os.fdopen(open_nofollow(path, below=below), "rb") as handle:
        return handle.read()


def read_text_nofollow(path: str | os.PathLike[str], *, below: str | os.PathLike[str] | None = None) -> str:
    """The UTF-8 text of ``path``, refusing a symbolic link (see :func:`open_nofollow`)."""
    return read_bytes_nofollow(path, below=below).decode("utf-8")


def read_jsonl(path: str | os.PathLike[str], *, below: str | os.PathLike[str] | None = None) -> Iterator[Any]:
    """Yield the JSON objects of a JSONL file, skipping a torn last line (from an append cut short).
    A symbolic link is refused (:func:`open_nofollow`): JSONL files are the batch directory's own."""
    with os.fdopen(open_nofollow(path, below=below), encoding="utf-8") as handle:
        for raw in handle:
            if not raw.endswith("\n"):
                return  # torn final line: the writer died mid-append
            raw = raw.strip()
            if raw:
                yield json.loads(raw)


@contextmanager
def private_umask() -> Iterator[None]:
    """Everything created in the block is owner-only, also by libraries (pandas, submitit, sbatch's log files,
    child processes started here), whatever the process umask was. The umask is process-wide: use it around
    single-threaded work only."""
    old = os.umask(_OTHERS)
    os.umask(old | _OTHERS)
    try:
        yield
    finally:
        os.umask(old)


def make_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and missing parents) owner-only; an existing directory open to others is tightened."""
    directory = Path(path)
    with private_umask():
        directory.mkdir(parents=True, exist_ok=True)
    tighten(directory)
    return directory


def is_private(path: str | os.PathLike[str]) -> bool:
    """True when neither group nor others have any permission on ``path`` (or it does not exist)."""
    try:
        return os.stat(path).st_mode & _OTHERS == 0
    except FileNotFoundError:
        return True


def tighten(path: str | os.PathLike[str], *, recursive: bool = False) -> int:
    """Remove group and other permissions from ``path`` (and, with ``recursive``, everything under it) where
    this user owns it; returns how many entries changed. Symbolic links are left alone."""
    root = Path(path)
    entries = [root]
    if recursive and root.is_dir():
        entries += [Path(base) / name for base, dirs, files in os.walk(root) for name in (*dirs, *files)]
    changed = 0
    uid = os.getuid()
    for entry in entries:
        try:
            info = entry.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(info.st_mode) or info.st_uid != uid or info.st_mode & _OTHERS == 0:
            continue
        try:
            os.chmod(entry, stat.S_IMODE(info.st_mode) & ~_OTHERS)
        except OSError as exc:
            log.warning("could not make %s owner-only: %s", entry, exc)
            continue
        changed += 1
    return changed
