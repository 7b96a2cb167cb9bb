"""Addresses, certificates and signed prekeys (DESIGN §4).

* An **address** is SHA-256 of an Ed25519 identity public key: self-certifying, so anyone can
  check a claim to an address against the key without a registry. People see a short form,
  :func:`short_address` (40 bits, like a BlackBerry PIN; a label, never a security check).
* An **organisation** is named by the address of its root public key (its *organisation id*).
* The root key signs **server** certificates; a server certificate signs **device**
  certificates (the root may also sign a device certificate directly). A chain is leaf first
  and at most :data:`MAX_CHAIN` long. A certificate names an organisation, a role, a key and a
  validity window, and never a person: that is what the relay sees.
* A **signed prekey** is an X-Wing public key a device publishes so that others can seal
  envelopes to it; it is signed by the device identity key and expires.

Times are Unix seconds, passed in by the caller.
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sealwire.errors import DecodeError, InvalidCertificate, InvalidSignature
from sealwire.protocol.codec import Struct, wire
from sealwire.protocol.suite import (
    ED25519_PUBLIC_KEY_SIZE,
    ED25519_SIGNATURE_SIZE,
    XWING_PUBLIC_KEY_SIZE,
    SigningKey,
    XWingPublicKey,
    sha256,
    verify_signature,
)

__all__ = [
    "ADDRESS_SIZE",
    "CERTIFICATE_VERSION",
    "MAX_CERTIFICATE_SIZE",
    "MAX_CHAIN",
    "Certificate",
    "CertificateBody",
    "ChainVerifier",
    "Prekey",
    "Role",
    "SignedPrekey",
    "address_of",
    "issue_certificate",
    "parse_address",
    "short_address",
    "sign_prekey",
    "verify_chain",
]

ADDRESS_SIZE = 32
CERTIFICATE_VERSION = 1
MAX_CHAIN = 2
"""Device → server → root: a chain holds at most two certificates."""
MAX_CERTIFICATE_SIZE = 512
"""Upper bound on one encoded certificate (they are about 190 bytes)."""
MAX_TIME = (1 << 40) - 1
"""Latest representable Unix time in seconds (year 36812); bounds every time field."""

_CROCKFORD = str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567",
    "0123456789ABCDEFGHJKMNPQRSTVWXYZ",
)


def address_of(identity_key: bytes) -> bytes:
    """Return the 32-byte address of an Ed25519 public key (its SHA-256)."""
    if len(identity_key) != ED25519_PUBLIC_KEY_SIZE:
        raise ValueError("an identity key is 32 bytes")
    return sha256(identity_key)


def short_address(address: bytes) -> str:
    """Return the human form of an address: its first 40 bits in Crockford base32 (XXXX-XXXX).

    Shown to people to tell contacts apart; compare full addresses for anything that matters.
    """
    if len(address) != ADDRESS_SIZE:
        raise ValueError("an address is 32 bytes")
    text = base64.b32encode(address[:5]).decode("ascii").translate(_CROCKFORD)
    return f"{text[:4]}-{text[4:]}"


def parse_address(text: str) -> bytes:
    """Parse a full address written as 64 hexadecimal digits.

    Raises:
        DecodeError: if ``text`` is not 64 hex digits.
    """
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raise DecodeError("an address is 64 hexadecimal digits") from None
    if len(raw) != ADDRESS_SIZE:
        raise DecodeError("an address is 64 hexadecimal digits")
    return raw


class Role(enum.IntEnum):
    """What a certificate's key may do."""

    SERVER = 1
    """An enterprise server: may issue device certificates for its organisation."""
    DEVICE = 2
    """A person's device."""


@dataclass(frozen=True)
class CertificateBody(Struct):
    """The signed part of a certificate."""

    version: int = wire(0, min_value=CERTIFICATE_VERSION, max_value=CERTIFICATE_VERSION)
    """Certificate format version (1)."""
    serial: int = wire(1, min_value=0, max_value=(1 << 63) - 1)
    """Issuer-unique serial number (revocation lists name serials)."""
    role: Role = wire(2)
    """What the subject key may do."""
    organisation: bytes = wire(3, size=ADDRESS_SIZE)
    """Organisation id: the address of the organisation's root key."""
    identity_key: bytes = wire(4, size=ED25519_PUBLIC_KEY_SIZE)
    """The subject's Ed25519 public key; the subject address is derived from it."""
    issuer: bytes = wire(5, size=ADDRESS_SIZE)
    """Address of the signing key: the root key or a server certificate's key."""
    not_before: int = wire(6, min_value=0, max_value=MAX_TIME)
    """First second of validity (Unix time)."""
    not_after: int = wire(7, min_value=0, max_value=MAX_TIME)
    """First second after validity (Unix time, exclusive)."""

    @property
    def subject(self) -> bytes:
        """The address of :attr:`identity_key`."""
        return address_of(self.identity_key)


