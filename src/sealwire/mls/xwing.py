"""X-Wing as an HPKE KEM, on top of our RFC 9180 key schedule (:mod:`.hpke`).

X-Wing is the hybrid KEM of draft-connolly-cfrg-xwing-kem (ML-KEM-768 + X25519, combined with
SHA3-256); draft-ietf-hpke-pq registers the same construction as the HPKE KEM ``0x647A``
("MLKEM768-X25519"). pyca/cryptography ships X-Wing HPKE (``hpke.Suite`` with
``KEM.MLKEM768_X25519``) but only single-shot encrypt/decrypt: no ``SetupBaseS``/``SetupBaseR``
and no ``Export``, which MLS external joins need (RFC 9420 §8.3). This module supplies them:

* :func:`encapsulate` / :func:`decapsulate`: X-Wing ``Encapsulate``/``Decapsulate``, composed
  from pyca's ML-KEM-768, X25519 and :mod:`hashlib`'s SHA3-256/SHAKE256 (no primitive is
  written here); the combiner is the draft's
  ``SHA3-256(ss_M || ss_X || ct_X || pk_X || XWingLabel)``, ``XWingLabel = 5c2e2f2f5e5c``;
* :class:`XWingHPKESuite`: :class:`~.hpke.HPKESuite` with ``kem_id = 0x647A`` and these KEM
  operations, so ``SetupBaseS``/``SetupBaseR``, the key schedule, :class:`~.hpke.Context`
  (seal, open, export) and the single-shot calls are the very code of :mod:`.hpke`, run with
  the suite id ``"HPKE" || 0x647A || kdf_id || aead_id``.

Keys are those of the X-Wing draft and of :mod:`.crypto`: the private key is a 32-byte seed,
expanded with ``SHAKE256(seed, 96)`` into the ML-KEM-768 seed ``d || z`` (64 bytes) and the
X25519 private key (32 bytes); the public key is ``pk_M || pk_X`` (1184 + 32 bytes); the
encapsulation ``enc`` is ``ct_M || ct_X`` (1088 + 32 bytes). Messages sealed here open with
pyca's X-Wing HPKE and the other way round (``tests/mls/test_xwing_hpke.py``).

Randomness: the X25519 ephemeral key ``ek_X`` is the caller's 32 bytes (``ikm_e``), as in the
draft's ``Encapsulate``; the ML-KEM-768 encapsulation randomness is drawn by pyca from the OS,
because its ML-KEM API cannot take it. Encapsulation is therefore not reproducible, and the
draft's ``EncapsulateDerand`` is not offered.

Failures: a malformed peer public key or ``enc`` (wrong length, an ML-KEM encapsulation key
that fails the FIPS 203 §7.2 check, an X25519 exchange that pyca refuses) raises the opaque
:class:`~.errors.CryptoError`; a private key of the wrong size is the caller's bug
(:class:`~.errors.LocalError`).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from . import hpke
from .errors import CryptoError, LocalError

__all__ = [
    "CIPHERTEXT_SIZE",
    "KEM_XWING",
    "PRIVATE_KEY_SIZE",
    "PUBLIC_KEY_SIZE",
    "SHARED_SECRET_SIZE",
    "XWING_AES256GCM",
    "XWING_LABEL",
    "XWingHPKESuite",
    "combiner",
    "decapsulate",
    "derive_key_pair",
    "encapsulate",
    "expand_private_key",
    "hpke_suite",
    "public_key",
]

KEM_XWING = 0x647A
"""HPKE KEM identifier of X-Wing / MLKEM768-X25519 (draft-connolly-cfrg-xwing-kem §IANA,
draft-ietf-hpke-pq)."""

XWING_LABEL = bytes.fromhex("5c2e2f2f5e5c")
"""``XWingLabel``: the six ASCII bytes ``\\./`` ``/^\\`` of the draft's combiner."""

PRIVATE_KEY_SIZE = 32
PUBLIC_KEY_SIZE = 1184 + 32
CIPHERTEXT_SIZE = 1088 + 32
SHARED_SECRET_SIZE = 32

