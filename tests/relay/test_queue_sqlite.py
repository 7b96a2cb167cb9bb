"""What only the embedded backend promises: WAL with ``synchronous=FULL``, group commit, a
versioned schema that refuses what it does not know, SQLite errors as ``StorageError``, one
owner per store, and durability through ``kill -9``."""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from sealwire.errors import QueueFull, StorageError
from sealwire.relay import queue_schema
from sealwire.relay.backends.base import QueueLimits, StoredEnvelope
from sealwire.relay.backends.sqlite import APPLICATION_ID, SCHEMA_VERSION, SqliteBackend
from sealwire.relay.queue_schema import QueueMigration
from tests.relay.conftest import RecordingListener, run

ALICE = b"A" * 32
ORG = b"organisation"


async def opened(path: Path, limits: QueueLimits | None = None, **kwargs: Any) -> SqliteBackend:
    backend = SqliteBackend(path, limits or QueueLimits(), **kwargs)
    await backend.start(RecordingListener())
    return backend


async def put(backend: SqliteBackend, envelope: bytes, recipient: bytes = ALICE) -> StoredEnvelope:
    return await backend.enqueue(recipient, envelope, accepted_at=1, sender_organisation=ORG)


def in_writer(backend: SqliteBackend, sql: str) -> Any:
    """Run one statement on the writer's own connection (inside a batch transaction)."""
    return backend._write("test", lambda txn: txn.cursor.execute(sql).fetchone())


