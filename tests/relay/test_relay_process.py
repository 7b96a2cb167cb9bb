"""A real relay process on loopback with real clients: store and forward, queue limits, expiry
with notice, revocation, admission, activation routing, crash safety, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import pytest

from sealwire.errors import InvalidEnvelope
from sealwire.protocol.suite import sha256
from sealwire.transport import RelayConnection, RequestRefused, SessionEnded

from .harness import RelayProcess, drain, live_org, receive

FAST = {
    "SEALWIRE_RELAY_SOURCE_CONNECT_RATE": "10000",
    "SEALWIRE_RELAY_SOURCE_CONNECT_BURST": "10000",
}


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> object:
    proc = RelayProcess(
        tmp_path_factory.mktemp("relay"), "--queue-max-count", "5", env=FAST
    ).start()
    yield proc
    proc.stop()


def test_offline_device_gets_its_envelopes_on_return_and_acks_delete_them(
    relay: RelayProcess,
) -> None:
    org = live_org()
    alice, bob = org.device(1), org.device(2)

    async def scenario() -> None:
        server = await org.connect_server(relay.url)
        a = await alice.connect(relay.url)
        for i in range(3):
            await a.send(alice.seal_to(bob, f"while you were away {i}".encode()))
        b = await bob.connect(relay.url)  # bob was offline until now
        got = await receive(b, 3)
        assert sorted(bob.open(e) for e in got) == [
            f"while you were away {i}".encode() for i in range(3)
        ]
        await asyncio.sleep(0.3)  # let the acks reach the relay
        await b.close()
        b = await bob.connect(relay.url)
        assert await drain(b, quiet=0.5) == []  # acknowledged: deleted, not redelivered
        for conn in (a, b, server):
            await conn.close()

    asyncio.run(scenario())


def test_unacknowledged_deliveries_come_again_with_the_same_ids_and_are_shown_once(
    relay: RelayProcess,
) -> None:
    org = live_org()
    alice, bob = org.device(1), org.device(2)

    async def scenario() -> None:
        server = await org.connect_server(relay.url)
        a = await alice.connect(relay.url)
        await a.send(alice.seal_to(bob, b"once only"))
        b = await bob.connect(relay.url)
        first = await drain(b)
        assert len(first) == 1
        assert bob.open(first[0][1]) == b"once only"
        await b.close()  # no ack
        b = await bob.connect(relay.url)
        again = await drain(b)
        assert [i for i, _ in again] == [first[0][0]]  # redelivered under the same id
        with pytest.raises(InvalidEnvelope):
            bob.open(again[0][1])  # the application drops the duplicate by message id
        b.ack([again[0][0]])
        for conn in (a, b, server):
            await conn.close()

    asyncio.run(scenario())


def test_queue_limit_refuses_with_queue_full_and_the_session_goes_on(relay: RelayProcess) -> None:
    org = live_org()
    alice, bob = org.device(1), org.device(2)

    async def scenario() -> None:
        server = await org.connect_server(relay.url)
        a = await alice.connect(relay.url)
        for i in range(5):  # the relay runs with --queue-max-count 5
            await a.send(alice.seal_to(bob, b"%d" % i))
        with pytest.raises(RequestRefused) as info:
            await a.send(alice.seal_to(bob, b"one too many"))
        assert info.value.code == "queue-full"
        # The refusal answered one request; the session is still open for others.
        carol = org.device(3)
        await a.send(alice.seal_to(carol, b"still open"))
        b = await bob.connect(relay.url)
        assert len(await receive(b, 5)) == 5
        await asyncio.sleep(0.3)
        await a.send(alice.seal_to(bob, b"room again"))  # acked: the queue has room
        for conn in (a, b, server):
            await conn.close()

    asyncio.run(scenario())
    assert relay.metric("sealwire_relay_requests_rejected_total", 'code="queue-full"') >= 1


def test_revocation_drops_the_connection_at_once_and_refuses_reconnection(
    relay: RelayProcess,
) -> None:
    org, other = live_org(), live_org()
    alice, bob = org.device(1), org.device(2)

    async def scenario() -> None:
        server = await org.connect_server(relay.url)
        other_server = await other.connect_server(relay.url)
        b = await bob.connect(relay.url)
        a = await alice.connect(relay.url)
        # Another organisation's server cannot revoke our device: scoped to its own.
        await other_server.revoke([bob.address])
        await asyncio.sleep(0.3)
        assert not b.closed
        started = time.monotonic()
        await server.revoke([bob.address])
        ended = await asyncio.wait_for(b.ended, 2)
        assert ended.code == "revoked"
        assert time.monotonic() - started < 1.0
        with pytest.raises(SessionEnded) as info:
            await bob.connect(relay.url)
        assert info.value.code == "revoked"
        assert not a.closed  # nobody else is affected
        for conn in (a, b, server, other_server):
            await conn.close()

    asyncio.run(scenario())


def test_device_of_an_unregistered_organisation_is_refused(relay: RelayProcess) -> None:
    stranger = live_org().device(1)  # its server never registered here

    async def scenario() -> None:
        with pytest.raises(SessionEnded) as info:
            await stranger.connect(relay.url)
        assert info.value.code == "auth-failed"

    asyncio.run(scenario())


def test_activation_is_routed_to_the_named_server_and_back(relay: RelayProcess) -> None:
    org = live_org()

    async def scenario() -> None:
        server = await org.connect_server(relay.url)
        device = await RelayConnection.open_for_activation(relay.url)
        session = os.urandom(16)
        await device.send_activation(session, b"pake message 1", org.server_address)
        at_server = await asyncio.wait_for(server.activations.get(), 5)
        assert at_server.payload == b"pake message 1"
        relay_session = at_server.session  # the relay's own id for this run, not the device's
        assert relay_session != session
        await server.send_activation(relay_session, b"pake answer 1")
        at_device = await asyncio.wait_for(device.activations.get(), 5)
        assert (at_device.session, at_device.payload) == (session, b"pake answer 1")
        # Another server cannot answer into this run.
        other = live_org()
        other_server = await other.connect_server(relay.url)
        await device.send_activation(session, b"pake message 2", org.server_address)
        await asyncio.wait_for(server.activations.get(), 5)
        await other_server.send_activation(relay_session, b"forged answer")
        await asyncio.sleep(0.3)
        assert device.activations.empty()
        for conn in (device, server, other_server):
            await conn.close()

    asyncio.run(scenario())


def test_activation_to_an_unknown_server_is_refused(relay: RelayProcess) -> None:
    async def scenario() -> None:
        device = await RelayConnection.open_for_activation(relay.url)
        await device.send_activation(os.urandom(16), b"hello?", os.urandom(32))
        ended = await asyncio.wait_for(device.ended, 5)
        assert ended.code == "unknown-server"
        await device.close()

    asyncio.run(scenario())


def test_health_check_answers_over_plain_http(relay: RelayProcess) -> None:
    import urllib.request

    health = relay.url.replace("ws://", "http://") + "/healthz"
    with urllib.request.urlopen(health, timeout=5) as response:
        assert response.status == 200
        assert response.read() == b"ok\n"


def test_metrics_count_traffic_without_naming_anyone(relay: RelayProcess) -> None:
    org = live_org()
    alice, bob = org.device(1), org.device(2)

    async def traffic() -> None:
        server = await org.connect_server(relay.url)
        a = await alice.connect(relay.url)
        await a.send(alice.seal_to(bob, b"counted"))
        b = await bob.connect(relay.url)
        await receive(b, 1)
        for conn in (a, b, server):
            await conn.close()

    before = relay.metric("sealwire_relay_envelopes_accepted_total")
    asyncio.run(traffic())
    text = relay.metrics()
    for address in (alice.address, bob.address, org.id):
        assert address.hex() not in text
    for name in (
        "sealwire_relay_connections",
        "sealwire_relay_envelopes_accepted_total",
        "sealwire_relay_envelopes_delivered_total",
        "sealwire_relay_accept_latency_seconds_bucket",
        "sealwire_relay_queue_envelopes",
    ):
        assert name in text
    assert relay.metric("sealwire_relay_envelopes_accepted_total") == before + 1


def test_expired_envelopes_are_reported_to_the_senders_server(tmp_path: Path) -> None:
    proc = RelayProcess(
        tmp_path / "relay",
        "--envelope-lifetime-s",
        "1",
        "--expiry-interval-s",
        "0.2",
        env=FAST,
    ).start()
    org = live_org()
    alice, bob = org.device(1), org.device(2)
    try:

        async def scenario() -> None:
            server = await org.connect_server(proc.url)
            a = await alice.connect(proc.url)
            envelope = alice.seal_to(bob, b"never read")
            await a.send(envelope)
            notice = await asyncio.wait_for(server.expiries.get(), 10)
            assert notice.recipient == bob.address
            assert notice.digest == sha256(envelope)
            b = await bob.connect(proc.url)
            assert await drain(b) == []  # gone from the queue
            for conn in (a, b, server):
                await conn.close()

        asyncio.run(scenario())
        assert proc.metric("sealwire_relay_envelopes_expired_total") == 1
    finally:
        proc.stop()


def test_allow_list_admits_only_listed_organisations(tmp_path: Path) -> None:
    listed, unlisted = live_org(), live_org()
    proc = RelayProcess(
        tmp_path / "relay",
        "--admission",
        "allow-list",
        "--organisation",
        listed.id.hex(),
        env=FAST,
    ).start()
    try:

        async def scenario() -> None:
            ok = await listed.connect_server(proc.url)
            with pytest.raises(SessionEnded) as info:
                await unlisted.connect_server(proc.url)
            assert info.value.code == "not-admitted"
            await ok.close()

        asyncio.run(scenario())
    finally:
        proc.stop()


def test_kill_9_loses_nothing_that_was_accepted(tmp_path: Path) -> None:
    """Several senders stream; the relay is killed with SIGKILL mid-stream and restarted on
    the same data: every envelope that was accepted is delivered, and shown exactly once."""
    data = tmp_path / "relay"
    proc = RelayProcess(data, env=FAST).start()
    org = live_org()
    senders = [org.device(i) for i in range(4)]
    bob = org.device(99)
    accepted: set[bytes] = set()
    shown: list[bytes] = []

    async def stream(url: str) -> None:
        server = await org.connect_server(url)
        b = await bob.connect(url)

        async def send_from(index: int) -> None:
            conn = await senders[index].connect(url)
            i = 0
            try:
                while True:
                    body = b"s%d-%d" % (index, i)
                    envelope = senders[index].seal_to(bob, body)
                    await conn.send(envelope)
                    accepted.add(body)
                    i += 1
            except (SessionEnded, OSError):
                return
            finally:
                await conn.close()

        async def read() -> None:
            try:
                while True:
                    delivery = await b.deliveries.get()
                    with contextlib.suppress(InvalidEnvelope):  # a duplicate is not shown
                        shown.append(bob.open(delivery.envelope))
                    b.ack([delivery.delivery_id])
            except asyncio.CancelledError:
                return

        reader = asyncio.create_task(read())
        tasks = [asyncio.create_task(send_from(i)) for i in range(len(senders))]
        await asyncio.sleep(2.0)
        proc.kill()  # SIGKILL, mid-stream
        await asyncio.wait(tasks, timeout=10)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        for conn in (server, b):
            await conn.close()

    asyncio.run(stream(proc.url))
    assert len(accepted) > 100, "the senders did not get going"

    restarted = RelayProcess(data, env=FAST).start()
    try:

        async def collect() -> None:
            server = await org.connect_server(restarted.url)
            b = await bob.connect(restarted.url)
            for _, envelope in await drain(b, quiet=1.0):
                # A duplicate (delivered before the crash, not acknowledged in time) is dropped.
                with contextlib.suppress(InvalidEnvelope):
                    shown.append(bob.open(envelope))
            await b.close()
            await server.close()

        asyncio.run(collect())
    finally:
        restarted.stop()
    assert len(shown) == len(set(shown)), "an envelope was shown twice"
    missing = accepted - set(shown)
    assert not missing, f"{len(missing)} accepted envelopes lost, e.g. {sorted(missing)[:3]}"