@dataclass(frozen=True)
class Certificate(Struct):
    """A certificate: a body and the issuer's signature over it (label ``certificate``)."""

    body: CertificateBody = wire(0)
    signature: bytes = wire(1, size=ED25519_SIGNATURE_SIZE)

    @classmethod
    def parse(cls, data: bytes) -> Certificate:
        """Decode one encoded certificate within :data:`MAX_CERTIFICATE_SIZE`."""
        return cls.decode(data, max_size=MAX_CERTIFICATE_SIZE)


def issue_certificate(
    issuer: SigningKey,
    *,
    organisation: bytes,
    role: Role,
    identity_key: bytes,
    serial: int,
    not_before: int,
    not_after: int,
) -> Certificate:
    """Sign a certificate for ``identity_key`` with ``issuer``.

    Args:
        issuer: the organisation root key, or a server's identity key (for device certificates).
        organisation: the organisation id (address of the root public key).
        role: the subject's role.
        identity_key: the subject's Ed25519 public key.
        serial: a serial number unique for this issuer.
        not_before: first valid second.
        not_after: first second after validity; must be later than ``not_before``.
    """
    if not_after <= not_before:
        raise ValueError("not_after must be later than not_before")
    body = CertificateBody(
        version=CERTIFICATE_VERSION,
        serial=serial,
        role=role,
        organisation=organisation,
        identity_key=identity_key,
        issuer=address_of(issuer.public_key),
        not_before=not_before,
        not_after=not_after,
    )
    return Certificate(body=body, signature=issuer.sign("certificate", body.encode()))


def verify_chain(
    chain: Sequence[Certificate],
    *,
    root_key: bytes,
    now: int,
    role: Role | None = None,
) -> Certificate:
    """Verify a certificate chain (leaf first) against an organisation root key at ``now``.

    Checks, for every certificate: the organisation is the root key's address; it is valid at
    ``now``; its issuer is the root key or the next certificate, which must be a server
    certificate; the signature verifies. The leaf must have ``role`` if one is given; servers
    are only ever issued by the root.

    Returns:
        The verified leaf certificate.

    Raises:
        InvalidCertificate: naming the first check that failed.
    """
    if not 1 <= len(chain) <= MAX_CHAIN:
        raise InvalidCertificate(f"a chain holds 1 to {MAX_CHAIN} certificates")
    organisation = address_of(root_key)
    leaf = chain[0]
    if role is not None and leaf.body.role is not role:
        raise InvalidCertificate(f"expected a {role.name.lower()} certificate")
    for position, cert in enumerate(chain):
        body = cert.body
        if body.organisation != organisation:
            raise InvalidCertificate("certificate belongs to another organisation")
        if not body.not_before <= now < body.not_after:
            raise InvalidCertificate("certificate is not valid at this time")
        if body.issuer == organisation:
            issuer_key = root_key
            if position != len(chain) - 1:
                raise InvalidCertificate("root-issued certificate must end the chain")
        else:
            if position + 1 >= len(chain):
                raise InvalidCertificate("chain does not reach the organisation root")
            parent = chain[position + 1].body
            if parent.role is not Role.SERVER or parent.subject != body.issuer:
                raise InvalidCertificate("issuer is not the next server certificate")
            if body.role is not Role.DEVICE:
                raise InvalidCertificate("only the root may issue server certificates")
            issuer_key = parent.identity_key
        try:
            verify_signature(issuer_key, "certificate", body.encode(), cert.signature)
        except InvalidSignature:
            raise InvalidCertificate("certificate signature does not verify") from None
    return leaf


