"""Sans-IO relay sessions: the client side and the relay side of one connection (DESIGN §6).

Neither machine touches a socket or a clock. The transport feeds each received WebSocket
message to :meth:`receive_frame` with the current time (Unix milliseconds) and gets events
back; what to transmit accumulates in :meth:`frames_to_send`; :meth:`get_timer` says when to
call :meth:`handle_timer` next (aioquic's pattern). Randomness (the relay's challenge nonce)
is passed in.

Peer misbehaviour never raises: the machine queues an :class:`~sealwire.protocol.frames.Error`
frame with a stable code, moves to ``CLOSED`` and reports :class:`SessionTerminated`; the
transport then sends what is queued and closes. Using the API in a state that does not allow
it raises :class:`~sealwire.errors.LocalProtocolError`.

Each machine's transitions are one table (``_CLIENT_TABLE``, ``_RELAY_TABLE``) keyed by
``(state, input)``, where an input is a received frame's name (``Hello`` is split by mode and
``Error`` by whether it answers one request) or a local call's name (lower case).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from sealwire.errors import DecodeError, InvalidCertificate, InvalidSignature, LocalProtocolError
from sealwire.protocol.envelope import peek_recipient
from sealwire.protocol.frames import (
    MAX_ACK_IDS,
    MAX_DELIVERY_ID_SIZE,
    MAX_FRAME_SIZE,
    NONCE_SIZE,
    PROTOCOL_VERSION,
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
    auth_message,
    decode_frame,
    encode_frame,
)
from sealwire.protocol.identity import (
    Certificate,
    ChainVerifier,
    Role,
    address_of,
    verify_chain,
)
from sealwire.protocol.suite import SigningKey, verify_signature

__all__ = [
    "ActivationReceived",
    "ActivationSubmitted",
    "ClientConfig",
    "ClientSession",
    "ClientState",
    "ClientVerified",
    "DeliveriesAcknowledged",
    "EnvelopeDelivered",
    "EnvelopeExpired",
    "EnvelopeSubmitted",
    "Event",
    "RelayConfig",
    "RelaySession",
    "RelayState",
    "RequestAccepted",
    "RequestRejected",
    "RevocationRequested",
    "SessionReady",
    "SessionTerminated",
]

_log = logging.getLogger(__name__)


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionReady:
    """Client: the relay opened the session."""

    address: bytes | None
    """Our authenticated address (``None`` in activation mode)."""
    relay_time: int
    """The relay's clock at that moment, Unix milliseconds."""


@dataclass(frozen=True)
class RequestAccepted:
    """Client: request ``ref`` is done (a :class:`~sealwire.protocol.frames.Send`'s envelope is
    durably queued)."""

    ref: int


@dataclass(frozen=True)
class RequestRejected:
    """Client: request ``ref`` was refused; the session goes on."""

    ref: int
    code: str
    reason: str


@dataclass(frozen=True)
class EnvelopeDelivered:
    """Client: a queued envelope arrived; :meth:`ClientSession.ack` it once stored."""

    delivery_id: bytes
    envelope: bytes


@dataclass(frozen=True)
class ActivationReceived:
    """Either side: an activation message arrived for ``session``."""

    session: bytes
    payload: bytes


@dataclass(frozen=True)
class EnvelopeExpired:
    """Client (servers only): an envelope from this organisation expired unread."""

    recipient: bytes
    digest: bytes
    accepted_at: int


@dataclass(frozen=True)
class ClientVerified:
    """Relay: the client proved possession of ``address``; call :meth:`RelaySession.admit` or
    :meth:`RelaySession.refuse` (admission, revocation and allow-lists are the relay's
    policy)."""

    address: bytes
    role: Role
    organisation: bytes
    certificate: Certificate
    """The verified leaf certificate."""
    root: bytes | None
    """Servers only: the organisation root key they registered with."""


@dataclass(frozen=True)
class EnvelopeSubmitted:
    """Relay: the client submitted an envelope for ``recipient``; answer with
    :meth:`RelaySession.accept` once it is durable, or :meth:`RelaySession.reject`."""

    ref: int
    recipient: bytes
    envelope: bytes


