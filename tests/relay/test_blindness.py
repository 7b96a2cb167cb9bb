"""Blindness: the relay stores, logs and measures nothing of what it carries.

One real relay process (JSON logs at debug level, short envelope lifetime and expiry interval)
carries envelopes whose bodies hold known markers through every path: delivered and
acknowledged, delivered and redelivered, expired (with the server's expiry notice), and still
queued when the relay stops. Then every file of the relay's data directory (database, -wal,
-shm, lock, log) and its /metrics text are searched for the markers in every likely encoding.

The search is shown to work: the envelopes still queued at the stop ARE found in the database
(and their recipients' addresses), the markers ARE inside the envelopes (their recipient opens
them), and the log DOES name the devices in short form.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from sealwire.protocol.identity import short_address
from sealwire.protocol.session import EnvelopeExpired

from .harness import LiveDevice, RelayProcess, drain, live_org, receive

LIFETIME_S = 3.0


def _forms(data: bytes) -> set[bytes]:
    """``data`` as it could show up in a file: raw, hex (plain, upper case, spaced as in
    websockets' frame logs) and base64 (standard and URL-safe, at each of the three alignments
    it can have inside a longer base64 text)."""
    forms = {
        data,
        data.hex().encode(),
        data.hex().upper().encode(),
        data.hex(" ").encode(),
    }
    for shift in range(3):
        chunk = data[shift:]
        chunk = chunk[: len(chunk) // 3 * 3]
        forms.add(base64.b64encode(chunk))
        forms.add(base64.urlsafe_b64encode(chunk))
    return forms


def _found(needle: bytes, haystack: bytes) -> list[bytes]:
    """The forms of ``needle`` that occur in ``haystack``."""
    return sorted(form for form in _forms(needle) if form in haystack)


@dataclass
class Marker:
    """A distinctive secret: random bytes, their hex text and a UTF-8 sentence around it."""

    raw: bytes = field(default_factory=lambda: os.urandom(16))

    @property
    def text(self) -> bytes:
        return self.raw.hex().encode()

    @property
    def sentence(self) -> bytes:
        return f"Geheimnis ✓ «{self.raw.hex()}» — n'en parlez à personne".encode()

    def body(self) -> bytes:
        return self.raw + b" " + self.text * 3 + b" " + self.sentence

    def needles(self) -> list[bytes]:
        return [self.raw, self.text, self.sentence]


@dataclass
class Scene:
    """What the relay carried and what it left behind."""

    markers: list[Marker]
    envelopes: list[bytes]
    addresses: dict[str, bytes]
    queued: list[bytes]
    """Envelopes still queued when the relay stopped."""
    files: dict[str, bytes]
    """Every file of the data directory but the log, by name."""
    log: bytes
    metrics: bytes
    returncode: int | None


def _seal(sender: LiveDevice, recipient: LiveDevice, scene: Scene) -> bytes:
    marker = Marker()
    envelope = sender.seal_to(recipient, marker.body())
    scene.markers.append(marker)
    scene.envelopes.append(envelope)
    return envelope


async def _run(relay: RelayProcess, scene: Scene) -> None:
    org = live_org()
    server = await org.connect_server(relay.url)
    alice, bob, carol, dave, eve = (org.device(n) for n in range(1, 6))
    scene.addresses.update(
        server=org.server_address,
        alice=alice.address,
        bob=bob.address,
        carol=carol.address,
        dave=dave.address,
        eve=eve.address,
        organisation=org.id,
    )
    a = await alice.connect(relay.url)

    # 1. To carol, who never connects: these expire, and the server hears of it.
    for _ in range(4):
        await a.send(_seal(alice, carol, scene))
    expire_from = time.monotonic()

    # 2. To bob: delivered, left unacknowledged, redelivered on his next session, acknowledged.
    sent_to_bob = [_seal(alice, bob, scene) for _ in range(4)]
    for envelope in sent_to_bob:
        await a.send(envelope)
    b = await bob.connect(relay.url)
    first = [envelope for _, envelope in await drain(b, quiet=0.3)]
    assert sorted(first) == sorted(sent_to_bob)
    await b.close()
    b = await bob.connect(relay.url)
    again = await receive(b, len(sent_to_bob))
    assert sorted(again) == sorted(sent_to_bob)
    for envelope, marker in zip(sent_to_bob, scene.markers[4:8], strict=True):
        assert bob.open(envelope) == marker.body()  # the markers really are inside
    # bob replies: a device's envelope to another device of the organisation.
    await b.send(_seal(bob, alice, scene))
    (reply,) = await receive(a, 1)
    assert alice.open(reply) == scene.markers[-1].body()
    await b.close()

    # 3. The server revokes eve (the revocation is stored).
    await server.revoke([eve.address])

    # The envelopes to carol expire; the server is told.
    notices: list[EnvelopeExpired] = []
    async with asyncio.timeout(LIFETIME_S + 10):
        while len(notices) < 4:
            notices.append(await server.expiries.get())
    assert {n.recipient for n in notices} == {carol.address}
    assert time.monotonic() - expire_from >= LIFETIME_S * 0.9

    # 4. To dave, who never connects: still queued when the relay stops.
    for _ in range(4):
        envelope = _seal(alice, dave, scene)
        await a.send(envelope)
        scene.queued.append(envelope)
    await a.close()
    await server.close()


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    data = tmp_path_factory.mktemp("blind") / "relay"
    relay = RelayProcess(
        data,
        "--log-level",
        "debug",
        "--log-format",
        "json",
        "--envelope-lifetime-s",
        str(LIFETIME_S),
        "--expiry-interval-s",
        "0.25",
    )
    relay.start()
    scene = Scene([], [], {}, [], {}, b"", b"", None)
    try:
        asyncio.run(asyncio.wait_for(_run(relay, scene), 60))
        scene.metrics = relay.metrics().encode()
    finally:
        relay.stop()
    assert relay.proc is not None
    scene.returncode = relay.proc.returncode
    for path in sorted(data.rglob("*")):
        if path.is_file() and path not in (relay.log, relay.out):
            scene.files[path.name] = path.read_bytes()
    scene.log = relay.log.read_bytes() + relay.out.read_bytes()
    yield scene


def _haystacks(scene: Scene) -> dict[str, bytes]:
    return {**scene.files, "relay.log": scene.log, "/metrics": scene.metrics}


def test_the_search_looks_where_the_data_is(scene: Scene) -> None:
    """The test can fail: what the relay must keep is found where it keeps it."""
    assert scene.returncode == 0
    assert "relay.db" in scene.files
    store = b"".join(scene.files.values())
    for envelope in scene.queued:
        assert envelope in store  # the sealed envelopes are stored as they are
    assert scene.addresses["dave"] in store  # and their recipients' addresses
    assert b'"level": "debug"' in scene.log
    for name in ("alice", "bob", "server"):
        assert short_address(scene.addresses[name]).encode() in scene.log
    assert b"sealwire_relay_envelopes_accepted_total 13.0" in scene.metrics
    assert b"sealwire_relay_envelopes_expired_total 4.0" in scene.metrics
    # A marker sealed in an envelope is found by the same search in the envelope's plaintext.
    assert _found(scene.markers[0].raw, scene.markers[0].body())


def test_no_marker_in_store_logs_or_metrics(scene: Scene) -> None:
    leaks = [
        (name, marker_index, form)
        for name, haystack in _haystacks(scene).items()
        for marker_index, marker in enumerate(scene.markers)
        for needle in marker.needles()
        for form in _found(needle, haystack)
    ]
    assert not leaks, f"plaintext markers found: {leaks[:5]}"


def test_no_full_address_in_logs_or_metrics(scene: Scene) -> None:
    """The relay stores addresses (it routes by them) but logs and measures only short
    forms."""
    leaks = [
        (where, who, form)
        for where, haystack in (("relay.log", scene.log), ("/metrics", scene.metrics))
        for who, address in scene.addresses.items()
        for form in _found(address, haystack)
    ]
    assert not leaks, f"full addresses found: {leaks[:5]}"


def test_no_envelope_or_address_bytes_in_logs(scene: Scene) -> None:
    """Stricter than markers: the relay "logs and measures no address in full and no envelope
    bytes" (relay/service.py), so not even an 8-byte piece of a sealed envelope, or more of
    an address than its short form (5 bytes), is in the log or the metrics."""
    pieces: list[tuple[str, bytes]] = []
    for i, envelope in enumerate(scene.envelopes):
        for start in (0, 48, len(envelope) // 2, len(envelope) - 8):
            pieces.append((f"envelope {i} at {start}", envelope[start : start + 8]))
    for who, address in scene.addresses.items():
        for start in range(0, 32 - 8 + 1, 4):
            pieces.append((f"{who}'s address at {start}", address[start : start + 8]))
    leaks = [
        (where, what, form.decode(errors="replace"))
        for where, haystack in (("relay.log", scene.log), ("/metrics", scene.metrics))
        for what, piece in pieces
        for form in (piece.hex().encode(), piece.hex(" ").encode())
        if form in haystack
    ]
    example = (
        next(
            (
                line
                for line in scene.log.decode(errors="replace").splitlines()
                if leaks[0][2] in line
            ),
            "",
        )
        if leaks
        else ""
    )
    assert not leaks, f"{len(leaks)} pieces found, e.g. {leaks[:3]}, in log line {example}"


def test_relay_data_directory_holds_only_its_files(scene: Scene) -> None:
    """Nothing else (a debug dump, a spool of plaintext) is written next to the store."""
    assert set(scene.files) <= {"relay.db", "relay.db-wal", "relay.db-shm", "relay.db-lock"}
