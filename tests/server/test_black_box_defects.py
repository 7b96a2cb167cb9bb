"""Defects found by black-box testing (issue 14), each with the test that failed before its fix:
a text over the limit reported sent and dropped by the recipient; a directory cache that
outlived deprovisioning and ignored the policy; an empty answer cached; a look-up the server
refused left unanswered; a wipe that stayed queued after deprovisioning; waits for a server
that is down adding up; the end of the relay link logged as a server failure.

A real relay process, the enterprise server and devices in this process (one injected clock).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sealwire.device import device as device_module
from sealwire.device import keys as device_keys
from sealwire.device.store import MessageState
from sealwire.errors import ConfigError, RemoteProtocolError
from sealwire.protocol.directory import (
    DIRECTORY_MESSAGES,
    REQUEST_ID_SIZE,
    DirectoryQuery,
    ServerRefusal,
    ServerRefusalCode,
)
from sealwire.protocol.envelope import PayloadType
from sealwire.protocol.messaging import MAX_TEXT
from sealwire.server.administration import PolicySettings
from sealwire.server.store import holders
from sealwire.transport import SessionEnded

from ..protocol.unchecked import encode_unchecked
from ..relay.harness import RelayProcess
from .management_harness import ADMIN, eventually, listening, organisation, run

pytestmark = pytest.mark.usefixtures("runtime_directory")


# --- 1. one definition of every size limit, on both sides ---------------------------------------


def test_a_text_over_the_limit_is_refused_before_anything_is_sent(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            alice = await org.person("alice")
            bob = await org.person("bob")
            async with alice.online():
                with pytest.raises(ConfigError, match="too long: 32,769 characters"):
                    await alice.send_message("bob", "z" * (MAX_TEXT + 1))
                # Nothing was stored as sent, nothing went to the relay.
                assert alice.store.messages() == []
                # The longest text arrives, in the widest characters too.
                await alice.send_message("bob", "z" * MAX_TEXT)
                await alice.send_message("bob", "\U0001d11e" * MAX_TEXT)
            got = await bob.sync()
            assert sorted(len(m.text) for m in got) == [MAX_TEXT, MAX_TEXT]

    run(scenario())


# --- 3. deprovisioning and new devices reach peers at once; the policy sets the cache ------------


def test_deprovisioning_reaches_a_peer_that_cached_the_person_at_once(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            wendy = await org.person("wendy")
            xavier = await org.person("xavier")
            async with wendy.online():
                await wendy.send_message("xavier", "before")  # Wendy caches Xavier's entry
            assert wendy.store.cached_entry("xavier", now=org.clock() // 1000) is not None
            await org.admin.disable_user(ADMIN, "xavier")
            # No clock moves: the server told Wendy's device (queued at the relay for it).
            async with wendy.online():
                with pytest.raises(ConfigError, match="not a person"):
                    await wendy.send_message("xavier", "after")
            assert wendy.store.cached_entry("xavier", now=org.clock() // 1000) is None
            assert [m.text for m in wendy.store.messages()] == ["before"]
            del xavier

    run(scenario())


def test_the_relay_refuses_a_message_to_a_revoked_device_and_the_sender_is_told(
    tmp_path: Path, relay: RelayProcess
) -> None:
    """The backstop when the server could not tell the peer (here: it forgot who holds the
    entry): the relay refuses envelopes to an address the sender's organisation revoked."""

    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
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
            assert wendy.store.unsent_messages() == []  # nothing left to retry forever
            # The cached entry is gone: the next attempt asks the server.
            async with wendy.online():
                with pytest.raises(ConfigError, match="not a person"):
                    await wendy.send_message("xavier", "again")

    run(scenario())


