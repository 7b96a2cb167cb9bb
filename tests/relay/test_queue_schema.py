"""The relay store's frozen schema versions (issue 15): a store built at every past version
and upgraded has the schema of a fresh one; a store written before the steps moved to
``queue_schema`` opens with its data."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa

from sealwire.relay import queue_schema
from sealwire.relay.backend import QueueLimits
from sealwire.relay.backends.sqlite import SqliteBackend
from sealwire.relay.queue_schema import APPLICATION_ID, MIGRATIONS, QueueMigration, migrate
from tests.relay.conftest import RecordingListener, run
from tests.storage.schema import Schema, describe, differences

ALICE = b"A" * 32
ORG = b"organisation"

LATER = QueueMigration(
    len(MIGRATIONS) + 1,
    "a later ALTER-style step (only in this test)",
    (
        "ALTER TABLE envelopes ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX envelopes_by_priority ON envelopes (priority)",
    ),
)

RELEASED_V1 = (
    # The relay store as the code before issue 15 wrote it (user_version 1), verbatim.
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
    "PRAGMA user_version = 1",
)


def schema_of(path: Path) -> tuple[Schema, int]:
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            version = conn.exec_driver_sql("PRAGMA user_version").scalar()
            return describe(conn, skip=frozenset()), int(version or 0)
    finally:
        engine.dispose()


def open_and_close(path: Path) -> None:
    async def body() -> None:
        backend = SqliteBackend(path, QueueLimits())
        await backend.start(RecordingListener())
        await backend.close()

    run(body())


def build(path: Path, steps: Sequence[QueueMigration]) -> None:
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        migrate(connection, 0, steps)
    finally:
        connection.close()


def test_the_steps_are_numbered_from_one(tmp_path: Path) -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert len(MIGRATIONS) == queue_schema.SCHEMA_VERSION
    with pytest.raises(ValueError, match="numbered"):
        build(tmp_path / "relay.db", (LATER,))
    assert schema_of(tmp_path / "relay.db") == ({}, 0)


@pytest.mark.parametrize("with_later_step", [False, True], ids=["today", "with-a-later-step"])
def test_every_past_version_upgrades_to_the_fresh_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_later_step: bool
) -> None:
    steps = (*MIGRATIONS, LATER) if with_later_step else MIGRATIONS
    monkeypatch.setattr(queue_schema, "MIGRATIONS", steps)
    fresh_path = tmp_path / "fresh.db"
    open_and_close(fresh_path)
    fresh, version = schema_of(fresh_path)
    assert version == len(steps)
    assert {"envelopes", "notices", "organisations", "servers", "revocations"} <= set(fresh)
    for past in range(len(steps)):
        path = tmp_path / f"v{past}.db"
        build(path, steps[:past])
        assert schema_of(path)[1] == past
        open_and_close(path)
        upgraded, version = schema_of(path)
        assert version == len(steps)
        found = differences(fresh, upgraded)
        assert not found, f"upgraded from version {past}, not as fresh:\n" + "\n".join(found)


def test_a_store_written_before_issue_15_still_opens(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    connection = sqlite3.connect(path, isolation_level=None)
    for statement in RELEASED_V1:
        connection.execute(statement)
    connection.execute(
        "INSERT INTO envelopes (recipient, envelope, accepted_at, sender_organisation)"
        " VALUES (?, ?, ?, ?)",
        (ALICE, b"kept", 5, ORG),
    )
    connection.execute("INSERT INTO organisations VALUES (?, ?)", (ORG, b"root"))
    connection.close()
    released, _ = schema_of(path)

    async def body() -> None:
        backend = SqliteBackend(path, QueueLimits())
        await backend.start(RecordingListener())
        try:
            pending = await backend.pending(ALICE, after=None, limit=9, now=6)
            assert [(s.envelope, s.accepted_at) for s in pending] == [(b"kept", 5)]
            assert await backend.depth() == (1, 4)
        finally:
            await backend.close()

    run(body())
    fresh_path = tmp_path / "fresh.db"
    open_and_close(fresh_path)
    assert differences(schema_of(fresh_path)[0], released) == []
    assert schema_of(path) == (released, 1)
