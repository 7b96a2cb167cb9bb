"""The plumbing of the embedded backend (:mod:`.sqlite`): the writer's work items and staged
transaction, the reader thread's queries, the lock file, connections, delivery-id encoding and
the translation of SQLite errors into :class:`~sealwire.errors.StorageError`."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import queue
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, cast

from sealwire.errors import StorageError
from sealwire.relay.backends.base import (
    ExpiryNotice,
    StoredEnvelope,
)

_log = logging.getLogger("sealwire.relay.backends.sqlite")

_ID_SIZE: Final = 8
"""Delivery and notice ids are the SQLite rowid as 8 big-endian bytes: they sort as bytes in
acceptance order."""
_MAX_ROWID: Final = 2**63 - 1
_BUSY_TIMEOUT_MS: Final = 5_000

_SELECT_PENDING: Final = (
    "SELECT id, envelope, accepted_at FROM envelopes"
    " WHERE recipient = ? AND id > ? AND accepted_at > ? ORDER BY id LIMIT ?"
)


class _Enqueue:
    __slots__ = ("accepted_at", "envelope", "future", "organisation", "recipient")

    def __init__(
        self,
        recipient: bytes,
        envelope: bytes,
        accepted_at: int,
        organisation: bytes,
        future: asyncio.Future[Any],
    ) -> None:
        self.recipient = recipient
        self.envelope = envelope
        self.accepted_at = accepted_at
        self.organisation = organisation
        self.future = future


class _Acknowledge:
    __slots__ = ("future", "ids", "recipient")

    def __init__(self, recipient: bytes, ids: list[int], future: asyncio.Future[Any]) -> None:
        self.recipient = recipient
        self.ids = ids
        self.future = future


class _Operation:
    """Any other write: ``run(txn)`` inside the batch's transaction. It may raise
    :class:`StorageError` *before writing anything* to refuse (the caller gets that error, the
    rest of the batch commits); any other exception aborts the batch."""

    __slots__ = ("future", "run")

    def __init__(self, run: Callable[[_Transaction], Any], future: asyncio.Future[Any]) -> None:
        self.run = run
        self.future = future


_Item = _Enqueue | _Acknowledge | _Operation
_STOP: Final = object()
"""Put on the writer queue by :meth:`SqliteBackend.close`: flush what came before, then exit."""


class _Transaction:
    """What one batch changed, staged until its commit: quota usage, and the work for the loop
    (cache updates before the callers resume, listener signals after)."""

    __slots__ = ("bytes_delta", "count_delta", "cursor", "queued", "results", "updates", "usage")

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self.cursor = cursor
        self.usage: dict[bytes, list[int]] = {}
        self.count_delta = 0
        self.bytes_delta = 0
        self.results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        self.updates: list[Callable[[], None]] = []
        self.queued: list[StoredEnvelope] = []


def _read_pending(
    connection: sqlite3.Connection | None, recipient: bytes, first: int, cutoff: int, limit: int
) -> list[StoredEnvelope]:
    """The reader thread: envelopes for ``recipient`` after rowid ``first``, not expired."""
    assert connection is not None
    # fetchall(): the read transaction ends here, so the next read sees the next commit.
    rows = connection.execute(_SELECT_PENDING, (recipient, first, cutoff, limit)).fetchall()
    return [
        StoredEnvelope(rowid.to_bytes(_ID_SIZE, "big"), recipient, envelope, accepted_at)
        for rowid, envelope, accepted_at in rows
    ]


def _read_notices(
    connection: sqlite3.Connection | None, organisation: bytes, limit: int
) -> list[ExpiryNotice]:
    """The reader thread: the oldest expiry notices of ``organisation``."""
    assert connection is not None
    rows = connection.execute(
        "SELECT id, recipient, digest, accepted_at FROM notices"
        " WHERE organisation = ? ORDER BY id LIMIT ?",
        (organisation, limit),
    ).fetchall()
    return [
        ExpiryNotice(rowid.to_bytes(_ID_SIZE, "big"), organisation, recipient, digest, at)
        for rowid, recipient, digest, at in rows
    ]


@contextlib.contextmanager
def _storage_errors(what: str) -> Iterator[None]:
    """The boundary: every SQLite error becomes a :class:`StorageError` (the service answers
    ``unavailable``). SQLite's messages name the failure, never the data."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StorageError(f"relay store: {what} failed: {exc}") from exc


