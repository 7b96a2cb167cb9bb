"""Cipher suite behaviour beyond the official vectors: the X-Wing suite, key handling, AEAD,
and failure modes (every failed check is one opaque CryptoError)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hpke as pyca_hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from sealwire.mls.crypto import (
    SUPPORTED_SUITES,
    XWING_PUBLIC_KEY_SIZE,
    CipherSuite,
    cipher_suite,
)
from sealwire.mls.crypto import (
    MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 as SUITE1,
)
from sealwire.mls.crypto import (
    MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519 as SUITE3,
)
from sealwire.mls.crypto import (
    SEALWIRE_256_XWING_AES256GCM_SHA256_Ed25519 as XWING,
)
from sealwire.mls.errors import CryptoError, LocalError

ALL = [SUITE1, SUITE3, XWING]


def test_registry() -> None:
    assert set(SUPPORTED_SUITES) == {0x0001, 0x0003, 0xF0A1}
    for suite in ALL:
        assert cipher_suite(suite.value) is suite
    assert (SUITE1.aead.Nk, SUITE3.aead.Nk, XWING.aead.Nk) == (16, 32, 32)
    assert all(s.kdf.Nh == 32 and s.aead.Nn == 12 for s in ALL)
    # RFC 9420 §17.1: 0xF000-0xFFFF is private use.
    assert 0xF000 <= XWING.value <= 0xFFFF


def test_xwing_keys_are_derived_from_a_seed() -> None:
    priv, pub = XWING.derive_hpke_key_pair(b"input keying material, 32 bytes")
    assert len(priv) == 32 and len(pub) == XWING_PUBLIC_KEY_SIZE == 1216
    assert XWING.derive_hpke_key_pair(b"input keying material, 32 bytes") == (priv, pub)
    assert XWING.hpke_public_key(priv) == pub
    assert XWING.derive_hpke_key_pair(b"other input keying material....")[1] != pub


def test_xwing_key_layout_matches_pyca() -> None:
    """public = ML-KEM-768 pk || X25519 pk, both from SHAKE256(seed, 96) as the brief states."""
    import hashlib

    seed = bytes(range(32))
    expanded = hashlib.shake_256(seed).digest(96)
    m = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
    x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
    assert XWING.hpke_public_key(seed) == (
        m.public_key().public_bytes_raw() + x.public_key().public_bytes_raw()
    )
    # pyca can open what we seal to that key, with its own key object.
    kem_output, ct = XWING.encrypt_with_label(
        XWING.hpke_public_key(seed), "Welcome", b"ctx", b"hello", randomness=bytes(32)
    )
    suite = pyca_hpke.Suite(
        pyca_hpke.KEM.MLKEM768_X25519, pyca_hpke.KDF.HKDF_SHA256, pyca_hpke.AEAD.AES_256_GCM
    )
    info = b"\x0fMLS 1.0 Welcome\x03ctx"
    key = pyca_hpke.MLKEM768X25519PrivateKey(m, x)
    assert suite.decrypt(kem_output + ct, key, info=info) == b"hello"


@pytest.mark.parametrize("suite", ALL, ids=lambda s: s.name)
def test_encrypt_with_label_round_trip_and_tamper(suite: CipherSuite) -> None:
    priv, pub = suite.derive_hpke_key_pair(bytes([7]) * 32)
    kem_output, ct = suite.encrypt_with_label(
        pub, "UpdatePathNode", b"gc", b"path secret", randomness=bytes([3]) * 32
    )
    assert suite.decrypt_with_label(priv, "UpdatePathNode", b"gc", kem_output, ct) == b"path secret"
    other_priv, _ = suite.derive_hpke_key_pair(bytes([8]) * 32)
    flipped = bytes([kem_output[0] ^ 1]) + kem_output[1:]
    for args in [
        (priv, "UpdatePathNode", b"gc", kem_output, ct[:-1] + bytes([ct[-1] ^ 1])),
        (priv, "UpdatePathNode", b"gX", kem_output, ct),
        (priv, "Welcome", b"gc", kem_output, ct),
        (other_priv, "UpdatePathNode", b"gc", kem_output, ct),
        (priv, "UpdatePathNode", b"gc", flipped, ct),
        (priv, "UpdatePathNode", b"gc", kem_output[:-1], ct),
        (priv, "UpdatePathNode", b"gc", b"", ct),
    ]:
        with pytest.raises(CryptoError):
            suite.decrypt_with_label(*args)


@pytest.mark.parametrize("suite", ALL, ids=lambda s: s.name)
def test_malformed_public_keys(suite: CipherSuite) -> None:
    for bad in (b"", bytes(31), bytes(XWING_PUBLIC_KEY_SIZE + 1)):
        with pytest.raises(CryptoError):
            suite.encrypt_with_label(bad, "l", b"", b"pt", randomness=bytes(32))


def test_signatures() -> None:
    priv, pub = SUITE1.signature_key_pair(bytes(32))
    sig = SUITE1.sign_with_label(priv, "LeafNodeTBS", b"content")
    for suite in ALL:  # Ed25519 throughout
        suite.verify_with_label(pub, "LeafNodeTBS", b"content", sig)
    for args in [
        (pub, "LeafNodeTBS", b"content", sig[:-1] + bytes([sig[-1] ^ 1])),
        (pub, "LeafNodeTBS", b"content", b""),
        (bytes(31), "LeafNodeTBS", b"content", sig),
        (SUITE1.signature_key_pair(bytes([1]) * 32)[1], "LeafNodeTBS", b"content", sig),
    ]:
        with pytest.raises(CryptoError):
            SUITE1.verify_with_label(*args)
    with pytest.raises(LocalError):
        SUITE1.signature_key_pair(bytes(31))


@pytest.mark.parametrize("suite", ALL, ids=lambda s: s.name)
def test_aead(suite: CipherSuite) -> None:
    key, nonce = bytes(suite.aead.Nk), bytes(suite.aead.Nn)
    ct = suite.seal(key, nonce, b"aad", b"message")
    assert len(ct) == len(b"message") + 16
    assert suite.open(key, nonce, b"aad", ct) == b"message"
    with pytest.raises(CryptoError):
        suite.open(key, nonce, b"aaX", ct)
    with pytest.raises(LocalError):
        suite.seal(bytes(5), nonce, b"", b"")
    with pytest.raises(LocalError):
        suite.seal(key, bytes(5), b"", b"")


def test_refs_and_mac() -> None:
    kp_ref = SUITE1.make_key_package_ref(b"key package bytes")
    assert kp_ref == SUITE1.ref_hash("MLS 1.0 KeyPackage Reference", b"key package bytes")
    assert SUITE1.make_proposal_ref(b"x") == SUITE1.ref_hash(b"MLS 1.0 Proposal Reference", b"x")
    tag = SUITE1.mac(b"k", b"data")
    assert SUITE1.verify_mac(b"k", b"data", tag)
    assert not SUITE1.verify_mac(b"k", b"datb", tag)


def test_kdf_bounds() -> None:
    assert len(SUITE1.kdf_expand(bytes(32), b"", 255 * 32)) == 255 * 32
    with pytest.raises(LocalError):
        SUITE1.kdf_expand(bytes(32), b"", 255 * 32 + 1)
    with pytest.raises(LocalError):
        SUITE1.derive_tree_secret(bytes(32), "key", 1 << 32, 16)