@dataclass(frozen=True)
class DeliveriesAcknowledged:
    """Relay: the client stored these deliveries of this session; delete them."""

    delivery_ids: tuple[bytes, ...]


@dataclass(frozen=True)
class ActivationSubmitted:
    """Relay: an activation message to route.

    From a device in activation mode ``server`` names the target server; from a server it is
    ``None`` and ``session`` is the id the relay gave the device's session.
    """

    session: bytes
    payload: bytes
    server: bytes | None


@dataclass(frozen=True)
class RevocationRequested:
    """Relay: an enterprise server revokes addresses of ``organisation``; answer with
    :meth:`RelaySession.accept` once recorded."""

    ref: int
    organisation: bytes
    addresses: tuple[bytes, ...]


@dataclass(frozen=True)
class SessionTerminated:
    """Either side: the session is over; send what is queued, then close the connection."""

    code: str
    reason: str
    by_peer: bool
    """``True`` if the peer ended it with an error frame, ``False`` if we did."""


Event = (
    SessionReady
    | RequestAccepted
    | RequestRejected
    | EnvelopeDelivered
    | ActivationReceived
    | EnvelopeExpired
    | ClientVerified
    | EnvelopeSubmitted
    | DeliveriesAcknowledged
    | ActivationSubmitted
    | RevocationRequested
    | SessionTerminated
)


# --- shared machinery ---------------------------------------------------------------------


def _input_of(frame: Frame) -> str:
    """The table input a received frame stands for."""
    if isinstance(frame, Hello):
        return f"Hello/{frame.mode.name.lower()}"
    if isinstance(frame, Error):
        return "Error/request" if frame.ref is not None else "Error/session"
    return type(frame).__name__


