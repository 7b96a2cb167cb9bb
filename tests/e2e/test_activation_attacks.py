"""Activation under attack (DESIGN §7): five wrong passwords burn the password, an expired
password fails, a relay that alters activation frames causes a failure (never a device with a
key the server did not certify for it), and a device of another organisation gets nowhere.

Real relay processes throughout; the server is a real process where only its database and
admin endpoint matter (the burn test) and in-process where the test moves its clock or reads
its keys. Every scenario runs on SQLite and PostgreSQL (``database_url``) except the
two-organisation one, which does not depend on the server's database.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nacl.bindings as sodium
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from sealwire.device import Device
from sealwire.device.store import DeviceStore
from sealwire.errors import ActivationFailed, DecodeError
from sealwire.protocol.activation import (
    ActivationAnswer,
    ActivationChallenge,
    ActivationConfirm,
    ActivationStart,
    decode_message,
    encode_message,
    ticket_from_text,
    ticket_to_text,
)
from sealwire.protocol.codec import Struct
from sealwire.protocol.directory import DirectoryQuery, encode_directory_message, verify_prekey
from sealwire.protocol.envelope import PayloadType, seal
from sealwire.protocol.frames import Activation, decode_frame, encode_frame
from sealwire.protocol.suite import SigningKey, XWingPublicKey
from sealwire.server import EnterpriseServer
from sealwire.server.config import ServerConfig
from sealwire.server.store import TicketState
from sealwire.transport import RelayConnection

from .harness import RelayProcess, ServerProcess, admin

PASSCODE = "correct horse battery"
WRONG = "WRNG-WRNG-WRNG"
BASE_POINT = bytes.fromhex("58" + "66" * 31)  # RFC 8032 base point P
IDENTITY_POINT = b"\x01" + bytes(31)  # the neutral element: refused as a share

WRONG_PASSWORD = "wrong activation password"
NO_LONGER_VALID = "no longer valid"
NOT_CONFIRMED = "did not confirm"
MALFORMED = "malformed exchange"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_nothing_left(home: Path) -> None:
    """A failed activation leaves no store (and no file at all) in the device's home."""
    assert not DeviceStore.exists(home)
    assert not home.exists() or not any(home.rglob("*")), list(home.rglob("*"))


@contextlib.asynccontextmanager
async def in_process_server(
    data: Path, relay: str, database: str, clock: Callable[[], int] = now_ms
) -> AsyncIterator[EnterpriseServer]:
    config = ServerConfig(data=str(data), relay=relay, database=database)
    server = EnterpriseServer.open(config, clock=clock)
    try:
        await server.start()
        await server.wait_connected(10)
        yield server
    finally:
        await server.stop()


# --- five wrong passwords -------------------------------------------------------------------


def test_five_wrong_passwords_burn_the_ticket(tmp_path: Path, database_url: str) -> None:
    relay = RelayProcess(tmp_path / "relay").start()
    server = ServerProcess(tmp_path / "org", relay.url, database=database_url)
    try:
        server.start()
        issued = admin(server.data, "user", "add", "alice")
        home = tmp_path / "alice"

        async def scenario() -> None:
            for attempt in range(5):
                with pytest.raises(ActivationFailed, match=WRONG_PASSWORD):
                    await Device.activate(home, issued["ticket"], f"{WRONG}-{attempt}", PASSCODE)
                assert_nothing_left(home)
            # The sixth try, with the right password, finds the ticket burned.
            with pytest.raises(ActivationFailed, match=NO_LONGER_VALID):
                await Device.activate(home, issued["ticket"], issued["password"], PASSCODE)
            assert_nothing_left(home)

        asyncio.run(scenario())
        assert [u["devices"] for u in admin(server.data, "user", "list")] == [0]
        assert admin(server.data, "device", "list") == []
    finally:
        server.stop()
        relay.stop()
    # What the server wrote: the ticket burned, no attempt left (read after the server stopped).
    from sealwire.server.store import ServerStore

    store = ServerStore.open(database_url)
    try:
        record = store.ticket(ticket_from_text(issued["ticket"]).ticket_id)
        assert record is not None
        assert record.state is TicketState.BURNED and record.attempts_left == 0
    finally:
        store.close()


