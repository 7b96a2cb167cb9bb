"""X-Wing HPKE (``sealwire.mls.xwing``): the KEM against the official vectors, our RFC 9180
key schedule with KEM 0x647A against draft-ietf-hpke-pq's vector, and both directions against
pyca/cryptography's own X-Wing HPKE, plus the failures a peer can provoke.

Vectors (``tests/vectors/xwing/``, see the README there):

* ``xwing-kem.json``: draft-connolly-cfrg-xwing-kem's ``spec/test-vectors.json``;
* ``hpke-pq-mlkem768-x25519.json``: the MLKEM768-X25519 / HKDF-SHA256 / ChaCha20Poly1305 case
  of draft-ietf-hpke-pq's ``test-vectors.json``.

Neither can check our encapsulation byte for byte (pyca's ML-KEM cannot take the encapsulation
randomness), so encapsulation is checked by round trips and by pyca decrypting what we seal.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any

import pytest
from cryptography.hazmat.primitives import hpke as pyca_hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from hypothesis import given, settings
from hypothesis import strategies as st

from sealwire.mls import hpke, xwing
from sealwire.mls.crypto import cipher_suite
from sealwire.mls.errors import CryptoError, LocalError, MLSError

VECTORS = pathlib.Path(__file__).parents[1] / "vectors" / "xwing"
SUITE = xwing.XWING_AES256GCM
PYCA = pyca_hpke.Suite(
    pyca_hpke.KEM.MLKEM768_X25519, pyca_hpke.KDF.HKDF_SHA256, pyca_hpke.AEAD.AES_256_GCM
)


def load(name: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((VECTORS / name).read_text())
    return data


def pyca_private(sk: bytes) -> pyca_hpke.MLKEM768X25519PrivateKey:
    m, x = xwing.expand_private_key(sk)
    return pyca_hpke.MLKEM768X25519PrivateKey(m, x)


def key_pair(tag: bytes) -> tuple[bytes, bytes]:
    return xwing.derive_key_pair(hashlib.sha256(tag).digest())


SK, PK = key_pair(b"recipient")


# -- the KEM ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", load("xwing-kem.json"), ids=lambda c: c["seed"][:8])
def test_xwing_kem_vectors(case: dict[str, str]) -> None:
    sk = bytes.fromhex(case["sk"])
    assert sk == bytes.fromhex(case["seed"])  # GenerateKeyPairDerand(seed) keeps the seed
    assert xwing.public_key(sk).hex() == case["pk"]
    assert xwing.decapsulate(bytes.fromhex(case["ct"]), sk).hex() == case["ss"]
    # The vector's ct_X is X25519(eseed[32:64], base): our encapsulation uses ek_X the same way.
    eseed = bytes.fromhex(case["eseed"])
    ct_x = x25519.X25519PrivateKey.from_private_bytes(eseed[32:]).public_key().public_bytes_raw()
    assert case["ct"].endswith(ct_x.hex())


def test_label_and_combiner_layout() -> None:
    assert xwing.XWING_LABEL == b"\\./" + b"/^\\"
    assert xwing.XWING_LABEL.hex() == "5c2e2f2f5e5c"
    parts = [bytes([i]) * 32 for i in range(4)]
    assert xwing.combiner(*parts) == hashlib.sha3_256(b"".join(parts) + b"\\.//^\\").digest()


def test_encapsulate_decapsulate_from_components() -> None:
    ek_x = os.urandom(32)
    ss, ct = xwing.encapsulate(PK, ek_x=ek_x)
    assert len(ss) == xwing.SHARED_SECRET_SIZE and len(ct) == xwing.CIPHERTEXT_SIZE
    assert xwing.decapsulate(ct, SK) == ss
    # Recompute the combiner from pyca's components: ML-KEM decapsulation and X25519 on both
    # sides must give the same ss_M and ss_X.
    m, x = xwing.expand_private_key(SK)
    ss_m = m.decapsulate(ct[:1088])
    ek = x25519.X25519PrivateKey.from_private_bytes(ek_x)
    assert ct[1088:] == ek.public_key().public_bytes_raw()
    ss_x = ek.exchange(x.public_key())
    assert ss == xwing.combiner(ss_m, ss_x, ct[1088:], PK[1184:])


def test_key_expansion() -> None:
    m, x = xwing.expand_private_key(SK)
    assert m.public_key().public_bytes_raw() + x.public_key().public_bytes_raw() == PK
    assert hashlib.shake_256(hashlib.sha256(b"recipient").digest()).digest(32) == SK


# -- the HPKE key schedule with KEM 0x647A ------------------------------------------------------


def test_hpke_pq_vector() -> None:
    (case,) = load("hpke-pq-mlkem768-x25519.json")
    assert (case["mode"], case["kem_id"], case["kdf_id"]) == (0, 0x647A, 0x0001)
    suite = xwing.XWingHPKESuite(aead_id=case["aead_id"])
    assert suite.suite_id.hex() == case["suite_id"]
    sk = bytes.fromhex(case["skRm"])
    assert suite.public_key(sk).hex() == case["pkRm"]
    enc, info = bytes.fromhex(case["enc"]), bytes.fromhex(case["info"])
    assert suite.decap(enc, sk).hex() == case["shared_secret"]
    ctx = suite.setup_base_r(enc, sk, info)
    assert ctx.key.hex() == case["key"]
    assert ctx.base_nonce.hex() == case["base_nonce"]
    assert ctx.exporter_secret.hex() == case["exporter_secret"]
    for e in case["encryptions"]:
        nonce = bytes.fromhex(e["nonce"])
        seq = int.from_bytes(nonce, "big") ^ int.from_bytes(ctx.base_nonce, "big")
        ctx.seq = seq
        pt = ctx.open(bytes.fromhex(e["aad"]), bytes.fromhex(e["ct"]))
        assert pt.hex() == e["pt"]
        ctx.seq = seq  # the same context seals to the same ciphertext
        assert ctx.seal(bytes.fromhex(e["aad"]), pt).hex() == e["ct"]
    for x in case["exports"]:
        got = ctx.export(bytes.fromhex(x["exporter_context"]), x["L"])
        assert got.hex() == x["exported_value"]
    # Single-shot OpenBase is the first encryption (sequence 0).
    first = next(e for e in case["encryptions"] if e["nonce"] == case["base_nonce"])
    opened = suite.open_base(enc, sk, info, bytes.fromhex(first["aad"]), bytes.fromhex(first["ct"]))
    assert opened.hex() == first["pt"]


def test_suite_parameters() -> None:
    assert SUITE.suite_id == b"HPKE" + bytes.fromhex("647a00010002")
    assert (SUITE.Nenc, SUITE.Npk, SUITE.Nsk, SUITE.Nsecret, SUITE.Nk) == (1120, 1216, 32, 32, 32)
    assert isinstance(SUITE, hpke.HPKESuite)
    with pytest.raises(LocalError):
        xwing.XWingHPKESuite(aead_id=0x0002, kem_id=hpke.KEM_DHKEM_X25519)
    with pytest.raises(LocalError):
        xwing.XWingHPKESuite(aead_id=0x7777)
    with pytest.raises(LocalError):
        xwing.XWingHPKESuite(aead_id=0x0002, kdf_id=0x0002)


# -- cross-checks with pyca's X-Wing HPKE ---------------------------------------------------------

INFOS = [b"", b"info", bytes(range(256)) * 3]
PLAINTEXTS = [b"", b"x", os.urandom(1000)]


@pytest.mark.parametrize("info", INFOS)
@pytest.mark.parametrize("pt", PLAINTEXTS)
def test_pyca_seals_we_open(info: bytes, pt: bytes) -> None:
    out = PYCA.encrypt(pt, pyca_private(SK).public_key(), info=info)
    enc, ct = out[: SUITE.Nenc], out[SUITE.Nenc :]
    assert SUITE.setup_base_r(enc, SK, info).open(b"", ct) == pt
    assert SUITE.open_base(enc, SK, info, b"", ct) == pt


@pytest.mark.parametrize("info", INFOS)
@pytest.mark.parametrize("pt", PLAINTEXTS)
def test_we_seal_pyca_opens(info: bytes, pt: bytes) -> None:
    enc, ctx = SUITE.setup_base_s(PK, info, ikm_e=os.urandom(32))
    assert PYCA.decrypt(enc + ctx.seal(b"", pt), pyca_private(SK), info=info) == pt
    enc, ct = SUITE.seal_base(PK, info, b"", pt, ikm_e=os.urandom(32))
    assert PYCA.decrypt(enc + ct, pyca_private(SK), info=info) == pt


def test_mls_encrypt_with_label_interoperates_both_ways() -> None:
    # CipherSuite 0xF0A1 seals with pyca; the same EncryptContext opens with ours, and back.
    suite = cipher_suite(0xF0A1)
    info = suite._encrypt_context(b"UpdatePathNode", b"group context")
    kem_output, ct = suite.encrypt_with_label(
        PK, "UpdatePathNode", b"group context", b"path secret", randomness=os.urandom(32)
    )
    assert SUITE.open_base(kem_output, SK, info, b"", ct) == b"path secret"
    enc, ct = SUITE.seal_base(PK, info, b"", b"other secret", ikm_e=os.urandom(32))
    opened = suite.decrypt_with_label(SK, "UpdatePathNode", b"group context", enc, ct)
    assert opened == b"other secret"


def test_export_agrees_and_separates() -> None:
    enc, sender = SUITE.setup_base_s(PK, b"", ikm_e=os.urandom(32))
    receiver = SUITE.setup_base_r(enc, SK, b"")
    label = b"MLS 1.0 external init secret"
    assert sender.export(label, 32) == receiver.export(label, 32)
    assert sender.export(label, 32) != sender.export(b"other", 32)
    assert len(sender.export(label, 100)) == 100
    # A second encapsulation to the same key gives an unrelated exporter secret.
    enc2, other = SUITE.setup_base_s(PK, b"", ikm_e=os.urandom(32))
    assert enc2 != enc and other.export(label, 32) != sender.export(label, 32)
    # Multi-message contexts stay in step with each other.
    for i in range(3):
        assert receiver.open(b"aad", sender.seal(b"aad", bytes([i]))) == bytes([i])


# -- failures ---------------------------------------------------------------------------------


def sealed(info: bytes = b"") -> tuple[bytes, bytes]:
    enc, ctx = SUITE.setup_base_s(PK, info, ikm_e=os.urandom(32))
    return enc, ctx.seal(b"", b"secret")


def test_wrong_private_key_fails_opaquely() -> None:
    enc, ct = sealed()
    other, _ = key_pair(b"someone else")
    with pytest.raises(CryptoError):
        SUITE.setup_base_r(enc, other, b"").open(b"", ct)
    with pytest.raises(CryptoError):
        SUITE.setup_base_r(enc, SK, b"wrong info").open(b"", ct)
    out = PYCA.encrypt(b"secret", pyca_private(other).public_key(), info=b"")
    with pytest.raises(CryptoError):
        SUITE.open_base(out[:1120], SK, b"", b"", out[1120:])


@pytest.mark.parametrize("position", [0, 500, 1087, 1088, 1100, 1119])
def test_tampered_enc_fails_opaquely(position: int) -> None:
    enc, ct = sealed()
    bad = bytearray(enc)
    bad[position] ^= 0x01
    with pytest.raises(CryptoError):
        SUITE.setup_base_r(bytes(bad), SK, b"").open(b"", ct)


def test_tampered_ciphertext_fails_opaquely() -> None:
    enc, ct = sealed()
    with pytest.raises(CryptoError):
        SUITE.open_base(enc, SK, b"", b"", ct[:-1] + bytes([ct[-1] ^ 1]))
    with pytest.raises(CryptoError):
        SUITE.open_base(enc, SK, b"", b"aad", ct)


@pytest.mark.parametrize("length", [0, 32, 1088, 1119, 1121, 2240])
def test_wrong_enc_length(length: int) -> None:
    with pytest.raises(CryptoError):
        SUITE.setup_base_r(os.urandom(length), SK, b"")
    with pytest.raises(CryptoError):
        xwing.decapsulate(os.urandom(length), SK)


@pytest.mark.parametrize("length", [0, 32, 1184, 1215, 1217, 2432])
def test_wrong_public_key_length(length: int) -> None:
    with pytest.raises(CryptoError):
        SUITE.setup_base_s(os.urandom(length), b"", ikm_e=os.urandom(32))


def test_malformed_mlkem_public_key() -> None:
    # FIPS 203 §7.2 encapsulation key check: coefficients must be below q = 3329, and 0xFFF is
    # not; pyca rejects the key, we answer CryptoError (HPKE's EncapError).
    bad = b"\xff" * 1184 + PK[1184:]
    with pytest.raises(CryptoError):
        SUITE.setup_base_s(bad, b"", ikm_e=os.urandom(32))


def test_low_order_x25519_points() -> None:
    zero = bytes(32)  # a small-order point: X25519 gives the all-zero secret, pyca refuses it
    with pytest.raises(CryptoError):
        SUITE.setup_base_s(PK[:1184] + zero, b"", ikm_e=os.urandom(32))
    enc, _ = sealed()
    with pytest.raises(CryptoError):
        SUITE.setup_base_r(enc[:1088] + zero, SK, b"")


def test_local_misuse_is_local_error() -> None:
    with pytest.raises(LocalError):
        SUITE.setup_base_s(PK, b"", ikm_e=os.urandom(31))
    enc, _ = sealed()
    with pytest.raises(LocalError):
        SUITE.setup_base_r(enc, SK + b"\x00", b"")
    with pytest.raises(LocalError):
        xwing.public_key(SK[:31])


@settings(max_examples=60, deadline=None)
@given(
    cut=st.integers(min_value=0, max_value=1200),
    flips=st.lists(st.tuples(st.integers(0, 1200), st.integers(1, 255)), max_size=3),
)
def test_garbled_input_raises_only_mls_errors(cut: int, flips: list[tuple[int, int]]) -> None:
    enc, ct = sealed(b"fuzz")
    original = enc + ct
    blob = bytearray(original)
    for pos, mask in flips:
        if pos < len(blob):
            blob[pos] ^= mask
    blob = blob[: len(blob) - cut] if cut else blob
    data = bytes(blob)
    try:
        pt = SUITE.open_base(data[:1120], SK, b"fuzz", b"", data[1120:])
    except MLSError as exc:
        assert isinstance(exc, CryptoError)
    else:
        assert data == original and pt == b"secret"


def test_mlkem_sizes_match_pyca() -> None:
    m = mlkem.MLKEM768PrivateKey.from_seed_bytes(bytes(64))
    ss, ct = m.public_key().encapsulate()
    assert (len(m.public_key().public_bytes_raw()), len(ct), len(ss)) == (1184, 1088, 32)
