"""The NATS backend's names, limits and wire formats: subjects and KV keys, delivery ids,
and the strict encodings of signals, routing messages and expiry notices."""

from __future__ import annotations

import json
import struct

import nats
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import (
    RawStreamMsg,
)

from sealwire.errors import StorageError
from sealwire.relay.backends.base import (
    StoredEnvelope,
)

REQUEST_TIMEOUT = 5.0
"""Default seconds any request (or the first connection) may take before the call fails with
StorageError."""
ROUTE_TIMEOUT = 1.0
"""Seconds to wait for another node to take an activation message."""
CLOSE_TIMEOUT = 10.0
"""Seconds :meth:`NatsBackend.close` waits for calls in flight."""
MAX_AGE_MARGIN_S = 24 * 3600
"""The stream's own age limit is the lifetime plus this: a backstop, never the expiry path."""
NOTICE_DEDUPE_WINDOW_S = 3600
NOTICE_MAX_AGE_S = 30 * 24 * 3600
"""Notices no server of the organisation fetched within 30 days are dropped."""
CAS_ATTEMPTS = 50
MIN_SERVER_VERSION = (2, 9)
SEEN_CACHE = 100_000
"""Queue sequences whose queue and size this node remembers from reading them."""
EXPIRE_BATCH = 256
SIGNAL_VERSION = 1
WALK_FIRST = 2
"""A walk reads this many messages with direct gets before it switches to a consumer."""
WALK_BATCH = 256
"""Most messages a walk reads through one consumer request."""
CONSUMER_IDLE_S = 5.0
"""The server deletes a walk's ephemeral consumer after this long if its delete was lost."""
JS_API = "$JS.API"
BATCH_EXPIRES_NS = 250_000_000
"""A batch read ends after 0.25 s at the latest (normally as soon as its messages came)."""
PURGE_MIN = 3
"""Acknowledging this many ids at once first tries one purge (:meth:`NatsBackend.
_acknowledge_prefix`) rather than a delete each."""
SIGNAL_HEADROOM = 512
"""Bytes kept free of a signal's payload for the subject and headers within max_payload."""

ERR_MAX_MSGS_PER_SUBJECT = 10077
"""JetStream API error: ``maximum messages per subject exceeded`` (discard new per subject)."""
ERR_NO_MESSAGE = 10057
"""JetStream API error from a message delete: ``no message found``."""

HDR_ACCEPTED_AT = "Sealwire-Accepted-At"
HDR_ORGANISATION = "Sealwire-Organisation"
HDR_NODE = "Sealwire-Node"
HDR_MSG_ID = "Nats-Msg-Id"
HDR_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
ERR_WRONG_LAST_SEQUENCE = (10071, 10164)
"""JetStream API errors for a failed compare-and-set on the subject's last sequence."""

_ID = struct.Struct(">Q")
_NOTICE_HEAD = struct.Struct(">q32sH")  # accepted_at, digest, recipient length
_ROUTE_HEAD = struct.Struct(">HIH")  # session, payload, server lengths (0xFFFF: no server)
_SIGNAL_HEAD = struct.Struct(">BQq")  # version, stream sequence, accepted_at
_NO_SERVER = 0xFFFF
_MAX_ROUTE_MESSAGE = 1 << 20
_MAX_SEQ = 0xFFFF_FFFF_FFFF_FFFF


def _token(value: bytes) -> str:
    """A subject token / KV key for arbitrary bytes, never empty."""
    return "x" + value.hex()


def _untoken(token: str) -> bytes:
    if not token.startswith("x"):
        raise ValueError(f"not a Sealwire token: {token!r}")
    return bytes.fromhex(token[1:])


def _encode_id(seq: int) -> bytes:
    return _ID.pack(seq)


def _decode_id(delivery_id: bytes) -> int | None:
    return _ID.unpack(delivery_id)[0] if len(delivery_id) == _ID.size else None


def _first_seq_after(after: bytes | None) -> int:
    """The smallest stream sequence whose 8-byte id sorts (as bytes) after ``after``."""
    if after is None:
        return 1
    if len(after) < _ID.size:
        # ``after`` padded with zeros is the smallest 8-byte string above it.
        return max(1, int.from_bytes(after.ljust(_ID.size, b"\0"), "big"))
    # Ids equal to the first 8 bytes sort at or below ``after``.
    return int.from_bytes(after[: _ID.size], "big") + 1


