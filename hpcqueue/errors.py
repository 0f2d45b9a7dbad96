"""Every exception hpcqueue defines, in one place.

Library code raises the ``HpcqueueError`` family; only ``hpcqueue.cli.common.fail`` turns them into exit codes
and messages. Every message says what is wrong and, where it can, what to do next. The few exceptions that are
not user errors (a held task lock, a stop request, a JSON constant in the input) are control flow between two
functions and say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


class HpcqueueError(Exception):
    """Base class: an error the user can act on. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1


class ConfigError(HpcqueueError):
    """A setting, config file or command-line option is invalid."""

    exit_code = 2


class SiteDataError(ConfigError):
    """A site's series or model cannot be used: a missing file, wrong columns, a gap, a negative value, or a
    span that does not cover the plan's horizon. The message names the file and what is wrong."""


class ModelError(HpcqueueError):
    """A model or tokenizer cannot be found or loaded."""


class PlanningError(HpcqueueError):
    """No valid plan can be made (for example: no profile for a target that needs one)."""


class LedgerError(HpcqueueError):
    """The ledger database cannot be opened, migrated or written."""


class AccessError(LedgerError):
    """The connection may not read what was asked (another user's rows without being a ledger admin)."""


class BatchNotFoundError(HpcqueueError):
    """No batch with that id exists in the batch root or the ledger."""


class UnsafePathError(HpcqueueError):
    """A file or directory hpcqueue reads or writes is not what it created: a symbolic link where a batch
    directory holds only regular files and directories, or a place other users may write."""


class DispatchError(HpcqueueError):
    """Work could not be submitted to an executor."""


class SlurmError(HpcqueueError):
    """A Slurm command failed, timed out or is not installed; the message names the command and its stderr."""


class IncompleteBatchError(HpcqueueError):
    """``results`` was asked for a batch whose tasks have not all finished."""


class MeterUnavailableError(HpcqueueError):
    """The requested meter cannot be used on this machine (or does not exist); the message says why."""

    exit_code = 2


class ProfileRunError(HpcqueueError):
    """The profiling job failed; the message holds its error and the tail of its log."""


@dataclass(frozen=True)
class InputIssue:
    """One problem found in an input file, located by file, line and field."""

    path: str
    line: int
    field: str | None
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class InputError(HpcqueueError):
    """The input file has invalid lines; nothing was submitted.

    ``issues`` holds every error found (not only the first), in line order.
    """

    exit_code = 2

    def __init__(self, message: str, issues: list[InputIssue] | None = None) -> None:
        super().__init__(message)
        self.issues: list[InputIssue] = list(issues or [])


# -- control flow, not user errors ---------------------------------------------------------------------------


class TaskLocked(Exception):
    """Another live process holds the task's lock (the worker leaves the task to it)."""


class StopRequested(BaseException):
    """SIGTERM arrived (``scancel``, a node shutdown): stop after the current generation batch.

    A BaseException, so no task-failure handler mistakes it for a broken task: the task is left unfinished,
    with its finished batches in partial.jsonl, for a retry or a requeue to resume.
    """


class JSONConstantError(ValueError):
    """NaN / Infinity in an input line: Python's json accepts them, JSON (and our output files) do not."""
