"""The Sealwire crypto suite, version 1 (``sealwire/v1``). One suite, no negotiation.

=================  ==========================================================================
Purpose            Construction
=================  ==========================================================================
Confidentiality    HPKE (RFC 9180) base mode, KEM X-Wing (ML-KEM-768 + X25519), HKDF-SHA256,
                   AES-256-GCM, single-shot (``enc || ciphertext``), from pyca/cryptography.
Authentication     Ed25519 over ``"sealwire/v1/" + purpose + 0x00 + message``.
Key derivation     HKDF-SHA256 with ``info = "sealwire/v1/" + purpose``.
Symmetric          AES-256-GCM with 96-bit nonces.
Passcodes          Argon2id, parameters stored beside what they protect.
Padding            Padmé (Nikitin et al., "Reducing Metadata Leakage from Encrypted Files and
                   Communication with PURBs", PETS 2019) over ``len + 1``, at least
                   :data:`MIN_PADDED_SIZE`, with an ISO/IEC 7816-4 end marker (0x80 0x00*).
=================  ==========================================================================

Every label starts with :data:`LABEL_PREFIX`; a purpose is lower-case ASCII letters, digits,
``-`` and ``/``, so the 0x00 separator makes labelled messages unambiguous.

X-Wing keys: a private key is a 32-byte seed, expanded with SHAKE256 to 96 bytes (the first 64
are the ML-KEM-768 seed ``d || z``, the last 32 the X25519 private key), as in the X-Wing draft
(draft-connolly-cfrg-xwing-kem). The public key is ``ML-KEM-768 public key (1184) || X25519
public key (32)``. pyca's HPKE draws the encapsulation randomness itself; it is the one place
where the core does not take randomness from the caller, so sealed ciphertexts cannot be
reproduced from fixed inputs (pinned vectors therefore pin the *opening* of fixed bytes).
"""

from __future__ import annotations

import functools
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature as _PycaInvalidSignature
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealwire.errors import CryptoError, DecodeError, InvalidSignature
from sealwire.protocol.codec import Struct, wire

__all__ = [
    "AEAD_KEY_SIZE",
    "AEAD_NONCE_SIZE",
    "ED25519_PUBLIC_KEY_SIZE",
    "ED25519_SIGNATURE_SIZE",
    "LABEL_PREFIX",
    "MIN_PADDED_SIZE",
    "SUITE_NAME",
    "XWING_ENC_SIZE",
    "XWING_PUBLIC_KEY_SIZE",
    "XWING_SEED_SIZE",
    "Argon2Params",
    "RandomSource",
    "SigningKey",
    "XWingPrivateKey",
    "XWingPublicKey",
    "aead_open",
    "aead_seal",
    "constant_time_equal",
    "derive_passcode_key",
    "hkdf",
    "hpke_open",
    "hpke_seal",
    "label",
    "labelled",
    "open_at_rest",
    "pad",
    "padded_size",
    "seal_at_rest",
    "sha256",
    "unpad",
    "verify_signature",
]

SUITE_NAME = "sealwire/v1"
LABEL_PREFIX = b"sealwire/v1/"
ED25519_PUBLIC_KEY_SIZE = 32
ED25519_SIGNATURE_SIZE = 64
XWING_SEED_SIZE = 32
XWING_PUBLIC_KEY_SIZE = 1184 + 32
XWING_ENC_SIZE = 1088 + 32
AEAD_KEY_SIZE = 32
AEAD_NONCE_SIZE = 12
AEAD_TAG_SIZE = 16
MIN_PADDED_SIZE = 1024
"""Smallest padded plaintext: with the sender chain (about 400 bytes) inside, short texts,
receipts and acks all come out the same size."""

RandomSource = Callable[[int], bytes]
"""Where the core gets random bytes: ``os.urandom`` in services, a fixed stream in tests."""

_PURPOSE = re.compile(r"[a-z0-9][a-z0-9/-]{0,62}")
_HPKE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


@functools.lru_cache(maxsize=256)
def label(purpose: str) -> bytes:
    """Return the domain-separation label ``sealwire/v1/<purpose>``."""
    if not _PURPOSE.fullmatch(purpose):
        raise ValueError(f"invalid label purpose {purpose!r}")
    return LABEL_PREFIX + purpose.encode("ascii")


def labelled(purpose: str, message: bytes) -> bytes:
    """Return ``label(purpose) || 0x00 || message``: what signatures and MACs cover."""
    return label(purpose) + b"\x00" + message


def sha256(data: bytes) -> bytes:
    """SHA-256 of ``data``."""
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare two secrets without a timing side channel."""
    return hmac.compare_digest(a, b)


def hkdf(ikm: bytes, *, purpose: str, salt: bytes = b"", length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869) with ``info = label(purpose)``."""
    return HKDF(hashes.SHA256(), length, salt or None, label(purpose)).derive(ikm)


