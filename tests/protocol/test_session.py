"""The client and relay session machines, driven against each other in memory and attacked."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealwire.errors import LocalProtocolError
from sealwire.protocol.envelope import Envelope
from sealwire.protocol.frames import (
    Ack,
    Activation,
    Auth,
    Challenge,
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
)
from sealwire.protocol.identity import ChainVerifier, Role, address_of, issue_certificate
from sealwire.protocol.session import (
    ActivationReceived,
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

RELAY_ID = bytes([0x52]) * 32
NONCE = bytes([0x4E]) * 32


def envelope_for(recipient: bytes) -> bytes:
    return Envelope(version=1, recipient=recipient, prekey_id=1, ciphertext=b"x" * 40).encode()


@dataclass
class Pair:
    """One client and one relay session joined in memory, with the events each side saw."""

    client: ClientSession
    relay: RelaySession
    client_events: list[Event] = field(default_factory=list)
    relay_events: list[Event] = field(default_factory=list)
    on_relay_event: Callable[[Event], None] | None = None

    def pump(self, now: int = NOW_MS) -> None:
        """Move frames both ways until neither side has anything to send (round-trip guard)."""
        for _ in range(100):
            up, down = self.client.frames_to_send(), self.relay.frames_to_send()
            if not up and not down:
                return
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
    pair = Pair(ClientSession(dev.key, dev.chain), relay_for(org, config=config))
    pair.client.connect(NOW_MS)
    pair.pump()
    verified = pair.relay_events[-1]
    assert isinstance(verified, ClientVerified) and verified.address == dev.address
    pair.relay.admit(NOW_MS)
    pair.pump()
    assert pair.client_events[-1] == SessionReady(address=dev.address, relay_time=NOW_MS)
    assert pair.client.state is ClientState.OPEN and pair.relay.state is RelayState.OPEN
    return pair


def open_server(org: Org) -> Pair:
    pair = Pair(
        ClientSession(org.server, [org.server_cert.encode()], root=org.root.public_key),
        relay_for(make_org(root_seed=50, server_seed=51)),  # the relay does not know org yet
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
    ref = pair.client.revoke([victim])
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
    device = Pair(ClientSession(), relay_for(org))
    device.client.connect_for_activation(NOW_MS)
    device.pump()
    assert device.client_events == [SessionReady(address=None, relay_time=NOW_MS)]
    server_address = address_of(org.server.public_key)
    device.client.send_activation(bytes(16), b"start", server_address)
    device.pump()
    assert device.relay_events == [
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
    pair = handshake_events(ClientSession(dev.key, dev.chain), relay_for(make_org()))
    assert terminated(pair.relay_events).code == "auth-failed"
    assert terminated(pair.client_events).code == "auth-failed"
    assert pair.relay.peer is None


def test_expired_device_certificate_is_refused() -> None:
    org = make_org()
    dev = org.device(10, not_after=NOW - 1)
    pair = handshake_events(ClientSession(dev.key, dev.chain), relay_for(org))
    assert terminated(pair.relay_events).code == "auth-failed"


def test_someone_elses_certificate_without_the_key_is_refused() -> None:
    org = make_org()
    dev = org.device(10)
    pair = handshake_events(ClientSession(key(99), dev.chain), relay_for(org))
    assert terminated(pair.relay_events) == SessionTerminated(
        code="auth-failed", reason="proof of possession failed", by_peer=False
    )


def test_server_certificate_must_match_the_root_it_registers() -> None:
    org = make_org()
    intruder = make_org(root_seed=70, server_seed=71)
    client = ClientSession(org.server, [org.server_cert.encode()], root=intruder.root.public_key)
    pair = handshake_events(client, relay_for(org))
    assert terminated(pair.relay_events).code == "auth-failed"


def test_device_cannot_pose_as_server_with_its_own_root() -> None:
    org = make_org()
    dev = org.device(10)
    client = ClientSession(dev.key, dev.chain, root=org.root.public_key)
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


def test_client_refuses_an_unexpected_relay() -> None:
    org = make_org()
    dev = org.device(10)
    client = ClientSession(dev.key, dev.chain, expected_relay=bytes(32))
    pair = handshake_events(client, relay_for(org))
    assert terminated(pair.client_events).code == "auth-failed"
    assert pair.relay_events and terminated(pair.relay_events).by_peer


def test_relay_refusal_reaches_the_client() -> None:
    org = make_org()
    dev = org.device(10)
    pair = handshake_events(ClientSession(dev.key, dev.chain), relay_for(org))
    pair.relay.refuse(ErrorCode.REVOKED, "address revoked")
    pair.pump()
    assert terminated(pair.client_events) == SessionTerminated(
        code="revoked", reason="address revoked", by_peer=True
    )


def test_relay_confirming_another_address_is_refused() -> None:
    org = make_org()
    dev = org.device(10)
    client = ClientSession(dev.key, dev.chain)
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
    assert relay.state is RelayState.ACTIVATING
    events = relay.receive_frame(encode_frame(Send(ref=0, envelope=envelope_for(bytes(32)))), 1)
    assert terminated(events).code == "unexpected"
    relay = relay_for(org)
    relay.receive_frame(encode_frame(Hello(version=1, mode=Mode.ACTIVATE)), NOW_MS)
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


def test_answer_to_unknown_request_is_unexpected() -> None:
    pair = open_device(make_org())
    pair.relay._pending.add(5)  # a misbehaving relay answers a ref the client never used
    pair.relay.accept(5)
    pair.pump()
    assert terminated(pair.client_events).code == "unexpected"


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
    client = ClientSession(org.device(10).key, org.device(10).chain)
    with pytest.raises(LocalProtocolError, match=r"send_envelope.*IDLE"):
        client.send_envelope(b"x")
    with pytest.raises(LocalProtocolError):
        ClientSession().connect(NOW_MS)
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
    pair = Pair(ClientSession(dev.key, dev.chain), relay_for(org))
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
    config = ClientConfig(ping_interval_ms=1000, ping_timeout_ms=500)
    pair = Pair(ClientSession(dev.key, dev.chain, config=config), relay_for(org))
    pair.client.connect(NOW_MS)
    pair.pump()
    pair.relay.admit(NOW_MS)
    pair.pump()
    assert pair.client.get_timer() == NOW_MS + 1000
    pair.client.handle_timer(NOW_MS + 1000)
    pair.pump(NOW_MS + 1001)  # the relay answers: the Pong resets the clock
    assert pair.client.get_timer() == NOW_MS + 2001
    pair.client.handle_timer(NOW_MS + 2001)
    assert [type(decode_frame(f)) for f in pair.client.frames_to_send()] == [Ping]
    assert pair.client.get_timer() == NOW_MS + 2501
    assert terminated(pair.client.handle_timer(NOW_MS + 2501)).code == "timeout"


def test_client_gives_up_a_stalled_handshake() -> None:
    client = ClientSession()
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
    client = ClientSession(_DEV.key, _DEV.chain)
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
        ClientSession(k, [cert.encode(), org.server_cert.encode()]), relay_for(org)
    )
    assert terminated(pair.relay_events).code == "auth-failed"