class ChainVerifier:
    """Verifies encoded chains against known organisation roots, remembering results.

    Chains are verified once and cached by their exact bytes (bounded, oldest evicted), so a
    busy recipient pays for one signature per envelope rather than three. A cached chain is
    still checked against the time it is asked about.

    Args:
        roots: organisation id → root public key, for every organisation trusted here.
        max_cached: how many distinct chains to remember.
    """

    def __init__(self, roots: Mapping[bytes, bytes], *, max_cached: int = 4096) -> None:
        self._roots = dict(roots)
        self._max = max_cached
        self._cache: dict[tuple[bytes, ...], tuple[Certificate, int, int]] = {}

    def add_root(self, root_key: bytes) -> None:
        """Trust another organisation's root key."""
        self._roots[address_of(root_key)] = root_key

    def verify(self, chain: Sequence[bytes], *, now: int, role: Role | None = None) -> Certificate:
        """Decode and verify an encoded chain (leaf first) at ``now``.

        Raises:
            InvalidCertificate: if it does not decode, names an unknown organisation or fails
                :func:`verify_chain`.
        """
        key = tuple(chain)
        hit = self._cache.get(key)
        if hit is not None:
            leaf, not_before, not_after = hit
            if not not_before <= now < not_after:
                raise InvalidCertificate("certificate is not valid at this time")
            if role is not None and leaf.body.role is not role:
                raise InvalidCertificate(f"expected a {role.name.lower()} certificate")
            return leaf
        if not 1 <= len(key) <= MAX_CHAIN:
            raise InvalidCertificate(f"a chain holds 1 to {MAX_CHAIN} certificates")
        try:
            certs = [Certificate.parse(c) for c in key]
        except DecodeError as exc:
            raise InvalidCertificate(f"undecodable certificate: {exc.reason}") from None
        root_key = self._roots.get(certs[0].body.organisation)
        if root_key is None:
            raise InvalidCertificate("certificate of an organisation not trusted here")
        leaf = verify_chain(certs, root_key=root_key, now=now, role=role)
        if len(self._cache) >= self._max:
            del self._cache[next(iter(self._cache))]
        not_before = max(c.body.not_before for c in certs)
        not_after = min(c.body.not_after for c in certs)
        self._cache[key] = (leaf, not_before, not_after)
        return leaf

    def valid_until(self, chain: Sequence[bytes]) -> int:
        """The earliest ``not_after`` of a chain that :meth:`verify` has just accepted.

        Raises:
            KeyError: if ``chain`` has not been verified (or was evicted since).
        """
        return self._cache[tuple(chain)][2]


@dataclass(frozen=True)
class Prekey(Struct):
    """The signed part of a prekey."""

    owner: bytes = wire(0, size=ADDRESS_SIZE)
    """Address of the device that holds the private key."""
    prekey_id: int = wire(1, min_value=0, max_value=(1 << 32) - 1)
    """Device-chosen id, named in envelopes sealed to this key."""
    public_key: bytes = wire(2, size=XWING_PUBLIC_KEY_SIZE)
    """X-Wing public key."""
    not_after: int = wire(3, min_value=0, max_value=MAX_TIME)
    """First second after which senders must not use it (Unix time)."""


@dataclass(frozen=True)
class SignedPrekey(Struct):
    """A prekey signed by its owner's identity key (label ``prekey``)."""

    prekey: Prekey = wire(0)
    signature: bytes = wire(1, size=ED25519_SIGNATURE_SIZE)

    def verify(self, identity_key: bytes, *, now: int) -> XWingPublicKey:
        """Check owner, signature and expiry; return the parsed public key.

        Raises:
            InvalidSignature: if the owner is not ``identity_key``'s address or the signature
                does not verify.
            InvalidCertificate: if the prekey has expired.
        """
        if self.prekey.owner != address_of(identity_key):
            raise InvalidSignature("prekey belongs to another device")
        verify_signature(identity_key, "prekey", self.prekey.encode(), self.signature)
        if now >= self.prekey.not_after:
            raise InvalidCertificate("prekey has expired")
        try:
            return XWingPublicKey(self.prekey.public_key)
        except DecodeError:
            raise InvalidSignature("prekey public key is invalid") from None


def sign_prekey(
    identity: SigningKey, *, prekey_id: int, public_key: XWingPublicKey, not_after: int
) -> SignedPrekey:
    """Sign an X-Wing public key as this device's prekey ``prekey_id``."""
    prekey = Prekey(
        owner=address_of(identity.public_key),
        prekey_id=prekey_id,
        public_key=public_key.raw,
        not_after=not_after,
    )
    return SignedPrekey(prekey=prekey, signature=identity.sign("prekey", prekey.encode()))