class _Violation(Exception):
    """The peer broke the protocol: end the session with ``code``."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


S = TypeVar("S", bound=enum.Enum)


class _Machine(Generic[S]):
    """What both sides share: the table, the one mutator, the outbox and termination."""

    _ROLE: str
    _TABLE: Mapping[tuple[S, str], S]
    _CLOSED: S

    def __init__(self, initial: S) -> None:
        self._state = initial
        self._outbox: list[bytes] = []

    @property
    def state(self) -> S:
        """The current state."""
        return self._state

    @property
    def closed(self) -> bool:
        """Whether the session is over (send what is queued, then close the connection)."""
        return self._state is self._CLOSED

    def frames_to_send(self) -> list[bytes]:
        """Take the encoded frames queued for the peer, oldest first."""
        out, self._outbox = self._outbox, []
        return out

    def _next_state(self, what: str) -> S:
        """Look up ``(state, what)``; an absent entry is an illegal input."""
        try:
            return self._TABLE[(self._state, what)]
        except KeyError:
            raise _Violation(
                ErrorCode.UNEXPECTED, f"{what} not allowed in {self._state.name}"
            ) from None

    def _set_state(self, new: S, what: str) -> None:
        """The one mutator of the state."""
        if new is not self._state:
            _log.debug("%s session: %s --%s--> %s", self._ROLE, self._state.name, what, new.name)
        self._state = new

    def _local(self, what: str) -> S:
        """Check that the local call ``what`` is allowed now; return the state it leads to."""
        nxt = self._TABLE.get((self._state, what))
        if nxt is None:
            raise LocalProtocolError(
                f"{self._ROLE} session: {what}() is not allowed in state {self._state.name}"
            )
        return nxt

    def _queue(self, frame: Frame) -> None:
        self._outbox.append(encode_frame(frame))

    def _terminate(self, code: ErrorCode, reason: str) -> SessionTerminated:
        """We end the session: queue the error frame, close, report it."""
        self._queue(Error(code=code.value, reason=reason))
        self._set_state(self._CLOSED, "terminate")
        return SessionTerminated(code=code.value, reason=reason, by_peer=False)

    def receive_frame(self, data: bytes, now: int) -> list[Event]:
        """Process one WebSocket message from the peer, received at ``now`` (Unix ms).

        Returns:
            The events it causes, in order. Never raises for anything the peer sent: a
            violation queues an error frame, closes, and ends the list with
            :class:`SessionTerminated`. Frames after the close are ignored.
        """
        if self.closed:
            return []
        self._heard(now)
        try:
            frame = self._decode(data)
            what = _input_of(frame)
            nxt = self._next_state(what)
            events = self._handle(frame, now)
            if not self.closed:
                self._set_state(nxt, what)
            return events
        except _Violation as v:
            return [self._terminate(v.code, v.reason)]

    def _heard(self, now: int) -> None:
        """The peer was heard from at ``now`` (liveness bookkeeping)."""
        raise NotImplementedError

    def _handle(self, frame: Frame, now: int) -> list[Event]:
        """Act on a frame the table allows; raise :class:`_Violation` to refuse it."""
        raise NotImplementedError

    def _decode(self, data: bytes) -> Frame:
        if len(data) > MAX_FRAME_SIZE:
            raise _Violation(ErrorCode.TOO_LARGE, f"frame of {len(data)} bytes")
        try:
            return decode_frame(data)
        except DecodeError as exc:
            raise _Violation(ErrorCode.MALFORMED, exc.reason) from None

    def close(self, code: ErrorCode = ErrorCode.SHUTDOWN, reason: str = "") -> None:
        """End the session from this side: queue an error frame with ``code`` and close.

        Does nothing if the session is already closed.
        """
        if self._state is not self._CLOSED:
            self._queue(Error(code=code.value, reason=reason))
            self._set_state(self._CLOSED, "close")

    def connection_lost(self) -> None:
        """The transport went away: the session is closed, nothing more is sent."""
        self._outbox.clear()
        self._set_state(self._CLOSED, "connection_lost")


# --- client -------------------------------------------------------------------------------


class ClientState(enum.Enum):
    """States of :class:`ClientSession`."""

    IDLE = "idle"
    """Not connected yet: call :meth:`ClientSession.connect`."""
    AWAIT_CHALLENGE = "await-challenge"
    """Hello sent (authenticate mode)."""
    AWAIT_READY = "await-ready"
    """Auth sent."""
    AWAIT_ACTIVATION_READY = "await-activation-ready"
    """Hello sent (activate mode)."""
    OPEN = "open"
    """Authenticated session: send, receive, acknowledge."""
    ACTIVATING = "activating"
    """Activation-only session: activation messages and pings only."""
    CLOSED = "closed"


_C = ClientState
_CLIENT_LIVE = (
    _C.AWAIT_CHALLENGE,
    _C.AWAIT_READY,
    _C.AWAIT_ACTIVATION_READY,
    _C.OPEN,
    _C.ACTIVATING,
)
_CLIENT_TABLE: Final[Mapping[tuple[ClientState, str], ClientState]] = {
    # local calls
    (_C.IDLE, "connect"): _C.AWAIT_CHALLENGE,
    (_C.IDLE, "connect_for_activation"): _C.AWAIT_ACTIVATION_READY,
    (_C.OPEN, "send_envelope"): _C.OPEN,
    (_C.OPEN, "ack"): _C.OPEN,
    (_C.OPEN, "revoke"): _C.OPEN,
    (_C.OPEN, "send_activation"): _C.OPEN,
    (_C.ACTIVATING, "send_activation"): _C.ACTIVATING,
    # received frames
    (_C.AWAIT_CHALLENGE, "Challenge"): _C.AWAIT_READY,
    (_C.AWAIT_READY, "Ready"): _C.OPEN,
    (_C.AWAIT_ACTIVATION_READY, "Ready"): _C.ACTIVATING,
    (_C.OPEN, "Accepted"): _C.OPEN,
    (_C.OPEN, "Error/request"): _C.OPEN,
    (_C.OPEN, "Deliver"): _C.OPEN,
    (_C.OPEN, "Activation"): _C.OPEN,
    (_C.OPEN, "Expired"): _C.OPEN,
    (_C.ACTIVATING, "Activation"): _C.ACTIVATING,
    **{(s, "Ping"): s for s in _CLIENT_LIVE},
    **{(s, "Pong"): s for s in _CLIENT_LIVE},
    **{(s, "Error/session"): _C.CLOSED for s in _CLIENT_LIVE},
}


@dataclass(frozen=True)
class ClientConfig:
    """Timing of a client session (Unix milliseconds throughout)."""

    handshake_timeout_ms: int = 15_000
    """How long the relay may take from our Hello to its Ready."""
    ping_interval_ms: int = 30_000
    """After this long without hearing from the relay, send a Ping."""
    ping_timeout_ms: int = 15_000
    """After this long without an answer to our Ping, give the session up."""


class ClientSession(_Machine[ClientState]):
    """The device's or enterprise server's side of a relay connection.

    Args:
        identity: the signing key whose address we prove (``None`` for activation mode).
        chain: our encoded certificate chain, leaf first.
        root: servers only: the organisation root public key, registering the organisation.
        expected_relay: if given, the relay id the relay must present (pinning).
        config: timing.
    """

    _ROLE = "client"
    _TABLE = _CLIENT_TABLE
    _CLOSED = ClientState.CLOSED

    def __init__(
        self,
        identity: SigningKey | None = None,
        chain: Sequence[bytes] = (),
        *,
        root: bytes | None = None,
        expected_relay: bytes | None = None,
        config: ClientConfig | None = None,
    ) -> None:
        super().__init__(ClientState.IDLE)
        self._identity = identity
        self._chain = tuple(chain)
        self._root = root
        self._expected_relay = expected_relay
        self._config = config or ClientConfig()
        self._address = address_of(identity.public_key) if identity is not None else None
        self._is_server = root is not None
        self._next_ref = 0
        self._pending: set[int] = set()
        self._max_pending = 1
        self._handshake_deadline: int | None = None
        self._last_heard = 0
        self._ping_sent_at: int | None = None
        self._ping_counter = 0

    @property
    def address(self) -> bytes | None:
        """The address this session proves (``None`` in activation mode)."""
        return self._address

    @property
    def send_window(self) -> int:
        """How many more requests may be sent before one is answered."""
        return max(0, self._max_pending - len(self._pending))

    def connect(self, now: int) -> None:
        """Start an authenticated session: queue Hello."""
        if self._identity is None or not self._chain:
            raise LocalProtocolError("client session: connect() needs an identity and a chain")
        self._start(Mode.AUTHENTICATE, "connect", now)

    def connect_for_activation(self, now: int) -> None:
        """Start an activation-only session (no certificate yet): queue Hello."""
        self._start(Mode.ACTIVATE, "connect_for_activation", now)

    def _start(self, mode: Mode, what: str, now: int) -> None:
        nxt = self._local(what)
        self._queue(Hello(version=PROTOCOL_VERSION, mode=mode))
        self._handshake_deadline = now + self._config.handshake_timeout_ms
        self._last_heard = now
        self._set_state(nxt, what)

    def send_envelope(self, envelope: bytes) -> int:
        """Queue a sealed envelope for the relay.

        Returns:
            The request ref that :class:`RequestAccepted` or :class:`RequestRejected` will name.

        Raises:
            LocalProtocolError: if the session is not open or :attr:`send_window` is 0.
        """
        self._local("send_envelope")
        ref = self._take_ref()
        self._queue(Send(ref=ref, envelope=envelope))
        return ref

    def revoke(self, addresses: Sequence[bytes]) -> int:
        """Servers: ask the relay to refuse ``addresses`` of our organisation from now on.

        Returns:
            The request ref, answered by :class:`RequestAccepted` once recorded.
        """
        self._local("revoke")
        if not self._is_server:
            raise LocalProtocolError("client session: only an enterprise server may revoke")
        ref = self._take_ref()
        self._queue(Revoke(ref=ref, addresses=tuple(addresses)))
        return ref

    def ack(self, delivery_ids: Sequence[bytes]) -> None:
        """Acknowledge stored deliveries (in batches of at most ``MAX_ACK_IDS``)."""
        self._local("ack")
        ids = tuple(delivery_ids)
        for start in range(0, len(ids), MAX_ACK_IDS):
            self._queue(Ack(delivery_ids=ids[start : start + MAX_ACK_IDS]))

    def send_activation(self, session: bytes, payload: bytes, server: bytes | None = None) -> None:
        """Send an activation message.

        A device in activation mode names the ``server``; a server answers under the relay's
        ``session`` id without naming one.
        """
        nxt = self._local("send_activation")
        if (self._state is ClientState.ACTIVATING) != (server is not None):
            raise LocalProtocolError(
                "client session: devices name the server, servers answer without one"
            )
        if self._state is ClientState.OPEN and not self._is_server:
            raise LocalProtocolError("client session: an activated device sends no activation")
        self._queue(Activation(session=session, payload=payload, server=server))
        self._set_state(nxt, "send_activation")

    def _take_ref(self) -> int:
        if len(self._pending) >= self._max_pending:
            raise LocalProtocolError("client session: send window is full; wait for answers")
        ref = self._next_ref
        self._next_ref += 1
        self._pending.add(ref)
        return ref

    def _heard(self, now: int) -> None:
        self._last_heard = now
        self._ping_sent_at = None

    def _handle(self, frame: Frame, now: int) -> list[Event]:
        match frame:
            case Challenge(relay_id=relay_id, nonce=nonce):
                if self._expected_relay is not None and relay_id != self._expected_relay:
                    raise _Violation(ErrorCode.AUTH_FAILED, "not the relay we expected")
                assert self._identity is not None and self._address is not None
                signature = self._identity.sign(
                    "relay-auth", auth_message(relay_id, nonce, self._address)
                )
                self._queue(Auth(chain=self._chain, signature=signature, root=self._root))
                return []
            case Ready(address=address, time=relay_time, max_pending=max_pending):
                if address != self._address:
                    raise _Violation(ErrorCode.UNEXPECTED, "relay confirmed another address")
                self._max_pending = max_pending
                self._handshake_deadline = None
                return [SessionReady(address=address, relay_time=relay_time)]
            case Accepted(ref=ref):
                self._answered(ref)
                return [RequestAccepted(ref=ref)]
            case Error(code=code, reason=reason, ref=ref) if ref is not None:
                self._answered(ref)
                return [RequestRejected(ref=ref, code=code, reason=reason)]
            case Error(code=code, reason=reason):
                self._set_state(ClientState.CLOSED, "Error/session")
                return [SessionTerminated(code=code, reason=reason, by_peer=True)]
            case Deliver(delivery_id=delivery_id, envelope=envelope):
                return [EnvelopeDelivered(delivery_id=delivery_id, envelope=envelope)]
            case Activation(session=session, payload=payload, server=server):
                if server is not None:
                    raise _Violation(ErrorCode.UNEXPECTED, "relay named a server")
                if self._state is ClientState.OPEN and not self._is_server:
                    raise _Violation(ErrorCode.UNEXPECTED, "activation to an activated device")
                return [ActivationReceived(session=session, payload=payload)]
            case Expired(recipient=recipient, digest=digest, accepted_at=accepted_at):
                if not self._is_server:
                    raise _Violation(ErrorCode.UNEXPECTED, "expiry notice to a device")
                return [
                    EnvelopeExpired(recipient=recipient, digest=digest, accepted_at=accepted_at)
                ]
            case Ping(data=data):
                self._queue(Pong(data=data))
                return []
            case Pong():
                return []
        raise AssertionError(f"unhandled {type(frame).__name__}")  # pragma: no cover

    def _answered(self, ref: int) -> None:
        if ref not in self._pending:
            raise _Violation(ErrorCode.UNEXPECTED, "answer to a request we did not make")
        self._pending.discard(ref)

    def get_timer(self) -> int | None:
        """When :meth:`handle_timer` must next be called (Unix ms), or ``None``."""
        if self._state in (ClientState.IDLE, ClientState.CLOSED):
            return None
        if self._handshake_deadline is not None:
            return self._handshake_deadline
        if self._ping_sent_at is not None:
            return self._ping_sent_at + self._config.ping_timeout_ms
        return self._last_heard + self._config.ping_interval_ms

    def handle_timer(self, now: int) -> list[Event]:
        """Act on the time: give up a stalled handshake or silent relay, or send a Ping."""
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return []
        if self._handshake_deadline is not None:
            return [self._terminate(ErrorCode.TIMEOUT, "relay did not complete the handshake")]
        if self._ping_sent_at is not None:
            return [self._terminate(ErrorCode.TIMEOUT, "relay stopped answering")]
        self._ping_counter += 1
        self._queue(Ping(data=self._ping_counter))
        self._ping_sent_at = now
        return []


# --- relay --------------------------------------------------------------------------------


class RelayState(enum.Enum):
    """States of :class:`RelaySession`."""

    AWAIT_HELLO = "await-hello"
    AWAIT_AUTH = "await-auth"
    """Challenge sent."""
    VERIFIED = "verified"
    """Proof and chain verified; waiting for the relay's admission decision."""
    OPEN = "open"
    """Authenticated session."""
    ACTIVATING = "activating"
    """Activation-only session of a device without a certificate."""
    CLOSED = "closed"


