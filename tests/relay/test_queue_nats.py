"""What only the cluster backend promises: several relay nodes (each its own
:class:`~sealwire.relay.backends.nats.NatsBackend`) on one JetStream see one state, quotas hold
when nodes race, expiry is reported once, and signals and activation messages cross nodes.

Runs against a real NATS server with JetStream (``SEALWIRE_NATS_URL``, default the local one);
without one the tests skip, except under ``CI=true`` where they fail. The single-node contract
runs in ``test_backend_contract.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import struct
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealwire.errors import QueueFull, StorageError
from sealwire.relay.backends.base import QueueLimits, StoredEnvelope
from sealwire.relay.backends.nats import NatsBackend
from sealwire.relay.backends.nats._wire import (
    _decode_route,
    _decode_signal,
    _encode_route,
    _encode_signal,
    _token,
)
from tests.relay.conftest import NATS_URL, RecordingListener, require_nats, run

nats = pytest.importorskip("nats")

URL = NATS_URL
ALICE = b"A" * 32
BOB = b"B" * 32
ORG_1 = b"organisation-1"
ORG_2 = b"organisation-2"
T0 = 1_700_000_000_000
LIFETIME = 60_000


class Cluster:
    """Relay nodes sharing one unique prefix; the streams are deleted at the end."""

    def __init__(self, limits: QueueLimits) -> None:
        self.prefix = "swnt" + uuid.uuid4().hex[:16]
        self.limits = limits
        self.open: list[NatsBackend] = []

    async def node(self, name: str) -> tuple[NatsBackend, RecordingListener]:
        backend = NatsBackend(URL, self.limits, prefix=self.prefix, node=name)
        listener = RecordingListener()
        await backend.start(listener)
        self.open.append(backend)
        return backend, listener


@contextlib.asynccontextmanager
async def cluster(limits: QueueLimits | None = None) -> AsyncIterator[Cluster]:
    await require_nats()
    nodes = Cluster(limits or QueueLimits())
    try:
        yield nodes
    finally:
        for backend in nodes.open:
            await backend.close()
        await NatsBackend(URL, prefix=nodes.prefix).destroy()


async def eventually(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Signals cross nodes asynchronously: wait (bounded) until ``condition`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def put(
    backend: NatsBackend, envelope: bytes, *, recipient: bytes = ALICE, at: int = T0
) -> StoredEnvelope:
    return await backend.enqueue(recipient, envelope, accepted_at=at, sender_organisation=ORG_1)


async def everything(backend: NatsBackend, recipient: bytes = ALICE) -> list[StoredEnvelope]:
    return await backend.pending(recipient, after=None, limit=10_000, now=T0)


def test_nodes_share_queues() -> None:
    async def body() -> None:
        async with cluster() as nodes:
            a, _ = await nodes.node("a")
            b, _ = await nodes.node("b")
            stored = [await put(a, b"from a %d" % i) for i in range(3)]
            stored.append(await put(b, b"from b"))
            assert await everything(b) == stored
            assert await everything(a) == stored
            await b.acknowledge(ALICE, [stored[0].delivery_id, stored[3].delivery_id])
            assert await everything(a) == stored[1:3]
            after = await a.pending(ALICE, after=stored[1].delivery_id, limit=10, now=T0)
            assert after == [stored[2]]

    run(body())


@pytest.mark.parametrize("quota", ["count", "bytes"])
def test_quota_is_exact_when_nodes_race_for_the_last_slots(quota: str) -> None:
    limits = QueueLimits(max_count=30) if quota == "count" else QueueLimits(max_bytes=30 * 10)

    async def body() -> None:
        async with cluster(limits) as nodes:
            a, _ = await nodes.node("a")
            b, _ = await nodes.node("b")
            for i in range(20):
                await put(a, b"%010d" % i)
            results = await asyncio.gather(
                *(put(a if i % 2 else b, b"%010d" % (1000 + i)) for i in range(100)),
                return_exceptions=True,
            )
            accepted = [r for r in results if isinstance(r, StoredEnvelope)]
            refused = [r for r in results if isinstance(r, QueueFull)]
            assert (len(accepted), len(refused)) == (10, 90)
            assert len(await everything(b)) == 30
            # Acknowledging on one node frees room for the other.
            await b.acknowledge(ALICE, [accepted[0].delivery_id])
            await put(a, b"%010d" % 5000)
            with pytest.raises(QueueFull):
                await put(b, b"%010d" % 5001)

    run(body())


async def counter(backend: NatsBackend, key: str) -> int:
    entry = await backend._kv["bytes"].get(key)
    assert entry.value is not None
    return int(entry.value)


def test_reserving_and_giving_back_on_different_nodes_never_conflict() -> None:
    """Enqueues reserve on the recipient's ``in`` counter, acknowledgements give back on its
    ``out`` counter: the enqueuing and the acknowledging node each keep their counter's
    mirror current and never read the bucket, and used bytes are ``in - out``."""

    async def body() -> None:
        async with cluster(QueueLimits(max_bytes=1000)) as nodes:
            a, _ = await nodes.node("a")
            b, _ = await nodes.node("b")
            reads: list[str] = []
            for node in (a, b):
                ledger = node._require_ledger()
                refresh = ledger._refresh

                async def counted(
                    key: str, refresh: Callable[[str], Awaitable[tuple[int, int]]] = refresh
                ) -> tuple[int, int]:
                    reads.append(key)
                    return await refresh(key)

                ledger._refresh = counted  # type: ignore[method-assign]
            for i in range(30):
                stored = await asyncio.gather(*(put(a, b"%09d" % (i * 3 + j)) for j in range(3)))
                await b.acknowledge(ALICE, [s.delivery_id for s in stored[:2]])
            assert reads == []
            key = _token(ALICE)
            assert await counter(a, key + ".in") == 30 * 3 * 9
            assert await counter(a, key + ".out") == 30 * 2 * 9
            await eventually(lambda: a._require_ledger().total == b._require_ledger().total)
            assert await b.depth() == (30, 30 * 9)

    run(body())


def test_a_lagging_mirror_of_given_back_bytes_never_refuses() -> None:
    async def body() -> None:
        async with cluster(QueueLimits(max_bytes=30)) as nodes:
            a, _ = await nodes.node("a")
            b, _ = await nodes.node("b")
            stored = [await put(a, b"x" * 10) for _ in range(3)]
            with pytest.raises(QueueFull):
                await put(b, b"y")
            await b.acknowledge(ALICE, [stored[0].delivery_id])
            # As if a's KV watch had not yet seen b's release.
            out_key = _token(ALICE) + ".out"
            ledger = a._require_ledger()
            ledger._known[out_key] = (0, 1)
            await put(a, b"z" * 10)  # re-reads ``out`` rather than refusing
            with pytest.raises(QueueFull):
                await put(a, b"z")
            assert await counter(a, _token(ALICE) + ".in") == 40
            assert await counter(a, out_key) == 10

    run(body())


def test_counters_of_another_layout_are_ignored() -> None:
    async def body() -> None:
        async with cluster() as nodes:
            a, _ = await nodes.node("a")
            ledger = a._require_ledger()
            ledger.observe(_token(ALICE), 500, 1)  # the earlier single-counter layout
            assert ledger.total == 0
            await put(a, b"abc")
            assert await a.depth() == (1, 3)

    run(body())


def test_depth_sees_other_nodes() -> None:
    async def body() -> None:
        async with cluster() as nodes:
            a, _ = await nodes.node("a")
            b, _ = await nodes.node("b")
            await put(a, b"x" * 10)
            await put(b, b"y" * 5, recipient=BOB)
            await eventually(lambda: b._ledger is not None and b._ledger.total == 15)
            assert await a.depth() == (2, 15)
            assert await b.depth() == (2, 15)

    run(body())


def test_revocations_and_registrations_reach_every_node() -> None:
    async def body() -> None:
        async with cluster() as nodes:
            a, on_a = await nodes.node("a")
            b, on_b = await nodes.node("b")
            await a.revoke(ORG_1, [ALICE, BOB])
            assert on_a.revoked == [(ORG_1, [ALICE, BOB])]
            await eventually(lambda: len(on_b.revoked) == 2)
            assert sorted(on_b.revoked) == [(ORG_1, [ALICE]), (ORG_1, [BOB])]
            assert await b.is_revoked(ORG_1, ALICE)
            assert not await b.is_revoked(ORG_2, ALICE)

            await a.register(ORG_1, b"root-1", ALICE)
            assert on_a.registered == [(ORG_1, b"root-1")]
            await eventually(lambda: on_b.registered == [(ORG_1, b"root-1")])
            assert await b.organisations() == {ORG_1: b"root-1"}
            await eventually(lambda: ALICE in b._registered_servers)
            assert await b.is_registered_server(ALICE)

            # The root is set once, whichever node is asked to change it.
            await b.register(ORG_1, b"root-1", BOB)
            with pytest.raises(StorageError):
                await b.register(ORG_1, b"another root", BOB)
            await asyncio.sleep(0.05)
            assert await a.organisations() == {ORG_1: b"root-1"}
            assert on_a.registered == [(ORG_1, b"root-1")]  # nothing new from b's repeat

    run(body())


def test_concurrent_expiry_on_two_nodes_reports_each_envelope_once() -> None:
    limits = QueueLimits(lifetime_ms=LIFETIME)

    async def body() -> None:
        async with cluster(limits) as nodes:
            a, on_a = await nodes.node("a")
            b, on_b = await nodes.node("b")
            envelopes = [b"old %d" % i for i in range(300)]
            await asyncio.gather(
                *(put(a, e, recipient=bytes([i % 3]) * 32) for i, e in enumerate(envelopes))
            )
            young = await put(b, b"young", at=T0 + 1000)
            counts = await asyncio.gather(*(n.expire(T0 + LIFETIME) for n in (a, b, a, b)))
            assert sum(counts) == 300
            notices = await b.notices(ORG_1, limit=1000)
            assert sorted(n.digest for n in notices) == sorted(
                hashlib.sha256(e).digest() for e in envelopes
            )
            assert len({n.notice_id for n in notices}) == 300
            assert await a.notices(ORG_1, limit=1000) == notices
            assert await everything(a) == [young]
            # Each node heard about the notices, whichever node expired them.
            await eventually(lambda: ORG_1 in on_a.notices and ORG_1 in on_b.notices)
            await a.clear_notices(ORG_1, [n.notice_id for n in notices[:100]])
            assert await b.notices(ORG_1, limit=1000) == notices[100:]

    run(body())


def test_watch_delivers_envelope_queued_from_other_nodes() -> None:
    async def body() -> None:
        async with cluster(QueueLimits(max_count=1)) as nodes:
            a, on_a = await nodes.node("a")
            b, on_b = await nodes.node("b")
            await put(a, b"not watched yet")
            await asyncio.sleep(0.1)  # its signal went out before anyone watched
            await b.watch(ALICE)
            await b.watch(ALICE)  # a second session of the same address
            await asyncio.sleep(0.05)
            assert on_b.queued == []
            await a.acknowledge(ALICE, [s.delivery_id for s in await everything(a)])
            await put(a, b"watched")
            await eventually(lambda: on_b.queued == [ALICE])
            assert on_a.queued == [ALICE, ALICE]  # the enqueuing node hears its own, once
            with pytest.raises(QueueFull):
                await put(a, b"refused")  # a refused envelope signals no one
            await b.unwatch(ALICE)
            await a.acknowledge(ALICE, [s.delivery_id for s in await everything(a)])
            await put(a, b"after unwatch")
            await asyncio.sleep(0.1)
            assert on_b.queued == [ALICE]

    run(body())


def test_signals_carry_the_stored_envelope_to_every_node() -> None:
    async def body() -> None:
        async with cluster() as nodes:
            a, on_a = await nodes.node("a")
            b, on_b = await nodes.node("b")
            await b.watch(ALICE)
            stored = [await put(a, b"envelope %d" % i, at=T0 + i) for i in range(5)]
            assert on_a.stored == stored  # the enqueuing node: at once, in delivery-id order
            await eventually(lambda: len(on_b.stored) == 5)
            assert on_b.stored == stored  # id, recipient, envelope and accepted_at
            assert on_b.queued == [ALICE] * 5
            # What a node was handed through a signal it can acknowledge.
            await b.acknowledge(ALICE, [s.delivery_id for s in on_b.stored[:2]])
            assert await everything(a) == stored[2:]
            await b.acknowledge(BOB, [stored[2].delivery_id])  # not BOB's: ignored
            assert await everything(a) == stored[2:]

    run(body())


def test_an_envelope_too_large_for_a_signal_is_signalled_bare() -> None:
    async def body() -> None:
        async with cluster() as nodes:
            a, on_a = await nodes.node("a")
            b, on_b = await nodes.node("b")
            await b.watch(ALICE)
            big = b"x" * (a._require_nc().max_payload - 200)
            stored = await put(a, big)
            assert on_a.stored == [stored]
            await eventually(lambda: on_b.queued == [ALICE])
            assert on_b.stored == []  # the node reads it with pending()
            assert await everything(b) == [stored]

    run(body())


def test_a_malformed_signal_is_refused_without_details(caplog: pytest.LogCaptureFixture) -> None:
    secret = b"SECRET-ENVELOPE-BYTES"
    bad = [
        secret,  # too short for the header
        struct.pack(">BQq", 2, 7, T0) + secret,  # unknown version
        struct.pack(">BQq", 1, 0, T0) + secret,  # sequence 0
        struct.pack(">BQq", 1, 7, T0) + secret * 10,  # larger than max_bytes
    ]

    async def body() -> None:
        async with cluster(QueueLimits(max_bytes=100)) as nodes:
            b, on_b = await nodes.node("b")
            await b.watch(ALICE)
            nc = await nats.connect(URL)
            try:
                subject = f"{nodes.prefix}.sig.q.x{ALICE.hex()}"
                for payload in bad:
                    await nc.publish(subject, payload, headers={"Sealwire-Node": "evil"})
                await nc.publish(subject, b"", headers={"Sealwire-Node": "evil"})  # bare
                await nc.flush()
            finally:
                await nc.close()
            await eventually(lambda: len(on_b.queued) == len(bad) + 1)
            assert on_b.queued == [ALICE] * (len(bad) + 1)  # the session reads pending()
            assert on_b.stored == []
            stored = await put(b, b"still works")
            assert await everything(b) == [stored]

    with caplog.at_level(logging.DEBUG, logger="sealwire.relay.backends.nats"):
        run(body())
    refusals = [r for r in caplog.records if "malformed queue signal" in r.getMessage()]
    assert len(refusals) == len(bad)
    assert "SECRET" not in caplog.text and secret.hex() not in caplog.text


def test_a_backlog_reads_in_batches_correctly() -> None:
    """Past the first few messages pending() reads through ephemeral consumers: the same
    answer as one message at a time, for every limit and cursor, and no consumer is left."""

    async def body() -> None:
        async with cluster(QueueLimits(lifetime_ms=LIFETIME, max_count=100_000)) as nodes:
            a, _ = await nodes.node("a")
            b, _ = await nodes.node("b")
            alice: list[StoredEnvelope] = []
            for i in range(700):
                at = T0 - LIFETIME if i % 97 == 5 else T0 + i  # some already expired
                stored = await asyncio.gather(
                    put(a, b"alice %d" % i, at=at), put(a, b"bob %d" % i, recipient=BOB)
                )
                if at > T0 - LIFETIME:
                    alice.append(stored[0])
            now = T0
            assert await b.pending(ALICE, after=None, limit=10_000, now=now) == alice
            for limit in (1, 2, 3, 100, 256, 257, 600):
                got = await b.pending(ALICE, after=None, limit=limit, now=now)
                assert got == alice[:limit]
            for start in (0, 1, 2, 300, 650, 690):
                after = alice[start].delivery_id
                got = await b.pending(ALICE, after=after, limit=120, now=now)
                assert got == alice[start + 1 : start + 121]
            await b.acknowledge(ALICE, [s.delivery_id for s in alice[:400:2]])
            rest = [s for i, s in enumerate(alice) if i >= 400 or i % 2]
            assert await a.pending(ALICE, after=None, limit=10_000, now=now) == rest
            js = b._require_js()

            async def consumers() -> int:
                info = await js.stream_info(f"{nodes.prefix.upper()}_QUEUE")
                return info.state.consumer_count

            deadline = asyncio.get_running_loop().time() + 3
            while await consumers() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            assert await consumers() == 0

    run(body(), timeout=120)


def test_acknowledging_the_oldest_envelopes_purges_exactly_them() -> None:
    """Acknowledging the queue's oldest envelopes takes one purge; anything else (a gap,
    another address's id, ids racing on two nodes) deletes exactly what was named and gives
    each envelope's bytes back once."""

    async def body() -> None:
        async with cluster(QueueLimits(max_bytes=10_000)) as nodes:
            a, _ = await nodes.node("a")
            b, _ = await nodes.node("b")

            async def queued_bytes() -> int:
                await eventually(lambda: a._require_ledger().total == b._require_ledger().total)
                return (await a.depth())[1]

            alice = [await put(a, b"a%03d" % i) for i in range(20)]  # 4 bytes each
            bob = [await put(a, b"bob %03d" % i, recipient=BOB) for i in range(5)]  # 7
            await b.acknowledge(ALICE, [s.delivery_id for s in reversed(alice[:5])])
            assert await everything(a) == alice[5:]
            assert await queued_bytes() == 15 * 4 + 5 * 7
            # A gap: alice[5] stays.
            await b.acknowledge(ALICE, [s.delivery_id for s in alice[6:9]])
            assert await everything(a) == [alice[5], *alice[9:]]
            # Another address's ids are not this queue's: ignored, whatever the path.
            ids = [alice[5].delivery_id, bob[0].delivery_id, alice[9].delivery_id]
            await b.acknowledge(ALICE, ids)
            assert await everything(a, BOB) == bob
            assert await everything(a) == alice[10:]
            assert await queued_bytes() == 10 * 4 + 5 * 7
            # Two nodes acknowledging the same envelopes at once.
            ids = [s.delivery_id for s in alice[10:]]
            await asyncio.gather(a.acknowledge(ALICE, ids), b.acknowledge(ALICE, ids[:6]))
            assert await everything(b) == []
            assert await queued_bytes() == 5 * 7

    run(body())


