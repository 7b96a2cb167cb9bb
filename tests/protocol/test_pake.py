"""SPAKE2 over edwards25519 (RFC 9382): pinned vectors, the RFC's constants, point checks."""

from __future__ import annotations

import hashlib
import json
import pathlib
import struct

import nacl.bindings as sodium
import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from sealwire.errors import ActivationFailed
from sealwire.protocol.activation import ActivationTicket
from sealwire.protocol.pake import (
    CONFIRMATION_AAD,
    SHARE_SIZE,
    M,
    N,
    Side,
    Spake2,
    password_scalar,
    scalar_from_seed,
)
from sealwire.protocol.suite import Argon2Params
from tests.conftest import FixedRandom
from tests.vectors.make_pake_vectors import build, split_transcript

VECTORS = json.loads((pathlib.Path(__file__).parents[1] / "vectors" / "pake.json").read_text())
ORDER = 2**252 + 27742317777372353535851937790883648493
IDENTITY = (1).to_bytes(32, "little")
ID_A, ID_B = bytes(range(16)), bytes(range(32, 64))
W = scalar_from_seed(bytes([5]) * 64)


def pair(w_a: bytes = W, w_b: bytes = W, seed: bytes = b"pair") -> tuple[Spake2, Spake2]:
    random = FixedRandom(seed)
    a = Spake2(Side.A, password_scalar=w_a, id_a=ID_A, id_b=ID_B, seed=random(64))
    b = Spake2(Side.B, password_scalar=w_b, id_a=ID_A, id_b=ID_B, seed=random(64))
    return a, b


# --- Pinned vectors --------------------------------------------------------------------------


@pytest.mark.vectors
def test_pinned_file_is_what_the_code_produces() -> None:
    assert build() == VECTORS


@pytest.mark.vectors
@pytest.mark.parametrize("case", VECTORS["spake2"], ids=["binary-ids", "text-ids"])
def test_pinned_spake2_run(case: dict[str, str]) -> None:
    h = bytes.fromhex
    w = h(case["w"])
    a = Spake2(
        Side.A, password_scalar=w, id_a=h(case["A"]), id_b=h(case["B"]), seed=h(case["seed_x"])
    )
    b = Spake2(
        Side.B, password_scalar=w, id_a=h(case["A"]), id_b=h(case["B"]), seed=h(case["seed_y"])
    )
    assert a.share.hex() == case["pA"] and b.share.hex() == case["pB"]
    keys_a, keys_b = a.finish(b.share), b.finish(a.share)
    assert keys_a.transcript.hex() == keys_b.transcript.hex() == case["TT"]
    assert keys_a.shared_key.hex() == keys_b.shared_key.hex() == case["Ke"]
    assert keys_a.confirmation.hex() == case["cA"]
    assert keys_b.confirmation.hex() == case["cB"]
    keys_b.verify(keys_a.confirmation)
    keys_a.verify(keys_b.confirmation)


@pytest.mark.vectors
@pytest.mark.parametrize("case", VECTORS["spake2"], ids=["binary-ids", "text-ids"])
def test_pinned_values_follow_rfc_9382_independently(case: dict[str, str]) -> None:
    """Recompute every pinned value from its definition with libsodium and pyca directly."""
    h = bytes.fromhex
    x, y, w = h(case["x"]), h(case["y"]), h(case["w"])
    assert int.from_bytes(x, "little") == int.from_bytes(h(case["seed_x"]), "little") % ORDER
    base = sodium.crypto_scalarmult_ed25519_base_noclamp
    mul = sodium.crypto_scalarmult_ed25519_noclamp
    p_a = sodium.crypto_core_ed25519_add(base(x), mul(w, M))
    p_b = sodium.crypto_core_ed25519_add(base(y), mul(w, N))
    assert (p_a.hex(), p_b.hex()) == (case["pA"], case["pB"])
    # K = h*x*(pB - w*N) = h*y*(pA - w*M), h = 8: three doublings of x*(pB - w*N).
    k = mul(x, sodium.crypto_core_ed25519_sub(p_b, mul(w, N)))
    for _ in range(3):
        k = sodium.crypto_core_ed25519_add(k, k)
    assert k.hex() == case["K"]
    tt = b"".join(
        struct.pack("<Q", len(part)) + part for part in (h(case["A"]), h(case["B"]), p_a, p_b, k, w)
    )
    assert tt.hex() == case["TT"]
    assert split_transcript(tt)[4] == k
    digest = hashlib.sha256(tt).digest()
    assert (digest[:16].hex(), digest[16:].hex()) == (case["Ke"], case["Ka"])
    info = b"ConfirmationKeys" + b"sealwire/v1/activation/spake2"
    kc = HKDF(hashes.SHA256(), 32, None, info).derive(digest[16:])
    assert (kc[:16].hex(), kc[16:].hex()) == (case["KcA"], case["KcB"])
    for key, name in ((kc[:16], "cA"), (kc[16:], "cB")):
        mac = hmac.HMAC(key, hashes.SHA256())
        mac.update(tt)
        assert mac.finalize().hex() == case[name]


