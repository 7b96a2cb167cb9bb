"""The device database's schema versions, frozen (:mod:`sealwire.storage.migrations`).

Each step declares its tables as they were when it was released, in its own ``MetaData``;
nothing here reads today's tables (:mod:`.store`). A change to a table is a new step appended
to :data:`MIGRATIONS`, made together with the change to the table's definition;
``tests/storage/test_frozen_migrations.py`` fails, naming the difference, when they disagree.
"""

from __future__ import annotations

import sqlalchemy as sa

from sealwire.storage.migrations import Migration, create_tables

__all__ = ["COMPONENT", "MIGRATIONS"]

COMPONENT = "device"
"""The name the device's schema version is recorded under."""


def _v1(conn: sa.Connection) -> None:
    """Secrets, messages, seen envelopes, the directory cache, the outbox, prekeys."""
    md = sa.MetaData()
    sa.Table(
        "secrets",
        md,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("blob", sa.LargeBinary, nullable=False),
    )
    sa.Table(
        "messages",
        md,
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.LargeBinary, nullable=False, unique=True),
        sa.Column("outgoing", sa.Boolean, nullable=False),
        sa.Column("state", sa.Integer, nullable=False),
        sa.Column("sent_at", sa.BigInteger, nullable=False),
        sa.Column("stored_at", sa.BigInteger, nullable=False),
        sa.Column("verified", sa.Boolean, nullable=False),
        sa.Column("peer_tag", sa.LargeBinary, nullable=False),
        sa.Column("blob", sa.LargeBinary, nullable=False),
        sa.Column("unsent", sa.LargeBinary, nullable=True),
    )
    sa.Table(
        "seen_envelopes",
        md,
        sa.Column("message_id", sa.LargeBinary, primary_key=True),
        sa.Column("sent_at", sa.BigInteger, nullable=False, index=True),
    )
    sa.Table(
        "directory",
        md,
        sa.Column("tag", sa.LargeBinary, primary_key=True),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("blob", sa.LargeBinary, nullable=False),
    )
    sa.Table(
        "outbox",
        md,
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("envelope", sa.LargeBinary, nullable=False),
    )
    sa.Table(
        "prekeys",
        md,
        sa.Column("prekey_id", sa.BigInteger, primary_key=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("retire_at", sa.BigInteger, nullable=True),
        sa.Column("blob", sa.LargeBinary, nullable=False),
    )
    create_tables(conn, md)


def _v2(conn: sa.Connection) -> None:
    """Commands carried out (issue 5): a replayed command is not run twice."""
    md = sa.MetaData()
    sa.Table(
        "done_commands",
        md,
        sa.Column("command_id", sa.LargeBinary, primary_key=True),
        sa.Column("done_at", sa.BigInteger, nullable=False),
    )
    create_tables(conn, md)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "secrets, messages, seen, directory, outbox, prekeys", _v1),
    Migration(2, "commands carried out", _v2),
)
"""The device's steps, oldest first. Append; never edit a released step."""
