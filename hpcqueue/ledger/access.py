"""Who may read and write which rows of the ledger.

A personal SQLite ledger is one user's file (owner-only, ``hpcqueue.ledger.db``): its owner may read all of
it. A site-wide PostgreSQL ledger is shared: the database itself keeps users apart with row-level security
keyed on the connecting role (one role per Unix user, named like it), so that ``psql`` sees what hpcqueue
sees. A **ledger admin** is a role that is a member of ``ADMIN_ROLE``; nothing in a user's own config decides
it. A filter that asks for other users' rows (``--all-users``, ``--user OTHER``) is refused up front for
anyone else, with a message that says why, instead of quietly showing only their own rows.

The SQL that sets this up lives here, once: :func:`site_sql` (``hpcqueue ledger init-site --sql`` prints it,
docs/ledger.md shows it) and :func:`init_site` applies it as the database owner.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from hpcqueue.errors import AccessError, ConfigError, LedgerError
from hpcqueue.ledger.db import Ledger
from hpcqueue.ledger.filters import LedgerFilter, current_user

#: The PostgreSQL role whose members may read every user's rows.
ADMIN_ROLE = "hpcqueue_admin"
#: The PostgreSQL group role whose members may use the ledger at all (their own rows); admins are members.
USER_ROLE = "hpcqueue_user"
#: The tables row-level security guards: ``batches`` by its ``user``, the others through their batch.
LEDGER_TABLES = ("batches", "tasks", "requests", "measurements", "plan_costs")
#: What a role name may be: a Unix user name, as PostgreSQL takes it (at most 63 bytes).
_ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.@-]{0,62}")

_OWN_BATCH = '"user" = current_user'
_READABLE_BATCH = f"{_OWN_BATCH} OR pg_has_role(current_user, '{ADMIN_ROLE}', 'MEMBER')"


def _create_role(name: str, options: str) -> str:
    return (
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') "
        f'THEN CREATE ROLE "{name}" {options}; END IF; END $$'
    )


def _policies(table: str) -> list[str]:
    """Row-level security on ``table``: read what the batch policy lets you read, write only your own."""
    if table == "batches":
        read, own = _READABLE_BATCH, _OWN_BATCH
    else:
        # The subquery on batches is itself filtered by batches' policy: a row is readable with its batch.
        read = f"EXISTS (SELECT 1 FROM batches b WHERE b.id = {table}.batch_id)"
        own = f'EXISTS (SELECT 1 FROM batches b WHERE b.id = {table}.batch_id AND b."user" = current_user)'
    statements = [f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"]
    for name, command, clauses in (
        ("hpcqueue_read", "SELECT", f"USING ({read})"),
        ("hpcqueue_insert", "INSERT", f"WITH CHECK ({own})"),
        ("hpcqueue_update", "UPDATE", f"USING ({own}) WITH CHECK ({own})"),
        ("hpcqueue_delete", "DELETE", f"USING ({own})"),
    ):
        statements.append(f"DROP POLICY IF EXISTS {name} ON {table}")
        statements.append(f"CREATE POLICY {name} ON {table} FOR {command} TO PUBLIC {clauses}")
    return statements


def _site_statements() -> list[str]:
    tables = ", ".join(LEDGER_TABLES)
    return [
        _create_role(USER_ROLE, "NOLOGIN"),
        _create_role(ADMIN_ROLE, "NOLOGIN"),
        f"GRANT {USER_ROLE} TO {ADMIN_ROLE}",
        "DO $$ BEGIN "
        f"EXECUTE format('GRANT CONNECT ON DATABASE %I TO {USER_ROLE}', current_database()); "
        f"EXECUTE format('GRANT USAGE ON SCHEMA %I TO {USER_ROLE}', current_schema()); "
        f"EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA %I TO {USER_ROLE}', current_schema()); "
        "END $$",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {tables} TO {USER_ROLE}",
        f"GRANT SELECT ON alembic_version TO {USER_ROLE}",
        *(statement for table in LEDGER_TABLES for statement in _policies(table)),
    ]


#: The statements that make a migrated ledger shared, in order; each is idempotent. They name no user.
SITE_SQL: tuple[str, ...] = tuple(_site_statements())


def check_role_name(name: str) -> str:
    """``name`` if it can be a ledger role (a Unix user name), else a ConfigError saying what is valid."""
    if not _ROLE_NAME.fullmatch(name):
        raise ConfigError(
            f"{name!r} is not a role name init-site accepts: use a Unix user name (letters, digits, '_', "
            "'.', '@', '-'; starting with a letter or '_'; at most 63 characters)"
        )
    return name


def member_sql(*, users: Sequence[str] = (), admins: Sequence[str] = ()) -> list[str]:
    """The statements that give each of ``users`` (and ``admins``, who may also read everyone's rows) a LOGIN
    role of that name if it has none (no password: peer authentication) and membership in the ledger's
    roles."""
    statements: list[str] = []
    for names, group in ((users, USER_ROLE), (admins, ADMIN_ROLE)):
        for name in dict.fromkeys(names):
            check_role_name(name)
            statements.append(_create_role(name, "LOGIN"))
            statements.append(f'GRANT {group} TO "{name}"')
    return statements


def site_sql(*, users: Sequence[str] = (), admins: Sequence[str] = ()) -> list[str]:
    """Everything ``init-site`` runs after migrating: :data:`SITE_SQL`, then :func:`member_sql`."""
    return [*SITE_SQL, *member_sql(users=users, admins=admins)]


def render_sql(statements: Sequence[str]) -> str:
    """``statements`` as a script ``psql`` runs."""
    return "".join(f"{statement};\n" for statement in statements)


def init_site(ledger: Ledger, *, users: Sequence[str] = (), admins: Sequence[str] = ()) -> list[str]:
    """Apply :func:`site_sql` to ``ledger`` (already migrated by opening it) in one transaction, as the
    database owner; re-running it changes nothing that is already set up. Returns what it did, in words."""
    if ledger.engine.dialect.name != "postgresql":
        raise LedgerError(
            f"init-site sets up row-level security on a shared PostgreSQL ledger; {ledger.masked_url} is "
            f"{ledger.engine.dialect.name}, which has no roles: a SQLite ledger is one user's file, readable "
            "by its owner only, and needs no setup"
        )
    statements = site_sql(users=users, admins=admins)
    wanted = [*dict.fromkeys([*users, *admins])]
    try:
        with ledger.engine.begin() as conn:
            existing = set(
                conn.execute(
                    text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:names)"),
                    {"names": [USER_ROLE, ADMIN_ROLE, *wanted]},
                ).scalars()
            )
            where = conn.execute(text("SELECT current_database(), current_schema(), current_user")).one()
            # The driver's own cursor, given no parameters, runs each text as written: its '%I' are
            # format()'s, not placeholders.
            with conn.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
                for statement in statements:
                    cursor.execute(statement)
    except Exception as exc:
        # SQLAlchemy's errors (the queries) and the driver's (the statements), both carrying a SQLSTATE
        error = exc.orig if isinstance(exc, DBAPIError) else exc
        if getattr(error, "sqlstate", None) is None:
            raise
        raise LedgerError(
            f"init-site could not set up {ledger.masked_url}: {error}; run it as the owner of the ledger's "
            "tables (who migrated them) or a superuser, for example as the 'postgres' Unix user with "
            "--db-url 'postgresql+psycopg:///DBNAME?host=/var/run/postgresql'"
        ) from exc
    database, schema, owner = where
    done = [
        f"ledger {ledger.masked_url}: schema {schema!r} of database {database!r} at the newest revision, "
        f"set up as {owner!r}",
    ]
    for role in (USER_ROLE, ADMIN_ROLE):
        done.append(f"role {role}: {'already there' if role in existing else 'created'} (NOLOGIN)")
    done.append(
        f"{USER_ROLE} may connect and use {', '.join(LEDGER_TABLES)}; row-level security on each: a user "
        f"reads and writes their own batches, members of {ADMIN_ROLE} read everyone's"
    )
    for names, group in ((users, USER_ROLE), (admins, ADMIN_ROLE)):
        for name in dict.fromkeys(names):
            how = "existing role" if name in existing else "created LOGIN role (no password: peer auth)"
            done.append(f"{name}: {how}, member of {group}")
    return done


def connected_role(ledger: Ledger) -> str | None:
    """The database role this connection acts as (None on SQLite, which has no roles)."""
    if ledger.engine.dialect.name != "postgresql":
        return None
    with ledger.connect() as conn:
        return str(conn.execute(text("SELECT current_user")).scalar_one())


def may_read_all(ledger: Ledger) -> bool:
    """Whether this connection may read every user's rows: always on SQLite (the file's owner); on
    PostgreSQL, a superuser, a role that bypasses row-level security, the owner of the ledger's tables (who
    row-level security does not restrict), or a member of :data:`ADMIN_ROLE`."""
    if ledger.engine.dialect.name != "postgresql":
        return True
    with ledger.connect() as conn:
        row = conn.execute(
            text(
                "SELECT r.rolsuper OR r.rolbypassrls"
                " OR (EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :admin)"
                " AND pg_has_role(current_user, :admin, 'MEMBER'))"
                " OR EXISTS (SELECT 1 FROM pg_tables t WHERE t.schemaname = current_schema()"
                " AND t.tablename = 'batches' AND pg_has_role(current_user, t.tableowner, 'USAGE'))"
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
        f"{ledger.masked_url}. An admin is a member of the database role {ADMIN_ROLE!r}, which the site's "
        f"database owner grants (hpcqueue ledger init-site --admin {role}; see docs/ledger.md, 'Access on a "
        "shared cluster'); without it you see your own batches."
    )
