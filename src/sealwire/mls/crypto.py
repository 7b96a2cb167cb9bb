"""MLS cipher suites and the labelled cryptographic operations of RFC 9420 §5.

A :class:`CipherSuite` bundles hash, KDF, AEAD, HPKE and signature scheme and offers every
derived operation MLS uses: ``ExpandWithLabel``/``DeriveSecret`` (§8), ``DeriveTreeSecret``
(§9), ``RefHash`` (§5.2), ``SignWithLabel``/``VerifyWithLabel`` (§5.1.2) and
``EncryptWithLabel``/``DecryptWithLabel`` (§5.1.3). Keys travel as raw bytes, exactly as they
appear on the wire:

* signature keys (Ed25519): private = 32-byte seed, public = 32 bytes;
* HPKE keys, DHKEM(X25519): private = 32 bytes, public = 32 bytes;
* HPKE keys, X-Wing: private = 32-byte seed (expanded with SHAKE256 to 96 bytes: the first 64
  are the ML-KEM-768 seed ``d || z``, the last 32 the X25519 private key), public = ML-KEM-768
  public key (1184 bytes) || X25519 public key (32 bytes).

Supported suites (everything else raises :class:`~sealwire.mls.errors.UnsupportedError`):

=======  =============================================================  ================
 value    name                                                           HPKE
=======  =============================================================  ================
 0x0001   MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519                    ours (hpke.py)
 0x0003   MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519             ours (hpke.py)
 0xF0A1   SEALWIRE_256_XWING_AES256GCM_SHA256_Ed25519 (private use)       pyca + xwing.py
=======  =============================================================  ================

Why a private-use value for X-Wing: the only MLS code point for X-Wing we found (0x004D, used
by OpenMLS from the expired individual draft draft-mahy-mls-xwing) pairs it with
ChaCha20Poly1305, and draft-ietf-mls-pq-ciphersuites had no IANA-assigned value for X-Wing with
AES-256-GCM/SHA-256/Ed25519. RFC 9420 §17.1 reserves 0xF000-0xFFFF for private use; move to the
registered value once one exists.

For X-Wing, ``EncryptWithLabel``/``DecryptWithLabel`` use pyca's HPKE; the HPKE exporter of
external joins (:meth:`CipherSuite.hpke_export_sender` / ``hpke_export_receiver``, RFC 9420 §8.3),
which pyca lacks, uses :mod:`.xwing`: X-Wing composed from pyca's ML-KEM-768 and X25519 as HPKE
KEM 0x647A under our own RFC 9180 key schedule (:mod:`.hpke`). The two interoperate.

Randomness is never read here, with one documented exception: ML-KEM-768 encapsulation in pyca
draws its randomness from the OS (its API cannot take it). So for X-Wing
:meth:`CipherSuite.encrypt_with_label` is not deterministic, and its ``randomness`` argument is
required for a uniform API but unused (pyca's HPKE draws all its randomness); and
:meth:`CipherSuite.hpke_export_sender` takes the X25519 ephemeral key from ``randomness`` while
the ML-KEM half stays OS-random, so its output is not reproducible either.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke as pyca_hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from . import hpke, xwing
from ._tls import Writer
from .errors import CryptoError, LocalError, UnsupportedError

__all__ = [
    "AEAD",
    "KDF",
    "SUPPORTED_SUITES",
    "XWING_PRIVATE_KEY_SIZE",
    "XWING_PUBLIC_KEY_SIZE",
    "CipherSuite",
    "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519",
    "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519",
    "SEALWIRE_256_XWING_AES256GCM_SHA256_Ed25519",
    "cipher_suite",
]

_LABEL_PREFIX = b"MLS 1.0 "  # RFC 9420 §5.1.2, §5.1.3, §8

XWING_PRIVATE_KEY_SIZE = 32
XWING_PUBLIC_KEY_SIZE = 1184 + 32
_XWING_ENC_SIZE = 1088 + 32
_MLKEM768_PUBLIC_KEY_SIZE = 1184


@dataclass(frozen=True)
class KDF:
    """HKDF over SHA-256 (RFC 5869), the KDF of every suite we support."""

    Nh: int = 32
    """Output size of the hash and of ``Extract``."""

    def extract(self, salt: bytes, ikm: bytes) -> bytes:
        """``HKDF-Extract(salt, ikm)``; an empty salt acts as ``Nh`` zero bytes (RFC 5869)."""
        return hpke.hkdf_extract(salt, ikm)

    def expand(self, prk: bytes, info: bytes, length: int) -> bytes:
        """``HKDF-Expand(prk, info, length)``.

        Raises:
            LocalError: ``length`` above ``255 * Nh``.
        """
        return hpke.hkdf_expand(prk, info, length)


@dataclass(frozen=True)
class AEAD:
    """An AEAD algorithm: AES-128-GCM, AES-256-GCM or ChaCha20Poly1305 (tag 16 bytes)."""

    hpke_id: int
    """Its RFC 9180 AEAD identifier."""
    Nk: int
    """Key length in bytes."""
    Nn: int = 12
    """Nonce length in bytes."""

    def _cipher(self, key: bytes) -> AESGCM | ChaCha20Poly1305:
        if len(key) != self.Nk:
            raise LocalError(f"AEAD key must be {self.Nk} bytes")
        if self.hpke_id == hpke.AEAD_CHACHA20POLY1305:
            return ChaCha20Poly1305(key)
        return AESGCM(key)

    def seal(self, key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        """Encrypt and authenticate; returns ciphertext || tag."""
        if len(nonce) != self.Nn:
            raise LocalError(f"AEAD nonce must be {self.Nn} bytes")
        return self._cipher(key).encrypt(nonce, plaintext, aad)

    def open(self, key: bytes, nonce: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        """Check and decrypt.

        Raises:
            CryptoError: authentication failed (opaque).
        """
        if len(nonce) != self.Nn:
            raise LocalError(f"AEAD nonce must be {self.Nn} bytes")
        try:
            return self._cipher(key).decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise CryptoError("decryption failed") from None


def _kdf_label(label: bytes, context: bytes, length: int) -> bytes:
    # RFC 9420 §8: struct { uint16 length; opaque label<V>; opaque context<V>; } KDFLabel;
    return Writer().u16(length).opaque(_LABEL_PREFIX + label).opaque(context).bytes()


def _as_bytes(label: str | bytes) -> bytes:
    return label.encode("ascii") if isinstance(label, str) else label


def _xwing_expand(seed: bytes) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]:
    # One key expansion for pyca's HPKE and ours: SHAKE256(seed, 96) -> ML-KEM d || z, X25519.
    return xwing.expand_private_key(seed)


@dataclass(frozen=True)
class CipherSuite:
    """An MLS cipher suite (RFC 9420 §5.1) and the operations derived from it.

    Instances are module constants; look one up with :func:`cipher_suite`.
    """

    value: int
    """The two-byte ``CipherSuite`` code point."""
    name: str
    kdf: KDF
    aead: AEAD
    xwing: bool = False
    """True for the X-Wing hybrid suite (HPKE through pyca), False for DHKEM(X25519)."""

    # -- hash and KDF ------------------------------------------------------------------------

    def hash(self, data: bytes) -> bytes:
        """The suite's hash (SHA-256 for every supported suite)."""
        return hashlib.sha256(data).digest()

    def mac(self, key: bytes, data: bytes) -> bytes:
        """``MAC(key, data)``: HMAC with the suite's hash (RFC 9420 §5.1, §6.2, §6.1)."""
        return hmac.digest(key, data, "sha256")

    def verify_mac(self, key: bytes, data: bytes, tag: bytes) -> bool:
        """Constant-time check of a :meth:`mac` tag (confirmation and membership tags)."""
        return hmac.compare_digest(self.mac(key, data), tag)

    def kdf_extract(self, salt: bytes, ikm: bytes) -> bytes:
        """``KDF.Extract(salt, ikm)`` (RFC 9420 §5.1)."""
        return self.kdf.extract(salt, ikm)

    def kdf_expand(self, prk: bytes, info: bytes, length: int) -> bytes:
        """``KDF.Expand(prk, info, length)`` (RFC 9420 §5.1)."""
        return self.kdf.expand(prk, info, length)

    def expand_with_label(
        self, secret: bytes, label: str | bytes, context: bytes, length: int
    ) -> bytes:
        """``ExpandWithLabel(Secret, Label, Context, Length)`` (RFC 9420 §8).

        ``label`` is given without the ``"MLS 1.0 "`` prefix, which is added here.
        """
        return self.kdf.expand(secret, _kdf_label(_as_bytes(label), context, length), length)

    def derive_secret(self, secret: bytes, label: str | bytes) -> bytes:
        """``DeriveSecret(Secret, Label) = ExpandWithLabel(Secret, Label, "", Nh)`` (§8)."""
        return self.expand_with_label(secret, label, b"", self.kdf.Nh)

    def derive_tree_secret(
        self, secret: bytes, label: str | bytes, generation: int, length: int
    ) -> bytes:
        """``DeriveTreeSecret`` (RFC 9420 §9): ExpandWithLabel, context ``uint32 generation``."""
        if not 0 <= generation < 1 << 32:
            raise LocalError("generation must fit in uint32")
        return self.expand_with_label(secret, label, generation.to_bytes(4, "big"), length)

    def ref_hash(self, label: str | bytes, value: bytes) -> bytes:
        """``RefHash(label, value)`` (RFC 9420 §5.2); ``label`` is used verbatim.

        ``struct { opaque label<V>; opaque value<V>; } RefHashInput;`` hashed with the suite hash.
        """
        return self.hash(Writer().opaque(_as_bytes(label)).opaque(value).bytes())

    def make_key_package_ref(self, key_package: bytes) -> bytes:
        """``KeyPackageRef = RefHash("MLS 1.0 KeyPackage Reference", KeyPackage)`` (§5.2).

        Args:
            key_package: the serialized ``KeyPackage``.
        """
        return self.ref_hash(b"MLS 1.0 KeyPackage Reference", key_package)

    def make_proposal_ref(self, authenticated_content: bytes) -> bytes:
        """``ProposalRef = RefHash("MLS 1.0 Proposal Reference", AuthenticatedContent)`` (§5.2).

        Args:
            authenticated_content: the serialized ``AuthenticatedContent`` of the proposal.
        """
        return self.ref_hash(b"MLS 1.0 Proposal Reference", authenticated_content)

    # -- AEAD --------------------------------------------------------------------------------

    def seal(self, key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        """``AEAD.Seal`` with the suite's AEAD."""
        return self.aead.seal(key, nonce, aad, plaintext)

    def open(self, key: bytes, nonce: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        """``AEAD.Open`` with the suite's AEAD. Raises CryptoError on failure."""
        return self.aead.open(key, nonce, aad, ciphertext)

    # -- signatures (Ed25519 for every supported suite) --------------------------------------

    @staticmethod
    def signature_key_pair(seed: bytes) -> tuple[bytes, bytes]:
        """An Ed25519 key pair from a 32-byte seed (the caller supplies the randomness).

        Returns:
            ``(private_key, public_key)``; the private key is the seed itself.
        """
        if len(seed) != 32:
            raise LocalError("an Ed25519 private key is a 32-byte seed")
        priv = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        return bytes(seed), priv.public_key().public_bytes_raw()

    @staticmethod
    def _sign_content(label: bytes, content: bytes) -> bytes:
        # RFC 9420 §5.1.2: struct { opaque label<V>; opaque content<V>; } SignContent;
        return Writer().opaque(_LABEL_PREFIX + label).opaque(content).bytes()

    def sign_with_label(self, private_key: bytes, label: str | bytes, content: bytes) -> bytes:
        """``SignWithLabel(SignatureKey, Label, Content)`` (RFC 9420 §5.1.2)."""
        if len(private_key) != 32:
            raise LocalError("an Ed25519 private key is a 32-byte seed")
        key = ed25519.Ed25519PrivateKey.from_private_bytes(private_key)
        return key.sign(self._sign_content(_as_bytes(label), content))

    def verify_with_label(
        self, public_key: bytes, label: str | bytes, content: bytes, signature: bytes
    ) -> None:
        """``VerifyWithLabel`` (RFC 9420 §5.1.2).

        Raises:
            CryptoError: the signature does not verify or the public key is malformed.
        """
        try:
            key = ed25519.Ed25519PublicKey.from_public_bytes(public_key)
            key.verify(signature, self._sign_content(_as_bytes(label), content))
        except (InvalidSignature, ValueError):
            raise CryptoError("invalid signature") from None

    # -- HPKE --------------------------------------------------------------------------------

    @property
    def _hpke(self) -> hpke.HPKESuite:
        if self.xwing:
            return xwing.hpke_suite(self.aead.hpke_id)
        return _hpke_suite(self.aead.hpke_id)

    def derive_hpke_key_pair(self, ikm: bytes) -> tuple[bytes, bytes]:
        """HPKE ``DeriveKeyPair(ikm)`` (RFC 9180 §7.1.3; RFC 9420 §7.4 node keys).

        For X-Wing the private key is ``SHAKE256(ikm, 32)``, the ``DeriveKeyPair`` of the X-Wing
        draft (draft-connolly-cfrg-xwing-kem, "Use in HPKE"; also what OpenMLS's X-Wing suite
        does). Note that draft-ietf-hpke-pq instead derives the seed with
        ``SHAKE256.LabeledDerive(ikm, "DeriveKeyPair", "", 32)`` for the same HPKE KEM id; our
        suite uses a private-use MLS code point, so revisit this when adopting a registered one.

        Returns:
            ``(private_key, public_key)`` as raw bytes.
        """
        if self.xwing:
            seed = hashlib.shake_256(ikm).digest(XWING_PRIVATE_KEY_SIZE)
            return seed, self.hpke_public_key(seed)
        return self._hpke.derive_key_pair(ikm)

    def hpke_public_key(self, private_key: bytes) -> bytes:
        """The HPKE public key belonging to a raw private key."""
        if self.xwing:
            m, x = _xwing_expand(private_key)
            return m.public_key().public_bytes_raw() + x.public_key().public_bytes_raw()
        return hpke.HPKESuite.public_key(private_key)

    @staticmethod
    def _encrypt_context(label: bytes, context: bytes) -> bytes:
        # RFC 9420 §5.1.3: struct { opaque label<V>; opaque context<V>; } EncryptContext;
        return Writer().opaque(_LABEL_PREFIX + label).opaque(context).bytes()

    def encrypt_with_label(
        self,
        public_key: bytes,
        label: str | bytes,
        context: bytes,
        plaintext: bytes,
        *,
        randomness: bytes,
    ) -> tuple[bytes, bytes]:
        """``EncryptWithLabel(PublicKey, Label, Context, Plaintext)`` (RFC 9420 §5.1.3).

        Args:
            randomness: 32 fresh random bytes for the ephemeral key (``ikmE``); unused for the
                X-Wing suite, whose pyca HPKE reads its own randomness.

        Returns:
            ``(kem_output, ciphertext)``.

        Raises:
            CryptoError: ``public_key`` is not a valid key for this suite.
        """
        info = self._encrypt_context(_as_bytes(label), context)
        if self.xwing:
            key = self._xwing_public(public_key)
            out = _XWING_HPKE.encrypt(plaintext, key, info=info)
            return out[:_XWING_ENC_SIZE], out[_XWING_ENC_SIZE:]
        if len(public_key) != hpke.HPKESuite.Npk:
            raise CryptoError("invalid HPKE public key")
        return self._hpke.seal_base(public_key, info, b"", plaintext, ikm_e=randomness)

    def decrypt_with_label(
        self,
        private_key: bytes,
        label: str | bytes,
        context: bytes,
        kem_output: bytes,
        ciphertext: bytes,
    ) -> bytes:
        """``DecryptWithLabel(PrivateKey, Label, Context, KEMOutput, Ciphertext)`` (§5.1.3).

        Raises:
            CryptoError: anything failed (malformed ``kem_output``, wrong key, bad tag).
        """
        info = self._encrypt_context(_as_bytes(label), context)
        if self.xwing:
            if len(kem_output) != _XWING_ENC_SIZE:
                raise CryptoError("decryption failed")
            m, x = _xwing_expand(private_key)
            try:
                return _XWING_HPKE.decrypt(
                    kem_output + ciphertext, pyca_hpke.MLKEM768X25519PrivateKey(m, x), info=info
                )
            except (InvalidTag, ValueError):
                raise CryptoError("decryption failed") from None
        if len(kem_output) != hpke.HPKESuite.Nenc:
            raise CryptoError("decryption failed")
        return self._hpke.open_base(kem_output, private_key, info, b"", ciphertext)

    def hpke_export_sender(
        self,
        public_key: bytes,
        info: bytes,
        exporter_context: bytes,
        length: int,
        *,
        randomness: bytes,
    ) -> tuple[bytes, bytes]:
        """``SetupBaseS(pk, info)`` then ``Export(exporter_context, length)`` (RFC 9180 §5.3).

        MLS uses this for external joins (RFC 9420 §8.3). For X-Wing this is :mod:`.xwing`'s
        HPKE (pyca's has no exporter).

        Args:
            randomness: 32 fresh random bytes: ``ikmE`` for DHKEM(X25519), the X25519 ephemeral
                key for X-Wing (whose ML-KEM randomness pyca draws from the OS).

        Returns:
            ``(kem_output, exported_secret)``.

        Raises:
            CryptoError: ``public_key`` is not a valid key for this suite.
        """
        if len(public_key) != self._hpke.Npk:
            raise CryptoError("invalid HPKE public key")
        enc, ctx = self._hpke.setup_base_s(public_key, info, ikm_e=randomness)
        return enc, ctx.export(exporter_context, length)

    def hpke_export_receiver(
        self,
        private_key: bytes,
        kem_output: bytes,
        info: bytes,
        exporter_context: bytes,
        length: int,
    ) -> bytes:
        """``SetupBaseR(enc, sk, info)`` then ``Export(exporter_context, length)`` (§5.3).

        Raises:
            CryptoError: ``kem_output`` is malformed.
        """
        if len(kem_output) != self._hpke.Nenc:
            raise CryptoError("invalid kem_output")
        return self._hpke.setup_base_r(kem_output, private_key, info).export(
            exporter_context, length
        )

    @staticmethod
    def _xwing_public(public_key: bytes) -> pyca_hpke.MLKEM768X25519PublicKey:
        if len(public_key) != XWING_PUBLIC_KEY_SIZE:
            raise CryptoError("invalid HPKE public key")
        try:
            m = mlkem.MLKEM768PublicKey.from_public_bytes(public_key[:_MLKEM768_PUBLIC_KEY_SIZE])
            x = x25519.X25519PublicKey.from_public_bytes(public_key[_MLKEM768_PUBLIC_KEY_SIZE:])
        except ValueError:
            raise CryptoError("invalid HPKE public key") from None
        return pyca_hpke.MLKEM768X25519PublicKey(m, x)


@functools.cache
def _hpke_suite(aead_id: int) -> hpke.HPKESuite:
    return hpke.HPKESuite(aead_id=aead_id)


_XWING_HPKE = pyca_hpke.Suite(
    pyca_hpke.KEM.MLKEM768_X25519, pyca_hpke.KDF.HKDF_SHA256, pyca_hpke.AEAD.AES_256_GCM
)

MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 = CipherSuite(
    value=0x0001,
    name="MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519",
    kdf=KDF(),
    aead=AEAD(hpke_id=hpke.AEAD_AES128GCM, Nk=16),
)
MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519 = CipherSuite(
    value=0x0003,
    name="MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519",
    kdf=KDF(),
    aead=AEAD(hpke_id=hpke.AEAD_CHACHA20POLY1305, Nk=32),
)
SEALWIRE_256_XWING_AES256GCM_SHA256_Ed25519 = CipherSuite(
    # Private-use code point (RFC 9420 §17.1); see the module docstring.
    value=0xF0A1,
    name="SEALWIRE_256_XWING_AES256GCM_SHA256_Ed25519",
    kdf=KDF(),
    aead=AEAD(hpke_id=hpke.AEAD_AES256GCM, Nk=32),
    xwing=True,
)

SUPPORTED_SUITES: dict[int, CipherSuite] = {
    s.value: s
    for s in (
        MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519,
        MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519,
        SEALWIRE_256_XWING_AES256GCM_SHA256_Ed25519,
    )
}
"""Every cipher suite this library implements, by code point."""


def cipher_suite(value: int) -> CipherSuite:
    """Look up a supported suite by its code point.

    Raises:
        UnsupportedError: the suite is not one of :data:`SUPPORTED_SUITES` (by design we
            implement only suites 1 and 3 and the X-Wing suite).
    """
    try:
        return SUPPORTED_SUITES[value]
    except KeyError:
        raise UnsupportedError(f"cipher suite {value:#06x} is not supported") from None
