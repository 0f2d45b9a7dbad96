"""Who may read which rows of the ledger.

A personal SQLite ledger is one user's file (owner-only, ``hpcqueue.ledger.db``): its owner may read all of
it. A site-wide PostgreSQL ledger is shared: the database itself keeps users apart with row-level security
keyed on the connecting role (one role per Unix user), and a **ledger admin** is a role that is a member of
``ADMIN_ROLE``; nothing in a user's own config decides it. A filter that asks for other users' rows
(``--all-users``, ``--user OTHER``) is refused up front for anyone else, with a message that says why,
instead of quietly showing only their own rows.
"""

from __future__ import annotations

from sqlalchemy import text

from hpcqueue.errors import AccessError
from hpcqueue.ledger.db import Ledger
from hpcqueue.ledger.filters import LedgerFilter, current_user

#: The PostgreSQL role whose members may read every user's rows.
ADMIN_ROLE = "hpcqueue_admin"


def connected_role(ledger: Ledger) -> str | None:
    """The database role this connection acts as (None on SQLite, which has no roles)."""
    if ledger.engine.dialect.name != "postgresql":
        return None
    with ledger.connect() as conn:
        return str(conn.execute(text("SELECT current_user")).scalar_one())


def may_read_all(ledger: Ledger) -> bool:
    """Whether this connection may read every user's rows: always on SQLite (the file's owner); on
    PostgreSQL, a superuser or a member of :data:`ADMIN_ROLE`."""
    if ledger.engine.dialect.name != "postgresql":
        return True
    with ledger.connect() as conn:
        row = conn.execute(
            text(
                "SELECT r.rolsuper OR (EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :admin)"
                " AND pg_has_role(current_user, :admin, 'MEMBER'))"
                " FROM pg_roles r WHERE r.rolname = current_user"
            ),
            {"admin": ADMIN_ROLE},
        ).scalar_one_or_none()
    return bool(row)


def check_filter(ledger: Ledger, where: LedgerFilter) -> None:
    """Refuse a filter that reaches beyond the current user's rows unless the connection may read all."""
    me = current_user()
    others = where.users is None or any(user != me for user in where.users)
    if not others or may_read_all(ledger):
        return
    asked = "--all-users" if where.users is None else "--user " + ", ".join(u for u in where.users if u != me)
    role = connected_role(ledger) or me
    raise AccessError(
        f"{asked}: only ledger admins may read other users' rows, and role {role!r} is not one on "
        f"{ledger.masked_url}. An admin is a member of the database role {ADMIN_ROLE!r} (see "
        "docs/ledger.md, 'Access on a shared cluster'); without it you see your own batches."
    )
