"""Regression tests for delivery, notice and resource bugs found in review of the relay service.

Each test drives an in-process :class:`~sealwire.relay.service.Relay` on a ``SqliteBackend``
(some wrapped to hold a backend call at a chosen moment) with real clients.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from sealwire.relay.backends.base import QueueLimits, RelayBackend, StoredEnvelope
from sealwire.relay.backends.sqlite import SqliteBackend
from sealwire.relay.config import RelayServiceConfig
from sealwire.relay.service import Relay

from .conftest import run
from .harness import drain, live_org, receive


class GatedBackend(SqliteBackend):
    """A SqliteBackend that can hold a call at a chosen moment, as a remote backend's round
    trip (or a busy reader thread) would: ``pending`` after it has read (``rearm``),
    ``is_revoked`` (``gate_admission``), ``watch`` (``watch_hook``), ``enqueue`` after it
    stored (``enqueue_gate``), ``acknowledge`` until a held pull has read
    (``ack_after_read``). It records what it stored in ``stored``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hold_pending = False
        self.pending_read = asyncio.Event()
        self.release = asyncio.Event()
        self.ack_after_read = False
        self.acked = asyncio.Event()
        self.hold_admission = False
        self.admission_waiting = asyncio.Event()
        self.admission_release = asyncio.Event()
        self.watch_hook: Callable[[], Awaitable[None]] | None = None
        self.enqueue_gate: asyncio.Event | None = None
        self.enqueue_waiting = asyncio.Event()
        self.stored: list[StoredEnvelope] = []

    def rearm(self) -> None:
        self.hold_pending = True
        self.pending_read = asyncio.Event()
        self.release = asyncio.Event()

    def gate_admission(self) -> None:
        self.hold_admission = True
        self.admission_waiting = asyncio.Event()
        self.admission_release = asyncio.Event()

    async def pending(self, recipient: bytes, **kwargs: Any) -> list[StoredEnvelope]:
        items = await super().pending(recipient, **kwargs)
        if self.hold_pending:
            self.hold_pending = False
            self.pending_read.set()
            await self.release.wait()
        return items

    async def acknowledge(self, recipient: bytes, delivery_ids: Sequence[bytes]) -> None:
        if self.ack_after_read:  # the deletion commits after a pull has read, before it ends
            await self.pending_read.wait()
        await super().acknowledge(recipient, delivery_ids)
        self.acked.set()

    async def is_revoked(self, organisation: bytes, address: bytes) -> bool:
        revoked = await super().is_revoked(organisation, address)
        if self.hold_admission:
            self.hold_admission = False
            self.admission_waiting.set()
            await self.admission_release.wait()
        return revoked

    async def watch(self, recipient: bytes) -> None:
        if self.watch_hook is not None:
            await self.watch_hook()
        await super().watch(recipient)

    def enqueue_later(self, recipient: bytes, envelope: bytes, **kwargs: Any) -> Any:
        # The generic path (a task around enqueue), so that the hooks below apply.
        return RelayBackend.enqueue_later(self, recipient, envelope, **kwargs)

    async def enqueue(self, recipient: bytes, envelope: bytes, **kwargs: Any) -> StoredEnvelope:
        stored = await super().enqueue(recipient, envelope, **kwargs)
        self.stored.append(stored)
        if self.enqueue_gate is not None:
            self.enqueue_waiting.set()
            await self.enqueue_gate.wait()
        return stored


@contextlib.asynccontextmanager
async def relay(
    tmp: Path, backend: SqliteBackend | None = None, **config: Any
) -> AsyncIterator[tuple[Relay, str]]:
    cfg = RelayServiceConfig(port=0, data=str(tmp), metrics="", **config)
    service = Relay(cfg, backend=backend or SqliteBackend(tmp / "relay.db", cfg.queue_limits))
    await service.start()
    try:
        yield service, service.origin
    finally:
        await service.stop()