def _encode_route(session: bytes, payload: bytes, server: bytes | None) -> bytes:
    server_len = _NO_SERVER if server is None else len(server)
    if len(session) >= _NO_SERVER or (server is not None and len(server) >= _NO_SERVER):
        raise StorageError("activation routing: session or server too long")
    return (
        _ROUTE_HEAD.pack(len(session), len(payload), server_len)
        + session
        + payload
        + (server or b"")
    )


def _decode_route(data: bytes) -> tuple[bytes, bytes, bytes | None]:
    """Strict inverse of :func:`_encode_route`; raises ValueError on anything else."""
    if len(data) < _ROUTE_HEAD.size or len(data) > _MAX_ROUTE_MESSAGE:
        raise ValueError("activation routing message: bad size")
    session_len, payload_len, server_len = _ROUTE_HEAD.unpack_from(data)
    body = data[_ROUTE_HEAD.size :]
    has_server = server_len != _NO_SERVER
    expected = session_len + payload_len + (server_len if has_server else 0)
    if len(body) != expected:
        raise ValueError("activation routing message: bad lengths")
    session = body[:session_len]
    payload = body[session_len : session_len + payload_len]
    server = body[session_len + payload_len :] if has_server else None
    return session, payload, server


def _encode_signal(seq: int, accepted_at: int, envelope: bytes) -> bytes:
    return _SIGNAL_HEAD.pack(SIGNAL_VERSION, seq, accepted_at) + envelope


def _decode_signal(recipient: bytes, data: bytes, max_envelope: int) -> StoredEnvelope:
    """Strict inverse of :func:`_encode_signal`; raises ValueError on anything else."""
    if len(data) < _SIGNAL_HEAD.size or len(data) - _SIGNAL_HEAD.size > max_envelope:
        raise ValueError("queue signal: bad size")
    version, seq, accepted_at = _SIGNAL_HEAD.unpack_from(data)
    if version != SIGNAL_VERSION or seq == 0:
        raise ValueError("queue signal: bad header")
    return StoredEnvelope(
        delivery_id=_encode_id(seq),
        recipient=recipient,
        envelope=bytes(data[_SIGNAL_HEAD.size :]),
        accepted_at=accepted_at,
    )


def _encode_notice(recipient: bytes, digest: bytes, accepted_at: int) -> bytes:
    return _NOTICE_HEAD.pack(accepted_at, digest, len(recipient)) + recipient


def _decode_notice(data: bytes) -> tuple[bytes, bytes, int]:
    accepted_at, digest, recipient_len = _NOTICE_HEAD.unpack_from(data)
    recipient = data[_NOTICE_HEAD.size :]
    if len(recipient) != recipient_len:
        raise ValueError("expiry notice: bad length")
    return recipient, digest, accepted_at


def _header(msg: RawStreamMsg, name: str) -> str:
    headers = msg.headers or {}
    value = headers.get(name)
    if not isinstance(value, str):
        raise StorageError(f"NATS: stored message {msg.seq} lacks header {name}")
    return value


def _is_no_message(exc: nats.js.errors.APIError) -> bool:
    return exc.err_code == ERR_NO_MESSAGE


def _api_error(error: object) -> nats.js.errors.APIError:
    """The exception nats-py would raise for a JetStream API error (``from_error`` raises)."""
    unreadable = nats.js.errors.APIError(description="unreadable JetStream error")
    if not isinstance(error, dict):
        return unreadable
    try:
        nats.js.errors.APIError.from_error(error)
    except nats.js.errors.APIError as exc:
        return exc
    except TypeError:  # fields this nats-py does not know
        return nats.js.errors.APIError(
            code=error.get("code"), err_code=error.get("err_code"), description=None
        )
    return unreadable


def _status(msg: Msg) -> str | None:
    """The status of a NATS status message (``"404"``, ``"503"``...), else None."""
    status = (msg.headers or {}).get("Status")
    return status if isinstance(status, str) else None


def _api_answer(msg: Msg) -> dict[str, object]:
    """A JetStream API reply as a dict; raises the APIError it carries."""
    try:
        answer = json.loads(msg.data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise nats.js.errors.APIError(description="unreadable JetStream reply")
    error = answer.get("error")
    if error is not None:
        raise _api_error(error)
    return answer