@pytest.mark.vectors
def test_pinned_password_scalar() -> None:
    v = VECTORS["password_scalar"]
    ticket = ActivationTicket.decode(bytes.fromhex(v["ticket"]))
    assert ticket.password_scalar(v["password"]).hex() == v["w"]
    assert ticket.password_scalar(v["password"] + " ").hex() != v["w"]


@pytest.mark.parametrize(("name", "point"), [("M", M), ("N", N)])
def test_m_and_n_are_regenerated_from_their_seeds(name: str, point: bytes) -> None:
    """RFC 9382 Appendix A: iterate SHA-256 over the seed until the bytes are a point of order p."""
    block = f"edwards25519 point generation seed ({name})".encode()
    for _ in range(1000):
        block = hashlib.sha256(block).digest()
        if sodium.crypto_core_ed25519_is_valid_point(block):
            break
    assert block == point
    assert CONFIRMATION_AAD == b"sealwire/v1/activation/spake2"


# --- Agreement and confirmation --------------------------------------------------------------


def test_same_password_agrees_and_confirms() -> None:
    a, b = pair()
    keys_a, keys_b = a.finish(b.share), b.finish(a.share)
    assert keys_a.shared_key == keys_b.shared_key and len(keys_a.shared_key) == 16
    keys_a.verify(keys_b.confirmation)
    keys_b.verify(keys_a.confirmation)
    assert keys_a.confirmation != keys_b.confirmation
    assert keys_a.shared_key.hex() not in repr(keys_a)


def test_wrong_password_fails_confirmation_on_both_sides() -> None:
    a, b = pair(w_b=scalar_from_seed(bytes([6]) * 64))
    keys_a, keys_b = a.finish(b.share), b.finish(a.share)
    assert keys_a.shared_key != keys_b.shared_key
    with pytest.raises(ActivationFailed):
        keys_b.verify(keys_a.confirmation)
    with pytest.raises(ActivationFailed):
        keys_a.verify(keys_b.confirmation)


def test_identities_are_bound() -> None:
    random = FixedRandom(b"ids")
    a = Spake2(Side.A, password_scalar=W, id_a=ID_A, id_b=ID_B, seed=random(64))
    b = Spake2(Side.B, password_scalar=W, id_a=ID_A, id_b=bytes(32), seed=random(64))
    with pytest.raises(ActivationFailed):
        b.finish(a.share).verify(a.finish(b.share).confirmation)


def test_fresh_seeds_give_fresh_keys() -> None:
    a1, b1 = pair(seed=b"one")
    a2, b2 = pair(seed=b"two")
    assert a1.share != a2.share
    assert a1.finish(b1.share).shared_key != a2.finish(b2.share).shared_key


def test_confirmation_of_another_run_is_refused() -> None:
    a1, b1 = pair(seed=b"one")
    a2, b2 = pair(seed=b"two")
    keys_b1 = b1.finish(a1.share)
    with pytest.raises(ActivationFailed):
        keys_b1.verify(a2.finish(b2.share).confirmation)


@given(st.binary(min_size=32, max_size=32))
def test_tampered_share_never_confirms(delta: bytes) -> None:
    a, b = pair()
    tampered = bytes(x ^ y for x, y in zip(a.share, delta, strict=True))
    keys_a = a.finish(b.share)
    try:
        keys_b = b.finish(tampered)
    except ActivationFailed:
        return
    if tampered == a.share:
        keys_b.verify(keys_a.confirmation)
        return
    with pytest.raises(ActivationFailed):
        keys_b.verify(keys_a.confirmation)
    with pytest.raises(ActivationFailed):
        keys_a.verify(keys_b.confirmation)


# --- Invalid shares --------------------------------------------------------------------------

P = 2**255 - 19
SMALL_ORDER = [
    IDENTITY,  # identity (order 1)
    (P - 1).to_bytes(32, "little"),  # (0, -1): order 2
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),  # order 8
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),  # order 8
    bytes(32),  # y = 0: order 4
]


def _torsion_component_point() -> bytes:
    """A point on the curve that is not in the prime-order subgroup: basepoint + order-8 point."""
    base = sodium.crypto_scalarmult_ed25519_base_noclamp((1).to_bytes(32, "little"))
    return bytes(sodium.crypto_core_ed25519_add(base, SMALL_ORDER[2]))


