"""Frozen migrations: each schema version's DDL written out as it was at that version.

A component's schema is the sequence of its :class:`Migration` steps, applied in order by
:meth:`~sealwire.storage.Database.open`. A step never builds today's tables (the component's
``metadata``): it holds its own copy of the tables and columns as they were when the step was
released, so that a database created fresh and a database upgraded step by step end with the
same schema. A later change to a table is a new step (:func:`add_column`, a new index, a data
copy), and the component's ``metadata`` is changed to match; ``tests/storage`` compares the
two on SQLite and PostgreSQL and names any difference.

Why frozen SQLAlchemy Core DDL and not Alembic: several components (server, device) share the
one version table :data:`~sealwire.storage.database.SCHEMA_TABLE` and the migration lock, the
device's database is embedded in a client that ships no migration scripts directory, and the
steps are few and written by hand anyway; SQLAlchemy Core already renders the same table for
SQLite and PostgreSQL. Alembic would add a dependency, an ``env.py`` and one version table per
component for what :class:`Migration` and a few helpers do.

Writing a step:

- build a fresh ``sa.MetaData()`` inside the step, declare the tables as they are at this
  version and create them with :func:`create_tables`; a table created by an earlier step that
  a foreign key points at is declared as a :func:`stub` (its key columns only), not created;
- use literal sizes (``sa.String(64)``), never a constant another module may change;
- never edit a released step: databases in the field have run it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

__all__ = [
    "Migration",
    "MigrationStatus",
    "add_column",
    "check_migrations",
    "create_tables",
    "render_sql",
    "stub",
]


@dataclass(frozen=True)
class Migration:
    """One step of a component's schema, from ``version - 1`` to ``version``.

    Append steps; never edit one that was released, since databases in the field have run it.
    """

    version: int
    """1, 2, 3 ...: a component's steps are numbered contiguously from 1."""
    description: str
    """What the step does, for the log."""
    apply: Callable[[sa.Connection], None]
    """Runs the step's DDL and DML on the given connection, inside the step's transaction."""


@dataclass(frozen=True)
class MigrationStatus:
    """Where one component's schema stands in a database (``sealwire server db status``)."""

    component: str
    """The name the version is recorded under (``"server"``, ``"device"``)."""
    database: str
    """The database's URL or path, without its password (for messages)."""
    dialect: str
    """``"sqlite"`` or ``"postgresql"``."""
    current: int
    """The stored schema version; 0 when the database or the component is not there yet."""
    newest: int
    """The version this Sealwire's steps reach."""
    pending: tuple[Migration, ...]
    """The steps :meth:`~sealwire.storage.Database.open` would apply, in order."""
    exists: bool = True
    """False when the database itself does not exist yet (an SQLite file not yet created)."""

    @property
    def up_to_date(self) -> bool:
        """True when no step is pending."""
        return not self.pending


def check_migrations(migrations: Sequence[Migration]) -> None:
    """Refuse a list of steps not numbered 1, 2, 3 ... in order.

    Raises:
        ValueError: ``migrations`` is empty or not numbered contiguously from 1.
    """
    if not migrations:
        raise ValueError("a component needs at least one migration (version 1)")
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            versions = [m.version for m in migrations]
            raise ValueError(
                f"migrations must be numbered 1, 2, 3 ... in order; got {versions} "
                f"(expected {expected} at position {expected})"
            )


def stub(metadata: sa.MetaData, name: str, *columns: sa.Column[Any]) -> sa.Table:
    """A table an earlier step created, declared in a step's own ``metadata`` only so that
    the step's foreign keys can name it; :func:`create_tables` never creates it."""
    table = sa.Table(name, metadata, *columns)
    table.info["sealwire_stub"] = True
    return table


def create_tables(conn: sa.Connection, metadata: sa.MetaData) -> None:
    """Create every table of a step's own ``metadata`` but its stubs, with their indexes, in
    dependency order. No ``IF NOT EXISTS``: a table that is there already is an error, not
    something to skip silently."""
    tables = [t for t in metadata.sorted_tables if not t.info.get("sealwire_stub")]
    metadata.create_all(conn, tables=tables, checkfirst=False)


def add_column(conn: sa.Connection, table: str, column: sa.Column[Any]) -> None:
    """``ALTER TABLE table ADD COLUMN ...``, the column rendered for the connection's dialect.

    SQLite adds only a column that is nullable or has a server default, without a primary
    key or unique constraint; keep to that for both backends.
    """
    sa.Table(table, sa.MetaData(), column)  # the column belongs to a table, for rendering
    rendered = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
    preparer = conn.dialect.identifier_preparer
    statement = f"ALTER TABLE {preparer.quote(table)} ADD COLUMN {rendered}"
    conn.execute(sa.DDL(statement.replace("%", "%%")))  # type: ignore[no-untyped-call]


def render_sql(dialect: str, migrations: Sequence[Migration]) -> list[str]:
    """The SQL statements ``migrations`` run on a database of ``dialect``, without a database.

    Each step runs against a connection that records what it is given instead of executing
    it (SQLAlchemy's mock engine). A step that reads data to decide what to write cannot be
    rendered this way and fails here.

    Args:
        dialect: ``"sqlite"`` or ``"postgresql"``.
        migrations: the steps to render, in order.

    Returns:
        One string per statement, in order, each without a trailing semicolon.
    """
    statements: list[str] = []
    driver = {"sqlite": "sqlite://", "postgresql": "postgresql+psycopg://"}[dialect]

    def record(sql: Any, *args: Any, **kwargs: Any) -> None:
        if not isinstance(sql, str):
            literal = {"literal_binds": True}
            sql = str(sql.compile(dialect=engine.dialect, compile_kwargs=literal))
        statements.append("\n".join(line.rstrip() for line in sql.strip().splitlines()))

    engine = sa.create_mock_engine(driver, record)
    for migration in migrations:
        migration.apply(engine)  # type: ignore[arg-type]  # a mock connection, for rendering
    return statements