_MLKEM_PK = 1184
_MLKEM_CT = 1088
_X25519 = 32


def expand_private_key(sk: bytes) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]:
    """``expandDecapsulationKey(sk)``: ``SHAKE256(sk, 96)`` → ML-KEM ``d || z``, X25519 key.

    Raises:
        LocalError: ``sk`` is not 32 bytes.
    """
    if len(sk) != PRIVATE_KEY_SIZE:
        raise LocalError("an X-Wing private key is a 32-byte seed")
    expanded = hashlib.shake_256(sk).digest(96)
    return (
        mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]),
        x25519.X25519PrivateKey.from_private_bytes(expanded[64:]),
    )


def public_key(sk: bytes) -> bytes:
    """The 1216-byte encapsulation key ``pk_M || pk_X`` of a 32-byte private key."""
    m, x = expand_private_key(sk)
    return m.public_key().public_bytes_raw() + x.public_key().public_bytes_raw()


def derive_key_pair(ikm: bytes) -> tuple[bytes, bytes]:
    """HPKE ``DeriveKeyPair(ikm)`` of the X-Wing draft ("Use in HPKE"): ``sk = SHAKE256(ikm,
    32)``.

    This is what :meth:`~.crypto.CipherSuite.derive_hpke_key_pair` does for our X-Wing MLS
    suite (draft-ietf-hpke-pq derives the seed with ``SHAKE256.LabeledDerive`` instead).

    Returns:
        ``(private_key, public_key)``.
    """
    sk = hashlib.shake_256(ikm).digest(PRIVATE_KEY_SIZE)
    return sk, public_key(sk)


def combiner(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    """``Combiner(ss_M, ss_X, ct_X, pk_X) = SHA3-256(ss_M || ss_X || ct_X || pk_X ||
    XWingLabel)`` (draft-connolly-cfrg-xwing-kem, "Combiner")."""
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + XWING_LABEL).digest()


def _x25519(private: x25519.X25519PrivateKey, peer: bytes) -> bytes:
    try:
        return private.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
    except ValueError:
        # pyca refuses an all-zero shared secret (a small-order peer point).
        raise CryptoError("X25519 exchange failed") from None


def encapsulate(pk: bytes, *, ek_x: bytes) -> tuple[bytes, bytes]:
    """X-Wing ``Encapsulate(pk)`` with the caller's X25519 ephemeral key ``ek_X``.

    Args:
        pk: the recipient's 1216-byte encapsulation key.
        ek_x: 32 fresh random bytes, the X25519 ephemeral private key. The ML-KEM-768
            randomness comes from the OS through pyca (see the module docstring).

    Returns:
        ``(shared_secret, ct)``, 32 and 1120 bytes.

    Raises:
        CryptoError: ``pk`` is malformed (length, ML-KEM encapsulation key check, X25519).
        LocalError: ``ek_x`` is not 32 bytes.
    """
    if len(ek_x) != _X25519:
        raise LocalError("the X-Wing ephemeral X25519 key must be 32 bytes")
    if len(pk) != PUBLIC_KEY_SIZE:
        raise CryptoError("invalid X-Wing public key")
    pk_x = pk[_MLKEM_PK:]
    try:
        pk_m = mlkem.MLKEM768PublicKey.from_public_bytes(pk[:_MLKEM_PK])
    except ValueError:
        raise CryptoError("invalid X-Wing public key") from None
    ek = x25519.X25519PrivateKey.from_private_bytes(ek_x)
    ct_x = ek.public_key().public_bytes_raw()
    ss_x = _x25519(ek, pk_x)
    ss_m, ct_m = pk_m.encapsulate()
    return combiner(ss_m, ss_x, ct_x, pk_x), ct_m + ct_x