# --- Ed25519 ---------------------------------------------------------------------------------


class SigningKey:
    """An Ed25519 private key that only ever signs labelled messages."""

    __slots__ = ("_key", "public_key")

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key: bytes = key.public_key().public_bytes_raw()
        """The 32-byte raw public key."""

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """Load from the 32-byte RFC 8032 private key (seed)."""
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return cls(ed25519.Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def generate(cls, random: RandomSource) -> SigningKey:
        """Make a new key from 32 bytes of ``random``."""
        return cls.from_seed(random(32))

    def seed(self) -> bytes:
        """Return the 32-byte private seed (for the encrypted key store only)."""
        return self._key.private_bytes_raw()

    def sign(self, purpose: str, message: bytes) -> bytes:
        """Sign ``labelled(purpose, message)``; returns 64 bytes."""
        return self._key.sign(labelled(purpose, message))

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public_key[:4].hex()}…)"


def verify_signature(public_key: bytes, purpose: str, message: bytes, signature: bytes) -> None:
    """Check an Ed25519 signature over ``labelled(purpose, message)``.

    Raises:
        InvalidSignature: if the key is malformed or the signature does not verify.
    """
    if len(public_key) != ED25519_PUBLIC_KEY_SIZE or len(signature) != ED25519_SIGNATURE_SIZE:
        raise InvalidSignature("signature or key has the wrong length")
    try:
        _ed25519_public_key(public_key).verify(signature, labelled(purpose, message))
    except (_PycaInvalidSignature, ValueError) as exc:
        raise InvalidSignature("signature does not verify") from exc


@functools.lru_cache(maxsize=4096)
def _ed25519_public_key(raw: bytes) -> ed25519.Ed25519PublicKey:
    # Decoding a point costs as much as a fifth of a verification; peers' keys repeat.
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


# --- X-Wing HPKE -----------------------------------------------------------------------------


class XWingPublicKey:
    """A parsed X-Wing public key (parse once, seal many times)."""

    __slots__ = ("_key", "raw")

    def __init__(self, raw: bytes) -> None:
        """Parse ``ML-KEM-768 pk || X25519 pk``.

        Raises:
            DecodeError: if the bytes are not a valid X-Wing public key.
        """
        if len(raw) != XWING_PUBLIC_KEY_SIZE:
            raise DecodeError("X-Wing public key has the wrong length")
        try:
            m = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:1184])
            x = x25519.X25519PublicKey.from_public_bytes(raw[1184:])
        except ValueError as exc:
            raise DecodeError("invalid X-Wing public key") from exc
        self.raw = bytes(raw)
        self._key = hpke.MLKEM768X25519PublicKey(m, x)


class XWingPrivateKey:
    """An X-Wing private key held as its 32-byte seed."""

    __slots__ = ("_key", "_seed", "public_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != XWING_SEED_SIZE:
            raise ValueError("an X-Wing seed is 32 bytes")
        h = hashes.Hash(hashes.SHAKE256(96))
        h.update(seed)
        expanded = h.finalize()
        m = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
        x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
        self._seed = seed
        self._key = hpke.MLKEM768X25519PrivateKey(m, x)
        self.public_key = XWingPublicKey(
            m.public_key().public_bytes_raw() + x.public_key().public_bytes_raw()
        )
        """The matching public key."""

    @classmethod
    def generate(cls, random: RandomSource) -> XWingPrivateKey:
        """Make a new key from 32 bytes of ``random``."""
        return cls(random(XWING_SEED_SIZE))

    def seed(self) -> bytes:
        """Return the 32-byte seed (for the encrypted key store only)."""
        return self._seed

    def __repr__(self) -> str:
        return f"XWingPrivateKey(public={self.public_key.raw[:4].hex()}…)"


def _hpke_info(purpose: str, context: bytes) -> bytes:
    return labelled(purpose, context)


def hpke_seal(
    public_key: XWingPublicKey, plaintext: bytes, *, purpose: str, context: bytes
) -> bytes:
    """HPKE-seal ``plaintext`` to ``public_key``; ``info = labelled(purpose, context)``.

    ``context`` binds the ciphertext to what travels beside it (an envelope's outer header).
    Returns ``enc (1120 bytes) || AES-256-GCM ciphertext``.

    Raises:
        CryptoError: the key cannot be sealed to (an X25519 part of low order parses, but
            yields no shared secret).
    """
    try:
        return _HPKE.encrypt(plaintext, public_key._key, info=_hpke_info(purpose, context))
    except ValueError:
        raise CryptoError("cannot seal to this X-Wing public key") from None


def hpke_open(private_key: XWingPrivateKey, data: bytes, *, purpose: str, context: bytes) -> bytes:
    """Open what :func:`hpke_seal` made.

    Raises:
        CryptoError: on any failure (opaque).
    """
    if len(data) < XWING_ENC_SIZE + AEAD_TAG_SIZE:
        raise CryptoError("HPKE ciphertext too short")
    try:
        return _HPKE.decrypt(data, private_key._key, info=_hpke_info(purpose, context))
    except (InvalidTag, ValueError) as exc:
        raise CryptoError("HPKE open failed") from exc


# --- AES-256-GCM -----------------------------------------------------------------------------


def aead_seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM seal. The caller guarantees the (key, nonce) pair is never reused."""
    return AESGCM(key).encrypt(nonce, plaintext, aad)


def aead_open(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM open.

    Raises:
        CryptoError: if the tag does not verify (opaque).
    """
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError) as exc:
        raise CryptoError("AEAD open failed") from exc