def test_backlog_beyond_one_pull_is_delivered(tmp_path: Path) -> None:
    """More than _PULL_MAX (32) envelopes queued before the recipient connects: the pull
    gets 32, ``len(items) != window`` (256) so ``more`` stays False and the rest is never
    delivered in the session."""

    async def body() -> None:
        org = live_org()
        alice, bob = org.device(1), org.device(2)
        async with relay(tmp_path) as (_, url):
            server = await org.connect_server(url)
            sender = await alice.connect(url)
            for i in range(40):
                await sender.send(alice.seal_to(bob, b"m%d" % i))
            conn = await bob.connect(url)
            got = await receive(conn, 40, timeout=2)
            assert len(got) == 40
            for c in (conn, sender, server):
                await c.close()

    run(body())


def test_hand_over_during_pull_does_not_overfill_window(tmp_path: Path) -> None:
    """``_pull`` reads the window before awaiting the backend; a direct hand-over while it
    waits uses a slot, then ``session.deliver`` raises "delivery window is full" in the
    writer: the writer dies, nothing more is sent on that connection."""

    async def body() -> None:
        org = live_org()
        alice, bob = org.device(1), org.device(2)
        limits = QueueLimits()
        backend = GatedBackend(tmp_path / "relay.db", limits)
        async with relay(tmp_path, backend, max_unacked=2) as (_, url):
            server = await org.connect_server(url)
            sender = await alice.connect(url)
            await sender.send(alice.seal_to(bob, b"a"))
            await sender.send(alice.seal_to(bob, b"b"))
            backend.hold_pending = True
            opening = asyncio.create_task(bob.connect(url))
            await asyncio.wait_for(backend.pending_read.wait(), 5)
            await sender.send(alice.seal_to(bob, b"c"))  # handed over while the pull waits
            backend.release.set()
            conn = await asyncio.wait_for(opening, 5)
            got = {bob.open(e) for e in await receive(conn, 3, timeout=5)}
            assert got == {b"a", b"b", b"c"}
            for c in (conn, sender, server):
                await c.close()

    run(body())


def test_ack_during_pull_does_not_redeliver(tmp_path: Path) -> None:
    """A pull reads an envelope that is in flight (the cursor went back behind a hand-over),
    the client's ack deletes it and drops it from ``inflight`` while the pull still awaits,
    then the pull delivers it again: a duplicate in the same session."""

    async def body() -> None:
        org = live_org()
        alice, bob = org.device(1), org.device(2)
        backend = GatedBackend(tmp_path / "relay.db", QueueLimits())
        async with relay(tmp_path, backend, max_unacked=3) as (_, url):
            server = await org.connect_server(url)
            sender = await alice.connect(url)
            await sender.send(alice.seal_to(bob, b"a"))
            await sender.send(alice.seal_to(bob, b"b"))
            backend.rearm()
            opening = asyncio.create_task(bob.connect(url))
            await asyncio.wait_for(backend.pending_read.wait(), 5)
            await sender.send(alice.seal_to(bob, b"c"))  # handed over: cursor = c
            backend.release.set()  # the pull delivers a, b: cursor = b, behind c
            conn = await asyncio.wait_for(opening, 5)
            first = await drain(conn, 0.3)
            assert len(first) == 3
            await sender.send(alice.seal_to(bob, b"d"))  # window full: more = True
            c_id = next(i for i, e in first if bob.open(e, guard=False) == b"c")
            backend.rearm()
            backend.ack_after_read = True
            conn.ack([c_id])  # the next pull (after b) reads c, then c is deleted
            await asyncio.wait_for(backend.acked.wait(), 5)
            await asyncio.sleep(0.05)
            backend.release.set()
            again = await drain(conn, 0.5)
            assert c_id not in [i for i, _ in again], "c delivered twice in one session"
            for c in (conn, sender, server):
                await c.close()

    run(body())