_R = RelayState
_RELAY_LIVE = (_R.AWAIT_HELLO, _R.AWAIT_AUTH, _R.VERIFIED, _R.OPEN, _R.ACTIVATING)
_RELAY_TABLE: Final[Mapping[tuple[RelayState, str], RelayState]] = {
    # received frames
    (_R.AWAIT_HELLO, "Hello/authenticate"): _R.AWAIT_AUTH,
    (_R.AWAIT_HELLO, "Hello/activate"): _R.ACTIVATING,
    (_R.AWAIT_AUTH, "Auth"): _R.VERIFIED,
    (_R.OPEN, "Send"): _R.OPEN,
    (_R.OPEN, "Ack"): _R.OPEN,
    (_R.OPEN, "Revoke"): _R.OPEN,
    (_R.OPEN, "Activation"): _R.OPEN,
    (_R.ACTIVATING, "Activation"): _R.ACTIVATING,
    **{(s, "Ping"): s for s in _RELAY_LIVE},
    **{(s, "Pong"): s for s in _RELAY_LIVE},
    **{(s, "Error/session"): _R.CLOSED for s in _RELAY_LIVE},
    # local calls
    (_R.VERIFIED, "admit"): _R.OPEN,
    (_R.VERIFIED, "refuse"): _R.CLOSED,
    (_R.OPEN, "accept"): _R.OPEN,
    (_R.OPEN, "reject"): _R.OPEN,
    (_R.OPEN, "deliver"): _R.OPEN,
    (_R.OPEN, "notify_expired"): _R.OPEN,
    (_R.OPEN, "send_activation"): _R.OPEN,
    (_R.ACTIVATING, "send_activation"): _R.ACTIVATING,
}


