"""Activation attempts are counted when a run starts (issue 14, item 4): however many runs
are open at once against one ticket, at most ``ticket_attempts`` of them are handed the
password scalar, so at most that many guesses are ever checked. Driven in-process through
``EnterpriseServer.activation.step`` (the path relay activation frames take) against the real
store, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sealwire.protocol.activation import (
    ActivationChallenge,
    ActivationCompleted,
    ActivationRefusal,
    ActivationRefused,
    ActivationTicket,
    DeviceActivation,
    RefusalCode,
    decode_message,
    normalise_password,
    ticket_from_text,
)
from sealwire.protocol.identity import sign_prekey
from sealwire.protocol.session import ActivationReceived
from sealwire.protocol.suite import SigningKey, XWingPrivateKey
from sealwire.server import EnterpriseServer
from sealwire.server.config import ServerConfig
from sealwire.server.store import ServerStore, TicketState

ATTEMPTS = 5
RUNS = 9
_SCALARS: dict[tuple[ActivationTicket, str], bytes] = {}
_real_password_scalar = ActivationTicket.password_scalar


def _cached_password_scalar(ticket: ActivationTicket, password: str) -> bytes:
    """Argon2id at 64 MiB once per password, not once per run: the test opens many runs."""
    key = (ticket, password)
    if key not in _SCALARS:
        _SCALARS[key] = _real_password_scalar(ticket, password)
    return _SCALARS[key]


@pytest.fixture
def server(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[EnterpriseServer]:
    monkeypatch.setattr(ActivationTicket, "password_scalar", _cached_password_scalar)
    # Never started: the runs are fed straight to the activation step, no relay link needed.
    config = ServerConfig(
        data=str(tmp_path / "org"), relay="ws://127.0.0.1:9", database=database_url
    )
    opened = EnterpriseServer.open(config)
    try:
        yield opened
    finally:
        asyncio.run(opened.stop())


def _ticket(server: EnterpriseServer) -> tuple[ActivationTicket, str]:
    issued = asyncio.run(server.administration.add_user("test", "dora", "Dora"))
    return ticket_from_text(issued.ticket), issued.password


def _device(ticket: ActivationTicket, password: str) -> DeviceActivation:
    identity = SigningKey.generate(os.urandom)
    signed = sign_prekey(
        identity,
        prekey_id=1,
        public_key=XWingPrivateKey.generate(os.urandom).public_key,
        not_after=int(time.time()) + 30 * 86400,
    )
    run = DeviceActivation(
        ticket,
        normalise_password(password),
        identity=identity,
        signed_prekeys=[signed.encode()],
        random=os.urandom,
    )
    run.start()
    return run


def _step(server: EnterpriseServer, session: bytes, data: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for payload in data:
        out += server.activation.step(ActivationReceived(session=session, payload=payload))
    return out


def _refusal(replies: list[bytes]) -> RefusalCode | None:
    (message,) = [decode_message(r) for r in replies]
    return message.code if isinstance(message, ActivationRefusal) else None


def test_concurrent_runs_get_at_most_five_guesses(server: EnterpriseServer) -> None:
    ticket, password = _ticket(server)
    # Nine runs with wrong passwords all start before any of them confirms.
    devices = [_device(ticket, f"WRNG-WRNG-WRN{n}") for n in range(RUNS)]
    challenged: list[tuple[bytes, DeviceActivation, list[bytes]]] = []
    refused = 0
    for n, device in enumerate(devices):
        session = bytes([n]) * 16
        replies = _step(server, session, device.data_to_send())
        if _refusal(replies) is RefusalCode.UNKNOWN_TICKET:
            refused += 1
        else:
            (message,) = [decode_message(r) for r in replies]
            assert isinstance(message, ActivationChallenge)
            challenged.append((session, device, replies))
    assert len(challenged) == ATTEMPTS
    assert refused == RUNS - ATTEMPTS
    # The attempts are spent already: nothing more is handed out while the runs are open.
    record = server.store.ticket(ticket.ticket_id)
    assert record is not None and record.attempts_left == 0 and record.sealed_scalar == b""

    # The started runs confirm (wrong): each is one checked guess, none counted twice.
    for session, device, replies in challenged:
        for reply in replies:
            device.receive(reply)
        answer = _step(server, session, device.data_to_send())
        assert _refusal(answer) is RefusalCode.PASSWORD_REJECTED
    record = server.store.ticket(ticket.ticket_id)
    assert record is not None
    assert (record.state, record.attempts_left) == (TicketState.BURNED, 0)

    # Even the right password now finds the ticket burned.
    late = _device(ticket, password)
    assert _refusal(_step(server, b"\xff" * 16, late.data_to_send())) is RefusalCode.UNKNOWN_TICKET
    assert server.store.devices_of(["dora"], now=0) == []


def test_the_last_reserved_attempt_can_still_succeed(server: EnterpriseServer) -> None:
    ticket, password = _ticket(server)
    # Five runs start (the last with the right password); a sixth is refused.
    devices = [_device(ticket, f"WRNG-WRNG-WRN{n}") for n in range(ATTEMPTS - 1)]
    devices.append(_device(ticket, password))
    sessions = [bytes([n]) * 16 for n in range(ATTEMPTS)]
    first = [_step(server, s, d.data_to_send()) for s, d in zip(sessions, devices, strict=True)]
    extra = _device(ticket, password)
    assert _refusal(_step(server, b"\xfe" * 16, extra.data_to_send())) is (
        RefusalCode.UNKNOWN_TICKET
    )
    # The four wrong ones fail first; the ticket holds no attempt but is not burned yet.
    events: list[Any] = []
    for session, device, replies in zip(sessions, devices, first, strict=True):
        for reply in replies:
            device.receive(reply)
        for reply in _step(server, session, device.data_to_send()):
            events += device.receive(reply)
    assert sum(isinstance(e, ActivationRefused) for e in events) == ATTEMPTS - 1
    assert sum(isinstance(e, ActivationCompleted) for e in events) == 1
    record = server.store.ticket(ticket.ticket_id)
    assert record is not None and record.state is TicketState.USED
    assert server.activations == 1


def test_an_abandoned_last_attempt_burns_the_ticket(
    server: EnterpriseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticket, _ = _ticket(server)
    for n in range(ATTEMPTS):
        replies = _step(
            server, bytes([n]) * 16, _device(ticket, f"WRNG-WRNG-WRN{n}").data_to_send()
        )
        assert _refusal(replies) is None  # a challenge
    record = server.store.ticket(ticket.ticket_id)
    assert record is not None and (record.state, record.attempts_left) == (TicketState.OPEN, 0)
    # The runs are never confirmed; once they expire the ticket is burned.
    later = time.monotonic() + 3600
    monkeypatch.setattr("sealwire.server.activation.time.monotonic", lambda: later)
    late = _device(ticket, "WRNG-WRNG-WRNX")
    assert _refusal(_step(server, b"\xfd" * 16, late.data_to_send())) is RefusalCode.UNKNOWN_TICKET
    record = server.store.ticket(ticket.ticket_id)
    assert record is not None and (record.state, record.attempts_left) == (TicketState.BURNED, 0)


def test_reserving_attempts_from_many_threads_hands_out_exactly_the_attempts(
    server: EnterpriseServer, database_url: str
) -> None:
    """As several server instances on one PostgreSQL would: one store each, all at once."""
    ticket, _ = _ticket(server)
    now = int(time.time() * 1000)
    stores = [ServerStore.open(database_url) for _ in range(RUNS)]
    barrier = threading.Barrier(RUNS)
    got: list[bool] = []

    def reserve(store: ServerStore) -> None:
        barrier.wait()
        got.append(store.reserve_attempt(ticket.ticket_id, now=now) is not None)

    threads = [threading.Thread(target=reserve, args=(s,)) for s in stores]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for store in stores:
            store.close()
    assert sorted(got) == [False] * (RUNS - ATTEMPTS) + [True] * ATTEMPTS