def decapsulate(ct: bytes, sk: bytes) -> bytes:
    """X-Wing ``Decapsulate(ct, sk)``.

    ML-KEM decapsulation rejects implicitly: a tampered ``ct_M`` yields an unrelated secret,
    not an error, so a wrong ciphertext surfaces later as a failed AEAD open.

    Raises:
        CryptoError: ``ct`` is not 1120 bytes, or the X25519 exchange is refused.
        LocalError: ``sk`` is not 32 bytes.
    """
    m, x = expand_private_key(sk)
    if len(ct) != CIPHERTEXT_SIZE:
        raise CryptoError("invalid X-Wing ciphertext")
    ct_x = ct[_MLKEM_CT:]
    try:
        ss_m = m.decapsulate(ct[:_MLKEM_CT])
    except ValueError:
        raise CryptoError("invalid X-Wing ciphertext") from None
    ss_x = _x25519(x, ct_x)
    return combiner(ss_m, ss_x, ct_x, x.public_key().public_bytes_raw())


_AEADS = (hpke.AEAD_AES128GCM, hpke.AEAD_AES256GCM, hpke.AEAD_CHACHA20POLY1305)


@dataclass(frozen=True)
class XWingHPKESuite(hpke.HPKESuite):
    """An RFC 9180 suite with KEM X-Wing (``0x647A``), HKDF-SHA256 and ``aead_id``.

    Only the KEM differs from :class:`~.hpke.HPKESuite`: ``DeriveKeyPair``, ``Encap`` and
    ``Decap`` are X-Wing's; ``SetupBaseS``/``SetupBaseR``, the key schedule, the
    :class:`~.hpke.Context` (seal/open/export) and single-shot seal/open are inherited. As for
    the parent, ``ikm_e`` is the caller's randomness: here the 32-byte X25519 ephemeral key.
    Base mode only (X-Wing has no authenticated mode).
    """

    aead_id: int = hpke.AEAD_AES256GCM
    kem_id: int = KEM_XWING
    kdf_id: int = hpke.KDF_HKDF_SHA256

    def __post_init__(self) -> None:
        if self.kem_id != KEM_XWING or self.kdf_id != hpke.KDF_HKDF_SHA256:
            raise LocalError("XWingHPKESuite is X-Wing with HKDF-SHA256")
        if self.aead_id not in _AEADS:
            raise LocalError(f"unsupported HPKE AEAD {self.aead_id:#06x}")

    # Sizes (draft-connolly-cfrg-xwing-kem, IANA considerations).
    Nsecret = SHARED_SECRET_SIZE
    Nenc = CIPHERTEXT_SIZE
    Npk = PUBLIC_KEY_SIZE
    Nsk = PRIVATE_KEY_SIZE

    def derive_key_pair(self, ikm: bytes) -> tuple[bytes, bytes]:
        """X-Wing's HPKE ``DeriveKeyPair``: see :func:`derive_key_pair`."""
        return derive_key_pair(ikm)

    @staticmethod
    def public_key(private_key: bytes) -> bytes:
        """The X-Wing public key of a 32-byte private key."""
        return public_key(private_key)

    def encap(self, pk_r: bytes, *, ikm_e: bytes) -> tuple[bytes, bytes]:
        """``Encap(pkR)``: :func:`encapsulate` with ``ek_X = ikm_e``.

        Returns:
            ``(shared_secret, enc)``.
        """
        return encapsulate(pk_r, ek_x=ikm_e)

    def decap(self, enc: bytes, sk_r: bytes) -> bytes:
        """``Decap(enc, skR)``: :func:`decapsulate`. Raises CryptoError on a malformed ``enc``."""
        return decapsulate(enc, sk_r)


XWING_AES256GCM = XWingHPKESuite(aead_id=hpke.AEAD_AES256GCM)
"""X-Wing, HKDF-SHA256, AES-256-GCM: the HPKE of the MLS suite 0xF0A1 (see :mod:`.crypto`)."""


@functools.cache
def hpke_suite(aead_id: int) -> XWingHPKESuite:
    """The X-Wing / HKDF-SHA256 suite with ``aead_id`` (one shared instance per AEAD)."""
    return XWingHPKESuite(aead_id=aead_id)
