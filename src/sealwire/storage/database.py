"""The one storage layer: SQLAlchemy Core over SQLite or PostgreSQL, with versioned migrations
(DESIGN §11).

A component (the enterprise server, a device) describes its tables with SQLAlchemy Core and
opens its database with :meth:`Database.open`, handing over its list of :class:`Migration`
steps. The same table definitions must work on both backends, so:

- bytes are ``sa.LargeBinary`` (``BLOB`` on SQLite, ``BYTEA`` on PostgreSQL);
- times are ``sa.BigInteger`` Unix milliseconds (``INTEGER`` / ``BIGINT``), never SQL date
  types, whose time-zone handling differs between the two;
- nothing relies on SQLite's loose typing or on PostgreSQL-only SQL.

Backends, chosen by the URL:

- SQLite (a plain path, or ``sqlite:///path``): the default, one process. The file is created
  with mode ``0o600`` (its directory ``0o700``); every connection runs in WAL mode with foreign
  keys on, a 10 s busy timeout and ``synchronous=FULL`` (``NORMAL`` when not ``durable``). Every
  transaction starts with ``BEGIN IMMEDIATE``: writers queue for the write lock at the start
  instead of failing with "database is locked" when a read transaction later tries to write.
- PostgreSQL (``postgresql://`` or ``postgres://``, driven by psycopg 3): for several server
  processes sharing one database. Connections are checked before use (``pool_pre_ping``).

Migrations (:mod:`sealwire.storage.migrations`: each step's DDL frozen as it was released):
table ``sealwire_schema`` holds one row per component with its schema version.
:meth:`Database.open` applies each step newer than the stored version in its own transaction,
together with the version update. On PostgreSQL each such transaction first takes a
transaction-scoped advisory lock derived from the component name and re-reads the version, so
that processes starting together migrate once; on SQLite ``BEGIN IMMEDIATE`` serialises them.

Every database failure leaves this module as :class:`~sealwire.errors.StorageError`, whose
message names the database without its password.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import Any, Final
from urllib.parse import quote

import sqlalchemy as sa
import sqlalchemy.exc

from sealwire._system import now_ms
from sealwire.errors import ConfigError, StorageError
from sealwire.storage.migrations import Migration, MigrationStatus, check_migrations

__all__ = ["BUSY_TIMEOUT_MS", "CONNECT_TIMEOUT_S", "SCHEMA_TABLE", "Database", "Migration"]

_log = logging.getLogger(__name__)

SCHEMA_TABLE: Final = "sealwire_schema"
"""The table that records each component's schema version."""

BUSY_TIMEOUT_MS: Final = 10_000
"""How long an SQLite connection waits for another writer before failing (``busy_timeout``)."""

CONNECT_TIMEOUT_S: Final = 5
"""PostgreSQL connection timeout in seconds, unless the URL sets ``connect_timeout``."""

