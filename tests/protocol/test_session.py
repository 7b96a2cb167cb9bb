"""The client and relay session machines, driven against each other in memory and attacked."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealwire.errors import LocalProtocolError
from sealwire.protocol.envelope import MAX_ENVELOPE_SIZE, Envelope
from sealwire.protocol.frames import (
    FRAMES,
    MAX_FRAME_SIZE,
    MAX_REVOKE_ADDRESSES,
    Accepted,
    Ack,
    Activation,
    Auth,
    Challenge,
    Deliver,
    Error,
    ErrorCode,
    Hello,
    Mode,
    Ping,
    Ready,
    Revoke,
    Send,
    auth_message,
    decode_frame,
    encode_frame,
    relay_id_for,
)
from sealwire.protocol.identity import ChainVerifier, Role, address_of, issue_certificate
from sealwire.protocol.session import (
    CONNECTION_LOST,
    ActivationReceived,
    ActivationRequested,
    ActivationSubmitted,
    ClientConfig,
    ClientSession,
    ClientState,
    ClientVerified,
    DeliveriesAcknowledged,
    EnvelopeDelivered,
    EnvelopeExpired,
    EnvelopeSubmitted,
    Event,
    RelayConfig,
    RelaySession,
    RelayState,
    RequestAccepted,
    RequestRejected,
    RevocationRequested,
    SessionReady,
    SessionTerminated,
)
from tests.protocol.keys import DAY, NOW, NOW_MS, Org, key, make_org
from tests.protocol.unchecked import encode_unchecked

RELAY_ORIGIN = "wss://relay.test"
RELAY_ID = relay_id_for(RELAY_ORIGIN)
NONCE = bytes([0x4E]) * 32
CONFIG = ClientConfig(relay_id=RELAY_ID)
"""Clients in these tests dialled RELAY_ORIGIN."""


def envelope_for(recipient: bytes) -> bytes:
    return Envelope(version=1, recipient=recipient, prekey_id=1, ciphertext=b"x" * 40).encode()


@dataclass
class Pair:
    """One client and one relay session joined in memory, with the events each side saw."""

    client: ClientSession
    relay: RelaySession
    client_events: list[Event] = field(default_factory=list)
    relay_events: list[Event] = field(default_factory=list)
    client_frames: list[bytes] = field(default_factory=list)
    """Every frame the client sent, in order."""
    on_relay_event: Callable[[Event], None] | None = None

    def pump(self, now: int = NOW_MS) -> None:
        """Move frames both ways until neither side has anything to send (round-trip guard)."""
        for _ in range(100):
            up, down = self.client.frames_to_send(), self.relay.frames_to_send()
            if not up and not down:
                return
            self.client_frames.extend(up)
            for data in up:
                for ev in self.relay.receive_frame(data, now):
                    self.relay_events.append(ev)
                    if self.on_relay_event is not None:
                        self.on_relay_event(ev)
            for data in down:
                self.client_events.extend(self.client.receive_frame(data, now))
        raise AssertionError("sessions did not settle")


def relay_for(org: Org, *, config: RelayConfig | None = None) -> RelaySession:
    verifier = ChainVerifier({org.id: org.root.public_key})
    return RelaySession(
        relay_id=RELAY_ID, nonce=NONCE, verifier=verifier, now=NOW_MS, config=config
    )


def open_device(org: Org, n: int = 10, *, config: RelayConfig | None = None) -> Pair:
    dev = org.device(n)
    pair = Pair(ClientSession(dev.key, dev.chain, config=CONFIG), relay_for(org, config=config))
    pair.client.connect(NOW_MS)
    pair.pump()
    verified = pair.relay_events[-1]
    assert isinstance(verified, ClientVerified) and verified.address == dev.address
    pair.relay.admit(NOW_MS)
    pair.pump()
    assert pair.client_events[-1] == SessionReady(address=dev.address, relay_time=NOW_MS)
    assert pair.client.state is ClientState.OPEN and pair.relay.state is RelayState.OPEN
    return pair


def open_server(org: Org, *, config: RelayConfig | None = None) -> Pair:
    pair = Pair(
        ClientSession(
            org.server, [org.server_cert.encode()], root=org.root.public_key, config=CONFIG
        ),
        # the relay does not know org yet
        relay_for(make_org(root_seed=50, server_seed=51), config=config),
    )
    pair.client.connect(NOW_MS)
    pair.pump()
    verified = pair.relay_events[-1]
    assert isinstance(verified, ClientVerified)
    assert verified.role is Role.SERVER and verified.root == org.root.public_key
    assert verified.organisation == org.id
    pair.relay.admit(NOW_MS)
    pair.pump()
    return pair


def terminated(events: list[Event]) -> SessionTerminated:
    last = events[-1]
    assert isinstance(last, SessionTerminated), events
    return last


# --- the happy paths -------------------------------------------------------------------------


def test_device_sends_receives_and_acks() -> None:
    org = make_org()
    pair = open_device(org)
    env = envelope_for(bytes(32))
    ref = pair.client.send_envelope(env)
    pair.pump()
    assert pair.relay_events[-1] == EnvelopeSubmitted(ref=ref, recipient=bytes(32), envelope=env)
    pair.relay.accept(ref)
    pair.relay.deliver(b"d1", env)
    pair.pump()
    assert pair.client_events[-2:] == [
        RequestAccepted(ref=ref),
        EnvelopeDelivered(delivery_id=b"d1", envelope=env),
    ]
    pair.client.ack([b"d1", b"d1", b"unknown"])
    pair.pump()
    assert pair.relay_events[-1] == DeliveriesAcknowledged(delivery_ids=(b"d1",))
    assert pair.relay.delivery_window == 256


def test_rejected_request_keeps_the_session() -> None:
    pair = open_device(make_org())
    ref = pair.client.send_envelope(envelope_for(bytes(32)))
    pair.pump()
    pair.relay.reject(ref, ErrorCode.QUEUE_FULL, "full")
    pair.pump()
    assert pair.client_events[-1] == RequestRejected(ref=ref, code="queue-full", reason="full")
    assert pair.client.state is ClientState.OPEN
    assert pair.client.send_window == 256


def test_server_registers_revokes_and_hears_of_expiry() -> None:
    org = make_org()
    pair = open_server(org)
    victim = org.device(10).address
    [ref] = pair.client.revoke([victim])
    pair.pump()
    assert pair.relay_events[-1] == RevocationRequested(
        ref=ref, organisation=org.id, addresses=(victim,)
    )
    pair.relay.accept(ref)
    pair.relay.notify_expired(victim, bytes(32), 7)
    pair.pump()
    assert pair.client_events[-2:] == [
        RequestAccepted(ref=ref),
        EnvelopeExpired(recipient=victim, digest=bytes(32), accepted_at=7),
    ]


def test_activation_is_routed_both_ways() -> None:
    org = make_org()
    device = Pair(ClientSession(config=CONFIG), relay_for(org))
    device.client.connect_for_activation(NOW_MS)
    device.pump()
    assert device.relay_events == [ActivationRequested()]
    device.relay.admit(NOW_MS)
    device.pump()
    assert device.client_events == [SessionReady(address=None, relay_time=NOW_MS)]
    server_address = address_of(org.server.public_key)
    device.client.send_activation(bytes(16), b"start", server_address)
    device.pump()
    assert device.relay_events[1:] == [
        ActivationSubmitted(session=bytes(16), payload=b"start", server=server_address)
    ]
    server = open_server(org)
    server.relay.send_activation(bytes([1]) * 16, b"start")
    server.pump()
    assert server.client_events[-1] == ActivationReceived(session=bytes([1]) * 16, payload=b"start")
    server.client.send_activation(bytes([1]) * 16, b"reply")
    server.pump()
    assert server.relay_events[-1] == ActivationSubmitted(
        session=bytes([1]) * 16, payload=b"reply", server=None
    )
    device.relay.send_activation(bytes(16), b"reply")
    device.pump()
    assert device.client_events[-1] == ActivationReceived(session=bytes(16), payload=b"reply")


def test_both_sides_close_cleanly() -> None:
    pair = open_device(make_org())
    pair.relay.close(ErrorCode.SHUTDOWN, "maintenance")
    pair.pump()
    assert terminated(pair.client_events) == SessionTerminated(
        code="shutdown", reason="maintenance", by_peer=True
    )
    assert pair.client.closed and pair.relay.closed
    assert pair.client.receive_frame(encode_frame(Ping(data=1)), NOW_MS) == []


# --- authentication attacks ------------------------------------------------------------------


def handshake_events(client: ClientSession, relay: RelaySession) -> Pair:
    pair = Pair(client, relay)
    client.connect(NOW_MS)
    pair.pump()
    return pair


def test_device_of_unknown_organisation_is_refused() -> None:
    other = make_org(root_seed=60, server_seed=61)
    dev = other.device(10)
    pair = handshake_events(ClientSession(dev.key, dev.chain, config=CONFIG), relay_for(make_org()))
    assert terminated(pair.relay_events).code == "auth-failed"
    assert terminated(pair.client_events).code == "auth-failed"
    assert pair.relay.peer is None


def test_expired_device_certificate_is_refused() -> None:
    org = make_org()
    dev = org.device(10, not_after=NOW - 1)
    pair = handshake_events(ClientSession(dev.key, dev.chain, config=CONFIG), relay_for(org))
    assert terminated(pair.relay_events).code == "auth-failed"


def test_someone_elses_certificate_without_the_key_is_refused() -> None:
    org = make_org()
    dev = org.device(10)
    pair = handshake_events(ClientSession(key(99), dev.chain, config=CONFIG), relay_for(org))
    assert terminated(pair.relay_events) == SessionTerminated(
        code="auth-failed", reason="proof of possession failed", by_peer=False
    )


def test_server_certificate_must_match_the_root_it_registers() -> None:
    org = make_org()
    intruder = make_org(root_seed=70, server_seed=71)
    client = ClientSession(
        org.server, [org.server_cert.encode()], root=intruder.root.public_key, config=CONFIG
    )
    pair = handshake_events(client, relay_for(org))
    assert terminated(pair.relay_events).code == "auth-failed"


def test_device_cannot_pose_as_server_with_its_own_root() -> None:
    org = make_org()
    dev = org.device(10)
    client = ClientSession(dev.key, dev.chain, root=org.root.public_key, config=CONFIG)
    pair = handshake_events(client, relay_for(org))
    assert terminated(pair.relay_events).code == "auth-failed"


def test_auth_replayed_from_another_connection_is_refused() -> None:
    org = make_org()
    dev = org.device(10)
    old_nonce = bytes([1]) * 32
    signature = dev.key.sign("relay-auth", auth_message(RELAY_ID, old_nonce, dev.address))
    relay = relay_for(org)
    relay.receive_frame(encode_frame(Hello(version=1, mode=Mode.AUTHENTICATE)), NOW_MS)
    events = relay.receive_frame(
        encode_frame(Auth(chain=tuple(dev.chain), signature=signature)), NOW_MS
    )
    assert terminated(events).code == "auth-failed"


def test_auth_for_another_relay_is_refused() -> None:
    org = make_org()
    dev = org.device(10)
    signature = dev.key.sign("relay-auth", auth_message(bytes(32), NONCE, dev.address))
    relay = relay_for(org)
    relay.receive_frame(encode_frame(Hello(version=1, mode=Mode.AUTHENTICATE)), NOW_MS)
    events = relay.receive_frame(
        encode_frame(Auth(chain=tuple(dev.chain), signature=signature)), NOW_MS
    )
    assert terminated(events).code == "auth-failed"


def test_client_pinned_to_relay_a_refuses_relay_bs_challenge() -> None:
    org = make_org()
    dev = org.device(10)
    client = ClientSession(
        dev.key, dev.chain, config=ClientConfig(relay_id=relay_id_for("wss://relay-a.example"))
    )
    relay_b = RelaySession(
        relay_id=relay_id_for("wss://relay-b.example"),
        nonce=NONCE,
        verifier=ChainVerifier({org.id: org.root.public_key}),
        now=NOW_MS,
    )
    pair = handshake_events(client, relay_b)
    assert terminated(pair.client_events) == SessionTerminated(
        code="auth-failed", reason="not the relay we dialled", by_peer=False
    )
    assert terminated(pair.relay_events).by_peer
    assert not any(isinstance(e, ClientVerified) for e in pair.relay_events)


def test_forwarded_challenge_of_another_relay_gets_no_signature() -> None:
    # Relay B (which the client dialled) passes on relay A's challenge to log in as the client
    # at A. The client signs nothing: its Hello, then its refusal, are all it sends.
    dev = make_org().device(10)
    client = ClientSession(
        dev.key, dev.chain, config=ClientConfig(relay_id=relay_id_for("wss://relay-b.example"))
    )
    client.connect(NOW_MS)
    forwarded = Challenge(relay_id=relay_id_for("wss://relay-a.example"), nonce=NONCE)
    events = client.receive_frame(encode_frame(forwarded), NOW_MS)
    assert terminated(events).code == "auth-failed"
    sent = [decode_frame(f) for f in client.frames_to_send()]
    assert [type(f) for f in sent] == [Hello, Error]


def test_a_client_cannot_be_built_without_a_relay_pin() -> None:
    dev = make_org().device(10)
    with pytest.raises(TypeError):
        ClientSession(dev.key, dev.chain)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ClientSession(dev.key, dev.chain, config=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ClientConfig()  # type: ignore[call-arg]
    for bad in (None, b"", bytes(31), bytes(33), "d3" * 32):
        with pytest.raises(ValueError, match="relay_id"):
            ClientConfig(relay_id=bad)  # type: ignore[arg-type]


def test_relay_refusal_reaches_the_client() -> None:
    org = make_org()
    dev = org.device(10)
    pair = handshake_events(ClientSession(dev.key, dev.chain, config=CONFIG), relay_for(org))
    pair.relay.refuse(ErrorCode.REVOKED, "address revoked")
    pair.pump()
    assert terminated(pair.client_events) == SessionTerminated(
        code="revoked", reason="address revoked", by_peer=True
    )


def test_relay_confirming_another_address_is_refused() -> None:
    org = make_org()
    dev = org.device(10)
    client = ClientSession(dev.key, dev.chain, config=CONFIG)
    client.connect(NOW_MS)
    client.receive_frame(encode_frame(Challenge(relay_id=RELAY_ID, nonce=NONCE)), NOW_MS)
    events = client.receive_frame(encode_frame(Ready(address=bytes(32))), NOW_MS)
    assert terminated(events).code == "unexpected"


def test_version_mismatch_is_refused() -> None:
    relay = relay_for(make_org())
    events = relay.receive_frame(encode_frame(Hello(version=2, mode=Mode.AUTHENTICATE)), NOW_MS)
    assert terminated(events).code == "version"


# --- frames out of place -----------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        Send(ref=0, envelope=envelope_for(bytes(32))),
        Ack(delivery_ids=()),
        Auth(chain=(b"x",), signature=bytes(64)),
        Activation(session=bytes(16), payload=b"", server=bytes(32)),
        Ready(address=None),
    ],
    ids=lambda f: type(f).__name__,
)
def test_frames_before_hello_are_unexpected(frame: object) -> None:
    relay = relay_for(make_org())
    events = relay.receive_frame(encode_frame(frame), NOW_MS)  # type: ignore[arg-type]
    assert terminated(events).code == "unexpected"
    assert relay.state is RelayState.CLOSED
    assert decode_frame(relay.frames_to_send()[-1]) == Error(
        code="unexpected", reason=terminated(events).reason
    )


def test_device_may_not_revoke_or_activate_once_activated() -> None:
    org = make_org()
    for frame in (
        Revoke(ref=0, addresses=()),
        Activation(session=bytes(16), payload=b"", server=None),
    ):
        pair = open_device(org)
        events = pair.relay.receive_frame(encode_frame(frame), NOW_MS)
        assert terminated(events).code == "unexpected"


def test_activation_session_may_only_activate() -> None:
    org = make_org()
    relay = relay_for(org)
    relay.receive_frame(encode_frame(Hello(version=1, mode=Mode.ACTIVATE)), NOW_MS)
    relay.admit(NOW_MS)
    assert relay.state is RelayState.ACTIVATING
    events = relay.receive_frame(encode_frame(Send(ref=0, envelope=envelope_for(bytes(32)))), 1)
    assert terminated(events).code == "unexpected"
    relay = relay_for(org)
    relay.receive_frame(encode_frame(Hello(version=1, mode=Mode.ACTIVATE)), NOW_MS)
    relay.admit(NOW_MS)
    no_server = Activation(session=bytes(16), payload=b"x", server=None)
    assert terminated(relay.receive_frame(encode_frame(no_server), NOW_MS)).code == "unexpected"


def test_malformed_and_oversized_frames_close_with_stable_codes() -> None:
    pair = open_device(make_org())
    assert terminated(pair.relay.receive_frame(b"\xff\x00garbage", NOW_MS)).code == "malformed"
    pair = open_device(make_org())
    big = bytes(300 * 1024)
    assert terminated(pair.relay.receive_frame(big, NOW_MS)).code == "too-large"
    pair = open_device(make_org())
    bad_envelope = encode_frame(Send(ref=1, envelope=b"not an envelope"))
    assert terminated(pair.relay.receive_frame(bad_envelope, NOW_MS)).code == "malformed"


def test_request_flood_and_duplicate_refs_close() -> None:
    pair = open_device(make_org(), config=RelayConfig(max_pending=2))
    env = envelope_for(bytes(32))
    assert pair.client.send_window == 2
    pair.client.send_envelope(env)
    pair.client.send_envelope(env)
    with pytest.raises(LocalProtocolError, match="window"):
        pair.client.send_envelope(env)
    pair.pump()
    flood = pair.relay.receive_frame(encode_frame(Send(ref=7, envelope=env)), NOW_MS)
    assert terminated(flood).code == "too-many"
    pair = open_device(make_org())
    pair.relay.receive_frame(encode_frame(Send(ref=3, envelope=env)), NOW_MS)
    dup = pair.relay.receive_frame(encode_frame(Send(ref=3, envelope=env)), NOW_MS)
    assert terminated(dup).code == "unexpected"


@pytest.mark.parametrize(
    "answer",
    [Accepted(ref=5), Error(code="queue-full", ref=5), Accepted(ref=0)],
    ids=["accepted", "rejected", "answered-twice"],
)
def test_answer_to_unknown_request_is_unexpected(answer: Accepted | Error) -> None:
    # A misbehaving relay answers a ref the client never used (or one already answered).
    pair = open_device(make_org())
    ref = pair.client.send_envelope(envelope_for(bytes(32)))
    pair.pump()
    pair.relay.accept(ref)
    pair.pump()
    assert pair.client_events[-1] == RequestAccepted(ref=0)
    events = pair.client.receive_frame(encode_frame(answer), NOW_MS)
    assert terminated(events) == SessionTerminated(
        code="unexpected", reason="answer to a request we did not make", by_peer=False
    )


def test_delivery_window_bounds_a_slow_reader() -> None:
    pair = open_device(make_org(), config=RelayConfig(max_unacked=2))
    env = envelope_for(bytes(32))
    pair.relay.deliver(b"a", env)
    pair.relay.deliver(b"b", env)
    assert pair.relay.delivery_window == 0
    with pytest.raises(LocalProtocolError, match="window"):
        pair.relay.deliver(b"c", env)
    pair.pump()
    pair.client.ack([b"a"])
    pair.pump()
    assert pair.relay.delivery_window == 1
    with pytest.raises(LocalProtocolError, match="in flight"):
        pair.relay.deliver(b"b", env)


# --- local misuse -------------------------------------------------------------------------


def test_local_misuse_raises() -> None:
    org = make_org()
    client = ClientSession(org.device(10).key, org.device(10).chain, config=CONFIG)
    with pytest.raises(LocalProtocolError, match=r"send_envelope.*IDLE"):
        client.send_envelope(b"x")
    with pytest.raises(LocalProtocolError):
        ClientSession(config=CONFIG).connect(NOW_MS)
    relay = relay_for(org)
    with pytest.raises(LocalProtocolError, match="admit"):
        relay.admit(NOW_MS)
    pair = open_device(org)
    with pytest.raises(LocalProtocolError, match="no pending request"):
        pair.relay.accept(42)
    with pytest.raises(LocalProtocolError, match="only an enterprise server"):
        pair.client.revoke([])
    with pytest.raises(LocalProtocolError, match="expiry notices"):
        pair.relay.notify_expired(bytes(32), bytes(32), 0)
    with pytest.raises(LocalProtocolError):
        pair.client.send_activation(bytes(16), b"x", bytes(32))
    pair.client.close()
    with pytest.raises(LocalProtocolError, match="CLOSED"):
        pair.client.ack([b"a"])


# --- timers -------------------------------------------------------------------------------


def test_relay_cuts_off_a_slow_handshake() -> None:
    relay = relay_for(make_org())
    assert relay.get_timer() == NOW_MS + 10_000
    assert relay.handle_timer(NOW_MS + 9_999) == []
    assert terminated(relay.handle_timer(NOW_MS + 10_000)).code == "timeout"
    assert relay.get_timer() is None


def test_relay_closes_an_idle_session() -> None:
    pair = open_device(make_org())
    later = NOW_MS + 60_000
    pair.relay.receive_frame(encode_frame(Ping(data=1)), later)
    assert pair.relay.get_timer() == later + 120_000
    assert terminated(pair.relay.handle_timer(later + 120_000)).code == "timeout"


def test_relay_closes_when_the_certificate_expires() -> None:
    org = make_org()
    dev = org.device(10, not_after=NOW + 60)
    pair = Pair(ClientSession(dev.key, dev.chain, config=CONFIG), relay_for(org))
    pair.client.connect(NOW_MS)
    pair.pump()
    pair.relay.admit(NOW_MS)
    assert pair.relay.get_timer() == (NOW + 60) * 1000
    events = pair.relay.handle_timer((NOW + 60) * 1000)
    assert terminated(events) == SessionTerminated(
        code="auth-failed", reason="certificate expired", by_peer=False
    )


def test_client_pings_and_gives_up_on_a_silent_relay() -> None:
    org = make_org()
    dev = org.device(10)
    config = ClientConfig(relay_id=RELAY_ID, ping_interval_ms=1000, ping_timeout_ms=500)
    pair = Pair(ClientSession(dev.key, dev.chain, config=config), relay_for(org))
    pair.client.connect(NOW_MS)
    pair.pump()
    pair.relay.admit(NOW_MS)
    pair.pump()
    assert pair.client.get_timer() == NOW_MS + 1000
    pair.client.handle_timer(NOW_MS + 1000)
    pair.pump(NOW_MS + 1001)  # the relay answers: the Pong resets the clock
    # heard at 1001, but last sent at 1000: the next Ping is due an interval after the Ping
    assert pair.client.get_timer() == NOW_MS + 2000
    assert pair.client.handle_timer(NOW_MS + 1999) == []
    assert pair.client.frames_to_send() == []
    pair.client.handle_timer(NOW_MS + 2000)
    assert [type(decode_frame(f)) for f in pair.client.frames_to_send()] == [Ping]
    assert pair.client.get_timer() == NOW_MS + 2500
    assert terminated(pair.client.handle_timer(NOW_MS + 2500)).code == "timeout"


def test_client_gives_up_a_stalled_handshake() -> None:
    client = ClientSession(config=CONFIG)
    client.connect_for_activation(NOW_MS)
    assert client.get_timer() == NOW_MS + 15_000
    assert terminated(client.handle_timer(NOW_MS + 15_000)).code == "timeout"


# --- properties ---------------------------------------------------------------------------

_ORG = make_org()
_DEV = _ORG.device(10)
_VALID = [
    encode_frame(f)
    for f in (
        Hello(version=1, mode=Mode.AUTHENTICATE),
        Hello(version=1, mode=Mode.ACTIVATE),
        Auth(chain=tuple(_DEV.chain), signature=bytes(64)),
        Send(ref=1, envelope=envelope_for(bytes(32))),
        Ack(delivery_ids=(b"a",)),
        Ping(data=1),
        Activation(session=bytes(16), payload=b"p", server=bytes(32)),
        Revoke(ref=2, addresses=()),
        Error(code="shutdown"),
        Error(code="x", ref=1),
    )
]
_RELAY_EVENTS = (
    ActivationRequested,
    ClientVerified,
    EnvelopeSubmitted,
    DeliveriesAcknowledged,
    ActivationSubmitted,
    RevocationRequested,
    SessionTerminated,
)


@given(st.lists(st.one_of(st.binary(max_size=64), st.sampled_from(_VALID)), max_size=12))
def test_relay_never_raises_on_any_input(frames: list[bytes]) -> None:
    relay = relay_for(_ORG)
    for data in frames:
        events = relay.receive_frame(data, NOW_MS)
        assert all(isinstance(e, _RELAY_EVENTS) for e in events)
        if any(isinstance(e, SessionTerminated) for e in events):
            assert relay.closed
        for out in relay.frames_to_send():
            decode_frame(out)  # whatever the relay says is well-formed


@given(st.lists(st.one_of(st.binary(max_size=64), st.sampled_from(_VALID)), max_size=12))
def test_client_never_raises_on_any_input(frames: list[bytes]) -> None:
    client = ClientSession(_DEV.key, _DEV.chain, config=CONFIG)
    client.connect(NOW_MS)
    for data in frames:
        for event in client.receive_frame(data, NOW_MS):
            assert not isinstance(event, (ClientVerified, EnvelopeSubmitted))
    for out in client.frames_to_send():
        decode_frame(out)


def test_every_certificate_day_boundary_is_checked_with_the_session_clock() -> None:
    # A device certificate valid from tomorrow is refused today.
    org = make_org()
    k = key(10)
    cert = issue_certificate(
        org.server,
        organisation=org.id,
        role=Role.DEVICE,
        identity_key=k.public_key,
        serial=5,
        not_before=NOW + DAY,
        not_after=NOW + 2 * DAY,
    )
    pair = handshake_events(
        ClientSession(k, [cert.encode(), org.server_cert.encode()], config=CONFIG), relay_for(org)
    )
    assert terminated(pair.relay_events).code == "auth-failed"


# --- revocation is scoped to the revoking server's organisation ----------------------------


def test_revocation_event_carries_the_revoking_servers_organisation() -> None:
    # A server of another organisation names our device: the event says whose server asked
    # (from its verified certificate), so the relay service applies it to that organisation's
    # addresses only, and so not to ours.
    ours, theirs = make_org(), make_org(root_seed=80, server_seed=81)
    pair = open_server(theirs)
    assert pair.relay.peer is not None and pair.relay.peer.organisation == theirs.id
    [ref] = pair.client.revoke([ours.device(10).address])
    pair.pump()
    event = pair.relay_events[-1]
    assert isinstance(event, RevocationRequested)
    assert event.organisation == theirs.id != ours.id
    assert event == RevocationRequested(
        ref=ref, organisation=theirs.id, addresses=(ours.device(10).address,)
    )


def test_empty_revoke_is_malformed_and_cannot_be_sent() -> None:
    pair = open_server(make_org())
    with pytest.raises(LocalProtocolError, match="at least one address"):
        pair.client.revoke([])
    assert pair.client.frames_to_send() == [] and pair.client.send_window == 256
    events = pair.relay.receive_frame(encode_frame(Revoke(ref=0, addresses=())), NOW_MS)
    assert terminated(events) == SessionTerminated(
        code="malformed", reason="Revoke names no address", by_peer=False
    )


def test_a_long_revocation_is_split_into_several_requests() -> None:
    org = make_org()
    pair = open_server(org)
    addresses = [
        bytes([i % 256, i // 256]) + bytes(30) for i in range(2 * MAX_REVOKE_ADDRESSES + 7)
    ]
    refs = pair.client.revoke(addresses + addresses[:5])  # duplicates are dropped
    assert refs == [0, 1, 2]
    assert pair.client.send_window == 256 - 3
    pair.pump()
    requested = [e for e in pair.relay_events if isinstance(e, RevocationRequested)]
    assert [len(e.addresses) for e in requested] == [256, 256, 7]
    assert [a for e in requested for a in e.addresses] == addresses
    assert {e.organisation for e in requested} == {org.id}


def test_a_revocation_needing_more_frames_than_the_window_sends_nothing() -> None:
    org = make_org()
    pair = open_server(org)
    for _ in range(255):
        pair.client.send_envelope(envelope_for(bytes(32)))
    pair.client.frames_to_send()
    assert pair.client.send_window == 1
    with pytest.raises(LocalProtocolError, match="window"):
        pair.client.revoke([i.to_bytes(32, "big") for i in range(MAX_REVOKE_ADDRESSES + 1)])
    assert pair.client.frames_to_send() == [] and pair.client.send_window == 1
    assert pair.client.revoke([bytes(32)]) == [255]


# --- the certificate chain bounds the session -----------------------------------------------


def test_relay_closes_when_any_certificate_of_the_chain_expires() -> None:
    root, server = key(1), key(2)
    org = make_org()
    short_server_cert = issue_certificate(
        root,
        organisation=org.id,
        role=Role.SERVER,
        identity_key=server.public_key,
        serial=2,
        not_before=NOW - DAY,
        not_after=NOW + 60,
    )
    dev = org.device(10)  # valid for 30 days, but issued by a server certificate ending sooner
    chain = [dev.cert.encode(), short_server_cert.encode()]
    pair = Pair(ClientSession(dev.key, chain, config=CONFIG), relay_for(org))
    pair.client.connect(NOW_MS)
    pair.pump()
    verified = pair.relay_events[-1]
    assert isinstance(verified, ClientVerified)
    assert verified.certificate.body.not_after == NOW + 30 * DAY
    assert verified.valid_until == NOW + 60
    assert pair.relay.admit(NOW_MS) == []
    assert pair.relay.get_timer() == (NOW + 60) * 1000
    assert pair.relay.handle_timer((NOW + 60) * 1000 - 1) == []
    assert terminated(pair.relay.handle_timer((NOW + 60) * 1000)) == SessionTerminated(
        code="auth-failed", reason="certificate expired", by_peer=False
    )


# --- deadlines hold even for a peer that keeps talking ---------------------------------------


def test_frames_do_not_extend_the_relays_handshake_deadline() -> None:
    relay = relay_for(make_org())
    relay.receive_frame(encode_frame(Hello(version=1, mode=Mode.AUTHENTICATE)), NOW_MS)
    for t in range(1000, 10_000, 1000):
        assert relay.receive_frame(encode_frame(Ping(data=t)), NOW_MS + t) == []
    events = relay.receive_frame(encode_frame(Ping(data=1)), NOW_MS + 10_000)
    assert terminated(events) == SessionTerminated(
        code="timeout", reason="handshake took too long", by_peer=False
    )
    assert [type(decode_frame(f)) for f in relay.frames_to_send()][-1] is Error


def test_a_frame_after_the_idle_deadline_is_not_processed() -> None:
    pair = open_device(make_org())
    env = envelope_for(bytes(32))
    events = pair.relay.receive_frame(encode_frame(Send(ref=0, envelope=env)), NOW_MS + 120_000)
    assert terminated(events) == SessionTerminated(
        code="timeout", reason="idle for too long", by_peer=False
    )
    assert not any(isinstance(e, EnvelopeSubmitted) for e in events)


def test_a_frame_after_the_certificate_expired_is_not_processed() -> None:
    org = make_org()
    dev = org.device(10, not_after=NOW + 60)
    pair = Pair(ClientSession(dev.key, dev.chain, config=CONFIG), relay_for(org))
    pair.client.connect(NOW_MS)
    pair.pump()
    pair.relay.admit(NOW_MS)
    pair.pump()
    for t in range(0, 60_000, 30_000):  # a busy client still gets cut off at expiry
        assert pair.relay.receive_frame(encode_frame(Ping(data=1)), NOW_MS + t) == []
    events = pair.relay.receive_frame(encode_frame(Ping(data=2)), (NOW + 60) * 1000)
    assert terminated(events).reason == "certificate expired"


def test_admission_after_the_handshake_deadline_ends_the_session() -> None:
    org = make_org()
    dev = org.device(10)
    pair = handshake_events(ClientSession(dev.key, dev.chain, config=CONFIG), relay_for(org))
    assert isinstance(pair.relay_events[-1], ClientVerified)
    assert pair.relay.admit(NOW_MS + 10_000) == [
        SessionTerminated(code="timeout", reason="handshake took too long", by_peer=False)
    ]
    assert pair.relay.closed
    assert [type(decode_frame(f)) for f in pair.relay.frames_to_send()] == [Error]


def test_frames_do_not_extend_the_clients_handshake_deadline() -> None:
    dev = make_org().device(10)
    client = ClientSession(dev.key, dev.chain, config=CONFIG)
    client.connect(NOW_MS)
    assert client.receive_frame(encode_frame(Ping(data=1)), NOW_MS + 14_999) == []
    events = client.receive_frame(encode_frame(Ping(data=2)), NOW_MS + 15_000)
    assert terminated(events).reason == "relay did not complete the handshake"


def test_a_frame_after_the_ping_timeout_is_not_processed() -> None:
    config = ClientConfig(relay_id=RELAY_ID, ping_interval_ms=1000, ping_timeout_ms=500)
    org = make_org()
    dev = org.device(10)
    pair = Pair(ClientSession(dev.key, dev.chain, config=config), relay_for(org))
    pair.client.connect(NOW_MS)
    pair.pump()
    pair.relay.admit(NOW_MS)
    pair.pump()
    pair.client.handle_timer(NOW_MS + 1000)  # Ping
    late = pair.client.receive_frame(
        encode_frame(Deliver(delivery_id=b"d", envelope=b"e")), NOW_MS + 1500
    )
    assert terminated(late).reason == "relay stopped answering"


# --- keep-alive of a client that only receives -------------------------------------------


def test_receive_only_client_is_kept_alive_across_idle_intervals() -> None:
    # The relay keeps delivering, so the client always hears from it; the client never acks.
    # It must still send something within every idle interval of the relay.
    org = make_org()
    dev = org.device(10)
    config = ClientConfig(relay_id=RELAY_ID, ping_interval_ms=1000, ping_timeout_ms=500)
    pair = Pair(
        ClientSession(dev.key, dev.chain, config=config),
        relay_for(org, config=RelayConfig(idle_timeout_ms=2500, max_unacked=1000)),
    )
    pair.client.connect(NOW_MS)
    pair.pump()
    pair.relay.admit(NOW_MS)
    pair.pump()
    env = envelope_for(dev.address)
    for step in range(1, 41):  # ten seconds: four of the relay's idle intervals
        now = NOW_MS + step * 250
        if step % 2 == 0:
            pair.relay.deliver(step.to_bytes(4, "big"), env)
        assert pair.relay.handle_timer(now) == []
        assert pair.client.handle_timer(now) == []
        pair.pump(now)
        assert not pair.relay.closed and not pair.client.closed
    pings = [f for f in pair.client_frames if isinstance(decode_frame(f), Ping)]
    assert 8 <= len(pings) <= 12
    assert sum(isinstance(e, EnvelopeDelivered) for e in pair.client_events) == 20


# --- activation connections are bounded ----------------------------------------------------


def activating(config: RelayConfig | None = None) -> Pair:
    org = make_org()
    pair = Pair(ClientSession(config=CONFIG), relay_for(org, config=config))
    pair.client.connect_for_activation(NOW_MS)
    pair.pump()
    assert pair.relay_events[-1] == ActivationRequested()
    assert pair.relay.admit(NOW_MS) == []
    pair.pump()
    assert pair.relay.state is RelayState.ACTIVATING
    return pair


SERVER = address_of(key(2).public_key)


def test_activation_connection_carries_one_session_and_one_server() -> None:
    for other in (
        Activation(session=bytes([9]) * 16, payload=b"x", server=SERVER),
        Activation(session=bytes(16), payload=b"x", server=bytes(32)),
    ):
        pair = activating()
        pair.client.send_activation(bytes(16), b"start", SERVER)
        pair.pump()
        pair.relay.send_activation(bytes(16), b"challenge")
        pair.pump()
        events = pair.relay.receive_frame(encode_frame(other), NOW_MS)
        assert terminated(events) == SessionTerminated(
            code="unexpected", reason="one activation session per connection", by_peer=False
        )
    pair = activating()
    pair.client.send_activation(bytes(16), b"start", SERVER)
    pair.pump()
    pair.relay.send_activation(bytes(16), b"challenge")
    pair.pump()
    with pytest.raises(LocalProtocolError, match="one activation run"):
        pair.client.send_activation(bytes([9]) * 16, b"x", SERVER)
    with pytest.raises(LocalProtocolError, match="one activation run"):
        pair.client.send_activation(bytes(16), b"x", bytes(32))
    pair.client.send_activation(bytes(16), b"confirm", SERVER)
    pair.pump()
    assert pair.relay_events[-1] == ActivationSubmitted(
        session=bytes(16), payload=b"confirm", server=SERVER
    )


def test_activation_messages_wait_for_the_answer() -> None:
    pair = activating()
    assert pair.client.send_window == 1
    pair.client.send_activation(bytes(16), b"start", SERVER)
    assert pair.client.send_window == 0
    with pytest.raises(LocalProtocolError, match="wait for the server's answer"):
        pair.client.send_activation(bytes(16), b"again", SERVER)
    pair.pump()
    assert pair.relay.awaiting_activation_answer
    # exactly one message in flight is accepted; one more closes
    flood = encode_frame(Activation(session=bytes(16), payload=b"again", server=SERVER))
    assert terminated(pair.relay.receive_frame(flood, NOW_MS)).code == "too-many"
    # after an answer the next message is allowed
    pair = activating()
    pair.client.send_activation(bytes(16), b"start", SERVER)
    pair.pump()
    pair.relay.send_activation(bytes(16), b"challenge")
    assert not pair.relay.awaiting_activation_answer
    with pytest.raises(LocalProtocolError, match="awaits no activation answer"):
        pair.relay.send_activation(bytes(16), b"unasked")
    pair.pump()
    assert pair.client.send_window == 1
    pair.client.send_activation(bytes(16), b"confirm", SERVER)
    pair.pump()
    assert not pair.relay.closed
    with pytest.raises(LocalProtocolError, match="not this device's"):
        pair.relay.send_activation(bytes([9]) * 16, b"answer")


def test_client_refuses_an_unasked_activation_answer() -> None:
    pair = activating()
    answer = encode_frame(Activation(session=bytes(16), payload=b"x"))
    assert terminated(pair.client.receive_frame(answer, NOW_MS)).code == "unexpected"
    pair = activating()
    pair.client.send_activation(bytes(16), b"start", SERVER)
    other = encode_frame(Activation(session=bytes([7]) * 16, payload=b"x"))
    assert terminated(pair.client.receive_frame(other, NOW_MS)).reason == (
        "activation for another session"
    )


def test_an_activation_request_waits_for_the_relays_decision() -> None:
    pair = Pair(ClientSession(config=CONFIG), relay_for(make_org()))
    pair.client.connect_for_activation(NOW_MS)
    pair.pump()
    # The relay's policy decides (rate limits): nothing is sent before it does.
    assert pair.relay_events == [ActivationRequested()]
    assert pair.relay.state is RelayState.ACTIVATION_REQUESTED
    assert pair.client.state is ClientState.AWAIT_ACTIVATION_READY
    assert pair.relay.frames_to_send() == []
    assert pair.relay.receive_frame(encode_frame(Ping(data=1)), NOW_MS) == []  # still live
    pair.pump()
    assert pair.relay.admit(NOW_MS + 1) == []
    pair.pump()
    assert pair.client_events == [SessionReady(address=None, relay_time=NOW_MS + 1)]
    assert pair.relay.state is RelayState.ACTIVATING
    with pytest.raises(LocalProtocolError, match="admit"):
        pair.relay.admit(NOW_MS)


def test_a_refused_activation_request_sends_the_error_and_no_ready() -> None:
    pair = Pair(ClientSession(config=CONFIG), relay_for(make_org()))
    pair.client.connect_for_activation(NOW_MS)
    pair.pump()
    pair.relay.refuse(ErrorCode.RATE_LIMITED, "too many activations")
    assert pair.relay.closed
    sent = [decode_frame(f) for f in pair.relay.frames_to_send()]
    assert [type(f) for f in sent] == [Error]
    events = pair.client.receive_frame(encode_frame(sent[0]), NOW_MS)
    assert terminated(events).code == "rate-limited"
    assert not any(isinstance(e, SessionReady) for e in events)


def test_an_activation_request_must_be_answered_before_activating() -> None:
    relay = relay_for(make_org())
    assert relay.receive_frame(encode_frame(Hello(version=1, mode=Mode.ACTIVATE)), NOW_MS) == [
        ActivationRequested()
    ]
    early = Activation(session=bytes(16), payload=b"x", server=SERVER)
    assert terminated(relay.receive_frame(encode_frame(early), NOW_MS)).code == "unexpected"
    # An admission decided after the activation lifetime ends the session instead.
    relay = relay_for(make_org(), config=RelayConfig(activation_lifetime_ms=5000))
    relay.receive_frame(encode_frame(Hello(version=1, mode=Mode.ACTIVATE)), NOW_MS)
    assert terminated(relay.admit(NOW_MS + 5000)).reason == "activation took too long"
    assert relay.closed


def test_activation_connection_has_an_absolute_lifetime() -> None:
    pair = activating(RelayConfig(activation_lifetime_ms=5000))
    assert pair.relay.get_timer() == NOW_MS + 5000
    for t in range(500, 5000, 500):  # pings keep it from idling, not from ageing
        assert pair.relay.receive_frame(encode_frame(Ping(data=t)), NOW_MS + t) == []
    events = pair.relay.receive_frame(encode_frame(Ping(data=0)), NOW_MS + 5000)
    assert terminated(events) == SessionTerminated(
        code="timeout", reason="activation took too long", by_peer=False
    )
    pair = activating(RelayConfig(activation_lifetime_ms=5000))
    assert pair.relay.handle_timer(NOW_MS + 4999) == []
    assert terminated(pair.relay.handle_timer(NOW_MS + 5000)).reason == "activation took too long"


# --- local arguments ---------------------------------------------------------------------------


def test_a_send_that_does_not_encode_takes_no_request_slot() -> None:
    pair = open_device(make_org(), config=RelayConfig(max_pending=1))
    for bad in (bytes(MAX_ENVELOPE_SIZE + 1), None, "text"):
        with pytest.raises(LocalProtocolError, match="invalid Send"):
            pair.client.send_envelope(bad)  # type: ignore[arg-type]
    assert pair.client.send_window == 1
    assert pair.client.frames_to_send() == []
    assert pair.client.send_envelope(envelope_for(bytes(32))) == 0
    assert pair.client.send_window == 0


def test_reject_takes_only_per_request_codes() -> None:
    pair = open_device(make_org())
    ref = pair.client.send_envelope(envelope_for(bytes(32)))
    pair.pump()
    for code in (ErrorCode.SHUTDOWN, ErrorCode.TOO_MANY, "queue-full", "nonsense"):
        with pytest.raises(LocalProtocolError, match="per-request"):
            pair.relay.reject(ref, code)  # type: ignore[arg-type]
    assert pair.relay.pending_requests == 1 and pair.relay.frames_to_send() == []
    pair.relay.reject(ref, ErrorCode.RATE_LIMITED, "x" * 500)
    pair.pump()
    assert pair.client_events[-1] == RequestRejected(ref=ref, code="rate-limited", reason="x" * 200)


def test_bad_local_arguments_raise_local_protocol_error() -> None:
    org = make_org()
    pair = open_server(org)
    with pytest.raises(LocalProtocolError, match="invalid Deliver"):
        pair.relay.deliver(b"d", bytes(MAX_ENVELOPE_SIZE + 1))
    assert pair.relay.delivery_window == 256
    with pytest.raises(LocalProtocolError, match="invalid Activation"):
        pair.relay.send_activation(bytes(15), b"x")
    with pytest.raises(LocalProtocolError, match="invalid Expired"):
        pair.relay.notify_expired(bytes(32), bytes(31), 0)
    with pytest.raises(LocalProtocolError, match="invalid Ack"):
        pair.client.ack([bytes(33)])
    with pytest.raises(LocalProtocolError, match="invalid Activation"):
        pair.client.send_activation(bytes(16), bytes(16 * 1024 + 1))
    with pytest.raises(LocalProtocolError, match="invalid Revoke"):
        pair.client.revoke([bytes(31)])
    with pytest.raises(LocalProtocolError, match="ErrorCode"):
        pair.client.close("shutdown")  # type: ignore[arg-type]
    assert pair.client.frames_to_send() == [] and pair.relay.frames_to_send() == []
    assert not pair.client.closed and not pair.relay.closed


# --- connection loss ---------------------------------------------------------------------------


def test_connection_lost_reports_the_end() -> None:
    pair = open_device(make_org())
    pair.client.send_envelope(envelope_for(bytes(32)))
    for machine in (pair.client, pair.relay):
        assert machine.connection_lost() == [
            SessionTerminated(code=CONNECTION_LOST, reason="connection lost", by_peer=True)
        ]
        assert machine.closed and machine.frames_to_send() == []
        assert machine.connection_lost() == []
        assert machine.get_timer() is None


# --- boundaries ---------------------------------------------------------------------------------


def test_exactly_max_pending_requests_are_allowed() -> None:
    pair = open_device(make_org(), config=RelayConfig(max_pending=3))
    env = envelope_for(bytes(32))
    for ref in range(3):
        events = pair.relay.receive_frame(encode_frame(Send(ref=ref, envelope=env)), NOW_MS)
        assert events == [EnvelopeSubmitted(ref=ref, recipient=bytes(32), envelope=env)]
    assert pair.relay.pending_requests == 3
    one_more = pair.relay.receive_frame(encode_frame(Send(ref=3, envelope=env)), NOW_MS)
    assert terminated(one_more).code == "too-many"
    pair = open_device(make_org(), config=RelayConfig(max_pending=3))
    assert [pair.client.send_envelope(env) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(LocalProtocolError, match="window"):
        pair.client.send_envelope(env)


def test_frame_size_limit_is_exact() -> None:
    pair = open_device(make_org())
    at_limit = pair.relay.receive_frame(bytes(MAX_FRAME_SIZE), NOW_MS)
    assert terminated(at_limit).code == "malformed"  # decoded (and refused), not too large
    pair = open_device(make_org())
    over = pair.relay.receive_frame(bytes(MAX_FRAME_SIZE + 1), NOW_MS)
    assert terminated(over) == SessionTerminated(
        code="too-large", reason=f"frame of {MAX_FRAME_SIZE + 1} bytes", by_peer=False
    )


def test_the_largest_envelope_goes_through_and_one_byte_more_does_not() -> None:
    pair = open_device(make_org())
    largest = Envelope(
        version=1, recipient=bytes(32), prekey_id=1, ciphertext=bytes(MAX_ENVELOPE_SIZE - 64)
    ).encode()
    ref = pair.client.send_envelope(largest)
    pair.pump()
    assert pair.relay_events[-1] == EnvelopeSubmitted(
        ref=ref, recipient=bytes(32), envelope=largest
    )
    too_big = encode_unchecked(Send(ref=9, envelope=bytes(MAX_ENVELOPE_SIZE + 1)), FRAMES)
    assert terminated(pair.relay.receive_frame(too_big, NOW_MS)).code == "malformed"