def _as_storage_error(exc: Exception) -> Exception:
    """A write failed: SQLite's errors are translated by the caller (:func:`_storage_errors`);
    anything else (a value SQLite cannot store, such as a time beyond 64 bits) becomes a
    :class:`StorageError` here, so nothing else reaches the service."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, sqlite3.Error):
        translated = StorageError(f"relay store: write failed: {exc}")
        translated.__cause__ = exc
        return translated
    error = StorageError(f"relay store: cannot store this request ({exc.__class__.__name__})")
    error.__cause__ = exc
    return error


def _signal(method: Callable[..., None], *args: Any) -> None:
    """Call a listener method; a failing listener must not break the backend."""
    try:
        method(*args)
    except Exception:
        _log.exception("relay backend listener %s failed", getattr(method, "__name__", "?"))


def _int64(value: int) -> int:
    """``value`` within SQLite's INTEGER range (times and limits from the caller)."""
    return max(-_MAX_ROWID - 1, min(value, _MAX_ROWID))


def _rowids(ids: Sequence[bytes]) -> list[int]:
    """The rowids these delivery or notice ids name; any other bytes name nothing."""
    rowids = [int.from_bytes(i, "big") for i in ids if len(i) == _ID_SIZE]
    return [rowid for rowid in rowids if rowid <= _MAX_ROWID]


def _first_id_after(after: bytes) -> int:
    """The rowid above which every id is greater than ``after`` compared as bytes (a cursor
    normally is one of our 8-byte ids, but a client may send any bytes)."""
    if len(after) >= _ID_SIZE:
        # An 8-byte id equal to after[:8] is a prefix of a longer ``after``, hence smaller.
        return min(int.from_bytes(after[:_ID_SIZE], "big"), _MAX_ROWID)
    # A shorter ``after`` is smaller than every id starting with it: the first id greater is
    # ``after`` padded with zero bytes.
    return min(int.from_bytes(after.ljust(_ID_SIZE, b"\0"), "big") - 1, _MAX_ROWID)


def _lock(path: Path) -> int:
    lock_path = path.with_name(path.name + "-lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StorageError(f"relay store: cannot open {lock_path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StorageError(
                f"relay store {path.name} is in use by another relay backend;"
                " stop the other relay process first"
            ) from exc
        raise StorageError(f"relay store: cannot lock {lock_path}: {exc.strerror}") from exc
    return fd


def _connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; the writer issues BEGIN IMMEDIATE itself.
    connection = sqlite3.connect(path, isolation_level=None, cached_statements=64)
    try:
        connection.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        if read_only:
            connection.execute("PRAGMA query_only = ON")
    except BaseException:
        connection.close()
        raise
    return connection


def _next_batch(
    items: queue.SimpleQueue[_Item | object], batch_max: int
) -> tuple[list[_Item], bool]:
    """The writer thread: wait for work, then take what is waiting (at most ``batch_max``);
    also whether the stop marker came (nothing after it is taken)."""
    batch: list[_Item] = []
    item = items.get()
    while True:
        if item is _STOP:
            return batch, True
        batch.append(cast(_Item, item))
        if len(batch) >= batch_max:
            return batch, False
        try:
            item = items.get_nowait()
        except queue.Empty:
            return batch, False


def _unanswered(
    items: queue.SimpleQueue[_Item | object], error: BaseException
) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
    """Every work item still queued, each to be answered with ``error``."""
    results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
    while True:
        try:
            item = items.get_nowait()
        except queue.Empty:
            return results
        if isinstance(item, _Enqueue | _Acknowledge | _Operation):
            results.append((item.future, None, error))


def _resolve(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    """On the loop: give every waiting caller its result or error."""
    for future, value, error in results:
        if future.done():  # the caller was cancelled; what it sent may still be stored
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)
