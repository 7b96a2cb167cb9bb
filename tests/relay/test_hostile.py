"""Hostile clients against a live relay process: Hypothesis-generated garbage, oversized frames,
frame and connection floods, slowloris, a slow reader and activation abuse.

Each test checks that the hostile client gets the documented answer (an ``Error`` frame with a
stable code, an HTTP refusal, or a WebSocket close), that the relay stays up, logs no error and
keeps serving a well-behaved device pair, and, where it could grow, that its memory stays
bounded.

One relay process serves most tests (the ``shared`` fixture, module scope: short handshake
timeout, per-source limits lifted since every client here comes from 127.0.0.1); tests that
exhaust a per-source bucket or need other timeouts start their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sealwire.errors import DecodeError
from sealwire.protocol.frames import (
    MAX_FRAME_SIZE,
    Accepted,
    Ack,
    Activation,
    Auth,
    Challenge,
    Deliver,
    Error,
    ErrorCode,
    Expired,
    Frame,
    Hello,
    Mode,
    Ping,
    Pong,
    Ready,
    Revoke,
    Send,
    decode_frame,
    encode_frame,
    relay_id_for,
)
from sealwire.protocol.session import (
    ActivationReceived,
    ClientConfig,
    ClientSession,
    ClientState,
    EnvelopeDelivered,
    Event,
    RequestAccepted,
    RequestRejected,
    SessionTerminated,
)
from sealwire.transport import RelayConnection, RequestRefused, SessionEnded

from .harness import LiveDevice, LiveOrg, RelayProcess, live_org, now_ms, receive

HANDSHAKE_TIMEOUT_S = 1.0
FRAME_RATE = 2_000
FRAME_BURST = 1_000
OTHER_SOURCE = "127.0.0.2"
"""A second loopback address: another client "host" for the per-source limits."""
NORMAL_LATENCY_S = 5.0
"""Generous bound on one envelope's trip from a sender to a connected recipient under attack
(it takes a few milliseconds on an idle relay; a starved pair would hit the 10 s timeouts)."""
FLOOD_FRAME_RATE = 200
FLOOD_FRAME_BURST = 100
"""The frame limits of the relay the flood tests attack: far below what any client sends when
flooding, however slow the machine (a relay that processes frames more slowly than its limit
never sees a flood), and far above what a well-behaved pair sends."""
MIB = 1024

_serial = itertools.count(1)


def _env(**settings: object) -> dict[str, str]:
    return {f"SEALWIRE_RELAY_{name.upper()}": str(value) for name, value in settings.items()}


# Every hostile client here comes from 127.0.0.1: the per-source limits are lifted on the
# shared relay (tests of those limits start a relay of their own).
_SHARED_SETTINGS = _env(
    handshake_timeout_s=HANDSHAKE_TIMEOUT_S,
    frame_rate=FRAME_RATE,
    frame_burst=FRAME_BURST,
    source_connect_rate=1_000_000,
    source_connect_burst=1_000_000,
    max_connections_per_source=10_000,
    activation_rate_per_minute=1_000_000,
    activation_burst=1_000_000,
)


@dataclass
class Shared:
    relay: RelayProcess
    org: LiveOrg
    log_offset: int = 0
    """Where the current test's part of the relay's log starts."""

    @property
    def url(self) -> str:
        return self.relay.url


async def _register(url: str, org: LiveOrg) -> None:
    """Connect the organisation's server once, so the relay trusts its root from now on."""
    server = await org.connect_server(url)
    await server.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    relay = RelayProcess(tmp_path_factory.mktemp("hostile") / "relay", env=_SHARED_SETTINGS)
    relay.start()
    try:
        org = live_org()
        asyncio.run(_register(relay.url, org))
        yield Shared(relay, org)
    finally:
        relay.stop()


@pytest.fixture(scope="module")
def flood_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    """A relay for the flood tests: low frame limits, the default handshake timeout (a
    flood that slows the machine must not cut the well-behaved clients' handshakes)."""
    settings = {
        **_SHARED_SETTINGS,
        **_env(frame_rate=FLOOD_FRAME_RATE, frame_burst=FLOOD_FRAME_BURST),
    }
    del settings["SEALWIRE_RELAY_HANDSHAKE_TIMEOUT_S"]
    relay = RelayProcess(tmp_path_factory.mktemp("flood") / "relay", env=settings)
    relay.start()
    try:
        org = live_org()
        asyncio.run(_register(relay.url, org))
        yield Shared(relay, org)
    finally:
        relay.stop()


@pytest.fixture(autouse=True)
def _log_offset(request: pytest.FixtureRequest) -> None:
    """Each test answers for the errors the relay logged during that test only."""
    for name in ("shared", "flood_target"):
        if name in request.fixturenames:
            shared: Shared = request.getfixturevalue(name)
            shared.log_offset = shared.relay.log.stat().st_size


def _start_relay(tmp_path: Path, **settings: object) -> RelayProcess:
    return RelayProcess(tmp_path / "relay", env=_env(**settings)).start()


