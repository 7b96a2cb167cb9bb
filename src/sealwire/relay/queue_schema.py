"""The embedded relay store's schema versions, frozen (the scheme of
:mod:`sealwire.storage.migrations`, over a plain ``sqlite3`` connection).

The relay store is one SQLite file owned by one process (:mod:`.backends.sqlite`), written with
plain SQL and no SQLAlchemy (the relay does not load it). Its schema follows the same rules as
the server's and the device's: each step's DDL is written out as it was released, steps are
numbered 1, 2, 3 ... and applied in order, each in one transaction together with its version,
and a store at a version newer than this code knows is refused, untouched. The version is
``PRAGMA user_version`` (no version table: the store holds one component), and ``PRAGMA
application_id`` marks the file as a relay store so that a database of another program is
refused instead of altered.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from sealwire.errors import StorageError

__all__ = [
    "APPLICATION_ID",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "QueueMigration",
    "check_schema",
    "migrate",
]

_log = logging.getLogger(__name__)

APPLICATION_ID: Final = 0x53575251
"""``PRAGMA application_id`` of a Sealwire relay store (ASCII ``SWRQ``), so that a database
written by something else is refused instead of altered."""


@dataclass(frozen=True)
class QueueMigration:
    """One step of the relay store's schema, from ``version - 1`` to ``version``.

    Append steps; never edit one that was released, since stores in the field have run it.
    """

    version: int
    """1, 2, 3 ...: numbered contiguously from 1."""
    description: str
    """What the step does, for the log."""
    statements: tuple[str, ...]
    """The step's SQL, run in order inside the step's transaction."""


MIGRATIONS: Final[tuple[QueueMigration, ...]] = (
    QueueMigration(
        1,
        "envelopes, expiry notices, organisations, servers, revocations",
        (
            # AUTOINCREMENT: a rowid is never reused, even after the newest envelope was
            # deleted, so a delivery id never names two envelopes (clients drop duplicates).
            """CREATE TABLE envelopes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            recipient BLOB NOT NULL,
            envelope BLOB NOT NULL,
            accepted_at INTEGER NOT NULL,
            sender_organisation BLOB NOT NULL
        )""",
            "CREATE INDEX envelopes_by_recipient ON envelopes (recipient, id)",
            "CREATE INDEX envelopes_by_age ON envelopes (accepted_at)",
            """CREATE TABLE notices (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            organisation BLOB NOT NULL,
            recipient BLOB NOT NULL,
            digest BLOB NOT NULL,
            accepted_at INTEGER NOT NULL
        )""",
            "CREATE INDEX notices_by_organisation ON notices (organisation, id)",
            """CREATE TABLE organisations (
            organisation BLOB PRIMARY KEY,
            root BLOB NOT NULL
        ) WITHOUT ROWID""",
            """CREATE TABLE servers (
            address BLOB PRIMARY KEY,
            organisation BLOB NOT NULL
        ) WITHOUT ROWID""",
            """CREATE TABLE revocations (
            organisation BLOB NOT NULL,
            address BLOB NOT NULL,
            PRIMARY KEY (organisation, address)
        ) WITHOUT ROWID""",
            f"PRAGMA application_id = {APPLICATION_ID}",
        ),
    ),
)
"""The relay store's steps, oldest first."""

SCHEMA_VERSION: Final = len(MIGRATIONS)
"""The schema version this code writes; a store with a newer one is refused."""


def check_schema(
    connection: sqlite3.Connection, migrations: Sequence[QueueMigration] | None = None
) -> int:
    """The store's schema version, after refusing a database that is not ours or too new.
    Reading the header is also where SQLite notices a file that is not a database.

    Raises:
        StorageError: the file is a database of another program, or its version is newer
            than ``migrations`` (default :data:`MIGRATIONS`) reach.
        sqlite3.Error: the file cannot be read as a database.
    """
    newest = len(MIGRATIONS if migrations is None else migrations)
    application_id = connection.execute("PRAGMA application_id").fetchone()[0]
    version = int(connection.execute("PRAGMA user_version").fetchone()[0])
    if application_id not in (0, APPLICATION_ID) or (
        application_id == 0
        and (version != 0 or connection.execute("SELECT 1 FROM sqlite_master").fetchone())
    ):
        raise StorageError("relay store: the file is an SQLite database of another program")
    if version > newest:
        raise StorageError(
            f"relay store has schema version {version}, newer than this Sealwire knows"
            f" ({newest}); upgrade Sealwire or restore a backup"
        )
    return version


def migrate(
    connection: sqlite3.Connection,
    version: int,
    migrations: Sequence[QueueMigration] | None = None,
) -> None:
    """Apply the steps after ``version`` (from :func:`check_schema`), each in one
    ``BEGIN IMMEDIATE`` transaction together with its ``user_version``.

    ``connection`` must be in autocommit mode (``isolation_level=None``).

    Raises:
        ValueError: the steps are not numbered 1, 2, 3 ...
        sqlite3.Error: a step failed (its transaction is rolled back).
    """
    steps = MIGRATIONS if migrations is None else migrations
    for expected, step in enumerate(steps, start=1):
        if step.version != expected:
            raise ValueError(f"relay store steps must be numbered 1, 2, 3 ...; got {step.version}")
    for step in steps[version:]:
        connection.execute("BEGIN IMMEDIATE")
        try:
            for statement in step.statements:
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {step.version}")
            connection.execute("COMMIT")
        except BaseException:
            connection.rollback()
            raise
        _log.info("relay store schema migrated to version %d: %s", step.version, step.description)
