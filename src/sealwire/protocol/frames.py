"""Relay frames: what devices, enterprise servers and relays say to each other (DESIGN §6).

Every WebSocket binary message carries exactly one frame, encoded by :data:`FRAMES` as the
deterministic CBOR array ``[code, body]`` (codes below, never reused) and at most
:data:`MAX_FRAME_SIZE` bytes long. docs/protocol/FRAMES.md shows each one byte for byte.

====  ===============  =================  ===========================================
code  frame            direction          purpose
====  ===============  =================  ===========================================
1     :class:`Hello`      client → relay  protocol version and mode (authenticate/activate)
2     :class:`Challenge`  relay → client  relay id and a fresh nonce to sign
3     :class:`Auth`       client → relay  certificate chain and proof of possession
4     :class:`Ready`      relay → client  the session is open
5     :class:`Send`       client → relay  submit one sealed envelope under a request ref
6     :class:`Accepted`   relay → client  the request ``ref`` is done (envelope durable)
7     :class:`Deliver`    relay → client  one queued envelope, under a delivery id
8     :class:`Ack`        client → relay  delivery ids the client has stored
9     :class:`Error`      both            stable code; with a ``ref`` only that request failed
10    :class:`Ping`       both            liveness probe, answered by :class:`Pong`
11    :class:`Pong`       both            answer to :class:`Ping`
12    :class:`Activation` both            one activation PAKE message, routed by the relay
13    :class:`Revoke`     server → relay  refuse these device addresses from now on
14    :class:`Expired`    relay → server  an envelope of this organisation expired unread
====  ===============  =================  ===========================================

The relay learns from frames only what routing needs: recipient addresses, sizes and times.
A device's certificate names no person (docs/PROTOCOL.md, certificates).

A relay's id is not chosen: it is :func:`relay_id_for` its canonical origin (``wss://host:port``),
so a client that dialled an origin knows the one id a challenge may carry.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from sealwire.errors import ConfigError
from sealwire.protocol.codec import Struct, Variants, wire
from sealwire.protocol.envelope import MAX_ENVELOPE_SIZE
from sealwire.protocol.identity import ADDRESS_SIZE, MAX_CERTIFICATE_SIZE, MAX_CHAIN
from sealwire.protocol.suite import (
    ED25519_PUBLIC_KEY_SIZE,
    ED25519_SIGNATURE_SIZE,
    labelled,
    sha256,
)

__all__ = [
    "ERROR_CODES",
    "FRAMES",
    "MAX_ACK_IDS",
    "MAX_ACTIVATION_PAYLOAD",
    "MAX_DELIVERY_ID_SIZE",
    "MAX_FRAME_SIZE",
    "MAX_REASON_SIZE",
    "MAX_REVOKE_ADDRESSES",
    "NONCE_SIZE",
    "PROTOCOL_VERSION",
    "RELAY_ID_SIZE",
    "REQUEST_ERROR_CODES",
    "SESSION_ID_SIZE",
    "Accepted",
    "Ack",
    "Activation",
    "Auth",
    "Challenge",
    "Deliver",
    "Error",
    "ErrorCode",
    "Expired",
    "Frame",
    "Hello",
    "Mode",
    "Ping",
    "Pong",
    "Ready",
    "Revoke",
    "Send",
    "auth_message",
    "canonical_origin",
    "decode_frame",
    "encode_frame",
    "relay_id_for",
]

PROTOCOL_VERSION: Final = 1
NONCE_SIZE: Final = 32
"""Bytes of a relay challenge nonce."""
RELAY_ID_SIZE: Final = 32
"""Bytes of a relay id (:func:`relay_id_for`)."""
SESSION_ID_SIZE: Final = 16
"""Bytes of an activation session id."""
MAX_DELIVERY_ID_SIZE: Final = 32
"""Longest delivery id a relay may choose."""
MAX_ACK_IDS: Final = 256
"""Most delivery ids one :class:`Ack` carries."""
MAX_REVOKE_ADDRESSES: Final = 256
"""Most addresses one :class:`Revoke` carries."""
MAX_ACTIVATION_PAYLOAD: Final = 16 * 1024
"""Largest activation PAKE message (they are a few hundred bytes; answers a few KiB)."""
MAX_FRAME_SIZE: Final = MAX_ENVELOPE_SIZE + 1024
"""Largest encoded frame anyone accepts: an envelope plus the frame's own few bytes."""
_MAX_REF: Final = (1 << 63) - 1
_MAX_TIME_MS: Final = (1 << 53) - 1
_MAX_CODE: Final = 32
MAX_REASON_SIZE: Final = 200
"""Longest :attr:`Error.reason`, in characters."""


