"""Envelopes: the one way anything travels (DESIGN §5).

An envelope is sealed to one device or server. What the relay sees, :class:`Envelope`, is the
CBOR map ``{0: version, 1: recipient address, 2: recipient prekey id, 3: HPKE ciphertext}``.
The HPKE ``info`` is ``labelled("envelope", version || recipient || prekey id)``, so the outer
header cannot be changed without the open failing.

Inside, after removing the padding (:func:`~sealwire.protocol.suite.pad`), are the sender's
64-byte Ed25519 signature followed by the encoded :class:`EnvelopeContent` (payload type, a
random 16-byte message id, the send time in Unix milliseconds, the sender's encoded
certificate chain, the body). The signature (label ``envelope-signature``) covers the
recipient address, the prekey id and exactly those content bytes (:func:`signed_bytes`).
The sender is hidden from the relay (sealed sender) and a signature cannot be re-sealed to
another recipient or prekey.

Opening checks, in this order, and fails with the single opaque
:class:`~sealwire.errors.InvalidEnvelope` whatever failed: size and outer decoding, the
recipient address, a known prekey, HPKE, padding, inner decoding, the sender's chain (against
the sender organisation's root, valid at the send time), the signature, freshness (not older
than the lifetime, not more than :data:`MAX_CLOCK_SKEW_MS` in the future) and, last and only
for authentic envelopes, the replay guard.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sealwire.errors import CryptoError, DecodeError, InvalidEnvelope
from sealwire.protocol.codec import Struct, wire
from sealwire.protocol.identity import (
    ADDRESS_SIZE,
    MAX_CERTIFICATE_SIZE,
    MAX_CHAIN,
    Certificate,
    ChainVerifier,
)
from sealwire.protocol.suite import (
    ED25519_SIGNATURE_SIZE,
    RandomSource,
    SigningKey,
    XWingPrivateKey,
    XWingPublicKey,
    hpke_open,
    hpke_seal,
    pad,
    unpad,
    verify_signature,
)

__all__ = [
    "DEFAULT_LIFETIME_MS",
    "ENVELOPE_VERSION",
    "MAX_BODY_SIZE",
    "MAX_CLOCK_SKEW_MS",
    "MAX_ENVELOPE_SIZE",
    "MESSAGE_ID_SIZE",
    "Envelope",
    "EnvelopeContent",
    "OpenedEnvelope",
    "PayloadType",
    "ReplayGuard",
    "open_envelope",
    "peek_recipient",
    "seal",
    "signed_bytes",
]

ENVELOPE_VERSION = 1
MESSAGE_ID_SIZE = 16
MAX_BODY_SIZE = 192 * 1024
"""Largest body one envelope carries; bigger content is split or sent by reference."""
MAX_ENVELOPE_SIZE = 256 * 1024
"""Largest encoded envelope anyone accepts (padding of the largest body fits below it)."""
DEFAULT_LIFETIME_MS = 7 * 24 * 3600 * 1000
"""How long an envelope may wait in a queue (7 days, as BES's network held messages)."""
MAX_CLOCK_SKEW_MS = 5 * 60 * 1000
"""How far in the future a send time may lie before it is refused."""

_MAX_SEALED_SIZE = MAX_ENVELOPE_SIZE - 64
_PRUNE_INTERVAL_MS = 60_000
_MAX_CHAIN_BYTES = MAX_CERTIFICATE_SIZE


class PayloadType(enum.IntEnum):
    """What an envelope's body is. Values are wire codes and are never reused."""

    MESSAGE = 1
    """A person-to-person message (until MLS conversations land)."""
    RECEIPT = 2
    """A delivery or read receipt."""
    DIRECTORY = 3
    """A directory request or signed answer."""
    POLICY = 4
    """An IT policy from the organisation."""
    COMMAND = 5
    """A device command (lock, wipe, renew keys) or its result."""
    CONTROL = 6
    """Other server ↔ device control traffic (activation answers, notices)."""
    MLS = 7
    """An MLS handshake or application message."""


@dataclass(frozen=True)
class Envelope(Struct):
    """The outer envelope: everything the relay sees."""

    version: int = wire(0, min_value=ENVELOPE_VERSION, max_value=ENVELOPE_VERSION)
    recipient: bytes = wire(1, size=ADDRESS_SIZE)
    """Address of the recipient device or server."""
    prekey_id: int = wire(2, min_value=0, max_value=(1 << 32) - 1)
    """Which of the recipient's prekeys the ciphertext is sealed to."""
    ciphertext: bytes = wire(3, max_size=_MAX_SEALED_SIZE)
    """HPKE ``enc || ciphertext`` of ``pad(signature || encoded EnvelopeContent)``."""

    def header(self) -> bytes:
        """The bytes bound into the HPKE ``info``: version, recipient, prekey id."""
        return _header(self.version, self.recipient, self.prekey_id)


def _header(version: int, recipient: bytes, prekey_id: int) -> bytes:
    return struct.pack(">B32sI", version, recipient, prekey_id)


@dataclass(frozen=True)
class EnvelopeContent(Struct):
    """What the sender says, signed as ``recipient || prekey id || encode(content)``."""

    payload_type: PayloadType = wire(0)
    message_id: bytes = wire(1, size=MESSAGE_ID_SIZE)
    """Random; recipients drop a second copy of the same id."""
    sent_at: int = wire(2, min_value=0, max_value=(1 << 53) - 1)
    """Send time in Unix milliseconds, by the sender's clock."""
    sender_chain: tuple[bytes, ...] = wire(3, max_items=MAX_CHAIN, max_size=_MAX_CHAIN_BYTES)
    """The sender's encoded certificate chain, leaf first."""
    body: bytes = wire(4, max_size=MAX_BODY_SIZE)


def signed_bytes(recipient: bytes, prekey_id: int, content: bytes) -> bytes:
    """What the envelope signature covers: ``recipient (32) || prekey id (u32 BE) || content``."""
    return struct.pack(">32sI", recipient, prekey_id) + content


@dataclass(frozen=True)
class OpenedEnvelope:
    """An authentic, fresh, first-seen envelope."""

    payload_type: PayloadType
    message_id: bytes
    sent_at: int
    """Send time in Unix milliseconds."""
    sender: Certificate
    """The sender's verified leaf certificate (``sender.body.subject`` is its address)."""
    body: bytes

    def __repr__(self) -> str:  # never print the body
        return (
            f"OpenedEnvelope(type={self.payload_type.name}, id={self.message_id.hex()}, "
            f"sent_at={self.sent_at}, body=<{len(self.body)} bytes>)"
        )


def seal(
    *,
    sender: SigningKey,
    sender_chain: Sequence[bytes],
    recipient: bytes,
    prekey_id: int,
    prekey: XWingPublicKey,
    payload_type: PayloadType,
    body: bytes,
    now_ms: int,
    random: RandomSource,
) -> bytes:
    """Seal ``body`` to one recipient device or server and return the encoded envelope.

    Args:
        sender: the sender's identity key (its certificate is the leaf of ``sender_chain``).
        sender_chain: the sender's encoded certificate chain, leaf first.
        recipient: the recipient's address.
        prekey_id: id of the recipient prekey ``prekey`` (from a verified ``SignedPrekey``).
        prekey: the recipient's X-Wing prekey.
        payload_type: what ``body`` is.
        body: at most :data:`MAX_BODY_SIZE` bytes.
        now_ms: the current time in Unix milliseconds.
        random: source of the 16-byte message id.

    Raises:
        ValueError: if ``body`` is too large or an argument has the wrong size.
    """
    if len(body) > MAX_BODY_SIZE:
        raise ValueError(f"body larger than {MAX_BODY_SIZE} bytes")
    content = EnvelopeContent(
        payload_type=payload_type,
        message_id=random(MESSAGE_ID_SIZE),
        sent_at=now_ms,
        sender_chain=tuple(sender_chain),
        body=body,
    ).encode()
    signature = sender.sign("envelope-signature", signed_bytes(recipient, prekey_id, content))
    header = _header(ENVELOPE_VERSION, recipient, prekey_id)
    ciphertext = hpke_seal(prekey, pad(signature + content), purpose="envelope", context=header)
    return Envelope(
        version=ENVELOPE_VERSION, recipient=recipient, prekey_id=prekey_id, ciphertext=ciphertext
    ).encode()


def peek_recipient(data: bytes) -> Envelope:
    """Decode the outer envelope only, as the relay does, to route it.

    Raises:
        DecodeError: if ``data`` is not a well-formed envelope within the size bound.
    """
    return Envelope.decode(data, max_size=MAX_ENVELOPE_SIZE)


def open_envelope(
    data: bytes,
    *,
    recipient: bytes,
    prekeys: Callable[[int], XWingPrivateKey | None],
    verifier: ChainVerifier,
    now_ms: int,
    guard: ReplayGuard | None = None,
    lifetime_ms: int = DEFAULT_LIFETIME_MS,
) -> OpenedEnvelope:
    """Open an envelope addressed to us.

    Args:
        data: the encoded envelope, as received.
        recipient: our own address.
        prekeys: looks up our private prekey by id (``None`` if unknown or deleted).
        verifier: trusted organisation roots and the chain cache.
        now_ms: the current time in Unix milliseconds.
        guard: the replay guard to check and record the message id in; ``None`` to skip
            (only for tests and tools that inspect without consuming).
        lifetime_ms: envelopes sent longer ago than this are refused.

    Returns:
        The opened envelope.

    Raises:
        InvalidEnvelope: whatever failed (one opaque error).
    """
    try:
        outer = Envelope.decode(data, max_size=MAX_ENVELOPE_SIZE)
        if outer.recipient != recipient:
            raise InvalidEnvelope
        private = prekeys(outer.prekey_id)
        if private is None:
            raise InvalidEnvelope
        padded = hpke_open(private, outer.ciphertext, purpose="envelope", context=outer.header())
        plaintext = unpad(padded)
        signature, content = plaintext[:ED25519_SIGNATURE_SIZE], plaintext[ED25519_SIGNATURE_SIZE:]
        inner = EnvelopeContent.decode(content, max_size=len(content))
        leaf = verifier.verify(inner.sender_chain, now=inner.sent_at // 1000)
        verify_signature(
            leaf.body.identity_key,
            "envelope-signature",
            signed_bytes(outer.recipient, outer.prekey_id, content),
            signature,
        )
        if not now_ms - lifetime_ms <= inner.sent_at <= now_ms + MAX_CLOCK_SKEW_MS:
            raise InvalidEnvelope
        if guard is not None and not guard.check_and_record(
            inner.message_id, inner.sent_at, now_ms
        ):
            raise InvalidEnvelope
    except (DecodeError, CryptoError, ValueError):
        # CryptoError covers InvalidSignature, InvalidCertificate and InvalidEnvelope itself;
        # the cause is dropped on purpose so that nothing tells which check failed.
        raise InvalidEnvelope from None
    return OpenedEnvelope(
        payload_type=inner.payload_type,
        message_id=inner.message_id,
        sent_at=inner.sent_at,
        sender=leaf,
        body=inner.body,
    )


class ReplayGuard:
    """Remembers the ids of opened envelopes for as long as they could be replayed.

    An id is remembered until its send time is older than the lifetime; an envelope older
    than that is refused by the freshness check anyway. Only authenticated envelopes reach
    the guard, so a forger cannot fill it. A service persists it with :meth:`entries` and
    restores it with the constructor.

    Args:
        lifetime_ms: the envelope lifetime (the same value given to :func:`open_envelope`).
        entries: previously persisted ``(message_id, sent_at)`` pairs.
    """

    def __init__(
        self,
        *,
        lifetime_ms: int = DEFAULT_LIFETIME_MS,
        entries: Iterable[tuple[bytes, int]] = (),
    ) -> None:
        self.lifetime_ms = lifetime_ms
        self._seen: dict[bytes, int] = dict(entries)
        self._pruned_at = 0

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_record(self, message_id: bytes, sent_at: int, now_ms: int) -> bool:
        """Return ``True`` and remember the id if it is new, ``False`` if seen before.

        Expired ids are dropped at most once a minute, so the cost stays amortised.
        """
        if now_ms - self._pruned_at > _PRUNE_INTERVAL_MS:
            self.prune(now_ms)
        if message_id in self._seen:
            return False
        self._seen[message_id] = sent_at
        return True

    def prune(self, now_ms: int) -> int:
        """Forget ids whose send time is beyond the lifetime; return how many were dropped."""
        horizon = now_ms - self.lifetime_ms
        self._pruned_at = now_ms
        stale = [mid for mid, sent in self._seen.items() if sent < horizon]
        for mid in stale:
            del self._seen[mid]
        return len(stale)

    def entries(self) -> list[tuple[bytes, int]]:
        """Every remembered ``(message_id, sent_at)`` pair, for persisting."""
        return list(self._seen.items())