_metadata = sa.MetaData()
_schema = sa.Table(
    SCHEMA_TABLE,
    _metadata,
    sa.Column("component", sa.String, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

_ACCEPTED_FORMS: Final = (
    "a file path (/var/lib/sealwire/server.db), sqlite:///path, "
    "or postgresql://user:password@host:port/database (postgres:// also works)"
)
_SCHEME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_POSTGRES_SCHEMES: Final = frozenset({"postgresql", "postgres", "postgresql+psycopg"})


class Database:
    """An open database of one component. Create it with :meth:`open`.

    Attributes:
        url: the URL or path as given to :meth:`open`. It may hold a password: do not log it;
            :attr:`redacted_url` is the form for messages.
        redacted_url: :attr:`url` with any password replaced by ``***``.
        dialect: ``"sqlite"`` or ``"postgresql"``.
        component: the name the schema version is recorded under.
        schema_version: the schema version after :meth:`open` migrated.
    """

    def __init__(self, engine: sa.Engine, *, url: str, component: str) -> None:
        """Wrap an engine made for ``url``; use :meth:`open` instead."""
        self._engine = engine
        password = engine.url.password
        # The password as parsed and as written in the URL (percent-encoded), to scrub both
        # from driver messages.
        self._secrets = tuple({str(password), quote(str(password), safe="")}) if password else ()
        redacted_url = url
        if engine.dialect.name != "sqlite":
            redacted_url = sa.make_url(url).render_as_string(hide_password=True)
        self._closed = False
        self.url = url
        self.redacted_url = redacted_url
        self.dialect: str = engine.dialect.name
        self.component = component
        self.schema_version = 0

    @classmethod
    def open(
        cls,
        url: str,
        *,
        component: str,
        migrations: Sequence[Migration],
        durable: bool = True,
    ) -> Database:
        """Open the database at ``url`` and bring ``component``'s schema up to date.

        Args:
            url: a file path or ``sqlite:///path`` for SQLite (the file and its directory are
                created if missing), or ``postgresql://...`` / ``postgres://...`` for PostgreSQL.
            component: the name the schema version is recorded under (``"server"``,
                ``"device"``); several components may share one database.
            migrations: the component's steps, numbered contiguously from 1.
            durable: SQLite only: ``synchronous=FULL`` (a commit survives power loss) when true,
                ``NORMAL`` (a commit survives a crash of the process, not of the machine) when
                false. PostgreSQL follows its server's settings.

        Returns:
            The open database; :attr:`schema_version` is the newest migration's version.

        Raises:
            ValueError: ``migrations`` is empty or not numbered 1, 2, 3 ..., or ``component``
                is empty.
            ConfigError: ``url`` is not one of the accepted forms.
            StorageError: the database cannot be reached or created, a migration failed, or
                the database is at a schema version newer than ``migrations`` knows.
        """
        if not component:
            raise ValueError("a database component needs a name")
        check_migrations(migrations)
        engine = _create_engine(url, durable=durable)
        database = cls(engine, url=url, component=component)
        try:
            database._migrate(migrations)
        except BaseException:
            engine.dispose()
            raise
        return database

    @classmethod
    def status(
        cls, url: str, *, component: str, migrations: Sequence[Migration]
    ) -> MigrationStatus:
        """Where ``component``'s schema stands in the database at ``url``, changing nothing:
        no file, table or version is created (``sealwire server db status``).

        Args:
            url: as for :meth:`open`.
            component: the name the schema version is recorded under.
            migrations: the component's steps, numbered contiguously from 1.

        Returns:
            The stored and the newest version and the pending steps. A database at a version
            newer than ``migrations`` knows has ``current > newest`` and nothing pending.

        Raises:
            ValueError: as for :meth:`open`.
            ConfigError: ``url`` is not one of the accepted forms.
            StorageError: the database cannot be reached or read.
        """
        if not component:
            raise ValueError("a database component needs a name")
        check_migrations(migrations)
        newest = len(migrations)
        path = _sqlite_path(url)
        if path not in (None, "", ":memory:") and not os.path.exists(str(path)):
            return MigrationStatus(component, url, "sqlite", 0, newest, tuple(migrations), False)
        engine = _create_engine(url, durable=True)
        database = cls(engine, url=url, component=component)
        try:
            with database.transaction() as conn:
                current = 0
                if sa.inspect(conn).has_table(SCHEMA_TABLE):
                    stored = conn.execute(
                        sa.select(_schema.c.version).where(_schema.c.component == component)
                    ).scalar()
                    current = 0 if stored is None else int(stored)
        finally:
            database.close()
        return MigrationStatus(
            component,
            database.redacted_url,
            database.dialect,
            current,
            newest,
            tuple(migrations[current:]),
        )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """One transaction: committed when the block ends, rolled back if it raises.

        On SQLite the transaction holds the write lock from its start (``BEGIN IMMEDIATE``),
        so keep it short; on PostgreSQL it runs at the server's default isolation level
        (READ COMMITTED).

        Returns:
            A context manager yielding the connection to run statements on.

        Raises:
            StorageError: the database cannot be reached, or a statement or the commit failed
                (chained to the SQLAlchemy error). Any other exception from the block passes
                through unchanged, after the rollback.
        """
        if self._closed:
            raise StorageError(f"the {self.component} database is closed")
        try:
            connection = self._engine.connect()
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise StorageError(self._unreachable(exc)) from exc
        try:
            with connection, connection.begin():
                yield connection
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise StorageError(
                f"the {self.component} database at {self.redacted_url} failed: {self._reason(exc)}"
            ) from exc

    def close(self) -> None:
        """Close every pooled connection. Closing twice is harmless; afterwards
        :meth:`transaction` raises :class:`~sealwire.errors.StorageError`."""
        if not self._closed:
            self._closed = True
            self._engine.dispose()

    def __repr__(self) -> str:
        return f"Database({self.redacted_url!r}, component={self.component!r})"

    # --- migrations ---------------------------------------------------------------------------

    def _migrate(self, migrations: Sequence[Migration]) -> None:
        known = len(migrations)
        with self.transaction() as conn:
            # Components sharing a database may race to create the version table.
            self._lock(conn, SCHEMA_TABLE)
            _schema.create(conn, checkfirst=True)
            current = self._read_version(conn, known)
        for migration in migrations[current:]:
            with self.transaction() as conn:
                self._lock(conn, self.component)
                # Another process may have migrated while we waited for the lock.
                current = self._read_version(conn, known)
                if current >= migration.version:
                    continue
                migration.apply(conn)
                values = {"version": migration.version, "updated_at": now_ms()}
                done = conn.execute(
                    _schema.update().where(_schema.c.component == self.component).values(values)
                )
                if done.rowcount == 0:
                    conn.execute(_schema.insert().values(component=self.component, **values))
            _log.info(
                "migrated the %s database to schema version %d: %s",
                self.component,
                migration.version,
                migration.description,
            )
        self.schema_version = known

    def _read_version(self, conn: sa.Connection, known: int) -> int:
        stored = conn.execute(
            sa.select(_schema.c.version).where(_schema.c.component == self.component)
        ).scalar()
        version = 0 if stored is None else int(stored)
        if version > known:
            raise StorageError(
                f"the {self.component} database is at schema version {version}, newer than "
                f"this Sealwire knows ({known}): upgrade Sealwire"
            )
        return version

    def _lock(self, conn: sa.Connection, name: str) -> None:
        """Serialise migrations of ``name`` across processes (PostgreSQL; on SQLite the
        transaction's ``BEGIN IMMEDIATE`` already does)."""
        if self.dialect == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_key(name))))

    # --- messages -----------------------------------------------------------------------------

    def _unreachable(self, exc: sqlalchemy.exc.SQLAlchemyError) -> str:
        verb = "reach" if self.dialect == "postgresql" else "open"
        return f"cannot {verb} the database at {self.redacted_url}: {self._reason(exc)}"

    def _reason(self, exc: sqlalchemy.exc.SQLAlchemyError) -> str:
        # str() of a StatementError carries the SQL and its parameters, which may be secret:
        # only the driver's own message goes into ours.
        cause: BaseException = exc
        if isinstance(exc, sqlalchemy.exc.StatementError) and exc.orig is not None:
            cause = exc.orig
        # psycopg's own text adds the statement's position; its primary message is enough.
        diag = getattr(cause, "diag", None)
        primary = getattr(diag, "message_primary", None)
        text = primary if isinstance(primary, str) and primary else str(cause)
        reason = " ".join(text.split()) or type(cause).__name__
        for secret in self._secrets:
            reason = reason.replace(secret, "***")
        return reason