class Mode(enum.IntEnum):
    """Why a client connects."""

    AUTHENTICATE = 1
    """A device or server with a certificate: full session after the challenge."""
    ACTIVATE = 2
    """A device without a certificate yet: may only exchange :class:`Activation` frames."""


class ErrorCode(enum.StrEnum):
    """Stable short codes carried by :class:`Error` frames; never change meaning.

    With a ``ref`` an error answers one request and the session goes on; without one it ends
    the session, and the sender closes the connection after it.
    """

    MALFORMED = "malformed"
    """A frame or the envelope in it did not decode (closes)."""
    VERSION = "version"
    """The relay does not speak the client's protocol version (closes)."""
    UNEXPECTED = "unexpected"
    """A frame this state, role or mode does not allow (closes)."""
    AUTH_FAILED = "auth-failed"
    """The certificate chain or the proof of possession did not verify, a certificate of the
    chain expired, or (client) a :class:`Challenge` named another relay (closes)."""
    NOT_ADMITTED = "not-admitted"
    """This relay does not serve the organisation (closes)."""
    REVOKED = "revoked"
    """The organisation revoked this address (closes)."""
    TOO_LARGE = "too-large"
    """A frame over :data:`MAX_FRAME_SIZE` (closes)."""
    TIMEOUT = "timeout"
    """The handshake took too long, the peer went silent, or an activation connection outlived
    its lifetime (closes)."""
    TOO_MANY = "too-many"
    """More unanswered requests (:class:`Send`, :class:`Revoke`), or more activation messages
    awaiting an answer, than :attr:`Ready.max_pending` allows (closes)."""
    RATE_LIMITED = "rate-limited"
    """Too many requests for now; retry later (per request, or closes a flood)."""
    QUEUE_FULL = "queue-full"
    """The recipient's queue is at its limit; retry later (per request)."""
    UNKNOWN_SERVER = "unknown-server"
    """No enterprise server with that address is registered here (per request or closes)."""
    UNAVAILABLE = "unavailable"
    """The relay cannot store the envelope right now; retry later (per request)."""
    RECIPIENT_REVOKED = "recipient-revoked"
    """The sender's own organisation revoked the recipient's address: the envelope is not
    queued and never will be; do not retry (per request)."""
    SHUTDOWN = "shutdown"
    """The relay is going away; reconnect elsewhere or later (closes)."""
    INTERNAL = "internal"
    """A bug on the sender's side (closes)."""


ERROR_CODES: Final = frozenset(code.value for code in ErrorCode)

REQUEST_ERROR_CODES: Final = frozenset(
    {
        ErrorCode.RATE_LIMITED,
        ErrorCode.QUEUE_FULL,
        ErrorCode.UNKNOWN_SERVER,
        ErrorCode.UNAVAILABLE,
        ErrorCode.RECIPIENT_REVOKED,
    }
)
"""The codes that may refuse one request (an :class:`Error` with a ``ref``); the others end the
session."""


@dataclass(frozen=True)
class Hello(Struct):
    """First frame of a client: protocol version and mode."""

    version: int = wire(0, min_value=1, max_value=0xFFFF)
    mode: Mode = wire(1)


@dataclass(frozen=True)
class Challenge(Struct):
    """The relay's answer to an authenticating :class:`Hello`."""

    relay_id: bytes = wire(0, size=RELAY_ID_SIZE)
    """:func:`relay_id_for` the relay's origin. The client refuses any id but the one of the
    origin it dialled, and signs it into :func:`auth_message`."""
    nonce: bytes = wire(1, size=NONCE_SIZE)
    """Fresh random bytes for this connection only."""


@dataclass(frozen=True)
class Auth(Struct):
    """Proof of possession: the client's chain and its signature over :func:`auth_message`."""

    chain: tuple[bytes, ...] = wire(0, max_items=MAX_CHAIN, max_size=MAX_CERTIFICATE_SIZE)
    """Encoded certificates, leaf first (a device: device[, server]; a server: server)."""
    signature: bytes = wire(1, size=ED25519_SIGNATURE_SIZE)
    """Ed25519 signature, label ``relay-auth``, by the leaf's identity key."""
    root: bytes | None = wire(2, size=ED25519_PUBLIC_KEY_SIZE, default=None)
    """Servers only: the organisation root key their chain verifies against (registration)."""


