"""The enterprise server's database: people, activation tickets, devices, prekeys (SQLAlchemy
Core over :class:`~sealwire.storage.Database`; SQLite by default, PostgreSQL by URL).

What a dump of this database holds: user names and display names, device public keys,
certificates and public prekeys, and for each open activation ticket its Argon2id parameters
and the SPAKE2 password scalar *encrypted* under the ticket key, which lives only in the
server's sealed key file (:mod:`.keystore`). No activation password, no private key, no
message: the server never sees conversations.

Every method is one transaction; several server processes may share one PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from sealwire.errors import Conflict, NotFound
from sealwire.storage import Database

from .migrations import COMPONENT, MIGRATIONS

__all__ = [
    "DeviceRecord",
    "ServerStore",
    "TicketRecord",
    "TicketState",
    "UnknownUser",
    "UserExists",
    "UserRecord",
]

metadata = sa.MetaData()
"""Today's tables, for the queries. The schema itself is built by the frozen steps of
:mod:`.migrations`: change a table here and add a step there."""

settings = sa.Table(
    "settings",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.LargeBinary, nullable=False),
)
users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(64), nullable=False, unique=True),
    sa.Column("display_name", sa.String(128), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)
tickets = sa.Table(
    "tickets",
    metadata,
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
devices = sa.Table(
    "devices",
    metadata,
    sa.Column("address", sa.LargeBinary, primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("identity_key", sa.LargeBinary, nullable=False),
    sa.Column("certificate", sa.LargeBinary, nullable=False),
    sa.Column("serial", sa.BigInteger, nullable=False),
    sa.Column("activated_at", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
)
prekeys = sa.Table(
    "prekeys",
    metadata,
    sa.Column("address", sa.LargeBinary, sa.ForeignKey("devices.address"), primary_key=True),
    sa.Column("prekey_id", sa.BigInteger, primary_key=True),
    sa.Column("signed", sa.LargeBinary, nullable=False),
    sa.Column("not_after", sa.BigInteger, nullable=False),
)
seen = sa.Table(
    "seen_envelopes",
    metadata,
    sa.Column("message_id", sa.LargeBinary, primary_key=True),
    sa.Column("sent_at", sa.BigInteger, nullable=False, index=True),
)


# --- v2: device management (issue 5) ----------------------------------------------------------

managed = sa.Table(
    "device_management",
    metadata,
    sa.Column("address", sa.LargeBinary, sa.ForeignKey("devices.address"), primary_key=True),
    sa.Column("remote_secret", sa.LargeBinary, nullable=True),
    # Sealed under the server's key (a dump of the database alone does not hold it); NULL once
    # the device is wiped or its person deprovisioned: the crypto-backed wipe.
    sa.Column("last_seen", sa.BigInteger, nullable=True),
    sa.Column("policy_name", sa.String(64), nullable=True),
    sa.Column("policy_version", sa.Integer, nullable=True),
    sa.Column("issues", sa.String(256), nullable=True),
    # Comma-separated compliance issue names; "" when the device complies; NULL: not reported.
)
policies = sa.Table(
    "policies",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("settings", sa.Text, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("updated_by", sa.String(128), nullable=False),
)
policy_versions = sa.Table(
    "policy_versions",
    metadata,
    sa.Column("policy_id", sa.Integer, sa.ForeignKey("policies.id"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("settings", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
)
groups = sa.Table(
    "groups",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("description", sa.String(256), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("policy_id", sa.Integer, sa.ForeignKey("policies.id"), nullable=True),
)
members = sa.Table(
    "group_members",
    metadata,
    sa.Column("group_id", sa.Integer, sa.ForeignKey("groups.id"), primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True, index=True),
)
commands = sa.Table(
    "commands",
    metadata,
    sa.Column("command_id", sa.LargeBinary, primary_key=True),
    sa.Column("address", sa.LargeBinary, sa.ForeignKey("devices.address"), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("signed", sa.LargeBinary, nullable=False),
    # The encoded SignedCommand, sealed under the server's key (a lock may carry a passcode).
    sa.Column("created_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("completed_at", sa.BigInteger, nullable=True),
    sa.Column("detail", sa.String(256), nullable=False),
)
revocations = sa.Table(
    "pending_revocations",
    metadata,
    sa.Column("address", sa.LargeBinary, primary_key=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)
"""Addresses the relay must refuse, until the relay has confirmed each (nothing lost while the
relay link is down)."""

holders = sa.Table(
    "directory_holders",
    metadata,
    sa.Column("username", sa.String(64), primary_key=True),
    sa.Column("address", sa.LargeBinary, primary_key=True),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
)
"""Which device may hold whose directory entry in its cache, and until when (Unix seconds):
the devices a :class:`~sealwire.protocol.directory.DirectoryChanged` must reach."""


class UserExists(Conflict):
    """A person with that user name exists already."""


class UnknownUser(NotFound):
    """No person with that user name."""


class TicketState(enum.Enum):
    OPEN = "open"
    USED = "used"
    BURNED = "burned"
    """Out of attempts, and no run holds one any more."""
    REVOKED = "revoked"
    """Replaced by a newer ticket for the same person, or withdrawn."""


class UserState(enum.StrEnum):
    """A person's state (``users.state``)."""

    ACTIVE = "active"
    DISABLED = "disabled"
    """Deprovisioned: out of the directory, devices revoked."""


