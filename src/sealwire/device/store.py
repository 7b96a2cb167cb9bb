"""A device's encrypted local store (DESIGN §2 ``device/``; issue 4).

Files in the device's home directory:

Two keys, so that a wipe is backed by cryptography (DESIGN §8, docs/protocol/MANAGEMENT.md):

- the **boot key** opens only what the device needs to reach its server: its identity key,
  certificate chain, the organisation's root key and data, and its policy;
- the **data key** opens everything else: messages, prekeys, the directory cache. It is
  wrapped under ``HKDF(boot key ‖ remote secret)``, and the *remote secret* is held by the
  server, fetched on unlock and deleted by the server on wipe or deprovisioning.

Files in the device's home directory:

``device.key``
    ``{0: version, 1: Argon2Params, 2: boot key sealed under Argon2id(passcode), 3: data key
    sealed under HKDF(boot key ‖ remote secret)}`` (CBOR).
``device.db``
    SQLite (through :class:`~sealwire.storage.Database`). Every secret and every message body,
    peer name and directory entry is sealed with :func:`~sealwire.protocol.suite.seal_at_rest`
    (boot secrets under the boot key, the rest under the data key), bound to its row
    (``context``), so rows cannot be swapped. In clear: row numbers, random message ids, times,
    delivery states, envelope ids already seen (replay protection), ids of commands carried
    out, and sealed envelopes waiting to be sent.
``attempts``
    Wrong passcodes in a row and the policy's limit; at the limit the device erases itself.

In the runtime directory (``SEALWIRE_SESSION_DIR``, else ``$XDG_RUNTIME_DIR``: a tmpfs that
never reaches a disk and is not part of a copy of the home):

``sealwire-session-*.key``
    While unlocked: both keys, the time of the last use and the auto-lock delay, so that the
    person's commands work without the passcode each time. ``lock`` erases it. Without a
    runtime directory it lives in the home as ``session.key``.
``sealwire-grace-*.key``
    The remote secret and the end of the offline grace: unlocking needs no server until then.
    Never written to the home: a copy of the home can only be unlocked through the server,
    which refuses once the device was wiped.

Unlocking costs one Argon2id derivation (64 MiB, 3 passes) and, past the grace, one round
trip to the server.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect

from sealwire._system import now_ms, write_private
from sealwire.errors import (
    ConfigError,
    CryptoError,
    DecodeError,
    DeviceLocked,
    DeviceWiped,
    StorageError,
    WrongPasscode,
)
from sealwire.protocol.codec import Struct, wire
from sealwire.protocol.suite import (
    Argon2Params,
    derive_passcode_key,
    hkdf,
    open_at_rest,
    seal_at_rest,
)
from sealwire.storage import Database

from .migrations import COMPONENT, MIGRATIONS

__all__ = [
    "BOOT_SECRETS",
    "MIN_PASSCODE",
    "DeviceStore",
    "MessageRecord",
    "MessageState",
]

MIN_PASSCODE = 6
"""Shortest passcode accepted (IT policy may ask for more)."""
_FORMAT = 2
_MAX_MS = (1 << 53) - 1
_BOOT_PURPOSE = "device/boot-key"
_KEY_PURPOSE = "device/data-key"
_STORAGE_PURPOSE = "device/storage-key"
BOOT_SECRETS = frozenset({"identity", "chain", "root", "directory", "policy", "passcode"})
"""Secrets under the boot key: what reaching the server needs (and the policy)."""
_ROW_PURPOSE = "device/store"
_MAX_KEY_FILE = 1024

metadata = sa.MetaData()
"""Today's tables, for the queries. The schema itself is built by the frozen steps of
:mod:`.migrations`: change a table here and add a step there."""
secrets_table = sa.Table(
    "secrets",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("blob", sa.LargeBinary, nullable=False),
)
messages = sa.Table(
    "messages",
    metadata,
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
    # Outgoing: the sealed copies until the relay holds them all (they are ciphertext).
)
seen = sa.Table(
    "seen_envelopes",
    metadata,
    sa.Column("message_id", sa.LargeBinary, primary_key=True),
    sa.Column("sent_at", sa.BigInteger, nullable=False, index=True),
)
directory = sa.Table(
    "directory",
    metadata,
    sa.Column("tag", sa.LargeBinary, primary_key=True),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("blob", sa.LargeBinary, nullable=False),
)
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("envelope", sa.LargeBinary, nullable=False),
)
done_commands = sa.Table(
    "done_commands",
    metadata,
    sa.Column("command_id", sa.LargeBinary, primary_key=True),
    sa.Column("done_at", sa.BigInteger, nullable=False),
)
prekeys = sa.Table(
    "prekeys",
    metadata,
    sa.Column("prekey_id", sa.BigInteger, primary_key=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("retire_at", sa.BigInteger, nullable=True),
    sa.Column("blob", sa.LargeBinary, nullable=False),
)


class MessageState(enum.IntEnum):
    """Where a message is. Outgoing: QUEUED → SENT → DELIVERED → READ, or QUEUED → FAILED;
    incoming: RECEIVED → READ."""

    QUEUED = 0
    """Sealed and waiting to be handed to the relay."""
    SENT = 1
    """Every copy is durably queued at the relay."""
    DELIVERED = 2
    RECEIVED = 3
    READ = 4
    FAILED = 5
    """It will never arrive: the relay refused every copy for the recipient (their devices
    were disabled by the organisation). Final: receipts never move it."""


@dataclass(frozen=True)
class _MessageBlob(Struct):
    sender: str = wire(0, max_size=64)
    recipient: str = wire(1, max_size=64)
    text: str = wire(2, max_size=64 * 1024)
    sender_device: bytes = wire(3, max_size=32)


_MAX_UNSENT = 8 * 1024 * 1024


@dataclass(frozen=True)
class _Envelopes(Struct):
    items: tuple[bytes, ...] = wire(0, max_items=32, max_size=256 * 1024)


@dataclass(frozen=True)
class MessageRecord:
    """One message as the person sees it."""

    seq: int
    message_id: bytes
    outgoing: bool
    state: MessageState
    sent_at: int
    """Unix ms, by the sender's clock."""
    sender: str
    recipient: str
    text: str
    sender_device: bytes
    verified: bool = True
    """The sender's device was checked against the directory (unverified messages are kept,
    not shown, until the check is done)."""

    @property
    def peer(self) -> str:
        """The other person of the conversation."""
        return self.recipient if self.outgoing else self.sender

    def __repr__(self) -> str:  # never print the text
        return f"MessageRecord(seq={self.seq}, state={self.state.name}, text=<{len(self.text)}>)"


