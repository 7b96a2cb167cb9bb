"""Relay fixtures.

Backends: every :class:`~sealwire.relay.backends.base.RelayBackend` runs the contract suite
(``test_backend_contract.py``) through the ``backend_factory`` fixture. To add a backend, add
one entry to :data:`BACKENDS`: an ``async def make(store, limits) -> RelayBackend`` returning
an *unstarted* backend. Called again with the same ``store`` directory it must return a new
instance on the SAME durable state (a restart); a backend that keeps its state elsewhere
(a NATS stream) derives its names from ``store``, which is unique per test. A factory whose
service is unavailable calls ``pytest.skip``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sealwire.relay.backends.base import QueueLimits, RelayBackend, StoredEnvelope
from sealwire.relay.backends.sqlite import SqliteBackend

T = TypeVar("T")

BackendMaker = Callable[[Path, QueueLimits], Awaitable[RelayBackend]]


async def make_sqlite(store: Path, limits: QueueLimits) -> RelayBackend:
    return SqliteBackend(store / "relay.db", limits)


NATS_URL = os.environ.get("SEALWIRE_NATS_URL", "nats://127.0.0.1:4222")
"""The NATS server with JetStream the relay tests use (``.ci/run`` starts the local one)."""


async def connect_nats() -> Any:
    """A nats-py connection to :data:`NATS_URL`. The one place that decides what a missing
    server means: the test is skipped, except under ``CI=true`` where it fails."""
    import nats
    import nats.errors

    try:
        where = urllib.parse.urlsplit(NATS_URL)
        _, probe = await asyncio.wait_for(
            asyncio.open_connection(where.hostname, where.port or 4222), 2
        )
        probe.close()  # a refused port fails here at once; nats-py would keep retrying
        return await asyncio.wait_for(nats.connect(NATS_URL, connect_timeout=1), 3)
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        message = f"no NATS server with JetStream at {NATS_URL} ({exc!r}); start nats-server -js"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


async def require_nats() -> None:
    """Skip (or under ``CI=true`` fail) the test unless NATS answers."""
    nc = await connect_nats()
    await nc.close()


async def make_nats(store: Path, limits: QueueLimits) -> RelayBackend:
    """A NatsBackend on the local NATS server (``SEALWIRE_NATS_URL``), its names derived from
    ``store``. Unreachable NATS skips the test, and fails it under ``CI=true``. Streams left by
    earlier tests (over five minutes old) are deleted here: a factory cannot clean up after."""
    import datetime
    import hashlib

    import nats.js.errors

    from sealwire.relay.backends.nats import NatsBackend

    url = NATS_URL
    nc = await connect_nats()
    try:
        if not getattr(make_nats, "swept", False):  # once per test process
            setattr(make_nats, "swept", True)  # noqa: B010
            js = nc.jetstream(timeout=5)
            old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
            stale: list[str] = []
            offset = 0
            while page := await js.streams_info(offset=offset):
                offset += len(page)
                for info in page:
                    name = info.config.name or ""
                    created = info.created
                    if name.startswith(("SWCT", "KV_swct")) and created and created < old:
                        stale.append(name)
            for name in stale:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(name)  # another test run may delete it too
    finally:
        await nc.close()
    prefix = "swct" + hashlib.sha256(str(store).encode()).hexdigest()[:16]
    return NatsBackend(url, limits, prefix=prefix)


BACKENDS: dict[str, BackendMaker] = {"sqlite": make_sqlite, "nats": make_nats}


class RecordingListener:
    """A :class:`~sealwire.relay.backends.base.BackendListener` that remembers every signal."""

    def __init__(self) -> None:
        self.queued: list[bytes] = []
        self.stored: list[StoredEnvelope] = []
        self.revoked: list[tuple[bytes, list[bytes]]] = []
        self.registered: list[tuple[bytes, bytes]] = []
        self.notices: list[bytes] = []

    def envelope_queued(self, recipient: bytes, stored: StoredEnvelope | None = None) -> None:
        self.queued.append(recipient)
        if stored is not None:
            self.stored.append(stored)

    def addresses_revoked(self, organisation: bytes, addresses: Sequence[bytes]) -> None:
        self.revoked.append((organisation, list(addresses)))

    def organisation_registered(self, organisation: bytes, root: bytes) -> None:
        self.registered.append((organisation, root))

    def notice_queued(self, organisation: bytes) -> None:
        self.notices.append(organisation)


class BackendFactory:
    """Opens backends of one kind on one store (a test's ``tmp_path``)."""

    def __init__(self, name: str, make: BackendMaker, store: Path) -> None:
        self.name = name
        self.store = store
        self._make = make

    async def create(self, limits: QueueLimits | None = None) -> RelayBackend:
        """An unstarted backend on this test's store."""
        return await self._make(self.store, limits or QueueLimits())

    @contextlib.asynccontextmanager
    async def open(
        self, limits: QueueLimits | None = None
    ) -> AsyncIterator[tuple[RelayBackend, RecordingListener]]:
        """A started backend and its listener, closed on exit. Opening again after the
        previous one closed is a restart on the same state."""
        backend = await self.create(limits)
        listener = RecordingListener()
        await backend.start(listener)
        try:
            yield backend, listener
        finally:
            await backend.close()


@pytest.fixture(params=sorted(BACKENDS))
def backend_factory(request: pytest.FixtureRequest, tmp_path: Path) -> BackendFactory:
    name: str = request.param
    return BackendFactory(name, BACKENDS[name], tmp_path)


def run(coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run one test body on a fresh event loop, with a timeout so a hang fails the test."""

    async def guarded() -> T:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(guarded())