# --- expiry ---------------------------------------------------------------------------------


def test_expired_password_fails(tmp_path: Path, database_url: str) -> None:
    relay = RelayProcess(tmp_path / "relay").start()
    offset = [0]

    def clock() -> int:
        return now_ms() + offset[0]

    async def scenario() -> None:
        async with in_process_server(tmp_path / "org", relay.url, database_url, clock) as server:
            issued = await server.administration.add_user("test", "bob", "Bob", lifetime_s=60)
            ticket_id = ticket_from_text(issued.ticket).ticket_id
            home = tmp_path / "bob"
            # Still valid: a wrong password is counted as such.
            with pytest.raises(ActivationFailed, match=WRONG_PASSWORD):
                await Device.activate(home, issued.ticket, WRONG, PASSCODE)
            record = server.store.ticket(ticket_id)
            assert record is not None and record.attempts_left == 4
            # The server's clock reaches the expiry (expires_at is the first invalid moment).
            offset[0] = record.expires_at - now_ms()
            with pytest.raises(ActivationFailed, match=NO_LONGER_VALID):
                await Device.activate(home, issued.ticket, issued.password, PASSCODE)
            assert_nothing_left(home)
            assert server.store.devices_of(["bob"], now=0) == []
            after = server.store.ticket(ticket_id)
            assert after is not None and after.attempts_left == 4  # no attempt consumed

    try:
        asyncio.run(scenario())
    finally:
        relay.stop()


# --- a relay that alters activation frames --------------------------------------------------


Tamper = Callable[[Struct], Struct | None]