@dataclass(frozen=True)
class _KeyFile(Struct):
    version: int = wire(0, min_value=1, max_value=_FORMAT)
    params: Argon2Params = wire(1)
    boot: bytes = wire(2, max_size=256)
    """The boot key sealed under the passcode key."""
    data: bytes | None = wire(3, max_size=256, default=None)
    """The data key sealed under the storage key (absent only in version 1 files)."""


@dataclass(frozen=True)
class _Session(Struct):
    boot_key: bytes = wire(0, size=32)
    data_key: bytes = wire(1, size=32)
    last_active: int = wire(2, min_value=0, max_value=_MAX_MS)
    """Unix ms of the person's last action."""
    auto_lock_s: int = wire(3, min_value=0, max_value=86400)


@dataclass(frozen=True)
class _Grace(Struct):
    secret: bytes = wire(0, size=32)
    until: int = wire(1, min_value=0, max_value=_MAX_MS)
    """Unix ms."""


@dataclass(frozen=True)
class _Attempts(Struct):
    failed: int = wire(0, min_value=0, max_value=1000)
    limit: int = wire(1, min_value=1, max_value=1000)


def _session_paths(home: Path) -> list[Path]:
    """Where a session key may be, preferred first: a tmpfs directory if one is set
    (``SEALWIRE_SESSION_DIR``, then ``XDG_RUNTIME_DIR``), else the home."""
    digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:24]
    paths = []
    for variable in ("SEALWIRE_SESSION_DIR", "XDG_RUNTIME_DIR"):
        base = os.environ.get(variable)
        if base and Path(base).is_dir():
            paths.append(Path(base) / f"sealwire-session-{digest}.key")
    paths.append(home / "session.key")
    return paths


def _session_path(home: Path) -> Path:
    return _session_paths(home)[0]


def _grace_path(home: Path) -> Path | None:
    """Where the remote secret may be cached: the runtime directory only (never the home)."""
    path = _session_paths(home)[0]
    if path.parent == home:
        return None
    return path.with_name(path.name.replace("sealwire-session-", "sealwire-grace-"))


def _erase_file(path: Path) -> None:
    """Overwrite a small file with zeros, then delete it."""
    with contextlib.suppress(OSError):
        size = path.stat().st_size
        with open(path, "r+b") as handle:
            handle.write(bytes(size))
            handle.flush()
            os.fsync(handle.fileno())
    with contextlib.suppress(OSError):
        path.unlink()