def test_a_first_device_is_reachable_at_once(tmp_path: Path, relay: RelayProcess) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            bob = await org.person("bob")
            ticket = await org.admin.add_user(ADMIN, "carol", "Carol")
            async with bob.online():
                with pytest.raises(ConfigError, match="no activated device yet"):
                    await bob.send_message("carol", "hello?")
            from sealwire.device import Device

            carol = await Device.activate(
                tmp_path / "carol",
                ticket.ticket,
                ticket.password,
                "carol passcode",
                clock=org.clock,
            )
            org.devices.append(carol)
            async with carol.online():
                pass  # first contact: the server lists the device from now on
            async with bob.online():
                await bob.send_message("carol", "hello")
            assert [m.text for m in await carol.sync()] == ["hello"]

    run(scenario())


def test_a_contacts_new_device_reaches_a_connected_peer_at_once(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            alice = await org.person("alice")
            bob = await org.person("bob")
            async with bob.online():
                await bob.send_message("alice", "one device")
            task, stop = await listening(bob)
            ticket = await org.admin.issue_ticket(ADMIN, "alice")
            from sealwire.device import Device

            laptop = await Device.activate(
                tmp_path / "alice-laptop",
                ticket.ticket,
                ticket.password,
                "laptop passcode",
                clock=org.clock,
            )
            org.devices.append(laptop)
            async with laptop.online():
                pass
            # The server told Bob's listening device that Alice's entry changed.
            await eventually(lambda: not bob._directory.remembers("alice"))
            stop.set()
            await task
            async with bob.online():
                await bob.send_message("alice", "two devices")
            assert "two devices" in [m.text for m in await laptop.sync()]
            assert "two devices" in [m.text for m in await alice.sync()]

    run(scenario())


def test_the_policys_directory_cache_lifetime_is_the_one_that_applies(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            bob = await org.person("bob")
            await org.person("alice")
            await org.admin.put_policy(ADMIN, "default", PolicySettings(directory_cache_s=30))
            async with bob.online():
                await bob.lookup(["alice"])
            now_s = org.clock() // 1000
            assert bob.store.cached_entry("alice", now=now_s) is not None
            assert bob.store.cached_entry("alice", now=now_s + 31) is None  # not 600 s
            with org.server.store.db.transaction() as conn:
                held = (
                    conn.execute(
                        sa.select(holders.c.expires_at).where(holders.c.address == bob.address)
                    )
                    .scalars()
                    .all()
                )
            assert held and max(held) <= now_s + 31

    run(scenario())


# --- 6. every request gets an answer ------------------------------------------------------------


def test_a_name_the_server_would_refuse_is_refused_at_once(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            alice = await org.person("alice")
            async with alice.online():
                started = time.monotonic()
                with pytest.raises(ConfigError, match="not a valid user name"):
                    await alice.send_message("n" * 65, "hi")
                with pytest.raises(ConfigError, match="not a valid user name"):
                    await alice.devices("Bad Name")
                assert time.monotonic() - started < 5  # not the 15 s answer timeout

    run(scenario())


def test_the_server_answers_a_request_it_cannot_decode(tmp_path: Path, relay: RelayProcess) -> None:
    """An older or broken device's request (a 65-character name) gets a refusal naming the
    problem, not silence."""

    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            alice = await org.person("alice")
            async with alice.online():
                request_id = bytes(range(REQUEST_ID_SIZE))
                query = DirectoryQuery(request_id=request_id, users=("n" * 65,))
                body = encode_unchecked(query, DIRECTORY_MESSAGES)
                answer: asyncio.Future[object] = asyncio.get_running_loop().create_future()
                alice._link._pending[request_id] = answer
                await alice._link.send_envelope(
                    alice._profile.seal_to_server(PayloadType.DIRECTORY, body)
                )
                refusal = await asyncio.wait_for(answer, 10)
            assert isinstance(refusal, ServerRefusal)
            assert refusal.code is ServerRefusalCode.MALFORMED
            assert "longer than 64" in refusal.reason

    run(scenario())


def test_a_refusal_reaches_the_caller_as_a_clear_error(
    tmp_path: Path, relay: RelayProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prekey the server does not accept is refused, and the device says so at once."""

    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            alice = await org.person("alice")
            real = device_keys.sign_prekey

            def wrong_key(identity: Any, **fields: Any) -> Any:
                from sealwire.protocol.suite import SigningKey

                return real(SigningKey.generate(os.urandom), **fields)  # not this device's key

            monkeypatch.setattr(device_keys, "sign_prekey", wrong_key)
            async with alice.online():
                started = time.monotonic()
                with pytest.raises(RemoteProtocolError, match="a prekey does not verify"):
                    await alice.rotate_prekey()
                assert time.monotonic() - started < 10

    run(scenario())


# --- 8. smaller ones ---------------------------------------------------------------------------


def test_a_wipe_pushed_while_deprovisioning_is_acknowledged(
    tmp_path: Path, relay: RelayProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The device gets its wipe but the relay cuts it off before its result goes out (a
    device slower than the server's revocation, as a CLI process on a busy machine is)."""

    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            xavier = await org.person("xavier")
            address = xavier.address.hex()
            run_commands = xavier._management.run_commands

            async def after_the_cut(commands: Any) -> None:
                conn = xavier._link._conn
                if conn is not None:
                    await asyncio.wait_for(asyncio.shield(conn.ended), 10)
                await run_commands(commands)

            monkeypatch.setattr(xavier._management, "run_commands", after_the_cut)
            task, _ = await listening(xavier)
            await org.admin.disable_user(ADMIN, "xavier")
            with pytest.raises(Exception):  # noqa: B017 (wiped, or cut off and locked)
                await asyncio.wait_for(task, 10)
            # The pushed wipe reached it before the relay cut it off: it erases itself ...
            await eventually(lambda: not (xavier.store.home / "device.key").exists(), 15)
            # ... and the server hears so, although the relay refuses the device by then.
            await eventually(lambda: org.admin.commands(address)[0].state == "done", 15)

    run(scenario())


def test_with_the_server_down_a_device_waits_for_it_once(
    tmp_path: Path, relay: RelayProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Send and inbox (two connections, as the CLI does) wait one maintenance window in all,
    not one per question and per connection."""
    wait = 5.0  # long enough that a busy machine's overhead stays well inside the margin
    monkeypatch.setattr(device_module, "MAINTAIN_WAIT_S", wait)

    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            alice = await org.person("alice")
            bob = await org.person("bob")
            async with alice.online():
                await alice.send_message("bob", "cached")
            await bob.sync()
            await org.server.stop()

            started = time.monotonic()
            await alice.send("bob", "while the server is down")
            sent = time.monotonic() - started
            started = time.monotonic()
            await bob.sync()
            async with bob.online():
                pass
            inbox = time.monotonic() - started
            # One window each (plus the settle time); before, two per connection.
            assert sent < 1.8 * wait, sent
            assert inbox < 1.8 * wait, inbox
            org.server = type(org.server).open(org.server.config, clock=org.clock)

    run(scenario())


def test_the_relay_going_away_mid_answer_is_not_logged_as_a_failure(
    tmp_path: Path, relay: RelayProcess, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            server = org.server

            async def ended(conn: Any) -> None:
                raise SessionEnded("connection-lost", "the relay went away")

            class Conn:
                def __init__(self) -> None:
                    self.ended = asyncio.get_running_loop().create_future()
                    self.activations: asyncio.Queue[object] = asyncio.Queue()

            server.link._deliveries = ended  # type: ignore[method-assign]
            with caplog.at_level(logging.INFO, logger="sealwire"):
                await server.link._serve(Conn())  # type: ignore[arg-type]
            errors = [
                r
                for r in caplog.records
                if r.levelno >= logging.ERROR and r.name.startswith("sealwire")
            ]
            assert errors == []
            assert any("relay link ended" in r.getMessage() for r in caplog.records)

    run(scenario())