class TamperingProxy:
    """A WebSocket man in the middle between every client and the relay. Frames a client sends
    towards the relay that carry an activation message go through ``tamper`` (``None``: leave
    it); each activation message passes this hop exactly once, whoever sent it."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.tamper: Tamper | None = None
        self.tampered: list[str] = []
        self.seen: list[str] = []

    @contextlib.asynccontextmanager
    async def running(self, port: int) -> AsyncIterator[TamperingProxy]:
        async with serve(self._client, "127.0.0.1", port, compression=None, max_size=None):
            yield self

    def _towards_relay(self, data: bytes) -> bytes:
        try:
            frame = decode_frame(data)
            if not isinstance(frame, Activation):
                return data
            message = decode_message(frame.payload)
        except DecodeError:
            return data
        self.seen.append(type(message).__name__)
        altered = self.tamper(message) if self.tamper else None
        if altered is None:
            return data
        self.tampered.append(type(message).__name__)
        return encode_frame(dataclasses.replace(frame, payload=encode_message(altered)))

    async def _client(self, client: ServerConnection) -> None:
        async with connect(self.upstream, compression=None, max_size=None) as relay:

            async def pump(source: object, sink: object, towards_relay: bool) -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for data in source:  # type: ignore[attr-defined]
                        if towards_relay and isinstance(data, bytes):
                            data = self._towards_relay(data)
                        await sink.send(data)  # type: ignore[attr-defined]

            tasks = [
                asyncio.create_task(pump(client, relay, True)),
                asyncio.create_task(pump(relay, client, False)),
            ]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _other_point(share: bytes) -> bytes:
    """A valid share other than the honest one (share + P): it passes every point check."""
    return bytes(sodium.crypto_core_ed25519_add(share, BASE_POINT))


def _flip(data: bytes, index: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def _start_share(share: Callable[[bytes], bytes]) -> Tamper:
    def tamper(m: Struct) -> Struct | None:
        if isinstance(m, ActivationStart):
            return dataclasses.replace(m, share=share(m.share))
        return None

    return tamper


def _challenge_share(share: Callable[[bytes], bytes]) -> Tamper:
    def tamper(m: Struct) -> Struct | None:
        if isinstance(m, ActivationChallenge):
            return dataclasses.replace(m, share=share(m.share))
        return None

    return tamper


def _confirm_flipped(m: Struct) -> Struct | None:
    if isinstance(m, ActivationConfirm):
        return dataclasses.replace(m, confirmation=_flip(m.confirmation))
    return None


def _sealed_keys_flipped(m: Struct) -> Struct | None:
    if isinstance(m, ActivationConfirm):
        return dataclasses.replace(m, sealed_keys=_flip(m.sealed_keys, 40))
    return None


def _answer_flipped(m: Struct) -> Struct | None:
    if isinstance(m, ActivationAnswer):
        return dataclasses.replace(m, confirmation=_flip(m.confirmation))
    return None


def _identity(_: bytes) -> bytes:
    return IDENTITY_POINT


# (name, tamper, message the device shows, attempts the ticket loses)
TAMPERING: list[tuple[str, Tamper, str, int]] = [
    ("device share replaced by another valid point", _start_share(_other_point), WRONG_PASSWORD, 1),
    ("device share replaced by the identity point", _start_share(_identity), MALFORMED, 0),
    (
        "server challenge replaced by another valid point",
        _challenge_share(_other_point),
        WRONG_PASSWORD,
        1,
    ),
    (
        # The device gives up after the server took the run's attempt: spent all the same.
        "server challenge replaced by the identity point",
        _challenge_share(_identity),
        NOT_CONFIRMED,
        1,
    ),
    ("device confirmation flipped", _confirm_flipped, WRONG_PASSWORD, 1),
    ("device's sealed keys flipped", _sealed_keys_flipped, WRONG_PASSWORD, 1),
]


def test_tampering_relay_causes_failure_not_a_wrong_key(tmp_path: Path, database_url: str) -> None:
    relay_port = free_port()
    while (proxy_port := free_port()) == relay_port:
        pass
    proxy_url = f"ws://127.0.0.1:{proxy_port}"
    # The relay's id is that of the proxy's origin: clients dialling the proxy accept it.
    relay = RelayProcess(tmp_path / "relay", "--public-origin", proxy_url, port=relay_port)
    relay.start()
    proxy = TamperingProxy(f"ws://127.0.0.1:{relay_port}")

    async def activate(home: Path, ticket: str, password: str) -> Device:
        return await Device.activate(home, ticket, password, PASSCODE, timeout=20)

    async def scenario() -> None:
        async with (
            proxy.running(proxy_port),
            in_process_server(tmp_path / "org", proxy_url, database_url) as server,
        ):
            issued = await server.administration.add_user("test", "carol", "Carol")
            ticket_id = ticket_from_text(issued.ticket).ticket_id
            assert ticket_from_text(issued.ticket).relay == proxy_url
            left = 5
            for n, (name, tamper, shown, cost) in enumerate(TAMPERING):
                proxy.tamper, proxy.tampered = tamper, []
                home = tmp_path / f"carol-{n}"
                with pytest.raises(ActivationFailed, match=shown):
                    await activate(home, issued.ticket, issued.password)
                assert len(proxy.tampered) == 1, name
                assert_nothing_left(home)
                assert server.store.devices_of(["carol"], now=0) == [], name
                left -= cost
                record = server.store.ticket(ticket_id)
                assert record is not None, name
                assert (record.state, record.attempts_left) == (TicketState.OPEN, left), name
            assert server.activations == 0

            # The server's answer altered: the server has already certified the device's key
            # and marked the ticket used (it cannot know the answer never arrived); the device
            # refuses the answer and keeps nothing. The server keeps that device *pending*:
            # never in directory answers (nobody seals to a key nobody holds), only listed to
            # administrators. The person needs a new activation password. (A fresh ticket:
            # the runs above spent the first one's five attempts.)
            assert left == 0
            issued = await server.administration.issue_ticket("test", "carol")
            ticket_id = ticket_from_text(issued.ticket).ticket_id
            proxy.tamper, proxy.tampered = _answer_flipped, []
            home = tmp_path / "carol-answer"
            with pytest.raises(ActivationFailed, match=NOT_CONFIRMED):
                await activate(home, issued.ticket, issued.password)
            assert proxy.tampered == ["ActivationAnswer"]
            assert_nothing_left(home)
            assert server.store.devices_of(["carol"], now=0) == []
            stranded = server.store.devices_of(["carol"], now=0, states=("pending",))
            assert len(stranded) == 1
            record = server.store.ticket(ticket_id)
            assert record is not None and record.state is TicketState.USED
            with pytest.raises(ActivationFailed, match=NO_LONGER_VALID):
                await activate(home, issued.ticket, issued.password)

            # Control: the same path, untouched, activates -- so every failure above was the
            # tampering's doing -- and the key the device holds is the one the server certified.
            proxy.tamper, proxy.seen = None, []
            again = await server.administration.issue_ticket("test", "carol")
            device = await activate(tmp_path / "carol-ok", again.ticket, again.password)
            assert proxy.seen == [
                "ActivationStart",
                "ActivationChallenge",
                "ActivationConfirm",
                "ActivationAnswer",
            ]
            devices = server.store.devices_of(["carol"], now=0)
            assert device.info().address in {d.address for d in devices}
            assert device.info().address != stranded[0].address
            device.close()

    try:
        asyncio.run(scenario())
    finally:
        relay.stop()


# --- another organisation -------------------------------------------------------------------


def test_another_organisation_cannot_activate_or_use_the_directory(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay").start()

    async def scenario() -> None:
        async with (
            in_process_server(tmp_path / "org-a", relay.url, "") as org_a,
            in_process_server(tmp_path / "org-b", relay.url, "") as org_b,
        ):
            assert org_a.organisation != org_b.organisation
            await org_a.administration.add_user("test", "dave", "Dave A")
            issued_b = await org_b.administration.add_user("test", "dave", "Dave B")
            ticket_b = ticket_from_text(issued_b.ticket)

            # B's ticket (and password) pointed at A's server: A knows no such ticket.
            redirected = ticket_to_text(dataclasses.replace(ticket_b, server=org_a.address))
            home = tmp_path / "dave-b"
            with pytest.raises(ActivationFailed, match=NO_LONGER_VALID):
                await Device.activate(home, redirected, issued_b.password, PASSCODE)
            assert_nothing_left(home)
            assert org_a.store.devices_of(["dave"], now=0) == []
            record = org_b.store.ticket(ticket_b.ticket_id)
            assert record is not None and record.attempts_left == 5  # B never saw it

            # The genuine ticket activates at B.
            device = await Device.activate(home, issued_b.ticket, issued_b.password, PASSCODE)
            address = device.info().address
            identity = device.store.secret("identity")
            assert identity is not None
            device.close()
            certificate = org_b.store.device(address)
            assert certificate is not None
            chain = (certificate.certificate, org_b.keys.server_certificate)
            key = SigningKey.from_seed(identity)

            def query_to(server: EnterpriseServer) -> bytes:
                signed = verify_prekey(
                    server.keys.signed_prekey, server.keys.identity.public_key, now=0
                )
                return seal(
                    sender=key,
                    sender_chain=chain,
                    recipient=server.address,
                    prekey_id=signed.prekey.prekey_id,
                    prekey=XWingPublicKey(signed.prekey.public_key),
                    payload_type=PayloadType.DIRECTORY,
                    body=encode_directory_message(
                        DirectoryQuery(request_id=os.urandom(16), users=("dave",))
                    ),
                    now_ms=now_ms(),
                    random=os.urandom,
                )

            conn = await RelayConnection.open(relay.url, identity=key, chain=chain)
            try:
                # What B's server sent the new device after activation (its report answer
                # may have come after the device's first connection closed): out of the way.
                with contextlib.suppress(TimeoutError):
                    while True:
                        late = await asyncio.wait_for(conn.deliveries.get(), 1.5)
                        conn.ack([late.delivery_id])
                # A's directory: the relay carries the envelope, A's server does not answer a
                # device whose certificate does not chain to A's root.
                await conn.send(query_to(org_a))
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(conn.deliveries.get(), 3)
                # Control: the same query to its own server (B) is answered.
                await conn.send(query_to(org_b))
                answer = await asyncio.wait_for(conn.deliveries.get(), 10)
                conn.ack([answer.delivery_id])
            finally:
                await conn.close()
            assert org_a.store.devices_of(["dave"], now=0) == []

    try:
        asyncio.run(scenario())
    finally:
        relay.stop()