def _lock_key(name: str) -> int:
    """A stable non-negative 63-bit advisory lock key for ``name`` (a PostgreSQL bigint)."""
    digest = hashlib.sha256(b"sealwire-schema-lock:" + name.encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _sqlite_path(url: str) -> str | None:
    """The file an SQLite ``url`` names (``None`` for another backend or an unparsable URL:
    :func:`_create_engine` says what is wrong with it)."""
    if _SCHEME.match(url) is None:
        return url
    try:
        parsed = sa.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return None
    return parsed.database if parsed.drivername == "sqlite" and not parsed.query else None


def _create_engine(url: str, *, durable: bool) -> sa.Engine:
    if _SCHEME.match(url) is None:
        return _sqlite_engine(url, durable=durable)
    try:
        parsed = sa.make_url(url)
    except sqlalchemy.exc.ArgumentError as exc:
        raise ConfigError(f"cannot parse the database URL; use {_ACCEPTED_FORMS}") from exc
    redacted = parsed.render_as_string(hide_password=True)
    if parsed.drivername == "sqlite":
        if not parsed.database or parsed.database == ":memory:" or parsed.query:
            raise ConfigError(
                f"database URL {redacted!r}: an SQLite URL is sqlite:///path/to/file "
                "(no in-memory database, no parameters)"
            )
        return _sqlite_engine(parsed.database, durable=durable)
    if parsed.drivername in _POSTGRES_SCHEMES:
        return _postgres_engine(parsed.set(drivername="postgresql+psycopg"))
    raise ConfigError(
        f"database URL scheme {parsed.drivername!r} is not supported; use {_ACCEPTED_FORMS}"
    )


def _sqlite_engine(path: str, *, durable: bool) -> sa.Engine:
    if not path or path == ":memory:":
        raise ConfigError(f"an empty path or :memory: is not a database; use {_ACCEPTED_FORMS}")
    try:
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, mode=0o700, exist_ok=True)
        # Created here, not by SQLite, so that it is private from its first byte; SQLite gives
        # the -wal and -shm files the database file's permissions.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    except OSError as exc:
        raise StorageError(
            f"cannot create the database file {path}: {exc.strerror or exc}"
        ) from exc
    engine = sa.create_engine(sa.URL.create("sqlite", database=path))
    synchronous = "FULL" if durable else "NORMAL"

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module, which would otherwise
        # start transactions late and with a plain BEGIN (SQLAlchemy's documented recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _enter_wal(cursor)
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    def on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    sa.event.listen(engine, "connect", on_connect)
    sa.event.listen(engine, "begin", on_begin)
    return engine


def _enter_wal(cursor: Any) -> None:
    """Switch the connection's database to WAL (a no-op once the file is in WAL mode)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            # Switching a new file to WAL takes an exclusive lock without waiting in the busy
            # handler: two processes opening a fresh database together would fail here.
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
            continue
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot use WAL mode here (journal_mode is {mode})")
        return


def _postgres_engine(url: sa.URL) -> sa.Engine:
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