@dataclass(frozen=True)
class Ready(Struct):
    """The session is open; limits the relay applies to it."""

    address: bytes | None = wire(0, size=ADDRESS_SIZE, default=None)
    """The authenticated address (absent in activation mode)."""
    time: int = wire(1, min_value=0, max_value=_MAX_TIME_MS, default=0)
    """Relay clock, Unix milliseconds (lets a device warn about a wrong clock)."""
    max_pending: int = wire(2, min_value=1, max_value=1 << 16, default=256)
    """Most :class:`Send` / :class:`Revoke` requests the client may have unanswered."""


@dataclass(frozen=True)
class Send(Struct):
    """Submit one sealed envelope (``sealwire.protocol.envelope``)."""

    ref: int = wire(0, min_value=0, max_value=_MAX_REF)
    """Client-chosen request number, echoed by :class:`Accepted` or :class:`Error`."""
    envelope: bytes = wire(1, max_size=MAX_ENVELOPE_SIZE)


@dataclass(frozen=True)
class Accepted(Struct):
    """Request ``ref`` is done; for a :class:`Send`, the envelope is durably queued."""

    ref: int = wire(0, min_value=0, max_value=_MAX_REF)


@dataclass(frozen=True)
class Deliver(Struct):
    """One queued envelope for the client, to be acknowledged by ``delivery_id``."""

    delivery_id: bytes = wire(0, max_size=MAX_DELIVERY_ID_SIZE)
    envelope: bytes = wire(1, max_size=MAX_ENVELOPE_SIZE)


@dataclass(frozen=True)
class Ack(Struct):
    """The client has stored these deliveries; the relay deletes them."""

    delivery_ids: tuple[bytes, ...] = wire(0, max_items=MAX_ACK_IDS, max_size=MAX_DELIVERY_ID_SIZE)


@dataclass(frozen=True)
class Error(Struct):
    """A refusal: of one request when ``ref`` is given, otherwise of the whole session."""

    code: str = wire(0, max_size=_MAX_CODE)
    """One of :class:`ErrorCode` (unknown codes from newer peers are kept as text)."""
    reason: str = wire(1, max_size=MAX_REASON_SIZE, default="")
    """Detail for logs; never payloads, keys or full addresses."""
    ref: int | None = wire(2, min_value=0, max_value=_MAX_REF, default=None)


@dataclass(frozen=True)
class Ping(Struct):
    """Are you there? Answered by a :class:`Pong` with the same ``data``."""

    data: int = wire(0, min_value=0, max_value=_MAX_REF)


@dataclass(frozen=True)
class Pong(Struct):
    """Answer to a :class:`Ping`."""

    data: int = wire(0, min_value=0, max_value=_MAX_REF)


@dataclass(frozen=True)
class Activation(Struct):
    """One activation message (docs/protocol/ACTIVATION.md), routed by the relay.

    A device in :attr:`Mode.ACTIVATE` sends it with ``server`` set and its own random
    ``session``. The relay hands it to that server's connection under a session id of the
    relay's choosing (``server`` absent); the server answers under that id, and the relay
    passes the answer back to the device under the device's own id.
    """

    session: bytes = wire(0, size=SESSION_ID_SIZE)
    payload: bytes = wire(1, max_size=MAX_ACTIVATION_PAYLOAD)
    server: bytes | None = wire(2, size=ADDRESS_SIZE, default=None)


@dataclass(frozen=True)
class Revoke(Struct):
    """An enterprise server tells the relay to refuse these addresses of its organisation.

    The frame itself names no organisation: the relay takes it from the server's verified
    certificate and applies the revocation only to addresses whose certificates belong to that
    organisation (a server cannot revoke another organisation's devices). An empty list is
    malformed; more than :data:`MAX_REVOKE_ADDRESSES` addresses take several frames.
    """

    ref: int = wire(0, min_value=0, max_value=_MAX_REF)
    addresses: tuple[bytes, ...] = wire(1, max_items=MAX_REVOKE_ADDRESSES, size=ADDRESS_SIZE)
    """1 to :data:`MAX_REVOKE_ADDRESSES` device addresses."""