@dataclass(frozen=True)
class RelayConfig:
    """Limits and timing of a relay session (Unix milliseconds throughout)."""

    handshake_timeout_ms: int = 10_000
    """From the connection to an open session; slower clients are cut off (slowloris)."""
    idle_timeout_ms: int = 120_000
    """A session that sends nothing this long is closed (clients ping every 30 s)."""
    max_pending: int = 256
    """Most Send/Revoke requests a client may have unanswered (announced in Ready)."""
    max_unacked: int = 256
    """Most deliveries in flight to a client; a slow reader gets no more until it acks."""


class RelaySession(_Machine[RelayState]):
    """The relay's side of one client connection.

    Args:
        relay_id: this relay's stable 32-byte id.
        nonce: fresh random bytes for this connection's challenge.
        verifier: device chains are verified against the roots it holds (the relay adds the
            root of every organisation whose server it admits).
        now: when the connection was made.
        config: limits and timing.
    """

    _ROLE = "relay"
    _TABLE = _RELAY_TABLE
    _CLOSED = RelayState.CLOSED

    def __init__(
        self,
        *,
        relay_id: bytes,
        nonce: bytes,
        verifier: ChainVerifier,
        now: int,
        config: RelayConfig | None = None,
    ) -> None:
        if len(relay_id) != 32 or len(nonce) != NONCE_SIZE:
            raise ValueError("relay_id and nonce must be 32 bytes")
        super().__init__(RelayState.AWAIT_HELLO)
        self._relay_id = relay_id
        self._nonce = nonce
        self._verifier = verifier
        self._config = config or RelayConfig()
        self._deadline: int | None = now + self._config.handshake_timeout_ms
        self._last_heard = now
        self._pending: set[int] = set()
        self._unacked: set[bytes] = set()
        self._peer: ClientVerified | None = None

    @property
    def peer(self) -> ClientVerified | None:
        """Who the client proved to be (``None`` before verification or in activation mode)."""
        return self._peer

    @property
    def delivery_window(self) -> int:
        """How many more envelopes :meth:`deliver` may send before the client acks."""
        return max(0, self._config.max_unacked - len(self._unacked))

    def _heard(self, now: int) -> None:
        self._last_heard = now

    def _handle(self, frame: Frame, now: int) -> list[Event]:
        match frame:
            case Hello(version=version, mode=mode):
                if version != PROTOCOL_VERSION:
                    raise _Violation(ErrorCode.VERSION, f"this relay speaks {PROTOCOL_VERSION}")
                if mode is Mode.AUTHENTICATE:
                    self._queue(Challenge(relay_id=self._relay_id, nonce=self._nonce))
                else:
                    self._deadline = None
                    self._queue(Ready(address=None, time=now, max_pending=1))
                return []
            case Auth():
                self._peer = self._verify(frame, now)
                return [self._peer]
            case Send(ref=ref, envelope=envelope):
                self._track(ref)
                try:
                    recipient = peek_recipient(envelope).recipient
                except DecodeError as exc:
                    raise _Violation(ErrorCode.MALFORMED, f"envelope: {exc.reason}") from None
                return [EnvelopeSubmitted(ref=ref, recipient=recipient, envelope=envelope)]
            case Ack(delivery_ids=ids):
                done = tuple(i for i in dict.fromkeys(ids) if i in self._unacked)
                self._unacked.difference_update(done)
                return [DeliveriesAcknowledged(delivery_ids=done)] if done else []
            case Revoke(ref=ref, addresses=addresses):
                peer = self._peer
                if peer is None or peer.role is not Role.SERVER:
                    raise _Violation(ErrorCode.UNEXPECTED, "only an enterprise server revokes")
                self._track(ref)
                return [
                    RevocationRequested(
                        ref=ref, organisation=peer.organisation, addresses=addresses
                    )
                ]
            case Activation(session=session, payload=payload, server=server):
                if self._state is RelayState.ACTIVATING:
                    if server is None:
                        raise _Violation(ErrorCode.UNEXPECTED, "activation must name a server")
                else:
                    if self._peer is None or self._peer.role is not Role.SERVER:
                        raise _Violation(ErrorCode.UNEXPECTED, "activated devices do not activate")
                    if server is not None:
                        raise _Violation(ErrorCode.UNEXPECTED, "a server answers without a server")
                return [ActivationSubmitted(session=session, payload=payload, server=server)]
            case Ping(data=data):
                self._queue(Pong(data=data))
                return []
            case Pong():
                return []
            case Error(code=code, reason=reason):
                self._set_state(RelayState.CLOSED, "Error/session")
                return [SessionTerminated(code=code, reason=reason, by_peer=True)]
        raise AssertionError(f"unhandled {type(frame).__name__}")  # pragma: no cover

    def _verify(self, auth: Auth, now: int) -> ClientVerified:
        """Check the chain and the proof of possession; every failure is ``auth-failed``."""
        seconds = now // 1000
        try:
            if auth.root is not None:
                try:
                    certs = [Certificate.parse(c) for c in auth.chain]
                except DecodeError as exc:
                    raise InvalidCertificate(f"undecodable certificate: {exc.reason}") from None
                leaf = verify_chain(certs, root_key=auth.root, now=seconds, role=Role.SERVER)
            else:
                leaf = self._verifier.verify(auth.chain, now=seconds, role=Role.DEVICE)
        except InvalidCertificate as exc:
            raise _Violation(ErrorCode.AUTH_FAILED, str(exc)) from None
        address = leaf.body.subject
        try:
            verify_signature(
                leaf.body.identity_key,
                "relay-auth",
                auth_message(self._relay_id, self._nonce, address),
                auth.signature,
            )
        except InvalidSignature:
            raise _Violation(ErrorCode.AUTH_FAILED, "proof of possession failed") from None
        return ClientVerified(
            address=address,
            role=leaf.body.role,
            organisation=leaf.body.organisation,
            certificate=leaf,
            root=auth.root,
        )

    def _track(self, ref: int) -> None:
        if ref in self._pending:
            raise _Violation(ErrorCode.UNEXPECTED, "request ref already pending")
        if len(self._pending) >= self._config.max_pending:
            raise _Violation(ErrorCode.TOO_MANY, "too many unanswered requests")
        self._pending.add(ref)

    # local calls

    def admit(self, now: int) -> None:
        """Open the verified session (the relay's admission checks passed)."""
        nxt = self._local("admit")
        assert self._peer is not None
        self._deadline = None
        self._queue(
            Ready(address=self._peer.address, time=now, max_pending=self._config.max_pending)
        )
        self._set_state(nxt, "admit")

    def refuse(self, code: ErrorCode, reason: str = "") -> None:
        """Refuse the verified client (``not-admitted``, ``revoked``...) and close."""
        self._local("refuse")
        self.close(code, reason)

    def accept(self, ref: int) -> None:
        """Answer request ``ref``: done (for a Send: the envelope is durable)."""
        self._local("accept")
        self._answer(ref)
        self._queue(Accepted(ref=ref))

    def reject(self, ref: int, code: ErrorCode, reason: str = "") -> None:
        """Refuse request ``ref`` only (``queue-full``, ``rate-limited``, ``unavailable``...)."""
        self._local("reject")
        self._answer(ref)
        self._queue(Error(code=code.value, reason=reason, ref=ref))

    def _answer(self, ref: int) -> None:
        if ref not in self._pending:
            raise LocalProtocolError(f"relay session: no pending request {ref}")
        self._pending.discard(ref)

    def deliver(self, delivery_id: bytes, envelope: bytes) -> None:
        """Send one queued envelope; it stays in flight until the client acks it.

        Raises:
            LocalProtocolError: if not open, the id is in flight already or too long, or
                :attr:`delivery_window` is 0.
        """
        self._local("deliver")
        if not 0 < len(delivery_id) <= MAX_DELIVERY_ID_SIZE:
            raise LocalProtocolError("relay session: delivery id of 1 to 32 bytes")
        if delivery_id in self._unacked:
            raise LocalProtocolError("relay session: delivery id already in flight")
        if not self.delivery_window:
            raise LocalProtocolError("relay session: delivery window is full")
        self._unacked.add(delivery_id)
        self._queue(Deliver(delivery_id=delivery_id, envelope=envelope))

    def send_activation(self, session: bytes, payload: bytes) -> None:
        """Pass an activation message to this client (a server, or an activating device)."""
        self._local("send_activation")
        if self._state is RelayState.OPEN and (
            self._peer is None or self._peer.role is not Role.SERVER
        ):
            raise LocalProtocolError("relay session: activated devices get no activation")
        self._queue(Activation(session=session, payload=payload))

    def notify_expired(self, recipient: bytes, digest: bytes, accepted_at: int) -> None:
        """Tell a server that an envelope of its organisation expired unread."""
        self._local("notify_expired")
        if self._peer is None or self._peer.role is not Role.SERVER:
            raise LocalProtocolError("relay session: expiry notices go to servers")
        self._queue(Expired(recipient=recipient, digest=digest, accepted_at=accepted_at))

    def get_timer(self) -> int | None:
        """When :meth:`handle_timer` must next be called (Unix ms), or ``None``."""
        if self._state is RelayState.CLOSED:
            return None
        idle = self._last_heard + self._config.idle_timeout_ms
        deadlines = [idle]
        if self._deadline is not None:
            deadlines.append(self._deadline)
        if self._peer is not None:
            deadlines.append(self._peer.certificate.body.not_after * 1000)
        return min(deadlines)

    def handle_timer(self, now: int) -> list[Event]:
        """Close a handshake that took too long, a silent client, or an expired certificate."""
        if self._state is RelayState.CLOSED:
            return []
        if self._deadline is not None and now >= self._deadline:
            return [self._terminate(ErrorCode.TIMEOUT, "handshake took too long")]
        if now >= self._last_heard + self._config.idle_timeout_ms:
            return [self._terminate(ErrorCode.TIMEOUT, "idle for too long")]
        if self._peer is not None and now >= self._peer.certificate.body.not_after * 1000:
            return [self._terminate(ErrorCode.AUTH_FAILED, "certificate expired")]
        return []