class DeviceStore:
    """The encrypted store in one device home. Make it with :meth:`create` or :meth:`open`.

    Unlocking takes two steps: :meth:`unlock_boot` with the passcode, then :meth:`unlock_data`
    with the remote secret (from :meth:`cached_remote_secret` or the server).
    """

    def __init__(
        self,
        home: Path,
        database: Database,
        *,
        random: Callable[[int], bytes],
        clock: Callable[[], int],
    ) -> None:
        self.home = home
        self.db = database
        self._random = random
        self._clock = clock
        self._boot: bytes | None = None
        self._boot_wrapped = b""
        """``device.key``'s wrapped boot key as :meth:`unlock_boot` read it."""
        self._key: bytes | None = None
        self._auto_lock_s = 0
        self._last_active = 0
        self._local = threading.local()
        """Per thread: the connection of an open :meth:`batch` (the device commits in a
        worker thread while the event loop reads)."""
        self._pruned_at = 0

    # --- lifecycle ------------------------------------------------------------------------

    @staticmethod
    def exists(home: Path) -> bool:
        return (home / "device.key").exists()

    @classmethod
    def create(
        cls,
        home: Path,
        passcode: str,
        remote_secret: bytes,
        *,
        random: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], int] = now_ms,
        params: Argon2Params | None = None,
        attempt_limit: int = 10,
    ) -> DeviceStore:
        """Make a new, unlocked store in ``home`` (which must not hold one).

        Raises:
            ConfigError: ``home`` holds a device already, or the passcode is too short.
        """
        if len(passcode) < MIN_PASSCODE:
            raise ConfigError(f"a passcode has at least {MIN_PASSCODE} characters")
        if cls.exists(home):
            raise ConfigError(f"{home} holds an activated device already")
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        boot_key, data_key = random(32), random(32)
        params = params or Argon2Params.default(random)
        key_file = _KeyFile(
            version=_FORMAT,
            params=params,
            boot=_wrap_boot(boot_key, passcode, params, random),
            data=seal_at_rest(
                _storage_key(boot_key, remote_secret),
                data_key,
                purpose=_KEY_PURPOSE,
                context=b"data-key",
                random=random,
            ),
        )
        write_private(home / "device.key", key_file.encode())
        write_private(home / "attempts", _Attempts(failed=0, limit=attempt_limit).encode())
        store = cls(home, _open_db(home), random=random, clock=clock)
        store._boot, store._key = boot_key, data_key
        store._write_session()
        return store

    @classmethod
    def open(
        cls,
        home: Path,
        *,
        random: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], int] = now_ms,
    ) -> DeviceStore:
        """Open the store in ``home``; it is unlocked if a session is open and has not been
        idle longer than the policy's auto-lock delay.

        Raises:
            ConfigError: no device in ``home``.
        """
        if not cls.exists(home):
            raise ConfigError(
                f"no activated device in {home}: run `sealwire device --home {home} activate`"
            )
        store = cls(home, _open_db(home), random=random, clock=clock)
        for path in _session_paths(home):
            try:
                session = _Session.decode(path.read_bytes(), max_size=256)
            except (OSError, DecodeError):
                continue
            idle_ms = clock() - session.last_active
            if session.auto_lock_s and idle_ms > session.auto_lock_s * 1000:
                store.lock()  # auto-lock: idle too long
                break
            store._boot, store._key = session.boot_key, session.data_key
            store._auto_lock_s, store._last_active = session.auto_lock_s, session.last_active
            break
        return store

    def close(self) -> None:
        self._key = None
        self._boot = None
        self.db.close()

    @property
    def locked(self) -> bool:
        return self._key is None

    @property
    def boot_unlocked(self) -> bool:
        """The passcode was given: the device can reach its server (to fetch the secret)."""
        return self._boot is not None

    def unlock_boot(self, passcode: str) -> None:
        """Check the passcode and open the boot key (one Argon2id derivation).

        Raises:
            WrongPasscode: with the attempts left.
            DeviceWiped: that was the last attempt the policy allows: the device erased itself.
        """
        if not self.exists(self.home):
            raise ConfigError(f"no activated device in {self.home} (was it wiped?)")
        key_file = _read_key_file(self.home)
        if key_file.version < _FORMAT or key_file.data is None:
            raise ConfigError(
                f"the device in {self.home} was activated by an older Sealwire without "
                "crypto-backed wipe: activate it again (ask your administrator for a ticket)"
            )
        passcode_key = derive_passcode_key(passcode, key_file.params, purpose=_BOOT_PURPOSE)
        try:
            boot_key = open_at_rest(
                passcode_key, key_file.boot, purpose=_BOOT_PURPOSE, context=b"boot-key"
            )
        except CryptoError:
            left = self._count_failed_attempt()
            raise WrongPasscode(
                f"wrong passcode ({left} attempt{'s' if left != 1 else ''} left before this "
                "device erases itself)"
            ) from None
        attempts = self._attempts()
        if attempts.failed:
            write_private(self.home / "attempts", _Attempts(0, attempts.limit).encode())
        self._boot = boot_key
        self._boot_wrapped = key_file.boot

    def unlock_data(self, remote_secret: bytes) -> None:
        """Open the data key with the remote secret and start a session.

        Raises:
            StorageError: the secret does not open the store.
        """
        if self._boot is None:
            raise DeviceLocked("give the passcode first")
        key_file = _read_key_file(self.home)
        assert key_file.data is not None
        if key_file.boot != self._boot_wrapped:
            # The passcode changed (a lock command with a new one) while this unlock waited
            # for the server: the passcode given is no longer the device's.
            self.lock()
            raise WrongPasscode("the passcode was changed meanwhile: unlock with the new one")
        try:
            data_key = open_at_rest(
                _storage_key(self._boot, remote_secret),
                key_file.data,
                purpose=_KEY_PURPOSE,
                context=b"data-key",
            )
        except CryptoError:
            raise StorageError(
                "the server's remote secret does not open this device's store"
            ) from None
        self._key = data_key
        self._last_active = self._clock()
        self._write_session()

    def _count_failed_attempt(self) -> int:
        attempts = self._attempts()
        failed = attempts.failed + 1
        if failed >= attempts.limit:
            self.erase()
            raise DeviceWiped(
                f"{failed} wrong passcodes in a row: as your organisation's policy requires, "
                "this device has erased its keys and messages. Ask your administrator for a "
                "new activation"
            )
        write_private(self.home / "attempts", _Attempts(failed, attempts.limit).encode())
        return attempts.limit - failed

    def _attempts(self) -> _Attempts:
        try:
            return _Attempts.decode((self.home / "attempts").read_bytes(), max_size=64)
        except (OSError, DecodeError):
            return _Attempts(failed=0, limit=10)

    def set_policy_limits(self, *, attempt_limit: int, auto_lock_s: int) -> None:
        """Apply the policy's wrong-passcode limit and auto-lock delay."""
        attempts = self._attempts()
        if attempts.limit != attempt_limit:
            write_private(
                self.home / "attempts", _Attempts(attempts.failed, attempt_limit).encode()
            )
        if self._auto_lock_s != auto_lock_s:
            self._auto_lock_s = auto_lock_s
            if self._key is not None:
                self._write_session()

    def touch(self) -> None:
        """The person did something: the auto-lock delay starts again."""
        now = self._clock()
        if self._key is not None and now - self._last_active > 5_000:
            self._last_active = now
            self._write_session()

    def idle_ms(self) -> int:
        """Milliseconds since the person's last action (for the auto-lock timer)."""
        return self._clock() - self._last_active

    @property
    def auto_lock_s(self) -> int:
        return self._auto_lock_s

    def _write_session(self) -> None:
        assert self._boot is not None and self._key is not None
        session = _Session(
            boot_key=self._boot,
            data_key=self._key,
            last_active=self._last_active or self._clock(),
            auto_lock_s=self._auto_lock_s,
        )
        write_private(_session_path(self.home), session.encode())

    # --- the remote secret's offline cache ------------------------------------------------

    def cache_remote_secret(self, secret: bytes, until: int) -> None:
        """Keep the remote secret until ``until`` (Unix ms) in the runtime directory, if
        there is one (never in the home)."""
        path = _grace_path(self.home)
        if path is None or until <= self._clock():
            self.forget_remote_secret()
            return
        write_private(path, _Grace(secret=secret, until=until).encode())

    def cached_remote_secret(self) -> bytes | None:
        """The cached remote secret, unless its grace has ended (then it is erased)."""
        path = _grace_path(self.home)
        if path is None:
            return None
        try:
            grace = _Grace.decode(path.read_bytes(), max_size=128)
        except (OSError, DecodeError):
            return None
        if grace.until <= self._clock():
            _erase_file(path)
            return None
        return grace.secret

    def cap_remote_secret(self, until: int) -> None:
        """A shorter grace applies to the secret already cached too."""
        secret = self.cached_remote_secret()
        path = _grace_path(self.home)
        if secret is None or path is None:
            return
        grace = _Grace.decode(path.read_bytes(), max_size=128)
        if grace.until > until:
            self.cache_remote_secret(secret, until)

    def forget_remote_secret(self) -> None:
        path = _grace_path(self.home)
        if path is not None:
            _erase_file(path)

    # --- locking, passcode, erasing -------------------------------------------------------

    def lock(self) -> None:
        """Forget both keys and end the session (the session file is overwritten first)."""
        self._key = None
        self._boot = None
        for path in _session_paths(self.home):  # wherever an earlier unlock put it
            _erase_file(path)

    def change_passcode(self, new_passcode: str) -> None:
        """Re-wrap the boot key under a new passcode (the store must be unlocked)."""
        if len(new_passcode) < MIN_PASSCODE:
            raise ConfigError(f"a passcode has at least {MIN_PASSCODE} characters")
        if self._boot is None:
            raise DeviceLocked("unlock the device first")
        key_file = _read_key_file(self.home)
        params = Argon2Params.default(self._random)
        renewed = _KeyFile(
            version=_FORMAT,
            params=params,
            boot=_wrap_boot(self._boot, new_passcode, params, self._random),
            data=key_file.data,
        )
        write_private(self.home / "device.key", renewed.encode())

    def erase(self) -> None:
        """Wipe: erase the key file first (without it nothing else opens), then the
        database, the session and the cached remote secret. The home stays, empty."""
        self._key = None
        self._boot = None
        _erase_file(self.home / "device.key")
        self.forget_remote_secret()
        for path in _session_paths(self.home):
            _erase_file(path)
        with contextlib.suppress(Exception):
            self.db.close()
        for name in ("device.db", "device.db-wal", "device.db-shm", "attempts"):
            with contextlib.suppress(OSError):
                (self.home / name).unlink()

    def locked_error(self) -> DeviceLocked:
        """The error for anything that needs the store unlocked."""
        return DeviceLocked(
            f"the device in {self.home} is locked: run `sealwire device --home {self.home} unlock`"
        )

    def _require_key(self) -> bytes:
        if self._key is None:
            raise self.locked_error()
        return self._key

    def _key_for(self, name: str) -> bytes:
        if name in BOOT_SECRETS:
            if self._boot is None:
                raise self.locked_error()
            return self._boot
        return self._require_key()

    def _seal(self, plaintext: bytes, context: bytes, key: bytes | None = None) -> bytes:
        return seal_at_rest(
            key or self._require_key(),
            plaintext,
            purpose=_ROW_PURPOSE,
            context=context,
            random=self._random,
        )

    def _open(self, blob: bytes, context: bytes, key: bytes | None = None) -> bytes:
        try:
            return open_at_rest(
                key or self._require_key(), blob, purpose=_ROW_PURPOSE, context=context
            )
        except CryptoError:
            raise StorageError("the device store is damaged (a row does not open)") from None

    @contextlib.contextmanager
    def _txn(self) -> Iterator[sa.Connection]:
        batch: sa.Connection | None = getattr(self._local, "batch", None)
        if batch is not None:
            yield batch
            return
        with self.db.transaction() as conn:
            yield conn

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Run the store calls inside the block in one transaction (one commit, one fsync).
        Synchronous code only: nothing may ``await`` inside."""
        if getattr(self._local, "batch", None) is not None:
            yield
            return
        with self.db.transaction() as conn:
            self._local.batch = conn
            try:
                yield
            finally:
                self._local.batch = None

    # --- secrets --------------------------------------------------------------------------

    def put_secret(self, name: str, value: bytes) -> None:
        """Store a secret (those in :data:`BOOT_SECRETS` under the boot key)."""
        blob = self._seal(value, b"secret:" + name.encode(), self._key_for(name))
        with self._txn() as conn:
            conn.execute(
                sqlite_dialect.insert(secrets_table)
                .values(name=name, blob=blob)
                .on_conflict_do_update(index_elements=["name"], set_={"blob": blob})
            )

    def secret(self, name: str) -> bytes | None:
        with self._txn() as conn:
            row = conn.execute(
                sa.select(secrets_table.c.blob).where(secrets_table.c.name == name)
            ).first()
        if row is None:
            return None
        return self._open(bytes(row[0]), b"secret:" + name.encode(), self._key_for(name))

    # --- envelopes seen -------------------------------------------------------------------

    def first_seen(self, envelope_id: bytes, sent_at: int, horizon: int) -> bool:
        """Record an opened envelope's id; ``False`` if it was seen before."""
        with self._txn() as conn:
            return self._record_seen(conn, envelope_id, sent_at, horizon)

    def _record_seen(
        self, conn: sa.Connection, envelope_id: bytes, sent_at: int, horizon: int
    ) -> bool:
        inserted = conn.execute(
            _INSERT_SEEN, {"message_id": envelope_id, "sent_at": sent_at}
        ).first()
        # Forget ids beyond the envelope lifetime (such envelopes are refused as stale
        # anyway), at most once a minute.
        if horizon - self._pruned_at >= _PRUNE_EVERY_MS:
            conn.execute(_PRUNE_SEEN, {"horizon": horizon})
            self._pruned_at = horizon
        return inserted is not None

    # --- messages -------------------------------------------------------------------------

    def add_incoming(
        self, items: list[tuple[MessageRecord, tuple[bytes, int, int], int]]
    ) -> list[bool]:
        """Store incoming messages together: ``(record, (envelope id, sent_at, horizon),
        now)`` each; return for each whether it was new (neither its envelope nor its message
        id seen before, nor earlier in ``items``)."""
        if not items:
            return []
        envelope_ids = [envelope[0] for _, envelope, _ in items]
        message_ids = [record.message_id for record, _, _ in items]
        with self._txn() as conn:
            seen_before = {
                bytes(row[0])
                for row in conn.execute(
                    sa.select(seen.c.message_id).where(seen.c.message_id.in_(envelope_ids))
                )
            }
            stored_before = {
                bytes(row[0])
                for row in conn.execute(
                    sa.select(messages.c.message_id).where(messages.c.message_id.in_(message_ids))
                )
            }
            new_seen: list[dict[str, Any]] = []
            new_messages: list[dict[str, Any]] = []
            flags = []
            for record, (envelope_id, sent_at, _), now in items:
                fresh_envelope = envelope_id not in seen_before
                if fresh_envelope:
                    seen_before.add(envelope_id)
                    new_seen.append({"message_id": envelope_id, "sent_at": sent_at})
                new = fresh_envelope and record.message_id not in stored_before
                flags.append(new)
                if new:
                    stored_before.add(record.message_id)
                    new_messages.append(self._message_row(record, now))
            if new_seen:
                conn.execute(seen.insert(), new_seen)
            if new_messages:
                conn.execute(messages.insert(), new_messages)
            horizon = max(envelope[2] for _, envelope, _ in items)
            if horizon - self._pruned_at >= _PRUNE_EVERY_MS:
                conn.execute(_PRUNE_SEEN, {"horizon": horizon})
                self._pruned_at = horizon
        return flags

    def _message_row(self, record: MessageRecord, now: int) -> dict[str, Any]:
        return {
            "message_id": record.message_id,
            "outgoing": record.outgoing,
            "state": int(record.state),
            "sent_at": record.sent_at,
            "stored_at": now,
            "verified": record.verified,
            "peer_tag": self._tag(record.peer),
            "blob": self._seal(
                _MessageBlob(
                    sender=record.sender,
                    recipient=record.recipient,
                    text=record.text,
                    sender_device=record.sender_device,
                ).encode(),
                b"message:" + record.message_id,
            ),
            "unsent": None,
        }

    def add_outgoing(self, items: list[tuple[MessageRecord, tuple[bytes, ...], int]]) -> None:
        """Store messages we send (fresh random ids) with their sealed copies, together:
        ``(record, copies, now)`` each."""
        rows = []
        for record, envelopes, now in items:
            row = self._message_row(record, now)
            row["unsent"] = _Envelopes(items=envelopes).encode() if envelopes else None
            rows.append(row)
        with self._txn() as conn:
            conn.execute(messages.insert(), rows)

    def messages_sent(self, message_ids: list[bytes]) -> None:
        """The relay holds every copy of these outgoing messages durably: they are SENT."""
        with self._txn() as conn:
            conn.execute(_MARK_SENT, [{"mid": mid} for mid in message_ids])

    def message_failed(self, message_id: bytes) -> None:
        """An outgoing message that will never arrive: FAILED, nothing left to send."""
        with self._txn() as conn:
            conn.execute(
                messages.update()
                .where(messages.c.message_id == message_id)
                .values(unsent=None, state=int(MessageState.FAILED))
            )

    def unsent_messages(self) -> list[tuple[bytes, tuple[bytes, ...]]]:
        """Outgoing messages whose copies the relay may not hold yet (a crash, a lost
        connection): ``(message id, sealed copies)``, oldest first."""
        with self._txn() as conn:
            rows = conn.execute(
                sa.select(messages.c.message_id, messages.c.unsent)
                .where(messages.c.unsent.is_not(None))
                .order_by(messages.c.seq)
            ).all()
        return [
            (bytes(row[0]), _Envelopes.decode(bytes(row[1]), max_size=_MAX_UNSENT).items)
            for row in rows
        ]

    def messages(
        self, *, peer: str | None = None, after: int = 0, verified: bool = True
    ) -> list[MessageRecord]:
        """Every stored message in arrival order (optionally of one conversation); with
        ``verified=False`` only those whose sender is still to be checked."""
        with self._txn() as conn:
            rows = conn.execute(
                sa.select(messages)
                .where(messages.c.seq > after, messages.c.verified == verified)
                .order_by(messages.c.seq)
            ).all()
        found = []
        for row in rows:
            content = _MessageBlob.decode(
                self._open(bytes(row.blob), b"message:" + bytes(row.message_id)),
                max_size=300 * 1024,
            )
            record = MessageRecord(
                seq=row.seq,
                message_id=bytes(row.message_id),
                outgoing=bool(row.outgoing),
                state=MessageState(row.state),
                sent_at=row.sent_at,
                sender=content.sender,
                recipient=content.recipient,
                text=content.text,
                sender_device=content.sender_device,
                verified=bool(row.verified),
            )
            if peer is None or record.peer == peer:
                found.append(record)
        return found

    def mark_verified(self, message_id: bytes) -> None:
        with self._txn() as conn:
            conn.execute(
                messages.update().where(messages.c.message_id == message_id).values(verified=True)
            )

    def delete_message(self, message_id: bytes) -> None:
        with self._txn() as conn:
            conn.execute(messages.delete().where(messages.c.message_id == message_id))

    def delete_messages_before(self, sent_before: int) -> int:
        """Retention: delete messages sent before ``sent_before`` (Unix ms), with any sealed
        copies still waiting to go out; return how many."""
        with self._txn() as conn:
            done = conn.execute(messages.delete().where(messages.c.sent_at < sent_before))
        return int(done.rowcount)

    # --- commands carried out ---------------------------------------------------------------

    def command_done(self, command_id: bytes) -> bool:
        """Whether this command was carried out already (commands are idempotent)."""
        with self._txn() as conn:
            row = conn.execute(
                sa.select(done_commands.c.command_id).where(
                    done_commands.c.command_id == command_id
                )
            ).first()
        return row is not None

    def mark_command_done(self, command_id: bytes, now: int) -> None:
        with self._txn() as conn:
            conn.execute(
                sqlite_dialect.insert(done_commands)
                .values(command_id=command_id, done_at=now)
                .on_conflict_do_nothing()
            )

    def advance_state(
        self, message_ids: list[bytes], state: MessageState, *, to: str | None = None
    ) -> int:
        """Move messages forward to ``state`` (never back); return how many changed. With
        ``to``, only our outgoing messages to that person move."""
        if not message_ids:
            return 0
        where = [messages.c.message_id.in_(message_ids), messages.c.state < int(state)]
        if to is not None:
            where += [messages.c.outgoing.is_(True), messages.c.peer_tag == self._tag(to)]
        with self._txn() as conn:
            done = conn.execute(messages.update().where(*where).values(state=int(state)))
        return int(done.rowcount)

    # --- outbox ---------------------------------------------------------------------------

    def queue_envelopes(self, envelopes: list[bytes]) -> list[int]:
        """Put sealed envelopes (receipts) in the outbox; return their sequence numbers."""
        with self._txn() as conn:
            return [int(conn.execute(_INSERT_OUTBOX, {"envelope": e}).one()[0]) for e in envelopes]

    def outbox(self) -> list[tuple[int, bytes]]:
        """``(seq, sealed envelope)`` waiting to be sent (receipts), oldest first."""
        with self._txn() as conn:
            rows = conn.execute(sa.select(outbox).order_by(outbox.c.seq)).all()
        return [(row.seq, bytes(row.envelope)) for row in rows]

    def sent(self, seqs: list[int]) -> None:
        """The relay holds these outbox entries durably: drop them."""
        if seqs:
            with self._txn() as conn:
                conn.execute(_DELETE_OUTBOX, [{"seq": seq} for seq in seqs])

    # --- directory cache ------------------------------------------------------------------

    def _tag(self, user: str) -> bytes:
        # Rows are looked up by a keyed hash, so the file does not list who one talks to
        # (directory entries; the other person of each message).
        key = self._require_key()
        return hashlib.blake2b(user.encode(), key=key, digest_size=16).digest()

    def cache_entry(self, user: str, entry: bytes, expires_at: int) -> None:
        tag = self._tag(user)
        blob = self._seal(entry, b"directory:" + tag)
        with self._txn() as conn:
            conn.execute(
                sqlite_dialect.insert(directory)
                .values(tag=tag, expires_at=expires_at, blob=blob)
                .on_conflict_do_update(
                    index_elements=["tag"], set_={"expires_at": expires_at, "blob": blob}
                )
            )

    def cached_entry(self, user: str, *, now: int) -> bytes | None:
        """The cached encoded entry for ``user`` if it has not expired (``now`` in seconds)."""
        tag = self._tag(user)
        with self._txn() as conn:
            row = conn.execute(
                sa.select(directory.c.blob).where(
                    directory.c.tag == tag, directory.c.expires_at > now
                )
            ).first()
        return None if row is None else self._open(bytes(row[0]), b"directory:" + tag)

    def forget_entry(self, user: str) -> None:
        tag = self._tag(user)
        with self._txn() as conn:
            conn.execute(directory.delete().where(directory.c.tag == tag))

    # --- prekeys --------------------------------------------------------------------------

    def add_prekey(self, prekey_id: int, seed: bytes, *, created_at: int) -> None:
        blob = self._seal(seed, b"prekey:%d" % prekey_id)
        with self._txn() as conn:
            conn.execute(
                prekeys.insert().values(prekey_id=prekey_id, created_at=created_at, blob=blob)
            )

    def prekey_seed(self, prekey_id: int) -> bytes | None:
        with self._txn() as conn:
            row = conn.execute(
                sa.select(prekeys.c.blob).where(prekeys.c.prekey_id == prekey_id)
            ).first()
        return None if row is None else self._open(bytes(row[0]), b"prekey:%d" % prekey_id)

    def prekeys(self) -> list[tuple[int, int, int | None]]:
        """``(prekey id, created_at, retire_at)`` of every private prekey kept, newest first."""
        with self._txn() as conn:
            rows = conn.execute(
                sa.select(prekeys.c.prekey_id, prekeys.c.created_at, prekeys.c.retire_at).order_by(
                    prekeys.c.created_at.desc(), prekeys.c.prekey_id.desc()
                )
            ).all()
        return [(row[0], row[1], row[2]) for row in rows]

    def retire_prekeys(self, keep: int, retire_at: int) -> None:
        """Mark every prekey but ``keep`` for deletion at ``retire_at`` (if not marked)."""
        with self._txn() as conn:
            conn.execute(
                prekeys.update()
                .where(prekeys.c.prekey_id != keep, prekeys.c.retire_at.is_(None))
                .values(retire_at=retire_at)
            )

    def delete_retired_prekeys(self, now: int) -> int:
        """Delete private prekeys past their retirement: forward secrecy for what was sealed
        to them."""
        with self._txn() as conn:
            done = conn.execute(
                prekeys.delete().where(prekeys.c.retire_at.is_not(None), prekeys.c.retire_at <= now)
            )
        return int(done.rowcount)


