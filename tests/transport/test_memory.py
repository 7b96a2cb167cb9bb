"""The in-memory transport: the real relay service in this process behind pipes
(:mod:`sealwire.transport.memory`), and device and server scenarios that run on it with no
socket and no subprocess (copies of scenarios of ``tests/server/test_black_box_defects.py``,
which run them on a relay process; the wider move of service tests comes later).
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from sealwire.device.store import MessageState
from sealwire.errors import ConfigError, TransportError
from sealwire.protocol.messaging import MAX_TEXT
from sealwire.server.store import holders
from sealwire.transport import RelayConnection, RelayLink, RequestRefused, SessionEnded
from sealwire.transport.memory import MemoryRelay

from ..relay.harness import LiveDevice, LiveOrg, live_org, receive
from ..server.management_harness import ADMIN, run
from .conftest import MemoryOrgFactory, MemoryRelayFactory

# --- the transport ------------------------------------------------------------------------------


async def _device_link(relay: MemoryRelay, device: LiveDevice, url: str) -> RelayLink:
    link: RelayLink = await relay.open(url, identity=device.key, chain=device.chain)
    return link


async def _server_link(relay: MemoryRelay, org: LiveOrg) -> RelayLink:
    return await relay.open(
        relay.url, identity=org.server, chain=[org.server_cert.encode()], root=org.root.public_key
    )


def test_envelopes_travel_through_the_relay_service_without_a_socket(
    memory_relay: MemoryRelayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_sockets(*args: object, **kwargs: object) -> None:
        raise AssertionError("the in-memory transport opened a socket")

    async def scenario() -> None:
        async with memory_relay() as relay:
            monkeypatch.setattr(socket, "socket", no_sockets)
            org = live_org()
            server = await _server_link(relay, org)  # registers the organisation
            alice, bob = org.device(1), org.device(2)
            a = await _device_link(relay, alice, relay.url)
            b = await _device_link(relay, bob, relay.url)
            assert a.address == alice.address
            await a.send(alice.seal_to(bob, b"hello through memory"))
            assert isinstance(b, RelayConnection)
            (envelope,) = await receive(b, 1)
            assert bob.open(envelope) == b"hello through memory"
            # The relay's policy applies as over a WebSocket: a revoked address is refused.
            await server.revoke([bob.address])
            why = await asyncio.wait_for(b.ended, 10)
            assert why.code == "revoked"
            with pytest.raises(RequestRefused) as refused:
                await a.send(alice.seal_to(bob, b"after"))
            assert refused.value.code == "recipient-revoked"
            with pytest.raises(SessionEnded) as ended:
                await _device_link(relay, bob, relay.url)
            assert ended.value.code == "revoked"
            for link in (a, server):
                await link.close()
            monkeypatch.undo()

    run(scenario())


def test_the_in_memory_relay_answers_only_its_own_origin(memory_relay: MemoryRelayFactory) -> None:
    async def scenario() -> None:
        async with memory_relay() as relay:
            device = live_org().device(1)
            with pytest.raises(TransportError, match="not this in-process relay"):
                await _device_link(relay, device, "wss://elsewhere.example")
            with pytest.raises(TransportError, match="cannot reach"):
                await _device_link(relay, device, "not a url")

    run(scenario())


def test_activation_requests_over_the_rate_are_refused_by_the_relay_edge(
    memory_relay: MemoryRelayFactory,
) -> None:
    """The session reports the activation request, the edge refuses it (rate-limited) or
    admits it: the Ready comes only when admitted."""

    async def scenario() -> None:
        async with memory_relay(activation_burst=2, activation_rate_per_minute=1) as relay:
            admitted = [await relay.open_for_activation(relay.url) for _ in range(2)]
            for link in admitted:
                assert not link.closed and link.address is None
            with pytest.raises(SessionEnded) as refused:
                await relay.open_for_activation(relay.url)
            assert refused.value.code == "rate-limited"
            for link in admitted:
                await link.close()

    run(scenario())


def test_stopping_the_in_memory_relay_ends_its_sessions(memory_relay: MemoryRelayFactory) -> None:
    async def scenario() -> None:
        async with memory_relay() as relay:
            org = live_org()
            server = await _server_link(relay, org)
            await relay.stop()
            why = await asyncio.wait_for(server.ended, 10)
            assert why.code == "shutdown"
            await server.close()

    run(scenario())


# --- device and server scenarios on the in-memory relay ----------------------------------------


def test_a_text_over_the_limit_is_refused_before_anything_is_sent(
    memory_org: MemoryOrgFactory,
) -> None:
    async def scenario() -> None:
        async with memory_org() as org:
            alice = await org.person("alice")
            bob = await org.person("bob")
            async with alice.online():
                with pytest.raises(ConfigError, match="too long: 32,769 characters"):
                    await alice.send_message("bob", "z" * (MAX_TEXT + 1))
                assert alice.store.messages() == []
                await alice.send_message("bob", "z" * MAX_TEXT)
                await alice.send_message("bob", "\U0001d11e" * MAX_TEXT)
            got = await bob.sync()
            assert sorted(len(m.text) for m in got) == [MAX_TEXT, MAX_TEXT]

    run(scenario())


def test_deprovisioning_reaches_a_peer_that_cached_the_person_at_once(
    memory_org: MemoryOrgFactory,
) -> None:
    async def scenario() -> None:
        async with memory_org() as org:
            wendy = await org.person("wendy")
            await org.person("xavier")
            async with wendy.online():
                await wendy.send_message("xavier", "before")
            assert wendy.store.cached_entry("xavier", now=org.clock() // 1000) is not None
            await org.admin.disable_user(ADMIN, "xavier")
            async with wendy.online():
                with pytest.raises(ConfigError, match="not a person"):
                    await wendy.send_message("xavier", "after")
            assert wendy.store.cached_entry("xavier", now=org.clock() // 1000) is None
            assert [m.text for m in wendy.store.messages()] == ["before"]

    run(scenario())


def test_the_relay_refuses_a_message_to_a_revoked_device_and_the_sender_is_told(
    memory_org: MemoryOrgFactory,
) -> None:
    async def scenario() -> None:
        async with memory_org() as org:
            wendy = await org.person("wendy")
            await org.person("xavier")
            async with wendy.online():
                await wendy.send_message("xavier", "before")
            with org.server.store.db.transaction() as conn:
                conn.execute(holders.delete())
            await org.admin.disable_user(ADMIN, "xavier")
            async with wendy.online():
                with pytest.raises(ConfigError, match="disabled by your organisation"):
                    await wendy.send_message("xavier", "after")
            states = {m.text: m.state for m in wendy.store.messages()}
            assert states["after"] is MessageState.FAILED
            assert wendy.store.unsent_messages() == []

    run(scenario())


def test_a_first_device_is_reachable_at_once(memory_org: MemoryOrgFactory, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with memory_org() as org:
            bob = await org.person("bob")
            ticket = await org.admin.add_user(ADMIN, "carol", "Carol")
            async with bob.online():
                with pytest.raises(ConfigError, match="no activated device yet"):
                    await bob.send_message("carol", "hello?")
            carol = await org.activate("carol", ticket.ticket, ticket.password, "carol passcode")
            async with bob.online():
                await bob.send_message("carol", "hello")
            assert [m.text for m in await carol.sync()] == ["hello"]

    run(scenario())