def _non_canonical(point: bytes) -> bytes:
    """The same y plus p (only representable when y < 19): a non-canonical encoding."""
    y = int.from_bytes(point, "little") & ((1 << 255) - 1)
    assert y < 19
    return ((y + P) | (point[31] >> 7 << 255)).to_bytes(32, "little")


def _off_curve() -> bytes:
    """The smallest y for which no x puts (x, y) on the curve: x^2 = (y^2 - 1) / (d y^2 + 1)."""
    d = -121665 * pow(121666, -1, P) % P
    for y in range(2, 100):
        x2 = (y * y - 1) * pow(d * y * y + 1, -1, P) % P
        if pow(x2, (P - 1) // 2, P) == P - 1:  # not a square
            return y.to_bytes(32, "little")
    raise AssertionError("unreachable")


INVALID_SHARES = {
    "identity": SMALL_ORDER[0],
    "order-2": SMALL_ORDER[1],
    "order-8-a": SMALL_ORDER[2],
    "order-8-b": SMALL_ORDER[3],
    "order-4": SMALL_ORDER[4],
    "torsion-component": _torsion_component_point(),
    "non-canonical-identity": _non_canonical(IDENTITY),
    "non-canonical-order-4": _non_canonical(bytes(32)),
    "y-above-p": bytes([0xFF]) * 32,
    "31-bytes": bytes(31),
    "33-bytes": bytes(33),
    "empty": b"",
    "off-curve": _off_curve(),
}


@pytest.mark.parametrize("name", INVALID_SHARES)
@pytest.mark.parametrize("side", [Side.A, Side.B])
def test_invalid_shares_are_refused(side: Side, name: str) -> None:
    share = INVALID_SHARES[name]
    a, b = pair()
    us = a if side is Side.A else b
    with pytest.raises(ActivationFailed):
        us.finish(share)


def test_torsion_point_is_on_the_curve_but_refused() -> None:
    point = _torsion_component_point()
    assert len(point) == SHARE_SIZE
    assert not sodium.crypto_core_ed25519_is_valid_point(point)
    # It is a curve point (libsodium adds it), just not of prime order: removing the torsion
    # part again gives back the base point.
    back = sodium.crypto_core_ed25519_sub(point, SMALL_ORDER[2])
    assert back == sodium.crypto_scalarmult_ed25519_base_noclamp((1).to_bytes(32, "little"))


def test_share_equal_to_w_times_m_gives_identity_k_and_is_refused() -> None:
    """pA = w*M makes pA - w*M the identity: K would be I, which is refused."""
    _, b = pair()
    with pytest.raises(ActivationFailed):
        b.finish(bytes(sodium.crypto_scalarmult_ed25519_noclamp(W, M)))


# --- Scalars ---------------------------------------------------------------------------------


@given(st.binary(min_size=64, max_size=64))
def test_scalar_from_seed_is_the_reduction(seed: bytes) -> None:
    expected = int.from_bytes(seed, "little") % ORDER
    if expected == 0:
        with pytest.raises(ValueError):
            scalar_from_seed(seed)
        return
    assert scalar_from_seed(seed) == expected.to_bytes(32, "little")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"password_scalar": bytes(32)},
        {"password_scalar": bytes(31)},
        {"password_scalar": ORDER.to_bytes(32, "little")},
        {"id_a": b""},
        {"id_b": b""},
        {"seed": bytes(63)},
        {"seed": ORDER.to_bytes(64, "little")},
    ],
)
def test_bad_local_inputs_raise_value_error(kwargs: dict[str, bytes]) -> None:
    args = {"password_scalar": W, "id_a": ID_A, "id_b": ID_B, "seed": bytes([1]) * 64} | kwargs
    with pytest.raises(ValueError):
        Spake2(Side.A, **args)


def test_password_scalar_binds_params_and_identities() -> None:
    params = Argon2Params(salt=bytes(16), memory_kib=8, iterations=1, lanes=1)
    w = password_scalar("pw", params, id_a=ID_A, id_b=ID_B)
    assert len(w) == 32 and int.from_bytes(w, "little") < ORDER
    assert w == password_scalar("pw", params, id_a=ID_A, id_b=ID_B)
    others = {
        password_scalar("pw2", params, id_a=ID_A, id_b=ID_B),
        password_scalar("pw", params, id_a=ID_B, id_b=ID_A),
        password_scalar("pw", params, id_a=ID_A + b"x", id_b=ID_B),
        password_scalar(
            "pw",
            Argon2Params(salt=bytes([1]) * 16, memory_kib=8, iterations=1, lanes=1),
            id_a=ID_A,
            id_b=ID_B,
        ),
    }
    assert w not in others and len(others) == 4
    with pytest.raises(ValueError):
        password_scalar("pw", params, id_a=b"", id_b=ID_B)
