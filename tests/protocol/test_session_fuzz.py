"""Property tests of the session machines past the handshake.

Each example opens a real session (Hello, Challenge, Auth with real signatures, admission, or
an activation-only session), then feeds one side an arbitrary mix of frames its peer may send,
arbitrary bytes, local calls and timer firings at arbitrary later times. Whatever happens, only
documented events come out, a termination is the last event and closes the machine, request and
delivery counts stay within their bounds, every queued frame decodes, and every call returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealwire.errors import LocalProtocolError
from sealwire.protocol.frames import (
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
)
from sealwire.protocol.session import (
    ActivationReceived,
    ActivationRequested,
    ActivationSubmitted,
    ClientSession,
    ClientState,
    ClientVerified,
    DeliveriesAcknowledged,
    EnvelopeDelivered,
    EnvelopeExpired,
    EnvelopeSubmitted,
    Event,
    RelayConfig,
    RelayState,
    RequestAccepted,
    RequestRejected,
    RevocationRequested,
    SessionReady,
    SessionTerminated,
)
from tests.protocol.keys import NOW_MS, make_org
from tests.protocol.test_session import (
    CONFIG,
    SERVER,
    Pair,
    envelope_for,
    open_device,
    open_server,
    relay_for,
)

_ORG = make_org()
_LIMITS = RelayConfig(max_pending=3, max_unacked=3, idle_timeout_ms=60_000)
_RELAY_EVENTS = (
    ActivationRequested,
    ClientVerified,
    EnvelopeSubmitted,
    DeliveriesAcknowledged,
    ActivationSubmitted,
    RevocationRequested,
    SessionTerminated,
)
_CLIENT_EVENTS = (
    SessionReady,
    RequestAccepted,
    RequestRejected,
    EnvelopeDelivered,
    ActivationReceived,
    EnvelopeExpired,
    SessionTerminated,
)

_refs = st.one_of(st.integers(0, 4), st.just((1 << 63) - 1))
_ids = st.sampled_from([b"\x01", b"\x02", b"\x03", b"\x04"])
_sessions = st.sampled_from([bytes(16), bytes([1]) * 16])
_addresses = st.sampled_from([bytes(32), SERVER, _ORG.device(10).address])
_codes = st.sampled_from([c.value for c in ErrorCode] + ["from-the-future"])
_envelopes = st.one_of(_addresses.map(envelope_for), st.binary(max_size=40))

# Frames a live session accepts come up more often than the ones that end it, so that examples
# get deep into the session (full windows, answers crossing requests) before anything closes it.
_send = st.builds(Send, ref=st.integers(0, 6), envelope=_addresses.map(envelope_for))
_to_relay: st.SearchStrategy[Frame] = st.one_of(
    _send,
    _send,
    _send,
    st.builds(Send, ref=_refs, envelope=_envelopes),
    st.builds(Ack, delivery_ids=st.lists(_ids, max_size=5).map(tuple)),
    st.builds(Revoke, ref=_refs, addresses=st.lists(_addresses, max_size=3).map(tuple)),
    st.builds(
        Activation,
        session=_sessions,
        payload=st.binary(max_size=8),
        server=st.one_of(st.none(), st.sampled_from([SERVER, bytes(32)])),
    ),
    st.builds(Ping, data=st.integers(0, 9)),
    st.builds(Pong, data=st.integers(0, 9)),
    st.builds(Error, code=_codes, reason=st.text(max_size=10), ref=st.one_of(st.none(), _refs)),
    st.builds(Hello, version=st.just(1), mode=st.sampled_from(Mode)),
    st.builds(Auth, chain=st.just((b"x",)), signature=st.just(bytes(64))),
)
_deliver = st.builds(Deliver, delivery_id=_ids, envelope=_addresses.map(envelope_for))
_to_client: st.SearchStrategy[Frame] = st.one_of(
    _deliver,
    _deliver,
    st.builds(Accepted, ref=_refs),
    st.builds(Error, code=_codes, reason=st.text(max_size=10), ref=st.one_of(st.none(), _refs)),
    st.builds(Deliver, delivery_id=_ids, envelope=_envelopes),
    st.builds(Activation, session=_sessions, payload=st.binary(max_size=8)),
    st.builds(
        Expired, recipient=_addresses, digest=st.just(bytes(32)), accepted_at=st.integers(0, 9)
    ),
    st.builds(Ping, data=st.integers(0, 9)),
    st.builds(Pong, data=st.integers(0, 9)),
    st.builds(Challenge, relay_id=st.just(CONFIG.relay_id), nonce=st.just(bytes(32))),
    st.builds(Ready, address=st.none(), max_pending=st.integers(1, 5)),
)
_later = st.one_of(st.integers(0, 3_000), st.integers(0, 3_000), st.integers(0, 200_000))


def _steps(frames: st.SearchStrategy[Frame], local: st.SearchStrategy[object]) -> st.SearchStrategy:
    frame = st.tuples(st.just("frame"), frames.map(encode_frame))
    call = st.tuples(st.just("local"), local)
    return st.lists(
        st.one_of(
            frame,
            frame,
            frame,
            call,
            call,
            st.tuples(st.just("peer"), st.none()),
            st.tuples(st.just("peer"), st.none()),
            st.tuples(st.just("bytes"), st.binary(max_size=48)),
            st.tuples(st.just("timer"), _later),
        ),
        max_size=30,
    )


@dataclass
class _Clock:
    now: int = NOW_MS

    def advance(self, by: int) -> int:
        self.now += by
        return self.now


def _check(events: list[Event], closed: bool, allowed: tuple[type, ...]) -> None:
    assert all(isinstance(e, allowed) for e in events), events
    ends = [i for i, e in enumerate(events) if isinstance(e, SessionTerminated)]
    assert ends in ([], [len(events) - 1]), events
    if ends:
        assert closed


def _check_outbox(frames: list[bytes]) -> None:
    for data in frames:
        decode_frame(data)  # whatever a machine sends is a valid frame


def _drive_relay(
    pair: Pair, steps: list[tuple[str, object]], *, max_pending: int, max_unacked: int
) -> None:
    relay = pair.relay
    clock = _Clock()
    pending: list[int] = []
    delivered = 0
    fresh = 100
    for kind, value in steps:
        events: list[Event] = []
        if kind == "peer":  # what a well-behaved client sends most: a request with a new ref
            fresh += 1
            send = Send(ref=fresh, envelope=envelope_for(bytes(32)))
            events = relay.receive_frame(encode_frame(send), clock.now)
        elif kind in ("frame", "bytes"):
            assert isinstance(value, bytes)
            events = relay.receive_frame(value, clock.now)
        elif kind == "timer":
            assert isinstance(value, int)
            events = relay.handle_timer(clock.advance(value))
        else:
            # local calls the relay service might make; misuse raises LocalProtocolError only
            try:
                if value == "answer" and pending:
                    relay.accept(pending.pop(0))
                elif value == "reject" and pending:
                    relay.reject(pending.pop(0), ErrorCode.QUEUE_FULL)
                elif value == "deliver":
                    delivered += 1
                    relay.deliver(bytes([delivered % 4 + 1]), envelope_for(bytes(32)))
                elif value == "activation":
                    relay.send_activation(bytes(16), b"answer")
            except LocalProtocolError:
                pass
        _check(events, relay.closed, _RELAY_EVENTS)
        for e in events:
            if isinstance(e, EnvelopeSubmitted | RevocationRequested):
                pending.append(e.ref)
        assert 0 <= relay.pending_requests <= max_pending
        assert 0 <= relay.delivery_window <= max_unacked
        assert (relay.get_timer() is None) == relay.closed
        _check_outbox(relay.frames_to_send())
        if relay.closed:
            assert relay.receive_frame(encode_frame(Ping(data=1)), clock.now) == []
            assert relay.handle_timer(clock.advance(1)) == []


_relay_local = st.sampled_from(["answer", "reject", "deliver", "activation"])


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(_steps(_to_relay, _relay_local))
def test_open_device_session_at_the_relay(steps: list[tuple[str, object]]) -> None:
    pair = open_device(_ORG, config=_LIMITS)
    _drive_relay(pair, steps, max_pending=3, max_unacked=3)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(_steps(_to_relay, _relay_local))
def test_open_server_session_at_the_relay(steps: list[tuple[str, object]]) -> None:
    pair = open_server(_ORG, config=_LIMITS)
    _drive_relay(pair, steps, max_pending=3, max_unacked=3)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(_steps(_to_relay, _relay_local))
def test_activation_session_at_the_relay(steps: list[tuple[str, object]]) -> None:
    pair = Pair(ClientSession(config=CONFIG), relay_for(_ORG, config=_LIMITS))
    pair.client.connect_for_activation(NOW_MS)
    pair.pump()
    pair.relay.admit(NOW_MS)
    pair.pump()
    assert pair.relay.state is RelayState.ACTIVATING
    _drive_relay(pair, steps, max_pending=0, max_unacked=3)


_client_local = st.sampled_from(["send", "ack", "revoke", "activation", "close"])


def _drive_client(client: ClientSession, steps: list[tuple[str, object]], max_pending: int) -> None:
    clock = _Clock()
    refs: list[int] = []
    for kind, value in steps:
        events: list[Event] = []
        if kind == "peer":  # what a well-behaved relay sends most: the answer to a request
            answer = Accepted(ref=refs.pop(0)) if refs else Ping(data=0)
            events = client.receive_frame(encode_frame(answer), clock.now)
        elif kind in ("frame", "bytes"):
            assert isinstance(value, bytes)
            events = client.receive_frame(value, clock.now)
        elif kind == "timer":
            assert isinstance(value, int)
            events = client.handle_timer(clock.advance(value))
        else:
            try:
                if value == "send":
                    refs.append(client.send_envelope(envelope_for(bytes(32))))
                elif value == "ack":
                    client.ack([b"\x01", b"\x02"])
                elif value == "revoke":
                    refs.extend(client.revoke([bytes(32)]))
                elif value == "activation":
                    client.send_activation(bytes(16), b"x", SERVER)
                elif value == "close":
                    client.close()
            except LocalProtocolError:
                pass
        _check(events, client.closed, _CLIENT_EVENTS)
        assert 0 <= client.send_window <= max_pending
        assert (client.get_timer() is None) == client.closed
        _check_outbox(client.frames_to_send())


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(_steps(_to_client, _client_local))
def test_open_client_session(steps: list[tuple[str, object]]) -> None:
    pair = open_device(_ORG, config=_LIMITS)
    assert pair.client.state is ClientState.OPEN
    _drive_client(pair.client, steps, _LIMITS.max_pending)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(_steps(_to_client, _client_local))
def test_open_server_client_session(steps: list[tuple[str, object]]) -> None:
    pair = open_server(_ORG, config=_LIMITS)
    _drive_client(pair.client, steps, _LIMITS.max_pending)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(_steps(_to_client, _client_local))
def test_activating_client_session(steps: list[tuple[str, object]]) -> None:
    pair = Pair(ClientSession(config=CONFIG), relay_for(_ORG))
    pair.client.connect_for_activation(NOW_MS)
    pair.pump()
    pair.relay.admit(NOW_MS)
    pair.pump()
    assert pair.client.state is ClientState.ACTIVATING
    _drive_client(pair.client, steps, 1)