def test_activation_messages_are_routed_across_nodes() -> None:
    async def body() -> None:
        async with cluster() as nodes:
            a, _ = await nodes.node("a")
            b, _ = await nodes.node("b")
            got_a: list[tuple[bytes, bytes, bytes | None]] = []
            got_b: list[tuple[bytes, bytes, bytes | None]] = []

            async def route_a(session: bytes, payload: bytes, server: bytes | None) -> bool:
                got_a.append((session, payload, server))
                return True

            async def route_b(session: bytes, payload: bytes, server: bytes | None) -> bool:
                got_b.append((session, payload, server))
                return True

            async def gone(session: bytes, payload: bytes, server: bytes | None) -> bool:
                return False

            detach_server = await b.attach(ALICE, route_b)
            detach_device = await a.attach(b"session-7", route_a)
            assert await a.route_activation(ALICE, b"session-7", b"hello", None)
            assert got_b == [(b"session-7", b"hello", None)]
            assert await b.route_activation(b"session-7", b"session-7", b"reply", ALICE)
            assert got_a == [(b"session-7", b"reply", ALICE)]
            assert not await a.route_activation(BOB, b"s", b"nobody attached", None)

            # A connection that is gone does not take it, so the route reports False.
            detach_gone = await a.attach(BOB, gone)
            assert not await b.route_activation(BOB, b"s", b"x", None)
            await detach_gone()
            await detach_server()
            assert not await a.route_activation(ALICE, b"s", b"after detach", None)
            assert got_b == [(b"session-7", b"hello", None)]
            await detach_device()

    run(body())


