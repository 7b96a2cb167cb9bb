"""The embedded relay backend: one relay process, one SQLite file in WAL mode.

Writes go through ONE writer thread that owns the only writing connection. Callers on the event
loop put work items (enqueue, acknowledge, and the rarer operations) on an in-memory queue; the
writer takes everything waiting (up to ``batch_max`` items), runs it in ONE transaction, commits
(one fsync) and hands every caller its result in ONE loop callback. This is group commit: under
load hundreds of enqueues share one fsync, so durability costs latency, not throughput.

Reads (:meth:`SqliteBackend.pending`, :meth:`SqliteBackend.notices`) run on a second thread with
its own connection, which WAL lets read while the writer writes. Organisations, registered
servers and revocations are cached in memory (loaded at start, updated on the loop after each
commit), so :meth:`~SqliteBackend.is_revoked` and friends answer without a thread hop.

Quotas are exact: the writer keeps every recipient's queued count and bytes in memory (loaded
at start), stages the changes of a batch and applies them only once the batch committed.

The store holds only what the relay is given: recipient addresses, sealed envelopes, times and
organisation ids. Nothing here logs envelope bytes or addresses.

One process at a time: a second process (or a second backend in this process) opening the same
file is refused with :class:`~sealwire.errors.StorageError`, because the in-memory quota and
cache state would go stale (a lock file next to the database, ``<name>-lock``, holds an
exclusive ``flock`` for the life of the backend; the kernel drops it if the process dies).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from sealwire.errors import LocalProtocolError, QueueFull, StorageError
from sealwire.relay.backends.base import (
    BackendListener,
    ExpiryNotice,
    QueueLimits,
    RelayBackend,
    StoredEnvelope,
)
from sealwire.relay.queue_schema import APPLICATION_ID, SCHEMA_VERSION, check_schema, migrate

from ._sqlite_io import (
    _ID_SIZE,
    _STOP,
    _Acknowledge,
    _as_storage_error,
    _connect,
    _Enqueue,
    _first_id_after,
    _int64,
    _Item,
    _lock,
    _next_batch,
    _Operation,
    _read_notices,
    _read_pending,
    _resolve,
    _rowids,
    _signal,
    _storage_errors,
    _Transaction,
    _unanswered,
)

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "SqliteBackend"]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

_DEFAULT_LIMITS: Final = QueueLimits()
_EXPIRE_CHUNK: Final = 256
"""Envelopes expired per transaction (envelopes are at most 256 KiB: 64 MiB at most in memory)."""
_MIN_SQLITE: Final = (3, 35, 0)
"""``DELETE ... RETURNING`` (acknowledge keeps the byte quota exact with one statement)."""

_INSERT_ENVELOPE: Final = (
    "INSERT INTO envelopes (recipient, envelope, accepted_at, sender_organisation)"
    " VALUES (?, ?, ?, ?)"
)
_DELETE_ENVELOPES: Final = (
    "DELETE FROM envelopes WHERE recipient = ? AND id IN ({marks}) RETURNING length(envelope)"
)
_DELETE_CHUNK: Final = 256
"""Ids per DELETE statement (well under SQLite's bound on parameters)."""


class SqliteBackend(RelayBackend):
    """The embedded :class:`~sealwire.relay.backends.base.RelayBackend`: SQLite, WAL, group commit.

    Args:
        path: the database file (created with its schema if missing). Next to it SQLite keeps
            ``-wal`` and ``-shm`` files and this backend a ``-lock`` file.
        limits: per-address quotas and envelope lifetime.
        batch_max: most work items one transaction takes.

    Attributes:
        commits: transactions committed by the writer since :meth:`start` (for metrics: with
            group commit it grows far slower than the number of writes).

    Registering an organisation again with a *different* root keeps the first root and raises
    :class:`~sealwire.errors.StorageError` (the service refuses that server). A server address
    keeps the organisation it first registered under.
    """

    def __init__(
        self, path: Path, limits: QueueLimits = _DEFAULT_LIMITS, *, batch_max: int = 512
    ) -> None:
        if batch_max < 1:
            raise ValueError("batch_max must be positive")
        self.path = Path(path)
        self.limits = limits
        self.commits = 0
        self._batch_max = batch_max
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: BackendListener | None = None
        self._queue: queue.SimpleQueue[_Item | object] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._closing = False
        # Writer thread only.
        self._connection: sqlite3.Connection | None = None
        self._usage: dict[bytes, list[int]] = {}
        self._total = [0, 0]
        self._lock_fd: int | None = None
        # Reader thread only.
        self._read_connection: sqlite3.Connection | None = None
        # Loop thread (filled by the writer before start() returns, then only by the loop).
        self._depth = (0, 0)
        self._organisations: dict[bytes, bytes] = {}
        self._servers: dict[bytes, bytes] = {}
        self._revoked: set[tuple[bytes, bytes]] = set()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, listener: BackendListener) -> None:
        """Open the store (creating it if needed) and start the writer and reader threads.

        Raises:
            StorageError: the file cannot be opened, is not a Sealwire relay store, has a newer
                schema than this code knows, or another backend holds it.
            LocalProtocolError: this backend was already started.
        """
        if self._loop is not None:
            raise LocalProtocolError("SqliteBackend.start called twice")
        self._loop = asyncio.get_running_loop()
        self._listener = listener
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._writer = threading.Thread(
            target=self._writer_main, args=(ready,), name="sealwire-sqlite-writer", daemon=True
        )
        self._writer.start()
        try:
            with _storage_errors("open"):
                await asyncio.wrap_future(ready)
            self._reader = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="sealwire-sqlite-reader"
            )
            with _storage_errors("open"):
                await self._loop.run_in_executor(self._reader, self._open_reader)
        except BaseException:
            self._closing = True
            await self._shutdown()
            raise

    async def close(self) -> None:
        """Flush the writes already submitted (their callers get their results), then close.
        Later calls raise :class:`~sealwire.errors.StorageError`. Closing twice is harmless."""
        if self._closing or self._loop is None:
            self._closing = True
            return
        self._closing = True
        await self._shutdown()

    async def _shutdown(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            self._queue.put(_STOP)
            await asyncio.wrap_future(self._stopped)
        if self._reader is not None:
            assert self._loop is not None
            with contextlib.suppress(sqlite3.Error):
                await self._loop.run_in_executor(self._reader, self._close_reader)
            self._reader.shutdown(wait=False)
            self._reader = None

    # --- queues ---------------------------------------------------------------------------

    async def enqueue(
        self, recipient: bytes, envelope: bytes, *, accepted_at: int, sender_organisation: bytes
    ) -> StoredEnvelope:
        """See :meth:`RelayBackend.enqueue`. Returns after the commit that made it durable."""
        loop = self._open_loop()
        if len(envelope) > self.limits.max_bytes:
            raise QueueFull("envelope is larger than an address's queue may hold")
        future: asyncio.Future[StoredEnvelope] = loop.create_future()
        self._queue.put(_Enqueue(recipient, envelope, accepted_at, sender_organisation, future))
        try:  # not _storage_errors(): this is the hot path, and a plain try costs nothing
            return await future
        except sqlite3.Error as exc:
            raise StorageError(f"relay store: enqueue failed: {exc}") from exc

    def enqueue_later(
        self, recipient: bytes, envelope: bytes, *, accepted_at: int, sender_organisation: bytes
    ) -> asyncio.Future[StoredEnvelope]:
        """See :meth:`RelayBackend.enqueue_later`: the writer's own future, no task."""
        loop = self._open_loop()
        future: asyncio.Future[StoredEnvelope] = loop.create_future()
        if len(envelope) > self.limits.max_bytes:
            future.set_exception(QueueFull("envelope is larger than an address's queue may hold"))
            return future
        self._queue.put(_Enqueue(recipient, envelope, accepted_at, sender_organisation, future))
        return future

    async def pending(
        self, recipient: bytes, *, after: bytes | None, limit: int, now: int
    ) -> list[StoredEnvelope]:
        """See :meth:`RelayBackend.pending`."""
        if limit < 1:
            self._open_loop()
            return []
        first = 0 if after is None else _first_id_after(after)
        cutoff = _int64(now - self.limits.lifetime_ms)
        return await self._read(
            _read_pending, self._read_connection, recipient, first, cutoff, _int64(limit)
        )

    async def acknowledge(self, recipient: bytes, delivery_ids: Sequence[bytes]) -> None:
        """See :meth:`RelayBackend.acknowledge`. Ids this backend never issued are ignored."""
        loop = self._open_loop()
        ids = _rowids(delivery_ids)
        if not ids:
            return
        future: asyncio.Future[None] = loop.create_future()
        self._queue.put(_Acknowledge(recipient, ids, future))
        try:
            await future
        except sqlite3.Error as exc:
            raise StorageError(f"relay store: acknowledge failed: {exc}") from exc

    async def expire(self, now: int) -> int:
        """See :meth:`RelayBackend.expire`. Works in transactions of a few hundred envelopes,
        each deleting them and keeping their notices together, so enqueues interleave."""
        cutoff = _int64(now - self.limits.lifetime_ms)
        expired = 0
        organisations: dict[bytes, None] = {}
        try:
            while True:
                count, chunk_organisations = await self._write(
                    "expire", functools.partial(self._expire_chunk, cutoff)
                )
                expired += count
                organisations.update(dict.fromkeys(chunk_organisations))
                if count < _EXPIRE_CHUNK:
                    break
        finally:  # the notices of committed chunks are waiting even if a later chunk failed
            assert self._listener is not None
            for organisation in organisations:
                _signal(self._listener.notice_queued, organisation)
        return expired

    async def depth(self) -> tuple[int, int]:
        """See :meth:`RelayBackend.depth`; exact, from counters kept by the writer."""
        self._open_loop()
        return self._depth

    # --- expiry notices -------------------------------------------------------------------

    async def notices(self, organisation: bytes, *, limit: int) -> list[ExpiryNotice]:
        """See :meth:`RelayBackend.notices`."""
        if limit < 1:
            self._open_loop()
            return []
        return await self._read(_read_notices, self._read_connection, organisation, _int64(limit))

    async def clear_notices(self, organisation: bytes, notice_ids: Sequence[bytes]) -> None:
        """See :meth:`RelayBackend.clear_notices`. Unknown ids are ignored."""
        ids = [(organisation, rowid) for rowid in _rowids(notice_ids)]
        if not ids:
            self._open_loop()
            return

        def run(txn: _Transaction) -> None:
            txn.cursor.executemany("DELETE FROM notices WHERE organisation = ? AND id = ?", ids)

        await self._write("clear notices", run)

    # --- organisations and revocations ----------------------------------------------------

    async def register(self, organisation: bytes, root: bytes, server: bytes) -> None:
        """See :meth:`RelayBackend.register`.

        Raises:
            StorageError: ``organisation`` is already registered with another root (the first
                root stays; nothing is recorded for ``server``).
        """

        def run(txn: _Transaction) -> None:
            row = txn.cursor.execute(
                "SELECT root FROM organisations WHERE organisation = ?", (organisation,)
            ).fetchone()
            if row is not None and row[0] != root:
                raise StorageError("organisation already registered with another root")
            txn.cursor.execute(
                "INSERT OR IGNORE INTO organisations (organisation, root) VALUES (?, ?)",
                (organisation, root),
            )
            txn.cursor.execute(
                "INSERT OR IGNORE INTO servers (address, organisation) VALUES (?, ?)",
                (server, organisation),
            )
            txn.updates.append(functools.partial(self._registered, organisation, root, server))

        await self._write("register", run)
        assert self._listener is not None
        _signal(self._listener.organisation_registered, organisation, root)

    async def organisations(self) -> dict[bytes, bytes]:
        """See :meth:`RelayBackend.organisations` (from memory)."""
        self._open_loop()
        return dict(self._organisations)

    async def is_registered_server(self, server: bytes) -> bool:
        """See :meth:`RelayBackend.is_registered_server` (from memory)."""
        self._open_loop()
        return server in self._servers

    async def revoke(self, organisation: bytes, addresses: Sequence[bytes]) -> None:
        """See :meth:`RelayBackend.revoke`."""
        rows = [(organisation, address) for address in dict.fromkeys(addresses)]

        def run(txn: _Transaction) -> None:
            txn.cursor.executemany(
                "INSERT OR IGNORE INTO revocations (organisation, address) VALUES (?, ?)", rows
            )
            txn.updates.append(functools.partial(self._revoked.update, rows))

        if rows:
            await self._write("revoke", run)
        else:
            self._open_loop()
        assert self._listener is not None
        _signal(self._listener.addresses_revoked, organisation, list(addresses))

    async def is_revoked(self, organisation: bytes, address: bytes) -> bool:
        """See :meth:`RelayBackend.is_revoked` (from memory)."""
        self._open_loop()
        return (organisation, address) in self._revoked

    def revoked_now(self, organisation: bytes, address: bytes) -> bool:
        """See :meth:`RelayBackend.revoked_now`."""
        return (organisation, address) in self._revoked

    # --- the loop side of the threads -------------------------------------------------------

    def _open_loop(self) -> asyncio.AbstractEventLoop:
        if self._closing or self._loop is None:
            raise StorageError("relay store is closed")
        return self._loop

    async def _write(self, what: str, run: Callable[[_Transaction], _T]) -> _T:
        future: asyncio.Future[_T] = self._open_loop().create_future()
        self._queue.put(_Operation(run, future))
        with _storage_errors(what):
            return await future

    async def _read(self, read: Callable[..., _T], *args: Any) -> _T:
        loop = self._open_loop()
        assert self._reader is not None
        with _storage_errors("read"):
            return await loop.run_in_executor(self._reader, read, *args)

    def _registered(self, organisation: bytes, root: bytes, server: bytes) -> None:
        self._organisations.setdefault(organisation, root)
        self._servers.setdefault(server, organisation)

    def _deliver(
        self,
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]],
        updates: list[Callable[[], None]],
        queued: Sequence[StoredEnvelope],
    ) -> None:
        """On the loop, once per committed (or failed) batch: update the caches, resume the
        callers, then hand the listener every stored envelope, in delivery-id order."""
        for update in updates:
            update()
        _resolve(results)
        if queued and self._listener is not None:
            envelope_queued = self._listener.envelope_queued
            for stored in queued:
                _signal(envelope_queued, stored.recipient, stored)

    # --- the writer thread ----------------------------------------------------------------

    def _writer_main(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            self._open_writer()
        except BaseException as exc:
            self._close_writer()
            ready.set_exception(exc)
            self._stopped.set_result(None)
            return
        ready.set_result(None)
        try:
            self._write_until_stopped()
        except BaseException:
            _log.exception("relay store writer stopped by an internal error")
            raise
        finally:
            self._closing = True  # the writer is gone: later calls raise StorageError
            self._close_writer()
            self._fail_leftovers()
            self._stopped.set_result(None)

    def _fail_leftovers(self) -> None:
        """Answer whatever is still queued once the writer stops (only after an internal
        error: close() puts its stop marker after every write it lets in)."""
        results = _unanswered(self._queue, StorageError("relay store is closed"))
        if results:
            self._hand_out(results, [], ())

    def _write_until_stopped(self) -> None:
        while True:
            batch, stop = _next_batch(self._queue, self._batch_max)
            if batch:
                self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Item]) -> None:
        """Run ``batch`` in one transaction and hand out the results. If the transaction fails
        (a full disk, an I/O error), run each item alone so that one cannot fail the others
        and every caller gets its own answer."""
        assert self._connection is not None
        txn = _Transaction(self._connection.cursor())
        # A batch of acknowledgements only is committed without its own fsync: the next
        # durable commit (or a WAL checkpoint) carries it to disk. Losing it in a power cut only
        # means those envelopes are delivered again, and recipients drop duplicates by id.
        relaxed = all(isinstance(item, _Acknowledge) for item in batch)
        try:
            if relaxed:
                txn.cursor.execute("PRAGMA synchronous=NORMAL")
            txn.cursor.execute("BEGIN IMMEDIATE")
            for item in batch:
                self._apply(txn, item)
            txn.cursor.execute("COMMIT")
            if relaxed:
                txn.cursor.execute("PRAGMA synchronous=FULL")
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                self._connection.rollback()
                self._connection.execute("PRAGMA synchronous=FULL")
            if len(batch) > 1:
                for item in batch:
                    self._commit([item])
                return
            _log.warning("relay store write failed: %s", exc.__class__.__name__)
            self._hand_out([(batch[0].future, None, _as_storage_error(exc))], [], ())
            return
        self.commits += 1
        for recipient, staged in txn.usage.items():
            if staged[0]:
                self._usage[recipient] = staged
            else:
                self._usage.pop(recipient, None)
        self._total[0] += txn.count_delta
        self._total[1] += txn.bytes_delta
        self._depth = (self._total[0], self._total[1])
        self._hand_out(txn.results, txn.updates, tuple(txn.queued))

    def _hand_out(
        self,
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]],
        updates: list[Callable[[], None]],
        queued: Sequence[StoredEnvelope],
    ) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            self._loop.call_soon_threadsafe(self._deliver, results, updates, queued)

    def _apply(self, txn: _Transaction, item: _Item) -> None:
        if isinstance(item, _Enqueue):
            size = len(item.envelope)
            usage = self._staged_usage(txn, item.recipient)
            if usage[0] >= self.limits.max_count or usage[1] + size > self.limits.max_bytes:
                txn.results.append((item.future, None, QueueFull("queue is full")))
                return
            txn.cursor.execute(
                _INSERT_ENVELOPE,
                (item.recipient, item.envelope, item.accepted_at, item.organisation),
            )
            rowid = txn.cursor.lastrowid
            assert rowid is not None
            usage[0] += 1
            usage[1] += size
            txn.count_delta += 1
            txn.bytes_delta += size
            stored = StoredEnvelope(
                rowid.to_bytes(_ID_SIZE, "big"), item.recipient, item.envelope, item.accepted_at
            )
            txn.results.append((item.future, stored, None))
            txn.queued.append(stored)
        elif isinstance(item, _Acknowledge):
            for start in range(0, len(item.ids), _DELETE_CHUNK):
                ids = item.ids[start : start + _DELETE_CHUNK]
                rows = txn.cursor.execute(
                    _DELETE_ENVELOPES.format(marks=",".join("?" * len(ids))),
                    (item.recipient, *ids),
                )
                for (size,) in rows.fetchall():
                    self._release(txn, item.recipient, size)
            txn.results.append((item.future, None, None))
        else:
            try:
                value = item.run(txn)
            except StorageError as refusal:
                txn.results.append((item.future, None, refusal))
            else:
                txn.results.append((item.future, value, None))

    def _staged_usage(self, txn: _Transaction, recipient: bytes) -> list[int]:
        usage = txn.usage.get(recipient)
        if usage is None:
            usage = list(self._usage.get(recipient, (0, 0)))
            txn.usage[recipient] = usage
        return usage

    def _release(self, txn: _Transaction, recipient: bytes, size: int) -> None:
        usage = self._staged_usage(txn, recipient)
        usage[0] -= 1
        usage[1] -= size
        txn.count_delta -= 1
        txn.bytes_delta -= size

    def _expire_chunk(self, cutoff: int, txn: _Transaction) -> tuple[int, list[bytes]]:
        rows = txn.cursor.execute(
            "SELECT id, recipient, envelope, accepted_at, sender_organisation FROM envelopes"
            " WHERE accepted_at <= ? ORDER BY accepted_at, id LIMIT ?",
            (cutoff, _EXPIRE_CHUNK),
        ).fetchall()
        if not rows:
            return 0, []
        txn.cursor.executemany(
            "INSERT INTO notices (organisation, recipient, digest, accepted_at)"
            " VALUES (?, ?, ?, ?)",
            [
                (organisation, recipient, hashlib.sha256(envelope).digest(), accepted_at)
                for _, recipient, envelope, accepted_at, organisation in rows
            ],
        )
        txn.cursor.executemany("DELETE FROM envelopes WHERE id = ?", [(row[0],) for row in rows])
        for _, recipient, envelope, _, _ in rows:
            self._release(txn, recipient, len(envelope))
        return len(rows), list(dict.fromkeys(row[4] for row in rows))

    def _open_writer(self) -> None:
        self._lock_fd = _lock(self.path)
        self._connection = connection = _connect(self.path)
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise StorageError(
                f"SQLite {sqlite3.sqlite_version} is too old for the relay store"
                f" (needs {'.'.join(map(str, _MIN_SQLITE))} or newer)"
            )
        version = check_schema(connection)
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError(f"relay store: cannot switch {self.path.name} to WAL mode")
        # In WAL mode synchronous=FULL fsyncs the WAL on every commit, so a committed enqueue
        # survives power loss as well as kill -9 (NORMAL survives only a process crash: the
        # last commits could be lost when the machine loses power).
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA journal_size_limit = 67108864")
        migrate(connection, version)

        for recipient, count, size in connection.execute(
            "SELECT recipient, count(*), sum(length(envelope)) FROM envelopes GROUP BY recipient"
        ):
            self._usage[recipient] = [count, size]
            self._total[0] += count
            self._total[1] += size
        self._depth = (self._total[0], self._total[1])
        self._organisations = dict(
            connection.execute("SELECT organisation, root FROM organisations").fetchall()
        )
        self._servers = dict(connection.execute("SELECT address, organisation FROM servers"))
        self._revoked = {
            (organisation, address)
            for organisation, address in connection.execute(
                "SELECT organisation, address FROM revocations"
            )
        }

    def _close_writer(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(sqlite3.Error):
                self._connection.close()
            self._connection = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # also releases the flock
            self._lock_fd = None

    # --- the reader thread ----------------------------------------------------------------

    def _open_reader(self) -> None:
        self._read_connection = _connect(self.path, read_only=True)

    def _close_reader(self) -> None:
        if self._read_connection is not None:
            self._read_connection.close()
            self._read_connection = None