def seal_at_rest(
    key: bytes, plaintext: bytes, *, purpose: str, context: bytes, random: RandomSource
) -> bytes:
    """Encrypt data kept on disk or in a database: ``nonce (12) || AES-256-GCM ciphertext``.

    The key used is ``hkdf(key, purpose=purpose)`` and the associated data is
    ``labelled(purpose, context)``: bind ``context`` to where the blob lives (a row key, a file
    name) so that blobs cannot be swapped. Fresh random nonces: at most 2^32 blobs per key.
    """
    nonce = random(AEAD_NONCE_SIZE)
    sealed = aead_seal(hkdf(key, purpose=purpose), nonce, plaintext, labelled(purpose, context))
    return nonce + sealed


def open_at_rest(key: bytes, blob: bytes, *, purpose: str, context: bytes) -> bytes:
    """Decrypt what :func:`seal_at_rest` made with the same ``key``, ``purpose``, ``context``.

    Raises:
        CryptoError: wrong key, wrong context, or altered data (opaque).
    """
    if len(blob) < AEAD_NONCE_SIZE + AEAD_TAG_SIZE:
        raise CryptoError("AEAD open failed")
    nonce, sealed = blob[:AEAD_NONCE_SIZE], blob[AEAD_NONCE_SIZE:]
    return aead_open(hkdf(key, purpose=purpose), nonce, sealed, labelled(purpose, context))


# --- Argon2id --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Argon2Params(Struct):
    """Argon2id parameters (RFC 9106), stored beside whatever the derived key protects."""

    salt: bytes = wire(0, size=16)
    """Random per-secret salt."""
    memory_kib: int = wire(1, min_value=8, max_value=4 * 1024 * 1024)
    """Memory cost in KiB. Default 64 MiB (RFC 9106 §4, second recommended option)."""
    iterations: int = wire(2, min_value=1, max_value=64)
    """Time cost (passes). Default 3."""
    lanes: int = wire(3, min_value=1, max_value=16)
    """Parallelism. Default 4."""

    @classmethod
    def default(cls, random: RandomSource) -> Argon2Params:
        """RFC 9106's second recommended option with a fresh salt."""
        return cls(salt=random(16), memory_kib=64 * 1024, iterations=3, lanes=4)


def derive_passcode_key(passcode: str, params: Argon2Params, *, purpose: str) -> bytes:
    """Derive a 32-byte key from a passcode with Argon2id; ``ad`` carries ``label(purpose)``.

    Services run it in worker threads through ``sealwire._argon2.in_thread`` (one at a time:
    concurrent derivations can deadlock in OpenSSL's thread pool).
    """
    kdf = Argon2id(
        salt=params.salt,
        length=32,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
        ad=label(purpose),
    )
    return kdf.derive(passcode.encode("utf-8"))


# --- Padding ---------------------------------------------------------------------------------


def padded_size(length: int) -> int:
    """Padmé size for ``length`` bytes, never below :data:`MIN_PADDED_SIZE`.

    Padmé leaks O(log log L) bits of the length at most 12% overhead: with E = ⌊log2 L⌋ and
    S = ⌊log2 E⌋ + 1, the low E − S bits of L are rounded up to zero.
    """
    if length <= MIN_PADDED_SIZE:
        return MIN_PADDED_SIZE
    e = length.bit_length() - 1
    s = e.bit_length()
    mask = (1 << (e - s)) - 1
    return (length + mask) & ~mask


def pad(data: bytes) -> bytes:
    """Append 0x80 then zeros up to ``padded_size(len(data) + 1)``."""
    size = padded_size(len(data) + 1)
    return data + b"\x80" + bytes(size - len(data) - 1)


def unpad(data: bytes) -> bytes:
    """Remove the padding :func:`pad` added (run only on authenticated plaintext).

    Raises:
        DecodeError: if no end marker is found or the length is not a padded size.
    """
    body = data.rstrip(b"\x00")
    if not body or body[-1] != 0x80 or padded_size(len(body)) != len(data):
        raise DecodeError("bad padding")
    return body[:-1]