def test_expiry_notice_sent_once(tmp_path: Path) -> None:
    """Two servers of an organisation connect at once while a notice waits: each admission
    spawns ``_send_notices``, both read the notice before either clears it, so it is sent
    twice."""

    async def body() -> None:
        from .harness import now_ms

        org = live_org()
        alice, bob = org.device(1), org.device(2)
        offset = [0]
        backend = SqliteBackend(tmp_path / "relay.db", QueueLimits(lifetime_ms=1000))
        cfg = RelayServiceConfig(port=0, data=str(tmp_path), metrics="", envelope_lifetime_s=1)
        service = Relay(cfg, backend=backend, clock=lambda: now_ms() + offset[0])
        await service.start()
        try:
            url = service.origin
            server = await org.connect_server(url)
            sender = await alice.connect(url)
            await sender.send(alice.seal_to(bob, b"never read"))
            await sender.close()
            await server.close()
            for _ in range(100):
                if not service._servers_by_org:
                    break
                await asyncio.sleep(0.02)
            offset[0] = 5_000
            assert await backend.expire(now_ms() + offset[0]) == 1
            servers = await asyncio.gather(org.connect_server(url), org.connect_server(url))
            await asyncio.sleep(0.5)
            total = sum(s.expiries.qsize() for s in servers)
            assert total == 1, f"one expired envelope, {total} notices"
            for s in servers:
                await s.close()
        finally:
            await service.stop()

    run(body())


def test_connection_lost_during_watch_leaks_nothing(tmp_path: Path) -> None:
    """A server's connection drops while ``_admit`` awaits ``backend.watch``: ``_finish`` runs
    first, then ``_admit`` adds the dead link to ``_servers_by_org`` and attaches its
    activation route, which nothing ever removes."""

    async def body() -> None:
        org = live_org()
        backend = GatedBackend(tmp_path / "relay.db", QueueLimits())
        waiting, release = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            waiting.set()
            await release.wait()

        backend.watch_hook = hold
        async with relay(tmp_path, backend) as (service, url):
            opening = asyncio.create_task(org.connect_server(url))
            await asyncio.wait_for(waiting.wait(), 5)
            for link in service._links:  # the server's connection drops mid-admission
                link.wire.abort()
            with contextlib.suppress(BaseException):
                await opening
            for _ in range(100):
                if not service._links:
                    break
                await asyncio.sleep(0.02)
            assert not service._links
            release.set()
            await asyncio.sleep(0.1)
            assert service._servers_by_org == {}
            assert backend._local_routes() == {}

    run(body())


def test_cancelled_open_closes_its_connection(tmp_path: Path) -> None:
    """``RelayConnection.open`` cancelled while it waits for Ready (``asyncio.wait_for`` around
    it, a shutdown) leaves its WebSocket, reader and writer running: the connection stays
    open, pinging, holding a relay slot, with no object left to close it."""

    async def body() -> None:
        org = live_org()
        backend = GatedBackend(tmp_path / "relay.db", QueueLimits())
        async with relay(tmp_path, backend) as (service, url):
            backend.gate_admission()
            opening = asyncio.create_task(org.connect_server(url))
            await asyncio.wait_for(backend.admission_waiting.wait(), 5)
            opening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await opening
            backend.admission_release.set()
            for _ in range(50):
                if not service._links:
                    break
                await asyncio.sleep(0.02)
            assert not service._links, "the abandoned client connection is still open"

    run(body())


def test_revoke_of_many_addresses_waits_for_window(tmp_path: Path) -> None:
    """``RelayConnection.revoke`` of more than 256 addresses needs two Revoke frames, but
    ``_request`` only waits for ONE free slot: with fewer free than frames it raises
    LocalProtocolError instead of waiting its turn (with ``max_pending`` 1: always)."""

    async def body() -> None:
        org = live_org()
        async with relay(tmp_path, max_pending=1) as (_, url):
            server = await org.connect_server(url)
            await server.revoke([org.device(i).address for i in range(300)])
            await server.close()

    run(body())


