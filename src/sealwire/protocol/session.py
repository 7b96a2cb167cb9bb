"""Sans-IO relay sessions: the client side and the relay side of one connection (DESIGN §6).

Neither machine touches a socket or a clock. The transport feeds each received WebSocket
message to :meth:`receive_frame` with the current time (Unix milliseconds) and gets events
back; what to transmit accumulates in :meth:`frames_to_send`; :meth:`get_timer` says when to
call :meth:`handle_timer` next (aioquic's pattern). Randomness (the relay's challenge nonce)
is passed in.

Peer misbehaviour never raises: the machine queues an :class:`~sealwire.protocol.frames.Error`
frame with a stable code, moves to ``CLOSED`` and reports :class:`SessionTerminated`; the
transport then sends what is queued and closes. Using the API in a state that does not allow
it, or with arguments that do not fit in a valid frame, raises
:class:`~sealwire.errors.LocalProtocolError`.

Deadlines (handshake, idle, ping, activation lifetime, certificate expiry) are checked by
:meth:`handle_timer` and also whenever a frame arrives (and at :meth:`RelaySession.admit`): a
frame that arrives after a deadline ends the session instead of being processed, so a peer
that keeps talking cannot outlive it.

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

import cbor2

from sealwire.errors import (
    DecodeError,
    EncodeError,
    InvalidCertificate,
    InvalidSignature,
    LocalProtocolError,
)
from sealwire.protocol.envelope import peek_recipient
from sealwire.protocol.frames import (
    MAX_ACK_IDS,
    MAX_DELIVERY_ID_SIZE,
    MAX_FRAME_SIZE,
    MAX_REASON_SIZE,
    MAX_REVOKE_ADDRESSES,
    NONCE_SIZE,
    PROTOCOL_VERSION,
    RELAY_ID_SIZE,
    REQUEST_ERROR_CODES,
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
    "CONNECTION_LOST",
    "ActivationReceived",
    "ActivationRequested",
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
    valid_until: int
    """The earliest ``not_after`` of every certificate in the verified chain (Unix seconds):
    the session ends then (``auth-failed``, "certificate expired")."""


@dataclass(frozen=True)
class ActivationRequested:
    """Relay: a client without a certificate asked for an activation-only session; call
    :meth:`RelaySession.admit` or :meth:`RelaySession.refuse` (rate limits are the relay's
    policy, as for :class:`ClientVerified`)."""


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
    """Relay: an enterprise server of ``organisation`` revokes ``addresses``; answer with
    :meth:`RelaySession.accept` once recorded.

    The relay service must apply it **only** to addresses whose certificates belong to
    ``organisation`` (ignoring the others): any registered server may send a Revoke naming any
    addresses, and only this scoping stops it refusing another organisation's devices.
    """

    ref: int
    organisation: bytes
    """The organisation id from the revoking server's verified certificate (never from the
    frame)."""
    addresses: tuple[bytes, ...]
    """1 to ``MAX_REVOKE_ADDRESSES`` addresses, as the server sent them."""


@dataclass(frozen=True)
class SessionTerminated:
    """Either side: the session is over; send what is queued, then close the connection."""

    code: str
    """An :class:`~sealwire.protocol.frames.ErrorCode` value (or a newer peer's code), or
    :data:`CONNECTION_LOST`."""
    reason: str
    by_peer: bool
    """``True`` if it ended from outside: the peer's error frame, or the connection was lost.
    ``False`` if this machine ended it (a violation, a deadline, or :meth:`close`)."""


CONNECTION_LOST: Final = "connection-lost"
""":attr:`SessionTerminated.code` when the transport went away (never sent on the wire)."""


Event = (
    SessionReady
    | RequestAccepted
    | RequestRejected
    | EnvelopeDelivered
    | ActivationReceived
    | EnvelopeExpired
    | ClientVerified
    | ActivationRequested
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
    """What both sides share: the table, the one mutator, the outbox, deadlines, termination."""

    _ROLE: str
    _TABLE: Mapping[tuple[S, str], S]
    _CLOSED: S

    def __init__(self, initial: S, now: int = 0) -> None:
        self._state = initial
        self._outbox: list[bytes] = []
        self._outbox_bytes = 0
        self._clock = now
        """The latest time passed in: a lower bound for when queued frames leave."""
        self._last_sent = now

    @property
    def state(self) -> S:
        """The current state."""
        return self._state

    @property
    def closed(self) -> bool:
        """Whether the session is over (send what is queued, then close the connection)."""
        return self._state is self._CLOSED

    @property
    def queued_bytes(self) -> int:
        """Bytes of the frames queued for the peer and not yet taken (the transport pauses
        reading from a peer that does not read what we queue for it)."""
        return self._outbox_bytes

    @property
    def queued_frames(self) -> int:
        """How many frames are queued for the peer and not yet taken."""
        return len(self._outbox)

    def frames_to_send(self) -> list[bytes]:
        """Take the encoded frames queued for the peer, oldest first."""
        out, self._outbox = self._outbox, []
        self._outbox_bytes = 0
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

    def _tick(self, now: int) -> None:
        self._clock = max(self._clock, now)

    def _queue(self, frame: Frame) -> None:
        """Queue a frame this machine built itself (always valid)."""
        self._send_encoded(encode_frame(frame))

    def _encode_local(self, frame: Frame) -> bytes:
        """Encode a frame built from the caller's arguments, checking every bound first.

        Raises:
            LocalProtocolError: if the frame would not decode at the peer (a wrong type, a
                size out of bounds, a frame over ``MAX_FRAME_SIZE``).
        """
        try:
            # Encoding applies exactly the type and bound checks the peer's decoder applies
            # (codec.py), without a round trip (this is on the relay's delivery path).
            data = encode_frame(frame)
            if len(data) > MAX_FRAME_SIZE:
                raise DecodeError(f"frame larger than {MAX_FRAME_SIZE} bytes")
        except (DecodeError, EncodeError, ValueError, TypeError, cbor2.CBOREncodeError) as exc:
            detail = exc.reason if isinstance(exc, DecodeError | EncodeError) else str(exc)
            raise LocalProtocolError(
                f"{self._ROLE} session: invalid {type(frame).__name__}: {detail}"
            ) from None
        return data

    def _send_encoded(self, data: bytes) -> None:
        self._outbox.append(data)
        self._outbox_bytes += len(data)
        self._last_sent = self._clock

    def _terminate(self, code: ErrorCode, reason: str) -> SessionTerminated:
        """We end the session: queue the error frame, close, report it."""
        reason = reason[:MAX_REASON_SIZE]
        self._queue(Error(code=code.value, reason=reason))
        self._set_state(self._CLOSED, "terminate")
        return SessionTerminated(code=code.value, reason=reason, by_peer=False)

    def _expired(self, now: int) -> _Violation | None:
        """The deadline that has passed at ``now``, if any (checked before any input)."""
        raise NotImplementedError

    def receive_frame(self, data: bytes, now: int) -> list[Event]:
        """Process one WebSocket message from the peer, received at ``now`` (Unix ms).

        Returns:
            The events it causes, in order. Never raises for anything the peer sent: a
            violation queues an error frame, closes, and ends the list with
            :class:`SessionTerminated`. A frame that arrives after one of the session's
            deadlines is not processed: the session ends with that deadline's error instead.
            Frames after the close are ignored.
        """
        if self.closed:
            return []
        self._tick(now)
        try:
            expired = self._expired(now)
            if expired is not None:
                raise expired
            self._heard(now)
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

        ``reason`` is cut to ``MAX_REASON_SIZE`` characters. Does nothing if the session is
        already closed.

        Raises:
            LocalProtocolError: if ``code`` is not an :class:`~sealwire.protocol.frames.ErrorCode`.
        """
        if not isinstance(code, ErrorCode):
            raise LocalProtocolError(f"{self._ROLE} session: close() needs an ErrorCode")
        if self._state is not self._CLOSED:
            self._queue(Error(code=code.value, reason=reason[:MAX_REASON_SIZE]))
            self._set_state(self._CLOSED, "close")

    def connection_lost(self) -> list[Event]:
        """The transport went away: the session is closed, nothing more is sent.

        Returns:
            ``[SessionTerminated(CONNECTION_LOST, ..., by_peer=True)]`` if the session was
            still live, so that whoever drains events learns of it like any other end;
            ``[]`` if it had already ended.
        """
        self._outbox.clear()
        self._outbox_bytes = 0
        if self._state is self._CLOSED:
            return []
        self._set_state(self._CLOSED, "connection_lost")
        return [SessionTerminated(code=CONNECTION_LOST, reason="connection lost", by_peer=True)]


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
    """Which relay a client session talks to, and its timing (Unix milliseconds throughout).

    There is no default relay: a client always knows the one relay id it may sign for.
    """

    relay_id: bytes
    """The id of the relay we dialled: ``relay_id_for(origin)`` of the very origin the transport
    connects to (and TLS authenticates). A Challenge carrying any other id is refused
    (``auth-failed``) and nothing is signed, so a relay cannot pass on another relay's
    challenge."""
    handshake_timeout_ms: int = 15_000
    """How long the relay may take from our Hello to its Ready."""
    ping_interval_ms: int = 30_000
    """Send a Ping after this long without hearing from the relay, or without sending it
    anything (so that a client that only receives is not cut off by the relay's idle
    timeout)."""
    ping_timeout_ms: int = 15_000
    """After this long without an answer to our Ping, give the session up."""

    def __post_init__(self) -> None:
        if type(self.relay_id) is not bytes or len(self.relay_id) != RELAY_ID_SIZE:
            raise ValueError("ClientConfig.relay_id must be the 32 bytes of relay_id_for(origin)")
        if min(self.handshake_timeout_ms, self.ping_interval_ms, self.ping_timeout_ms) <= 0:
            raise ValueError("ClientConfig timings must be positive")


class ClientSession(_Machine[ClientState]):
    """The device's or enterprise server's side of a relay connection.

    Args:
        identity: the signing key whose address we prove (``None`` for activation mode).
        chain: our encoded certificate chain, leaf first.
        root: servers only: the organisation root public key, registering the organisation.
        config: the relay we dialled (required: ``ClientConfig(relay_id=relay_id_for(origin))``)
            and timing.
    """

    _ROLE = "client"
    _TABLE = _CLIENT_TABLE
    _CLOSED = ClientState.CLOSED

    def __init__(
        self,
        identity: SigningKey | None = None,
        chain: Sequence[bytes] = (),
        *,
        config: ClientConfig,
        root: bytes | None = None,
    ) -> None:
        if not isinstance(config, ClientConfig):
            raise TypeError("ClientSession needs a ClientConfig naming the relay")
        super().__init__(ClientState.IDLE)
        self._identity = identity
        self._chain = tuple(chain)
        self._root = root
        self._config = config
        self._address = address_of(identity.public_key) if identity is not None else None
        self._is_server = root is not None
        self._next_ref = 0
        self._pending: set[int] = set()
        self._max_pending = 1
        self._handshake_deadline: int | None = None
        self._last_heard = 0
        self._ping_sent_at: int | None = None
        self._ping_counter = 0
        self._activation: tuple[bytes, bytes] | None = None
        """Activation mode: the (session id, server) of the one run this connection carries."""
        self._activation_pending = 0

    @property
    def address(self) -> bytes | None:
        """The address this session proves (``None`` in activation mode)."""
        return self._address

    @property
    def send_window(self) -> int:
        """How many more requests may be sent before one is answered.

        In activation mode: how many more activation messages may be sent before the server's
        answer arrives.
        """
        used = (
            self._activation_pending
            if self._state is ClientState.ACTIVATING
            else len(self._pending)
        )
        return max(0, self._max_pending - used)

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
        self._tick(now)
        self._queue(Hello(version=PROTOCOL_VERSION, mode=mode))
        self._handshake_deadline = now + self._config.handshake_timeout_ms
        self._last_heard = now
        self._set_state(nxt, what)

    def send_envelope(self, envelope: bytes) -> int:
        """Queue a sealed envelope for the relay.

        Returns:
            The request ref that :class:`RequestAccepted` or :class:`RequestRejected` will name.

        Raises:
            LocalProtocolError: if the session is not open, :attr:`send_window` is 0, or
                ``envelope`` is not bytes of at most ``MAX_ENVELOPE_SIZE``.
        """
        self._local("send_envelope")
        self._check_window(1)
        data = self._encode_local(Send(ref=self._next_ref, envelope=envelope))
        self._send_encoded(data)
        return self._take_ref()

    def revoke(self, addresses: Sequence[bytes]) -> list[int]:
        """Servers: ask the relay to refuse ``addresses`` of our organisation from now on.

        The relay applies it only to addresses of our own organisation (the one our certificate
        names). Duplicates are dropped; more than ``MAX_REVOKE_ADDRESSES`` addresses are split
        over several Revoke frames, each its own request.

        Returns:
            The request refs, in order, each answered by :class:`RequestAccepted` once recorded.

        Raises:
            LocalProtocolError: if the session is not open, we are not a server, ``addresses``
                is empty or holds something other than 32-byte addresses, or
                :attr:`send_window` is smaller than the number of frames needed.
        """
        self._local("revoke")
        if not self._is_server:
            raise LocalProtocolError("client session: only an enterprise server may revoke")
        unique = tuple(dict.fromkeys(addresses))
        if not unique:
            raise LocalProtocolError("client session: revoke() needs at least one address")
        chunks = [
            unique[start : start + MAX_REVOKE_ADDRESSES]
            for start in range(0, len(unique), MAX_REVOKE_ADDRESSES)
        ]
        self._check_window(len(chunks))
        encoded = [
            self._encode_local(Revoke(ref=self._next_ref + i, addresses=chunk))
            for i, chunk in enumerate(chunks)
        ]
        refs = []
        for data in encoded:
            self._send_encoded(data)
            refs.append(self._take_ref())
        return refs

    def ack(self, delivery_ids: Sequence[bytes]) -> None:
        """Acknowledge stored deliveries (in batches of at most ``MAX_ACK_IDS``).

        Raises:
            LocalProtocolError: if the session is not open or an id is not 1 to
                ``MAX_DELIVERY_ID_SIZE`` bytes.
        """
        self._local("ack")
        ids = tuple(delivery_ids)
        encoded = [
            self._encode_local(Ack(delivery_ids=ids[start : start + MAX_ACK_IDS]))
            for start in range(0, len(ids), MAX_ACK_IDS)
        ]
        for data in encoded:
            self._send_encoded(data)

    def send_activation(self, session: bytes, payload: bytes, server: bytes | None = None) -> None:
        """Send an activation message.

        A device in activation mode names the ``server``; a server answers under the relay's
        ``session`` id without naming one. An activation connection carries one run: every
        message uses the first message's session id and server, and at most
        :attr:`send_window` (the relay allows 1) may await the server's answer.

        Raises:
            LocalProtocolError: if the state or role does not allow it, the session id or
                server differs from the run's, the window is full, or a field is out of bounds.
        """
        nxt = self._local("send_activation")
        if (self._state is ClientState.ACTIVATING) != (server is not None):
            raise LocalProtocolError(
                "client session: devices name the server, servers answer without one"
            )
        if self._state is ClientState.OPEN and not self._is_server:
            raise LocalProtocolError("client session: an activated device sends no activation")
        data = self._encode_local(Activation(session=session, payload=payload, server=server))
        if self._state is ClientState.ACTIVATING:
            assert server is not None
            if self._activation is not None and self._activation != (session, server):
                raise LocalProtocolError(
                    "client session: one activation run per connection (same session and server)"
                )
            if self._activation_pending >= self._max_pending:
                raise LocalProtocolError(
                    "client session: wait for the server's answer before sending more"
                )
            self._activation = (session, server)
            self._activation_pending += 1
        self._send_encoded(data)
        self._set_state(nxt, "send_activation")

    def _check_window(self, needed: int) -> None:
        if len(self._pending) + needed > self._max_pending:
            raise LocalProtocolError("client session: send window is full; wait for answers")

    def _take_ref(self) -> int:
        """Record the request just queued under the next ref (after it encoded)."""
        ref = self._next_ref
        self._next_ref += 1
        self._pending.add(ref)
        return ref

    def _heard(self, now: int) -> None:
        self._last_heard = now
        self._ping_sent_at = None

    def _expired(self, now: int) -> _Violation | None:
        if self._handshake_deadline is not None and now >= self._handshake_deadline:
            return _Violation(ErrorCode.TIMEOUT, "relay did not complete the handshake")
        if (
            self._ping_sent_at is not None
            and now >= self._ping_sent_at + self._config.ping_timeout_ms
        ):
            return _Violation(ErrorCode.TIMEOUT, "relay stopped answering")
        return None

    def _handle(self, frame: Frame, now: int) -> list[Event]:
        match frame:
            case Challenge(relay_id=relay_id, nonce=nonce):
                if relay_id != self._config.relay_id:
                    raise _Violation(ErrorCode.AUTH_FAILED, "not the relay we dialled")
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
                if self._state is ClientState.ACTIVATING:
                    if self._activation_pending == 0 or self._activation is None:
                        raise _Violation(ErrorCode.UNEXPECTED, "activation answer unasked for")
                    if session != self._activation[0]:
                        raise _Violation(ErrorCode.UNEXPECTED, "activation for another session")
                    self._activation_pending -= 1
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

    def _ping_due(self) -> int:
        """When the next Ping is due: an interval after we last heard or last sent."""
        return min(self._last_heard, self._last_sent) + self._config.ping_interval_ms

    def get_timer(self) -> int | None:
        """When :meth:`handle_timer` must next be called (Unix ms), or ``None``."""
        if self._state in (ClientState.IDLE, ClientState.CLOSED):
            return None
        if self._handshake_deadline is not None:
            return self._handshake_deadline
        if self._ping_sent_at is not None:
            return self._ping_sent_at + self._config.ping_timeout_ms
        return self._ping_due()

    def handle_timer(self, now: int) -> list[Event]:
        """Act on the time: give up a stalled handshake or silent relay, or send a Ping.

        A Ping goes out when we have not heard from the relay, or not sent it anything, for
        ``ping_interval_ms``. Frames queued by local calls count as sent at the latest time
        this session was given (a lower bound), so a Ping is never late.
        """
        if self._state in (ClientState.IDLE, ClientState.CLOSED):
            return []
        self._tick(now)
        expired = self._expired(now)
        if expired is not None:
            return [self._terminate(expired.code, expired.reason)]
        if (
            self._handshake_deadline is None
            and self._ping_sent_at is None
            and now >= self._ping_due()
        ):
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
    ACTIVATION_REQUESTED = "activation-requested"
    """A client asked for an activation-only session; waiting for the relay's decision."""
    OPEN = "open"
    """Authenticated session."""
    ACTIVATING = "activating"
    """Activation-only session of a device without a certificate."""
    CLOSED = "closed"


_R = RelayState
_RELAY_LIVE = (
    _R.AWAIT_HELLO,
    _R.AWAIT_AUTH,
    _R.VERIFIED,
    _R.ACTIVATION_REQUESTED,
    _R.OPEN,
    _R.ACTIVATING,
)
_RELAY_TABLE: Final[Mapping[tuple[RelayState, str], RelayState]] = {
    # received frames
    (_R.AWAIT_HELLO, "Hello/authenticate"): _R.AWAIT_AUTH,
    (_R.AWAIT_HELLO, "Hello/activate"): _R.ACTIVATION_REQUESTED,
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
    (_R.ACTIVATION_REQUESTED, "admit"): _R.ACTIVATING,
    (_R.ACTIVATION_REQUESTED, "refuse"): _R.CLOSED,
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
    """From the connection to an open session (or, in activation mode, to the Hello); slower
    clients are cut off (slowloris)."""
    idle_timeout_ms: int = 120_000
    """A session that sends nothing this long is closed (clients ping every 30 s)."""
    max_pending: int = 256
    """Most Send/Revoke requests a client may have unanswered (announced in Ready)."""
    max_unacked: int = 256
    """Most deliveries in flight to a client; a slow reader gets no more until it acks."""
    activation_lifetime_ms: int = 120_000
    """An activation-only connection is closed (``timeout``) this long after it was made,
    whatever it sends: one PAKE run takes two round trips."""

    def __post_init__(self) -> None:
        if min(self.handshake_timeout_ms, self.idle_timeout_ms, self.activation_lifetime_ms) <= 0:
            raise ValueError("RelayConfig timings must be positive")
        if not 1 <= self.max_pending <= 1 << 16 or self.max_unacked < 1:
            raise ValueError("RelayConfig: max_pending is 1 to 65536, max_unacked at least 1")


_ACTIVATION_WINDOW: Final = 1
"""Activation messages a device may have awaiting the server's answer (announced in Ready):
the PAKE alternates, so one is enough."""


class RelaySession(_Machine[RelayState]):
    """The relay's side of one client connection.

    Admission policy, rate limits, revocation lists and whether an activation names a
    registered server are the relay service's to check, on the events this machine reports;
    the machine enforces the protocol: order, roles, bounds and deadlines.

    Args:
        relay_id: this relay's id, ``relay_id_for(origin)`` of the origin clients dial (with
            any other id every authenticating client refuses the challenge).
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
        if len(relay_id) != RELAY_ID_SIZE or len(nonce) != NONCE_SIZE:
            raise ValueError("relay_id and nonce must be 32 bytes")
        super().__init__(RelayState.AWAIT_HELLO, now)
        self._relay_id = relay_id
        self._nonce = nonce
        self._verifier = verifier
        self._config = config or RelayConfig()
        self._connected_at = now
        self._deadline: int | None = now + self._config.handshake_timeout_ms
        self._deadline_reason = "handshake took too long"
        self._last_heard = now
        self._pending: set[int] = set()
        self._unacked: set[bytes] = set()
        self._peer: ClientVerified | None = None
        self._activation: tuple[bytes, bytes] | None = None
        """Activation mode: the device's (session id, server), fixed by its first message."""
        self._activation_pending = 0

    @property
    def peer(self) -> ClientVerified | None:
        """Who the client proved to be (``None`` before verification or in activation mode)."""
        return self._peer

    @property
    def delivery_window(self) -> int:
        """How many more envelopes :meth:`deliver` may send before the client acks."""
        return max(0, self._config.max_unacked - len(self._unacked))

    @property
    def pending_requests(self) -> int:
        """Send/Revoke requests received and not yet answered (at most ``max_pending``)."""
        return len(self._pending)

    @property
    def awaiting_activation_answer(self) -> bool:
        """Activation mode: the device's last message awaits the server's answer, which
        :meth:`send_activation` may now pass on."""
        return self._activation_pending > 0

    def _heard(self, now: int) -> None:
        self._last_heard = now

    def _expired(self, now: int) -> _Violation | None:
        if self._deadline is not None and now >= self._deadline:
            return _Violation(ErrorCode.TIMEOUT, self._deadline_reason)
        if now >= self._last_heard + self._config.idle_timeout_ms:
            return _Violation(ErrorCode.TIMEOUT, "idle for too long")
        if self._peer is not None and now >= self._peer.valid_until * 1000:
            return _Violation(ErrorCode.AUTH_FAILED, "certificate expired")
        return None

    def _handle(self, frame: Frame, now: int) -> list[Event]:
        match frame:
            case Hello(version=version, mode=mode):
                if version != PROTOCOL_VERSION:
                    raise _Violation(ErrorCode.VERSION, f"this relay speaks {PROTOCOL_VERSION}")
                if mode is Mode.AUTHENTICATE:
                    self._queue(Challenge(relay_id=self._relay_id, nonce=self._nonce))
                else:
                    self._deadline = self._connected_at + self._config.activation_lifetime_ms
                    self._deadline_reason = "activation took too long"
                    return [ActivationRequested()]
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
                if not addresses:
                    raise _Violation(ErrorCode.MALFORMED, "Revoke names no address")
                self._track(ref)
                # The organisation comes from the verified certificate, never from the frame:
                # the relay service scopes the revocation to it (RevocationRequested).
                return [
                    RevocationRequested(
                        ref=ref, organisation=peer.organisation, addresses=addresses
                    )
                ]
            case Activation(session=session, payload=payload, server=server):
                if self._state is RelayState.ACTIVATING:
                    if server is None:
                        raise _Violation(ErrorCode.UNEXPECTED, "activation must name a server")
                    if self._activation is not None and self._activation != (session, server):
                        raise _Violation(
                            ErrorCode.UNEXPECTED, "one activation session per connection"
                        )
                    if self._activation_pending >= _ACTIVATION_WINDOW:
                        raise _Violation(
                            ErrorCode.TOO_MANY, "activation message before the last was answered"
                        )
                    self._activation = (session, server)
                    self._activation_pending += 1
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
                valid_until = min(c.body.not_after for c in certs)
            else:
                leaf = self._verifier.verify(auth.chain, now=seconds, role=Role.DEVICE)
                valid_until = self._verifier.valid_until(auth.chain)
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
            # The session may last only while every certificate of the chain is valid.
            valid_until=valid_until,
        )

    def _track(self, ref: int) -> None:
        if ref in self._pending:
            raise _Violation(ErrorCode.UNEXPECTED, "request ref already pending")
        if len(self._pending) >= self._config.max_pending:
            raise _Violation(ErrorCode.TOO_MANY, "too many unanswered requests")
        self._pending.add(ref)

    # local calls

    def admit(self, now: int) -> list[Event]:
        """Open the verified session, or the requested activation-only session (the relay's
        admission checks or rate limits passed).

        Returns:
            ``[]`` once Ready is queued; or, if a deadline passed while the relay decided (the
            handshake timeout, or a certificate of the chain expired), the session is ended
            instead and the list holds that :class:`SessionTerminated`.
        """
        nxt = self._local("admit")
        self._tick(now)
        expired = self._expired(now)
        if expired is not None:
            return [self._terminate(expired.code, expired.reason)]
        if nxt is RelayState.ACTIVATING:
            # The activation lifetime (set at the Hello) stays the deadline.
            self._queue(Ready(address=None, time=now, max_pending=_ACTIVATION_WINDOW))
        else:
            assert self._peer is not None
            self._deadline = None
            self._queue(
                Ready(address=self._peer.address, time=now, max_pending=self._config.max_pending)
            )
        self._set_state(nxt, "admit")
        return []

    def refuse(self, code: ErrorCode, reason: str = "") -> None:
        """Refuse the verified client (``not-admitted``, ``revoked``...) or the requested
        activation session (``rate-limited``) and close."""
        self._local("refuse")
        self.close(code, reason)

    def accept(self, ref: int) -> None:
        """Answer request ``ref``: done (for a Send: the envelope is durable)."""
        self._local("accept")
        self._answer(ref)
        self._queue(Accepted(ref=ref))

    def reject(self, ref: int, code: ErrorCode, reason: str = "") -> None:
        """Refuse request ``ref`` only; the session goes on.

        Args:
            code: one of ``REQUEST_ERROR_CODES`` (``rate-limited``, ``queue-full``,
                ``unknown-server``, ``unavailable``); end the session with :meth:`close`.
            reason: cut to ``MAX_REASON_SIZE`` characters.

        Raises:
            LocalProtocolError: if not open, ``ref`` is not pending, or ``code`` is not a
                per-request code.
        """
        self._local("reject")
        if code not in REQUEST_ERROR_CODES or not isinstance(code, ErrorCode):
            raise LocalProtocolError(
                f"relay session: {code!r} is not a per-request error code; use close() instead"
            )
        self._answer(ref)
        self._queue(Error(code=code.value, reason=reason[:MAX_REASON_SIZE], ref=ref))

    def _answer(self, ref: int) -> None:
        if ref not in self._pending:
            raise LocalProtocolError(f"relay session: no pending request {ref}")
        self._pending.discard(ref)

    def deliver(self, delivery_id: bytes, envelope: bytes) -> None:
        """Send one queued envelope; it stays in flight until the client acks it.

        Raises:
            LocalProtocolError: if not open, the id is in flight already or not 1 to 32 bytes,
                the envelope is not bytes of at most ``MAX_ENVELOPE_SIZE``, or
                :attr:`delivery_window` is 0.
        """
        self._local("deliver")
        if not isinstance(delivery_id, bytes) or not 0 < len(delivery_id) <= MAX_DELIVERY_ID_SIZE:
            raise LocalProtocolError("relay session: delivery id of 1 to 32 bytes")
        if delivery_id in self._unacked:
            raise LocalProtocolError("relay session: delivery id already in flight")
        if not self.delivery_window:
            raise LocalProtocolError("relay session: delivery window is full")
        data = self._encode_local(Deliver(delivery_id=delivery_id, envelope=envelope))
        self._unacked.add(delivery_id)
        self._send_encoded(data)

    def send_activation(self, session: bytes, payload: bytes) -> None:
        """Pass an activation message to this client (a server, or an activating device).

        To an activating device it is the server's answer to the device's last message, under
        the device's own session id (see :attr:`awaiting_activation_answer`).

        Raises:
            LocalProtocolError: if the state or role does not allow it, a field is out of
                bounds, or (activation mode) the device awaits no answer or uses another
                session id.
        """
        self._local("send_activation")
        if self._state is RelayState.OPEN and (
            self._peer is None or self._peer.role is not Role.SERVER
        ):
            raise LocalProtocolError("relay session: activated devices get no activation")
        data = self._encode_local(Activation(session=session, payload=payload))
        if self._state is RelayState.ACTIVATING:
            if self._activation is None or self._activation_pending == 0:
                raise LocalProtocolError("relay session: the device awaits no activation answer")
            if session != self._activation[0]:
                raise LocalProtocolError("relay session: not this device's activation session")
            self._activation_pending -= 1
        self._send_encoded(data)

    def notify_expired(self, recipient: bytes, digest: bytes, accepted_at: int) -> None:
        """Tell a server that an envelope of its organisation expired unread."""
        self._local("notify_expired")
        if self._peer is None or self._peer.role is not Role.SERVER:
            raise LocalProtocolError("relay session: expiry notices go to servers")
        self._send_encoded(
            self._encode_local(Expired(recipient=recipient, digest=digest, accepted_at=accepted_at))
        )

    def get_timer(self) -> int | None:
        """When :meth:`handle_timer` must next be called (Unix ms), or ``None``."""
        if self._state is RelayState.CLOSED:
            return None
        deadlines = [self._last_heard + self._config.idle_timeout_ms]
        if self._deadline is not None:
            deadlines.append(self._deadline)
        if self._peer is not None:
            deadlines.append(self._peer.valid_until * 1000)
        return min(deadlines)

    def handle_timer(self, now: int) -> list[Event]:
        """Close a handshake that took too long, a silent client, an activation connection past
        its lifetime, or a session whose chain has a certificate that expired."""
        if self._state is RelayState.CLOSED:
            return []
        self._tick(now)
        expired = self._expired(now)
        if expired is not None:
            return [self._terminate(expired.code, expired.reason)]
        return []
