"""The enterprise server's schema versions, frozen (:mod:`sealwire.storage.migrations`).

Each step declares its tables as they were when it was released, in its own ``MetaData``;
nothing here reads today's tables (:mod:`.store`, :mod:`.accounts`, :mod:`.audit`). A change
to a table is a new step appended to :data:`MIGRATIONS`, made together with the change to the
table's definition; ``tests/storage/test_frozen_migrations.py`` fails, naming the difference,
when the two disagree.
"""

from __future__ import annotations

import sqlalchemy as sa

from sealwire.storage.migrations import Migration, create_tables, stub

__all__ = ["COMPONENT", "MIGRATIONS"]

COMPONENT = "server"
"""The name the server's schema version is recorded under."""


def _v1(conn: sa.Connection) -> None:
    """People, tickets, devices, prekeys, seen envelopes."""
    md = sa.MetaData()
    sa.Table(
        "settings",
        md,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
    )
    sa.Table(
        "users",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("display_name", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    sa.Table(
        "tickets",
        md,
        sa.Column("ticket_id", sa.LargeBinary, primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("params", sa.LargeBinary, nullable=False),
        sa.Column("sealed_scalar", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("attempts_left", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("device", sa.LargeBinary, nullable=True),
    )
    sa.Table(
        "devices",
        md,
        sa.Column("address", sa.LargeBinary, primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False, index=True),
        sa.Column("identity_key", sa.LargeBinary, nullable=False),
        sa.Column("certificate", sa.LargeBinary, nullable=False),
        sa.Column("serial", sa.BigInteger, nullable=False),
        sa.Column("activated_at", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
    )
    sa.Table(
        "prekeys",
        md,
        sa.Column("address", sa.LargeBinary, sa.ForeignKey("devices.address"), primary_key=True),
        sa.Column("prekey_id", sa.BigInteger, primary_key=True),
        sa.Column("signed", sa.LargeBinary, nullable=False),
        sa.Column("not_after", sa.BigInteger, nullable=False),
    )
    sa.Table(
        "seen_envelopes",
        md,
        sa.Column("message_id", sa.LargeBinary, primary_key=True),
        sa.Column("sent_at", sa.BigInteger, nullable=False, index=True),
    )
    create_tables(conn, md)


def _v2(conn: sa.Connection) -> None:
    """Device management (issue 5): policies, groups, commands, audit, administrators."""
    md = sa.MetaData()
    stub(md, "users", sa.Column("id", sa.Integer, primary_key=True))
    stub(md, "devices", sa.Column("address", sa.LargeBinary, primary_key=True))
    sa.Table(
        "device_management",
        md,
        sa.Column("address", sa.LargeBinary, sa.ForeignKey("devices.address"), primary_key=True),
        sa.Column("remote_secret", sa.LargeBinary, nullable=True),
        sa.Column("last_seen", sa.BigInteger, nullable=True),
        sa.Column("policy_name", sa.String(64), nullable=True),
        sa.Column("policy_version", sa.Integer, nullable=True),
        sa.Column("issues", sa.String(256), nullable=True),
    )
    sa.Table(
        "policies",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("settings", sa.Text, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False),
    )
    sa.Table(
        "policy_versions",
        md,
        sa.Column("policy_id", sa.Integer, sa.ForeignKey("policies.id"), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("settings", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
    )
    sa.Table(
        "groups",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("description", sa.String(256), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("policy_id", sa.Integer, sa.ForeignKey("policies.id"), nullable=True),
    )
    sa.Table(
        "group_members",
        md,
        sa.Column("group_id", sa.Integer, sa.ForeignKey("groups.id"), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True, index=True),
    )
    sa.Table(
        "commands",
        md,
        sa.Column("command_id", sa.LargeBinary, primary_key=True),
        sa.Column("address", sa.LargeBinary, sa.ForeignKey("devices.address"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("signed", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False, index=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("completed_at", sa.BigInteger, nullable=True),
        sa.Column("detail", sa.String(256), nullable=False),
    )
    sa.Table(
        "pending_revocations",
        md,
        sa.Column("address", sa.LargeBinary, primary_key=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    sa.Table(
        "audit_log",
        md,
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False, index=True),
        sa.Column("action", sa.String(64), nullable=False, index=True),
        sa.Column("target", sa.String(256), nullable=False),
        sa.Column("details", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("entry_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("signature", sa.LargeBinary(64), nullable=False),
    )
    sa.Table(
        "admins",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("password_params", sa.LargeBinary, nullable=False),
        sa.Column("password_hash", sa.LargeBinary, nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("password_changed_at", sa.BigInteger, nullable=False),
        sa.Column("failed_logins", sa.Integer, nullable=False),
        sa.Column("last_failed_at", sa.BigInteger, nullable=True),
    )
    sa.Table(
        "admin_tokens",
        md,
        sa.Column("token_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("admin_id", sa.Integer, sa.ForeignKey("admins.id"), nullable=False, index=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    create_tables(conn, md)


def _v3(conn: sa.Connection) -> None:
    """Directory holders (issue 14): whom to tell when a person's entry changes."""
    md = sa.MetaData()
    sa.Table(
        "directory_holders",
        md,
        sa.Column("username", sa.String(64), primary_key=True),
        sa.Column("address", sa.LargeBinary, primary_key=True),
        sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
    )
    create_tables(conn, md)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "people, tickets, devices, prekeys, seen envelopes", _v1),
    Migration(2, "device management: policies, groups, commands, audit, administrators", _v2),
    Migration(3, "directory holders: whom to tell when a person's entry changes", _v3),
)
"""The server's steps, oldest first. Append; never edit a released step."""