def _assert_alive(relay: RelayProcess, log_offset: int = 0) -> None:
    """The relay process runs and logged no error (after ``log_offset`` in its log)."""
    assert relay.proc is not None and relay.proc.poll() is None, (
        f"relay died:\n{relay.log.read_text()[-3000:]}"
    )
    with relay.log.open("rb") as log:
        log.seek(log_offset)
        lines = log.read().decode(errors="replace").splitlines()
    errors = [line for line in lines if '"level": "error"' in line]
    assert not errors, "relay logged errors:\n" + "\n".join(errors[:5])


# --- well-behaved clients -------------------------------------------------------------------


def _device(org: LiveOrg) -> LiveDevice:
    return org.device(next(_serial))


async def _exchange(url: str, org: LiveOrg, count: int = 1) -> float:
    """A fresh device pair exchanges ``count`` envelopes; return the slowest trip (seconds)."""
    alice, bob = _device(org), _device(org)
    a = await alice.connect(url, timeout=10)
    try:
        b = await bob.connect(url, timeout=10)
        try:
            slowest = 0.0
            for i in range(count):
                body = f"well-behaved {i} {os.urandom(8).hex()}".encode()
                started = time.perf_counter()
                await asyncio.wait_for(a.send(alice.seal_to(bob, body)), 10)
                (envelope,) = await receive(b, 1, timeout=10)
                slowest = max(slowest, time.perf_counter() - started)
                assert bob.open(envelope) == body
            return slowest
        finally:
            await b.close()
    finally:
        await a.close()


def _assert_serves(shared: Shared) -> None:
    """The relay is alive and a well-behaved pair can still exchange an envelope."""
    _assert_alive(shared.relay, shared.log_offset)
    latency = asyncio.run(_exchange(shared.url, shared.org))
    assert latency < NORMAL_LATENCY_S


def _wait_metric(
    relay: RelayProcess, name: str, labels: str, value: float, timeout: float = 10
) -> None:
    deadline = time.monotonic() + timeout
    while (current := relay.metric(name, labels)) != value:
        assert time.monotonic() < deadline, f"{name}{{{labels}}} is {current}, not {value}"
        time.sleep(0.05)


def _assert_no_leaked_connections(relay: RelayProcess) -> None:
    """Every hostile connection was cleaned up: no session is left in the handshake gauge."""
    for role in ("handshake", "activation"):
        _wait_metric(relay, "sealwire_relay_connections", f'role="{role}"', 0.0)


# --- raw clients ----------------------------------------------------------------------------


async def _raw(url: str, *, local_addr: str | None = None, **kwargs: Any) -> ClientConnection:
    """A WebSocket connection that speaks no protocol by itself."""
    if local_addr is not None:
        kwargs["local_addr"] = (local_addr, 0)
    return await connect(
        url,
        compression=None,
        max_size=None,
        ping_interval=None,
        close_timeout=1,
        open_timeout=10,
        **kwargs,
    )


@dataclass
class Received:
    """What a raw connection got after its probe: frames, and whether the relay closed."""

    frames: list[Frame] = field(default_factory=list)
    closed: bool = False
    close_code: int | None = None

    @property
    def errors(self) -> list[Error]:
        return [f for f in self.frames if isinstance(f, Error)]


async def _read_until(ws: ClientConnection, stop: Any = None, timeout: float = 10.0) -> Received:
    """Read frames until the relay closes or a frame satisfies ``stop``."""
    got = Received()
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await ws.recv()
                assert isinstance(message, bytes), f"relay sent a text message: {message!r}"
                frame = decode_frame(message)  # whatever the relay sends must decode
                got.frames.append(frame)
                if stop is not None and stop(frame):
                    return got
    except ConnectionClosed:
        got.closed = True
        got.close_code = ws.close_code
    except TimeoutError:
        raise AssertionError(f"relay neither answered nor closed: {got.frames}") from None
    return got


