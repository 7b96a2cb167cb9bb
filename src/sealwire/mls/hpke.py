"""HPKE (RFC 9180) base mode for DHKEM(X25519, HKDF-SHA256), written over pyca primitives.

MLS needs HPKE with deterministic inputs (test vectors, sans-IO randomness), which pyca's
single-shot ``hpke.Suite`` does not offer, so the classical suites are built here from X25519,
HMAC-SHA256 and the AEADs. Randomness is never read: the sender passes ``ikm_e``, the input
keying material of the ephemeral key pair (RFC 9180 §7.1.3 ``DeriveKeyPair``), which must be
fresh uniformly random bytes of at least ``Nsk`` (32) bytes for every encapsulation.

Supported: KEM 0x0020 DHKEM(X25519, HKDF-SHA256); KDF 0x0001 HKDF-SHA256; AEAD 0x0001
AES-128-GCM, 0x0002 AES-256-GCM, 0x0003 ChaCha20Poly1305; mode_base only (what MLS uses).
The X-Wing suite used by :mod:`sealwire.mls.crypto` goes through pyca's own HPKE instead (see
there). Every failure to open is one opaque :class:`~sealwire.mls.errors.CryptoError`.
"""

from __future__ import annotations

import functools
import hmac
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .errors import CryptoError, LocalError

__all__ = [
    "AEAD_AES128GCM",
    "AEAD_AES256GCM",
    "AEAD_CHACHA20POLY1305",
    "KDF_HKDF_SHA256",
    "KEM_DHKEM_X25519",
    "Context",
    "HPKESuite",
    "hkdf_expand",
    "hkdf_extract",
]

KEM_DHKEM_X25519 = 0x0020
KDF_HKDF_SHA256 = 0x0001
AEAD_AES128GCM = 0x0001
AEAD_AES256GCM = 0x0002
AEAD_CHACHA20POLY1305 = 0x0003

_MODE_BASE = 0x00
_VERSION_LABEL = b"HPKE-v1"
_NH = 32  # HKDF-SHA256 output size
_AEADS: dict[int, tuple[int, int]] = {  # aead_id -> (Nk, Nn); Nt is 16 for all three
    AEAD_AES128GCM: (16, 12),
    AEAD_AES256GCM: (32, 12),
    AEAD_CHACHA20POLY1305: (32, 12),
}


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """``HKDF-Extract`` with SHA-256 (RFC 5869 §2.2; RFC 9180 §7.2 KDF 0x0001).

    An empty salt means ``HashLen`` zero bytes, which HMAC pads to the same key.
    """
    return hmac.digest(salt, ikm, "sha256")


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """``HKDF-Expand`` with SHA-256 (RFC 5869 §2.3).

    Raises:
        LocalError: ``length`` is negative or above ``255 * 32``.
    """
    if not 0 <= length <= 255 * _NH:
        raise LocalError(f"HKDF-Expand length {length} out of range")
    out = bytearray()
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        out += block
        counter += 1
    return bytes(out[:length])


def _aead_seal(aead_id: int, key: bytes, nonce: bytes, aad: bytes, pt: bytes) -> bytes:
    if aead_id == AEAD_CHACHA20POLY1305:
        return ChaCha20Poly1305(key).encrypt(nonce, pt, aad)
    return AESGCM(key).encrypt(nonce, pt, aad)


def _aead_open(aead_id: int, key: bytes, nonce: bytes, aad: bytes, ct: bytes) -> bytes:
    try:
        if aead_id == AEAD_CHACHA20POLY1305:
            return ChaCha20Poly1305(key).decrypt(nonce, ct, aad)
        return AESGCM(key).decrypt(nonce, ct, aad)
    except InvalidTag:
        raise CryptoError("decryption failed") from None


@dataclass
class Context:
    """An HPKE encryption context (RFC 9180 §5.2): key, base nonce, sequence, exporter secret.

    A context is single-direction: the sender calls :meth:`seal`, the receiver :meth:`open`;
    each advances the sequence number. :meth:`export` may be called by either side.
    """

    aead_id: int
    key: bytes = field(repr=False)
    base_nonce: bytes = field(repr=False)
    exporter_secret: bytes = field(repr=False)
    _suite: HPKESuite = field(repr=False)
    seq: int = 0

    def _nonce(self) -> bytes:
        # RFC 9180 §5.2: ComputeNonce(seq) = base_nonce XOR I2OSP(seq, Nn)
        nn = len(self.base_nonce)
        if self.seq >= (1 << (8 * nn)) - 1:
            raise LocalError("HPKE message limit reached")
        seq_bytes = self.seq.to_bytes(nn, "big")
        return bytes(a ^ b for a, b in zip(self.base_nonce, seq_bytes, strict=True))

    def seal(self, aad: bytes, pt: bytes) -> bytes:
        """Encrypt ``pt`` with ``aad`` under the next nonce (RFC 9180 §5.2 ContextS.Seal)."""
        ct = _aead_seal(self.aead_id, self.key, self._nonce(), aad, pt)
        self.seq += 1
        return ct

    def open(self, aad: bytes, ct: bytes) -> bytes:
        """Decrypt ``ct`` (RFC 9180 §5.2 ContextR.Open).

        Raises:
            CryptoError: authentication failed (the sequence number does not advance).
        """
        pt = _aead_open(self.aead_id, self.key, self._nonce(), aad, ct)
        self.seq += 1
        return pt

    def export(self, exporter_context: bytes, length: int) -> bytes:
        """Derive a secret from the exporter secret (RFC 9180 §5.3 Context.Export)."""
        return self._suite.labeled_expand(self.exporter_secret, b"sec", exporter_context, length)