class DeviceState(enum.StrEnum):
    """A device's state (``devices.state``)."""

    PENDING = "pending"
    """Activated, not heard from yet: not in the directory."""
    ACTIVE = "active"
    WIPED = "wiped"
    """Wiped by a command, or erased itself after wrong passcodes."""
    REVOKED = "revoked"
    """Its person was deprovisioned."""


LIVE_DEVICE_STATES = (DeviceState.PENDING, DeviceState.ACTIVE)
"""Devices that still take commands and get their remote secret."""


class CommandState(enum.StrEnum):
    """A command's state (``commands.state``)."""

    QUEUED = "queued"
    """Waiting for the device."""
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class UserRecord:
    id: int
    username: str
    display_name: str
    state: str
    created_at: int
    devices: int


@dataclass(frozen=True)
class TicketRecord:
    ticket_id: bytes
    user_id: int
    params: bytes
    sealed_scalar: bytes
    expires_at: int
    attempts_left: int
    state: TicketState


def _ticket_record(row: sa.Row[Any]) -> TicketRecord:
    return TicketRecord(
        ticket_id=bytes(row.ticket_id),
        user_id=row.user_id,
        params=bytes(row.params),
        sealed_scalar=bytes(row.sealed_scalar),
        expires_at=row.expires_at,
        attempts_left=row.attempts_left,
        state=TicketState(row.state),
    )


@dataclass(frozen=True)
class DeviceRecord:
    address: bytes
    username: str
    identity_key: bytes
    certificate: bytes
    activated_at: int
    state: str
    prekeys: tuple[bytes, ...]
    """Encoded signed prekeys still valid, newest first."""