class Driven:
    """A :class:`ClientSession` driven by hand over a raw WebSocket: nothing is read from the
    socket unless the test calls :meth:`step` (a slow or hostile client)."""

    def __init__(self, ws: ClientConnection, session: ClientSession) -> None:
        self.ws = ws
        self.session = session
        self.ended: SessionTerminated | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        device: LiveDevice | None = None,
        *,
        server: LiveOrg | None = None,
        local_addr: str | None = None,
        **kwargs: Any,
    ) -> Driven:
        """Authenticate as ``device`` (or as the ``server`` of an organisation), or without
        either in activation mode."""
        ws = await _raw(url, local_addr=local_addr, **kwargs)
        config = ClientConfig(relay_id=relay_id_for(url))
        if server is not None:
            session = ClientSession(
                server.server,
                [server.server_cert.encode()],
                root=server.root.public_key,
                config=config,
            )
            session.connect(now_ms())
        elif device is not None:
            session = ClientSession(device.key, device.chain, config=config)
            session.connect(now_ms())
        else:
            session = ClientSession(config=config)
            session.connect_for_activation(now_ms())
        self = cls(ws, session)
        await self.flush()
        async with asyncio.timeout(10):
            while session.state not in (ClientState.OPEN, ClientState.ACTIVATING):
                await self.step()
                if self.ended is not None:
                    raise SessionEnded(self.ended.code, self.ended.reason)
        return self

    async def send(self, envelope: bytes) -> None:
        """Send one envelope and wait until the relay accepted it."""
        ref = self.session.send_envelope(envelope)
        await self.flush()
        async with asyncio.timeout(10):
            while True:
                for event in await self.step():
                    if isinstance(event, RequestAccepted) and event.ref == ref:
                        return
                    assert not isinstance(event, RequestRejected), event
                assert self.ended is None, self.ended

    async def receive(self, count: int) -> list[bytes]:
        """Read (and acknowledge) ``count`` deliveries."""
        out: list[bytes] = []
        async with asyncio.timeout(10):
            while len(out) < count:
                for event in await self.step():
                    if isinstance(event, EnvelopeDelivered):
                        out.append(event.envelope)
                        self.session.ack([event.delivery_id])
                await self.flush()
                assert self.ended is None, self.ended
        return out

    async def flush(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            for frame in self.session.frames_to_send():
                await self.ws.send(frame)

    async def step(self) -> list[Event]:
        """Read one message, feed it to the session, send what it queued."""
        try:
            message = await self.ws.recv()
        except ConnectionClosed:
            events = self.session.connection_lost()
        else:
            assert isinstance(message, bytes)
            events = self.session.receive_frame(message, now_ms())
        for event in events:
            if isinstance(event, SessionTerminated) and self.ended is None:
                self.ended = event
        await self.flush()
        return events

    async def close(self) -> None:
        await self.ws.close()


def _hello(mode: Mode = Mode.AUTHENTICATE, version: int = 1) -> bytes:
    return encode_frame(Hello(version=version, mode=mode))


# --- Hypothesis: garbage of every kind --------------------------------------------------------

_PROBE = 0x5EA1
"""Ping data of the probe sent after each fuzzed message: its Pong means the session lives."""

_CODES_FOR_FRAMES = frozenset(
    {
        ErrorCode.MALFORMED.value,
        ErrorCode.UNEXPECTED.value,
        ErrorCode.VERSION.value,
        ErrorCode.AUTH_FAILED.value,
    }
)
"""What a well-formed frame sent in the wrong state, version or with bad credentials earns."""


def _valid_frames() -> list[bytes]:
    """Well-formed frames of every kind (most of them wrong for the state they arrive in)."""
    org = live_org()
    alice, bob = org.device(1), org.device(2)
    envelope = alice.seal_to(bob, b"fuzz")
    frames: list[Frame] = [
        Hello(version=1, mode=Mode.AUTHENTICATE),
        Hello(version=1, mode=Mode.ACTIVATE),
        Hello(version=2, mode=Mode.AUTHENTICATE),
        Challenge(relay_id=bytes(32), nonce=bytes(32)),
        Auth(chain=tuple(alice.chain), signature=bytes(64)),
        Ready(address=bob.address, time=now_ms(), max_pending=8),
        Send(ref=0, envelope=envelope),
        Accepted(ref=0),
        Deliver(delivery_id=bytes(8), envelope=envelope),
        Ack(delivery_ids=(bytes(8),)),
        Error(code="shutdown", reason="bye"),
        Ping(data=1),
        Pong(data=1),
        Activation(session=bytes(16), payload=b"pake", server=org.server_address),
        Revoke(ref=0, addresses=(bob.address,)),
        Expired(recipient=bob.address, digest=bytes(32), accepted_at=now_ms()),
    ]
    return [encode_frame(f) for f in frames]


_VALID = _valid_frames()


@st.composite
def _mutated_frames(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[at:]
        else:
            data += draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


_cbor_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.binary(max_size=40),
    st.text(max_size=16),
)
_cbor_values = st.recursive(
    _cbor_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.integers(-3, 8), st.text(max_size=2)), inner, max_size=4),
        st.builds(cbor2.CBORTag, st.integers(0, 300), inner),
    ),
    max_leaves=10,
)
_field_values = st.one_of(
    st.integers(0, 3),
    st.integers(0, 2**64 - 1),
    st.sampled_from([16, 32, 64]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    st.lists(st.binary(min_size=8, max_size=32), max_size=3),
    _cbor_values,
)
_frame_shaped = st.tuples(
    st.one_of(st.integers(1, 14), st.integers(0, 30)),
    st.dictionaries(st.integers(0, 2), _field_values, max_size=3),
).map(list)
"""``[code, {key: value}]``: often close enough to a frame to reach the field checks."""
_cbor_messages = st.tuples(st.one_of(_frame_shaped, _cbor_values), st.booleans()).map(
    lambda value_canonical: cbor2.dumps(value_canonical[0], canonical=value_canonical[1])
)


async def _probe(url: str, message: bytes | str, after_hello: bool) -> tuple[Received, bool]:
    """Send ``message`` (after a valid Hello if ``after_hello``), then a Ping probe; return
    what came back and whether the probe's Pong did (the session lives on)."""
    ws = await _raw(url)
    try:
        if after_hello:
            await ws.send(_hello())
            challenge = await ws.recv()
            assert isinstance(challenge, bytes)
            assert isinstance(decode_frame(challenge), Challenge)
        with contextlib.suppress(ConnectionClosed):
            await ws.send(message)
            await ws.send(encode_frame(Ping(data=_PROBE)))
        got = await _read_until(ws, lambda f: isinstance(f, Pong) and f.data == _PROBE)
        return got, not got.closed
    finally:
        await ws.close()


class _Fuzz:
    """Runs fuzzed messages against the shared relay; checks a pair every ``every`` examples."""

    def __init__(self, shared: Shared, every: int = 10) -> None:
        self.shared = shared
        self.every = every
        self.count = 0

    def check(self, message: bytes | str, after_hello: bool) -> None:
        got, alive = asyncio.run(_probe(self.shared.url, message, after_hello))
        decoded: Frame | None = None
        if isinstance(message, bytes):
            with contextlib.suppress(DecodeError):
                decoded = decode_frame(message)
        if isinstance(message, str) or decoded is None:
            # Not a frame: exactly one Error, malformed, and the connection is closed.
            assert got.closed, f"relay kept a session alive after {message!r}: {got.frames}"
            assert [(e.code, e.ref) for e in got.errors] == [("malformed", None)], got.frames
            assert isinstance(got.frames[-1], Error)
        elif got.errors:
            # A well-formed frame the state does not allow: a stable code, then the close.
            (error,) = got.errors
            assert error.code in _CODES_FOR_FRAMES, (decoded, error)
            assert error.ref is None
            assert got.frames[-1] is error and got.closed, got.frames
        elif not alive:
            # The relay closed without an Error: only when we sent one (the peer ended it).
            assert isinstance(decoded, Error), (decoded, got.frames)
        if got.closed:
            assert got.close_code == 1000, got.close_code
        self.count += 1
        if self.count % self.every == 0:
            _assert_serves(self.shared)

    def done(self) -> None:
        _assert_serves(self.shared)
        _assert_no_leaked_connections(self.shared.relay)


_FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def test_garbage_bytes(shared: Shared) -> None:
    fuzz = _Fuzz(shared)

    @_FUZZ
    @given(message=st.binary(max_size=300), after_hello=st.booleans())
    def run(message: bytes, after_hello: bool) -> None:
        fuzz.check(message, after_hello)

    run()
    fuzz.done()


def test_garbage_cbor(shared: Shared) -> None:
    fuzz = _Fuzz(shared)

    @_FUZZ
    @given(message=_cbor_messages, after_hello=st.booleans())
    def run(message: bytes, after_hello: bool) -> None:
        fuzz.check(message, after_hello)

    run()
    fuzz.done()


def test_mutated_frames(shared: Shared) -> None:
    fuzz = _Fuzz(shared)

    @_FUZZ
    @given(message=st.one_of(st.sampled_from(_VALID), _mutated_frames()), after_hello=st.booleans())
    def run(message: bytes, after_hello: bool) -> None:
        fuzz.check(message, after_hello)

    run()
    fuzz.done()


def test_text_messages(shared: Shared) -> None:
    fuzz = _Fuzz(shared)

    @settings(_FUZZ, max_examples=50)
    @given(message=st.text(max_size=200), after_hello=st.booleans())
    def run(message: str, after_hello: bool) -> None:
        fuzz.check(message, after_hello)

    run()
    fuzz.done()


def test_garbage_in_an_open_session(shared: Shared) -> None:
    """After a full handshake, garbage still ends the session with a stable code, and a
    malformed envelope inside a well-formed Send is ``malformed`` too."""

    async def body() -> None:
        device = _device(shared.org)
        cases: list[tuple[bytes, str]] = [
            (b"\x00\x01garbage", "malformed"),
            (encode_frame(Send(ref=1, envelope=b"not an envelope")), "malformed"),
            (_hello(), "unexpected"),
            (encode_frame(Accepted(ref=3)), "unexpected"),
            (encode_frame(Activation(session=bytes(16), payload=b"x")), "unexpected"),
            (encode_frame(Revoke(ref=2, addresses=(device.address,))), "unexpected"),
        ]
        for message, code in cases:
            client = await Driven.open(shared.url, device)
            await client.ws.send(message)
            got = await _read_until(client.ws)
            assert got.closed and [(e.code, e.ref) for e in got.errors] == [(code, None)], (
                message,
                got.frames,
            )

    asyncio.run(body())
    _assert_serves(shared)


# --- oversized frames -------------------------------------------------------------------------


def test_oversized_frame(shared: Shared) -> None:
    """A message over MAX_FRAME_SIZE is cut by the WebSocket layer (close 1009, "message too
    big") before the relay reads it, whatever the session's state; one of exactly
    MAX_FRAME_SIZE passes the transport and is refused by the decoder."""

    async def body() -> None:
        # Before any Hello.
        ws = await _raw(shared.url)
        await ws.send(bytes(MAX_FRAME_SIZE + 1))
        got = await _read_until(ws)
        assert got.closed and got.frames == [] and got.close_code == 1009
        # In an open session.
        client = await Driven.open(shared.url, _device(shared.org))
        await client.ws.send(b"\x82" + bytes(MAX_FRAME_SIZE))
        got = await _read_until(client.ws)
        assert got.closed and got.frames == [] and got.close_code == 1009
        # At the limit: the transport lets it through, the decoder refuses it.
        client = await Driven.open(shared.url, _device(shared.org))
        await client.ws.send(bytes(MAX_FRAME_SIZE))
        got = await _read_until(client.ws)
        assert got.closed and [e.code for e in got.errors] == ["malformed"]

    asyncio.run(body())
    _assert_serves(shared)


# --- floods -----------------------------------------------------------------------------------


@dataclass
class _Pair:
    alice: LiveDevice
    bob: LiveDevice
    a: RelayConnection
    b: RelayConnection


async def _connected_pair(shared: Shared) -> _Pair:
    """A well-behaved pair, connected (before a flood starts: a handshake is not what the
    flood tests measure)."""
    alice, bob = _device(shared.org), _device(shared.org)
    return _Pair(alice, bob, await alice.connect(shared.url), await bob.connect(shared.url))


async def _pair_keeps_exchanging(
    shared: Shared, until: asyncio.Future[Any], pair: _Pair | None = None
) -> list[float]:
    """Exchange envelopes over one pair until ``until`` is done; return every trip's time."""
    if pair is None:
        pair = await _connected_pair(shared)
    alice, bob, a, b = pair.alice, pair.bob, pair.a, pair.b
    trips: list[float] = []
    try:
        while not until.done() or len(trips) < 3:
            body = os.urandom(16)
            started = time.perf_counter()
            await asyncio.wait_for(a.send(alice.seal_to(bob, body)), 10)
            (envelope,) = await receive(b, 1, timeout=10)
            trips.append(time.perf_counter() - started)
            assert bob.open(envelope) == body
            await asyncio.sleep(0.01)
    finally:
        await a.close()
        await b.close()
    return trips


def test_ping_flood_is_cut_with_rate_limited(flood_target: Shared) -> None:
    """A session blasting Pings far above frame_rate is ended with ``rate-limited``; a pair on
    the same relay keeps exchanging envelopes within normal latency meanwhile."""
    shared = flood_target

    async def body() -> tuple[Received, float, int, list[float]]:
        pair = await _connected_pair(shared)
        flooder = await Driven.open(shared.url, _device(shared.org))
        sent = 0

        async def blast() -> None:
            nonlocal sent
            with contextlib.suppress(ConnectionClosed):
                for i in range(20 * (FLOOD_FRAME_RATE + FLOOD_FRAME_BURST)):
                    await flooder.ws.send(encode_frame(Ping(data=i)))
                    sent += 1

        started = time.perf_counter()
        blaster = asyncio.create_task(blast())
        reading = asyncio.create_task(
            _read_until(flooder.ws, lambda f: isinstance(f, Error), timeout=60)
        )
        trips = await _pair_keeps_exchanging(shared, reading, pair)
        got = await reading
        cut_after = time.perf_counter() - started
        await blaster
        await flooder.close()
        return got, cut_after, sent, trips

    got, cut_after, sent, trips = asyncio.run(body())
    assert [(e.code, e.ref) for e in got.errors] == [("rate-limited", None)]
    assert all(isinstance(f, Pong) for f in got.frames[:-1])
    # Cut once it is a burst beyond its bucket: not after every frame it sent.
    assert FLOOD_FRAME_BURST * 2 <= len(got.frames) - 1 < sent
    assert cut_after < 30
    assert max(trips) < NORMAL_LATENCY_S, trips
    assert shared.relay.metric("sealwire_relay_sessions_closed_total", 'code="rate-limited"') >= 1
    _assert_serves(shared)


def test_send_flood_is_refused_with_rate_limited(flood_target: Shared) -> None:
    """Sends within the burst are served; beyond frame_rate they are refused one by one with
    ``rate-limited`` (or the session is ended with it); the relay keeps serving others."""
    shared = flood_target

    async def body() -> tuple[int, dict[str, int], list[str]]:
        sender, sink = _device(shared.org), _device(shared.org)
        envelope = sender.seal_to(sink, b"flood")
        conn = await sender.connect(shared.url)
        # Half a burst, one at a time: served. (Which Sends of the flood below are accepted
        # depends on how fast the store commits: the session may be cut first.)
        served = 0
        for _ in range(FLOOD_FRAME_BURST // 2):
            await conn.send(envelope)  # raises RequestRefused if the relay refused it
            served += 1
        outcomes: dict[str, int] = {}
        ended: list[str] = []

        async def one() -> None:
            try:
                await conn.send(envelope)
            except RequestRefused as exc:
                outcomes[exc.code] = outcomes.get(exc.code, 0) + 1
            except SessionEnded as exc:
                ended.append(exc.code)
            else:
                outcomes["accepted"] = outcomes.get("accepted", 0) + 1

        # The window (max_pending) puts up to 256 Sends on the wire at once: more than the
        # burst, whatever the machine's speed.
        await asyncio.gather(*(one() for _ in range(2 * (FLOOD_FRAME_RATE + FLOOD_FRAME_BURST))))
        await conn.close()
        return served, outcomes, ended

    served, outcomes, ended = asyncio.run(body())
    assert served == FLOOD_FRAME_BURST // 2  # the burst itself is served
    assert set(outcomes) <= {"accepted", "rate-limited"}, outcomes
    assert outcomes.get("rate-limited", 0) > 0 or "rate-limited" in ended, (outcomes, ended)
    assert set(ended) <= {"rate-limited"}, ended
    assert shared.relay.metric("sealwire_relay_requests_rejected_total", 'code="rate-limited"') > 0
    _assert_serves(shared)


def test_connection_flood_from_one_source(tmp_path: Path) -> None:
    """Beyond source_connect_burst the HTTP upgrade is refused with 429; another source still
    connects at once, and the flooding one again once its bucket refilled."""
    rate, burst = 4, 10
    relay = _start_relay(tmp_path, source_connect_rate=rate, source_connect_burst=burst)
    try:

        async def body() -> tuple[int, list[int]]:
            opened = 0
            refused: list[int] = []
            for _ in range(3 * burst):
                try:
                    ws = await _raw(relay.url)
                except InvalidStatus as exc:
                    refused.append(exc.response.status_code)
                    assert exc.response.body == b"source-rate\n"
                else:
                    opened += 1
                    await ws.close()
            return opened, refused

        started = time.monotonic()
        opened, refused = asyncio.run(body())
        elapsed = time.monotonic() - started
        assert burst <= opened <= burst + int(rate * elapsed) + 1, (opened, elapsed)
        assert refused and set(refused) == {429}, refused
        refused_metric = relay.metric(
            "sealwire_relay_connections_refused_total", 'reason="source-rate"'
        )
        assert refused_metric == len(refused)

        async def other_source() -> None:
            # A whole exchange from another address: registration, then a device pair.
            org = live_org()
            server = await Driven.open(relay.url, server=org, local_addr=OTHER_SOURCE)
            alice, bob = _device(org), _device(org)
            a = await Driven.open(relay.url, alice, local_addr=OTHER_SOURCE)
            b = await Driven.open(relay.url, bob, local_addr=OTHER_SOURCE)
            await a.send(alice.seal_to(bob, b"from elsewhere"))
            (envelope,) = await b.receive(1)
            assert bob.open(envelope) == b"from elsewhere"
            for client in (server, a, b):
                await client.close()

        asyncio.run(other_source())

        # Once the flood stops, the flooding source gets a connection as soon as its bucket
        # holds a token again (1 / rate seconds): refused attempts must not run up a debt
        # that locks the address out long after the flood.
        time.sleep(1.5 / rate)

        async def again() -> None:
            try:
                ws = await _raw(relay.url)
            except InvalidStatus as exc:
                raise AssertionError(
                    f"127.0.0.1 still refused ({exc.response.status_code}) {1.5 / rate:.2f} s "
                    f"after its flood of {len(refused)} refused attempts stopped"
                ) from None
            await ws.close()

        asyncio.run(again())
        _assert_alive(relay)
    finally:
        relay.stop()


def test_connections_per_source_are_capped(tmp_path: Path) -> None:
    """At most max_connections_per_source at once from one address, even when they all arrive
    together (429 ``source-connections``); another address is not affected, and a closed
    connection frees its slot."""
    cap = 5
    relay = _start_relay(tmp_path, max_connections_per_source=cap)
    try:

        async def attempt(local_addr: str | None = None) -> ClientConnection | bytes:
            try:
                return await _raw(relay.url, local_addr=local_addr)
            except InvalidStatus as exc:
                assert exc.response.status_code == 429
                return bytes(exc.response.body)

        async def body() -> None:
            results = await asyncio.gather(*(attempt() for _ in range(8 * cap)))
            held = [r for r in results if not isinstance(r, bytes)]
            assert len(held) == cap
            assert {r for r in results if isinstance(r, bytes)} == {b"source-connections\n"}
            other = await attempt(OTHER_SOURCE)
            assert not isinstance(other, bytes)
            await other.close()
            await held.pop().close()
            async with asyncio.timeout(10):
                while isinstance(again := await attempt(), bytes):
                    await asyncio.sleep(0.05)  # the relay notices the close
            held.append(again)
            assert isinstance(await attempt(), bytes)
            for ws in held:
                await ws.close()

        asyncio.run(body())
        _assert_alive(relay)
    finally:
        relay.stop()


# --- slowloris --------------------------------------------------------------------------------


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("ws://").rpartition(":")
    return host, int(port)


async def _partial_upgrade(url: str, trickle: bool) -> float:
    """Send part of an HTTP upgrade request and stall (or trickle a header line now and then);
    return how long the relay took to drop the connection."""
    host, port = _host_port(url)
    reader, writer = await asyncio.open_connection(host, port)
    started = time.perf_counter()
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S + 10):
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(1024), 0.2 if trickle else None)
                except TimeoutError:
                    writer.write(f"X-Slow-{os.urandom(2).hex()}: 1\r\n".encode())
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                    continue
                if not data:
                    return time.perf_counter() - started
    except ConnectionError:
        return time.perf_counter() - started
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def test_slowloris_http_upgrade(shared: Shared) -> None:
    """Connections that stall (or trickle) in the HTTP upgrade are dropped at the handshake
    timeout; well-behaved clients are served meanwhile."""

    async def body() -> tuple[list[float], list[float]]:
        pair = await _connected_pair(shared)
        attackers = asyncio.gather(
            *(_partial_upgrade(shared.url, trickle=i % 2 == 1) for i in range(200))
        )
        trips = await _pair_keeps_exchanging(shared, attackers, pair)
        return list(await attackers), trips

    durations, trips = asyncio.run(body())
    assert max(durations) < HANDSHAKE_TIMEOUT_S + 8, max(durations)
    assert min(durations) >= HANDSHAKE_TIMEOUT_S / 2, min(durations)
    assert max(trips) < NORMAL_LATENCY_S, trips
    _assert_serves(shared)


