"""The crypto suite: labels, signatures, HPKE, AEAD, Argon2id, padding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealwire.errors import CryptoError, DecodeError, InvalidSignature
from sealwire.protocol.suite import (
    MIN_PADDED_SIZE,
    XWING_PUBLIC_KEY_SIZE,
    Argon2Params,
    SigningKey,
    XWingPrivateKey,
    XWingPublicKey,
    aead_open,
    aead_seal,
    constant_time_equal,
    derive_passcode_key,
    hkdf,
    hpke_open,
    hpke_seal,
    label,
    labelled,
    pad,
    padded_size,
    unpad,
    verify_signature,
)


def test_labels() -> None:
    assert label("envelope") == b"sealwire/v1/envelope"
    assert labelled("a", b"m") == b"sealwire/v1/a\x00m"
    for bad in ("", "Upper", "with space", "x\x00", "é", "a" * 64):
        with pytest.raises(ValueError):
            label(bad)


def test_signatures_are_bound_to_their_label() -> None:
    k = SigningKey.from_seed(b"\x07" * 32)
    sig = k.sign("certificate", b"message")
    verify_signature(k.public_key, "certificate", b"message", sig)
    with pytest.raises(InvalidSignature):
        verify_signature(k.public_key, "prekey", b"message", sig)
    with pytest.raises(InvalidSignature):
        verify_signature(k.public_key, "certificate", b"messagf", sig)
    with pytest.raises(InvalidSignature):
        verify_signature(k.public_key, "certificate", b"message", bytes(64))
    with pytest.raises(InvalidSignature):
        verify_signature(k.public_key, "certificate", b"message", sig[:63])
    other = SigningKey.from_seed(b"\x08" * 32)
    with pytest.raises(InvalidSignature):
        verify_signature(other.public_key, "certificate", b"message", sig)
    # Ed25519 (RFC 8032) is deterministic: the same key and message give the same signature.
    assert k.sign("certificate", b"message") == sig


def test_hkdf_labels_separate_keys() -> None:
    a = hkdf(b"secret", purpose="one")
    assert len(a) == 32
    assert a != hkdf(b"secret", purpose="two")
    assert a != hkdf(b"secret", purpose="one", salt=b"salt")
    assert len(hkdf(b"secret", purpose="one", length=64)) == 64


def test_xwing_keys_are_deterministic_from_seed() -> None:
    k1 = XWingPrivateKey(b"\x01" * 32)
    k2 = XWingPrivateKey(b"\x01" * 32)
    assert k1.public_key.raw == k2.public_key.raw
    assert len(k1.public_key.raw) == XWING_PUBLIC_KEY_SIZE
    assert XWingPrivateKey(b"\x02" * 32).public_key.raw != k1.public_key.raw
    with pytest.raises(DecodeError):
        XWingPublicKey(k1.public_key.raw[:-1])


def test_hpke_round_trip_and_binding() -> None:
    k = XWingPrivateKey(b"\x03" * 32)
    ct = hpke_seal(k.public_key, b"plaintext", purpose="test", context=b"ctx")
    assert hpke_open(k, ct, purpose="test", context=b"ctx") == b"plaintext"
    for purpose, context in (("test", b"ctx2"), ("other", b"ctx")):
        with pytest.raises(CryptoError):
            hpke_open(k, ct, purpose=purpose, context=context)
    with pytest.raises(CryptoError):
        hpke_open(XWingPrivateKey(b"\x04" * 32), ct, purpose="test", context=b"ctx")
    for i in (0, 500, 1119, 1120, len(ct) - 1):
        bad = bytearray(ct)
        bad[i] ^= 1
        with pytest.raises(CryptoError):
            hpke_open(k, bytes(bad), purpose="test", context=b"ctx")
    with pytest.raises(CryptoError):
        hpke_open(k, ct[:100], purpose="test", context=b"ctx")


def test_aead() -> None:
    key, nonce = b"k" * 32, b"n" * 12
    ct = aead_seal(key, nonce, b"data", b"aad")
    assert aead_open(key, nonce, ct, b"aad") == b"data"
    with pytest.raises(CryptoError):
        aead_open(key, nonce, ct, b"aae")
    with pytest.raises(CryptoError):
        aead_open(key, nonce, ct[:-1] + bytes([ct[-1] ^ 1]), b"aad")


def test_argon2id_parameters_matter() -> None:
    params = Argon2Params(salt=b"s" * 16, memory_kib=64, iterations=1, lanes=1)
    k = derive_passcode_key("123456", params, purpose="passcode")
    assert k == derive_passcode_key("123456", params, purpose="passcode")
    assert k != derive_passcode_key("123457", params, purpose="passcode")
    assert k != derive_passcode_key("123456", params, purpose="other")
    other_salt = Argon2Params(salt=b"t" * 16, memory_kib=64, iterations=1, lanes=1)
    assert k != derive_passcode_key("123456", other_salt, purpose="passcode")
    assert Argon2Params.decode(params.encode()) == params
    default = Argon2Params.default(lambda n: b"\x00" * n)
    assert (default.memory_kib, default.iterations, default.lanes) == (65536, 3, 4)


def test_constant_time_equal() -> None:
    assert constant_time_equal(b"abc", b"abc")
    assert not constant_time_equal(b"abc", b"abd")
    assert not constant_time_equal(b"abc", b"ab")


def test_padme_sizes() -> None:
    assert padded_size(0) == MIN_PADDED_SIZE
    assert padded_size(MIN_PADDED_SIZE) == MIN_PADDED_SIZE
    assert padded_size(1025) == 1088
    assert padded_size(5000) == 5120
    for n in range(MIN_PADDED_SIZE, 70_000, 97):
        size = padded_size(n)
        assert n <= size <= n * 1.12 + 1


@given(st.binary(max_size=5000))
def test_pad_round_trip(data: bytes) -> None:
    padded = pad(data)
    assert len(padded) == padded_size(len(data) + 1)
    assert unpad(padded) == data


@given(st.binary(max_size=600))
def test_unpad_arbitrary_bytes(data: bytes) -> None:
    try:
        body = unpad(data)
    except DecodeError:
        return
    assert pad(body) == data


def test_unpad_rejects_bad_padding() -> None:
    good = pad(b"hello")
    for bad in (b"", bytes(1024), good[:-1], good + b"\x00", b"hello\x80" + bytes(10)):
        with pytest.raises(DecodeError):
            unpad(bad)


def test_reprs_hide_secrets() -> None:
    k = SigningKey.from_seed(b"\x09" * 32)
    assert (b"\x09" * 32).hex() not in repr(k)
    x = XWingPrivateKey(b"\x09" * 32)
    assert (b"\x09" * 32).hex() not in repr(x)