# Statements built once (SQLAlchemy then reuses their compiled form): the receive path runs
# them for every message.
_INSERT_SEEN = sqlite_dialect.insert(seen).on_conflict_do_nothing().returning(seen.c.message_id)
_PRUNE_SEEN = seen.delete().where(seen.c.sent_at < sa.bindparam("horizon"))
_INSERT_MESSAGE = sqlite_dialect.insert(messages).on_conflict_do_nothing().returning(messages.c.seq)
_INSERT_OUTBOX = outbox.insert().returning(outbox.c.seq)
_DELETE_OUTBOX = outbox.delete().where(outbox.c.seq == sa.bindparam("seq"))
_MARK_SENT = (
    messages.update()
    .where(messages.c.message_id == sa.bindparam("mid"))
    .values(
        unsent=None,
        state=sa.case(
            (messages.c.state < int(MessageState.SENT), int(MessageState.SENT)),
            else_=messages.c.state,
        ),
    )
)
_PRUNE_EVERY_MS = 60_000


def _open_db(home: Path) -> Database:
    return Database.open(str(home / "device.db"), component=COMPONENT, migrations=MIGRATIONS)


def _wrap_boot(
    boot_key: bytes, passcode: str, params: Argon2Params, random: Callable[[int], bytes]
) -> bytes:
    passcode_key = derive_passcode_key(passcode, params, purpose=_BOOT_PURPOSE)
    return seal_at_rest(
        passcode_key, boot_key, purpose=_BOOT_PURPOSE, context=b"boot-key", random=random
    )


def _storage_key(boot_key: bytes, remote_secret: bytes) -> bytes:
    """The key that wraps the data key: neither the passcode nor the server alone gives it."""
    return hkdf(boot_key + remote_secret, purpose=_STORAGE_PURPOSE)


def _read_key_file(home: Path) -> _KeyFile:
    try:
        data = (home / "device.key").read_bytes()
    except OSError as exc:
        raise StorageError(f"cannot read {home / 'device.key'}: {exc.strerror}") from None
    try:
        return _KeyFile.decode(data, max_size=_MAX_KEY_FILE)
    except DecodeError as exc:
        raise StorageError(f"{home / 'device.key'} is damaged ({exc.reason})") from None