def test_restart_keeps_everything() -> None:
    limits = QueueLimits(max_bytes=100, lifetime_ms=LIFETIME)

    async def body() -> None:
        async with cluster(limits) as nodes:
            a, _ = await nodes.node("a")
            b, _ = await nodes.node("b")
            await put(b, b"old", recipient=BOB, at=T0 - LIFETIME)
            stored = [await put(a, b"x" * 40), await put(b, b"y" * 40)]
            await a.register(ORG_1, b"root-1", ALICE)
            await b.revoke(ORG_2, [BOB])
            assert await a.expire(T0) == 1
            await a.close()
            await b.close()

            c, _ = await nodes.node("c")
            assert await everything(c) == stored
            with pytest.raises(QueueFull):
                await put(c, b"z" * 21)  # the byte count survived
            assert await c.organisations() == {ORG_1: b"root-1"}
            assert await c.is_registered_server(ALICE)
            assert await c.is_revoked(ORG_2, BOB)
            assert [n.recipient for n in await c.notices(ORG_1, limit=10)] == [BOB]
            assert await c.depth() == (2, 80)

    run(body())


class Proxy:
    """A TCP relay to the NATS server that the test can cut and restore."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.links: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.links:
            writer.transport.abort()
        self.links.clear()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        where = urllib.parse.urlsplit(URL)
        up_reader, up_writer = await asyncio.open_connection(where.hostname, where.port or 4222)
        self.links += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


def test_a_lost_connection_fails_calls_and_recovers() -> None:
    async def body() -> None:
        async with cluster() as nodes:
            proxy = Proxy()
            await proxy.start()
            backend = NatsBackend(
                f"nats://127.0.0.1:{proxy.port}", prefix=nodes.prefix, node="p", timeout=0.5
            )
            listener = RecordingListener()
            await backend.start(listener)
            nodes.open.append(backend)
            await backend.watch(BOB)
            first = await put(backend, b"before the cut")
            await proxy.cut()
            with pytest.raises(StorageError):
                await put(backend, b"during the cut")
            with pytest.raises(StorageError):
                await everything(backend)
            await proxy.start()  # same port: nats-py reconnects by itself
            for _ in range(100):
                with contextlib.suppress(StorageError):
                    second = await put(backend, b"after the cut")
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("no reconnect")
            assert (await everything(backend))[0] == first
            assert second in await everything(backend)
            # Signals sent while it was cut off are lost: the watched addresses' sessions are
            # told to read pending() (a signal without an envelope).
            await eventually(lambda: BOB in listener.queued)
            assert all(s.recipient != BOB for s in listener.stored)
            await backend.close()
            await proxy.cut()

    run(body())


def test_unreachable_nats_is_a_storage_error() -> None:
    async def body() -> None:
        backend = NatsBackend("nats://127.0.0.1:1", prefix="swntunreachable", timeout=0.5)
        with pytest.raises(StorageError):
            await backend.start(RecordingListener())
        with pytest.raises(StorageError):
            await backend.enqueue(ALICE, b"x", accepted_at=T0, sender_organisation=ORG_1)

    run(body())


def test_prefix_must_be_a_subject_token() -> None:
    for prefix in ("", "a.b", "a b", "a*", "a>"):
        with pytest.raises(ValueError):
            NatsBackend(prefix=prefix)


@given(st.binary(max_size=64), st.binary(max_size=256), st.none() | st.binary(max_size=64))
def test_route_messages_round_trip(session: bytes, payload: bytes, server: bytes | None) -> None:
    assert _decode_route(_encode_route(session, payload, server)) == (session, payload, server)


@given(st.binary(max_size=300))
def test_route_decoder_accepts_only_what_the_encoder_makes(data: bytes) -> None:
    try:
        decoded = _decode_route(data)
    except ValueError:
        return
    assert _encode_route(*decoded) == data


@given(st.integers(1, 2**64 - 1), st.integers(-(2**63), 2**63 - 1), st.binary(max_size=64))
def test_queue_signals_round_trip(seq: int, accepted_at: int, envelope: bytes) -> None:
    stored = _decode_signal(ALICE, _encode_signal(seq, accepted_at, envelope), 64)
    assert stored == StoredEnvelope(seq.to_bytes(8, "big"), ALICE, envelope, accepted_at)


@given(st.binary(max_size=100))
def test_queue_signal_decoder_accepts_only_what_the_encoder_makes(data: bytes) -> None:
    try:
        stored = _decode_signal(ALICE, data, 64)
    except ValueError:
        return
    seq = int.from_bytes(stored.delivery_id, "big")
    assert _encode_signal(seq, stored.accepted_at, stored.envelope) == data
    assert len(stored.envelope) <= 64