def test_client_that_pings_but_never_reads_is_bounded(tmp_path: Path) -> None:
    """A client that stops reading but keeps sending (Pings here; Sends do the same with
    Accepted): the writer blocks on the full socket, its batch is small so ``outbox_bytes``
    never passes _OUTBOX_SOFT_LIMIT and the reader never pauses, and every answer piles up in
    the session's outbox without bound (the idle timeout never fires: the client talks)."""

    async def body() -> None:
        import socket

        from websockets.asyncio.client import connect

        from sealwire.protocol.frames import Hello, Mode, Ping, encode_frame

        async with relay(tmp_path, frame_rate=1e7, frame_burst=10_000_000) as (service, url):
            assert service._server is not None
            for listener in service._server.sockets:  # small kernel buffers: fills sooner
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", service.port))
            async with connect(
                url, sock=sock, max_queue=1, compression=None, close_timeout=0.5
            ) as ws:
                await ws.send(encode_frame(Hello(version=1, mode=Mode.ACTIVATE)))
                for n in range(40_000):
                    await ws.send(encode_frame(Ping(data=n)))
                    if n % 50 == 0:
                        await asyncio.sleep(0)  # let the relay (same loop) read
                await asyncio.sleep(0.2)
                (link,) = service._links
                waiting = len(link.session.frames_to_send())
                assert waiting < 10_000, f"{waiting} frames held for a client that reads nothing"

    run(body())


def test_writer_failure_does_not_leak_the_link(tmp_path: Path) -> None:
    """Whatever ends the writer with an exception (here the window overfill above), ``_finish``
    re-raises it from ``await wait_for(shield(writer))`` and skips the rest of its cleanup:
    the link stays in ``_links`` and ``_by_address`` and its source's ``open`` count."""

    async def body() -> None:
        org = live_org()
        alice, bob = org.device(1), org.device(2)
        backend = GatedBackend(tmp_path / "relay.db", QueueLimits())
        async with relay(tmp_path, backend, max_unacked=2) as (service, url):
            server = await org.connect_server(url)
            sender = await alice.connect(url)
            await sender.send(alice.seal_to(bob, b"a"))
            await sender.send(alice.seal_to(bob, b"b"))
            backend.hold_pending = True
            opening = asyncio.create_task(bob.connect(url))
            await asyncio.wait_for(backend.pending_read.wait(), 5)
            await sender.send(alice.seal_to(bob, b"c"))
            backend.release.set()
            await asyncio.wait([opening], timeout=5)
            if opening.exception() is None:
                await opening.result().close()
            await asyncio.sleep(0.3)
            assert bob.address not in service._by_address
            assert len(service._links) == 2  # alice and the server only
            for c in (sender, server):
                await c.close()

    run(body())


def test_allow_list_also_refuses_devices_of_other_organisations(tmp_path: Path) -> None:
    """Switched from ``open`` to ``allow-list``, the relay refuses the servers of unlisted
    organisations but still admits their devices: ``_admit`` checks the list for servers only
    and every registered root is trusted at start."""

    async def body() -> None:
        listed, other = live_org(), live_org()
        device = other.device(1)
        async with relay(tmp_path) as (_, url):  # open admission: ``other`` registers
            await (await other.connect_server(url)).close()
        async with relay(tmp_path, admission="allow-list", organisations=(listed.id.hex(),)) as (
            _,
            url,
        ):
            with pytest.raises(Exception, match="not-admitted"):
                await other.connect_server(url)
            with pytest.raises(Exception, match=r"not-admitted|auth-failed"):
                conn = await device.connect(url)
                await conn.close()

    run(body())


def test_stop_answers_the_stores_it_finishes(tmp_path: Path) -> None:
    """OPERATIONS.md: on stop "envelopes being stored are finished first". ``stop()`` closes
    every session with ``shutdown`` before it waits for the stores, so a store that completes
    is never answered: the client sees SessionEnded for an envelope that IS queued, sends it
    again on its next session, and the recipient gets it twice."""

    async def body() -> None:
        org = live_org()
        alice, bob = org.device(1), org.device(2)
        backend = GatedBackend(tmp_path / "relay.db", QueueLimits())
        cfg = RelayServiceConfig(port=0, data=str(tmp_path), metrics="")
        service = Relay(cfg, backend=backend)
        await service.start()
        server = await org.connect_server(service.origin)
        sender = await alice.connect(service.origin)
        backend.enqueue_gate = asyncio.Event()
        sending = asyncio.create_task(sender.send(alice.seal_to(bob, b"once")))
        await asyncio.wait_for(backend.enqueue_waiting.wait(), 5)
        stopping = asyncio.create_task(service.stop())
        await asyncio.sleep(0.05)
        backend.enqueue_gate.set()  # the store completes during the shutdown
        await asyncio.wait([sending], timeout=5)
        await stopping
        for c in (sender, server):
            await c.close()
        assert sending.exception() is None, f"stored, but the client was told {sending.exception()}"

    run(body())


