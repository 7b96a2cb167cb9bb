"""End to end with real processes on loopback: a relay process, an enterprise-server process
(on SQLite and on PostgreSQL), the administrator's CLI, and devices through the CLI and the
library façade."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealwire.device import Device, MessageState

from .harness import RelayProcess, ServerProcess, admin, cli

PASSCODE = "correct horse battery"


@pytest.fixture
def deployment(tmp_path: Path, database_url: str) -> Iterator[tuple[RelayProcess, ServerProcess]]:
    relay = RelayProcess(tmp_path / "relay").start()
    server = ServerProcess(tmp_path / "org", relay.url, database=database_url)
    try:
        server.start()
        yield relay, server
    finally:
        server.stop()
        relay.stop()


def activate_cli(home: Path, ticket: dict[str, str]) -> None:
    result = cli(
        "device",
        "--home",
        str(home),
        "activate",
        ticket["ticket"],
        "--password-stdin",
        stdin=f"{ticket['password']}\n{PASSCODE}\n",
    )
    assert result.code == 0, result.err
    assert "activated" in result.out


def inbox(home: Path) -> list[dict[str, object]]:
    result = cli("device", "--home", str(home), "inbox", "--json")
    assert result.code == 0, result.err
    return result.lines()


def test_two_people_talk_through_the_relay(
    tmp_path: Path, deployment: tuple[RelayProcess, ServerProcess]
) -> None:
    _, server = deployment
    alice_ticket = admin(server.data, "user", "add", "alice", "--name", "Alice Example")
    bob_ticket = admin(server.data, "user", "add", "bob", "--name", "Bob Example")
    assert alice_ticket["ticket"].startswith("sealwire-ticket:")
    activate_cli(tmp_path / "alice-phone", alice_ticket)
    activate_cli(tmp_path / "bob", bob_ticket)
    # Alice's second device: a new activation password for the same person.
    second = admin(server.data, "user", "ticket", "alice")
    activate_cli(tmp_path / "alice-laptop", second)
    users = {u["username"]: u for u in admin(server.data, "user", "list")}
    assert users["alice"]["devices"] == 2 and users["bob"]["devices"] == 1

    sent = cli("device", "--home", str(tmp_path / "alice-phone"), "send", "bob", "hello bob")
    assert sent.code == 0, sent.err
    got = inbox(tmp_path / "bob")
    assert [(m["from"], m["text"], m["outgoing"]) for m in got] == [("alice", "hello bob", False)]
    reply = cli("device", "--home", str(tmp_path / "bob"), "send", "alice", "hi alice")
    assert reply.code == 0, reply.err

    # Alice's other device sees both sides of the conversation.
    laptop = inbox(tmp_path / "alice-laptop")
    assert sorted((m["from"], m["to"], m["text"]) for m in laptop) == [
        ("alice", "bob", "hello bob"),
        ("bob", "alice", "hi alice"),
    ]
    phone = inbox(tmp_path / "alice-phone")
    mine = next(m for m in phone if m["outgoing"])
    assert mine["text"] == "hello bob"
    assert mine["state"] in {"delivered", "read"}  # Bob's device sent a receipt
    assert [m["text"] for m in phone if not m["outgoing"]] == ["hi alice"]
    # Shown once, however often one asks.
    assert len(inbox(tmp_path / "bob")) == 2


def test_offline_recipient_gets_messages_on_return(
    tmp_path: Path, deployment: tuple[RelayProcess, ServerProcess]
) -> None:
    _, server = deployment
    tickets = {name: admin(server.data, "user", "add", name) for name in ("carol", "dave")}

    async def scenario() -> None:
        devices = {
            name: await Device.activate(
                tmp_path / name, ticket["ticket"], ticket["password"], PASSCODE
            )
            for name, ticket in tickets.items()
        }
        carol, dave = devices["carol"], devices["dave"]
        # Dave is offline: nothing of his is connected while Carol sends.
        async with carol.online():
            for n in range(5):
                await carol.send_message("dave", f"message {n}")
        new = await dave.sync()
        assert [m.text for m in new] == [f"message {n}" for n in range(5)]
        assert all(m.state is MessageState.RECEIVED for m in new)
        # Read receipts travel back.
        async with dave.online():
            await dave.mark_read(new)
        await carol.sync()
        states = {m.state for m in carol.store.messages() if m.outgoing}
        assert states == {MessageState.READ}
        for device in devices.values():
            device.close()

    asyncio.run(scenario())


def test_people_keep_talking_while_their_server_is_down(
    tmp_path: Path, deployment: tuple[RelayProcess, ServerProcess]
) -> None:
    _, server = deployment
    tickets = {name: admin(server.data, "user", "add", name) for name in ("erin", "frank")}

    async def scenario() -> None:
        erin, frank = [
            await Device.activate(
                tmp_path / name, tickets[name]["ticket"], tickets[name]["password"], PASSCODE
            )
            for name in ("erin", "frank")
        ]
        await erin.send("frank", "before")
        assert [m.text for m in await frank.sync()] == ["before"]
        await frank.send("erin", "ack")
        await erin.sync()
        server.stop()  # directory entries are cached: the relay is all they need now
        started = time.monotonic()
        await erin.send("frank", "while the server is down")
        assert [m.text for m in await frank.sync()] == ["while the server is down"]
        assert time.monotonic() - started < 30
        erin.close()
        frank.close()

    asyncio.run(scenario())
