"""Two relay processes sharing the local NATS JetStream: any node serves any address.

Needs NATS with JetStream on 127.0.0.1:4222 (``.ci/run`` starts it). Under ``CI=true`` an
unreachable NATS fails these tests instead of skipping them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealwire.errors import InvalidEnvelope
from sealwire.transport import SessionEnded

from .conftest import NATS_URL, require_nats
from .harness import RelayProcess, drain, live_org, receive


@pytest.fixture
def prefix() -> Iterator[str]:
    asyncio.run(require_nats())  # skips, or fails under CI=true, without NATS
    name = "swtest" + uuid.uuid4().hex[:10]
    yield name
    asyncio.run(_destroy(name))


async def _destroy(prefix: str) -> None:
    from sealwire.relay.backends.nats import NatsBackend

    backend = NatsBackend(NATS_URL, prefix=prefix)
    await backend.destroy()


def _node(tmp_path: Path, name: str, prefix: str) -> RelayProcess:
    return RelayProcess(
        tmp_path / name,
        "--backend",
        "nats",
        "--nats-prefix",
        prefix,
        "--nats-url",
        NATS_URL,
        env={
            "SEALWIRE_RELAY_SOURCE_CONNECT_RATE": "10000",
            "SEALWIRE_RELAY_SOURCE_CONNECT_BURST": "10000",
        },
    ).start()


def test_a_device_on_node_a_receives_what_was_sent_through_node_b_also_after_a_dies(
    tmp_path: Path, prefix: str
) -> None:
    a_node, b_node = _node(tmp_path, "a", prefix), _node(tmp_path, "b", prefix)
    org = live_org()
    alice, bob = org.device(1), org.device(2)
    try:

        async def scenario() -> None:
            # The server registers through node B only; node A learns the organisation's root
            # from the cluster.
            server = await org.connect_server(b_node.url)
            await asyncio.sleep(0.3)
            b_on_a = await bob.connect(a_node.url)
            a_on_b = await alice.connect(b_node.url)
            await a_on_b.send(alice.seal_to(bob, b"through B, to A"))
            got = await receive(b_on_a, 1)
            assert bob.open(got[0]) == b"through B, to A"

            # Bob goes offline: envelopes wait in the cluster's queue.
            await b_on_a.close()
            for i in range(20):
                await a_on_b.send(alice.seal_to(bob, b"queued %d" % i))
            # Bob reconnects to A, takes some without acknowledging them, and A dies.
            b_on_a = await bob.connect(a_node.url)
            first = await drain(b_on_a, quiet=0.5)
            assert len(first) == 20
            shown = {bob.open(e) for _, e in first[:5]}
            b_on_a.ack([i for i, _ in first[:5]])
            await asyncio.sleep(0.5)  # the acks reach the cluster
            a_node.kill()
            ended = await asyncio.wait_for(b_on_a.ended, 5)
            assert isinstance(ended, SessionEnded)
            await b_on_a.close()

            # Bob reconnects to B: everything not acknowledged comes again, nothing is lost,
            # and what was shown is not shown twice.
            b_on_b = await bob.connect(b_node.url)
            rest = await drain(b_on_b, quiet=1.0)
            for _, envelope in rest:
                with contextlib.suppress(InvalidEnvelope):  # duplicates are dropped
                    shown.add(bob.open(envelope))
            assert shown == {b"queued %d" % i for i in range(20)}
            assert len(rest) == 15  # the five acknowledged ones were deleted cluster-wide
            b_on_b.ack([i for i, _ in rest])
            for conn in (a_on_b, b_on_b, server):
                await conn.close()

        asyncio.run(scenario())
    finally:
        a_node.kill()
        b_node.stop()


def test_revocation_through_one_node_drops_the_device_on_another(
    tmp_path: Path, prefix: str
) -> None:
    a_node, b_node = _node(tmp_path, "a", prefix), _node(tmp_path, "b", prefix)
    org = live_org()
    bob = org.device(2)
    try:

        async def scenario() -> None:
            server = await org.connect_server(a_node.url)
            await asyncio.sleep(0.3)
            b_on_b = await bob.connect(b_node.url)
            await server.revoke([bob.address])
            ended = await asyncio.wait_for(b_on_b.ended, 3)
            assert ended.code == "revoked"
            await b_on_b.close()
            with pytest.raises(SessionEnded) as info:
                await bob.connect(a_node.url)
            assert info.value.code == "revoked"
            await server.close()

        asyncio.run(scenario())
    finally:
        a_node.stop()
        b_node.stop()


def test_activation_reaches_a_server_connected_to_the_other_node(
    tmp_path: Path, prefix: str
) -> None:
    from sealwire.transport import RelayConnection

    a_node, b_node = _node(tmp_path, "a", prefix), _node(tmp_path, "b", prefix)
    org = live_org()
    try:

        async def scenario() -> None:
            server = await org.connect_server(a_node.url)
            await asyncio.sleep(0.3)
            device = await RelayConnection.open_for_activation(b_node.url)
            session = os.urandom(16)
            await device.send_activation(session, b"pake 1", org.server_address)
            at_server = await asyncio.wait_for(server.activations.get(), 5)
            assert at_server.payload == b"pake 1"
            await server.send_activation(at_server.session, b"answer 1")
            at_device = await asyncio.wait_for(device.activations.get(), 5)
            assert (at_device.session, at_device.payload) == (session, b"answer 1")
            await device.close()
            await server.close()

        asyncio.run(scenario())
    finally:
        a_node.stop()
        b_node.stop()