@dataclass(frozen=True)
class HPKESuite:
    """One RFC 9180 suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and ``aead_id``."""

    aead_id: int
    kem_id: int = KEM_DHKEM_X25519
    kdf_id: int = KDF_HKDF_SHA256

    def __post_init__(self) -> None:
        if self.kem_id != KEM_DHKEM_X25519 or self.kdf_id != KDF_HKDF_SHA256:
            raise LocalError("only DHKEM(X25519, HKDF-SHA256) with HKDF-SHA256 is implemented")
        if self.aead_id not in _AEADS:
            raise LocalError(f"unsupported HPKE AEAD {self.aead_id:#06x}")

    # Sizes (RFC 9180 §7.1, §7.3).
    Nsecret = 32
    Nenc = 32
    Npk = 32
    Nsk = 32

    @property
    def Nk(self) -> int:
        """AEAD key length."""
        return _AEADS[self.aead_id][0]

    @property
    def Nn(self) -> int:
        """AEAD nonce length."""
        return _AEADS[self.aead_id][1]

    @property
    def suite_id(self) -> bytes:
        """``"HPKE" || kem_id || kdf_id || aead_id`` (RFC 9180 §5.1)."""
        return (
            b"HPKE"
            + self.kem_id.to_bytes(2, "big")
            + self.kdf_id.to_bytes(2, "big")
            + self.aead_id.to_bytes(2, "big")
        )

    @property
    def _kem_suite_id(self) -> bytes:
        # RFC 9180 §4.1: suite_id = concat("KEM", I2OSP(kem_id, 2)) inside the KEM.
        return b"KEM" + self.kem_id.to_bytes(2, "big")

    # RFC 9180 §4: LabeledExtract / LabeledExpand.
    def labeled_extract(
        self, salt: bytes, label: bytes, ikm: bytes, *, suite_id: bytes | None = None
    ) -> bytes:
        """``LabeledExtract`` (RFC 9180 §4); ``suite_id`` defaults to the full HPKE suite id."""
        sid = self.suite_id if suite_id is None else suite_id
        return hkdf_extract(salt, _VERSION_LABEL + sid + label + ikm)

    def _unsalted_extract(self, label: bytes, ikm: bytes) -> bytes:
        # LabeledExtract("", label, ikm) of public inputs only (psk_id_hash, info_hash): a
        # pure function, memoised because MLS seals many times under one info (one commit's
        # EncryptContext).
        return _unsalted_labeled_extract(self.suite_id, label, ikm)

    def labeled_expand(
        self, prk: bytes, label: bytes, info: bytes, length: int, *, suite_id: bytes | None = None
    ) -> bytes:
        """``LabeledExpand`` (RFC 9180 §4); ``suite_id`` defaults to the full HPKE suite id."""
        sid = self.suite_id if suite_id is None else suite_id
        labeled_info = length.to_bytes(2, "big") + _VERSION_LABEL + sid + label + info
        return hkdf_expand(prk, labeled_info, length)

    # RFC 9180 §4.1 and §7.1.3: the DHKEM.
    def derive_key_pair(self, ikm: bytes) -> tuple[bytes, bytes]:
        """``DeriveKeyPair(ikm)`` for X25519 (RFC 9180 §7.1.3).

        Returns:
            ``(private_key, public_key)``, each 32 raw bytes.
        """
        if len(ikm) < self.Nsk:
            raise LocalError("DeriveKeyPair input keying material shorter than Nsk")
        kid = self._kem_suite_id
        dkp_prk = self.labeled_extract(b"", b"dkp_prk", ikm, suite_id=kid)
        sk = self.labeled_expand(dkp_prk, b"sk", b"", self.Nsk, suite_id=kid)
        return sk, self.public_key(sk)

    @staticmethod
    def public_key(private_key: bytes) -> bytes:
        """The X25519 public key of a raw 32-byte private key."""
        try:
            priv = x25519.X25519PrivateKey.from_private_bytes(private_key)
        except ValueError as exc:
            raise LocalError("invalid X25519 private key") from exc
        return priv.public_key().public_bytes_raw()

    @staticmethod
    def _dh(private_key: bytes, public_key: bytes) -> tuple[bytes, bytes]:
        """``(DH(sk, pk), pk(sk))``: one key object serves both (RFC 9180 §4.1)."""
        try:
            priv = x25519.X25519PrivateKey.from_private_bytes(private_key)
            pub = x25519.X25519PublicKey.from_public_bytes(public_key)
            return priv.exchange(pub), priv.public_key().public_bytes_raw()
        except ValueError:
            # Wrong length or an all-zero shared secret (small-order point): RFC 9180 §7.1.4.
            raise CryptoError("decryption failed") from None

    def _extract_and_expand(self, dh: bytes, kem_context: bytes) -> bytes:
        kid = self._kem_suite_id
        eae_prk = self.labeled_extract(b"", b"eae_prk", dh, suite_id=kid)
        return self.labeled_expand(
            eae_prk, b"shared_secret", kem_context, self.Nsecret, suite_id=kid
        )

    def encap(self, pk_r: bytes, *, ikm_e: bytes) -> tuple[bytes, bytes]:
        """``Encap(pkR)`` with the ephemeral key pair derived from ``ikm_e`` (RFC 9180 §4.1).

        Returns:
            ``(shared_secret, enc)``.
        """
        if len(ikm_e) < self.Nsk:
            raise LocalError("DeriveKeyPair input keying material shorter than Nsk")
        kid = self._kem_suite_id
        dkp_prk = self.labeled_extract(b"", b"dkp_prk", ikm_e, suite_id=kid)
        sk_e = self.labeled_expand(dkp_prk, b"sk", b"", self.Nsk, suite_id=kid)
        # DeriveKeyPair (RFC 9180 §7.1.3) inlined: pkE comes with the DH from one key object.
        dh, pk_e = self._dh(sk_e, pk_r)
        return self._extract_and_expand(dh, pk_e + pk_r), pk_e

    def decap(self, enc: bytes, sk_r: bytes) -> bytes:
        """``Decap(enc, skR)`` (RFC 9180 §4.1). Raises CryptoError on an invalid ``enc``."""
        dh, pk_r = self._dh(sk_r, enc)
        return self._extract_and_expand(dh, enc + pk_r)

    # RFC 9180 §5.1: the key schedule (base mode: empty psk and psk_id).
    def _schedule(self, shared_secret: bytes, info: bytes) -> tuple[bytes, bytes]:
        # RFC 9180 §5.1 mode_base: (secret, key_schedule_context).
        psk_id_hash = self._unsalted_extract(b"psk_id_hash", b"")
        info_hash = self._unsalted_extract(b"info_hash", info)
        ks_context = bytes([_MODE_BASE]) + psk_id_hash + info_hash
        return self.labeled_extract(shared_secret, b"secret", b""), ks_context

    def _key_nonce(self, secret: bytes, ks_context: bytes) -> tuple[bytes, bytes]:
        return (
            self.labeled_expand(secret, b"key", ks_context, self.Nk),
            self.labeled_expand(secret, b"base_nonce", ks_context, self.Nn),
        )

    def key_schedule(self, shared_secret: bytes, info: bytes) -> Context:
        """``KeyScheduleS/R`` in mode_base (RFC 9180 §5.1)."""
        secret, ks_context = self._schedule(shared_secret, info)
        key, base_nonce = self._key_nonce(secret, ks_context)
        return Context(
            aead_id=self.aead_id,
            key=key,
            base_nonce=base_nonce,
            exporter_secret=self.labeled_expand(secret, b"exp", ks_context, _NH),
            _suite=self,
        )

    def setup_base_s(self, pk_r: bytes, info: bytes, *, ikm_e: bytes) -> tuple[bytes, Context]:
        """``SetupBaseS(pkR, info)`` (RFC 9180 §5.1.1). Returns ``(enc, context)``."""
        shared_secret, enc = self.encap(pk_r, ikm_e=ikm_e)
        return enc, self.key_schedule(shared_secret, info)

    def setup_base_r(self, enc: bytes, sk_r: bytes, info: bytes) -> Context:
        """``SetupBaseR(enc, skR, info)`` (RFC 9180 §5.1.1)."""
        return self.key_schedule(self.decap(enc, sk_r), info)

    def seal_base(
        self, pk_r: bytes, info: bytes, aad: bytes, pt: bytes, *, ikm_e: bytes
    ) -> tuple[bytes, bytes]:
        """Single-shot ``SealBase`` (RFC 9180 §6.1). Returns ``(enc, ciphertext)``."""
        shared_secret, enc = self.encap(pk_r, ikm_e=ikm_e)
        # One message at sequence 0, whose nonce is base_nonce; no exporter secret needed.
        key, base_nonce = self._key_nonce(*self._schedule(shared_secret, info))
        return enc, _aead_seal(self.aead_id, key, base_nonce, aad, pt)

    def open_base(self, enc: bytes, sk_r: bytes, info: bytes, aad: bytes, ct: bytes) -> bytes:
        """Single-shot ``OpenBase`` (RFC 9180 §6.1).

        Raises:
            CryptoError: ``enc`` is invalid or authentication failed (one opaque error).
        """
        key, base_nonce = self._key_nonce(*self._schedule(self.decap(enc, sk_r), info))
        return _aead_open(self.aead_id, key, base_nonce, aad, ct)


@functools.lru_cache(maxsize=64)
def _unsalted_labeled_extract(suite_id: bytes, label: bytes, ikm: bytes) -> bytes:
    return hkdf_extract(b"", _VERSION_LABEL + suite_id + label + ikm)