def test_wal_synchronous_full_and_busy_timeout_are_set(tmp_path: Path) -> None:
    async def body() -> None:
        backend = await opened(tmp_path / "relay.db")
        try:
            assert await in_writer(backend, "PRAGMA synchronous") == (2,)  # FULL
            assert await in_writer(backend, "PRAGMA busy_timeout") == (5000,)
            assert await in_writer(backend, "PRAGMA journal_mode") == ("wal",)
        finally:
            await backend.close()

    run(body())
    with sqlite3.connect(tmp_path / "relay.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_new_store_has_current_schema_version(tmp_path: Path) -> None:
    async def body() -> None:
        await (await opened(tmp_path / "relay.db")).close()
        # Reopening an up-to-date store migrates nothing.
        await (await opened(tmp_path / "relay.db")).close()

    run(body())
    connection = sqlite3.connect(tmp_path / "relay.db")
    try:
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert connection.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
    finally:
        connection.close()


def test_a_later_version_migrates_by_appending_a_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "relay.db"

    async def body() -> None:
        backend = await opened(path)
        try:
            await put(backend, b"kept")
        finally:
            await backend.close()
        later = QueueMigration(SCHEMA_VERSION + 1, "later", ("CREATE TABLE added_later (x BLOB)",))
        monkeypatch.setattr(queue_schema, "MIGRATIONS", (*queue_schema.MIGRATIONS, later))
        backend = await opened(path)
        try:
            assert [
                s.envelope for s in await backend.pending(ALICE, after=None, limit=9, now=2)
            ] == [b"kept"]
        finally:
            await backend.close()

    run(body())
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
        assert connection.execute("SELECT count(*) FROM added_later").fetchone() == (0,)
    finally:
        connection.close()
    # ...and this version refuses the upgraded store.
    monkeypatch.undo()
    with pytest.raises(StorageError, match="newer"):
        run(opened(path))


def test_group_commit_batches_concurrent_writes(tmp_path: Path) -> None:
    async def body() -> None:
        backend = await opened(tmp_path / "relay.db", QueueLimits(max_count=10_000))
        try:
            before = backend.commits
            stored = await asyncio.gather(*(put(backend, b"%d" % i) for i in range(1000)))
            assert len({s.delivery_id for s in stored}) == 1000
            assert backend.commits - before <= 50  # typically 2 or 3

            # Acknowledgements share transactions too.
            before = backend.commits
            await asyncio.gather(*(backend.acknowledge(ALICE, [s.delivery_id]) for s in stored))
            assert backend.commits - before <= 50
            assert await backend.depth() == (0, 0)
        finally:
            await backend.close()

    run(body())


def test_batch_max_bounds_a_transaction(tmp_path: Path) -> None:
    async def body() -> None:
        backend = await opened(tmp_path / "relay.db", batch_max=10)
        try:
            before = backend.commits
            await asyncio.gather(*(put(backend, b"%d" % i) for i in range(200)))
            assert backend.commits - before >= 20
        finally:
            await backend.close()

    run(body())


def test_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.execute("CREATE TABLE from_the_future (x)")
    connection.commit()
    connection.close()

    with pytest.raises(StorageError, match="newer than this Sealwire knows"):
        run(opened(path))
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
    finally:
        connection.close()


def test_database_of_another_program_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE accounts (name TEXT)")
    connection.commit()
    connection.close()

    with pytest.raises(StorageError, match="another program"):
        run(opened(path))
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    finally:
        connection.close()


def test_corrupt_file_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    path.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(StorageError) as caught:
        run(opened(path))
    assert isinstance(caught.value.__cause__, sqlite3.Error)


def test_missing_directory_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        run(opened(tmp_path / "no such directory" / "relay.db"))


def test_one_backend_per_store(tmp_path: Path) -> None:
    async def body() -> None:
        first = await opened(tmp_path / "relay.db")
        try:
            with pytest.raises(StorageError, match="in use"):
                await opened(tmp_path / "relay.db")
            await put(first, b"still works")
        finally:
            await first.close()
        second = await opened(tmp_path / "relay.db")
        try:
            assert await second.depth() == (1, len(b"still works"))
        finally:
            await second.close()

    run(body())


def test_registering_another_root_keeps_the_first(tmp_path: Path) -> None:
    async def body() -> None:
        backend = await opened(tmp_path / "relay.db")
        try:
            await backend.register(ORG, b"first root", b"S" * 32)
            with pytest.raises(StorageError, match="another root"):
                await backend.register(ORG, b"second root", b"T" * 32)
            assert await backend.organisations() == {ORG: b"first root"}
            assert not await backend.is_registered_server(b"T" * 32)
        finally:
            await backend.close()
        backend = await opened(tmp_path / "relay.db")
        try:
            assert await backend.organisations() == {ORG: b"first root"}
            assert not await backend.is_registered_server(b"T" * 32)
        finally:
            await backend.close()

    run(body())


def test_full_disk_fails_only_the_write_that_does_not_fit(tmp_path: Path) -> None:
    async def body() -> None:
        backend = await opened(tmp_path / "relay.db")
        try:
            await put(backend, b"warm-up")
            (pages,) = await in_writer(backend, "PRAGMA page_count")
            await in_writer(backend, f"PRAGMA max_page_count = {pages + 16}")
            small = [put(backend, b"s%03d" % i) for i in range(10)]
            big = put(backend, b"B" * 200_000)
            results = await asyncio.gather(*small[:5], big, *small[5:], return_exceptions=True)
            failure = results[5]
            assert isinstance(failure, StorageError) and not isinstance(failure, QueueFull)
            assert isinstance(failure.__cause__, sqlite3.Error)
            assert all(isinstance(r, StoredEnvelope) for r in results[:5] + results[6:])
            # Quota and depth counted only what was stored.
            assert await backend.depth() == (11, len(b"warm-up") + 10 * 4)
        finally:
            await backend.close()
        backend = await opened(tmp_path / "relay.db")
        try:
            assert await backend.depth() == (11, len(b"warm-up") + 10 * 4)
        finally:
            await backend.close()

    run(body())


def test_unstorable_value_is_a_storage_error(tmp_path: Path) -> None:
    async def body() -> None:
        backend = await opened(tmp_path / "relay.db")
        try:
            with pytest.raises(StorageError):
                await backend.enqueue(ALICE, b"x", accepted_at=2**64, sender_organisation=ORG)
            await put(backend, b"next one is fine")
            assert await backend.depth() == (1, len(b"next one is fine"))
        finally:
            await backend.close()

    run(body())


def test_cancelled_enqueue_does_not_disturb_the_batch(tmp_path: Path) -> None:
    async def body() -> None:
        backend = await opened(tmp_path / "relay.db")
        try:
            tasks = [asyncio.ensure_future(put(backend, b"%d" % i)) for i in range(50)]
            await asyncio.sleep(0)
            tasks[10].cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert isinstance(results[10], asyncio.CancelledError)
            assert sum(isinstance(r, StoredEnvelope) for r in results) == 49
        finally:
            await backend.close()

    run(body())


def test_failing_listener_does_not_break_the_backend(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(RecordingListener):
        def envelope_queued(self, recipient: bytes, stored: object = None) -> None:
            raise RuntimeError("listener bug")

    async def body() -> None:
        backend = SqliteBackend(tmp_path / "relay.db")
        await backend.start(Broken())
        try:
            await put(backend, b"one")
            await put(backend, b"two")
            assert await backend.depth() == (2, 6)
        finally:
            await backend.close()

    with caplog.at_level(logging.ERROR, logger="sealwire.relay.backends.sqlite"):
        run(body())
    assert "listener" in caplog.text
    assert "A" * 32 not in caplog.text


CRASHING_RELAY = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from sealwire.relay.backends.base import QueueLimits
    from sealwire.relay.backends.sqlite import SqliteBackend

    class Quiet:
        def envelope_queued(self, recipient, stored=None): pass
        def addresses_revoked(self, organisation, addresses): pass
        def organisation_registered(self, organisation, root): pass
        def notice_queued(self, organisation): pass

    async def main():
        backend = SqliteBackend(Path(sys.argv[1]), QueueLimits(max_count=10**9))
        await backend.start(Quiet())

        async def sender(n):
            i = 0
            while True:
                stored = await backend.enqueue(
                    bytes([n]) * 32, b"%d/%d:" % (n, i) * 40,
                    accepted_at=1, sender_organisation=b"org",
                )
                # Printed only once enqueue() returned: the envelope must survive from here.
                sys.stdout.write("%d %s\\n" % (n, stored.delivery_id.hex()))
                sys.stdout.flush()
                i += 1

        await asyncio.gather(*(sender(n) for n in range(8)))

    asyncio.run(main())
    """
)


def test_accepted_envelopes_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    printed: list[tuple[bytes, bytes]] = []
    process = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RELAY, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        while len(printed) < 2000 and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            n, hex_id = line.split()
            printed.append((bytes([int(n)]) * 32, bytes.fromhex(hex_id.decode())))
    finally:
        process.send_signal(signal.SIGKILL)
        rest, errors = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, errors.decode()
    for line in rest.splitlines(keepends=True):
        if line.endswith(b"\n"):  # a line cut short by the kill proves nothing
            n, hex_id = line.split()
            printed.append((bytes([int(n)]) * 32, bytes.fromhex(hex_id.decode())))
    assert len(printed) >= 2000, errors.decode()

    async def body() -> None:
        backend = await opened(path)
        try:
            stored: set[tuple[bytes, bytes]] = set()
            for n in range(8):
                recipient = bytes([n]) * 32
                for s in await backend.pending(recipient, after=None, limit=10**6, now=2):
                    assert s.envelope.startswith(b"%d/" % n)
                    stored.add((recipient, s.delivery_id))
            missing = [p for p in printed if p not in stored]
            assert missing == []
            newer = await put(backend, b"after the crash", bytes([0]) * 32)
            assert newer.delivery_id > max(i for _, i in printed)
        finally:
            await backend.close()

    run(body())