def test_repeated_queued_signal_after_ack_is_not_redelivered(tmp_path: Path) -> None:
    """BackendListener: ``envelope_queued`` is called "at least once per envelope" (a cluster
    signal may come again). ``_hand_over`` only checks ``inflight``; once the envelope was
    acknowledged and deleted, a repeated signal hands the deleted envelope over again."""

    async def body() -> None:
        org = live_org()
        alice, bob = org.device(1), org.device(2)
        backend = GatedBackend(tmp_path / "relay.db", QueueLimits())
        async with relay(tmp_path, backend) as (service, url):
            server = await org.connect_server(url)
            sender, conn = await alice.connect(url), await bob.connect(url)
            await sender.send(alice.seal_to(bob, b"once"))
            assert len(await receive(conn, 1)) == 1  # delivered and acknowledged
            for _ in range(50):
                if (await backend.depth())[0] == 0:
                    break
                await asyncio.sleep(0.02)
            service.envelope_queued(bob.address, backend.stored[-1])
            assert await drain(conn, 0.3) == [], "a deleted envelope was delivered again"
            for c in (conn, sender, server):
                await c.close()

    run(body())


def test_peer_error_codes_do_not_become_metric_labels(tmp_path: Path) -> None:
    """``_on_events`` counts a peer's Error frame as ``closed.labels(event.code)``; the code is
    any text up to the frame's bound, chosen by the (unauthenticated) client: every
    connection can mint a new Prometheus series that is never dropped (unbounded memory, and
    client-chosen text in the operator's metrics)."""

    async def body() -> None:
        from websockets.asyncio.client import connect

        from sealwire.protocol.frames import Error, ErrorCode, encode_frame

        async with relay(tmp_path) as (service, url):
            for n in range(20):
                async with connect(url, compression=None, close_timeout=0.5) as ws:
                    await ws.send(encode_frame(Error(code=f"junk-{n}", reason="")))
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(ws.recv(), 0.5)
            await asyncio.sleep(0.1)
            known = {c.value for c in ErrorCode} | {"connection-lost", "other"}
            codes = {
                sample.labels["code"]
                for metric in service.metrics.closed.collect()
                for sample in metric.samples
            }
            assert codes <= known, f"client-chosen labels: {sorted(codes - known)[:3]}..."

    run(body())


def test_hand_over_during_a_backlog_pull_does_not_skip_the_rest(tmp_path: Path) -> None:
    """A backlog larger than one pull (32): while the first pull awaits the backend, a new
    envelope was handed straight over and moved the cursor past the backlog the pull had not
    reached yet; the next pull started after it and the rest of the backlog stayed queued
    until the recipient reconnected (found end to end by bench/e2e.py)."""

    async def body() -> None:
        org = live_org()
        alice, bob = org.device(1), org.device(2)
        backend = GatedBackend(tmp_path / "relay.db", QueueLimits())
        async with relay(tmp_path, backend) as (_, url):
            server = await org.connect_server(url)
            sender = await alice.connect(url)
            for i in range(40):
                await sender.send(alice.seal_to(bob, b"old %d" % i))
            backend.rearm()
            opening = asyncio.create_task(bob.connect(url))
            await asyncio.wait_for(backend.pending_read.wait(), 5)
            await sender.send(alice.seal_to(bob, b"new"))  # arrives while the pull waits
            backend.release.set()
            conn = await asyncio.wait_for(opening, 5)
            got = {bob.open(e) for _, e in await drain(conn, 1.0)}
            assert got == {b"old %d" % i for i in range(40)} | {b"new"}
            for c in (conn, sender, server):
                await c.close()

    run(body())
