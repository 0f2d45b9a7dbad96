"""Which part of the ledger a report covers: one filter for ``ledger summary``, ``ledger export``,
``ledger metrics`` (users only) and ``report``, so that every view of the same filter counts the same rows.

A filter selects **batches** (by when they were submitted and by whom) and, within them, **tasks** (by
target, by the Slurm account their target charges) and their requests. ``users=None`` means every user the
database lets this connection see; a site-wide PostgreSQL ledger enforces that itself with row-level
security (``hpcqueue.ledger.access``), so a filter only ever narrows what the database allows.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, select

from hpcqueue.errors import ConfigError
from hpcqueue.ledger.schema import BatchRow, RequestRow, TaskRow


def current_user() -> str:
    """The Unix user running hpcqueue: whose batches a report shows unless told otherwise."""
    return getpass.getuser()


@dataclass(frozen=True)
class LedgerFilter:
    """Batches submitted in ``[since, until)`` (UTC-aware datetimes; None: unbounded) by ``users`` (None:
    every user), of ``models``; within them, tasks on ``targets`` charging ``accounts`` (empty: any).
    ``batch`` keeps one batch."""

    since: datetime | None = None
    until: datetime | None = None
    users: tuple[str, ...] | None = None
    accounts: tuple[str, ...] = field(default=())
    targets: tuple[str, ...] = field(default=())
    models: tuple[str, ...] = field(default=())
    batch: str | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            when = getattr(self, name)
            if when is not None and when.tzinfo is None:
                raise ConfigError(f"the filter's {name} must be timezone-aware, got {when.isoformat()}")
        if self.since is not None and self.until is not None and not self.since < self.until:
            raise ConfigError(
                f"--since ({self.since.isoformat()}) must come before --until ({self.until.isoformat()})"
            )

    @classmethod
    def mine(cls, **kwargs: Any) -> LedgerFilter:
        """The current Unix user's batches, narrowed by ``kwargs``."""
        return cls(users=(current_user(),), **kwargs)

    def narrowed(self, **changes: Any) -> LedgerFilter:
        return replace(self, **changes)

    @property
    def selects_tasks(self) -> bool:
        """Whether the filter keeps only some tasks of a batch (by target or account)."""
        return bool(self.targets or self.accounts)

    def batch_clauses(self) -> list[Any]:
        """WHERE clauses on ``batches``."""
        clauses: list[Any] = []
        if self.since is not None:
            clauses.append(BatchRow.created_at >= self.since)
        if self.until is not None:
            clauses.append(BatchRow.created_at < self.until)
        if self.users is not None:
            clauses.append(BatchRow.user.in_(self.users))
        if self.models:
            clauses.append(BatchRow.model.in_(self.models))
        if self.batch is not None:
            clauses.append(BatchRow.id == self.batch)
        return clauses

    def task_clauses(self) -> list[Any]:
        """WHERE clauses on ``tasks`` (joined to ``batches`` by the caller, or :meth:`task_scope`)."""
        clauses: list[Any] = []
        if self.targets:
            clauses.append(TaskRow.target.in_(self.targets))
        if self.accounts:
            clauses.append(TaskRow.account.in_(self.accounts))
        return clauses

    def task_scope(self) -> list[Any]:
        """WHERE clauses that keep the filter's tasks, for a query on ``tasks`` alone."""
        return [*self.task_clauses(), *self._in_batches(TaskRow.batch_id)]

    def request_scope(self) -> list[Any]:
        """WHERE clauses that keep the filter's requests, for a query on ``requests`` alone: the batches',
        then by target (a request's own column), then by account (its task's)."""
        clauses = list(self._in_batches(RequestRow.batch_id))
        if self.targets:
            clauses.append(RequestRow.target.in_(self.targets))
        if self.accounts:
            clauses.append(
                exists().where(
                    and_(
                        TaskRow.batch_id == RequestRow.batch_id,
                        TaskRow.task_index == RequestRow.task_index,
                        TaskRow.account.in_(self.accounts),
                    )
                )
            )
        return clauses

    def _in_batches(self, batch_id: Any) -> list[Any]:
        clauses = self.batch_clauses()
        if not clauses:
            return []
        if self.batch is not None and len(clauses) == 1:
            return [batch_id == self.batch]
        return [batch_id.in_(select(BatchRow.id).where(*clauses))]

    def describe(self) -> str:
        """The filter in words, for titles and messages: ``user alice, target gpu, since 2024-11-01``."""
        parts: list[str] = []
        if self.users is None:
            parts.append("all users")
        else:
            parts.append(_words("user", self.users))
        for name, values in (("account", self.accounts), ("target", self.targets), ("model", self.models)):
            if values:
                parts.append(_words(name, values))
        if self.batch is not None:
            parts.append(f"batch {self.batch}")
        if self.since is not None:
            parts.append(f"since {self.since.isoformat(timespec='minutes')}")
        if self.until is not None:
            parts.append(f"until {self.until.isoformat(timespec='minutes')}")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """The filter as JSON-ready data (ISO times), as reports and exports record it."""
        return {
            "since": None if self.since is None else self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
            "users": None if self.users is None else list(self.users),
            "accounts": list(self.accounts),
            "targets": list(self.targets),
            "models": list(self.models),
            "batch": self.batch,
        }


def _words(name: str, values: Iterable[str]) -> str:
    values = list(values)
    return f"{name}{'s' if len(values) > 1 else ''} {', '.join(values)}"
