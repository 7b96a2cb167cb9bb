"""Our RFC 9180 HPKE (DHKEM(X25519), HKDF-SHA256, three AEADs): the RFC's own vector, and
interoperation both ways with pyca's independent single-shot HPKE (whose format is enc || ct)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hpke as pyca_hpke
from cryptography.hazmat.primitives.asymmetric import x25519

from sealwire.mls import hpke
from sealwire.mls.errors import CryptoError, LocalError

# RFC 9180 Appendix A.1.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, mode_base.
A11 = {
    "info": "4f6465206f6e2061204772656369616e2055726e",
    "ikmE": "7268600d403fce431561aef583ee1613527cff655c1343f29812e66706df3234",
    "pkEm": "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431",
    "skEm": "52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736",
    "ikmR": "6db9df30aa07dd42ee5e8181afdb977e538f5e1fec8a06223f33f7013e525037",
    "pkRm": "3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d",
    "skRm": "4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8",
    "shared_secret": "fe0e18c9f024ce43799ae393c7e8fe8fce9d218875e8227b0187c04e7d2ea1fc",
    "key": "4531685d41d65f03dc48f6b8302c05b0",
    "base_nonce": "56d890e5accaaf011cff4b7d",
    "exporter_secret": "45ff1c2e220db587171952c0592d5f5ebe103f1561a2614e38f2ffd47e99e3f8",
    "pt": "4265617574792069732074727574682c20747275746820626561757479",
    "encryptions": [
        (
            "436f756e742d30",
            "f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea87e13c512a",
        ),
        (
            "436f756e742d31",
            "af2d7e9ac9ae7e270f46ba1f975be53c09f8d875bdc8535458c2494e8a6eab251c03d0c22a56b8ca42c2063b84",
        ),
        (
            "436f756e742d32",
            "498dfcabd92e8acedc281e85af1cb4e3e31c7dc394a1ca20e173cb72516491588d96a19ad4a683518973dcc180",
        ),
    ],
    "exports": [
        ("", 32, "3853fe2b4035195a573ffc53856e77058e15d9ea064de3e59f4961d0095250ee"),
        ("00", 32, "2e8f0b54673c7029649d4eb9d5e33bf1872cf76d623ff164ac185da9e88c21a5"),
    ],
}
H = bytes.fromhex
SUITE = hpke.HPKESuite(aead_id=hpke.AEAD_AES128GCM)


@pytest.mark.vectors
def test_rfc9180_a11_derive_key_pair() -> None:
    assert SUITE.derive_key_pair(H(A11["ikmE"])) == (H(A11["skEm"]), H(A11["pkEm"]))
    assert SUITE.derive_key_pair(H(A11["ikmR"])) == (H(A11["skRm"]), H(A11["pkRm"]))


@pytest.mark.vectors
def test_rfc9180_a11_sender_and_receiver() -> None:
    shared, enc = SUITE.encap(H(A11["pkRm"]), ikm_e=H(A11["ikmE"]))
    assert (shared.hex(), enc.hex()) == (A11["shared_secret"], A11["pkEm"])
    enc, sender = SUITE.setup_base_s(H(A11["pkRm"]), H(A11["info"]), ikm_e=H(A11["ikmE"]))
    receiver = SUITE.setup_base_r(enc, H(A11["skRm"]), H(A11["info"]))
    for ctx in (sender, receiver):
        assert ctx.key.hex() == A11["key"]
        assert ctx.base_nonce.hex() == A11["base_nonce"]
        assert ctx.exporter_secret.hex() == A11["exporter_secret"]
    for aad, ct in A11["encryptions"]:
        assert sender.seal(H(aad), H(A11["pt"])).hex() == ct
        assert receiver.open(H(aad), H(ct)).hex() == A11["pt"]
    for context, length, exported in A11["exports"]:
        assert sender.export(H(context), length).hex() == exported


@pytest.mark.vectors
def test_rfc9180_a11_single_shot() -> None:
    aad, ct = A11["encryptions"][0]
    enc, got = SUITE.seal_base(
        H(A11["pkRm"]), H(A11["info"]), H(aad), H(A11["pt"]), ikm_e=H(A11["ikmE"])
    )
    assert (enc.hex(), got.hex()) == (A11["pkEm"], ct)
    assert SUITE.open_base(enc, H(A11["skRm"]), H(A11["info"]), H(aad), got) == H(A11["pt"])


PYCA_AEAD = {
    hpke.AEAD_AES128GCM: pyca_hpke.AEAD.AES_128_GCM,
    hpke.AEAD_AES256GCM: pyca_hpke.AEAD.AES_256_GCM,
    hpke.AEAD_CHACHA20POLY1305: pyca_hpke.AEAD.CHACHA20_POLY1305,
}


def _pyca(aead_id: int) -> pyca_hpke.Suite:
    return pyca_hpke.Suite(pyca_hpke.KEM.X25519, pyca_hpke.KDF.HKDF_SHA256, PYCA_AEAD[aead_id])


@pytest.mark.parametrize("aead_id", sorted(PYCA_AEAD))
def test_pyca_seals_we_open(aead_id: int) -> None:
    ours = hpke.HPKESuite(aead_id=aead_id)
    sk, pk = ours.derive_key_pair(bytes(range(32)))
    sealed = _pyca(aead_id).encrypt(
        b"from pyca", x25519.X25519PublicKey.from_public_bytes(pk), info=b"ctx"
    )
    enc, ct = sealed[: ours.Nenc], sealed[ours.Nenc :]
    assert ours.open_base(enc, sk, b"ctx", b"", ct) == b"from pyca"


@pytest.mark.parametrize("aead_id", sorted(PYCA_AEAD))
def test_we_seal_pyca_opens(aead_id: int) -> None:
    ours = hpke.HPKESuite(aead_id=aead_id)
    sk, pk = ours.derive_key_pair(bytes(range(1, 33)))
    enc, ct = ours.seal_base(pk, b"info", b"", b"from sealwire", ikm_e=bytes(32))
    key = x25519.X25519PrivateKey.from_private_bytes(sk)
    assert _pyca(aead_id).decrypt(enc + ct, key, info=b"info") == b"from sealwire"


def test_tampering_gives_one_opaque_error() -> None:
    sk, pk = SUITE.derive_key_pair(bytes(32))
    enc, ct = SUITE.seal_base(pk, b"i", b"a", b"secret", ikm_e=bytes([1]) * 32)
    assert SUITE.open_base(enc, sk, b"i", b"a", ct) == b"secret"
    bad_ct = ct[:-1] + bytes([ct[-1] ^ 1])
    bad_enc = bytes([enc[0] ^ 1]) + enc[1:]
    other_sk, _ = SUITE.derive_key_pair(bytes([9]) * 32)
    for args in [
        (enc, sk, b"i", b"a", bad_ct),
        (bad_enc, sk, b"i", b"a", ct),
        (enc, sk, b"j", b"a", ct),  # wrong info
        (enc, sk, b"i", b"b", ct),  # wrong aad
        (enc, other_sk, b"i", b"a", ct),
        (bytes(32), sk, b"i", b"a", ct),  # small-order point: all-zero DH output
        (enc[:31], sk, b"i", b"a", ct),
    ]:
        with pytest.raises(CryptoError):
            SUITE.open_base(*args)


def test_failed_open_does_not_advance_the_sequence() -> None:
    sk, pk = SUITE.derive_key_pair(bytes(32))
    enc, sender = SUITE.setup_base_s(pk, b"", ikm_e=bytes([2]) * 32)
    receiver = SUITE.setup_base_r(enc, sk, b"")
    ct0 = sender.seal(b"", b"zero")
    with pytest.raises(CryptoError):
        receiver.open(b"", ct0[:-1] + b"\x00")
    assert receiver.open(b"", ct0) == b"zero"
    assert receiver.open(b"", sender.seal(b"", b"one")) == b"one"


def test_api_misuse() -> None:
    with pytest.raises(LocalError):
        hpke.HPKESuite(aead_id=0x9999)
    with pytest.raises(LocalError):
        hpke.HPKESuite(aead_id=1, kem_id=0x0010)
    with pytest.raises(LocalError):
        SUITE.derive_key_pair(bytes(31))