async def _stall(url: str, hello: bool) -> tuple[Received, float]:
    ws = await _raw(url)
    started = time.perf_counter()
    try:
        if hello:
            await ws.send(_hello())
        got = await _read_until(ws, timeout=HANDSHAKE_TIMEOUT_S + 10)
        return got, time.perf_counter() - started
    finally:
        await ws.close()


def test_slowloris_sessions(shared: Shared) -> None:
    """WebSocket connections that never send Hello, or never send Auth after the Challenge,
    are ended with ``timeout`` at the handshake timeout; others are served meanwhile."""

    async def body() -> tuple[list[tuple[Received, float]], list[float]]:
        pair = await _connected_pair(shared)
        stalled = asyncio.gather(*(_stall(shared.url, hello=i % 2 == 1) for i in range(100)))
        trips = await _pair_keeps_exchanging(shared, stalled, pair)
        return list(await stalled), trips

    results, trips = asyncio.run(body())
    for i, (got, took) in enumerate(results):
        expected = [Challenge, Error] if i % 2 else [Error]
        assert [type(f) for f in got.frames] == expected, got.frames
        assert got.errors[0].code == "timeout" and got.closed
        assert HANDSHAKE_TIMEOUT_S / 2 <= took < HANDSHAKE_TIMEOUT_S + 8, took
    assert max(trips) < NORMAL_LATENCY_S, trips
    _assert_no_leaked_connections(shared.relay)
    _assert_serves(shared)