@dataclass(frozen=True)
class Expired(Struct):
    """An envelope sent by a device of this organisation expired before it was delivered."""

    recipient: bytes = wire(0, size=ADDRESS_SIZE)
    digest: bytes = wire(1, size=32)
    """SHA-256 of the expired envelope's bytes (the sender can match it; the relay cannot read
    more)."""
    accepted_at: int = wire(2, min_value=0, max_value=_MAX_TIME_MS)
    """When the relay accepted it, Unix milliseconds."""


Frame = (
    Hello
    | Challenge
    | Auth
    | Ready
    | Send
    | Accepted
    | Deliver
    | Ack
    | Error
    | Ping
    | Pong
    | Activation
    | Revoke
    | Expired
)

FRAMES: Final = Variants(
    "frame",
    {
        1: Hello,
        2: Challenge,
        3: Auth,
        4: Ready,
        5: Send,
        6: Accepted,
        7: Deliver,
        8: Ack,
        9: Error,
        10: Ping,
        11: Pong,
        12: Activation,
        13: Revoke,
        14: Expired,
    },
)


def encode_frame(frame: Frame) -> bytes:
    """Encode one frame as ``[code, body]``."""
    return FRAMES.encode(frame)


def decode_frame(data: bytes) -> Frame:
    """Decode one frame strictly.

    Raises:
        DecodeError: if ``data`` is over :data:`MAX_FRAME_SIZE` or not exactly one valid frame.
    """
    frame: Frame = FRAMES.decode(data, max_size=MAX_FRAME_SIZE)  # type: ignore[assignment]
    return frame


def auth_message(relay_id: bytes, nonce: bytes, address: bytes) -> bytes:
    """The bytes a client signs (label ``relay-auth``) to prove it holds ``address``'s key.

    ``relay_id || nonce || address``. The fresh nonce stops a proof being replayed at the same
    relay. ``relay_id`` is :func:`relay_id_for` the origin the client dialled, and the client
    signs no other (``ClientConfig.relay_id``): since TLS authenticated that origin, a relay
    that passes on another relay's challenge gets a refusal, not a signature, and a proof made
    for one relay never verifies at another whose id is derived from a different origin.
    """
    return relay_id + nonce + address


_DEFAULT_PORTS: Final = {"wss": 443, "ws": 80}
_ORIGIN: Final = re.compile(
    r"(?:(?P<scheme>[a-z]+)://)?(?P<host>\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?/?"
)
_DNS_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def canonical_origin(origin: str) -> str:
    """Return the canonical form ``scheme://host:port`` of a relay origin.

    Accepts ``wss://host[:port]``, ``ws://host[:port]`` (loopback tests only: nothing then
    authenticates the origin) or a bare ``host[:port]`` (an activation ticket's form, meaning
    ``wss``). Letters are lower-cased, the default port (443, 80) is written out, IPv6 literals
    are compressed in brackets; a trailing ``/`` is dropped. Hosts are ASCII (IDNA A-labels).

    Raises:
        ConfigError: if ``origin`` is not of that form (a path, query, user or bad port).
    """
    match = _ORIGIN.fullmatch(origin.strip().lower()) if origin.isascii() else None
    if match is None:
        raise ConfigError(
            f"relay origin {origin!r} is not of the form wss://host[:port]; check the relay setting"
        )
    scheme = match["scheme"] or "wss"
    if scheme not in _DEFAULT_PORTS:
        raise ConfigError(f"relay origin {origin!r}: the scheme must be wss (or ws on loopback)")
    host = match["host"]
    if host.startswith("["):
        try:
            host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            raise ConfigError(f"relay origin {origin!r}: invalid IPv6 address") from None
    elif len(host) > 253 or not all(_DNS_LABEL.fullmatch(part) for part in host.split(".")):
        raise ConfigError(f"relay origin {origin!r}: invalid host name")
    port = int(match["port"]) if match["port"] is not None else _DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise ConfigError(f"relay origin {origin!r}: the port must be 1 to 65535")
    return f"{scheme}://{host}:{port}"


def relay_id_for(origin: str) -> bytes:
    """The id of the relay at ``origin``: SHA-256 of ``labelled("relay-id", canonical origin)``.

    ``"sealwire/v1/relay-id" || 0x00 || canonical_origin(origin)`` (ASCII). A relay presents
    the id of its own origin in every :class:`Challenge`; a client computes the id of the
    origin it dialled and signs nothing else, so the id says which relay a proof is for.

    Raises:
        ConfigError: if ``origin`` is not a valid relay origin (:func:`canonical_origin`).
    """
    return sha256(labelled("relay-id", canonical_origin(origin).encode("ascii")))
