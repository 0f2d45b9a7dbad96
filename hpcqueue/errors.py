"""The one exception hierarchy of hpcqueue.

Library code raises these; only ``cli.py`` turns them into exit codes and messages.
Every message says what is wrong and, where it can, what to do next.
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


class ModelError(HpcqueueError):
    """A model or tokenizer cannot be found or loaded."""


class PlanningError(HpcqueueError):
    """No valid plan can be made (for example: no profile for a target that needs one)."""


class LedgerError(HpcqueueError):
    """The ledger database cannot be opened, migrated or written."""


class BatchNotFoundError(HpcqueueError):
    """No batch with that id exists in the batch root or the ledger."""


class DispatchError(HpcqueueError):
    """Work could not be submitted to an executor."""


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
