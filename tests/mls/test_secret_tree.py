"""The secret tree (RFC 9420 §9) against the official secret-tree vectors, plus the rules that
keep nonces unique: a generation is handed out once, consumed secrets are deleted, and the
look-ahead is bounded."""

from __future__ import annotations

from typing import Any

import pytest

from sealwire.mls.crypto import MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 as SUITE1
from sealwire.mls.crypto import cipher_suite
from sealwire.mls.errors import LocalError, SecretReuseError, ValidationError
from sealwire.mls.secret_tree import (
    RatchetType,
    SecretTree,
    apply_reuse_guard,
    sender_data_key_nonce,
)
from tests.mls.vectors import cases, h

HS, APP = RatchetType.HANDSHAKE, RatchetType.APPLICATION


@pytest.mark.vectors
@pytest.mark.parametrize("case", cases("secret-tree"))
def test_secret_tree_vectors(case: dict[str, Any]) -> None:
    suite = cipher_suite(case["cipher_suite"])
    sd = case["sender_data"]
    key, nonce = sender_data_key_nonce(suite, h(sd["sender_data_secret"]), h(sd["ciphertext"]))
    assert (key.hex(), nonce.hex()) == (sd["key"], sd["nonce"])

    tree = SecretTree(suite, h(case["encryption_secret"]), len(case["leaves"]))
    for leaf, generations in enumerate(case["leaves"]):
        for g in generations:
            key, nonce = tree.key_for(leaf, HS, g["generation"])
            assert (key.hex(), nonce.hex()) == (g["handshake_key"], g["handshake_nonce"])
            key, nonce = tree.key_for(leaf, APP, g["generation"])
            assert (key.hex(), nonce.hex()) == (g["application_key"], g["application_nonce"])


def _tree(n: int = 4, **kw: int) -> SecretTree:
    return SecretTree(SUITE1, bytes(range(32)), n, **kw)


def test_sender_and_receiver_agree() -> None:
    sender, receiver = _tree(), _tree()
    for expected_generation in range(5):
        generation, key, nonce = sender.next_key(2, APP)
        assert generation == expected_generation
        assert receiver.key_for(2, APP, generation) == (key, nonce)


def test_ratchets_are_independent() -> None:
    tree = _tree()
    keys = {tree.key_for(leaf, kind, 0) for leaf in range(4) for kind in RatchetType}
    assert len(keys) == 8


def test_a_generation_is_handed_out_once() -> None:
    tree = _tree()
    tree.key_for(1, APP, 0)
    with pytest.raises(SecretReuseError):
        tree.key_for(1, APP, 0)
    tree.next_key(1, HS)
    with pytest.raises(SecretReuseError):
        tree.key_for(1, HS, 0)


def test_out_of_order_within_the_window() -> None:
    reference = _tree()
    expected = [reference.key_for(0, APP, g) for g in range(6)]
    tree = _tree()
    assert tree.key_for(0, APP, 5) == expected[5]
    assert tree.key_for(0, APP, 2) == expected[2]
    assert tree.key_for(0, APP, 0) == expected[0]
    with pytest.raises(SecretReuseError):
        tree.key_for(0, APP, 2)
    assert tree.next_key(0, APP)[0] == 6


def test_skipped_keys_are_bounded() -> None:
    tree = _tree(max_skipped=3)
    tree.key_for(0, APP, 10)  # skips 0..9, keeps only 7, 8, 9
    with pytest.raises(SecretReuseError):
        tree.key_for(0, APP, 6)
    tree.key_for(0, APP, 7)


def test_look_ahead_is_bounded() -> None:
    tree = _tree(max_forward=100)
    with pytest.raises(SecretReuseError):
        tree.key_for(0, APP, 101)
    tree.key_for(0, APP, 100)
    with pytest.raises(ValidationError):
        tree.key_for(0, APP, 1 << 32)


def test_leaf_outside_the_tree() -> None:
    with pytest.raises(ValidationError):
        _tree(4).key_for(4, APP, 0)


def test_secrets_are_deleted_as_they_are_consumed() -> None:
    tree = _tree(8)
    tree.key_for(0, APP, 0)
    # Only the copath secrets of leaf 0 remain (nodes 2, 5, 11); its own leaf secret is gone.
    assert sorted(tree._nodes) == [2, 5, 11]
    tree.delete_ratchet_keys(0)
    with pytest.raises(SecretReuseError):
        tree.key_for(0, APP, 1)
    for leaf in range(1, 8):
        tree.key_for(leaf, HS, 0)
    assert tree._nodes == {}


def test_reuse_guard() -> None:
    nonce = bytes(range(12))
    guarded = apply_reuse_guard(nonce, b"\xff\x00\xff\x00")
    assert guarded == bytes([0xFF, 1, 0xFD, 3]) + nonce[4:]
    assert apply_reuse_guard(guarded, b"\xff\x00\xff\x00") == nonce
    with pytest.raises(LocalError):
        apply_reuse_guard(nonce, b"\x00")


def test_sender_data_sample_is_at_most_nh_bytes() -> None:
    long = sender_data_key_nonce(SUITE1, bytes(32), bytes(32) + b"tail")
    assert long == sender_data_key_nonce(SUITE1, bytes(32), bytes(32))
    assert sender_data_key_nonce(SUITE1, bytes(32), b"short") != long
