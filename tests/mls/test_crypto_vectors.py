"""crypto-basics vectors (RFC 9420 §5.1-§5.2, §8, §9) for every suite we support."""

from __future__ import annotations

from typing import Any

import pytest

from sealwire.mls.crypto import cipher_suite
from sealwire.mls.errors import CryptoError, UnsupportedError
from tests.mls.vectors import cases, h, unsupported_suites

pytestmark = pytest.mark.vectors


@pytest.mark.parametrize("case", cases("crypto-basics"))
def test_ref_hash(case: dict[str, Any]) -> None:
    cs, v = cipher_suite(case["cipher_suite"]), case["ref_hash"]
    assert cs.ref_hash(v["label"], h(v["value"])).hex() == v["out"]


@pytest.mark.parametrize("case", cases("crypto-basics"))
def test_expand_with_label(case: dict[str, Any]) -> None:
    cs, v = cipher_suite(case["cipher_suite"]), case["expand_with_label"]
    out = cs.expand_with_label(h(v["secret"]), v["label"], h(v["context"]), v["length"])
    assert out.hex() == v["out"]


@pytest.mark.parametrize("case", cases("crypto-basics"))
def test_derive_secret(case: dict[str, Any]) -> None:
    cs, v = cipher_suite(case["cipher_suite"]), case["derive_secret"]
    assert cs.derive_secret(h(v["secret"]), v["label"]).hex() == v["out"]


@pytest.mark.parametrize("case", cases("crypto-basics"))
def test_derive_tree_secret(case: dict[str, Any]) -> None:
    cs, v = cipher_suite(case["cipher_suite"]), case["derive_tree_secret"]
    out = cs.derive_tree_secret(h(v["secret"]), v["label"], v["generation"], v["length"])
    assert out.hex() == v["out"]


@pytest.mark.parametrize("case", cases("crypto-basics"))
def test_sign_with_label(case: dict[str, Any]) -> None:
    cs, v = cipher_suite(case["cipher_suite"]), case["sign_with_label"]
    priv, pub = cs.signature_key_pair(h(v["priv"]))
    assert pub.hex() == v["pub"]
    cs.verify_with_label(pub, v["label"], h(v["content"]), h(v["signature"]))
    # Ed25519 is deterministic, so our signature is the vector's.
    assert cs.sign_with_label(priv, v["label"], h(v["content"])).hex() == v["signature"]
    with pytest.raises(CryptoError):
        cs.verify_with_label(pub, v["label"] + "x", h(v["content"]), h(v["signature"]))
    with pytest.raises(CryptoError):
        cs.verify_with_label(pub, v["label"], h(v["content"]) + b"\x00", h(v["signature"]))


@pytest.mark.parametrize("case", cases("crypto-basics"))
def test_encrypt_with_label(case: dict[str, Any]) -> None:
    cs, v = cipher_suite(case["cipher_suite"]), case["encrypt_with_label"]
    priv = h(v["priv"])
    assert cs.hpke_public_key(priv).hex() == v["pub"]
    pt = cs.decrypt_with_label(
        priv, v["label"], h(v["context"]), h(v["kem_output"]), h(v["ciphertext"])
    )
    assert pt.hex() == v["plaintext"]
    # And our own encryption opens with the same key.
    kem_output, ct = cs.encrypt_with_label(
        h(v["pub"]), v["label"], h(v["context"]), h(v["plaintext"]), randomness=bytes(32)
    )
    assert cs.decrypt_with_label(priv, v["label"], h(v["context"]), kem_output, ct) == pt
    with pytest.raises(CryptoError):
        cs.decrypt_with_label(
            priv, "other", h(v["context"]), h(v["kem_output"]), h(v["ciphertext"])
        )


def test_unsupported_suites_are_rejected_by_design() -> None:
    """The vectors also cover suites 2 and 4-7 (P-256/P-384/P-521, X448, Ed448); we implement
    only 1, 3 and the X-Wing suite, and say so with UnsupportedError."""
    others = unsupported_suites("crypto-basics")
    assert others == [2, 4, 5, 6, 7]
    for value in others:
        with pytest.raises(UnsupportedError):
            cipher_suite(value)