# --- a slow reader ----------------------------------------------------------------------------


async def _stalled_reader(url: str, device: LiveDevice) -> Driven:
    """``device`` connects, then reads nothing more: websockets stops reading after one
    message and the kernel's receive buffer is small, so the relay soon cannot write."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, _host_port(url))
    return await Driven.open(url, device, max_queue=1, sock=sock)


def test_slow_reader_gets_back_pressure_not_memory(shared: Shared) -> None:
    """A recipient that stops reading its socket while ~100 MiB are queued for it: the relay's
    memory stays bounded, others are served, and once it reads it gets every envelope."""
    count, body_size = 800, 128 * 1024
    rss_limit_kib = 100 * MIB

    async def body() -> tuple[int, int, set[bytes], set[bytes]]:
        sender, reader = _device(shared.org), _device(shared.org)
        slow = await _stalled_reader(shared.url, reader)
        delivered = "sealwire_relay_envelopes_delivered_total"
        delivered_before = shared.relay.metric(delivered)
        baseline = peak = shared.relay.rss_kib
        sent: set[bytes] = set()
        conn = await sender.connect(shared.url)
        try:
            for batch in range(0, count, 100):
                envelopes = [
                    sender.seal_to(reader, i.to_bytes(4, "big") + os.urandom(body_size - 4))
                    for i in range(batch, min(count, batch + 100))
                ]
                sent.update(hashlib.sha256(e).digest() for e in envelopes)
                for envelope in envelopes:
                    while True:
                        try:
                            await conn.send(envelope)
                            break
                        except RequestRefused as exc:
                            assert exc.code == "rate-limited"
                            await asyncio.sleep(0.1)
                peak = max(peak, shared.relay.rss_kib)
        finally:
            await conn.close()
        # Everything is queued and the reader still reads nothing: others are served.
        await asyncio.sleep(0.5)
        assert await _exchange(shared.url, shared.org) < NORMAL_LATENCY_S
        peak = max(peak, shared.relay.rss_kib)
        # Back-pressure, not the delivery window (256), stopped the relay: it holds about
        # _OUTBOX_SOFT_LIMIT (1 MiB) for this connection, not the whole window.
        stalled_at = shared.relay.metric(delivered) - delivered_before
        assert 0 < stalled_at < 64, stalled_at
        # Now it reads, acknowledging as it goes: every envelope arrives.
        received: set[bytes] = set()
        duplicates = 0
        async with asyncio.timeout(120):
            while len(received) < count:
                events = await slow.step()
                ids = []
                for event in events:
                    if isinstance(event, EnvelopeDelivered):
                        digest = hashlib.sha256(event.envelope).digest()
                        duplicates += digest in received
                        received.add(digest)
                        ids.append(event.delivery_id)
                if ids:
                    slow.session.ack(ids)
                    await slow.flush()
                assert slow.ended is None, slow.ended
                if len(received) % 50 == 0:
                    peak = max(peak, shared.relay.rss_kib)
        peak = max(peak, shared.relay.rss_kib)
        await slow.close()
        assert duplicates == 0
        return baseline, peak, sent, received

    baseline, peak, sent, received = asyncio.run(body())
    assert received == sent
    assert peak - baseline < rss_limit_kib, f"relay RSS grew by {(peak - baseline) // MIB} MiB"
    _assert_serves(shared)


def test_stalled_reader_is_dropped_at_the_idle_timeout(tmp_path: Path) -> None:
    """A recipient that neither reads nor sends is ended at the idle timeout even though the
    relay cannot write to it: the connection and what it holds are released (it must not pin a
    connection slot, its buffers and its tasks forever), and nothing queued is lost: the
    envelopes are delivered on its next session."""
    idle_s, grace_s = 1.0, 5.0
    relay = _start_relay(tmp_path, idle_timeout_s=idle_s)
    try:

        async def body() -> None:
            org = live_org()
            await _register(relay.url, org)
            sender, reader = _device(org), _device(org)
            conn = await sender.connect(relay.url)
            sent = [sender.seal_to(reader, os.urandom(150 * 1024)) for _ in range(60)]
            for envelope in sent:  # ~9 MiB: far more than the socket buffers hold
                await conn.send(envelope)
            await conn.close()
            stalled = await _stalled_reader(relay.url, reader)
            started = time.monotonic()
            try:
                while relay.metric("sealwire_relay_connections", 'role="device"') != 0:
                    waited = time.monotonic() - started
                    ended = relay.metric("sealwire_relay_sessions_closed_total", 'code="timeout"')
                    assert waited < idle_s + grace_s, (
                        f"the relay still holds the stalled connection {waited:.1f} s after it "
                        f"connected (idle timeout {idle_s} s; sessions ended by timeout: {ended})"
                    )
                    await asyncio.sleep(0.1)
            finally:
                stalled.ws.transport.abort()
            # Nothing was lost: the next session gets every envelope.
            again = await reader.connect(relay.url)
            got = await receive(again, len(sent), timeout=30)
            assert sorted(got) == sorted(sent)
            await again.close()

        asyncio.run(body())
        _assert_alive(relay)
    finally:
        relay.stop()


# --- many garbage connections -----------------------------------------------------------------


def test_memory_bounded_after_thousands_of_garbage_connections(shared: Shared) -> None:
    total, parallel = 3_000, 50
    garbage = [b"\xff\x00garbage", _hello(version=9), b"\x82\x05", encode_frame(Pong(data=7))]

    async def one(i: int) -> None:
        ws = await _raw(shared.url)
        try:
            with contextlib.suppress(ConnectionClosed):
                if i % 5 == 4:
                    await ws.send(_hello())
                await ws.send(garbage[i % len(garbage)])
                if i % len(garbage) == 3:  # a Pong is fine: hang up ourselves
                    return
            got = await _read_until(ws)
            assert got.closed and len(got.errors) == 1, got.frames
        finally:
            await ws.close()

    async def flood(n: int) -> None:
        indices = iter(range(n))

        async def worker() -> None:
            for i in indices:
                await one(i)

        await asyncio.gather(*(worker() for _ in range(parallel)))

    asyncio.run(flood(300))  # warm up: imports, allocator arenas, SQLite caches
    _assert_no_leaked_connections(shared.relay)
    before = shared.relay.rss_kib
    asyncio.run(flood(total))
    _assert_no_leaked_connections(shared.relay)
    after = shared.relay.rss_kib
    assert after - before < 50 * MIB, f"relay RSS grew by {(after - before) // MIB} MiB"
    _assert_serves(shared)


# --- activation abuse -------------------------------------------------------------------------


def test_activation_abuse(tmp_path: Path) -> None:
    """Activation connections beyond activation_burst from one source end with
    ``rate-limited`` (another source still gets in); an activation naming an unregistered
    server ends with ``unknown-server``; one naming a registered server reaches it."""
    burst = 3
    relay = _start_relay(tmp_path, activation_burst=burst, activation_rate_per_minute=1)
    try:

        async def body() -> None:
            org = live_org()
            server = await org.connect_server(relay.url)
            try:
                # 1: a real activation message reaches the server it names.
                first = await RelayConnection.open_for_activation(relay.url)
                await first.send_activation(os.urandom(16), b"pake-1", org.server_address)
                routed = await asyncio.wait_for(server.activations.get(), 10)
                assert isinstance(routed, ActivationReceived) and routed.payload == b"pake-1"
                # 2: naming a server that never registered here ends the session.
                second = await RelayConnection.open_for_activation(relay.url)
                await second.send_activation(os.urandom(16), b"pake-2", os.urandom(32))
                ended = await asyncio.wait_for(second.ended, 10)
                assert ended.code == "unknown-server"
                # 3: the last one the burst allows.
                third = await RelayConnection.open_for_activation(relay.url)
                assert not third.closed
                # 4 and 5: over the burst.
                for _ in range(2):
                    try:
                        extra = await RelayConnection.open_for_activation(relay.url)
                    except SessionEnded as exc:
                        code = exc.code
                    else:
                        code = (await asyncio.wait_for(extra.ended, 10)).code
                    assert code == "rate-limited"
                # Another source has its own bucket.
                other = await Driven.open(relay.url, local_addr=OTHER_SOURCE)
                assert other.session.state is ClientState.ACTIVATING
                await other.close()
                for conn in (first, second, third):
                    await conn.close()
            finally:
                await server.close()

        asyncio.run(body())
        assert relay.metric("sealwire_relay_sessions_closed_total", 'code="rate-limited"') == 2
        assert relay.metric("sealwire_relay_sessions_closed_total", 'code="unknown-server"') == 1
        _assert_alive(relay)
    finally:
        relay.stop()