class ServerStore:
    """Queries of the enterprise server. ``now`` arguments are Unix milliseconds."""

    def __init__(self, database: Database) -> None:
        self.db = database

    @classmethod
    def open(cls, url: str) -> ServerStore:
        """Open (and migrate) the server database at ``url``.

        Raises:
            StorageError, ConfigError: see :meth:`Database.open`.
        """
        return cls(Database.open(url, component=COMPONENT, migrations=MIGRATIONS))

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _transaction(self, conn: sa.Connection | None) -> Iterator[sa.Connection]:
        """The caller's open transaction if given, else a new one."""
        if conn is not None:
            yield conn
        else:
            with self.db.transaction() as new:
                yield new

    # --- settings -------------------------------------------------------------------------

    def setting(self, name: str) -> bytes | None:
        with self.db.transaction() as conn:
            row = conn.execute(sa.select(settings.c.value).where(settings.c.name == name)).first()
        return None if row is None else bytes(row[0])

    def put_setting(self, name: str, value: bytes) -> None:
        with self.db.transaction() as conn:
            done = conn.execute(
                settings.update().where(settings.c.name == name).values(value=value)
            )
            if done.rowcount == 0:
                conn.execute(settings.insert().values(name=name, value=value))

    # --- people ---------------------------------------------------------------------------

    def add_user(
        self, username: str, display_name: str, *, now: int, conn: sa.Connection | None = None
    ) -> int:
        """Add a person (in ``conn``, the caller's transaction, if given). Raises: UserExists."""
        with self._transaction(conn) as conn:
            if conn.execute(sa.select(users.c.id).where(users.c.username == username)).first():
                raise UserExists(f"a person with the user name {username!r} exists already")
            result = conn.execute(
                users.insert().values(
                    username=username,
                    display_name=display_name,
                    state=UserState.ACTIVE,
                    created_at=now,
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            return int(key[0])

    def user(self, username: str) -> UserRecord:
        """Raises: UnknownUser."""
        for record in self.users([username]):
            return record
        raise UnknownUser(f"no person with the user name {username!r}")

    def username_of(self, user_id: int) -> str:
        """The user name of a person by id ("" if there is none)."""
        with self.db.transaction() as conn:
            row = conn.execute(sa.select(users.c.username).where(users.c.id == user_id)).first()
        return "" if row is None else str(row[0])

    def users(self, usernames: Iterable[str] | None = None) -> list[UserRecord]:
        count = (
            sa.select(sa.func.count())
            .where(devices.c.user_id == users.c.id, devices.c.state == DeviceState.ACTIVE)
            .scalar_subquery()
        )
        query = sa.select(users, count.label("devices")).order_by(users.c.username)
        if usernames is not None:
            query = query.where(users.c.username.in_(list(usernames)))
        with self.db.transaction() as conn:
            rows = conn.execute(query).all()
        return [
            UserRecord(
                id=row.id,
                username=row.username,
                display_name=row.display_name,
                state=row.state,
                created_at=row.created_at,
                devices=row.devices,
            )
            for row in rows
        ]

    # --- tickets --------------------------------------------------------------------------

    def add_ticket(
        self,
        *,
        ticket_id: bytes,
        user_id: int,
        params: bytes,
        sealed_scalar: bytes,
        now: int,
        expires_at: int,
        attempts: int,
        conn: sa.Connection | None = None,
    ) -> None:
        """Store a new ticket (in ``conn``, the caller's transaction, if given); earlier open
        tickets of the same person are revoked (one activation password per person at a
        time)."""
        with self._transaction(conn) as conn:
            conn.execute(
                tickets.update()
                .where(tickets.c.user_id == user_id, tickets.c.state == TicketState.OPEN.value)
                .values(state=TicketState.REVOKED.value, sealed_scalar=b"")
            )
            conn.execute(
                tickets.insert().values(
                    ticket_id=ticket_id,
                    user_id=user_id,
                    params=params,
                    sealed_scalar=sealed_scalar,
                    created_at=now,
                    expires_at=expires_at,
                    attempts_left=attempts,
                    state=TicketState.OPEN.value,
                )
            )

    def ticket(self, ticket_id: bytes) -> TicketRecord | None:
        with self.db.transaction() as conn:
            row = conn.execute(sa.select(tickets).where(tickets.c.ticket_id == ticket_id)).first()
        return None if row is None else _ticket_record(row)

    def reserve_attempt(self, ticket_id: bytes, *, now: int) -> TicketRecord | None:
        """Take one attempt from an open, unexpired ticket that has one left, for a run that is
        about to check a password; ``None`` if there is none to take.

        One conditional update, so runs racing on any number of server instances sharing the
        database take at most ``attempts_left`` attempts between them. The attempt is spent
        whatever the run's outcome. Taking the last one also drops the sealed scalar (the run
        holds it already); the ticket stays open for runs holding an attempt until
        :meth:`burn_if_spent`.

        Returns:
            The ticket as it was read (with the sealed scalar), ``attempts_left`` counting
            this attempt as taken.
        """
        with self.db.transaction() as conn:
            done = conn.execute(
                tickets.update()
                .where(
                    tickets.c.ticket_id == ticket_id,
                    tickets.c.state == TicketState.OPEN.value,
                    tickets.c.expires_at > now,
                    tickets.c.attempts_left > 0,
                )
                .values(attempts_left=tickets.c.attempts_left - 1)
            )
            if done.rowcount != 1:
                return None
            row = conn.execute(sa.select(tickets).where(tickets.c.ticket_id == ticket_id)).one()
            if row.attempts_left <= 0:
                conn.execute(
                    tickets.update()
                    .where(tickets.c.ticket_id == ticket_id)
                    .values(sealed_scalar=b"")
                )
        return _ticket_record(row)

    def burn_if_spent(self, ticket_id: bytes) -> None:
        """Burn an open ticket that has no attempt left (a run holding its last attempt
        ended without activating a device)."""
        with self.db.transaction() as conn:
            conn.execute(
                tickets.update()
                .where(
                    tickets.c.ticket_id == ticket_id,
                    tickets.c.state == TicketState.OPEN.value,
                    tickets.c.attempts_left <= 0,
                )
                .values(state=TicketState.BURNED.value, sealed_scalar=b"")
            )

    def activate_device(
        self,
        *,
        ticket_id: bytes,
        address: bytes,
        identity_key: bytes,
        certificate: bytes,
        serial: int,
        signed_prekeys: Sequence[tuple[int, bytes, int]],
        now: int,
        max_devices: int,
        remote_secret: bytes,
        conn: sa.Connection | None = None,
    ) -> bool:
        """Use an open, unexpired ticket to add a device; ``False`` if the ticket is no longer
        usable (used, burned, expired, revoked) or the person has ``max_devices`` already.

        ``signed_prekeys`` holds ``(prekey id, encoded signed prekey, not_after)``;
        ``remote_secret`` is the device's remote secret, sealed under the server's key.
        With ``conn``, it runs in the caller's transaction.
        """
        with self._transaction(conn) as conn:
            row = conn.execute(
                sa.select(tickets.c.user_id).where(
                    tickets.c.ticket_id == ticket_id,
                    tickets.c.state == TicketState.OPEN.value,
                    tickets.c.expires_at > now,
                )
            ).first()
            if row is None:
                return False
            user_id = row[0]
            active = conn.execute(
                sa.select(sa.func.count()).where(
                    devices.c.user_id == user_id, devices.c.state.in_(LIVE_DEVICE_STATES)
                )
            ).scalar_one()
            if active >= max_devices:
                return False
            done = conn.execute(
                tickets.update()
                .where(tickets.c.ticket_id == ticket_id, tickets.c.state == TicketState.OPEN.value)
                .values(state=TicketState.USED.value, sealed_scalar=b"", device=address)
            )
            if done.rowcount != 1:
                return False
            conn.execute(
                devices.insert().values(
                    address=address,
                    user_id=user_id,
                    identity_key=identity_key,
                    certificate=certificate,
                    serial=serial,
                    activated_at=now,
                    # Pending until the device's first envelope proves it holds its keys (the
                    # server's answer may never have reached it): only then in the directory.
                    state=DeviceState.PENDING,
                )
            )
            for prekey_id, signed, not_after in signed_prekeys:
                conn.execute(
                    prekeys.insert().values(
                        address=address, prekey_id=prekey_id, signed=signed, not_after=not_after
                    )
                )
            conn.execute(managed.insert().values(address=address, remote_secret=remote_secret))
        return True

    # --- devices and directory --------------------------------------------------------------

    def device(self, address: bytes) -> DeviceRecord | None:
        found = self._devices(devices.c.address == address, now=0)
        return found[0] if found else None

    def devices_of(
        self, usernames: Sequence[str], *, now: int, states: Sequence[str] = (DeviceState.ACTIVE,)
    ) -> list[DeviceRecord]:
        """Devices (by default: active ones) of active people, with their prekeys valid at
        ``now`` (seconds)."""
        return self._devices(
            users.c.username.in_(list(usernames)),
            devices.c.state.in_(list(states)),
            users.c.state == UserState.ACTIVE,
            now=now,
        )

    def _devices(self, *where: sa.ColumnElement[bool], now: int) -> list[DeviceRecord]:
        query = (
            sa.select(devices, users.c.username)
            .join(users, users.c.id == devices.c.user_id)
            .where(*where)
            .order_by(devices.c.activated_at)
        )
        with self.db.transaction() as conn:
            rows = conn.execute(query).all()
            addresses = [bytes(row.address) for row in rows]
            keys: dict[bytes, list[bytes]] = {a: [] for a in addresses}
            if addresses:
                for prekey in conn.execute(
                    sa.select(prekeys.c.address, prekeys.c.signed)
                    .where(prekeys.c.address.in_(addresses), prekeys.c.not_after > now)
                    .order_by(prekeys.c.prekey_id.desc())
                ):
                    keys[bytes(prekey.address)].append(bytes(prekey.signed))
        return [
            DeviceRecord(
                address=bytes(row.address),
                username=row.username,
                identity_key=bytes(row.identity_key),
                certificate=bytes(row.certificate),
                activated_at=row.activated_at,
                state=row.state,
                prekeys=tuple(keys[bytes(row.address)]),
            )
            for row in rows
        ]

    def confirm_device(self, address: bytes) -> None:
        """A pending device was heard from: it holds its keys; list it from now on."""
        with self.db.transaction() as conn:
            conn.execute(
                devices.update()
                .where(devices.c.address == address, devices.c.state == DeviceState.PENDING)
                .values(state=DeviceState.ACTIVE)
            )

    def publish_prekeys(
        self, address: bytes, signed_prekeys: Sequence[tuple[int, bytes, int]]
    ) -> None:
        """Replace a device's published prekeys (only public keys are ever stored here)."""
        with self.db.transaction() as conn:
            conn.execute(prekeys.delete().where(prekeys.c.address == address))
            for prekey_id, signed, not_after in signed_prekeys:
                conn.execute(
                    prekeys.insert().values(
                        address=address, prekey_id=prekey_id, signed=signed, not_after=not_after
                    )
                )

    # --- who holds whose directory entry ------------------------------------------------------

    def hold_entries(self, address: bytes, usernames: Sequence[str], expires_at: int) -> None:
        """The device at ``address`` was given these people's entries, to cache until
        ``expires_at`` (Unix seconds). Holders whose caches have expired are forgotten."""
        if not usernames:
            return
        dialect = sqlite_dialect if self.db.dialect == "sqlite" else pg_dialect
        rows = [{"username": n, "address": address, "expires_at": expires_at} for n in usernames]
        insert = dialect.insert(holders)
        with self.db.transaction() as conn:
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["username", "address"],
                    set_={"expires_at": insert.excluded.expires_at},
                ),
                rows,
            )

    def holders(self, usernames: Sequence[str], *, now: int) -> dict[bytes, list[str]]:
        """The devices that may still hold one of these people's entries (``now`` in Unix
        seconds): address → the names it holds. Expired holdings are deleted on the way."""
        with self.db.transaction() as conn:
            conn.execute(holders.delete().where(holders.c.expires_at <= now))
            rows = conn.execute(
                sa.select(holders.c.address, holders.c.username).where(
                    holders.c.username.in_(list(usernames))
                )
            ).all()
        found: dict[bytes, list[str]] = {}
        for address, username in rows:
            found.setdefault(bytes(address), []).append(username)
        return found

    # --- replay protection for envelopes sent to the server ---------------------------------

    def first_seen(self, message_id: bytes, sent_at: int, *, horizon: int) -> bool:
        """Record an envelope id; ``False`` if it was seen before. Ids sent before ``horizon``
        are forgotten (such envelopes are refused as stale anyway)."""
        dialect = sqlite_dialect if self.db.dialect == "sqlite" else pg_dialect
        with self.db.transaction() as conn:
            # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT.
            inserted = conn.execute(
                dialect.insert(seen)
                .values(message_id=message_id, sent_at=sent_at)
                .on_conflict_do_nothing()
                .returning(seen.c.message_id)
            ).first()
            conn.execute(seen.delete().where(seen.c.sent_at < horizon))
        return inserted is not None

    # --- device management (every method takes the caller's transaction) ----------------------

    def managed_device(self, conn: sa.Connection, address: bytes) -> sa.Row[Any] | None:
        return conn.execute(sa.select(managed).where(managed.c.address == address)).first()

    def put_remote_secret(self, conn: sa.Connection, address: bytes, sealed: bytes) -> None:
        done = conn.execute(
            managed.update().where(managed.c.address == address).values(remote_secret=sealed)
        )
        if done.rowcount == 0:
            conn.execute(managed.insert().values(address=address, remote_secret=sealed))

    def seen_device(self, conn: sa.Connection, address: bytes, now: int) -> None:
        conn.execute(managed.update().where(managed.c.address == address).values(last_seen=now))

    def report_compliance(
        self, conn: sa.Connection, address: bytes, name: str, version: int, issues: str
    ) -> None:
        conn.execute(
            managed.update()
            .where(managed.c.address == address)
            .values(policy_name=name, policy_version=version, issues=issues)
        )

    def end_devices(self, conn: sa.Connection, addresses: Sequence[bytes], state: str) -> None:
        """Mark devices ``wiped`` or ``revoked``: out of the directory, remote secrets deleted
        (a copy of such a device cannot be unlocked once its offline grace has passed)."""
        if not addresses:
            return
        conn.execute(
            devices.update()
            .where(devices.c.address.in_(list(addresses)), devices.c.state != DeviceState.REVOKED)
            .values(state=state)
        )
        conn.execute(
            managed.update()
            .where(managed.c.address.in_(list(addresses)))
            .values(remote_secret=None)
        )

    def user_id(self, conn: sa.Connection, username: str) -> int:
        row = conn.execute(sa.select(users.c.id).where(users.c.username == username)).first()
        if row is None:
            raise UnknownUser(f"no person with the user name {username!r}")
        return int(row[0])

    def active_user_id(self, conn: sa.Connection, username: str) -> int:
        """The id of an active person. Raises: UnknownUser (none, or disabled)."""
        row = conn.execute(
            sa.select(users.c.id, users.c.state).where(users.c.username == username)
        ).first()
        if row is None:
            raise UnknownUser(f"no person with the user name {username!r}")
        if row.state != UserState.ACTIVE:
            raise UnknownUser(f"{username!r} is disabled")
        return int(row.id)

    def set_user_state(self, conn: sa.Connection, user_id: int, state: str) -> None:
        conn.execute(users.update().where(users.c.id == user_id).values(state=state))
        if state != UserState.ACTIVE:
            conn.execute(
                tickets.update()
                .where(tickets.c.user_id == user_id, tickets.c.state == TicketState.OPEN.value)
                .values(state=TicketState.REVOKED.value, sealed_scalar=b"")
            )

    def device_addresses(
        self, conn: sa.Connection, user_id: int, states: Sequence[str]
    ) -> list[bytes]:
        rows = conn.execute(
            sa.select(devices.c.address).where(
                devices.c.user_id == user_id, devices.c.state.in_(list(states))
            )
        )
        return [bytes(row[0]) for row in rows]

    # --- revocations waiting for the relay --------------------------------------------------

    def add_revocations(self, conn: sa.Connection, addresses: Sequence[bytes], now: int) -> None:
        for address in addresses:
            if not conn.execute(
                sa.select(revocations.c.address).where(revocations.c.address == address)
            ).first():
                conn.execute(revocations.insert().values(address=address, created_at=now))

    def pending_revocations(self) -> list[bytes]:
        with self.db.transaction() as conn:
            rows = conn.execute(sa.select(revocations.c.address).order_by(revocations.c.created_at))
            return [bytes(row[0]) for row in rows]

    def revocations_done(self, addresses: Sequence[bytes]) -> None:
        with self.db.transaction() as conn:
            conn.execute(revocations.delete().where(revocations.c.address.in_(list(addresses))))

    # --- policies and groups ------------------------------------------------------------------

    def policy_rows(self, conn: sa.Connection) -> list[sa.Row[Any]]:
        return list(conn.execute(sa.select(policies).order_by(policies.c.name)))

    def policy_row(self, conn: sa.Connection, name: str) -> sa.Row[Any] | None:
        return conn.execute(sa.select(policies).where(policies.c.name == name)).first()

    def put_policy(
        self, conn: sa.Connection, name: str, settings: str, now: int, actor: str
    ) -> int:
        """Create the policy or store its next version; return the version."""
        row = self.policy_row(conn, name)
        if row is None:
            version = 1
            key = conn.execute(
                policies.insert().values(
                    name=name, version=1, settings=settings, updated_at=now, updated_by=actor
                )
            ).inserted_primary_key
            assert key is not None
            policy_id = int(key[0])
        else:
            version = int(row.version) + 1
            policy_id = int(row.id)
            conn.execute(
                policies.update()
                .where(policies.c.id == policy_id)
                .values(version=version, settings=settings, updated_at=now, updated_by=actor)
            )
        conn.execute(
            policy_versions.insert().values(
                policy_id=policy_id,
                version=version,
                settings=settings,
                created_at=now,
                created_by=actor,
            )
        )
        return version

    def delete_policy(self, conn: sa.Connection, policy_id: int) -> None:
        conn.execute(policy_versions.delete().where(policy_versions.c.policy_id == policy_id))
        conn.execute(policies.delete().where(policies.c.id == policy_id))

    def group_rows(self, conn: sa.Connection, name: str | None = None) -> list[sa.Row[Any]]:
        query = (
            sa.select(groups, policies.c.name.label("policy_name"))
            .outerjoin(policies, policies.c.id == groups.c.policy_id)
            .order_by(groups.c.priority, groups.c.name)
        )
        if name is not None:
            query = query.where(groups.c.name == name)
        return list(conn.execute(query))

    def group_members(self, conn: sa.Connection, group_id: int) -> list[str]:
        rows = conn.execute(
            sa.select(users.c.username)
            .join(members, members.c.user_id == users.c.id)
            .where(members.c.group_id == group_id)
            .order_by(users.c.username)
        )
        return [row[0] for row in rows]

    def user_groups(self, conn: sa.Connection, user_id: int) -> list[sa.Row[Any]]:
        """The person's groups, first (lowest priority number) first, with their policy."""
        return list(
            conn.execute(
                sa.select(groups.c.name, groups.c.policy_id, policies.c.name.label("policy"))
                .join(members, members.c.group_id == groups.c.id)
                .outerjoin(policies, policies.c.id == groups.c.policy_id)
                .where(members.c.user_id == user_id)
                .order_by(groups.c.priority, groups.c.name)
            )
        )

    def add_group(
        self,
        conn: sa.Connection,
        name: str,
        description: str,
        priority: int,
        policy_id: int | None,
    ) -> None:
        if conn.execute(sa.select(groups.c.id).where(groups.c.name == name)).first():
            raise Conflict(f"a group named {name!r} exists already")
        conn.execute(
            groups.insert().values(
                name=name, description=description, priority=priority, policy_id=policy_id
            )
        )

    def update_group(self, conn: sa.Connection, group_id: int, **values: Any) -> None:
        conn.execute(groups.update().where(groups.c.id == group_id).values(**values))

    def delete_group(self, conn: sa.Connection, group_id: int) -> None:
        conn.execute(members.delete().where(members.c.group_id == group_id))
        conn.execute(groups.delete().where(groups.c.id == group_id))

    def set_member(self, conn: sa.Connection, group_id: int, user_id: int, member: bool) -> None:
        where = (members.c.group_id == group_id, members.c.user_id == user_id)
        present = conn.execute(sa.select(members.c.user_id).where(*where)).first() is not None
        if member and not present:
            conn.execute(members.insert().values(group_id=group_id, user_id=user_id))
        elif not member and present:
            conn.execute(members.delete().where(*where))

    def users_of_policy(self, conn: sa.Connection) -> dict[int, list[int]]:
        """User ids by group policy id (for pushing a changed policy)."""
        out: dict[int, list[int]] = {}
        for row in conn.execute(
            sa.select(groups.c.policy_id, members.c.user_id)
            .join(members, members.c.group_id == groups.c.id)
            .where(groups.c.policy_id.is_not(None))
        ):
            out.setdefault(int(row[0]), []).append(int(row[1]))
        return out

    # --- commands -----------------------------------------------------------------------------

    def add_command(
        self,
        conn: sa.Connection,
        *,
        command_id: bytes,
        address: bytes,
        kind: str,
        sealed: bytes,
        now: int,
        actor: str,
    ) -> None:
        conn.execute(
            commands.insert().values(
                command_id=command_id,
                address=address,
                kind=kind,
                state=CommandState.QUEUED,
                signed=sealed,
                created_at=now,
                created_by=actor,
                detail="",
            )
        )

    def command_rows(
        self,
        conn: sa.Connection,
        *,
        address: bytes | None = None,
        command_id: bytes | None = None,
        states: Sequence[str] | None = None,
        limit: int = 1000,
    ) -> list[sa.Row[Any]]:
        query = (
            sa.select(commands, users.c.username)
            .join(devices, devices.c.address == commands.c.address)
            .join(users, users.c.id == devices.c.user_id)
            .order_by(commands.c.created_at, commands.c.command_id)
            .limit(limit)
        )
        if address is not None:
            query = query.where(commands.c.address == address)
        if command_id is not None:
            query = query.where(commands.c.command_id == command_id)
        if states is not None:
            query = query.where(commands.c.state.in_(list(states)))
        return list(conn.execute(query))

    def complete_command(
        self,
        conn: sa.Connection,
        command_id: bytes,
        address: bytes,
        state: str,
        detail: str,
        now: int,
    ) -> sa.Row[Any] | None:
        """Record a device's result for one of its queued commands; the row, or ``None`` when
        there is no such queued command of that device (results are idempotent)."""
        row = conn.execute(
            sa.select(commands).where(
                commands.c.command_id == command_id,
                commands.c.address == address,
                commands.c.state == CommandState.QUEUED,
            )
        ).first()
        if row is None:
            return None
        conn.execute(
            commands.update()
            .where(commands.c.command_id == command_id)
            .values(state=state, detail=detail[:256], completed_at=now)
        )
        return row

    def wipe_told(self, conn: sa.Connection, address: bytes, now: int) -> None:
        """A wiped or revoked device asked for its secret and was told to erase itself: its
        queued wipe commands are done (it erases on that answer, and may never report)."""
        conn.execute(
            commands.update()
            .where(
                commands.c.address == address,
                commands.c.kind == "wipe",
                commands.c.state == CommandState.QUEUED,
            )
            .values(
                state=CommandState.DONE, detail="told to erase itself at unlock", completed_at=now
            )
        )

    def all_devices(self, conn: sa.Connection, username: str | None = None) -> list[sa.Row[Any]]:
        query = (
            sa.select(
                devices.c.address,
                devices.c.state,
                devices.c.activated_at,
                users.c.username,
                managed.c.last_seen,
                managed.c.policy_name,
                managed.c.policy_version,
                managed.c.issues,
            )
            .join(users, users.c.id == devices.c.user_id)
            .outerjoin(managed, managed.c.address == devices.c.address)
            .order_by(users.c.username, devices.c.activated_at)
        )
        if username is not None:
            query = query.where(users.c.username == username)
        return list(conn.execute(query))
